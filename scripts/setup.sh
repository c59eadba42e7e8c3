#!/usr/bin/env bash
# Set up .venv with tierembed, its models and dev tools. Idempotent.
#
# torch: on a machine without an NVIDIA GPU this installs the CPU build (torch==2.13.0, a
# local wheel on our build machines; set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# elsewhere). With a GPU, or with TORCH_SPEC set (e.g. TORCH_SPEC="torch==2.5.1"), you choose.
set -euo pipefail
cd "$(dirname "$0")/.."

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

echo "[setup] installing tierembed with models and dev tools"
"${PIP[@]}" -e ".[models,dev]"
echo "[setup] done: .venv/bin/tierembed --help"
