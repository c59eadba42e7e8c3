"""The ``tierembed`` command line.

``tierembed run SOURCE`` runs the ``embed-documents`` flow (against a Prefect server when
PREFECT_API_URL is set, else Prefect's ephemeral API); ``tierembed search`` queries the
embedded store; ``tierembed replay`` re-runs a dead-letter set; ``tierembed prune`` removes
vectors whose document left the source or moved to another model version. ``--help`` on any command
explains its options.
"""

# Prefect before Beam (see flows.embed).
import contextlib
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
                     as_json=as_json, live_progress=verbose)
    if code:
        raise typer.Exit(code=code)


def _run_flow(source: str, config: Optional[Path], *, budget: Optional[float], dry_run: bool,
              full_refresh: bool, as_json: bool, overrides: Optional[dict[str, Any]] = None,
              live_progress: bool = False) -> int:
    """Run the flow, print its report, return the exit code (tiering.outcome)."""
    from beam_pipeline.progress import run_progress_dir
    from beam_pipeline.read import match_input
    from flows.embed import RunIncomplete, embed_documents, new_run_id
    from flows.prefect_server import prefect_api
    from flows.progress_line import ProgressLine
    from flows.reporting import render_text
    from flows.signals import graceful_stop, stop_signal_of
    from flows.warmup import warm_up
    from tiering.settings import load_settings

    try:
        # Fail fast, before Prefect starts: bad settings, missing input.
        settings = load_settings(config, overrides=overrides)
        match_input(source, settings.input.format)
        run_id = new_run_id()
        live = ProgressLine(run_progress_dir(settings.telemetry.progress_dir, run_id))
        # SIGINT/SIGTERM stop the run cleanly; the servers it starts die with it even on SIGKILL.
        with graceful_stop(), prefect_api(None if dry_run else warm_up(settings)):
            with live if live_progress and not dry_run else contextlib.nullcontext():
                state = embed_documents(source=source, config_path=str(config) if config else None,
                                        budget_usd=budget, dry_run=dry_run, full_refresh=full_refresh,
                                        settings_overrides=overrides, run_id=run_id, return_state=True)
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
                 t["est_cost_usd"], t["cost_usd"], t["fell_back"], t.get("unmetered_tokens", 0),
                 t.get("timed_out_tokens", 0))
        for t in d["tiers"]
    )
    return RunReport(
        run_id=d["run_id"], source=d["source"], records_read=d["records_read"],
        documents_valid=d["documents_valid"],
        dead_letters_by_stage=tuple(sorted(d["dead_letters"].items())), lines=lines,
        written=d["written"], documents_routed=d["documents_routed"],
        skipped_unchanged=d["skipped_unchanged"], over_budget=d["over_budget"],
        fell_back_budget=d.get("fell_back_budget", 0),
        backfill_deferred=d.get("backfill_deferred", 0),
        backfill_not_sent=d.get("backfill_not_sent", 0),
        shadow_not_sent=d.get("shadow_not_sent", 0),
        budget_kept_local=d.get("budget_kept_local", 0),
        api_requests=tuple(sorted(d["api_requests"].items())), api_retries=d["api_retries"],
        dead_letter_path=d["dead_letter_path"], budget_usd=d["budget_usd"],
        month_to_date_usd=d["month_to_date_usd"], monthly_limit_usd=d["monthly_limit_usd"],
        duration_s=d["duration_s"], endpoint=d["endpoint"], notes=tuple(d.get("notes", ())),
        api_breaker=tuple(sorted(d.get("api_breaker", {}).items())),
        api_cached=d.get("api_cached", 0), api_size_splits=d.get("api_size_splits", 0),
        status=d.get("status", "completed"), status_reasons=tuple(d.get("status_reasons", ())),
    )


@app.command()
def search(
    query: Annotated[list[str], typer.Argument(help="What to look for, in plain words. Several queries "
                                               "(or '-' to read one per line from stdin) share one "
                                               "process: models load once.")],
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="Number of results.")] = 5,
    version: Annotated[Optional[str], typer.Option(
        help="Search one model version only (default: every version in the store, fused).")] = None,
    fusion: Annotated[Optional[str], typer.Option(
        help="zscore (calibrated, default) | rrf | platt; overrides search.fusion.")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Search the embedded store: embeds QUERY with each model version in use, searches each
    version in its own space and fuses the results with calibrated scores (never raw scores
    across models). Paid query embeddings are recorded in the spend ledger."""
    _setup_logging(False)
    from flows.search import open_searcher
    from tiering.settings import load_settings

    queries = [line.strip() for line in sys.stdin if line.strip()] if query == ["-"] else query
    results = []
    try:
        settings = load_settings(config)
        with open_searcher(settings, method=fusion, only_version=version) as searcher:
            for text in queries:
                results.append((text, searcher.search(text, k)))
    except (TierembedError, ValueError) as exc:
        _fail(exc)
        return
    if as_json:
        payload = [{"query": q, "hits": [h.__dict__ for h in hits]} for q, hits in results]
        typer.echo(json.dumps(payload if len(payload) > 1 else payload[0]["hits"], indent=2))
        return
    for text, hits in results:
        if len(results) > 1:
            typer.echo(f"query: {text}")
        _print_hits(hits)


def _print_hits(hits: list) -> None:
    if not hits:
        typer.echo("no results: the store is empty; run `tierembed run SOURCE` first")
        return
    for rank, hit in enumerate(hits, start=1):
        snippet = " ".join(hit.text.split())[:140]
        where = ", ".join(f"{v} #{hit.ranks[v]}" if v in hit.ranks else f"{v} -" for v in hit.scores)
        typer.echo(f"{rank:>2}. {hit.id:<16} {hit.method}={hit.fused:.4f}  ({where})\n    {snippet}")


@app.command("eval")
def eval_command(
    queries: Annotated[Path, typer.Option("--queries", help="Labelled queries, JSONL: {\"id\", \"text\"}.")],
    qrels: Annotated[Path, typer.Option("--qrels", help="Relevance judgements, TREC format: "
                                        "'query 0 doc grade' per line.")],
    budget_share: Annotated[Optional[list[float]], typer.Option(
        "--budget-share", min=0.0, max=1.0, help="Tiered what-ifs at this share of the all-premium "
        "cost estimate (repeatable; default 0.1, 0.3, 0.5).")] = None,
    embed_missing: Annotated[bool, typer.Option(
        help="Embed the documents a version does not hold (for the what-if policies) into the eval "
        "cache; the estimated cost is shown first.")] = False,
    max_cost: Annotated[float, typer.Option(min=0.0, help="Refuse to send more than this estimated "
                                            "API spend (USD), queries included.")] = 1.0,
    fusion: Annotated[Optional[list[str]], typer.Option(
        help="Fusion methods to compare (repeatable): zscore, rrf, platt (platt curves are fitted on "
        "these same queries: in-sample). Default: zscore and rrf.")] = None,
    fit_platt: Annotated[Optional[Path], typer.Option(
        help="Fit per-version Platt curves on these queries and save them here (search.platt_path).")] = None,
    chart: Annotated[Optional[Path], typer.Option(help="Write a PNG chart of quality against cost.")] = Path(
        ".tierembed/eval.png"),
    local_version: Annotated[Optional[str], typer.Option(help="Local version (default: the first).")] = None,
    api_version: Annotated[Optional[str], typer.Option(help="API version (default: the first).")] = None,
    cache_dir: Annotated[Path, typer.Option(help="Where embedded what-if documents and queries are "
                                            "kept.")] = Path(".tierembed/eval-cache"),
    resamples: Annotated[int, typer.Option(min=100, help="Bootstrap resamples.")] = 2000,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Measure search quality on a labelled query set: per version, the fused index as
    stored, and what-if policies (all-local, all-premium, tiered at a budget, each fusion
    method) on the same documents, with cost and paired bootstrap 95% CIs against all-local."""
    _setup_logging(False)
    from flows.eval import EvalOptions, evaluate_store
    from flows.eval_report import render_table, write_chart
    from tiering.fusion import FusionMethod
    from tiering.settings import load_settings

    try:
        methods = tuple(FusionMethod(m) for m in (fusion or ["zscore", "rrf"]))
        opts = EvalOptions(queries, qrels, tuple(budget_share or (0.1, 0.3, 0.5)), embed_missing, max_cost,
                           methods, local_version, api_version, cache_dir, fit_platt, resamples)
        report = evaluate_store(load_settings(config), opts,
                                echo=lambda m: typer.echo(m, err=True))
    except (TierembedError, ValueError) as exc:
        _fail(exc)
        return
    if chart is not None:
        write_chart(report, chart)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    typer.echo(render_table(report))
    if chart is not None:
        typer.echo(f"chart: {chart}")


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
from flows.cli_models import models_app  # noqa: E402
from flows.cli_prune import prune_command  # noqa: E402
from flows.cli_router import router_app  # noqa: E402

app.add_typer(router_app, name="router")
app.add_typer(budget_app, name="budget")
app.add_typer(models_app, name="models")
app.command("prune")(prune_command)


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
