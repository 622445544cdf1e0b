"""From one Chat Completions request to the `RequestFeatures` placement looks at.

The routing key is the `x-grok-conv-id` header, else `prompt_cache_key` in the body; it is
validated here (at most 256 characters, no control characters). Keyless requests get an
affinity digest of the conversation's *opening*: the leading system/developer messages plus
the first 1 KiB of the first other message. So

- requests sharing a long system prompt but opening with different user messages get different
  digests and spread over the engines (the shared prefix does not hot-spot one engine);
- an exact repeat of a prompt, and every later turn of a keyless conversation (which repeats its
  opening), gets the same digest, so it lands where its prefix is cached.

Requests whose openings agree on all of that are one hot prefix; the load cap spreads them.

For the `cache-aware` policy the whole prompt is also cut into `CHUNK_BYTES`-byte chunks
of a canonical rendering (role, then content, per message) with chained digests
(`prompt_chunks`), so the gateway's prefix index can tell which engine holds how much of it. The
chain starts from the tenant (`tenant_id`, a digest of the tenant's secret cache salt), as the
engines' block hashes do: one tenant's digests say nothing about another's prompts, so routing
can neither reveal nor be steered by what another tenant sent.
This module reads the raw body (a dict) and does no validation beyond the key: engines judge the
rest, and their 4xx answers pass through.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from warmroute.errors import InvalidRequest
from warmroute.gateway.policies import RequestFeatures

CONV_ID_HEADER = "x-grok-conv-id"
MAX_KEY_CHARS = 256
OPENING_CHARS = 1024
LEADING_ROLES = ("system", "developer")
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")  # exactly Unicode's category Cc
CHUNK_BYTES = 256
MAX_CHUNKS = 4096  # 1 MiB of prompt text; a longer prompt's tail is not indexed


def request_features(
    headers: Mapping[str, str], body: Mapping[str, Any], chunks: bool = True, tenant: str = ""
) -> RequestFeatures:
    """The key, else the opening's digest; with `chunks` (the cache-aware policy, the only one
    that reads them) the prompt's chunk digests too, salted with `tenant` (`tenant_id`)."""
    key = routing_key(headers, body)
    messages = body.get("messages")
    digests = prompt_chunks(messages, tenant) if chunks else ()
    if key is not None:
        return RequestFeatures(key=key, chunks=digests, tenant=tenant)
    return RequestFeatures(affinity=affinity_digest(messages), chunks=digests, tenant=tenant)


def tenant_id(cache_salt: str) -> str:
    """A short stable name for the tenant a cache salt belongs to (16 hex digits)."""
    return hashlib.blake2b(cache_salt.encode(), digest_size=8).hexdigest()


def prompt_chunks(messages: object, tenant: str = "",
                  chunk_bytes: int = CHUNK_BYTES) -> tuple[int, ...]:
    """Chained 64-bit digests of the prompt's full `chunk_bytes`-byte chunks (UTF-8), starting
    from `tenant`: digest k covers chunks 0..k, so two prompts of one tenant share digest k
    exactly when they share that prefix."""
    if not isinstance(messages, list) or not messages:
        return ()
    text = "".join(f"{role}\x1f{content}\x1e" for role, content in map(role_and_text, messages))
    data = text.encode("utf-8", "surrogatepass")
    out: list[int] = []
    previous = tenant.encode()
    limit = min(len(data) // chunk_bytes, MAX_CHUNKS)
    for index in range(limit):
        chunk = data[index * chunk_bytes : (index + 1) * chunk_bytes]
        previous = hashlib.blake2b(previous + chunk, digest_size=8).digest()
        out.append(int.from_bytes(previous, "big"))
    return tuple(out)


def routing_key(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """The conversation key, or None; raises `InvalidRequest` for a key that cannot be one."""
    header = headers.get(CONV_ID_HEADER)
    if header:
        return validate_key(header_text(header), CONV_ID_HEADER)
    field = body.get("prompt_cache_key")
    if field is None or field == "":
        return None
    if not isinstance(field, str):
        raise InvalidRequest("prompt_cache_key must be a string")
    return validate_key(field, "prompt_cache_key")


def header_text(value: str) -> str:
    """Header values arrive decoded as latin-1; read them as UTF-8 where they are."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def validate_key(key: str, source: str) -> str:
    if len(key) > MAX_KEY_CHARS:
        raise InvalidRequest(
            f"{source} must be at most {MAX_KEY_CHARS} characters, got {len(key)}"
        )
    if CONTROL_CHARACTER.search(key) is not None:
        raise InvalidRequest(f"{source} must not contain control characters")
    return key


def affinity_digest(messages: object) -> str | None:
    """A digest of the conversation's opening (see the module docstring); None if there is
    no message list to read."""
    if not isinstance(messages, list) or not messages:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for message in messages:
        role, text = role_and_text(message)
        digest.update(role.encode() + b"\x00")
        if role in LEADING_ROLES:
            digest.update(text.encode() + b"\x00")
            continue
        digest.update(text[:OPENING_CHARS].encode())
        break
    return digest.hexdigest()


def role_and_text(message: object) -> tuple[str, str]:
    if not isinstance(message, dict):
        return "", json.dumps(message, sort_keys=True, default=str)
    role = message.get("role")
    content = message.get("content")
    text = content if isinstance(content, str) else json.dumps(content, sort_keys=True)
    return (role if isinstance(role, str) else ""), text
