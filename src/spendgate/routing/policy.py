"""The model policy: what a requested name (a model or an alias) resolves to.

A resolution is a `Target`: one or more steps (more than one only for a
cascade), each step the public models to try in order (a tier's models, the
first preferred). Resolution is pure and cached per (name, matched rule), so
it costs a dict lookup per call; `explain` says the same thing in words.
"""

from __future__ import annotations

from dataclasses import dataclass

from spendgate.controls.scope import Scope
from spendgate.errors import GatewayError
from spendgate.pipeline import Call
from spendgate.routing.schema import ALIAS_PREFIXES, AUTO, Cascade, PolicyRule, RoutingConfig


def is_alias(name: str) -> bool:
    return name == AUTO or name.startswith(ALIAS_PREFIXES)


@dataclass(frozen=True, slots=True)
class Target:
    steps: tuple[tuple[str, ...], ...]  # per step, public models in preference order
    reason: str  # direct | policy | cascade (the route_reason of the first attempt)
    label: str  # what the name resolved through, e.g. "tier:small" or "cascade:faq"
    rule: str | None = None  # the policy rule that decided, if any
    cascade: Cascade | None = None

    @property
    def primary(self) -> str:
        return self.steps[0][0]


class _Rule:
    __slots__ = ("spec", "name", "scope", "allowed", "any", "enforce")

    def __init__(self, spec: PolicyRule, index: int, default_enforce: str) -> None:
        self.spec = spec
        self.name = spec.name or f"rule{index + 1}"
        self.scope = Scope(spec.match)
        self.any = "*" in spec.allow
        self.allowed: frozenset[str] = frozenset()  # names, and the models they resolve to (Policy fills it)
        self.enforce = spec.enforce or default_enforce

    def allows(self, name: str) -> bool:
        return self.any or name in self.allowed


class Policy:
    """Resolves requested names; built once from config."""

    def __init__(self, config: RoutingConfig, models: set[str]) -> None:
        self.config = config
        self.models = models  # public model names the deployments serve
        self.cascades = {c.name: c for c in config.cascades}
        self.rules = [_Rule(r, i, config.policy.enforce) for i, r in enumerate(config.policy.rules)]
        self._features: dict[str, _Rule] = {}
        for r in self.rules:  # like `auto`, the first rule for a feature decides
            feature = r.spec.match.get("feature")
            if feature not in (None, "*"):
                self._features.setdefault(feature, r)
        self._targets: dict[str, Target] = {}
        self._check()
        for r in self.rules:
            names = {r.spec.use, *(a for a in r.spec.allow if a != "*")}
            r.allowed = frozenset(names | {m for n in names for step in self.target(n).steps for m in step})

    def _check(self) -> None:
        """Every name the config mentions must resolve: a typo fails at startup, not on a call."""
        names = [r.spec.use for r in self.rules] + [a for r in self.rules for a in r.spec.allow if a != "*"]
        names += [m for ms in self.config.tiers.values() for m in ms]
        names += [s for c in self.config.cascades for s in c.steps] + [f"cascade:{c.name}" for c in self.config.cascades]
        names += [c.baseline for c in self.config.cascades if c.baseline]
        names += [f for route in self.config.models.values() for f in (*route.fallbacks, *route.context_window_fallbacks)]
        if self.config.policy.default:
            names.append(self.config.policy.default)
        if self.config.baseline:
            names.append(self.config.baseline)
        for name in names:
            try:
                self.target(name)
            except GatewayError as err:
                raise ValueError(f"routing: {err.message}") from None
        for name in self.config.models:
            if name not in self.models:
                raise ValueError(f"routing.models: no deployment serves {name!r}")

    def target(self, name: str) -> Target:
        """What a target name (model, tier:, cascade:) means, without the policy."""
        found = self._targets.get(name)
        if found is None:
            found = self._targets[name] = self._resolve(name)
        return found

    def _resolve(self, name: str) -> Target:
        if name.startswith("tier:"):
            models = self.config.tiers.get(name[5:])
            if not models:
                raise GatewayError(404, f"The tier '{name[5:]}' is not configured on this gateway.", "not_found", param="model")
            for m in models:
                self._concrete(m)
            return Target((tuple(models),), "policy", name)
        if name.startswith("cascade:"):
            cascade = self.cascades.get(name[8:])
            if cascade is None:
                raise GatewayError(404, f"The cascade '{name[8:]}' is not configured on this gateway.", "not_found", param="model")
            nested = [s for s in cascade.steps if s.startswith("cascade:")]
            if nested:
                raise GatewayError(400, f"The cascade '{cascade.name}' has a cascade as a step ({nested[0]}); steps are models or tiers.")
            steps = tuple(self.target(s).steps[0] for s in cascade.steps)
            return Target(steps, "cascade", name, cascade=cascade)
        if name == AUTO or name.startswith("feature:"):
            raise GatewayError(400, f"'{name}' cannot be used here; name a model, a tier or a cascade.", param="model")
        self._concrete(name)
        return Target(((name,),), "direct", name)

    def _concrete(self, name: str) -> None:
        if name not in self.models:
            raise GatewayError(404, f"The model '{name}' does not exist or is not served by this gateway.", "not_found", param="model")

    def rule_for(self, call: Call) -> _Rule | None:
        for rule in self.rules:
            if rule.scope.instance(call) is not None:
                return rule
        return None

    def resolve(self, call: Call) -> Target:
        """The target for the name the client sent, under the policy. A call a rule
        covers that names anything else (a model, a tier, a cascade, another
        feature) is served as asked only if the rule allows it (`allow`, or what
        its `use` resolves to) or does not enforce."""
        name = call.model
        if not self.rules:
            return self._by_rule(None, name) if name == AUTO else self.target(name)
        rule = self.rule_for(call)
        if name == AUTO:
            return self._by_rule(rule, name)
        if name.startswith("feature:"):
            asked = self._features.get(name[8:])
            if asked is None:
                raise GatewayError(404, f"No routing policy rule covers the feature '{name[8:]}'.", "not_found", param="model")
            if rule is None or rule is asked or rule.enforce == "off" or rule.allows(name):
                return self._by_rule(asked, name)
        elif rule is None or rule.enforce == "off" or rule.allows(name):
            return self.target(name)
        if rule.enforce == "reject":
            allowed = sorted({rule.spec.use, *(a for a in rule.spec.allow if a != "*")})
            raise GatewayError(
                400,
                f"The routing policy ({rule.name}) does not let these calls use '{name}'; use 'auto' or one of: {', '.join(allowed)}.",
                param="model",
            )
        return self._by_rule(rule, name)  # rewrite

    def _by_rule(self, rule: _Rule | None, asked: str) -> Target:
        if rule is None:
            default = self.config.policy.default
            if default is None:
                raise GatewayError(400, f"No routing policy rule covers this call, so '{asked}' has nothing to resolve to.", param="model")
            t = self.target(default)
            return Target(t.steps, "cascade" if t.cascade else "policy", t.label, "default", t.cascade)
        t = self.target(rule.spec.use)
        return Target(t.steps, "cascade" if t.cascade else "policy", t.label, rule.name, t.cascade)
