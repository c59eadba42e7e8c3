"""Hostile input is data (issue 12): each case the issue found, as a test.

Reader-level tests go through ``read_file`` (what ``ReadDocuments`` runs in each worker)
and ``validate_record``; the pipeline-level ones run the whole pipeline on the FnApiRunner
against the fake OpenAI-compatible server and check the store, the dead letters and the
accounting. The property-based suite over the same cases is in test_hostile_properties.py.
"""

from __future__ import annotations

import base64
import csv
import glob
import json
from pathlib import Path
from typing import Any

import pytest

from beam_pipeline.pipeline import PipelineSpec, ResolvedApi, api_prices, run_pipeline
from beam_pipeline.read import match_input, read_file
from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig, LanceDBStore
from tests.conftest import SettingsFactory
from tests.fakes.openai_server import FakeOpenAIServer
from tiering.documents import DeadLetter, Document
from tiering.report import RunReport, build_report
from tiering.settings import TierembedSettings
from tiering.validation import ValidationRules, validate_record

RULES = ValidationRules()


def _outcomes(path: Path, limit: int = 1 << 20) -> list[tuple[int, str]]:
    """(position, document id or dead-letter error type) for each record of ``path``."""
    out = []
    for raw in read_file(str(path), max_record_bytes=limit):
        result = validate_record(raw, RULES)
        out.append((raw.position, result.id if isinstance(result, Document) else result.error_type))
    return out


# ---------------------------------------------------------------- JSONL, reader level

def test_lone_surrogates_in_text_id_or_metadata_are_dead_letters_and_the_good_records_read(
    tmp_path: Path
) -> None:
    lines = ['{"id": "g1", "text": "good one"}', '{"id": "B", "text": "a \\ud800 b"}',
             '{"id": "g2", "text": "good two"}', '{"id": "\\udc00x", "text": "bad id"}',
             '{"id": "M", "text": "bad metadata", "metadata": {"k": "\\ud83d"}}',
             '{"id": "E", "text": "bad extra field", "note": "\\udfff"}',
             '{"id": "g3", "text": "good three"}']
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n")
    assert _outcomes(tmp_path / "s.jsonl") == [
        (1, "g1"), (2, "InvalidText"), (3, "g2"), (4, "InvalidId"), (5, "InvalidMetadata"),
        (6, "InvalidMetadata"), (7, "g3")]
    letters = [validate_record(r, RULES) for r in read_file(str(tmp_path / "s.jsonl"))]
    for letter in letters:
        if isinstance(letter, DeadLetter):
            json.loads(letter.to_json().encode("utf-8"))  # always writable and readable
            assert "lone surrogate" in letter.message


def test_deep_nesting_is_one_dead_letter_and_the_rest_of_the_file_is_read(tmp_path: Path) -> None:
    """The issue: 'read 2 records ... written 1'; the last two documents were never read."""
    deep = "[" * 5000 + "]" * 5000
    nested_metadata = '{"id": "n", "text": "t", "metadata": {"x": ' + "[" * 200 + "]" * 200 + "}}"
    lines = ['{"id": "a", "text": "first"}', deep, '{"id": "b", "text": "second"}', nested_metadata,
             '{"id": "c", "text": "third"}', '{"id": "s", "text": "t", "metadata": "' + "[" * 3000 + '"}']
    (tmp_path / "deep.jsonl").write_text("\n".join(lines) + "\n")
    assert _outcomes(tmp_path / "deep.jsonl") == [
        (1, "a"), (2, "ParseError"), (3, "b"), (4, "ParseError"), (5, "c"), (6, "InvalidMetadata")]


@pytest.mark.parametrize(("line", "fragment"), [
    ('{"id": "x", "text": "t", "n": NaN}', "NaN is not valid JSON"),
    ('{"id": "x", "text": "t", "n": ' + "9" * 5000 + "}", "not valid JSON"),
    ('{"id": "x", "text": "t"', "not valid JSON"),
    ('"just a string"', "expected a JSON object, got a JSON str"),
])
def test_json_python_refuses_or_that_is_not_an_object_is_a_parse_error(
    tmp_path: Path, line: str, fragment: str
) -> None:
    (tmp_path / "j.jsonl").write_text(line + '\n{"id": "ok", "text": "fine"}\n')
    records = list(read_file(str(tmp_path / "j.jsonl")))
    assert [r.position for r in records] == [1, 2]
    assert records[0].parse_error is not None and fragment in records[0].parse_error
    assert records[1].parse_error is None


def test_a_line_over_the_record_limit_is_dead_lettered_unread_and_reading_goes_on(tmp_path: Path) -> None:
    huge = json.dumps({"id": "h", "text": "x" * 50_000})
    (tmp_path / "big.jsonl").write_text(f'{{"id": "a", "text": "t"}}\n{huge}\n{{"id": "b", "text": "t"}}\n')
    records = list(read_file(str(tmp_path / "big.jsonl"), max_record_bytes=10_000))
    assert [(r.position, r.parse_error is None) for r in records] == [(1, True), (2, False), (3, True)]
    assert "over input.max_record_bytes=10,000" in (records[1].parse_error or "")
    assert records[1].raw is not None and len(records[1].raw) == 2000  # only the start is kept
    # the same line unbroken by a chunk boundary, and at the end of a file without a newline
    (tmp_path / "end.jsonl").write_text(f'{{"id": "a", "text": "t"}}\n{huge}')
    assert [r.parse_error is None for r in read_file(str(tmp_path / "end.jsonl"), max_record_bytes=10_000)] \
        == [True, False]


def test_invalid_utf8_is_kept_as_base64_in_the_dead_letter(tmp_path: Path) -> None:
    raw = b'{"id": "x", "text": "caf\xe9"}'  # latin-1, not UTF-8
    (tmp_path / "l1.jsonl").write_bytes(raw + b'\n{"id": "ok", "text": "fine"}\n')
    first, second = list(read_file(str(tmp_path / "l1.jsonl")))
    letter = validate_record(first, RULES)
    assert isinstance(letter, DeadLetter) and letter.payload_encoding == "base64"
    assert base64.b64decode(letter.payload) == raw and "b'" not in letter.payload
    assert "byte 0xe9 at byte 24" in letter.message
    assert json.loads(letter.to_json())["payload_encoding"] == "base64"
    assert isinstance(validate_record(second, RULES), Document)


# ------------------------------------------------------------------ CSV, reader level

def test_an_unterminated_quote_costs_its_own_line_only(tmp_path: Path) -> None:
    """The issue: the rows after the quote merged into one record ('1 more values than the
    header') and a valid row was lost inside it."""
    (tmp_path / "q.csv").write_text(
        'id,text\n1,one\n2,"two is never closed\n3,three\n4,"four, quoted"\n5,five\n')
    assert _outcomes(tmp_path / "q.csv") == [(2, "1"), (3, "ParseError"), (4, "3"), (5, "4"), (6, "5")]
    letter = validate_record(list(read_file(str(tmp_path / "q.csv")))[1], RULES)
    assert isinstance(letter, DeadLetter) and "re-read lines 3-5 line by line" in letter.message


def test_a_quote_that_closes_rows_later_with_the_wrong_count_is_re_read(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text('id,text\n1,"one\n2,two\n3,thr"ee,x\n4,four\n')
    assert _outcomes(tmp_path / "q.csv") == [(2, "ParseError"), (3, "2"), (4, "ParseError"), (5, "4")]


def test_legitimate_multi_line_fields_and_short_rows_still_read(tmp_path: Path) -> None:
    with open(tmp_path / "ok.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerows([["id", "text", "metadata"], ["1", "line one\nline two, with comma", '{"k": 1}'],
                     ["2", 'a "quoted" word', ""]])
        f.write("3,short row\n")
    records = list(read_file(str(tmp_path / "ok.csv")))
    assert [(r.position, r.parse_error) for r in records] == [(2, None), (4, None), (5, None)]
    assert dict(records[0].fields or ())["text"] == "line one\nline two, with comma"
    assert dict(records[2].fields or ()) == {"id": "3", "text": "short row", "metadata": None}


def test_a_csv_record_past_the_limit_is_contained(tmp_path: Path) -> None:
    rows = "".join(f"{i},row {i}\n" for i in range(3, 200))
    (tmp_path / "run.csv").write_text('id,text\n1,ok\n2,"opens and never closes\n' + rows)
    outcomes = _outcomes(tmp_path / "run.csv", limit=1024)
    assert outcomes[0] == (2, "1") and outcomes[1] == (3, "ParseError")
    assert [o for _, o in outcomes[2:]] == [str(i) for i in range(3, 200)]  # every later row read


def test_a_csv_row_that_is_not_utf8_keeps_its_exact_bytes(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_bytes(b"id,text\n1,caf\xe9\n2,fine\n")
    records = list(read_file(str(tmp_path / "b.csv")))
    letter = validate_record(records[0], RULES)
    assert isinstance(letter, DeadLetter) and base64.b64decode(letter.payload) == b"1,caf\xe9\n"
    assert isinstance(validate_record(records[1], RULES), Document)


# ----------------------------------------------------------------- files and replays

def test_files_of_other_kinds_in_an_input_directory_are_named(tmp_path: Path) -> None:
    (tmp_path / "docs.jsonl").write_text('{"id": "a", "text": "t"}\n')
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01")
    matched = match_input(str(tmp_path))
    assert [Path(p).name for p in matched.paths] == ["docs.jsonl"]
    note = matched.skipped_note() or ""
    assert "2 input file(s) skipped" in note and "blob.bin" in note and "notes.txt" in note
    assert "input.format" in note


def test_a_replay_set_keeps_each_records_original_source(tmp_path: Path) -> None:
    from flows.replay import replay_set_lines, select_for_replay
    from tiering.settings import InputSettings

    letters = [
        DeadLetter("embed", "X", "m", True, "d1", "/data/in.jsonl:17",
                   json.dumps({"id": "d1", "text": "a house", "metadata": {"k": 1}})).to_json(),
        DeadLetter("validate", "ParseError", "m", False, None, "/data/in.jsonl:3", "{not json").to_json(),
        '{"stage": "embed", "retryable": true, "payload": "{\\"id\\": \\"torn',  # a killed run's last line
    ]
    chosen = select_for_replay(letters, InputSettings(), only_retryable=False)
    assert chosen.skipped_unreadable == 1
    path = tmp_path / "x.replay.jsonl"
    path.write_text("\n".join(replay_set_lines(chosen)) + "\n")
    records = list(read_file(str(path)))
    assert [(r.source, r.position) for r in records] == [("/data/in.jsonl", 17), ("/data/in.jsonl", 3)]
    doc = validate_record(records[0], RULES)
    assert isinstance(doc, Document) and doc.source == "/data/in.jsonl:17"
    assert records[1].parse_error is not None  # the raw record fails as it did


# ------------------------------------------------------------------ pipeline level

def _settings(make_settings: SettingsFactory, server: FakeOpenAIServer, **extra: Any) -> TierembedSettings:
    return make_settings({
        "api": {"endpoint": "custom", "base_url": server.base_url, "api_key": "t",
                "models": [{"version": "fake-v1", "model": "fake", "price_per_million_tokens": 1.0}]},
        "routing": {"api_threshold": 0.0},  # every document to the (fast) API tier
        **extra,
    })


def _run(settings: TierembedSettings, server: FakeOpenAIServer, source: Path) -> RunReport:
    spec = PipelineSpec(settings, str(source), "hostile", None, ResolvedApi(server.base_url, "t", "fake"))
    outcome = run_pipeline(spec)
    prices = api_prices(settings)
    return build_report(
        run_id="hostile", source=str(source), counters=outcome.counters,
        local_models={m.version: m.model for m in settings.local.models},
        api_models={m.version: (m.model, prices[m.version]) for m in settings.api.models},
        dead_letter_path=outcome.dead_letter_prefix + "*.jsonl",
    )


def _letters(report: RunReport) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted(glob.glob(report.dead_letter_path))
            for line in Path(f).read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_the_issues_hostile_files_run_to_the_end_with_every_record_accounted_for(
    tmp_path: Path, make_settings: SettingsFactory, fake_api: FakeOpenAIServer
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    good = [json.dumps({"id": f"g{i}", "text": f"good document {i} with a NUL \u0000 inside"})
            for i in range(6)]
    bad = '{"id": "B", "text": "a \\ud800 b"}'
    (src / "s.jsonl").write_text("\n".join([*good[:3], bad, *good[3:]]) + "\n")
    (src / "deep.jsonl").write_text('{"id": "a", "text": "first"}\n' + "[" * 5000 + "]" * 5000
                                    + '\n{"id": "b", "text": "second"}\n{"id": "c", "text": "third"}\n')
    (src / "meta.jsonl").write_text('{"id": "m1", "text": "good", "metadata": {"k": "v"}}\n'
                                    '{"id": "m2", "text": "bad meta", "metadata": {"k": "\\ud800"}}\n'
                                    '{"id": "\\ud800", "text": "bad id"}\n{"id": "m3", "text": "good too"}\n')
    (src / "q.csv").write_bytes(b'id,text\nq1,one\nq2,"never closed\nq3,three\nq4,caf\xe9\nq5,five\n')
    (src / "latin1.jsonl").write_bytes(b'{"id": "l", "text": "caf\xe9"}\n')
    settings = _settings(make_settings, fake_api)
    report = _run(settings, fake_api, src)

    assert report.accounting_ok()
    assert report.records_read == 7 + 4 + 4 + 5 + 1
    store = LanceDBStore(LanceDBSinkConfig(settings.sink.lancedb.uri))
    stored = set(store.existing_hashes("fake-v1"))
    assert stored == {*(f"g{i}" for i in range(6)), "a", "b", "c", "m1", "m3", "q1", "q3", "q5"}
    letters = _letters(report)
    by_source = {(Path(d["source"].rsplit(":", 1)[0]).name, d["error_type"]) for d in letters}
    assert by_source == {("s.jsonl", "InvalidText"), ("deep.jsonl", "ParseError"),
                         ("meta.jsonl", "InvalidMetadata"), ("meta.jsonl", "InvalidId"),
                         ("q.csv", "ParseError"), ("latin1.jsonl", "ParseError")}
    assert len(letters) == report.dead_letters == 7
    binary = [d for d in letters if d["payload_encoding"] == "base64"]
    assert sorted(base64.b64decode(d["payload"]) for d in binary) == [
        b"q4,caf\xe9\n", b'{"id": "l", "text": "caf\xe9"}']
    assert not list(Path(report.dead_letter_path).parent.glob("beam-temp*"))
