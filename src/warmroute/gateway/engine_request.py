"""The bytes of an HTTP/1.1 request to an engine: its request line and headers
(`engine_http.LeanUpstream` writes them, then the body)."""

from __future__ import annotations

import functools
from collections.abc import Mapping

MAX_ORIGINS = 4096  # origins whose `host` header is kept

Origin = tuple[str, str, int]  # scheme, host, port


@functools.lru_cache(maxsize=MAX_ORIGINS)
def authority(origin: Origin) -> bytes:
    """The `host` header of an origin (IDNA-encoded once per origin: the codec is slow)."""
    scheme, host, port = origin
    default = 443 if scheme == "https" else 80
    bracketed = f"[{host}]" if ":" in host else host  # an IPv6 address
    return (bracketed if port == default else f"{bracketed}:{port}").encode("idna")


def request_head(method: bytes, target: bytes, origin: Origin, headers: Mapping[str, str],
                 length: int) -> bytes:
    """The request line and headers; a header name or value with a line break is refused."""
    lines = [method + b" " + target + b" HTTP/1.1", b"host: " + authority(origin)]
    for name, value in headers.items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} has a line break")
        lines.append(f"{name}: {value}".encode("latin-1"))
    if method != b"GET" or length:
        lines.append(b"content-length: %d" % length)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)
