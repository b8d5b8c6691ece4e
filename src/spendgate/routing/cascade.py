"""Cascades at run time: compiled checks per cascade, and the two decisions.

Before a cheap step: a learned check may predict from the prompt that the
cheap model would fail, and the step is skipped (nothing paid for it).
After a cheap step: its answer, read whole, is judged by the answer checks
(`checks.py`) and by learned verifiers (models trained with the cheap
answers); failing any one escalates to the next step. Both attempts
stay in the ledger under one request id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from spendgate.config import Deployment
from spendgate.routing.checks import Verdict, answer_from_anthropic, answer_from_openai, compile_checks, judge, prompt_checks
from spendgate.routing.schema import Cascade, LogprobCheck


@dataclass(slots=True)
class Skip:
    probability: float  # the learned check's estimate that the cheap step would succeed
    threshold: float


class CompiledCascade:
    def __init__(self, spec: Cascade) -> None:
        from spendgate.routing.learned import LearnedRouter  # numpy and the embedder: only when configured

        self.spec = spec
        self.name = spec.name
        self.checks = compile_checks(spec.checks)
        learned = [(LearnedRouter.load(c.model_path), c) for c in prompt_checks(spec.checks)]
        self.before = [(r, c) for r, c in learned if not r.needs_answers]  # prompt-only: may skip the step
        self.after = [(r, c) for r, c in learned if r.needs_answers]  # verifiers: judge the answer
        self.wants_logprobs = any(isinstance(c, LogprobCheck) for c in spec.checks)

    def skip(self, prompt: str, tags: dict[str, str]) -> Skip | None:
        """Skip the cheap step when a learned check predicts it would fail."""
        for router, check in self.before:
            p = router.predict_one(prompt, tags.get(check.group_tag) if check.group_tag else None)
            if p < check.threshold:
                return Skip(p, check.threshold)
        return None

    def extra(self, dep: Deployment, endpoint: str) -> dict[str, Any] | None:
        """Request fields a check needs from the cheap model (its token log-probabilities)."""
        if self.wants_logprobs and dep.wire == "openai" and endpoint in ("chat.completions", "messages"):  # upstream: chat
            return {"logprobs": True}
        return None

    def judge(self, body: dict[str, Any], dep: Deployment, prompt: str, tags: dict[str, str]) -> Verdict:
        """The checks' verdict on a step's answer, in the upstream's own format
        (log-probabilities are lost in translation)."""
        answer = answer_from_anthropic(body) if dep.wire == "anthropic" else answer_from_openai(body)
        verdict = judge(self.checks, answer)
        if not verdict.ok:
            return verdict
        for router, check in self.after:
            p = router.predict_one(prompt, tags.get(check.group_tag) if check.group_tag else None, answer=answer.text)
            if p < check.threshold:
                return Verdict(False, "learned", f"p={p:.3f}<{check.threshold:g}")
        return verdict


def strip_logprobs(body: bytes, client_asked: bool) -> bytes:
    """Remove log-probabilities the gateway asked for and the client did not."""
    if client_asked or b'"logprobs"' not in body:
        return body
    data = orjson.loads(body)
    for choice in data.get("choices") or ():
        if isinstance(choice, dict) and "logprobs" in choice:
            choice["logprobs"] = None
    return orjson.dumps(data)
