"""Credentials per role (issue 16, item 11): scoring clients, event reporters and operators, by
bearer token or client certificate; every AdMatching RPC checked against its role; health open.

Before: Score and RecordEvents had no authentication beyond optional mutual TLS, so anyone who
reached the port could record impressions or negative feedback (which blocks campaigns) for
any user."""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Callable, Iterator
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from admatch.v1 import admatch_pb2 as pb
from admatch.v1 import admatch_pb2_grpc as pb_grpc
from engine.app import App
from engine.config import AdmatchConfig, Principal, parse_config
from engine.errors import ConfigError
from engine.rpc.convert import request_to_proto
from engine.rpc.server import Serving, build_server
from engine.scoring.jsonio import request_from_json

from .conftest import memory_app
from .pki import make_pki

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "scoring" / "exemplary"
SCORER, REPORTER, OPERATOR = "scorer-token", "reporter-token", "operator-token"


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


PRINCIPALS = [
    Principal(name="adserver", roles=["score"], token_sha256=_sha(SCORER)),
    Principal(name="event-pipeline", roles=["events"], token_env="TEST_REPORTER_TOKEN"),
    Principal(name="ops", roles=["operator", "score", "events"], token_sha256=_sha(OPERATOR)),
    Principal(name="ad-server-cert", roles=["score"], certificate="ad-server"),
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return make_pki(tmp_path_factory)


@pytest.fixture(scope="module")
def app(model_dir: Path) -> Iterator[App]:
    application = memory_app(model_dir)
    yield application
    application.close()


def _server(app: App, **update: Any) -> Serving:
    server = app.scorer.config.server.model_copy(update={"port": 0, **update})
    return build_server(app, server)


@pytest.fixture
def served(app: App, monkeypatch: pytest.MonkeyPatch) -> Iterator[grpc.Channel]:
    monkeypatch.setenv("TEST_REPORTER_TOKEN", REPORTER)
    monkeypatch.delenv("ADMATCH_OPERATOR_TOKEN", raising=False)
    auth = app.scorer.config.server.auth.model_copy(update={"principals": PRINCIPALS[:3]})
    serving = _server(app, auth=auth)
    with grpc.insecure_channel(f"127.0.0.1:{serving.port}") as channel:
        yield channel
    serving.stop(1)


def _request() -> pb.ScoreRequest:
    doc = json.loads((GOLDEN / "iot_idle_screen.json").read_text())["request"]
    return request_to_proto(request_from_json(doc))


def _events() -> pb.EventBatch:
    e = pb.Event(
        type=pb.Event.TYPE_NEGATIVE_FEEDBACK,
        impression_id="auth-1",
        user_id="victim",
        campaign_id="rival",
        negative_kind=pb.Event.NEGATIVE_KIND_HIDE,
    )
    e.time.FromJsonString("2026-03-03T12:00:00Z")
    return pb.EventBatch(events=[e])


CALLS: dict[str, Callable[[pb_grpc.AdMatchingStub, Any], Any]] = {
    "Score": lambda s, md: s.Score(_request(), metadata=md, timeout=10),
    "ScoreStream": lambda s, md: list(s.ScoreStream(iter([_request()]), metadata=md, timeout=10)),
    "RecordEvents": lambda s, md: s.RecordEvents(_events(), metadata=md, timeout=10),
    "GetModelInfo": lambda s, md: s.GetModelInfo(pb.GetModelInfoRequest(), metadata=md, timeout=10),
    "ReloadModel": lambda s, md: s.ReloadModel(pb.ReloadModelRequest(), metadata=md, timeout=30),
}
BEARER = {"none": (), "scorer": SCORER, "reporter": REPORTER, "operator": OPERATOR, "bad": "x"}
EXPECTED = {  # caller -> method -> status
    "none": dict.fromkeys(CALLS, "UNAUTHENTICATED"),
    "bad": dict.fromkeys(CALLS, "UNAUTHENTICATED"),
    "scorer": {
        "Score": "OK",
        "ScoreStream": "OK",
        "RecordEvents": "PERMISSION_DENIED",
        "GetModelInfo": "OK",
        "ReloadModel": "PERMISSION_DENIED",
    },
    "reporter": {
        "Score": "PERMISSION_DENIED",
        "ScoreStream": "PERMISSION_DENIED",
        "RecordEvents": "OK",
        "GetModelInfo": "OK",
        "ReloadModel": "PERMISSION_DENIED",
    },
    "operator": dict.fromkeys(CALLS, "OK"),
}


def _code(call: Callable[[], Any]) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


@pytest.mark.parametrize("caller", sorted(EXPECTED))
def test_each_rpc_is_checked_against_its_role(served: grpc.Channel, caller: str) -> None:
    stub = pb_grpc.AdMatchingStub(served)
    token = BEARER[caller]
    metadata = (("authorization", f"bearer {token}"),) if token else ()
    got = {method: _code(partial(call, stub, metadata)) for method, call in CALLS.items()}
    assert got == EXPECTED[caller]


def test_a_refusal_says_what_is_missing(served: grpc.Channel) -> None:
    stub = pb_grpc.AdMatchingStub(served)
    with pytest.raises(grpc.RpcError) as info:
        stub.RecordEvents(_events(), metadata=(("authorization", f"Bearer {SCORER}"),))
    assert info.value.details() == (
        "adserver may not call RecordEvents: it needs the role 'events', adserver has ['score']"
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(_request())
    assert info.value.details().startswith("Score needs credentials: 'authorization: Bearer")


def test_health_and_reflection_need_no_credentials(served: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(served).Check(
        health_pb2.HealthCheckRequest(service="admatch.v1.AdMatching"), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_auth_is_off_by_default_on_loopback_but_operators_need_credentials(app: App) -> None:
    serving = _server(app)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{serving.port}") as channel:
            stub = pb_grpc.AdMatchingStub(channel)
            assert _code(lambda: CALLS["Score"](stub, ())) == "OK"
            assert _code(lambda: CALLS["RecordEvents"](stub, ())) == "OK"
            assert _code(lambda: CALLS["ReloadModel"](stub, ())) == "PERMISSION_DENIED"
    finally:
        serving.stop(1)


def _doc() -> dict[str, Any]:
    return tomllib.loads(resources.files("engine").joinpath("default_config.toml").read_text())


def test_a_server_off_loopback_needs_credentials_or_an_explicit_off() -> None:
    doc = _doc()
    doc["server"]["host"] = "0.0.0.0"
    with pytest.raises(ConfigError, match="is not loopback and no credentials are configured"):
        parse_config(doc)
    doc["server"]["auth"] = {"required": "off"}
    assert not parse_config(doc).server.auth_on
    doc["server"]["auth"] = {
        "principals": [{"name": "a", "roles": ["score"], "token_env": "TOKEN_A"}]
    }
    config: AdmatchConfig = parse_config(doc)
    assert config.server.auth_on


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"principals": [{"name": "a", "roles": ["score"]}]}, "needs token_sha256"),
        (
            {"principals": [{"name": "a", "roles": ["score"], "token_sha256": "abc"}]},
            "64 lower-case hex digits",
        ),
        ({"principals": [{"name": "a", "roles": ["admin"], "token_env": "T"}]}, "roles"),
        ({"required": "on"}, "needs at least one principal"),
        (
            {"principals": [{"name": "a", "roles": ["score"], "certificate": "a.example"}]},
            "needs mutual TLS",
        ),
    ],
    ids=["no-proof", "bad-digest", "unknown-role", "on-without-principals", "cert-without-mtls"],
)
def test_auth_config_is_checked(auth: dict[str, Any], message: str) -> None:
    doc = _doc()
    doc["server"]["auth"] = auth
    with pytest.raises(ConfigError, match=message):
        parse_config(doc)


def test_a_client_certificate_identifies_a_principal(app: App, pki: dict[str, bytes]) -> None:
    d = Path(pki["dir"].decode())
    auth = app.scorer.config.server.auth.model_copy(update={"principals": PRINCIPALS[3:]})
    serving = _server(
        app,
        auth=auth,
        tls_cert_file=str(d / "server_cert.pem"),
        tls_key_file=str(d / "server_key.pem"),
        tls_client_ca_file=str(d / "ca.pem"),
    )
    try:
        for key, cert, expected in (
            ("client_key", "client_cert", {"Score": "OK", "RecordEvents": "PERMISSION_DENIED"}),
            ("other_key", "other_cert", {"Score": "UNAUTHENTICATED"}),
        ):
            creds = grpc.ssl_channel_credentials(pki["ca"], pki[key], pki[cert])
            with grpc.secure_channel(f"localhost:{serving.port}", creds) as channel:
                stub = pb_grpc.AdMatchingStub(channel)
                got = {m: _code(partial(CALLS[m], stub, ())) for m in expected}
                assert got == expected, cert
    finally:
        serving.stop(1)
