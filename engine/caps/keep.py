"""What a household keeps of the impressions folded out of its event log: a pure function of
the rules, applied by every fold (``eventlog.fold``).

The log holds every impression of the retention (and a day or two more), so every window up
to the retention, every minimum gap and the exposure features read the log alone. Only the
readers that look further back need summaries of the folded impressions:

* a rule over a longer window (up to 180 days) needs its family's day counts for that many
  days (and one more: a read may lag the newest impression by up to a day);
* a lifetime rule needs its family's lifetime count;
* a request's own campaign caps may read the (unfiltered) campaign families over any window
  up to 180 days or lifetime: those keep 181 days and the lifetime;
* the campaign recency feature (``since_*_campaign_s``) and the minimum gaps need the latest
  time of their family: the fold keeps (pins) the latest folded impression of each of their
  scope ids and targets in the log.

Nothing else is kept, so what a household takes is bounded by its last days of impressions
and by the long readers' days, never by how long it has been seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.caps.rules import CapRule, Family, GapRule
from engine.caps.shape import FEATURE_FAMILIES

DAY_S = 86_400
LONG_DAYS = 181  # day counts of the campaign families: own caps up to 180 days
LONG_TTL_S = 400 * DAY_S  # a household with day or lifetime counts lives this long after a write


@dataclass(frozen=True)
class Summary:
    """What the fold keeps of one family: day counts of its last ``days`` days (0: none),
    the lifetime count, the latest time."""

    family: Family
    days: int
    life: bool
    last: bool


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


def summaries(rules: Sequence[CapRule], gaps: Sequence[GapRule], retention_s: int) -> list[Summary]:
    """The families whose readers look past the log, and what each keeps."""
    families = list(FEATURE_FAMILIES)
    for rule in (*rules, *gaps):
        if rule.family() not in families:
            families.append(rule.family())
    gapped = {g.family() for g in gaps}
    out = []
    for fam in families:
        mine = [r for r in rules if r.family() == fam]
        longs = [r.window_s for r in mine if r.window_s is not None and r.window_s > retention_s]
        days = max((-(-w // DAY_S) + 1 for w in longs), default=0)
        life = any(r.window_s is None for r in mine)
        if own_caps_read(fam):
            days, life = LONG_DAYS, True
        last = fam in gapped or (fam in FEATURE_FAMILIES and fam.target == "campaign")
        if days or life or last:
            out.append(Summary(fam, days, life, last))
    return out
