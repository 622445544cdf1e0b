"""API keys: only a hash is stored; look-up by hash, listing per team, revocation."""

from __future__ import annotations

import hashlib

import pytest

from warmroute.errors import InvalidRequest
from warmroute.store import ApiKey, DuplicateId, Store, hash_key, redact_key

T0 = 1_700_000_000.0
SECRET_A = "xai-" + "a" * 40
SECRET_B = "xai-" + "b" * 40


def key(key_id: str, secret: str, team: str = "team-a", created_at: float = T0) -> ApiKey:
    return ApiKey(
        key_id=key_id,
        name=f"{key_id} name",
        team=team,
        key_hash=hash_key(secret),
        redacted=redact_key(secret),
        created_at=created_at,
        rpm=60 if key_id.endswith("1") else None,
        tpm=100_000 if key_id.endswith("1") else None,
    )


def test_hash_and_redaction() -> None:
    assert hash_key("secret") == hashlib.sha256(b"secret").hexdigest()
    assert redact_key(SECRET_A) == "xai-...aaaa"
    assert "a" * 5 not in redact_key(SECRET_A)
    assert redact_key("short") == "*****"


def test_limits_must_be_positive() -> None:
    with pytest.raises(InvalidRequest, match="positive"):
        ApiKey("k", "n", "t", "h", "r", T0, rpm=0)


async def test_create_and_look_up(store: Store) -> None:
    first = key("key_1", SECRET_A)
    await store.api_keys.create(first)
    assert await store.api_keys.get_by_hash(hash_key(SECRET_A)) == first
    assert await store.api_keys.get("key_1") == first
    assert await store.api_keys.get_by_hash(hash_key(SECRET_B)) is None
    assert await store.api_keys.get("key_2") is None


async def test_duplicate_id_or_secret(store: Store) -> None:
    await store.api_keys.create(key("key_1", SECRET_A))
    with pytest.raises(DuplicateId):
        await store.api_keys.create(key("key_1", SECRET_B))
    with pytest.raises(DuplicateId):
        await store.api_keys.create(key("key_2", SECRET_A))
    assert [k.key_id for k in await store.api_keys.list_keys()] == ["key_1"]


async def test_list_by_team_oldest_first(store: Store) -> None:
    await store.api_keys.create(key("key_3", "s3" * 10, created_at=T0 + 2))
    await store.api_keys.create(key("key_1", SECRET_A, created_at=T0))
    await store.api_keys.create(key("key_2", SECRET_B, team="team-b", created_at=T0 + 1))
    assert [k.key_id for k in await store.api_keys.list_keys()] == ["key_1", "key_2", "key_3"]
    assert [k.key_id for k in await store.api_keys.list_keys("team-a")] == ["key_1", "key_3"]
    assert await store.api_keys.list_keys("team-c") == []


async def test_revoke(store: Store) -> None:
    await store.api_keys.create(key("key_1", SECRET_A))
    await store.api_keys.create(key("key_2", SECRET_B))
    assert await store.api_keys.revoke("key_1", T0 + 5, team="team-b") is False
    assert await store.api_keys.revoke("key_1", T0 + 5) is True
    assert await store.api_keys.revoke("key_1", T0 + 6) is False
    assert await store.api_keys.revoke("missing", T0 + 6) is False
    revoked = await store.api_keys.get_by_hash(hash_key(SECRET_A))
    assert revoked is not None and revoked.revoked and revoked.revoked_at == T0 + 5
    other = await store.api_keys.get("key_2")
    assert other is not None and not other.revoked
    assert [k.revoked for k in await store.api_keys.list_keys()] == [True, False]


async def test_admin_flag_round_trips(store: Store) -> None:
    admin = ApiKey("key_1", "ops", "ops", hash_key(SECRET_A), redact_key(SECRET_A), T0, admin=True)
    await store.api_keys.create(admin)
    await store.api_keys.create(key("key_2", SECRET_B))
    assert await store.api_keys.get("key_1") == admin
    assert [k.admin for k in await store.api_keys.list_keys()] == [True, False]
