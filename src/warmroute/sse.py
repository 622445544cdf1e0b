"""The one server-sent-events codec: `data: <json>\\n\\n` events ending with `data: [DONE]`.

Encoding for engines and surfaces, decoding for the gateway's stream pipeline (the metering,
resume and the neutral surfaces read engines' streams through `parse_events`/`split_events`).
No web framework here: response classes live with the surfaces (`api/sse.py`).
"""

from __future__ import annotations

from typing import Any

import orjson

from warmroute import jsoncodec

Event = dict[str, Any] | bytes  # a decoded JSON event, or a framed one kept as bytes (`[DONE]`)

DATA_PREFIX = b"data:"
DONE_PAYLOAD = b"[DONE]"
DONE = b"data: [DONE]\n\n"


def sse_data(payload: dict[str, Any]) -> bytes:
    """One event: compact JSON, non-ASCII as UTF-8 (what engines and surfaces send)."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


encode_event = sse_data


def typed_event(event: dict[str, Any]) -> bytes:
    """One event named by its `type` (`event: <type>` then its data), as the Responses and
    Messages streams send them (`jsoncodec`: fields a client sent, echoed, may hold integers
    wider than 64 bits)."""
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + jsoncodec.dumps(event) + b"\n\n"


def data_payload(block: bytes) -> bytes | None:
    """The payload of one `data:` line or event block (`data: x` or `data:x`), else None."""
    if not block.startswith(DATA_PREFIX):
        return None
    return block[len(DATA_PREFIX):].strip()


def parse_events(chunk: bytes) -> list[Any]:
    """SSE bytes (whole events) as a list: each `data:` JSON object as a dict, anything else
    (`[DONE]`, comments, malformed events) as its bytes, framed again."""
    out: list[Any] = []
    for block in chunk.split(b"\n\n"):
        if not block:
            continue
        payload = data_payload(block)
        try:
            event = orjson.loads(payload) if payload and payload != DONE_PAYLOAD else None
        except ValueError:
            event = None
        out.append(event if isinstance(event, dict) else block + b"\n\n")
    return out


def encode_events(events: list[Any]) -> bytes:
    """Events (dicts, or framed bytes: `parse_events`' output) as SSE bytes."""
    if len(events) == 1:  # the common case: one event per engine chunk
        event = events[0]
        return encode_event(event) if isinstance(event, dict) else event
    return b"".join(encode_event(e) if isinstance(e, dict) else e for e in events)
