"""The standard check of off-policy estimators on the Open Bandit Dataset.

ZOZOTOWN logged one week of recommendations twice: with a uniform random policy and with
Bernoulli Thompson Sampling (BTS). Estimating, from the random logs alone, the click rate BTS
would get, and comparing it with the click rate BTS actually got in its own logs (with that
rate's 95% interval), shows whether the estimators work on real data.

BTS recommends without looking at the user, so its probability of showing item ``a`` at
position ``k`` is the same for every user; over the week, that probability averaged over time
is the share of its position-``k`` impressions that went to ``a`` in its own logs. Each random
log row then gets that probability as the target policy's, and IPS / self-normalised IPS
estimate the click rate per impression (one item per position, so one ad per row's request).
Both logs are read through the shipped ``open_bandit`` import mapping.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from engine.logs.importer import import_log
from engine.logs.mapping import load_mapping
from engine.ope import Z95, Contributions, LoggedRows


def _imported(csv: Path, work: Path) -> pl.DataFrame:
    out = work / f"{csv.parent.name}.parquet"
    import_log(load_mapping("open_bandit"), [csv], out)
    return pl.read_parquet(out)


def bts_check(random_csv: Path, bts_csv: Path) -> dict[str, Any]:
    """The random logs' estimates of BTS's click rate next to BTS's own rate and interval.

    Raises:
        InvalidArgument: an input the mapping cannot read.
    """
    with tempfile.TemporaryDirectory(prefix="admatch-obd-") as work:
        random = _imported(random_csv, Path(work))
        bts = _imported(bts_csv, Path(work))
    share = (
        bts.group_by("ad_id", "position")
        .len()
        .with_columns((pl.col("len") / pl.col("len").sum().over("position")).alias("target"))
        .drop("len")
    )
    rows = random.join(share, on=["ad_id", "position"], how="left").with_columns(
        pl.col("target").fill_null(0.0)
    )
    logged = LoggedRows(
        np.arange(len(rows)), np.ones(len(rows), dtype=bool), rows["propensity"].to_numpy()
    )
    clicks = rows["engaged"].cast(pl.Float64).to_numpy()
    c = Contributions.of(logged, rows["target"].to_numpy(), clicks)
    own = bts["engaged"].cast(pl.Float64).to_numpy()
    rate, se = float(own.mean()), float(own.std(ddof=1) / np.sqrt(len(own)))
    on_policy = {"value": rate, "low": rate - Z95 * se, "high": rate + Z95 * se, "rows": len(own)}
    estimates = {"ips": c.ips_estimate(), "snips": c.snips_estimate(ads_per_request=1.0)}
    return {
        "random_rows": len(rows),
        "random_click_rate": float(clicks.mean()),
        "bts_on_policy": on_policy,
        "estimates": {
            name: {
                **e.to_dict(),
                "inside_bts_interval": on_policy["low"] <= e.value <= on_policy["high"],
            }
            for name, e in estimates.items()
        },
    }
