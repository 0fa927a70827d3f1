"""Golden request -> decision files (tests/golden/scoring): exemplary, edge and error cases.

The expected decisions were produced by the scorer with the session's small model and the
default config, then reviewed by hand. To rewrite them after an intended change, run
``ADMATCH_UPDATE_GOLDEN=1 pytest tests/unit/test_golden.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from engine.errors import InvalidArgument
from engine.scoring.jsonio import decision_to_json, request_from_json
from engine.scoring.scorer import Scorer

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "scoring"
CASES = sorted(GOLDEN.glob("*/*.json"))
UPDATE = os.environ.get("ADMATCH_UPDATE_GOLDEN") == "1"


def summary(decision_json: dict[str, Any]) -> dict[str, Any]:
    """The parts of a decision a golden file pins (floats to 6 decimals)."""
    return {
        "selected": decision_json["selected"],
        "candidates": {
            c["ad_id"]: {
                "reason": c["reason"],
                "rank": c["rank"],
                "p_engage": round(c["p_engage"], 6),
                "utility": round(c["utility"], 6),
            }
            for c in decision_json["candidates"]
        },
    }


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_golden(scorer: Scorer, path: Path) -> None:
    doc = json.loads(path.read_text())
    expected = doc.get("expected", {})
    if "error" in expected:
        with pytest.raises(InvalidArgument) as info:
            scorer.score_batch([request_from_json(doc["request"])])
        assert info.value.field == expected["error"]["field"]
        assert expected["error"]["contains"] in info.value.problem
        return
    actual = summary(decision_to_json(scorer.score(request_from_json(doc["request"]))))
    if UPDATE:
        doc["expected"] = actual
        path.write_text(json.dumps(doc, indent=1) + "\n")
    assert actual["selected"] == expected["selected"]
    for ad, want in expected["candidates"].items():
        got = actual["candidates"][ad]
        assert (got["reason"], got["rank"]) == (want["reason"], want["rank"]), ad
        assert got["p_engage"] == pytest.approx(want["p_engage"], abs=1e-6), ad
        assert got["utility"] == pytest.approx(want["utility"], abs=1e-6), ad


def test_every_kind_of_case_is_present() -> None:
    kinds = {p.parent.name for p in CASES}
    assert kinds == {"exemplary", "edge", "error"}
    assert len(CASES) >= 12
