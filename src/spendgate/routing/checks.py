"""Answer checks: is the cheap step's answer good enough to keep?

A cascade runs its cheapest step, reads the finished answer through
`answer_from_openai` / `answer_from_anthropic` into a wire-neutral `Answer`,
and asks `judge(checks, answer)`. A failed verdict escalates to the next step;
its `failed` name ("logprob", "json_schema", "required_fields", "regex",
"refusal", "truncated", "empty") goes into the ledger's route reason.

Checks are compiled once, at startup (`compile_checks`): regexes compiled,
JSON-schema validators built. Judging is then pure CPU on one answer, no I/O.

Before any configured check runs, three things fail an answer outright,
whatever the checks are (an answer cannot be judged complete otherwise):
- `truncated`: the provider cut it off at the length limit
  (OpenAI `finish_reason: "length"`, Anthropic `stop_reason: "max_tokens"`,
  `"model_context_window_exceeded"` or `"pause_turn"`);
- `refusal`: the provider itself flagged a refusal (Anthropic
  `stop_reason: "refusal"`, OpenAI `message.refusal` or
  `finish_reason: "content_filter"`);
- `empty`: no text and no tool call.

`LearnedCheck` is not an answer check: it predicts from the prompt, before the
cheap step runs. `compile_checks` skips it; `prompt_checks` hands it to the
cascade runner.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol
from urllib.parse import unquote

import orjson
from jsonschema import SchemaError
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for
from referencing.exceptions import Unresolvable

from spendgate.routing.schema import (
    Check,
    JsonSchemaCheck,
    LearnedCheck,
    LogprobCheck,
    RefusalCheck,
    RegexCheck,
    RequiredFieldsCheck,
)

_OPENAI_TRUNCATED = frozenset({"length"})
_ANTHROPIC_TRUNCATED = frozenset({"max_tokens", "model_context_window_exceeded", "pause_turn"})
_MISSING = object()


# --- the answer, wire-neutral ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: Any  # OpenAI: the JSON string as sent; Anthropic: the `input` object


@dataclass(frozen=True)
class Answer:
    """One finished (non-streamed) answer, as the checks see it."""

    text: str = ""  # the visible text (reasoning/thinking blocks left out)
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None  # as the provider said it
    truncated: bool = False  # cut off by a length limit
    refusal: str | None = None  # the provider's own refusal signal, e.g. "stop_reason: refusal"
    logprobs: tuple[float, ...] | None = None  # per output token; None: not available

    @property
    def empty(self) -> bool:
        return not self.tool_calls and not self.text.strip()

    @cached_property
    def json_subjects(self) -> list[tuple[str, Any]]:
        """What the JSON checks inspect, parsed once per answer: each tool call's
        arguments if the answer calls tools, else its text (a ```json fence
        stripped). Each entry is (label, value), value `_MISSING` when it does not
        parse; the parse error is then the label."""
        if self.tool_calls:
            return [_parse_tool_arguments(tc) for tc in self.tool_calls]
        return [_parse_text(self.text)]


def _choice0(choices: Any) -> dict[str, Any]:
    if not isinstance(choices, list) or not choices:
        return {}
    for c in choices:
        if isinstance(c, dict) and c.get("index", 0) == 0:
            return c
    return choices[0] if isinstance(choices[0], dict) else {}


def answer_from_openai(body: dict[str, Any]) -> Answer:
    """The answer of an OpenAI-wire response: chat.completions or legacy completions.

    Only the first choice (`index` 0) is judged. With `n > 1` the other choices
    ride along with it: the cascade keeps or escalates the response as a whole
    on the first choice's verdict.
    """
    if not isinstance(body, dict):
        return Answer()
    choice = _choice0(body.get("choices"))
    finish = choice.get("finish_reason")
    lp = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None
    message = choice.get("message")
    if isinstance(message, dict):  # chat.completions
        content = message.get("content")
        if isinstance(content, list):  # content parts (some compatible servers)
            text = "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
        else:
            text = content if isinstance(content, str) else ""
        calls: list[ToolCall] = []
        for tc in message.get("tool_calls") or ():
            fn = tc.get("function") if isinstance(tc, dict) else None
            if isinstance(fn, dict):
                calls.append(ToolCall(str(fn.get("name") or ""), fn.get("arguments")))
        fc = message.get("function_call")  # the deprecated single function call
        if not calls and isinstance(fc, dict):
            calls.append(ToolCall(str(fc.get("name") or ""), fc.get("arguments")))
        tokens = lp.get("content") if lp is not None else None
        logprobs = _token_logprobs(tokens) if isinstance(tokens, list) else None
        refusal = message.get("refusal")
        if isinstance(refusal, str) and refusal:  # structured outputs: the model declined the schema
            flagged = f"message.refusal: {_short(refusal, 80)!r}"
        else:
            flagged = _filtered(finish)
        return Answer(text, tuple(calls), finish, finish in _OPENAI_TRUNCATED, flagged, logprobs)
    # legacy completions
    text = choice.get("text")
    values = lp.get("token_logprobs") if lp is not None else None
    logprobs = _floats(values) if isinstance(values, list) else None
    return Answer(
        text if isinstance(text, str) else "",
        (),
        finish,
        finish in _OPENAI_TRUNCATED,
        _filtered(finish),
        logprobs,
    )


def answer_from_anthropic(body: dict[str, Any]) -> Answer:
    """The answer of an Anthropic Messages response: its text blocks joined and
    its tool_use blocks (thinking blocks left out). Anthropic gives no logprobs."""
    if not isinstance(body, dict):
        return Answer()
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in body.get("content") or ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append(ToolCall(str(block.get("name") or ""), block.get("input")))
    stop = body.get("stop_reason")
    refusal = "stop_reason: refusal" if stop == "refusal" else None
    return Answer("".join(texts), tuple(calls), stop, stop in _ANTHROPIC_TRUNCATED, refusal, None)


def _filtered(finish: Any) -> str | None:
    return "finish_reason: content_filter" if finish == "content_filter" else None


def _token_logprobs(tokens: list[Any]) -> tuple[float, ...] | None:
    try:
        return tuple([float(t["logprob"]) for t in tokens]) or None
    except (TypeError, KeyError, ValueError):  # an odd entry somewhere: the careful way
        return _floats(t.get("logprob") for t in tokens if isinstance(t, dict))


def _floats(values: Iterable[Any]) -> tuple[float, ...] | None:
    # the first token of an echoed legacy completion has no logprob (null)
    out = tuple(float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
    return out or None


# --- JSON helpers -----------------------------------------------------------------------

_FENCE = re.compile(r"\A```[ \t]*(?:json[c5]?)?[ \t]*\r?\n(.*?)\r?\n?[ \t]*```\Z", re.DOTALL | re.IGNORECASE)


def strip_fence(text: str) -> str:
    """The inside of a ```json (or bare ```) fence wrapping the whole text; else the text."""
    text = text.strip()
    if text.startswith("```"):
        m = _FENCE.match(text)
        if m is not None:
            return m.group(1)
    return text


def _loads(raw: str | bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # what orjson refuses but Python reads (integers beyond 64 bits)


def _parse_text(text: str) -> tuple[str, Any]:
    try:
        return "answer", _loads(strip_fence(text))
    except ValueError as e:
        return f"answer is not JSON ({_short(str(e))})", _MISSING


def _parse_tool_arguments(tc: ToolCall) -> tuple[str, Any]:
    label = f"tool call {tc.name!r}"
    if not isinstance(tc.arguments, (str, bytes)):
        return label, tc.arguments  # Anthropic: already an object
    try:
        return label, _loads(tc.arguments)
    except ValueError as e:
        return f"{label}: arguments are not JSON ({_short(str(e))})", _MISSING


def _short(s: str, limit: int = 160) -> str:
    return s if len(s) <= limit else s[: limit - 1] + "…"


# --- the checks -------------------------------------------------------------------------


class AnswerCheck(Protocol):
    """A compiled check: `name` goes into the verdict; calling it returns None
    when the answer passes, else what failed, in a few words."""

    name: str

    def __call__(self, answer: Answer) -> str | None: ...


class LogprobGate:
    """Mean token logprob at or above `min_mean`, and (if set) every token at or above `min_token`."""

    name = "logprob"
    __slots__ = ("min_mean", "min_token", "accept_unavailable")

    def __init__(self, spec: LogprobCheck) -> None:
        self.min_mean = spec.min_mean
        self.min_token = spec.min_token
        self.accept_unavailable = spec.when_unavailable == "accept"

    def __call__(self, answer: Answer) -> str | None:
        lps = answer.logprobs
        if not lps:
            return None if self.accept_unavailable else "no logprobs in the answer (when_unavailable: escalate)"
        mean = sum(lps) / len(lps)
        if mean < self.min_mean:
            return f"mean token logprob {mean:.3f} < {self.min_mean} over {len(lps)} tokens"
        if self.min_token is not None:
            low = min(lps)
            if low < self.min_token:
                return f"least likely token logprob {low:.3f} < {self.min_token}"
        return None


class JsonSchemaGate:
    """The answer (or each tool call's arguments) is JSON valid against the schema
    (its `$schema` draft, else 2020-12). `format` is asserted for the formats
    jsonschema checks without extra packages (date, email, ipv4, uuid, ...).
    `$ref`s must point inside the schema: nothing is fetched."""

    name = "json_schema"
    __slots__ = ("validator",)

    def __init__(self, spec: JsonSchemaCheck) -> None:
        schema = spec.schema_
        cls = validator_for(schema)
        try:
            cls.check_schema(schema)
        except SchemaError as e:
            raise ValueError(f"json_schema check: invalid schema: {e.message}") from None
        _check_refs(schema)
        self.validator = cls(schema, format_checker=cls.FORMAT_CHECKER)

    def __call__(self, answer: Answer) -> str | None:
        for label, value in answer.json_subjects:
            if value is _MISSING:
                return label
            try:
                valid = self.validator.is_valid(value)
            except Unresolvable as e:  # a $ref _check_refs could not vet (an anchor, a bundled $id)
                return f"schema $ref does not resolve: {_short(str(e))}"
            if not valid:
                err = best_match(self.validator.iter_errors(value))
                where = "/".join(str(p) for p in err.absolute_path) if err is not None else ""
                msg = err.message if err is not None else "invalid"
                return f"{label} fails the schema{' at ' + where if where else ''}: {_short(msg)}"
        return None


def _check_refs(schema: Any) -> None:
    """Reject, at startup, `$ref`s that point outside the schema or at nothing."""
    bundled = False  # a schema bundling others under their own $id: leave their refs to jsonschema

    def refs(node: Any) -> Iterable[str]:
        nonlocal bundled
        if isinstance(node, dict):
            if node is not schema and isinstance(node.get("$id"), str):
                bundled = True
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for v in node.values():
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    found = list(refs(schema))
    for ref in found:
        if ref == "#" or ref.startswith("#/"):
            target: Any = schema
            for token in ref[2:].split("/") if ref != "#" else ():
                token = unquote(token).replace("~1", "/").replace("~0", "~")
                if isinstance(target, dict) and token in target:
                    target = target[token]
                elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                    target = target[int(token)]
                else:
                    raise ValueError(f"json_schema check: $ref {ref!r} points at nothing in the schema")
        elif not ref.startswith("#") and not bundled:
            raise ValueError(f"json_schema check: $ref {ref!r} points outside the schema (nothing is fetched)")


class RequiredFieldsGate:
    """The answer (or each tool call's arguments) is a JSON object with every
    dotted field present and non-empty (not null, "", [] or {}; 0 and false count).
    A numeric segment indexes a list: `items.0.id`."""

    name = "required_fields"
    __slots__ = ("paths",)

    def __init__(self, spec: RequiredFieldsCheck) -> None:
        self.paths = [(f, tuple(f.split("."))) for f in spec.fields]

    def __call__(self, answer: Answer) -> str | None:
        for label, value in answer.json_subjects:
            if value is _MISSING:
                return label
            if not isinstance(value, dict):
                return f"{label} is not a JSON object"
            for dotted, parts in self.paths:
                if _is_blank(_get(value, parts)):
                    return f"{label}: field {dotted!r} missing or empty"
        return None


def _get(value: Any, parts: tuple[str, ...]) -> Any:
    for p in parts:
        if isinstance(value, dict):
            value = value.get(p, _MISSING)
        elif isinstance(value, list) and p.isdigit() and int(p) < len(value):
            value = value[int(p)]
        else:
            return _MISSING
    return value


def _is_blank(v: Any) -> bool:
    if v is _MISSING or v is None:
        return True
    if isinstance(v, str):
        return not v.strip()
    if isinstance(v, (list, dict)):
        return not v
    return False


class RegexGate:
    """`re.search(pattern)` on the answer text must match (or, `must_match: false`,
    must not). Flags go inline: `(?i)not sure`. A tool-call-only answer has no text."""

    name = "regex"
    __slots__ = ("rx", "must_match")

    def __init__(self, spec: RegexCheck) -> None:
        try:
            self.rx = re.compile(spec.pattern)
        except re.error as e:
            raise ValueError(f"regex check: invalid pattern {spec.pattern!r}: {e}") from None
        self.must_match = spec.must_match

    def __call__(self, answer: Answer) -> str | None:
        m = self.rx.search(answer.text)
        if self.must_match and m is None:
            return f"answer does not match {self.rx.pattern!r}"
        if not self.must_match and m is not None:
            return f"answer matches {self.rx.pattern!r}: {_short(m.group(0), 60)!r}"
        return None


# Conservative on purpose: each phrase is a refusal or a hedge about the answer
# itself, not words that also occur in ordinary helpful prose. Apostrophes are
# normalised to ' before matching.
_CANT = r"(?:can't|cannot|can not|won't|will not|am unable|'m unable|am not able|'m not able)"
_WONT = r"i (?:can't|cannot|can not|won't|will not) "
REFUSAL_PATTERNS: tuple[str, ...] = (
    r"(?:i'm|i am) sorry,? but i " + _CANT,
    r"i apologi[sz]e,? but i " + _CANT,
    r"unfortunately,? i " + _CANT,
    _WONT + r"(?:help|assist)(?! but\b| it\b| feeling| thinking| wondering| noticing)",  # "I can't help but..."
    _WONT + r"(?:provide|comply|fulfill|support|answer|do that|share|create|generate|give)",
    r"(?:i'm|i am) (?:unable|not able) to",
    r"i won't be able to",
    r"i (?:must|have to|need to) (?:respectfully )?decline",
    r"(?:i'm|i am) not (?:in a position|comfortable|allowed|permitted) to",
    r"as an ai(?: (?:language )?model| assistant)?,? i\b",
    r"(?:i'm|i am) (?:not sure|not certain|uncertain)",
    r"i(?: really)? (?:don't|do not) know",
    r"i (?:don't|do not) have (?:enough|sufficient|the necessary) (?:information|context|data)",
    r"i (?:don't|do not) have (?:access to|the ability to)",
    r"i (?:cannot|can't|can not) (?:determine|verify|confirm|be (?:sure|certain))",
)
REFUSAL_HEAD_CHARS = 200  # a refusal opens the answer: search its first sentence or two...
REFUSAL_SHORT_CHARS = 400  # ...or the whole answer when it is this short (the refusal is its gist)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'"})


class RefusalGate:
    """Refusals and hedges in English, near the start of the answer (its first
    REFUSAL_HEAD_CHARS) or anywhere in a short answer (≤ REFUSAL_SHORT_CHARS),
    so "I'm not sure" deep inside a long helpful answer does not count.
    `extra_phrases` are literal, case-insensitive, matched the same way; to
    reject a phrase anywhere, use a regex check with `must_match: false`."""

    name = "refusal"
    __slots__ = ("rx",)

    def __init__(self, spec: RefusalCheck) -> None:
        phrases = [p.translate(_APOSTROPHES).strip().lower() for p in spec.extra_phrases if p.strip()]
        # \b only where the phrase starts/ends with a word character ("as an ai" ≠ "as an aide")
        extra = [(r"\b" if p[0].isalnum() else "") + re.escape(p) + (r"\b" if p[-1].isalnum() else "") for p in phrases]
        # a phrase right after a quote mark is quoted, not said: "'I don't know' in French is..."
        builtin = r"(?<![\"'`\u201c\u00ab])\b(?:" + "|".join(REFUSAL_PATTERNS) + ")"
        # one pattern over lower-cased text: ~10x faster than re.IGNORECASE over separate alternatives
        self.rx = re.compile("|".join([builtin, *extra]))

    def __call__(self, answer: Answer) -> str | None:
        text = answer.text.strip()
        window = text if len(text) <= REFUSAL_SHORT_CHARS else text[:REFUSAL_HEAD_CHARS]
        m = self.rx.search(window.lower().translate(_APOSTROPHES))
        return None if m is None else f"refusal or hedge: {m.group(0)!r}"


_GATES: dict[type, type] = {
    LogprobCheck: LogprobGate,
    JsonSchemaCheck: JsonSchemaGate,
    RequiredFieldsCheck: RequiredFieldsGate,
    RegexCheck: RegexGate,
    RefusalCheck: RefusalGate,
}


def compile_checks(specs: Iterable[Check]) -> list[AnswerCheck]:
    """The answer checks of a cascade, ready to judge with, in config order.
    Learned checks are skipped (see `prompt_checks`). Raises ValueError on an
    invalid regex or JSON schema."""
    out: list[AnswerCheck] = []
    for spec in specs:
        if isinstance(spec, LearnedCheck):
            continue
        gate = _GATES.get(type(spec))
        if gate is None:
            raise TypeError(f"not an answer check: {spec!r}")
        out.append(gate(spec))
    return out


def prompt_checks(specs: Iterable[Check]) -> list[LearnedCheck]:
    """The checks that judge the prompt before the cheap step (learned routers)."""
    return [s for s in specs if isinstance(s, LearnedCheck)]


# --- the verdict ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    failed: str | None = None  # the first failing check's name
    detail: str = ""


KEEP = Verdict(True)


def judge(checks: Sequence[AnswerCheck], answer: Answer) -> Verdict:
    """Keep the answer when every check passes; else name the first that fails.
    No checks: always kept. With any check, a truncated, provider-refused or
    empty answer fails first (see the module docstring)."""
    if not checks:
        return KEEP
    if answer.truncated:
        return Verdict(False, "truncated", f"cut off before it finished ({answer.finish_reason})")
    if answer.refusal is not None:
        return Verdict(False, "refusal", f"the provider flagged a refusal ({answer.refusal})")
    if answer.empty:
        return Verdict(False, "empty", "no text and no tool call")
    for check in checks:
        detail = check(answer)
        if detail is not None:
            return Verdict(False, check.name, detail)
    return KEEP
