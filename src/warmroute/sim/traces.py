"""Mooncake FAST'25 traces (`../shared/traces/`): loading, slicing, and conversation ids.

Each line has `timestamp` (ms), `input_length`, `output_length` and `hash_ids`, one prefix hash
per 512-token block. Conversations are inferred as the traces' README describes: a request
whose ids extend an earlier request's ids (less that request's last, usually partial, block)
beyond block 0 continues that conversation, the longest such match winning. On the conversation
trace this gives 8,057 conversations, 2,012 of them with more than one request, the longest 43.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TRACE_FILES = {"conversation": "conversation_trace.jsonl", "synthetic": "synthetic_trace.jsonl"}


@dataclass(frozen=True)
class TraceRequest:
    index: int
    timestamp_ms: int
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]
    conversation: int

    @property
    def conv_id(self) -> str:
        return f"conv-{self.conversation}"


def default_trace_dir() -> Path:
    """`../shared/traces` next to the repository this package was installed from."""
    return Path(__file__).resolve().parents[3].parent / "shared" / "traces"


def resolve_trace(spec: str, trace_dir: Path | None = None) -> Path:
    """`conversation` or `synthetic` (files in the trace dir), else a path to a JSONL file."""
    if spec in TRACE_FILES:
        return (trace_dir or default_trace_dir()) / TRACE_FILES[spec]
    return Path(spec)


def read_lines(path: Path) -> Iterator[tuple[int, int, int, tuple[int, ...]]]:
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                yield (int(row["timestamp"]), int(row["input_length"]),
                       int(row["output_length"]), tuple(int(h) for h in row["hash_ids"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a Mooncake trace line: {exc}") from exc


def load_mooncake(
    path: Path, window_s: float | None = None, max_requests: int | None = None
) -> list[TraceRequest]:
    """The requests of the trace's first `window_s` seconds (and at most `max_requests`), with
    inferred conversation numbers (0, 1, ... in order of first appearance)."""
    ends: dict[int, int] = {}  # last id of an earlier request's ids minus its last block -> conv
    conversations = 0
    out: list[TraceRequest] = []
    for timestamp, input_length, output_length, ids in read_lines(path):
        if window_s is not None and timestamp >= window_s * 1000:
            break
        if max_requests is not None and len(out) >= max_requests:
            break
        conversation = next(
            (ends[ids[k - 1]] for k in range(len(ids), 1, -1) if ids[k - 1] in ends), None
        )
        if conversation is None:
            conversation, conversations = conversations, conversations + 1
        if len(ids) >= 3:  # ids minus the last block reach beyond block 0
            ends[ids[-2]] = conversation
        out.append(TraceRequest(len(out), timestamp, input_length, output_length, ids,
                                conversation))
    return out
