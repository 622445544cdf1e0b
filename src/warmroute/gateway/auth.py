"""Who is calling: API keys (`Authorization: Bearer …` on HTTP, `authorization` metadata on
gRPC) resolved to a `Caller` with its team, limits and prefix-cache salt.

The salt is an HMAC of the team (or, with per-key isolation, the key) under a server-side
secret — one per deployment, kept in the shared store (`deployment_secret`), so every gateway
replica derives the same salts — so teams never share cache entries and a salt cannot be guessed
from outside. Keys are
stored hashed (`store.hash_key`); the secret is shown once, at creation.

Team names are short words (`TEAM_NAME`); the anonymous tenant of `--no-api-keys` is named so
that no key's team can be (`ANONYMOUS_TEAM`), so it shares no cache salt, stored response or
ledger row with a real team. Admin keys (`Caller.admin`) are operators': `admin` resolves them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from warmroute.errors import (
    ApiKeyRevoked,
    AuthError,
    InvalidApiKey,
    InvalidRequest,
    PermissionDenied,
)
from warmroute.store import ApiKey, Store, hash_key, redact_key

KEY_PREFIX = "xai-wr-"
CACHE_SECRET_SETTING = "cache_secret"
DEFAULT_KEY_CACHE_S = 2.0
MAX_CACHED_KEYS = 100_000
ANONYMOUS_TEAM = "~anonymous"  # "~" is outside TEAM_NAME: no real team can be named so
TEAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
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
    admin: bool = False


def check_team_name(team: str) -> str:
    """`team` when it is a valid team name (letters, digits, `.`, `_`, `-`; at most 64,
    starting with a letter or digit), else `InvalidRequest`."""
    if not TEAM_NAME.fullmatch(team):
        raise InvalidRequest(
            f"team name {team!r} is invalid: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return team


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_key(
    store: Store,
    name: str,
    team: str,
    rpm: int | None = None,
    tpm: int | None = None,
    clock: Callable[[], float] = time.time,
    admin: bool = False,
) -> tuple[str, ApiKey]:
    """A new key: the secret (to show once) and what is stored of it."""
    secret = new_secret()
    key = ApiKey(
        key_id=str(uuid.uuid4()),
        name=name,
        team=check_team_name(team),
        key_hash=hash_key(secret),
        redacted=redact_key(secret),
        created_at=clock(),
        rpm=rpm,
        tpm=tpm,
        admin=admin,
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
    """Keys are looked up in the store at most once per `cache_s` each (a key revoked in the
    store stops working within that long, on every replica); unknown keys are remembered
    as briefly, and at most `MAX_CACHED_KEYS` lookups are kept."""

    def __init__(
        self,
        store: Callable[[], Store],
        secret: bytes = b"",
        required: bool = True,
        isolation: Isolation = "team",
        cache_s: float = DEFAULT_KEY_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.secret = secret
        self.required = required
        self.isolation = isolation
        self.cache_s = cache_s
        self.clock = clock
        self._keys: dict[str, tuple[float, ApiKey | None]] = {}
        self._salts: dict[tuple[bytes, str], str] = {}  # an HMAC per tenant, not per request

    async def _key(self, token: str) -> ApiKey | None:
        """The stored key of a secret, through the short-lived cache."""
        digest = hash_key(token)
        now = self.clock()
        cached = self._keys.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await self.store().api_keys.get_by_hash(digest)
        if self.cache_s > 0:
            if len(self._keys) >= MAX_CACHED_KEYS:
                self._keys = {d: e for d, e in self._keys.items() if e[0] > now}
                if len(self._keys) >= MAX_CACHED_KEYS:
                    self._keys.clear()
            self._keys[digest] = (now + self.cache_s, key)
        return key

    def salt_for(self, team: str, key_id: str) -> str:
        subject = f"key:{key_id}" if self.isolation == "key" else f"team:{team}"
        cached = self._salts.get((self.secret, subject))
        if cached is None:
            if len(self._salts) >= MAX_CACHED_KEYS:
                self._salts.clear()
            cached = hmac.new(self.secret, subject.encode(), hashlib.sha256).hexdigest()
            self._salts[(self.secret, subject)] = cached
        return cached

    def anonymous(self, token: str | None) -> Caller:
        """The development tenant, for callers without a (known) key when keys are optional."""
        return Caller(
            key_id=ANONYMOUS_TEAM,
            name="anonymous",
            team=ANONYMOUS_TEAM,
            redacted=redact_key(token) if token else "",
            cache_salt=self.salt_for(ANONYMOUS_TEAM, ANONYMOUS_TEAM),
            created_at=0.0,
            anonymous=True,
        )

    async def caller(self, authorization: str | None) -> Caller:
        """The caller named by an Authorization value; 401 when missing, 400 when unknown,
        403 when revoked. With keys not required, a request without one is the dev tenant."""
        return await self._resolve(authorization, self.required)

    async def admin(self, authorization: str | None) -> Caller:
        """The operator named by an Authorization value, keys required or not: 401 when
        missing, 400 when unknown, 403 when revoked or a tenant's key."""
        caller = await self._resolve(authorization, required=True)
        if not caller.admin:
            raise PermissionDenied("This route needs an admin API key.")
        return caller

    async def _resolve(self, authorization: str | None, required: bool) -> Caller:
        token = bearer_token(authorization)
        if token is None:
            if not required:
                return self.anonymous(None)
            raise AuthError("Missing API key: send Authorization: Bearer <key>")
        key = await self._key(token)
        if key is None:
            if not required:
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
            admin=key.admin,
        )
