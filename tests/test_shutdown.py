"""SIGTERM under load: the gateway stops accepting, finishes in-flight calls, flushes.

Every response the clients received must be in the ledger, and nothing else.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from conftest import base_config, start_gateway


def test_sigterm_under_load_loses_no_event(simulator: str, tmp_path: Path) -> None:
    config = base_config(simulator, tmp_path / "ledger.db")
    config["ledger"]["flush_interval_ms"] = 1000  # events still queued when the signal comes
    gw = start_gateway(tmp_path, config)
    served: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(timeout=20) as c:
            i = 0
            while not stop.is_set():
                i += 1
                stream = (n + i) % 2 == 0
                body = {
                    "model": "gpt-4o-mini",
                    "stream": stream,
                    "messages": [{"role": "user", "content": f"load {n}-{i} [[sim:latency_ms=150]] [[sim:output_tokens=20]]"}],
                }
                try:
                    with c.stream("POST", f"{gw.openai_base}/chat/completions", json=body, headers={"authorization": "Bearer sk-test-search"}) as r:
                        content = r.read()
                        if r.status_code == 200 and (not stream or b"[DONE]" in content):
                            with lock:
                                served.append(r.headers["x-spendgate-request-id"])
                except httpx.HTTPError:
                    return  # the gateway stopped accepting

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    gw.process.proc.send_signal(signal.SIGTERM)
    gw.process.proc.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert gw.process.proc.returncode == 0  # drained and flushed: a normal stop
    assert len(served) > 20
    rows = gw.rows()
    assert sorted(r["request_id"] for r in rows) == sorted(served)
    assert all(r["status"] == "ok" for r in rows)
