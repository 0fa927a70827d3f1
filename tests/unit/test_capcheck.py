"""The replay's independent cap check catches injected violations and passes clean histories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from engine.caps.rules import CapsConfig
from engine.replay.capcheck import count_before, violations
from engine.replay.collect import EXPOSURE_COLUMNS

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
RETENTION = 7 * 86_400


def exposure(
    minutes: float,
    request: str,
    user: str = "u1",
    campaign: str = "c1",
    household: str = "h1",
    slot: str = "ott_pause",
    touchpoint: str = "ott",
) -> dict[str, object]:
    return {
        "request_id": request,
        "ts": T0 + timedelta(minutes=minutes),
        "ad_id": f"ad-{campaign}",
        "user_id": user,
        "household_id": household,
        "device_id": f"tv-{household}",
        "touchpoint": touchpoint,
        "slot": slot,
        "creative_id": f"cr-{campaign}",
        "campaign_id": campaign,
        "advertiser_id": "adv",
        "category": "games",
    }


def frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    schema = {c: pl.String for c in EXPOSURE_COLUMNS} | {"ts": pl.Datetime("us", "UTC")}
    return pl.DataFrame(rows, schema=schema)


NO_FEEDBACK = pl.DataFrame(
    schema={
        "ts": pl.Datetime("us", "UTC"),
        "user_id": pl.String,
        "household_id": pl.String,
        "campaign_id": pl.String,
        "advertiser_id": pl.String,
        "negative_kind": pl.String,
    }
)


def caps(**doc: object) -> CapsConfig:
    return CapsConfig.model_validate(doc)


def check(history: list[dict[str, object]], config: CapsConfig, feedback=NO_FEEDBACK):
    h = frame(history)
    return violations(h, h, feedback, config, RETENTION)  # the selections are the history


DAILY3 = {
    "rules": [{"name": "3/day", "scope": "user", "target": "campaign", "window": "24h", "limit": 3}]
}


def test_clean_history_passes() -> None:
    history = [exposure(m, f"r{m}") for m in (0, 60, 120)]
    assert check(history, caps(**DAILY3)).is_empty()


def test_injected_fourth_exposure_is_caught() -> None:
    history = [exposure(m, f"r{m}") for m in (0, 60, 120, 180)]
    found = check(history, caps(**DAILY3))
    assert found.select("rule", "kind", "request_id", "count", "limit").rows() == [
        ("3/day", "cap", "r180", 3, 3)
    ]


def test_window_boundary_is_exclusive() -> None:
    # the first impression is exactly 24 h old at the fourth: out of the window
    history = [exposure(m, f"r{m}") for m in (0, 60, 120, 24 * 60)]
    assert check(history, caps(**DAILY3)).is_empty()
    history[-1] = exposure(24 * 60 - 0.001, "r-last")
    assert len(check(history, caps(**DAILY3))) == 1


def test_household_cap_counts_across_users_and_filters_by_slot() -> None:
    rule = {"scope": "household", "target": "any", "slot": "ott_boot", "window": "24h", "limit": 1}
    history = [
        exposure(0, "a", user="u1", slot="ott_boot"),
        exposure(5, "b", user="u2", slot="ott_pause"),  # other slot: not counted
        exposure(10, "c", user="u2", slot="ott_boot"),  # same household, second boot ad
    ]
    found = check(history, caps(rules=[rule]))
    assert found["request_id"].to_list() == ["c"]


def test_min_gap() -> None:
    gap = {"min_gaps": [{"scope": "household", "target": "campaign", "min_gap": "5m"}]}
    ok = [exposure(0, "a"), exposure(5, "b")]  # exactly 5 minutes: allowed
    assert check(ok, caps(**gap)).is_empty()
    bad = [exposure(0, "a"), exposure(4.9, "b")]
    assert check(bad, caps(**gap))["kind"].to_list() == ["gap"]


def test_long_windows_count_calendar_days_and_lifetime_everything() -> None:
    monthly = {"scope": "user", "target": "campaign", "window": "30d", "limit": 2}
    # days 0 and 29 before, then today: 30 calendar days include day -29
    history = [exposure(-29 * 1440, "a"), exposure(-1440, "b"), exposure(0, "c")]
    assert len(check(history, caps(rules=[monthly]))) == 1
    history[0] = exposure(-30 * 1440, "a")  # 30 days ago: outside the last 30 calendar days
    assert check(history, caps(rules=[monthly])).is_empty()
    lifetime = {"scope": "user", "target": "campaign", "window": "lifetime", "limit": 2}
    assert len(check(history, caps(rules=[lifetime]))) == 1


def test_feedback_block() -> None:
    feedback = pl.DataFrame(
        {
            "ts": [T0 + timedelta(minutes=1)],
            "user_id": ["u1"],
            "household_id": ["h1"],
            "campaign_id": ["c1"],
            "advertiser_id": ["adv"],
            "negative_kind": ["hide"],
        },
        schema=NO_FEEDBACK.schema,
    )
    history = [exposure(0, "a"), exposure(60, "b"), exposure(61, "c", campaign="c2")]
    found = check(history, caps(), feedback)
    assert found.select("kind", "request_id").rows() == [("block", "b")]
    skip = feedback.with_columns(negative_kind=pl.lit("skip"))  # not a blocking kind
    assert check(history, caps(), skip).is_empty()


@pytest.mark.parametrize("inclusive", [True, False], ids=["inclusive", "exclusive"])
def test_count_before_against_brute_force(inclusive: bool) -> None:
    rng = np.random.default_rng(4)
    hk = rng.choice(["a", "b", "c"], 200)
    ht = rng.integers(0, 100, 200)
    qk = rng.choice(["a", "b", "d"], 50)
    qt = rng.integers(0, 100, 50)
    lo = qt - rng.integers(0, 30, 50)
    got = count_before(pl.Series(hk), ht, pl.Series(qk), qt, lo, inclusive)
    lower_ok = (ht[None, :] >= lo[:, None]) if inclusive else (ht[None, :] > lo[:, None])
    want = ((hk[None, :] == qk[:, None]) & lower_ok & (ht[None, :] < qt[:, None])).sum(axis=1)
    assert got.tolist() == want.tolist()
