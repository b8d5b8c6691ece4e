"""Cascade answer checks: the neutral Answer from each wire, each check kind, judge()."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from pydantic import TypeAdapter

from spendgate.routing.checks import (
    Answer,
    ToolCall,
    answer_from_anthropic,
    answer_from_openai,
    compile_checks,
    judge,
    prompt_checks,
    strip_fence,
)
from spendgate.routing.schema import (
    Cascade,
    Check,
    JsonSchemaCheck,
    LearnedCheck,
    LogprobCheck,
    RefusalCheck,
    RegexCheck,
    RequiredFieldsCheck,
)

CHECK = TypeAdapter(Check)

# --- bodies shaped as the real APIs return them ---------------------------------------------


def lp_content(pairs: list[tuple[str, float]]) -> list[dict[str, Any]]:
    return [
        {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}]}
        for t, lp in pairs
    ]


CONFIDENT = [("The", -0.0001), (" capital", -0.002), (" of", -0.0), (" France", -0.01), (" is", -0.0003), (" Paris", -0.04), (".", -0.001)]
UNSURE = [("The", -0.3), (" answer", -1.2), (" is", -0.05), (" probably", -2.1), (" 42", -1.7), (".", -0.2)]
ONE_BAD_TOKEN = [("The", -0.001), (" capital", -0.001), (" is", -0.001), (" Lyon", -2.5), (".", -0.001)]  # mean ≈ -0.5


def openai_chat(
    content: str | None,
    *,
    logprobs: list[tuple[str, float]] | None = None,
    finish: str = "stop",
    tool_calls: list[dict[str, Any]] | None = None,
    refusal: str | None = None,
    extra_choices: int = 0,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal, "annotations": []}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None if logprobs is None else {"content": lp_content(logprobs) if content else None, "refusal": None},
        "finish_reason": finish,
    }
    others = [
        {"index": i + 1, "message": {"role": "assistant", "content": "other choice", "refusal": None}, "logprobs": None, "finish_reason": "stop"}
        for i in range(extra_choices)
    ]
    return {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [choice, *others],
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 10,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }


def openai_tool_call(name: str, arguments: str, call_id: str = "call_12345xyz") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def openai_legacy(text: str, token_logprobs: list[float | None] | None, finish: str = "stop") -> dict[str, Any]:
    lp = None
    if token_logprobs is not None:
        lp = {
            "tokens": [f"t{i}" for i in range(len(token_logprobs))],
            "token_logprobs": token_logprobs,
            "top_logprobs": [None] * len(token_logprobs),
            "text_offset": list(range(len(token_logprobs))),
        }
    return {
        "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
        "object": "text_completion",
        "created": 1589478378,
        "model": "gpt-3.5-turbo-instruct",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"text": text, "index": 0, "logprobs": lp, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


def anthropic_msg(blocks: list[dict[str, Any]], stop: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-20241022",
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    }


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def tool_use_block(name: str, input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": name, "input": input}


def checks(*specs: dict[str, Any]) -> list[Any]:
    return compile_checks([CHECK.validate_python(s) for s in specs])


def verdict(specs: list[dict[str, Any]], answer: Answer):  # noqa: ANN201
    return judge(checks(*specs), answer)


# --- Answer from each wire --------------------------------------------------------------------


def test_answer_from_openai_chat() -> None:
    a = answer_from_openai(openai_chat("The capital of France is Paris.", logprobs=CONFIDENT))
    assert a.text == "The capital of France is Paris."
    assert a.tool_calls == () and a.finish_reason == "stop" and not a.truncated and a.refusal is None
    assert a.logprobs is not None and len(a.logprobs) == len(CONFIDENT)
    assert a.logprobs[5] == -0.04


def test_answer_from_openai_first_choice_only() -> None:
    body = openai_chat("first", extra_choices=2)
    body["choices"].reverse()  # index 0 is what counts, not list position
    assert answer_from_openai(body).text == "first"


def test_answer_from_openai_without_logprobs_and_tool_calls() -> None:
    body = openai_chat(None, finish="tool_calls", tool_calls=[openai_tool_call("get_weather", '{"location": "Paris, France"}')])
    a = answer_from_openai(body)
    assert a.text == "" and a.logprobs is None
    assert a.tool_calls == (ToolCall("get_weather", '{"location": "Paris, France"}'),)
    assert not a.empty


def test_answer_from_openai_legacy_completions() -> None:
    a = answer_from_openai(openai_legacy("\n\nThis is indeed a test", [None, -0.01, -0.2, -0.05]))
    assert a.text == "\n\nThis is indeed a test"
    assert a.logprobs == (-0.01, -0.2, -0.05)  # an echoed first token has no logprob
    assert answer_from_openai(openai_legacy("x", None)).logprobs is None
    assert answer_from_openai(openai_legacy("x", [-0.1], finish="length")).truncated


def test_answer_from_anthropic() -> None:
    body = anthropic_msg(
        [
            {"type": "thinking", "thinking": "Let me think: I'm not sure yet...", "signature": "EqQBCgIYAhIM"},
            text_block("I'll check the weather. "),
            tool_use_block("get_weather", {"location": "San Francisco, CA"}),
        ],
        stop="tool_use",
    )
    a = answer_from_anthropic(body)
    assert a.text == "I'll check the weather. "  # thinking left out
    assert a.tool_calls == (ToolCall("get_weather", {"location": "San Francisco, CA"}),)
    assert a.logprobs is None and a.finish_reason == "tool_use" and not a.truncated


def test_malformed_bodies_give_an_empty_answer() -> None:
    odd: list[Any] = [{}, {"choices": []}, [], None]
    for a in [*(answer_from_openai(b) for b in odd), *(answer_from_anthropic(b) for b in odd)]:
        assert a.empty
        assert verdict([{"kind": "regex", "pattern": "x", "must_match": False}], a).failed == "empty"


# --- logprob ---------------------------------------------------------------------------------


def test_logprob_passes_on_a_confident_answer() -> None:
    a = answer_from_openai(openai_chat("The capital of France is Paris.", logprobs=CONFIDENT))
    assert verdict([{"kind": "logprob"}], a).ok


def test_logprob_fails_on_a_low_mean() -> None:
    a = answer_from_openai(openai_chat("The answer is probably 42.", logprobs=UNSURE))
    v = verdict([{"kind": "logprob", "min_mean": -0.3}], a)
    assert not v.ok and v.failed == "logprob" and "mean token logprob" in v.detail
    assert verdict([{"kind": "logprob", "min_mean": -1.0}], a).ok


def test_logprob_min_token() -> None:
    a = answer_from_openai(openai_chat("The capital is Lyon.", logprobs=ONE_BAD_TOKEN))
    assert verdict([{"kind": "logprob", "min_mean": -0.6}], a).ok
    v = verdict([{"kind": "logprob", "min_mean": -0.6, "min_token": -2.0}], a)
    assert v.failed == "logprob" and "least likely token" in v.detail


def test_logprob_on_legacy_completions() -> None:
    assert verdict([{"kind": "logprob"}], answer_from_openai(openai_legacy(" Paris", [-0.01, -0.02]))).ok
    assert verdict([{"kind": "logprob"}], answer_from_openai(openai_legacy(" Lyon", [-1.5, -0.9]))).failed == "logprob"


@pytest.mark.parametrize(
    "answer",
    [
        answer_from_openai(openai_chat("Paris.")),  # logprobs not requested
        answer_from_anthropic(anthropic_msg([text_block("Paris.")])),  # never any
        answer_from_openai(openai_chat(None, finish="tool_calls", tool_calls=[openai_tool_call("f", "{}")], logprobs=[])),
    ],
)
def test_logprob_unavailable_both_modes(answer: Answer) -> None:
    v = verdict([{"kind": "logprob"}], answer)  # default: escalate
    assert not v.ok and v.failed == "logprob" and "no logprobs" in v.detail
    assert verdict([{"kind": "logprob", "when_unavailable": "accept"}], answer).ok


# --- json_schema -------------------------------------------------------------------------------

PERSON = {
    "kind": "json_schema",
    "schema": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
}


def test_json_schema_passes_plain_and_fenced() -> None:
    plain = '{"name": "Ada Lovelace", "age": 36}'
    assert verdict([PERSON], answer_from_openai(openai_chat(plain))).ok
    fenced = "```json\n" + json.dumps({"name": "Ada Lovelace", "age": 36}, indent=2) + "\n```"
    assert verdict([PERSON], answer_from_openai(openai_chat(fenced))).ok
    assert verdict([PERSON], answer_from_anthropic(anthropic_msg([text_block("\n" + fenced + "\n")]))).ok


def test_json_schema_fails() -> None:
    wrong_type = answer_from_openai(openai_chat('{"name": "Ada", "age": "thirty-six"}'))
    v = verdict([PERSON], wrong_type)
    assert v.failed == "json_schema" and "age" in v.detail
    missing = answer_from_anthropic(anthropic_msg([text_block('{"name": "Ada"}')]))
    assert verdict([PERSON], missing).failed == "json_schema"
    prose = answer_from_anthropic(anthropic_msg([text_block("Sure! Ada Lovelace was 36.")]))
    v = verdict([PERSON], prose)
    assert v.failed == "json_schema" and "not JSON" in v.detail


def test_strip_fence() -> None:
    assert strip_fence('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_fence('```\n[1, 2]\n```') == "[1, 2]"
    assert strip_fence('  ```JSON\r\n{"a": 1}\r\n```  ') == '{"a": 1}'
    assert strip_fence('{"a": 1}') == '{"a": 1}'
    # prose around a fence is not a JSON answer
    assert strip_fence('Here it is:\n```json\n{"a": 1}\n```') == 'Here it is:\n```json\n{"a": 1}\n```'


def test_json_schema_on_tool_calls() -> None:
    schema = {"kind": "json_schema", "schema": {"type": "object", "required": ["location"], "properties": {"location": {"type": "string"}}}}
    good = openai_chat(None, finish="tool_calls", tool_calls=[openai_tool_call("get_weather", '{"location": "Boston, MA"}')])
    assert verdict([schema], answer_from_openai(good)).ok
    bad_args = openai_chat(None, finish="tool_calls", tool_calls=[openai_tool_call("get_weather", '{"city": "Boston"}')])
    assert verdict([schema], answer_from_openai(bad_args)).failed == "json_schema"
    broken = openai_chat(None, finish="tool_calls", tool_calls=[openai_tool_call("get_weather", '{"location": "Bos')])
    v = verdict([schema], answer_from_openai(broken))
    assert v.failed == "json_schema" and "get_weather" in v.detail and "not JSON" in v.detail
    # every call is checked
    two = openai_chat(
        None,
        finish="tool_calls",
        tool_calls=[openai_tool_call("get_weather", '{"location": "Boston"}', "call_1"), openai_tool_call("get_weather", "{}", "call_2")],
    )
    assert verdict([schema], answer_from_openai(two)).failed == "json_schema"
    # Anthropic: the input object; the text preamble is not what is validated
    anth = anthropic_msg([text_block("Let me look that up."), tool_use_block("get_weather", {"location": "Boston"})], "tool_use")
    assert verdict([schema], answer_from_anthropic(anth)).ok
    anth_bad = anthropic_msg([tool_use_block("get_weather", {"unit": "celsius"})], "tool_use")
    assert verdict([schema], answer_from_anthropic(anth_bad)).failed == "json_schema"


def test_json_schema_formats_and_local_refs() -> None:
    spec = {
        "kind": "json_schema",
        "schema": {
            "$defs": {"Event": {"type": "object", "properties": {"on": {"type": "string", "format": "date"}}, "required": ["on"]}},
            "type": "array",
            "items": {"$ref": "#/$defs/Event"},
        },
    }
    assert verdict([spec], answer_from_openai(openai_chat('[{"on": "2024-03-01"}]'))).ok
    v = verdict([spec], answer_from_openai(openai_chat('[{"on": "2024-03-01"}, {"on": "next Tuesday"}]')))
    assert v.failed == "json_schema" and "1/on" in v.detail


def test_invalid_schema_and_regex_rejected_at_compile() -> None:
    with pytest.raises(ValueError, match="invalid schema"):
        checks({"kind": "json_schema", "schema": {"type": "objekt"}})
    with pytest.raises(ValueError, match="points at nothing"):
        checks({"kind": "json_schema", "schema": {"properties": {"a": {"$ref": "#/$defs/Missing"}}}})
    with pytest.raises(ValueError, match="outside the schema"):
        checks({"kind": "json_schema", "schema": {"$ref": "https://example.com/person.json"}})
    with pytest.raises(ValueError, match="invalid pattern"):
        checks({"kind": "regex", "pattern": "(unclosed"})


# --- required_fields ---------------------------------------------------------------------------

TRIAGE = {"kind": "required_fields", "fields": ["category", "customer.email", "items.0.sku", "priority"]}


def test_required_fields_pass() -> None:
    body = {"category": "billing", "customer": {"email": "a@b.co"}, "items": [{"sku": "X-1"}], "priority": 0}
    assert verdict([TRIAGE], answer_from_openai(openai_chat(json.dumps(body)))).ok
    fenced = "```json\n" + json.dumps(body) + "\n```"
    assert verdict([TRIAGE], answer_from_anthropic(anthropic_msg([text_block(fenced)]))).ok


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"customer": {"email": "a@b.co"}, "items": [{"sku": "X"}], "priority": 1}, "category"),
        ({"category": "  ", "customer": {"email": "a@b.co"}, "items": [{"sku": "X"}], "priority": 1}, "category"),
        ({"category": "b", "customer": {"email": None}, "items": [{"sku": "X"}], "priority": 1}, "customer.email"),
        ({"category": "b", "customer": "a@b.co", "items": [{"sku": "X"}], "priority": 1}, "customer.email"),
        ({"category": "b", "customer": {"email": "a@b.co"}, "items": [], "priority": 1}, "items.0.sku"),
    ],
)
def test_required_fields_fail(body: dict[str, Any], field: str) -> None:
    v = verdict([TRIAGE], answer_from_openai(openai_chat(json.dumps(body))))
    assert v.failed == "required_fields" and repr(field) in v.detail


def test_required_fields_not_an_object_and_tool_input() -> None:
    assert verdict([TRIAGE], answer_from_openai(openai_chat("[1, 2, 3]"))).failed == "required_fields"
    assert verdict([TRIAGE], answer_from_openai(openai_chat("category: billing"))).failed == "required_fields"
    spec = {"kind": "required_fields", "fields": ["ticket.id", "ticket.tags"]}
    ok = anthropic_msg([tool_use_block("file_ticket", {"ticket": {"id": 7, "tags": ["vip"]}})], "tool_use")
    assert verdict([spec], answer_from_anthropic(ok)).ok
    empty_tags = anthropic_msg([tool_use_block("file_ticket", {"ticket": {"id": 7, "tags": []}})], "tool_use")
    assert verdict([spec], answer_from_anthropic(empty_tags)).failed == "required_fields"
    oa = openai_chat(None, finish="tool_calls", tool_calls=[openai_tool_call("file_ticket", '{"ticket": {"id": 7}}')])
    assert verdict([spec], answer_from_openai(oa)).failed == "required_fields"


# --- regex -------------------------------------------------------------------------------------


def test_regex_must_match() -> None:
    spec = {"kind": "regex", "pattern": r"(?m)^Answer: [A-D]$"}
    assert verdict([spec], answer_from_openai(openai_chat("Reasoning: ...\nAnswer: C"))).ok
    v = verdict([spec], answer_from_anthropic(anthropic_msg([text_block("The answer is C.")])))
    assert v.failed == "regex" and "does not match" in v.detail


def test_regex_must_not_match() -> None:
    spec = {"kind": "regex", "pattern": r"(?i)\b(?:TODO|lorem ipsum)\b", "must_match": False}
    assert verdict([spec], answer_from_openai(openai_chat("def add(a, b):\n    return a + b"))).ok
    v = verdict([spec], answer_from_anthropic(anthropic_msg([text_block("def add(a, b):\n    # todo: implement\n    pass")])))
    assert v.failed == "regex" and "todo" in v.detail


# --- refusal -----------------------------------------------------------------------------------

REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I’m sorry, but I can’t assist with creating malware.",  # curly apostrophes
    "I cannot help with that.",
    "I can't assist with that.",
    "As an AI language model, I don't have personal opinions.",
    "As an AI, I cannot browse the internet.",
    "I'm not sure.",
    "I don't know the answer to that.",
    "I am unable to provide medical diagnoses.",
    "Unfortunately, I cannot share that information.",
    "I apologize, but I won't write that.",
    "I must respectfully decline this request.",
    "Hmm, I'm not certain about this one — it could be 1847 or 1848.",
    "The population figure isn't something I can pin down; I don't have enough information to say.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusal_detected(text: str) -> None:
    spec = {"kind": "refusal"}
    assert verdict([spec], answer_from_openai(openai_chat(text))).failed == "refusal"
    assert verdict([spec], answer_from_anthropic(anthropic_msg([text_block(text)]))).failed == "refusal"


def test_refusal_at_the_start_of_a_long_answer() -> None:
    text = "I'm not able to give legal advice, but here is some general information. " + "Contracts need offer and acceptance. " * 30
    assert verdict([{"kind": "refusal"}], answer_from_openai(openai_chat(text))).failed == "refusal"


HELPFUL = [
    # a hedge deep inside a long helpful answer is not a refusal
    "To reverse a linked list in place, walk it once keeping three pointers: prev, current and next. "
    + "At each step point current.next at prev, then advance all three. " * 6
    + "If you're not sure whether your list has a cycle, run Floyd's algorithm first; I'm not sure your input "
    + "guarantees that, so I don't know that it is safe to skip.",
    "I can't help but notice that your loop never terminates: `i` is never incremented.",
    "Yes. The statement 'I cannot help it' is grammatical; 'can not' is also seen but less common.",
    "The capital of Australia is Canberra.",
    '"I don\'t know" in French is "je ne sais pas".',
    "Explain it the way an AI researcher would: gradients flow backwards through the graph.",
    "Sorry for the confusion earlier — the correct value is 42.",
]


@pytest.mark.parametrize("text", HELPFUL)
def test_refusal_no_false_positives(text: str) -> None:
    assert verdict([{"kind": "refusal"}], answer_from_openai(openai_chat(text))).ok


def test_refusal_extra_phrases() -> None:
    spec = {"kind": "refusal", "extra_phrases": ["Please consult a professional", "¯\\_(ツ)_/¯"]}
    assert verdict([spec], answer_from_openai(openai_chat("please consult a professional about that."))).failed == "refusal"
    assert verdict([spec], answer_from_openai(openai_chat("No idea ¯\\_(ツ)_/¯"))).failed == "refusal"
    assert verdict([{"kind": "refusal"}], answer_from_openai(openai_chat("Please consult a professional."))).ok


def test_provider_flagged_refusals() -> None:
    spec = [{"kind": "refusal"}]
    anth = anthropic_msg([text_block("Here is how to")], stop="refusal")
    v = verdict(spec, answer_from_anthropic(anth))
    assert v.failed == "refusal" and "stop_reason" in v.detail
    oa = openai_chat(None, refusal="I'm sorry, I cannot assist with that request.")
    v = verdict(spec, answer_from_openai(oa))
    assert v.failed == "refusal" and "message.refusal" in v.detail
    assert verdict(spec, answer_from_openai(openai_chat("partial", finish="content_filter"))).failed == "refusal"
    # flagged by the provider: fails whatever checks are configured
    assert verdict([{"kind": "regex", "pattern": "."}], answer_from_anthropic(anth)).failed == "refusal"


# --- truncated, empty, several checks -------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        answer_from_openai(openai_chat('{"name": "Ada", "age": 36', logprobs=CONFIDENT, finish="length")),
        answer_from_openai(openai_legacy('{"name": "Ada"', [-0.01], finish="length")),
        answer_from_anthropic(anthropic_msg([text_block('{"name": "Ada", "age": 36')], stop="max_tokens")),
        answer_from_anthropic(anthropic_msg([text_block('{"name": "Ada"')], stop="model_context_window_exceeded")),
    ],
)
def test_truncated_always_fails(answer: Answer) -> None:
    for spec in (PERSON, {"kind": "logprob", "when_unavailable": "accept"}, {"kind": "regex", "pattern": "Ada"}, {"kind": "refusal"}):
        v = verdict([spec], answer)
        assert not v.ok and v.failed == "truncated" and answer.finish_reason in v.detail
    assert judge([], answer).ok  # no checks configured: nothing to judge


def test_several_checks_all_must_pass_first_failure_named() -> None:
    specs = [
        {"kind": "logprob", "min_mean": -0.5},
        PERSON,
        {"kind": "required_fields", "fields": ["name"]},
        {"kind": "regex", "pattern": "Ada"},
        {"kind": "refusal"},
    ]
    good = [("{\"", -0.01), ("name", -0.0), ("\":\"", -0.0), ("Ada", -0.2), ("\",\"", -0.0), ("age", -0.0), ("\":", -0.0), ("36", -0.3), ("}", -0.0)]
    text = '{"name":"Ada","age":36}'
    assert verdict(specs, answer_from_openai(openai_chat(text, logprobs=good))).ok
    # logprob fails first even though the schema would pass
    assert verdict(specs, answer_from_openai(openai_chat(text, logprobs=UNSURE))).failed == "logprob"
    # logprob passes, the schema fails, and so would the regex: the first failure is named
    text2 = '{"name":"Bob","age":-1}'
    assert verdict(specs, answer_from_openai(openai_chat(text2, logprobs=good))).failed == "json_schema"
    # only the regex fails
    text3 = '{"name":"Grace","age":85}'
    v = verdict(specs, answer_from_openai(openai_chat(text3, logprobs=good)))
    assert v.failed == "regex" and not v.ok


def test_learned_checks_are_prompt_checks() -> None:
    cascade = Cascade.model_validate(
        {
            "name": "faq",
            "steps": ["gpt-4o-mini", "gpt-4o"],
            "checks": [{"kind": "learned", "model_path": "router.npz", "threshold": 0.6}, {"kind": "refusal"}],
        }
    )
    compiled = compile_checks(cascade.checks)
    assert [c.name for c in compiled] == ["refusal"]
    learned = prompt_checks(cascade.checks)
    assert len(learned) == 1 and isinstance(learned[0], LearnedCheck) and learned[0].threshold == 0.6
    # a cascade whose only check is learned judges no answer
    assert compile_checks(prompt_checks(cascade.checks)) == []


def test_schema_objects_compile_directly() -> None:
    compiled = compile_checks(
        [
            LogprobCheck(),
            JsonSchemaCheck(schema={"type": "object"}),
            RequiredFieldsCheck(fields=["a"]),
            RegexCheck(pattern="a"),
            RefusalCheck(),
        ]
    )
    assert [c.name for c in compiled] == ["logprob", "json_schema", "required_fields", "regex", "refusal"]


def test_judge_is_fast() -> None:
    """Text checks judge in microseconds (generous bound: this is a smoke test, not a benchmark)."""
    text_checks = checks({"kind": "regex", "pattern": r"(?i)not sure", "must_match": False}, {"kind": "refusal"}, {"kind": "logprob"})
    long_text = "A helpful, confident answer about linked lists. " * 40
    answer = answer_from_openai(openai_chat(long_text, logprobs=CONFIDENT * 40))
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        v = judge(text_checks, answer)
    per_call = (time.perf_counter() - start) / n
    assert v.ok
    assert per_call < 200e-6, f"{per_call * 1e6:.1f} µs per judge"
    assert math.isfinite(per_call)
