"""`POST /v1/embeddings`: deterministic unit vectors, float or base64 (the SDK's default).

A vector is derived from SHAKE-256 of the model and the input, so equal inputs get
equal vectors and different inputs get (nearly) orthogonal ones. Base64 is the
float32 little-endian encoding OpenAI uses; the float form is rounded through
float32 too, so both encodings decode to the same numbers.
"""

from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array
from typing import Any

import orjson
from aiohttp import web

from spendgate.simulator.directives import DIRECTIVE_MARK, parse_directives
from spendgate.simulator.errors import Flavor, bad_request
from spendgate.simulator.faults import Ask
from spendgate.simulator.openai_common import controls_for, intake, json_response, positive_int
from spendgate.simulator.state import SimulatorState
from spendgate.simulator.tokens import count_text

MAX_INPUTS = 2048


def native_dimensions(model: str) -> int:
    return 3072 if model.endswith("-large") else 1536


def unit_vector(model: str, data: bytes, dims: int) -> array:
    raw = array("h", hashlib.shake_256(model.encode() + b"\x00" + data).digest(2 * dims))
    norm = math.hypot(*raw) or 1.0
    inv = 1.0 / norm
    return array("f", [x * inv for x in raw])


def encode(vec: array, fmt: str) -> Any:
    if fmt == "base64":
        if sys.byteorder != "little":
            vec = array("f", vec)
            vec.byteswap()
        return base64.b64encode(vec.tobytes()).decode()
    return vec.tolist()


def _inputs(body: dict[str, Any], flavor: Flavor) -> list[tuple[bytes, int]]:
    """(bytes to hash, tokens) per input: strings, lists of strings, or token arrays."""
    value = body.get("input")
    if value is None:
        raise bad_request(flavor, "Missing required parameter: 'input'.", "input", "missing_required_parameter")
    if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(t, int) for t in value)):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > MAX_INPUTS:
        raise bad_request(flavor, "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.", "input")
    out: list[tuple[bytes, int]] = []
    for item in value:
        if isinstance(item, str) and item:
            out.append((item.encode(), count_text(item)))
        elif isinstance(item, list) and item and all(isinstance(t, int) for t in item):
            out.append((orjson.dumps(item), len(item)))
        else:
            raise bad_request(flavor, "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.", "input")
    return out


class Embeddings:
    def __init__(self, state: SimulatorState) -> None:
        self.state = state

    async def __call__(self, request: web.Request, flavor: Flavor) -> web.StreamResponse:
        state = self.state
        it = await intake(request, state, flavor)
        body, model = it.body, it.model
        inputs = _inputs(body, flavor)
        native = native_dimensions(model)
        dims = positive_int(body, "dimensions", flavor, native) or native
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise bad_request(flavor, f"Invalid value for 'encoding_format': '{fmt}'. Supported values are: 'float' and 'base64'.", "encoding_format", "invalid_value")
        directives: dict[str, str] = {}
        for data, _ in inputs:
            if DIRECTIVE_MARK.encode() in data:
                directives.update(parse_directives(data.decode(errors="replace")))
        controls = controls_for(request, directives, model)
        ask = Ask("embeddings", max(t for _, t in inputs))
        fault = state.faults.pick(controls, ask)
        await state.faults.wait_first_byte(controls)
        if fault is not None:
            refused = await state.faults.produce(fault, request, flavor, model, False, controls, ask)
            if refused is not None:
                return refused
        data = [
            {"object": "embedding", "index": i, "embedding": encode(unit_vector(model, raw, dims), fmt)} for i, (raw, _) in enumerate(inputs)
        ]
        tokens = sum(t for _, t in inputs)
        payload = {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return json_response(payload, it.headers())
