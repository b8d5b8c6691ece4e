"""Reading an Anthropic Messages request: validation, token counts, cache breakpoints.

The prompt is walked in Anthropic's cache order — tools, then system, then
messages — and every block carrying `cache_control` becomes a breakpoint whose
prefix can be written to or read from the prompt cache.
"""

from __future__ import annotations

from typing import Any

from spendgate.simulator.errors import bad_request
from spendgate.simulator.tokens import ANTHROPIC_IMAGE_TOKENS, PromptBuilder

BASE_OVERHEAD = 4
MESSAGE_OVERHEAD = 3
TOOLS_OVERHEAD = 300  # the tool-use system prompt Anthropic adds when tools are given


def messages_prompt(model: str, body: dict[str, Any]) -> PromptBuilder:
    messages = body.get("messages")
    if messages is None:
        raise bad_request("anthropic", "messages: Field required")
    if not isinstance(messages, list):
        raise bad_request("anthropic", "messages: Input should be a valid list")
    if not messages:
        raise bad_request("anthropic", "messages: at least one message is required")
    b = PromptBuilder(model, BASE_OVERHEAD)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise bad_request("anthropic", "tools: Input should be a valid list")
    if tools:
        b.fixed("tools", TOOLS_OVERHEAD)
        for tool in tools:
            if not isinstance(tool, dict):
                raise bad_request("anthropic", "tools.0: Input should be a valid dictionary")
            b.value({k: v for k, v in tool.items() if k != "cache_control"})
            _maybe_mark(b, tool)
    system = body.get("system")
    if isinstance(system, str):
        b.text(system)
    elif isinstance(system, list):
        for block in system:
            _block(b, block)
    elif system is not None:
        raise bad_request("anthropic", "system: Input should be a valid string or list of blocks")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_request("anthropic", f"messages.{i}: Input should be a valid dictionary")
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise bad_request(
                "anthropic",
                f'messages.{i}.role: Input should be \'user\' or \'assistant\' (got "{role}"; '
                "the Messages API takes a top-level `system` parameter, not a system role)",
            )
        b.fixed(role, MESSAGE_OVERHEAD)
        content = m.get("content")
        if isinstance(content, str):
            b.text(content)
        elif isinstance(content, list):
            for block in content:
                _block(b, block)
        else:
            raise bad_request("anthropic", f"messages.{i}.content: Input should be a valid string or list of blocks")
    return b


def _maybe_mark(b: PromptBuilder, block: dict[str, Any]) -> None:
    cc = block.get("cache_control")
    if isinstance(cc, dict) and cc.get("type") == "ephemeral":
        b.mark(one_hour=cc.get("ttl") == "1h")


def _block(b: PromptBuilder, block: Any) -> None:
    if not isinstance(block, dict):
        b.value(block)
        return
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        b.text(block["text"])
    elif kind == "image":
        b.fixed("image:" + str(block.get("source")), ANTHROPIC_IMAGE_TOKENS)
    elif kind == "tool_result":
        inner = block.get("content")
        b.fixed(str(block.get("tool_use_id")), 0)
        if isinstance(inner, str):
            b.text(inner)
        elif isinstance(inner, list):
            for sub in inner:
                _block(b, sub)
    elif kind == "thinking" and isinstance(block.get("thinking"), str):
        b.text(block["thinking"])
    else:
        b.value({k: v for k, v in block.items() if k != "cache_control"})
    _maybe_mark(b, block)


def last_turn_is_tool_result(body: dict[str, Any]) -> bool:
    last = body["messages"][-1]
    content = last.get("content") if isinstance(last, dict) else None
    return isinstance(content, list) and any(isinstance(x, dict) and x.get("type") == "tool_result" for x in content)
