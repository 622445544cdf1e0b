"""Workloads: synthetic chats, Mooncake replay (conversation inference, time scaling, text)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.helpers import trace_file
from warmroute.bench.workload import (
    ChatParams,
    TraceParams,
    synthetic_chats,
    trace_messages,
    trace_workload,
)
from warmroute.engine.sim_tokenizer import SimTokenizer
from warmroute.sim.textgen import BlockText
from warmroute.sim.traces import TraceRequest, load_mooncake
from warmroute.types import ChatMessage


def test_synthetic_chats_are_seeded_and_shaped_as_asked() -> None:
    params = ChatParams(conversations=30, turns=5, min_turns=2, system_prompts=3,
                        system_tokens=50, user_tokens=20, think_s=1.0, rate=10.0, seed=7)
    work = synthetic_chats(params)
    assert work == synthetic_chats(params)
    assert work != synthetic_chats(ChatParams(conversations=30, seed=8))
    convs = work.conversations
    assert len(convs) == 30 and work.num_requests == sum(len(c.turns) for c in convs)
    assert all(2 <= len(c.turns) <= 5 for c in convs)
    assert len({c.system for c in convs}) == 3  # shared by many conversations
    assert all(len((c.system or "").split()) == 50 for c in convs)
    starts = [c.start_s for c in convs]
    assert starts == sorted(starts) and 1.0 < starts[-1] < 6.0  # ~30 arrivals at 10/s
    assert all(c.turns[0].think_s == 0 for c in convs)
    thinks = [t.think_s for c in convs for t in c.turns[1:]]
    assert 0.5 < sum(thinks) / len(thinks) < 1.6
    lengths = [len(t.user.split()) for c in convs for t in c.turns]
    assert min(lengths) >= 10 + 5 and max(lengths) <= 30 + 5  # ±50 % plus the 5-word header


def test_synthetic_chats_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        synthetic_chats(ChatParams(rate=0))


def write_trace(path: Path, rows: list[tuple[int, int, list[int]]]) -> Path:
    path.write_text("".join(json.dumps({"timestamp": t, "input_length": n, "output_length": 50,
                                        "hash_ids": ids}) + "\n" for t, n, ids in rows))
    return path


def test_conversations_are_inferred_from_extended_prefixes(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.jsonl", [
        (0, 1500, [0, 1, 2]),            # conversation 0
        (0, 1200, [0, 3, 4]),            # conversation 1: shares only block 0
        (3000, 2500, [0, 1, 5, 6, 7]),   # extends request 0 less its last block -> 0
        (6000, 3000, [0, 1, 5, 6, 8, 9]),  # extends request 2 -> 0
        (6000, 800, [0, 3]),             # shares blocks 0 and 3 with request 1 but
    ])                                   # request 1 less its last block is only [0, 3]: -> 1
    reqs = load_mooncake(path)
    assert [r.conversation for r in reqs] == [0, 1, 0, 0, 1]
    assert [r.conversation for r in load_mooncake(path, window_s=5)] == [0, 1, 0]
    assert len(load_mooncake(path, max_requests=2)) == 2
    work = trace_workload("t", reqs, TraceParams(speedup=2.0, max_output_tokens=8))
    assert [c.conv_id for c in work.conversations] == ["conv-0", "conv-1"]
    assert [t.at_s for t in work.conversations[0].turns] == [0.0, 1.5, 3.0]
    assert all(t.max_tokens == 8 for c in work.conversations for t in c.turns)


def test_bad_trace_lines_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"timestamp": 0}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_mooncake(path)


def test_block_text_gives_equal_prefixes_for_equal_ids() -> None:
    blocks = BlockText()
    a = blocks.prompt((0, 1, 2), 1200)
    b = BlockText().prompt((0, 1, 9), 1500)
    assert len(a) == 1200 and len(b) == 1500
    assert a[:1024] == b[:1024] and a[1024:] != b[1024:1200]
    assert blocks.block(5, 10) == BlockText().block(5)[:10]


def test_trace_prompts_tokenize_to_about_their_length() -> None:
    tok = SimTokenizer()
    rows = [TraceRequest(0, 0, 700, 10, (0, 1), 0), TraceRequest(1, 0, 1100, 10, (0, 2, 3), 1)]
    work = trace_workload("t", rows, TraceParams())
    for conv in work.conversations:
        for turn in conv.turns:
            messages = [ChatMessage(m["role"], m["content"])  # type: ignore[arg-type]
                        for m in trace_messages(turn, BlockText())]
            assert abs(len(tok.render(messages)) - turn.input_length) <= 8


def test_the_conversation_trace_has_the_documented_conversations() -> None:
    reqs = load_mooncake(trace_file("conversation"))
    sizes: dict[int, int] = {}
    for r in reqs:
        sizes[r.conversation] = sizes.get(r.conversation, 0) + 1
    assert len(reqs) == 12_031
    assert len(sizes) == 8_057
    assert sum(1 for n in sizes.values() if n > 1) == 2_012
    assert max(sizes.values()) == 43
