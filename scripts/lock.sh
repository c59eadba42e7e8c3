#!/usr/bin/env bash
# Rewrite constraints.txt (the lock that scripts/setup.sh installs) from what .venv holds now,
# and print every version that moved. torch is left out on purpose: the CPU or CUDA build is
# the machine's choice (see setup.sh). Run by `bash scripts/test.sh --upgrade`.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python - <<'PY'
import subprocess
from pathlib import Path

LOCK = Path("constraints.txt")
HEADER = """\
# The lock: exact versions of every dependency, as installed when the whole test suite last
# passed (Python 3.11, Linux x86_64). scripts/setup.sh installs with `-c constraints.txt`, so
# a fresh machine gets these versions whatever PyPI publishes later. pyproject.toml keeps
# the compatible ranges for people who install tierembed into their own environment.
# Regenerate with `bash scripts/test.sh --upgrade` (newest allowed versions, then the tests).
# torch is not pinned here: CPU or CUDA build is the machine's choice (scripts/setup.sh).
"""


def pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.lower()] = version
    return out


frozen = subprocess.run([".venv/bin/python", "-m", "pip", "freeze", "--exclude-editable"],
                        check=True, capture_output=True, text=True).stdout.splitlines()
new = {k: v for k, v in pins(frozen).items() if k != "torch"}
old = pins(LOCK.read_text().splitlines()) if LOCK.exists() else {}
LOCK.write_text(HEADER + "".join(f"{k}=={v}\n" for k, v in sorted(new.items())))
moved = [(k, old.get(k, "-"), new.get(k, "-")) for k in sorted(old.keys() | new.keys())
         if old.get(k) != new.get(k)]
print(f"[lock] constraints.txt: {len(new)} packages; {len(moved)} moved")
for name, before, after in moved:
    print(f"  {name}: {before} -> {after}")
PY
