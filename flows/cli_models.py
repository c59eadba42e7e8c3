"""``tierembed models``: model versions as a lifecycle (see ``tiering.versions``).

``list`` shows each version's state, traffic weight or shadow sample and its history;
``shadow``, ``promote``, ``retire`` and ``rollback`` change the registry that runs route by
and search serves from; each change is recorded (who, when, before and after) and sent as a
Prefect event ``tierembed.models.<action>`` when a Prefect API is configured. ``compare``
measures two versions on the documents both embedded (:mod:`flows.compare`) and records the
result; ``promote`` warns when that evidence does not show the candidate better than the
live version of its tier (and refuses with ``--require-better``).
"""

from __future__ import annotations

import getpass
import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from store.registry import RegistryChange, VersionRegistry, open_registry
from tiering.compare import PromotionCheck, promotion_check
from tiering.errors import TierembedError
from tiering.settings import TierembedSettings, load_settings
from tiering.versions import Registry, VersionState, promote, retire, shadow

__all__ = ["models_app", "model_event", "render_registry"]

models_app = typer.Typer(
    name="models",
    help="Model versions as a lifecycle: candidate -> shadow -> live -> retired. Runs route by "
    "the registry and search serves its live versions only.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EVENT_PREFIX = "tierembed.models"
_PAST = {"promote": "promoted", "shadow": "shadowed", "retire": "retired", "rollback": "rolled_back"}

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML settings file.",
                                                   envvar="TIEREMBED_CONFIG")]
ByOpt = Annotated[Optional[str], typer.Option("--by", help="Who makes the change (default: your user name).")]


def _fail(exc: BaseException) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _by(by: str | None) -> str:
    return by or getpass.getuser()


def _open(config: Path | None, by: str) -> tuple[TierembedSettings, VersionRegistry, Registry]:
    from flows.endpoint import settings_for_endpoint

    # the versions runs really use (the local stand-in renames API versions)
    settings = settings_for_endpoint(load_settings(config))
    registry, snapshot = open_registry(settings, by=by)
    return settings, registry, snapshot


def model_event(change: RegistryChange, evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``prefect.events.emit_event`` for one registry change;
    ``evidence`` (a promotion's check against the recorded comparisons) joins the payload."""
    before = {e.version: e for e in change.before.entries}
    extra = {} if evidence is None else {"evidence": evidence}
    return {
        "event": f"{EVENT_PREFIX}.{_PAST.get(change.action, change.action)}",
        "resource": {"prefect.resource.id": f"tierembed.model-version.{change.version}",
                     "prefect.resource.name": f"model version {change.version}"},
        "payload": {
            "seq": change.seq, "action": change.action, "version": change.version, "by": change.by,
            "at": change.at, "note": change.note,
            "changed": {e.version: {"from": _state(before.get(e.version)), "to": _state(e)}
                        for e in change.after.entries if before.get(e.version) != e},
            **extra,
        },
    }


def _state(entry: Any) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {"state": entry.state.value, "traffic_weight": entry.traffic_weight,
            "shadow_sample": entry.shadow_sample}


def _announce(change: RegistryChange, evidence: dict[str, Any] | None = None) -> None:
    from flows.events import emit_prefect_event

    try:
        sent = emit_prefect_event(**model_event(change, evidence))
    except Exception as exc:  # noqa: BLE001 - the change is made and recorded; a lost event is a warning
        typer.secho(f"warning: change #{change.seq} recorded, but its Prefect event was not sent: {exc}",
                    fg=typer.colors.YELLOW, err=True)
        return
    where = "sent to Prefect" if sent else "not sent (no Prefect API configured: set PREFECT_API_URL)"
    typer.echo(f"event {model_event(change)['event']}: {where}")


def _models_of(settings: TierembedSettings) -> dict[str, str]:
    return {m.version: m.model for m in (*settings.local.models, *settings.api.models)}


def render_registry(snapshot: Registry, history: list[RegistryChange], models: dict[str, str],
                    console: Console) -> None:
    table = Table(title="model versions", title_justify="left")
    for col in ("version", "tier", "state", "traffic", "shadow sample", "model", "changed by", "changed at"):
        table.add_column(col, justify="right" if col in ("traffic", "shadow sample") else "left")
    for e in snapshot.entries:
        traffic = f"{e.traffic_weight:.0%}" if e.state.value == "live" else "-"
        sample = f"{e.shadow_sample:.1%}" if e.state.value == "shadow" else "-"
        table.add_row(e.version, e.tier.value, e.state.value, traffic, sample,
                      models.get(e.version, "(not in settings)"), e.changed_by, e.changed_at)
    console.print(table)
    if not history:
        return
    past = Table(title="history (newest first)", title_justify="left")
    for col in ("#", "at", "by", "action", "version", "note"):
        past.add_column(col)
    for c in history:
        note = c.note + (f" (undone by #{c.undone_by})" if c.undone_by else "")
        past.add_row(str(c.seq), c.at, c.by, c.action, c.version, note)
    console.print(past)


@models_app.command("list")
def list_versions(
    config: ConfigOpt = None,
    history: Annotated[int, typer.Option(min=0, help="How many past changes to show.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Each version's state, traffic share or shadow sample, and the latest changes."""
    try:
        settings, registry, snapshot = _open(config, _by(None))
        past = registry.history(history)
    except TierembedError as exc:
        _fail(exc)
        return
    if as_json:
        typer.echo(json.dumps({"registry": str(registry.path),
                               "versions": [_entry_json(e) for e in snapshot.entries],
                               "history": [_change_json(c) for c in past]}, indent=2))
        return
    console = Console(width=max(130, Console().width))
    console.print(f"registry: {registry.path}")
    render_registry(snapshot, past, _models_of(settings), console)


def _entry_json(entry: Any) -> dict[str, Any]:
    return {**asdict(entry), "tier": entry.tier.value, "state": entry.state.value}


def _change_json(c: RegistryChange) -> dict[str, Any]:
    return {"seq": c.seq, "at": c.at, "by": c.by, "action": c.action, "version": c.version, "note": c.note,
            "undone_by": c.undone_by, "after": [_entry_json(e) for e in c.after.entries]}


def _change(config: Path | None, by: str | None, action: str, version: str, note: str,
            fn: Any, *, require_better: bool | None = None) -> None:
    """``require_better`` (promote only; None elsewhere): check the recorded evidence first."""
    who = _by(by)
    evidence = None
    try:
        _, registry, snapshot = _open(config, who)
        if require_better is not None:
            evidence = _evidence(registry, snapshot, version, require_better)
        change = registry.apply(action, version, lambda reg: fn(reg, who, registry.now()), by=who, note=note)
    except TierembedError as exc:
        _fail(exc)
        return
    typer.echo(f"#{change.seq} {action} {version}: {_summary(change)}")
    _announce(change, evidence)


def _evidence(registry: VersionRegistry, snapshot: Registry, version: str,
              require_better: bool) -> dict[str, Any]:
    """Warn (or refuse, with ``--require-better``) unless the recorded comparisons show
    ``version`` better than every live version of its tier; the check for the event."""
    entry = snapshot.require(version)
    live = [e.version for e in snapshot.in_state(VersionState.LIVE, entry.tier)]
    check = promotion_check(version, live, registry.comparisons(version))
    for warning in check.warnings:
        typer.secho(f"{'error' if require_better else 'warning'}: {warning}",
                    fg=typer.colors.RED if require_better else typer.colors.YELLOW, err=True)
    if check.warnings and require_better:
        typer.secho(f"error: --require-better: {version} was not promoted; nothing changed",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    return _check_json(check)


def _check_json(check: PromotionCheck) -> dict[str, Any]:
    return {"measured_better": check.measured_better, "against": list(check.against),
            "warnings": list(check.warnings), "comparisons": [asdict(e) for e in check.evidence]}


def _summary(change: RegistryChange) -> str:
    moved = model_event(change)["payload"]["changed"]
    parts = []
    for version, d in moved.items():
        was = d["from"]["state"] if d["from"] else "new"
        now = d["to"]
        detail = (f" {now['traffic_weight']:.0%}" if now["state"] == "live"
                  else f" {now['shadow_sample']:.1%} sample" if now["state"] == "shadow" else "")
        parts.append(f"{version} {was} -> {now['state']}{detail}")
    return "; ".join(parts) or "no change"


@models_app.command("shadow")
def shadow_version(
    version: Annotated[str, typer.Argument(help="A version declared in local.models or api.models.")],
    sample: Annotated[float, typer.Option(help="Share of its tier's documents it also embeds "
                                          "(a stable sample), e.g. 0.05.")] = 0.05,
    config: ConfigOpt = None, by: ByOpt = None,
) -> None:
    """Embed a stable sample of the tier's documents with VERSION beside the live version,
    without serving it; then measure it with `tierembed models compare`."""
    _change(config, by, "shadow", version, f"sample {sample:.1%}",
            lambda reg, who, at: shadow(reg, version, sample=sample, by=who, at=at))


@models_app.command("promote")
def promote_version(
    version: Annotated[str, typer.Argument(help="The version to make live.")],
    share: Annotated[float, typer.Option(help="Its share of the tier's new documents; the other live "
                                         "versions keep serving and share the rest.")] = 1.0,
    require_better: Annotated[bool, typer.Option(
        "--require-better", help="Refuse (exit 2) unless `tierembed models compare` measured VERSION "
        "better than each live version of its tier (95% CI of the nDCG@10 difference above 0).")] = False,
    config: ConfigOpt = None, by: ByOpt = None,
) -> None:
    """Make VERSION live (served by search, receiving SHARE of new documents). The previous
    split is recorded: `tierembed models rollback` restores it exactly. Warns when no
    recorded comparison shows VERSION better than the live version (`tierembed models compare`)."""
    _change(config, by, "promote", version, f"share {share:.0%}",
            lambda reg, who, at: promote(reg, version, share=share, by=who, at=at),
            require_better=require_better)


@models_app.command("compare")
def compare(
    baseline: Annotated[str, typer.Argument(help="V1: the version compared against (usually live).")],
    candidate: Annotated[str, typer.Argument(help="V2: the version measured (a shadow or candidate).")],
    queries: Annotated[Path, typer.Option("--queries", exists=True, dir_okay=False,
                                          help="Labelled queries, JSONL {\"id\", \"text\"}.")],
    qrels: Annotated[Path, typer.Option("--qrels", exists=True, dir_okay=False,
                                        help="Relevance judgements, TREC 'query 0 doc grade'.")],
    k: Annotated[int, typer.Option("--k", min=1, max=1000, help="Cut-off of the measures: nDCG@k "
                                   "(what promote reads), R@k, MRR@k.")] = 10,
    resamples: Annotated[int, typer.Option(min=100, help="Bootstrap resamples for the CIs.")] = 2000,
    cache_dir: Annotated[Path, typer.Option(help="Where query vectors are cached (shared with "
                                            "`tierembed eval`).")] = Path(".tierembed/eval-cache"),
    record: Annotated[bool, typer.Option(help="Record the result in the version registry for "
                                         "`promote` (--no-record: only print it).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    config: ConfigOpt = None, by: ByOpt = None,
) -> None:
    """Measure CANDIDATE against BASELINE on the documents both embedded: each ranks the
    labelled queries alone; prints nDCG@k, R@k, MRR@k, the paired difference with its 95%
    CI, and the cost per 1k documents, and records the result for `promote`."""
    from flows.compare import CompareOptions, compare_store, render_comparison

    opts = CompareOptions(baseline, candidate, queries, qrels, cache_dir, resamples, record, k, _by(by))
    try:
        report = compare_store(load_settings(config), opts)
    except TierembedError as exc:
        _fail(exc)
        return
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    typer.echo(render_comparison(report, width=max(130, Console().width)), nl=False)


@models_app.command("retire")
def retire_version(
    version: Annotated[str, typer.Argument(help="The version to stop embedding and serving.")],
    config: ConfigOpt = None, by: ByOpt = None,
) -> None:
    """Stop embedding and serving VERSION (its traffic goes to the tier's other live
    versions). Its vectors stay in the store until `tierembed prune SOURCE --include-retired` removes them."""
    _change(config, by, "retire", version, "",
            lambda reg, who, at: retire(reg, version, by=who, at=at))


@models_app.command("rollback")
def rollback(config: ConfigOpt = None, by: ByOpt = None) -> None:
    """Undo the latest change (promote, shadow or retire) not yet rolled back, restoring the
    registry exactly as it was; nothing is re-embedded."""
    who = _by(by)
    try:
        _, registry, _ = _open(config, who)
        change = registry.rollback(by=who)
    except TierembedError as exc:
        _fail(exc)
        return
    typer.echo(f"#{change.seq} rollback: {change.note}; {_summary(change)}")
    _announce(change)


@models_app.command("backfill")
def backfill(
    version: Annotated[str, typer.Argument(help="The version to give vectors (any state).")],
    source: Annotated[str, typer.Argument(help="The corpus: file, directory, glob or Beam URL.")],
    budget: Annotated[Optional[float], typer.Option(
        "--budget", min=0.0, help="Total API spend in USD for this version's backfill, over all its "
        "runs (a killed or budget-limited backfill resumes where it stopped).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Embed every document of SOURCE with VERSION only, skipping what it already holds;
    run it again to resume. The same flow runs as the `backfill-version/backfill` deployment."""
    from flows.backfill import run_backfill
    from flows.cli import _setup_logging, _stopped
    from flows.prefect_server import prefect_api
    from flows.reporting import render_text
    from flows.signals import graceful_stop, stop_signal_of
    from tiering.outcome import RunStatus

    _setup_logging(True)
    try:
        # SIGINT/SIGTERM: settled at what was recorded, rerun to resume; the temporary Prefect
        # server (events) dies with this process even on SIGKILL
        with graceful_stop(), prefect_api():
            report = run_backfill(load_settings(config), version, source, budget)
        typer.echo(render_text(report))
    except TierembedError as exc:
        _fail(exc)
        return
    except BaseException as exc:
        signum = stop_signal_of(exc)
        if signum is None:
            raise
        raise typer.Exit(code=_stopped(signum)) from None
    code = RunStatus(report.status).exit_code
    if code:
        raise typer.Exit(code=code)
