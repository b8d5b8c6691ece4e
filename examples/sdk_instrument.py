"""Meter direct provider calls with `spendgate.instrument` — runnable against the simulator.

    spendgate simulate --port 8090 &        # a stand-in for OpenAI and Anthropic
    python examples/sdk_instrument.py       # writes to ./spendgate.db
    spendgate report --by feature,model

Set SPENDGATE_URL and SPENDGATE_API_KEY instead to post the events to a
running gateway (`POST /v1/spendgate/events`).
"""

from __future__ import annotations

import os

import anthropic
import openai

import spendgate
from spendgate.sdk import GatewaySink, LedgerSink

SIMULATOR = os.environ.get("SIMULATOR_URL", "http://127.0.0.1:8090")
LEDGER = os.environ.get("SPENDGATE_LEDGER", "sqlite:///spendgate.db")


def main() -> None:
    if os.environ.get("SPENDGATE_URL"):
        sink = GatewaySink(os.environ["SPENDGATE_URL"], os.environ["SPENDGATE_API_KEY"])
    else:
        sink = LedgerSink(LEDGER)
    gpt = spendgate.instrument(
        openai.OpenAI(base_url=f"{SIMULATOR}/v1", api_key="sk-example"),
        tags={"team": "search", "feature": "faq", "environment": "dev"},
        provider="openai",  # the simulator stands in for api.openai.com
        sink=sink,
    )
    claude = spendgate.instrument(
        anthropic.Anthropic(base_url=SIMULATOR, api_key="sk-example"),
        tags={"team": "support", "feature": "triage", "environment": "dev"},
        sink=sink,
    )
    answer = gpt.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "What is spendgate?"}])
    print("openai:", answer.choices[0].message.content[:60], "…")
    for chunk in gpt.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Stream it"}], stream=True):
        pass
    reply = claude.messages.create(model="claude-haiku-4-5", max_tokens=200, messages=[{"role": "user", "content": "Classify this ticket"}])
    print("anthropic:", reply.content[0].text[:60], "…")
    sink.close()  # flushes; at interpreter exit this also happens on its own
    print("3 calls metered; see them with: spendgate report --by feature,model")


if __name__ == "__main__":
    main()
