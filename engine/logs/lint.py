"""Warnings about a log that is valid but will behave badly: one id value standing for much of
the traffic, or times too coarse to order it. ``import-log`` and ``summary`` print them.

A user, household or device id is the unit the caps count and the exposure features follow, and
the replay keeps a user's requests in order: requests of one household or device never share a
batching pass (each must see the caps the previous one left). An id value that covers a large
share of the requests (an anonymous-device placeholder, a device-type code mapped to
``device_id``) makes one "person" of many, caps them together, and shrinks the passes to about
one request: a replay or a tuning run several times slower.
"""

from __future__ import annotations

import polars as pl

ID_SHARE = 0.10  # warn when one id value has at least this share of the requests ...
MIN_REQUESTS = 50  # ... of a log with at least this many requests
TIME_SHARE = 0.05  # warn when the distinct times are fewer than this share of the requests


def log_warnings(log: pl.LazyFrame | pl.DataFrame) -> list[str]:
    """What in a conformed log will mislead the caps and features or slow a replay."""
    heads = (  # one row per request, read once
        log.lazy()
        .group_by("request_id")
        .agg(pl.col("user_id", "household_id", "device_id", "ts").first())
        .collect()
    )
    requests = len(heads)
    if requests < MIN_REQUESTS:
        return []
    out = []
    for name in ("user_id", "household_id", "device_id"):
        counts = heads[name].drop_nulls().value_counts(sort=True)
        if counts.is_empty():
            continue
        value, n = counts.row(0)
        share = n / requests
        if share >= ID_SHARE:
            out.append(
                f"{name}: one value ({value!r}) is on {share:.0%} of the requests ({n:,}). "
                "Caps and exposure features treat them as one person, and a replay cuts its "
                "batching passes wherever an id repeats (small passes: several times slower). If "
                f"the value is a placeholder or a code, map {name} to a finer id (e.g. a device "
                "id with an IP or a model) or leave it out for those rows."
            )
    times = heads["ts"].n_unique()
    if times < TIME_SHARE * requests:
        out.append(
            f"ts: {requests:,} requests share {times:,} distinct times. Requests of one time "
            "are replayed in file order, and caps, gaps and recency cannot tell them apart: "
            "a finer time column, if the source has one, keeps their order."
        )
    return out
