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
        required = Authenticator(lambda: store, b"s")
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
