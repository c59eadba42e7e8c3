"""Stop signals and child processes, without a whole run (the CLI-level tests are in
tests/integration/test_kill_and_rerun.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.processes import child_environment, dying_with_parent
from flows.signals import RunStopped, exit_code_for, record_stop_signals, stop_signal_of

ROOT = Path(__file__).resolve().parents[2]
# the parent-death signal, and so the launcher that arms it, are Linux's
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def test_run_stopped_keeps_its_type_through_beams_re_raise() -> None:
    # apache_beam.runners.common.DoFnRunner._reraise_augmented rebuilds the exception as
    # type(exn)(exn.args[0] + step_annotation, *exn.args[1:])
    exn = RunStopped("stopped by SIGTERM", signal.SIGTERM)
    rebuilt = type(exn)(exn.args[0] + " [while running 'Embed']", *exn.args[1:])
    assert isinstance(rebuilt, KeyboardInterrupt) and rebuilt.signum == signal.SIGTERM
    assert str(rebuilt) == "stopped by SIGTERM [while running 'Embed']"


def test_the_signal_is_found_through_the_exception_chain() -> None:
    from prefect.exceptions import TerminationSignal

    def wrapped(inner: BaseException) -> RuntimeError:
        """What Beam raises when it cannot rebuild the type: a RuntimeError whose context
        is the original."""
        try:
            try:
                raise inner
            except BaseException as exc:  # noqa: BLE001
                raise RuntimeError(f"{type(exc).__name__} [while running 'x']")  # noqa: B904
        except RuntimeError as outer:
            return outer

    with record_stop_signals():  # a run of its own: no signal recorded yet
        assert stop_signal_of(wrapped(TerminationSignal(signal.SIGTERM))) == signal.SIGTERM
        assert stop_signal_of(wrapped(RunStopped("stopped", signal.SIGINT))) == signal.SIGINT
        assert stop_signal_of(ValueError("an ordinary failure")) is None
    assert (exit_code_for(signal.SIGINT), exit_code_for(signal.SIGTERM)) == (130, 143)


def test_a_signal_recorded_in_an_earlier_run_does_not_make_a_later_failure_a_stop() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: None)  # stands in for the handler a flow run has
    try:
        with record_stop_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # the handler runs in the main thread between bytecodes
            assert stop_signal_of(ValueError("while stopping")) == signal.SIGTERM
        with record_stop_signals():  # the next run of the same process
            assert stop_signal_of(ValueError("an ordinary failure")) is None
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_helper_servers_get_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "TIEREMBED_API__API_KEY", "WEAVIATE_API_KEY", "MY_SERVICE_TOKEN",
                 "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY", "OPENAI_BASE_URL"):
        monkeypatch.setenv(name, "secret-value")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = child_environment({"PREFECT_UI_ENABLED": "0"})
    assert "secret-value" not in env.values()
    assert env["HF_HUB_OFFLINE"] == "1" and env["PREFECT_UI_ENABLED"] == "0" and "PATH" in env


@linux_only
def test_a_child_started_with_the_parent_death_signal_dies_with_a_sigkilled_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from flows.processes import dying_with_parent\n"
        "child = subprocess.Popen(dying_with_parent(['sleep', '300']), start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(300)\n")], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(pid_file.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@linux_only
def test_starting_a_helper_server_runs_no_python_in_a_forked_copy_of_the_run() -> None:
    # A preexec_fn forks the whole run and runs every at-fork hook in the copy; LanceDB's
    # printed a warning into `tierembed search`. The launcher keeps the pid and execs.
    probe = subprocess.run([sys.executable, "-c", (
        "import os, subprocess, sys\n"
        "os.register_at_fork(after_in_child=lambda: os.write(2, b'AT-FORK HOOK RAN\\n'))\n"
        "from flows.processes import dying_with_parent\n"
        "server = [sys.executable, '-c', 'import os; print(os.getpid())']\n"
        "child = subprocess.Popen(dying_with_parent(server), stdout=subprocess.PIPE, text=True,\n"
        "                         start_new_session=True)\n"
        "out, _ = child.communicate(timeout=60)\n"
        "print(child.pid, out.strip(), child.returncode)\n")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert "AT-FORK HOOK RAN" not in probe.stderr
    started, reported, code = probe.stdout.split()
    assert started == reported and code == "0"  # the server is the process subprocess started


@linux_only
def test_the_launcher_fails_loudly_when_the_program_is_missing(tmp_path: Path) -> None:
    proc = subprocess.run(dying_with_parent([str(tmp_path / "no-such-server")]), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "no-such-server" in proc.stderr


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
