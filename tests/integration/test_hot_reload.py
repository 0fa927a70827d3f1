"""Hot reload: a new model or config in place is picked up under load; a broken one is refused."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import grpc
import pytest

from admatch.v1 import admatch_pb2_grpc as pb_grpc
from engine.app import App, build_app
from engine.config import load_config
from engine.rpc.convert import request_to_proto
from engine.rpc.reload import ReloadWatcher
from engine.rpc.server import build_server
from engine.scoring.jsonio import request_from_json

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "scoring"
INTERVAL_S = 0.05


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(INTERVAL_S)
    return condition()


def rewrite(path: Path, change: Callable[[str], str]) -> None:
    """Rewrite a file with a later mtime (coarse-mtime filesystems would otherwise hide it)."""
    before = path.stat().st_mtime_ns
    path.write_text(change(path.read_text()))
    while path.stat().st_mtime_ns == before:
        time.sleep(0.01)
        path.touch()


@pytest.fixture
def served(
    model_dir: Path, tmp_path: Path
) -> Iterator[tuple[App, Path, Path, pb_grpc.AdMatchingStub]]:
    watched = tmp_path / "model"
    shutil.copytree(model_dir, watched)
    config_file = tmp_path / "admatch.toml"
    default = resources.files("engine").joinpath("default_config.toml").read_text()
    config_file.write_text(default.replace('url = ""', 'url = "memory://"', 1))
    config = load_config(config_file)
    assert config.store.url == "memory://"
    app = build_app(config, watched)
    serving = build_server(app, config.server.model_copy(update={"port": 0}))
    port = serving.port
    watcher = ReloadWatcher(
        lambda: (app.model_dir, config_file),
        lambda: app.reload(config_path=config_file),
        INTERVAL_S,
    ).start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield app, watched, config_file, pb_grpc.AdMatchingStub(channel)
    watcher.stop()
    serving.stop(1)
    app.close()


def test_model_and_config_swap_under_load_without_a_failed_request(
    served: tuple[App, Path, Path, pb_grpc.AdMatchingStub],
) -> None:
    app, watched, config_file, stub = served
    doc = json.loads((GOLDEN / "exemplary" / "ott_preroll_pod.json").read_text())["request"]
    request = request_to_proto(request_from_json(doc))
    versions: set[str] = set()
    errors: list[grpc.RpcError] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                versions.add(stub.Score(request, timeout=10).model_version)
            except grpc.RpcError as exc:
                errors.append(exc)

    clients = [threading.Thread(target=load) for _ in range(4)]
    for t in clients:
        t.start()
    try:
        old = app.scorer.model.version
        assert wait_for(lambda: old in versions)
        rewrite(
            watched / "metadata.json",
            lambda text: text.replace(f'"model_version": "{old}"', '"model_version": "next-1"'),
        )
        assert wait_for(lambda: "next-1" in versions)

        rewrite(watched / "metadata.json", lambda text: text.replace('"format_version"', '"x"'))
        time.sleep(10 * INTERVAL_S)  # several polls see the broken model and refuse it
        assert app.scorer.model.version == "next-1"

        rewrite(config_file, lambda text: "bogus_key = 1\n" + text)  # a broken config
        time.sleep(10 * INTERVAL_S)
        assert app.scorer.config.version == "default-1"

        # A reload is all-or-nothing: fixing both swaps in the new model and the new config.
        rewrite(watched / "metadata.json", lambda text: text.replace('"x"', '"format_version"'))
        rewrite(
            config_file,
            lambda text: text.replace("bogus_key = 1\n", "").replace('"default-1"', '"tuned-2"'),
        )
        assert wait_for(lambda: app.scorer.config.version == "tuned-2")
        assert app.scorer.model.version == "next-1"
    finally:
        stop.set()
        for t in clients:
            t.join()
    assert not errors, [e.code() for e in errors[:3]]
    assert {old, "next-1"} <= versions
