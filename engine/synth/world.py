"""The population and the ad inventory of the synthetic world (vectorised, seeded)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from engine.synth.params import DURATIONS_S, TIERS_BY_CATEGORY, WorldParams
from features.schema import ACTIVITY_LEVELS, AGE_BANDS


@dataclass(frozen=True)
class Population:
    """Users, households and their devices, as parallel arrays indexed by user.

    Attributes:
        users: one row per user: user_id, household_id, phone_id, tv_id, speaker_id, iot_ids
            (list), household_size, utc_offset_h, age_band, activity_level, user_interests
            (list, strongest first), activity_rate.
    """

    users: pl.DataFrame


def _id_expr(prefix: str, col: str, width: int) -> pl.Expr:
    return pl.concat_str(pl.lit(prefix), pl.col(col).cast(pl.String).str.zfill(width))


def choice(rng: np.random.Generator, mix: dict[str, float], n: int) -> np.ndarray:
    """``n`` draws of the mix's keys, with probabilities proportional to its values."""
    keys = list(mix)
    p = np.asarray([mix[k] for k in keys], dtype=float)
    return np.asarray(keys, dtype=object)[rng.choice(len(keys), size=n, p=p / p.sum())]


def build_population(params: WorldParams, rng: np.random.Generator) -> Population:
    """Households of 1-5 users sharing a TV, a smart speaker and 1-2 IoT screens; a phone each."""
    n_households = max(20, params.rows // params.rows_per_household)
    sizes_p = np.asarray(params.household_sizes, dtype=float)
    sizes = rng.choice(np.arange(1, len(sizes_p) + 1), size=n_households, p=sizes_p / sizes_p.sum())
    n_iot = rng.integers(1, 3, size=n_households)
    offsets = choice(rng, params.utc_offsets_h, n_households).astype(float)
    hh_of_user = np.repeat(np.arange(n_households), sizes)
    n_users = len(hh_of_user)
    activity = choice(rng, params.activity_mix, n_users)
    age = np.asarray(AGE_BANDS, dtype=object)[
        rng.choice(len(AGE_BANDS), size=n_users, p=[0.12, 0.16, 0.2, 0.18, 0.14, 0.11, 0.09])
    ]
    interests = _ranked_interests(params, rng, n_users)
    users = pl.DataFrame(
        {
            "u": np.arange(n_users),
            "h": hh_of_user,
            "household_size": sizes[hh_of_user].astype(np.int16),
            "n_iot": n_iot[hh_of_user],
            "utc_offset_h": offsets[hh_of_user],
            "age_band": age.astype(str),
            "activity_level": activity.astype(str),
            "user_interests": interests,
        }
    ).with_columns(
        _id_expr("u", "u", 6).alias("user_id"),
        _id_expr("h", "h", 6).alias("household_id"),
        _id_expr("phone", "u", 6).alias("phone_id"),
        _id_expr("tv", "h", 6).alias("tv_id"),
        _id_expr("spk", "h", 6).alias("speaker_id"),
        pl.col("activity_level")
        .replace_strict(params.activity_rate, return_dtype=pl.Float64)
        .alias("activity_rate"),
    )
    assert set(users["activity_level"].unique()) <= set(ACTIVITY_LEVELS)
    return Population(users)


def _ranked_interests(params: WorldParams, rng: np.random.Generator, n: int) -> list[list[str]]:
    """Three distinct categories per user, strongest first (Gumbel top-k over popularity)."""
    cats = np.asarray(params.categories, dtype=object)
    popularity = np.linspace(1.5, 0.5, len(cats))
    keys = np.log(popularity)[None, :] + rng.gumbel(size=(n, len(cats)))
    top = np.argsort(-keys, axis=1)[:, :3]
    return cats[top].tolist()


def build_inventory(params: WorldParams, rng: np.random.Generator) -> pl.DataFrame:
    """Advertisers (some sharing a category), their campaigns and ads.

    Returns:
        One row per ad: ad_id, creative_id, campaign_id, advertiser_id, category, format,
        duration_s, bid, pricing, suitability_tier and the latent ``quality`` (truth only).
    """
    n_adv = params.n_advertisers
    adv_cat = np.asarray(params.categories, dtype=object)[
        rng.integers(0, len(params.categories), size=n_adv)
    ]
    lo, hi = params.campaigns_per_advertiser
    camps_per = rng.integers(lo, hi + 1, size=n_adv)
    camp_adv = np.repeat(np.arange(n_adv), camps_per)
    n_camp = len(camp_adv)
    pricing = choice(rng, params.pricing_mix, n_camp)
    median = np.asarray([params.bid_median[p] for p in pricing])
    bid = np.round(median * np.exp(params.bid_sigma * rng.standard_normal(n_camp)), 4)
    lo, hi = params.ads_per_campaign
    ads_per = rng.integers(lo, hi + 1, size=n_camp)
    ad_camp = np.repeat(np.arange(n_camp), ads_per)
    n_ads = len(ad_camp)
    fmt = choice(rng, params.format_mix, n_ads)
    duration = np.empty(n_ads)
    for f, (values, probs) in DURATIONS_S.items():
        mask = fmt == f
        duration[mask] = rng.choice(values, size=int(mask.sum()), p=probs)
    category = adv_cat[camp_adv[ad_camp]]
    tier = np.asarray([TIERS_BY_CATEGORY.get(c, "general") for c in category], dtype=object)
    kids_safe = (tier == "general") & (rng.random(n_ads) < 0.4)
    tier[kids_safe] = "kids"
    # Some creatives are reused by another ad of the same advertiser.
    creative = np.arange(n_ads)
    reuse = rng.random(n_ads) < params.shared_creative_share
    adv_of_ad = camp_adv[ad_camp]
    _, first_of_adv = np.unique(adv_of_ad, return_index=True)
    first_idx = first_of_adv[adv_of_ad]
    creative = np.where(reuse & (fmt == fmt[first_idx]), first_idx, creative)
    return pl.DataFrame(
        {
            "a": np.arange(n_ads),
            "cr": creative,
            "c": ad_camp,
            "v": adv_of_ad,
            "category": category.astype(str),
            "format": fmt.astype(str),
            "duration_s": duration,
            "bid": bid[ad_camp],
            "pricing": pricing[ad_camp].astype(str),
            "suitability_tier": tier.astype(str),
            "quality": rng.normal(0, params.truth.ad_quality_sd, size=n_ads),
        }
    ).select(
        _id_expr("ad", "a", 5).alias("ad_id"),
        _id_expr("cr", "cr", 5).alias("creative_id"),
        _id_expr("cmp", "c", 4).alias("campaign_id"),
        _id_expr("adv", "v", 3).alias("advertiser_id"),
        pl.exclude("a", "cr", "c", "v"),
    )
