"""What a household keeps of the impressions folded out of its event log: a pure function of
the rules, applied by every fold (``eventlog.fold``).

The log holds every impression of its *span* (``log_span_s``: the longest window a rule
counts exactly, the longest minimum gap, and the exposure features' 24 hours (the campaign
recency's window too, ``features.exposure.RECENCY_WINDOW``), and a day or two more:
``eventlog.fold_cut``), so those read the log alone. The readers that look further back read
summaries of the folded impressions too:

* a rule over a longer window (up to 180 days) needs its family's day counts for that many
  days (and one more: a read may lag the newest impression by up to a day);
* a lifetime rule needs its family's lifetime count;
* a request's own campaign caps may read the (unfiltered) campaign families over any window
  up to 180 days or lifetime: those keep 181 days and the lifetime;
* the exposure features' 7-day windows (by UTC days) need their families' day counts for 8
  days.

Nothing else is kept, so what a household takes is bounded by its last days of impressions
and by the long readers' days, never by how long it has been seen. (Layout 6 as first shipped
kept every impression of the retention (7 days) and of the 7-day features, and, however old,
the latest impression of each campaign of each user, household and device for an unbounded
recency: a wide-traffic household's log held ~560 impressions after a month, where the
shipped rules count none older than a day exactly.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.caps.rules import CapRule, Family, GapRule
from engine.caps.shape import FEATURE_FAMILIES, RECENCY_S
from features.exposure import BUCKET_S, WINDOWS_S

DAY_S = 86_400
LONG_DAYS = 181  # day counts of the campaign families: own caps up to 180 days
LONG_TTL_S = 400 * DAY_S  # a household with day or lifetime counts lives this long after a write
# the exposure windows counted from the log (the others by days: from the day counts too)
LOG_FEATURES_S = max([RECENCY_S, *(w for k, w in WINDOWS_S.items() if BUCKET_S[k] != DAY_S)])
# the day-bucketed exposure windows' days (and one more: a read may lag the newest impression)
FEATURE_DAYS = max(w // DAY_S for k, w in WINDOWS_S.items() if BUCKET_S[k] == DAY_S) + 1


@dataclass(frozen=True)
class Summary:
    """What the fold keeps of one family: day counts of its last ``days`` days (0: none) and
    the lifetime count."""

    family: Family
    days: int
    life: bool


def own_caps_read(family: Family) -> bool:
    """Whether a request's own campaign caps may read this family (unfiltered campaign)."""
    return family.target == "campaign" and family.touchpoint is None and family.slot is None


def read_targets(rules: Sequence[CapRule], gaps: Sequence[GapRule]) -> frozenset[str]:
    """The targets some reader counts an impression's ad by: the rules', the gaps' (stream
    separation's too), the exposure features' and the campaign (a request's own caps). The
    log records only these of an ad's ids (``eventlog.recorded_columns``)."""
    targets = {f.target for f in FEATURE_FAMILIES} | {"campaign"}
    targets |= {r.target for r in (*rules, *gaps)}
    return frozenset(targets)


def log_span_s(rules: Sequence[CapRule], gaps: Sequence[GapRule], retention_s: int) -> int:
    """How far back from a read the log must hold every impression: the longest rule window
    counted exactly (those up to the retention), the longest minimum gap, the exposure
    windows counted from the log."""
    exact = [r.window_s for r in rules if r.window_s is not None and r.window_s <= retention_s]
    return max([LOG_FEATURES_S, *exact, *(g.min_gap_s for g in gaps)])


def summaries(rules: Sequence[CapRule], retention_s: int) -> list[Summary]:
    """The families whose readers look past the log, and what each keeps (a minimum gap reads
    the log alone)."""
    families = list(FEATURE_FAMILIES)
    for rule in rules:
        if rule.family() not in families:
            families.append(rule.family())
    out = []
    for fam in families:
        mine = [r for r in rules if r.family() == fam]
        longs = [r.window_s for r in mine if r.window_s is not None and r.window_s > retention_s]
        days = max((-(-w // DAY_S) + 1 for w in longs), default=0)
        life = any(r.window_s is None for r in mine)
        if fam in FEATURE_FAMILIES:
            days = max(days, FEATURE_DAYS)
        if own_caps_read(fam):
            days, life = LONG_DAYS, True
        if days or life:
            out.append(Summary(fam, days, life))
    return out
