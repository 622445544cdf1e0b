"""Deferred entries and their runners (issue 13): counted while PENDING, kept alive by their
runner's heartbeat, failed once it stopped; a result written with its charge in one
transaction (both or neither); ids no row can have answer "missing" without a query."""

from __future__ import annotations

import pytest

from warmroute.store import DeferredStatus, DuplicateId, Store, UsageRecord

T0 = 1_700_000_000.0
GONE = {"code": "UNAVAILABLE", "message": "the gateway running it stopped"}


def charge(row_id: str, team: str = "team-a") -> UsageRecord:
    return UsageRecord(id=row_id, time=T0 + 5, key_id=None, team=team, model="m",
                       engine_id="e1", surface="grpc.deferred", prompt_tokens=20,
                       cached_tokens=16, completion_tokens=12, cost_in_usd_ticks=1234)


async def status(store: Store, request_id: str, owner: str = "team-a") -> DeferredStatus:
    entry = await store.deferred.get(request_id, owner, now=T0 + 10)
    assert entry is not None
    return entry.status


async def test_pending_entries_are_counted_per_owner_and_in_all(store: Store) -> None:
    for request_id, owner in (("a1", "team-a"), ("a2", "team-a"), ("b1", "team-b")):
        await store.deferred.create(request_id, owner, T0, T0 + 600, runner="r1")
    await store.deferred.complete("a2", {"done": True})
    assert (await store.deferred.pending(), await store.deferred.pending("team-a"),
            await store.deferred.pending("team-b"), await store.deferred.pending("c")) == (
        2, 1, 1, 0)


async def test_a_stopped_runners_entries_fail_and_a_beating_ones_do_not(store: Store) -> None:
    await store.deferred.create("alive", "team-a", T0, T0 + 600, runner="r1")
    await store.deferred.create("dead", "team-a", T0, T0 + 600, runner="r2")
    await store.deferred.create("finished", "team-a", T0, T0 + 600, runner="r2")
    await store.deferred.complete("finished", {"done": True})
    assert await store.deferred.heartbeat("r1", T0 + 8) == 1
    assert await store.deferred.fail_stale(T0 + 5, GONE) == 1
    assert [await status(store, r) for r in ("alive", "dead", "finished")] == [
        DeferredStatus.PENDING, DeferredStatus.FAILED, DeferredStatus.DONE]
    failed = await store.deferred.get("dead", "team-a", now=T0 + 10)
    assert failed is not None and failed.error == GONE
    assert await store.deferred.fail_runner("r1", GONE) == 1
    assert await status(store, "alive") is DeferredStatus.FAILED
    assert await store.deferred.fail_stale(T0 + 100, GONE) == 0


async def test_a_result_and_its_charge_are_written_together_or_not_at_all(store: Store) -> None:
    await store.deferred.create("d1", "team-a", T0, T0 + 600, runner="r1")
    await store.deferred.create("d2", "team-a", T0, T0 + 600, runner="r1")
    assert await store.deferred.complete("d1", {"text": "one"}, [charge("row-1")]) is True
    with pytest.raises(DuplicateId):  # the charge cannot be written: neither is the result
        await store.deferred.complete("d2", {"text": "two"}, [charge("row-2"), charge("row-1")])
    assert await status(store, "d2") is DeferredStatus.PENDING
    await store.deferred.fail("d2", GONE)
    assert await store.deferred.complete("d2", {"text": "late"}, [charge("row-2")]) is False
    totals = await store.usage.summary(T0, "team")
    assert [(t.group, t.requests, t.cost_in_usd_ticks) for t in totals] == [("team-a", 1, 1234)]
    done = await store.deferred.get("d1", "team-a", now=T0 + 10)
    assert done is not None and done.result == {"text": "one"}


@pytest.mark.parametrize("bad", ["a\x00b", "\x00", "", "tab\tinside", "x" * 300, "\ud800"])
async def test_an_id_no_row_can_have_is_missing_without_a_query(store: Store, bad: str) -> None:
    assert await store.responses.get(bad, "team-a") is None
    assert await store.responses.history(bad, "team-a") is None
    assert await store.responses.delete(bad, "team-a") is False
    assert await store.deferred.get(bad, "team-a", now=T0) is None
    assert await store.deferred.fail(bad, GONE) is False
