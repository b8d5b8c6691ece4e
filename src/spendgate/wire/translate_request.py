"""Request bodies across wire formats: OpenAI Chat Completions <-> Anthropic Messages.

A client that speaks one format may be routed to a deployment that speaks the
other. These functions take an already-parsed body and return a new one for the
upstream; they never mutate their input (the output may share nested values,
such as tool schemas, with it) and never touch the network.

Fields with a faithful counterpart are mapped, harmless ones without one are
dropped, and requests that cannot be served as asked (n > 1, audio input,
server-side tools) raise `TranslationError` so the client gets a clear 400
instead of a silently different answer. docs/translation.md lists each case.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI does not.
ANTHROPIC_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_DATA_URL = re.compile(r"^data:(?P<mt>[\w.+-]+/[\w.+-]+)(?:;[^,;]*)*;base64,(?P<data>.*)$", re.S)
_BAD_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")

Json = dict[str, Any]


class TranslationError(ValueError):
    """The request asks for something the other format cannot serve."""


# ---------------------------------------------------------------- shared bits


def _empty_schema() -> Json:
    """A fresh schema for parameterless tools (both APIs want an object schema)."""
    return {"type": "object", "properties": {}}


def parse_arguments(arguments: Any) -> Json:
    """OpenAI tool-call `arguments` (a JSON string) -> Anthropic `input` (an object).

    Models sometimes emit invalid JSON; the text is kept under `_raw` rather
    than dropped, and `dump_input` turns it back into the same string.
    """
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        parsed = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        return {"_raw": str(arguments)}
    return parsed if isinstance(parsed, dict) else {"_raw": str(arguments)}


def dump_input(tool_input: Any) -> str:
    """Anthropic tool `input` -> OpenAI `arguments` string; undoes `parse_arguments`."""
    if isinstance(tool_input, dict) and set(tool_input) == {"_raw"} and isinstance(tool_input["_raw"], str):
        return tool_input["_raw"]
    return orjson.dumps(tool_input if tool_input is not None else {}).decode()


def anthropic_tool_id(call_id: Any) -> str:
    """Anthropic requires tool ids matching ^[a-zA-Z0-9_-]+$; OpenAI ids are free-form."""
    cleaned = _BAD_ID_CHARS.sub("_", str(call_id or ""))
    return cleaned or "toolu_missing"


def text_of(content: Any) -> str:
    """Text of a string or of a list of text-bearing parts/blocks (others ignored)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = [p.get("text") or p.get("refusal") or "" for p in content if isinstance(p, dict)]
    return "".join(t for t in texts if isinstance(t, str))


# ------------------------------------------------------ OpenAI -> Anthropic


def openai_chat_to_anthropic(body: Json, model: str) -> Json:
    """OpenAI chat request -> Anthropic Messages request for upstream `model`."""
    _refuse_unservable_openai(body)
    system, messages = _openai_messages_to_anthropic(body.get("messages") or [])
    extra_system = _response_format_instruction(body.get("response_format"))
    if extra_system:
        system = f"{system}\n\n{extra_system}" if system else extra_system
    out: Json = {"model": model, "messages": messages, "max_tokens": _max_tokens(body)}
    if system:
        out["system"] = system
    _copy_sampling_to_anthropic(body, out)
    tools, choice = _openai_tools_to_anthropic(body)
    if tools:
        out["tools"] = tools
        if choice is not None:
            out["tool_choice"] = choice
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if body.get("stream"):
        out["stream"] = True
    return out


def _refuse_unservable_openai(body: Json) -> None:
    """Fail loudly on requests whose answer would differ in kind, not just in detail."""
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        raise TranslationError(
            f"n={n} is not supported by this model's deployment (Anthropic Messages returns one choice per request); "
            "send n=1 or make separate requests"
        )
    if body.get("functions") or body.get("function_call"):
        raise TranslationError(
            "the deprecated `functions`/`function_call` parameters are not supported here; use `tools`"
        )
    if "audio" in (body.get("modalities") or []):
        raise TranslationError("audio output is not supported by this model's deployment")


def _max_tokens(body: Json) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_TOKENS


def _copy_sampling_to_anthropic(body: Json, out: Json) -> None:
    """OpenAI temperature spans 0..2, Anthropic's 0..1: values above 1 are clamped."""
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)):
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    top_p = body.get("top_p")
    if isinstance(top_p, (int, float)):
        out["top_p"] = top_p
    stop = body.get("stop")
    if isinstance(stop, str) and stop:
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list):
        sequences = [s for s in stop if isinstance(s, str) and s]
        if sequences:
            out["stop_sequences"] = sequences


def _response_format_instruction(fmt: Any) -> str:
    """Best effort for `response_format`: Anthropic has no JSON mode, so ask for it in words."""
    if not isinstance(fmt, dict):
        return ""
    if fmt.get("type") == "json_object":
        return "Respond with a single valid JSON object and nothing else: no prose, no code fences."
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = orjson.dumps(spec.get("schema") or {}).decode()
        return (
            "Respond with a single valid JSON value and nothing else (no prose, no code fences) "
            f"that conforms to this JSON Schema:\n{schema}"
        )
    return ""


def _openai_messages_to_anthropic(messages: list[Json]) -> tuple[str, list[Json]]:
    """Hoist system/developer text; convert the rest; merge same-role neighbours."""
    system_parts: list[str] = []
    turns: list[Json] = []
    for msg in messages:
        role = msg.get("role")
        if role in ("system", "developer"):
            text = text_of(msg.get("content"))
            if text:
                system_parts.append(text)
            continue
        converted = _openai_message_to_anthropic(msg)
        if converted is not None:
            _append_merging(turns, converted)
    _trim_final_assistant(turns)
    return "\n\n".join(system_parts), turns


def _openai_message_to_anthropic(msg: Json) -> Json | None:
    role = msg.get("role")
    if role == "user":
        content = _openai_user_content(msg.get("content"))
        return {"role": "user", "content": content} if content else None
    if role == "assistant":
        blocks = _openai_assistant_blocks(msg)
        return {"role": "assistant", "content": blocks} if blocks else None
    if role == "tool":
        return {"role": "user", "content": [_openai_tool_result(msg)]}
    if role == "function":
        raise TranslationError("messages with role 'function' (deprecated) are not supported here; use tools")
    raise TranslationError(f"unsupported message role: {role!r}")


def _openai_user_content(content: Any) -> str | list[Json]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    blocks = [b for b in (_openai_part_to_block(p) for p in content) if b is not None]
    return blocks


def _openai_part_to_block(part: Json) -> Json | None:
    kind = part.get("type")
    if kind == "text":
        text = part.get("text") or ""
        return {"type": "text", "text": text} if text else None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        return _image_block(str(url or ""))
    if kind == "file":
        return _file_block(part.get("file") or {})
    if kind == "input_audio":
        raise TranslationError("audio input is not supported by this model's deployment")
    raise TranslationError(f"unsupported content part type: {kind!r}")


def _image_block(url: str) -> Json:
    """OpenAI image URL (http(s) or base64 data URL) -> Anthropic image block."""
    match = _DATA_URL.match(url)
    if match:
        media_type = match["mt"].lower()
        if media_type == "image/jpg":
            media_type = "image/jpeg"
        if media_type not in ANTHROPIC_IMAGE_TYPES:
            raise TranslationError(f"image type {media_type!r} is not supported (use jpeg, png, gif or webp)")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": match["data"]}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError("image_url must be an http(s) URL or a base64 data URL")


def _file_block(file: Json) -> Json:
    """Inline PDFs become Anthropic documents; OpenAI file ids mean nothing to Anthropic."""
    match = _DATA_URL.match(str(file.get("file_data") or ""))
    if match and match["mt"].lower() == "application/pdf":
        source = {"type": "base64", "media_type": "application/pdf", "data": match["data"]}
        block: Json = {"type": "document", "source": source}
        if file.get("filename"):
            block["title"] = file["filename"]
        return block
    if file.get("file_id"):
        raise TranslationError("file_id references are not supported by this model's deployment; send file_data inline")
    raise TranslationError("only inline PDF files (file_data as a base64 data URL) are supported")


def _openai_assistant_blocks(msg: Json) -> list[Json]:
    blocks: list[Json] = []
    text = text_of(msg.get("content")) or (msg.get("refusal") or "")
    if text:
        blocks.append({"type": "text", "text": text})
    for call in msg.get("tool_calls") or []:
        if call.get("type", "function") != "function":
            raise TranslationError(f"tool call type {call.get('type')!r} is not supported by this model's deployment")
        fn = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": anthropic_tool_id(call.get("id")),
                "name": fn.get("name") or "",
                "input": parse_arguments(fn.get("arguments")),
            }
        )
    return blocks


def _openai_tool_result(msg: Json) -> Json:
    block: Json = {"type": "tool_result", "tool_use_id": anthropic_tool_id(msg.get("tool_call_id"))}
    text = text_of(msg.get("content"))
    if text:
        block["content"] = text
    return block


def _as_blocks(content: str | list[Json]) -> list[Json]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _append_merging(turns: list[Json], msg: Json) -> None:
    """Anthropic wants alternating turns: fold a message into a same-role predecessor.

    Tool results stay ahead of other user content because a tool message always
    comes first in its merged turn (OpenAI puts tool messages right after the
    assistant turn that called them).
    """
    if turns and turns[-1]["role"] == msg["role"]:
        last = turns[-1]
        last["content"] = _as_blocks(last["content"]) + _as_blocks(msg["content"])
    else:
        turns.append(dict(msg))


def _trim_final_assistant(turns: list[Json]) -> None:
    """Anthropic rejects a final (prefill) assistant turn ending in whitespace."""
    if not turns or turns[-1]["role"] != "assistant":
        return
    blocks = turns[-1]["content"]
    if blocks and blocks[-1].get("type") == "text":
        trimmed = blocks[-1]["text"].rstrip()
        if trimmed:
            blocks[-1] = {**blocks[-1], "text": trimmed}
        else:
            blocks.pop()
    if not blocks:
        turns.pop()


def _openai_tools_to_anthropic(body: Json) -> tuple[list[Json], Json | None]:
    tools = [_openai_tool_to_anthropic(t) for t in body.get("tools") or []]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        names = {(t.get("function") or {}).get("name") for t in allowed.get("tools") or []}
        tools = [t for t in tools if t["name"] in names]
        choice = "required" if allowed.get("mode") == "required" else "auto"
    if not tools:
        return [], None
    return tools, _openai_tool_choice(choice, body.get("parallel_tool_calls"))


def _openai_tool_to_anthropic(tool: Json) -> Json:
    if tool.get("type", "function") != "function":
        raise TranslationError(f"tool type {tool.get('type')!r} is not supported by this model's deployment")
    fn = tool.get("function") or {}
    out: Json = {"name": fn.get("name") or "", "input_schema": fn.get("parameters") or _empty_schema()}
    if fn.get("description"):
        out["description"] = fn["description"]
    if fn.get("strict") is True:
        out["strict"] = True
    return out


def _openai_tool_choice(choice: Any, parallel: Any) -> Json | None:
    """`parallel_tool_calls: false` rides on the choice, as Anthropic models it."""
    if choice == "none":
        return {"type": "none"}  # Anthropic's "none" takes no parallel flag
    if choice is None and parallel is not False:
        return None  # both sides default to auto
    if choice in (None, "auto"):
        out: Json = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        out = {"type": "tool", "name": (choice.get("function") or {}).get("name") or ""}
    elif isinstance(choice, dict):
        raise TranslationError(f"tool_choice type {choice.get('type')!r} is not supported by this model's deployment")
    else:
        raise TranslationError(f"unsupported tool_choice: {choice!r}")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


# ------------------------------------------------------ Anthropic -> OpenAI


def anthropic_to_openai_chat(body: Json, model: str, *, max_tokens_field: str = "max_tokens") -> Json:
    """Anthropic Messages request -> OpenAI chat request for upstream `model`.

    `max_tokens_field="max_completion_tokens"` serves OpenAI reasoning models,
    which reject `max_tokens`; OpenAI-compatible servers want the default.
    """
    messages = _anthropic_system_to_openai(body.get("system"))
    for msg in body.get("messages") or []:
        messages.extend(_anthropic_message_to_openai(msg))
    out: Json = {"model": model, "messages": messages}
    if isinstance(body.get("max_tokens"), int):
        out[max_tokens_field] = body["max_tokens"]
    _copy_sampling_to_openai(body, out)
    _anthropic_tools_to_openai(body, out)
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        out["user"] = user
    fmt = (body.get("output_config") or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt.get("schema") or {}, "strict": True},
        }
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _copy_sampling_to_openai(body: Json, out: Json) -> None:
    for name in ("temperature", "top_p"):
        if isinstance(body.get(name), (int, float)):
            out[name] = body[name]
    stops = [s for s in body.get("stop_sequences") or [] if isinstance(s, str) and s]
    if stops:
        out["stop"] = stops


def _anthropic_system_to_openai(system: Any) -> list[Json]:
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    parts = [{"type": "text", "text": b["text"]} for b in system or [] if b.get("type") == "text" and b.get("text")]
    if not parts:
        return []
    return [{"role": "system", "content": parts[0]["text"] if len(parts) == 1 else parts}]


def _anthropic_message_to_openai(msg: Json) -> list[Json]:
    role = msg.get("role")
    content = msg.get("content")
    if role == "system":  # newer API versions allow in-conversation system turns
        text = text_of(content)
        return [{"role": "system", "content": text}] if text else []
    if role == "assistant":
        return _anthropic_assistant_to_openai(content)
    if role == "user":
        return _anthropic_user_to_openai(content)
    raise TranslationError(f"unsupported message role: {role!r}")


def _anthropic_assistant_to_openai(content: Any) -> list[Json]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    texts: list[str] = []
    calls: list[Json] = []
    for block in content or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": dump_input(block.get("input"))},
                }
            )
        elif kind not in ("thinking", "redacted_thinking"):
            raise TranslationError(f"assistant content block {kind!r} is not supported by this model's deployment")
    msg: Json = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        msg["tool_calls"] = calls
    if msg["content"] is None and not calls:
        return []
    return [msg]


def _anthropic_user_to_openai(content: Any) -> list[Json]:
    """Tool results become `tool` messages placed first, as OpenAI expects them
    right after the assistant turn that made the calls."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[Json] = []
    parts: list[Json] = []
    for block in content or []:
        if block.get("type") == "tool_result":
            tool_msg, images = _anthropic_tool_result_to_openai(block)
            out.append(tool_msg)
            parts.extend(images)
        else:
            part = _anthropic_block_to_part(block)
            if part is not None:
                parts.append(part)
    if parts:
        only_text = len(parts) == 1 and parts[0]["type"] == "text"
        out.append({"role": "user", "content": parts[0]["text"] if only_text else parts})
    return out


def _anthropic_tool_result_to_openai(block: Json) -> tuple[Json, list[Json]]:
    """OpenAI tool messages carry text only; images in a result follow as user content."""
    content = block.get("content")
    images: list[Json] = []
    if isinstance(content, list):
        texts = []
        for item in content:
            part = _anthropic_block_to_part(item)
            if part is None:
                continue
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(part)
        text = "\n".join(texts)
    else:
        text = content or ""
    if block.get("is_error"):
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}, images


def _anthropic_block_to_part(block: Json) -> Json | None:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block.get("text") or ""}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _anthropic_image_url(block.get("source") or {})}}
    if kind == "document":
        return _anthropic_document_to_part(block.get("source") or {}, block.get("title"))
    if kind in ("thinking", "redacted_thinking"):
        return None
    raise TranslationError(f"content block {kind!r} is not supported by this model's deployment")


def _anthropic_image_url(source: Json) -> str:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if source.get("type") == "url":
        return str(source.get("url"))
    raise TranslationError(f"image source {source.get('type')!r} is not supported by this model's deployment")


def _anthropic_document_to_part(source: Json, title: Any) -> Json:
    kind = source.get("type")
    if kind == "base64" and source.get("media_type") == "application/pdf":
        filename = title if isinstance(title, str) and title else "document.pdf"
        data_url = f"data:application/pdf;base64,{source.get('data')}"
        return {"type": "file", "file": {"filename": filename, "file_data": data_url}}
    if kind == "text":
        return {"type": "text", "text": source.get("data") or ""}
    if kind == "content":
        return {"type": "text", "text": text_of(source.get("content"))}
    raise TranslationError(f"document source {kind!r} is not supported by this model's deployment")


def _anthropic_tools_to_openai(body: Json, out: Json) -> None:
    tools = [_anthropic_tool_to_openai(t) for t in body.get("tools") or []]
    if not tools:
        return
    out["tools"] = tools
    choice = body.get("tool_choice") or {}
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False


def _anthropic_tool_to_openai(tool: Json) -> Json:
    """Only client tools translate; Anthropic server tools run inside Anthropic."""
    if tool.get("type") not in (None, "custom"):
        raise TranslationError(f"server tool {tool.get('type')!r} is not available on this model's deployment")
    fn: Json = {"name": tool.get("name"), "parameters": tool.get("input_schema") or _empty_schema()}
    if tool.get("description"):
        fn["description"] = tool["description"]
    if tool.get("strict") is True:
        fn["strict"] = True
    return {"type": "function", "function": fn}
