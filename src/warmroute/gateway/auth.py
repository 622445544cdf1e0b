"""Who is calling: API keys (`Authorization: Bearer …` on HTTP, `authorization` metadata on
gRPC) resolved to a `Caller` with its team, limits and prefix-cache salt.

The salt is an HMAC of the team (or, with per-key isolation, the key) under a server-side
secret — one per deployment, kept in the shared store (`deployment_secret`), so every gateway
replica derives the same salts — so teams never share cache entries and a salt cannot be guessed
from outside. Keys are
stored hashed (`store.hash_key`); the secret is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from warmroute.errors import ApiKeyRevoked, AuthError, InvalidApiKey
from warmroute.store import ApiKey, Store, hash_key, redact_key

KEY_PREFIX = "xai-wr-"
CACHE_SECRET_SETTING = "cache_secret"
DEV_TEAM = "default"
Isolation = Literal["team", "key"]


@dataclass(frozen=True)
class Caller:
    key_id: str
    name: str
    team: str
    redacted: str
    cache_salt: str
    created_at: float
    rpm: int | None = None
    tpm: int | None = None
    anonymous: bool = False


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_key(
    store: Store,
    name: str,
    team: str,
    rpm: int | None = None,
    tpm: int | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[str, ApiKey]:
    """A new key: the secret (to show once) and what is stored of it."""
    secret = new_secret()
    key = ApiKey(
        key_id=str(uuid.uuid4()),
        name=name,
        team=team,
        key_hash=hash_key(secret),
        redacted=redact_key(secret),
        created_at=clock(),
        rpm=rpm,
        tpm=tpm,
    )
    await store.api_keys.create(key)
    return secret, key


async def deployment_secret(store: Store, configured: str | None, legacy: Path | None = None,
                            clock: Callable[[], float] = time.time) -> bytes:
    """The secret tenant salts derive from, one per deployment: the configured one, else the one
    in the shared store, created there by the first replica that starts (seeded from a secret
    file an older warmroute kept in the data dir, so existing salts, and caches, survive)."""
    if configured:
        return configured.encode()
    candidate = legacy.read_text().strip() if legacy is not None and legacy.is_file() else ""
    value = await store.settings.get_or_create(
        CACHE_SECRET_SETTING, candidate or secrets.token_hex(32), clock()
    )
    return value.encode()


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    def __init__(
        self,
        store: Callable[[], Store],
        secret: bytes = b"",
        required: bool = True,
        isolation: Isolation = "team",
    ) -> None:
        self.store = store
        self.secret = secret
        self.required = required
        self.isolation = isolation

    def salt_for(self, team: str, key_id: str) -> str:
        subject = f"key:{key_id}" if self.isolation == "key" else f"team:{team}"
        return hmac.new(self.secret, subject.encode(), hashlib.sha256).hexdigest()

    def anonymous(self, token: str | None) -> Caller:
        """The development tenant, for callers without a (known) key when keys are optional."""
        return Caller(
            key_id=DEV_TEAM,
            name="anonymous",
            team=DEV_TEAM,
            redacted=redact_key(token) if token else "",
            cache_salt=self.salt_for(DEV_TEAM, DEV_TEAM),
            created_at=0.0,
            anonymous=True,
        )

    async def caller(self, authorization: str | None) -> Caller:
        """The caller named by an Authorization value; 401 when missing, 400 when unknown,
        403 when revoked. With keys not required, a request without one is the dev tenant."""
        token = bearer_token(authorization)
        if token is None:
            if not self.required:
                return self.anonymous(None)
            raise AuthError("Missing API key: send Authorization: Bearer <key>")
        key = await self.store().api_keys.get_by_hash(hash_key(token))
        if key is None:
            if not self.required:
                return self.anonymous(token)
            raise InvalidApiKey(f"Incorrect API key provided: {redact_key(token)}.")
        if key.revoked:
            raise ApiKeyRevoked(f"The API key {key.redacted} has been revoked.")
        return Caller(
            key_id=key.key_id,
            name=key.name,
            team=key.team,
            redacted=key.redacted,
            cache_salt=self.salt_for(key.team, key.key_id),
            created_at=key.created_at,
            rpm=key.rpm,
            tpm=key.tpm,
        )
