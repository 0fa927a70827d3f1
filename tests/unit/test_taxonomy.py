"""Issue 20, item 1 and 3: a protection may name a whole branch of a category taxonomy (the IAB
Ad Product Taxonomy's TSV), by id or by name."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from engine.cli import app
from engine.config import parse_config
from engine.errors import ConfigError
from engine.model.bundle import ModelBundle
from engine.scoring.scorer import Scorer
from engine.scoring.types import Reason, ScoreRequest
from engine.synth.params import CATEGORIES
from features import Priors
from features.online import RequestContext
from features.taxonomy import Branches, expand, load_taxonomy

from .test_config import DEFAULT

EXCERPT = (
    Path(__file__).resolve().parents[1] / "fixtures" / "taxonomy" / "ad_product_2_0_excerpt.tsv"
)
runner = CliRunner()
SPELLINGS = ["1002", "1004", "1006", "1131", "1132", "beer", "ALCOHOL", "wine", "yoga", "Yoga"]
ALCOHOL = ["1002", "1003", "1004", "1005", "1006", "1007"]


def test_a_branch_is_its_root_and_everything_under_it() -> None:
    taxonomy = load_taxonomy(EXCERPT)
    assert sorted(taxonomy.branch("1002")) == ALCOHOL
    assert sorted(taxonomy.branch("alcohol")) == ALCOHOL  # by name, any case
    assert sorted(taxonomy.branch("Consumer Packaged Goods")) == ["1123", "1131", "1132", "1136"]
    assert taxonomy.branch("1000") == ["1000"]  # the release names it its own parent
    assert expand(["gambling", "Beverages/*", "1131"], taxonomy) == [
        "gambling",
        *taxonomy.branch("1131"),
    ]


def _protections(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(DEFAULT)
    doc.setdefault("protections", {}).update(changes)
    return doc


def test_config_expands_branches_for_the_protections(tmp_path: Path) -> None:
    config = parse_config(
        _protections(
            tmp_path,
            taxonomy=str(EXCERPT),
            restricted_categories=["Alcohol/*", "gambling"],
            blocked_categories={"ott_boot": ["1131/*"]},
        )
    )
    assert sorted(config.protections.restricted()) == sorted([*ALCOHOL, "gambling"])
    assert sorted(config.protections.place_blocks()["ott_boot"]) == ["1131", "1132", "1136"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"restricted_categories": ["1002/*"]}, "names a branch: set protections.taxonomy"),
        ({"taxonomy": "EXCERPT", "restricted_categories": ["Tobacco/*"]}, "neither an id nor"),
        (
            {"taxonomy": "EXCERPT", "blocked_categories": {"family": ["9/*"]}},
            "blocked_categories.family",
        ),
        ({"taxonomy": "missing.tsv"}, "cannot read missing.tsv"),
        ({"taxonomy": "BAD"}, "no 'Unique ID' and 'Parent' columns"),
        ({"taxonomy": "CTRL"}, "holds a control character"),
        ({"content_taxonomy": "BAD"}, "content_taxonomy: "),
    ],
)
def test_taxonomy_problems_name_the_key(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("ID\tName\n1\tA\n")
    ctrl = tmp_path / "ctrl.tsv"
    ctrl.write_text("Unique ID\tParent ID\tName\n1\x1f2\t\tA\n")
    paths = {"EXCERPT": str(EXCERPT), "BAD": str(bad), "CTRL": str(ctrl)}
    changes = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in changes.items()}
    with pytest.raises(ConfigError) as info:
        parse_config(_protections(tmp_path, **changes))
    assert any(k == "protections" and message in p for k, p in info.value.problems), (
        info.value.problems
    )


# a content taxonomy in the IAB Content Taxonomy's TSV layout (ids made up for the test)
CONTENT = (
    "Unique ID\tParent\tName\tTier 1\tTier 2\n"
    "N1\t\tNews and Politics\tNews and Politics\t\n"
    "N2\tN1\tCrime\tNews and Politics\tCrime\n"
    "N3\tN1\tDisasters\tNews and Politics\tDisasters\n"
    "S1\t\tSports\tSports\t\n"
)


def test_a_campaign_excluding_content_excludes_its_branch(tmp_path: Path, model_dir: Path) -> None:
    """A campaign excluding News and Politics (by name) stays away from crime news (an id under
    it); one excluding Crime does not stay away from disasters; free tags match exactly.
    Without the content taxonomy only the same string is excluded."""
    content = tmp_path / "content.tsv"
    content.write_text(CONTENT)
    candidates: dict[str, list[Any]] = {
        "ad_id": ["whole", "crime", "disasters", "tag", "none"],
        "category": ["food"] * 5,
        "bid": [5.0] * 5,
        "pricing": ["cpm"] * 5,
        "format": ["image"] * 5,
        "excluded_content": [["news and politics"], ["N2"], ["N3", "S1"], ["gore"], None],
    }
    ctx = _phone("35_44", content_categories=("N2", "gore"))
    bundle = ModelBundle.load(model_dir, runtime="lightgbm")
    excluded = {}
    for taxonomy in (str(content), ""):
        config = parse_config(_protections(tmp_path, content_taxonomy=taxonomy))
        decision = Scorer(bundle, config).score(ScoreRequest(ctx, candidates))
        excluded[taxonomy] = {
            ad
            for ad, reason in zip(candidates["ad_id"], decision.reason, strict=True)
            if reason == Reason.CONTENT_EXCLUDED
        }
    assert excluded[str(content)] == {"whole", "crime", "tag"}
    assert excluded[""] == {"crime", "tag"}


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.none() | st.lists(st.sampled_from(SPELLINGS), max_size=3),
            st.none() | st.lists(st.sampled_from(SPELLINGS), max_size=3),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_branches_cover_as_the_ancestry_says(rows: list[tuple[Any, Any]]) -> None:
    """``Branches.covered`` (numpy over ragged lists) against the plain definition: a value is
    covered by an entry that is it or above it (ids or names, any case), or, unknown to the
    taxonomy, that is the same string."""
    taxonomy = load_taxonomy(EXCERPT)
    lookup = taxonomy.lookup()

    def above(node: str) -> set[str]:
        out = set()
        while node is not None and node not in out:
            out.add(node)
            node = taxonomy.parent[node]  # type: ignore[assignment]
        return out

    def covers(entry: str, value: str) -> bool:
        e, v = lookup.get(entry.lower()), lookup.get(value.lower())
        if e is None:
            return entry == value
        return v is not None and e in above(v)

    values = pa.array([r[0] for r in rows], type=pa.list_(pa.string()))
    entries = pa.array([r[1] for r in rows], type=pa.list_(pa.string()))
    got = Branches.of(taxonomy).covered(values, entries)
    want = [any(covers(e, v) for e in r[1] or [] for v in r[0] or []) for r in rows]
    assert got.tolist() == want


def _phone(age_band: str, **more: Any) -> RequestContext:
    """A phone feed request at noon, alone."""
    return RequestContext(
        "t",
        datetime(2026, 3, 3, 12, tzinfo=UTC),
        "u1",
        "mobile",
        "mobile_feed",
        scene="personal",
        local_hour=12,
        age_band=age_band,
        **more,
    )


def test_a_minor_gets_no_ad_of_the_branch(tmp_path: Path, model_dir: Path) -> None:
    config = parse_config(
        _protections(tmp_path, taxonomy=str(EXCERPT), restricted_categories=["Alcohol/*"])
    )
    scorer = Scorer(ModelBundle.load(model_dir, runtime="lightgbm"), config)
    ctx = _phone("under_18")
    categories = ["1006", "1132", "1002", "alcohol"]  # spirits, soft drinks, the root, a tag
    candidates: dict[str, list[Any]] = {
        "ad_id": [f"ad{i}" for i in range(4)],
        "category": categories,
        "bid": [50.0, 1.0, 50.0, 50.0],
        "pricing": ["cpm"] * 4,
        "format": ["image"] * 4,
    }
    decision = scorer.score(ScoreRequest(ctx, candidates))
    reasons = dict(zip(candidates["ad_id"], decision.reason, strict=True))
    assert [reasons[f"ad{i}"] for i in (0, 2)] == [Reason.AGE_RESTRICTED] * 2
    assert reasons["ad1"] != Reason.AGE_RESTRICTED
    assert reasons["ad3"] != Reason.AGE_RESTRICTED  # the free tag is no longer listed


def test_a_request_blocking_a_category_blocks_its_branch(tmp_path: Path, model_dir: Path) -> None:
    """OpenRTB bcat with taxonomy ids: blocking 1002 (Alcohol) blocks 1006 (Spirits), 1002
    itself and an ad whose category is a name under it (beer, any case); a category outside
    the branch, and a free tag, are untouched. Without a taxonomy only the listed id is
    blocked."""
    candidates: dict[str, list[Any]] = {
        "ad_id": ["spirits", "alcohol", "soda", "beer", "tag"],
        "category": ["1006", "1002", "1132", "beer", "yoga"],
        "bid": [5.0] * 5,
        "pricing": ["cpm"] * 5,
        "format": ["image"] * 5,
    }
    ctx = _phone("35_44", blocked_categories=("1002",))
    bundle = ModelBundle.load(model_dir, runtime="lightgbm")
    blocked = {}
    for taxonomy in (str(EXCERPT), ""):
        scorer = Scorer(bundle, parse_config(_protections(tmp_path, taxonomy=taxonomy)))
        decision = scorer.score(ScoreRequest(ctx, candidates))
        blocked[taxonomy] = {
            ad
            for ad, reason in zip(candidates["ad_id"], decision.reason, strict=True)
            if reason == Reason.BLOCKED_CATEGORY
        }
    assert blocked[str(EXCERPT)] == {"spirits", "alcohol", "beer"}
    assert blocked[""] == {"alcohol"}


def _world_taxonomy(path: Path) -> Path:
    """The synthetic world's categories as a taxonomy TSV: alcohol under food, kids under home."""
    rows = ["Unique ID\tParent ID\tName", "food\t\tFood", "home\t\tHome"]
    rows += ["alcohol\tfood\tAlcohol", "kids\thome\tKids"]
    rows += [
        f"{c}\t\t{c.title()}" for c in CATEGORIES if c not in ("food", "home", "alcohol", "kids")
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_model_trained_with_a_taxonomy_serves_with_it(model_log: Path, tmp_path: Path) -> None:
    """``admatch train --taxonomy``: the model directory keeps the taxonomy (priors.json), so
    the served features match interests through it as training did; the features job over
    that directory does the same; an unreadable taxonomy is refused by name."""
    tsv = _world_taxonomy(tmp_path / "world.tsv")
    out = tmp_path / "model"
    args = ["train", "--log", str(model_log), "--out", str(out), "--no-compile", "--threads", "1"]
    result = runner.invoke(app, [*args, "--taxonomy", str(tsv)])
    assert result.exit_code == 0, result.output
    bundle = ModelBundle.load(out, runtime="lightgbm")
    assert bundle.core.params.priors.taxonomy == load_taxonomy(tsv)
    ctx = _phone("35_44", user_interests=("FOOD",))
    candidates: dict[str, list[Any]] = {
        "ad_id": ["wine", "pasta", "car"],
        "category": ["alcohol", "food", "auto"],
        "bid": [5.0] * 3,
        "pricing": ["cpm"] * 3,
        "format": ["image"] * 3,
    }
    features = bundle.core.online(ctx, candidates).to_frame()
    assert features["interest_affinity"].to_list() == [1.0, 1.0, 0.0]

    frame = tmp_path / "features.parquet"
    result = runner.invoke(
        app, ["features", "--log", str(model_log), "--out", str(frame), "--stats", str(out)]
    )
    assert result.exit_code == 0, result.output
    offline = bundle.core.offline(pl.read_parquet(model_log)).collect()
    assert pl.read_parquet(frame)["interest_affinity"].equals(offline["interest_affinity"])

    result = runner.invoke(app, [*args, "--taxonomy", str(tmp_path / "missing.tsv")])
    assert result.exit_code == 2, result.output
    assert "taxonomy" in result.output and "missing.tsv" in result.output


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"parent": {"a": "zz"}, "name": {}}, "parents ['zz'] are not categories"),
        ({"parent": ["a"], "name": {}}, "expected {'parent'"),
        ({"parent": {"a": 3}, "name": {}}, "neither an id nor null"),
    ],
)
def test_a_model_directory_with_a_broken_taxonomy_is_refused(doc: Any, problem: str) -> None:
    """priors.json is read back strictly: a broken taxonomy is named, not half-used."""
    good = Priors.default()
    assert Priors.from_dict(good.to_dict()) == good
    with pytest.raises(ConfigError) as info:
        Priors.from_dict(good.to_dict() | {"taxonomy": doc}, "priors.json")
    assert any(k == "taxonomy" and problem in p for k, p in info.value.problems)
