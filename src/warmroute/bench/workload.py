"""Workloads: what to send, to whom it belongs, and when — the same for every target.

A `Workload` is a list of conversations, each with a start time and turns. A chat turn carries
a user message and a think time: it is sent that long after the previous answer, with the whole
history (system prompt, earlier user messages and the answers actually received). A trace turn
carries the trace's block ids: its prompt is built from them alone, and it is sent at its own
(scaled) time, or once the previous turn is answered if that comes later.

- `synthetic_chats`: multi-turn chats, system prompts shared by many conversations, Poisson
  conversation arrivals, exponential think times, all drawn from one seed;
- `trace_workload`: a Mooncake trace replay (`traces.py`), time-scaled.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from warmroute.sim.textgen import BlockText, seeded_words
from warmroute.sim.traces import TraceRequest


@dataclass(frozen=True)
class Turn:
    max_tokens: int
    user: str = ""
    think_s: float = 0.0
    at_s: float | None = None
    hash_ids: tuple[int, ...] = ()
    input_length: int = 0


@dataclass(frozen=True)
class Conversation:
    conv_id: str
    start_s: float
    turns: tuple[Turn, ...]
    system: str | None = None


@dataclass(frozen=True)
class Workload:
    name: str
    conversations: tuple[Conversation, ...]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def num_requests(self) -> int:
        return sum(len(c.turns) for c in self.conversations)


@dataclass(frozen=True)
class ChatParams:
    conversations: int = 20
    turns: int = 4
    min_turns: int | None = None
    system_prompts: int = 2
    system_tokens: int = 400
    user_tokens: int = 40
    think_s: float = 0.5
    rate: float = 4.0
    max_tokens: int = 8
    seed: int = 0


def synthetic_chats(p: ChatParams) -> Workload:
    """Conversations arrive as a Poisson process of `rate` per second; each picks one of
    `system_prompts` shared system prompts, has `min_turns`..`turns` turns of about
    `user_tokens` words (±50 %), and waits an exponential think time (mean `think_s`)."""
    if p.conversations < 1 or p.turns < 1 or p.system_prompts < 1 or p.rate <= 0:
        raise ValueError("conversations, turns, system prompts and rate must be positive")
    rng = random.Random(p.seed)
    systems = [seeded_words(f"system-{p.seed}-{k}", p.system_tokens)
               for k in range(p.system_prompts)]
    low = max(1, min(p.min_turns or p.turns, p.turns))
    conversations: list[Conversation] = []
    clock = 0.0
    for c in range(p.conversations):
        clock += rng.expovariate(p.rate)
        turns = []
        for t in range(rng.randint(low, p.turns)):
            length = rng.randint(max(1, p.user_tokens // 2), max(1, p.user_tokens * 3 // 2))
            think = rng.expovariate(1.0 / p.think_s) if p.think_s > 0 and t > 0 else 0.0
            user = f"message {t + 1} of chat {c}: " + seeded_words(f"user-{p.seed}-{c}-{t}",
                                                                    length)
            turns.append(Turn(max_tokens=p.max_tokens, user=user, think_s=think))
        conversations.append(Conversation(
            f"chat-{p.seed}-{c}", round(clock, 6), tuple(turns),
            system=systems[rng.randrange(len(systems))],
        ))
    return Workload("chats", tuple(conversations), vars(p).copy())


@dataclass(frozen=True)
class TraceParams:
    speedup: float = 1.0
    max_output_tokens: int = 16


def trace_workload(name: str, requests: list[TraceRequest], p: TraceParams) -> Workload:
    """Each inferred conversation's requests, in order, at `timestamp / speedup` seconds.
    Answers are capped at `max_output_tokens` (client and gateway CPU stays bounded)."""
    if p.speedup <= 0 or p.max_output_tokens < 1:
        raise ValueError("speedup and max_output_tokens must be positive")
    by_conv: dict[int, list[TraceRequest]] = {}
    for request in requests:
        by_conv.setdefault(request.conversation, []).append(request)
    conversations = []
    for conv, reqs in by_conv.items():
        turns = tuple(
            Turn(max_tokens=max(1, min(r.output_length, p.max_output_tokens)),
                 at_s=r.timestamp_ms / 1000.0 / p.speedup, hash_ids=r.hash_ids,
                 input_length=r.input_length)
            for r in reqs
        )
        conversations.append(Conversation(f"conv-{conv}", turns[0].at_s or 0.0, turns))
    conversations.sort(key=lambda c: c.start_s)
    params = {"trace": name, "requests": len(requests), **vars(p)}
    return Workload(f"trace:{name}", tuple(conversations), params)


def trace_messages(turn: Turn, blocks: BlockText) -> list[dict[str, str]]:
    """A trace turn's prompt: its first block as the system message (the trace's shared system
    prompt where there is one), the rest as one user message; about `input_length` tokens."""
    words = blocks.prompt(turn.hash_ids, turn.input_length)
    head = words[: blocks.block_tokens]
    rest = words[blocks.block_tokens :] or ["continue"]
    return [{"role": "system", "content": " ".join(head)},
            {"role": "user", "content": " ".join(rest)}]
