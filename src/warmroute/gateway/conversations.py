"""Server-side conversations shared by the Responses API and the gRPC API: rebuild history from
`previous_response_id`, place a turn (on the engine that holds the previous turn's KV while it
is healthy), and store a finished turn. Surfaces only translate their wire formats.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from warmroute.errors import NotFound
from warmroute.gateway.features import prompt_chunks, tenant_id
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.policies import Decision, RequestFeatures
from warmroute.store import Store, StoredResponse
from warmroute.types import ChatMessage, Role


@dataclass(frozen=True)
class Turn:
    """A resolved turn: the whole conversation to send, what is new in it, and where to send it."""

    messages: list[ChatMessage]
    new_messages: list[ChatMessage]
    decision: Decision
    owner: str
    previous_response_id: str | None


class Conversations:
    def __init__(
        self,
        gateway: Gateway,
        store: Callable[[], Store],
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gw = gateway
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock

    async def history(self, previous_id: str, owner: str) -> tuple[list[ChatMessage], str | None]:
        """The conversation up to and including `previous_id`, and the engine that answered it;
        `NotFound` when it does not exist for this owner (or has expired)."""
        now = self.clock()
        previous = await self.store().responses.get(previous_id, owner, now)
        items = await self.store().responses.history(previous_id, owner, now)
        if previous is None or items is None:
            raise NotFound(f"Response {previous_id!r} was not found")
        return [stored_message(item) for item in items], previous.engine_id

    async def plan(
        self,
        owner: str,
        key: str | None,
        new_messages: Sequence[ChatMessage],
        previous_id: str | None,
        cache_salt: str = "",
    ) -> Turn:
        """The turn's whole conversation and where it goes: `owner` owns the stored history,
        `cache_salt` names the tenant whose conversation `key` is (its routing state)."""
        history: list[ChatMessage] = []
        previous_engine: str | None = None
        if previous_id is not None:
            history, previous_engine = await self.history(previous_id, owner)
        return await self.place(owner, key, history, new_messages, previous_engine,
                                previous_id, cache_salt)

    async def place(
        self,
        owner: str,
        key: str | None,
        history: Sequence[ChatMessage],
        new_messages: Sequence[ChatMessage],
        previous_engine: str | None,
        previous_id: str | None = None,
        cache_salt: str = "",
    ) -> Turn:
        """Place a turn whose history is already known (a WebSocket's own chain, a compaction,
        a stateless surface): `previous_engine`, the one holding the history's KV, goes first
        while healthy."""
        # Placement and the engine's in-flight slot must not be separated by an await: callers
        # forward right after planning, within the same task step.
        messages = [*history, *new_messages]
        tenant = tenant_id(cache_salt)
        chunks = (prompt_chunks([{"role": m.role, "content": m.content} for m in messages],
                                tenant) if self.gw.indexes_prompts else ())
        features = RequestFeatures(key=key, chunks=chunks, tenant=tenant)
        decision = prefer(await self.gw.route(features), previous_engine, self.gw)
        return Turn(messages, list(new_messages), decision, owner, previous_id)

    async def save(
        self,
        turn: Turn,
        response_id: str,
        model: str,
        engine_id: str,
        reply: str,
        response: dict[str, Any],
    ) -> None:
        now = self.clock()
        await self.store().responses.put(
            StoredResponse(
                id=response_id,
                owner=turn.owner,
                created_at=now,
                expires_at=now + self.ttl_s,
                model=model,
                engine_id=engine_id,
                previous_response_id=turn.previous_response_id,
                input=tuple({"role": m.role, "content": m.content} for m in turn.new_messages),
                output=({"role": "assistant", "content": reply},),
                response=response,
            )
        )


def prefer(decision: Decision, engine_id: str | None, gw: Gateway) -> Decision:
    """Put the engine that holds the conversation's KV first while it is healthy (the
    prefill the placement expects stays counted: its queue and admission read it)."""
    if engine_id is None or engine_id not in gw.membership.healthy_ids():
        return decision
    rest = tuple(e for e in decision.ranked if e != engine_id)
    return Decision((engine_id, *rest), decision.reason, decision.work)


def stored_message(item: Any) -> ChatMessage:
    role: Role = item["role"]
    return ChatMessage(role, str(item["content"]))
