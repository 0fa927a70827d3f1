"""Cap store speed, memory and write volume, on the embedded Redis (unix socket) or a Redis URL.

    .venv/bin/python -m benchmarks.bench_caps                       # embedded Redis
    .venv/bin/python -m benchmarks.bench_caps --url redis://127.0.0.1:6379/0
    .venv/bin/python -m benchmarks.bench_caps --days 30 --rows 600000 --rows-per-household 6000 \
        --campaigns 60 --ads 240 --single-user-households          # wide traffic, 30 days

Records one day of synthetic traffic (every impression of a generated one-day log, in batches of
500; ``--days``, ``--rows`` and ``--rows-per-household`` record a longer history, e.g. 30 days
of ~40 impressions a household a day: ``--days 30 --rows 900000 --rows-per-household 6000``),
``--campaigns``/``--ads`` set the breadth of the ad catalogue (20 advertisers), then prints:
events recorded per second; Redis memory per active user; AOF bytes per impression (the
embedded server runs with an append-only file, as ``admatch serve``'s does; a URL's only when
its server has ``appendonly yes``); one *hot user* (``--hot``, default 3,000 impressions over
6 days, in calls of 10 events): the time of a call and the AOF bytes per impression with 10,
1,000 and 3,000 impressions of history (flat: writes do not grow with history); and for requests of
100 and 500 candidates (each candidate its own campaign: the worst case for key count) the
latency of one read (exposure counts + cap decision) and of one atomic check-and-record (and
of a pod's three: one call each, as reservations were made before, and in one call, one
round trip), with the number of scripts Redis ran per call and the microseconds it spent per
script, both taken from Redis' own command statistics, and the Python part of a read alone
(no I/O). Reads happen at
their requests' own times, inside the recorded day (later impressions are already stored: the
store must search for "before t"); the "live" row reads the same requests just after the day,
as a server does. ``--breakdown`` adds where the memory goes, per active user, by key kind
(the event logs, dictionaries, tuples, summaries, blocks, markers: keys, bytes and Redis'
``MEMORY USAGE`` of the keys), and what the recording wrote to the AOF per command and key kind.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import hiredis
import numpy as np
import polars as pl
from redis.cluster import RedisCluster

from engine.caps import evaluate
from engine.caps.connect import open_store
from engine.caps.embedded import EmbeddedRedis
from engine.caps.gate import CapGate
from engine.caps.redis_store import RedisCapStore, reading
from engine.caps.rules import parse_duration
from engine.caps.store import Impression
from engine.config import load_config
from engine.synth.generator import generate
from engine.synth.params import WorldParams
from features.online import RequestContext
from features.schema import CANDIDATE_COLUMNS

from .cluster import local_cluster
from .machine import describe


def impressions(log: pl.DataFrame) -> list[Impression]:
    shown = log.filter("shown")
    return [Impression.from_row(f"i{k}", r) for k, r in enumerate(shown.iter_rows(named=True))]


def requests(log: pl.DataFrame, n: int, count: int) -> list[tuple[RequestContext, dict]]:
    rng = np.random.default_rng(n)
    heads = log.unique("request_id", keep="first").sample(count, seed=n)
    out = []
    for row in heads.iter_rows(named=True):
        rows = log[rng.integers(0, len(log), n)]
        cands = {c: rows[c].to_list() for c in CANDIDATE_COLUMNS}
        cands["ad_id"] = [f"{a}#{i}" for i, a in enumerate(cands["ad_id"])]
        cands["campaign_id"] = [f"{c}#{i}" for i, c in enumerate(cands["campaign_id"])]
        out.append((RequestContext.from_row(row), cands))
    return out


def read_calls(
    store: RedisCapStore, reqs: list[tuple[RequestContext, dict]]
) -> list[tuple[list[str], list]]:
    """Each request's READ keys and arguments: a snapshot of its household (and its user's
    blocks), the same at any time."""
    return [store._read_call(store._who(c.household_id, c.user_id)) for c, _ in reqs]


def reserving(
    gate: CapGate,
    reqs: list[tuple[RequestContext, dict]],
    prefix: str,
    ads: int = 1,
    together: bool = True,
    read_first: bool = True,
) -> Callable[[int], object]:
    """A call that reserves (check-and-record) request i's first ``ads`` candidates as
    impressions ``prefix-i-k``: in one call (a pod's reservation), or one call each; after
    the request's read (a server's order: the reservation is checked on its snapshot), or
    with no snapshot of the household at hand."""

    def reserve(i: int) -> object:
        context, cands = reqs[i % len(reqs)]
        if read_first:
            gate.read(context, cands)
        elif isinstance(gate.store, RedisCapStore):
            gate.store._recent.clear()
        ones = [{c: v[k : k + 1] for c, v in cands.items()} for k in range(ads)]
        events = [
            Impression(
                f"{prefix}-{i}-{k}",
                context.ts,
                context.user_id,
                context.touchpoint,
                context.slot,
                f"ad-x{k}",
                household_id=context.household_id,  # the request's hash tag: one cluster slot
                device_id=context.device_id,
            )
            for k in range(ads)
        ]
        if together:
            return gate.reserve(context, ones, events)
        return [gate.reserve(context, [one], [e]) for one, e in zip(ones, events, strict=True)]

    return reserve


def timed(fn: Callable[[int], object], repeat: int) -> np.ndarray:
    out = np.empty(repeat)
    for i in range(repeat):
        start = time.perf_counter()
        fn(i)
        out[i] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="", help="store URL; empty: embedded Redis")
    parser.add_argument("--rows", type=int, default=300_000, help="rows of the log")
    parser.add_argument("--days", type=int, default=1, help="days of traffic the log spans")
    parser.add_argument(
        "--rows-per-household",
        type=int,
        default=2_000,
        help="log rows per household over all days (sets the population; rows / this)",
    )
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--campaigns", type=int, default=0, help="campaigns (0: the world's)")
    parser.add_argument("--ads", type=int, default=0, help="ads and creatives (0: the world's)")
    parser.add_argument(
        "--single-user-households", action="store_true", help="every household has one user"
    )
    parser.add_argument("--hot", type=int, default=3_000, help="the hot user's impressions")
    parser.add_argument("--skip-reads", action="store_true", help="memory and writes only")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="after recording: memory and bytes per active user by key kind and counter family",
    )
    parser.add_argument(
        "--candidates", default="100,500", help="candidates per timed read (comma-separated)"
    )
    parser.add_argument(
        "--cluster", action="store_true", help="on a three-node Redis Cluster started here"
    )
    args = parser.parse_args()
    if args.cluster:
        with (
            tempfile.TemporaryDirectory(prefix="bench-caps-cluster-") as work,
            local_cluster(Path(work)) as url,
        ):
            run(args, url, cluster=True)
    else:
        run(args, args.url, cluster=False)


def run(args: argparse.Namespace, url: str, cluster: bool) -> None:
    """Record the traffic, then measure (see the module doc)."""
    embedded = None
    if not url:  # the embedded server as admatch serve runs it: with an append-only file
        embedded = EmbeddedRedis(state_dir=Path(tempfile.mkdtemp(prefix="bench-caps-"))).start()
        url = f"unix://{embedded.socket}"
    base = load_config()
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    changes = {"url": url, "prefix": prefix, "deadline_ms": 2000}
    store_cfg = base.store.model_copy(update={**changes, "cluster": cluster})
    config = base.model_copy(update={"store": store_cfg})
    store = open_store(config).store  # the store itself, without its circuit breaker
    assert isinstance(store, RedisCapStore)
    aof = _aof_size(store) is not None
    if aof:  # no rewrite in the middle of a measurement
        store.client.config_set("auto-aof-rewrite-percentage", 0)
    gate = CapGate(store, config.caps, parse_duration(config.store.retention), fail_open=False)
    log = generate(_world(args)).log
    events = impressions(log)
    users = log.filter("shown")["user_id"].n_unique()
    households = max(log.filter("shown")["household_id"].n_unique(), 1)
    before = _used_memory(store)
    aof_before = _aof_size(store)
    stats_before = _script_stats(store)
    arrival = [0.0]  # impressions arrive when they happen (the idempotency markers' days)
    if hasattr(store, "clock"):
        store.clock = lambda: arrival[0]
    start = time.perf_counter()
    for k in range(0, len(events), 500):
        arrival[0] = events[min(k + 499, len(events) - 1)].ts.timestamp()
        gate.record(events[k : k + 500])
    seconds = time.perf_counter() - start
    calls, usec = np.subtract(_script_stats(store), stats_before)
    aof_after = _aof_size(store)
    expired = _expire_markers(store, events, getattr(config.store, "dedup_horizon", "8d"))
    after = _used_memory(store)
    print(describe())
    where = "a three-node cluster on loopback" if cluster else url
    print(f"store: {'embedded (unix socket, AOF)' if embedded else where}")
    print(
        f"recorded {len(events):,} impressions of {users:,} active users "
        f"({args.days} day{'s' if args.days > 1 else ''}, "
        f"{len(events) / households / args.days:.0f} a household a day, "
        f"{log['campaign_id'].n_unique()} campaigns, {log['ad_id'].n_unique()} ads, "
        f"{log['creative_id'].n_unique()} creatives) in {seconds:.1f} s: "
        f"{len(events) / seconds:,.0f} events/s (batches of 500, one round trip each); "
        f"Redis {usec / max(calls, 1):.0f} us per event"
    )
    print(
        f"memory: {(after - before) / users / 1024:.1f} KiB per active user "
        f"({(after - before) / len(events):.0f} bytes per impression, all families; "
        f"{expired:,} idempotency marker keys past their horizon deleted, as Redis would "
        "have expired them in live time)"
    )
    if aof_before is not None and aof_after is not None:
        print(f"AOF: {(aof_after - aof_before) / len(events):,.0f} bytes per impression")
    if args.breakdown:
        breakdown(store, prefix, users)
        if embedded is not None and aof_before is not None and aof_after is not None:
            aof_breakdown(_aof_path(embedded), aof_before, aof_after, len(events))
    if args.hot:
        _hot_user(gate, store, log, args.hot)
    if args.skip_reads:
        _clean(store, prefix, embedded)
        return
    print("| call | candidates | p50 ms | p99 ms | scripts per call | Redis us per script |")
    print("|---|---|---|---|---|---|")
    sizes = [int(n) for n in args.candidates.split(",")]
    for n in sizes:
        for label, fn in _calls(store, gate, requests(log, n, 50), n):
            stats_before = _script_stats(store)
            t = timed(fn, args.repeat) * 1e3
            calls, usec = np.subtract(_script_stats(store), stats_before)
            reserving_ = "check-and-record" in label
            if reserving_ and n != sizes[0]:
                continue  # the same candidates either way
            shown_n = (3 if "3 ads" in label else 1) if reserving_ else n
            redis_us = f"{usec / calls:.0f}" if calls else "-"
            print(
                f"| {label} | {shown_n} | {np.percentile(t, 50):.3f} | "
                f"{np.percentile(t, 99):.3f} | {calls / args.repeat:.2f} | {redis_us} |"
            )
    _clean(store, prefix, embedded)


def _aof_path(embedded: EmbeddedRedis) -> Path:
    return (embedded.state_dir or embedded.directory) / "appendonly.aof"


def _commands(data: bytes) -> Iterator[list[bytes]]:
    """The commands of an append-only file's bytes (RESP arrays), parsed by hiredis."""
    reader = hiredis.Reader()
    reader.feed(data)
    while (command := reader.gets()) is not False:
        yield command


def aof_breakdown(path: Path, start: int, end: int, impressions: int) -> None:
    """What the recording wrote to the append-only file (bytes ``start`` to ``end``), per
    impression: per command and key kind (``e`` the logs, ``n`` dictionaries, ``t`` tuples,
    ``s`` and ``r`` summaries, ``g`` generations, ``i`` markers, ``b`` blocks) its count and
    bytes (framing included)."""
    time.sleep(1.5)  # appendfsync everysec: the last second reaches the file
    with path.open("rb") as f:
        f.seek(start)
        data = f.read(end - start)
    count: dict[str, float] = defaultdict(float)
    size: dict[str, float] = defaultdict(float)
    for args in _commands(data):
        name = args[0].decode().upper()
        if len(args) > 1 and b"}:" in args[1]:
            name += " " + args[1].split(b"}:")[1].split(b":")[0].decode()
        count[name] += 1
        framing = len(f"*{len(args)}\r\n") + sum(len(f"${len(a)}\r\n") + 2 for a in args)
        size[name] += framing + sum(map(len, args))
    n = max(impressions, 1)
    print(f"AOF per impression: {(end - start) / n:,.0f} bytes")
    print("| command and key kind | per impression | bytes per impression |")
    print("|---|---|---|")
    for name in sorted(size, key=lambda c: -size[c]):
        print(f"| {name} | {count[name] / n:.3f} | {size[name] / n:,.0f} |")


def breakdown(store: RedisCapStore, prefix: str, users: int) -> None:
    """Where the memory goes, per active user: per key kind (``e`` event logs, ``n``
    dictionaries, ``t`` tuples, ``s`` day counts, ``r`` latest times, ``g`` generations, ``b``
    blocks, ``i`` idempotency markers) its keys, the bytes of its values (and a hash's fields)
    and what Redis reports for its keys (``MEMORY USAGE``: values plus Redis' own
    structures)."""
    rows: dict[str, dict[str, float]] = {}
    for key in store.client.scan_iter(match=f"{prefix}:*", count=10_000):
        parts = key.decode().split("}:")
        kind = parts[1].split(":")[0] if len(parts) > 1 else "layout"
        row = rows.setdefault(kind, dict.fromkeys(BREAKDOWN, 0.0))
        row["keys"] += 1
        row["memory"] += store.client.memory_usage(key, samples=0) or 0
        if store.client.type(key) == b"hash":
            fields = store.client.hgetall(key)
            row["bytes"] += sum(len(f) + len(v) for f, v in fields.items())
        else:
            row["bytes"] += store.client.strlen(key)
    total = dict.fromkeys(BREAKDOWN, 0.0)
    print("| key kind | " + " | ".join(BREAKDOWN) + " |")
    print("|---|" + "---|" * len(BREAKDOWN))
    for name, row in sorted(rows.items(), key=lambda kv: -kv[1]["memory"]):
        print(f"| {name} | " + " | ".join(f"{row[c] / users:,.0f}" for c in BREAKDOWN) + " |")
        total = {c: total[c] + row[c] for c in BREAKDOWN}
    print("| all | " + " | ".join(f"{total[c] / users:,.0f}" for c in BREAKDOWN) + " |")
    print(
        f"(per active user: keys, bytes; Redis' own structures: "
        f"{(total['memory'] - total['bytes']) / users:,.0f} bytes)"
    )


BREAKDOWN = ("keys", "bytes", "memory")


def _clean(store: RedisCapStore, prefix: str, embedded: EmbeddedRedis | None) -> None:
    """Delete the run's keys; stop the embedded server and remove its state (its append-only
    file: ~500 MB after the wide traffic)."""
    for key in store.client.scan_iter(match=f"{prefix}:*", count=10_000):
        store.client.delete(key)
    store.close()
    if embedded is not None:
        embedded.stop()
        if embedded.state_dir is not None:
            shutil.rmtree(embedded.state_dir, ignore_errors=True)


def _world(args: argparse.Namespace) -> WorldParams:
    """The traffic: the synthetic world, with the breadth and households asked for."""
    extra: dict[str, object] = {}
    if args.campaigns:
        per = max(args.campaigns // 20, 1)
        extra["campaigns_per_advertiser"] = (per, per)
    if args.ads:
        per = max(args.ads // max(args.campaigns or 40, 1), 1)
        extra["ads_per_campaign"] = (per, per)
        extra["shared_creative_share"] = 0.0  # one creative per ad
    if args.single_user_households:
        extra["household_sizes"] = [1.0]
    return WorldParams(
        rows=args.rows,
        seed=4,
        days=args.days,
        rows_per_household=args.rows_per_household,
        **extra,
    )


def _expire_markers(store: RedisCapStore, events: list[Impression], horizon: str) -> int:
    """Delete the idempotency markers Redis would have expired by the last impression's time
    had the history arrived live (it arrived in seconds): markers by arrival day past the
    horizon and its day (layout v3), or per impression past 8 days (v2, one key each)."""
    last = max(e.ts for e in events)
    keys: list[str] = []
    if hasattr(store.keys, "markers"):
        newest = int(last.timestamp() // 86_400)
        oldest = newest - parse_duration(horizon) // 86_400 - 1
        for key in store.client.scan_iter(match=f"{store.keys.prefix}:*:i:*", count=10_000):
            if int(key.rsplit(b":", 1)[1]) < oldest:
                keys.append(key)
    else:  # v2: one marker key per impression, 8 days
        cut = last - timedelta(days=8)
        marker = getattr(store.keys, "impression")  # noqa: B009 (v2 only)
        keys = [
            marker(store.keys.tag(e.household_id, e.user_id), e.impression_id)
            for e in events
            if e.ts < cut
        ]
    for k in range(0, len(keys), 1_000):
        store.client.delete(*keys[k : k + 1_000])
    return len(keys)


def _infos(store: RedisCapStore, section: str) -> list[dict[str, Any]]:
    """An INFO section of the server, or of every primary of a cluster."""
    if isinstance(store.client, RedisCluster):
        out = store.client.info(section, target_nodes=RedisCluster.PRIMARIES)
        return list(out.values())
    return [store.client.info(section)]


def _used_memory(store: RedisCapStore) -> int:
    return sum(int(i["used_memory"]) for i in _infos(store, "memory"))


def _aof_size(store: RedisCapStore) -> int | None:
    """The server's append-only file size in bytes (None: it has none)."""
    infos = _infos(store, "persistence")
    if not all(int(i.get("aof_enabled", 0)) for i in infos):
        return None
    return sum(int(i["aof_current_size"]) for i in infos)


def _hot_user(gate: CapGate, store: RedisCapStore, log: pl.DataFrame, count: int) -> None:
    """One user with ``count`` impressions over 6 days, recorded in time order in calls of 10
    events: call time and AOF bytes per impression by history (flat: no growth with it)."""
    rng = np.random.default_rng(3)
    ads = log.unique("ad_id").sort("ad_id")
    picks = ads[rng.integers(0, len(ads), count)]
    start: datetime = log["ts"].max()  # type: ignore[assignment]
    offsets = np.sort(rng.uniform(0, 6 * 86_400, count))
    events = [
        dataclasses.replace(
            Impression.from_row(f"hot{k}", row),
            ts=start + timedelta(seconds=float(offsets[k])),
            user_id="hot-user",
            household_id="hot-household",
            device_id="hot-device",
        )
        for k, row in enumerate(picks.iter_rows(named=True))
    ]
    seconds, sizes = [], [_aof_size(store)]
    for k in range(0, count, 10):
        begin = time.perf_counter()
        gate.record(events[k : k + 10])
        seconds.append(time.perf_counter() - begin)
        sizes.append(_aof_size(store))
    ms = np.asarray(seconds) * 1e3
    calls = len(ms)
    parts = []
    for history in (10, 1_000, count):  # the calls with about this much history before them
        at = min(history // 10, calls - 1)
        lo, hi = max(at - 5, 0), min(at + 5, calls)
        if history <= count:
            parts.append(f"{history:,} of history: {np.median(ms[lo:hi]):.2f} ms")
    print(f"hot user ({count:,} impressions over 6 days, calls of 10 events): " + "; ".join(parts))
    if sizes[0] is not None:
        per_call = np.diff(np.asarray(sizes, dtype=np.float64)) / 10
        first, last = per_call[: calls // 3].mean(), per_call[-(calls // 3) :].mean()
        print(
            f"hot user AOF: {first:,.0f} bytes per impression over its first third, "
            f"{last:,.0f} over its last third"
        )


def _calls(
    store: RedisCapStore,
    gate: CapGate,
    reqs: list[tuple[RequestContext, dict]],
    n: int,
) -> list[tuple[str, Callable[[int], object]]]:
    """The timed calls: the read's round trip alone, the whole read, the read without I/O
    (plan, decoding, answers and decision on a reply fetched before), check-and-record."""
    wire = read_calls(store, reqs)
    replies = [store._eval(store._read, k, a) for k, a in wire]

    def python_only(i: int) -> object:  # what gate.read does, minus the round trip
        context, cands = reqs[i % len(reqs)]
        plan = gate.planner.plan(context, cands)
        who = store._who(plan.household_id, plan.user_id)
        snapshot = store._snapshot(who, replies[i % len(reqs)])
        return evaluate.refused(reading(plan, snapshot), *gate._thresholds)

    return [
        (
            "read: round trip only (EVALSHA)",
            lambda i: store._eval(store._read, *wire[i % len(wire)]),
        ),
        ("read: plan + round trip + decode", lambda i: gate.read(*reqs[i % len(reqs)])),
        ("read: Python only (plan, decode, answers, decision)", python_only),
        ("read, then check-and-record", reserving(gate, reqs, f"x{n}")),
        ("check-and-record without a snapshot", reserving(gate, reqs, f"y{n}", read_first=False)),
        (
            "read, then check-and-record, 3 ads one call each",
            reserving(gate, reqs, f"s{n}", 3, False),
        ),
        (
            "read, then check-and-record, 3 ads in one call (a pod)",
            reserving(gate, reqs, f"p{n}", 3),
        ),
    ]


def _script_stats(store: RedisCapStore) -> tuple[int, int]:
    """Script calls and the microseconds Redis spent in them so far (command statistics)."""
    rows = [
        v
        for stats in _infos(store, "commandstats")
        for k, v in stats.items()
        if k in ("cmdstat_evalsha", "cmdstat_eval")
    ]
    return sum(int(v["calls"]) for v in rows), sum(int(v["usec"]) for v in rows)


if __name__ == "__main__":
    main()
