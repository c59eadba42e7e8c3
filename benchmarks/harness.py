"""Shared pieces of the end-to-end benchmarks: run ``tierembed run`` as a user would, with
its wall time and the peak memory of its whole process tree, on a prefix of a corpus.

Peak RSS is sampled every 0.2 s from ``/proc`` over the CLI process and every process it
started (the Prefect temporary server, Beam worker processes), and summed: what the run
costs the machine. ``ru_maxrss`` would give only the largest single process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ROOT", "CliRun", "prefix", "write_config", "run_cli", "rss_mb", "tree_usage",
           "bench_env", "linear_fit"]

ROOT = Path(__file__).resolve().parents[1]
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def prefix(corpus: Path, n_docs: int, out_dir: Path) -> Path:
    """The first ``n_docs`` lines of ``corpus`` as their own file (cached by name)."""
    out = out_dir / f"{corpus.stem}-{n_docs}.jsonl"
    if not out.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        with corpus.open(encoding="utf-8") as src, out.open("w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                if i >= n_docs:
                    break
                dst.write(line)
        lines = sum(1 for _ in out.open(encoding="utf-8"))
        if lines < n_docs:
            out.unlink()
            raise SystemExit(f"{corpus} holds only {lines} documents, asked for {n_docs}")
    return out


def write_config(path: Path, state_dir: Path, extra: Mapping[str, Any] | None = None) -> Path:
    """A settings file whose store, ledger and dead letters live under ``state_dir``."""
    settings: dict[str, Any] = {
        "sink": {"lancedb": {"uri": str(state_dir / "store")}},
        "budget": {"ledger_path": str(state_dir / "ledger.sqlite")},
        "dead_letters": {"dir": str(state_dir / "dead_letters")},
        # the paid-results cache too: a first run must start cold and pay (else a previous
        # run's cached API vectors make its "API requests" 0)
        "api": {"result_cache": {"path": str(state_dir / "api_results.sqlite")}},
    }
    for key, value in (extra or {}).items():
        settings[key] = {**settings.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


def bench_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               # a busy 2-core machine can take longer than Prefect's default 20 s to start it
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    env.update(extra or {})
    return env


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            out += [int(c) for c in text.split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[tuple[int, str]]:
    """``pid`` and each of its descendants, with a short name (the module or program it runs,
    and its pid); a process that is exiting (no command line left) is left out."""
    out: list[tuple[int, str]] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(argv):
            out.append((p, f"{_short_name(argv)}[{p}]"))
        todo += _children(p)
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of one process in MB, from ``/proc/<pid>/statm``."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE / 2**20


def tree_usage(pid: int) -> dict[str, tuple[float, float]]:
    """(resident MB, CPU seconds used so far) of ``pid`` and each of its descendants, by short
    name, from one walk of the process tree."""
    out: dict[str, tuple[float, float]] = {}
    for p, name in _tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
            out[name] = (rss_mb(p), (int(fields[11]) + int(fields[12])) / _TICK)  # utime + stime
        except (OSError, IndexError, ValueError):
            continue  # exited between the walk and the read
    return out


def _short_name(argv: list[bytes]) -> str:
    args = [a.decode(errors="replace") for a in argv if a]
    if "-m" in args[:-1]:
        return args[args.index("-m") + 1]
    return Path(args[0]).name if args else "?"


@dataclass
class CliRun:
    docs: int
    wall_s: float
    peak_rss_mb: float
    report: dict[str, Any] = field(default_factory=dict)
    rss_trace: list[tuple[float, float]] = field(default_factory=list)
    peak_by_process: dict[str, float] = field(default_factory=dict)  # at the peak sample
    cpu_s_by_process: dict[str, float] = field(default_factory=dict)  # at the last sample

    def cpu_breakdown(self) -> str:
        return ", ".join(f"{name} {s:.0f}" for name, s in
                         sorted(self.cpu_s_by_process.items(), key=lambda kv: -kv[1]))

    def peak_breakdown(self) -> str:
        return ", ".join(f"{name} {mb:.0f}" for name, mb in
                         sorted(self.peak_by_process.items(), key=lambda kv: -kv[1]))


def run_cli(source: Path, config: Path, docs: int, *, extra_args: Sequence[str] = (),
            env: Mapping[str, str] | None = None, timeout_s: float = 7200) -> CliRun:
    """``tierembed run SOURCE --config CONFIG --json --quiet`` timed and memory-sampled."""
    cmd = [sys.executable, "-m", "flows.cli", "run", str(source), "--config", str(config),
           "--json", "--quiet", *extra_args]
    trace: list[tuple[float, float]] = []
    peak: dict[str, float] = {}
    cpu: dict[str, float] = {}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(env or bench_env()), stdout=out, stderr=err)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak, cpu
            while not done.is_set():
                usage = tree_usage(proc.pid)
                # a process that has exited keeps its last CPU figure
                cpu = {**cpu, **{name: used for name, (_, used) in usage.items()}}
                by_process = {name: rss for name, (rss, _) in usage.items()}
                total = sum(by_process.values())
                if total > sum(peak.values()):
                    peak = by_process
                trace.append((time.perf_counter() - start, total))
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            proc.wait(timeout=timeout_s)
        finally:
            done.set()
            sampler.join()
            if proc.poll() is None:
                proc.kill()
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-3000:]}\n{stdout[-2000:]}")
    report = json.loads(stdout[stdout.index("{"):])
    return CliRun(docs, wall, max((r for _, r in trace), default=0.0), report, trace, peak, cpu)


def linear_fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y over x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope
