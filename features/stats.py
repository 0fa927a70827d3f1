"""Smoothed historical engagement rates: fitted offline, saved, then only applied.

For a key (an ad, a campaign, an advertiser, or a category x slot pair; the slot implies the
touchpoint) the rate is ``(engaged + m * prior) / (impressions + m)`` over shown rows with a known
outcome, where ``prior`` is the global engagement rate and ``m`` the smoothing strength. A key
never seen in fitting gets the prior.

Applying is the same expression offline and online: the key column is cast to an ``Enum`` of the
fitted vocabulary (a hash lookup inside polars) and the rate gathered by the resulting code, so a
request never joins against the fitted tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from engine.errors import InvalidArgument
from features.schema import SLOT, SLOTS

STATS_KEYS: dict[str, pl.Expr] = {
    "ad": pl.col("ad_id"),
    "campaign": pl.col("campaign_id"),
    "advertiser": pl.col("advertiser_id"),
    "category_slot": pl.concat_str(
        pl.col("category").fill_null("~"), pl.lit("|"), pl.col("slot").cast(pl.String)
    ),
}
FILE_NAME = "feature_stats.json"


@dataclass(frozen=True)
class KeyStats:
    """Fitted rates of one key: vocabulary, engaged and impression counts."""

    keys: list[str]
    engaged: list[float]
    impressions: list[int]


@dataclass(frozen=True)
class EngagementStats:
    """Smoothed engagement rates per key.

    Attributes:
        prior: global engagement rate of shown rows in the fitting window.
        strength: smoothing strength ``m``, in impressions.
        tables: fitted counts per key name (see ``STATS_KEYS``).
    """

    prior: float
    strength: float
    tables: dict[str, KeyStats]

    @classmethod
    def fit(cls, log: pl.LazyFrame | pl.DataFrame, strength: float = 50.0) -> EngagementStats:
        """Fit on a conformed log; uses shown rows whose ``engaged`` is known."""
        shown = log.lazy().filter(pl.col("shown") & pl.col("engaged").is_not_null())
        totals = shown.select(pl.len(), pl.col("engaged").sum()).collect().row(0)
        n, clicks = int(totals[0]), float(totals[1] or 0)
        prior = clicks / n if n else 0.0
        frames = pl.collect_all(
            [
                shown.group_by(expr.alias("key"))
                .agg(pl.col("engaged").sum().cast(pl.Float64).alias("e"), pl.len().alias("n"))
                .drop_nulls("key")
                .sort("key")
                for expr in STATS_KEYS.values()
            ]
        )
        tables = {
            name: KeyStats(f["key"].to_list(), f["e"].to_list(), f["n"].to_list())
            for name, f in zip(STATS_KEYS, frames, strict=True)
        }
        return cls(prior=prior, strength=strength, tables=tables)

    def rate_expr(self, name: str) -> pl.Expr:
        """Smoothed rate for key ``name`` of each row, as one expression."""
        table = self.tables[name]
        e = pl.Series(table.engaged, dtype=pl.Float64)
        n = pl.Series(table.impressions, dtype=pl.Float64)
        rates = (e + self.strength * self.prior) / (n + self.strength)
        return _lookup(name, table.keys, rates).fill_null(self.prior)

    def impressions_expr(self, name: str) -> pl.Expr:
        """Number of fitted impressions of the row's key (0 when unseen)."""
        table = self.tables[name]
        n = pl.Series(table.impressions, dtype=pl.Float64)
        return _lookup(name, table.keys, n).fill_null(0.0)

    def save(self, directory: Path) -> Path:
        """Write ``feature_stats.json`` into ``directory``; return its path."""
        path = directory / FILE_NAME
        doc = {
            "prior": self.prior,
            "strength": self.strength,
            "tables": {k: vars(t) for k, t in self.tables.items()},
        }
        path.write_text(json.dumps(doc))
        return path

    @classmethod
    def load(cls, directory: Path) -> EngagementStats:
        """Read ``feature_stats.json`` from ``directory``.

        Raises:
            InvalidArgument: the file is missing, unreadable or lacks a key table.
        """
        path = directory / FILE_NAME
        try:
            doc = json.loads(path.read_text())
            tables = {k: KeyStats(**doc["tables"][k]) for k in STATS_KEYS}
            return cls(float(doc["prior"]), float(doc["strength"]), tables)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(str(path), f"unreadable feature statistics ({exc})") from exc

    @classmethod
    def empty(cls, prior: float = 0.0, strength: float = 50.0) -> EngagementStats:
        """Statistics with no history: every key gets ``prior``."""
        return cls(prior, strength, {k: KeyStats([], [], []) for k in STATS_KEYS})


def _lookup(name: str, keys: list[str], values: pl.Series) -> pl.Expr:
    """Each row's value of its key (``values[i]`` belongs to ``keys[i]``); null when unseen.

    The key is cast to an ``Enum`` of the fitted keys and the value gathered by its code. A
    category x slot key is looked up by the pair of codes (category in the fitted categories,
    slot in the schema's slots) instead of by a built string: the same answer, no string built.
    """
    if name != "category_slot":
        code = STATS_KEYS[name].cast(pl.Enum(keys), strict=False).to_physical()
        return pl.lit(values).gather(code)
    pairs = [(k[:cut], k[cut + 1 :], i) for i, k in enumerate(keys) if (cut := k.rfind("|")) >= 0]
    fitted = [(c, SLOTS.index(s), i) for c, s, i in pairs if s in SLOTS]
    categories = list(dict.fromkeys(c for c, _, _ in fitted))
    at = {c: j for j, c in enumerate(categories)}
    flat = [None] * (len(categories) * len(SLOTS))
    for c, s, i in fitted:
        flat[at[c] * len(SLOTS) + s] = values[i]
    category = pl.col("category")
    if "~" in at:  # the fitted key of a null category
        category = category.fill_null("~")
    category = category.cast(pl.Enum(categories), strict=False)
    slot = pl.col("slot").cast(SLOT, strict=False)
    code = category.to_physical().cast(pl.UInt32) * len(SLOTS) + slot.to_physical()
    return pl.lit(pl.Series(flat, dtype=values.dtype)).gather(code)
