"""Metering streamed answers: one ledger row per answer on every surface, however it ends.

`StreamMeter` meters a relayed Chat Completions stream: the row is written (and
`cost_in_usd_ticks` put into the client's usage chunk) before the usage chunk or `[DONE]`
leaves; it reads the events the splice decoded (nothing is parsed twice) and encodes them.
`SurfaceStreamMeter` meters the neutral surfaces' streams (Responses, gRPC, Messages,
WebSocket) from their final usage. Both
bill a stream cut off by its client or by a failure with what the engine reported and
delivered when it ended (at least the prompt, which the engine's first chunk reports), both
price by the model the engine served, and both write the row once.
"""

from __future__ import annotations

from typing import Any

from warmroute.gateway.auth import Caller
from warmroute.gateway.metering import Meter
from warmroute.gateway.shielded import shielded
from warmroute.gateway.streaming import Streaming
from warmroute.gateway.usage import usage_from
from warmroute.sse import Event, encode_events
from warmroute.types import Usage


class StreamMeter:
    def __init__(self, meter: Meter, caller: Caller, upstream: Streaming) -> None:
        self.meter = meter
        self.caller = caller
        self.upstream = upstream
        self.recorded = False

    @property
    def due(self) -> bool:
        """Whether the events just read may end the answer (its usage chunk, or `[DONE]`)
        and no row is written yet: then `before_sending`, else `encode_events` will do
        (checked every chunk: no await)."""
        splice = self.upstream.splice
        return not self.recorded and (splice.usage_sent or splice.done)

    async def before_sending(self, events: list[Event]) -> bytes:
        """The client's bytes for these events, the row written first if they end the answer
        (its usage chunk, or `[DONE]`)."""
        if self.due:
            final = next((e for e in events if isinstance(e, dict) and e.get("choices") == []
                          and isinstance(e.get("usage"), dict)), None)
            if final is not None or self.upstream.splice.done:
                cost = await self.record(final["usage"] if final else None)
                if final is not None:
                    final["usage"]["cost_in_usd_ticks"] = cost
        return encode_events(events)

    async def record(self, usage: dict[str, Any] | None) -> int:
        self.recorded = True
        splice = self.upstream.splice
        counts = usage_from(usage or splice.final_usage())
        if counts.total_tokens == 0:
            return 0  # nothing reached an engine's output or the client: nothing to bill
        model = str((splice.template or {}).get("model", ""))
        return await self.meter.record_shielded(
            self.caller, "chat.completions", model, self.upstream.engine_id, counts
        )

    async def cut_off(self) -> None:
        """The stream ended early: bill what was delivered (shielded from cancellation)."""
        if not self.recorded:
            await shielded(self.record(None))


class SurfaceStreamMeter:
    """The ledger row of one neutral surface's stream (`surface`: its ledger name)."""

    def __init__(self, meter: Meter, caller: Caller, surface: str, upstream: Streaming) -> None:
        self.meter = meter
        self.caller = caller
        self.surface = surface
        self.upstream = upstream
        self.recorded = False

    @property
    def model(self) -> str:
        """The model the engine says it served (its chunks' `model`)."""
        return str((self.upstream.splice.template or {}).get("model", ""))

    async def done(self, usage: Usage) -> int:
        """The answer ended with this usage: its row, once; returns its cost."""
        if self.recorded:
            return 0
        self.recorded = True
        return await self.meter.record_shielded(self.caller, self.surface, self.model,
                                                self.upstream.engine_id, usage)

    async def cut_off(self) -> None:
        """The stream ended without its usage (client gone, failure): bill what the engine
        reported and delivered; shielded from cancellation. Nothing at all: no row."""
        if self.recorded:
            return
        counts = usage_from(self.upstream.splice.final_usage())
        if counts.total_tokens == 0:
            return
        await shielded(self.done(counts))
