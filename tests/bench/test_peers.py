"""Peer router configurations and their confinement (nothing is installed or started here)."""

from __future__ import annotations

import socket

from warmroute.bench.peers import PEERS, confined_env


def test_peer_outbound_traffic_goes_to_a_dead_loopback_port() -> None:
    env = confined_env()
    proxy = env["HTTPS_PROXY"]
    assert proxy == env["HTTP_PROXY"] == env["https_proxy"] and proxy.startswith("http://127.0.0.1:")
    port = int(proxy.rsplit(":", 1)[1])
    with socket.socket() as sock:
        sock.settimeout(1.0)
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # nobody listens there
    assert env["NO_PROXY"] == "127.0.0.1,localhost" and env["HF_HUB_OFFLINE"] == "1"


def test_peers_are_the_configurations_the_issue_names() -> None:
    by_name = {p.name: p for p in PEERS}
    assert by_name["sglang-router manual"].key_header == "x-smg-routing-key"
    assert by_name["sglang-router cache_aware"].key_header is None
    assert by_name["vllm-router consistent_hash"].key_header == "x-session-id"
    assert by_name["vllm-router sticky_least_loaded"].key_header == "x-session-id"
    smg = by_name["smg cache_aware+sticky"]
    assert smg.venv == "smg" and smg.key_header == "x-grok-conv-id"
    assert {"--sticky-sessions", "min_group", "cache_aware"} <= set(smg.flags)
    assert "consistent_hashing" in by_name["smg consistent_hashing"].flags
