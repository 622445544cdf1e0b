"""Reading token usage out of answers as they pass through, without holding them up.

A JSON answer carries `usage`; a stream carries it in its final `choices: []` chunk (and, as
asked of engines, so far on every chunk), read by the stream's one decoder (`resume.StreamSplice`).
"""

from __future__ import annotations

from typing import Any

from warmroute.types import Usage


def usage_from(data: dict[str, Any]) -> Usage:
    """All three counts of a usage object known to be one (engines' answers we asked for)."""
    details = data.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens", 0)),
        completion_tokens=int(data.get("completion_tokens", 0)),
        cached_tokens=int(details.get("cached_tokens") or 0),
    )


def usage_of(answer: object) -> Usage | None:
    """The usage of an answer from any server, checked field by field (a missing completion or
    cached count is 0; no integer `prompt_tokens`, no usage)."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    details: Any = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    completion = usage.get("completion_tokens")
    if not isinstance(prompt, int):
        return None
    return Usage(prompt, completion if isinstance(completion, int) else 0,
                 cached if isinstance(cached, int) else 0)
