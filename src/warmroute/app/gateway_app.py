"""Assembling the gateway's web app: one `Gateway`, the store, keys, metering, and every surface's
routes (Chat Completions with deferred ones, Responses over HTTP and WebSocket, compaction,
Anthropic Messages, tokenize, account, status; gRPC beside them), bound to one lifespan.

The lifespan opens the store, reads the deployment's cache secret from it, fails deferred
completions whose gateway was killed and starts this one's heartbeat, starts the gateway
(connection pools, probes), the purger of expired records and, when configured, the gRPC
server, and closes all of them in reverse.
Routes themselves live in `api/`; this module only wires them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.exceptions import HTTPException

from warmroute.api.account_app import add_account_routes
from warmroute.api.admin_app import add_admin_routes
from warmroute.api.bare_asgi import BareRoutesApp
from warmroute.api.body_deadline import BodyDeadline
from warmroute.api.chat_app import add_chat_routes
from warmroute.api.compaction_app import add_compaction_routes
from warmroute.api.dashboard_app import add_dashboard_routes
from warmroute.api.deferred_app import add_deferred_routes, deferred_chat
from warmroute.api.messages_app import add_messages_routes
from warmroute.api.openapi import gateway_openapi
from warmroute.api.responses_app import ResponsesService, add_responses_routes
from warmroute.api.responses_ws import add_responses_socket
from warmroute.api.status_app import add_status_routes
from warmroute.api.tokenize_app import add_tokenize_routes
from warmroute.api.wire_errors import (
    deferred_failure,
    handle_http_exception,
    handle_unexpected_error,
    handle_warmroute_error,
)
from warmroute.api.xai_grpc import start_grpc_server, stop_grpc_server
from warmroute.config import GatewayConfig
from warmroute.errors import StoreUnavailable, WarmrouteError
from warmroute.gateway.auth import Authenticator, deployment_secret
from warmroute.gateway.compaction import Compactor
from warmroute.gateway.conversations import Conversations
from warmroute.gateway.deferred import DeferredRuns
from warmroute.gateway.gateway import Gateway
from warmroute.gateway.metering import Meter
from warmroute.gateway.ratelimit import make_rate_limiter
from warmroute.gateway.tokenizers import local_tokenizer
from warmroute.store import Store, open_store

log = logging.getLogger(__name__)
LEGACY_SECRET_FILE = "cache-secret"  # where warmroute kept the secret before the store did


def create_gateway_app(config: GatewayConfig, gateway: Gateway | None = None) -> FastAPI:
    gw = gateway or Gateway(config)
    stores: list[Store] = []

    def store() -> Store:
        if not stores:
            raise StoreUnavailable("the store is not open")
        return stores[0]

    conversations = Conversations(gw, store, gw.config.response_ttl_s)
    auth = Authenticator(
        store, required=gw.config.require_api_keys, isolation=gw.config.cache_isolation,
        cache_s=gw.config.key_cache_s,
    )
    meter = Meter(store, gw.config.prices, make_rate_limiter(gw.config.redis_url))
    limits = gw.config.max_deferred, gw.config.max_deferred_per_team  # REST and gRPC ones
    deferred = DeferredRuns(store, deferred_failure, meter=meter, limits=limits)
    compactor = Compactor(conversations, meter, lambda: auth.secret)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stores.append(await open_store(gw.config.store_url))
        auth.secret = await deployment_secret(
            store(), gw.config.cache_secret, gw.config.data_dir / LEGACY_SECRET_FILE
        )
        await deferred.open()  # entries of gateways that were killed: FAILED now, not PENDING
        await gw.start()
        purger = asyncio.create_task(purge_expired(store(), gw.config.purge_interval_s))
        grpc_server = None
        if gw.config.grpc_port:
            grpc_server = await start_grpc_server(
                conversations, auth, meter, gw.config.host, gw.config.grpc_port, local_tokenizer,
                deferred, compactor,
            )
        try:
            yield
        finally:
            if grpc_server is not None:
                await stop_grpc_server(grpc_server)
            await deferred.stop()
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
            await gw.stop()
            await meter.limiter.counters.close()
            await stores.pop().close()

    app = BareRoutesApp(title="warmroute gateway", lifespan=lifespan)
    app.state.gateway = gw
    app.add_middleware(BodyDeadline, timeout_s=gw.config.body_timeout_s)
    app.add_exception_handler(WarmrouteError, handle_warmroute_error)
    app.add_exception_handler(HTTPException, handle_http_exception)
    app.add_exception_handler(Exception, handle_unexpected_error)
    add_surfaces(app, conversations, auth, meter, deferred, compactor)
    add_account_routes(app, auth, meter, gw)
    add_status_routes(app, gw, auth)
    add_admin_routes(app, gw, auth)
    add_dashboard_routes(app, gw, auth, meter)
    app.openapi = lambda: gateway_openapi(app)  # type: ignore[method-assign]
    return app


def add_surfaces(app: FastAPI, conversations: Conversations, auth: Authenticator, meter: Meter,
                 deferred: DeferredRuns, compactor: Compactor) -> None:
    """The HTTP and WebSocket surfaces that answer requests for tokens."""
    gw, limit = conversations.gw, conversations.gw.config.max_body_bytes
    add_chat_routes(app, gw, auth, meter, deferred_chat(gw, meter, deferred))
    add_deferred_routes(app, deferred, auth)
    responses = ResponsesService(conversations, meter, compactor)
    add_responses_routes(app, responses, auth, limit)
    add_responses_socket(app, responses, auth)
    add_compaction_routes(app, conversations, compactor, auth, limit)
    add_messages_routes(app, conversations, meter, auth, limit)
    add_tokenize_routes(app, gw, auth, meter, local_tokenizer)


async def purge_expired(store: Store, interval_s: float) -> None:
    """Remove expired stored responses and deferred results now, then every `interval_s`."""
    while True:
        now = time.time()
        try:
            removed = (await store.responses.purge_expired(now)
                       + await store.deferred.purge_expired(now))
        except StoreUnavailable as exc:  # the next round tries again
            log.warning("purging expired records: %s", exc.message)
            removed = 0
        if removed:
            log.info("purged %d expired stored records", removed)
        await asyncio.sleep(interval_s)
