"""Per-provider request shape: the URL and headers each upstream expects.

Wire formats (what the JSON looks like) live in `spendgate.wire`; this module
only knows where each provider listens and how it wants to be authenticated.
Provider secrets are read from the environment once, at start-up.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from spendgate.config import Deployment
from spendgate.wire.anthropic import DEFAULT_VERSION

log = logging.getLogger("spendgate.providers")

OPENAI_PATHS = {"chat.completions": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
# client headers that may travel upstream (never the client's own key)
FORWARDED_ANTHROPIC = ("anthropic-version", "anthropic-beta")


@dataclass(slots=True)
class Target:
    url: str
    headers: dict[str, str]


class Adapter:
    """Builds upstream targets for one deployment."""

    def __init__(self, deployment: Deployment, base_url: str) -> None:
        self.deployment = deployment
        self.base_url = base_url.rstrip("/")
        self.secret = os.environ.get(deployment.api_key_env, "") if deployment.api_key_env else ""
        if deployment.api_key_env and not self.secret:
            log.warning("deployment %r: environment variable %s is not set; its calls will fail upstream", deployment.name, deployment.api_key_env)
        self._headers = self._base_headers()
        self._urls = self._build_urls()

    def _base_headers(self) -> dict[str, str]:
        d = self.deployment
        h = {"content-type": "application/json"}
        if d.provider == "anthropic":
            h["x-api-key"] = self.secret or "none"
            h["anthropic-version"] = DEFAULT_VERSION
        elif d.provider == "azure_openai":
            h["api-key"] = self.secret or "none"
        elif self.secret or d.provider != "openai_compatible":
            h["authorization"] = f"Bearer {self.secret or 'none'}"
        h.update(d.headers)
        return h

    def _build_urls(self) -> dict[str, str]:
        d = self.deployment
        if d.provider == "anthropic":
            base = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
            return {"messages": f"{base}/v1/messages"}
        if d.provider == "azure_openai":
            base = self.base_url
            return {
                ep: f"{base}/openai/deployments/{d.model}{path}?api-version={d.api_version}"
                for ep, path in OPENAI_PATHS.items()
            }
        return {ep: f"{self.base_url}{path}" for ep, path in OPENAI_PATHS.items()}

    def target(self, endpoint: str, client_headers: dict[str, str]) -> Target:
        headers = self._headers
        if self.deployment.provider == "anthropic":
            extra = {n: client_headers[n] for n in FORWARDED_ANTHROPIC if n in client_headers}
            if extra:
                headers = {**headers, **extra}
        return Target(self._urls[endpoint], headers)
