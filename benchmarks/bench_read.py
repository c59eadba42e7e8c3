"""What containing hostile input costs the reader: records per second, old reader vs new.

The input is real text: the package descriptions of ``apt-cache dumpavail`` (Debian), as
JSONL and as CSV (descriptions hold commas, quotes and newlines). Each format is read by:

* **baseline**: the reader before issue 12 (main at a5ae25b), copied here verbatim: JSONL by
  iterating the file's lines and ``json.loads``; CSV with ``csv.DictReader`` (non-strict);
* **ours**: :func:`beam_pipeline.read.read_file`: lines bounded by ``input.max_record_bytes``
  read in chunks, JSON that Python refuses or nested past 128 levels contained per line,
  CSV read strictly with each record's lines kept for a line-by-line re-read.

Both readers yield the same records for this clean input (checked). Prints records/s and
the ratio ours/baseline, best of ``--repeat``, in one process::

    .venv/bin/python -m benchmarks.bench_read --records 60000 --repeat 3
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from beam_pipeline.read import read_file
from tiering.validation import RawRecord

__all__ = ["debian_descriptions", "main"]


def debian_descriptions(limit: int) -> list[dict[str, str]]:
    """(package, description) records from ``apt-cache dumpavail``, repeated up to ``limit``."""
    text = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    docs: list[dict[str, str]] = []
    name, desc = "", []
    for line in text.splitlines():
        if line.startswith("Package: "):
            name = line[9:]
        elif line.startswith("Description: "):
            desc = [line[13:]]
        elif line.startswith(" ") and desc:
            desc.append(line.strip())
        elif not line and name and desc:
            docs.append({"id": name, "text": "\n".join(desc)})
            name, desc = "", []
    if not docs:
        raise SystemExit("apt-cache dumpavail gave no descriptions")
    return [{"id": f"{d['id']}-{i // len(docs)}", "text": d["text"]}
            for i, d in ((i, docs[i % len(docs)]) for i in range(limit))]


def _baseline_jsonl(path: Path) -> Iterator[RawRecord]:
    with open(path, "rb") as handle:
        for line_no, raw_line in enumerate(handle, start=1):
            try:
                line = raw_line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield RawRecord(str(path), line_no, repr(raw_line[:2000]),
                                parse_error=f"not valid UTF-8: {exc}")
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RawRecord(str(path), line_no, line, parse_error=f"not valid JSON: {exc.msg}")
                continue
            if not isinstance(value, dict):
                yield RawRecord(str(path), line_no, line, parse_error="expected a JSON object")
                continue
            yield RawRecord(str(path), line_no, line, fields=tuple(value.items()))


def _baseline_csv(path: Path) -> Iterator[RawRecord]:
    with open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.DictReader(text)
        for row in reader:
            fields = {k: v for k, v in row.items() if k is not None}
            payload = json.dumps(fields, ensure_ascii=False)
            try:
                payload.encode("utf-8")
            except UnicodeEncodeError:
                yield RawRecord(str(path), reader.line_num, payload[:2000], parse_error="not valid UTF-8")
                continue
            if None in row:
                yield RawRecord(str(path), reader.line_num, payload, parse_error="more values than header")
                continue
            yield RawRecord(str(path), reader.line_num, payload, fields=tuple(fields.items()))


def _best(read: Callable[[], int], repeat: int) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        count = read()
        best = min(best, time.perf_counter() - start)
    return best, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    docs = debian_descriptions(args.records)
    with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp:
        jsonl, table = Path(tmp) / "d.jsonl", Path(tmp) / "d.csv"
        jsonl.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, ["id", "text"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(docs)
        table.write_text(buf.getvalue(), encoding="utf-8")
        mb = (jsonl.stat().st_size / 1e6, table.stat().st_size / 1e6)
        print(f"{len(docs)} records; JSONL {mb[0]:.1f} MB, CSV {mb[1]:.1f} MB")
        for fmt, path, baseline in (("jsonl", jsonl, _baseline_jsonl), ("csv", table, _baseline_csv)):
            old_s, old_n = _best(lambda p=path, b=baseline: sum(1 for r in b(p)  # type: ignore[misc]
                                                                if r.parse_error is None), args.repeat)
            new_s, new_n = _best(lambda p=path, f=fmt: sum(1 for r in read_file(str(p), f)
                                                           if r.parse_error is None), args.repeat)  # type: ignore[misc]
            assert old_n == new_n == len(docs), (fmt, old_n, new_n)
            print(f"{fmt:5}  baseline {old_n / old_s:>10,.0f} rec/s   ours {new_n / new_s:>10,.0f} rec/s   "
                  f"ratio ours/baseline {old_s / new_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
