"""The cheap value classifier: a document's value score in [0, 1], and how to train it.

``ScoreDocuments`` calls :meth:`ValueClassifier.score_many`; the budget planner then sends
the highest value-per-dollar documents to the paid tier. The model is a standardized
logistic regression over :mod:`tiering.features`: small enough to read in full
(:meth:`ValueClassifier.explain` shows every term), fast enough for thousands of
documents per second per core, and trainable from a few hundred labelled documents with
:func:`train` (pure numpy batch gradient descent, no ML framework).

The shipped default (``tiering/models/router-default.json``, :func:`load_default`) is a
hand-set prior, not a trained model; its provenance says so. Scoring is pure: no I/O, no
clock, no environment.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tiering.documents import Document
from tiering.errors import TerminalError
from tiering.features import FEATURE_NAMES, FEATURE_SET_VERSION, extract_features

__all__ = [
    "MIN_TRAINING_EXAMPLES",
    "MODEL_FORMAT",
    "Explanation",
    "FeatureContribution",
    "LabeledExample",
    "ModelFormatError",
    "TrainResult",
    "TrainingDataError",
    "ValueClassifier",
    "in_holdout",
    "load_default",
    "train",
]

MODEL_FORMAT = "tierembed.value-classifier/v1"
MIN_TRAINING_EXAMPLES = 20
_DEFAULT_RESOURCE = "router-default.json"
_RETRAIN_HINT = "retrain with `tierembed router train`"

FloatArray = npt.NDArray[np.float64]


class ModelFormatError(TerminalError, ValueError):
    """A saved classifier is malformed or was made for another feature set."""


class TrainingDataError(TerminalError, ValueError):
    """The labelled examples cannot train a classifier; the message names the problem."""


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True, slots=True)
class FeatureContribution:
    """One term of the logit: ``contribution = weight * standardized``."""

    name: str
    raw: float
    standardized: float
    weight: float
    contribution: float


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a document got its score: ``logit = bias + sum(contributions)``.

    ``contributions`` are sorted by decreasing absolute contribution.
    """

    doc_id: str
    model_version: str
    score: float
    logit: float
    bias: float
    contributions: tuple[FeatureContribution, ...]

    def render(self) -> str:
        """A plain-text table for logs and the command line."""
        head = (
            f"document {self.doc_id}: value score {self.score:.3f} "
            f"(logit {self.logit:+.3f}, model {self.model_version})"
        )
        rows = [f"  {'feature':<20} {'raw':>10} {'z':>7} {'weight':>7} {'contrib':>8}"]
        for c in self.contributions:
            rows.append(
                f"  {c.name:<20} {c.raw:>10.4g} {c.standardized:>+7.2f} "
                f"{c.weight:>+7.3f} {c.contribution:>+8.3f}"
            )
        rows.append(f"  {'bias':<20} {'':>10} {'':>7} {'':>7} {self.bias:>+8.3f}")
        return "\n".join([head, *rows])


def _sigmoid(x: float) -> float:
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)  # avoids overflow of exp(-x) for very negative x
    return e / (1.0 + e)


@dataclass(frozen=True, slots=True)
class ValueClassifier:
    """Logistic regression on standardized features.

    ``score = sigmoid(bias + sum_i weights[i] * clip((x_i - means[i]) / scales[i]))``
    where the clip to ``[-z_clip, z_clip]`` keeps one freak feature value (a table of
    digits, a 1 MB document) from deciding the score alone.
    """

    feature_names: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    version: str
    provenance: str
    z_clip: float = 4.0
    feature_set: str = FEATURE_SET_VERSION

    def __post_init__(self) -> None:
        where = f"classifier {self.version!r}"
        if self.feature_set != FEATURE_SET_VERSION or self.feature_names != FEATURE_NAMES:
            raise ModelFormatError(
                f"{where} was made for feature set {self.feature_set!r} "
                f"{list(self.feature_names)}, but this code computes {FEATURE_SET_VERSION!r} "
                f"{list(FEATURE_NAMES)}; {_RETRAIN_HINT}",
                model_version=self.version,
            )
        n = len(self.feature_names)
        for label, values in (
            ("means", self.means),
            ("scales", self.scales),
            ("weights", self.weights),
        ):
            if len(values) != n:
                raise ModelFormatError(
                    f"{where}: {label} has {len(values)} values for {n} features",
                    model_version=self.version,
                )
        numbers = (*self.means, *self.scales, *self.weights, self.bias, self.z_clip)
        if not all(math.isfinite(v) for v in numbers):
            raise ModelFormatError(f"{where}: a parameter is not finite", model_version=self.version)
        if min(self.scales) <= 0.0 or self.z_clip <= 0.0:
            raise ModelFormatError(
                f"{where}: scales and z_clip must be positive",
                model_version=self.version,
            )

    # -- scoring ------------------------------------------------------------------------

    def standardize(self, features: Sequence[float]) -> tuple[float, ...]:
        """Clipped z-scores of a feature vector."""
        c = self.z_clip
        return tuple(
            max(-c, min(c, (x - m) / s)) for x, m, s in zip(features, self.means, self.scales, strict=True)
        )

    def logit(self, features: Sequence[float]) -> float:
        """``bias + sum(weight * z)`` for a feature vector from :func:`extract_features`."""
        c = self.z_clip
        total = self.bias
        for x, m, s, w in zip(features, self.means, self.scales, self.weights, strict=True):
            total += w * max(-c, min(c, (x - m) / s))
        return total

    def score(self, doc: Document) -> float:
        """The value score of ``doc`` in [0, 1]."""
        return _sigmoid(self.logit(extract_features(doc)))

    def score_many(self, docs: Iterable[Document]) -> list[float]:
        """Value scores of ``docs``, in input order (equal to :meth:`score` for each)."""
        logit = self.logit
        return [_sigmoid(logit(extract_features(doc))) for doc in docs]

    def explain(self, doc: Document) -> Explanation:
        """Every term of ``doc``'s score, largest effect first."""
        raw = extract_features(doc)
        z = self.standardize(raw)
        terms = [
            FeatureContribution(name, x, zi, w, w * zi)
            for name, x, zi, w in zip(self.feature_names, raw, z, self.weights, strict=True)
        ]
        terms.sort(key=lambda t: -abs(t.contribution))
        logit = self.logit(raw)
        return Explanation(doc.id, self.version, _sigmoid(logit), logit, self.bias, tuple(terms))

    # -- persistence --------------------------------------------------------------------

    def to_json(self) -> str:
        """The model as indented JSON (the format of ``router-default.json``)."""
        payload = {
            "format": MODEL_FORMAT,
            "version": self.version,
            "provenance": self.provenance,
            "feature_set": self.feature_set,
            "bias": self.bias,
            "z_clip": self.z_clip,
            "features": [
                {"name": n, "mean": m, "scale": s, "weight": w}
                for n, m, s, w in zip(
                    self.feature_names,
                    self.means,
                    self.scales,
                    self.weights,
                    strict=True,
                )
            ],
        }
        return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "<string>") -> ValueClassifier:
        """Parse :meth:`to_json` output; raise :class:`ModelFormatError` naming ``source``."""
        try:
            payload = json.loads(text)
        except ValueError as exc:
            raise ModelFormatError(f"{source} is not valid JSON: {exc}") from exc
        try:
            return _from_payload(payload)
        except ModelFormatError as exc:
            raise ModelFormatError(f"{source}: {exc.message}", model_version=exc.model_version) from None

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path`` (UTF-8)."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ValueClassifier:
        """Read a classifier written by :meth:`save`."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"), source=str(path))


def _from_payload(payload: object) -> ValueClassifier:
    if not isinstance(payload, dict):
        raise ModelFormatError(f"expected a JSON object, got {type(payload).__name__}")
    if payload.get("format") != MODEL_FORMAT:
        raise ModelFormatError(f"format is {payload.get('format')!r}, expected {MODEL_FORMAT!r}")
    features = payload.get("features")
    if not isinstance(features, list) or not all(isinstance(f, dict) for f in features):
        raise ModelFormatError("'features' must be a list of objects")
    return ValueClassifier(
        feature_names=tuple(str(f.get("name")) for f in features),
        means=tuple(_number(f, "mean") for f in features),
        scales=tuple(_number(f, "scale") for f in features),
        weights=tuple(_number(f, "weight") for f in features),
        bias=_number(payload, "bias"),
        version=str(payload.get("version", "")),
        provenance=str(payload.get("provenance", "")),
        z_clip=_number(payload, "z_clip"),
        feature_set=str(payload.get("feature_set", "")),
    )


def _number(obj: dict[str, object], key: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        where = f" of feature {obj['name']!r}" if "name" in obj else ""
        raise ModelFormatError(f"'{key}'{where} must be a number, got {value!r}")
    return float(value)


@functools.lru_cache(maxsize=1)
def load_default() -> ValueClassifier:
    """The shipped hand-set prior, ``tiering/models/router-default.json`` (cached)."""
    resource = resources.files("tiering.models").joinpath(_DEFAULT_RESOURCE)
    return ValueClassifier.from_json(
        resource.read_text(encoding="utf-8"),
        source=f"tiering/models/{_DEFAULT_RESOURCE}",
    )


# -------------------------------------------------------------------------- training


@dataclass(frozen=True, slots=True)
class LabeledExample:
    """A document and its target value in [0, 1]: a 0/1 label or a graded score."""

    document: Document
    target: float


@dataclass(frozen=True, slots=True)
class TrainResult:
    """A trained classifier and how it did on the held-out split.

    Accuracy thresholds both the score and the target at 0.5. AUC is rank-based and
    ``None`` when the holdout holds one class only; all holdout figures are ``None`` when
    there is no holdout. The baseline figures are those of the ``baseline`` model (by
    default :func:`load_default`) on the same holdout.
    """

    model: ValueClassifier
    train_size: int
    holdout_size: int
    holdout_accuracy: float | None
    holdout_auc: float | None
    baseline_holdout_accuracy: float | None
    baseline_holdout_auc: float | None
    epochs_run: int
    train_loss: float

    def render(self) -> str:
        """A short report for the command line."""
        return (
            f"trained {self.model.version}: {self.train_size} train / "
            f"{self.holdout_size} holdout examples, {self.epochs_run} epochs, "
            f"train log-loss {self.train_loss:.4f}\n"
            f"  holdout accuracy {_fmt(self.holdout_accuracy)} "
            f"(baseline {_fmt(self.baseline_holdout_accuracy)}), "
            f"AUC {_fmt(self.holdout_auc)} (baseline {_fmt(self.baseline_holdout_auc)})"
        )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@dataclass(frozen=True, slots=True)
class _Split:
    train_x: FloatArray
    train_y: FloatArray
    holdout_x: FloatArray
    holdout_y: FloatArray


def train(
    examples: Sequence[LabeledExample],
    *,
    holdout_fraction: float = 0.25,
    seed: int = 0,
    l2: float = 1e-3,
    epochs: int = 3000,
    tol: float = 1e-6,
    version: str | None = None,
    baseline: ValueClassifier | None = None,
) -> TrainResult:
    """Fit a :class:`ValueClassifier` to labelled documents.

    Logistic regression (cross-entropy, so graded targets work) with an L2 penalty
    ``l2 * |w|^2 / 2`` on the weights, fitted by full-batch gradient descent with the step
    ``1 / L`` from the exact smoothness constant; it stops after ``epochs`` steps or when
    the largest gradient component is below ``tol``. The split is deterministic: a
    document is held out when a hash of ``(seed, document id)`` falls below
    ``holdout_fraction``, so adding examples never reshuffles the others.

    Standardization constants are the training split's means and standard deviations. A
    feature that is constant in the training split (often ``priority``) carries no
    information to learn from, so it keeps the baseline's mean, scale and weight.

    Raises :class:`TrainingDataError` for fewer than :data:`MIN_TRAINING_EXAMPLES`
    examples, a target outside [0, 1], duplicate document ids, or a single class.
    """
    _check_arguments(holdout_fraction, l2, epochs)
    _check_examples(examples)
    baseline = baseline if baseline is not None else load_default()
    split = _split(examples, holdout_fraction, seed)
    fit = _fit(split.train_x, split.train_y, baseline, l2=l2, epochs=epochs, tol=tol)
    model, epochs_run, loss, kept = fit
    hold_p = _predict(model, split.holdout_x)
    base_p = _predict(baseline, split.holdout_x)
    acc, auc = _metrics(hold_p, split.holdout_y)
    base_acc, base_auc = _metrics(base_p, split.holdout_y)
    provenance = _provenance(
        n_train=len(split.train_y),
        n_holdout=len(split.holdout_y),
        holdout_fraction=holdout_fraction,
        seed=seed,
        l2=l2,
        epochs_run=epochs_run,
        acc=acc,
        auc=auc,
        baseline=baseline,
        base_acc=base_acc,
        base_auc=base_auc,
        kept=kept,
    )
    model = _finish(model, version, provenance)
    return TrainResult(
        model,
        len(split.train_y),
        len(split.holdout_y),
        acc,
        auc,
        base_acc,
        base_auc,
        epochs_run,
        loss,
    )


def _check_arguments(holdout_fraction: float, l2: float, epochs: int) -> None:
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if not (l2 >= 0.0 and math.isfinite(l2)):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")


def _check_examples(examples: Sequence[LabeledExample]) -> None:
    if len(examples) < MIN_TRAINING_EXAMPLES:
        raise TrainingDataError(
            f"got {len(examples)} labelled examples, need at least {MIN_TRAINING_EXAMPLES}; "
            "label more documents",
            stage="train",
        )
    bad = [
        e.document.id for e in examples if not (isinstance(e.target, (int, float)) and 0.0 <= e.target <= 1.0)
    ]
    if bad:
        raise TrainingDataError(
            f"{len(bad)} examples have a target outside [0, 1] (or not a number); "
            "use 0/1 labels or scores in [0, 1]",
            doc_ids=tuple(bad),
            stage="train",
        )
    counts = Counter(e.document.id for e in examples)
    dupes = sorted(doc_id for doc_id, n in counts.items() if n > 1)
    if dupes:
        raise TrainingDataError(
            f"{len(dupes)} document ids occur more than once: {', '.join(dupes[:10])}"
            f"{' ...' if len(dupes) > 10 else ''}; keep one label per document",
            doc_ids=tuple(dupes),
            stage="train",
        )
    positives = sum(1 for e in examples if e.target >= 0.5)
    if positives in (0, len(examples)):
        cls = "high (>= 0.5)" if positives else "low (< 0.5)"
        raise TrainingDataError(
            f"all {len(examples)} targets are {cls}; a classifier needs examples of both "
            "high- and low-value documents",
            stage="train",
        )


def in_holdout(doc_id: str, *, holdout_fraction: float, seed: int = 0) -> bool:
    """Whether :func:`train` holds ``doc_id`` out: a hash of ``(seed, doc_id)``, so the
    split never depends on the order or the number of the other examples."""
    digest = hashlib.sha256(f"{seed}\x1f{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < holdout_fraction


def _split(examples: Sequence[LabeledExample], fraction: float, seed: int) -> _Split:
    x = np.array([extract_features(e.document) for e in examples], dtype=np.float64)
    y = np.array([float(e.target) for e in examples], dtype=np.float64)
    held = np.array(
        [in_holdout(e.document.id, holdout_fraction=fraction, seed=seed) for e in examples],
        dtype=bool,
    )
    if fraction > 0.0 and not held.any():
        raise TrainingDataError(
            f"holdout_fraction={fraction} held out none of {len(examples)} examples; "
            "label more documents or raise holdout_fraction",
            stage="train",
        )
    train_y = y[~held]
    if len(np.unique(train_y >= 0.5)) < 2:
        raise TrainingDataError(
            f"the training split ({len(train_y)} examples, seed {seed}) holds one class "
            "only; label more documents of the rarer class or change seed",
            stage="train",
        )
    return _Split(x[~held], train_y, x[held], y[held])


def _fit(
    x: FloatArray,
    y: FloatArray,
    baseline: ValueClassifier,
    *,
    l2: float,
    epochs: int,
    tol: float,
) -> tuple[ValueClassifier, int, float, list[str]]:
    """Standardize, fit, and return the model, epochs run, loss and the kept features."""
    means = x.mean(axis=0)
    scales = x.std(axis=0)
    fixed = scales < 1e-12  # constant in training: nothing to learn, keep the prior
    means[fixed] = np.asarray(baseline.means)[fixed]
    scales[fixed] = np.asarray(baseline.scales)[fixed]
    z = np.clip((x - means) / scales, -baseline.z_clip, baseline.z_clip)
    fixed_w = np.where(fixed, np.asarray(baseline.weights), 0.0)
    offset = z @ fixed_w
    free = z[:, ~fixed]
    w_free, bias, epochs_run, loss = _gradient_descent(free, y, offset, l2, epochs, tol)
    weights = fixed_w.copy()
    weights[~fixed] = w_free
    model = ValueClassifier(
        FEATURE_NAMES,
        tuple(means.tolist()),
        tuple(scales.tolist()),
        tuple(weights.tolist()),
        float(bias),
        version="unversioned",
        provenance="",
        z_clip=baseline.z_clip,
    )
    kept = [name for name, k in zip(FEATURE_NAMES, fixed, strict=True) if k]
    return model, epochs_run, loss, kept


def _gradient_descent(
    z: FloatArray,
    y: FloatArray,
    offset: FloatArray,
    l2: float,
    epochs: int,
    tol: float,
) -> tuple[FloatArray, float, int, float]:
    n, d = z.shape
    a = np.hstack([z, np.ones((n, 1))])
    # The logistic loss is (max eigenvalue of A'A/n)/4-smooth; 1/L is the largest safe step.
    lipschitz = 0.25 * float(np.linalg.eigvalsh(a.T @ a / n).max()) + l2
    step = 1.0 / lipschitz
    penalty = np.r_[np.full(d, l2), 0.0]  # the bias is not penalised
    theta = np.zeros(d + 1)
    epochs_run = 0
    while epochs_run < epochs:
        epochs_run += 1
        p = _sigmoid_array(a @ theta + offset)
        grad = a.T @ (p - y) / n + penalty * theta
        theta -= step * grad
        if float(np.abs(grad).max()) < tol:
            break
    p = np.clip(_sigmoid_array(a @ theta + offset), 1e-12, 1.0 - 1e-12)
    loss = float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))
    return theta[:d], float(theta[d]), epochs_run, loss


def _sigmoid_array(x: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic
    return out


def _predict(model: ValueClassifier, x: FloatArray) -> FloatArray:
    z = np.clip(
        (x - np.asarray(model.means)) / np.asarray(model.scales),
        -model.z_clip,
        model.z_clip,
    )
    return _sigmoid_array(z @ np.asarray(model.weights) + model.bias)


def _metrics(p: FloatArray, y: FloatArray) -> tuple[float | None, float | None]:
    if len(y) == 0:
        return None, None
    positive = y >= 0.5
    accuracy = float(np.mean((p >= 0.5) == positive))
    return accuracy, _rank_auc(p, positive)


def _rank_auc(scores: FloatArray, positive: npt.NDArray[np.bool_]) -> float | None:
    """Mann-Whitney AUC with tied scores given their average rank."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based
    ranks = average_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _provenance(
    *,
    n_train: int,
    n_holdout: int,
    holdout_fraction: float,
    seed: int,
    l2: float,
    epochs_run: int,
    acc: float | None,
    auc: float | None,
    baseline: ValueClassifier,
    base_acc: float | None,
    base_auc: float | None,
    kept: list[str],
) -> str:
    kept_text = (
        f" Features constant in the training split keep {baseline.version}'s weights: {', '.join(kept)}."
        if kept
        else ""
    )
    return (
        "trained by tiering.classifier.train: logistic regression, full-batch gradient "
        f"descent, L2 {l2:g}, {epochs_run} epochs, on {n_train} labelled examples; "
        f"standardized by the training split's means and standard deviations. Holdout: "
        f"{n_holdout} examples (fraction {holdout_fraction:g}, split by hash of document "
        f"id with seed {seed}): accuracy {_fmt(acc)}, AUC {_fmt(auc)}; baseline "
        f"{baseline.version} on the same holdout: accuracy {_fmt(base_acc)}, AUC "
        f"{_fmt(base_auc)}.{kept_text}"
    )


def _finish(model: ValueClassifier, version: str | None, provenance: str) -> ValueClassifier:
    if version is None:
        params = json.dumps([model.means, model.scales, model.weights, model.bias])
        version = "router-trained-" + hashlib.sha256(params.encode()).hexdigest()[:12]
    return ValueClassifier(
        model.feature_names,
        model.means,
        model.scales,
        model.weights,
        model.bias,
        version,
        provenance,
        model.z_clip,
        model.feature_set,
    )
