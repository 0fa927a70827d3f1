"""One contract, every cap store backend: in-memory, embedded Redis, local Redis, Redis Cluster.

Each test gets a fresh store under a key prefix of its own and removes its keys afterwards.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster

from engine.caps.embedded import EmbeddedRedis
from engine.caps.gate import CapGate, Reservation
from engine.caps.keys import KeySpace
from engine.caps.memory_store import MemoryCapStore
from engine.caps.plan import Plan
from engine.caps.redis_store import RedisCapStore
from engine.caps.rules import (
    BlockRule,
    CapRule,
    CapsConfig,
    FeedbackBlock,
    GapRule,
    SeparationRule,
)
from engine.caps.store import CapReading, CapStore, Feedback, Impression, StoreUnavailable
from engine.errors import AdmatchError, InvalidArgument
from engine.scoring.types import ScoreRequest
from features.exposure import EXPOSURE_SCHEMA
from features.online import RequestContext

T0 = datetime(2026, 3, 3, 20, 0, tzinfo=UTC)
EXP = {n: i for i, n in enumerate(EXPOSURE_SCHEMA.names())}
RULES = [
    CapRule(name="user campaign 1h", scope="user", target="campaign", window="1h", limit=2),
    CapRule(
        name="household advertiser day",
        scope="household",
        target="advertiser",
        window="24h",
        limit=2,
    ),
    CapRule(
        name="boot once a day",
        scope="household",
        target="any",
        slot="ott_boot",
        window="24h",
        limit=1,
    ),
    CapRule(name="creative lifetime", scope="user", target="creative", window="lifetime", limit=5),
    CapRule(name="category month", scope="user", target="category", window="30d", limit=4),
]
CAPS = CapsConfig(
    rules=RULES,
    min_gaps=[
        GapRule(
            name="ott campaign gap",
            scope="household",
            target="campaign",
            touchpoint="ott",
            min_gap="5m",
        )
    ],
    separation=[SeparationRule(name="preroll screen", slot="ott_preroll", min_gap="15m")],
    competing={"drinks": ["cola", "soda"]},
    feedback=FeedbackBlock(household=True),
    blocks=[
        BlockRule(on=["complaint"], target="category", duration="90d"),  # the user's only
        BlockRule(on=["conversion"], target="advertiser", household=True, duration="7d"),
    ],
)
GAPS = CAPS.gap_rules  # the ott campaign gap, then the separation's by advertiser and competitor
BLOCKS = CAPS.block_rules
COMPETING = CAPS.competitor_of

Factory = Callable[[], CapStore]


def _redis_factory(client: Any, prefix: str) -> Factory:
    return lambda: RedisCapStore(client, RULES, GAPS, BLOCKS, KeySpace(prefix), competing=COMPETING)


@pytest.fixture(params=["memory", "embedded", "local", "cluster"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, Factory, Any]]:
    """(name, factory of stores sharing one state, raw client or None)."""
    kind = request.param
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    if kind == "memory":
        shared = MemoryCapStore(RULES, GAPS, BLOCKS, COMPETING)
        yield kind, lambda: shared, None
        return
    server = None
    if kind == "embedded":
        server = EmbeddedRedis().start()
        client: Any = server.client()
    elif kind == "local":
        client = redis.Redis.from_url(request.getfixturevalue("local_redis_url"))
    else:
        client = RedisCluster.from_url(request.getfixturevalue("redis_cluster"))
    try:
        yield kind, _redis_factory(client, prefix), client
    finally:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        if server is not None:
            server.stop()


def gate(store: CapStore, caps: CapsConfig = CAPS) -> CapGate:
    return CapGate(store, caps, retention_s=7 * 86_400, fail_open=False)


def imp(i: int | str, minutes: float, **kw: Any) -> Impression:
    base: dict[str, Any] = dict(
        impression_id=f"imp-{i}",
        ts=T0 + timedelta(minutes=minutes),
        user_id="u1",
        household_id="h1",
        device_id="tv1",
        touchpoint="ott",
        slot="ott_pause",
        ad_id="ad1",
        creative_id="cr1",
        campaign_id="c1",
        advertiser_id="v1",
        category="food",
    )
    base.update(kw)
    return Impression(**base)


def ask(store: CapStore, minutes: float, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """(capped, exposures) for one candidate like ``imp``'s, at T0 + minutes, read by the
    caps ``kw["caps"]`` (default ``CAPS``); the other keywords replace the request's and the
    candidate's values."""
    caps = kw.pop("caps", CAPS)
    ctx: dict[str, Any] = dict(
        request_id="r",
        ts=T0 + timedelta(minutes=minutes),
        user_id="u1",
        household_id="h1",
        device_id="tv1",
        touchpoint="ott",
        slot="ott_pause",
    )
    cand: dict[str, list[Any]] = {
        "ad_id": ["ad1"],
        "creative_id": ["cr1"],
        "campaign_id": ["c1"],
        "advertiser_id": ["v1"],
        "category": ["food"],
        "format": ["image"],
        "bid": [1.0],
        "pricing": ["cpm"],
    }
    for k, v in kw.items():
        (ctx if k in ctx else cand)[k] = v if k in ctx else [v]
    reading = gate(store, caps).read(RequestContext(**ctx), cand)
    return reading.capped, reading.exposures


def test_window_edges(backend: tuple[str, Factory, Any]) -> None:
    store = backend[1]()
    store.record([imp(1, 0)])
    exactly_an_hour = ask(store, 60)[1][0]
    just_inside = ask(store, 60 - 1e-6 / 60)[1][0]
    assert exactly_an_hour[EXP["exp_user_campaign_1h"]] == 0
    assert just_inside[EXP["exp_user_campaign_1h"]] == 1
    assert ask(store, 0)[1][0][EXP["exp_user_any_24h"]] == 0  # never the same instant


def test_user_campaign_cap_and_recency(backend: tuple[str, Factory, Any]) -> None:
    store = backend[1]()
    store.record(
        [
            imp(1, 0, campaign_id="c1", advertiser_id="v9"),
            imp(2, 20, campaign_id="c1", advertiser_id="v8"),
        ]
    )
    capped, exposures = ask(store, 40, advertiser_id="v7")
    assert capped[0]
    assert exposures[0, EXP["exp_user_campaign_1h"]] == 2
    assert exposures[0, EXP["since_user_campaign_s"]] == pytest.approx(20 * 60)
    assert not ask(store, 81, advertiser_id="v7")[0][0]  # the first left the hour


def test_household_cap_across_devices_and_users(backend: tuple[str, Factory, Any]) -> None:
    store = backend[1]()
    store.record(
        [
            imp(
                1,
                0,
                user_id="mum",
                device_id="phone-mum",
                touchpoint="mobile",
                slot="mobile_feed",
                campaign_id="c1",
            ),
            imp(2, 30, user_id="kid", device_id="tv1", campaign_id="c2"),
        ]
    )
    capped, exposures = ask(
        store,
        60,
        user_id="dad",
        device_id="fridge",
        touchpoint="iot",
        slot="iot_idle_screen",
        campaign_id="c3",
    )
    assert exposures[0, EXP["exp_household_advertiser_24h"]] == 2
    assert exposures[0, EXP["exp_user_any_24h"]] == 0
    assert capped[0]


def test_slot_filtered_cap_counts_only_its_slot(backend: tuple[str, Factory, Any]) -> None:
    store = backend[1]()
    store.record([imp(1, 0, slot="ott_pause", campaign_id="c1", advertiser_id="v1")])
    assert not ask(store, 600, slot="ott_boot", campaign_id="c9", advertiser_id="v9")[0][0]
    store.record([imp(2, 10, slot="ott_boot", campaign_id="c2", advertiser_id="v2")])
    assert ask(store, 600, slot="ott_boot", campaign_id="c9", advertiser_id="v9")[0][0]
    assert not ask(store, 600, slot="ott_pause", campaign_id="c9", advertiser_id="v9")[0][0]


def test_lifetime_and_month_windows(backend: tuple[str, Factory, Any]) -> None:
    store = backend[1]()
    days = [-400, -200, -40, -20, -10]
    store.record(
        [
            imp(k, d * 1440, campaign_id=f"c{k}", advertiser_id=f"v{k}", category="toys")
            for k, d in enumerate(days)
        ]
    )
    capped, _ = ask(store, 0, campaign_id="cx", advertiser_id="vx", category="books")
    assert capped[0]  # creative cr1 seen 5 times over its lifetime
    capped, _ = ask(
        store, 0, creative_id="cr-new", campaign_id="cx", advertiser_id="vx", category="toys"
    )
    assert not capped[0]  # toys: 2 in the last 30 days, limit 4
    store.record(
        [
            imp(
                10 + k,
                -k * 1440,
                creative_id="cr9",
                campaign_id=f"d{k}",
                advertiser_id=f"w{k}",
                category="toys",
            )
            for k in range(1, 3)
        ]
    )
    capped, _ = ask(
        store, 0, creative_id="cr-new", campaign_id="cx", advertiser_id="vx", category="toys"
    )
    assert capped[0]  # now 4 toys in 30 days


def test_min_gap_on_ott_only(backend: tuple[str, Factory, Any]) -> None:
    store = backend[1]()
    store.record([imp(1, 0, advertiser_id="v5")])
    assert ask(store, 4, advertiser_id="v6")[0][0]
    assert not ask(store, 6, advertiser_id="v6")[0][0]
    assert not ask(
        store, 4, advertiser_id="v6", touchpoint="mobile", slot="mobile_feed", device_id="phone"
    )[0][0]


def test_retries_count_once(backend: tuple[str, Factory, Any]) -> None:
    store = backend[1]()
    assert store.record([imp(1, 0)]) == 1
    assert store.record([imp(1, 0), imp(1, 0)]) == 0
    assert ask(store, 10)[1][0, EXP["exp_user_campaign_1h"]] == 1


def test_late_events_count_in_their_own_window(backend: tuple[str, Factory, Any]) -> None:
    store = backend[1]()
    store.record([imp(2, 100)])
    store.record([imp(1, 10)])  # arrives late
    exposures = ask(store, 50)[1][0]
    assert exposures[EXP["exp_user_campaign_1h"]] == 1  # only the 10-minute one is before 50
    assert ask(store, 105)[1][0][EXP["exp_user_campaign_24h"]] == 2


def test_negative_feedback_blocks_the_campaign(backend: tuple[str, Factory, Any]) -> None:
    store = backend[1]()
    fb = Feedback(
        "imp-1", T0, "hide", "u1", household_id="h1", campaign_id="c1", advertiser_id="v1"
    )
    assert store.block([fb, Feedback("imp-2", T0, "skip", "u1", campaign_id="c2")]) == 2
    assert ask(store, 1)[0][0]
    assert ask(store, 1, user_id="u2")[0][0]  # household blocking is on
    assert not ask(store, 1, campaign_id="c2", advertiser_id="v2")[0][0]  # a skip never blocks
    assert not ask(store, 31 * 1440)[0][0]  # 30 days later it is lifted


def test_a_complaint_blocks_the_category_for_the_user(
    backend: tuple[str, Factory, Any],
) -> None:
    store = backend[1]()
    complaint = Feedback("imp-1", T0, "complaint", "u1", "h1", "c1", "v1", category="food")
    assert store.block([complaint]) == 3  # the campaign for user and household, the category
    other = {"campaign_id": "c2", "advertiser_id": "v2"}
    assert ask(store, 1, **other)[0][0]  # another campaign and advertiser of the category
    assert not ask(store, 1, **other, category="auto")[0][0]
    assert not ask(store, 1, **other, user_id="u2")[0][0]  # the household is not blocked
    assert ask(store, 89 * 1440, **other)[0][0]
    assert not ask(store, 91 * 1440, **other)[0][0]  # lifted after 90 days
    hidden = Feedback("imp-2", T0, "hide", "u1", "h1", "c3", "v3", category="toys")
    store.block([hidden])
    assert not ask(store, 1, campaign_id="c4", advertiser_id="v4", category="toys")[0][0]


def test_a_conversion_stops_the_advertiser_for_the_household(
    backend: tuple[str, Factory, Any],
) -> None:
    store = backend[1]()
    bought = Feedback("imp-1", T0, "conversion", "u1", "h1", "c1", "v1", category="food")
    assert store.block([bought]) == 2  # the advertiser, for user and household; no campaign
    assert ask(store, 1, campaign_id="c2")[0][0]
    assert ask(store, 1, campaign_id="c2", user_id="u2")[0][0]
    assert not ask(store, 1, campaign_id="c2", advertiser_id="v2")[0][0]
    assert not ask(store, 7 * 1440 + 1, campaign_id="c2")[0][0]  # lifted after 7 days
    g = gate(store)  # a reservation is refused by it too, atomically
    ctx = RequestContext("r", T0 + timedelta(minutes=2), "u1", "ott", "ott_pause", "h1", "tv1")
    cand: dict[str, list[Any]] = {
        "ad_id": ["ad9"],
        "creative_id": ["cr9"],
        "campaign_id": ["c9"],
        "advertiser_id": ["v1"],
        "category": ["auto"],
        "format": ["image"],
        "bid": [1.0],
        "pricing": ["cpm"],
    }
    taken = imp(9, 2, ad_id="ad9", creative_id="cr9", campaign_id="c9", category="auto")
    assert g.reserve(ctx, [cand], [taken]) == [Reservation.BLOCKED]


def test_stream_separation_keeps_an_advertiser_and_competing_categories_apart(
    backend: tuple[str, Factory, Any],
) -> None:
    """On one screen (device) and its slot: not the advertiser of an ad shown within 15
    minutes, nor its category's competitors (the same category or its group); another
    screen, another slot or 15 minutes later, they are back. A reservation is refused too."""
    store = backend[1]()
    preroll = {"touchpoint": "ott", "slot": "ott_preroll"}
    store.record([imp(1, 0, category="cola", **preroll)])
    fresh = {"campaign_id": "c2", "creative_id": "cr2", "ad_id": "ad2", **preroll}

    def capped(minutes: float, **kw: Any) -> bool:
        return bool(ask(store, minutes, **{**fresh, **kw})[0][0])

    assert capped(10, advertiser_id="v1", category="food")  # the advertiser
    assert capped(10, advertiser_id="v2", category="soda")  # a competitor (drinks)
    assert capped(10, advertiser_id="v2", category="cola")  # the same category
    assert not capped(10, advertiser_id="v2", category="food")
    assert not capped(10, advertiser_id="v1", device_id="phone1")  # another screen
    assert not capped(10, advertiser_id="v1", slot="ott_pause")  # another slot
    assert not capped(15, advertiser_id="v1", category="soda")  # 15 minutes on
    reading = gate(store).read(
        RequestContext("r", T0 + timedelta(minutes=10), "u1", "ott", "ott_preroll", "h1", "tv1"),
        {
            "ad_id": ["a", "b", "c"],
            "campaign_id": ["c2", "c3", "c4"],
            "advertiser_id": ["v2", "v3", "v1"],
            "category": ["soda", "food", "food"],
            "format": ["image"] * 3,
            "bid": [1.0] * 3,
            "pricing": ["cpm"] * 3,
        },
    )
    assert reading.capped.tolist() == [True, False, True]
    assert reading.separated is not None and reading.separated.tolist() == [True, False, True]
    ctx = RequestContext("r2", T0 + timedelta(minutes=10), "u1", "ott", "ott_preroll", "h1", "tv1")
    cand: dict[str, list[Any]] = {
        "ad_id": ["ad2"],
        "creative_id": ["cr2"],
        "campaign_id": ["c2"],
        "advertiser_id": ["v2"],
        "category": ["soda"],
        "format": ["image"],
        "bid": [1.0],
        "pricing": ["cpm"],
    }
    taken = imp(2, 10, ad_id="ad2", creative_id="cr2", campaign_id="c2", advertiser_id="v2")
    taken = dataclasses.replace(taken, category="soda", touchpoint="ott", slot="ott_preroll")
    assert gate(store).reserve(ctx, [cand], [taken]) == [Reservation.SEPARATED]


def _admit(store: CapStore, i: int) -> bool:
    ctx = RequestContext("r", T0, "u1", "ott", "ott_pause", household_id="h1", device_id="tv1")
    cand: dict[str, list[Any]] = {
        "ad_id": ["ad1"],
        "creative_id": [f"cr{i}"],
        "campaign_id": ["c1"],
        "advertiser_id": [f"v{i}"],
        "category": [f"cat{i}"],
        "format": ["image"],
        "bid": [1.0],
        "pricing": ["cpm"],
    }
    caps = CapsConfig(rules=[CapRule(scope="user", target="campaign", window="24h", limit=10)])
    g = CapGate(store, caps, 7 * 86_400, fail_open=False)
    event = imp(i, 0, creative_id=f"cr{i}", advertiser_id=f"v{i}", category=f"cat{i}")
    return g.reserve(ctx, [cand], [event]) == [Reservation.RESERVED]


def test_concurrent_check_and_record_never_exceeds(backend: tuple[str, Factory, Any]) -> None:
    factory = backend[1]
    barrier = threading.Barrier(32)

    def one(i: int) -> bool:
        store = factory()
        barrier.wait()
        return _admit(store, i)

    with ThreadPoolExecutor(32) as pool:
        admitted = list(pool.map(one, range(32)))
    assert sum(admitted) == 10


def _admit_in_process(url: str, prefix: str, cluster: bool, i: int) -> bool:
    client = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    return _admit(_redis_factory(client, prefix)(), i)


def test_concurrent_processes_never_exceed(backend: tuple[str, Factory, Any]) -> None:
    name, factory, client = backend
    if client is None:
        pytest.skip("the in-memory store lives in one process")
    store = factory()
    assert isinstance(store, RedisCapStore)
    kw = client.get_connection_kwargs() if name != "cluster" else {}
    url = (
        f"unix://{kw['path']}"
        if name == "embedded"
        else f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
        if name == "local"
        else f"redis://127.0.0.1:{client.get_default_node().port}"
    )
    prefix = store.keys.prefix.rsplit(":v", 1)[0]
    with ProcessPoolExecutor(4) as pool:
        admitted = list(
            pool.map(
                _admit_in_process, [url] * 24, [prefix] * 24, [name == "cluster"] * 24, range(24)
            )
        )
    assert sum(admitted) == 10


def test_every_key_expires(backend: tuple[str, Factory, Any]) -> None:
    name, factory, client = backend
    if client is None:
        pytest.skip("the in-memory store has no keys")
    store = factory()
    store.record([imp(1, 0), imp(2, 5, slot="ott_boot")])
    store.block([Feedback("imp-1", T0, "hide", "u1", household_id="h1", campaign_id="c1")])
    store.record([imp(3, 20 * 1440)])  # 20 days on: the first two are folded into summaries
    assert isinstance(store, RedisCapStore)
    keys = list(client.scan_iter(match=f"{store.keys.prefix}:*", count=1000))
    # the log, dictionary, tuples, day counts, generation, markers, 2 blocks
    assert len(keys) == 8, keys
    ttls = [client.ttl(k) for k in keys]
    assert all(t > 0 for t in ttls), [k for k, t in zip(keys, ttls, strict=True) if t <= 0]


def test_campaigns_bring_their_own_caps(backend: tuple[str, Factory, Any]) -> None:
    """A request's campaign caps add to the global ones; the strictest decides; they bind only
    their own campaign, and long windows work too."""
    store = backend[1]()
    store.record(
        [
            imp(1, -10 * 1440, campaign_id="c1", advertiser_id="v1"),
            imp(2, -20, campaign_id="c2", advertiser_id="v2"),
        ]
    )
    ctx = RequestContext("r", T0, "u1", "ott", "ott_pause", household_id="h1", device_id="tv1")
    cands: dict[str, list[Any]] = {
        "ad_id": ["a1", "a2", "a3"],
        "campaign_id": ["c1", "c2", "c3"],
        "advertiser_id": ["w1", "w2", "w3"],
        "creative_id": ["k1", "k2", "k3"],
        "category": ["x1", "x2", "x3"],
        "format": ["image"] * 3,
        "bid": [1.0] * 3,
        "pricing": ["cpm"] * 3,
    }
    g = gate(store)
    assert not g.read(ctx, cands).capped.any()  # global rules alone allow all three
    own = {
        "c1": [CapRule(scope="user", target="campaign", window="30d", limit=1)],
        "c2": [CapRule(scope="household", target="campaign", window="1h", limit=1)],
        "c3": [CapRule(scope="user", target="campaign", window="1h", limit=1)],
    }
    assert g.read(ctx, cands, own).capped.tolist() == [True, True, False]
    event = imp(3, 0, campaign_id="c3", creative_id="k3", advertiser_id="w3", category="x3")
    single = {k: v[2:] for k, v in cands.items()}
    assert g.reserve(ctx, [single], [event], own) == [Reservation.RESERVED]
    again = imp(4, 0, campaign_id="c3", creative_id="k3", advertiser_id="w3", category="x3")
    assert g.reserve(ctx, [single], [again], own) == [Reservation.CAPPED]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"touchpoint": "ott"}, "touchpoint"),
        ({"slot": "ott_pause"}, "slot"),
        ({"target": "advertiser"}, "target"),
    ],
)
def test_a_campaigns_own_cap_with_a_filter_or_another_target_is_refused(
    backend: tuple[str, Factory, Any], extra: dict[str, str], field: str
) -> None:
    """A campaign's own cap counts its campaign's exposures everywhere (the gRPC contract has
    no filter for it). One with a touchpoint or slot filter was taken and never bound: its
    filtered family is never written, so it counted 0 however often the campaign was shown;
    one of another target was silently made a campaign cap. Both are refused, by field."""
    store = backend[1]()
    store.record([imp(1, -20, campaign_id="c2"), imp(2, -10, campaign_id="c2")])
    ctx = RequestContext("r", T0, "u1", "ott", "ott_pause", household_id="h1", device_id="tv1")
    cands: dict[str, list[Any]] = {
        "ad_id": ["a2"],
        "campaign_id": ["c2"],
        "format": ["image"],
        "bid": [1.0],
        "pricing": ["cpm"],
    }
    rule = {"scope": "user", "target": "campaign", "window": "24h", "limit": 1, **extra}
    with pytest.raises(InvalidArgument, match=rf"campaign_caps\['c2'\]\[0\]\.{field}"):
        gate(store).read(ctx, cands, {"c2": [CapRule(**rule)]})


def test_a_store_configured_with_new_rules_writes_their_families(
    backend: tuple[str, Factory, Any],
) -> None:
    """``configure`` (a config reload) makes the store write by the new rules from then on: a
    rule over a family no rule had (here user x category on OTT) counts what is recorded
    after it, on a touchpoint and slot the store had written before."""
    store = backend[1]()
    added = CapRule(scope="user", target="category", touchpoint="ott", window="1h", limit=1)
    caps = CAPS.model_copy(update={"rules": [*CAPS.rules, added]})
    store.record([imp(0, -50, category="toys")])  # written by the rules it was opened with
    store.configure(caps)
    store.record([imp(1, -10, category="food")])
    ctx = RequestContext("r", T0, "u1", "ott", "ott_pause", household_id="h1", device_id="tv9")
    cands: dict[str, list[Any]] = {
        "ad_id": ["a7", "a8"],
        "campaign_id": ["c7", "c8"],
        "advertiser_id": ["w7", "w8"],
        "category": ["food", "books"],
        "format": ["image"] * 2,
        "bid": [1.0] * 2,
        "pricing": ["cpm"] * 2,
    }
    g = CapGate(store, caps, retention_s=7 * 86_400, fail_open=False)
    assert g.read(ctx, cands).capped.tolist() == [True, False]


def test_day_windows_count_late_events_in_their_own_day(backend: tuple[str, Factory, Any]) -> None:
    """30-day windows count the last 30 calendar days (today included), whatever order the
    impressions arrive in; the day before them is out."""
    store = backend[1]()
    days = [-1, -29, -31, -2, -29.9, -30]  # T0 is 20:00 UTC: -29.9 days is on day -30
    store.record(
        [
            imp(k, d * 1440, creative_id=f"k{k}", campaign_id=f"c{k}", category="toys")
            for k, d in enumerate(days)
        ]
    )
    other = {"creative_id": "k-new", "campaign_id": "cx", "advertiser_id": "vx"}
    assert not ask(store, 0, category="toys", **other)[0][0]  # 3 in 30 days, limit 4
    store.record([imp(9, -3 * 1440, creative_id="k9", campaign_id="c9", category="toys")])
    assert ask(store, 0, category="toys", **other)[0][0]


def test_long_campaign_caps_keep_180_days(backend: tuple[str, Factory, Any]) -> None:
    """A campaign's own 180-day cap counts the last 180 days; older days leave the day counts
    while lifetime counts keep them."""
    store = backend[1]()
    store.record(
        [
            imp(k, d * 1440, campaign_id="c5", creative_id=f"k{k}", category=f"x{k}")
            for k, d in enumerate([-200, -179, -1])
        ]
    )
    ctx = RequestContext("r", T0, "u1", "ott", "ott_pause", household_id="h1", device_id="tv1")
    cand: dict[str, list[Any]] = {
        "ad_id": ["a"],
        "campaign_id": ["c5"],
        "creative_id": ["k-new"],
        "format": ["image"],
        "bid": [1.0],
        "pricing": ["cpm"],
    }
    g = gate(store)

    def own(window: str, limit: int) -> dict[str, list[CapRule]]:
        return {"c5": [CapRule(scope="user", target="campaign", window=window, limit=limit)]}

    assert not g.read(ctx, cand, own("180d", 3)).capped[0]  # -200 is out
    assert g.read(ctx, cand, own("180d", 2)).capped[0]
    assert g.read(ctx, cand, own("lifetime", 3)).capped[0]
    assert not g.read(ctx, cand, own("lifetime", 4)).capped[0]


def test_a_retried_reservation_counts_once(backend: tuple[str, Factory, Any]) -> None:
    store = backend[1]()
    ctx = RequestContext("r", T0, "u1", "ott", "ott_pause", household_id="h1", device_id="tv1")
    cand: dict[str, list[Any]] = {
        "ad_id": ["ad1"],
        "campaign_id": ["c1"],
        "format": ["image"],
        "bid": [1.0],
        "pricing": ["cpm"],
    }
    g = CapGate(
        store,
        CapsConfig(rules=[CapRule(scope="user", target="campaign", window="1h", limit=1)]),
        7 * 86_400,
        fail_open=False,
    )
    assert g.reserve(ctx, [cand], [imp(1, 0)]) == [Reservation.RESERVED]
    # the same impression again: already reserved
    assert g.reserve(ctx, [cand], [imp(1, 0)]) == [Reservation.RESERVED]
    assert g.reserve(ctx, [cand], [imp(2, 0)]) == [Reservation.CAPPED]
    assert ask(store, 1)[1][0, EXP["exp_user_campaign_1h"]] == 1


def count_sends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one for every command (or pipeline) any Redis client sends."""
    sent: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return sent


def test_one_round_trip_per_call(
    backend: tuple[str, Factory, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request read, an atomic check and an impression batch each send one command."""
    name, factory, client = backend
    if client is None:
        pytest.skip("the in-memory store makes no calls")
    store = factory()
    g = gate(store)
    context, candidates = _hundred_candidates()
    g.read(context, candidates)  # scripts loaded: no NOSCRIPT retry below
    g.reserve(context, [_first(candidates)], [imp("warm", 0)])
    store.record([imp("warm2", 0)])
    sent = count_sends(monkeypatch)
    g.read(context, candidates)
    assert len(sent) == 1
    g.reserve(context, [_first(candidates)], [imp("one", 0)])
    assert len(sent) == 2
    store.record([imp(f"batch-{k}", k) for k in range(5)])
    assert len(sent) == 3
    g.read(context, candidates)
    pod = [{k: v[i : i + 1] for k, v in candidates.items()} for i in (1, 2, 3)]
    g.reserve(context, pod, [imp(f"pod-{i}", 0) for i in range(3)])  # a pod: one round trip
    assert len(sent) == 5
    if isinstance(store, RedisCapStore):  # checked on a snapshot: without a read, it reads one
        g.reserve(context, [_first(candidates)], [imp("unread", 0)])
        assert len(sent) == 7


def test_a_pods_reservation_counts_its_own_ads_and_grants_in_part(
    backend: tuple[str, Factory, Any],
) -> None:
    """Three ads of one campaign reserved together with one exposure left under "2 per user
    per campaign an hour": the first is granted, the others are refused by it (they count
    the ones before them), and an ad of another campaign after them is granted."""
    store = backend[1]()
    store.record([imp(1, 0)])  # c1 once: one left
    g = gate(store)
    ctx = RequestContext("pod", T0 + timedelta(minutes=1), "u1", "mobile", "mobile_feed", "h1")
    ads = [("a1", "c1"), ("a2", "c1"), ("a3", "c1"), ("b1", "c9")]
    cands: list[dict[str, list[Any]]] = [
        {
            "ad_id": [ad],
            "creative_id": [f"cr-{ad}"],
            "campaign_id": [campaign],
            "advertiser_id": [f"v-{ad}"],
            "category": [f"k-{ad}"],
            "format": ["image"],
            "bid": [1.0],
            "pricing": ["cpm"],
        }
        for ad, campaign in ads
    ]
    where = {"touchpoint": "mobile", "slot": "mobile_feed", "device_id": None}
    events = [
        imp(f"pod-{ad}", 1, ad_id=ad, campaign_id=campaign, creative_id=f"cr-{ad}", **where)
        for ad, campaign in ads
    ]
    got = g.reserve(ctx, cands, events)
    assert got == [
        Reservation.RESERVED,
        Reservation.CAPPED,
        Reservation.CAPPED,
        Reservation.RESERVED,
    ]
    later = dataclasses.replace(ctx, ts=T0 + timedelta(minutes=2))
    assert g.read(later, cands[0]).capped.tolist() == [True]  # the grant was recorded


class CountingLock:
    """A lock that counts how often it is taken."""

    def __init__(self) -> None:
        self.inner, self.taken = threading.Lock(), 0

    def __enter__(self) -> None:
        self.inner.acquire()
        self.taken += 1

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


def test_one_round_trip_for_the_requests_of_a_pass(
    backend: tuple[str, Factory, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``read_many`` of many requests sends one command (a pipeline) to each Redis node their
    households live on: one on a single server; the in-memory store takes its lock once. No
    plans: nothing is sent."""
    name, factory, client = backend
    store = factory()
    g = gate(store)
    plans = _plans(g, _household_requests(12))
    store.read_many(plans)  # scripts loaded on every node, connections open: no retry below
    if client is None:
        assert isinstance(store, MemoryCapStore)
        lock = CountingLock()
        monkeypatch.setattr(store, "_lock", lock)
        store.read_many(plans)
        assert lock.taken == 1
        return
    sent = count_sends(monkeypatch)
    answers = store.read_many(plans)
    assert all(isinstance(a, CapReading) for a in answers)
    nodes = 1
    if name == "cluster":
        assert isinstance(store, RedisCapStore)
        tags = [store.keys.base(store.keys.tag(p.household_id, p.user_id)) for p in plans]
        nodes = len({client.get_node_from_key(tag).name for tag in tags})
        assert nodes > 1  # the requests do span several nodes
    assert len(sent) == nodes
    assert store.read_many([]) == [] and len(sent) == nodes


def _hundred_candidates() -> tuple[RequestContext, dict[str, list[Any]]]:
    ctx = RequestContext("r", T0, "u1", "ott", "ott_pause", household_id="h1", device_id="tv1")
    n = 100
    return ctx, {
        "ad_id": [f"a{i}" for i in range(n)],
        "campaign_id": [f"c{i % 40}" for i in range(n)],
        "advertiser_id": [f"v{i % 7}" for i in range(n)],
        "creative_id": [f"k{i}" for i in range(n)],
        "category": ["food"] * n,
        "format": ["image"] * n,
        "bid": [1.0] * n,
        "pricing": ["cpm"] * n,
    }


def _first(candidates: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {k: v[:1] for k, v in candidates.items()}


def test_scripts_lost_by_the_server_are_loaded_again(backend: tuple[str, Factory, Any]) -> None:
    """After a restart or SCRIPT FLUSH the next calls load the scripts again (only on the
    servers the tests own: flushing the shared local server would disturb others)."""
    name, factory, client = backend
    if name in ("memory", "local"):
        pytest.skip("no private server to flush")
    store = factory()
    store.record([imp(1, 0)])
    client.script_flush()
    assert store.record([imp(2, 1), imp(3, 2)]) == 2
    client.script_flush()
    assert ask(store, 10)[1][0, EXP["exp_user_campaign_1h"]] == 3
    g = gate(store)
    plans = _plans(g, _household_requests(4))
    alone = [store.read(plan) for plan in plans]
    client.script_flush()  # a pass's pipelined reads load the script again too
    for together, one in zip(store.read_many(plans), alone, strict=True):
        _same(together, one)
    client.script_flush()  # and a reservation
    ctx = RequestContext("r", T0, "u9", "ott", "ott_pause", household_id="h9", device_id="tv9")
    cand: dict[str, list[Any]] = {"ad_id": ["ad1"], "campaign_id": ["c1"], "format": ["image"]}
    where = {"user_id": "u9", "household_id": "h9", "device_id": "tv9"}
    assert g.reserve(ctx, [cand], [imp("after-flush", 0, **where)]) == [Reservation.RESERVED]
    assert ask(store, 1, **where)[1][0, EXP["exp_user_campaign_1h"]] == 1


def test_a_request_without_candidates(backend: tuple[str, Factory, Any]) -> None:
    store = backend[1]()
    store.record([imp(1, 0)])
    ctx = RequestContext("r", T0, "u1", "ott", "ott_pause", household_id="h1", device_id="tv1")
    empty: dict[str, list[Any]] = {"ad_id": [], "campaign_id": [], "format": [], "bid": []}
    reading = gate(store).read(ctx, empty)
    assert reading.exposures.shape == (0, len(EXP)) and reading.capped.shape == (0,)


def test_a_request_of_ten_thousand_candidates(backend: tuple[str, Factory, Any]) -> None:
    """More ids than Lua's stack holds at once (about 8,000) still read in one call."""
    store = backend[1]()
    store.record([imp(1, 0), imp(2, 1, campaign_id="c9999x", advertiser_id="v9999")])
    ctx = RequestContext("r", T0, "u1", "ott", "ott_pause", household_id="h1", device_id="tv1")
    n = 10_000
    cands: dict[str, list[Any]] = {
        "ad_id": [f"a{i}" for i in range(n)],
        "campaign_id": ["c1"] + [f"c{i}x" for i in range(1, n)],
        "advertiser_id": [f"v{i}" for i in range(n)],
        "format": ["image"] * n,
        "bid": [1.0] * n,
        "pricing": ["cpm"] * n,
    }
    exposures = gate(store).read(replace(ctx, ts=T0 + timedelta(minutes=2)), cands).exposures
    assert exposures[[0, 9_999], EXP["exp_user_campaign_1h"]].tolist() == [1, 1]
    assert exposures[[1, 9_999], EXP["exp_user_advertiser_1h"]].tolist() == [1, 1]
    assert exposures[2:9_999, EXP["exp_user_campaign_1h"]].sum() == 0


def _household_requests(n: int, minutes: float = 45) -> list[tuple[RequestContext, Any]]:
    """``n`` requests of 100 candidates, each of its own user and household (the last one
    without a household), at T0 + minutes."""
    out = []
    for k in range(n):
        ctx, cands = _hundred_candidates()
        household = f"h{k}" if k < n - 1 else None
        ctx = replace(
            ctx,
            ts=T0 + timedelta(minutes=minutes),
            user_id=f"u{k}",
            household_id=household,
            device_id=f"tv{k}",
        )
        out.append((ctx, cands))
    return out


def _history(store: CapStore, n: int) -> None:
    """Impressions for the users and households of :func:`_household_requests`, a feedback
    block for one of them."""
    impressions = []
    for k in range(n):
        household = f"h{k}" if k < n - 1 else None
        for j in range(k % 4 + 1):
            impressions.append(
                imp(
                    f"h{k}-{j}",
                    10 * j,
                    user_id=f"u{k}",
                    household_id=household,
                    device_id=f"tv{k}",
                    campaign_id=f"c{(k + j) % 40}",
                    advertiser_id=f"v{j % 7}",
                    creative_id=f"k{k + j}",
                )
            )
    assert store.record(impressions) == len(impressions)
    store.block([Feedback("h1-0", T0, "hide", "u1", "h1", campaign_id="c1")])


OWN_CAPS = {"c2": [CapRule(scope="user", target="campaign", window="24h", limit=1)]}


def _plans(g: CapGate, requests: list[tuple[RequestContext, Any]]) -> list[Plan]:
    """Plans of the requests, every other one with campaigns' own caps."""
    own = g.own_rules(OWN_CAPS)
    return [
        g.planner.plan(ctx, cands, own if k % 2 else []) for k, (ctx, cands) in enumerate(requests)
    ]


def _cut(candidates: dict[str, list[Any]], k: int) -> dict[str, list[Any]]:
    """The first 100 - 11 k candidates (none for k = 7), every fifth campaign and creative id
    from the k-th on left out (null)."""
    n = max(0, 100 - 11 * k) if k < 7 else 0
    out = {name: list(values[:n]) for name, values in candidates.items()}
    for name in ("campaign_id", "creative_id"):
        out[name] = [None if (i - k) % 5 == 0 else v for i, v in enumerate(out[name])]
    return out


def _same(a: CapReading | AdmatchError, b: CapReading) -> None:
    assert isinstance(a, CapReading)
    for name in ("exposures", "rule_counts", "gap_since", "blocked"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_a_read_of_many_plans_equals_reads_of_each(backend: tuple[str, Factory, Any]) -> None:
    """Store and gate: ``read_many`` / ``prepare_many`` answer each request as a read of its
    own does (users with and without a household, campaigns' own caps, a feedback block)."""
    store = backend[1]()
    _history(store, 8)
    g = gate(store)
    requests = _household_requests(8)
    plans = _plans(g, requests)
    alone = [store.read(plan) for plan in plans]
    assert sum(np.nansum(a.exposures) for a in alone) > 0 and alone[1].blocked.any()
    for together, one in zip(store.read_many(plans), alone, strict=True):
        _same(together, one)
    # a pass's plans of one shape are placed together: of other sizes, with ids left out
    varied = [(ctx, _cut(cands, k)) for k, (ctx, cands) in enumerate(requests)]
    plans = _plans(g, varied + varied[:3])
    alone = [store.read(plan) for plan in plans]
    assert [len(a.blocked) for a in alone[:4]] == [100, 89, 78, 67] and len(alone[7].blocked) == 0
    for together, one in zip(store.read_many(plans), alone, strict=True):
        _same(together, one)
    scoring = [
        ScoreRequest(ctx, cands, campaign_caps=OWN_CAPS if k % 2 else None)
        for k, (ctx, cands) in enumerate(requests)
    ]
    for prepared, request in zip(g.prepare_many(scoring), scoring, strict=True):
        assert isinstance(prepared, ScoreRequest)
        single = g.prepare(request)
        assert prepared.exposures is not None and single.exposures is not None
        np.testing.assert_array_equal(prepared.exposures, single.exposures)
        assert prepared.capped is not None and single.capped is not None
        np.testing.assert_array_equal(prepared.capped, single.capped)
    assert store.read_many([]) == []


@pytest.mark.parametrize(
    "part, value",
    [
        (0, b"\x01" * 15),  # a log that is not whole events
        (2, b"\xff\xff" * 6),  # a tuple holding a code past the dictionary
        (1, b"\x00" * 7),  # a dictionary that is not whole fingerprints
        (3, b"\x01\x00\x00"),  # day counts shorter than their header
        (3, (50).to_bytes(4, "little") + bytes(4)),  # day counts naming groups they lack
    ],
    ids=["short-log", "tuple-past-dictionary", "short-dictionary", "short-days", "days-groups"],
)
def test_a_household_whose_stored_data_is_unreadable_fails_alone(
    backend: tuple[str, Factory, Any], part: int, value: bytes
) -> None:
    """Stored bytes the client cannot decode (written by another version, or damaged) make
    that household's read fail, closed and counted, naming the problem; the other plans of the
    pass are read, and the service does not crash."""
    store, g, requests = _damaged(
        backend, lambda client, parts: client.set(parts[part], value), "unreadable"
    )
    with pytest.raises(StoreUnavailable, match="unreadable"):
        store.read(_plans(g, requests)[1])
    ctx, cands = requests[1]
    single = {column: values[:1] for column, values in cands.items()}
    event = imp("x", 50, user_id="u1", household_id="h1", device_id="tv1")
    assert g.reserve(ctx, [single], [event]) == [Reservation.UNAVAILABLE]


def test_a_household_due_a_fold_whose_data_is_unreadable_still_records(
    backend: tuple[str, Factory, Any],
) -> None:
    """A write that finds a household's log due a fold folds it after recording; when its
    bytes cannot be decoded, the fold is skipped (logged; the next write tries again): the
    impressions recorded in the call stay counted and the call does not fail, nor does another
    household's in it."""

    def damage(client: Any, parts: list[str]) -> None:
        client.set(parts[0], (0).to_bytes(8, "little") + b"\x01" * 7)  # old, then not whole

    store = _history_damaged(backend, damage)
    events = [
        imp("late-h1", 60, user_id="u1", household_id="h1", device_id="tv1"),
        imp("late-h0", 60, user_id="u0", household_id="h0", device_id="tv0"),
    ]
    assert store.record(events) == 2
    assert store.record(events) == 0  # recorded: the retries are known


def test_ids_of_any_length_are_read(backend: tuple[str, Factory, Any]) -> None:
    """An id of 70,000 characters (a Redis store sends its fingerprint) is read as any
    other, beside other plans."""
    store = backend[1]()
    _history(store, 3)
    g = gate(store)
    requests = _household_requests(3)
    ctx, cands = requests[1]
    requests[1] = (ctx, {**cands, "campaign_id": ["c" * 70_000, *cands["campaign_id"][1:]]})
    plans = _plans(g, requests)
    answers = store.read_many(plans)
    for plan, answer in zip(plans, answers, strict=True):
        assert isinstance(answer, CapReading)
        _same(answer, store.read(plan))


def test_a_plan_the_server_refuses_fails_alone(backend: tuple[str, Factory, Any]) -> None:
    """A key of the wrong type (a corrupted counter) makes the server refuse that plan's call:
    its request fails closed, alone, and counts one error; the others are read."""

    def wrong_type(client: Any, parts: list[str]) -> None:
        client.delete(parts[0])
        client.hset(parts[0], "x", "y")  # a key of the wrong type: the server refuses the read

    _damaged(backend, wrong_type, "WRONGTYPE")


def _history_damaged(
    backend: tuple[str, Factory, Any], damage: Callable[[Any, list[str]], object]
) -> RedisCapStore:
    """A Redis store with three households' history, the second's keys damaged
    (``damage(client, its parts)``); the in-memory store has none: skipped."""
    name, factory, client = backend
    if client is None:
        pytest.skip("the in-memory store has no keys to corrupt")
    store = factory()
    _history(store, 3)
    assert isinstance(store, RedisCapStore)
    damage(client, store.keys.parts(store.keys.tag("h1", "u1")))
    return store


def _damaged(
    backend: tuple[str, Factory, Any], damage: Callable[[Any, list[str]], object], message: str
) -> tuple[RedisCapStore, CapGate, list[tuple[RequestContext, Any]]]:
    """Three households' history, the second's keys damaged (``damage(client, its parts)``):
    its read fails with ``message``, closed and counted once; the others are read."""
    store = _history_damaged(backend, damage)
    g = gate(store)
    requests = _household_requests(3)
    answers = store.read_many(_plans(g, requests))
    assert isinstance(answers[1], StoreUnavailable) and message in str(answers[1])
    assert isinstance(answers[0], CapReading) and isinstance(answers[2], CapReading)
    prepared = g.prepare_many([ScoreRequest(ctx, cands) for ctx, cands in requests])
    assert g.errors == 1
    capped = [p.capped for p in prepared if isinstance(p, ScoreRequest)]
    assert len(capped) == 3 and capped[1] is not None and capped[1].all()
    assert capped[0] is not None and not capped[0].all()
    return store, g, requests
