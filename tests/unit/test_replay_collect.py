"""What a replay keeps per chunk: frames gathered into blocks give back every row."""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from engine.replay.collect import Frames


def chunks(n: int) -> list[pl.DataFrame]:
    return [
        pl.DataFrame({"user_id": [f"u{k % 3}", f"u{(k + 1) % 3}"], "engine": [k, 1]})
        for k in range(n)
    ]


def test_blocks_keep_every_row_in_order() -> None:
    frames = Frames(block=3)
    assert not frames
    parts = chunks(8)  # two gathered blocks and two pending frames
    for part in parts:
        frames.append(part)
    assert frames and frames.rows == 16
    assert_frame_equal(frames.frame(), pl.concat(parts))
    frames.append(parts[0])  # still usable after frame()
    assert_frame_equal(frames.frame(), pl.concat([*parts, parts[0]]))


def test_a_reduced_frame_is_the_sum_over_all_chunks() -> None:
    def total(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.group_by("user_id").agg(pl.col("engine").sum())

    frames = Frames(block=2, reduce=total)
    parts = chunks(7)
    for part in parts:
        frames.append(total(part))
    expected = total(pl.concat(parts)).sort("user_id")
    assert_frame_equal(frames.frame().sort("user_id"), expected)
    assert len(frames.frame()) == 3  # kept as sums, not as rows


def test_nothing_added() -> None:
    with pytest.raises(ValueError, match="no frames"):
        Frames().frame()
