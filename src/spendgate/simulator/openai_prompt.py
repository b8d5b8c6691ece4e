"""Reading OpenAI chat and legacy prompts: validation, token counts, the prompt digest."""

from __future__ import annotations

from typing import Any

from spendgate.simulator.errors import Flavor, bad_request
from spendgate.simulator.tokens import IMAGE_TOKENS, PromptBuilder

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MESSAGE_OVERHEAD = 3  # tokens per message, as in OpenAI's cookbook formula
REPLY_PRIMING = 3


def chat_prompt(model: str, body: dict[str, Any], flavor: Flavor) -> PromptBuilder:
    messages = body.get("messages")
    if messages is None:
        raise bad_request(flavor, "Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise bad_request(
            flavor, f"Invalid type for 'messages': expected an array of objects, but got {type(messages).__name__} instead.", "messages", "invalid_type"
        )
    if not messages:
        raise bad_request(
            flavor, "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.", "messages", "empty_array"
        )
    b = PromptBuilder(model, REPLY_PRIMING)
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            b.value(tool)
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        b.value(rf)
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_request(flavor, f"Invalid type for 'messages[{i}]': expected an object.", f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(
                flavor,
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'.",
                f"messages[{i}].role",
                "invalid_value",
            )
        b.fixed(role, MESSAGE_OVERHEAD)
        _content(b, m.get("content"))
        name = m.get("name")
        if isinstance(name, str):
            b.text(name, 1)
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                b.value(call.get("function") if isinstance(call, dict) else call)
        call_id = m.get("tool_call_id")
        if isinstance(call_id, str):
            b.fixed(call_id, 0)
    return b


def _content(b: PromptBuilder, content: Any) -> None:
    if content is None:
        return
    if isinstance(content, str):
        b.text(content)
        return
    if not isinstance(content, list):
        b.value(content)
        return
    for part in content:
        if not isinstance(part, dict):
            b.value(part)
            continue
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            b.text(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            b.fixed("image:" + str(url.get("url") if isinstance(url, dict) else url), IMAGE_TOKENS)
        else:
            b.value(part)


def legacy_prompts(model: str, body: dict[str, Any], flavor: Flavor) -> tuple[list[PromptBuilder], int]:
    """One builder per prompt of a (possibly batched) legacy completion, and total tokens."""
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request(flavor, "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise bad_request(flavor, "Invalid 'prompt': expected a string, an array of strings or an array of tokens.", "prompt", "invalid_type")
    builders: list[PromptBuilder] = []
    for p in prompt:
        b = PromptBuilder(model)
        if isinstance(p, str):
            b.text(p)
        elif isinstance(p, list) and all(isinstance(t, int) for t in p):
            b.fixed(",".join(map(str, p)), len(p))
        else:
            raise bad_request(flavor, "Invalid 'prompt': expected a string, an array of strings or an array of tokens.", "prompt", "invalid_type")
        builders.append(b)
    return builders, sum(b.tokens for b in builders)
