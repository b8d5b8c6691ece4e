"""`GET /v1/models`: a fixed list of real model names, in OpenAI's or Anthropic's shape."""

from __future__ import annotations

from aiohttp import web

from spendgate.simulator.errors import openai_error
from spendgate.simulator.openai_common import json_response

# (id, created, owned_by, display name)
MODELS: tuple[tuple[str, int, str, str], ...] = (
    ("gpt-4o", 1715367049, "system", "GPT-4o"),
    ("gpt-4o-mini", 1721172741, "system", "GPT-4o mini"),
    ("gpt-4.1", 1744316542, "system", "GPT-4.1"),
    ("gpt-4.1-mini", 1744318173, "system", "GPT-4.1 mini"),
    ("o3-mini", 1737146383, "system", "o3-mini"),
    ("text-embedding-3-small", 1705948997, "system", "text-embedding-3-small"),
    ("text-embedding-3-large", 1705953180, "system", "text-embedding-3-large"),
    ("gpt-3.5-turbo-instruct", 1692901427, "system", "GPT-3.5 Turbo Instruct"),
    ("claude-sonnet-4-5", 1759104000, "anthropic", "Claude Sonnet 4.5"),
    ("claude-haiku-4-5", 1760486400, "anthropic", "Claude Haiku 4.5"),
    ("claude-opus-4-1", 1754352000, "anthropic", "Claude Opus 4.1"),
    ("gemini-2.5-flash", 1750118400, "google", "Gemini 2.5 Flash"),
    ("gemini-2.5-pro", 1750118400, "google", "Gemini 2.5 Pro"),
)
_OPENAI = [{"id": m, "object": "model", "created": c, "owned_by": o} for m, c, o, _ in MODELS]
_BY_ID = {m["id"]: m for m in _OPENAI}


def _iso(ts: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_ANTHROPIC = [{"type": "model", "id": m, "display_name": d, "created_at": _iso(c)} for m, c, _, d in MODELS]


def list_models(anthropic_shape: bool) -> web.Response:
    if anthropic_shape:
        payload = {"data": _ANTHROPIC, "has_more": False, "first_id": _ANTHROPIC[0]["id"], "last_id": _ANTHROPIC[-1]["id"]}
        return json_response(payload, {})
    return json_response({"object": "list", "data": _OPENAI}, {})


def retrieve_model(model_id: str) -> web.Response:
    found = _BY_ID.get(model_id)
    if found is None:
        return openai_error(404, f"The model '{model_id}' does not exist or you do not have access to it.", code="model_not_found")
    return json_response(found, {})
