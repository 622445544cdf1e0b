"""Scripted engines: the gateway's behaviour tests with no model, no process and no socket.

`ScriptedFleet` stands for a set of engines as an `httpx.MockTransport` handler. Each `Script`
says what its engine answers a chat completion: a JSON completion or an SSE stream of chosen
pieces (one token id per character) with usage (and, when asked, token ids and usage so far, as
a warmroute engine sends them), an HTTP error, a transport error, a stream that breaks after
its pieces, an answer held until the test lets it go; and its health answer. It keeps every
request body it got, and counts answers closed by the gateway before they were done. A request
that continues a prefix of a script's answer gets the rest, as a deterministic model would.
`inprocess.py` runs the real gateway app over them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from warmroute.api.chat_completions import chunk_json, completion_json
from warmroute.config import EngineEndpoint
from warmroute.sse import DONE, encode_event
from warmroute.types import Usage

CHAT = "/v1/chat/completions"
# No socket is opened: the ports only tell the engines apart (nothing listens on them, so a
# request that escaped the mock transport would be refused, never answered).
FIRST_PORT = 1
Ending = Literal["done", "early-end", "error-event", "reset", "stall-after-usage"]
Failure = Literal["connect", "timeout", "disconnect"]
FAILURES: dict[str, type[httpx.TransportError]] = {
    "connect": httpx.ConnectError,
    "timeout": httpx.ReadTimeout,
    "disconnect": httpx.RemoteProtocolError,  # what httpx raises when an engine dies mid-call
}


@dataclass
class Script:
    """One scripted engine. A test sets what it answers, then reads what it received."""

    engine_id: str
    # The answer's text, piece by piece (one chunk each); a request continuing a prefix of it
    # gets the rest (`pieces_after`).
    pieces: list[str] = field(default_factory=lambda: ["Hello", " world"])
    pieces_for: Callable[[dict[str, Any]], list[str]] | None = None  # pieces by request
    ending: Ending = "done"  # for a JSON answer, "reset" breaks its body half-way
    prompt_tokens: int = 20
    cached_tokens: int = 16
    finish_reason: str = "stop"  # "stop" counts one end-of-sequence token more
    status: int = 200  # any other: xAI's error envelope with `error`
    error: str = "boom"
    retry_after: str | None = None  # sent with an error status when set (a busy engine)
    event_code: str = "Internal error"  # the code of the "error-event" ending's event
    failure: Failure | None = None  # raised instead of an answer (after `hold`, if set)
    hold: asyncio.Event | None = None  # the answer waits for it after `hold_after` pieces
    hold_after: int = 0
    health_status: int = 200
    cache_tokens: int | None = None
    scheduling_policy: str | None = None  # said in its health answer when set
    refuses_priority: bool = False  # a ranked request gets vLLM's 400 (fcfs, saying nothing)
    model: str = "scripted-model"
    received: list[dict[str, Any]] = field(default_factory=list)
    probes: int = 0
    aborted: int = 0  # answers the gateway closed while the engine was still producing them
    url: str = ""

    def usage(self, completion: int) -> Usage:
        return Usage(self.prompt_tokens, completion, self.cached_tokens)

    def total_completion(self, body: dict[str, Any]) -> int:
        ids = sum(len(p) for p in self.text_pieces(body))
        return ids + (1 if self.finish_reason == "stop" else 0)

    def health(self) -> httpx.Response:
        self.probes += 1
        body: dict[str, Any] = {"status": "ok", "engine_id": self.engine_id, "model": self.model}
        if self.cache_tokens is not None:
            body.update(cache_tokens=self.cache_tokens, chars_per_token=4.0)
        if self.scheduling_policy is not None:
            body["scheduling_policy"] = self.scheduling_policy
        return httpx.Response(self.health_status, json=body)

    async def answer(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.received.append(body)
        if self.refuses_priority and "priority" in body:
            message = f"Got priority {body['priority']} but Priority scheduling is not enabled."
            return httpx.Response(400, json={"object": "error", "message": message,
                                             "type": "BadRequestError", "code": 400})
        if self.failure is not None:
            await self.held()
            raise FAILURES[self.failure](f"scripted {self.failure}", request=request)
        if self.status != 200:
            code = "Client specified an invalid argument" if self.status < 500 else "Internal"
            headers = {"retry-after": self.retry_after} if self.retry_after else {}
            return httpx.Response(self.status, json={"code": code, "error": self.error},
                                  headers=headers)
        if body.get("stream") is True:
            events = self.events(body, len(self.received))
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  stream=ScriptedBody(self, events))
        await self.held()
        return httpx.Response(200, headers={"content-type": "application/json"},
                              stream=ScriptedBody(self, self.json_parts(body)))

    async def held(self) -> None:
        """Wait for `hold` (a JSON answer is computed whole before its headers leave); a call
        cancelled meanwhile counts as aborted."""
        if self.hold is None:
            return
        try:
            await self.hold.wait()
        except asyncio.CancelledError:
            self.aborted += 1
            raise

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON completion this engine answers `body` with."""
        text = "".join(self.text_pieces(body))
        ids = [ord(c) for c in text] if body.get("return_token_ids") is True else None
        return completion_json(f"chatcmpl-{self.engine_id}", 1, self.model, text,
                               self.finish_reason, self.usage(self.total_completion(body)), ids)

    async def json_parts(self, body: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        data = json.dumps(self.completion(body)).encode()
        if self.ending == "reset":
            yield data[: len(data) // 2]
            raise httpx.RemoteProtocolError("peer closed connection mid-body")
        yield data

    async def events(self, body: dict[str, Any], serial: int) -> AsyncGenerator[bytes, None]:
        """The SSE answer to `body`, event by event, as `api/engine_app.py` streams it."""
        options = body.get("stream_options") or {}
        with_ids = body.get("return_token_ids") is True

        def chunk(**fields: Any) -> bytes:
            return encode_event(chunk_json(f"chatcmpl-{self.engine_id}", serial, self.model,
                                           **fields))

        def so_far(tokens: int) -> Usage | None:
            return self.usage(tokens) if options.get("continuous_usage_stats") else None

        # as the engine does: the role chunk carries the prompt, cached tokens not known yet
        prompt = Usage(self.prompt_tokens, 0, 0) if options.get("continuous_usage_stats") else None
        yield chunk(delta={"role": "assistant"}, usage_so_far=prompt)
        pieces = self.pieces_after(self.text_pieces(body), continued_text(body))
        sent = 0
        for index, piece in enumerate(pieces):
            await self.paused(index)
            sent += len(piece)
            yield chunk(delta={"content": piece}, usage_so_far=so_far(sent),
                        token_ids=[ord(c) for c in piece] if with_ids else None)
        await self.paused(len(pieces))
        if self.ending == "early-end":
            return
        if self.ending == "error-event":
            yield encode_event({"code": self.event_code, "error": "engine step failed"})
            return
        if self.ending == "reset":
            raise httpx.RemoteProtocolError("peer closed connection without a complete body")
        total = sent + (1 if self.finish_reason == "stop" else 0)
        yield chunk(delta={}, finish_reason=self.finish_reason, usage_so_far=so_far(total))
        if options.get("include_usage"):
            yield chunk(usage=self.usage(total))
        if self.ending == "stall-after-usage":  # until the gateway closes the connection
            await asyncio.Event().wait()
        yield DONE


    async def paused(self, index: int) -> None:
        if self.hold is not None and index == self.hold_after:
            await self.hold.wait()

    def text_pieces(self, body: dict[str, Any]) -> list[str]:
        return self.pieces_for(body) if self.pieces_for is not None else list(self.pieces)

    @staticmethod
    def pieces_after(pieces: list[str], delivered: str) -> list[str]:
        """The pieces still to send when `delivered` is a prefix of the answer's text (a
        resumed answer goes on where it broke, as a deterministic model would); else all."""
        if not delivered or not "".join(pieces).startswith(delivered):
            return pieces
        rest, offset = [], 0
        for piece in pieces:
            skip = max(0, min(len(piece), len(delivered) - offset))
            offset += len(piece)
            if piece[skip:]:
                rest.append(piece[skip:])
        return rest


def user_text(body: dict[str, Any]) -> str:
    """The last user message of a chat body (a continuation's too)."""
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    return content if isinstance(content, str) else ""


def continued_text(body: dict[str, Any]) -> str:
    """The final assistant message a request asks to continue, if it asks so."""
    messages = body.get("messages") or []
    if body.get("continue_final_message") is not True or not messages:
        return ""
    final = messages[-1]
    content = final.get("content") if final.get("role") == "assistant" else None
    return content if isinstance(content, str) else ""


class ScriptedBody(httpx.AsyncByteStream):
    """An answer's body as the gateway reads it; notes a close before the engine was done."""

    def __init__(self, script: Script, parts: AsyncGenerator[bytes, None]) -> None:
        self.script = script
        self.parts = parts
        self.running = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self.parts:
                yield part
        except (asyncio.CancelledError, GeneratorExit):
            raise  # the reader stopped: the engine is still at it until the body is closed
        except BaseException:
            self.running = False  # the engine itself broke its answer
            raise
        self.running = False

    async def aclose(self) -> None:
        if self.running:
            self.script.aborted += 1
            self.running = False
        await self.parts.aclose()


class ScriptedFleet:
    """Scripted engines by id, answering as one `httpx.MockTransport`."""

    def __init__(self, *ids: str) -> None:
        self.scripts = {engine_id: Script(engine_id) for engine_id in ids}
        for index, script in enumerate(self.scripts.values()):
            script.url = f"http://127.0.0.1:{FIRST_PORT + index}"
        self._by_port = {FIRST_PORT + i: s for i, s in enumerate(self.scripts.values())}

    def __getitem__(self, engine_id: str) -> Script:
        return self.scripts[engine_id]

    @property
    def ids(self) -> list[str]:
        return list(self.scripts)

    def endpoints(self) -> tuple[EngineEndpoint, ...]:
        return tuple(EngineEndpoint.of(s.url, s.engine_id) for s in self.scripts.values())

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        script = self._by_port[request.url.port or 80]
        if request.method == "GET" and request.url.path == "/health":
            return script.health()
        if request.method == "POST" and request.url.path == CHAT:
            return await script.answer(request)
        return httpx.Response(404, json={"code": "Not found", "error": request.url.path})


def sse_payloads(raw: bytes) -> list[Any]:
    """Each `data:` payload of an SSE body: parsed JSON, or the string `[DONE]`."""
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def streamed_text(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or ""
                   for e in events if isinstance(e, dict) and e.get("choices"))
