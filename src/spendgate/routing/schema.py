"""Config schema of routing: tiers, the model policy, cascades, balancing and health.

Names a client may send as `model`:
- a public model (a deployment's `serves`), routed to its deployments;
- `auto`: whatever the policy rule matching the call's tags says (else `policy.default`);
- `tier:NAME`: the tier's models, first preferred, the others as failover;
- `cascade:NAME`: the cascade's steps, cheapest first;
- `feature:NAME`: the policy rule for that feature, whatever the call's tags.

A *target* (what a rule's `use`, a tier entry or a fallback names) is one of
the same strings except `auto` and `feature:`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spendgate.controls.schema import check_scope

Strategy = Literal["ordered", "weighted", "least_busy", "latency", "cost"]
ALIAS_PREFIXES = ("tier:", "cascade:", "feature:")
AUTO = "auto"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRoute(Strict):
    """How one public model's deployments share its calls, and where it falls back to."""

    strategy: Strategy | None = None  # None: routing.strategy
    fallbacks: list[str] = Field(default_factory=list)  # targets tried after its own deployments fail
    context_window_fallbacks: list[str] = Field(default_factory=list)  # on "prompt too long" errors


class PolicyRule(Strict):
    """Calls whose tags match get `use`; a client naming another concrete model
    is let through only if `allow` lists it (see `Policy.enforce`)."""

    name: str | None = None
    match: dict[str, str] = Field(default_factory=dict)  # scope syntax: {feature: faq}, {task: "*"}
    use: str
    allow: list[str] = Field(default_factory=list)  # models/targets a client may ask for instead; "*" = any
    enforce: Literal["off", "rewrite", "reject"] | None = None  # None: policy.enforce

    @field_validator("match")
    @classmethod
    def _dims(cls, v: dict[str, str]) -> dict[str, str]:
        return check_scope(v)


class Policy(Strict):
    default: str | None = None  # what `auto` means when no rule matches; None: `auto` is an error then
    rules: list[PolicyRule] = Field(default_factory=list)
    # a matched call that names a concrete model not in the rule's `allow`:
    # off = served as asked; rewrite = served by the rule's `use`; reject = 400
    enforce: Literal["off", "rewrite", "reject"] = "off"


class LogprobCheck(Strict):
    """Confident enough: the answer's mean token log-probability (and, if set,
    its least likely token) at or above the floor. OpenAI-wire deployments only."""

    kind: Literal["logprob"] = "logprob"
    min_mean: float = -0.3
    min_token: float | None = None
    when_unavailable: Literal["escalate", "accept"] = "escalate"


class JsonSchemaCheck(Strict):
    kind: Literal["json_schema"] = "json_schema"
    schema_: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RequiredFieldsCheck(Strict):
    """The answer is a JSON object holding these (dotted) fields, non-empty."""

    kind: Literal["required_fields"] = "required_fields"
    fields: list[str]


class RegexCheck(Strict):
    kind: Literal["regex"] = "regex"
    pattern: str
    must_match: bool = True  # False: the answer must NOT match (e.g. "I'm not sure")


class RefusalCheck(Strict):
    """Refusals and hedges ("I can't help with", "I'm not sure") escalate."""

    kind: Literal["refusal"] = "refusal"
    extra_phrases: list[str] = Field(default_factory=list)


class LearnedCheck(Strict):
    """A classifier trained on outcomes predicts whether the cheap step will do
    well. A prompt-only model runs before the cheap step (below `threshold` the
    step is skipped, unpaid); a verifier model (trained with the cheap answers)
    runs on the answer like the other checks."""

    kind: Literal["learned"] = "learned"
    model_path: str  # written by `spendgate router train`
    threshold: float = Field(0.5, ge=0, le=1)
    group_tag: str | None = None  # the call's tag whose value is the model's task group (e.g. feature)


Check = Annotated[
    Union[LogprobCheck, JsonSchemaCheck, RequiredFieldsCheck, RegexCheck, RefusalCheck, LearnedCheck],
    Field(discriminator="kind"),
]


class Cascade(Strict):
    name: str
    steps: list[str]  # targets, cheapest first; the last step's answer is final
    checks: list[Check] = Field(default_factory=list)  # an answer is kept when every check passes
    baseline: str | None = None  # what savings are measured against; default: the last step

    @model_validator(mode="after")
    def _two_steps(self) -> "Cascade":
        if len(self.steps) < 2:
            raise ValueError(f"cascade {self.name!r}: needs at least two steps")
        return self


class RetryConfig(Strict):
    """Backoff between retries on one deployment: base × 2^(n-1), capped, with
    jitter (a random share of it removed) so clients don't retry in lockstep."""

    backoff_base_s: float = 0.25
    backoff_max_s: float = 8.0
    jitter: float = Field(0.5, ge=0, le=1)


class HealthConfig(Strict):
    """`allowed_fails` failures (429, 5xx, timeouts, connection errors) within
    `window_s` cool a deployment down for `cooldown_s` (doubling up to
    `max_cooldown_s` while probes keep failing); a 429's Retry-After cools it
    for at least that long. A cooled deployment goes last, then gets one probe."""

    allowed_fails: int = Field(3, ge=1)
    window_s: float = 60.0
    cooldown_s: float = 30.0
    max_cooldown_s: float = 300.0
    latency_alpha: float = Field(0.3, gt=0, le=1)  # EWMA weight of the newest latency


class RoutingConfig(Strict):
    strategy: Strategy = "ordered"  # default balancing among a model's deployments
    models: dict[str, ModelRoute] = Field(default_factory=dict)
    tiers: dict[str, list[str]] = Field(default_factory=dict)  # name -> models, first preferred
    policy: Policy = Field(default_factory=Policy)
    cascades: list[Cascade] = Field(default_factory=list)
    baseline: str | None = None  # "always flagship" model for routing savings; None: no routing savings
    retry: RetryConfig = Field(default_factory=RetryConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    max_attempts: int = Field(6, ge=1)  # upstream attempts one call may make, retries and failovers together

    @model_validator(mode="after")
    def _unique_cascades(self) -> "RoutingConfig":
        names = [c.name for c in self.cascades]
        if len(names) != len(set(names)):
            raise ValueError("routing.cascades: duplicate names")
        return self
