"""Continuous batching on one worker thread that owns the model.

Each step admits at most one waiting sequence (FIFO, up to `max_running`) and prefills it, then
runs one batched decode step over every running sequence. Prompt blocks are published to the
prefix cache right after the first token is emitted (off the TTFT path); the generated tokens'
blocks when the sequence finishes. A finished or aborted sequence releases its references, its
last block first in eviction order. Events go back to the caller through `Sequence.emit`,
which must be thread-safe.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from warmroute.engine.block_pool import Block
from warmroute.engine.prefix_cache import PrefixCache, extend_block_hashes
from warmroute.engine.sequence import SeqEvent, SeqStatus, Sequence


class ModelRunner(Protocol):
    """What the scheduler needs of a runner; the simulated engine provides the same."""

    def prefill(self, seq: Sequence, hits: list[Block]) -> Any: ...
    def decode(self, seqs: list[Sequence]) -> Any: ...
    def write_blocks(self, seq: Sequence, to_write: list[tuple[int, Block]]) -> None: ...
    def release(self, seq: Sequence) -> None: ...
    def sample_one(self, logits: Any, seq: Sequence) -> int: ...
    def sample_batch(self, logits: Any, seqs: list[Sequence]) -> list[int]: ...


@dataclass
class SchedulerStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    requests_finished: int = 0
    decode_steps: int = 0
    max_decode_batch: int = 0


class Scheduler:
    def __init__(
        self,
        runner: ModelRunner,
        cache: PrefixCache,
        *,
        max_running: int,
        context_len: int,
        eos_ids: frozenset[int],
        seed: bytes,
        on_decode_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.runner = runner
        self.cache = cache
        self.max_running = max_running
        self.context_len = context_len
        self.eos_ids = eos_ids
        self.seed = seed
        self.on_decode_batch = on_decode_batch
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.stats = SchedulerStats()
        self._wake = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    # -- called from any thread ---------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        with self._wake:
            self.waiting.append(seq)
            self._wake.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="warmroute-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # -- the worker thread --------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and not self.waiting and not self.running:
                    self._wake.wait(timeout=1.0)
                if self._stopped:
                    break
            try:
                self.step()
            except Exception as exc:  # a failed step must not kill the engine silently
                self._fail_all(f"engine step failed: {exc!r}")
        self._fail_all("engine stopped")

    def step(self) -> None:
        """One scheduling step: admit and prefill at most one sequence, then decode all."""
        for stopped in [s for s in self.running if s.stop_requested]:
            self._finish(stopped, "abort")
        admitted = self._next_waiting()
        if admitted is not None:
            self._prefill(admitted)
        if self.running:
            self._decode(list(self.running))
        if not self.running and not self.waiting:
            self.cache.pool.check_integrity()

    def _next_waiting(self) -> Sequence | None:
        with self._wake:
            while self.waiting and len(self.running) < self.max_running:
                seq = self.waiting.popleft()
                if not seq.stop_requested:
                    return seq
                seq.status = SeqStatus.FINISHED
                seq.emit(SeqEvent(finish_reason="abort"))
        return None

    def _prefill(self, seq: Sequence) -> None:
        bs = self.cache.block_size
        extend_block_hashes(seq.hashes, seq.prompt_ids, bs, seq.salt, self.seed)
        hits = self.cache.lookup(seq.hashes, seq.num_prompt_tokens)
        seq.blocks = list(hits)
        seq.num_cached_tokens = len(hits) * bs
        seq.status = SeqStatus.RUNNING
        self.stats.prompt_tokens += seq.num_prompt_tokens
        self.stats.cached_tokens += seq.num_cached_tokens
        self.running.append(seq)  # from here on a failure is cleaned up by _fail_all
        logits = self.runner.prefill(seq, hits)
        self._append_token(seq, self.runner.sample_one(logits, seq))
        if seq.status is SeqStatus.RUNNING:
            self.runner.write_blocks(seq, self.cache.insert(seq.blocks, seq.hashes))

    def _decode(self, seqs: list[Sequence]) -> None:
        self.stats.decode_steps += 1
        self.stats.max_decode_batch = max(self.stats.max_decode_batch, len(seqs))
        self.on_decode_batch(len(seqs))
        logits = self.runner.decode(seqs)
        for seq, token in zip(seqs, self.runner.sample_batch(logits, seqs), strict=True):
            self._append_token(seq, token)

    def _append_token(self, seq: Sequence, token: int) -> None:
        seq.output_ids.append(token)
        self.stats.generated_tokens += 1
        seq.emit(SeqEvent(token_id=token))
        if token in self.eos_ids:
            self._finish(seq, "stop")
        elif len(seq.output_ids) >= seq.max_tokens or len(seq.all_ids) >= self.context_len:
            self._finish(seq, "length")

    def _finish(self, seq: Sequence, reason: str) -> None:
        """Publish every full block whose KV was computed, then drop the references."""
        computed = seq.all_ids[: seq.num_computed]
        extend_block_hashes(seq.hashes, computed, self.cache.block_size, seq.salt, self.seed)
        self.runner.write_blocks(
            seq, self.cache.insert(seq.blocks, seq.hashes[: len(computed) // self.cache.block_size])
        )
        self.cache.release(seq.blocks)
        self.runner.release(seq)
        self.running.remove(seq)
        seq.status = SeqStatus.FINISHED
        self.stats.requests_finished += 1
        seq.emit(SeqEvent(finish_reason=reason))

    def _fail_all(self, message: str) -> None:
        with self._wake:
            doomed = list(self.running) + list(self.waiting)
            self.waiting.clear()
        for seq in doomed:
            if seq in self.running:
                self.cache.release(seq.blocks)
                self.runner.release(seq)
                self.running.remove(seq)
            seq.status = SeqStatus.FINISHED
            seq.emit(SeqEvent(error=message))
