"""The scheduler's order of work: chunked prefill, decode between chunks, and the `priority`
policy (a request that ranks first overtakes a long prefill at its next chunk), driven step by
step over the simulated runner (the real block pool and prefix cache, no sleeping)."""

from __future__ import annotations

from typing import Any

import pytest

from warmroute.app.cli import build_parser
from warmroute.app.engine_command import engine_config
from warmroute.config import SchedulingPolicy
from warmroute.engine.block_pool import BlockPool
from warmroute.engine.prefix_cache import PrefixCache, block_hashes
from warmroute.engine.scheduler import Scheduler
from warmroute.engine.sequence import SeqEvent, Sequence
from warmroute.engine.sim_profile import sim_profile
from warmroute.engine.sim_runner import SimRunner
from warmroute.errors import EngineOverloaded
from warmroute.types import SamplingParams

BS = 16
CHUNK = 64
SEED = b"scheduling-test"
PROFILE = sim_profile("gpu", prefill_ms_per_token=1.0, decode_ms_per_step=0.0)


class Log:
    """What the scheduler emitted, in order, as (request id, event)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, SeqEvent]] = []

    def first_tokens(self) -> list[str]:
        seen: list[str] = []
        for request_id, event in self.events:
            if event.token_id is not None and request_id not in seen:
                seen.append(request_id)
        return seen

    def ending(self, request_id: str) -> SeqEvent:
        return next(e for r, e in self.events if r == request_id and e.token_id is None)


class Prefilled:
    """A sleep that records the prompt tokens each prefill chunk was charged (1 ms each)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []

    def __call__(self, seconds: float) -> None:
        if seconds:
            self.tokens.append(round(seconds * 1000))


def scheduler(policy: SchedulingPolicy, max_running: int = 4
              ) -> tuple[Scheduler, Log, Prefilled]:
    sleeps = Prefilled()
    runner = SimRunner(PROFILE, 1000, BS, sleep=sleeps)
    sched = Scheduler(runner, PrefixCache(BlockPool(256), BS), max_running=max_running,
                      context_len=4096, eos_ids=frozenset(), seed=SEED,
                      prefill_chunk=CHUNK, policy=policy)
    return sched, Log(), sleeps


def seq(log: Log, request_id: str, prompt_tokens: int, max_tokens: int = 2,
        priority: int = 0, first_id: int = 10) -> Sequence:
    def emit(event: SeqEvent) -> None:
        log.events.append((request_id, event))

    return Sequence(request_id, list(range(first_id, first_id + prompt_tokens)), max_tokens,
                    SamplingParams(), emit=emit, priority=priority)


def run_until_idle(sched: Scheduler, limit: int = 100) -> None:
    for _ in range(limit):
        if not sched.running and not sched.waiting:
            return
        sched.step()
    raise AssertionError("the scheduler did not finish its work")


def test_a_long_prompt_is_prefilled_one_chunk_a_step() -> None:
    sched, log, prefilled = scheduler("fcfs")
    long_ = seq(log, "long", 300)
    sched.add(long_)
    for done in (64, 128, 192, 256):
        sched.step()
        assert long_.num_computed == done and not long_.output_ids
    sched.step()
    assert len(long_.output_ids) == 2  # the first token, then one decode step's
    assert prefilled.tokens == [64, 64, 64, 64, 44]
    run_until_idle(sched)
    assert log.ending("long").finish_reason == "length"
    sched.cache.pool.check_integrity()


def test_answers_being_decoded_get_a_token_between_the_chunks() -> None:
    sched, log, _ = scheduler("fcfs")
    talking = seq(log, "talking", 20, max_tokens=50)
    sched.add(talking)
    sched.step()
    before = len(talking.output_ids)
    sched.add(seq(log, "long", 4 * CHUNK, first_id=500))
    for _ in range(4):
        sched.step()
    assert len(talking.output_ids) == before + 4  # one decode step after each chunk
    assert log.first_tokens() == ["talking", "long"]


@pytest.mark.parametrize(("policy", "order"), [
    ("priority", ["short", "long"]),  # ranks first: overtakes at the next chunk
    ("fcfs", ["long", "short"]),  # a prefill once begun runs to its end
])
def test_priority_overtakes_a_begun_prefill_and_fcfs_does_not(
        policy: SchedulingPolicy, order: list[str]) -> None:
    sched, log, prefilled = scheduler(policy)
    long_ = seq(log, "long", 10 * CHUNK, priority=1000 if policy == "priority" else 0)
    sched.add(long_)
    sched.step()
    assert long_.num_computed == CHUNK
    short = seq(log, "short", 40, priority=10 if policy == "priority" else 0, first_id=900)
    sched.add(short)
    sched.step()
    assert log.first_tokens() == (["short"] if policy == "priority" else [])
    assert long_.num_computed == (1 if policy == "priority" else 2) * CHUNK
    run_until_idle(sched)
    assert log.first_tokens() == order
    assert long_.num_cached_tokens == 0 and sum(prefilled.tokens) == 10 * CHUNK + 40
    sched.cache.pool.check_integrity()


def test_priority_ranks_waiting_requests_and_arrival_breaks_ties() -> None:
    sched, log, _ = scheduler("priority", max_running=1)
    for request_id, priority in (("c", 7), ("a", 3), ("b", 7), ("d", 3)):
        sched.add(seq(log, request_id, 20, max_tokens=1, priority=priority))
    run_until_idle(sched)
    assert log.first_tokens() == ["a", "d", "c", "b"]


def test_fcfs_ignores_priority_values() -> None:
    sched, log, _ = scheduler("fcfs", max_running=1)
    for request_id, priority in (("c", 7), ("a", 3), ("b", -1)):
        sched.add(seq(log, request_id, 20, max_tokens=1, priority=priority))
    run_until_idle(sched)
    assert log.first_tokens() == ["c", "a", "b"]


def test_an_answer_aborted_mid_prefill_frees_its_slot_and_caches_what_it_computed() -> None:
    sched, log, _ = scheduler("priority")
    long_ = seq(log, "long", 5 * CHUNK)
    sched.add(long_)
    sched.step()
    sched.step()
    long_.stop_requested = True
    sched.step()
    assert log.ending("long").finish_reason == "abort"
    assert not sched.running and not long_.output_ids
    hashes = block_hashes(long_.prompt_ids, BS, "", SEED)
    assert len(sched.cache.lookup(hashes, long_.num_prompt_tokens)) == 2 * CHUNK // BS
    again = seq(log, "again", 5 * CHUNK)
    sched.add(again)
    run_until_idle(sched)
    assert again.num_cached_tokens == 2 * CHUNK
    sched.cache.pool.check_integrity()


def test_a_chunk_that_raises_fails_its_request_alone() -> None:
    sched, log, _ = scheduler("priority")
    long_ = seq(log, "long", 4 * CHUNK)
    other = seq(log, "other", 30, first_id=700)
    chunks: list[str] = []

    def fault(phase: str, seqs: list[Sequence]) -> Any:
        if phase == "prefill":
            chunks.append(seqs[0].request_id)
            if seqs[0] is long_ and chunks.count("long") == 2:
                raise RuntimeError("chunk two")

    sched.fault = fault
    sched.add(long_)
    sched.add(other)
    run_until_idle(sched)
    failed = log.ending("long").failed
    assert failed is not None and "chunk two" in failed
    assert log.ending("other").finish_reason == "length"
    assert chunks == ["long", "long", "other"]
    sched.cache.pool.check_integrity()


def test_a_request_that_left_while_waiting_is_let_go_behind_a_begun_prefill() -> None:
    sched, log, _ = scheduler("priority")
    long_ = seq(log, "long", 4 * CHUNK, priority=1)
    sched.add(long_)
    sched.step()
    gone = seq(log, "gone", 20, priority=50)
    sched.add(gone)
    gone.stop_requested = True
    sched.step()  # the begun prefill outranks it, but its place is given back at once
    assert log.ending("gone").finish_reason == "abort"
    assert not sched.waiting and long_.num_computed == 2 * CHUNK
    run_until_idle(sched)
    assert log.first_tokens() == ["long"]


def test_a_waiting_request_aborted_gives_its_place_back_at_once() -> None:
    sched, log, _ = scheduler("fcfs", max_running=1)
    sched.max_waiting = 2
    sched.add(seq(log, "long", 4 * CHUNK))
    sched.step()  # running; the next two wait behind it
    left = [seq(log, name, 20, first_id=300 + 50 * i) for i, name in enumerate(("a", "b"))]
    for one in left:
        sched.add(one)
    with pytest.raises(EngineOverloaded):
        sched.check_room()
    for one in left:
        sched.abort(one)
    assert sched.num_waiting == 0 and [log.ending(n).finish_reason for n in "ab"] == [
        "abort", "abort"]
    sched.add(seq(log, "next", 20, first_id=900))  # room again, before any step ran
    sched.abort(left[0])  # a second abort of a finished one changes nothing
    run_until_idle(sched)
    assert log.first_tokens() == ["long", "next"]
    assert [r for r, e in log.events if e.finish_reason == "abort"] == ["a", "b"]
    sched.cache.pool.check_integrity()


def test_a_request_that_leaves_as_it_is_admitted_gets_no_prefill() -> None:
    sched, log, prefilled = scheduler("fcfs")
    leaving = seq(log, "leaving", 300)
    sched.add(leaving)
    begin = sched._begin

    def client_leaves_meanwhile(admitted: Sequence) -> None:
        begin(admitted)
        sched.abort(admitted)  # running by now: it ends at this step, before any chunk

    sched._begin = client_leaves_meanwhile  # type: ignore[method-assign]
    sched.step()
    assert log.ending("leaving").finish_reason == "abort"
    assert prefilled.tokens == [] and not sched.running and not sched.waiting
    sched.cache.pool.check_integrity()


@pytest.mark.parametrize("chunk", ["0", "-5"])
def test_a_prefill_chunk_below_one_token_is_refused(chunk: str) -> None:
    args = build_parser().parse_args(["engine", "--model", "sim", "--prefill-chunk", chunk])
    with pytest.raises(SystemExit, match="--prefill-chunk"):
        engine_config(args)
