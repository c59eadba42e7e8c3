"""``tierembed router``: train the cheap value classifier and explain its scores.

``tierembed router train LABELS`` fits a classifier (``tiering.classifier.train``) to
labelled documents and reports its held-out accuracy next to the shipped default's.
LABELS is JSONL or CSV with ``id``, ``text``, a ``label`` (0/1, true/false, high/low, or
any business label with ``--positive``) or a ``target`` score in [0, 1], and optional
``metadata``.

``tierembed router train DOCS --from-queries QUERIES.json`` derives the labels instead
from a labelled query set: it embeds a sample of DOCS and the queries with both tiers,
ranks the sample for each query in each tier's own space, and labels each judged-relevant
document with how often the premium tier ranks it better (gain in discounted rank
``1/log2(1 + rank)``, weighted by relevance grade). The classifier then learns to predict
where the paid tier pays off. The API calls cost money: the estimate is checked against
``--max-cost`` and the month's budget before anything is sent, and the billed spend is
recorded in the spend ledger.

``tierembed router explain DOC_ID SOURCE`` (or ``--text``) prints every term of a
document's score and the tier the routing rules and threshold would pick.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Optional, Protocol

import numpy as np
import numpy.typing as npt
import typer

from tiering.ab import stable_unit
from tiering.chunking import aggregate_vectors, chunk_text, estimate_tokens
from tiering.classifier import LabeledExample, TrainingDataError, ValueClassifier, load_default, train
from tiering.documents import Document, Tier
from tiering.errors import ConfigError, InputNotFoundError, TierembedError
from tiering.routing import policy_from_settings, wanted_tier
from tiering.settings import TierembedSettings
from tiering.validation import RawRecord, ValidationRules, validate_record

__all__ = [
    "router_app",
    "Query",
    "GainLabel",
    "TierEmbedder",
    "read_documents",
    "read_labelled",
    "read_queries",
    "parse_target",
    "sample_documents",
    "derive_gain_labels",
]

FloatMatrix = npt.NDArray[np.float32]
LABEL_FIELDS = ("label", "target")
_POSITIVE_WORDS = {"1", "true", "yes", "y", "high", "api", "paid", "premium", "positive"}
_NEGATIVE_WORDS = {"0", "false", "no", "n", "low", "local", "cheap", "negative"}
# Grades of the single-query judgement files in examples/data (search_judgments.json).
_GRADE_LISTS = {"relevant": 2.0, "partial": 1.0, "irrelevant": 0.0}

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


# --------------------------------------------------------------------------- reading


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise InputNotFoundError(f"cannot tell the format of {path} from its extension; use .jsonl or .csv")


def _raw_records(path: Path) -> Iterator[RawRecord]:
    if not path.is_file():
        raise InputNotFoundError(f"{path} does not exist or is not a file")
    if _format_of(path) == "csv":
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                fields = {k: v for k, v in row.items() if k is not None}
                yield RawRecord(str(path), reader.line_num, json.dumps(fields), fields=tuple(fields.items()))
        return
    with path.open(encoding="utf-8") as handle:
        for n, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RawRecord(str(path), n, line, parse_error=f"not valid JSON: {exc.msg}")
                continue
            fields_ = tuple(value.items()) if isinstance(value, dict) else None
            yield RawRecord(str(path), n, line, fields=fields_)


def _problems(where: Path, messages: list[str]) -> TrainingDataError:
    shown = "\n  ".join(messages[:5])
    more = f"\n  ... and {len(messages) - 5} more" if len(messages) > 5 else ""
    return TrainingDataError(f"{len(messages)} bad records in {where}:\n  {shown}{more}", stage="train")


def read_documents(path: Path, rules: ValidationRules) -> list[Document]:
    """Every record of ``path`` as a Document, validated like the pipeline does (label
    columns are dropped so they never leak into metadata); bad records raise."""
    docs, problems, seen = [], [], set()
    for raw in _raw_records(path):
        if raw.fields is not None:
            raw = RawRecord(raw.source, raw.position, raw.payload,
                            fields=tuple((k, v) for k, v in raw.fields if k not in LABEL_FIELDS))
        result = validate_record(raw, rules)
        if not isinstance(result, Document):
            problems.append(result.message)
        elif result.id in seen:
            problems.append(f"{result.source}: duplicate id {result.id!r}")
        else:
            seen.add(result.id)
            docs.append(result)
    if problems:
        raise _problems(path, problems)
    return docs


def parse_target(value: object, positive: str | None = None) -> float:
    """A label or target as a number in [0, 1]; raises ValueError saying what is accepted."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if positive is not None and value is not None:
        return 1.0 if str(value).strip() == positive else 0.0
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        word = value.strip().lower()
        if word in _POSITIVE_WORDS:
            return 1.0
        if word in _NEGATIVE_WORDS:
            return 0.0
        try:
            number = float(word)
        except ValueError:
            raise ValueError(
                f"label {value!r} is not 0/1, true/false, high/low or a score in [0, 1]; "
                f"pass --positive {value!r} if it names the high-value class"
            ) from None
    elif value is None:
        raise ValueError("no 'label' or 'target' given")
    else:
        raise ValueError(f"label {value!r} is not a number or a word")
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ValueError(f"target {value!r} is outside [0, 1]")
    return number


def read_labelled(path: Path, rules: ValidationRules, positive: str | None = None) -> list[LabeledExample]:
    """Labelled documents: each record needs ``label`` or ``target`` besides id and text."""
    targets: dict[str, float] = {}
    problems: list[str] = []
    for raw in _raw_records(path):
        fields = dict(raw.fields or ())
        doc_id = str(fields.get(rules.id_field, "")).strip()
        value = fields.get("target") if fields.get("target") not in (None, "") else fields.get("label")
        try:
            targets[doc_id] = parse_target(value, positive)
        except ValueError as exc:
            problems.append(f"{raw.location}: document {doc_id!r}: {exc}")
    if problems:
        raise _problems(path, problems)
    return [LabeledExample(d, targets[d.id]) for d in read_documents(path, rules)]


# ------------------------------------------------------------------- query judgements


@dataclass(frozen=True, slots=True)
class Query:
    """A query and its relevance judgements: (document id, grade > 0) pairs."""

    id: str
    text: str
    judgements: tuple[tuple[str, float], ...]


def _judgements(entry: dict[str, Any]) -> tuple[tuple[str, float], ...]:
    grades: dict[str, float] = {}
    for name, grade in _GRADE_LISTS.items():
        value = entry.get(name)
        if isinstance(value, dict):
            grades.update({str(k): float(v) for k, v in value.items()})
        elif isinstance(value, list):
            grades.update({str(k): grade for k in value})
    return tuple(sorted((k, g) for k, g in grades.items() if g > 0))


def read_queries(path: Path) -> list[Query]:
    """Queries with judgements from JSON: ``{"queries": [{"id", "text", "relevant"}]}``, a
    list of such objects, or one object with ``query`` (like examples' judgement files).
    ``relevant`` (and ``partial``) map document ids to grades, or list ids: grade 2 for
    ``relevant``, 1 for ``partial``. Grade-0 and ``irrelevant`` ids are ignored."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputNotFoundError(f"cannot read the query set {path}: {exc}") from exc
    entries = data.get("queries", [data]) if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise TrainingDataError(f"{path}: expected {{'queries': [...]}} or a list of query objects",
                                stage="train")
    queries = []
    for n, e in enumerate(entries, start=1):
        text = e.get("text", e.get("query"))
        if not isinstance(text, str) or not text.strip():
            raise TrainingDataError(f"{path}: query #{n} has no 'text'", stage="train")
        queries.append(Query(str(e.get("id", f"q{n}")), text, _judgements(e)))
    return queries


# ---------------------------------------------------------------------- gain labels


class TierEmbedder(Protocol):
    """Embeds documents and queries with one tier; rows are L2-normalized."""

    def embed_documents(self, texts: Sequence[str]) -> FloatMatrix: ...

    def embed_queries(self, texts: Sequence[str]) -> FloatMatrix: ...


@dataclass(frozen=True, slots=True)
class GainLabel:
    """What the premium tier did for one judged document.

    ``target``: grade-weighted share of its queries for which the premium tier ranked it
    better by more than ``min_gain`` in discounted rank; ``mean_gain``: the weighted mean
    of ``1/log2(1 + rank_api) - 1/log2(1 + rank_local)``.
    """

    doc_id: str
    target: float
    mean_gain: float
    queries: int
    mean_rank_local: float
    mean_rank_api: float


def sample_documents(docs: Sequence[Document], queries: Sequence[Query], size: int) -> list[Document]:
    """Judged documents first, then a stable hash-ordered share of the others, up to ``size``."""
    judged = {doc_id for q in queries for doc_id, _ in q.judgements}
    first = [d for d in docs if d.id in judged]
    rest = sorted((d for d in docs if d.id not in judged), key=lambda d: stable_unit(d.id, "router-sample"))
    return (first + rest)[:size]


def _rank(sims: npt.NDArray[np.float32], i: int) -> float:
    """1-based rank of item ``i`` by similarity; tied items share their average rank (a
    tier that cannot tell documents apart gets no credit for listing one first)."""
    better = int(np.sum(sims > sims[i]))
    tied = int(np.sum(sims == sims[i]))
    return better + (tied + 1) / 2.0


def _discount(rank: float) -> float:
    return 1.0 / math.log2(1.0 + rank)


def derive_gain_labels(
    docs: Sequence[Document],
    queries: Sequence[Query],
    local: TierEmbedder,
    api: TierEmbedder,
    *,
    min_gain: float = 0.0,
) -> list[GainLabel]:
    """Rank ``docs`` for each query in each tier's own space and label every judged
    document with the premium tier's gain (see :class:`GainLabel`)."""
    index = {d.id: i for i, d in enumerate(docs)}
    texts = [d.text for d in docs]
    d_local, d_api = local.embed_documents(texts), api.embed_documents(texts)
    q_texts = [q.text for q in queries]
    q_local, q_api = local.embed_queries(q_texts), api.embed_queries(q_texts)
    acc: dict[str, list[tuple[float, float, float, float]]] = {}
    for qi, query in enumerate(queries):
        s_local, s_api = d_local @ q_local[qi], d_api @ q_api[qi]
        for doc_id, grade in query.judgements:
            if doc_id in index:
                r_local, r_api = _rank(s_local, index[doc_id]), _rank(s_api, index[doc_id])
                gain = _discount(r_api) - _discount(r_local)
                acc.setdefault(doc_id, []).append((grade, gain, r_local, r_api))
    return [_gain_label(doc_id, rows, min_gain) for doc_id, rows in acc.items()]


def _gain_label(doc_id: str, rows: list[tuple[float, float, float, float]], min_gain: float) -> GainLabel:
    weight = sum(g for g, *_ in rows)
    wins = sum(g for g, gain, *_ in rows if gain > min_gain)
    return GainLabel(
        doc_id=doc_id,
        target=wins / weight,
        mean_gain=sum(g * gain for g, gain, *_ in rows) / weight,
        queries=len(rows),
        mean_rank_local=sum(r for *_, r, _ in rows) / len(rows),
        mean_rank_api=sum(r for *_, r in rows) / len(rows),
    )


# ------------------------------------------------------------ the two real tiers


class _LocalTier:
    """The local tier exactly as the pipeline embeds: chunk, encode, aggregate."""

    def __init__(self, settings: TierembedSettings, version: str | None) -> None:
        from beam_pipeline.local_embedder import LocalModelSpec, load_local_model

        model = _pick(settings.local.models, version, "local")
        self.version = model.version
        s = settings.local
        self._model = load_local_model(LocalModelSpec(model.model, s.device, s.precision, s.batch_size,
                                                      model.max_input_tokens))

    def embed_documents(self, texts: Sequence[str]) -> FloatMatrix:
        per_doc = [self._model.chunk(t) for t in texts]
        flat = self._model.encode([c for chunks in per_doc for c in chunks])
        return _aggregate(flat, [len(c) for c in per_doc])

    def embed_queries(self, texts: Sequence[str]) -> FloatMatrix:
        return self._model.encode(list(texts))


def _aggregate(flat: FloatMatrix, counts: Sequence[int]) -> FloatMatrix:
    rows, start = [], 0
    for n in counts:
        rows.append(aggregate_vectors(flat[start : start + n]))
        start += n
    return np.vstack(rows).astype(np.float32)


def _pick(models: Sequence[Any], version: str | None, tier: str) -> Any:
    if version is None:
        return models[0]
    for m in models:
        if m.version == version:
            return m
    known = ", ".join(m.version for m in models)
    raise ConfigError(f"no {tier} model version {version!r} in the settings (known: {known})")


class _ApiTier:
    """The API tier through the openai client (its own retries are the one retry layer of
    this offline tool). Counts the billed tokens of every reply."""

    def __init__(self, client: Any, model: Any, document_type: str | None, query_type: str | None,
                 max_tokens_per_input: int) -> None:
        self._client = client
        self._model = model
        self._types = {"document": document_type, "query": query_type}
        self._limit = max_tokens_per_input
        self.billed_tokens = 0
        self.requests = 0

    def _request(self, inputs: list[str], kind: str) -> list[list[float]]:
        extra = {"input_type": self._types[kind]} if self._types[kind] else None
        kwargs: dict[str, Any] = {"model": self._model.model, "input": inputs, "extra_body": extra}
        if self._model.dimensions:
            kwargs["dimensions"] = self._model.dimensions
        self.requests += 1
        reply = self._client.embeddings.create(**kwargs)
        usage = reply.usage
        self.billed_tokens += int(usage.prompt_tokens) if usage else sum(map(estimate_tokens, inputs))
        return [list(d.embedding) for d in sorted(reply.data, key=lambda d: d.index)]

    def _embed(self, texts: Sequence[str], kind: str) -> list[list[float]]:
        out: list[list[float]] = []
        batch: list[str] = []
        tokens = 0
        for text in texts:
            cost = estimate_tokens(text)
            if batch and (len(batch) >= self._model.max_inputs_per_request
                          or tokens + cost > self._model.max_tokens_per_request):
                out += self._request(batch, kind)
                batch, tokens = [], 0
            batch.append(text)
            tokens += cost
        if batch:
            out += self._request(batch, kind)
        return out

    def embed_documents(self, texts: Sequence[str]) -> FloatMatrix:
        per_doc = [chunk_text(t, self._limit) for t in texts]
        flat = np.asarray(self._embed([c for chunks in per_doc for c in chunks], "document"), np.float32)
        return _aggregate(flat, [len(c) for c in per_doc])

    def embed_queries(self, texts: Sequence[str]) -> FloatMatrix:
        vectors = np.asarray(self._embed(list(texts), "query"), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit: FloatMatrix = (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32)
        return unit


# ---------------------------------------------------------------------------- train


@dataclass(frozen=True, slots=True)
class _TrainOptions:
    out: Path
    holdout: float
    seed: int
    version: Optional[str]


def _train_and_save(examples: list[LabeledExample], opts: _TrainOptions, classifier_path: str | None) -> None:
    baseline = ValueClassifier.load(classifier_path) if classifier_path else load_default()
    result = train(examples, holdout_fraction=opts.holdout, seed=opts.seed, version=opts.version,
                   baseline=baseline)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    result.model.save(opts.out)
    typer.echo(result.render())
    typer.echo(f"saved {result.model.version} to {opts.out}; route with it by setting "
               f"routing.classifier_path: {opts.out}")


def _api_estimate_usd(docs: Sequence[Document], queries: Sequence[Query], price_per_token: float) -> float:
    tokens = sum(estimate_tokens(d.text) for d in docs) + sum(estimate_tokens(q.text) for q in queries)
    return tokens * price_per_token


def _derive_with_real_tiers(
    settings: TierembedSettings, sample: list[Document], queries: list[Query], *,
    max_cost: float, local_version: str | None, api_version: str | None, min_gain: float,
    echo: Callable[[str], None],
) -> list[GainLabel]:
    import openai

    from flows.endpoint import resolve_endpoint
    from flows.ledger import SpendLedger, SpendLine
    from tiering.pricing import cost_usd, price_for

    model = _pick(settings.api.models, api_version, "api")
    price = price_for(model.model, model.price_per_million_tokens)
    estimate = _api_estimate_usd(sample, queries, float(price.per_token))
    ledger = SpendLedger(settings.budget.ledger_path)
    run_id = "router-train-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    grant = ledger.begin_run(run_id, per_run_usd=max_cost, monthly_usd=settings.budget.monthly_usd,
                             source="router train --from-queries")
    if grant.budget_usd is not None and estimate > grant.budget_usd:
        ledger.fail_run(run_id, "estimate over budget; nothing sent", nothing_sent=True)
        raise ConfigError(
            f"embedding {len(sample)} documents and {len(queries)} queries with {model.model} is "
            f"estimated at ${estimate:.6f}, over the ${grant.budget_usd:.6f} allowed (--max-cost and "
            "the month's budget left); lower --sample or raise --max-cost"
        )
    echo(f"embedding {len(sample)} documents and {len(queries)} queries with both tiers "
         f"(API {model.version}, estimated ${estimate:.6f})")
    local = _LocalTier(settings, local_version)
    api_tier: _ApiTier | None = None
    try:
        with resolve_endpoint(settings.api) as ep:
            client = openai.OpenAI(api_key=ep.api_key, base_url=ep.base_url, max_retries=3,
                                   timeout=settings.api.timeout_s)
            limit = min(model.max_tokens_per_input, ep.max_tokens_per_input or model.max_tokens_per_input)
            api_tier = _ApiTier(client, model, ep.document_input_type, ep.query_input_type, limit)
            labels = derive_gain_labels(sample, queries, local, api_tier, min_gain=min_gain)
            client.close()
    except BaseException as exc:
        # Billed replies are recorded; a request without a reply may have been billed too,
        # so then the reservation stays charged (an upper bound).
        billed = api_tier.billed_tokens if api_tier else 0
        if billed:
            ledger.finish_run(run_id, [SpendLine("api", model.version, model.model, 0, billed, estimate,
                                                 cost_usd(billed, price))])
        else:
            ledger.fail_run(run_id, f"{type(exc).__name__}: {exc}",
                            nothing_sent=api_tier is None or api_tier.requests == 0)
        raise
    billed = api_tier.billed_tokens if api_tier else 0
    ledger.finish_run(run_id, [SpendLine("api", model.version, model.model, len(sample), billed, estimate,
                                         cost_usd(billed, price))])
    echo(f"API tier billed {billed} tokens (${cost_usd(billed, price):.6f}), recorded in the spend "
         f"ledger as {run_id}")
    return labels


def _gain_summary(labels: Sequence[GainLabel], queries: int) -> str:
    wins = sum(1 for x in labels if x.target >= 0.5)
    mean = sum(x.mean_gain for x in labels) / len(labels) if labels else 0.0
    return (f"derived gain labels for {len(labels)} judged documents from {queries} queries: "
            f"{wins} ranked better by the premium tier (target >= 0.5), {len(labels) - wins} not; "
            f"mean discounted-rank gain {mean:+.4f}")


def _write_labels(path: Path, labels: Sequence[GainLabel]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for x in labels:
            handle.write(json.dumps({"id": x.doc_id, "target": round(x.target, 6),
                                     "mean_gain": round(x.mean_gain, 6), "queries": x.queries,
                                     "mean_rank_local": x.mean_rank_local,
                                     "mean_rank_api": x.mean_rank_api}) + "\n")


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
    max_cost: Annotated[float, typer.Option(min=0.0, help="--from-queries: refuse to send more than this "
                                            "estimated API spend (USD).")] = 1.0,
    min_gain: Annotated[float, typer.Option(help="--from-queries: discounted-rank gain a query must see "
                                            "to count as a premium win.")] = 0.0,
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
        s = settings.input
        rules = ValidationRules(s.id_field, s.text_field, s.metadata_field, s.max_text_chars)
        if from_queries is None:
            examples = read_labelled(labels, rules, positive)
        else:
            examples = _examples_from_queries(settings, labels, from_queries, rules, sample=sample,
                                              max_cost=max_cost, min_gain=min_gain, labels_out=labels_out,
                                              local_version=local_version, api_version=api_version)
        _train_and_save(examples, opts, settings.routing.classifier_path)
    except TierembedError as exc:
        _fail(exc)


def _examples_from_queries(
    settings: TierembedSettings, docs_path: Path, queries_path: Path, rules: ValidationRules, *,
    sample: int, max_cost: float, min_gain: float, labels_out: Path | None,
    local_version: str | None, api_version: str | None,
) -> list[LabeledExample]:
    docs = read_documents(docs_path, rules)
    queries = read_queries(queries_path)
    chosen = sample_documents(docs, queries, sample)
    labels = _derive_with_real_tiers(settings, chosen, queries, max_cost=max_cost,
                                     local_version=local_version, api_version=api_version,
                                     min_gain=min_gain, echo=typer.echo)
    typer.echo(_gain_summary(labels, len(queries)))
    if labels_out is not None:
        _write_labels(labels_out, labels)
    by_id = {d.id: d for d in chosen}
    return [LabeledExample(by_id[x.doc_id], x.target) for x in labels]


# -------------------------------------------------------------------------- explain


def _find_document(source: Path, doc_id: str, rules: ValidationRules) -> Document:
    for doc in read_documents(source, rules):
        if doc.id == doc_id:
            return doc
    raise InputNotFoundError(f"no document with id {doc_id!r} in {source}")


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
        s = settings.input
        rules = ValidationRules(s.id_field, s.text_field, s.metadata_field, s.max_text_chars)
        if text is not None:
            meta = json.loads(metadata) if metadata else {}
            record = {"id": doc_id or "(text)", "text": text, "metadata": meta}
            raw = RawRecord("--text", 1, json.dumps(record), fields=tuple(record.items()))
            doc = validate_record(raw, rules)
            if not isinstance(doc, Document):
                raise TrainingDataError(doc.message, stage="explain")
        elif doc_id is None or source is None:
            raise ConfigError("give a DOC_ID and a SOURCE file, or --text")
        else:
            doc = _find_document(source, doc_id, rules)
        path = str(model) if model else settings.routing.classifier_path
        clf = ValueClassifier.load(path) if path else load_default()
    except json.JSONDecodeError as exc:
        _fail(f"--metadata is not valid JSON: {exc}")
        return
    except TierembedError as exc:
        _fail(exc)
        return
    explanation = clf.explain(doc)
    tier, reason = wanted_tier(doc, explanation.score, policy_from_settings(settings))
    typer.echo(explanation.render())
    after = "; the budget plan may still move it to local" if tier is Tier.API else ""
    typer.echo(f"  routing: {tier.value} tier ({reason}){after}")
