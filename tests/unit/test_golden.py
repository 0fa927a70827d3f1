"""Golden request -> decision files (tests/golden/scoring): exemplary, edge and error cases.

The expected decisions were produced by the scorer with the session's small model and the
default config, then reviewed by hand. A case with a ``history`` (events in the proto's JSON
mapping of ``admatch.v1.Event``) is stateful: the events are recorded first, as RecordEvents
records them, into an app over the in-memory cap store, and the request is decided by that
app (blocks, separation); tests/integration/test_grpc_server.py plays the same cases over
gRPC. To rewrite them after an intended change, run
``ADMATCH_UPDATE_GOLDEN=1 pytest tests/unit/test_golden.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from admatch.v1 import admatch_pb2 as pb
from engine.app import build_app
from engine.config import load_config
from engine.errors import InvalidArgument
from engine.rpc.decode import decode_events
from engine.scoring.jsonio import decision_to_json, request_from_json
from engine.scoring.scorer import Scorer
from engine.scoring.types import Decision

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


def history(doc: dict[str, Any]) -> pb.EventBatch:
    """A stateful case's history as the batch an ad server would report."""
    return json_format.ParseDict({"events": doc.get("history", [])}, pb.EventBatch())


def decide_after_history(model_dir: Path, doc: dict[str, Any]) -> Decision:
    """Record the case's history into a fresh app (shipped config, in-memory cap store) and
    decide its request there, without reserving."""
    config = load_config()
    config = config.model_copy(
        update={"store": config.store.model_copy(update={"url": "memory://"})}
    )
    app = build_app(config, model_dir)
    try:
        app.record(*decode_events(history(doc), datetime.now(UTC), app.max_ahead_s))
        return app.decide(request_from_json(doc["request"]))
    finally:
        app.close()


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_golden(scorer: Scorer, model_dir: Path, path: Path) -> None:
    doc = json.loads(path.read_text())
    if "history" in doc:
        actual = summary(decision_to_json(decide_after_history(model_dir, doc)))
        check(path, doc, actual)
        return
    expected = doc.get("expected", {})
    if "error" in expected:
        with pytest.raises(InvalidArgument) as info:
            scorer.score_batch([request_from_json(doc["request"])])
        assert info.value.field == expected["error"]["field"]
        assert expected["error"]["contains"] in info.value.problem
        return
    actual = summary(decision_to_json(scorer.score(request_from_json(doc["request"]))))
    check(path, doc, actual)


def check(path: Path, doc: dict[str, Any], actual: dict[str, Any]) -> None:
    """``actual`` against the file's expectation (rewritten instead with the update flag)."""
    expected = doc.get("expected", {})
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
    stateful = [p.stem for p in CASES if "history" in json.loads(p.read_text())]
    assert len(stateful) >= 3, stateful


def test_a_stateful_case_depends_on_its_history(model_dir: Path) -> None:
    """Without its history the separation case selects what the history refuses: the
    golden pins the rule, not the request alone."""
    doc = json.loads((GOLDEN / "edge" / "stream_separation_across_pods.json").read_text())
    after = decide_after_history(model_dir, doc)
    before = decide_after_history(model_dir, {**doc, "history": []})
    assert after.selected != before.selected
    assert "COMPETITIVE_SEPARATION" in {c["reason"] for c in decision_to_json(after)["candidates"]}
