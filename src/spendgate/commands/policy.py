"""`spendgate policy explain`: what a call would be routed to, and why.
`spendgate routing status`: a running gateway's deployments, healthy or cooling.

`policy explain` builds the call the gateway would see (the key's tags, then
the ones given, the key's owner last) and runs the gateway's own policy and
router on it (`Router(config).policy.resolve(call)`, then `router.apply`), so
what it prints is what the gateway does: the rule that matched (or the
default), the target, and per step the deployments in failover order with
their balancing strategy, weights and blended prices, the fallbacks and
context-window fallbacks, and the cascade's checks and baseline. A name the
gateway would refuse prints the gateway's own error and exits 2.

Orders that depend on live state are shown as the gateway would order an idle,
healthy pool; for `weighted` the first pick is a random draw in proportion to
weight, so the deployments are listed heaviest first with their shares.
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from spendgate.admin.client import AdminClient, AdminError, add_connection_arguments
from spendgate.config import ApiKey, Config, Deployment, load_config
from spendgate.errors import GatewayError
from spendgate.ledger.open import sqlite_path

ENDPOINTS = {"chat.completions": "openai", "completions": "openai", "embeddings": "openai", "messages": "anthropic"}
_OPENAI_ONLY = ("completions", "embeddings")  # as the router: only OpenAI-wire deployments serve these

STRATEGY_NOTES = {
    "ordered": "in config order",
    "weighted": "the first drawn at random in proportion to weight, the others heaviest first",
    "least_busy": "fewest calls in flight first, ties by weight (live order depends on load)",
    "latency": "lowest EWMA latency first, unmeasured ones first of all (live order depends on health)",
    "cost": "cheapest first (blended price)",
}
LIVE_NOTE = (
    "at call time a deployment cooling down after failures goes last, and one that this call would "
    "take over its rpm/tpm goes after those with room"
)


class ExplainError(Exception):
    """A problem with the command's input (not the gateway's answer): exit 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    if parser.prog.rsplit(" ", 1)[-1] == "routing":
        sub = parser.add_subparsers(dest="action", required=True)
        p = sub.add_parser("status", help="deployment health on a running gateway: cooling, in flight, latency, rate use")
        add_connection_arguments(p)
        p.add_argument("--json", action="store_true", help="print JSON (for scripts)")
        return
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("explain", help="what a call would be routed to, and why")
    p.add_argument("--config", metavar="PATH", help="config file (default: the embedded default config)")
    p.add_argument("--model", default=None, help="the model the client names: auto (default), tier:NAME, cascade:NAME, feature:NAME or a model")
    p.add_argument("--feature", help="tag the call feature=FEATURE (with no --model: explains `auto` for it)")
    p.add_argument("--tag", action="append", default=[], metavar="K=V", help="a tag on the call (repeatable)")
    p.add_argument("--key-id", help="the call is made with this key (config or managed): its tags and allowed models apply")
    p.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="chat.completions", help="the API called (default chat.completions)")
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")


def run(args: argparse.Namespace) -> int:
    if args.command == "routing":
        return routing_status(args)
    try:
        config, _ = load_config(args.config)
        tags = parse_tags(args.tag)
        if args.feature:
            tags["feature"] = args.feature
        result = explain(config, args.model or "auto", tags, args.key_id, args.endpoint)
    except (ExplainError, ValueError, OSError, yaml.YAMLError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"spendgate policy explain: {_config_problem(exc)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        sys.stdout.write(render_text(result))
    return 2 if result.get("error") else 0


def parse_tags(items: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ExplainError(f"--tag {item!r}: give NAME=VALUE")
        tags[name.strip()] = value.strip()
    return tags


def _config_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "the config is not valid: " + "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)


# ---- the explanation ---------------------------------------------------------------------------


def find_key(config: Config, key_id: str) -> ApiKey:
    """A config key by id, else a managed key from the state file (never created here)."""
    for k in config.keys:
        if k.id == key_id:
            return k
    try:
        path = sqlite_path(config.state.url)
    except ValueError:
        path = None
    if path and path != ":memory:" and Path(path).expanduser().exists():
        from spendgate.keys.store import KeyStore

        store = KeyStore(path)
        try:
            entry = store.entry(key_id)
        finally:
            store.close()
        if entry is not None:
            return entry.principal
    raise ExplainError(f"--key-id {key_id!r}: no such key in the config's `keys:` or in the state file ({config.state.url})")


def explain(
    config: Config,
    model: str = "auto",
    tags: dict[str, str] | None = None,
    key_id: str | None = None,
    endpoint: str = "chat.completions",
) -> dict[str, Any]:
    """What the gateway would do with a call: a JSON-safe dict. A refusal the
    gateway would answer is in `error` (the gateway's own body)."""
    from spendgate.controls.identify import ANY_KEY_ID, check_model, default_tags, may_use, owner_tags
    from spendgate.controls.tags import validate_tags
    from spendgate.pipeline import Call
    from spendgate.pricing.catalog import Catalog
    from spendgate.relay.errors import render
    from spendgate.routing.policy import is_alias
    from spendgate.routing.router import Router

    if endpoint not in ENDPOINTS:
        raise ExplainError(f"unknown endpoint {endpoint!r}; choose from {', '.join(sorted(ENDPOINTS))}")
    catalog = Catalog(config)
    router = Router(config, catalog.blended_price)  # a config the gateway would refuse raises ValueError here
    policy = router.policy
    key = find_key(config, key_id) if key_id else None
    call_tags = default_tags(key)
    call_tags.update(tags or {})
    call_tags.update(owner_tags(key))  # as the gateway: a caller cannot move its spend to another owner
    wire = ENDPOINTS[endpoint]
    call = Call(
        wire=wire, endpoint=endpoint, body={"model": model}, raw_body=b"", headers={}, model=model,
        key=key, key_id=key.id if key is not None else ANY_KEY_ID, tags=call_tags,
    )  # fmt: skip
    out: dict[str, Any] = {
        "requested": model,
        "endpoint": endpoint,
        "tags": dict(sorted(call_tags.items())),
        "key_id": key.id if key is not None else None,
        "policy": None,
        "target": None,
        "baseline": None,
        "cascade": None,
        "steps": [],
        "error": None,
    }
    matched = None
    try:
        validate_tags(call_tags, config.tags)
        if not is_alias(model):
            check_model(key, model)  # the identify stage's check (an alias is checked on what it routes to)
        matched = policy.rule_for(call)  # before routing changes call.model (a rule may match on it)
        target = policy.resolve(call)
        out["policy"] = _policy_part(config, policy, model, matched, target)
        router.apply(call, target)  # what the route stage does with the target
    except GatewayError as err:
        if out["policy"] is None and matched is not None and not is_alias(model) and matched.enforce == "reject":
            why = f"rule {matched.name!r} matches and does not allow {model!r} (enforce: reject)"
            out["policy"] = {**_rule_part(matched), "outcome": "reject", "why": why}
        out["error"] = {"status": err.status, **orjson.loads(render(err, wire))}
        return out

    out["target"] = {
        "label": target.label,
        "kind": "cascade" if target.cascade else "tier" if target.label.startswith("tier:") else "model",
        "route_reason": target.reason,
        "steps": [list(models) for models in target.steps],
    }
    base = call.route_baseline
    if base is not None:
        out["baseline"] = {**_dep(base, catalog.blended_price(base)), "public_model": router.public_model(base)}
    if target.cascade is not None:
        c = target.cascade
        out["cascade"] = {
            "name": c.name,
            "steps": list(c.steps),
            "checks": [ch.model_dump(by_alias=True, mode="json") for ch in c.checks],
            "baseline": c.baseline or c.steps[-1],
            "baseline_is_default": c.baseline is None,
        }
    planned = call.route_steps or [call.candidates]
    nsteps = len(target.steps)
    for i, models in enumerate(target.steps):
        allowed = [m for m in models if may_use(key, m)]
        step = _step(router, catalog, allowed, endpoint, key)
        chain = [d["name"] for g in step["groups"] for d in g["deployments"]]
        only = call.context_only[i] if i < len(call.context_only) else set()
        plan = [d.name for d in planned[i] if d.name not in only]  # context fallbacks: listed apart
        if sorted(chain) != sorted(plan):  # never expected: then say what the router planned
            step["groups"] = [{"model": None, "via": "router plan", "strategy": None, "note": "as planned for this call",
                               "deployments": [_dep(d, catalog.blended_price(d)) for d in planned[i]]}]  # fmt: skip
            chain = plan
        step.update(
            step=i + 1,
            models=list(models),
            not_allowed_for_key=[m for m in models if m not in allowed],
            chain=chain,
            role=_role(target, i, nsteps),
        )
        out["steps"].append(step)
    return out


def _rule_part(rule: Any) -> dict[str, Any]:
    return {"rule": rule.name, "match": dict(rule.spec.match), "use": rule.spec.use, "allow": list(rule.spec.allow), "enforce": rule.enforce}


def _policy_part(config: Config, policy: Any, asked: str, matched: Any, target: Any) -> dict[str, Any]:
    """Which rule decided, and why, in the policy's own terms."""
    rules_by_name = {r.name: r for r in policy.rules}
    if asked == "auto" or asked.startswith("feature:"):
        if target.rule == "default":
            why = f"no rule matches this call, so {asked} means the policy default, {config.routing.policy.default}"
            return {"rule": None, "default": config.routing.policy.default, "outcome": "default", "why": why}
        rule = rules_by_name[target.rule]
        how = f"{asked} names the feature of rule {rule.name!r}" if asked.startswith("feature:") else f"the call's tags match rule {rule.name!r}"
        return {**_rule_part(rule), "outcome": "rule", "why": f"{how}, which uses {rule.spec.use}"}
    if not policy.rules:
        return {"rule": None, "outcome": "as-asked", "why": "no policy rules: served as asked"}
    if matched is None:
        return {"rule": None, "outcome": "as-asked", "why": "no policy rule matches this call: served as asked"}
    part = _rule_part(matched)
    if target.rule is not None:  # the rule rewrote the model
        why = f"rule {matched.name!r} matches and does not allow {asked!r} (enforce: rewrite): served by {matched.spec.use} instead"
        return {**part, "outcome": "rewrite", "why": why}
    if matched.enforce == "off":
        why = f"rule {matched.name!r} matches; enforce is off: served as asked"
    else:
        why = f"rule {matched.name!r} matches and allows {asked!r} (enforce: {matched.enforce}): served as asked"
    return {**part, "outcome": "as-asked", "why": why}


def _role(target: Any, i: int, n: int) -> str:
    if target.cascade is None:
        return "answers the client"
    if i == n - 1:
        return "answers the client (the last step's answer is final)"
    learned = [c for c in target.cascade.checks if c.kind == "learned"]
    skip = f"; skipped when the learned check predicts success below {learned[0].threshold:g}" if learned else ""
    return f"answer judged by the checks; a failing answer escalates to step {i + 2}{skip}"


def _step(router: Any, catalog: Any, models: list[str], endpoint: str, key: Any) -> dict[str, Any]:
    """A step's chain in groups, from the router's own grouping (`Router.step_groups`)."""
    groups: list[dict[str, Any]] = []
    for model, fallback_of, entry, group in router.step_groups(models, key):
        deps = [d for d in group if endpoint not in _OPENAI_ONLY or d.wire == "openai"]
        if not deps:
            continue
        via = "step" if fallback_of is None else f"fallback of {fallback_of}" + (f" ({entry})" if entry != model else "")
        strategy = router.strategy(model)
        groups.append({"model": model, "via": via, "strategy": strategy, "note": STRATEGY_NOTES.get(strategy, ""),
                       "deployments": _ordered(router, catalog, deps, strategy)})  # fmt: skip
    routes = router.config.models
    context: list[dict[str, Any]] = []
    for m in models:
        route = routes.get(m)
        for name in route.context_window_fallbacks if route is not None else ():
            deps = [d for fm in router.policy.target(name).steps[0] for d in router.deployments_of(fm)]
            if endpoint in _OPENAI_ONLY:
                deps = [d for d in deps if d.wire == "openai"]
            context.append({"of": m, "target": name, "deployments": [d.name for d in deps]})
    return {"groups": groups, "context_window_fallbacks": context}


def _ordered(router: Any, catalog: Any, deps: list[Deployment], strategy: str) -> list[dict[str, Any]]:
    if strategy == "weighted":
        ordered = sorted(deps, key=lambda d: -d.weight)  # the live first pick is a random draw
        total = sum(d.weight for d in deps)
    else:
        ordered = router.balancer.order(deps, strategy)  # a fresh router: an idle, healthy pool
        total = 0.0
    out = []
    for d in ordered:
        row = _dep(d, catalog.blended_price(d))
        if strategy == "weighted" and len(deps) > 1:
            row["share"] = round(d.weight / total, 4) if total else None
        out.append(row)
    return out


def _dep(d: Deployment, price: Decimal | None) -> dict[str, Any]:
    return {
        "name": d.name,
        "provider": d.provider,
        "model": d.model,
        "weight": d.weight,
        "price_per_mtok": None if price is None else format(price, "f"),  # blended 3 input : 1 output, USD
        "rpm": d.rpm,
        "tpm": d.tpm,
        "retries": d.retries,
    }


# ---- text --------------------------------------------------------------------------------------


def _price(value: str | None) -> str:
    from spendgate.analytics.report import format_money

    return "unpriced" if value is None else f"{format_money(Decimal(value))}/1M"


def _dep_line(n: int, d: dict[str, Any], weighted: bool) -> list[str]:
    weight = f"weight {d['weight']:g}" + (f" ({d['share'] * 100:.0f}%)" if weighted and d.get("share") is not None else "")
    extras = [f"rpm {d['rpm']}" if d["rpm"] is not None else "", f"tpm {d['tpm']}" if d["tpm"] is not None else "",
              f"retries {d['retries']}" if d["retries"] else ""]  # fmt: skip
    return [f"{n}.", d["name"], f"{d['provider']}/{d['model']}", weight, _price(d["price_per_mtok"]), *[e for e in extras if e]]


def render_text(r: dict[str, Any]) -> str:
    lines = [f"call:     model={r['requested']} on /{r['endpoint'].replace('.', '/')}"]
    tags = ", ".join(f"{k}={v}" for k, v in r["tags"].items()) or "(none)"
    lines.append(f"tags:     {tags}")
    lines.append(f"key:      {r['key_id'] or '(none)'}")
    p = r["policy"]
    if p is not None:
        lines.append(f"policy:   {p['why']}")
        if p.get("rule") and p.get("match") is not None:
            allow = f", allow {', '.join(p['allow'])}" if p["allow"] else ""
            match = ", ".join(f"{k}={v}" for k, v in p["match"].items()) or "every call"
            lines.append(f"          rule {p['rule']!r}: match {match} -> use {p['use']}{allow}; enforce {p['enforce']}")
    if r["error"] is not None:
        e = r["error"]
        lines.append(f"refused:  HTTP {e['status']}: {e['error']['message']}")
        return "\n".join(lines) + "\n"
    t = r["target"]
    lines.append(f"target:   {t['label']} ({t['kind']}; route_reason {t['route_reason']})")
    b = r["baseline"]
    if b is not None:
        lines.append(f"savings:  measured against {b['name']} ({b['public_model']}, {_price(b['price_per_mtok'])})")
    elif t["route_reason"] == "direct":
        lines.append("savings:  none recorded (a model named directly is not routed)")
    else:
        lines.append("savings:  none recorded (set routing.baseline to measure them)")
    c = r["cascade"]
    if c is not None:
        lines.append("")
        lines.append(f"cascade {c['name']!r}: {' -> '.join(c['steps'])}; an answer is kept when every check passes")
        checks = "; ".join(_check_text(ch) for ch in c["checks"]) or "(none: every answer is kept)"
        lines.append(f"  checks:   {checks}")
        lines.append(f"  baseline: {c['baseline']}" + (" (the last step)" if c["baseline_is_default"] else ""))
    for s in r["steps"]:
        lines.append("")
        head = f"step {s['step']} of {len(r['steps'])}: {', '.join(s['models'])}" if len(r["steps"]) > 1 else f"deployments for {', '.join(s['models'])}"
        lines.append(f"{head}: {s['role']}")
        if s["not_allowed_for_key"]:
            lines.append(f"  not for this key: {', '.join(s['not_allowed_for_key'])}")
        rows: list[list[str]] = []
        n = 0
        for g in s["groups"]:
            label = g["model"] if g["via"] == "step" else f"{g['model']} ({g['via']})"
            rows.append([f"  {label}: {g['strategy']}" + (f", {g['note']}" if len(g["deployments"]) > 1 and g["note"] else "")])
            for d in g["deployments"]:
                n += 1
                rows.append(_dep_line(n, d, g["strategy"] == "weighted"))
        lines.extend(_align(rows))
        for cw in s["context_window_fallbacks"]:
            lines.append(f"  prompt too long for {cw['of']}: -> {cw['target']} ({', '.join(cw['deployments']) or 'none'})")
        drawn = any(g["strategy"] == "weighted" and len(g["deployments"]) > 1 for g in s["groups"])
        lines.append(f"  failover order: {' -> '.join(s['chain'])}" + (" (a weighted group's first is a random draw)" if drawn else ""))
    lines += ["", "prices: USD per million tokens, blended 3 input : 1 output.", f"note: {LIVE_NOTE}."]
    return "\n".join(lines) + "\n"


def _align(rows: list[list[str]]) -> list[str]:
    """Deployment rows in columns; a one-cell row (a group heading) as is."""
    table = [r for r in rows if len(r) > 1]
    width = max((len(r) for r in table), default=0)
    widths = [max((len(r[i]) for r in table if i < len(r)), default=0) for i in range(width)]
    out = []
    for r in rows:
        if len(r) == 1:
            out.append(r[0])
        else:
            cells = [c.rjust(widths[0]) if i == 0 else c.ljust(widths[i]) for i, c in enumerate(r)]
            out.append(("    " + "  ".join(cells)).rstrip())
    return out


def _check_text(ch: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in ch.items() if k != "kind" and v not in (None, [], {}))
    return f"{ch['kind']}({params})" if params else ch["kind"]


# ---- routing status (admin API) ----------------------------------------------------------------


def routing_status(args: argparse.Namespace) -> int:
    try:
        result = AdminClient.from_args(args).routing_status()
    except AdminError as exc:
        print(f"spendgate: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    sys.stdout.write(render_status(result))
    return 0


def render_status(result: dict[str, Any]) -> str:
    deps: dict[str, dict[str, Any]] = result.get("deployments") or {}
    headers = ["deployment", "state", "cooldown", "in flight", "latency", "failures", "last failure", "rpm", "tpm"]
    rows = [headers]
    for name, s in sorted(deps.items()):
        rows.append([
            name,
            s["state"],
            f"{s['cooldown_left_s']:g}s" if s["state"] != "healthy" else "-",
            str(s["in_flight"]),
            f"{s['latency_ewma_ms']:.1f} ms" if s["latency_ewma_ms"] is not None else "-",
            str(s["recent_failures"]),
            s["last_failure"] or "-",
            f"{s['rpm_used']}/{s['rpm']}" if s["rpm"] is not None else "-",
            f"{s['tpm_used']}/{s['tpm']}" if s["tpm"] is not None else "-",
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    cooling = [n for n, s in deps.items() if s["state"] != "healthy"]
    lines.append("")
    lines.append(f"{len(deps)} deployments, {len(cooling)} not healthy" + (f": {', '.join(sorted(cooling))}" if cooling else ""))
    return "\n".join(lines) + "\n"
