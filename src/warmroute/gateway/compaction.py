"""Compaction: a conversation's history replaced by a summary the model writes, handed to the
client sealed (`sealing.py`) so that it can send it back in place of the history it replaces.

What a compaction keeps: the history's leading system and developer messages, verbatim (the
instructions the model must go on following), and one summary, written by the model the request
names, of every message after them (user and assistant turns, earlier summaries included), at
most `SUMMARY_MAX_TOKENS` tokens. Sent back, it stands for `[*kept, user: SUMMARY_PREFIX +
summary]`, and everything before it in that request is dropped. The summarising call is placed
like the conversation's next turn (its key, its engine), so it reads the history from that
engine's cache, and it is metered like any other request.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from warmroute.errors import InvalidRequest
from warmroute.gateway import engine_calls
from warmroute.gateway.auth import Caller
from warmroute.gateway.conversations import Conversations
from warmroute.gateway.metering import Meter
from warmroute.gateway.sealing import Unsealable, seal, unseal
from warmroute.types import ROLES, ChatMessage, Role, SamplingParams, Usage

PURPOSE = "compaction"
SUMMARY_MAX_TOKENS = 256
KEPT_ROLES = ("system", "developer")
INSTRUCTION = (
    "Write a summary of the conversation so far. It will replace the conversation, so keep "
    "everything needed to continue it: the user's goals and requests, names, facts, numbers, "
    "decisions made and questions still open. Leave out greetings and repetition. Answer with "
    "the summary only."
)
SUMMARY_PREFIX = "Summary of the earlier conversation, which it replaces:\n"


@dataclass(frozen=True)
class Compaction:
    id: str
    created_at: int
    model: str
    kept: tuple[ChatMessage, ...]
    summary: str
    dropped: int

    def messages(self) -> list[ChatMessage]:
        """What the compaction stands for in a later request."""
        return [*self.kept, ChatMessage("user", SUMMARY_PREFIX + self.summary)]

    def payload(self) -> dict[str, Any]:
        return {"id": self.id, "created_at": self.created_at, "model": self.model,
                "kept": [[m.role, m.content] for m in self.kept], "summary": self.summary,
                "dropped": self.dropped}

    @classmethod
    def of(cls, payload: dict[str, Any]) -> Compaction:
        kept = tuple(ChatMessage(role_of(role), str(content)) for role, content in payload["kept"])
        return cls(str(payload["id"]), int(payload["created_at"]), str(payload["model"]), kept,
                   str(payload["summary"]), int(payload["dropped"]))


@dataclass(frozen=True)
class Compacted:
    """A compaction made, sealed, and what making it cost."""

    compaction: Compaction
    encrypted_content: str
    engine_id: str
    usage: Usage
    cost_in_usd_ticks: int


def role_of(value: object) -> Role:
    for role in ROLES:
        if value == role:
            return role
    raise ValueError(f"unknown role {value!r}")


def new_compaction_id() -> str:
    return f"cmp_{uuid.uuid4()}"


def split_kept(history: Sequence[ChatMessage]) -> tuple[list[ChatMessage], list[ChatMessage]]:
    """The leading system/developer messages, and the rest (what is summarised)."""
    count = 0
    while count < len(history) and history[count].role in KEPT_ROLES:
        count += 1
    return list(history[:count]), list(history[count:])


class Compactor:
    """Makes compactions (`compact`) and opens them again (`open`), for one deployment whose
    secret `secret()` returns (read when used: the lifespan sets it)."""

    def __init__(
        self,
        conversations: Conversations,
        meter: Meter,
        secret: Callable[[], bytes],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.conversations = conversations
        self.meter = meter
        self.secret = secret
        self.clock = clock

    def open(self, team: str, encrypted_content: str, item_id: str | None = None) -> Compaction:
        """The compaction `encrypted_content` seals for `team`; `InvalidRequest` if it is not
        one (altered, another tenant's or deployment's) or `item_id` is not its id."""
        payload = unseal(self.secret(), PURPOSE, team, encrypted_content)
        try:
            compaction = Compaction.of(payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise Unsealable("encrypted_content is not a compaction item") from exc
        if item_id is not None and item_id != compaction.id:
            raise InvalidRequest(f"compaction item id {item_id!r} does not match its content")
        return compaction

    def seal(self, team: str, compaction: Compaction) -> str:
        return seal(self.secret(), PURPOSE, team, compaction.payload())

    async def compact(
        self,
        caller: Caller,
        key: str | None,
        history: Sequence[ChatMessage],
        previous_engine: str | None,
        model: str | None,
        surface: str,
    ) -> Compacted:
        """Summarise `history` with `model` where the conversation's KV is (its key, else
        `previous_engine`), meter it as `surface`, and seal the result for the caller's team."""
        kept, summarised = split_kept(history)
        if not summarised:
            raise InvalidRequest("nothing to compact: the input has no message after its "
                                 "system and developer messages")
        ask = [*history, ChatMessage("user", INSTRUCTION)]
        turn = await self.conversations.place(caller.team, key, [], ask, previous_engine,
                                              None, caller.cache_salt)
        sampling = SamplingParams(max_tokens=SUMMARY_MAX_TOKENS, temperature=0.0)
        body = {**engine_calls.chat_body(model, turn.messages, sampling, False),
                "cache_salt": caller.cache_salt}
        answer = await engine_calls.complete(self.conversations.gw, turn.decision, body)
        name = model or answer.model
        cost = await self.meter.record(caller, surface, answer.model or name, answer.engine_id,
                                       answer.usage)
        compaction = Compaction(new_compaction_id(), int(self.clock()), name, tuple(kept),
                                answer.text.strip(), len(summarised))
        return Compacted(compaction, self.seal(caller.team, compaction), answer.engine_id,
                         answer.usage, cost)
