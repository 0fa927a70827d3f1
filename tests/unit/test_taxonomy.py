"""Issue 20, item 1 and 3: a protection may name a whole branch of a category taxonomy (the IAB
Ad Product Taxonomy's TSV), by id or by name."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.config import parse_config
from engine.errors import ConfigError
from engine.model.bundle import ModelBundle
from engine.scoring.scorer import Scorer
from engine.scoring.taxonomy import expand, load_taxonomy
from engine.scoring.types import Reason, ScoreRequest
from features.online import RequestContext

from .test_config import DEFAULT

EXCERPT = (
    Path(__file__).resolve().parents[1] / "fixtures" / "taxonomy" / "ad_product_2_0_excerpt.tsv"
)
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
    """OpenRTB bcat with taxonomy ids: blocking 1002 (Alcohol) blocks 1006 (Spirits) and 1002
    itself; a category outside the branch, and a free tag, are untouched. Without a taxonomy
    only the listed id is blocked."""
    candidates: dict[str, list[Any]] = {
        "ad_id": ["spirits", "alcohol", "soda", "tag"],
        "category": ["1006", "1002", "1132", "beer"],
        "bid": [5.0] * 4,
        "pricing": ["cpm"] * 4,
        "format": ["image"] * 4,
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
    assert blocked[str(EXCERPT)] == {"spirits", "alcohol"}
    assert blocked[""] == {"alcohol"}
