"""Deferred completions: PENDING until completed or failed, EXPIRED past their expiry."""

from __future__ import annotations

import pytest

from warmroute.errors import InvalidRequest
from warmroute.store import DeferredCompletion, DeferredStatus, DuplicateId, Store

T0 = 1_700_000_000.0
OWNER, OTHER = "team-a", "team-b"
RESULT = {"id": "req_1", "outputs": [{"message": {"content": "done"}}], "usage": {"t": 9}}


async def test_pending_then_done(store: Store) -> None:
    created = await store.deferred.create("req_1", OWNER, T0, T0 + 600)
    assert created == DeferredCompletion("req_1", OWNER, DeferredStatus.PENDING, T0, T0 + 600)
    assert await store.deferred.get("req_1", OWNER, now=T0 + 1) == created

    assert await store.deferred.complete("req_1", RESULT) is True
    done = await store.deferred.get("req_1", OWNER, now=T0 + 2)
    assert done is not None
    assert done.status is DeferredStatus.DONE
    assert done.result == RESULT
    assert done.error is None
    assert await store.deferred.complete("req_1", {"other": 1}) is False  # only once
    again = await store.deferred.get("req_1", OWNER, now=T0 + 3)
    assert again is not None and again.result == RESULT


async def test_failed_keeps_its_error(store: Store) -> None:
    await store.deferred.create("req_1", OWNER, T0, T0 + 600)
    assert await store.deferred.fail("req_1", {"code": "unavailable", "message": "x"}) is True
    entry = await store.deferred.get("req_1", OWNER, now=T0 + 1)
    assert entry is not None
    assert entry.status is DeferredStatus.FAILED
    assert entry.error == {"code": "unavailable", "message": "x"}
    assert entry.result is None
    assert await store.deferred.complete("req_1", RESULT) is False


async def test_unknown_requests(store: Store) -> None:
    assert await store.deferred.get("nope", OWNER, now=T0) is None
    assert await store.deferred.complete("nope", RESULT) is False
    assert await store.deferred.fail("nope", {}) is False


async def test_expired_whatever_the_status(store: Store) -> None:
    await store.deferred.create("pending", OWNER, T0, T0 + 10)
    await store.deferred.create("done", OWNER, T0, T0 + 10)
    await store.deferred.complete("done", RESULT)
    for request_id in ("pending", "done"):
        entry = await store.deferred.get(request_id, OWNER, now=T0 + 10)
        assert entry is not None
        assert entry.status is DeferredStatus.EXPIRED
        assert entry.result is None
    before = await store.deferred.get("done", OWNER, now=T0 + 9.5)
    assert before is not None and before.status is DeferredStatus.DONE


async def test_other_owner_sees_nothing(store: Store) -> None:
    await store.deferred.create("req_1", OWNER, T0, T0 + 600)
    await store.deferred.complete("req_1", RESULT)
    assert await store.deferred.get("req_1", OTHER, now=T0 + 1) is None


async def test_duplicate_and_bad_expiry(store: Store) -> None:
    await store.deferred.create("req_1", OWNER, T0, T0 + 600)
    with pytest.raises(DuplicateId, match="req_1"):
        await store.deferred.create("req_1", OTHER, T0, T0 + 600)
    with pytest.raises(InvalidRequest, match="expires_at"):
        await store.deferred.create("req_2", OWNER, T0, T0)
    assert await store.deferred.get("req_2", OWNER, now=T0) is None


async def test_purge_removes_only_expired(store: Store) -> None:
    await store.deferred.create("short", OWNER, T0, T0 + 10)
    await store.deferred.create("long", OWNER, T0, T0 + 1000)
    assert await store.deferred.purge_expired(T0 + 10) == 1
    assert await store.deferred.get("short", OWNER, now=T0) is None
    kept = await store.deferred.get("long", OWNER, now=T0 + 10)
    assert kept is not None and kept.status is DeferredStatus.PENDING
    assert await store.deferred.purge_expired(T0 + 10) == 0
