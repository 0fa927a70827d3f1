"""The benchmark's straightforward design decides as admatch does: its figures compare two
ways to the same answers, not two different products."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf import json_format

from admatch.v1 import admatch_pb2 as pb
from benchmarks.bench_baseline import Baseline, engine_decide
from engine.rpc.decode import decode_events
from engine.scoring.jsonio import request_from_json

from .conftest import memory_app

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "scoring"


def test_the_baseline_decides_as_the_engine(model_dir: Path) -> None:
    """On every golden request that is not a pod (the baseline fills no pods), after the
    stateful goldens' histories (blocks, separation, caps) are recorded."""
    app = memory_app(model_dir)
    try:
        docs = [json.loads(p.read_text()) for p in sorted(GOLDEN.glob("[!e]*/*.json"))]
        docs += [json.loads(p.read_text()) for p in sorted(GOLDEN.glob("edge/*.json"))]
        events = [e for d in docs for e in d.get("history", [])]
        batch = json_format.ParseDict({"events": events}, pb.EventBatch())
        assert app.record(*decode_events(batch, datetime.now(UTC), app.max_ahead_s))
        requests = [request_from_json(d["request"]) for d in docs]
        requests = [r for r in requests if r.pod is None and not app.gate.is_pod(r)]
        ours = engine_decide(app, requests)
        theirs = [Baseline(app, model_dir).decide(r) for r in requests]
        assert len(ours) == len(requests) > 10
        refused = {str(x) for d in ours for x in d.reason}
        assert {"USER_BLOCKED", "COMPETITIVE_SEPARATION"} <= refused  # the histories count
        for a, b in zip(ours, theirs, strict=True):
            assert a.selected == b.selected, a.request_id
            assert list(a.reason) == list(b.reason), a.request_id
    finally:
        app.close()
