#!/usr/bin/env bash
# spendgate under the shared overhead harness (../shared/bench/run_peer.sh):
#   GATEWAY_NAME=spendgate GATEWAY_CMD='exec bash bench/gateway.sh' ../shared/bench/run_peer.sh
# Gets GATEWAY_PORT, UPSTREAM_URL, GW_RUN_DIR, GATEWAY_API_KEY from the harness.
# Metering and the ledger are on: every request is priced and written to SQLite.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${GATEWAY_PORT:?}" "${UPSTREAM_URL:?}" "${GW_RUN_DIR:?}"
key="${GATEWAY_API_KEY:-sk-bench-master}"
mkdir -p "$GW_RUN_DIR"
cat >"$GW_RUN_DIR/spendgate.yaml" <<YAML
server: {host: 127.0.0.1, port: $GATEWAY_PORT, log_level: warning}
ledger: {url: "sqlite:///$GW_RUN_DIR/ledger.db", flush_interval_ms: ${SPENDGATE_FLUSH_MS:-50}}
keys:
  - {key: "$key", id: bench, tags: {team: bench, environment: bench}}
deployments:
  # priced as real models so the catalog lookup is on the measured path
  - {name: bench-model, provider: openai_compatible, model: bench-model, base_url: "$UPSTREAM_URL/v1", price_model: gpt-4o-mini, price_provider: openai}
  - {name: bench-stream, provider: openai_compatible, model: bench-stream, base_url: "$UPSTREAM_URL/stream/v1", price_model: gpt-4o-mini, price_provider: openai}
  - {name: bench-claude, provider: anthropic, model: bench-claude, base_url: "$UPSTREAM_URL", price_model: claude-haiku-4-5, price_provider: anthropic}
YAML
if [ -n "${SPENDGATE_CONTROLS:-}" ]; then
  # the controls of issue 3 on every request (bench/controls.yaml says which)
  sed "s#@RUN_DIR@#$GW_RUN_DIR#g" "$here/bench/controls.yaml" >>"$GW_RUN_DIR/spendgate.yaml"
fi
if [ -n "${SPENDGATE_CACHE:-}" ]; then
  # the response cache of issue 4 on the bench traffic (its requests use
  # temperature 0.2, hence nondeterministic: true); entries persist to SQLite
  cat >>"$GW_RUN_DIR/spendgate.yaml" <<YAML
cache:
  url: "sqlite:///$GW_RUN_DIR/cache.db"
  policies:
    - {name: bench, match: {team: bench}, scope: {environment: "*"}, nondeterministic: true, ttl: 1h}
YAML
fi
py="${SPENDGATE_PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py=python3
exec "$py" -m spendgate.cli serve --config "$GW_RUN_DIR/spendgate.yaml"
