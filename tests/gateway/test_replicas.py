"""Issue 16, Must show 1–4: `warmroute gateway` replicas as processes, behind a round-robin
client (a load balancer), route as one gateway does.

Each test runs three (or four) gateway processes over the shared fleet's three engines, sharing
a Redis server of the test's own and one SQLite store (so one deployment secret, so one tenant
salt), each with a data directory of its own.
"""

from __future__ import annotations

import signal
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import Postgres, postgres_schema_url
from tests.gateway.harness import Fleet, cached_tokens, opening, wait_for
from tests.gateway.replicas import OwnRedis, Replicas, ask, own_redis, replicas
from warmroute.gateway.auth import create_key
from warmroute.store import open_store

pytestmark = pytest.mark.slow
Answer = tuple[str, dict[str, Any]]
BLOCK = 16


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[OwnRedis]:
    with own_redis(tmp_path) as server:
        yield server


def shared_args(redis: OwnRedis, tmp: Path) -> list[str]:
    return ["--redis-url", redis.url, "--database-url", f"sqlite:///{tmp / 'shared.db'}",
            "--no-api-keys", "--public-metrics"]


def converse(client: httpx.Client, group: Replicas, keys: list[str], turns: range,
             histories: dict[str, list[dict[str, str]]],
             answers: dict[str, list[Answer]]) -> None:
    """Turn t of every conversation, then turn t+1 …, each request to the next replica."""
    for turn in turns:
        for key in keys:
            if turn:
                histories[key].append({"role": "user", "content": f"Turn {turn + 1}: go on."})
            engine, answer = ask(client, group.next_url(), histories[key], key)
            answers[key].append((engine, answer))
            histories[key].append(
                {"role": "assistant", "content": answer["choices"][0]["message"]["content"]})


def assert_warm(answers: list[Answer]) -> None:
    """Every turn after the first reused at least the whole previous prompt's full blocks."""
    for turn in range(1, len(answers)):
        previous = answers[turn - 1][1]["usage"]["prompt_tokens"]
        cached = cached_tokens(answers[turn][1])
        assert cached % BLOCK == 0 and cached >= BLOCK * (previous // BLOCK) - BLOCK, turn


def test_three_replicas_keep_every_conversation_on_one_warm_engine(
    fleet: Fleet, tmp_path: Path, redis_server: OwnRedis
) -> None:
    """Must show 1: 30 conversations × 4 turns round-robin over 3 replicas."""
    keys = [f"replicated-{uuid.uuid4().hex[:6]}-{i}" for i in range(30)]
    histories = {k: opening(f"Conversation {k}: what does a router do?") for k in keys}
    answers: dict[str, list[Answer]] = defaultdict(list)
    with replicas(fleet, tmp_path, 3, shared_args(redis_server, tmp_path)) as group, \
            httpx.Client(timeout=60) as client:
        converse(client, group, keys, range(4), histories, answers)
        unique = [{"role": "user", "content": f"A prompt seen nowhere else {keys[0]}. " * 30}]
        repeats = [ask(client, group.next_url(), unique) for _ in range(3)]
        sticky = sum(group.metric(i, "warmroute_gateway_routing_decisions_total",
                                  reason="sticky") for i in range(3))
    homes: Counter[str] = Counter()
    for key in keys:
        engines = {engine for engine, _ in answers[key]}
        assert len(engines) == 1, (key, engines)
        homes[engines.pop()] += 1
        assert_warm(answers[key])
    assert set(homes) == set(fleet.ids) and max(homes.values()) <= 15, homes
    assert sticky == 90  # turns 2–4 of every conversation
    assert len({engine for engine, _ in repeats}) == 1  # keyless repeats go where they are warm
    assert cached_tokens(repeats[0][1]) == 0
    for _, answer in repeats[1:]:
        prompt = answer["usage"]["prompt_tokens"]
        assert prompt - BLOCK <= cached_tokens(answer) < prompt


def test_replicas_sharing_only_postgres_derive_one_salt(
    fleet: Fleet, tmp_path: Path, postgres: Postgres
) -> None:
    """Must show 2: no secret given, separate data dirs; the store makes the salts agree."""
    if postgres.url is None:
        pytest.skip(f"PostgreSQL not reachable: {postgres.reason}")
    schema = f"wr_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = postgres_schema_url(postgres.url, schema)
    try:
        alice, bob = pg_keys(url)
        with replicas(fleet, tmp_path, 2, ["--database-url", url, "--policy", "hash"]) as group, \
                httpx.Client(timeout=60) as client:
            prompt = opening(f"Salt check {schema}: one tenant, two replicas.")
            first, second, other = (
                client.post(base + "/v1/chat/completions",
                            headers={"authorization": f"Bearer {secret}",
                                     "x-grok-conv-id": "salt-check"},
                            json={"model": "builtin:tiny", "messages": prompt, "max_tokens": 2,
                                  "temperature": 0}).json()
                for base, secret in ((group.procs[0].url, alice), (group.procs[1].url, alice),
                                     (group.procs[1].url, bob)))
        assert cached_tokens(first) == 0
        prompt_tokens = second["usage"]["prompt_tokens"]
        assert prompt_tokens - BLOCK <= cached_tokens(second) < prompt_tokens  # same salt
        assert cached_tokens(other) == 0  # another tenant never hits the first one's blocks
    finally:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def pg_keys(url: str) -> tuple[str, str]:
    import asyncio

    async def make() -> tuple[str, str]:
        store = await open_store(url)
        try:
            alice, _ = await create_key(store, name="alice", team="salt-team-a")
            bob, _ = await create_key(store, name="bob", team="salt-team-b")
        finally:
            await store.close()
        return alice, bob

    return asyncio.run(make())


def test_a_restarted_and_an_added_replica_route_known_conversations_home(
    fleet: Fleet, tmp_path: Path, redis_server: OwnRedis
) -> None:
    """Must show 3: SIGKILL + restart of replica 2 and a fourth replica mid-run."""
    keys = [f"restart-{uuid.uuid4().hex[:6]}-{i}" for i in range(12)]
    histories = {k: opening(f"Conversation {k}: replicas restart.") for k in keys}
    answers: dict[str, list[Answer]] = defaultdict(list)
    with replicas(fleet, tmp_path, 3, shared_args(redis_server, tmp_path)) as group, \
            httpx.Client(timeout=60) as client:
        converse(client, group, keys, range(2), histories, answers)
        group.restart(1)
        group.add()
        for index in (1, 3):  # the first request each of them sees, of every conversation
            for key in keys:
                engine, answer = ask(client, group.procs[index].url, histories[key], key)
                assert engine == answers[key][0][0], (index, key)
                answers[key].append((engine, answer))
    for key in keys:
        assert len({engine for engine, _ in answers[key]}) == 1


def test_a_redis_outage_fails_no_request_and_the_replicas_converge(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Must show 4: the test's own Redis SIGKILLed mid-run, then back."""
    redis = OwnRedis(tmp_path).start()
    keys = [f"outage-{uuid.uuid4().hex[:6]}-{i}" for i in range(9)]
    histories = {k: opening(f"Conversation {k}: Redis goes away.") for k in keys}
    answers: dict[str, list[Answer]] = defaultdict(list)
    try:
        with replicas(fleet, tmp_path, 3, shared_args(redis, tmp_path)) as group, \
                httpx.Client(timeout=60) as client:
            converse(client, group, keys, range(1), histories, answers)
            redis.popen.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            redis.popen.wait()  # type: ignore[union-attr]
            converse(client, group, keys, range(1, 2), histories, answers)  # ask() checks 200
            wait_for(lambda: all(group.metric(i, "warmroute_gateway_shared_state_up") == 0
                                 for i in range(3)), 10, "every replica to report the outage")
            newcomer = f"born-in-the-outage-{uuid.uuid4().hex[:6]}"
            born = opening(f"Conversation {newcomer}.")
            during = {ask(client, p.url, born, newcomer)[0] for p in group.procs}
            redis = OwnRedis(tmp_path, port=redis.port).start()
            wait_for(lambda: all(group.metric(i, "warmroute_gateway_shared_state_up") == 1
                                 for i in range(3)), 10, "every replica to reconnect")
            after = {ask(client, p.url, born, newcomer)[0] for p in group.procs}
        assert len(after) == 1 and after <= during, (during, after)
        for key in keys:
            assert len({engine for engine, _ in answers[key]}) == 1, key
    finally:
        redis.kill()
