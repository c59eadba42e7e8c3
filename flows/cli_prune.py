"""``tierembed prune SOURCE``: remove vectors whose document left SOURCE or moved to another
model version. A dry run unless ``--apply``; both print the same counts (see flows.prune)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from flows.prune import PruneOutcome, prune_store
from tiering.errors import TierembedError
from tiering.prune import PruneReason
from tiering.settings import load_settings

__all__ = ["prune_command", "render_outcome"]

_WHY = {PruneReason.LEFT_SOURCE: "id no longer in the source",
        PruneReason.MOVED: "old text; the current text is embedded by another version",
        PruneReason.RETIRED: "version retired (--include-retired)"}


def prune_command(
    source: Annotated[str, typer.Argument(help="The WHOLE corpus as runs read it: file, directory, glob "
                                          "(quote it) or Beam URL. Documents not in it count as gone, so "
                                          "never name one batch of an incremental load here.")],
    apply: Annotated[bool, typer.Option("--apply", help="Delete the stale vectors (default: a dry run that "
                                        "only reports them).")] = False,
    include_retired: Annotated[bool, typer.Option(
        "--include-retired", help="Also remove every vector of versions the registry retired "
        "(`tierembed models retire`).")] = False,
    despite_unreadable: Annotated[bool, typer.Option(
        "--despite-unreadable", help="Prune documents gone from the source even though some records "
        "have no readable id (by default they block that reason: any of them may be a stored "
        "document).")] = False,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML settings file.",
                                                   envvar="TIEREMBED_CONFIG")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON, every stale row "
                                          "included.")] = False,
) -> None:
    """Remove vectors that no longer stand for a document of SOURCE, per model version.

    A vector is stale when its document id is no longer in SOURCE (left_source), or when its
    document changed and its new text is embedded by another version while this version still
    holds the old text (moved). Records that fail validation but whose id is known keep their
    vectors; records without a readable id block left_source (see --despite-unreadable).
    Nothing current is ever removed: a vector of a document's current text stays.

    Dry run by default: prints the stale vectors per version and reason, with sample ids.
    Run it, read it, then add --apply: the same counts are printed with what was deleted.
    """
    from flows.cli import _setup_logging

    _setup_logging(False)
    try:
        outcome = prune_store(load_settings(config), source, apply=apply, include_retired=include_retired,
                              despite_unidentified=despite_unreadable)
    except TierembedError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from exc
    if as_json:
        typer.echo(json.dumps(outcome.to_json(), indent=2))
        return
    typer.echo(render_outcome(outcome))


def render_outcome(outcome: PruneOutcome, width: int = 120) -> str:
    plan = outcome.plan
    mode = "deleted" if outcome.applied else "dry run: would delete"
    table = Table(title=f"prune {outcome.source} ({mode}); {outcome.store}", title_justify="left")
    for name in ("version", "reason", "vectors", "sample ids", "why"):
        table.add_column(name, justify="right" if name == "vectors" else "left")
    samples = outcome.samples()
    for (version, reason), n in sorted(plan.counts().items(), key=lambda kv: (kv[0][0], kv[0][1].value)):
        shown = samples[(version, reason)]
        table.add_row(version, reason.value, str(n), ", ".join(shown) + (" ..." if n > len(shown) else ""),
                      _WHY[reason])
    console = Console(width=width, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
    lines = [capture.get().rstrip() if plan.stale else f"prune {outcome.source}; {outcome.store}"]
    lines.append(f"source: {outcome.source_documents} documents, {outcome.rejected_with_id} rejected records "
                 f"with a known id (their vectors stay), {plan.unidentified} records without a readable id")
    lines.append(f"store: {plan.rows_scanned} vectors scanned; {len(plan.stale)} stale")
    if outcome.applied:
        per = ", ".join(f"{v} {n}" for v, n in sorted(outcome.deleted.items())) or "none"
        lines.append(f"deleted: {sum(outcome.deleted.values())} vectors ({per})")
    if plan.withheld_left_source:
        where = ", ".join(plan.unidentified_at)
        lines.append(f"withheld: {plan.withheld_left_source} vectors whose id is not in the source were KEPT "
                     f"because {plan.unidentified} records have no readable id (at {where}); any of them may "
                     "be one of those documents. Fix or remove those records, or pass --despite-unreadable")
    if plan.retired_kept:
        lines.append(f"kept: {plan.retired_kept} vectors of retired versions {', '.join(outcome.retired)}; "
                     "add --include-retired to remove them")
    if outcome.applied:
        short = {v: n for v, n in outcome.deleted.items() if n < len(plan.ids(v))}
        if short:
            lines.append(f"note: fewer deleted than planned for {sorted(short)}: those rows changed since "
                         "they were read (a run re-embedded them) and were kept")
    elif plan.stale:
        lines.append("dry run: nothing was deleted; run again with --apply to delete these vectors")
    else:
        lines.append("nothing to prune")
    return "\n".join(lines)
