"""Property-based tests (hypothesis): hostile JSONL, CSV and Parquet input is data.

Generated files mix good records with the hostile kinds the issue found and more: invalid
UTF-8, lone surrogates (in id, text or metadata), NUL bytes, deep nesting, lines over the
record limit, wrong types, non-objects, garbage, blank lines, duplicate ids, broken CSV
quotes and rows with the wrong number of values, Parquet columns of the wrong type.

Properties, per file (fast, many examples, no Beam):

- reading never raises, and JSONL gives exactly one record per non-blank line, at its line
  number; Parquet one per row; CSV at most one per non-blank line;
- validation never raises; every good record becomes its document; every other record is a
  dead letter whose JSON is valid UTF-8 and, for bytes that are not UTF-8, holds them in
  base64;

and for the whole pipeline (slow, few examples): every record ends embedded or dead-lettered,
the accounting holds, exactly the good documents are in the store.

What the CSV reader cannot promise (``beam_pipeline.read._csv_records``): a stray quote that
a later line closes with the header's number of values reads as one record. The generated
good CSV rows therefore hold no quote character and never start a field with a comma; every
other shape of broken quote is generated.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_pipeline.read import read_file
from tiering.documents import DeadLetter, Document
from tiering.validation import ValidationRules, validate_record

LIMIT = 65_536  # input.max_record_bytes for these tests: room for nesting past any recursion limit
RULES = ValidationRules()
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Generated:
    """A generated file: its bytes, which ids must become documents, and for JSONL which
    lines are not blank."""

    data: bytes
    good_ids: set[str] = field(default_factory=set)
    nonblank_lines: list[int] = field(default_factory=list)
    rows: int = 0


# ---------------------------------------------------------------------------- JSONL

_text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=80).filter(str.strip)
_meta = st.dictionaries(st.text(max_size=6), st.one_of(st.none(), st.booleans(), st.integers(), _text,
                                                       st.lists(st.integers(), max_size=3)), max_size=3)


@st.composite
def _good_json(draw: st.DrawFn, n: int) -> tuple[bytes, str]:
    doc_id = f"good-{n}"
    record: dict[str, Any] = {"id": doc_id, "text": draw(_text)}
    if draw(st.booleans()):
        record["metadata"] = draw(_meta)
    return json.dumps(record, ensure_ascii=draw(st.booleans())).encode("utf-8"), doc_id


def _surrogate_line(where: str, code: int, n: int) -> bytes:
    esc = f"\\u{code:04x}"
    record = {
        "id": f'"bad-{n}{esc}"' if where == "id" else f'"bad-{n}"',
        "text": f'"a {esc} b"' if where == "text" else '"some text"',
        "metadata": f'{{"k": "{esc}"}}' if where == "metadata" else "{}",
    }
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in record.items()) + "}").encode("ascii")


@st.composite
def _hostile_json(draw: st.DrawFn, n: int) -> bytes:
    kind = draw(st.sampled_from(["surrogate", "invalid_utf8", "raw_nul", "deep", "deep_metadata", "huge",
                                 "wrong_id", "wrong_text", "not_object", "garbage", "bad_metadata"]))
    if kind == "surrogate":
        return _surrogate_line(draw(st.sampled_from(["id", "text", "metadata"])),
                               draw(st.integers(0xD800, 0xDFFF)), n)
    if kind == "invalid_utf8":
        raw = draw(st.binary(min_size=1, max_size=60).map(lambda b: b.replace(b"\n", b" ")))
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
        return raw + b"\xff"
    if kind == "raw_nul":  # a control character inside a JSON string is not JSON
        return f'{{"id": "bad-{n}", "text": "a\x00b"}}'.encode()
    if kind == "deep":
        # past the nesting limit; past Python's recursion limit too (hypothesis raises it)
        depth = draw(st.one_of(st.integers(129, 900), st.integers(20_000, LIMIT // 2)))
        return b"[" * depth + b"]" * depth
    if kind == "deep_metadata":
        depth = draw(st.one_of(st.integers(128, 900), st.integers(20_000, LIMIT // 2 - 50)))
        return f'{{"id": "bad-{n}", "text": "t", "metadata": {{"x": {"[" * depth}{"]" * depth}}}}}'.encode()
    if kind == "huge":
        return json.dumps({"id": f"bad-{n}", "text": "x" * draw(st.integers(LIMIT, 3 * LIMIT))}).encode()
    if kind == "wrong_id":
        value = draw(st.sampled_from([1.5, True, None, [], {}, "", "   "]))
        return json.dumps({"id": value, "text": "t"}).encode()
    if kind == "wrong_text":
        value = draw(st.sampled_from([5, 1.5, True, None, ["x"], {"a": 1}, "", " \t "]))
        return json.dumps({"id": f"bad-{n}", "text": value}).encode()
    if kind == "not_object":
        return json.dumps(draw(st.sampled_from([[1, 2], 3, "s", None, True]))).encode()
    if kind == "bad_metadata":
        value = draw(st.sampled_from(["not json", "[1, 2]", 7, ["x"]]))
        return json.dumps({"id": f"bad-{n}", "text": "t", "metadata": value}).encode()
    return b"{{" + draw(st.text(max_size=40)).replace("\n", " ").encode("utf-8")  # garbage


@st.composite
def jsonl_files(draw: st.DrawFn) -> Generated:
    out = Generated(b"")
    lines: list[bytes] = []
    for n in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["good", "good", "hostile", "hostile", "blank", "duplicate"]))
        if kind == "good":
            line, doc_id = draw(_good_json(n))
            out.good_ids.add(doc_id)
        elif kind == "duplicate" and out.good_ids:  # a later record with an id already used
            reused = draw(st.sampled_from(sorted(out.good_ids)))
            line = json.dumps({"id": reused, "text": draw(_text)}).encode()
        elif kind == "blank":
            line = draw(st.sampled_from([b"", b"   ", b"\t", b"\r"]))
        else:
            line = draw(_hostile_json(n))
        lines.append(line)
        if line.strip():
            out.nonblank_lines.append(len(lines))
    out.data = b"\n".join(lines) + draw(st.sampled_from([b"\n", b""]))
    return out


# ------------------------------------------------------------------------------ CSV

# good CSV text: no quote character and no leading comma (see the module docstring)
_csv_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters='"\n\r\x00'),
                    min_size=1, max_size=60).filter(lambda t: t.strip() and not t.startswith(","))


@st.composite
def csv_files(draw: st.DrawFn) -> Generated:
    out = Generated(b"")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "text", "metadata"])
    chunks = [buf.getvalue().encode()]
    for n in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["good", "good", "unterminated", "extra", "short", "invalid_utf8",
                                     "nul", "blank", "huge", "stray_quote"]))
        if kind == "good":
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow(
                [f"good-{n}", draw(_csv_text), json.dumps(draw(_meta)) if draw(st.booleans()) else ""])
            chunks.append(buf.getvalue().encode("utf-8"))
            out.good_ids.add(f"good-{n}")
        elif kind == "unterminated":
            chunks.append(f'bad-{n},"{draw(_csv_text)}\n'.encode())
        elif kind == "extra":
            chunks.append(f"bad-{n},a,b,c,d\n".encode())
        elif kind == "short":
            chunks.append(draw(st.sampled_from([f"bad-{n}\n", f"bad-{n},\n"])).encode())
        elif kind == "invalid_utf8":
            chunks.append(f"bad-{n},caf".encode() + b"\xe9\xff\n")
        elif kind == "nul":
            chunks.append(f"bad-{n},a\x00b,{{}}\n".encode())  # NUL is data; the row is otherwise fine
            out.good_ids.add(f"bad-{n}")
        elif kind == "huge":
            chunks.append(f"bad-{n},{'x' * draw(st.integers(LIMIT, 2 * LIMIT))}\n".encode())
        elif kind == "stray_quote":  # a quote inside an unquoted field: the csv module keeps it
            chunks.append(f'bad-{n},a"b"c,{{}}\n'.encode())
            out.good_ids.add(f"bad-{n}")
        else:
            chunks.append(b"\n")
    out.data = b"".join(chunks)
    out.nonblank_lines = [i + 1 for i, line in enumerate(out.data.split(b"\n")) if line.strip()]
    return out


# -------------------------------------------------------------------------- Parquet

def _valid_row(doc_id: str | None, text: Any, meta: str | None) -> bool:
    """The oracle: what validation must accept, worked out from the row's final values."""
    if not isinstance(doc_id, str) or not doc_id.strip() or not isinstance(text, str) or not text.strip():
        return False
    if not meta or not meta.strip():
        return True
    try:
        return isinstance(json.loads(meta), dict)
    except ValueError:
        return False


@st.composite
def parquet_files(draw: st.DrawFn) -> Generated:
    n = draw(st.integers(0, 20))
    text_type = draw(st.sampled_from(["string", "string", "int", "list"]))
    ids, texts, metas, good = [], [], [], set()
    for i in range(n):
        kind = draw(st.sampled_from(["good", "good", "null_id", "null_text", "empty_text", "bad_meta",
                                     "duplicate", "nul"]))
        doc_id: str | None = f"p-{i}"
        text: Any = draw(_text)
        meta: str | None = json.dumps(draw(_meta)) if draw(st.booleans()) else None
        if kind == "null_id":
            doc_id = None
        elif kind == "null_text":
            text = None
        elif kind == "empty_text":
            text = " "
        elif kind == "bad_meta":
            meta = draw(st.sampled_from(["not json", "[1]", "{" * 300]))
        elif kind == "duplicate" and ids and ids[0] is not None:
            doc_id = ids[0]
        elif kind == "nul":
            text = "a\x00b"
        if text_type == "int" and text is not None:
            text = len(text)
        elif text_type == "list" and text is not None:
            text = [text]
        ids.append(doc_id)
        texts.append(text)
        metas.append(meta)
        if _valid_row(doc_id, text, meta):
            good.add(doc_id)
    type_of = {"string": pa.string(), "int": pa.int64(), "list": pa.list_(pa.string())}[text_type]
    table = pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, type_of),
                      "metadata": pa.array(metas, pa.string())})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return Generated(sink.getvalue(), {g for g in good if g is not None}, rows=n)


# ------------------------------------------------------------------------ properties

def _check(path: Path, gen: Generated, fmt: str) -> list[Document | DeadLetter]:
    """Read and validate ``path``; check what holds for every format. Returns the results."""
    records = list(read_file(str(path), fmt, LIMIT))  # never raises
    results = [validate_record(r, RULES) for r in records]  # never raises
    for raw, result in zip(records, results, strict=True):
        if isinstance(result, DeadLetter):
            line = result.to_json()
            assert json.loads(line.encode("utf-8"))["stage"] == "validate"
            if result.payload_encoding == "base64":
                assert raw.raw is not None and base64.b64decode(result.payload) == raw.raw[:65_536]
            assert "Traceback" not in result.message and "ValidationFailed" != result.error_type
    first_seen: dict[str, Document] = {}
    for result in results:
        if isinstance(result, Document):
            first_seen.setdefault(result.id, result)
    assert set(first_seen) == gen.good_ids
    return results


def _write(data: bytes, suffix: str) -> Path:
    handle = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
    handle.write(data)
    handle.close()
    return Path(handle.name)


@FAST
@given(jsonl_files())
def test_every_jsonl_line_is_one_record_and_good_ones_become_documents(gen: Generated) -> None:
    path = _write(gen.data, ".jsonl")
    try:
        records = list(read_file(str(path), "jsonl", LIMIT))
        assert [r.position for r in records] == gen.nonblank_lines
        _check(path, gen, "jsonl")
    finally:
        path.unlink()


@FAST
@given(csv_files())
def test_csv_good_rows_survive_every_broken_row_around_them(gen: Generated) -> None:
    path = _write(gen.data, ".csv")
    try:
        records = list(read_file(str(path), "csv", LIMIT))
        assert len(records) <= len(gen.nonblank_lines) - 1  # the header is not a record
        positions = [r.position for r in records]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        _check(path, gen, "csv")
    finally:
        path.unlink()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parquet_files())
def test_every_parquet_row_is_one_record_and_good_ones_become_documents(gen: Generated) -> None:
    path = _write(gen.data, ".parquet")
    try:
        assert [r.position for r in read_file(str(path), "parquet", LIMIT)] == list(range(1, gen.rows + 1))
        _check(path, gen, "parquet")
    finally:
        path.unlink()


# ------------------------------------------------------------------- whole pipeline

@pytest.mark.slow
@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(jsonl=jsonl_files(), table=csv_files(), parquet=parquet_files())
def test_the_pipeline_embeds_or_dead_letters_every_record_and_stores_exactly_the_good_ones(
    jsonl: Generated, table: Generated, parquet: Generated, fake_api: Any
) -> None:
    from beam_pipeline.pipeline import PipelineSpec, ResolvedApi, api_prices, run_pipeline
    from beam_pipeline.sinks.lancedb_sink import LanceDBSinkConfig, LanceDBStore
    from tiering.report import build_report
    from tiering.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="tierembed-hyp-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        (root / "in" / "a.jsonl").write_bytes(jsonl.data)
        renamed = table.data.replace(b"good-", b"c-good-").replace(b"bad-", b"c-bad-")  # ids apart
        (root / "in" / "b.csv").write_bytes(renamed)
        (root / "in" / "c.parquet").write_bytes(parquet.data)
        settings_ = load_settings(overrides={
            "input": {"max_record_bytes": LIMIT},
            "sink": {"lancedb": {"uri": str(root / "store")}},
            "dead_letters": {"dir": str(root / "dl")},
            "api": {"endpoint": "custom", "base_url": fake_api.base_url, "api_key": "t",
                    "models": [{"version": "fake-v1", "model": "fake", "price_per_million_tokens": 1.0}],
                    "result_cache": {"path": str(root / "results.sqlite")}},
            "routing": {"api_threshold": 0.0, "mode": "exclusive"},  # one vector per good record
        })
        outcome = run_pipeline(PipelineSpec(settings_, str(root / "in"), "hyp", None,
                                            ResolvedApi(fake_api.base_url, "t", "fake")))
        prices = api_prices(settings_)
        report = build_report(
            run_id="hyp", source=str(root / "in"), counters=outcome.counters,
            local_models={m.version: m.model for m in settings_.local.models},
            api_models={m.version: (m.model, prices[m.version]) for m in settings_.api.models},
            dead_letter_path=outcome.dead_letter_prefix + "*.jsonl")
        assert report.accounting_ok()
        assert report.records_read >= len(jsonl.nonblank_lines) + parquet.rows
        files = (root / "dl" / "hyp").glob("*.jsonl")
        letters = [line for f in files for line in f.read_bytes().splitlines()]
        assert len(letters) == report.dead_letters
        assert all(json.loads(line)["error_type"] != "ValidationFailed" for line in letters)
        expected = jsonl.good_ids | {f"c-{g}" for g in table.good_ids} | parquet.good_ids
        stored = set(LanceDBStore(LanceDBSinkConfig(str(root / "store"))).existing_hashes("fake-v1"))
        assert stored == expected
        assert report.written == len(expected)
