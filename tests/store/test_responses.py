"""Stored responses: round trips, owner scoping, deletion, expiry and conversation history."""

from __future__ import annotations

import pytest

from warmroute.errors import InvalidRequest, NotFound
from warmroute.store import (
    DEFAULT_RESPONSE_TTL_S,
    DuplicateId,
    ResponseNotFound,
    Store,
    StoredResponse,
)

T0 = 1_700_000_000.0
OWNER, OTHER = "team-a", "team-b"


def turn(
    response_id: str,
    previous: str | None = None,
    owner: str = OWNER,
    created_at: float = T0,
    ttl: float = DEFAULT_RESPONSE_TTL_S,
) -> StoredResponse:
    """One turn: the user says `response_id`, the assistant answers it in capitals."""
    return StoredResponse(
        id=response_id,
        owner=owner,
        created_at=created_at,
        expires_at=created_at + ttl,
        model="builtin:tiny",
        engine_id="e1",
        previous_response_id=previous,
        input=({"role": "user", "content": f"say {response_id}"},),
        output=({"role": "assistant", "content": response_id.upper()},),
        response={"id": response_id, "object": "response", "output": [], "usage": {"n": 3}},
    )


async def test_put_then_get_returns_every_field(store: Store) -> None:
    first = turn("resp_1")
    second = StoredResponse(
        id="resp_2",
        owner=OWNER,
        created_at=T0 + 5.5,
        expires_at=T0 + 99.25,
        model="other-model",
        engine_id=None,
        previous_response_id="resp_1",
        input=(
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": [{"type": "input_text", "text": "héllo ✓"}]},
        ),
        output=({"role": "assistant", "content": "hi", "id": "msg_1"},),
        response={"id": "resp_2", "nested": {"list": [1, 2.5, None, True]}, "z": "last"},
    )
    await store.responses.put(first)
    await store.responses.put(second)
    assert await store.responses.get("resp_1", OWNER) == first
    assert await store.responses.get("resp_2", OWNER) == second


async def test_duplicate_id_raises_invalid_request(store: Store) -> None:
    await store.responses.put(turn("resp_1"))
    with pytest.raises(DuplicateId, match="resp_1") as caught:
        await store.responses.put(turn("resp_1", owner=OTHER))
    assert isinstance(caught.value, InvalidRequest)
    stored = await store.responses.get("resp_1", OWNER)
    assert stored is not None and stored.owner == OWNER
    assert await store.responses.get("resp_1", OTHER) is None


async def test_other_owner_sees_nothing(store: Store) -> None:
    await store.responses.put(turn("resp_1"))
    assert await store.responses.get("resp_1", OTHER) is None
    assert await store.responses.history("resp_1", OTHER) is None
    assert await store.responses.delete("resp_1", OTHER) is False
    assert await store.responses.get("resp_1", OWNER) is not None


async def test_unknown_id_is_none(store: Store) -> None:
    assert await store.responses.get("nope", OWNER) is None
    assert await store.responses.history("nope", OWNER) is None
    assert await store.responses.delete("nope", OWNER) is False


async def test_delete_then_get_is_none(store: Store) -> None:
    await store.responses.put(turn("resp_1"))
    await store.responses.put(turn("resp_2"))
    assert await store.responses.delete("resp_1", OWNER) is True
    assert await store.responses.get("resp_1", OWNER) is None
    assert await store.responses.delete("resp_1", OWNER) is False
    assert await store.responses.get("resp_2", OWNER) is not None


async def test_history_of_a_chain_of_three(store: Store) -> None:
    await store.responses.put(turn("r1"))
    await store.responses.put(turn("r2", previous="r1"))
    await store.responses.put(turn("r3", previous="r2"))
    await store.responses.put(turn("r2b", previous="r1"))  # a branch must not leak in
    assert await store.responses.history("r3", OWNER) == [
        {"role": "user", "content": "say r1"},
        {"role": "assistant", "content": "R1"},
        {"role": "user", "content": "say r2"},
        {"role": "assistant", "content": "R2"},
        {"role": "user", "content": "say r3"},
        {"role": "assistant", "content": "R3"},
    ]
    assert await store.responses.history("r2b", OWNER) == [
        {"role": "user", "content": "say r1"},
        {"role": "assistant", "content": "R1"},
        {"role": "user", "content": "say r2b"},
        {"role": "assistant", "content": "R2B"},
    ]
    assert await store.responses.history("r1", OWNER) == [
        {"role": "user", "content": "say r1"},
        {"role": "assistant", "content": "R1"},
    ]


async def test_history_with_a_deleted_link_is_none(store: Store) -> None:
    await store.responses.put(turn("r1"))
    await store.responses.put(turn("r2", previous="r1"))
    await store.responses.put(turn("r3", previous="r2"))
    assert await store.responses.delete("r2", OWNER)
    assert await store.responses.history("r3", OWNER) is None
    assert await store.responses.get("r3", OWNER) is not None


async def test_chaining_needs_a_previous_response_of_the_same_owner(store: Store) -> None:
    await store.responses.put(turn("r1"))
    with pytest.raises(ResponseNotFound, match="missing") as caught:
        await store.responses.put(turn("r2", previous="missing"))
    assert isinstance(caught.value, NotFound)
    with pytest.raises(ResponseNotFound, match="r1"):
        await store.responses.put(turn("r2", previous="r1", owner=OTHER))
    assert await store.responses.get("r2", OWNER) is None
    assert await store.responses.get("r2", OTHER) is None


def test_bad_records_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="expires_at"):
        turn("r1", ttl=0)
    with pytest.raises(InvalidRequest, match="itself"):
        turn("r1", previous="r1")
    with pytest.raises(InvalidRequest, match="empty"):
        turn("")


async def test_expired_responses_are_hidden_at_now_and_purged(store: Store) -> None:
    await store.responses.put(turn("old", ttl=100))
    await store.responses.put(turn("edge", ttl=200))
    await store.responses.put(turn("new", ttl=DEFAULT_RESPONSE_TTL_S))
    await store.responses.put(turn("child", previous="old", ttl=DEFAULT_RESPONSE_TTL_S))
    now = T0 + 200  # "edge" expires exactly now
    assert await store.responses.get("old", OWNER, now=now) is None
    assert await store.responses.get("edge", OWNER, now=now) is None
    assert await store.responses.get("edge", OWNER, now=now - 1) is not None
    assert await store.responses.get("old", OWNER) is not None  # no `now`: not filtered
    assert await store.responses.history("child", OWNER, now=now) is None

    assert await store.responses.purge_expired(now) == 2
    assert await store.responses.get("old", OWNER) is None
    assert await store.responses.get("edge", OWNER) is None
    assert await store.responses.get("new", OWNER, now=now) is not None
    assert await store.responses.get("child", OWNER, now=now) is not None
    assert await store.responses.purge_expired(now) == 0
    assert await store.responses.purge_expired(T0 + DEFAULT_RESPONSE_TTL_S) == 2
