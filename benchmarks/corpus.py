"""A realistic mixed-length corpus for the benchmarks, from text this machine already has.

Usage: .venv/bin/python -m benchmarks.corpus --docs 100000 --out .bench/corpus-100k.jsonl

Two sources, both real text nobody on this project wrote:

* **Debian package descriptions** (long form, ``Description-en`` of the ``Translation-en``
  index: about 64,000 unique texts, median ~330 characters, up to ~80,000). They are in the
  apt lists only when apt fetched translations; fetch them into a folder of their own with
  ``apt-get -o Dir::State::Lists=/tmp/aptlists -o Acquire::Languages=en update``
  (``--apt-lists /tmp/aptlists``; the system's own apt state is not touched).
* **Manual page sections** (``/usr/share/man/man*/*.gz``, one document per ``.SH``
  section, troff markup stripped): short NAME lines to long DESCRIPTION sections; a fixed
  sample of 40,000 of them, so the pool holds ~101,800 documents.

The pool is shuffled with a fixed seed, so every prefix (1k, 10k, 100k documents) has the
same mix of sources and lengths. Each line is ``{"id", "text", "metadata": {"source"}}``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = ["debian_descriptions", "man_sections", "build_corpus", "main"]

_SEED = 13
_MIN_CHARS = 40
_MAN_SECTIONS = 40_000  # sampled from ~160,000, so Debian descriptions stay the majority
_TROFF_ESCAPES = re.compile(
    r"\\f(\[[^\]]*\]|\(..|.)|\\s[-+]?\d|\\\[[^\]]*\]|\\\(..|\\\*(\(..|\[[^\]]*\]|.)|\\[&|^~%]"
)


def _cat_apt_file(path: Path) -> str:
    """apt's own decompressor (lz4, xz, gz or plain): no extra Python package needed."""
    return subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(path)], check=True,
                          capture_output=True, text=True).stdout


def debian_descriptions(apt_lists: Path) -> Iterator[dict[str, object]]:
    """Unique long descriptions from every ``*Translation-en*`` file under ``apt_lists``."""
    files = sorted(apt_lists.glob("*_i18n_Translation-en*"))
    if not files:
        raise SystemExit(
            f"no Translation-en index under {apt_lists}; fetch one with\n"
            "  mkdir -p /tmp/aptlists/partial && apt-get -o Dir::State::Lists=/tmp/aptlists "
            "-o Acquire::Languages=en update\nand pass --apt-lists /tmp/aptlists"
        )
    seen: set[str] = set()
    for f in files:
        package, lines = "", None
        for line in [*_cat_apt_file(f).splitlines(), ""]:
            if line.startswith("Package:"):
                package = line.split(":", 1)[1].strip()
            elif line.startswith("Description-en:"):
                lines = [line.split(":", 1)[1].strip()]
            elif lines is not None and line.startswith(" "):
                body = line[1:]
                lines.append("" if body == "." else body)
            elif lines is not None:
                text = "\n".join(lines).strip()
                lines = None
                digest = hashlib.sha1(text.encode()).hexdigest()
                if len(text) >= _MIN_CHARS and digest not in seen:
                    seen.add(digest)
                    yield {"id": f"deb-{package}-{digest[:6]}", "text": text,
                           "metadata": {"source": "debian-description"}}


def _strip_troff(line: str) -> str:
    line = _TROFF_ESCAPES.sub("", line)
    return line.replace("\\-", "-").replace("\\e", "\\").replace("\\ ", " ").replace('\\"', "")


def _sections(troff: str) -> Iterator[tuple[str, str]]:
    title, words = "", []  # type: tuple[str, list[str]]
    for raw in troff.splitlines():
        if raw.startswith((".\\\"", "'\\\"", ".so ")):
            continue
        if raw.startswith(".SH") or raw.startswith(".Sh"):
            if words:
                yield title, " ".join(words)
            title, words = _strip_troff(raw[3:]).strip().strip('"'), []
            continue
        if raw.startswith((".", "'")):
            macro, _, rest = raw.partition(" ")
            if macro[1:] in ("B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "Nm", "Nd", "Ar", "Fl"):
                raw = rest.replace('"', "")
            else:
                continue
        text = _strip_troff(raw).strip()
        if text:
            words.append(text)
    if words:
        yield title, " ".join(words)


def man_sections(man_root: Path = Path("/usr/share/man")) -> Iterator[dict[str, object]]:
    """One document per section of every English manual page under ``man_root``."""
    for page in sorted(man_root.glob("man*/*.gz")):
        try:
            troff = gzip.decompress(page.read_bytes()).decode("utf-8", "replace")
        except (OSError, EOFError):
            continue
        name = page.name.removesuffix(".gz")
        for i, (title, text) in enumerate(_sections(troff)):
            if len(text) >= _MIN_CHARS:
                yield {"id": f"man-{name}-{i}", "text": text,
                       "metadata": {"source": "man-page", "section": title[:40]}}


def build_corpus(n_docs: int, apt_lists: Path) -> list[dict[str, object]]:
    # the same pool whatever n_docs, so every prefix has the same mix of sources and lengths
    rng = random.Random(_SEED)
    pool = [*debian_descriptions(apt_lists), *rng.sample(list(man_sections()), _MAN_SECTIONS)]
    rng.shuffle(pool)
    if n_docs > len(pool):
        raise SystemExit(f"only {len(pool)} documents available, asked for {n_docs}")
    return pool[:n_docs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--apt-lists", type=Path, default=Path("/var/lib/apt/lists"))
    args = ap.parse_args()
    docs = build_corpus(args.docs, args.apt_lists)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    lengths = sorted(len(str(d["text"])) for d in docs)
    print(f"{len(docs)} documents -> {args.out}  (chars: median {lengths[len(lengths) // 2]}, "
          f"p90 {lengths[int(len(lengths) * 0.9)]}, max {lengths[-1]})")


if __name__ == "__main__":
    main()
