#!/usr/bin/env bash
# CPU the controls add per request: the shared harness run with the controls
# off and on (SPENDGATE_CONTROLS=1 in bench/gateway.sh: required tags, a cap,
# per-key rate limits, a global and a per-team budget with a slowdown plan),
# alternating ROUNDS times so drift of the machine hits both sides alike.
#   bench/controls_ab.sh                  # 3 rounds x (off, on), ~10 min
#   ROUNDS=1 DURATION=5 bench/controls_ab.sh
# Prints gateway CPU ms per request (process time / requests) per setting and
# the median difference; raw harness results stay under $OUT_DIR.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT_DIR:-$(mktemp -d /tmp/spendgate-controls-ab.XXXX)}"; mkdir -p "$OUT_DIR"
ROUNDS="${ROUNDS:-3}"
export GATEWAYS="" MODES="${MODES:-nonstream stream}" CONCURRENCY="${CONCURRENCY:-1 16}"
export DURATION="${DURATION:-10}" WARMUP="${WARMUP:-2}" TTFB_CONCURRENCY=1 TTFB_DURATION=2
py="${SPENDGATE_PYTHON:-$here/.venv/bin/python}"
for r in $(seq 1 "$ROUNDS"); do
  for side in off on; do
    echo "round $r: controls $side" >&2
    if [ "$side" = on ]; then export SPENDGATE_CONTROLS=1; else unset SPENDGATE_CONTROLS; fi
    RESULTS_DIR="$OUT_DIR/$side-$r" bash "$here/bench/run.sh" >"$OUT_DIR/$side-$r.log" 2>&1 \
      || { echo "harness failed, see $OUT_DIR/$side-$r.log" >&2; exit 1; }
  done
done
"$py" - "$OUT_DIR" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
cells: dict[tuple[str, int], dict[str, list[float]]] = {}
for side in ("off", "on"):
    for r in range(1, rounds + 1):
        for row in json.load(open(f"{out}/{side}-{r}/latest.json"))["rows"]:
            if row["target"] == "spendgate" and row["gw_cpu_ms_per_req"] is not None:
                cell = cells.setdefault((row["mode"], row["concurrency"]), {"off": [], "on": [], "rps_off": [], "rps_on": []})
                cell[side].append(row["gw_cpu_ms_per_req"])
                cell["rps_" + side].append(row["rps"])
print("| mode | connections | CPU ms/req off | CPU ms/req on | added by controls (median) | rps off | rps on |")
print("|---|---|---|---|---|---|---|")
for (mode, conc), c in sorted(cells.items()):
    off, on = statistics.median(c["off"]), statistics.median(c["on"])
    print(f"| {mode} | {conc} | {' '.join(f'{x:.3f}' for x in c['off'])} | {' '.join(f'{x:.3f}' for x in c['on'])} "
          f"| **{on - off:+.3f}** | {statistics.median(c['rps_off']):.0f} | {statistics.median(c['rps_on']):.0f} |")
print(f"\nraw results: {out}")
PY
