"""Route stage: which deployments may serve a requested model, in order.

This issue routes by name only (first deployment serving the model, the
others as failover in config order); policies and cascades come later.
"""

from __future__ import annotations

from spendgate.config import Config, Deployment
from spendgate.errors import GatewayError
from spendgate.pipeline import Call


class Router:
    def __init__(self, config: Config) -> None:
        self._by_model: dict[str, list[Deployment]] = {}
        for d in config.deployments:
            for name in d.serves:
                self._by_model.setdefault(name, []).append(d)
            if d.name not in d.serves:  # a deployment can also be addressed by its own name
                self._by_model.setdefault(d.name, []).append(d)
        self._public = sorted({n for d in config.deployments for n in d.serves})

    def candidates(self, model: str, endpoint: str) -> list[Deployment]:
        found = self._by_model.get(model)
        if not found:
            raise GatewayError(
                404, f"The model '{model}' does not exist or is not served by this gateway.", "not_found", param="model"
            )
        if endpoint in ("completions", "embeddings"):
            found = [d for d in found if d.wire == "openai"]
            if not found:
                raise GatewayError(400, f"The model '{model}' cannot serve /{endpoint}.", param="model")
        return found

    def models(self) -> list[str]:
        return self._public


class RouteStage:
    """Stage: resolve the model to deployments before the controls run, so
    budgets can price the worst case and scopes can match a deployment. A
    stage that changes `call.model` (slowdown) calls `reroute`."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def __call__(self, call: Call) -> None:
        self.reroute(call)

    def reroute(self, call: Call) -> None:
        call.candidates = self.router.candidates(call.model, call.endpoint)
        call.deployment_name = call.candidates[0].name
