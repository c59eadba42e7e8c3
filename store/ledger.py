"""The spend ledger: what the API tier has cost, month to date and per run, across runs.

A SQLite file (``budget.ledger_path``, default ``.tierembed/ledger.sqlite``) that outlives
runs. The flow reads it before a run (:meth:`SpendLedger.begin_run`) and records the
billed spend after it (:meth:`SpendLedger.finish_run`); ``tierembed budget status`` shows it.

Safe under concurrent runs, on one machine or several sharing the file on a local disk:
the database runs in WAL mode with a busy timeout, and every read-modify-write is one
``BEGIN IMMEDIATE`` transaction, so two runs never read the same month-to-date and both
spend the remainder. ``begin_run`` *reserves* the budget it hands the run (the tighter of
the per-run cap and what the month has left after billed spend and other runs'
reservations); ``finish_run`` replaces the reservation with the billed figures. A run
that fails or dies keeps its reservation counted as *unreconciled* spend: the runtime
guard keeps billed spend within the reservation, so it is a true upper bound, and the
monthly cap holds even when a run's real bill is unknown. (A per-run cap lets concurrent
runs share a monthly budget; without one, the first run reserves all the month has left.)

Runs that die heal. Each run records who runs it (host, process id and the process's start
time, so a reused pid is not mistaken for it) and a heartbeat (:meth:`SpendLedger.heartbeat`,
every ``budget.heartbeat_s``). :meth:`SpendLedger.heal` - called by every ``begin_run`` and
by ``tierembed budget status`` - finds running runs that are dead: on this host, their
process is gone; on another host, their heartbeat is older than ``stale_after_s``. A dead
run is settled at the spend it recorded (replies are recorded as they arrive, see
:meth:`SpendLedger.add_spend`): it becomes ``failed`` with its reservation released and an
error saying so, and the caller reports it. What a run had in flight when it died is not in
the ledger; ``tierembed budget reconcile`` replaces a run's figures with the provider's bill.

Months are calendar months in UTC, taken from the injected clock when a run begins; a run
is charged to the month it began in. Network filesystems (NFS, SMB) do not give SQLite
the locking it needs: keep the ledger on a local disk, or give each worker its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from store.sqlite import immediate_transaction, open_connection, snapshot
from tiering.budget import budget_left
from tiering.errors import ConfigError

__all__ = [
    "SCHEMA_VERSION",
    "LedgerError",
    "SpendLine",
    "ModelSpend",
    "RunRecord",
    "MonthSpend",
    "Reservation",
    "RunOwner",
    "HealedRun",
    "HeldBy",
    "ProcessProbe",
    "LocalProcesses",
    "SpendLedger",
    "month_of",
]

SCHEMA_VERSION = 2
Clock = Callable[[], datetime]
_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    month TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    source TEXT NOT NULL DEFAULT '',
    budget_usd REAL,
    reserved_usd REAL NOT NULL DEFAULT 0,
    est_cost_usd REAL NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    host TEXT,
    pid INTEGER,
    pid_start TEXT,
    heartbeat_at TEXT
);
CREATE INDEX IF NOT EXISTS runs_month ON runs (month, status);
CREATE TABLE IF NOT EXISTS spend (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    month TEXT NOT NULL,
    tier TEXT NOT NULL,
    model_version TEXT NOT NULL,
    model TEXT NOT NULL,
    documents INTEGER NOT NULL DEFAULT 0,
    billed_tokens INTEGER NOT NULL DEFAULT 0,
    est_cost_usd REAL NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, tier, model_version)
);
CREATE INDEX IF NOT EXISTS spend_month ON spend (month);
"""


class LedgerError(ConfigError):
    """The ledger file cannot be opened or is of an unknown schema; the message says why."""


def month_of(moment: datetime) -> str:
    """The ledger month (``YYYY-MM``, UTC) of ``moment``; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SpendLine:
    """What one (tier, model version) cost in one run; the local tier costs 0."""

    tier: str
    model_version: str
    model: str
    documents: int
    billed_tokens: int
    est_cost_usd: float
    cost_usd: float


@dataclass(frozen=True, slots=True)
class ModelSpend:
    """A month's spend on one (tier, model version), summed over runs."""

    tier: str
    model_version: str
    model: str
    runs: int
    documents: int
    billed_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    month: str
    started_at: str
    finished_at: str | None
    status: str
    source: str
    budget_usd: float | None
    reserved_usd: float
    est_cost_usd: float
    cost_usd: float
    error: str
    host: str | None = None
    pid: int | None = None
    heartbeat_at: str | None = None


@dataclass(frozen=True, slots=True)
class RunOwner:
    """The process that runs a run: ``host`` names the machine (and kernel boot and pid
    namespace, so containers sharing a hostname are told apart), ``pid_start`` the
    process's start time as the kernel counts it, so a reused pid is not taken for it."""

    host: str
    pid: int
    pid_start: str = ""

    def describe(self, here: str) -> str:
        where = "this host" if self.host == here else f"host {self.host.split('|')[0]}"
        return f"process {self.pid} on {where}"


class ProcessProbe(Protocol):
    """Who this process is, and whether another run's process still lives."""

    def me(self) -> RunOwner: ...

    def alive(self, owner: RunOwner) -> bool | None:
        """True/False for a process on this host; None when it runs elsewhere."""
        ...


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of ``pid`` from /proc (Linux); None when there is no such process."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text[text.rfind(")") + 2:].split()  # the name may hold spaces and parentheses
    return fields[0], fields[19]


class LocalProcesses:
    """The real probe: hostname, kernel boot id and pid namespace name the host; /proc (or
    ``kill(pid, 0)`` elsewhere) tells whether a process lives. A zombie counts as dead."""

    def __init__(self) -> None:
        try:
            pidns = str(os.stat("/proc/self/ns/pid").st_ino)
        except OSError:
            pidns = ""
        self._host = "|".join((socket.gethostname(), _read("/proc/sys/kernel/random/boot_id")[:8], pidns))

    def me(self) -> RunOwner:
        stat = _proc_stat(os.getpid())
        return RunOwner(self._host, os.getpid(), stat[1] if stat else "")

    def alive(self, owner: RunOwner) -> bool | None:
        if owner.host != self._host:
            return None
        stat = _proc_stat(owner.pid)
        if stat is not None:
            state, start = stat
            return state not in ("Z", "X") and (not owner.pid_start or start == owner.pid_start)
        try:
            os.kill(owner.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's process
        return not Path("/proc").is_dir()  # /proc exists but had no entry: gone


@dataclass(frozen=True, slots=True)
class HealedRun:
    """A run found dead and settled at the spend it recorded."""

    run_id: str
    owner: str  # "process 123 on this host"
    why: str  # "its process is gone" / "no heartbeat since ..."
    reserved_usd: float
    recorded_usd: float

    def message(self) -> str:
        return (f"run {self.run_id} died without finishing ({self.owner}: {self.why}); its reservation "
                f"${self.reserved_usd:,.6f} was settled at the ${self.recorded_usd:,.6f} it recorded. "
                f"Requests it had in flight are not in the ledger: `tierembed budget reconcile "
                f"{self.run_id} --billed-usd USD` records the provider's bill")


@dataclass(frozen=True, slots=True)
class HeldBy:
    """Another run holding part of the month: a reservation, or a failed run's upper bound."""

    run_id: str
    status: str
    held_usd: float
    owner: str  # "process 123 on this host (alive)", or "" when unknown

    def message(self) -> str:
        if self.status == "failed":
            return (f"run {self.run_id} failed and holds ${self.held_usd:,.6f} until its bill is known: "
                    f"`tierembed budget reconcile {self.run_id} --billed-usd USD`")
        who = f" ({self.owner})" if self.owner else ""
        return f"run {self.run_id} is running{who} and holds ${self.held_usd:,.6f}"


@dataclass(frozen=True, slots=True)
class MonthSpend:
    """One month: billed spend (every run's recorded spend, running and failed runs'
    too), the unspent part of running runs' reservations (``reserved_usd``) and of failed
    runs' (``unreconciled_usd``, an upper bound on what they were billed beyond what they
    recorded). ``committed_usd`` is what a new run's budget is planned against."""

    month: str
    billed_usd: float
    reserved_usd: float
    unreconciled_usd: float
    running: int
    failed: int
    by_model: tuple[ModelSpend, ...]

    @property
    def charged_usd(self) -> float:
        """Spend charged to the month: billed plus failed runs' upper bounds."""
        return self.billed_usd + self.unreconciled_usd

    @property
    def committed_usd(self) -> float:
        return self.billed_usd + self.unreconciled_usd + self.reserved_usd


@dataclass(frozen=True, slots=True)
class Reservation:
    """What :meth:`SpendLedger.begin_run` granted a run.

    ``budget_usd`` is the run's budget (None: no limit at all); ``month_to_date_usd`` is
    the month's committed spend when the run began (other runs' reservations included).
    """

    run_id: str
    month: str
    budget_usd: float | None
    month_to_date_usd: float
    healed: tuple[HealedRun, ...] = ()  # dead runs this reservation settled first
    held_by: tuple[HeldBy, ...] = ()  # other runs holding part of the month

    def notes(self) -> list[str]:
        """Report lines: the dead runs settled, and who holds the month when the run got
        less than its per-run cap because of them."""
        return [h.message() for h in self.healed]


class SpendLedger:
    """The SQLite spend ledger. Each call opens its own short connection, so one instance
    may be shared by threads, and many processes may use the same file."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock = _utc_now,
        busy_timeout_s: float = 30.0,
        probe: ProcessProbe | None = None,
        stale_after_s: float = 600.0,
    ) -> None:
        self.path = Path(path).expanduser()
        self._clock = clock
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._probe = probe or LocalProcesses()
        self._stale_after = timedelta(seconds=stale_after_s)
        self._ensure_schema()

    # -- connection -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        return open_connection(self.path, self._busy_timeout_ms, lambda exc: LedgerError(
            f"cannot open the spend ledger {self.path}: {exc}; set budget.ledger_path to a "
            "writable local file"))

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction (``store.sqlite.immediate_transaction``)."""
        return immediate_transaction(self._connect)

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return snapshot(self._connect)

    def _ensure_schema(self) -> None:
        """Create or check the schema. Switching a new file to WAL needs an exclusive lock
        for which SQLite does not always run the busy handler, so runs that open a new
        ledger at the same moment can get SQLITE_BUSY at once: retry within the timeout."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        delay = 0.01
        while True:
            try:
                self._ensure_schema_once()
                return
            except LedgerError as exc:
                cause = exc.__cause__
                code = (getattr(cause, "sqlite_errorcode", 0) or 0) & 0xFF  # primary result code
                if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _ensure_schema_once(self) -> None:
        conn = self._connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(
                    f"the spend ledger {self.path} cannot use WAL mode (got {mode!r}); "
                    "put budget.ledger_path on a local disk"
                )
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"the spend ledger {self.path} has schema {version}, newer than this "
                    f"tierembed understands ({SCHEMA_VERSION}); upgrade tierembed"
                )
            conn.execute("BEGIN IMMEDIATE")
            # Statement by statement: executescript() would COMMIT the open transaction.
            for statement in _statements():
                conn.execute(statement)
            have = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
            for column, kind in _RUN_COLUMNS_V2:  # schema 1 -> 2: who runs a run, and its heartbeat
                if column not in have:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a usable spend ledger: {exc}") from exc
        finally:
            conn.close()

    # -- runs -------------------------------------------------------------------------

    def begin_run(
        self,
        run_id: str,
        *,
        per_run_usd: float | None,
        monthly_usd: float | None,
        source: str = "",
        month_to_date_usd: float | None = None,
    ) -> Reservation:
        """Reserve this run's budget: the tighter of ``per_run_usd`` and what the month has
        left after committed spend. ``month_to_date_usd`` overrides the ledger's figure (a
        what-if); the reservation is recorded either way. Re-beginning a run id that has
        finished raises :class:`LedgerError` (run ids are unique)."""
        now = self._clock()
        month = month_of(now)
        me = self._probe.me()
        with self._write() as conn:
            healed = self._heal(conn, now)  # a dead run's reservation must not hold this one back
            existing = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if existing is not None and existing["status"] != "running":
                raise LedgerError(f"run {run_id!r} is already in the ledger ({existing['status']}); "
                                  "use a new run id")
            committed = _committed(conn, month, exclude_run=run_id)
            mtd = committed if month_to_date_usd is None else month_to_date_usd
            left = budget_left(per_run_usd, monthly_usd, mtd)
            conn.execute(
                "INSERT OR REPLACE INTO runs (run_id, month, started_at, status, source, budget_usd,"
                " reserved_usd, host, pid, pid_start, heartbeat_at)"
                " VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                (run_id, month, now.isoformat(), source, left, left or 0.0, me.host, me.pid, me.pid_start,
                 now.isoformat()),
            )
            held = self._held_by(conn, month, exclude_run=run_id)
        return Reservation(run_id, month, left, mtd, tuple(healed), tuple(held))

    # -- liveness ---------------------------------------------------------------------

    def heartbeat(self, run_id: str) -> bool:
        """Tell the ledger ``run_id`` is alive; False when it is no longer running there
        (finished, or taken for dead and settled by another process)."""
        with self._write() as conn:
            cur = conn.execute("UPDATE runs SET heartbeat_at = ? WHERE run_id = ? AND status = 'running'",
                               (self._clock().isoformat(), run_id))
            return cur.rowcount == 1

    @contextmanager
    def heartbeat_while(self, run_id: str, interval_s: float) -> Iterator[None]:
        """Beat for ``run_id`` every ``interval_s`` from a daemon thread while the block runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval_s):
                try:
                    if not self.heartbeat(run_id):
                        _log.warning("run %s: the ledger no longer holds it as running", run_id)
                except LedgerError as exc:  # a busy or unwritable ledger must not stop the run
                    _log.warning("run %s: heartbeat not recorded: %s", run_id, exc)

        thread = threading.Thread(target=beat, name=f"ledger-heartbeat-{run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def heal(self) -> list[HealedRun]:
        """Find running runs that are dead and settle each at the spend it recorded."""
        with self._write() as conn:
            return self._heal(conn, self._clock())

    def _heal(self, conn: sqlite3.Connection, now: datetime) -> list[HealedRun]:
        healed = []
        here = self._probe.me().host
        for row in conn.execute("SELECT * FROM runs WHERE status = 'running' AND pid IS NOT NULL").fetchall():
            owner = RunOwner(row["host"] or "", int(row["pid"]), row["pid_start"] or "")
            why = self._dead_because(owner, row, now)
            if why is None:
                continue
            spent = conn.execute(
                "SELECT COALESCE(SUM(cost_usd), 0), COALESCE(SUM(est_cost_usd), 0) FROM spend "
                "WHERE run_id = ?", (row["run_id"],),
            ).fetchone()
            run = HealedRun(row["run_id"], owner.describe(here), why, float(row["reserved_usd"]),
                            float(spent[0]))
            conn.execute(
                "UPDATE runs SET status = 'failed', finished_at = ?, reserved_usd = 0, cost_usd = ?, "
                "est_cost_usd = ?, error = ? WHERE run_id = ?",
                (now.isoformat(), run.recorded_usd, float(spent[1]), run.message()[:2000], run.run_id),
            )
            _log.warning("%s", run.message())
            healed.append(run)
        return healed

    def _dead_because(self, owner: RunOwner, row: sqlite3.Row, now: datetime) -> str | None:
        alive = self._probe.alive(owner)
        if alive is False:
            return "its process is gone"
        if alive is None:  # another host: only the heartbeat can tell
            last = datetime.fromisoformat(row["heartbeat_at"] or row["started_at"])
            if last.tzinfo is None:
                last = last.replace(tzinfo=UTC)
            if now - last > self._stale_after:
                return f"no heartbeat since {last.isoformat(timespec='seconds')}"
        return None

    def _held_by(self, conn: sqlite3.Connection, month: str, *, exclude_run: str) -> list[HeldBy]:
        here = self._probe.me().host
        rows = conn.execute(
            f"SELECT h.run_id, h.status, h.held, r.host, r.pid, r.pid_start FROM ({_HELD}) h "
            "JOIN runs r ON r.run_id = h.run_id WHERE h.held > 0 AND h.run_id != ? ORDER BY h.held DESC",
            (month, exclude_run),
        ).fetchall()
        out = []
        for r in rows:
            owner = ""
            if r["pid"] is not None:
                o = RunOwner(r["host"] or "", int(r["pid"]), r["pid_start"] or "")
                alive = self._probe.alive(o)
                owner = o.describe(here) + {True: ", alive", False: ", gone", None: ""}[alive]
            out.append(HeldBy(r["run_id"], r["status"], float(r["held"]), owner))
        return out

    def finish_run(self, run_id: str, lines: Iterable[SpendLine]) -> RunRecord:
        """Record the billed spend of ``run_id`` and release its reservation.

        Idempotent: recording the same run again replaces its lines, never adds to them.
        Also reconciles a failed run once its real bill is known. A run that was never
        begun is recorded in the current month."""
        lines = list(lines)
        now = self._clock()
        with self._write() as conn:
            month = self._run_month(conn, run_id, now)
            conn.execute("DELETE FROM spend WHERE run_id = ?", (run_id,))
            conn.executemany(
                "INSERT INTO spend (run_id, month, tier, model_version, model, documents, "
                "billed_tokens, est_cost_usd, cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, month, x.tier, x.model_version, x.model, x.documents, x.billed_tokens,
                  x.est_cost_usd, x.cost_usd) for x in lines],
            )
            conn.execute(
                "UPDATE runs SET status = 'succeeded', finished_at = ?, reserved_usd = 0, "
                "est_cost_usd = ?, cost_usd = ?, error = '' WHERE run_id = ?",
                (now.isoformat(), sum(x.est_cost_usd for x in lines), sum(x.cost_usd for x in lines),
                 run_id),
            )
            return _run_record(conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone())

    def add_spend(self, run_id: str, line: SpendLine) -> None:
        """Add one reply's spend to ``run_id`` as it arrives (any process may call this), so
        a run killed at any moment leaves in the ledger what it was billed. The run's
        committed spend is the larger of its reservation and what it recorded;
        :meth:`finish_run` later replaces the lines with the run's final figures."""
        now = self._clock()
        with self._write() as conn:
            month = self._run_month(conn, run_id, now)
            conn.execute(
                "INSERT INTO spend (run_id, month, tier, model_version, model, documents, "
                "billed_tokens, est_cost_usd, cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id, tier, model_version) DO UPDATE SET "
                "documents = documents + excluded.documents, "
                "billed_tokens = billed_tokens + excluded.billed_tokens, "
                "est_cost_usd = est_cost_usd + excluded.est_cost_usd, "
                "cost_usd = cost_usd + excluded.cost_usd",
                (run_id, month, line.tier, line.model_version, line.model, line.documents,
                 line.billed_tokens, line.est_cost_usd, line.cost_usd),
            )

    def fail_run(
        self, run_id: str, error: str, *, nothing_sent: bool = False, settle: bool = False
    ) -> RunRecord:
        """Mark ``run_id`` failed. Its reservation stays charged to the month as an
        unreconciled upper bound until :meth:`finish_run` records the real bill, unless
        ``nothing_sent`` (the run failed before it could call the API) or ``settle`` (it was
        stopped on purpose, by a signal, after recording each reply's spend): then the
        reservation is released and the run counts at the spend it recorded."""
        now = self._clock()
        with self._write() as conn:
            self._run_month(conn, run_id, now)
            spent = conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM spend WHERE run_id = ?",
                                 (run_id,)).fetchone()[0]
            conn.execute(
                "UPDATE runs SET status = 'failed', finished_at = ?, error = ?, "
                "reserved_usd = CASE WHEN ? THEN 0 ELSE reserved_usd END, "
                "cost_usd = CASE WHEN ? THEN ? ELSE cost_usd END WHERE run_id = ?",
                (now.isoformat(), error[:2000], nothing_sent or settle, settle, float(spent), run_id),
            )
            return _run_record(conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone())

    def reconcile_run(self, run_id: str, billed_usd: float) -> RunRecord:
        """Record the real bill of a run that failed or was killed (its reservation then
        stops counting against the month). ``billed_usd`` comes from the provider's usage
        page; 0 simply releases the reservation."""
        if billed_usd < 0:
            raise LedgerError(f"billed_usd must be >= 0, got {billed_usd}")
        with self._read() as conn:
            row = conn.execute("SELECT status, error FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise LedgerError(f"run {run_id!r} is not in the ledger; `tierembed budget status` lists runs")
        if row["status"] == "succeeded":
            raise LedgerError(f"run {run_id!r} finished normally; its bill is already recorded")
        line = SpendLine("api", "reconciled", "", 0, 0, billed_usd, billed_usd)
        self.finish_run(run_id, [line])
        note = f"reconciled by hand: billed ${billed_usd:.6f}; {row['error'] or 'killed while running'}"
        with self._write() as conn:
            # It stays a failed run, now with its real bill and no reservation.
            conn.execute("UPDATE runs SET status = 'failed', reserved_usd = 0, error = ? WHERE run_id = ?",
                         (note[:2000], run_id))
            return _run_record(conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone())

    @staticmethod
    def _run_month(conn: sqlite3.Connection, run_id: str, now: datetime) -> str:
        row = conn.execute("SELECT month FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is not None:
            return str(row["month"])
        month = month_of(now)
        conn.execute(
            "INSERT INTO runs (run_id, month, started_at, status) VALUES (?, ?, ?, 'running')",
            (run_id, month, now.isoformat()),
        )
        return month

    # -- reading ----------------------------------------------------------------------

    def current_month(self) -> str:
        return month_of(self._clock())

    def month_spend(self, month: str | None = None) -> MonthSpend:
        """Billed spend per (tier, model version), reservations and unreconciled runs of
        ``month`` (default: the clock's current month)."""
        month = month or self.current_month()
        with self._read() as conn:
            rows = conn.execute(
                "SELECT tier, model_version, model, COUNT(DISTINCT run_id) AS runs, "
                "SUM(documents) AS documents, SUM(billed_tokens) AS billed_tokens, "
                "SUM(cost_usd) AS cost_usd FROM spend WHERE month = ? "
                "GROUP BY tier, model_version, model ORDER BY tier, model_version",
                (month,),
            ).fetchall()
            status = {
                r["status"]: (int(r["n"]), float(r["held"] or 0.0))
                for r in conn.execute(
                    f"SELECT status, COUNT(*) AS n, SUM(held) AS held FROM ({_HELD}) GROUP BY status",
                    (month,),
                )
            }
        by_model = tuple(
            ModelSpend(r["tier"], r["model_version"], r["model"], int(r["runs"]), int(r["documents"]),
                       int(r["billed_tokens"]), float(r["cost_usd"]))
            for r in rows
        )
        running, reserved = status.get("running", (0, 0.0))
        failed, unreconciled = status.get("failed", (0, 0.0))
        return MonthSpend(month, sum(m.cost_usd for m in by_model), reserved, unreconciled,
                          running, failed, by_model)

    def month_to_date(self, month: str | None = None) -> float:
        """Spend charged to ``month`` so far (billed + unreconciled), without reservations."""
        return self.month_spend(month).charged_usd

    def runs(self, *, month: str | None = None, limit: int = 20) -> list[RunRecord]:
        """The latest runs, newest first (of ``month`` when given)."""
        query = "SELECT * FROM runs" + (" WHERE month = ?" if month else "")
        query += " ORDER BY started_at DESC, run_id DESC LIMIT ?"
        params: tuple[object, ...] = (month, limit) if month else (limit,)
        with self._read() as conn:
            return [_run_record(r) for r in conn.execute(query, params).fetchall()]

    def run(self, run_id: str) -> RunRecord | None:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else _run_record(row)

    def spend_of_runs(self, prefix: str) -> float:
        """What the runs whose id starts with ``prefix`` were charged: billed spend, plus for
        a run still running or failed the unspent part of its reservation (an upper bound
        of what it may have been billed)."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._read() as conn:
            row = conn.execute(
                f"SELECT COALESCE(SUM(spent + held), 0) FROM ({_HELD_ALL}) WHERE run_id LIKE ? ESCAPE '\\'",
                (pattern,)).fetchone()
        return float(row[0])

    def run_lines(self, run_id: str) -> list[SpendLine]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM spend WHERE run_id = ? ORDER BY tier, model_version", (run_id,)
            ).fetchall()
        return [SpendLine(r["tier"], r["model_version"], r["model"], int(r["documents"]),
                          int(r["billed_tokens"]), float(r["est_cost_usd"]), float(r["cost_usd"]))
                for r in rows]


_RUN_COLUMNS_V2 = (("host", "TEXT"), ("pid", "INTEGER"), ("pid_start", "TEXT"), ("heartbeat_at", "TEXT"))


def _statements() -> list[str]:
    return [s.strip() for s in _SCHEMA.split(";") if s.strip()]


# Per run: what it recorded (add_spend / finish_run) and what its reservation holds beyond
# that. A running or failed run's reservation is an upper bound on its spend, so only the
# part not yet recorded is added to the month; a finished run holds nothing.
_HELD_ALL = """
SELECT r.run_id, r.status,
       COALESCE(s.spent, 0) AS spent,
       CASE WHEN r.status IN ('running', 'failed') THEN MAX(r.reserved_usd - COALESCE(s.spent, 0), 0)
            ELSE 0 END AS held
FROM runs r LEFT JOIN (SELECT run_id, SUM(cost_usd) AS spent FROM spend GROUP BY run_id) s
  ON s.run_id = r.run_id
"""
_HELD = _HELD_ALL + "WHERE r.month = ?"


def _committed(conn: sqlite3.Connection, month: str, *, exclude_run: str) -> float:
    """Everything recorded this month plus the unrecorded part of every open reservation,
    other than ``exclude_run``'s."""
    row = conn.execute(
        f"SELECT COALESCE(SUM(spent + held), 0) FROM ({_HELD}) WHERE run_id != ?", (month, exclude_run)
    ).fetchone()
    return float(row[0])


def _run_record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        run_id=row["run_id"], month=row["month"], started_at=row["started_at"],
        finished_at=row["finished_at"], status=row["status"], source=row["source"],
        budget_usd=row["budget_usd"], reserved_usd=float(row["reserved_usd"]),
        est_cost_usd=float(row["est_cost_usd"]), cost_usd=float(row["cost_usd"]), error=row["error"],
        host=row["host"], pid=row["pid"], heartbeat_at=row["heartbeat_at"],
    )
