"""The budget proofs of issue 3, end to end: real gateway and simulator
processes, real HTTP, the `openai` SDK and httpx as clients.

1. Many concurrent clients against a hard cap: the ledger never exceeds it,
   every refusal was legitimate, and the accepted calls are the most that
   could fit (within one reservation's width); the admin API agrees with the
   ledger to the last digit. Non-streaming, streaming, and a mix where some
   clients hang up mid-stream.
2. Restarts: a graceful stop mid-window rebuilds settled spend from the
   ledger (no double counting) and the cap holds across it; after a crash,
   the reservations of calls that were in flight come back, still count, and
   expire after `state.reservation_ttl_s`.
3. Burst grants through `spendgate budgets burst`: admit again up to the new
   limit, refuse again once the grant ends.
4. A per-key budget made with `spendgate keys create --budget` caps that key.

Costs here are gpt-4o on the simulator ($2.50 / $10 per Mtok): a call with
`max_tokens=2000` reserves about $0.0202 and, producing 1,500 tokens, costs
$0.0150475.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from conftest import Gateway, base_config, start_gateway

D = Decimal
ADMIN = "sg-admin-proofs-4b1d"
PLAIN = "sk-test-plain"  # static key, no owner
SEARCH = "sk-test-search"  # static key, team=search
MAX_TOKENS = 2000
OUTPUT = 1500
FULL_COST = D("0.0150475")  # 19 input + 1,500 output tokens of gpt-4o, as the simulator bills `prompt()` unpaced

_REFUSAL = re.compile(r"has (?:less than )?\$([0-9.]+) left of \$([0-9.]+) .*this call may cost up to \$([0-9.]+)\.", re.S)


# ---- helpers --------------------------------------------------------------------------------------


def budget(name: str, limit: str, scope: dict[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "scope": scope or {}, "window": {"period": "month"}, "limit": limit}


def config(simulator: str, tmp: Path, budgets: list[dict[str, Any]], **state: Any) -> dict[str, Any]:
    cfg = base_config(simulator, tmp / "ledger.db")
    cfg["budgets"] = budgets
    cfg["state"].update(state)
    return cfg


def gateway(tmp: Path, cfg: dict[str, Any]) -> Gateway:
    return start_gateway(tmp, cfg, env={"SPENDGATE_ADMIN_KEY": ADMIN})


def ledger_sum(gw: Gateway, where: str = "1=1", params: tuple[Any, ...] = ()) -> Decimal:
    """The exact sum of the ledger's `cost` TEXT column, read with sqlite3 and summed as Decimal."""
    return sum((D(r["cost"]) for r in gw.rows(where, params)), D(0))


def settle_ledger(gw: Gateway, expected_rows: int) -> None:
    """Wait until the ledger holds `expected_rows` rows (the writer flushes every 20 ms)."""
    rows = gw.wait_rows("1=1", count=expected_rows)
    assert len(rows) == expected_rows, f"ledger has {len(rows)} rows, {expected_rows} calls were made"


def status(gw: Gateway, name: str, instance: str | None = None) -> dict[str, Any]:
    r = httpx.get(f"{gw.url}/admin/budgets", headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert r.status_code == 200, r.text
    rows = [b for b in r.json()["data"] if b["name"] == name and (instance is None or b["instance"] == instance)]
    assert len(rows) == 1, r.json()
    return rows[0]


def cli(*args: str, gw: Gateway) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPENDGATE_URL": gw.url, "SPENDGATE_ADMIN_KEY": ADMIN}
    return subprocess.run([sys.executable, "-m", "spendgate.cli", *args], capture_output=True, text=True, env=env, timeout=30)


def prompt(tag: str, output: int = OUTPUT, tps: int | None = None) -> list[dict[str, str]]:
    # tags padded to one width: every unpaced call has the same input, worst case and cost
    pace = f" [[sim:tokens_per_second={tps}]]" if tps else ""
    return [{"role": "user", "content": f"proof {tag:<16} [[sim:output_tokens={output}]]{pace}"}]


def body(tag: str, stream: bool = False, **kw: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "max_tokens": MAX_TOKENS, "stream": stream, "messages": prompt(tag, **kw)}


def post(gw: Gateway, key: str, b: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gw.openai_base}/chat/completions", json=b, headers={"authorization": f"Bearer {key}"}, timeout=30)


@dataclass
class Refusal:
    request_id: str | None
    budget: str
    limit: Decimal  # x-spendgate-budget-limit
    remaining: Decimal  # x-spendgate-budget-remaining (rounded down to 6 places)
    worst_case: Decimal  # "this call may cost up to $X" (rounded up to 6 places)
    in_flight: int  # calls this test had in flight when the refusal came back

    @classmethod
    def parse(cls, response: httpx.Response, message: str, in_flight: int) -> "Refusal":
        h = response.headers
        m = _REFUSAL.search(message)
        assert m, f"a budget refusal must say what the call may cost: {message!r}"
        assert D(m.group(1)) <= D(h["x-spendgate-budget-remaining"]) + D("0.000001")  # the text agrees with the header
        return cls(
            h.get("x-spendgate-request-id"),
            h["x-spendgate-budget-name"],
            D(h["x-spendgate-budget-limit"]),
            D(h["x-spendgate-budget-remaining"]),
            D(m.group(3)),
            in_flight,
        )


def is_budget_refusal(response: httpx.Response) -> bool:
    return response.status_code == 429 and "x-spendgate-budget-name" in response.headers and "x-spendgate-ratelimit-name" not in response.headers


def raise_for(r: httpx.Response) -> None:
    """A refused httpx call, raised as the SDK raises it."""
    if r.status_code == 429:
        raise openai.RateLimitError(r.json()["error"]["message"], response=r, body=None)
    raise AssertionError(f"HTTP {r.status_code}: {r.text}")


def content_chunks(sse: bytes) -> int:
    """The content deltas of a complete OpenAI chat stream (it must end with [DONE])."""
    events = [e.strip() for e in sse.split(b"\n\n") if e.strip().startswith(b"data:")]
    assert events[-1] == b"data: [DONE]", events[-3:]
    n = 0
    for e in events[:-1]:
        chunk = orjson.loads(e[5:])
        n += sum(1 for c in chunk.get("choices") or () if (c.get("delta") or {}).get("content"))
    return n


@dataclass
class Fill:
    """What a fill run saw."""

    admitted: list[str] = field(default_factory=list)  # request ids answered 200
    disconnected: list[str] = field(default_factory=list)  # request ids the client hung up on
    refusals: list[Refusal] = field(default_factory=list)
    stopped_by_safety: bool = False
    seconds: float = 0.0


async def fill(
    gw: Gateway,
    *,
    clients: int,
    key: str = PLAIN,
    modes: tuple[str, ...] = ("plain",),
    disconnects_per_client: int = 3,
    safety_calls: int = 250,
    deadline_s: float = 30.0,
) -> Fill:
    """Run `clients` concurrent clients, each looping: send a call; on a
    budget refusal, stop if no call is in flight anywhere, else back off
    briefly and retry. So the run ends exactly when nothing more fits.

    The shared in-flight counter counts the calls sent and not yet finished,
    except a refused client's retries: those are probes, which would
    otherwise keep each other "in flight" for ever while nothing else runs.
    A refusal with nothing in flight is retried once after 0.1 s (the
    gateway may still be settling a call that has just answered) and stops
    the client the second time.

    Client i uses `modes[i % len(modes)]`:
    - plain: the openai SDK, non-streaming;
    - stream: httpx, streaming, read to the end and parsed;
    - disconnect: httpx streaming, paced upstream, read the first bytes and
      hang up (its first `disconnects_per_client` calls), then like stream.

    `safety_calls` admitted calls, or `deadline_s`, stop everything (a broken
    cap would never refuse); the caller's assertions then fail.
    """
    out = Fill()
    in_flight = 0
    stop_all = asyncio.Event()
    started = time.monotonic()
    seq = iter(range(1_000_000))

    async def one(mode: str, sdk: openai.AsyncOpenAI, http: httpx.AsyncClient, hangups: int) -> str:
        tag = f"{next(seq):06d}"
        if mode == "plain":
            raw = await sdk.chat.completions.with_raw_response.create(**body(tag))
            completion = raw.parse()
            assert completion.usage is not None and completion.usage.completion_tokens == OUTPUT
            out.admitted.append(raw.headers["x-spendgate-request-id"])
            return "ok"
        if mode == "stream" or hangups >= disconnects_per_client:
            # httpx, parsing the SSE events itself: the SDK's per-chunk models cost ~0.1 s of
            # this 2-core machine's CPU per 1,500-chunk stream, which the gateway needs more
            async with http.stream("POST", "/chat/completions", json=body(tag, stream=True)) as r:
                if r.status_code != 200:
                    await r.aread()
                    raise_for(r)
                content = await r.aread()
            out.admitted.append(r.headers["x-spendgate-request-id"])
            assert content_chunks(content) == OUTPUT
            return "ok"
        # disconnect: paced upstream, so the stream is far from done when the client leaves
        async with http.stream("POST", "/chat/completions", json=body(tag, stream=True, tps=100)) as r:
            if r.status_code != 200:
                await r.aread()
                raise_for(r)
            async for piece in r.aiter_bytes():
                if b"data:" in piece:
                    break
            out.disconnected.append(r.headers["x-spendgate-request-id"])
        return "hangup"

    async def client(i: int) -> None:
        nonlocal in_flight
        mode = modes[i % len(modes)]
        hangups = 0
        refused = False  # the last call was refused: the next one is a probe
        quiet = 0  # refusals in a row with nothing in flight
        sdk = openai.AsyncOpenAI(base_url=gw.openai_base, api_key=key, max_retries=0, timeout=30)
        http = httpx.AsyncClient(base_url=gw.openai_base, headers={"authorization": f"Bearer {key}"}, timeout=30)
        try:
            while not stop_all.is_set():
                if len(out.admitted) + len(out.disconnected) >= safety_calls or time.monotonic() - started > deadline_s:
                    out.stopped_by_safety = True
                    stop_all.set()
                    return
                counted = not refused
                in_flight += counted
                try:
                    if await one(mode, sdk, http, hangups) == "hangup":
                        hangups += 1
                    refused, quiet = False, 0
                    continue
                except openai.RateLimitError as exc:
                    response = exc.response
                    assert is_budget_refusal(response), (response.status_code, dict(response.headers), response.text)
                    out.refusals.append(Refusal.parse(response, response.json()["error"]["message"], in_flight - counted))
                    refused = True
                finally:
                    in_flight -= counted
                if in_flight == 0:
                    quiet += 1
                    if quiet >= 2:
                        return
                    await asyncio.sleep(0.1)
                else:
                    quiet = 0
                    await asyncio.sleep(random.uniform(0.01, 0.05))
        finally:
            await sdk.close()
            await http.aclose()

    await asyncio.gather(*(client(i) for i in range(clients)))
    out.seconds = time.monotonic() - started
    return out


def assert_cap_held(gw: Gateway, name: str, limit: Decimal, run: Fill, calls_before: int = 0) -> Decimal:
    """The four claims of the cap proof, for a run that ended with nothing in flight."""
    settle_ledger(gw, calls_before + len(run.admitted) + len(run.disconnected))
    spent = ledger_sum(gw)
    # (a) the ledger's exact sum never exceeds the cap
    assert spent <= limit, f"ledger ${spent} > cap ${limit} after {len(run.admitted)} calls"
    assert not run.stopped_by_safety, f"the clients were never stopped by the budget: {len(run.admitted)} calls admitted"
    assert run.refusals, "the run must have ended on refusals"
    # (b) every refusal was legitimate: what was left could not hold the call's worst case
    for r in run.refusals:
        assert r.budget == name and r.limit == limit
        assert r.remaining < r.worst_case, r
    # (c) as many calls as could fit: what is left now is less than one call's worst case
    widest = max(r.worst_case for r in run.refusals)
    assert D(0) <= limit - spent < widest, f"${limit - spent} left unused, yet a call reserves only up to ${widest}"
    # (d) the admin API agrees with the ledger to the last digit, holding nothing
    st = status(gw, name)
    assert D(st["settled"]) == spent, (st, spent)
    assert D(st["reserved"]) == 0, st
    assert D(st["effective_limit"]) == limit
    return spent


def run_fill(gw: Gateway, **kw: Any) -> Fill:
    return asyncio.run(fill(gw, **kw))


# ---- 1. 64 concurrent clients against a hard cap of $1.00 --------------------------------------


CAP = D("1.00")


@pytest.mark.parametrize("modes", [("plain",), ("stream",), ("plain", "stream", "disconnect")], ids=["non-streaming", "streaming", "mixed-with-disconnects"])
def test_64_concurrent_clients_never_overshoot_a_hard_cap(simulator: str, tmp_path: Path, modes: tuple[str, ...]) -> None:
    gw = gateway(tmp_path, config(simulator, tmp_path, [budget("hard-cap", "1.00")]))
    try:
        run = run_fill(gw, clients=64, modes=modes)
        print(f"{len(run.admitted)} admitted, {len(run.disconnected)} disconnected, {len(run.refusals)} refusals in {run.seconds:.2f} s")
        spent = assert_cap_held(gw, "hard-cap", CAP, run)
        # every call read to its end cost the full $0.0150475
        full = [r for r in gw.rows("status = 'ok'")]
        assert len(full) == len(run.admitted) and all(D(r["cost"]) == FULL_COST for r in full)
        if "disconnect" not in modes:
            assert len(run.admitted) == 66  # 66 × $0.0150475 = $0.99314; a 67th may cost $0.0201
        assert any(r.in_flight > 0 for r in run.refusals), "concurrent calls must have been refused while others ran"
        if "disconnect" in modes:
            gone = gw.rows("status = 'client_disconnect'")
            assert sorted(r["request_id"] for r in gone) == sorted(run.disconnected)
            assert len(gone) >= 5  # 21 clients hang up on their first 3 calls, while the budget lasts
            for r in gone:  # settled to what was streamed before the client left (100 tokens/s upstream)
                assert D(0) < D(r["cost"]) < FULL_COST / 2, r
                assert 0 < r["output_tokens"] < OUTPUT // 2, r
            assert spent == FULL_COST * len(full) + sum(D(r["cost"]) for r in gone)
    finally:
        gw.process.terminate()


# ---- 2. restarts -----------------------------------------------------------------------------


def test_graceful_restart_rebuilds_spend_from_the_ledger_and_the_cap_holds_across_it(simulator: str, tmp_path: Path) -> None:
    limit = D("0.30")
    cfg = config(simulator, tmp_path, [budget("restart-cap", "0.30")])
    gw = gateway(tmp_path, cfg)
    for i in range(5):
        assert post(gw, PLAIN, body(f"pre{i:03d}")).status_code == 200

    # SIGTERM while four paced streams (~1 s each) are in flight: they are drained, settled and flushed
    async def slow_streams() -> list[bytes]:
        async with httpx.AsyncClient(base_url=gw.openai_base, headers={"authorization": f"Bearer {PLAIN}"}, timeout=30) as c:

            async def one(i: int) -> bytes:
                async with c.stream("POST", "/chat/completions", json=body(f"drn{i:03d}", stream=True, tps=1500)) as r:
                    assert r.status_code == 200
                    return await r.aread()

            async def stop() -> None:
                await asyncio.sleep(0.4)
                sigterm.append(time.time())
                gw.process.proc.send_signal(signal.SIGTERM)

            *streams, _ = await asyncio.gather(*(one(i) for i in range(4)), stop())
            return streams

    sigterm: list[float] = []
    for content in asyncio.run(slow_streams()):
        assert content_chunks(content) == OUTPUT  # each drained call finished for its client
    gw.process.proc.wait(timeout=30)
    assert gw.process.proc.returncode == 0
    rows = gw.rows()
    assert len(rows) == 9 and all(r["status"] == "ok" and r["output_tokens"] == OUTPUT for r in rows)
    assert sum(r["ts_end"] > sigterm[0] for r in rows) == 4  # the streams were still running at the SIGTERM
    before = ledger_sum(gw)
    con = sqlite3.connect(tmp_path / "state.db")
    assert con.execute("SELECT count(*) FROM budget_reservations").fetchone()[0] == 0  # nothing left open
    con.close()

    # a new gateway on the same ledger and state file: the same settled spend, counted once
    gw = gateway(tmp_path, cfg)
    try:
        st = status(gw, "restart-cap")
        assert D(st["settled"]) == before and D(st["reserved"]) == 0, st
        # the cap holds across the restart: spending the rest stops at the same cap
        run = run_fill(gw, clients=8)
        spent = assert_cap_held(gw, "restart-cap", limit, run, calls_before=9)
        assert spent == before + FULL_COST * len(run.admitted)
        # and a second restart still counts it once
        gw.process.terminate()
        gw = gateway(tmp_path, cfg)
        st = status(gw, "restart-cap")
        assert D(st["settled"]) == spent and D(st["reserved"]) == 0, st
        r = post(gw, PLAIN, body("after"))
        assert is_budget_refusal(r), r.text
    finally:
        gw.process.terminate()


def test_after_a_crash_in_flight_reservations_are_restored_and_expire_after_their_ttl(simulator: str, tmp_path: Path) -> None:
    ttl = 4.0  # small, yet longer than a SIGKILL and a restart on a busy 2-core machine
    limit = D("0.10")  # one settled call + four in flight leave less than a call's worst case
    cfg = config(simulator, tmp_path, [budget("crash-cap", "0.10")], reservation_ttl_s=ttl)
    gw = gateway(tmp_path, cfg)
    assert post(gw, PLAIN, body("first")).status_code == 200
    gw.wait_rows("1=1", count=1)
    settled = ledger_sum(gw)
    assert settled == FULL_COST

    # four streams paced at 20 tokens/s (1,500 tokens: over a minute) hold their reservations
    streams: list[httpx.Client] = []
    responses: list[tuple[httpx.Response, Any]] = []
    t0 = time.time()
    for i in range(4):
        c = httpx.Client(base_url=gw.openai_base, headers={"authorization": f"Bearer {PLAIN}"}, timeout=30)
        r = c.send(c.build_request("POST", "/chat/completions", json=body(f"fly{i:03d}", stream=True, tps=20)), stream=True)
        assert r.status_code == 200, r.read()
        reading = r.iter_bytes()
        next(reading)  # the call is upstream, streaming (keep the iterator: dropping it would hang up)
        streams.append(c)
        responses.append((r, reading))
    t1 = time.time()  # every reservation was made between t0 and t1
    held = status(gw, "crash-cap")
    reserved = D(held["reserved"])
    worst = reserved / 4
    assert D(held["settled"]) == settled and D("0.02") < worst < D("0.021"), held
    refused = post(gw, PLAIN, body("more"))
    assert is_budget_refusal(refused)
    time.sleep(0.2)  # > 2 flushes of the state file's write-behind (50 ms)

    gw.process.proc.kill()  # SIGKILL: no drain, no flush
    gw.process.proc.wait(timeout=10)
    for (r, _), c in zip(responses, streams):
        r.close()
        c.close()

    gw = gateway(tmp_path, cfg)
    try:
        after = status(gw, "crash-cap")
        restored_at = time.time()
        assert restored_at < t0 + ttl, f"the restart took too long ({restored_at - t0:.1f} s) to see the reservations before their TTL"
        # the in-flight calls' reservations survived the crash; nothing was counted twice
        assert D(after["settled"]) == settled and D(after["reserved"]) == reserved, after
        assert len(gw.rows()) == 1  # the killed calls never reached the ledger
        # and they still count: a call that fits only without them is refused
        r = post(gw, PLAIN, body("while-restored"))
        assert is_budget_refusal(r), r.text
        assert D(r.headers["x-spendgate-budget-remaining"]) == (limit - settled - reserved).quantize(D("0.000001"), ROUND_DOWN)

        # once their TTL has passed they are released (each at its own deadline; housekeeping runs every 2 s)
        left = reserved
        while left:
            now = time.time()
            st = status(gw, "crash-cap")
            assert D(st["settled"]) == settled, st
            held_now = D(st["reserved"])
            if held_now != left:
                assert held_now < left and held_now % worst == 0, (st, left, worst)  # whole reservations go
                assert now >= t0 + ttl - 0.5, f"released {t0 + ttl - now:.1f} s before their TTL ended"
                left = held_now
            assert now < t1 + ttl + 5, "restored reservations were never released"
            time.sleep(0.1)
        r = post(gw, PLAIN, body("after-ttl"))
        assert r.status_code == 200, r.text
    finally:
        gw.process.terminate()


# ---- 3. burst grants ----------------------------------------------------------------------------


def test_burst_grant_admits_calls_up_to_the_new_limit_until_it_ends(simulator: str, tmp_path: Path) -> None:
    base = D("0.05")
    cfg = config(simulator, tmp_path, [budget("search-team", "0.05", {"team": "search"})])
    gw = gateway(tmp_path, cfg)
    try:
        run = run_fill(gw, clients=4, key=SEARCH)
        spent = assert_cap_held(gw, "search-team", base, run)
        assert len(run.admitted) == 2  # $0.0301 settled; a third call's $0.0202 does not fit in $0.05

        until = time.time() + 4.0
        until_iso = datetime.fromtimestamp(until, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        r = cli("budgets", "burst", "--team", "search", "+0.50", "--until", until_iso, "--reason", "proof", "--json", gw=gw)
        assert r.returncode == 0, r.stderr
        grant = json.loads(r.stdout)
        assert grant["instance"] == "team=search" and D(grant["amount"]) == D("0.50") and grant["applies_to"] == ["search-team"]

        st = status(gw, "search-team")
        assert D(st["burst"]) == D("0.50") and D(st["effective_limit"]) == D("0.55") and len(st["bursts"]) == 1, st
        boosted = base + D("0.50")
        run = run_fill(gw, clients=16, key=SEARCH)
        assert time.time() < until, "the grant ended before the run did: slow machine, nothing proven"
        assert len(run.admitted) >= 30  # admitted again, well past the baseline
        spent = assert_cap_held(gw, "search-team", boosted, run, calls_before=2)

        r = cli("budgets", "list", "--json", gw=gw)
        assert r.returncode == 0 and D(next(b for b in json.loads(r.stdout) if b["name"] == "search-team")["spent"]) == spent

        time.sleep(max(0.0, until - time.time()) + 0.1)
        r = post(gw, SEARCH, body("after-burst"))
        assert is_budget_refusal(r), r.text
        assert D(r.headers["x-spendgate-budget-limit"]) == base and D(r.headers["x-spendgate-budget-remaining"]) == 0
        st = status(gw, "search-team")
        assert D(st["effective_limit"]) == base and D(st["burst"]) == 0 and st["bursts"] == [] and D(st["settled"]) == spent
        assert post(gw, PLAIN, body("other-team")).status_code == 200  # outside the team budget
    finally:
        gw.process.terminate()


# ---- 4. a per-key budget -------------------------------------------------------------------------


def test_a_key_budget_made_with_the_cli_caps_that_key(simulator: str, tmp_path: Path) -> None:
    limit = D("0.20")
    gw = gateway(tmp_path, config(simulator, tmp_path, []))
    try:
        r = cli("keys", "create", "--name", "capped", "--team", "search", "--budget", "0.20/month", "--json", gw=gw)
        assert r.returncode == 0, r.stderr
        key = json.loads(r.stdout)
        assert key["budget"]["limit"] == "0.20" and key["budget"]["period"] == "month"
        name = f"key:{key['id']}"

        run = run_fill(gw, clients=8, key=key["secret"])
        spent = assert_cap_held(gw, name, limit, run)
        assert spent == ledger_sum(gw, "key_id = ?", (key["id"],)) == FULL_COST * len(run.admitted)
        assert len(run.admitted) == 12  # 12 × $0.0150475 = $0.18057; a 13th may cost $0.0201

        # the cap is the key's: the same team through another key is not refused
        assert post(gw, SEARCH, body("other-key")).status_code == 200
        r = post(gw, key["secret"], body("again"))
        assert is_budget_refusal(r) and r.headers["x-spendgate-budget-name"] == name
    finally:
        gw.process.terminate()


# ---- a crash during a failover ------------------------------------------------------------


def test_a_crash_during_a_failover_keeps_the_running_attempts_reservation(simulator: str, tmp_path: Path) -> None:
    cfg = config(simulator, tmp_path, [budget("failover-cap", "1.00")], reservation_ttl_s=60)
    gw = gateway(tmp_path, cfg)
    c = httpx.Client(base_url=gw.openai_base, headers={"authorization": f"Bearer {PLAIN}"}, timeout=30)
    # ha-model: the `dead` deployment refuses the connection, `alive` streams at 20 tokens/s
    b = {"model": "ha-model", "max_tokens": MAX_TOKENS, "stream": True, "messages": prompt("failover", tps=20)}
    r = c.send(c.build_request("POST", "/chat/completions", json=b), stream=True)
    try:
        assert r.status_code == 200, r.read()
        reading = r.iter_bytes()
        next(reading)  # the second attempt is streaming
        [first] = gw.wait_rows("1=1", count=1)
        assert (first["attempt"], first["deployment"], first["status"], D(first["cost"])) == (1, "dead", "error", 0)
        held = D(status(gw, "failover-cap")["reserved"])
        assert held > 0
        time.sleep(0.2)  # the reservation is in the state file
        gw.process.proc.kill()
        gw.process.proc.wait(timeout=10)
    finally:
        r.close()
        c.close()
    gw = gateway(tmp_path, cfg)
    try:
        after = status(gw, "failover-cap")
        assert D(after["settled"]) == 0
        assert D(after["reserved"]) == held, "the running attempt's reservation was dropped at restart"
    finally:
        gw.process.terminate()
