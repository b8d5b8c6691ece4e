"""Dashboard views at scale: 10M synthetic events, every view timed over 30 and 90 days.

    python bench/dashboard_bench.py generate /tmp/dash10m.db [--events 10000000]
    python bench/dashboard_bench.py run /tmp/dash10m.db [--repeat 5]

`generate` bulk-inserts rows straight into `usage_events` (executemany, no
UsageEvent objects: building 10M of them is the slow part, not SQLite) and
then builds the rollups with `rebuild_rollups` — the same SQL GROUP BY /
`dsum` path that `SQLiteLedger._migrate` uses on a ledger from before
rollups. It does NOT exercise the per-batch write path (`append` folding
each batch into the rollups); that path's cost is measured separately
(events/s for 500-event batches, see bench/README.md) and its exactness is
tested in tests/test_rollups.py.

`run` times the dashboard's own panel functions (`spendgate.dashboard.panels`:
every stack_by, every top-drivers dim, ...; median of --repeat runs after one
warm-up) with no filter, with team=X and with user=X, for the 2, 30 and 90
days before NOW (a time that is not on an hour boundary, as a dashboard's "now"
never is). Opening a ledger whose rollups are older than ROLLUP_VERSION
rebuilds them first (minutes at 10M events).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

NOW = 1_749_994_620.0  # 2025-06-15 13:37:00 UTC
DAYS = 95

MODELS = [  # model, provider, $ per 1M input, $ per 1M output, weight
    ("gpt-4o", "openai", "2.5", "10", 20),
    ("gpt-4o-mini", "openai", "0.15", "0.6", 35),
    ("claude-3-5-sonnet", "anthropic", "3", "15", 15),
    ("claude-3-5-haiku", "anthropic", "0.8", "4", 15),
    ("gemini-1.5-flash", "google", "0.075", "0.3", 10),
    ("o1", "openai", "15", "60", 5),
]
TEAMS = [f"team{i}" for i in range(8)]
FEATURES = {t: [f"{t}-f{j}" for j in range(3)] for t in TEAMS}
USERS = [f"user{i}" for i in range(5000)]
TIERS = {"premium": ["gpt-4o", "claude-3-5-sonnet", "o1"], "cheap": ["gpt-4o-mini", "claude-3-5-haiku"]}


def generate(path: str, n: int, seed: int = 7) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from spendgate.analytics.rollups import rebuild_rollups
    from spendgate.ledger.sqlite import COLUMNS, TABLE, SQLiteLedger

    if Path(path).exists():
        raise SystemExit(f"{path} exists; remove it first")
    rng = random.Random(seed)
    store = SQLiteLedger(path)
    cols = list(COLUMNS)
    idx = {c: i for i, c in enumerate(cols)}
    template = [None] * len(cols)
    for name, value in {"attempt": 1, "endpoint": "chat.completions", "wire_format": "openai", "route_reason": "direct",
                        "streamed": 0, "source": "proxy", "usage_source": "provider", "currency": "USD",
                        "tags": "{}", "prefix_hashes": "[]", "reasoning_tokens": 0, "cache_write_1h_tokens": 0,
                        "cache_write_tokens": 0, "price_source": "builtin"}.items():
        template[idx[name]] = value
    models = [m for m in MODELS for _ in range(m[4])]
    prices = {m[0]: (Decimal(m[2]) / 10**6, Decimal(m[3]) / 10**6) for m in MODELS}
    user_team = {u: TEAMS[i % len(TEAMS)] for i, u in enumerate(USERS)}
    start = NOW - DAYS * 86400
    step = DAYS * 86400 / n
    sql = f"INSERT INTO {TABLE} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    t0 = time.perf_counter()
    conn = store._conn  # bulk load: one big transaction per chunk, no per-batch rollup work
    chunk = 200_000
    session = 0
    for lo in range(0, n, chunk):
        rows = []
        for i in range(lo, min(n, lo + chunk)):
            r = list(template)
            ts = start + i * step
            model, provider = rng.choice(models)[:2]
            user = rng.choice(USERS)
            team = user_team[user] if rng.random() < 0.93 else None
            feature = rng.choice(FEATURES[team]) if team and rng.random() < 0.95 else None
            if rng.random() < 0.15:
                session += 1
            inp, out = rng.randrange(50, 4000), rng.randrange(10, 800)
            pin, pout = prices[model]
            cs = rng.choices(("bypass", "miss", "exact", "semantic"), (40, 40, 12, 8))[0]
            hit = cs in ("exact", "semantic")
            list_cost = pin * inp + pout * out
            r[idx["event_id"]] = f"{i:012d}"
            r[idx["request_id"]] = f"r{i:012d}"
            r[idx["ts_start"]] = ts
            r[idx["ts_end"]] = ts + 1.2
            r[idx["latency_ms"]] = 1200.0
            r[idx["provider"]] = provider
            r[idx["deployment"]] = f"{provider}/{model}"
            r[idx["model_requested"]] = r[idx["model_used"]] = model
            r[idx["status"]] = rng.choices(("ok", "error", "client_disconnect"), (97, 2.5, 0.5))[0]
            r[idx["key_id"]] = f"key{rng.randrange(40)}"
            r[idx["team"]] = team
            r[idx["feature"]] = feature
            r[idx["environment"]] = rng.choices(("prod", "staging", "dev"), (85, 10, 5))[0]
            r[idx["user"]] = user
            r[idx["tenant"]] = f"tenant{rng.randrange(200)}"
            r[idx["session_id"]] = f"s{session}"
            r[idx["prompt_template"]] = f"tpl{rng.randrange(30)}"
            r[idx["prompt_version"]] = f"v{rng.randrange(3)}"
            r[idx["input_tokens"]] = 0 if hit else inp
            r[idx["output_tokens"]] = 0 if hit else out
            r[idx["cost"]] = "0" if hit else format(list_cost, "f")
            r[idx["list_cost"]] = "0" if hit else format(list_cost, "f")
            r[idx["saved"]] = format(list_cost, "f") if hit else "0"
            r[idx["saved_by"]] = "cache" if hit else None
            r[idx["price_status"]] = "priced" if rng.random() < 0.995 else "missing"
            r[idx["cache_status"]] = cs
            rows.append(r)
        conn.execute("BEGIN")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
        print(f"  {lo + len(rows):,} events ({time.perf_counter() - t0:.0f}s)", flush=True)
    t1 = time.perf_counter()
    rebuild_rollups(store)
    t2 = time.perf_counter()
    print(f"inserted {n:,} events in {t1 - t0:.0f}s; rebuilt rollups in {t2 - t1:.0f}s", flush=True)
    for (name,) in store.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'rollup_%'"):
        print(f"  {name}: {store.query(f'SELECT count(*) FROM {name}')[0][0]:,} rows")
    store.close()


def _panels(store):  # name -> call(since, until, filters)
    from spendgate.dashboard import panels as P

    src = P.Sources(store=store, tiers=TIERS, baseline_model="gpt-4o")

    def q(since, until, f, **kw):
        return P.Query(since=since, until=until, now=NOW, filters=dict(f), **kw)

    calls = {"summary": lambda s, u, f: P.summary(src, q(s, u, f))}
    for dim in P.STACK_DIMS:
        calls[f"spend_over_time({dim})"] = lambda s, u, f, dim=dim: P.spend_over_time(src, q(s, u, f, stack_by=dim))
    calls["daily_spend"] = lambda s, u, f: P.daily_spend(src, q(s, u, f))
    calls["cache"] = lambda s, u, f: P.cache(src, q(s, u, f))
    calls["tier_mix"] = lambda s, u, f: P.tier_mix(src, q(s, u, f))
    calls["untagged"] = lambda s, u, f: P.untagged(src, q(s, u, f))
    for dim in P.DRIVER_DIMS:
        calls[f"top_drivers({dim})"] = lambda s, u, f, dim=dim: P.top_drivers(src, q(s, u, f, dim=dim))
    calls["unit_economics"] = lambda s, u, f: P.unit_economics(src, q(s, u, f))
    return calls


def run(path: str, repeat: int, only: str | None = None) -> None:
    """Time the dashboard's own panel functions (spendgate.dashboard.panels)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from spendgate.analytics import cube
    from spendgate.ledger.sqlite import SQLiteLedger

    t = time.perf_counter()
    store = SQLiteLedger(path)  # a ledger with older rollups rebuilds them here
    print(f"opened in {time.perf_counter() - t:.1f}s; {store.count():,} events", flush=True)
    sources: set[str] = set()
    real_query = cube.query

    def traced(*a, **kw):  # which rollups each panel read
        res = real_query(*a, **kw)
        sources.update(res.source.removeprefix("rollup:").split("+"))
        return res

    cube.query = traced
    calls = _panels(store)
    filters = {"none": {}, "team=team3": {"team": "team3"}, "user=user42": {"user": "user42"}}
    print("| panel | filter | 2 days (ms) | 30 days (ms) | 90 days (ms) | read from |")
    print("|---|---|---:|---:|---:|---|")
    for name, call in calls.items():
        if only and only not in name:
            continue
        for fname, f in filters.items():
            cells = []
            sources.clear()
            for days in (2, 30, 90):  # 2 days: spend_over_time buckets by hour
                since, until = NOW - days * 86400, NOW
                call(since, until, f)  # warm-up
                times = []
                for _ in range(repeat):
                    t = time.perf_counter()
                    call(since, until, f)
                    times.append((time.perf_counter() - t) * 1000)
                cells.append(f"{statistics.median(times):.0f}")
            print(f"| {name} | {fname} | {' | '.join(cells)} | {', '.join(sorted(sources))} |", flush=True)
    cube.query = real_query
    store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("path")
    g.add_argument("--events", type=int, default=10_000_000)
    r = sub.add_parser("run")
    r.add_argument("path")
    r.add_argument("--repeat", type=int, default=5)
    r.add_argument("--only", help="panels whose name contains this")
    a = p.parse_args()
    if a.cmd == "generate":
        generate(a.path, a.events)
    else:
        run(a.path, a.repeat, a.only)


if __name__ == "__main__":
    main()
