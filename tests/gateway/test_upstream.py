"""The gateway's aiohttp client drops an idle pooled connection before the engine's server does:
a request sent on a connection uvicorn is closing for idleness fails with a reset, which looked
like a dead engine and ejected it (`ClientOSError`, seen in a fleet run)."""

from __future__ import annotations

import asyncio

import uvicorn

from warmroute.gateway.upstream import KEEPALIVE_S, AiohttpUpstream


async def test_idle_connections_are_dropped_before_uvicorn_drops_them() -> None:
    assert uvicorn.Config(app=None).timeout_keep_alive > KEEPALIVE_S  # engines' default: 5 s
    client = AiohttpUpstream(2.0, 2.0, 2.0)
    try:
        connector = client._session.connector
        assert connector is not None
        assert connector._keepalive_timeout == KEEPALIVE_S
    finally:
        await client.aclose()
        await asyncio.sleep(0)
