"""Model loading: built-in models are ordinary Hugging Face folders, loadable by path, and the
served model id follows `--model` unless `--served-model-name` is given."""

from __future__ import annotations

from dataclasses import replace

import pytest

from warmroute.config import EngineConfig
from warmroute.engine.builtin import builtin_path
from warmroute.engine.engine import Engine, cache_capacity_blocks
from warmroute.engine.model import load_model, resolve_dtype
from warmroute.types import ChatMessage, ChatRequest, SamplingParams


def test_builtin_folder_is_a_plain_hf_folder(tiny_config: EngineConfig) -> None:
    folder = builtin_path("builtin:tiny", tiny_config.home)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert builtin_path("builtin:tiny", tiny_config.home) == folder  # created once


def test_load_by_path_gives_same_model(tiny_config: EngineConfig) -> None:
    folder = builtin_path("builtin:tiny", tiny_config.home)
    by_name = load_model("builtin:tiny", "float32", tiny_config.home)
    by_path = load_model(str(folder), "float32", tiny_config.home)
    prompt = by_name.tokenizer.render([ChatMessage("user", "same weights?")])
    assert prompt == by_path.tokenizer.render([ChatMessage("user", "same weights?")])
    for (name, a), (_, b) in zip(
        by_name.model.state_dict().items(), by_path.model.state_dict().items(), strict=True
    ):
        assert a.equal(b), name
    assert by_name.context_len == 4096
    assert by_name.kv_bytes_per_token == 2 * 4 * 4 * 64 * 4


def test_served_model_name(tiny_config: EngineConfig) -> None:
    folder = builtin_path("builtin:tiny", tiny_config.home)
    assert tiny_config.model_name == "builtin:tiny"
    assert replace(tiny_config, model=str(folder)).model_name == folder.name
    assert replace(tiny_config, served_model_name="grok-tiny").model_name == "grok-tiny"


def test_unknown_models_are_refused(tiny_config: EngineConfig) -> None:
    with pytest.raises(ValueError, match="unknown built-in"):
        load_model("builtin:huge", "float32", tiny_config.home)
    with pytest.raises(ValueError, match="neither"):
        load_model("no-such-folder", "float32", tiny_config.home)


def test_dtype_resolution() -> None:
    assert resolve_dtype("float32") == "float32"
    assert resolve_dtype("bfloat16") == "bfloat16"
    assert resolve_dtype("auto") in ("float32", "bfloat16")
    with pytest.raises(ValueError):
        resolve_dtype("float8")


def test_cache_capacity_from_blocks_or_bytes(tiny_config: EngineConfig) -> None:
    per_token = 8 * 1024
    assert cache_capacity_blocks(replace(tiny_config, cache_blocks=7), per_token) == 7
    one_gib = replace(tiny_config, cache_blocks=None, cache_gb=1.0)
    assert cache_capacity_blocks(one_gib, per_token) == 2**30 // (per_token * 16)


async def test_engine_reports_finish_reasons(tiny_config: EngineConfig) -> None:
    engine = Engine.from_config(tiny_config)
    engine.start()
    try:
        request = ChatRequest((ChatMessage("user", "hi"),), SamplingParams(max_tokens=3))
        events = [e async for e in engine.generate(engine.prepare(request))]
    finally:
        engine.stop()
    finished = events[-1]
    assert getattr(finished, "finish_reason", None) in ("length", "stop")
    usage = finished.usage  # type: ignore[union-attr]
    assert usage.completion_tokens <= 3
    assert usage.prompt_tokens == len(engine.tokenizer.render(request.messages))
