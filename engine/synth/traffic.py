"""Ad opportunities over time and the candidate ads the ad server sends with each."""

from __future__ import annotations

import numpy as np
import polars as pl

from engine.synth.params import TOUCHPOINT_FORMATS, WorldParams
from engine.synth.world import Population, choice

_US_PER_S = 1_000_000

# Scene mix by touchpoint for households of more than one person (singles are never "family").
_SCENES: dict[str, dict[str, float]] = {
    "ai_voice": {"personal": 0.4, "family": 0.4, "life": 0.2},
    "ott": {"personal": 0.3, "family": 0.7},
    "iot": {"life": 0.7, "family": 0.3},
    "mobile": {"personal": 1.0},
}
_RATINGS: dict[str, dict[str, float]] = {
    "family": {"kids": 0.3, "general": 0.6, "teen": 0.1},
    "personal": {"general": 0.5, "teen": 0.3, "mature": 0.2},
    "life": {"kids": 0.1, "general": 0.8, "teen": 0.1},
}


def build_requests(
    params: WorldParams, pop: Population, rng: np.random.Generator, n: int
) -> pl.DataFrame:
    """``n`` ad opportunities sorted by time, with ids in time order.

    Users are drawn in proportion to their activity; the device follows the touchpoint (the
    household's speaker, TV or an IoT screen, or the user's phone); the local hour follows the
    touchpoint's daily rhythm and ``ts`` is that local time converted to UTC.
    """
    users = pop.users
    touchpoint = choice(rng, params.touchpoint_mix, n)
    rate = users["activity_rate"].to_numpy()
    u = rng.choice(len(users), size=n, p=rate / rate.sum())
    hour = np.empty(n, dtype=np.int64)
    slot = np.empty(n, dtype=object)
    scene = np.empty(n, dtype=object)
    size = users["household_size"].to_numpy()[u]
    for tp in np.unique(touchpoint):
        m = touchpoint == tp
        k = int(m.sum())
        w = np.asarray(params.hour_weights[tp], dtype=float)
        hour[m] = rng.choice(24, size=k, p=w / w.sum())
        slot[m] = choice(rng, params.slot_mix[tp], k)
        scene[m] = choice(rng, _SCENES[tp], k)
    scene[(scene == "family") & (size == 1)] = "personal"
    rating = np.empty(n, dtype=object)
    for sc, mix in _RATINGS.items():
        m = scene == sc
        rating[m] = choice(rng, mix, int(m.sum()))
    day = rng.integers(0, params.days, size=n)
    within_hour_us = rng.integers(0, 3600 * _US_PER_S, size=n)
    offset_us = (users["utc_offset_h"].to_numpy()[u] * 3600 * _US_PER_S).astype(np.int64)
    start_us = int(params.start.timestamp() * _US_PER_S)
    local_us = start_us + day * 86_400 * _US_PER_S + hour * 3600 * _US_PER_S + within_hour_us
    iot_pick = rng.integers(0, 2, size=n) % users["n_iot"].to_numpy()[u]
    frame = pl.DataFrame(
        {
            "ts_us": local_us - offset_us,
            "u": u,
            "touchpoint": touchpoint.astype(str),
            "slot": slot.astype(str),
            "scene": scene.astype(str),
            "local_hour": hour.astype(np.int8),
            "content_rating": rating.astype(str),
            "iot_pick": iot_pick,
        }
    ).sort("ts_us", maintain_order=True)
    return _attach_people(frame, users)


def _attach_people(frame: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    tp = pl.col("touchpoint")
    device = (
        pl.when(tp == "mobile")
        .then(pl.col("phone_id"))
        .when(tp == "ott")
        .then(pl.col("tv_id"))
        .when(tp == "ai_voice")
        .then(pl.col("speaker_id"))
        .otherwise(
            pl.concat_str(
                pl.lit("iot"),
                pl.col("household_id").str.slice(1),
                pl.lit("_"),
                pl.col("iot_pick").cast(pl.String),
            )
        )
    )
    return (
        frame.with_row_index("r")
        .join(users, on="u", how="left", maintain_order="left")
        .select(
            pl.concat_str(pl.lit("r"), pl.col("r").cast(pl.String).str.zfill(9)).alias(
                "request_id"
            ),
            pl.from_epoch("ts_us", time_unit="us").dt.replace_time_zone("UTC").alias("ts"),
            "user_id",
            "household_id",
            device.alias("device_id"),
            "touchpoint",
            "slot",
            "scene",
            "local_hour",
            "user_interests",
            "age_band",
            "activity_level",
            "content_rating",
        )
    )


def build_candidates(
    params: WorldParams, requests: pl.DataFrame, ads: pl.DataFrame, rng: np.random.Generator
) -> pl.DataFrame:
    """Candidate rows: for each request, distinct ads of formats its touchpoint can play.

    Draws ``candidates_per_request`` ads per request from the touchpoint's pool with
    replacement, then drops repeats of an ad within a request (so counts vary a little).
    """
    lo, hi = params.candidates_per_request
    k = rng.integers(lo, hi + 1, size=len(requests))
    req_idx = np.repeat(np.arange(len(requests)), k)
    tps = requests["touchpoint"].to_numpy()[req_idx]
    ad_idx = np.empty(len(req_idx), dtype=np.int64)
    fmt = ads["format"].to_numpy()
    for tp, formats in TOUCHPOINT_FORMATS.items():
        pool = np.flatnonzero(np.isin(fmt, formats))
        m = tps == tp
        ad_idx[m] = pool[rng.integers(0, len(pool), size=int(m.sum()))]
    pairs = pl.DataFrame({"req": req_idx, "ad": ad_idx}).unique(maintain_order=True)
    return pl.concat(
        [
            requests[pairs["req"].to_numpy()],
            ads[pairs["ad"].to_numpy()],
        ],
        how="horizontal",
    )
