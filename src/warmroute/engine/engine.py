"""The engine's front: chat request in, text deltas and usage out (async, on the event loop).

It renders and validates the prompt, hands a `Sequence` to the scheduler's worker thread, turns
the token events it sends back into text (stop strings, incomplete UTF-8) and reports usage.
Cancelling the consumer (a client that went away) stops the sequence and frees its blocks.
A reply cut short on another engine can be continued from the ids it was generated as
(`prepare(..., continue_token_ids=...)`): the prompt and the detokenizer then start exactly
where the first generation was, so the continuation is the text it would have produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncGenerator
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from warmroute.config import DEFAULT_PREFILL_CHUNK, EngineConfig, SchedulingPolicy
from warmroute.engine.block_pool import BlockPool
from warmroute.engine.limits import checked_sampling, shown
from warmroute.engine.prefix_cache import PrefixCache, hash_seed
from warmroute.engine.scheduler import DEFAULT_MAX_WAITING, ModelRunner, Scheduler
from warmroute.engine.sequence import SeqEvent, Sequence
from warmroute.engine.tokenizer import ChatTokenizer, IncrementalDetokenizer
from warmroute.errors import ContextTooLong, EngineUnavailable, InvalidRequest, RequestFailed
from warmroute.types import ChatRequest, Usage

if TYPE_CHECKING:
    from warmroute.engine.sim_profile import SimProfile

DEFAULT_CACHE_GB = 1.0


@dataclass(frozen=True)
class Prepared:
    """A validated request: its prompt ids and output budget. A continuation also has the ids
    already generated for its final message (the end of `prompt_ids`) and how many characters
    of their text the client has (`released`); its budget may be 0 (only held-back text left)."""

    request: ChatRequest
    prompt_ids: list[int]
    max_tokens: int
    continued_ids: tuple[int, ...] = ()
    released: int = 0


@dataclass(frozen=True)
class Delta:
    """Text now safe to send; `token_ids` are the tokens it was released for (with any whose
    text is still held back), `usage` the counts so far."""

    text: str
    token_ids: tuple[int, ...] = ()
    usage: Usage | None = None


@dataclass(frozen=True)
class Finished:
    finish_reason: str
    usage: Usage


GenerationEvent = Delta | Finished


def cache_capacity_blocks(config: EngineConfig, bytes_per_token: int) -> int:
    """`--cache-blocks`, else `--cache-gb` (default 1 GiB) divided by the bytes of one block."""
    if config.cache_blocks is not None:
        return config.cache_blocks
    gigabytes = config.cache_gb if config.cache_gb is not None else DEFAULT_CACHE_GB
    return max(1, int(gigabytes * 2**30) // (bytes_per_token * config.block_size))


class Engine:
    """One inference server's core: tokenizer, prefix cache, scheduler and runner."""

    def __init__(
        self,
        *,
        model_name: str,
        dtype: str,
        tokenizer: ChatTokenizer,
        runner: ModelRunner,
        num_blocks: int,
        block_size: int,
        context_len: int,
        max_running: int,
        max_waiting: int = DEFAULT_MAX_WAITING,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        scheduling_policy: SchedulingPolicy = "fcfs",
    ) -> None:
        self.model_name = model_name
        self.dtype = dtype
        self.tokenizer = tokenizer
        self.context_len = context_len
        self.block_size = block_size
        self._prompt_chars = 0  # message text and the tokens it rendered to, for health
        self._prompt_tokens = 0
        self.pool = BlockPool(num_blocks)
        self.cache = PrefixCache(self.pool, block_size)
        self.decode_batch_counts: dict[int, int] = {}
        self.scheduler = Scheduler(
            runner,
            self.cache,
            max_running=max_running,
            max_waiting=max_waiting,
            prefill_chunk=prefill_chunk,
            policy=scheduling_policy,
            context_len=context_len,
            eos_ids=tokenizer.eos_ids,
            seed=hash_seed(model_name, dtype),
            on_decode_batch=self._count_batch,
        )

    @classmethod
    def from_config(cls, config: EngineConfig, sim: SimProfile | None = None) -> Engine:
        """Load the model named by `config` and build a stopped engine around it. `--model sim`
        builds the simulated engine instead (latency profile `sim`; no torch is imported)."""
        if config.model == "sim":
            from warmroute.engine.sim_runner import sim_engine_kwargs

            return cls(**sim_engine_kwargs(config, sim))
        from warmroute.engine.model import load_model
        from warmroute.engine.runner import Runner

        loaded = load_model(config.model, config.dtype, config.home)
        num_blocks = cache_capacity_blocks(config, loaded.kv_bytes_per_token)
        return cls(
            model_name=config.model_name,
            dtype=loaded.dtype,
            tokenizer=loaded.tokenizer,
            runner=Runner(loaded, num_blocks, config.block_size),
            num_blocks=num_blocks,
            block_size=config.block_size,
            context_len=min(loaded.context_len, config.max_model_len or loaded.context_len),
            max_running=config.max_running,
            max_waiting=config.max_waiting,
            prefill_chunk=config.prefill_chunk,
            scheduling_policy=config.scheduling_policy,
        )

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()

    def _count_batch(self, size: int) -> None:
        self.decode_batch_counts[size] = self.decode_batch_counts.get(size, 0) + 1

    # -- requests -----------------------------------------------------------------------------

    def prepare(
        self, request: ChatRequest, continue_token_ids: Seq[int] | None = None
    ) -> Prepared:
        """Render and check the request, or raise a 4xx error for what cannot be served.

        `continue_token_ids` (with `continue_final_message`): the ids the final assistant
        message was generated as; used when they decode to text starting with its content,
        else that content is tokenized canonically."""
        self.scheduler.check_room()  # a full wait queue answers at once, before any work
        if not request.messages:
            raise InvalidRequest("messages must not be empty")
        if request.continue_final_message and request.messages[-1].role != "assistant":
            raise InvalidRequest("continue_final_message needs a final assistant message")
        if request.priority and self.scheduler.policy != "priority":
            raise InvalidRequest("priority needs an engine started with --scheduling-policy "
                                 "priority; this one schedules first come, first served")
        request = dataclasses.replace(request, sampling=checked_sampling(request.sampling))
        continued = self._continued_ids(request, continue_token_ids)
        prompt = None
        if continued:
            prompt = self.tokenizer.render_continuation(
                request.messages, request.cache_salt, continued
            )
        if prompt is None:
            continued = ()
            prompt = self.tokenizer.render(
                request.messages, request.cache_salt, request.continue_final_message,
                limit=self.context_len,
            )
        released = len(request.messages[-1].content) if continued else 0
        self._prompt_chars += sum(len(m.content) for m in request.messages)
        self._prompt_tokens += len(prompt)
        if len(prompt) >= self.context_len:
            raise ContextTooLong(
                f"the prompt has {len(prompt)} tokens; this model's context is "
                f"{self.context_len} tokens"
            )
        room = self.context_len - len(prompt)
        max_tokens = request.sampling.max_tokens
        if max_tokens is None:
            return Prepared(request, prompt, room, continued, released)
        if max_tokens < (0 if continued else 1):
            raise InvalidRequest("max_tokens must be at least 1")
        if max_tokens > room:
            raise ContextTooLong(
                f"max_tokens {shown(max_tokens)} plus the prompt's {len(prompt)} tokens exceed "
                f"this model's context of {self.context_len} tokens"
            )
        return Prepared(request, prompt, max_tokens, continued, released)

    def _continued_ids(
        self, request: ChatRequest, ids: Seq[int] | None
    ) -> tuple[int, ...]:
        if ids is None:
            return ()
        if not request.continue_final_message:
            raise InvalidRequest("continue_token_ids needs continue_final_message")
        vocab = self.tokenizer.vocab_size
        if any(not 0 <= i < vocab for i in ids):
            raise InvalidRequest(f"continue_token_ids must be token ids below {vocab}")
        return tuple(ids)

    async def generate(
        self, prepared: Prepared, request_id: str | None = None
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Text deltas, then one `Finished`. Closing the iterator early aborts the sequence."""
        request, prompt = prepared.request, prepared.prompt_ids
        detok = IncrementalDetokenizer(
            self.tokenizer, request.sampling.stop, prepared.continued_ids, prepared.released
        )
        if prepared.max_tokens == 0 or detok.finished_by_stop:  # nothing left to generate
            for ending in nothing_to_generate(detok, len(prompt)):
                yield ending
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[SeqEvent] = asyncio.Queue()

        def emit(event: SeqEvent) -> None:
            # The consumer's loop may be gone (client left, process shutting down): drop it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, event)

        seq = Sequence(
            request_id=request_id or uuid.uuid4().hex,
            prompt_ids=prompt,
            max_tokens=prepared.max_tokens,
            sampling=request.sampling,
            salt=request.cache_salt,
            emit=emit, priority=request.priority,
        )

        def delta(text: str) -> Delta:
            usage = Usage(len(prompt), consumed, seq.num_cached_tokens)
            return Delta(text, tuple(detok.take_ids()), usage)

        consumed = 0
        reason: str | None = None
        self.scheduler.add(seq)
        try:
            while reason is None:
                event = await queue.get()
                if event.failed is not None:
                    raise RequestFailed(event.failed)
                if event.error is not None:
                    raise EngineUnavailable(event.error)
                if event.token_id is not None:
                    consumed += 1
                    text = detok.add(event.token_id)
                    if text:
                        yield delta(text)
                    if detok.finished_by_stop:
                        reason = "stop"
                elif event.finish_reason is not None:
                    reason = "stop" if event.finish_reason == "abort" else event.finish_reason
        finally:
            self.scheduler.abort(seq)  # a no-op once finished; frees its place otherwise
        tail = detok.flush()
        if tail:
            yield delta(tail)
        if prepared.continued_ids or not request.continue_final_message:
            self.tokenizer.remember_generation(request.cache_salt, detok.text, detok.ids)
        yield Finished(reason, Usage(len(prompt), consumed, seq.num_cached_tokens))

    # -- statistics ---------------------------------------------------------------------------

    @property
    def cache_tokens(self) -> int:
        return self.pool.num_blocks * self.block_size

    @property
    def chars_per_token(self) -> float:
        """Characters of message text per prompt token seen so far (4.0 before any)."""
        if self._prompt_tokens < 1 or self._prompt_chars < 1:
            return 4.0
        return round(self._prompt_chars / self._prompt_tokens, 3)

    def stats(self) -> dict[str, Any]:
        s = self.scheduler.stats
        return {
            "model": self.model_name,
            "dtype": self.dtype,
            "block_size": self.block_size,
            "blocks_total": self.pool.num_blocks,
            "blocks_free": self.pool.num_free_blocks,
            "blocks_used": self.pool.num_blocks - self.pool.num_free_blocks,
            "blocks_cached": self.pool.num_cached_blocks,
            "evictions": self.pool.num_evictions,
            "prompt_tokens": s.prompt_tokens,
            "cached_tokens": s.cached_tokens,
            "generated_tokens": s.generated_tokens,
            "hit_rate": s.cached_tokens / s.prompt_tokens if s.prompt_tokens else 0.0,
            "requests_finished": s.requests_finished,
            "requests_failed": s.requests_failed,
            "running": self.scheduler.num_running,
            "waiting": self.scheduler.num_waiting,
            "decode_steps": s.decode_steps,
            "max_decode_batch": s.max_decode_batch,
        }


def nothing_to_generate(detok: IncrementalDetokenizer, prompt_tokens: int) -> list[GenerationEvent]:
    """The answer of a request with no token left to generate: any released tail, then the end."""
    usage = Usage(prompt_tokens, 0, 0)
    tail = detok.flush()
    events: list[GenerationEvent] = [Delta(tail, tuple(detok.take_ids()), usage)] if tail else []
    return [*events, Finished("stop" if detok.finished_by_stop else "length", usage)]
