"""Input-token estimation: exact for OpenAI models, a safe upper bound for the rest."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendgate.config import Deployment
from spendgate.controls import tokens as T
from spendgate.pipeline import Call

pytestmark = pytest.mark.skipif(T.tokenizer("o200k_base") is None, reason="bpe-openai is not installed")

# The OpenAI cookbook's example ("How to count tokens with tiktoken"): the API
# reports 129 prompt tokens for gpt-4 / gpt-3.5-turbo and 124 for gpt-4o.
COOKBOOK = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    },
    {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."},
]


def dep(name: str, provider: str, model: str, **kw: Any) -> Deployment:
    return Deployment(name=name, provider=provider, model=model, base_url="http://127.0.0.1:9", **kw)  # type: ignore[arg-type]


def chat(body: dict[str, Any], model: str = "gpt-4o", candidates: list[Deployment] | None = None, wire: str = "openai") -> Call:
    body = {"model": model, **body}
    endpoint = "messages" if wire == "anthropic" else "chat.completions"
    call = Call(wire=wire, endpoint=endpoint, body=body, raw_body=b"", headers={}, model=model)
    call.candidates = list(candidates or [])
    return call


def tiktoken_encoding(name: str) -> Any:
    """OpenAI's own tokenizer, fed the vocabulary bpe-openai ships (tiktoken would download it)."""
    tiktoken = pytest.importorskip("tiktoken")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # bpe_openai.registry uses importlib.resources.open_binary
        from bpe_openai import registry

        spec = getattr(registry, name)()
    return tiktoken.Encoding(
        name=name, pat_str=spec["pat_str"], mergeable_ranks=spec["mergeable_ranks"], special_tokens=spec["special_tokens"]
    )


@pytest.fixture(scope="module")
def o200k() -> Any:
    return tiktoken_encoding("o200k_base")


def cookbook_count(encoding: Any, messages: list[dict[str, str]]) -> int:
    n = 3
    for m in messages:
        n += 3
        for key, value in m.items():
            n += len(encoding.encode_ordinary(value))
            if key == "name":
                n += 1
    return n


@pytest.mark.parametrize(
    ("text", "cl100k", "o200k"),
    [
        ("tiktoken is great!", 6, 6),
        ("Hello, world", 3, 3),
        ("antidisestablishmentarianism", 6, 6),
        ("お誕生日おめでとう", 9, 8),
        ("hello 👋 world 🌍", 7, 6),
        ("", 0, 0),
    ],
)
def test_known_strings(text: str, cl100k: int, o200k: int) -> None:
    count_cl, count_o = T.tokenizer("cl100k_base"), T.tokenizer("o200k_base")
    assert count_cl is not None and count_o is not None
    assert count_cl(text) == cl100k
    assert count_o(text) == o200k


@pytest.mark.parametrize(("model", "expected"), [("gpt-4o", 124), ("gpt-4o-mini", 124), ("gpt-4", 129), ("gpt-3.5-turbo", 129)])
def test_cookbook_chat_counts_match_what_openai_bills(model: str, expected: int) -> None:
    call = chat({"messages": COOKBOOK}, model=model)
    assert T.count_input_tokens(call) == expected
    assert call.input_tokens_estimate == expected
    assert T.counts_exactly(call)


def test_byte_bound_is_cheap_and_above_the_count() -> None:
    call = chat({"messages": COOKBOOK})
    bound = T.estimate_input_tokens(call)
    text_bytes = sum(len(v.encode()) for m in COOKBOOK for v in m.values())
    assert bound >= text_bytes
    assert bound > 124
    assert T.estimate_input_tokens(call) == bound  # memoized on the call
    assert T.count_input_tokens(call) == 124
    assert T.estimate_input_tokens(call) == 124  # the best known bound from now on


def test_routing_decides_the_family() -> None:
    openai_only = [dep("a", "openai", "gpt-4o"), dep("b", "azure_openai", "gpt4o-prod", api_version="2024-06-01", price_model="gpt-4o")]
    call = chat({"messages": COOKBOOK}, candidates=openai_only)
    assert T.count_input_tokens(call) == 124
    mixed = [dep("a", "openai", "gpt-4o"), dep("c", "anthropic", "claude-sonnet-4-5")]
    call = chat({"messages": COOKBOOK}, candidates=mixed)
    assert not T.counts_exactly(call)
    assert T.count_input_tokens(call) == T.Prompt.bound(T.prompt_of(call), ["gpt-4o"])
    # an Azure deployment name that is no model we know: bounded
    call = chat({"messages": COOKBOOK}, candidates=[dep("b", "azure_openai", "prod-chat", api_version="2024-06-01")])
    assert T.count_input_tokens(call) > 124
    # an OpenAI-compatible server named like an OpenAI model: its template is unknown, bounded
    call = chat({"messages": COOKBOOK}, candidates=[dep("v", "openai_compatible", "gpt-4o")])
    assert T.count_input_tokens(call) > 124


def test_two_encodings_take_the_larger_count() -> None:
    both = [dep("a", "openai", "gpt-4o"), dep("b", "openai", "gpt-4")]
    assert T.count_input_tokens(chat({"messages": COOKBOOK}, candidates=both)) == 129


def test_forget_after_a_model_change() -> None:
    call = chat({"messages": COOKBOOK})
    T.count_input_tokens(call)
    call.model = "claude-haiku-4-5"
    call.candidates = [dep("c", "anthropic", "claude-haiku-4-5")]
    T.forget_input_estimate(call)
    assert T.estimate_input_tokens(call) > 124


def test_tools_and_schemas_add_tokens() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                    "required": ["city"],
                },
            },
        }
    ]
    plain = T.count_input_tokens(chat({"messages": COOKBOOK}))
    with_tools = T.count_input_tokens(chat({"messages": COOKBOOK, "tools": tools}))
    # OpenAI renders tools shorter than their JSON: counting the JSON plus a wrapper allowance over-estimates
    assert with_tools - plain >= 60
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert T.count_input_tokens(chat({"messages": COOKBOOK, "response_format": fmt})) > plain


def test_images_files_audio_get_fixed_allowances() -> None:
    parts = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/b.png", "detail": "low"}},
        {"type": "file", "file": {"file_id": "file-1"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ]
    call = chat({"messages": [{"role": "user", "content": parts}]})
    text_only = T.count_input_tokens(chat({"messages": [{"role": "user", "content": "What is in these?"}]}))
    expected = T.IMAGE_TOKENS + T.IMAGE_TOKENS_LOW + T.FILE_TOKENS + T.AUDIO_TOKENS
    assert T.count_input_tokens(call) == text_only + expected
    # gpt-4o-mini bills images at ~33x the tokens
    mini = chat({"messages": [{"role": "user", "content": parts[:2]}]}, model="gpt-4o-mini")
    assert T.count_input_tokens(mini) > 48_000


def test_anthropic_bound() -> None:
    body = {
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "x"}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "found it"}]},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc text"}},
                ],
            },
        ],
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
    }
    call = chat(body, model="claude-sonnet-4-5", wire="anthropic")
    estimate = T.count_input_tokens(call)
    assert not T.counts_exactly(call)
    text = ["Be brief.", "Hi there", "lookup", '{"q":"x"}', "t1", "found it", "doc text"]
    assert estimate >= sum(len(t) for t in text) + T.IMAGE_TOKENS + T.BOUND_TOOLS_BASE  # tool-use system prompt
    assert estimate == T.estimate_input_tokens(call)


def test_legacy_completions_and_embeddings() -> None:
    call = Call(
        wire="openai", endpoint="embeddings", body={"model": "text-embedding-3-small", "input": ["tiktoken is great!", [1, 2, 3]]},
        raw_body=b"", headers={}, model="text-embedding-3-small",
    )
    assert T.count_input_tokens(call) == 6 + 3  # no chat template
    call = Call(
        wire="openai", endpoint="completions", body={"model": "gpt-3.5-turbo-instruct", "prompt": "Hello, world"},
        raw_body=b"", headers={}, model="gpt-3.5-turbo-instruct",
    )
    assert T.count_input_tokens(call) == 3


def test_lone_surrogates_do_not_break_counting() -> None:
    call = chat({"messages": [{"role": "user", "content": "a\ud800b"}]})
    assert T.count_input_tokens(call) >= 3


# --- never below the real count -------------------------------------------------------

texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300
) | st.sampled_from(["", " ", "\n\n", "aaaaaaaaaaaaaaaa", "<|endoftext|>", "1234567890" * 5, "😀" * 10])
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "developer"]), "content": texts},
        optional={"name": st.from_regex(r"[a-z_]{1,12}", fullmatch=True)},
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=messages)
def test_never_below_openais_count(o200k: Any, messages: list[dict[str, str]]) -> None:
    real = cookbook_count(o200k, messages)
    call = chat({"messages": messages})
    bound = T.estimate_input_tokens(call)
    assert bound >= real
    assert T.count_input_tokens(call) == real  # exact, and so never below
    # the bound is family-agnostic: it also covers a model without a tokenizer
    claude = chat({"messages": messages}, model="claude-sonnet-4-5", candidates=[dep("c", "anthropic", "claude-sonnet-4-5")])
    assert T.count_input_tokens(claude) >= real


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts)
def test_bpe_openai_agrees_with_tiktoken(o200k: Any, text: str) -> None:
    count = T.tokenizer("o200k_base")
    assert count is not None
    assert count(text) == len(o200k.encode_ordinary(text))
    assert count(text) <= len(text.encode())  # every token covers at least one byte


def test_load_tokenizers_loads_what_deployments_need() -> None:
    T.load_tokenizers([dep("a", "openai", "gpt-4o"), dep("c", "anthropic", "claude-sonnet-4-5")])
    assert T.tokenizer.cache_info().currsize >= 1  # type: ignore[attr-defined]


def test_without_the_tokenizer_every_model_gets_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "tokenizer", lambda encoding: None)
    call = chat({"messages": COOKBOOK})
    assert not T.counts_exactly(call)
    assert T.count_input_tokens(call) == T.prompt_of(call).bound(["gpt-4o"]) > 124


# --- the one-pass bound of plain chat requests equals the general one ------------------------

_values = st.none() | texts | st.integers() | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), max_size=2)
_bodies = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.dictionaries(st.sampled_from(["role", "content", "name", "audio", "tool_call_id", "refusal"]), _values, max_size=4)
            | st.integers()
            | texts,
            max_size=5,
        )
    },
    optional={
        "tools": st.lists(st.fixed_dictionaries({"type": st.just("function")}), max_size=2),
        "tool_choice": st.sampled_from(["auto", "none"]),
        "response_format": st.just({"type": "json_object"}),
        "max_tokens": st.integers(1, 100),
    },
)


@settings(max_examples=500, deadline=None)
@given(body=_bodies)
def test_plain_chat_fast_bound_equals_the_general_bound(body: dict[str, Any]) -> None:
    call = chat(body)
    fast = T._plain_chat_bound(call.body)
    general = T.prompt_of(call).bound(T._models(call))
    assert fast is None or fast == general
    assert T.estimate_input_tokens(call) == general
