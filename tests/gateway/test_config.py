"""Gateway configuration: `--engine [ID=]URL`, the TOML file, and flags over the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from warmroute.app.cli import build_parser
from warmroute.app.gateway_command import gateway_config
from warmroute.config import EngineEndpoint, GatewayConfig, ServeConfig


def test_engine_specs_name_a_url_and_optionally_an_id() -> None:
    assert EngineEndpoint.parse("http://127.0.0.1:8101/") == EngineEndpoint(
        "http://127.0.0.1:8101", "127.0.0.1:8101"
    )
    assert EngineEndpoint.parse("a=http://h:1") == EngineEndpoint("http://h:1", "a")
    assert EngineEndpoint.parse("h:2") == EngineEndpoint("http://h:2", "h:2")
    assert EngineEndpoint.parse("http://h:3/x?a=b").engine_id == "h:3/x?a=b"


def test_toml_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        '[gateway]\nport = 9000\nepsilon = 0.5\ncache_salt = "team-a"\n\n'
        '[[engines]]\nurl = "http://127.0.0.1:8101"\nid = "left"\n\n'
        '[[engines]]\nurl = "http://127.0.0.1:8102"\nmodel = "m"\n'
    )
    config = GatewayConfig.from_toml(path)
    assert config.port == 9000 and config.epsilon == 0.5 and config.cache_salt == "team-a"
    assert [e.engine_id for e in config.engines] == ["left", "127.0.0.1:8102"]
    assert config.engines[1].model == "m"
    args = build_parser().parse_args(["gateway", "--config", str(path), "--port", "9100"])
    config = gateway_config(args)
    assert config.port == 9100 and config.epsilon == 0.5 and len(config.engines) == 2
    args = build_parser().parse_args(
        ["gateway", "--config", str(path), "--engine", "x=http://h:1", "--epsilon", "0.1"]
    )
    config = gateway_config(args)
    assert [e.engine_id for e in config.engines] == ["x"] and config.epsilon == 0.1


def test_bad_configs_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[gateway]\nprot = 1\n")
    with pytest.raises(ValueError, match="unknown"):
        GatewayConfig.from_toml(path)
    with pytest.raises(ValueError, match="unique"):
        GatewayConfig(engines=(EngineEndpoint("http://a", "x"), EngineEndpoint("http://b", "x")))
    with pytest.raises(SystemExit):
        gateway_config(build_parser().parse_args(["gateway"]))
    for key in ("clé", "a\r\nx-evil: 1", "two words"):  # it goes into a header as it is
        with pytest.raises(ValueError, match="printable ASCII"):
            EngineEndpoint("http://a", "x", api_key=key)
        with pytest.raises(ValueError, match="printable ASCII"):
            GatewayConfig(engines=(EngineEndpoint("http://a", "x"),), engine_api_key=key)
    for timeout in ("header_timeout_s", "body_timeout_s", "send_timeout_s"):
        with pytest.raises(ValueError, match="must be positive"):
            GatewayConfig(engines=(EngineEndpoint("http://a", "x"),), **{timeout: 0.0})


@pytest.mark.parametrize(("cores", "engines", "threads"), [(2, 2, 1), (16, 4, 4), (2, 4, 1),
                                                            (7, 2, 3)])
def test_serve_divides_the_cores_among_its_engines(cores: int, engines: int, threads: int) -> None:
    assert ServeConfig(engines=engines, cores=cores).threads_per_engine == threads


def test_serve_flags() -> None:
    args = build_parser().parse_args(["serve", "--engines", "3", "--grpc-port", "50052"])
    assert (args.engines, args.grpc_port, args.port, str(args.data_dir)) == (
        3, 50052, 8000, ".warmroute"
    )
