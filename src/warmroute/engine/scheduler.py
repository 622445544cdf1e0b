"""Continuous batching on one worker thread that owns the model.

Each step prefills one chunk of at most `prefill_chunk` prompt tokens (chunked prefill, as vLLM
and SGLang do), then runs one batched decode step over every sequence past its prefill, so a
long prompt does not stall the answers being decoded. The chunk goes to the first in order of
the sequences being prefilled and the best waiting one (admitted while fewer than
`max_running` run): arrival order under the `fcfs` policy, so a prefill, once begun, runs to its
end; under `priority` (vLLM's `--scheduling-policy priority`), the lowest `priority` value
first, then arrival, so a request that ranks first overtakes a long prefill at its next chunk
(the gateway ranks by how soon each request's first token is due: `engine_priority`). Prompt
blocks are published to the prefix cache right after the first token is emitted (off the TTFT
path); the generated tokens' blocks when the sequence finishes. A finished or aborted sequence
releases its references, its last block first in eviction order (one aborted mid-prefill
publishes the full blocks it computed). Events go back to the caller through `Sequence.emit`,
which must be thread-safe.

Faults stay with their sequence: when a prefill, a decode step or its sampling raises, only the
sequences of that pass are failed (a `failed` event: a request-level error), and a batched
decode that raises is retried one sequence at a time to find the culprit, so the rest of the
batch goes on. Only a failure elsewhere in a step (the cache's own bookkeeping) fails everyone.
At most `max_waiting` sequences wait; `add` beyond that raises `EngineOverloaded`. A waiting
sequence whose client leaves (`abort`) gives its place back at once, so callers that come and
go cannot fill the queue for the rest.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from warmroute.config import DEFAULT_PREFILL_CHUNK, SchedulingPolicy
from warmroute.engine.block_pool import Block
from warmroute.engine.prefix_cache import PrefixCache, extend_block_hashes
from warmroute.engine.sequence import SeqEvent, SeqStatus, Sequence
from warmroute.errors import EngineOverloaded

log = logging.getLogger(__name__)
DEFAULT_MAX_WAITING = 256
RETRY_AFTER_S = 1.0
FAULT_MESSAGE_CHARS = 300


class ModelRunner(Protocol):
    """What the scheduler needs of a runner; the simulated engine provides the same."""

    def prefill(self, seq: Sequence, hits: list[Block], end: int) -> Any: ...
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
    requests_failed: int = 0


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
        max_waiting: int = DEFAULT_MAX_WAITING,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        policy: SchedulingPolicy = "fcfs",
        on_decode_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.runner = runner
        self.cache = cache
        self.max_running = max_running
        self.context_len = context_len
        self.eos_ids = eos_ids
        self.seed = seed
        self.max_waiting = max_waiting
        self.prefill_chunk = max(1, prefill_chunk)
        self.policy = policy
        self.on_decode_batch = on_decode_batch
        # For tests only (nothing outside this process can set it): called with the phase
        # ("prefill" or "decode") and the sequences of each forward pass before it runs; what
        # it raises is that pass's failure.
        self.fault: Callable[[str, list[Sequence]], None] | None = None
        # (rank, sequence) by `_rank`; `running` holds those being prefilled too.
        self.waiting: list[tuple[tuple[int, int], Sequence]] = []
        self.running: list[Sequence] = []
        self._arrivals = itertools.count()
        self.stats = SchedulerStats()
        self._wake = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    # -- called from any thread ---------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        with self._wake:
            self.check_room()
            seq.arrival = next(self._arrivals)
            heapq.heappush(self.waiting, (self._rank(seq), seq))
            self._wake.notify()

    def abort(self, seq: Sequence) -> None:
        """Stop `seq` (its client left, or its answer is complete): a waiting one leaves the
        queue now and ends with `abort`; one running ends at the next step; a finished one
        stays as it is."""
        with self._wake:
            seq.stop_requested = True
            if seq.status is not SeqStatus.WAITING:
                return
            kept = [entry for entry in self.waiting if entry[1] is not seq]
            if len(kept) == len(self.waiting):
                return  # being admitted right now: that step ends it before its prefill
            self.waiting[:] = kept
            heapq.heapify(self.waiting)
            seq.status = SeqStatus.FINISHED
        seq.emit(SeqEvent(finish_reason="abort"))

    def _rank(self, seq: Sequence) -> tuple[int, int]:
        """Lower goes first: arrival order, after `priority` under that policy."""
        return (seq.priority if self.policy == "priority" else 0, seq.arrival)

    def check_room(self) -> None:
        """Raise `EngineOverloaded` when `max_waiting` sequences already wait."""
        if len(self.waiting) >= self.max_waiting:
            raise EngineOverloaded(
                f"this engine already has {self.max_waiting} requests waiting; retry shortly",
                retry_after=RETRY_AFTER_S,
            )

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
        """One scheduling step: one prefill chunk, then a decode step for all past theirs."""
        for stopped in [s for s in self.running if s.stop_requested]:
            self._finish(stopped, "abort")
        prefilling = self._next_prefill()
        if prefilling is not None and prefilling.stop_requested:
            self._finish(prefilling, "abort")  # its client left as it was admitted
        elif prefilling is not None:
            self._prefill(prefilling)
        decoding = [s for s in self.running if s.output_ids]
        if decoding:
            self._decode(decoding)
        if not self.running and not self.waiting:
            self.cache.pool.check_integrity()

    def _next_prefill(self) -> Sequence | None:
        """The sequence whose prompt gets the next chunk: the first by `_rank` of those begun
        and the best waiting one, if another may run (that one begins now)."""
        begun = min((s for s in self.running if not s.output_ids), key=self._rank, default=None)
        with self._wake:
            while self.waiting and self.waiting[0][1].stop_requested:
                _, gone = heapq.heappop(self.waiting)  # its client left while it waited
                gone.status = SeqStatus.FINISHED
                gone.emit(SeqEvent(finish_reason="abort"))
            if not self.waiting or len(self.running) >= self.max_running or (
                    begun is not None and self._rank(begun) < self.waiting[0][0]):
                return begun
            _, admitted = heapq.heappop(self.waiting)
        self._begin(admitted)  # outside the lock: `add` never waits for the hashing
        return admitted

    def _begin(self, seq: Sequence) -> None:
        """Take the cached prefix of `seq`'s prompt and count it running."""
        bs = self.cache.block_size
        extend_block_hashes(seq.hashes, seq.prompt_ids, bs, seq.salt, self.seed)
        hits = self.cache.lookup(seq.hashes, seq.num_prompt_tokens)
        seq.blocks = list(hits)
        seq.num_cached_tokens = len(hits) * bs
        seq.status = SeqStatus.RUNNING
        self.stats.prompt_tokens += seq.num_prompt_tokens
        self.stats.cached_tokens += seq.num_cached_tokens
        self.running.append(seq)

    def _prefill(self, seq: Sequence) -> None:
        """Compute the next chunk of `seq`'s prompt; after the last, sample its first token and
        publish its prompt blocks."""
        start = max(seq.num_computed, seq.num_cached_tokens)
        end = min(seq.num_prompt_tokens, start + self.prefill_chunk)
        try:
            self._inject_fault("prefill", [seq])
            logits = self.runner.prefill(seq, seq.blocks, end)  # its blocks: the cache hits
            if end < seq.num_prompt_tokens:
                return
            token = self.runner.sample_one(logits, seq)
        except Exception as exc:
            self._fail(seq, "prefill", exc)
            return
        self._append_token(seq, token)
        if seq.status is SeqStatus.RUNNING:
            self._publish(seq, self.cache.insert(seq.blocks, seq.hashes))

    def _decode(self, seqs: list[Sequence]) -> None:
        """One batched step; if it raises, each sequence is stepped alone and only those that
        raise again fail."""
        self.stats.decode_steps += 1
        self.stats.max_decode_batch = max(self.stats.max_decode_batch, len(seqs))
        self.on_decode_batch(len(seqs))
        try:
            tokens = self._forward(seqs)
        except Exception as exc:
            if len(seqs) == 1:
                self._fail(seqs[0], "decode", exc)
                return
            log.warning("a decode step of %d sequences raised %r; stepping each alone",
                        len(seqs), exc)
            for seq in seqs:
                try:
                    [token] = self._forward([seq])
                except Exception as alone:
                    self._fail(seq, "decode", alone)
                else:
                    self._append_token(seq, token)
            return
        for seq, token in zip(seqs, tokens, strict=True):
            self._append_token(seq, token)

    def _forward(self, seqs: list[Sequence]) -> list[int]:
        """Decode and sample one token for each of `seqs`; if it raises, none has advanced (a
        sampled sequence's random generator excepted)."""
        computed = [seq.num_computed for seq in seqs]
        try:
            self._inject_fault("decode", seqs)
            return self.runner.sample_batch(self.runner.decode(seqs), seqs)
        except Exception:
            for seq, num_computed in zip(seqs, computed, strict=True):
                seq.num_computed = num_computed
            raise

    def _inject_fault(self, phase: str, seqs: list[Sequence]) -> None:
        if self.fault is not None:
            self.fault(phase, seqs)

    def _publish(self, seq: Sequence, to_write: list[tuple[int, Block]]) -> None:
        """Write the KV of blocks just cached; if that raises, withdraw them from the cache
        (the answer itself is unaffected)."""
        try:
            self.runner.write_blocks(seq, to_write)
        except Exception:
            log.exception("writing %d blocks of request %s failed; not cached",
                          len(to_write), seq.request_id)
            self.cache.pool.uncache([block for _, block in to_write])

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
        full = len(computed) // self.cache.block_size
        self._publish(seq, self.cache.insert(seq.blocks, seq.hashes[:full]))
        self.cache.release(seq.blocks)
        self.runner.release(seq)
        self.running.remove(seq)
        seq.status = SeqStatus.FINISHED
        self.stats.requests_finished += 1
        seq.emit(SeqEvent(finish_reason=reason))

    def _fail(self, seq: Sequence, phase: str, exc: Exception) -> None:
        """`seq` alone failed: drop its blocks, KV and place, and tell its consumer why."""
        log.error("request %s failed in %s", seq.request_id, phase, exc_info=exc)
        self.cache.release(seq.blocks)
        self.runner.release(seq)
        if seq in self.running:
            self.running.remove(seq)
        seq.status = SeqStatus.FINISHED
        self.stats.requests_failed += 1
        why = f"{type(exc).__name__}: {exc}"[:FAULT_MESSAGE_CHARS]
        seq.emit(SeqEvent(failed=f"the engine failed in this request's {phase}: {why}"))

    def _fail_all(self, message: str) -> None:
        with self._wake:
            doomed = list(self.running) + [seq for _, seq in self.waiting]
            self.waiting.clear()
        for seq in doomed:
            if seq in self.running:
                self.cache.release(seq.blocks)
                self.runner.release(seq)
                self.running.remove(seq)
            seq.status = SeqStatus.FINISHED
            seq.emit(SeqEvent(error=message))
