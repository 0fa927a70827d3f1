"""What each counter family keeps: a pure function of the rules, written once per family.

A counter (``lua.py``) holds impression times, hour counts, day counts and a lifetime count.
Its family's *readers* decide how much of each it must keep so that every answer stays exact
for reads no earlier than ``max_ahead`` before the family's newest impression (the live case):

* a rule of limit ``L`` over an exact window ``W`` (up to the retention) needs the ``L`` latest
  times, and only for ``W``: ``k_latest >= L``, none older than ``W`` (plus ``max_ahead``);
* a minimum gap needs the latest time within the gap;
* the exposure features need every time of the last hour (``1h`` is a sliding window), hour
  counts for ``24h`` and day counts for ``7d`` (``features.exposure.BUCKET_S``), and, for the
  campaign families, the latest time whatever its age (``since_*_campaign_s``);
* a long rule (a window past the retention, or lifetime) needs day counts for its window (or
  the lifetime count); the campaign families keep 181 days and the lifetime for the requests'
  own caps, and their ``campaign_times`` latest times for own caps over exact windows.

Nothing else is kept, so a write costs the same whatever the history: the times a family
keeps are bounded by its limits and by the traffic of its last hour, its hour and day counts by
their windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.caps.rules import CapRule, Family, GapRule
from engine.caps.shape import FEATURE_FAMILIES, SUPERSET_TARGETS

US = 1_000_000
DAY_S = 86_400
LONG_DAYS = 181  # day counts of the campaign families: own caps up to 180 days
LONG_TTL_S = 400 * DAY_S  # families with day or lifetime counts live this long after a write
FEATURE_DAYS = 8  # the 7d feature reads the day of t and the 6 before it; t may lag a day


@dataclass(frozen=True)
class Keep:
    """One family's policy (the RECORD script's numbers, in this order).

    Attributes:
        k_latest: keep this many latest times at or before the newest minus ``max_ahead``.
        ahead_us: ``max_ahead``: every time after the newest minus it is kept.
        all_us: keep every time after the newest minus this (>= ``ahead_us``).
        max_us: drop every time at or before the newest minus this (0: none by age).
        since: keep the latest time before the newest minus ``max_ahead`` whatever its age.
        days: day counts kept (the newest day's and the days before: 0 none).
        life: keep the lifetime count.
        hours: hour counts kept (0 none).
        ttl_s: the family's hash lives this long after a write.
    """

    k_latest: int
    ahead_us: int
    all_us: int
    max_us: int
    since: bool
    days: int
    life: bool
    hours: int
    ttl_s: int

    def numbers(self) -> list[int]:
        """The policy as the RECORD script reads it."""
        return [
            self.k_latest,
            self.ahead_us,
            self.all_us,
            self.max_us,
            int(self.since),
            self.days,
            int(self.life),
            self.hours,
            self.ttl_s,
        ]


def long_families(rules: Sequence[CapRule], retention_s: int) -> set[Family]:
    """Families that keep day and lifetime counts: those a long-window rule reads, the
    campaign families (campaigns may bring their own long caps with a request), and, for the
    campaign and advertiser targets, the user and household families whenever any family of
    that target is long (they are the supersets reads narrow the others with, so they must
    live at least as long)."""
    out = {r.family() for r in rules if r.window_s is None or r.window_s > retention_s}
    out |= {Family(scope=s, target="campaign") for s in ("user", "household", "device")}
    for target in SUPERSET_TARGETS:
        if any(f.target == target for f in out):
            out |= {Family(scope=s, target=target) for s in ("user", "household")}
    return out


def own_caps_read(family: Family) -> bool:
    """Whether a request's own campaign caps may read this family (unfiltered campaign)."""
    return family.target == "campaign" and family.touchpoint is None and family.slot is None


def keep_policy(
    family: Family,
    rules: Sequence[CapRule],
    gaps: Sequence[GapRule],
    retention_s: int,
    ahead_s: int,
    campaign_times: int,
) -> Keep:
    """What ``family`` keeps for every reader the rules, the features and own caps give it."""
    feature = family in FEATURE_FAMILIES
    mine = [r for r in rules if r.family() == family]
    exact = [r for r in mine if r.window_s is not None and r.window_s <= retention_s]
    k_latest = max((r.limit for r in exact), default=0)
    windows = [int(r.window_s or 0) for r in exact]
    gap_windows = [g.min_gap_s for g in gaps if g.family() == family]
    if gap_windows:
        k_latest, windows = max(k_latest, 1), windows + gap_windows
    if own_caps_read(family):
        k_latest, windows = max(k_latest, campaign_times), windows + [retention_s]
    if feature:
        windows.append(3_600)
    # day windows read the days from t's back; t may lag the newest by up to a day: one more
    longs = [r.window_s for r in mine if r.window_s is not None and r.window_s > retention_s]
    days = max((-(-w // DAY_S) for w in longs), default=0)
    if own_caps_read(family):
        days = LONG_DAYS - 1
    elif feature:
        days = max(days, FEATURE_DAYS - 1)
    is_long = family in long_families(list(rules), retention_s)
    return Keep(
        k_latest=k_latest,
        ahead_us=ahead_s * US,
        all_us=(ahead_s + (3_600 if feature else 0)) * US,
        max_us=(max(windows, default=0) + ahead_s) * US,
        since=feature and family.target == "campaign",
        days=days + 1 if days else 0,
        life=is_long,
        hours=24 + -(-ahead_s // 3_600) if feature else 0,
        ttl_s=LONG_TTL_S if is_long else retention_s + ahead_s + 3_600,
    )
