"""Cross-format translation: OpenAI Chat Completions <-> Anthropic Messages.

Translated bodies are checked field by field and, where the SDKs define them,
against the official pydantic models, so a drift from either API fails here.
"""

from __future__ import annotations

import collections.abc
import copy
import json
from typing import Any

import orjson
import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from anthropic.types.shared import ErrorResponse
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk, completion_create_params

from spendgate.pricing.catalog import TokenUsage
from spendgate.wire.translate_request import (
    DEFAULT_MAX_TOKENS,
    TranslationError,
    anthropic_to_openai_chat,
    openai_chat_to_anthropic,
)
from spendgate.wire.translate_response import (
    anthropic_error_to_openai,
    anthropic_response_to_openai,
    openai_error_to_anthropic,
    openai_response_to_anthropic,
)
from spendgate.wire.translate_stream import AnthropicStreamToOpenAI, OpenAIStreamToAnthropic

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg=="
PDF_B64 = "JVBERi0xLjQKJcfsj6IK"
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}

_STREAM_EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)
_ANTHROPIC_PARAMS = pydantic.TypeAdapter(MessageCreateParamsNonStreaming)
_OPENAI_PARAMS = pydantic.TypeAdapter(completion_create_params.CompletionCreateParamsNonStreaming)


def _materialize(value: Any) -> Any:
    """SDK params are TypedDicts with lazily validated iterables: force every level."""
    if isinstance(value, dict):
        return {k: _materialize(v) for k, v in value.items()}
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, collections.abc.Iterable):
        return [_materialize(v) for v in value]
    return value


def assert_anthropic_params(body: dict[str, Any]) -> None:
    params = {k: v for k, v in body.items() if k != "stream"}
    _materialize(_ANTHROPIC_PARAMS.validate_python(params))


def assert_openai_params(body: dict[str, Any]) -> None:
    params = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    _materialize(_OPENAI_PARAMS.validate_python(params))


def weather_tool() -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather for a city", "parameters": WEATHER_SCHEMA},
    }


def tool_conversation() -> dict[str, Any]:
    """An OpenAI conversation with two parallel tool calls and their results."""
    return {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "24C cloudy"},
            {"role": "user", "content": "Which is warmer?"},
        ],
        "tools": [weather_tool()],
    }


# =================================================== OpenAI request -> Anthropic


def test_system_and_developer_messages_become_one_system_prompt() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hi"},
        ]
    }
    out = openai_chat_to_anthropic(body, "claude-sonnet-4-5")
    assert out["system"] == "Be brief.\n\nAnswer in French."
    assert out["model"] == "claude-sonnet-4-5"
    assert out["messages"] == [{"role": "user", "content": "Hi"}]
    assert_anthropic_params(out)


def test_max_tokens_default_and_precedence() -> None:
    msgs = [{"role": "user", "content": "Hi"}]
    assert openai_chat_to_anthropic({"messages": msgs}, "m")["max_tokens"] == DEFAULT_MAX_TOKENS == 4096
    assert openai_chat_to_anthropic({"messages": msgs, "max_tokens": 77}, "m")["max_tokens"] == 77
    both = {"messages": msgs, "max_tokens": 77, "max_completion_tokens": 99}
    assert openai_chat_to_anthropic(both, "m")["max_tokens"] == 99


def test_consecutive_same_role_messages_are_merged() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "five"},
        ]
    }
    out = openai_chat_to_anthropic(body, "m")
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}]},
        {"role": "user", "content": "five"},
    ]


def test_images_as_data_url_and_http_url() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    {"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{PNG_B64}"}},
                ],
            }
        ]
    }
    content = openai_chat_to_anthropic(body, "m")["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "What is in these?"}
    assert content[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    assert content[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    assert content[3]["source"]["media_type"] == "image/jpeg"  # image/jpg is not an IANA type
    assert_anthropic_params(openai_chat_to_anthropic(body, "m"))


def test_unsupported_image_type_and_audio_are_refused() -> None:
    bmp = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AAAA"}}]}
    with pytest.raises(TranslationError, match="image/bmp"):
        openai_chat_to_anthropic({"messages": [bmp]}, "m")
    audio = {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}
    with pytest.raises(TranslationError, match="audio"):
        openai_chat_to_anthropic({"messages": [audio]}, "m")


def test_inline_pdf_becomes_document_block() -> None:
    part = {"type": "file", "file": {"filename": "report.pdf", "file_data": f"data:application/pdf;base64,{PDF_B64}"}}
    out = openai_chat_to_anthropic({"messages": [{"role": "user", "content": [part]}]}, "m")
    assert out["messages"][0]["content"] == [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64}, "title": "report.pdf"}
    ]
    with pytest.raises(TranslationError, match="file_id"):
        openai_chat_to_anthropic({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]}]}, "m")


def test_tool_calls_and_tool_results() -> None:
    out = openai_chat_to_anthropic(tool_conversation(), "m")
    assert out["system"] == "You are terse."
    assert out["tools"] == [{"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER_SCHEMA}]
    assert "tool_choice" not in out  # OpenAI's default is auto, as is Anthropic's
    user, assistant, results = out["messages"]
    assert user == {"role": "user", "content": "Weather in Paris and Rome?"}
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
        ],
    }
    # both tool messages and the next user message form one user turn, results first
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "24C cloudy"},
            {"type": "text", "text": "Which is warmer?"},
        ],
    }
    assert_anthropic_params(out)


def test_assistant_text_with_tool_call_and_odd_arguments() -> None:
    calls = [
        {"id": "call.1:x", "type": "function", "function": {"name": "f", "arguments": "{not json"}},
        {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": ""}},
        {"id": "call_3", "type": "function", "function": {"name": "h", "arguments": "[1, 2]"}},
    ]
    body = {
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": "Calling.", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call.1:x", "content": [{"type": "text", "text": "done"}]},
        ]
    }
    out = openai_chat_to_anthropic(body, "m")
    blocks = out["messages"][1]["content"]
    assert blocks[0] == {"type": "text", "text": "Calling."}
    assert blocks[1] == {"type": "tool_use", "id": "call_1_x", "name": "f", "input": {"_raw": "{not json"}}
    assert blocks[2]["input"] == {}
    assert blocks[3]["input"] == {"_raw": "[1, 2]"}  # input must be an object
    # the sanitized id is applied consistently, so the result still matches its call
    assert out["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "call_1_x", "content": "done"}]


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
    ],
)
def test_tool_choice_mapping(choice: Any, parallel: Any, expected: dict[str, Any]) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "tools": [weather_tool()]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    out = openai_chat_to_anthropic(body, "m")
    assert out["tool_choice"] == expected
    assert_anthropic_params(out)


def test_allowed_tools_choice_filters_tools() -> None:
    other = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [weather_tool(), other],
        "tool_choice": {
            "type": "allowed_tools",
            "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "other"}}]},
        },
    }
    out = openai_chat_to_anthropic(body, "m")
    assert [t["name"] for t in out["tools"]] == ["other"]
    assert out["tool_choice"] == {"type": "any"}


def test_tool_choice_without_tools_is_dropped() -> None:
    out = openai_chat_to_anthropic({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}, "m")
    assert "tool_choice" not in out and "tools" not in out


def test_strict_tool_and_missing_parameters() -> None:
    tool = {"type": "function", "function": {"name": "now", "strict": True}}
    out = openai_chat_to_anthropic({"messages": [{"role": "user", "content": "hi"}], "tools": [tool]}, "m")
    assert out["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}, "strict": True}]


def test_sampling_stop_user_stream_and_dropped_fields() -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 1.7,
        "top_p": 0.9,
        "stop": "END",
        "user": "user-42",
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 1,
        "seed": 7,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.5,
        "logit_bias": {"50256": -100},
        "logprobs": True,
        "top_logprobs": 3,
        "reasoning_effort": "high",
        "metadata": {"team": "search"},
    }
    out = openai_chat_to_anthropic(body, "m")
    assert out == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4096,
        "temperature": 1.0,  # clamped into Anthropic's 0..1
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "stream": True,
    }
    listed = openai_chat_to_anthropic({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b"], "temperature": 0.3}, "m")
    assert listed["stop_sequences"] == ["a", "b"] and listed["temperature"] == 0.3


def test_n_greater_than_one_is_refused() -> None:
    with pytest.raises(TranslationError, match=r"n=3 .*Anthropic"):
        openai_chat_to_anthropic({"messages": [{"role": "user", "content": "hi"}], "n": 3}, "m")


def test_deprecated_functions_are_refused() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "functions": [{"name": "f", "parameters": {}}]}
    with pytest.raises(TranslationError, match="functions"):
        openai_chat_to_anthropic(body, "m")


def test_response_format_becomes_a_system_instruction() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    body = {
        "messages": [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    }
    system = openai_chat_to_anthropic(body, "m")["system"]
    assert system.startswith("Be helpful.\n\n")
    assert json.dumps(schema, separators=(",", ":")) in system
    plain = openai_chat_to_anthropic({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}, "m")
    assert "JSON object" in plain["system"]


def test_final_assistant_prefill_is_right_trimmed() -> None:
    body = {"messages": [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "1, 2, "}]}
    out = openai_chat_to_anthropic(body, "m")
    assert out["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "1, 2,"}]}


def test_input_body_is_not_mutated() -> None:
    body = tool_conversation()
    before = copy.deepcopy(body)
    openai_chat_to_anthropic(body, "m")
    assert body == before


# =================================================== Anthropic request -> OpenAI


def test_anthropic_system_blocks_and_cache_control() -> None:
    body = {
        "model": "claude",
        "max_tokens": 300,
        "system": [
            {"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "More rules."},
        ],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}],
    }
    out = anthropic_to_openai_chat(body, "gpt-4o")
    assert out["model"] == "gpt-4o"
    assert out["max_tokens"] == 300
    assert out["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "Rules."}, {"type": "text", "text": "More rules."}]},
        {"role": "user", "content": "Hi"},
    ]
    assert "cache_control" not in orjson.dumps(out).decode()
    string_system = anthropic_to_openai_chat({"max_tokens": 5, "system": "Be nice.", "messages": []}, "gpt-4o")
    assert string_system["messages"] == [{"role": "system", "content": "Be nice."}]
    assert_openai_params(out)


def test_anthropic_tool_use_and_results() -> None:
    body = {
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "need the tool", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Also, hurry."},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                ],
            },
        ],
    }
    out = anthropic_to_openai_chat(body, "gpt-4o")
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},  # before the remaining user content
        {"role": "user", "content": "Also, hurry."},
    ]
    assert_openai_params(out)


def test_anthropic_tool_result_error_and_image() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    body = {
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "disk full", "is_error": True},
                    {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "shot"}, image]},
                ],
            }
        ],
    }
    out = anthropic_to_openai_chat(body, "gpt-4o")["messages"]
    assert out[0] == {"role": "tool", "tool_call_id": "t1", "content": "Error: disk full"}
    assert out[1] == {"role": "tool", "tool_call_id": "t2", "content": "shot"}
    # OpenAI tool messages carry text only; the image follows as user content
    assert out[2] == {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}]}


def test_anthropic_images_and_documents_to_parts() -> None:
    body = {
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64}},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
                    {"type": "text", "text": "Summarize"},
                ],
            }
        ],
    }
    parts = anthropic_to_openai_chat(body, "gpt-4o")["messages"][0]["content"]
    assert parts == [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "file", "file": {"filename": "document.pdf", "file_data": f"data:application/pdf;base64,{PDF_B64}"}},
        {"type": "text", "text": "notes"},
        {"type": "text", "text": "Summarize"},
    ]


@pytest.mark.parametrize(
    ("choice", "expected_choice", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}, None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
    ],
)
def test_anthropic_tools_and_tool_choice(choice: dict[str, Any], expected_choice: Any, parallel: Any) -> None:
    tool = {"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER_SCHEMA, "cache_control": {"type": "ephemeral"}}
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "tools": [tool], "tool_choice": choice}
    out = anthropic_to_openai_chat(body, "gpt-4o")
    assert out["tools"] == [weather_tool()]
    assert out["tool_choice"] == expected_choice
    assert out.get("parallel_tool_calls") == parallel
    assert_openai_params(out)


def test_anthropic_server_tools_are_refused() -> None:
    body = {"max_tokens": 10, "messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    with pytest.raises(TranslationError, match="web_search_20250305"):
        anthropic_to_openai_chat(body, "gpt-4o")


def test_anthropic_params_stop_user_stream_and_dropped() -> None:
    body = {
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.4,
        "top_p": 0.8,
        "top_k": 40,
        "metadata": {"user_id": "u-9"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "service_tier": "auto",
        "stream": True,
    }
    out = anthropic_to_openai_chat(body, "gpt-4o")
    assert out == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 64,
        "temperature": 0.4,
        "top_p": 0.8,
        "stop": ["\n\nHuman:"],
        "user": "u-9",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    reasoning = anthropic_to_openai_chat(body, "o3", max_tokens_field="max_completion_tokens")
    assert reasoning["max_completion_tokens"] == 64 and "max_tokens" not in reasoning


def test_anthropic_structured_output_maps_to_response_format() -> None:
    body = {"max_tokens": 5, "messages": [], "output_config": {"format": {"type": "json_schema", "schema": WEATHER_SCHEMA}}}
    out = anthropic_to_openai_chat(body, "gpt-4o")
    assert out["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": WEATHER_SCHEMA, "strict": True}}


def test_request_round_trip_openai_anthropic_openai() -> None:
    original = tool_conversation()
    original["max_tokens"] = 200
    original["stop"] = ["STOP"]
    original["user"] = "u1"
    back = anthropic_to_openai_chat(openai_chat_to_anthropic(original, "claude"), "gpt-4o")
    assert back["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": original["messages"][2]["tool_calls"]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "24C cloudy"},
        {"role": "user", "content": "Which is warmer?"},
    ]
    assert back["tools"] == original["tools"]
    assert (back["max_tokens"], back["stop"], back["user"]) == (200, ["STOP"], "u1")


def test_invalid_arguments_survive_a_round_trip() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{broken"}}
    body = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [call]}, {"role": "tool", "tool_call_id": "c", "content": "ok"}]}
    back = anthropic_to_openai_chat(openai_chat_to_anthropic(body, "claude"), "gpt")
    assert back["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{broken"


# =================================================== responses


def anthropic_message(**overrides: Any) -> dict[str, Any]:
    msg = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Let me check "},
            {"type": "text", "text": "the weather."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 100, "output_tokens": 30, "cache_read_input_tokens": 50, "cache_creation_input_tokens": 25},
    }
    msg.update(overrides)
    return msg


def test_anthropic_response_to_openai() -> None:
    out = anthropic_response_to_openai(anthropic_message(), "claude-sonnet-4-5")
    completion = ChatCompletion.model_validate(out)
    assert completion.id == "chatcmpl-01XFDUDYJgAACzvnptvVoYEL"
    assert completion.object == "chat.completion"
    assert completion.created > 1_700_000_000
    assert completion.model == "claude-sonnet-4-5"
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check the weather."
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("toolu_01A", "get_weather", {"city": "Paris"})


def test_usage_with_cache_tokens_anthropic_to_openai() -> None:
    usage = anthropic_response_to_openai(anthropic_message(), "m")["usage"]
    assert usage["prompt_tokens"] == 175  # 100 uncached + 50 read + 25 written
    assert usage["prompt_tokens_details"]["cached_tokens"] == 50
    assert usage["prompt_tokens_details"]["cache_write_tokens"] == 25
    assert usage["completion_tokens"] == 30
    assert usage["total_tokens"] == 205


def test_usage_survives_round_trip() -> None:
    as_openai = anthropic_response_to_openai(anthropic_message(), "m")
    back = openai_response_to_anthropic(as_openai, "m")
    assert back["usage"] == {"input_tokens": 100, "output_tokens": 30, "cache_read_input_tokens": 50, "cache_creation_input_tokens": 25}


def test_thinking_tokens_become_reasoning_tokens() -> None:
    msg = anthropic_message(usage={"input_tokens": 10, "output_tokens": 500, "output_tokens_details": {"thinking_tokens": 400}})
    usage = anthropic_response_to_openai(msg, "m")["usage"]
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 400}


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_stop_reason_to_finish_reason(stop_reason: str, finish_reason: str) -> None:
    msg = anthropic_message(stop_reason=stop_reason, content=[{"type": "text", "text": "x"}])
    out = anthropic_response_to_openai(msg, "m")
    assert out["choices"][0]["finish_reason"] == finish_reason
    assert "tool_calls" not in out["choices"][0]["message"]
    ChatCompletion.model_validate(out)


def openai_completion(**message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "refusal": None, **message}, "logprobs": None, "finish_reason": message.pop("finish_reason", "stop")}],
        "usage": {
            "prompt_tokens": 175,
            "completion_tokens": 30,
            "total_tokens": 205,
            "prompt_tokens_details": {"cached_tokens": 50, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


def test_openai_response_to_anthropic() -> None:
    resp = openai_completion(
        content="Let me check.",
        tool_calls=[
            {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_def", "type": "function", "function": {"name": "get_weather", "arguments": "{oops"}},
        ],
    )
    resp["choices"][0]["finish_reason"] = "tool_calls"
    out = openai_response_to_anthropic(resp, "gpt-4o")
    message = Message.model_validate(out)
    assert message.id == "msg_B9MBs8CjcvOU2jLn4n570S5qMJKcT"
    assert message.model == "gpt-4o"
    assert message.stop_reason == "tool_use"
    assert out["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_def", "name": "get_weather", "input": {"_raw": "{oops"}},
    ]
    # OpenAI prompt_tokens includes the 50 cached ones; Anthropic's input_tokens does not
    assert out["usage"] == {"input_tokens": 125, "output_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 50}


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal"), (None, "end_turn")],
)
def test_finish_reason_to_stop_reason(finish_reason: str | None, stop_reason: str) -> None:
    resp = openai_completion(content="hi")
    resp["choices"][0]["finish_reason"] = finish_reason
    out = openai_response_to_anthropic(resp, "m")
    assert out["stop_reason"] == stop_reason
    Message.model_validate(out)


def test_openai_refusal_becomes_refusal_stop() -> None:
    out = openai_response_to_anthropic(openai_completion(refusal="I can't help with that."), "m")
    assert out["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert out["stop_reason"] == "refusal"


def test_response_round_trip_anthropic_openai_anthropic() -> None:
    original = anthropic_message()
    back = openai_response_to_anthropic(anthropic_response_to_openai(original, "claude"), "claude")
    assert back["id"] == original["id"]
    assert back["stop_reason"] == "tool_use"
    assert back["content"] == [
        {"type": "text", "text": "Let me check the weather."},  # thinking has no OpenAI form
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
    ]


# =================================================== errors


@pytest.mark.parametrize(
    ("status", "anthropic_type", "openai_type", "openai_code"),
    [
        (400, "invalid_request_error", "invalid_request_error", None),
        (401, "authentication_error", "authentication_error", "invalid_api_key"),
        (403, "permission_error", "permission_error", None),
        (429, "rate_limit_error", "rate_limit_exceeded", "rate_limit_exceeded"),
        (500, "api_error", "server_error", None),
        (529, "overloaded_error", "server_error", "overloaded"),
        (504, "timeout_error", "timeout", None),
    ],
)
def test_anthropic_error_to_openai(status: int, anthropic_type: str, openai_type: str, openai_code: str | None) -> None:
    body = {"type": "error", "error": {"type": anthropic_type, "message": f"boom {status}"}}
    out = anthropic_error_to_openai(status, body)
    assert out == {"error": {"message": f"boom {status}", "type": openai_type, "param": None, "code": openai_code}}


def test_anthropic_not_found_model_error() -> None:
    body = {"type": "error", "error": {"type": "not_found_error", "message": "model: claude-9"}}
    assert anthropic_error_to_openai(404, body)["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("status", "error", "anthropic_type"),
    [
        (429, {"message": "Rate limit reached", "type": "requests", "param": None, "code": "rate_limit_exceeded"}, "rate_limit_error"),
        (429, {"message": "Quota exceeded", "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}, "billing_error"),
        (401, {"message": "Incorrect API key", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}, "authentication_error"),
        (404, {"message": "The model does not exist", "type": "invalid_request_error", "param": None, "code": "model_not_found"}, "not_found_error"),
        (400, {"message": "Bad", "type": "invalid_request_error", "param": "messages", "code": None}, "invalid_request_error"),
        (503, {"message": "Overloaded", "type": "server_error", "param": None, "code": None}, "overloaded_error"),
        (500, {"message": "Oops", "type": "server_error", "param": None, "code": None}, "api_error"),
    ],
)
def test_openai_error_to_anthropic(status: int, error: dict[str, Any], anthropic_type: str) -> None:
    out = openai_error_to_anthropic(status, {"error": error})
    assert out == {"type": "error", "error": {"type": anthropic_type, "message": error["message"]}}
    ErrorResponse.model_validate(out)


def test_error_bodies_of_unexpected_shape() -> None:
    assert openai_error_to_anthropic(502, {})["error"] == {"type": "api_error", "message": "upstream error (HTTP 502)"}
    assert openai_error_to_anthropic(400, {"error": "bad thing"})["error"]["message"] == "bad thing"
    assert anthropic_error_to_openai(418, {"detail": "teapot"})["error"]["message"] == "teapot"


# =================================================== Anthropic stream -> OpenAI chunks


def anthropic_stream_events() -> list[tuple[str, dict[str, Any]]]:
    """A recorded-shape Anthropic stream: text, then a tool call, with cache usage."""
    start_usage = {"input_tokens": 100, "cache_read_input_tokens": 50, "cache_creation_input_tokens": 25, "output_tokens": 1}
    return [
        ("message_start", {"type": "message_start", "message": {**anthropic_message(content=[], stop_reason=None), "usage": start_usage}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "check."}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": 'ris"}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 42}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_anthropic_events_are_valid_sdk_events() -> None:
    for _, data in anthropic_stream_events():
        if data["type"] != "ping":
            _STREAM_EVENT.validate_python(data)


def test_anthropic_stream_to_openai_chunks() -> None:
    tr = AnthropicStreamToOpenAI("claude-sonnet-4-5", include_usage=True)
    chunks = [c for event, data in anthropic_stream_events() for c in tr.feed(event, data)]
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks]
    assert {p.id for p in parsed} == {"chatcmpl-01XFDUDYJgAACzvnptvVoYEL"}
    assert len({p.created for p in parsed}) == 1
    assert parsed[0].choices[0].delta.role == "assistant"
    # OpenAI include_usage semantics: usage is null on all but a final, choice-less chunk
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 175
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 50
    assert chunks[-1]["usage"]["completion_tokens"] == 42
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    first_call = chunks[3]["choices"][0]["delta"]["tool_calls"][0]
    assert first_call == {"index": 0, "id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": ""}}

    state = ChatCompletionStreamState()
    for p in parsed:
        state.handle_chunk(p)
    final = state.get_final_completion()
    assert final.choices[0].message.content == "Let me check."
    assert final.choices[0].finish_reason == "tool_calls"
    call = final.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("toolu_01A", "get_weather", {"city": "Paris"})
    assert tr.finish_reason == "tool_calls" and tr.stop_reason == "tool_use"
    assert tr.usage == TokenUsage(input_tokens=175, output_tokens=42, cache_read_tokens=50, cache_write_tokens=25)


def test_anthropic_stream_without_include_usage_has_no_usage_key() -> None:
    tr = AnthropicStreamToOpenAI("m", include_usage=False)
    chunks = [c for event, data in anthropic_stream_events() for c in tr.feed(event, data)]
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)


def test_anthropic_stream_cut_before_message_stop_keeps_partial_usage() -> None:
    tr = AnthropicStreamToOpenAI("m", include_usage=True)
    for event, data in anthropic_stream_events()[:5]:  # cut mid-text
        tr.feed(event, data)
    assert tr.finish_reason is None
    assert tr.usage.input_tokens == 175
    assert tr.usage.cache_read_tokens == 50 and tr.usage.cache_write_tokens == 25
    assert tr.usage.output_tokens == 1  # all the upstream had reported
    tail = tr.finish()
    assert tail[0]["choices"] == [] and tail[0]["usage"]["prompt_tokens"] == 175
    assert tr.finish() == []


def test_anthropic_stream_multiple_tool_calls_get_sequential_indexes() -> None:
    tr = AnthropicStreamToOpenAI("m", include_usage=False)
    tr.feed("message_start", anthropic_stream_events()[0][1])
    tool = {"type": "tool_use", "name": "f", "input": {}}
    a = tr.feed("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {**tool, "id": "toolu_a"}})
    b = tr.feed("content_block_start", {"type": "content_block_start", "index": 3, "content_block": {**tool, "id": "toolu_b"}})
    frag = tr.feed("content_block_delta", {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{}"}})
    assert a[0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    assert b[0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 1
    assert frag[0]["choices"][0]["delta"]["tool_calls"] == [{"index": 1, "function": {"arguments": "{}"}}]


def test_anthropic_stream_error_and_ping() -> None:
    tr = AnthropicStreamToOpenAI("m", include_usage=True)
    assert tr.feed("ping", {"type": "ping"}) == []
    out = tr.feed("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert out == [{"error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded"}}]


def test_anthropic_stream_ignores_thinking_blocks() -> None:
    tr = AnthropicStreamToOpenAI("m")
    tr.feed("message_start", anthropic_stream_events()[0][1])
    assert tr.feed("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}) == []
    assert tr.feed("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}) == []


# =================================================== OpenAI chunks -> Anthropic stream


def openai_chunks(with_usage: bool = True) -> list[dict[str, Any]]:
    """A recorded-shape OpenAI stream: text, two tool calls, finish, then usage."""
    base = {"id": "chatcmpl-abc123", "object": "chat.completion.chunk", "created": 1741569952, "model": "gpt-4o"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        c = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if with_usage:
            c["usage"] = None
        return c

    chunks = [
        chunk({"role": "assistant", "content": "", "refusal": None}),
        chunk({"content": "Checking "}),
        chunk({"content": "both."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]}),
        chunk({}, "tool_calls"),
    ]
    if with_usage:
        usage = {"prompt_tokens": 175, "completion_tokens": 30, "total_tokens": 205, "prompt_tokens_details": {"cached_tokens": 50}}
        chunks.append({**base, "choices": [], "usage": usage})
    return chunks


def test_openai_chunks_are_valid_sdk_chunks() -> None:
    for c in openai_chunks():
        ChatCompletionChunk.model_validate(c)


def _accumulate(events: list[tuple[str, dict[str, Any]]]) -> Any:
    snapshot = None
    bufs: dict[int, bytes] = {}
    for _, data in events:
        snapshot = accumulate_event(event=_STREAM_EVENT.validate_python(data), current_snapshot=snapshot, json_bufs=bufs)
    return snapshot


def test_openai_stream_to_anthropic_events() -> None:
    tr = OpenAIStreamToAnthropic("gpt-4o")
    events = [e for c in openai_chunks() for e in tr.feed(c)]
    assert "message_delta" not in [name for name, _ in events]  # waits for the usage chunk
    events += tr.finish()
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    for name, data in events:
        assert data["type"] == name
        _STREAM_EVENT.validate_python(data)
    assert [d["index"] for n, d in events if n == "content_block_start"] == [0, 1, 2]
    assert events[0][1]["message"]["id"] == "msg_abc123"
    message_delta = events[-2][1]
    assert message_delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert message_delta["usage"] == {"input_tokens": 125, "output_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 50}

    final = _accumulate(events)
    assert final.stop_reason == "tool_use"
    assert final.content[0].text == "Checking both."
    assert [(b.id, b.name, b.input) for b in final.content[1:]] == [
        ("call_a", "get_weather", {"city": "Paris"}),
        ("call_b", "get_weather", {"city": "Rome"}),
    ]
    assert final.usage.input_tokens == 125 and final.usage.output_tokens == 30
    assert tr.finish_reason == "tool_calls" and tr.stop_reason == "tool_use"
    assert tr.usage == TokenUsage(input_tokens=175, output_tokens=30, cache_read_tokens=50)
    assert tr.finish() == []


def test_openai_stream_cut_before_done() -> None:
    tr = OpenAIStreamToAnthropic("gpt-4o")
    events = [e for c in openai_chunks()[:3] for e in tr.feed(c)]
    assert tr.usage == TokenUsage()  # OpenAI reports usage only at the end
    assert tr.finish_reason is None
    events += tr.finish()
    assert [n for n, _ in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert _accumulate(events).content[0].text == "Checking both."


def test_openai_stream_length_finish_and_empty_stream() -> None:
    tr = OpenAIStreamToAnthropic("m")
    base = openai_chunks(with_usage=False)[0]
    tr.feed({**base, "choices": [{"index": 0, "delta": {"content": "abc"}, "finish_reason": "length"}]})
    assert tr.finish()[-2][1]["delta"]["stop_reason"] == "max_tokens"
    empty = OpenAIStreamToAnthropic("m").finish()
    assert [n for n, _ in empty] == ["message_start", "message_delta", "message_stop"]
    for _, data in empty:
        _STREAM_EVENT.validate_python(data)


def test_openai_stream_refusal_and_error() -> None:
    tr = OpenAIStreamToAnthropic("m")
    base = openai_chunks(with_usage=False)[0]
    events = tr.feed({**base, "choices": [{"index": 0, "delta": {"refusal": "I can't."}, "finish_reason": "stop"}]})
    events += tr.finish()
    assert _accumulate(events).content[0].text == "I can't."
    assert events[-2][1]["delta"]["stop_reason"] == "refusal"
    error = OpenAIStreamToAnthropic("m").feed({"error": {"message": "Overloaded", "type": "server_error", "code": None}})
    assert error == [("error", {"type": "error", "error": {"type": "api_error", "message": "Overloaded"}})]


def test_stream_round_trip_anthropic_openai_anthropic() -> None:
    to_openai = AnthropicStreamToOpenAI("claude", include_usage=True)
    to_anthropic = OpenAIStreamToAnthropic("claude")
    events: list[tuple[str, dict[str, Any]]] = []
    for name, data in anthropic_stream_events():
        for chunk in to_openai.feed(name, data):
            events += to_anthropic.feed(chunk)
    events += to_anthropic.finish()
    final = _accumulate(events)
    assert final.id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert final.content[0].text == "Let me check."
    assert (final.content[1].id, final.content[1].input) == ("toolu_01A", {"city": "Paris"})
    assert final.stop_reason == "tool_use"
    assert to_anthropic.usage == to_openai.usage == TokenUsage(175, 42, 50, 25)
