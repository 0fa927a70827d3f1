"""Off-policy estimators: hand-computed values on a tiny log, and unbiasedness on synthetic ones."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from engine.errors import InvalidArgument
from engine.ope import (
    Z95,
    Contributions,
    LoggedRows,
    Moments,
    doubly_robust,
    ips,
    on_policy,
    snips,
)
from engine.synth.generator import generate
from engine.synth.params import WorldParams

# Three requests. Request 0: rows a (shown, p=.25, clicked), b (unshown). Request 1: c (shown,
# p=.25, no click), d (unshown, p=.75). Request 2: e (shown, p=1, no click). The target shows
# a, d and e.
GROUP = np.array([0, 0, 1, 1, 2])
SHOWN = np.array([True, False, True, False, True])
PROPENSITY = np.array([0.25, 0.75, 0.25, 0.75, 1.0])
REWARD = np.array([1.0, np.nan, 0.0, np.nan, 0.0])
TARGET = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
PREDICTED = np.array([0.6, 0.2, 0.1, 0.3, 0.5])


@pytest.fixture
def rows() -> LoggedRows:
    return LoggedRows(GROUP, SHOWN, PROPENSITY)


def test_ips_by_hand(rows: LoggedRows) -> None:
    # per request: 1 * 1 / .25 = 4, 0, 0 -> mean 4/3; sd (ddof 1) sqrt(16/3), se sqrt(16/9)
    e = ips(rows, TARGET, REWARD)
    assert e.value == pytest.approx(4 / 3)
    assert e.stderr == pytest.approx(4 / 3)
    assert e.low == pytest.approx(4 / 3 - Z95 * 4 / 3)
    assert (e.requests, e.matched) == (3, 2)  # a and e: shown by both policies
    assert e.ess == pytest.approx(25 / 17)  # weights 4 and 1: (4+1)^2 / (16+1)


def test_snips_by_hand(rows: LoggedRows) -> None:
    # weighted reward 4, weights 4 + 1 = 5: 0.8 per shown ad, times 1 ad per request
    assert snips(rows, TARGET, REWARD).value == pytest.approx(0.8)


def test_doubly_robust_by_hand(rows: LoggedRows) -> None:
    # request 0: .6 + 4 (1 - .6) = 2.2; request 1: .3; request 2: .5 + 1 (0 - .5) = 0
    assert doubly_robust(rows, TARGET, REWARD, PREDICTED).value == pytest.approx(2.5 / 3)


def test_on_policy_by_hand(rows: LoggedRows) -> None:
    assert on_policy(rows, REWARD).value == pytest.approx(1 / 3)


def test_chunks_concatenate_to_the_whole(rows: LoggedRows) -> None:
    whole = Contributions.of(rows, TARGET, REWARD, PREDICTED)
    first = LoggedRows(GROUP[:2], SHOWN[:2], PROPENSITY[:2])
    rest = LoggedRows(GROUP[2:] - 1, SHOWN[2:], PROPENSITY[2:])
    parts = Contributions.concat(
        [
            Contributions.of(first, TARGET[:2], REWARD[:2], PREDICTED[:2]),
            Contributions.of(rest, TARGET[2:], REWARD[2:], PREDICTED[2:]),
        ]
    )
    for est in ("ips_estimate", "snips_estimate", "dr_estimate", "on_policy"):
        assert getattr(parts, est)() == getattr(whole, est)()


def test_shown_rows_need_propensities() -> None:
    with pytest.raises(InvalidArgument) as err:
        LoggedRows(GROUP, SHOWN, np.array([0.25, np.nan, np.nan, 0.5, 1.0]))
    assert err.value.field == "propensity"
    assert err.value.problem.startswith("1 of 3 shown row(s) without a propensity")
    assert "doubly robust" in err.value.problem
    # an unshown row may lack one: nothing divides by it
    LoggedRows(GROUP, SHOWN, np.array([0.25, np.nan, 0.25, np.nan, 1.0]))


def _highest_bid(log: pl.DataFrame) -> np.ndarray:
    """A deterministic target: the highest bid of each request."""
    best = log.select(
        pl.int_range(pl.len()).over("request_id") == pl.col("bid").arg_max().over("request_id")
    )
    return best.to_series().to_numpy().astype(np.float64)


def test_unbiased_on_synthetic_logs() -> None:
    """The true value of a fixed policy lies in the 95% interval in most of 8 seeds, for IPS
    and for doubly robust with a deliberately wrong (constant) reward model."""
    covered = {"ips": 0, "dr": 0}
    for seed in range(8):
        log = generate(WorldParams(rows=30_000, seed=100 + seed)).log
        group = log.select(pl.col("request_id").rle_id()).to_series().to_numpy()
        rows = LoggedRows(group, log["shown"].to_numpy(), log["propensity"].to_numpy())
        target = _highest_bid(log)
        reward = log["engaged"].cast(pl.Float64).to_numpy()
        c = Contributions.of(
            rows, target, reward, np.full(len(log), 0.05), log["true_p_engaged"].to_numpy()
        )
        truth = c.true_value()
        covered["ips"] += c.ips_estimate().covers(truth)
        covered["dr"] += c.dr_estimate().covers(truth)
    assert covered["ips"] >= 6, covered
    assert covered["dr"] >= 6, covered


def test_open_bandit_bts_click_rate_from_random_logs(shared_data) -> None:
    """The standard check on real data: estimated from the uniform-random logs, the click rate
    of Bernoulli Thompson Sampling lands inside the interval of the rate BTS got itself."""
    from engine.logs.open_bandit import bts_check

    obd = shared_data / "open_bandit"
    doc = bts_check(obd / "random_men" / "men.csv", obd / "bts_men" / "men.csv")
    assert doc["random_rows"] == 10_000 and doc["bts_on_policy"]["rows"] == 10_000
    assert doc["bts_on_policy"]["value"] > doc["random_click_rate"]  # BTS learned something
    for name in ("ips", "snips"):
        assert doc["estimates"][name]["inside_bts_interval"], doc["estimates"][name]


def test_sums_added_chunk_by_chunk_give_the_whole_estimates() -> None:
    """A streaming caller keeps ``Moments`` only: added up over chunks they give the
    estimates of all the contributions at once, to rounding (a random log of 2,000
    requests at most, cut into uneven chunks)."""
    rng = np.random.default_rng(5)
    group = np.sort(rng.integers(0, 2_000, 9_000))
    group = np.unique(group, return_inverse=True)[1]
    shown = rng.random(len(group)) < 0.4
    propensity = rng.uniform(0.05, 1.0, len(group))
    target = (rng.random(len(group)) < 0.3).astype(float)
    reward, predicted = rng.random(len(group)), rng.random(len(group))
    truth = rng.random(len(group))
    whole = Contributions.of(LoggedRows(group, shown, propensity), target, reward, predicted, truth)
    total = Moments()
    n = int(group[-1]) + 1
    cuts = [0, 1, 700, 701, 1_500, n]  # requests per chunk: 1, 699, 1, 799, the rest
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        rows = (group >= lo) & (group < hi)
        part = LoggedRows(group[rows] - lo, shown[rows], propensity[rows])
        total += Contributions.of(
            part, target[rows], reward[rows], predicted[rows], truth[rows]
        ).moments()
    assert total.requests == whole.requests == n
    for est in ("ips_estimate", "snips_estimate", "dr_estimate", "on_policy"):
        a, b = getattr(total, est)(), getattr(whole, est)()
        for name in ("value", "low", "high", "stderr", "ess"):
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-9), (est, name)
        assert (a.requests, a.matched) == (b.requests, b.matched)
    assert total.true_value() == pytest.approx(whole.true_value(), rel=1e-12)


def test_equal_contributions_have_no_spread() -> None:
    """Rounding in the sums of squares must not turn zero spread into NaN."""
    n = 1_000
    rows = LoggedRows(np.arange(n), np.ones(n, dtype=bool), np.full(n, 0.1))
    e = Contributions.of(rows, np.ones(n), np.full(n, 0.3)).ips_estimate()
    assert e.value == pytest.approx(3.0) and e.stderr == pytest.approx(0.0, abs=1e-12)
    assert e.low == pytest.approx(e.high)
