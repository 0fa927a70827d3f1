"""Everything a tuning trial reads, computed once per log: arrays over the log's rows.

What does not depend on the weights is computed here, with the engine's own code: the
features (offline, point in time) and every model's predictions, the expected value, the
unweighted experience-cost components (``engine.scoring.rules.cost_components``; the fatigue
column is recomputed per trial from the policy's own exposures), the eligibility rules that
do not depend on exposures, the keys of every counter family the caps and the fatigue cost
read, the requests' capacities, and the logged outcomes and propensities the estimators need.

The models see the exposure history of the log (what the logging policy showed), as the
estimators' rewards do: a trial's own exposures move its caps and its fatigue cost, not the
models' predictions.

``history``: earlier logs (the previous days' joined logs, in the nightly job). Their shown
impressions before the log's first request, as far back as a cap, gap, feedback block or the
fatigue cost looks, are where every trial's counters start (``Warm``), as the live cap store
held them when the day began; without them a day is tuned as if no one had seen an ad before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from engine.caps.rules import (
    COMPETITOR,
    SCOPE_COLUMN,
    TARGET_COLUMN,
    BlockRule,
    Family,
    competitor_column,
)
from engine.config import COST_COMPONENTS, AdmatchConfig
from engine.errors import InvalidArgument
from engine.model.bundle import ModelBundle
from engine.pricing import earned
from engine.replay.causal import causal_spans
from engine.replay.source import prepare_log
from engine.scoring import rules as R
from engine.scoring.selection import Capacity
from features.logio import read_log, scan_log
from features.schema import SLOTS

FATIGUE = COST_COMPONENTS.index("fatigue")
FATIGUE_FAMILIES = (  # the fatigue cost's three counts (engine.scoring.rules.cost_components)
    (Family(scope="user", target="any"), 3_600, 1.0),
    (Family(scope="user", target="campaign"), 86_400, 1.0),
    (Family(scope="household", target="any"), 86_400, 0.5),
)
KEY_COLUMNS = (  # the log's columns the families are keyed by (the competitor is derived)
    *SCOPE_COLUMN.values(),
    *(c for c in TARGET_COLUMN.values() if c and c != COMPETITOR),
    "touchpoint",
    "slot",
)
BLOCK = 256  # requests per simulation step at most
PREDICT_ROWS = 131_072  # feature matrix rows per model call (bounds memory)


@dataclass(frozen=True)
class Warm:
    """Exposures before the log's first request (see the module doc): their times, their key
    in each family (the rows' key space), their logged negative feedback kind and whether
    they converted."""

    t_us: np.ndarray
    keys: dict[Family, np.ndarray]
    feedback_kind: np.ndarray
    converted: np.ndarray

    @property
    def impressions(self) -> int:
        """How many."""
        return len(self.t_us)


@dataclass
class TuningData:
    """The log's rows in replay order, with what every trial reads (see the module doc).

    Row arrays have one entry per candidate row; request arrays one per request.
    """

    rows: int
    owner: np.ndarray  # request index per row
    bounds: np.ndarray  # request row offsets, requests + 1
    t_us: np.ndarray  # time per row, epoch microseconds
    value: np.ndarray  # expected value per impression (money)
    components: np.ndarray  # (rows, components) unweighted costs, fatigue column zero
    static_ok: np.ndarray  # no protection refuses it, format allowed, brand suitable
    p_engage: np.ndarray
    p_negative: np.ndarray
    ad_code: np.ndarray  # order-preserving code of ad_id (ties break by ad id)
    advertiser: list[str | None]
    category: list[str | None]
    duration_s: np.ndarray
    capacity: Capacity | None  # per request
    family_keys: dict[Family, np.ndarray]  # per family, key per row (-1: not applicable)
    blocks: list[range]  # causal batches of requests (no user/household/device twice)
    shown: np.ndarray
    propensity: np.ndarray
    rewards: dict[str, np.ndarray]  # observed per row: engagement, revenue, negative
    predicted: dict[str, np.ndarray]  # the reward model per row
    truth: dict[str, np.ndarray] | None  # true expected rewards per row (synthetic logs)
    touchpoint: np.ndarray  # code per row
    user_day: np.ndarray  # code of (user, UTC day) per row
    household_day: np.ndarray  # code of (household or user, UTC day) per row
    feedback_kind: np.ndarray  # per row: negative kind the log records when shown, else ""
    converted: np.ndarray  # per row: the log records a conversion of it, shown
    model_version: str = ""
    warm: Warm | None = None
    assumptions: list[str] = field(default_factory=list)  # made for lack of a model or outcome
    negative_known: bool = True  # the log records negative feedback on shown rows
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        """Number of requests."""
        return len(self.bounds) - 1


def family_key(frame: pl.DataFrame, family: Family) -> np.ndarray:
    """Dense key per row of ``family`` (-1 where it does not apply)."""
    scope = pl.col(SCOPE_COLUMN[family.scope])
    target = TARGET_COLUMN[family.target]
    key = scope if target is None else pl.concat_str([scope, pl.col(target)], separator="\x1f")
    applies = pl.lit(True)
    if family.touchpoint is not None:
        applies &= pl.col("touchpoint").cast(pl.String) == family.touchpoint
    if family.slot is not None:
        applies &= pl.col("slot").cast(pl.String) == family.slot
    codes = frame.select(pl.when(applies).then(key).rank("dense").fill_null(0).cast(pl.Int64) - 1)
    return codes.to_series().to_numpy()


def block_families(rule: BlockRule) -> list[Family]:
    """The families whose keys a block rule sets: the user's target, the household's too."""
    scopes = ["user", "household"] if rule.household else ["user"]
    return [Family.model_validate({"scope": s, "target": rule.target}) for s in scopes]


def needed_families(config: AdmatchConfig) -> list[Family]:
    """Every family the caps, gaps, blocks and fatigue cost read (each once)."""
    caps = config.caps
    fams = [r.family() for r in caps.rules] + [g.family() for g in caps.gap_rules]
    fams += [f for rule in caps.block_rules for f in block_families(rule)]
    fams += [f for f, _, _ in FATIGUE_FAMILIES]
    return list(dict.fromkeys(fams))


def prepare(
    log_path: Path,
    model_dir: Path,
    config: AdmatchConfig,
    workdir: Path,
    history: Sequence[Path] = (),
) -> TuningData:
    """Read the log, score it once with the model, and build every array (see the module doc;
    ``history``: earlier logs whose impressions the counters start from).

    Raises:
        LogSchemaError: the log breaks the schema (naming the column).
        ModelError: the model cannot be loaded.
    """
    frame = read_log(prepare_log(log_path, workdir))
    if frame.is_empty():
        raise InvalidArgument("--log", "the log has no rows")
    bundle = ModelBundle.load(model_dir)
    features = bundle.core.offline(frame.lazy()).collect()
    p_engage, p_negative, p_convert = _predict(bundle, features)
    rules = R.CompiledRules.build(config)
    rows = R.Rows.from_inputs(features, rules)
    comps = R.cost_components(rules, rows, p_engage, p_negative, np.zeros((len(features), 30)))
    comps[:, FATIGUE] = 0.0
    value = R.expected_value(rows, p_engage, config.scoring.conversion_prior, p_convert)
    ok = ~(
        R.protected(rules, rows)
        | R.assistant_busy(rules, rows)
        | R.format_not_allowed(rules, rows)
        | R.brand_unsuitable(rows)
    )
    outcomes = _outcomes(features, p_engage, p_negative, value)
    negative_known = features.filter("shown")["negative"].null_count() < int(
        features["shown"].sum()
    )
    owner = features.select(pl.col("request_id").rle_id()).to_series().to_numpy().astype(np.int64)
    keys, warm = _keys(features, _history(history, features, config), config)
    bounds = np.r_[0, np.flatnonzero(np.diff(owner)) + 1, len(owner)]
    return TuningData(
        rows=len(features),
        owner=owner,
        bounds=bounds,
        t_us=features["ts"].dt.epoch("us").to_numpy(),
        value=value,
        components=comps,
        static_ok=ok,
        p_engage=p_engage,
        p_negative=p_negative,
        ad_code=features["ad_id"].rank("dense").to_numpy().astype(np.int64),
        advertiser=features["advertiser_id"].to_list(),
        category=features["category"].to_list(),
        duration_s=rows.duration_s,
        capacity=_capacity(features, bounds, config),
        family_keys=keys,
        blocks=_blocks(features, bounds),
        shown=features["shown"].to_numpy(),
        propensity=features["propensity"].fill_null(np.nan).to_numpy(),
        rewards=outcomes.rewards,
        predicted=outcomes.predicted,
        truth=outcomes.truth,
        touchpoint=rows.touchpoint,
        user_day=_day_code(features, "user_id"),
        household_day=_day_code(features, "household_id"),
        feedback_kind=features["negative_kind"].cast(pl.String).fill_null("").to_numpy(),
        converted=_converted(features),
        model_version=bundle.version,
        warm=warm,
        assumptions=[*bundle.assumptions, *([] if negative_known else [NO_NEGATIVE_OUTCOMES])],
        negative_known=negative_known,
    )


NO_NEGATIVE_OUTCOMES = (
    "the log records no negative feedback on its shown rows: negative feedback per request "
    "is estimated as 0, so the constraints on it (tuning.constraints.max_negative_rate, "
    "negative_vs_current) are not applied"
)


def lookback_s(config: AdmatchConfig) -> float:
    """How far back an exposure still counts (a cap's window, a gap, a feedback block, the
    fatigue cost's windows); ``inf`` when a cap counts over the lifetime."""
    caps = config.caps
    windows = [r.window_s for r in caps.rules]
    if None in windows:
        return float("inf")
    spans = [w for w in windows if w is not None] + [g.min_gap_s for g in caps.gap_rules]
    spans += [b.duration_s for b in caps.block_rules] + [w for _, w, _ in FATIGUE_FAMILIES]
    return float(max(spans)) + 86_400  # and a day: windows beyond the retention are in days


def _history(paths: Sequence[Path], features: pl.DataFrame, config: AdmatchConfig) -> pl.DataFrame:
    """The shown impressions of ``paths`` in the lookback before the first request, in time
    order (the key columns, ``ts``, ``shown``, ``negative_kind`` and ``converted``)."""
    columns = [*KEY_COLUMNS, "ts", "shown", "negative_kind", "converted"]
    if not paths or features.is_empty():
        return features.select(columns).clear()
    first = features["ts"].min()
    back = lookback_s(config)
    since = pl.lit(first) - pl.duration(seconds=back) if back != float("inf") else None
    frames = []
    for path in paths:
        shown = scan_log(path).filter(pl.col("shown") & (pl.col("ts") < first))
        if since is not None:
            shown = shown.filter(pl.col("ts") >= since)
        frames.append(shown.select(columns))
    found = pl.concat(frames, how="vertical_relaxed").collect()
    return found.cast(features.select(columns).schema).sort("ts", maintain_order=True)


def _converted(frame: pl.DataFrame) -> np.ndarray:
    """Per row, whether the log records it shown and converted."""
    both = pl.col("shown").fill_null(False) & pl.col("converted").fill_null(False)
    return frame.select(both).to_series().to_numpy()


def _keys(
    features: pl.DataFrame, history: pl.DataFrame, config: AdmatchConfig
) -> tuple[dict[Family, np.ndarray], Warm | None]:
    """Every needed family's key per row, and the history's exposures in the same key space."""
    both = pl.concat([history.select(KEY_COLUMNS), features.select(KEY_COLUMNS)])
    both = both.with_columns(competitor_column(config.caps.competitor_of))
    n = len(history)
    keys = {f: family_key(both, f) for f in needed_families(config)}
    if not n:
        return keys, None
    warm = Warm(
        t_us=history["ts"].dt.epoch("us").to_numpy(),
        keys={f: k[:n] for f, k in keys.items()},
        feedback_kind=history["negative_kind"].cast(pl.String).fill_null("").to_numpy(),
        converted=_converted(history),
    )
    return {f: k[n:] for f, k in keys.items()}, warm


def _predict(
    bundle: ModelBundle, features: pl.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """P(engage), P(negative) (0 without a model) and P(convert | engage) (``None``
    without a model) per row, as the scorer predicts them."""
    engaged: list[np.ndarray] = []
    negative: list[np.ndarray] = []
    converted: list[np.ndarray] = []
    for part in features.iter_slices(PREDICT_ROWS):
        cpa = (part["pricing"] == "cpa").to_numpy()
        p = bundle.predict(bundle.core.offline_matrix(part), convert=cpa)
        engaged.append(p.engaged)
        negative.append(p.negative if p.negative is not None else np.zeros(len(part)))
        if p.converted is not None:
            converted.append(p.converted)
    conv = np.concatenate(converted) if converted else None
    return np.concatenate(engaged), np.concatenate(negative), conv


def _blocks(features: pl.DataFrame, bounds: np.ndarray) -> list[range]:
    """Causal batches of requests (as the replay forms them), up to ``BLOCK`` requests."""
    heads = features[bounds[:-1]].select("user_id", "household_id", "device_id")
    entities = [
        {(k, v) for k, v in zip(("user", "household", "device"), ids, strict=True) if v}
        for ids in heads.iter_rows()
    ]
    return causal_spans(entities, BLOCK)


def _capacity(features: pl.DataFrame, bounds: np.ndarray, config: AdmatchConfig) -> Capacity:
    slot = features["slot"].to_physical().to_numpy()[bounds[:-1]]
    max_ads = np.array([config.slots[s].max_ads for s in SLOTS])
    total = np.array(
        [config.slots[s].max_total_duration_s or np.nan for s in SLOTS], dtype=np.float64
    )
    return Capacity(max_ads[slot], total[slot])


def _day_code(features: pl.DataFrame, column: str) -> np.ndarray:
    who = pl.col(column)
    if column == "household_id":
        who = who.fill_null(pl.lit("u:") + pl.col("user_id"))
    day = pl.col("ts").dt.date().cast(pl.String)
    code = features.select(pl.concat_str([who, day], separator="|").rank("dense") - 1)
    return code.to_series().to_numpy().astype(np.int64)


SHRINK = 200.0  # engaged impressions' worth of the overall rate in each category's rate


def conversion_given_engagement(features: pl.DataFrame) -> np.ndarray:
    """Per row, the log's rate of conversions among engaged shown impressions of its category,
    shrunk toward the overall rate (``SHRINK`` pseudo-impressions).

    A CPA ad's revenue is its bid times a conversion, and conversions are rare enough that a
    handful of them decide an estimate. Counting an engagement as this rate of a conversion
    (the expected conversion given the engagement) keeps the estimate's target and cuts its
    standard error about threefold on the synthetic world; the rate's own error is shared by
    every trial, which comparing trials cancels.
    """
    engaged = features.filter(pl.col("shown") & pl.col("engaged").fill_null(False))
    conversions = engaged["converted"].cast(pl.Float64).fill_null(0.0).to_numpy()
    overall = float(conversions.mean()) if len(conversions) else 0.0
    rates = engaged.group_by("category").agg(
        (
            (pl.col("converted").cast(pl.Float64).fill_null(0.0).sum() + SHRINK * overall)
            / (pl.len() + SHRINK)
        ).alias("rate")
    )
    per_row = features.select("category").join(
        rates, on="category", how="left", maintain_order="left"
    )
    return per_row["rate"].fill_null(overall).to_numpy()


@dataclass(frozen=True)
class _Outcomes:
    rewards: dict[str, np.ndarray]
    predicted: dict[str, np.ndarray]
    truth: dict[str, np.ndarray] | None


def _outcomes(
    features: pl.DataFrame, p_engage: np.ndarray, p_negative: np.ndarray, value: np.ndarray
) -> _Outcomes:
    """Observed rewards, the reward model (the engine's predictions) and the truth."""

    def col(name: str) -> np.ndarray:
        return features[name].cast(pl.Float64).fill_null(0.0).to_numpy()

    bid = col("bid")
    pricing = features["pricing"].cast(pl.String).to_numpy()

    def revenue(engaged: np.ndarray, converted: np.ndarray) -> np.ndarray:
        return earned(pricing, bid, engaged, converted)

    engaged = col("engaged")
    rewards = {
        "engagement": engaged,
        "revenue": revenue(engaged, col("converted")),
        "revenue_smoothed": revenue(engaged, engaged * conversion_given_engagement(features)),
        "negative": col("negative"),
    }
    predicted = {
        "engagement": p_engage,
        "revenue": value,
        "revenue_smoothed": value,
        "negative": p_negative,
    }
    truth = None
    if features["true_p_engaged"].null_count() < len(features):
        t_e = col("true_p_engaged")
        true_revenue = revenue(t_e, col("true_p_converted"))
        truth = {
            "engagement": t_e,
            "revenue": true_revenue,
            "revenue_smoothed": true_revenue,
            "negative": col("true_p_negative"),
        }
    return _Outcomes(rewards, predicted, truth)
