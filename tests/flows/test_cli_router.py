"""``tierembed router train`` and ``explain``: labelled files, business labels, gain labels
derived from a query set, and explanations."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from flows.cli import app
from flows.router_data import read_queries
from store.ledger import SpendLedger
from tests.conftest import write_jsonl
from tests.fakes.openai_server import FakeOpenAIServer
from tiering.classifier import ValueClassifier, in_holdout, load_default
from tiering.documents import Document

LISTINGS = Path(__file__).parents[2] / "examples" / "data" / "listings.jsonl"
runner = CliRunner()


def _listings() -> list[dict[str, Any]]:
    return [json.loads(line) for line in LISTINGS.read_text(encoding="utf-8").splitlines()]


def _doc(record: dict[str, Any]) -> Document:
    return Document(record["id"], record["text"], "t", json.dumps(record.get("metadata", {})))


def _holdout_accuracy(
    model: ValueClassifier, records: list[dict[str, Any]], target: dict[str, float]
) -> float:
    held = [r for r in records if in_holdout(r["id"], holdout_fraction=0.25, seed=0)]
    right = sum((model.score(_doc(r)) >= 0.5) == (target[r["id"]] >= 0.5) for r in held)
    return right / len(held)


def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIEREMBED_BUDGET__LEDGER_PATH", str(tmp_path / "ledger.sqlite"))


# -------------------------------------------------------------------------- train


def test_training_on_business_labels_beats_the_shipped_default_on_the_holdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env(monkeypatch, tmp_path)
    records = _listings()
    # The business says rentals are the valuable documents; the default prior knows nothing
    # about that. The label column must not leak into the features (metadata).
    labelled = [{**r, "label": r["metadata"]["listing_type"]} for r in records]
    src = write_jsonl(tmp_path / "labels.jsonl", labelled)
    out = tmp_path / "router.json"
    result = runner.invoke(app, ["router", "train", str(src), "--positive", "rent", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "holdout accuracy" in result.output and "baseline" in result.output
    assert f"routing.classifier_path: {out}" in result.output

    trained = ValueClassifier.load(out)
    target = {r["id"]: 1.0 if r["metadata"]["listing_type"] == "rent" else 0.0 for r in records}
    ours = _holdout_accuracy(trained, records, target)
    default = _holdout_accuracy(load_default(), records, target)
    assert ours > default
    assert f"holdout accuracy {ours:.3f} (baseline {default:.3f})" in result.output
    assert "trained by tiering.classifier.train" in trained.provenance


def test_training_on_graded_targets_from_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, tmp_path)
    records = _listings()[:120]
    words = sorted(len(r["text"].split()) for r in records)
    median = words[len(words) // 2]
    path = tmp_path / "labels.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text", "target", "metadata"])
        writer.writeheader()
        for r in records:
            short = len(r["text"].split()) < median
            writer.writerow({"id": r["id"], "text": r["text"], "target": 0.9 if short else 0.1,
                             "metadata": json.dumps(r["metadata"])})
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["router", "train", str(path), "--out", str(out), "--version", "short-v1"])
    assert result.exit_code == 0, result.output
    model = ValueClassifier.load(out)
    assert model.version == "short-v1"
    short_doc = min(records, key=lambda r: len(r["text"]))
    long_doc = max(records, key=lambda r: len(r["text"]))
    assert model.score(_doc(short_doc)) > model.score(_doc(long_doc))


def test_bad_labels_fail_with_the_record_and_the_fix(tmp_path: Path) -> None:
    records = [{"id": f"d{i}", "text": f"text {i}", "label": "gold" if i % 2 else "lead"} for i in range(30)]
    src = write_jsonl(tmp_path / "labels.jsonl", records)
    result = runner.invoke(app, ["router", "train", str(src), "--out", str(tmp_path / "m.json")])
    assert result.exit_code == 2
    assert "labels.jsonl:1" in result.output and "--positive" in result.output
    few = write_jsonl(tmp_path / "few.jsonl", [{"id": "a", "text": "t", "label": 1}])
    result = runner.invoke(app, ["router", "train", str(few), "--out", str(tmp_path / "m.json")])
    assert result.exit_code == 2 and "need at least" in result.output


# ------------------------------------------------------- query sets and gain labels


def test_read_queries_accepts_lists_graded_maps_and_single_query_files(tmp_path: Path) -> None:
    many = tmp_path / "q.json"
    many.write_text(json.dumps({"queries": [
        {"id": "q1", "text": "garden", "relevant": ["d1", "d2"]},
        {"text": "studio", "relevant": {"d3": 2, "d4": 0}},
    ]}))
    q1, q2 = read_queries(many)
    assert q1.judgements == (("d1", 2.0), ("d2", 2.0)) and q2.id == "q2"
    assert q2.judgements == (("d3", 2.0),)  # grade 0 is not relevant
    single = tmp_path / "s.json"
    single.write_text(json.dumps({"query": "3 bedroom house", "relevant": ["a"], "partial": ["b"],
                                  "irrelevant": ["c"]}))
    (q,) = read_queries(single)
    assert q.text == "3 bedroom house" and q.judgements == (("a", 2.0), ("b", 1.0))


GREEK = ["θάλασσα", "βουνό", "πάρκο", "ακρόπολη", "λιμάνι", "πλατεία", "ποτάμι", "δάσος", "νησί",
         "κάστρο", "αγορά", "σταθμό", "μουσείο", "γήπεδο"]
GREEK_TEXTS = ["Διαμέρισμα {n} τετραγωνικών μέτρων στην Αθήνα με θέα {w} και μπαλκόνι",
               "Μονοκατοικία με κήπο {w} στη Θεσσαλονίκη, {n} υπνοδωμάτια, τζάκι"]


def _query_set(tmp_path: Path) -> tuple[Path, Path]:
    """Greek listings found by one exact word (the hashed bag-of-words API finds them, the
    English MiniLM often does not) and English listings found by a paraphrase (MiniLM
    wins)."""
    docs = [{"id": f"gr-{i}", "text": GREEK_TEXTS[i % 2].format(n=40 + i, w=w)} for i, w in enumerate(GREEK)]
    queries = [{"id": f"qg{i}", "text": w, "relevant": [f"gr-{i}"]} for i, w in enumerate(GREEK)]
    for i, r in enumerate(_listings()[:14]):
        m = r["metadata"]
        docs.append({"id": r["id"], "text": r["text"], "metadata": m})
        queries.append({"id": f"qe{i}", "relevant": [r["id"]],
                        "text": f"{m['property_type']} home in {m['city']} with {m['bedrooms']} bedrooms"})
    docs += [{"id": f"x{i}", "text": r["text"]} for i, r in enumerate(_listings()[100:110])]  # unjudged
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    qpath = tmp_path / "queries.json"
    qpath.write_text(json.dumps({"queries": queries}, ensure_ascii=False), encoding="utf-8")
    return src, qpath


def test_train_from_queries_embeds_with_both_tiers_and_learns_where_premium_pays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_api: FakeOpenAIServer
) -> None:
    _env(monkeypatch, tmp_path)
    monkeypatch.setenv("TIEREMBED_API__ENDPOINT", "custom")
    monkeypatch.setenv("TIEREMBED_API__BASE_URL", fake_api.base_url)
    src, qpath = _query_set(tmp_path)
    out, labels_out = tmp_path / "gain.json", tmp_path / "gain-labels.jsonl"
    result = runner.invoke(app, ["router", "train", str(src), "--from-queries", str(qpath), "--out", str(out),
                                 "--labels-out", str(labels_out), "--sample", "34"])
    assert result.exit_code == 0, result.output
    text = result.output
    # the cost is shown before anything is sent, and reported against --max-cost after
    assert text.index("training cost: embedding 34 documents and 28 queries") < text.index("API tier billed")
    assert "--max-cost $1.000000" in text
    # labels for every sampled document from the training queries; held-out queries reported
    assert "derived gain labels for 34 documents from 20 training queries" in text
    assert "held-out retrieval (8 queries, 34 sampled documents" in text
    assert "trained router @30% cost" in text and "current router @30% cost" in text

    labels = {x["id"]: x for x in map(json.loads, labels_out.read_text().splitlines())}
    assert len(labels) == 34
    greek = [v["target"] for k, v in labels.items() if k.startswith("gr-")]
    english = [v["target"] for k, v in labels.items() if not k.startswith("gr-")]
    assert sum(greek) / len(greek) > sum(english) / len(english)
    model = ValueClassifier.load(out)
    unseen_greek = Document("g", GREEK_TEXTS[0].format(n=99, w="ελιά"), "t")
    assert model.score(unseen_greek) > model.score(_doc(_listings()[200]))

    # The API calls were paid for: the ledger holds them, matching the server's bill.
    stats = fake_api.stats()
    assert stats.billed_inputs_by_model["text-embedding-3-small"] == 34 + 28
    (run,) = SpendLedger(tmp_path / "ledger.sqlite").runs()
    assert run.run_id.startswith("router-train-") and run.status == "succeeded"
    spend = SpendLedger(tmp_path / "ledger.sqlite").month_spend()
    assert spend.by_model[0].billed_tokens == stats.billed_tokens_total


def test_train_from_queries_refuses_to_spend_over_max_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_api: FakeOpenAIServer
) -> None:
    _env(monkeypatch, tmp_path)
    monkeypatch.setenv("TIEREMBED_API__ENDPOINT", "custom")
    monkeypatch.setenv("TIEREMBED_API__BASE_URL", fake_api.base_url)
    src, qpath = _query_set(tmp_path)
    result = runner.invoke(app, ["router", "train", str(src), "--from-queries", str(qpath),
                                 "--out", str(tmp_path / "m.json"), "--max-cost", "0.000001"])
    assert result.exit_code == 2 and "--max-cost" in result.output
    assert fake_api.stats().requests_total == 0
    assert SpendLedger(tmp_path / "ledger.sqlite").month_spend().committed_usd == 0


def _failing_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_api: FakeOpenAIServer,
                 query_text: str) -> Result:
    _env(monkeypatch, tmp_path)
    monkeypatch.setenv("TIEREMBED_API__ENDPOINT", "custom")
    monkeypatch.setenv("TIEREMBED_API__BASE_URL", fake_api.base_url)
    records = _listings()[:6]
    src = write_jsonl(tmp_path / "docs.jsonl", records)
    qpath = tmp_path / "queries.json"
    query = {"id": "q", "text": query_text, "relevant": [records[0]["id"]]}
    qpath.write_text(json.dumps({"queries": [query]}))
    return runner.invoke(app, ["router", "train", str(src), "--from-queries", str(qpath),
                               "--out", str(tmp_path / "m.json")])


def test_train_from_queries_records_what_was_billed_before_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_api: FakeOpenAIServer
) -> None:
    # The documents are embedded and billed; the query request is then rejected.
    result = _failing_run(tmp_path, monkeypatch, fake_api, "house __POISON__")
    assert result.exit_code != 0 and not (tmp_path / "m.json").exists()
    billed = fake_api.stats().billed_tokens_total
    assert billed > 0
    ledger = SpendLedger(tmp_path / "ledger.sqlite")
    (run,) = ledger.runs()
    assert run.status == "succeeded" and run.reserved_usd == 0
    assert ledger.month_spend().by_model[0].billed_tokens == billed


def test_train_from_queries_keeps_the_reservation_when_an_unanswered_request_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_api: FakeOpenAIServer
) -> None:
    fake_api.configure(fail_next=(400,))
    result = _failing_run(tmp_path, monkeypatch, fake_api, "house")
    assert result.exit_code != 0
    assert fake_api.stats().billed_tokens_total == 0
    (run,) = SpendLedger(tmp_path / "ledger.sqlite").runs()
    assert run.status == "failed" and "BadRequestError" in run.error and run.reserved_usd > 0


# ------------------------------------------------------------------------ explain


def test_explain_a_document_from_a_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["router", "explain", "listing-0003", str(LISTINGS)])
    assert result.exit_code == 0, result.output
    expected = load_default().explain(_doc(next(r for r in _listings() if r["id"] == "listing-0003")))
    assert result.output.startswith(expected.render())
    assert "routing: local tier (score" in result.output


def test_explain_text_with_metadata_and_a_trained_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIEREMBED_ROUTING__RULES", json.dumps([{"field": "priority", "equals": "high",
                                                                "tier": "api"}]))
    result = runner.invoke(app, ["router", "explain", "--text", "Yield 5% on a lease", "--metadata",
                                 '{"priority": "high"}'])
    assert result.exit_code == 0, result.output
    assert "priority" in result.output and "rule priority='high'" in result.output
    model = tmp_path / "m.json"
    load_default().save(model)
    assert runner.invoke(app, ["router", "explain", "--text", "x", "--model", str(model)]).exit_code == 0


def test_explain_errors_name_the_problem(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["router", "explain", "nope", str(LISTINGS)])
    assert missing.exit_code == 2 and "no document with id 'nope'" in missing.output
    nothing = runner.invoke(app, ["router", "explain"])
    assert nothing.exit_code == 2 and "--text" in nothing.output
    bad = runner.invoke(app, ["router", "explain", "--text", "x", "--metadata", "{oops"])
    assert bad.exit_code == 2 and "--metadata" in bad.output
