"""What a replay keeps of each chunk: timings, decisions, exposures and off-policy sums.

Everything kept grows with requests or impressions, never with candidate rows (those are
summed per request as each chunk passes), so a long log replays in bounded memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from engine.errors import InvalidArgument, message_rule
from engine.ope import (
    Contributions,
    LoggedRows,
    Moments,
    propensity_problem,
    unusable_propensities,
)
from engine.pricing import earned
from engine.replay.engines import STAGES, Result
from engine.replay.requests import row_values
from engine.replay.source import RequestChunk
from engine.scoring.types import REASON_NAMES

REWARDS = ("engagement", "revenue", "negative")
EXPOSURE_COLUMNS = (
    "request_id",
    "ts",
    "ad_id",
    "user_id",
    "household_id",
    "device_id",
    "touchpoint",
    "slot",
    "creative_id",
    "campaign_id",
    "advertiser_id",
    "category",
)


NAMES = np.append(REASON_NAMES, "ERROR")  # by code; a failed request's rows: ERROR_CODE
ERROR_CODE = len(REASON_NAMES)


FEEDBACK_COLUMNS = (  # what the block rules act on
    "ts",
    "user_id",
    "household_id",
    "campaign_id",
    "advertiser_id",
    "category",
    "negative_kind",
    "converted",
)


@dataclass
class ChunkDecisions:
    """A chunk's decisions as row-aligned columns (failed requests: nothing selected)."""

    rank: np.ndarray
    p_engage: np.ndarray
    p_negative: np.ndarray
    expected_value: np.ndarray
    utility: np.ndarray
    code: np.ndarray  # per row, its reason's code; ERROR_CODE for a failed request
    error: list[str | None]  # per row, its request's error message (None: decided)

    @classmethod
    def of(cls, chunk: RequestChunk, results: list[Result]) -> ChunkDecisions:
        n = len(chunk.rows)
        out = cls(
            np.zeros(n, dtype=np.int64),
            np.zeros(n),
            np.zeros(n),
            np.zeros(n),
            np.zeros(n),
            np.full(n, ERROR_CODE, dtype=np.int64),
            [None] * n,
        )
        for i, r in enumerate(results):
            d = r.decision
            lo, hi = int(chunk.bounds[i]), int(chunk.bounds[i + 1])
            if d is None:
                out.error[lo:hi] = [r.message or r.error] * (hi - lo)
                continue
            out.rank[lo:hi] = d.rank
            out.p_engage[lo:hi] = d.p_engage
            out.p_negative[lo:hi] = d.p_negative
            out.expected_value[lo:hi] = d.expected_value
            out.utility[lo:hi] = d.utility
            out.code[lo:hi] = d.reason_code
        return out

    @property
    def reason(self) -> np.ndarray:
        """Per row, its reason's name (``ERROR`` for a failed request)."""
        names: np.ndarray = NAMES[self.code]
        return names

    @property
    def selected(self) -> np.ndarray:
        """Per row, whether the engine shows it."""
        return self.rank > 0


class Frames:
    """Frames added chunk by chunk, gathered into one block every ``block`` additions: a
    replay adds a few small frames per 256 requests, and thousands of small frames cost far
    more memory than one frame of their rows. With ``reduce`` every gathering aggregates all
    that was kept into one frame (for sums whose size is bounded by their keys)."""

    def __init__(
        self, block: int = 64, reduce: Callable[[pl.DataFrame], pl.DataFrame] | None = None
    ) -> None:
        self.block, self.reduce = block, reduce
        self._blocks: list[pl.DataFrame] = []
        self._pending: list[pl.DataFrame] = []
        self.rows = 0

    def append(self, frame: pl.DataFrame) -> None:
        """Keep ``frame``'s rows."""
        self._pending.append(frame)
        self.rows += len(frame)
        if len(self._pending) >= self.block:
            self._gather()

    def _gather(self) -> None:
        if self.reduce is not None:
            self._blocks = [self.reduce(pl.concat([*self._blocks, *self._pending]))]
        else:
            self._blocks.append(pl.concat(self._pending, rechunk=True))
        self._pending = []

    def __bool__(self) -> bool:
        return bool(self._blocks or self._pending)

    def frame(self) -> pl.DataFrame:
        """Everything kept, as one frame (reduced, with ``reduce``).

        Raises:
            ValueError: nothing was added (there is no schema to give an empty frame).
        """
        if self._pending:
            self._gather()
        if not self._blocks:
            raise ValueError("no frames added")
        return self._blocks[0] if len(self._blocks) == 1 else pl.concat(self._blocks)


def _user_day_load(frame: pl.DataFrame) -> pl.DataFrame:
    """Ads shown by the engine and by the log per user, day and touchpoint."""
    return frame.group_by("user_id", "day", "touchpoint").agg(
        pl.col("engine").sum(), pl.col("logged").sum()
    )


@dataclass
class Collector:
    """Accumulates a replay's measurements chunk by chunk (see :meth:`add`)."""

    decisions_path: Path | None = None
    record: str = "selected"  # which rows went into the cap store: see :meth:`add`
    latency: list[np.ndarray] = field(default_factory=list)
    stages: dict[str, list[np.ndarray]] = field(default_factory=lambda: {s: [] for s in STAGES})
    errors: Counter[str] = field(default_factory=Counter)
    no_ad: Counter[str] = field(default_factory=Counter)
    reason_counts: np.ndarray = field(default_factory=lambda: np.zeros(len(NAMES), np.int64))
    store_unavailable: int = 0  # requests decided without the cap store (failing closed or open)
    requests: int = 0
    candidates: int = 0
    filled: int = 0
    timeline: list[tuple[float, int]] = field(default_factory=list)
    selections: Frames = field(default_factory=Frames)
    history: Frames = field(default_factory=Frames)  # empty when it is ``selections``
    feedback: Frames = field(default_factory=Frames)
    load: Frames = field(default_factory=lambda: Frames(reduce=_user_day_load))
    ope: dict[str, Moments] = field(default_factory=lambda: {r: Moments() for r in REWARDS})
    logging_truth: dict[str, Moments] = field(
        default_factory=lambda: {r: Moments() for r in REWARDS}
    )
    ope_error: str | None = None  # rows the estimators cannot take (other than propensities)
    ope_unusable: int = 0  # shown rows without a usable propensity, over the whole replay
    ope_shown: int = 0
    error_messages: Counter[tuple[str, str]] = field(default_factory=Counter)
    error_examples: dict[tuple[str, str], str] = field(default_factory=dict)
    fit: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(
        default_factory=lambda: {"engaged": [], "negative": []}
    )
    _writer: pq.ParquetWriter | None = None

    @property
    def ope_problem(self) -> str | None:
        """Why no off-policy estimate can be made (None: it can)."""
        if self.ope_unusable:
            return propensity_problem(self.ope_unusable, self.ope_shown)
        return self.ope_error

    def by_reason(self) -> dict[str, int]:
        """Candidates per reason, the most frequent first (reasons none had left out)."""
        order = np.argsort(-self.reason_counts, kind="stable")
        return {str(NAMES[i]): int(self.reason_counts[i]) for i in order if self.reason_counts[i]}

    @property
    def history_is_selections(self) -> bool:
        """Whether the exposures recorded into the store are the engine's picks (kept once,
        in :attr:`selections`)."""
        return self.record == "selected"

    def add(self, chunk: RequestChunk, results: list[Result], elapsed_s: float) -> None:
        """Take one chunk's results (``record`` says which rows' impressions went into the
        cap store: the engine's picks, ``selected``; the log's, ``logged``; or ``none``)."""
        d = ChunkDecisions.of(chunk, results)
        self._timings(results)
        self._decisions(chunk, results, d)
        self._exposures(chunk, d)
        self._quality(chunk, d)
        self.timeline.append((elapsed_s, self.requests))
        if self.decisions_path is not None:
            self._write(chunk, d)

    def _timings(self, results: list[Result]) -> None:
        # float32: seconds to ~0.1 us, and half the memory of a long replay's timings
        self.latency.append(np.array([r.latency_s for r in results], dtype=np.float32))
        for s in STAGES:
            times = [r.stages.get(s, np.nan) for r in results]
            self.stages[s].append(np.array(times, dtype=np.float32))
        for r in results:
            if r.error is None:
                continue
            self.errors[r.error] += 1
            message = r.message or r.error
            key = (r.error, message_rule(message))
            self.error_messages[key] += 1
            self.error_examples.setdefault(key, message)

    def _decisions(self, chunk: RequestChunk, results: list[Result], d: ChunkDecisions) -> None:
        self.requests += chunk.requests
        self.candidates += len(chunk.rows)
        self.reason_counts += np.bincount(d.code, minlength=len(NAMES))
        for r in results:
            if r.decision is None:
                continue
            self.store_unavailable += not r.decision.cap_store_ok
            if r.decision.selected:
                self.filled += 1
            else:  # why not: the reason of the candidate with the highest utility
                best = int(np.argmax(r.decision.utility))
                self.no_ad[REASON_NAMES[r.decision.reason_code[best]]] += 1
        self.load.append(
            _user_day_load(
                chunk.rows.select(
                    "user_id",
                    "touchpoint",
                    pl.col("ts").dt.date().alias("day"),
                    pl.Series("engine", d.selected.astype(np.int64)),
                    pl.col("shown").cast(pl.Int64).alias("logged"),
                )
            )
        )

    def _exposures(self, chunk: RequestChunk, d: ChunkDecisions) -> None:
        """The engine's picks, the exposures recorded into the store (the picks themselves
        with ``selected``: kept once) and their negative feedback and conversions (what the
        block rules act on)."""
        rows = chunk.rows
        selections = rows.filter(pl.Series(d.selected)).select(EXPOSURE_COLUMNS)
        self.selections.append(selections)
        shown = rows["shown"].to_numpy()
        recorded = {"selected": d.selected, "logged": shown}.get(self.record, np.zeros_like(shown))
        kept = rows.filter(pl.Series(recorded))
        if not self.history_is_selections:
            self.history.append(kept.select(EXPOSURE_COLUMNS))
        outcome = pl.col("negative_kind").is_not_null() | pl.col("converted").fill_null(False)
        self.feedback.append(kept.filter(pl.col("shown") & outcome).select(FEEDBACK_COLUMNS))

    def _quality(self, chunk: RequestChunk, d: ChunkDecisions) -> None:
        rows = chunk.rows
        shown = rows["shown"].to_numpy()
        for outcome, p in (("engaged", d.p_engage), ("negative", d.p_negative)):
            y = rows[outcome]
            known = shown & y.is_not_null().to_numpy()
            self.fit[outcome].append((y.fill_null(False).to_numpy()[known], p[known]))
        propensity = row_values(rows, "propensity")
        self.ope_unusable += unusable_propensities(shown, propensity)
        self.ope_shown += int(shown.sum())
        if self.ope_problem is not None:  # counted on, so the report says how many in all
            return
        try:
            logged = LoggedRows(chunk.owner(), shown, propensity)
        except InvalidArgument as exc:
            self.ope_error = str(exc)
            return
        target = d.selected.astype(np.float64)
        propensity = np.nan_to_num(row_values(rows, "propensity"))
        for name, (reward, predicted, truth) in _rewards(rows, d).items():
            self.ope[name] += Contributions.of(logged, target, reward, predicted, truth).moments()
            self.logging_truth[name] += Contributions.of(
                logged, propensity, reward, None, truth
            ).moments()

    def _write(self, chunk: RequestChunk, d: ChunkDecisions) -> None:
        assert self.decisions_path is not None
        frame = chunk.rows.select("request_id", "ad_id").with_columns(
            rank=pl.Series(d.rank),
            reason=pl.Series(d.reason),
            p_engage=pl.Series(d.p_engage),
            p_negative=pl.Series(d.p_negative),
            expected_value=pl.Series(d.expected_value),
            utility=pl.Series(d.utility),
            error=pl.Series(d.error, dtype=pl.String),
        )
        table = frame.to_arrow()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.decisions_path, table.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        """Finish the decisions file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _rewards(
    rows: pl.DataFrame, d: ChunkDecisions
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Per reward: observed value, the engine's prediction, and the truth if the log has it."""
    engaged = row_values(rows, "engaged", 0.0)
    converted = row_values(rows, "converted", 0.0)
    bid = row_values(rows, "bid", 0.0)
    pricing = rows["pricing"].cast(pl.String).to_numpy()
    revenue = earned(pricing, bid, engaged, converted)
    truth: dict[str, np.ndarray | None] = {"engagement": None, "revenue": None, "negative": None}
    if rows["true_p_engaged"].null_count() < len(rows):
        t_e = row_values(rows, "true_p_engaged")
        t_c = row_values(rows, "true_p_converted")
        truth = {
            "engagement": t_e,
            "negative": row_values(rows, "true_p_negative"),
            "revenue": earned(pricing, bid, t_e, t_c),
        }
    return {
        "engagement": (engaged, d.p_engage, truth["engagement"]),
        "revenue": (revenue, d.expected_value, truth["revenue"]),
        "negative": (row_values(rows, "negative", 0.0), d.p_negative, truth["negative"]),
    }
