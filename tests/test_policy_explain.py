"""`spendgate policy explain`: the gateway's own policy and router, explained."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spendgate import cli
from spendgate.commands.policy import explain, render_status
from spendgate.config import parse_config
from spendgate.pipeline import Call
from spendgate.routing.router import Router

CONFIG = """
keys:
  - {key: sk-faq-bot, id: faq-bot, team: support, tags: {feature: faq}}
  - {key: sk-small, id: small-only, allowed_models: [gpt-4o-mini]}
deployments:
  - {name: mini-a, provider: openai, model: gpt-4o-mini, weight: 3, rpm: 100, retries: 1}
  - {name: mini-b, provider: openai, model: gpt-4o-mini, weight: 1}
  - {name: haiku, provider: anthropic, model: claude-haiku-4-5}
  - {name: big-list, provider: openai, model: gpt-4.1}
  - {name: big-cheap, provider: openai, model: gpt-4.1, price: {input_per_mtok: "1", output_per_mtok: "2"}}
  - {name: local, provider: openai_compatible, model: acme-llm, base_url: "http://127.0.0.1:9/v1"}
routing:
  models:
    gpt-4o-mini: {strategy: weighted, fallbacks: [claude-haiku-4-5], context_window_fallbacks: [tier:large]}
    gpt-4.1: {strategy: cost, fallbacks: [acme-llm]}
  tiers:
    small: [gpt-4o-mini]
    large: [gpt-4.1]
  baseline: gpt-4.1
  policy:
    default: tier:small
    enforce: rewrite
    rules:
      - {name: faq, match: {feature: faq}, use: cascade:faq}
      - {name: legal, match: {feature: legal}, use: tier:large, allow: [claude-haiku-4-5], enforce: reject}
      - {name: summaries, match: {feature: summarize}, use: tier:small, enforce: "off"}
      - {name: drafts, match: {feature: draft}, use: tier:small, allow: [tier:large]}
  cascades:
    - name: faq
      steps: [tier:small, tier:large]
      checks:
        - {kind: refusal}
        - {kind: regex, pattern: "^A:"}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def policy_cli(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli, "COMMANDS", {k: cli.COMMANDS[k] for k in ("policy", "routing")})

    def run(*args: str) -> int:
        return cli.main(["policy", "explain", *args])

    return run


def lines_of(out: str) -> list[str]:
    return [" ".join(line.split()) for line in out.splitlines()]


def test_feature_explains_auto_through_the_cascade(config_file: Path, policy_cli, capsys) -> None:
    assert policy_cli("--config", str(config_file), "--feature", "faq") == 0
    out = capsys.readouterr().out
    lines = lines_of(out)
    assert "call: model=auto on /chat/completions" in lines
    assert "tags: feature=faq" in lines
    assert "policy: the call's tags match rule 'faq', which uses cascade:faq" in lines
    assert "target: cascade:faq (cascade; route_reason cascade)" in lines
    assert "savings: measured against big-list (gpt-4.1, $3.50/1M)" in lines  # the cascade's last step
    assert "cascade 'faq': tier:small -> tier:large; an answer is kept when every check passes" in lines
    assert "checks: refusal; regex(pattern=^A:, must_match=True)" in lines
    assert "baseline: tier:large (the last step)" in lines
    # step 1: the weighted pair (shares, not a random draw), then the fallback; its context-window fallback
    assert "step 1 of 2: gpt-4o-mini: answer judged by the checks; a failing answer escalates to step 2" in lines
    assert any(line.startswith("gpt-4o-mini: weighted, the first drawn at random in proportion to weight") for line in lines)
    assert "1. mini-a openai/gpt-4o-mini weight 3 (75%) $0.2625/1M rpm 100 retries 1" in lines
    assert "2. mini-b openai/gpt-4o-mini weight 1 (25%) $0.2625/1M" in lines
    assert "claude-haiku-4-5 (fallback of gpt-4o-mini): ordered" in lines
    assert "3. haiku anthropic/claude-haiku-4-5 weight 1 $2.00/1M" in lines
    assert "prompt too long for gpt-4o-mini: -> tier:large (big-list, big-cheap)" in lines
    assert "failover order: mini-a -> mini-b -> haiku (a weighted group's first is a random draw)" in lines
    # step 2: cost strategy puts the cheaper deployment first; the unpriced fallback says so
    assert "step 2 of 2: gpt-4.1: answers the client (the last step's answer is final)" in lines
    assert "gpt-4.1: cost, cheapest first (blended price)" in lines
    assert "1. big-cheap openai/gpt-4.1 weight 1 $1.25/1M" in lines
    assert "2. big-list openai/gpt-4.1 weight 1 $3.50/1M" in lines
    assert "3. local openai_compatible/acme-llm weight 1 unpriced" in lines
    assert "failover order: big-cheap -> big-list -> local" in lines


def test_json_structure(config_file: Path, policy_cli, capsys) -> None:
    assert policy_cli("--config", str(config_file), "--feature", "faq", "--json") == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) == {"requested", "endpoint", "tags", "key_id", "policy", "target", "baseline", "cascade", "steps", "error"}
    assert (r["requested"], r["tags"], r["error"]) == ("auto", {"feature": "faq"}, None)
    assert r["policy"]["rule"] == "faq" and r["policy"]["outcome"] == "rule" and r["policy"]["match"] == {"feature": "faq"}
    assert r["target"] == {"label": "cascade:faq", "kind": "cascade", "route_reason": "cascade", "steps": [["gpt-4o-mini"], ["gpt-4.1"]]}
    assert r["baseline"]["name"] == "big-list" and r["baseline"]["price_per_mtok"] == "3.5"
    assert r["cascade"]["checks"] == [
        {"kind": "refusal", "extra_phrases": []},
        {"kind": "regex", "pattern": "^A:", "must_match": True},
    ]
    assert r["cascade"]["baseline"] == "tier:large" and r["cascade"]["baseline_is_default"] is True
    step1, step2 = r["steps"]
    assert [g["model"] for g in step1["groups"]] == ["gpt-4o-mini", "claude-haiku-4-5"]
    assert step1["groups"][1]["via"] == "fallback of gpt-4o-mini"
    mini = step1["groups"][0]
    assert mini["strategy"] == "weighted"
    assert [(d["name"], d["weight"], d["share"], d["price_per_mtok"]) for d in mini["deployments"]] == [
        ("mini-a", 3.0, 0.75, "0.2625"),
        ("mini-b", 1.0, 0.25, "0.2625"),
    ]
    assert step1["chain"] == ["mini-a", "mini-b", "haiku"]
    assert step1["context_window_fallbacks"] == [{"of": "gpt-4o-mini", "target": "tier:large", "deployments": ["big-list", "big-cheap"]}]
    assert step2["chain"] == ["big-cheap", "big-list", "local"]
    assert step2["groups"][1]["deployments"][0]["price_per_mtok"] is None  # unpriced


def test_explanation_matches_the_router(config_file: Path) -> None:
    """Same chains as the gateway's router plans (as sets: a weighted first pick is random)."""
    config = parse_config(CONFIG)
    for model, tags in (("auto", {"feature": "faq"}), ("auto", {}), ("tier:large", {}), ("gpt-4.1", {"feature": "draft"})):
        r = explain(config, model, tags)
        router = Router(config)
        call = Call(wire="openai", endpoint="chat.completions", body={}, raw_body=b"", headers={}, model=model, tags=dict(tags))
        target = router.policy.resolve(call)
        router.plan(call, target)
        planned = call.route_steps or [call.candidates]
        # the plan's steps end with the context-window fallbacks (priced, tried only on "prompt too long"),
        # which the explanation lists apart from the chain
        chains = [sorted(d.name for d in step if d.name not in only) for step, only in zip(planned, call.context_only)]
        assert [sorted(s["chain"]) for s in r["steps"]] == chains
        assert r["target"]["label"] == target.label


def test_default_and_enforce_modes(config_file: Path, policy_cli, capsys) -> None:
    assert policy_cli("--config", str(config_file)) == 0
    lines = lines_of(capsys.readouterr().out)
    assert "policy: no rule matches this call, so auto means the policy default, tier:small" in lines
    assert "target: tier:small (tier; route_reason policy)" in lines
    assert "deployments for gpt-4o-mini: answers the client" in lines

    # rewrite (the policy's default enforce): a model the rule does not allow is served by the rule's target
    assert policy_cli("--config", str(config_file), "--model", "claude-haiku-4-5", "--feature", "draft", "--json") == 0
    r = json.loads(capsys.readouterr().out)
    assert r["policy"]["outcome"] == "rewrite" and r["policy"]["enforce"] == "rewrite"
    assert r["target"]["label"] == "tier:small" and r["target"]["route_reason"] == "policy"
    # ... one it allows is served as asked: the allowed tier, or a model in it
    assert policy_cli("--config", str(config_file), "--model", "tier:large", "--feature", "draft", "--json") == 0
    assert json.loads(capsys.readouterr().out)["target"]["label"] == "tier:large"
    assert policy_cli("--config", str(config_file), "--model", "gpt-4.1", "--feature", "draft", "--json") == 0
    assert json.loads(capsys.readouterr().out)["policy"]["outcome"] == "as-asked"
    # an alias is no way around the policy: another cascade is rewritten like a model
    assert policy_cli("--config", str(config_file), "--model", "cascade:faq", "--feature", "draft", "--json") == 0
    assert json.loads(capsys.readouterr().out)["target"]["label"] == "tier:small"
    # off: served as asked, directly (no routing savings)
    assert policy_cli("--config", str(config_file), "--model", "gpt-4.1", "--feature", "summarize") == 0
    lines = lines_of(capsys.readouterr().out)
    assert "policy: rule 'summaries' matches; enforce is off: served as asked" in lines
    assert "target: gpt-4.1 (model; route_reason direct)" in lines
    assert "savings: none recorded (a model named directly is not routed)" in lines
    # reject: allowed model passes, another gets the gateway's 400, exit 2
    assert policy_cli("--config", str(config_file), "--model", "claude-haiku-4-5", "--feature", "legal") == 0
    assert "matches and allows 'claude-haiku-4-5' (enforce: reject): served as asked" in capsys.readouterr().out
    assert policy_cli("--config", str(config_file), "--model", "gpt-4o-mini", "--feature", "legal") == 2
    out = capsys.readouterr().out
    assert "policy: rule 'legal' matches and does not allow 'gpt-4o-mini' (enforce: reject)" in lines_of(out)
    assert (
        "refused: HTTP 400: The routing policy (legal) does not let these calls use 'gpt-4o-mini'; "
        "use 'auto' or one of: claude-haiku-4-5, tier:large."
    ) in lines_of(out)


def test_errors_are_the_gateways(config_file: Path, policy_cli, capsys) -> None:
    assert policy_cli("--config", str(config_file), "--model", "tier:huge") == 2
    assert "refused: HTTP 404: The tier 'huge' is not configured on this gateway." in lines_of(capsys.readouterr().out)
    assert policy_cli("--config", str(config_file), "--model", "tier:huge", "--json") == 2
    r = json.loads(capsys.readouterr().out)
    assert r["error"]["status"] == 404 and r["error"]["error"]["message"] == "The tier 'huge' is not configured on this gateway."
    assert r["target"] is None and r["steps"] == []
    assert policy_cli("--config", str(config_file), "--model", "feature:nope") == 2
    assert "No routing policy rule covers the feature 'nope'." in capsys.readouterr().out
    assert policy_cli("--config", str(config_file), "--model", "gpt-5") == 2
    assert "The model 'gpt-5' does not exist or is not served by this gateway." in capsys.readouterr().out
    # input problems (not the gateway's answer): on stderr, exit 2
    assert policy_cli("--config", str(config_file), "--tag", "oops") == 2
    assert "--tag 'oops': give NAME=VALUE" in capsys.readouterr().err
    assert policy_cli("--config", str(config_file), "--key-id", "nobody") == 2
    assert "no such key" in capsys.readouterr().err
    bad = config_file.parent / "bad.yaml"
    bad.write_text(CONFIG.replace("use: cascade:faq", "use: cascade:nope"))
    assert policy_cli("--config", str(bad)) == 2
    assert "The cascade 'nope' is not configured" in capsys.readouterr().err


def test_key_tags_and_allowed_models(config_file: Path, policy_cli, capsys) -> None:
    # the key's default tags route it (feature=faq), its owner tag is added
    assert policy_cli("--config", str(config_file), "--key-id", "faq-bot", "--json") == 0
    r = json.loads(capsys.readouterr().out)
    assert r["key_id"] == "faq-bot" and r["tags"] == {"feature": "faq", "team": "support"}
    assert r["target"]["label"] == "cascade:faq"
    # a key that may not use the cascade's second step: the gateway's 403
    assert policy_cli("--config", str(config_file), "--key-id", "small-only", "--feature", "faq") == 2
    out = capsys.readouterr().out
    assert "refused: HTTP 403: This API key (small-only) may not use the model(s) gpt-4.1 that" in " ".join(out.split())
    # ...nor name another model directly (the identify stage's check)
    assert policy_cli("--config", str(config_file), "--key-id", "small-only", "--model", "gpt-4.1") == 2
    assert "may not use model 'gpt-4.1'" in capsys.readouterr().out


def test_endpoint_filters_deployments(config_file: Path, policy_cli, capsys) -> None:
    assert policy_cli("--config", str(config_file), "--model", "gpt-4o-mini", "--endpoint", "embeddings", "--json") == 0
    r = json.loads(capsys.readouterr().out)
    assert r["steps"][0]["chain"] == ["mini-a", "mini-b"]  # the Anthropic fallback cannot serve /embeddings


def test_subprocess_example_config() -> None:
    """The documented command, on the shipped example, as a user runs it."""
    example = Path(__file__).resolve().parent.parent / "examples" / "routing.yaml"
    r = subprocess.run(
        [sys.executable, "-m", "spendgate.cli", "policy", "explain", "--config", str(example), "--feature", "faq"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "target:   cascade:faq (cascade; route_reason cascade)" in r.stdout
    assert "failover order:" in r.stdout


def test_render_status() -> None:
    text = render_status(
        {
            "deployments": {
                "a": {"state": "healthy", "cooldown_left_s": 0.0, "in_flight": 2, "latency_ewma_ms": 812.25, "recent_failures": 0,
                      "last_failure": None, "rpm": 100, "rpm_used": 7, "tpm": None, "tpm_used": 40},
                "b": {"state": "cooling", "cooldown_left_s": 12.5, "in_flight": 0, "latency_ewma_ms": None, "recent_failures": 3,
                      "last_failure": "connection", "rpm": None, "rpm_used": None, "tpm": None, "tpm_used": None},
            }
        }
    )  # fmt: skip
    lines = lines_of(text)
    assert lines[0] == "deployment state cooldown in flight latency failures last failure rpm tpm"
    assert "a healthy - 2 812.2 ms 0 - 7/100 -" in lines
    assert "b cooling 12.5s 0 - 3 connection - -" in lines
    assert lines[-1] == "2 deployments, 1 not healthy: b"
