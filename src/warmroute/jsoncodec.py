"""JSON on the hot path: orjson (several times faster than the standard library here), with the
standard library behind it for what orjson refuses to write (integers beyond 64 bits, which a
client may send and an engine must then refuse with a 400, not the gateway with a 500)."""

from __future__ import annotations

import json
from typing import Any

import orjson

loads = orjson.loads
DecodeError = orjson.JSONDecodeError  # a ValueError


def dumps(value: Any) -> bytes:
    """Compact JSON, non-ASCII as UTF-8."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: an integer over 64 bits, a lone surrogate
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass")
