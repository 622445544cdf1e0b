"""The store's interface: what the gateway keeps across requests and restarts.

Four parts, each an ABC whose methods state their contracts: stored responses, deferred
completions, API keys and the usage ledger. Every row carries its owner (the tenant/team), and
every owner-scoped read or delete treats a row of another owner exactly as a missing one.
Times are Unix seconds (float) passed in by the caller, never read from a hidden clock here.
This module knows no SQL; `sql.py` implements it for SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import enum
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from warmroute.errors import InvalidRequest, NotFound

Json = dict[str, Any]
"""A JSON object as stored: a message, a response object, a result."""

DEFAULT_RESPONSE_TTL_S = 30 * 24 * 3600.0
"""Stored responses live 30 days unless the caller passes another `expires_at`."""

GroupBy = Literal["key", "model", "day", "team"]
GROUP_BYS: tuple[GroupBy, ...] = ("key", "model", "day", "team")


class DuplicateId(InvalidRequest):
    """A row with this id (or API key hash) is already stored."""


class ResponseNotFound(NotFound):
    """A stored response named by the caller does not exist for this owner."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidRequest(message)


@dataclass(frozen=True)
class StoredResponse:
    """One stored turn (Responses API or gRPC stored completion).

    `input` holds this turn's new input messages only (what followed the previous response's
    output); `output` holds the messages it produced. The conversation up to this turn is the
    chain of `input + output` from the first response on (`ResponseStore.history`).
    `response` is the response object exactly as answered, for GET.
    """

    id: str
    owner: str
    created_at: float
    expires_at: float
    model: str
    engine_id: str | None
    previous_response_id: str | None
    input: tuple[Json, ...]
    output: tuple[Json, ...]
    response: Json

    def __post_init__(self) -> None:
        _require(bool(self.id), "response id must not be empty")
        _require(self.expires_at > self.created_at, "expires_at must be after created_at")
        _require(self.previous_response_id != self.id, "a response cannot follow itself")


class DeferredStatus(enum.StrEnum):
    PENDING = "PENDING"
    DONE = "DONE"
    FAILED = "FAILED"  # the gateway reports this as a gRPC status, never as a status value
    EXPIRED = "EXPIRED"  # never stored: computed by `get` from `expires_at`


@dataclass(frozen=True)
class DeferredCompletion:
    request_id: str
    owner: str
    status: DeferredStatus
    created_at: float
    expires_at: float
    result: Json | None = None
    error: Json | None = None


@dataclass(frozen=True)
class ApiKey:
    """An API key as stored: never the secret, only its hash (`hash_key`) and redacted form.
    `admin`: an operator's key (metrics, engines, every team's usage, the dashboard)."""

    key_id: str
    name: str
    team: str
    key_hash: str
    redacted: str
    created_at: float
    rpm: int | None = None
    tpm: int | None = None
    revoked_at: float | None = None
    admin: bool = False

    def __post_init__(self) -> None:
        _require(bool(self.key_id) and bool(self.key_hash), "key_id and key_hash are required")
        for limit in (self.rpm, self.tpm):
            _require(limit is None or limit > 0, "rpm and tpm limits must be positive")

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def hash_key(secret: str) -> str:
    """The stored form of an API key secret: its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def redact_key(secret: str) -> str:
    """The form shown back to people: the first 4 and last 4 characters."""
    if len(secret) <= 12:
        return "*" * len(secret)
    return f"{secret[:4]}...{secret[-4:]}"


@dataclass(frozen=True)
class UsageRecord:
    """One finished request in the ledger. `cached_tokens` is part of `prompt_tokens`."""

    id: str
    time: float
    key_id: str | None
    team: str
    model: str
    engine_id: str | None
    surface: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_in_usd_ticks: int

    def __post_init__(self) -> None:
        _require(bool(self.id), "usage id must not be empty")
        counts = (self.prompt_tokens, self.cached_tokens, self.completion_tokens)
        _require(min(counts) >= 0 and self.cost_in_usd_ticks >= 0, "usage must be non-negative")
        _require(self.cached_tokens <= self.prompt_tokens, "cached_tokens exceeds prompt_tokens")


@dataclass(frozen=True)
class UsageTotals:
    """Totals of one group: `group` is a key id, model, team or UTC day (YYYY-MM-DD);
    None for requests made without a key when grouping by key."""

    group: str | None
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_in_usd_ticks: int


class ResponseStore(ABC):
    @abstractmethod
    async def put(self, response: StoredResponse) -> None:
        """Store a new response; committed on return.

        Raises `DuplicateId` when the id is taken (by any owner), and `ResponseNotFound` when
        `previous_response_id` names no response of the same owner (so chains have no cycles).
        """

    @abstractmethod
    async def get(
        self, response_id: str, owner: str, now: float | None = None
    ) -> StoredResponse | None:
        """The response, or None when unknown, deleted, of another owner, or (when `now` is
        given) expired at `now` (`now >= expires_at`)."""

    @abstractmethod
    async def delete(self, response_id: str, owner: str) -> bool:
        """Delete for good; True when a response of this owner was deleted, else False."""

    @abstractmethod
    async def history(
        self, response_id: str, owner: str, now: float | None = None
    ) -> list[Json] | None:
        """The whole conversation up to and including this response's output, oldest first:
        for each response of the chain, its `input` then its `output`.

        None when the response, or any response before it in the chain, is not visible to
        `get(…, owner, now)`: a conversation with a hole cannot be rebuilt.
        """

    @abstractmethod
    async def purge_expired(self, now: float) -> int:
        """Delete every response with `expires_at <= now`, of all owners; returns how many."""


class DeferredStore(ABC):
    """A PENDING entry names its `runner` (the gateway running it), which renews
    `heartbeat_at` while it runs; an entry whose heartbeat stopped is failed by `fail_stale`."""

    @abstractmethod
    async def create(
        self, request_id: str, owner: str, created_at: float, expires_at: float,
        runner: str = "",
    ) -> DeferredCompletion:
        """A new PENDING entry (its heartbeat at `created_at`); raises `DuplicateId` when the
        request id is taken."""

    @abstractmethod
    async def complete(self, request_id: str, result: Json,
                       charges: Sequence[UsageRecord] = ()) -> bool:
        """PENDING → DONE with its result and, in the same transaction, `charges` appended to
        the usage ledger: all are written or none. False when unknown or no longer PENDING
        (then nothing is written)."""

    @abstractmethod
    async def pending(self, owner: str | None = None) -> int:
        """How many entries (of `owner`, when given) are PENDING."""

    @abstractmethod
    async def heartbeat(self, runner: str, now: float) -> int:
        """Renew `heartbeat_at` of the runner's PENDING entries; returns how many."""

    @abstractmethod
    async def fail_stale(self, before: float, error: Json) -> int:
        """PENDING → FAILED with `error` for every entry whose heartbeat is older than `before`
        (its runner stopped); returns how many."""

    @abstractmethod
    async def fail_runner(self, runner: str, error: Json) -> int:
        """PENDING → FAILED with `error` for every entry of `runner`; returns how many."""

    @abstractmethod
    async def fail(self, request_id: str, error: Json) -> bool:
        """PENDING → FAILED with an error description. False when unknown or not PENDING."""

    @abstractmethod
    async def get(self, request_id: str, owner: str, now: float) -> DeferredCompletion | None:
        """The entry, or None when unknown or of another owner. At or past `expires_at` it is
        EXPIRED, whatever it was, and carries no result or error."""

    @abstractmethod
    async def purge_expired(self, now: float) -> int:
        """Delete every entry with `expires_at <= now`; returns how many."""


class ApiKeyStore(ABC):
    @abstractmethod
    async def create(self, key: ApiKey) -> None:
        """Store a new key; raises `DuplicateId` when its id or hash is taken."""

    @abstractmethod
    async def get(self, key_id: str) -> ApiKey | None:
        """The key with this id, revoked or not; None when unknown."""

    @abstractmethod
    async def get_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key whose secret hashes to `key_hash`, revoked or not (check `revoked`)."""

    @abstractmethod
    async def list_keys(self, team: str | None = None) -> list[ApiKey]:
        """All keys (of `team` when given), oldest first, revoked ones included."""

    @abstractmethod
    async def revoke(self, key_id: str, now: float, team: str | None = None) -> bool:
        """Mark revoked at `now`. False when unknown, already revoked, or (when `team` is
        given) of another team."""


class UsageLedger(ABC):
    @property
    def records_at_once(self) -> bool:
        """Whether `record` waits on nothing (no await in it suspends), so that no
        cancellation can stop it halfway: the SQLite ledger's journal append."""
        return False

    @abstractmethod
    async def record(self, row: UsageRecord) -> None:
        """Append one row; durable on return (it survives the process being killed; on SQLite
        it is journaled and committed within milliseconds, and the process's own summaries wait
        for it). A row whose `row.id` is already recorded is ignored (a replay counts once)."""

    @abstractmethod
    async def summary(
        self,
        since: float,
        group_by: GroupBy,
        owner: str | None = None,
        until: float | None = None,
    ) -> list[UsageTotals]:
        """Totals per group over rows with `since <= time < until` (of `owner` when given),
        sorted by group (None first). Raises `InvalidRequest` for an unknown `group_by`."""


class DeploymentSettings(ABC):
    """Values every gateway replica sharing this store must agree on (the cache secret)."""

    @abstractmethod
    async def get_or_create(self, name: str, value: str, now: float) -> str:
        """The stored value of `name`; when there is none, `value` is stored and returned. Atomic
        across processes: of replicas racing to create it, every one gets the first value."""


class Store(ABC):
    """Everything the gateway persists. Open one with `warmroute.store.open_store`."""

    responses: ResponseStore
    deferred: DeferredStore
    api_keys: ApiKeyStore
    usage: UsageLedger
    settings: DeploymentSettings

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the store must not be used afterwards."""

    @abstractmethod
    async def schema_versions(self) -> Sequence[tuple[int, str, float]]:
        """The applied migrations as (version, name, applied_at), by version."""
