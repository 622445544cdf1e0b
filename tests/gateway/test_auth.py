"""Tenant salts and API key resolution (unit level, over a real SQLite store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from warmroute.errors import ApiKeyRevoked, AuthError, InvalidApiKey
from warmroute.gateway.auth import Authenticator, bearer_token, create_key
from warmroute.store import open_store


def test_salts_isolate_teams_or_keys_and_depend_on_the_secret(tmp_path: Path) -> None:
    def team_auth(secret: bytes) -> Authenticator:
        return Authenticator(lambda: None, secret)  # type: ignore[arg-type,return-value]

    by_team = team_auth(b"s1")
    assert by_team.salt_for("a", "k1") == by_team.salt_for("a", "k2")
    assert by_team.salt_for("a", "k1") != by_team.salt_for("b", "k1")
    assert by_team.salt_for("a", "k1") != team_auth(b"s2").salt_for("a", "k1")
    by_key = Authenticator(lambda: None, b"s1", isolation="key")  # type: ignore[arg-type,return-value]
    assert by_key.salt_for("a", "k1") != by_key.salt_for("a", "k2")


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None),
    (None, None), ("", None),
])
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


async def test_callers_from_keys(tmp_path: Path) -> None:
    store = await open_store(str(tmp_path / "w.db"))
    try:
        secret, key = await create_key(store, "n", "team-x", rpm=5)
        required = Authenticator(lambda: store, b"s", cache_s=0.0)  # every lookup reads
        caller = await required.caller(f"Bearer {secret}")
        assert (caller.team, caller.key_id, caller.rpm, caller.anonymous) == (
            "team-x", key.key_id, 5, False)
        assert secret not in caller.redacted
        with pytest.raises(AuthError):
            await required.caller(None)
        with pytest.raises(InvalidApiKey):
            await required.caller("Bearer nope-nope-nope")
        await store.api_keys.revoke(key.key_id, 1.0)
        with pytest.raises(ApiKeyRevoked):
            await required.caller(f"Bearer {secret}")
        optional = Authenticator(lambda: store, b"s", required=False)
        assert (await optional.caller(None)).anonymous
    finally:
        await store.close()


async def test_a_revoked_key_stops_working_within_the_cache_lifetime(tmp_path: Path) -> None:
    """Keys are read from the store at most once per `cache_s`: a revocation (made by any
    replica, or `warmroute keys revoke`, straight in the store) takes effect within it."""
    store = await open_store(str(tmp_path / "w.db"))
    now = [100.0]
    reads: list[str] = []
    lookup = store.api_keys.get_by_hash

    async def counted(digest: str) -> object:
        reads.append(digest)
        return await lookup(digest)

    store.api_keys.get_by_hash = counted  # type: ignore[method-assign,assignment]
    try:
        secret, key = await create_key(store, "n", "team-x")
        auth = Authenticator(lambda: store, b"s", cache_s=2.0, clock=lambda: now[0])
        assert (await auth.caller(f"Bearer {secret}")).key_id == key.key_id
        await auth.caller(f"Bearer {secret}")
        assert len(reads) == 1  # the second request was answered from the cache
        await store.api_keys.revoke(key.key_id, 1.0)
        now[0] += 1.9
        assert (await auth.caller(f"Bearer {secret}")).key_id == key.key_id  # still cached
        now[0] += 0.2
        with pytest.raises(ApiKeyRevoked):
            await auth.caller(f"Bearer {secret}")
        assert len(reads) == 2
        with pytest.raises(InvalidApiKey):  # unknown keys are cached too, as briefly
            await auth.caller("Bearer unknown-key-unknown")
        with pytest.raises(InvalidApiKey):
            await auth.caller("Bearer unknown-key-unknown")
        assert len(reads) == 3
        uncached = Authenticator(lambda: store, b"s", cache_s=0.0, clock=lambda: now[0])
        with pytest.raises(ApiKeyRevoked):
            await uncached.caller(f"Bearer {secret}")
        with pytest.raises(ApiKeyRevoked):
            await uncached.caller(f"Bearer {secret}")
        assert len(reads) == 5
    finally:
        await store.close()
