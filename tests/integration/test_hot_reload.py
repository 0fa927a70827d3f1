"""Hot reload: a new model or config in place is picked up under load; a broken one is refused."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
import pytest

from admatch.v1 import admatch_pb2_grpc as pb_grpc
from engine.app import App, build_app
from engine.caps.store import Feedback, Impression
from engine.config import load_config
from engine.rpc.convert import request_to_proto
from engine.rpc.reload import ReloadWatcher
from engine.rpc.server import build_server
from engine.scoring.jsonio import request_from_json
from features.online import RequestContext

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


ADDED_CAPS = """
[[caps.rules]]
scope = "user"
target = "category"
touchpoint = "ott"
window = "1h"
limit = 1

[[caps.blocks]]
on = ["skip"]
target = "category"
duration = "1d"
"""


@pytest.mark.parametrize("url", ["memory://", ""])
def test_a_config_reload_changes_what_the_cap_store_counts_and_blocks(
    model_dir: Path, tmp_path: Path, url: str
) -> None:
    """Cap rules reload with the config, writes included: a rule the reload adds counts the
    impressions recorded after it, and a block rule it adds acts on the next feedback. Before,
    only the reads followed a reload (the gate's plans) while the store kept writing by the
    rules it was opened with: the new filtered rule's family was never written (it counted 0
    and never bound) and the new block rule set nothing."""
    default = resources.files("engine").joinpath("default_config.toml").read_text()
    base = default.replace('url = ""', f'url = "{url}"', 1)
    base = base.replace('state_dir = "data/state"', 'state_dir = ""', 1)
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text(base)
    second.write_text(base.replace("[store]", ADDED_CAPS + "\n[store]", 1))
    app = build_app(load_config(first), model_dir)
    try:
        app.commit(app.stage(config_path=second))
        t0 = datetime(2026, 3, 3, 20, tzinfo=UTC)
        ids = {"household_id": "h1", "device_id": "tv1", "campaign_id": "c1"}
        shown = Impression("i1", t0, "u1", "ott", "ott_pause", "ad1", **ids, category="food")
        app.record([shown], [])
        skip = Feedback("i2", t0, "skip", "u1", "h1", "c2", "v2", category="toys")
        app.record([], [skip])
        later = t0 + timedelta(minutes=20)
        ctx = RequestContext("r", later, "u1", "ott", "ott_pause", household_id="h1")
        cands: dict[str, list[Any]] = {
            "ad_id": ["a1", "a2", "a3"],
            "campaign_id": ["c7", "c8", "c9"],
            "advertiser_id": ["v7", "v8", "v9"],
            "category": ["food", "toys", "books"],
            "format": ["image"] * 3,
            "bid": [1.0] * 3,
            "pricing": ["cpm"] * 3,
        }
        # food: the added rule (1 an hour on OTT) is spent; toys: blocked by the added rule
        assert app.gate.read(ctx, cands).capped.tolist() == [True, True, False]
    finally:
        app.close()


def test_a_reload_keeps_the_store_settings_the_store_was_opened_with(
    model_dir: Path, tmp_path: Path
) -> None:
    """A reload does not reopen the store, so the gates keep planning by the retention it was
    opened with (the embedded Redis keeps times for that retention). Before, a reloaded
    ``store.retention = "14d"`` made the gate read a 10-day rule as an exact window over the
    times a 7-day store keeps (of the two older impressions it keeps only the latest, for
    the recency): the rule saw two exposures of three and the campaign was not capped."""
    default = resources.files("engine").joinpath("default_config.toml").read_text()
    base = default.replace('state_dir = "data/state"', 'state_dir = ""', 1)  # embedded, empty
    rule = '[[caps.rules]]\nscope = "user"\ntarget = "campaign"\nwindow = "10d"\nlimit = 3\n'
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text(base.replace("[store]", rule + "\n[store]", 1))
    second.write_text(
        first.read_text().replace('retention = "7d"', 'retention = "14d"', 1)
        if 'retention = "7d"' in first.read_text()
        else first.read_text().replace("[store]", '[store]\nretention = "14d"', 1)
    )
    assert load_config(second).store.retention == "14d"
    app = build_app(load_config(first), model_dir)
    try:
        app.commit(app.stage(config_path=second))
        t0 = datetime(2026, 3, 3, 20, tzinfo=UTC)
        ids = {"household_id": "h1", "device_id": "tv1", "campaign_id": "c1"}
        app.record(
            [
                Impression("i1", t0 - timedelta(days=9), "u1", "ott", "ott_pause", "ad1", **ids),
                Impression("i2", t0 - timedelta(days=8), "u1", "ott", "ott_pause", "ad1", **ids),
                Impression("i3", t0 - timedelta(hours=1), "u1", "ott", "ott_pause", "ad1", **ids),
            ],
            [],
        )
        ctx = RequestContext("r", t0, "u1", "ott", "ott_pause", household_id="h1")
        cands: dict[str, list[Any]] = {
            "ad_id": ["a1"],
            "campaign_id": ["c1"],
            "format": ["image"],
            "bid": [1.0],
            "pricing": ["cpm"],
        }
        assert app.gate.read(ctx, cands).capped.tolist() == [True]
    finally:
        app.close()
