"""The ``tierembed`` command line.

``tierembed run SOURCE`` runs the ``embed-documents`` flow (against a Prefect server when
PREFECT_API_URL is set, else Prefect's ephemeral API); ``tierembed search`` queries the
embedded store; ``tierembed replay`` re-runs a dead-letter set. ``--help`` on any command
explains its options.
"""

# Prefect before Beam (see flows.embed).
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Optional

import prefect  # noqa: F401
import typer

from flows.cli_values import finite_usd
from tiering.errors import ConfigError, InputNotFoundError, TierembedError
from tiering.outcome import EXIT_USAGE, RunStatus

__all__ = ["app", "main"]

app = typer.Typer(
    name="tierembed",
    help=(
        "Cost-aware tiered embeddings: score each document with a cheap classifier, embed the "
        "valuable ones with a paid API and the rest with a local model, within a budget.\n\n"
        "Quick start (no API key, no server needed):\n\n"
        "  tierembed run 'examples/data/*'\n\n"
        "  tierembed search '3 bedroom house with a garden'"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="YAML settings file (see examples/config.yaml). "
                 "TIEREMBED_* environment variables override it.", envvar="TIEREMBED_CONFIG"),
]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("tierembed", "flows", "beam_pipeline"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("apache_beam").setLevel(logging.WARNING if verbose else logging.ERROR)
    for noisy in ("httpx", "httpx2", "sentence_transformers", "lancedb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # No usage analytics from the ephemeral Prefect server (it cannot reach out anyway).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Beam logs an irrelevant GCP warning ("apitools not found") through the root logger
    # when first imported; import it once here with the root logger quietened.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import apache_beam  # noqa: F401
    finally:
        root.setLevel(level)


def _fail(exc: BaseException) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=EXIT_USAGE)


@app.command()
def run(
    source: Annotated[str, typer.Argument(help="File, directory, glob (quote it) or Beam URL "
                                          "(gs://, s3://) of .jsonl / .parquet / .csv documents.")],
    config: ConfigOpt = None,
    budget: Annotated[Optional[float], typer.Option(
        "--budget", callback=finite_usd,
        help="Cap on API spend in USD for this run (overrides budget.per_run_usd).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Check settings and input, embed nothing.")] = False,
    full_refresh: Annotated[bool, typer.Option(help="Re-embed unchanged documents too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose/--quiet", "-v/-q",
                                          help="Show progress logs (default) or only the report.")] = True,
) -> None:
    """Embed SOURCE: validate, score, route by value and budget, embed, upsert.

    Prints a report per tier and model version: documents, chunked documents, tokens,
    billed cost, dead letters. Bad records never stop the run: they go to the dead-letter
    set named in the report (replay it with `tierembed replay`).

    Exit status: 0 completed (bad input records, if any, are reported as warnings);
    3 partial (documents dead-lettered by the embedding or store stages beyond
    dead_letters.max_failed_fraction); 1 failed; 2 bad settings, options or input;
    130 / 143 stopped by SIGINT / SIGTERM.
    """
    _setup_logging(verbose)
    code = _run_flow(source, config, budget=budget, dry_run=dry_run, full_refresh=full_refresh,
                     as_json=as_json)
    if code:
        raise typer.Exit(code=code)


def _run_flow(source: str, config: Optional[Path], *, budget: Optional[float], dry_run: bool,
              full_refresh: bool, as_json: bool, overrides: Optional[dict[str, Any]] = None) -> int:
    """Run the flow, print its report, return the exit code (tiering.outcome)."""
    from beam_pipeline.read import match_input
    from flows.embed import RunIncomplete, embed_documents
    from flows.prefect_server import prefect_api
    from flows.reporting import render_text
    from flows.signals import graceful_stop, stop_signal_of
    from tiering.settings import load_settings

    try:
        # Fail fast, before Prefect starts: bad settings, missing input.
        match_input(source, load_settings(config, overrides=overrides).input.format)
        # SIGINT/SIGTERM stop the run cleanly; the servers it starts die with it even on SIGKILL.
        with graceful_stop(), prefect_api():
            state = embed_documents(source=source, config_path=str(config) if config else None,
                                    budget_usd=budget, dry_run=dry_run, full_refresh=full_refresh,
                                    settings_overrides=overrides, return_state=True)
    except TierembedError as exc:
        _fail(exc)
        return EXIT_USAGE
    except BaseException as exc:
        signum = stop_signal_of(exc)
        if signum is None:
            raise
        return _stopped(signum)
    result = state.result(raise_on_failure=False)
    if isinstance(result, RunIncomplete):
        result = result.report
    elif isinstance(result, ConfigError | InputNotFoundError):  # found wrong once the run started
        _fail(result)
    elif isinstance(result, TierembedError):  # the run failed: a clear line, exit code 1
        typer.secho(f"error: the run failed: {result}", fg=typer.colors.RED, err=True)
        return RunStatus.FAILED.exit_code
    elif isinstance(result, BaseException):
        raise result
    if as_json or dry_run:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        typer.echo(render_text(_report_from_dict(result)))
    return RunStatus(result.get("status", RunStatus.COMPLETED.value)).exit_code


def _stopped(signum: int) -> int:
    """The message and exit code of a run stopped by SIGINT or SIGTERM."""
    from flows.signals import exit_code_for

    name = signal.Signals(signum).name
    typer.secho(f"stopped by {name}: the run is in the spend ledger as failed, at the spend it recorded; "
                "documents already written stay written. Run the same command again to go on (documents "
                "already stored unchanged are skipped).", fg=typer.colors.YELLOW, err=True)
    return exit_code_for(signum)


def _report_from_dict(d: dict) -> "object":
    from tiering.report import RunReport, TierLine

    lines = tuple(
        TierLine(t["tier"], t["model_version"], t["model"], t["routed"], t["documents"],
                 t["chunked_documents"], t["chunks"], t["est_tokens"], t["billed_tokens"],
                 t["est_cost_usd"], t["cost_usd"], t["fell_back"], t.get("unmetered_tokens", 0))
        for t in d["tiers"]
    )
    return RunReport(
        run_id=d["run_id"], source=d["source"], records_read=d["records_read"],
        documents_valid=d["documents_valid"],
        dead_letters_by_stage=tuple(sorted(d["dead_letters"].items())), lines=lines,
        written=d["written"], documents_routed=d["documents_routed"],
        skipped_unchanged=d["skipped_unchanged"], over_budget=d["over_budget"],
        fell_back_budget=d.get("fell_back_budget", 0),
        api_requests=tuple(sorted(d["api_requests"].items())), api_retries=d["api_retries"],
        dead_letter_path=d["dead_letter_path"], budget_usd=d["budget_usd"],
        month_to_date_usd=d["month_to_date_usd"], monthly_limit_usd=d["monthly_limit_usd"],
        duration_s=d["duration_s"], endpoint=d["endpoint"], notes=tuple(d.get("notes", ())),
        status=d.get("status", "completed"), status_reasons=tuple(d.get("status_reasons", ())),
    )


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in plain words.")],
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="Number of results.")] = 5,
    version: Annotated[Optional[str], typer.Option(
        help="Search one model version only (default: every version in the store, fused).")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Search the embedded store: embeds QUERY with each model version in use and fuses
    the per-version rankings (never raw scores across models)."""
    _setup_logging(False)
    from flows.search import search_store
    from tiering.settings import load_settings

    try:
        settings = load_settings(config)
        hits = search_store(settings, query, k=k, only_version=version)
    except TierembedError as exc:
        _fail(exc)
        return
    if as_json:
        typer.echo(json.dumps([h.__dict__ for h in hits], indent=2))
        return
    if not hits:
        typer.echo("no results: the store is empty; run `tierembed run SOURCE` first")
        return
    for rank, hit in enumerate(hits, start=1):
        snippet = " ".join(hit.text.split())[:140]
        where = ", ".join(f"{v} #{r}" for v, r in hit.versions.items())
        typer.echo(f"{rank:>2}. {hit.id:<16} rrf={hit.fused:.4f}  ({where})\n    {snippet}")


@app.command()
def replay(
    dead_letters: Annotated[Path, typer.Argument(help="A dead-letter JSONL file or a run's "
                                                 "dead-letter folder.")],
    config: ConfigOpt = None,
    only_retryable: Annotated[bool, typer.Option(help="Replay only retryable letters.")] = True,
) -> None:
    """Re-run the documents of a dead-letter set (for example after an API outage).

    Targets that are already in the store with the same text are skipped as usual, so only
    what failed is embedded (and paid for) again.
    """
    _setup_logging(True)
    from beam_pipeline.read import REPLAY_SUFFIX
    from flows.replay import dead_letter_files, replay_set_lines, select_for_replay
    from tiering.settings import load_settings

    try:
        fields = load_settings(config).input
        lines = [line for f in dead_letter_files(dead_letters)
                 for line in f.read_text(encoding="utf-8", errors="replace").splitlines()]
    except TierembedError as exc:
        _fail(exc)
        return
    chosen = select_for_replay(lines, fields, only_retryable=only_retryable)
    typer.echo(f"replaying {len(chosen.records)} documents ({chosen.skipped_terminal} terminal letters "
               f"left out{'; use --no-only-retryable to include them' if chosen.skipped_terminal else ''}"
               f"; {chosen.skipped_unreadable} without a replayable payload)")
    if not chosen.records:
        return
    with tempfile.TemporaryDirectory(prefix="tierembed-replay-") as tmp:
        # A replay set: every record keeps its original source location (see flows.replay).
        path = Path(tmp) / f"replay{REPLAY_SUFFIX}"
        path.write_text("\n".join(replay_set_lines(chosen)) + "\n", encoding="utf-8")
        code = _run_flow(str(path), config, budget=None, dry_run=False, full_refresh=False, as_json=False,
                         overrides={"input": {"format": "auto"}})  # the replay set is read as one
    if code:
        raise typer.Exit(code=code)


@app.command("config")
def show_config(config: ConfigOpt = None) -> None:
    """Validate the settings and print the effective values (secrets hidden)."""
    from tiering.settings import load_settings

    try:
        settings = load_settings(config)
    except TierembedError as exc:
        _fail(exc)
        return
    typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2))


from flows.cli_budget import budget_app  # noqa: E402
from flows.cli_router import router_app  # noqa: E402

app.add_typer(router_app, name="router")
app.add_typer(budget_app, name="budget")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as exc:  # a stop signal that arrived outside `run`'s own handling
        from flows.signals import stop_signal_of

        signum = None if isinstance(exc, SystemExit) else stop_signal_of(exc)
        if signum is None:
            raise
        sys.exit(_stopped(signum))


if __name__ == "__main__":
    main()
