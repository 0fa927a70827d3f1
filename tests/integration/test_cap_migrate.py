"""``admatch store-migrate``: a store an earlier key layout (6, 7) wrote, carried to this one,
holds byte for byte what this layout writes for the same impressions, blocks and markers."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster

from engine.caps import eventlog
from engine.caps.connect import check_layout
from engine.caps.embedded import EmbeddedRedis
from engine.caps.keys import FP_BYTES, KEY_VERSION, KeySpace, family_code
from engine.caps.migrate import cut, layout6_records, migrate
from engine.caps.plan import ANY
from engine.caps.redis_store import RedisCapStore
from engine.caps.store import Feedback, Impression
from engine.errors import NotReady

from .served import config_file
from .test_cap_store_contract import BLOCKS, COMPETING, GAPS, RULES, imp

ROOT = Path(__file__).resolve().parents[2]


def _digest(value: str) -> bytes:
    return hashlib.blake2b(value.encode(), digest_size=8).digest()


def _history() -> tuple[list[Impression], list[Feedback]]:
    """Three weeks of two users' impressions (the older days folded into day counts), a late
    one and a hidden ad."""
    events = [
        imp(
            k,
            float(m),
            user_id=f"u{k % 2}",
            device_id=f"tv{k % 3}",
            campaign_id=f"c{k % 5}",
            creative_id=f"cr{k % 9}",
            advertiser_id=f"v{k % 4}",
            category=("food", "auto", "travel")[k % 3],
        )
        for k, m in enumerate(np.linspace(0, 21 * 1440, 400))
    ]
    events.append(imp("late", 3 * 1440))
    hide = Feedback(
        impression_id=events[-2].impression_id,
        ts=events[-2].ts,
        kind="hide",
        user_id="u1",
        household_id="h1",
        campaign_id="c3",
        advertiser_id="v3",
    )
    return events, [hide]


def _ids(store: RedisCapStore, events: list[Impression]) -> dict[bytes, bytes]:
    """Every id the store's dictionary and markers may hold: this layout's fingerprint to the
    8-byte digest an earlier layout kept."""
    names = {ANY, *(family_code(k.family) for k in store.kept)}
    for e in events:
        names.add(e.impression_id)
        names |= {v for v in (*e.ids().values(), e.touchpoint, e.slot) if v is not None}
        names |= {COMPETING.get(e.category or "", e.category or "")}
    return {_digest(n)[:FP_BYTES]: _digest(n) for n in names if n}


def _widen(data: bytes, ids: dict[bytes, bytes]) -> bytes:
    entries = [data[i : i + FP_BYTES] for i in range(0, len(data), FP_BYTES)]
    return b"".join(ids[e] for e in entries)


def _layout6_days(data: bytes) -> bytes:
    """Day counts in layout 6's bytes (``migrate.layout6_records`` reads them): the same
    groups, per target a run of its code, lifetime, days, then a gap and a count a day, from
    the oldest day (the base)."""
    log = eventlog.Log(eventlog.Parts(days=data))
    groups = {}
    for (fam, scope), where in log.day_groups.items():
        target, day, count = log.day_records(where)
        groups[(fam, scope)] = (target, day, count)
    dated = [d[d != eventlog.LIFETIME] for _, d, _ in groups.values()]
    base = int(min(int(d.min()) for d in dated if len(d)))
    head, body = [], b""
    for (fam, scope), (target, day, count) in sorted(groups.items()):
        numbers: list[int] = []
        for t in sorted(set(target.tolist())):
            mine = target == t
            life = int(count[mine & (day == eventlog.LIFETIME)].sum())
            days = sorted(zip(day[mine].tolist(), count[mine].tolist(), strict=True))
            days = [(d, c) for d, c in days if d != eventlog.LIFETIME]
            numbers += [t, life, len(days)]
            previous = base
            for d, c in days:
                numbers += [d - previous, c]
                previous = d
        runs = eventlog._varints(np.asarray(numbers, dtype=np.int64))
        head.append((fam, scope, len(body), len(runs)))
        body += runs
    return (
        len(head).to_bytes(4, "little")
        + base.to_bytes(4, "little", signed=True)
        + np.asarray(head, dtype=eventlog.GROUP).tobytes()
        + body
    )


def _keys(client: Any, prefix: str) -> Iterator[str]:
    for key in client.scan_iter(match=f"{prefix}*", count=10_000):
        yield key.decode()


def _write_old(client: Any, new: KeySpace, old_root: str, version: int, ids: Any) -> int:
    """Copy the store under ``new`` to ``old_root`` as layout ``version`` wrote it."""
    count = 0
    for name in _keys(client, f"{new.prefix}:"):
        rest = name[len(new.prefix) + 1 :]
        kind = rest[rest.index("}:") + 2 :]
        old = f"{old_root}:v{version}:{rest}"
        ttl = client.pttl(name)
        if client.type(name) == b"hash":
            client.hset(old, mapping=client.hgetall(name))
            if ttl > 0:
                client.pexpire(old, ttl)
        else:
            value = client.get(name)
            if kind == "n" or kind.startswith("i:"):
                value = _widen(value, ids)
            elif kind == "s" and version == 6:
                value = _layout6_days(value)
            client.set(old, value, px=ttl if ttl > 0 else None)
        count += 1
    client.set(f"{old_root}:layout", version)
    return count


@pytest.fixture(params=["embedded", "local", "cluster"])
def client(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A raw client of each Redis backend; the test's keys deleted after."""
    server = None
    if request.param == "embedded":
        server = EmbeddedRedis().start()
        raw: Any = server.client()
    elif request.param == "local":
        raw = redis.Redis.from_url(request.getfixturevalue("local_redis_url"))
    else:
        raw = RedisCluster.from_url(request.getfixturevalue("redis_cluster"))
    try:
        yield raw
    finally:
        for key in raw.scan_iter(match=f"{RUN}*", count=10_000):
            raw.delete(key)
        if server is not None:
            server.stop()


RUN = f"mig{uuid.uuid4().hex[:6]}-"  # this run's prefixes (the local server is shared)


@pytest.mark.parametrize("version", [6, 7])
def test_a_store_of_an_earlier_layout_is_carried_byte_for_byte(version: int, client: Any) -> None:
    """On every Redis backend (a cluster too: the keys of a household move within their
    slot, and the scan covers every node)."""
    was = f"{RUN}was{version}"
    new = KeySpace(f"{RUN}now{version}")
    store = RedisCapStore(client, RULES, GAPS, BLOCKS, new, competing=COMPETING)
    check_layout(client, new)
    events, feedback = _history()
    assert store.record(events) == len(events)
    store.block(feedback)
    ids = _ids(store, events)
    written = _write_old(client, new, was, version, ids)
    assert any(k.endswith(":s") for k in _keys(client, f"{was}:v{version}:"))
    with pytest.raises(NotReady, match=f"v{version}.*store-migrate"):
        check_layout(client, KeySpace(was))
    done = migrate(client, KeySpace(was))
    assert (done.found, done.renamed + done.rewritten) == (version, written)
    assert not list(_keys(client, f"{was}:v{version}:"))  # nothing left behind
    check_layout(client, KeySpace(was))  # the new layout opens it
    mine = sorted(n[len(was) :] for n in _keys(client, f"{was}:v"))
    theirs = sorted(n[len(new.root) :] for n in _keys(client, f"{new.root}:v"))
    assert mine == theirs
    for rest in mine:
        a, b = f"{was}{rest}", f"{new.root}{rest}"
        if client.type(a) == b"hash":
            assert client.hgetall(a) == client.hgetall(b), rest
        else:
            assert client.get(a) == client.get(b), rest
        assert abs(client.pttl(a) - client.pttl(b)) < 60_000, rest
    assert migrate(client, KeySpace(was)).found == KEY_VERSION  # done: a no-op


def test_a_layout_it_cannot_carry_and_damaged_values_are_refused() -> None:
    server = EmbeddedRedis().start()
    try:
        client = server.client()
        client.set("old5:layout", 5)
        with pytest.raises(NotReady, match="v5 under prefix 'old5'.*v6, v7 to v8"):
            migrate(client, KeySpace("old5"))
    finally:
        server.stop()
    with pytest.raises(ValueError, match="key n: 12 bytes, not whole 8-byte digests"):
        cut(b"x" * 12, "key n")
    for body, size, message in [
        (b"", 5, "past the body"),  # a group longer than the body
        (bytes([1, 0, 3, 1, 1]), 5, "a run of group 1/0 past its end"),  # 3 days, 1 given
        (bytes([1, 0, 1, 1, 0x81]), 5, "a number runs past"),  # its last byte says more
    ]:
        head = np.asarray([(1, 0, 0, size)], dtype=eventlog.GROUP).tobytes()
        with pytest.raises(ValueError, match=message):
            layout6_records((1).to_bytes(4, "little") + bytes(4) + head + body)


def test_store_migrate_carries_an_embedded_state_dir(tmp_path: Path) -> None:
    """The command on the shipped config's embedded store: it starts the server on the state
    directory, carries it, says what it did, and a second run has nothing to do."""
    config = config_file(tmp_path)
    state = tmp_path / "state"
    server = EmbeddedRedis(state_dir=state).start()
    try:
        client = server.client()
        new = KeySpace("admatch-new")
        store = RedisCapStore(client, RULES, GAPS, BLOCKS, new, competing=COMPETING)
        events, feedback = _history()
        store.record(events)
        store.block(feedback)
        _write_old(client, new, "admatch", 6, _ids(store, events))
    finally:
        server.stop()
    run = [sys.executable, "-m", "engine.cli", "store-migrate", "--config", str(config)]
    first = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, check=False)
    assert first.returncode == 0, first.stderr
    assert "from key layout v6 to v8" in first.stdout
    second = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, check=False)
    assert "nothing to do" in second.stdout
    server = EmbeddedRedis(state_dir=state).start()
    try:
        client = server.client()
        assert client.get("admatch:layout") == str(KEY_VERSION).encode()
        moved = sorted(n.removeprefix("admatch") for n in _keys(client, "admatch:v"))
        kept = sorted(n.removeprefix("admatch-new") for n in _keys(client, "admatch-new:v"))
        assert moved == kept
    finally:
        server.stop()


class _Ghosts:
    """A client whose scans also find keys that expired since (they name nothing now)."""

    def __init__(self, client: Any, ghosts: list[str]) -> None:
        self.client, self.ghosts = client, ghosts

    def scan_iter(self, **kw: Any) -> Iterator[Any]:
        yield from (g.encode() for g in self.ghosts)
        yield from self.client.scan_iter(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_keys_that_expire_during_a_migration_are_passed_over() -> None:
    server = EmbeddedRedis().start()
    try:
        client = server.client()
        client.set("gone:layout", 6)
        client.set("gone:v6:{h=h1}:g", 3)
        ghosts = ["gone:v6:{h=h2}:e", "gone:v6:{h=h2}:n", "gone:v6:{h=h2}:b:u:u1:cmp"]
        done = migrate(_Ghosts(client, ghosts), KeySpace("gone"))
        assert (done.renamed, done.rewritten) == (1, 0)
        assert client.get(f"gone:v{KEY_VERSION}:{{h=h1}}:g") == b"3"
        assert client.get("gone:layout") == str(KEY_VERSION).encode()
    finally:
        server.stop()


def test_store_migrate_says_what_failed_and_exits_nonzero(tmp_path: Path) -> None:
    config = config_file(tmp_path, **{'url = ""': 'url = "redis://127.0.0.1:1/0"'})
    run = [sys.executable, "-m", "engine.cli", "store-migrate", "--config", str(config)]
    done = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode != 0 and "store-migrate:" in done.stderr and "again" in done.stderr
    assert "Traceback" not in done.stderr
