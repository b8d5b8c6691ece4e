"""How many input tokens a request will be billed for — never fewer.

Budgets and token rate limits reserve a call's worst case before it goes
upstream, so a low count would let them overshoot. Two tiers, cheap first:

* `estimate_input_tokens(call)`: an upper bound from the UTF-8 bytes of the
  prompt's text, plus template overhead per message and tool, plus a fixed
  allowance per image, file or audio clip. Every token of a byte-level BPE
  (OpenAI, Anthropic, Llama, Qwen) or of a byte-fallback SentencePiece
  (Gemini, Gemma) covers at least one byte, so this bounds every model
  family. A few µs per call; what reservations use.
* `count_input_tokens(call)`: the count OpenAI bills (its tokenizer, which
  `bpe-openai` ships with its vocabularies, plus the chat template's tokens)
  when every deployment that may serve the call is an OpenAI model; the
  bound otherwise. About 20 µs per KB of prompt, so stages call it only when
  the bound would decide something: a refusal, an input cap.

The best bound known so far is kept in `call.input_tokens_estimate`, which
`estimate_input_tokens` returns once set. A stage that changes `call.model` or the
candidates calls `forget_input_estimate`.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from spendgate.pipeline import Call

log = logging.getLogger("spendgate.tokens")

# OpenAI chat template (OpenAI cookbook, "How to count tokens with tiktoken"):
# <|start|>{role/name}\n{content}<|end|>\n = 3 tokens + role (+ name + 1),
# and every reply is primed with <|start|>assistant<|message|> = 3 tokens.
OPENAI_PER_MESSAGE = 3
OPENAI_PER_NAME = 1
OPENAI_REPLY_PRIMING = 3
# Tool definitions are rendered into the system message as a TypeScript-like
# namespace, which is shorter than their JSON; we count the compact JSON's
# tokens plus this wrapper allowance, an over-estimate by design.
OPENAI_TOOLS_BASE = 20
PER_TOOL = 10
SCHEMA_BASE = 20  # response_format json_schema

# Template overhead for the byte bound, valid for every family: Anthropic's
# "\n\nHuman: … \n\nAssistant:" turns, Llama/Gemma/ChatML headers, and the
# tool-use system prompt Anthropic adds when tools are given (346 tokens for
# current models; 500 leaves room).
BOUND_BASE = 16
BOUND_PER_MESSAGE = 10
BOUND_TOOLS_BASE = 500
BOUND_PER_TEXT = 1  # SentencePiece's dummy prefix may add a token to a text

# Fixed allowances for non-text input, per item. Generous on purpose: the
# reservation settles to the billed usage when the call ends.
IMAGE_TOKENS = 4_000  # OpenAI tiles ≤ 1,445; patch models ≤ 3,779; Claude ≤ ~1,600; Gemini 258/tile
IMAGE_TOKENS_LOW = 100  # OpenAI `detail: low` = 85 (70 for gpt-5, 75 for o-series)
FILE_TOKENS = 20_000  # a PDF page costs its text plus an image; not a hard bound
AUDIO_TOKENS = 10_000
# Models whose image tokens are multiplied (gpt-4o-mini bills 2,833 + 5,667 per
# 512 px tile, up to 8 tiles).
IMAGE_TOKENS_BY_MODEL: tuple[tuple[str, int, int], ...] = (("gpt-4o-mini", 48_200, 2_900),)

# OpenAI model name prefixes → encoding; the first match wins, so `gpt-4o` precedes `gpt-4`.
_ENCODINGS: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5-turbo", "cl100k_base"),
    ("gpt-35-turbo", "cl100k_base"),  # Azure's spelling
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
)
OPENAI_PROVIDERS = frozenset({"openai", "azure_openai"})


def encoding_for_model(model: str) -> str | None:
    """The OpenAI encoding a model name uses, or None (not an OpenAI model we know)."""
    for prefix, encoding in _ENCODINGS:
        if model.startswith(prefix):
            return encoding
    return None


@dataclass(slots=True)
class Prompt:
    """What a request sends as input, reduced to what counting needs."""

    texts: list[str] = field(default_factory=list)  # everything that is tokenized
    chat: bool = True  # chat template overhead applies
    messages: int = 0
    names: int = 0
    tools: int = 0
    schemas: int = 0
    images: int = 0
    images_low: int = 0
    files: int = 0
    audio: int = 0
    tokens: int = 0  # input given as token ids (legacy prompts, embeddings)

    def media_tokens(self, models: Iterable[str]) -> int:
        if not (self.images or self.images_low or self.files or self.audio):
            return 0
        image, low = IMAGE_TOKENS, IMAGE_TOKENS_LOW
        for model in models:
            for prefix, high_tokens, low_tokens in IMAGE_TOKENS_BY_MODEL:
                if model.startswith(prefix):
                    image, low = max(image, high_tokens), max(low, low_tokens)
        return self.images * image + self.images_low * low + self.files * FILE_TOKENS + self.audio * AUDIO_TOKENS

    def bound(self, models: Iterable[str]) -> int:
        """An upper bound for any family: one token per UTF-8 byte, generous overhead."""
        n = self.tokens + self.media_tokens(models)
        for t in self.texts:
            n += (len(t) if t.isascii() else _utf8_len(t)) + BOUND_PER_TEXT
        if self.chat:
            n += BOUND_BASE + BOUND_PER_MESSAGE * self.messages
        if self.tools:
            n += BOUND_TOOLS_BASE + PER_TOOL * self.tools
        return n + SCHEMA_BASE * self.schemas

    def openai_tokens(self, count: Callable[[str], int], models: Iterable[str]) -> int:
        """What OpenAI bills: the tokenizer's count plus the chat template's tokens."""
        n = self.tokens + self.media_tokens(models)
        for t in self.texts:
            if t:
                n += count(t)
        if self.chat:
            n += OPENAI_REPLY_PRIMING + OPENAI_PER_MESSAGE * self.messages + OPENAI_PER_NAME * self.names
        if self.tools:
            n += OPENAI_TOOLS_BASE + PER_TOOL * self.tools
        return n + SCHEMA_BASE * self.schemas


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # not JSON-serializable: cannot come from a parsed body, but be safe
        return str(value)


# --- reading a request into a Prompt -------------------------------------------------


def prompt_of(call: Call) -> Prompt:
    if call.wire == "anthropic":
        return anthropic_prompt(call.body)
    if call.endpoint == "chat.completions":
        return openai_chat_prompt(call.body)
    return openai_plain_prompt(call.body)


def openai_chat_prompt(body: dict[str, Any]) -> Prompt:
    p = Prompt()
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict):
                continue
            p.messages += 1
            for key, value in m.items():
                if key == "content":
                    _openai_content(p, value)
                elif key == "name":
                    p.names += 1
                    p.texts.append(str(value))
                elif key == "audio":
                    p.audio += 1
                elif value is not None:  # role, tool_call_id, tool_calls, function_call, refusal …
                    p.texts.append(value if isinstance(value, str) else _json(value))
    for key in ("tools", "functions"):
        tools = body.get(key)
        if isinstance(tools, list) and tools:
            p.tools += len(tools)
            p.texts.append(_json(tools))
    choice = body.get("tool_choice", body.get("function_call"))
    if isinstance(choice, dict):
        p.texts.append(_json(choice))
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        p.schemas += 1
        p.texts.append(_json(fmt.get("json_schema")))
    return p


def _openai_content(p: Prompt, content: Any) -> None:
    if isinstance(content, str):
        p.texts.append(content)
        return
    if not isinstance(content, list):
        if content is not None:
            p.texts.append(_json(content))
        return
    for part in content:
        if not isinstance(part, dict):
            p.texts.append(_json(part))
            continue
        kind = part.get("type")
        if kind == "text" or kind == "refusal":
            value = part.get(kind)
            p.texts.append(value if isinstance(value, str) else _json(value))
        elif kind == "image_url":
            image = part.get("image_url")
            if isinstance(image, dict) and image.get("detail") == "low":
                p.images_low += 1
            else:
                p.images += 1
        elif kind == "input_audio":
            p.audio += 1
        elif kind == "file":
            p.files += 1
        else:
            p.texts.append(_json(part))


def openai_plain_prompt(body: dict[str, Any]) -> Prompt:
    """/completions and /embeddings: text, a list of texts, or token ids; no template."""
    p = Prompt(chat=False)
    value = body.get("prompt", body.get("input", ""))
    _plain(p, value)
    suffix = body.get("suffix")
    if isinstance(suffix, str):
        p.texts.append(suffix)
    return p


def _plain(p: Prompt, value: Any) -> None:
    if isinstance(value, str):
        p.texts.append(value)
    elif isinstance(value, int):
        p.tokens += 1
    elif isinstance(value, list):
        for item in value:
            _plain(p, item)
    elif value is not None:
        p.texts.append(_json(value))


def anthropic_prompt(body: dict[str, Any]) -> Prompt:
    p = Prompt()
    system = body.get("system")
    if system:
        p.messages += 1
        _anthropic_content(p, system)
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                p.messages += 1
                _anthropic_content(p, m.get("content"))
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        p.tools += len(tools)
        p.texts.append(_json(tools))
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        p.texts.append(_json(choice))
    return p


def _anthropic_content(p: Prompt, content: Any) -> None:
    if isinstance(content, str):
        p.texts.append(content)
        return
    if not isinstance(content, list):
        if content is not None:
            p.texts.append(_json(content))
        return
    for block in content:
        if not isinstance(block, dict):
            p.texts.append(_json(block))
            continue
        kind = block.get("type")
        if kind == "text":
            p.texts.append(str(block.get("text", "")))
        elif kind == "image":
            p.images += 1
        elif kind == "document":
            source = block.get("source")
            if isinstance(source, dict) and source.get("type") == "text":
                p.texts.append(str(source.get("data", "")))
            elif isinstance(source, dict) and source.get("type") == "content":
                _anthropic_content(p, source.get("content"))
            else:
                p.files += 1
            for key in ("title", "context"):
                if isinstance(block.get(key), str):
                    p.texts.append(block[key])
        elif kind == "tool_use":
            p.texts.append(str(block.get("name", "")))
            p.texts.append(_json(block.get("input")))
        elif kind == "tool_result":
            p.texts.append(str(block.get("tool_use_id", "")))
            _anthropic_content(p, block.get("content"))
        elif kind == "thinking":
            p.texts.append(str(block.get("thinking", "")))
        else:  # redacted_thinking, search_result, server tool blocks …: their JSON
            p.texts.append(_json(block))


# --- the tokenizer ---------------------------------------------------------------------


@functools.cache
def tokenizer(encoding: str) -> Callable[[str], int] | None:
    """`count(text) -> int` for an OpenAI encoding, or None when none ships.

    `bpe-openai` (GitHub's `bpe-openai` Rust crate) embeds the vocabularies in
    its extension module, so nothing is downloaded, and counts without
    building a token list. Its Python package decodes all three of its
    vocabularies into dicts on import (0.5 s, ~60 MiB) for a tiktoken-like
    API we do not use, so the extension is loaded on its own (0.04 s); the
    plain import is the fallback.
    """
    bindings = _bpe_bindings()
    if bindings is None:
        return None
    try:
        return bindings.tokenizer_for_encoding(encoding).count  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - an encoding this version lacks: the byte bound holds
        log.exception("could not load the %s tokenizer; using the byte bound", encoding)
        return None


@functools.cache
def _bpe_bindings() -> Any:
    try:
        spec = importlib.util.find_spec("bpe_openai")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        log.warning("bpe-openai is not installed: input tokens are bounded by UTF-8 bytes for every model")
        return None
    for folder in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "_bindings" + suffix)
            if os.path.isfile(path):
                try:
                    loader = importlib.machinery.ExtensionFileLoader("bpe_openai._bindings", path)
                    module_spec = importlib.util.spec_from_file_location("bpe_openai._bindings", path, loader=loader)
                    assert module_spec is not None
                    module = importlib.util.module_from_spec(module_spec)
                    loader.exec_module(module)
                    sys.modules.setdefault("bpe_openai._bindings", module)  # a later plain import reuses it
                    return module
                except Exception:  # noqa: BLE001 - try the ordinary import
                    log.debug("loading %s directly failed", path, exc_info=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its registry uses importlib.resources.open_binary
            from bpe_openai import _bindings  # typed in _bindings.pyi

        return _bindings
    except Exception:  # noqa: BLE001
        log.exception("bpe-openai failed to load: input tokens are bounded by UTF-8 bytes for every model")
        return None


def load_tokenizers(deployments: Iterable[Any]) -> None:
    """Load the tokenizers these deployments need now (start-up), not on the first refusal.

    Each costs ~0.05 s and 30-70 MiB once per process, so only the encodings
    of configured OpenAI deployments are loaded.
    """
    for d in deployments:
        encoding = encoding_for_model(getattr(d, "price_model", None) or d.model)
        if d.provider in OPENAI_PROVIDERS and encoding is not None:
            tokenizer(encoding)


def _safe(count: Callable[[str], int]) -> Callable[[str], int]:
    def counted(text: str) -> int:
        try:
            return count(text)
        except (UnicodeError, ValueError):  # e.g. a lone surrogate: count its bytes
            return _utf8_len(text) + BOUND_PER_TEXT

    return counted


# --- what the stages call --------------------------------------------------------------


def _models(call: Call) -> list[str]:
    """The upstream model names that may serve the call (routing order)."""
    if call.candidates:
        return [getattr(d, "price_model", None) or d.model for d in call.candidates]
    return [call.model]


def _encodings(call: Call) -> set[str] | None:
    """The OpenAI encodings of every candidate, or None if any is not an OpenAI model."""
    found: set[str] = set()
    if call.candidates:
        for d in call.candidates:
            encoding = encoding_for_model(getattr(d, "price_model", None) or d.model)
            if d.provider not in OPENAI_PROVIDERS or encoding is None:
                return None
            found.add(encoding)
    else:  # not routed yet (unit use): judge by the name, OpenAI wire only
        encoding = encoding_for_model(call.model)
        if call.wire != "openai" or encoding is None:
            return None
        found.add(encoding)
    return found


def counts_exactly(call: Call) -> bool:
    """Whether `count_input_tokens` uses a real tokenizer for this call (else the byte bound)."""
    encodings = _encodings(call)
    return bool(encodings) and all(tokenizer(e) is not None for e in encodings)


def estimate_input_tokens(call: Call) -> int:
    """A cheap upper bound on the call's input tokens (the tightest known, once counted)."""
    if call.input_tokens_estimate <= 0:
        bound = _plain_chat_bound(call.body) if call.endpoint == "chat.completions" and call.wire != "anthropic" else None
        call.input_tokens_estimate = bound if bound is not None else prompt_of(call).bound(_models(call))
    return call.input_tokens_estimate


_CHAT_EXTRAS = frozenset({"tools", "functions", "tool_choice", "function_call", "response_format"})


def _plain_chat_bound(body: dict[str, Any]) -> int | None:
    """`openai_chat_prompt(body).bound(...)` for the common request — messages
    whose fields are all strings, none of the extras that add text or media —
    summed in one pass without building a `Prompt`; None for anything else
    (the general path then counts it, equally)."""
    messages = body.get("messages")
    if type(messages) is not list or not _CHAT_EXTRAS.isdisjoint(body):  # one C call for the five keys
        return None
    n = BOUND_BASE
    for m in messages:
        if type(m) is not dict:
            if isinstance(m, dict):
                return None
            continue  # not a message: skipped, as openai_chat_prompt does
        n += BOUND_PER_MESSAGE
        for key, value in m.items():
            if type(value) is str:
                if key == "audio":
                    return None
                n += (len(value) if value.isascii() else _utf8_len(value)) + BOUND_PER_TEXT
            elif value is not None or key in ("name", "audio"):
                return None  # content parts, tool calls, a null name …: the general path
    return n


def count_input_tokens(call: Call) -> int:
    """The tightest upper bound available: OpenAI's own count where it applies.

    Costs a tokenizer pass (~20 µs/KB) for OpenAI models; call it when the
    estimate would refuse or cap something. Stores the result as the
    call's estimate.
    """
    prompt = prompt_of(call)
    models = _models(call)
    best = prompt.bound(models)
    encodings = _encodings(call)
    if encodings:
        counts = [tokenizer(e) for e in encodings]
        if all(c is not None for c in counts):
            best = min(best, max(prompt.openai_tokens(_safe(c), models) for c in counts if c is not None))
    call.input_tokens_estimate = best
    return best


def forget_input_estimate(call: Call) -> None:
    """The model or the candidates changed: the next count starts over."""
    call.input_tokens_estimate = 0

