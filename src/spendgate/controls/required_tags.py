"""Required tags: spend that cannot be attributed is refused, or at least flagged.

Rules apply by the call's `environment` tag (`"*"` matches every call, with
or without one). `mode: reject` answers 400 naming what is missing, so an
untagged deployment fails in testing instead of producing anonymous spend;
`mode: record_untagged` lets the call through and records the missing tags
in the ledger (`missing_tags`) and the `x-spendgate-missing-tags` header.
A key's owner team counts as its calls' `team`, as in scopes.
"""

from __future__ import annotations

from collections.abc import Sequence

from spendgate.controls.schema import RequiredTags
from spendgate.controls.scope import ANY, getter
from spendgate.errors import GatewayError
from spendgate.pipeline import Call

MISSING_HEADER = b"x-spendgate-missing-tags"


class _Rule:
    __slots__ = ("any_env", "envs", "tags", "reject", "tests")

    def __init__(self, rule: RequiredTags) -> None:
        self.any_env = ANY in rule.environments
        self.envs = frozenset(rule.environments)
        self.tags = tuple(rule.tags)
        self.reject = rule.mode == "reject"
        self.tests = tuple((tag, getter(tag)) for tag in self.tags)  # `dimension(call, tag)`, compiled

    def applies(self, env: str | None) -> bool:
        return self.any_env or (env is not None and env in self.envs)


class RequiredTagsStage:
    """Stage: refuse (or flag) calls that lack the tags their environment requires."""

    def __init__(self, rules: Sequence[RequiredTags]) -> None:
        self.rules = [_Rule(r) for r in rules]

    async def __call__(self, call: Call) -> None:
        self.check(call)

    def check(self, call: Call) -> None:
        """The stage's work, without a coroutine (`assembly.Admission` runs it with the caps)."""
        if not self.rules:
            return
        env = call.tags.get("environment")
        refused: list[str] = []
        flagged: list[str] = []
        for rule in self.rules:
            if not (rule.any_env or (env is not None and env in rule.envs)):  # rule.applies(env)
                continue
            for tag, get in rule.tests:
                if get(call) is None:
                    (refused if rule.reject else flagged).append(tag)
        if refused:
            names = sorted(set(refused))
            where = f"environment '{env}'" if env is not None else "calls without an environment tag"
            example = ",".join(f"{n}=…" for n in names)
            raise GatewayError(
                400,
                f"Missing required tags: {', '.join(names)} (required for {where}). Send them as x-spendgate-tags: {example}",
                param="tags",
            )
        if flagged:
            missing = sorted(set(flagged) - set(call.missing_tags))
            if missing:
                call.missing_tags.extend(missing)
                call.response_headers.append((MISSING_HEADER, ",".join(call.missing_tags).encode()))
