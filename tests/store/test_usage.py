"""The usage ledger: one row per finished request, totals per key, model, day or team."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from warmroute.errors import InvalidRequest
from warmroute.gateway.metering import row_id
from warmroute.store import Store, UsageRecord, UsageTotals
from warmroute.store.ledger import utc_day

DAY0 = 1_700_006_400.0  # 2023-11-15T00:00:00Z
DAY = 86_400.0


def row(
    row_id: str,
    time: float,
    key_id: str | None = "key_1",
    team: str = "team-a",
    model: str = "m1",
    tokens: tuple[int, int, int] = (100, 40, 10),
    cost: int = 1_000,
) -> UsageRecord:
    prompt, cached, completion = tokens
    return UsageRecord(
        id=row_id,
        time=time,
        key_id=key_id,
        team=team,
        model=model,
        engine_id="e1",
        surface="chat.completions",
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
        cost_in_usd_ticks=cost,
    )


ROWS = (
    row("u1", DAY0 + 10),
    row("u2", DAY0 + 20, model="m2", tokens=(50, 0, 5), cost=300),
    row("u3", DAY0 + DAY + 1, key_id="key_2", tokens=(7, 7, 1), cost=20),
    row("u4", DAY0 + DAY + 2, key_id="key_9", team="team-b", cost=5_000_000_000_000),
    row("u5", DAY0 + 2 * DAY - 0.5, key_id=None, model="m2", tokens=(1, 0, 1), cost=1),
)


@pytest.fixture
async def ledger(store: Store) -> Store:
    for usage in ROWS:
        await store.usage.record(usage)
    return store


async def test_by_key(ledger: Store) -> None:
    assert await ledger.usage.summary(0, "key") == [
        UsageTotals(None, 1, 1, 0, 1, 1),
        UsageTotals("key_1", 2, 150, 40, 15, 1_300),
        UsageTotals("key_2", 1, 7, 7, 1, 20),
        UsageTotals("key_9", 1, 100, 40, 10, 5_000_000_000_000),
    ]


async def test_by_model_for_one_owner(ledger: Store) -> None:
    assert await ledger.usage.summary(0, "model", owner="team-a") == [
        UsageTotals("m1", 2, 107, 47, 11, 1_020),
        UsageTotals("m2", 2, 51, 0, 6, 301),
    ]
    assert await ledger.usage.summary(0, "model", owner="nobody") == []


async def test_by_day_in_utc(ledger: Store) -> None:
    assert await ledger.usage.summary(0, "day") == [
        UsageTotals("2023-11-15", 2, 150, 40, 15, 1_300),
        UsageTotals("2023-11-16", 3, 108, 47, 12, 5_000_000_000_021),
    ]


async def test_by_team_in_a_time_range(ledger: Store) -> None:
    assert await ledger.usage.summary(DAY0 + 20, "team", until=DAY0 + DAY + 2) == [
        UsageTotals("team-a", 2, 57, 7, 6, 320),
    ]


async def test_unknown_grouping(ledger: Store) -> None:
    with pytest.raises(InvalidRequest, match="group_by"):
        await ledger.usage.summary(0, "engine")  # type: ignore[arg-type]


async def test_a_duplicate_row_is_recorded_once(ledger: Store) -> None:
    """A row id counts once (a journal replayed after a crash, a retried write)."""
    await ledger.usage.record(row("u1", DAY0 + 99, cost=7))
    totals = await ledger.usage.summary(0, "team", owner="team-a")
    assert totals == [UsageTotals("team-a", 4, 158, 47, 17, 1_321)]


def test_bad_rows_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="cached_tokens"):
        row("x", DAY0, tokens=(5, 6, 0))
    with pytest.raises(InvalidRequest, match="non-negative"):
        row("x", DAY0, tokens=(5, 0, -1))
    with pytest.raises(InvalidRequest, match="non-negative"):
        row("x", DAY0, cost=-1)


def test_a_rows_day_is_its_utc_date() -> None:
    for time in (0.0, 86399.999, 86400.0, -0.5, 1796599375.25, 1796601599.0, 1796601600.0):
        assert utc_day(time) == datetime.fromtimestamp(time, UTC).date().isoformat()


def test_row_ids_are_version_4_uuids() -> None:
    ids = [row_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
