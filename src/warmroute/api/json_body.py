"""Reading a JSON request body with xAI's answers for what is wrong with it (415, 413, 400);
writing a JSON answer (`json_response`: orjson, as the relayed answers are written).

Valid JSON that Python could not carry on with is a 400 here too: nesting deeper than the
interpreter recurses, integers beyond Python's 4,300-digit limit, NaN or infinite numbers, and
strings with lone surrogates (no UTF-8 encodes them). `parse_json_object` is pure CPU:
`read_json_object` runs it off the event loop for a body over `OFF_LOOP_BYTES`.

orjson parses first (about ten times faster here); whatever it refuses, or could have read
differently from the standard library, is parsed again by the standard library, whose answers
(and error messages) are the reference. orjson refuses every lone surrogate; it reads an integer
outside 64 bits as a float (so a float of 2**63 or more, in magnitude, in its answer sends the body
to the standard library), and nests deeper than the interpreter recurses (so does an answer nested
more than `MAX_FAST_DEPTH` deep). These checks walk the parsed values, not the bytes: a prompt of
hundreds of kilobytes costs what its few values cost (a regular expression over the bytes cost
17 µs per KiB here, 30 times orjson's parse, on the event loop, ahead of every request behind it).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from warmroute import jsoncodec
from warmroute.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

DEFAULT_MAX_BODY_BYTES = 20 * 2**20
OFF_LOOP_BYTES = 256 * 2**10


BIG_FLOAT = 2.0**63  # orjson reads integers outside [-2**63, 2**64) as floats, all this big
MAX_FAST_DEPTH = 200  # nesting this deep is far from the interpreter's recursion limit
# A surrogate written as an escape, or (json accepts it from bytes) encoded as if UTF-8 could.
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


async def read_json_object(
    request: Request, max_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> dict[str, Any]:
    body = await read_body(request, max_bytes)
    if len(body) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse_json_object, body)
    return parse_json_object(body)


async def read_body(request: Request, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> bytes:
    """The body of a request that says it is JSON, within `max_bytes` (else 415 or 413)."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the body exceeds the limit of {max_bytes} bytes")
    body = bytearray()
    while True:  # the ASGI messages themselves: Starlette's stream() costs more per request
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body.extend(message.get("body", b""))
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"the body exceeds the limit of {max_bytes} bytes")
        if not message.get("more_body", False):
            break
    if not body:
        raise UnsupportedMediaType("the body is empty; send a JSON object")
    return bytes(body)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The JSON object in `body`, or `InvalidRequest` saying what is wrong with it."""
    try:
        fast = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # the standard library says what is wrong
    else:
        if isinstance(fast, dict) and _reads_the_same(fast):
            return fast
    try:
        parsed = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise InvalidRequest("the body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits, NaN
        if "integer string conversion" in str(exc):
            raise InvalidRequest("the body has an integer of more than 4,300 digits") from exc
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise InvalidRequest("the body must be a JSON object")
    if _SURROGATE.search(body) is not None:
        _check_encodable(parsed)
    return parsed


def _reads_the_same(parsed: dict[str, Any]) -> bool:
    """Whether the standard library reads the body orjson parsed into `parsed` the same way:
    no float that may have been a big integer, no nesting deeper than `MAX_FAST_DEPTH`."""
    stack: list[tuple[Any, int]] = [(parsed, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_FAST_DEPTH:
            return False
        for item in value.values() if type(value) is dict else value:
            kind = type(item)
            if kind is dict or kind is list:
                stack.append((item, depth + 1))
            elif kind is float and not -BIG_FLOAT < item < BIG_FLOAT:
                return False
    return True


def _check_encodable(parsed: dict[str, Any]) -> None:
    """Refuse a lone surrogate anywhere in `parsed` (paired ones were joined by the parser)."""
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            "the body contains a lone surrogate (such as \\ud800), which is not text"
        ) from exc
    except RecursionError as exc:
        raise InvalidRequest("the body is nested too deeply") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def json_response(obj: dict[str, Any], headers: dict[str, str]) -> Response:
    """A 200 answer of `obj` as compact JSON, non-ASCII as UTF-8 (as Starlette's JSONResponse
    writes it, several times faster)."""
    return Response(jsoncodec.dumps(obj), headers=headers, media_type="application/json")
