"""Build the shipped labelled retrieval set from this machine's Debian manual pages.

Documents: the first paragraphs of the DESCRIPTION section of section-1 and section-8
manual pages, prefixed with the command name (short reference entries). Queries: the
one-line summary of each page's NAME section ("ls - list directory contents" gives the
query "list directory contents"), for a stable hash-chosen share of the documents. A
query's relevant documents (grade 1) are the pages whose NAME summary is exactly that
line (aliases and copies share it); there are no graded or partial judgements.

Licence: only pages of packages whose machine-readable copyright file
(``/usr/share/doc/<package>/copyright``, DEP-5) gives a permissive licence for the main
``Files: *`` stanza are used (see ``PERMISSIVE``); each document's metadata records its
package and that licence, and ``SOURCES.md`` (written next to the set) lists them.
Packages whose copyright file is not machine-readable are skipped, not guessed.

Run it on a Debian machine (the man pages and copyright files must be installed):

    python examples/eval/make_eval_set.py --out examples/eval

The output depends on the packages installed; the shipped set records the machine's
package versions in SOURCES.md. Rendering uses ``man`` (groff), about 0.1-0.3 s per page.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import json
import re
import subprocess
from pathlib import Path

__all__ = ["main"]

MAN_DIRS = ("/usr/share/man/man1", "/usr/share/man/man8")
# Permissive licences only (a dual licence counts when one side is permissive).
PERMISSIVE = re.compile(
    r"^(apache|expat|mit|bsd|isc|zlib|public.?domain|curl|postgresql|bsl-1\.0|x11|psf|python|"
    r"cc0|unicode|ntp|hpnd|libpng|openssl|ssleay|sgi-b)", re.IGNORECASE)
_NAME_LINE = re.compile(r"^\s*(.+?)\s+[-\u2010\u2013\u2014]+\s+(.+)$")


def _stable(value: str) -> float:
    return int(hashlib.sha256(value.encode()).hexdigest()[:12], 16) / 16**12


def _owners() -> dict[str, str]:
    """man page path -> owning package, from dpkg's file lists."""
    owners: dict[str, str] = {}
    for lst in sorted(Path("/var/lib/dpkg/info").glob("*.list")):
        package = lst.stem.split(":")[0]
        for line in lst.read_text(errors="replace").splitlines():
            if line.startswith(MAN_DIRS):
                owners[line] = package
    return owners


def _licence(package: str) -> str | None:
    """The ``License:`` of the ``Files: *`` stanza of a DEP-5 copyright file, if permissive."""
    path = Path("/usr/share/doc") / package / "copyright"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    if not text.startswith("Format:"):
        # Not machine-readable: accept only a plain statement that the whole package is
        # Apache-2.0 licensed in its first sentence (google-cloud-cli's file says so).
        first = " ".join(text.split())[:200]
        if re.search(r"licensed under Apache\s+License v(ersion|\.)\s*2\.0", first):
            return "Apache-2.0 (plain-text copyright file)"
        return None
    for stanza in re.split(r"\n\s*\n", text):
        if re.search(r"^Files:\s*\*\s*$", stanza, re.MULTILINE):
            match = re.search(r"^License:\s*(\S.*)$", stanza, re.MULTILINE)
            if not match:
                return None
            licence = match.group(1).strip()
            sides = re.split(r"\s+or\s+", licence)
            return licence if any(PERMISSIVE.match(s) for s in sides) else None
    return None


_ROFF_ESCAPES = ((r"\\f\(..|\\f\[[^]]*\]|\\f.", ""), (r"\\\(em|\\\(en", "-"), (r"\\-", "-"),
                 (r"\\e", "\\\\"), (r"\\\(aq", "'"), (r"\\\(lq|\\\(rq|\\\(dq", '"'),
                 (r"\\&|\\%|\\:|\\/|\\,|\\\^|\\\||\\c", ""), (r"\\ ", " "),
                 (r"\\\*\(..|\\\*.", ""), (r"\\s[-+]?\d", ""))


_BREAKS = (".PP", ".P", ".LP", ".TP", ".IP", ".RS", ".sp", ".HP", ".Pp")


def _plain(line: str) -> str:
    for pattern, repl in _ROFF_ESCAPES:
        line = re.sub(pattern, repl, line)
    return line.strip()


def _sections(path: str) -> dict[str, list[str]]:
    """Section name -> its text lines (blank line = paragraph break), read from the roff
    source directly (fast; enough for the prose of NAME and DESCRIPTION)."""
    raw = gzip.open(path, "rt", errors="replace").read()
    sections: dict[str, list[str]] = collections.defaultdict(list)
    current = ""
    for line in raw.splitlines():
        if line.startswith((".SH", ".Sh")):
            current = _plain(line[3:]).strip('"').upper()
        elif line.startswith(_BREAKS) or not line.strip():
            sections[current].append("")
        elif line.startswith((".B ", ".I ", ".BR ", ".IR ", ".BI ", ".RB ", ".Nm ", ".Nd ")):
            sections[current].append(_plain(line.split(" ", 1)[1].replace('"', "")))
        elif line.startswith((".", "'")):
            continue
        else:
            sections[current].append(_plain(line))
    return sections


def _paragraphs(lines: list[str]) -> list[str]:
    paras, buf = [], []
    for line in lines + [""]:
        if line:
            buf.append(line)
        elif buf:
            paras.append(" ".join(buf))
            buf = []
    return paras


def _entry(path: str) -> tuple[str, str, str] | None:
    """(command, NAME summary, description text) of one page, or None when unusable."""
    sections = _sections(path)
    name = " ".join(x for x in sections.get("NAME", []) if x)
    match = _NAME_LINE.match(name)
    if not match:
        return None
    command, summary = match.group(1).split(",")[0].strip(), match.group(2).strip().rstrip(".")
    words: list[str] = []
    for para in _paragraphs(sections.get("DESCRIPTION", [])):
        if para.startswith("-") or para.startswith("For more examples"):
            break  # an option list or a pointer: the entry is the prose before it
        words += para.split()
        if len(words) >= 30:
            break
    if len(summary.split()) < 3 or len(words) < 12:
        return None
    return command, summary, " ".join(words[:60])


def build(out: Path, max_docs: int, query_share: float) -> None:
    owners = _owners()
    licences = {p: _licence(p) for p in sorted(set(owners.values()))}
    pages = sorted(p for p, pkg in owners.items() if licences.get(pkg) and p.endswith(".gz")
                   and Path(p).is_file() and not Path(p).is_symlink()
                   and not re.search(r"_(alpha|beta|preview)_", p))  # pre-release copies of GA pages
    pages.sort(key=lambda p: _stable("page:" + p))
    pages = pages[: max_docs * 5]
    entries = [_entry(p) for p in pages]
    docs, seen_text = [], set()
    for page, entry in zip(pages, entries, strict=True):
        if entry is None or entry[2] in seen_text or len(docs) >= max_docs:
            continue
        seen_text.add(entry[2])
        command, summary, text = entry
        package = owners[page]
        docs.append({"id": "man-" + Path(page).name.removesuffix(".gz"), "text": text,
                     "summary": summary, "metadata": {"package": package, "license": licences[package],
                                                      "page": page}})
    docs.sort(key=lambda d: d["id"])
    _write(out, docs, query_share)


def _write(out: Path, docs: list[dict], query_share: float) -> None:
    by_summary: dict[str, list[str]] = collections.defaultdict(list)
    for d in docs:
        by_summary[d["summary"].lower()].append(d["id"])
    queries, qrels, used = [], [], set()
    for d in docs:
        key = d["summary"].lower()
        if key in used or _stable("query:" + d["id"]) >= query_share:
            continue
        used.add(key)
        qid = f"q{len(queries) + 1:04d}"
        queries.append({"id": qid, "text": d["summary"]})
        qrels += [f"{qid}\t0\t{doc_id}\t1" for doc_id in sorted(by_summary[key])]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "docs.jsonl").open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"id": d["id"], "text": d["text"], "metadata": d["metadata"]},
                                ensure_ascii=False) + "\n")
    with (out / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps(q, ensure_ascii=False) + "\n")
    (out / "qrels.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    _sources(out, docs, len(queries), len(qrels))


def _sources(out: Path, docs: list[dict], n_queries: int, n_qrels: int) -> None:
    packages = collections.Counter((d["metadata"]["package"], d["metadata"]["license"]) for d in docs)
    versions = dict(line.split("\t", 1) for line in subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\t${Version}\n"], capture_output=True, text=True,
        check=True).stdout.splitlines() if "\t" in line)
    rows = [f"| {pkg} | {versions.get(pkg, '?')} | {lic} | {n} |"
            for (pkg, lic), n in sorted(packages.items())]
    (out / "SOURCES.md").write_text(
        "# Sources and licences of the labelled set\n\n"
        f"Generated by `examples/eval/make_eval_set.py`: {len(docs)} documents, {n_queries} queries, "
        f"{n_qrels} relevance judgements, from the Debian manual pages (sections 1 and 8) of the "
        "packages below. Each package's licence is the `License:` of the `Files: *` stanza of its "
        "`/usr/share/doc/<package>/copyright` (DEP-5); only permissive licences were kept.\n\n"
        "| package | version | licence (Files: *) | documents |\n|---|---|---|---|\n"
        + "\n".join(rows) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--max-docs", type=int, default=1000)
    parser.add_argument("--query-share", type=float, default=0.3)
    args = parser.parse_args()
    build(args.out, args.max_docs, args.query_share)


if __name__ == "__main__":
    main()
