from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.replay import dead_letter_files, select_for_replay
from tiering.documents import DeadLetter
from tiering.errors import InputNotFoundError
from tiering.settings import InputSettings
from tiering.validation import RawRecord, ValidationRules, validate_record


def _letter(stage: str, retryable: bool, payload: str) -> str:
    return DeadLetter(stage, "X", "m", retryable, "d1", "s:1", payload).to_json()


def test_embed_stage_payloads_come_back_in_the_configured_field_names() -> None:
    fields = InputSettings(id_field="listing_id", text_field="body", metadata_field="meta")
    doc = json.dumps({"id": "d1", "text": "a house", "metadata": {"k": 1}})
    chosen = select_for_replay([_letter("embed", True, doc)], fields)
    record = json.loads(chosen.records[0])
    assert record == {"listing_id": "d1", "body": "a house", "meta": {"k": 1}}
    rules = ValidationRules(fields.id_field, fields.text_field, fields.metadata_field)
    raw = RawRecord("replay.jsonl", 1, chosen.records[0], tuple(record.items()))
    validated = validate_record(raw, rules)
    assert getattr(validated, "id", None) == "d1"


def test_terminal_letters_are_left_out_unless_asked() -> None:
    lines = [_letter("embed", False, json.dumps({"id": "a", "text": "t"})),
             _letter("write", True, json.dumps({"id": "b", "text": "t"})),
             _letter("validate", False, "{not json")]
    default = select_for_replay(lines, InputSettings())
    assert len(default.records) == 1 and default.skipped_terminal == 2
    everything = select_for_replay(lines, InputSettings(), only_retryable=False)
    assert len(everything.records) == 3  # the raw validation payload goes back as it was


def test_missing_dead_letter_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="no dead-letter files"):
        dead_letter_files(tmp_path / "nope")


def test_replay_after_an_outage_embeds_exactly_what_failed(
    tmp_path: Path, make_settings, fake_api  # type: ignore[no-untyped-def]
) -> None:
    from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig, LanceDBStore
    from flows.embed import run_embedding
    from tests.conftest import corpus, write_jsonl

    settings = make_settings({
        "api": {"endpoint": "custom", "base_url": fake_api.base_url, "api_key": "t",
                "models": [{"version": "fake-v1", "model": "fake", "price_per_million_tokens": 1.0}],
                "retry": {"max_attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.02},
                "breaker": {"failure_threshold": 2, "on_open": "dead_letter", "max_wait_s": 0}},
        "routing": {"rules": [{"field": "priority", "equals": "high", "tier": "api"}],
                    "api_threshold": 1.0,
                    "mode": "exclusive", "budget_decides": False},
    })
    docs = corpus(6)
    for d in docs[:3]:
        d["metadata"]["priority"] = "high"
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    fake_api.configure(dead=True)
    first = run_embedding(settings, str(src), emit=lambda *a, **k: None)
    assert dict(first.dead_letters_by_stage) == {"embed": 3} and first.accounting_ok()

    fake_api.configure(dead=False)
    letters = [line for f in dead_letter_files(Path(first.dead_letter_path).parent)
               for line in f.read_text().splitlines()]
    chosen = select_for_replay(letters, settings.input)
    assert len(chosen.records) == 3
    replay_src = tmp_path / "replay.jsonl"
    replay_src.write_text("\n".join(chosen.records) + "\n")
    second = run_embedding(settings, str(replay_src), emit=lambda *a, **k: None)
    assert second.dead_letters == 0 and second.written == 3
    store = LanceDBStore(LanceDBSinkConfig(settings.sink.lancedb.uri))
    assert store.count("fake-v1") == 3 and store.count("minilm-l6-v2") == 3
