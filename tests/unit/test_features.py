"""The feature core: registry, offline/online parity, point-in-time correctness, statistics."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ConfigError, InvalidArgument
from engine.synth.generator import GeneratedLog
from engine.synth.params import CATEGORIES
from features import FEATURES, EngagementStats, FeatureCore, FeatureParams, Priors, RequestContext
from features.exposure import (
    BUCKET_S,
    COUNT_COLUMNS,
    EXPOSURE_SCHEMA,
    WINDOWS_S,
    point_in_time_exposures,
    window_start,
)
from features.history import ExposureHistory
from features.logio import validate_log
from features.online import LIST_FIELDS, assemble
from features.schema import (
    CANDIDATE_COLUMNS,
    COLUMN_BY_NAME,
    OUTCOME_COLUMNS,
    SLOTS,
    TRUTH_COLUMNS,
)
from features.stats import STATS_KEYS
from features.taxonomy import Taxonomy

T0 = datetime(2026, 3, 2, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def core(small_world: GeneratedLog) -> FeatureCore:
    return FeatureCore(FeatureParams(EngagementStats.fit(small_world.log), Priors.default()))


# a taxonomy over the synthetic world's categories (ids), named in capitals, two levels deep
WORLD_TAXONOMY = Taxonomy.from_dict(
    {
        "parent": {
            c: {"alcohol": "food", "gaming": "tech", "kids": "home"}.get(c) for c in CATEGORIES
        }
        | {"food": "retail", "retail": None},
        "name": {c: c.upper() for c in CATEGORIES} | {"retail": "Retail"},
    }
)


@pytest.fixture(scope="module")
def taxonomy_core(small_world: GeneratedLog) -> FeatureCore:
    priors = replace(Priors.default(), taxonomy=WORLD_TAXONOMY)
    return FeatureCore(FeatureParams(EngagementStats.fit(small_world.log), priors))


CORES = pytest.mark.parametrize("core_name", ["core", "taxonomy_core"])


def requests_of(
    log: pl.DataFrame,
) -> Iterator[tuple[RequestContext, dict[str, list[object]], pl.DataFrame]]:
    """The log's requests in order, as the online path receives them."""
    for _, group in log.group_by("request_id", maintain_order=True):
        request = RequestContext.from_row(group.row(0, named=True))
        yield request, {c: group[c].to_list() for c in CANDIDATE_COLUMNS}, group


# --- the registry


def test_registry_names_docs_and_count() -> None:
    assert len(FEATURES) >= 40
    assert len(set(FEATURES.names)) == len(FEATURES)
    assert all(f.doc.strip() for f in FEATURES)


def test_no_feature_reads_truth_or_outcomes(core: FeatureCore) -> None:
    forbidden = set(TRUTH_COLUMNS) | set(OUTCOME_COLUMNS) | {"shown", "propensity"}
    for feature in FEATURES:
        roots = set(feature.expr(core.params).meta.root_names())
        assert not roots & forbidden, f"{feature.name} reads {roots & forbidden}"


def test_offline_dtypes_are_the_registered_ones(
    core: FeatureCore, small_world: GeneratedLog
) -> None:
    out = core.offline(small_world.log.head(500)).collect()
    assert out.select(core.names).schema == pl.Schema([(n, FEATURES[n].dtype) for n in core.names])


# --- parity: offline over the log == online request by request with replayed counters


@CORES
def test_offline_equals_online_replay(
    core_name: str, small_world: GeneratedLog, request: pytest.FixtureRequest
) -> None:
    core: FeatureCore = request.getfixturevalue(core_name)
    log = small_world.log.head(6_000)
    offline = core.offline(log).collect()
    history = ExposureHistory()
    online: list[pl.DataFrame] = []
    pending: list[dict[str, Any]] = []
    current_ts = None
    for ctx, candidates, group in requests_of(log):
        if ctx.ts != current_ts:  # record only impressions strictly before this time
            for row in pending:
                history.record(row["ts"], row)
            pending, current_ts = [], ctx.ts
        online.append(core.online(ctx, candidates, history.counts(ctx, candidates)).to_frame())
        pending.extend(group.filter("shown").iter_rows(named=True))
    on = pl.concat(online)
    off = offline.select(core.names)
    assert on.schema == off.schema
    for name in core.names:
        a, b = off[name], on[name]
        assert (a.is_null() == b.is_null()).all(), name
        if a.dtype.is_float():
            diff = (a - b).abs().max()
            assert diff is None or diff <= 1e-9, f"{name}: {diff!r}"
        else:
            assert a.equals(b), name
    assert (off["exp_household_any_24h"] > 0).sum() > 100  # the check saw real history
    assert (off["interest_affinity"] > 0).sum() > 100  # and interests that match


def test_interests_match_through_the_taxonomy(
    core: FeatureCore, taxonomy_core: FeatureCore, small_world: GeneratedLog
) -> None:
    """An interest in a category matches the ads of every category under it (by id or name,
    any case); a tag the taxonomy does not know matches exactly, as without one."""
    log = small_world.log.head(20_000)
    plain = core.offline(log).collect()
    tree = taxonomy_core.offline(log).collect()
    a, b = plain["interest_affinity"], tree["interest_affinity"]
    assert (b >= a).all()  # the taxonomy only adds matches
    below = plain["category"].is_in(["alcohol", "gaming", "kids", "food"])
    assert ((b > a) & below).sum() > 50
    assert (b.filter(~below) == a.filter(~below)).all()  # nothing above them: as before

    rows = pl.DataFrame(
        {
            "user_interests": [["RETAIL"], ["x", "Food"], ["alcohol"], ["Alcohol"], ["kids"]],
            "category": ["alcohol", "alcohol", "food", "ALCOHOL", "home"],
        }
    )
    expr = FEATURES["interest_affinity"].expr(taxonomy_core.params)
    assert rows.select(expr).to_series().to_list() == [1.0, 0.5, 0.0, 1.0, 0.0]


def test_batch_equals_one_request_at_a_time(core: FeatureCore, small_world: GeneratedLog) -> None:
    reqs = list(requests_of(small_world.log.head(800)))
    rng = np.random.default_rng(0)
    exposures = [
        rng.integers(0, 5, (len(c["ad_id"]), len(EXPOSURE_SCHEMA))).astype(float)
        for _, c, _ in reqs
    ]
    batch = core.batch([r for r, _, _ in reqs], [c for _, c, _ in reqs], exposures)
    single = [core.online(r, c, e).matrix() for (r, c, _), e in zip(reqs, exposures, strict=True)]
    np.testing.assert_array_equal(batch.matrix(), np.vstack(single))


OPTIONAL = [c for c in CANDIDATE_COLUMNS if c not in ("ad_id", "format", "bid", "pricing")]


@settings(max_examples=40, deadline=None)
@given(drops=st.lists(st.sets(st.sampled_from(OPTIONAL)), min_size=2, max_size=6))
def test_a_batch_reads_each_request_as_alone_whatever_columns_it_sends(
    core: FeatureCore, small_world: GeneratedLog, drops: list[set[str]]
) -> None:
    """Requests of one pass that send different candidate columns (a client may leave any
    optional one out): the pass's rows, inputs included, are each request's rows alone."""
    reqs = list(requests_of(small_world.log.head(400)))[: len(drops)]
    cands = [
        {k: v for k, v in c.items() if k not in drop}
        for (_, c, _), drop in zip(reqs, drops, strict=True)
    ]
    ctxs = [r for r, _, _ in reqs]
    batch = core.batch(ctxs, cands, also=CANDIDATE_COLUMNS)
    alone = [core.online(r, c).matrix() for r, c in zip(ctxs, cands, strict=True)]
    np.testing.assert_array_equal(batch.matrix(), np.vstack(alone))
    inputs = pl.concat(
        [
            core.batch([r], [c], also=CANDIDATE_COLUMNS).inputs
            for r, c in zip(ctxs, cands, strict=True)
        ]
    )
    assert batch.inputs.select(CANDIDATE_COLUMNS).equals(inputs.select(CANDIDATE_COLUMNS))


@CORES
def test_matrix_equals_offline_matrix(
    core_name: str, small_world: GeneratedLog, request: pytest.FixtureRequest
) -> None:
    core: FeatureCore = request.getfixturevalue(core_name)
    log = small_world.log.head(400)
    offline = core.offline(log).collect()
    reqs = list(requests_of(log))
    exp = [
        g.join(offline, on=["request_id", "ad_id"], how="left", maintain_order="left")
        .select(EXPOSURE_SCHEMA.names())
        .to_numpy()
        .astype(float)
        for _, _, g in reqs
    ]
    online = core.batch([r for r, _, _ in reqs], [c for _, c, _ in reqs], exp).matrix()
    np.testing.assert_allclose(online, core.offline_matrix(offline), rtol=0, atol=1e-12)


# --- point-in-time correctness


def test_future_impressions_never_reach_past_rows(
    core: FeatureCore, small_world: GeneratedLog
) -> None:
    log = small_world.log
    cut = log["ts"][len(log) // 2]
    changed = log.with_columns(
        pl.when(pl.col("ts") > cut).then(~pl.col("shown")).otherwise(pl.col("shown")).alias("shown")
    )
    names = [*EXPOSURE_SCHEMA.names(), "request_id", "ad_id"]
    before = pl.col("ts") <= cut
    a = core.offline(log).filter(before).select(names).collect()
    b = core.offline(changed).filter(before).select(names).collect()
    assert a.equals(b)
    after_a = core.offline(log).filter(~before).select(COUNT_COLUMNS).collect()
    after_b = core.offline(changed).filter(~before).select(COUNT_COLUMNS).collect()
    assert not after_a.equals(after_b)  # the change was visible where it should be


def exposure_log(events: list[tuple[timedelta, str, bool]]) -> pl.DataFrame:
    """Rows of one user/household/device at T0 + offset, campaign c1 or c2."""
    n = len(events)
    return validate_log(
        pl.DataFrame(
            {
                "request_id": [f"r{i}" for i in range(n)],
                "ts": [T0 + d for d, _, _ in events],
                "user_id": ["u"] * n,
                "household_id": ["h"] * n,
                "device_id": ["d"] * n,
                "touchpoint": ["ott"] * n,
                "slot": ["ott_pause"] * n,
                "ad_id": [f"a{i}" for i in range(n)],
                "campaign_id": [c for _, c, _ in events],
                "advertiser_id": ["v"] * n,
                "format": ["image"] * n,
                "bid": [1.0] * n,
                "pricing": ["cpm"] * n,
                "shown": [s for _, _, s in events],
            }
        )
    )


@pytest.mark.parametrize(
    ("gap", "counted"),
    [
        (timedelta(hours=1), False),
        (timedelta(hours=1) - timedelta(microseconds=1), True),
        (timedelta(0), False),
    ],
    ids=["exactly-1h-ago", "just-inside-1h", "same-instant"],
)
def test_window_edges(gap: timedelta, counted: bool) -> None:
    log = exposure_log([(timedelta(0), "c1", True), (gap, "c1", False)])
    out = point_in_time_exposures(log.lazy()).collect()
    last = out.filter(pl.col("request_id") == "r1").row(0, named=True)
    assert last["exp_user_campaign_1h"] == int(counted)
    assert last["exp_user_any_24h"] == int(gap > timedelta(0))


def test_pod_members_do_not_count_each_other_and_recency() -> None:
    log = exposure_log(
        [
            (timedelta(0), "c1", True),
            (timedelta(0), "c1", True),
            (timedelta(seconds=90), "c1", False),
            (timedelta(seconds=95), "c2", False),
        ]
    )
    out = point_in_time_exposures(log.lazy()).collect()
    assert out["exp_household_campaign_7d"].to_list() == [0, 0, 2, 0]
    assert out["exp_device_any_1h"].to_list() == [0, 0, 2, 2]
    assert out["since_user_campaign_s"].to_list() == [None, None, 90.0, None]


def test_null_ids_count_nothing() -> None:
    log = exposure_log([(timedelta(0), "c1", True), (timedelta(seconds=5), "c1", False)])
    log = log.with_columns(pl.lit(None, dtype=pl.String).alias("household_id"))
    out = point_in_time_exposures(log.lazy()).collect().row(1, named=True)
    assert out["exp_household_any_1h"] == 0 and out["exp_user_any_1h"] == 1


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 10 * 86_400), st.sampled_from(["c1", "c2", "c3"]), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_counts_match_brute_force(events: list[tuple[int, str, bool]]) -> None:
    events = sorted(events, key=lambda e: e[0])
    log = exposure_log([(timedelta(seconds=s), c, shown) for s, c, shown in events])
    out = point_in_time_exposures(log.lazy()).collect()
    t0 = out["ts"][0].timestamp() - events[0][0]  # the log's origin, seconds

    def opens(at: float, window: str, seconds: int) -> float:  # the lowest time counted
        if not BUCKET_S[window]:
            return at - seconds + 1e-6
        start = window_start(round((t0 + at) * 1e6), window)
        return int(start) / 1e6 - t0

    for i, (t, c, _) in enumerate(events):
        for window, seconds in WINDOWS_S.items():
            low = opens(t, window, seconds)
            expected = sum(1 for s, c2, sh in events if sh and c2 == c and low <= s < t)
            assert out[f"exp_user_campaign_{window}"][i] == expected
            expected_any = sum(1 for s, _, sh in events if sh and low <= s < t)
            assert out[f"exp_user_any_{window}"][i] == expected_any


# --- fitted statistics and priors


def test_smoothed_rates_and_unseen_keys() -> None:
    log = exposure_log([(timedelta(seconds=i), "c1", True) for i in range(4)]).with_columns(
        pl.Series("engaged", [True, False, False, False]), pl.Series("ad_id", ["a", "a", "b", "b"])
    )
    stats = EngagementStats.fit(log, strength=4.0)
    assert stats.prior == 0.25
    rates = pl.DataFrame({"ad_id": ["a", "b", "zzz"]}).select(stats.rate_expr("ad"))
    assert rates.to_series().to_list() == pytest.approx([(1 + 1) / 6, (0 + 1) / 6, 0.25])


def test_category_slot_rate_is_the_rate_of_the_joined_key() -> None:
    """The pair lookup answers what a lookup of the fitted ``category|slot`` string would."""
    log = exposure_log([(timedelta(seconds=i), "c1", True) for i in range(6)]).with_columns(
        pl.Series("engaged", [True, False, True, False, False, True]),
        pl.Series("category", [None, None, "a|b", "a|b", "food", "~"]),
        pl.Series("slot", ["ott_pause", "ott_boot"] * 3).cast(pl.Enum(SLOTS)),
    )
    stats = EngagementStats.fit(log, strength=2.0)
    assert "~|ott_pause" in stats.tables["category_slot"].keys
    rows = pl.DataFrame(
        {
            "category": [None, "~", "a|b", "a|b", "food", "food", "zzz", None, "a|b"],
            "slot": ["ott_pause", "ott_pause", "ott_pause", "ott_boot", "ott_pause", None]
            + ["ott_pause", "ott_boot", "mobile_feed"],
        },
        schema={"category": pl.String, "slot": pl.Enum(SLOTS)},
    )
    table = stats.tables["category_slot"]
    pairs = zip(table.engaged, table.impressions, strict=True)
    rates = [(e + 2.0 * stats.prior) / (n + 2.0) for e, n in pairs]
    by_key = dict(zip(table.keys, rates, strict=True))
    keys = rows.select(STATS_KEYS["category_slot"]).to_series().to_list()
    expected = [by_key.get(k, stats.prior) if k is not None else stats.prior for k in keys]
    got = rows.select(stats.rate_expr("category_slot")).to_series().to_list()
    assert got == expected


def test_hour_features_are_their_formula_for_every_hour() -> None:
    hours = pl.DataFrame({"local_hour": [*range(-128, 128), None]}, schema={"local_hour": pl.Int8})
    p = FeatureParams(EngagementStats.empty(), Priors.default())
    for name, fn in (("hour_sin", np.sin), ("hour_cos", np.cos)):
        got = hours.select(FEATURES[name].expr(p)).to_series()
        formula = hours.select(pl.col("local_hour").cast(pl.Float64) * (2 * np.pi / 24))
        direct = getattr(formula.to_series(), name.split("_")[1])()
        assert got.equals(direct, check_names=False), name
        assert got[3] == pytest.approx(fn((3 - 128) * 2 * np.pi / 24))


def test_expected_value_per_pricing_model(core: FeatureCore) -> None:
    cands = {**CANDS, "ad_id": ["a1"] * 4, "format": ["video"] * 4, "bid": [2.0] * 4}
    cands["pricing"] = ["cpm", "cpc", "cpa", None]
    out = core.online(request(), cands).to_frame()
    ctr = out["ctr_ad"][0]
    prior = core.params.priors.conversion_prior
    assert out["expected_value"].to_list() == [2.0 / 1000.0, 2.0 * ctr] + [2.0 * ctr * prior] * 2


@pytest.mark.parametrize(
    "tags",
    [[("auto", "food"), (), ("food",), ("kids",)], [("auto", "food"), (), ("food",), (None,)]],
    ids=["strings", "a-null-tag"],  # built from flat offsets / as a list of lists
)
def test_interest_tags_of_many_requests(
    core: FeatureCore, tags: list[tuple[str | None, ...]]
) -> None:
    reqs = [request(request_id=f"r{i}", user_interests=t) for i, t in enumerate(tags)]
    cands = [{**CANDS, "category": ["food", "auto"]} for _ in reqs]
    batch = core.batch(reqs, cands)
    assert batch.inputs["user_interests"].to_list() == [list(t) for t in tags for _ in range(2)]
    assert batch.to_frame()["interest_affinity"].to_list() == [0.5, 1.0, 0, 0, 1.0, 0, 0, 0]
    with pytest.raises(InvalidArgument) as info:
        core.batch([*reqs, request(user_interests=("a", 3))], [*cands, CANDS])
    assert info.value.field == "request.user_interests"


@pytest.mark.parametrize("n", [1, 2, 7])
def test_a_request_alone_equals_itself_in_a_batch_to_the_last_bit(
    core: FeatureCore, n: int
) -> None:
    """A request's features do not depend on what else its pass holds, to the last bit: a
    polars division by a literal rounded one way in a one-row frame and another (through the
    reciprocal) in a larger one, and the two differed for a bid of 12.2219 (polars 2.1 for
    one candidate, 2.2 for more)."""
    cands = {**CANDS, "ad_id": [f"a{i}" for i in range(n)]}
    cands |= {"format": ["video"] * n, "bid": [12.2219] * n, "pricing": ["cpm"] * n}
    other = {**CANDS, "bid": [3.3, 7.1]}
    alone = core.online(request(), cands).matrix()
    batch = core.batch([request(request_id="r0"), request()], [other, cands]).matrix()
    np.testing.assert_array_equal(batch[len(other["ad_id"]) :], alone)


def test_empty_request_lists_are_empty_lists_of_their_dtype() -> None:
    """Requests whose block lists and interests are all empty, one or many, give empty lists
    (not nulls) in the schema's list dtype, as lists built one by one do."""
    for n_requests in (1, 3):
        reqs = [request(request_id=f"r{i}") for i in range(n_requests)]
        assert all(getattr(r, name) == () for r in reqs for name in LIST_FIELDS)
        rows = assemble(reqs, [CANDS] * n_requests)
        for name in LIST_FIELDS:
            dtype = COLUMN_BY_NAME[name].dtype
            expected = pl.Series(name, [[]] * 2 * n_requests, dtype=dtype)
            assert rows[name].equals(expected, check_dtypes=True, check_names=True), name


def test_an_unknown_or_absent_candidate_column_is_nulls_of_its_dtype() -> None:
    """A candidate column sent with every value unknown (None), or not sent, is a column of
    nulls in the schema's dtype (enums and lists too), in one request or many."""
    optional = [c for c in CANDIDATE_COLUMNS if c not in CANDS]
    for n_requests in (1, 3):
        reqs = [request(request_id=f"r{i}") for i in range(n_requests)]
        nones = [{**CANDS, **{c: [None, None] for c in optional}} for _ in reqs]
        absent = [dict(CANDS) for _ in reqs]
        for cands in (nones, absent):
            rows = assemble(reqs, cands)
            for c in optional:
                expected = pl.Series(c, [None] * 2 * n_requests, dtype=COLUMN_BY_NAME[c].dtype)
                assert rows[c].equals(expected, check_dtypes=True, check_names=True), c


def test_stats_round_trip_and_corrupt_file(tmp_path: Path, small_world: GeneratedLog) -> None:
    stats = EngagementStats.fit(small_world.log)
    stats.save(tmp_path)
    assert EngagementStats.load(tmp_path) == stats
    (tmp_path / "feature_stats.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="unreadable feature statistics"):
        EngagementStats.load(tmp_path)


def test_priors_validation_reports_every_problem() -> None:
    doc = {"intrusiveness": {"ott_pause": {"video": 2.0, "hologram": 0.1}}, "conversion": {}}
    with pytest.raises(ConfigError) as info:
        Priors.from_dict(doc)
    keys = {k for k, _ in info.value.problems}
    assert {
        "intrusiveness.ott_pause.video",
        "intrusiveness.ott_pause.hologram",
        "intrusiveness.voice_reply",
        "conversion.prior",
    } <= keys


# --- online input errors


def request(**overrides: object) -> RequestContext:
    fields: dict[str, object] = {
        "request_id": "r",
        "ts": T0,
        "user_id": "u",
        "touchpoint": "ott",
        "slot": "ott_pause",
    }
    fields.update(overrides)
    return RequestContext(**fields)  # type: ignore[arg-type]


CANDS: dict[str, list[Any]] = {
    "ad_id": ["a1", "a2"],
    "format": ["video", "image"],
    "bid": [1.0, 2.0],
    "pricing": ["cpm", "cpc"],
}


@pytest.mark.parametrize(
    ("req", "cands", "exposures", "field"),
    [
        (request(touchpoint="tv"), CANDS, None, "request.touchpoint"),
        (request(ts=datetime(2026, 3, 2)), CANDS, None, "request.ts"),
        (request(), {**CANDS, "format": ["video", "hologram"]}, None, "candidates.format"),
        (
            request(),
            {k: v for k, v in CANDS.items() if k != "bid"},
            None,
            "requests[0].candidates.bid",
        ),
        (request(), {**CANDS, "bid": [1.0]}, None, "requests[0].candidates.bid"),
        (request(), {**CANDS, "colour": ["r", "g"]}, None, "requests[0].candidates.colour"),
        (request(), CANDS, np.zeros((2, 3)), "requests[0].exposures"),
    ],
    ids=[
        "touchpoint",
        "naive-ts",
        "format",
        "missing-bid",
        "short-bid",
        "unknown-column",
        "exposure-shape",
    ],
)
def test_online_input_errors_name_the_field(
    core: FeatureCore,
    req: RequestContext,
    cands: dict[str, list[object]],
    exposures: np.ndarray | None,
    field: str,
) -> None:
    with pytest.raises(InvalidArgument) as info:
        core.online(req, cands, exposures)
    assert info.value.field == field


def test_online_with_no_history_has_zero_counts(core: FeatureCore) -> None:
    out = core.online(request(), CANDS).to_frame()
    assert out.select(COUNT_COLUMNS).sum_horizontal().to_list() == [0, 0]
    assert out["since_user_campaign_s"].to_list() == [None, None]
    assert out["expected_value"][0] == pytest.approx(1.0 / 1000)


def test_docs_list_every_feature_with_its_dtype() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "features.md").read_text()
    for feature in FEATURES:
        assert f"| `{feature.name}` | {feature.dtype} |" in doc, feature.name
