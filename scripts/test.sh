#!/usr/bin/env bash
# One command: set up everything the tests need, then run the whole test suite.
# Installs Debian's Prometheus, Alertmanager and Pushgateway (promtool/amtool and the
# end-to-end alert test) when they are missing and apt-get is usable.
#
#   bash scripts/test.sh             the locked versions (constraints.txt), then the tests
#   bash scripts/test.sh --upgrade   the newest versions pyproject.toml allows, a new
#                                    constraints.txt, then the tests: how we find the next
#                                    breaking release before our users do. Commit the new
#                                    lock only when this passes.
# Any other argument goes to pytest (e.g. -k ledger, -x).
# The suite includes the property-based (hypothesis) tests of hostile input:
# tests/beam_pipeline/test_hostile_properties.py (fast ones: hundreds of generated JSONL, CSV
# and Parquet files; a slow one: the whole pipeline on generated files).
set -euo pipefail
cd "$(dirname "$0")/.."
setup_args=()
pytest_args=()
for arg in "$@"; do
    if [ "$arg" = --upgrade ]; then setup_args+=(--upgrade); else pytest_args+=("$arg"); fi
done
bash scripts/setup.sh ${setup_args[@]+"${setup_args[@]}"}

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v amtool >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
command -v prometheus-pushgateway >/dev/null 2>&1 || need_apt+=(prometheus-pushgateway)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo -n); fi
    echo "[test] installing ${need_apt[*]} from Debian"
    "${SUDO[@]}" apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
        "${need_apt[@]}" >/dev/null
fi

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Two pytest-xdist workers, one test file each at a time: much of the suite waits on servers,
# rate-limit windows and subprocesses, so two workers on a 2-core machine take about 9
# minutes instead of 13.6 (2026-12-06). TIEREMBED_TEST_WORKERS=0 runs it all in one process.
workers="${TIEREMBED_TEST_WORKERS:-2}"
exec .venv/bin/python -m pytest -q -m "not live" -n "$workers" --dist loadfile \
    ${pytest_args[@]+"${pytest_args[@]}"}
