"""``tierembed router``: train the cheap value classifier and explain its scores.

``tierembed router train LABELS`` fits a classifier (``tiering.classifier.train``) to
labelled documents and reports its held-out accuracy next to the shipped default's.
LABELS is JSONL or CSV with ``id``, ``text``, a ``label`` (0/1, true/false, high/low, or
any business label with ``--positive``) or a ``target`` score in [0, 1], and optional
``metadata``.

``tierembed router train DOCS --from-queries QUERIES.json`` derives the labels instead
from a labelled query set, for the index search really uses: it embeds a sample of DOCS
and the queries with both tiers and, for each sampled document, measures what giving it
the premium vector does to the calibrated coverage index (summed nDCG@10 change over the
training queries; :func:`tiering.gain_labels.fused_gains`). A quarter of the queries
(``--holdout``, split by a hash of the query id) label nothing: after training, nDCG@10 on
them is reported for all-local, all-premium and coverage at 30% of the cost with the
current and the trained router. The API calls cost money: the estimate is printed and
checked against ``--max-cost`` and the month's budget before anything is sent, and the
billed spend is recorded in the spend ledger.

``tierembed router explain DOC_ID SOURCE`` (or ``--text``) prints every term of a
document's score and the tier the routing rules and threshold would pick.

This module is the typer glue only: the files live in :mod:`flows.router_data`, the two
real tiers and the spend checks in :mod:`flows.router_tiers`, and the gain arithmetic in
:mod:`tiering.gain_labels`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli_values import finite, finite_usd
from flows.router_data import find_document, read_documents, read_labelled, read_queries, write_gain_labels
from flows.router_tiers import TrainingVectors, derive_with_real_tiers, holdout_report
from tiering.classifier import LabeledExample, TrainingDataError, ValueClassifier, load_default, train
from tiering.documents import Document, Tier
from tiering.errors import ConfigError, TierembedError
from tiering.gain_labels import render_gain_summary, sample_documents
from tiering.normalization import rank_normalize, uses_rank_normalization
from tiering.routing import policy_from_settings, wanted_tier
from tiering.settings import InputSettings, TierembedSettings
from tiering.validation import RawRecord, ValidationRules, validate_record

__all__ = ["router_app", "train_command", "explain_command"]


router_app = typer.Typer(
    name="router",
    help="Train the cheap value classifier that decides which documents deserve the paid "
    "tier, and explain its scores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="YAML settings file; TIEREMBED_* variables override it.",
                 envvar="TIEREMBED_CONFIG"),
]


def _fail(exc: BaseException | str) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _load_settings(config: Path | None) -> TierembedSettings:
    from tiering.settings import load_settings

    return load_settings(config)


def _rules(s: InputSettings) -> ValidationRules:
    return ValidationRules(s.id_field, s.text_field, s.metadata_field, s.max_text_chars)


# ---------------------------------------------------------------------------- train


@dataclass(frozen=True, slots=True)
class _TrainOptions:
    out: Path
    holdout: float
    seed: int
    version: Optional[str]


def _train_and_save(examples: list[LabeledExample], opts: _TrainOptions, classifier_path: str | None,
                    vectors: TrainingVectors | None = None) -> None:
    baseline = ValueClassifier.load(classifier_path) if classifier_path else load_default()
    # --from-queries: the held-out queries already labelled nothing; train on every label
    holdout = 0.0 if vectors is not None else opts.holdout
    result = train(examples, holdout_fraction=holdout, seed=opts.seed, version=opts.version,
                   baseline=baseline)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    result.model.save(opts.out)
    typer.echo(result.render())
    if vectors is not None:
        typer.echo(holdout_report(vectors, result.model, baseline))
    typer.echo(f"saved {result.model.version} to {opts.out}; route with it by setting "
               f"routing.classifier_path: {opts.out}")


@router_app.command("train")
def train_command(
    labels: Annotated[Path, typer.Argument(
        help="JSONL or CSV of documents: id, text, label (or target) and optional metadata. "
        "With --from-queries: the documents to sample from (labels not needed).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to save the trained model (JSON).")] = Path(
        ".tierembed/router.json"),
    from_queries: Annotated[Optional[Path], typer.Option(
        "--from-queries", help="Derive labels from a query set with relevance judgements (JSON) "
        "by embedding a sample with both tiers.")] = None,
    positive: Annotated[Optional[str], typer.Option(
        help="The label value that means high value (for business labels such as 'premium').")] = None,
    holdout: Annotated[float, typer.Option(
        min=0.0, max=0.9, help="Held-out share for the accuracy report.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the hash-based holdout split.")] = 0,
    version: Annotated[Optional[str], typer.Option(help="Version name of the new model.")] = None,
    sample: Annotated[int, typer.Option(min=2, help="--from-queries: documents embedded per tier "
                                        "(judged ones first).")] = 1000,
    max_cost: Annotated[float, typer.Option(
        callback=finite_usd,
        help="--from-queries: refuse to send more than this estimated API spend (USD).")] = 1.0,
    min_gain: Annotated[float, typer.Option(
        callback=finite, help="--from-queries: discounted-rank gain a query must see to count as a premium "
        "win.")] = 0.0,
    labels_out: Annotated[Optional[Path], typer.Option(help="--from-queries: also write the derived "
                                                       "labels (JSONL).")] = None,
    local_version: Annotated[Optional[str], typer.Option(help="Local model version to compare.")] = None,
    api_version: Annotated[Optional[str], typer.Option(help="API model version to compare.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Train a value classifier and report its held-out accuracy against the current one
    (routing.classifier_path, else the shipped default)."""
    opts = _TrainOptions(out, holdout, seed, version)
    try:
        settings = _load_settings(config)
        rules = _rules(settings.input)
        vectors = None
        if from_queries is None:
            examples = read_labelled(labels, rules, positive)
        else:
            examples, vectors = _examples_from_queries(
                settings, labels, from_queries, rules, sample=sample, max_cost=max_cost, min_gain=min_gain,
                labels_out=labels_out, local_version=local_version, api_version=api_version,
                holdout=holdout, seed=seed)
        _train_and_save(examples, opts, settings.routing.classifier_path, vectors)
    except TierembedError as exc:
        _fail(exc)


def _examples_from_queries(
    settings: TierembedSettings, docs_path: Path, queries_path: Path, rules: ValidationRules, *,
    sample: int, max_cost: float, min_gain: float, labels_out: Path | None,
    local_version: str | None, api_version: str | None, holdout: float, seed: int,
) -> tuple[list[LabeledExample], TrainingVectors]:
    docs = read_documents(docs_path, rules)
    queries = read_queries(queries_path)
    chosen = sample_documents(docs, queries, sample)
    labels, vectors = derive_with_real_tiers(settings, chosen, queries, max_cost=max_cost,
                                             local_version=local_version, api_version=api_version,
                                             min_gain=min_gain, echo=typer.echo, holdout=holdout, seed=seed)
    typer.echo(render_gain_summary(labels, sum(1 for h in vectors.holdout if not h)))
    if labels_out is not None:
        write_gain_labels(labels_out, labels)
    by_id = {d.id: d for d in chosen}
    return [LabeledExample(by_id[x.doc_id], x.target) for x in labels], vectors


# -------------------------------------------------------------------------- explain


def _text_document(text: str, doc_id: str | None, metadata: str | None, rules: ValidationRules) -> Document:
    meta = json.loads(metadata) if metadata else {}
    record = {"id": doc_id or "(text)", "text": text, "metadata": meta}
    raw = RawRecord("--text", 1, json.dumps(record), fields=tuple(record.items()))
    doc = validate_record(raw, rules)
    if not isinstance(doc, Document):
        raise TrainingDataError(doc.message, stage="explain")
    return doc


@router_app.command("explain")
def explain_command(
    doc_id: Annotated[Optional[str], typer.Argument(help="Id of the document to explain.")] = None,
    source: Annotated[Optional[Path], typer.Argument(help="JSONL or CSV file holding the document.")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="Explain this text instead.")] = None,
    metadata: Annotated[Optional[str], typer.Option(help="With --text: metadata as a JSON object.")] = None,
    model: Annotated[Optional[Path], typer.Option(
        "--model", help="A trained model (default: routing.classifier_path, else the shipped one).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Show why a document scored as it did: every feature's value, weight and share of the
    score, and the tier the rules and threshold pick (before the budget)."""
    try:
        settings = _load_settings(config)
        rules = _rules(settings.input)
        if text is not None:
            doc = _text_document(text, doc_id, metadata, rules)
        elif doc_id is None or source is None:
            raise ConfigError("give a DOC_ID and a SOURCE file, or --text")
        else:
            doc = find_document(source, doc_id, rules)
        path = str(model) if model else settings.routing.classifier_path
        clf = ValueClassifier.load(path) if path else load_default()
    except json.JSONDecodeError as exc:
        _fail(f"--metadata is not valid JSON: {exc}")
        return
    except TierembedError as exc:
        _fail(exc)
        return
    explanation = clf.explain(doc)
    score = explanation.score
    typer.echo(explanation.render())
    if uses_rank_normalization(settings.routing.score_normalization, path):
        score = _explain_rank(doc, explanation.score, source, clf, rules)
    tier, reason = wanted_tier(doc, score, policy_from_settings(settings))
    after = "; the budget plan may still move it to local" if tier is Tier.API else ""
    typer.echo(f"  routing: {tier.value} tier ({reason}){after}; with a budget and the shipped "
               "classifier the plan admits the best value per dollar instead of using the threshold")


def _explain_rank(doc: Document, raw: float, source: Path | None, clf: ValueClassifier,
                  rules: ValidationRules) -> float:
    """Print (and return) the score routing uses: the rank share of ``raw`` within the run
    (routing.score_normalization), here within SOURCE's documents."""
    if source is None:
        typer.echo(f"  routing score: rank-normalised within each run (routing.score_normalization); "
                   f"the raw score {raw:.3f} alone says nothing; give a SOURCE to see its rank")
        return raw
    docs = read_documents(source, rules)
    scores = clf.score_many(docs)
    shares = rank_normalize(scores)
    mine = shares[[d.id for d in docs].index(doc.id)]
    low, high = min(scores), max(scores)
    typer.echo(f"  routing score {mine:.3f}: rank share of the raw score {raw:.3f} among the {len(docs)} "
               f"documents of {source} (raw scores span {low:.3f}..{high:.3f}; "
               "routing.score_normalization 'rank')")
    return mine
