"""The Redis store answers exactly what the in-memory reference answers, for any sequence of
calls within the documented conditions (docs/caps.md: reads after every recorded impression,
each user and device in one household, an impression id unique within its household).

Stateful property test: hypothesis runs random sequences of impression batches (late, out of
order, retried), negative feedback, clock steps onto and across window edges, reads of random
candidate sets and atomic check-and-record calls against both stores, and compares every
answer: counts, recencies, rule counts (up to each rule's limit), blocks and check results.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from engine.caps import evaluate
from engine.caps.embedded import EmbeddedRedis
from engine.caps.keys import KeySpace
from engine.caps.memory_store import MemoryCapStore
from engine.caps.plan import Planner
from engine.caps.redis_store import RedisCapStore
from engine.caps.store import CapReading, Feedback, Impression
from features.online import RequestContext

from .test_cap_store_contract import BLOCKS, COMPETING, GAPS, RULES, T0

EXAMPLES = int(os.environ.get("ADMATCH_FUZZ_EXAMPLES", "200"))
RETENTION_S = 7 * 86_400
HOUSEHOLD = {"u1": "h1", "u2": "h1", "u3": None}  # each user in one household (or none)
DEVICE = {"u1": "tv1", "u2": "phone2", "u3": "fridge3"}
PLACES = [
    ("ott", "ott_pause"),
    ("ott", "ott_boot"),
    ("ott", "ott_preroll"),
    ("mobile", "mobile_feed"),
]
CAMPAIGN = {"c1": "v1", "c2": "v1", "c3": "v2"}  # campaign -> advertiser
# minutes, mostly whole, so that impressions fall exactly on the windows' edges (5 min gap,
# 1 h, 24 h, 7 d, 30 d) as often as just inside (a microsecond) or outside them
US = 1 / 60e6
EDGES = [1, 5, 59, 60, 61, 1439, 1440, 1441, 10_079, 10_080, 10_081, 43_200, 44_640]
STEPS = [0, *EDGES, 60 - US, 1440 + US]
LAGS = [0, *EDGES, 5 - US, 60 - US, 60 + US, 20_000]

ads = st.lists(
    st.tuples(st.sampled_from(sorted(CAMPAIGN)), st.sampled_from(["cr1", "cr2"])),
    min_size=1,
    max_size=4,
)


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    yield server
    server.stop()


class Differential(RuleBasedStateMachine):
    """Both stores side by side; ``client`` is set by the test before running."""

    client: Any = None

    @initialize()
    def start(self) -> None:
        self.prefix = f"diff-{uuid.uuid4().hex[:8]}"
        keys = KeySpace(self.prefix)
        self.redis = RedisCapStore(self.client, RULES, GAPS, BLOCKS, keys, competing=COMPETING)
        self.memory = MemoryCapStore(RULES, GAPS, BLOCKS, COMPETING)
        self.planner = Planner(RULES, GAPS, BLOCKS, RETENTION_S, COMPETING)
        self.minutes = 0.0  # the clock: records happen at or before it
        self.latest = 0.0  # the newest impression recorded: reads happen after it
        self.serial = 0

    def teardown(self) -> None:
        if hasattr(self, "prefix"):
            for key in self.client.scan_iter(match=f"{self.prefix}:*", count=1000):
                self.client.delete(key)

    def _event_fields(self, user: str, minutes_ago: float) -> dict[str, Any]:
        self.latest = max(self.latest, self.minutes - minutes_ago)
        return {
            "ts": T0 + timedelta(minutes=self.minutes - minutes_ago),
            "user_id": user,
            "household_id": HOUSEHOLD[user],
        }

    @rule(step=st.sampled_from(STEPS))
    def advance(self, step: float) -> None:
        self.minutes += step

    @rule(
        batch=st.lists(
            st.tuples(
                st.integers(0, 9),  # impression id: retries and duplicates within a batch
                st.sampled_from(sorted(HOUSEHOLD)),
                st.sampled_from(PLACES),
                st.sampled_from(sorted(CAMPAIGN)),
                st.sampled_from(["cr1", "cr2"]),
                st.sampled_from(["food", "auto", "cola", "soda"]),
                st.sampled_from(LAGS),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def record(self, batch: list[tuple[Any, ...]]) -> None:
        events = [
            Impression(
                impression_id=f"imp-{n}",
                touchpoint=place[0],
                slot=place[1],
                ad_id=f"ad-{campaign}-{creative}",
                device_id=DEVICE[user],
                creative_id=creative,
                campaign_id=campaign,
                advertiser_id=CAMPAIGN[campaign],
                category=category,
                **self._event_fields(user, lag),
            )
            for n, user, place, campaign, creative, category, lag in batch
        ]
        assert self.redis.record(events) == self.memory.record(events)

    @rule(
        user=st.sampled_from(sorted(HOUSEHOLD)),
        campaign=st.sampled_from(sorted(CAMPAIGN)),
        kind=st.sampled_from(["hide", "dislike", "complaint", "skip", "conversion"]),
        category=st.sampled_from(["food", "auto"]),
        lag=st.sampled_from(LAGS),
    )
    def feedback(self, user: str, campaign: str, kind: str, category: str, lag: float) -> None:
        self.serial += 1
        event = Feedback(
            impression_id=f"fb-{self.serial}",
            kind=kind,
            campaign_id=campaign,
            advertiser_id=CAMPAIGN[campaign],
            category=category,
            **self._event_fields(user, lag),
        )
        assert self.redis.block([event]) == self.memory.block([event])

    def _request(
        self, user: str, place: tuple[str, str], cands: list[tuple[str, str]]
    ) -> tuple[RequestContext, dict[str, list[Any]]]:
        context = RequestContext(
            request_id="r",
            ts=T0 + timedelta(minutes=self.minutes),
            user_id=user,
            touchpoint=place[0],
            slot=place[1],
            household_id=HOUSEHOLD[user],
            device_id=DEVICE[user],
        )
        columns: dict[str, list[Any]] = {
            "ad_id": [f"ad-{i}" for i in range(len(cands))],
            "campaign_id": [c for c, _ in cands],
            "creative_id": [cr for _, cr in cands],
            "advertiser_id": [CAMPAIGN[c] for c, _ in cands],
            "category": [{"c1": "food", "c2": "cola", "c3": "soda"}[c] for c, _ in cands],
            "format": ["image"] * len(cands),
            "bid": [1.0] * len(cands),
            "pricing": ["cpm"] * len(cands),
        }
        return context, columns

    @rule(user=st.sampled_from(sorted(HOUSEHOLD)), place=st.sampled_from(PLACES), cands=ads)
    def read(self, user: str, place: tuple[str, str], cands: list[tuple[str, str]]) -> None:
        if self.minutes <= self.latest:  # after the newest impression (docs/caps.md)
            self.minutes = self.latest + 1
        plan = self.planner.plan(*self._request(user, place, cands))
        _same(self.redis.read(plan), self.memory.read(plan))
        many = self.redis.read_many([plan, plan])
        for reading in many:
            assert isinstance(reading, CapReading)
            _same(reading, self.memory.read(plan))

    @rule(
        user=st.sampled_from(sorted(HOUSEHOLD)),
        place=st.sampled_from(PLACES),
        ad=st.tuples(st.sampled_from(sorted(CAMPAIGN)), st.sampled_from(["cr1", "cr2"])),
        retry=st.booleans(),
    )
    def reserve(self, user: str, place: tuple[str, str], ad: tuple[str, str], retry: bool) -> None:
        context, columns = self._request(user, place, [ad])
        plan = self.planner.plan(context, columns)
        self.serial += 0 if retry else 1  # a retry reuses the last impression id
        event = Impression(
            impression_id=f"res-{self.serial}",
            touchpoint=place[0],
            slot=place[1],
            ad_id="ad-0",
            device_id=DEVICE[user],
            creative_id=ad[1],
            campaign_id=ad[0],
            advertiser_id=CAMPAIGN[ad[0]],
            category=columns["category"][0],
            **self._event_fields(user, 0),
        )
        checks = evaluate.checks(plan, RULES, GAPS)
        answer = self.redis.check_and_record([(event, plan, checks)])
        assert answer == self.memory.check_and_record([(event, plan, checks)]), answer


LIMITS = np.asarray([r.limit for r in RULES], dtype=np.float64)


def _same(a: CapReading, b: CapReading) -> None:
    """The same answers; a rule's count up to its limit (past it, the store keeps only the
    times the limit needs: docs/caps.md)."""
    np.testing.assert_array_equal(a.blocked, b.blocked)
    for name in ("exposures", "rule_counts", "gap_since"):
        mine, theirs = getattr(a, name), getattr(b, name)
        if name == "rule_counts":
            mine, theirs = np.fmin(mine, LIMITS), np.fmin(theirs, LIMITS)
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6, equal_nan=True, err_msg=name)


def test_redis_answers_as_the_reference_does(server: EmbeddedRedis) -> None:
    client = server.client()
    Differential.client = client
    try:
        run_state_machine_as_test(
            Differential,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        client.close()
