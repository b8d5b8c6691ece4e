"""Route stage: which deployments may serve a call, in the order to try them.

The requested name goes through the policy (`policy.py`) to a target: steps
of public models. Each model's deployments are ordered by its balancing
strategy (`balance.py`, fed by `health.py`), then its fallback models follow,
so a step's list is the whole failover chain. Budgets price that list (every
entry may be the one that runs), which is why routing runs before them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

from spendgate.config import ApiKey, Config, Deployment
from spendgate.controls.identify import may_use
from spendgate.controls.tokens import estimate_input_tokens
from spendgate.controls.worst_case import choices, max_tokens
from spendgate.errors import GatewayError
from spendgate.pipeline import Call
from spendgate.routing.balance import Balancer
from spendgate.routing.health import Health
from spendgate.routing.policy import Policy, Target
from spendgate.routing.schema import ModelRoute, RoutingConfig

_OPENAI_ONLY = ("completions", "embeddings")


# (public model, the step model it is a fallback of or None, the fallback entry
# that brought it in, its deployments in config order; the strategy orders them per call)
StepGroup = tuple[str, "str | None", "str | None", list[Deployment]]


class Router:
    def __init__(self, config: Config, price_of: Callable[[Deployment], Decimal | None] | None = None) -> None:
        """`price_of`: a deployment's blended price, for the `cost` strategy."""
        self.config: RoutingConfig = config.routing
        self._by_model: dict[str, list[Deployment]] = {}
        self._model_of: dict[str, str] = {}  # deployment -> the first public model it serves
        for d in config.deployments:
            for name in d.serves:
                self._by_model.setdefault(name, []).append(d)
            if d.name not in d.serves:  # a deployment can also be addressed by its own name
                self._by_model.setdefault(d.name, []).append(d)
            self._model_of[d.name] = d.serves[0] if d.serves else d.model
        self._public = sorted({n for d in config.deployments for n in d.serves})
        self.policy = Policy(config.routing, set(self._by_model))
        self.health = Health(config.routing.health, config.deployments)
        self.balancer = Balancer(self.health, price_of)
        self._routes: dict[str, ModelRoute] = config.routing.models
        # model -> its fallback models, each with the fallback entry (a model or a tier) naming it
        self._fallbacks: dict[str, list[tuple[str, str]]] = {
            model: [(fb, entry) for entry in route.fallbacks for fb in self.policy.target(entry).steps[0]]
            for model, route in self._routes.items()
            if route.fallbacks
        }
        self._has_tpm = any(d.tpm is not None for d in config.deployments)
        self._has_context_fallbacks = any(r.context_window_fallbacks for r in config.routing.models.values())

    # -- what a call may use ---------------------------------------------------------

    def models(self) -> list[str]:
        return self._public

    def deployments_of(self, model: str) -> list[Deployment]:
        return self._by_model.get(model, [])

    def strategy(self, model: str) -> str:
        route = self._routes.get(model)
        return (route.strategy if route is not None and route.strategy else None) or self.config.strategy

    def step_groups(self, models: Sequence[str], key: ApiKey | None) -> list[StepGroup]:
        """A step's deployments grouped by the model they serve, in chain order: each
        of its models' own, then each model's fallbacks (those the key may use). A
        deployment already in an earlier group is left out of later ones."""
        wanted: list[tuple[str, str | None, str | None]] = [(m, None, None) for m in models]
        for model in models:
            wanted += [(fb, model, via) for fb, via in self._fallbacks.get(model, ()) if may_use(key, fb)]
        if len(wanted) == 1:  # the common case: one model, no fallbacks
            return [(models[0], None, None, self._by_model[models[0]])]
        groups: list[StepGroup] = []
        seen: set[str] = set()
        for model, fallback_of, via in wanted:
            deps = [d for d in self._by_model[model] if d.name not in seen] if seen else self._by_model[model]
            if deps:
                seen.update(d.name for d in deps)
                groups.append((model, fallback_of, via, deps))
        return groups

    def _step(self, models: tuple[str, ...], tokens: int, key: ApiKey | None) -> list[Deployment]:
        """The step's chain: each group ordered by its model's strategy."""
        out: list[Deployment] = []
        for model, _, _, deps in self.step_groups(models, key):
            out += self.balancer.order(deps, self.strategy(model), tokens)
        return out
    @staticmethod
    def _extend(out: list[Deployment], seen: set[str], deps: list[Deployment]) -> None:
        for d in deps:
            if d.name not in seen:
                seen.add(d.name)
                out.append(d)

    @staticmethod
    def _usable(found: list[Deployment], endpoint: str, model: str) -> list[Deployment]:
        if endpoint in _OPENAI_ONLY:
            found = [d for d in found if d.wire == "openai"]
            if not found:
                raise GatewayError(400, f"The model '{model}' cannot serve /{endpoint}.", param="model")
        return found

    def context_fallbacks(self, dep: Deployment, endpoint: str, key: ApiKey | None, tokens: int = 0) -> list[Deployment]:
        """Where a call goes when `dep` says the prompt is too long for it (models the key may use)."""
        route = self._routes.get(self._model_of.get(dep.name, ""))
        if route is None or not route.context_window_fallbacks:
            return []
        out: list[Deployment] = []
        seen: set[str] = {dep.name}
        for name in route.context_window_fallbacks:
            for model in self.policy.target(name).steps[0]:
                if may_use(key, model):
                    self._extend(out, seen, self.balancer.order(self._by_model[model], self.strategy(model), tokens))
        return [d for d in out if endpoint not in _OPENAI_ONLY or d.wire == "openai"]

    def call_tokens(self, call: Call) -> int:
        """Tokens a call may use (input bound + output bound), for deployments' `tpm`;
        0 (not computed) when no deployment has a tpm."""
        if not self._has_tpm:
            return 0
        out = 0 if call.endpoint == "embeddings" else (max_tokens(call) or 0) * choices(call)
        return estimate_input_tokens(call) + out

    def baseline(self, target: Target) -> Deployment | None:
        """The deployment a routed call's savings are measured against: the
        cascade's baseline (default its last step), else `routing.baseline`."""
        if target.reason == "direct":
            return None
        name = None
        if target.cascade is not None:
            name = target.cascade.baseline or target.cascade.steps[-1]
        name = name or self.config.baseline
        if name is None:
            return None
        deps = self._by_model.get(self.policy.target(name).primary)
        return deps[0] if deps else None

    def public_model(self, dep: Deployment) -> str:
        return self._model_of.get(dep.name, dep.model)

    # -- planning a call -------------------------------------------------------------

    def route(self, call: Call) -> None:
        """Resolve the name the client sent under the policy, and plan the call."""
        self.apply(call, self.policy.resolve(call))

    def apply(self, call: Call, target: Target) -> None:
        """Route the call to a target the policy resolved for it."""
        if target.reason != "direct":
            call.route_reason = target.reason
            if target.rule is not None:
                call.control_actions.append(f"route:{target.rule}:{call.model}->{target.label}")
            call.model = target.primary
            call.route_baseline = self.baseline(target)
        call.route_target = target
        self.plan(call, target)

    def route_directly(self, call: Call) -> None:
        """Plan `call.model` as the concrete model it is (a control chose it, not the policy)."""
        target = self.policy.target(call.model)
        call.route_target = target
        call.route_baseline = None  # no routing savings: routing did not choose
        self.plan(call, target)

    def plan(self, call: Call, target: Target) -> None:
        """Fill the call's route from a resolved target. Each step's list ends with
        the deployments its context-window fallbacks may reach (`call.context_only`):
        tried only after a "prompt too long", but priced by budgets like the rest
        (one set of names per step)."""
        tokens = call.route_tokens = self.call_tokens(call)
        steps: list[list[Deployment]] = []
        context_only: list[set[str]] = []
        for models in target.steps:
            allowed = tuple(m for m in models if may_use(call.key, m))
            if not allowed:
                key_id = call.key.id if call.key is not None else "?"
                raise GatewayError(
                    403, f"This API key ({key_id}) may not use the model(s) {', '.join(models)} that '{call.requested_model}' routes to.",
                    "permission", param="model",
                )
            chain = self._usable(self._step(allowed, tokens, call.key), call.endpoint, allowed[0])
            only: set[str] = set()
            if self._has_context_fallbacks:
                seen = {d.name for d in chain}
                first_of_model: dict[str, Deployment] = {}  # the fallbacks are per model: one lookup each
                for d in chain:
                    first_of_model.setdefault(self._model_of[d.name], d)
                for dep in first_of_model.values():
                    for extra in self.context_fallbacks(dep, call.endpoint, call.key, tokens):
                        if extra.name not in seen:
                            seen.add(extra.name)
                            chain.append(extra)
                            only.add(extra.name)
            steps.append(chain)
            context_only.append(only)
        if len(steps) == 1:
            call.route_steps = []
            call.candidates = steps[0]
        else:
            call.route_steps = steps
            call.candidates = [d for step in steps for d in step]
        call.context_only = context_only
        call.deployment_name = call.candidates[0].name


class RouteStage:
    """Stage: resolve the requested name to deployments before the controls run,
    so budgets can price the worst case and scopes can match a deployment. A
    stage that changes `call.model` (slowdown) calls `reroute`."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def __call__(self, call: Call) -> None:
        self.router.route(call)

    def reroute(self, call: Call) -> None:
        self.router.route_directly(call)
