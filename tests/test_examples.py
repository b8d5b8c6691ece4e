"""Every example users start from must load and run as documented."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import openai
import anthropic

from conftest import Process, free_port
from spendgate.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_every_example_config_parses() -> None:
    configs = sorted((ROOT / "examples").glob("*.yaml"))
    assert configs
    for path in configs:
        config, _ = load_config(path)
        assert config.deployments, path


def test_main_example_serves_with_embedded_simulator(tmp_path: Path) -> None:
    port = free_port()
    p = Process(["serve", "--config", str(ROOT / "examples" / "spendgate.yaml"), "--port", str(port)], f"http://127.0.0.1:{port}/healthz", cwd=str(tmp_path))
    try:
        oai = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-team-search", max_retries=0)
        r = oai.chat.completions.with_raw_response.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert r.parse().choices[0].message.content and r.headers["x-spendgate-cost"]
        oai.chat.completions.create(model="llama-3.1-8b-instruct", messages=[{"role": "user", "content": "hi"}])
        ant = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="sk-team-support", max_retries=0)
        ant.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    finally:
        p.terminate()
    rows = sqlite3.connect(tmp_path / "spendgate.db").execute("SELECT team, deployment, price_source FROM usage_events ORDER BY ts_start").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("search", "openai-gpt-4o"), ("search", "vllm-llama"), ("support", "anthropic-haiku")]
    assert "discount" in rows[0][2] and "gpu_hour" in rows[1][2]


def test_sdk_example_runs_against_simulator(simulator: str, tmp_path: Path) -> None:
    env = {**os.environ, "SIMULATOR_URL": simulator, "SPENDGATE_LEDGER": f"sqlite:///{tmp_path / 'sdk.db'}"}
    env.pop("SPENDGATE_URL", None)
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "sdk_instrument.py")], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = sqlite3.connect(tmp_path / "sdk.db").execute("SELECT source, team, model_requested FROM usage_events").fetchall()
    assert sorted(rows) == sorted([("sdk", "search", "gpt-4o-mini"), ("sdk", "search", "gpt-4o"), ("sdk", "support", "claude-haiku-4-5")])
