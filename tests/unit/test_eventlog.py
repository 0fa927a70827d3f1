"""Layout v4's pure part: the answers computed from a household's event log (and, after a
fold, its summaries) equal the in-memory reference's, for any impressions and reads within
the documented conditions (reads no earlier than ``max_ahead`` before the newest impression)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.caps import eventlog
from engine.caps.keep import log_span_s, summaries
from engine.caps.memory_store import MemoryCapStore
from engine.caps.plan import DAY_US, Planner, micros
from engine.caps.rules import CapRule
from engine.caps.store import Impression
from features.online import RequestContext
from tests.integration.test_cap_store_contract import BLOCKS, COMPETING, GAPS, RULES, T0

RETENTION_S = 7 * 86_400
AHEAD_S = 300
HOUSEHOLD = "h1"
USERS = {"u1": "tv1", "u2": "phone2"}
PLACES = [("ott", "ott_pause"), ("ott", "ott_boot"), ("mobile", "mobile_feed")]
CAMPAIGN = {"c1": "v1", "c2": "v1", "c3": "v2"}
CATEGORY = {"c1": "food", "c2": "cola", "c3": "soda"}
OWN = [
    CapRule(scope="user", target="campaign", window="30d", limit=5, campaign_id="c1"),
    CapRule(scope="household", target="campaign", window="lifetime", limit=9, campaign_id="c2"),
    CapRule(scope="device", target="campaign", window="2h", limit=3, campaign_id="c3"),
]
MINUTES = st.sampled_from([0, 1, 5, 59, 60, 61, 1439, 1440, 1441, 10_080, 10_081, 43_200])

impressions = st.lists(
    st.tuples(
        st.sampled_from(sorted(USERS)),
        st.sampled_from(PLACES),
        st.sampled_from(sorted(CAMPAIGN)),
        st.sampled_from(["cr1", "cr2"]),
        st.integers(0, 60 * 24 * 40),  # minutes after T0
        st.booleans(),  # without a device id
    ),
    min_size=0,
    max_size=40,
)


def _impression(n: int, row: tuple[Any, ...]) -> Impression:
    user, place, campaign, creative, minutes, no_device = row
    return Impression(
        impression_id=f"i{n}",
        ts=T0 + timedelta(minutes=minutes),
        user_id=user,
        touchpoint=place[0],
        slot=place[1],
        ad_id=f"ad-{campaign}-{creative}",
        household_id=HOUSEHOLD,
        device_id=None if no_device else USERS[user],
        creative_id=creative,
        campaign_id=campaign,
        advertiser_id=CAMPAIGN[campaign],
        category=CATEGORY[campaign],
    )


def _plan(planner: Planner, user: str, place: tuple[str, str], minutes: float) -> Any:
    context = RequestContext(
        request_id="r",
        ts=T0 + timedelta(minutes=minutes),
        user_id=user,
        touchpoint=place[0],
        slot=place[1],
        household_id=HOUSEHOLD,
        device_id=USERS[user],
    )
    ads = [(c, cr) for c in sorted(CAMPAIGN) for cr in ("cr1", "cr2", "cr9")]
    columns: dict[str, list[Any]] = {
        "ad_id": [f"ad-{c}-{cr}" for c, cr in ads],
        "campaign_id": [c for c, _ in ads],
        "creative_id": [cr for _, cr in ads],
        "advertiser_id": [CAMPAIGN[c] for c, _ in ads],
        "category": [CATEGORY[c] for c, _ in ads],
    }
    return planner.plan(context, columns, OWN)


def _write(imps: list[Impression]) -> eventlog.Parts:
    writer = eventlog.Writer()
    for imp in imps:
        user, device, ad, place = eventlog.impression_fps(imp, COMPETING)
        writer.add(micros(imp.ts), user, device, ad, place)
    return writer.parts()


def _case(
    rows: list[tuple[Any, ...]],
    user: str,
    place: tuple[str, str],
    after: int,
    fold: bool,
    inclusive: bool,
) -> tuple[Any, eventlog.Log, Any]:
    """A household's log of ``rows`` (folded or not), a plan read ``after`` minutes after its
    newest impression, and the in-memory reference's answers to it."""
    imps = [_impression(n, row) for n, row in enumerate(rows)]
    memory = MemoryCapStore(RULES, GAPS, BLOCKS, COMPETING)
    memory.record(imps)
    newest = max((micros(i.ts) for i in imps), default=micros(T0))
    read_at = (newest - micros(T0)) / 60e6 + after
    planner = Planner(RULES, GAPS, BLOCKS, RETENTION_S, COMPETING)
    plan = _plan(planner, user, place, read_at)
    parts = _write(imps)
    if fold:
        cut = eventlog.fold_cut(newest, log_span_s(RULES, GAPS, RETENTION_S), AHEAD_S)
        kept = summaries([*RULES, *OWN], RETENTION_S)
        parts = eventlog.fold(eventlog.Log(parts), cut, kept, household=True)
        times = eventlog.Log(parts).t
        assert (times >= cut * DAY_US).sum() == sum(micros(i.ts) >= cut * DAY_US for i in imps)
    return plan, eventlog.Log(parts), memory._answers(plan, inclusive)


def _assert_equal(plan: Any, mine: Any, theirs: Any) -> None:
    for g, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"group {g} {plan.shape.columns[g]}")


@settings(max_examples=150, deadline=None)
@given(
    rows=impressions,
    user=st.sampled_from(sorted(USERS)),
    place=st.sampled_from(PLACES),
    after=MINUTES,
    fold=st.booleans(),
    inclusive=st.booleans(),
)
def test_the_logs_answers_equal_the_references(
    rows: list[tuple[Any, ...]],
    user: str,
    place: tuple[str, str],
    after: int,
    fold: bool,
    inclusive: bool,
) -> None:
    plan, log, theirs = _case(rows, user, place, after, fold, inclusive)
    _assert_equal(plan, eventlog.answers(plan, log, inclusive), theirs)


@pytest.mark.parametrize("after", [0, 1, 719, 720, 721, 1439, 1440, 1441, 2881])
@pytest.mark.parametrize("fold", [False, True])
def test_every_day_of_the_long_windows_counts_once(after: int, fold: bool) -> None:
    """An impression on each of the 45 days before the newest (at midday, the creatives and
    campaigns taking turns), read at the window's edges: the day counts of a fold and the log
    give the 30-day and lifetime counts of the reference, day by day at their boundaries."""
    days = 45
    campaigns = sorted(CAMPAIGN)
    rows = [
        ("u1", PLACES[k % 2], campaigns[k % 3], ("cr1", "cr2")[k % 2], 60 * (24 * k + 12), False)
        for k in range(days)
    ]
    for user in sorted(USERS):
        plan, log, theirs = _case(rows, user, PLACES[0], after, fold, inclusive=False)
        assert not fold or len(log.day_body)  # the fold kept day counts
        _assert_equal(plan, eventlog.answers(plan, log), theirs)


@settings(max_examples=200, deadline=None)
@given(
    records=st.dictionaries(
        st.tuples(
            st.integers(1, 3),  # family code
            st.integers(0, 2),  # scope code
            st.integers(1, 600),  # target code
            st.one_of(st.just(eventlog.LIFETIME), st.integers(20_000, 20_400)),  # day
        ),
        st.one_of(st.integers(1, 9), st.integers(1, 10**9)),  # count
        max_size=120,
    )
)
def test_day_counts_decode_to_the_records_they_encode(
    records: dict[tuple[int, int, int, int], int],
) -> None:
    """The day-count string (layout 7's runs: code rises, an optional lifetime, days newest
    first, a small count and gap in one byte, a count of 8 or more in a second number) reads
    back as the records it was written from, group by group: codes of one and two bytes,
    gaps past 15 days, counts of 7, 8 and a billion, runs with a lifetime and no day."""
    if not records:
        none = np.zeros(0, dtype=np.int64)
        assert eventlog._day_bytes(none, none, none, none, none) == b""
        return
    keys = np.asarray(list(records), dtype=np.int64)
    counts = np.asarray(list(records.values()), dtype=np.int64)
    family, scope, target, day = keys.T
    data = eventlog._day_bytes(family, scope, target, day, counts)
    log = eventlog.Log(eventlog.Parts(days=data))
    got = []
    for (family, scope), where in log.day_groups.items():
        target, day, count = log.day_records(where)
        rows = zip(target.tolist(), day.tolist(), count.tolist(), strict=True)
        got += [(family, scope, *row) for row in rows]
    assert sorted(got) == sorted((*key, count) for key, count in records.items())
    assert log.day_base == max((k[3] for k in records if k[3] != eventlog.LIFETIME), default=0)
