#!/usr/bin/env bash
# One command: set up, run the main job on the sample data with embedded defaults (local
# model + a local OpenAI-compatible server standing in for the paid API, LanceDB store),
# then search the store. No API key, no external server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/tierembed run 'examples/data/*' --full-refresh
echo
echo '$ tierembed search "3 bedroom house with a garden"'
.venv/bin/tierembed search "3 bedroom house with a garden" -k 5
