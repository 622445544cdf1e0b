"""Routing state shared by gateway replicas through Redis: conversation homes and placements.

Every replica keeps the whole picture in its own placer (homes, prefix index, served counts);
Redis makes the replicas agree on it:

- a conversation's home is one Redis key, `<prefix>:home:<tenant>:<id>`, with a TTL. The first
  replica to place a conversation claims it atomically (a Lua script: set it if absent, else
  answer the holder); a rehome (the home failed) is a compare-and-set from the old home. Each
  change is appended to the routing log;
- every placement (engine, the prompt's tenant-salted chunk digests) is appended to the same
  log, a Redis stream capped at `log_entries` (`XADD MAXLEN ~`), so each replica's picture of
  the caches and of requests served covers every replica's traffic;
- prefill queued ahead is one Redis hash: a placement made anew reserves its work there and
  picks its engine in one atomic step (`reserve`), a sticky turn adds its work in the
  background, a first token takes it off (never below nothing); what a dead replica reserved
  fades (half-life `reserved_half_life_s`);
- a replica reads the retained log from its start when it starts (catch-up: `start` waits for
  it, bounded), then follows it (`XREAD BLOCK`), applying other replicas' events to its placer.

A keyed turn whose home is known locally pays no round trip; a conversation unknown locally
costs one GET, and a new one one claim. Placements are published in batches off the request
path. Redis unreachable: the replica serves from its local state (`up` is False, the
`warmroute_gateway_shared_state_up` gauge reads 0, one warning is logged), remembers the homes it
set meanwhile (bounded) and, once Redis answers again, claims them: where another replica
claimed first, it adopts that home, so every replica converges on one home per conversation.

Memory: homes in Redis expire `home_ttl_s` after their last claim or use (refreshed at most once
per `home_ttl_s / 4` per conversation by this replica); the log holds `log_entries` events; the
local tables are bounded by the placer (`homes.HomeTable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from warmroute.gateway.membership import Membership
from warmroute.gateway.placement import CacheAwarePlacer
from warmroute.gateway.routing_scripts import (
    DECAY_EVERY_S,
    DECAY_SCRIPT,
    RELEASE_SCRIPT,
    RESERVE_SCRIPT,
)

log = logging.getLogger(__name__)
MAX_PENDING_CLAIMS = 100_000
MAX_OUTBOX = 10_000
READ_BATCH = 1_000
RETRY_S = 0.5
FLUSH_DELAY_S = 0.01
UNREACHABLE = (RedisError, OSError)

@dataclass(frozen=True)
class SharedStateParams:
    url: str
    prefix: str = "wr:routing"
    home_ttl_s: int = 24 * 3600
    log_entries: int = 50_000
    timeout_s: float = 0.5
    block_ms: int = 1_000
    catch_up_s: float = 5.0
    reserved_half_life_s: float = 10.0


def pack_digests(chunks: tuple[Hashable, ...]) -> bytes:
    ints = [c for c in chunks if isinstance(c, int)]
    return struct.pack(f">{len(ints)}Q", *ints)


def unpack_digests(data: bytes) -> tuple[int, ...]:
    return struct.unpack(f">{len(data) // 8}Q", data[: len(data) // 8 * 8])


class SharedRoutingState:
    """One replica's link to the shared routing state; `start`, then `stop`."""

    def __init__(self, params: SharedStateParams, placer: CacheAwarePlacer,
                 membership: Membership, on_health: Callable[[bool], None] = lambda up: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import redis.asyncio as redis

        self.params = params
        self.placer = placer
        self.membership = membership
        membership.prefill_listeners.append(self.first_token)
        membership.move_listeners.append(self.moved_to)
        self.on_health = on_health
        self.clock = clock
        self.origin = uuid.uuid4().hex[:12]
        self.stream = f"{params.prefix}:log"
        self.up = False
        self.was_down = False
        self.closing = False
        self.applied = 0
        self.caught_up = asyncio.Event()
        timeout = params.timeout_s
        self.client: Any = redis.from_url(params.url, socket_timeout=timeout,
                                          socket_connect_timeout=timeout)
        self.reader: Any = redis.from_url(params.url, socket_connect_timeout=timeout,
                                          socket_timeout=params.block_ms / 1000 + 2 * timeout)
        self._reserve = self.client.register_script(RESERVE_SCRIPT)
        self._decay_shared = self.client.register_script(DECAY_SCRIPT)
        self.queued_key = f"{params.prefix}:queued"
        self._pending: OrderedDict[tuple[str, str], str | None] = OrderedDict()
        self._touched: dict[tuple[str, str], float] = {}
        self._outbox: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._shared_decayed_at = 0.0

    def home_key(self, tenant: str, key: str) -> str:
        return f"{self.params.prefix}:home:{tenant}:{key}"

    # -- lifetime -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Follow the log; wait (bounded) until the retained log has been applied."""
        self._tasks = [asyncio.create_task(self._follow()), asyncio.create_task(self._flush())]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.caught_up.wait(), self.params.catch_up_s)

    async def stop(self) -> None:
        """Stop following and publishing. A blocked XREAD does not always heed cancellation
        (the client waits for the reply to keep its connection in step), so the reader's
        connections are closed first, which ends it."""
        self.closing = True
        await self.reader.aclose()
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=self.params.block_ms / 1000 + 1)
        await self.client.aclose()

    # -- the request path ---------------------------------------------------------------------

    async def lookup(self, tenant: str, key: str) -> str | None:
        """The conversation's home as Redis knows it (one round trip); None when unknown or
        while Redis is unreachable."""
        if not self.up:
            return None
        try:
            found = await self.client.get(self.home_key(tenant, key))
        except UNREACHABLE as exc:  # serve from local state
            self._down(exc)
            return None
        return found.decode() if found is not None else None

    async def claim(self, tenant: str, key: str, engine_id: str, previous: str | None) -> str:
        """Make `engine_id` the conversation's home (replacing `previous`, when given); answers
        the home that holds: another replica's, if it claimed first."""
        held = await self.reserve(tenant, key, (engine_id,), (0.0,), (0.0,), True, previous)
        return held if held is not None else engine_id

    async def reserve(self, tenant: str, key: str | None, candidates: tuple[str, ...],
                      works: tuple[float, ...], biases: tuple[float, ...], claim_home: bool,
                      previous: str | None) -> str | None:
        """Of `candidates` (best first), the engine whose prefill reserved by all replicas
        plus its bias is least, with its work reserved on it, in one atomic step (replicas
        placing a burst of new conversations at once then spread it as one gateway would;
        `placement.Plan` says what works and biases are); with `claim_home`, it
        also becomes the conversation's home unless another replica holds one (then that one
        is answered). None while Redis is unreachable (the caller places locally; a home it
        sets meanwhile is claimed when Redis returns)."""
        if self.up:
            try:
                return await self._run_reserve(tenant, key, candidates, works, biases,
                                               claim_home, previous)
            except UNREACHABLE as exc:
                self._down(exc)
        if claim_home and key is not None:
            self._remember(tenant, key, previous)
        return None

    def placed(self, engine_id: str, tenant: str, key: str | None,
               chunks: tuple[Hashable, ...], work: float, reserved: bool = False) -> None:
        """A request of this replica went to `engine_id`: tell the others (batched)."""
        if not self.up:
            return
        if not reserved and work:
            self._outbox.append({"reserve": engine_id, "w": work})
        self._send({"k": "p", "o": self.origin, "e": engine_id, "d": pack_digests(chunks)})
        if key is not None:
            self._refresh_ttl(tenant, key)

    def first_token(self, engine_id: str, work: float) -> None:
        """A request of this replica got its first token: its prefill is no longer queued."""
        if self.up and work:
            self._send({"reserve": engine_id, "w": -work})

    def moved_to(self, engine_id: str, work: float) -> None:
        """A request of this replica took its prefill to an engine it was not placed on (a
        failover, a resumed stream): reserved there, where its first token will release it
        (the engine it left released its own)."""
        if self.up and work:
            self._send({"reserve": engine_id, "w": work})

    def _send(self, event: dict[str, Any]) -> None:
        self._outbox.append(event)
        if len(self._outbox) > MAX_OUTBOX:
            del self._outbox[: len(self._outbox) - MAX_OUTBOX]
        self._wake.set()

    # -- internals ----------------------------------------------------------------------------

    async def _run_reserve(self, tenant: str, key: str | None, candidates: tuple[str, ...],
                           works: tuple[float, ...], biases: tuple[float, ...],
                           claim_home: bool, previous: str | None) -> str:
        p = self.params
        triples = [item for engine, bias, work in zip(candidates, biases, works, strict=True)
                   for item in (engine, f"{bias:g}", f"{work:g}")]
        chosen = await self._reserve(
            keys=[self.home_key(tenant, key or ""), self.queued_key, self.stream],
            args=[self.origin, tenant, key or "", p.home_ttl_s, p.log_entries,
                  f"{works[0]:g}", previous or "", "home" if claim_home else "-", *triples],
        )
        if claim_home and key is not None:
            self._touched[(tenant, key)] = self.clock()
        return chosen.decode() if isinstance(chosen, bytes) else str(chosen)

    def _refresh_ttl(self, tenant: str, key: str) -> None:
        now = self.clock()
        last = self._touched.get((tenant, key))
        if last is not None and now - last < self.params.home_ttl_s / 4:
            return
        if len(self._touched) > MAX_PENDING_CLAIMS:
            self._touched.clear()
        self._touched[(tenant, key)] = now
        self._outbox.append({"expire": self.home_key(tenant, key)})

    def _remember(self, tenant: str, key: str, previous: str | None) -> None:
        self._pending.setdefault((tenant, key), previous)
        self._pending.move_to_end((tenant, key))
        while len(self._pending) > MAX_PENDING_CLAIMS:
            self._pending.popitem(last=False)

    def _down(self, exc: BaseException) -> None:
        if self.up or not self.was_down:
            log.warning("shared routing state unreachable (%s: %s); routing from local state "
                        "until it returns", type(exc).__name__, exc)
        self.up = False
        self.was_down = True
        self.on_health(False)

    async def _recovered(self) -> None:
        if self.was_down:
            log.warning("shared routing state reachable again; converging %d home(s) set "
                        "meanwhile", len(self._pending))
        self.up = True
        self.on_health(True)
        while self._pending:
            (tenant, key), previous = self._pending.popitem(last=False)
            local = self.placer.home_of(key, tenant)
            if local is None:
                continue
            try:
                holder = await self._run_reserve(tenant, key, (local,), (0.0,), (0.0,), True,
                                                 previous)
            except UNREACHABLE:
                self._remember(tenant, key, previous)
                raise
            if holder != local:
                self.placer.adopt_home(tenant, key, holder)

    async def _follow(self) -> None:
        last = "0"
        while not self.closing:
            try:
                if not self.up:
                    await self.reader.ping()
                    await self._recovered()
                block = self.params.block_ms if self.caught_up.is_set() else None
                answer = await self.reader.xread({self.stream: last}, count=READ_BATCH,
                                                 block=block)
                entries = answer[0][1] if answer else []
                for entry_id, fields in entries:
                    last = entry_id
                    self._apply(fields)
                if len(entries) < READ_BATCH:
                    self.caught_up.set()
                await self._decay_reserved()
            except UNREACHABLE as exc:  # retried; routing goes on locally
                if self.closing:
                    return
                self._down(exc)
                await asyncio.sleep(RETRY_S)

    def _apply(self, fields: dict[bytes, bytes]) -> None:
        """One event of another replica."""
        if fields.get(b"o", b"").decode() == self.origin:
            return
        kind, engine_id = fields.get(b"k"), fields.get(b"e", b"").decode()
        self.applied += 1
        if kind == b"p":
            self.placer.observe(engine_id, unpack_digests(fields.get(b"d", b"")))
        elif kind == b"h":
            tenant, key = fields[b"t"].decode(), fields[b"c"].decode()
            self.placer.adopt_home(tenant, key, engine_id)

    async def _decay_reserved(self) -> None:
        """Let the shared reservations fade (whichever replica comes first every few s)."""
        now = time.time()
        if now - self._shared_decayed_at < DECAY_EVERY_S:
            return
        self._shared_decayed_at = now
        await self._decay_shared(keys=[self.queued_key, f"{self.queued_key}:decayed"],
                                 args=[f"{now:.3f}", DECAY_EVERY_S,
                                       self.params.reserved_half_life_s])

    async def _flush(self) -> None:
        p = self.params
        while True:
            await self._wake.wait()
            # Batched: a request's placement and first token, and the requests of these 10 ms,
            # go in one pipeline (per request, a pipeline of its own cost it 0.5 ms here).
            await asyncio.sleep(FLUSH_DELAY_S)
            self._wake.clear()
            batch, self._outbox = self._outbox, []
            if not batch or not self.up:
                continue
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for event in batch:
                        if "expire" in event:
                            pipe.expire(event["expire"], p.home_ttl_s)
                        elif "reserve" in event and event["w"] < 0:
                            # EVAL, not a registered script: a pipeline would ask Redis
                            # whether it knows the script first, one more round trip
                            pipe.eval(RELEASE_SCRIPT, 1, self.queued_key, event["reserve"],
                                      event["w"])
                        elif "reserve" in event:
                            pipe.hincrbyfloat(self.queued_key, event["reserve"], event["w"])
                        else:
                            pipe.xadd(self.stream, event, maxlen=p.log_entries,
                                      approximate=True)
                    await pipe.execute()
            except UNREACHABLE as exc:  # these events are lost; the others catch up
                self._down(exc)
