#!/usr/bin/env bash
# Measure spendgate (metering + ledger on) against the shared overhead harness,
# side by side with LiteLLM in the same run. Results land in bench/results/.
#   bench/run.sh                      # full run (~12 min)
#   QUICK=1 bench/run.sh              # smoke run (~2 min)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
harness="${BENCH_HARNESS:-$here/../shared/bench}"
[ -x "$harness/run_peer.sh" ] || { echo "harness not found at $harness (set BENCH_HARNESS)"; exit 1; }
[ -x /tmp/benchvenv/bin/python ] || bash "$harness/setup.sh"
export SPENDGATE_PYTHON="${SPENDGATE_PYTHON:-$here/.venv/bin/python}"
export RESULTS_DIR="${RESULTS_DIR:-$here/bench/results}"
export GATEWAY_NAME=spendgate GATEWAY_VERSION="$("$SPENDGATE_PYTHON" -c 'import spendgate; print(spendgate.__version__)')"
export GATEWAY_CMD="exec bash $here/bench/gateway.sh"
export MODES="${MODES:-nonstream stream messages}"
if [ -n "${QUICK:-}" ]; then
  export DURATION=3 WARMUP=1 CONCURRENCY="1 16 64" TTFB_CONCURRENCY=1 TTFB_DURATION=3 GATEWAYS="${GATEWAYS-}"
fi
cd "$harness" && exec ./run_peer.sh
