#!/usr/bin/env bash
# Set up .venv with tierembed, its models and dev tools. Idempotent.
#
#   bash scripts/setup.sh            exactly the versions in constraints.txt (the lock: what
#                                    the tests last passed on), whatever PyPI publishes later
#   bash scripts/setup.sh --upgrade  the newest versions pyproject.toml allows, then rewrite
#                                    constraints.txt from what got installed (see test.sh)
#
# torch is not in the lock: on a machine without an NVIDIA GPU this installs the CPU build
# (torch==2.13.0, a local wheel on our build machines; set
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu elsewhere). With a GPU, or with
# TORCH_SPEC set (e.g. TORCH_SPEC="torch==2.5.1"), you choose. --upgrade keeps the torch that
# is installed (an unpinned upgrade would pull a multi-GB CUDA build onto a CPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."

UPGRADE=0
for arg in "$@"; do
    case "$arg" in
        --upgrade) UPGRADE=1 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown option $arg (use --upgrade or --help)" >&2; exit 2 ;;
    esac
done

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if [ -n "${TORCH_SPEC:-}" ]; then
        spec=("$TORCH_SPEC")
    elif command -v nvidia-smi >/dev/null 2>&1; then
        spec=("torch")                  # CUDA build from PyPI
    else
        spec=("torch==2.13.0")          # CPU wheel (never pull a multi-GB CUDA build on a CPU box)
    fi
    extra=()
    if [ -n "${TORCH_INDEX_URL:-}" ]; then extra=(--extra-index-url "$TORCH_INDEX_URL"); fi
    echo "[setup] installing ${spec[*]}"
    "${PIP[@]}" "${extra[@]}" "${spec[@]}"
fi

if [ "$UPGRADE" = 1 ]; then
    torch_pin="$(.venv/bin/python -c 'import torch; print(torch.__version__)')"
    pins="$(mktemp)"
    trap 'rm -f "$pins"' EXIT
    echo "torch==${torch_pin}" > "$pins"
    echo "[setup] upgrading every dependency to the newest version pyproject.toml allows (torch stays ${torch_pin})"
    "${PIP[@]}" --upgrade --upgrade-strategy eager -c "$pins" -e ".[models,dev]"
    bash scripts/lock.sh
else
    echo "[setup] installing tierembed with models and dev tools, versions from constraints.txt"
    "${PIP[@]}" -c constraints.txt -e ".[models,dev]"
fi
echo "[setup] done: .venv/bin/tierembed --help"
