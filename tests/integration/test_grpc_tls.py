"""TLS and mutual TLS, with a test CA, server and client certificates made in the fixture."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from admatch.v1 import admatch_pb2_grpc as pb_grpc
from engine.app import App, build_app
from engine.config import load_config
from engine.rpc.convert import request_to_proto
from engine.rpc.server import build_server
from engine.scoring.jsonio import request_from_json

from .pki import make_pki

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "scoring" / "exemplary"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return make_pki(tmp_path_factory)


def _serve(model_dir: Path, pki: dict[str, bytes], mutual: bool) -> Iterator[tuple[int, App]]:
    d = Path(pki["dir"].decode())
    config = load_config()
    server_cfg = config.server.model_copy(
        update={
            "port": 0,
            "tls_cert_file": str(d / "server_cert.pem"),
            "tls_key_file": str(d / "server_key.pem"),
            "tls_client_ca_file": str(d / "ca.pem") if mutual else "",
        }
    )
    config = config.model_copy(
        update={"server": server_cfg, "store": config.store.model_copy(update={"url": "memory://"})}
    )
    app = build_app(config, model_dir)
    serving = build_server(app, config.server)
    port = serving.port
    try:
        yield port, app
    finally:
        serving.stop(1)
        app.close()


def _score(port: int, creds: grpc.ChannelCredentials) -> str:
    doc = json.loads((GOLDEN / "iot_idle_screen.json").read_text())["request"]
    with grpc.secure_channel(f"localhost:{port}", creds) as channel:
        reply = pb_grpc.AdMatchingStub(channel).Score(
            request_to_proto(request_from_json(doc)), timeout=10
        )
    return str(reply.request_id)


def test_tls_handshake_with_the_test_ca(model_dir: Path, pki: dict[str, bytes]) -> None:
    for port, _app in _serve(model_dir, pki, mutual=False):
        assert _score(port, grpc.ssl_channel_credentials(root_certificates=pki["ca"])) == "g-iot"
        with (
            grpc.insecure_channel(f"localhost:{port}") as plain,
            pytest.raises(grpc.RpcError) as err,
        ):
            pb_grpc.AdMatchingStub(plain).Score(
                request_to_proto(
                    request_from_json(
                        json.loads((GOLDEN / "iot_idle_screen.json").read_text())["request"]
                    )
                ),
                timeout=5,
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_wrong_client_certificate(
    model_dir: Path, pki: dict[str, bytes]
) -> None:
    for port, _app in _serve(model_dir, pki, mutual=True):
        good = grpc.ssl_channel_credentials(pki["ca"], pki["client_key"], pki["client_cert"])
        assert _score(port, good) == "g-iot"
        for creds in (
            grpc.ssl_channel_credentials(pki["ca"], pki["rogue_key"], pki["rogue_cert"]),
            grpc.ssl_channel_credentials(pki["ca"]),
        ):
            with pytest.raises(grpc.RpcError) as err:
                _score(port, creds)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_config_is_checked(tmp_path: Path) -> None:
    import tomllib
    from importlib import resources

    from engine.config import parse_config
    from engine.errors import ConfigError

    doc = tomllib.loads(resources.files("engine").joinpath("default_config.toml").read_text())
    doc["server"]["tls_cert_file"] = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file go together"):
        parse_config(doc)
    doc["server"]["tls_key_file"] = str(tmp_path / "missing-key.pem")
    with pytest.raises(ConfigError, match="missing.pem: file not found"):
        parse_config(doc)
