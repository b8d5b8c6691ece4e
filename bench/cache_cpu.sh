#!/usr/bin/env bash
# Gateway CPU per request with the response cache: no cache configured, every
# request a miss that is stored (`x-spendgate-cache: refresh`: no lookup hit,
# the answer is written), and every request an exact hit. The fake upstream
# of the shared harness answers; the gateway is pinned to core 1, wrk and the
# upstream to core 0; ROUNDS alternations so machine drift hits all alike.
#   bench/cache_cpu.sh                     # 3 rounds, ~4 min
#   ROUNDS=1 DURATION=5 CONNS=1 bench/cache_cpu.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
harness="${BENCH_HARNESS:-$here/../shared/bench}"
ROUNDS="${ROUNDS:-3}" DURATION="${DURATION:-10}" CONNS="${CONNS:-16}" PORT="${PORT:-4190}"
MODE_BODY="${MODE_BODY:-$harness/load/request_chat.json}"
OUT="${OUT_DIR:-$(mktemp -d /tmp/spendgate-cache-cpu.XXXX)}"; mkdir -p "$OUT"
py="${SPENDGATE_PYTHON:-$here/.venv/bin/python}"
for b in wrk nginx taskset; do command -v "$b" >/dev/null || { echo "$b missing: run $harness/setup.sh"; exit 1; }; done
UPSTREAM_CPU=0 bash "$harness/upstream/upstream.sh" start "$OUT/upstream" >/dev/null
"$py" "$harness/lib/pm_qos.py" >/dev/null 2>&1 & qos=$!
cleanup() { kill "$qos" 2>/dev/null || true; bash "$harness/upstream/upstream.sh" stop "$OUT/upstream" >/dev/null 2>&1 || true; }
trap cleanup EXIT

measure() {  # name cache(0/1) header → prints "name cpu_ms_per_req rps"
  local name=$1 cache=$2 header=$3 dir="$OUT/$1"
  rm -rf "$dir"; mkdir -p "$dir"
  GATEWAY_PORT=$PORT UPSTREAM_URL=http://127.0.0.1:18080 GW_RUN_DIR="$dir" SPENDGATE_CACHE=$([ "$cache" = 1 ] && echo 1) \
    taskset -c 1 bash "$here/bench/gateway.sh" >"$dir/gateway.log" 2>&1 &
  local gw=$!
  for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && break; sleep 0.1; done
  local pid; pid=$(pgrep -f "serve --config $dir/spendgate.yaml" | head -1)
  local url="http://127.0.0.1:$PORT/v1/chat/completions"
  BENCH_BODY="$MODE_BODY" BENCH_HEADERS="$header" taskset -c 0 wrk -t1 -c"$CONNS" -d2s -s "$harness/load/post.lua" "$url" >/dev/null
  local t0; t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  BENCH_BODY="$MODE_BODY" BENCH_HEADERS="$header" BENCH_OUT="$dir/wrk.json" taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$harness/load/post.lua" "$url" >/dev/null
  local t1; t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  kill "$pid"; wait "$gw" 2>/dev/null || true
  "$py" -c "import json,os;w=json.load(open('$dir/wrk.json'));t=os.sysconf('SC_CLK_TCK');print('$name', round(($t1-$t0)/t*1000/w['requests'],4), round(w['rps']), w['errors']['status'])"
}
for r in $(seq 1 "$ROUNDS"); do
  measure "none-$r" 0 ""
  measure "miss-$r" 1 "x-spendgate-cache: refresh"
  measure "hit-$r" 1 ""
done | tee "$OUT/results.txt"
"$py" - "$OUT/results.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = {}
for name, cpu, rps, bad in rows:
    by.setdefault(name.rsplit("-", 1)[0], []).append((float(cpu), int(rps), int(bad)))
med = {k: statistics.median(c for c, _, _ in v) for k, v in by.items()}
print("\n| path | CPU ms/req (runs) | median | req/s (median) | non-200 |")
print("|---|---|---|---|---|")
for k in ("none", "miss", "hit"):
    v = by[k]
    print(f"| {k} | {' '.join(f'{c:.3f}' for c, _, _ in v)} | **{med[k]:.3f}** | {statistics.median(r for _, r, _ in v):.0f} | {sum(b for _, _, b in v)} |")
print(f"\nmiss adds {med['miss'] - med['none']:+.3f} ms CPU per request to the uncached path; an exact hit costs {med['hit']:.3f} ms CPU end to end")
PY
