"""Real processes for end-to-end tests: the simulator and the gateway, on loopback."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"process exited with {proc.returncode}:\n{out}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not come up")


class Process:
    def __init__(self, args: list[str], health_url: str, env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spendgate.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        wait_http(health_url, self.proc)

    def terminate(self, timeout: float = 30.0) -> str:
        """SIGTERM and wait; returns what the process printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out.decode(errors="replace") if out else ""


@pytest.fixture(scope="session")
def simulator() -> Iterator[str]:
    port = free_port()
    p = Process(["simulate", "--port", str(port)], f"http://127.0.0.1:{port}/v1/models")
    yield f"http://127.0.0.1:{port}"
    p.terminate()


class Gateway:
    def __init__(self, url: str, ledger: Path, process: Process) -> None:
        self.url = url
        self.ledger = ledger
        self.process = process

    @property
    def openai_base(self) -> str:
        return f"{self.url}/v1"

    def rows(self, where: str = "1=1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        if not self.ledger.exists():
            return []
        con = sqlite3.connect(self.ledger)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(f"SELECT * FROM usage_events WHERE {where} ORDER BY ts_start, attempt", params)]
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    def wait_rows(self, where: str, params: tuple[Any, ...] = (), count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Rows matching `where` once `count` have arrived, re-read after a few more
        writer flushes so a duplicate written later would be seen too."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows(where, params)
            if len(rows) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.1)  # 5 flush intervals of the test gateways
        return self.rows(where, params)

    def by_request(self, request_id: str, count: int = 1) -> list[dict[str, Any]]:
        return self.wait_rows("request_id = ?", (request_id,), count)


def base_config(simulator: str, ledger: Path) -> dict[str, Any]:
    sim_v1 = f"{simulator}/v1"
    return {
        "keys": [
            {"key": "sk-test-search", "id": "key-search", "tags": {"team": "search", "environment": "test"}},
            {"key": "sk-test-plain", "id": "key-plain"},
        ],
        "ledger": {"url": f"sqlite:///{ledger}", "flush_interval_ms": 20},
        "state": {"url": f"sqlite:///{ledger.parent / 'state.db'}"},
        "deployments": [
            {"name": "oa-gpt-4o", "provider": "openai", "model": "gpt-4o", "base_url": sim_v1, "api_key_env": "SIM_OPENAI_KEY"},
            {"name": "oa-gpt-4o-mini", "provider": "openai", "model": "gpt-4o-mini", "base_url": sim_v1},
            {"name": "oa-embed", "provider": "openai", "model": "text-embedding-3-small", "base_url": sim_v1},
            {"name": "oa-instruct", "provider": "openai", "model": "gpt-3.5-turbo-instruct", "base_url": sim_v1},
            {"name": "an-sonnet", "provider": "anthropic", "model": "claude-sonnet-4-5", "base_url": simulator, "api_key_env": "SIM_ANTHROPIC_KEY"},
            {"name": "an-haiku", "provider": "anthropic", "model": "claude-haiku-4-5", "base_url": simulator},
            {"name": "azure-4o", "provider": "azure_openai", "model": "prod-4o", "serves": ["azure-gpt-4o"], "base_url": simulator, "api_version": "2024-10-21", "price_model": "gpt-4o", "price_provider": "openai"},
            {"name": "gemini-flash", "provider": "gemini", "model": "gemini-2.5-flash", "base_url": f"{simulator}/v1beta/openai"},
            {"name": "internal", "provider": "openai_compatible", "model": "acme-internal-llm", "base_url": sim_v1, "api_key_env": "SIM_OPENAI_KEY"},
            {"name": "self-hosted", "provider": "openai_compatible", "model": "llama-3.1-8b-instruct", "base_url": sim_v1, "api_key_env": "SIM_OPENAI_KEY", "price": {"input_per_mtok": "0.10", "output_per_mtok": "0.20"}},
            {"name": "slow", "provider": "openai", "model": "gpt-4o-mini", "serves": ["slow-model"], "base_url": sim_v1, "timeout_s": 1.0},
            {"name": "dead", "provider": "openai", "model": "gpt-4o-mini", "serves": ["ha-model"], "base_url": "http://127.0.0.1:9/v1", "connect_timeout_s": 2.0},
            {"name": "alive", "provider": "openai", "model": "gpt-4o-mini", "serves": ["ha-model"], "base_url": sim_v1},
            {"name": "flaky", "provider": "openai", "model": "gpt-4o-mini", "serves": ["flaky-model"], "base_url": sim_v1, "retries": 2, "retry_max_wait_s": 0.05},
        ],
    }


def start_gateway(tmp_path: Path, config: dict[str, Any], env: dict[str, str] | None = None, log_level: str = "warning") -> Gateway:
    port = free_port()
    cfg = tmp_path / "spendgate.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {"SIM_OPENAI_KEY": "sk-upstream-openai-secret", "SIM_ANTHROPIC_KEY": "sk-upstream-anthropic-secret", **(env or {})}
    p = Process(["serve", "--config", str(cfg), "--port", str(port), "--log-level", log_level], f"http://127.0.0.1:{port}/healthz", env=env)
    ledger = Path(config["ledger"]["url"].removeprefix("sqlite:///"))
    return Gateway(f"http://127.0.0.1:{port}", ledger, p)


@pytest.fixture(scope="module")
def gateway(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gw")
    gw = start_gateway(tmp, base_config(simulator, tmp / "ledger.db"))
    yield gw
    gw.process.terminate()
