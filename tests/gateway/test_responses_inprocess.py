"""Stored responses across a gateway restart, in-process over scripted engines, on SQLite and on
PostgreSQL: a new gateway over the same store serves a stored response, chains on it on the
engine that produced it (no routing key needed), and sends that engine the same history under
the same tenant salt (the deployment's secret lives in the store), so its cache still serves."""

from __future__ import annotations

from pathlib import Path

from tests.gateway.inprocess import in_process_gateway
from tests.gateway.scripted import ScriptedFleet

ENGINE = "x-warmroute-engine"
INSTRUCTIONS = "You answer briefly."


async def test_a_restarted_gateway_serves_and_chains_stored_responses(
    store_url: str, tmp_path: Path
) -> None:
    engines = ScriptedFleet("e1", "e2", "e3")
    # No configured secret: the first gateway creates the deployment's in the store.
    settings = {"database_url": store_url, "cache_secret": None}
    async with in_process_gateway(engines, tmp_path / "first", **settings) as gw:
        made = await gw.http.post("/v1/responses", json={
            "model": "scripted-model", "instructions": INSTRUCTIONS,
            "input": "Before the restart.", "max_output_tokens": 6})
    assert made.status_code == 200, made.text
    stored, producer = made.json(), made.headers[ENGINE]
    first_body = engines[producer].received[-1]
    async with in_process_gateway(engines, tmp_path / "second", **settings) as gw:
        again = (await gw.http.get(f"/v1/responses/{stored['id']}")).json()
        after = await gw.http.post("/v1/responses", json={
            "model": "scripted-model", "input": "After the restart.",
            "previous_response_id": stored["id"], "max_output_tokens": 6})
    assert again["output"] == stored["output"] and again["id"] == stored["id"]
    assert after.status_code == 200, after.text
    assert after.headers[ENGINE] == producer
    assert after.json()["previous_response_id"] == stored["id"]
    chained = engines[producer].received[-1]
    assert chained["messages"] == [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": "Before the restart."},
        {"role": "assistant", "content": "Hello world"},
        {"role": "user", "content": "After the restart."},
    ]
    assert chained["cache_salt"] == first_body["cache_salt"]
    assert sum(len(s.received) for s in engines.scripts.values()) == 2
