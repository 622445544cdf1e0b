"""A request as the scheduler sees it: token ids, its cache blocks and its progress."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from warmroute.engine.block_pool import Block
from warmroute.types import SamplingParams


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class SeqEvent:
    """What the scheduler reports: a new token, or the end (with why): finished, failed alone
    (`failed`: this request's own computation raised) or failed with the engine (`error`)."""

    token_id: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    failed: str | None = None


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams
    salt: str = ""
    emit: Callable[[SeqEvent], None] = field(default=lambda event: None)
    output_ids: list[int] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    num_cached_tokens: int = 0
    num_computed: int = 0
    status: SeqStatus = SeqStatus.WAITING
    # Set from other threads: the client went away, or a stop string ended the answer.
    stop_requested: bool = False
    kv: Any = None
    generator: Any = None
    priority: int = 0  # lower goes first, under the scheduler's `priority` policy
    arrival: int = 0  # set by the scheduler: the order sequences came in

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids
