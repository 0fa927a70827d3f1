"""A JSON request (``admatch decide``, golden files) with any value in any field is scored or
refused with ``InvalidArgument`` naming the field: never another exception.

Property-based: hypothesis replaces or adds fields of the golden requests, at the top level, in
a candidate, in its exposures, in the pod and in the campaign caps, with any JSON value.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.errors import AdmatchError, InvalidArgument
from engine.scoring.jsonio import request_from_json
from engine.scoring.scorer import Scorer
from features.exposure import EXPOSURE_SCHEMA

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "scoring"
DOCS = [
    json.loads(p.read_text())["request"]
    for p in sorted(GOLDEN.glob("*/*.json"))
    if p.parent.name != "error"
]
EXAMPLES = int(os.environ.get("ADMATCH_FUZZ_EXAMPLES", "300"))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["", "2026-03-03T12:15:00+00:00", "2026-03-03T12:15:00", "ott", "24h"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _keys(obj: Any) -> list[str]:
    return sorted(obj) if isinstance(obj, dict) else []


def _mutate(data: st.DataObject, doc: dict[str, Any]) -> None:
    """Set one field somewhere in the request to any JSON value (maybe a new field)."""
    where = data.draw(
        st.sampled_from(["request", "candidate", "exposures", "pod", "campaign_caps"]),
        label="where",
    )
    target: Any = doc
    if where == "candidate" or where == "exposures":
        cands = doc.get("candidates")
        if not isinstance(cands, list) or not cands:
            return
        target = cands[data.draw(st.integers(0, len(cands) - 1), label="candidate")]
        if where == "exposures" and isinstance(target, dict):
            target = target.setdefault("exposures", {})
    elif where == "pod":
        target = doc.setdefault("pod", {"max_ads": 1})
    elif where == "campaign_caps":
        target = doc.setdefault("campaign_caps", {"c1": [{"scope": "user", "limit": 1}]})
    if not isinstance(target, dict):
        return
    known = _keys(target) + (["exposures"] if where == "candidate" else [])
    key = data.draw(st.one_of(st.sampled_from(known or ["x"]), st.text(max_size=6)), label="key")
    target[key] = data.draw(JSON, label="value")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_json_request_is_scored_or_refused_by_field(
    scorer: Scorer, data: st.DataObject
) -> None:
    doc = copy.deepcopy(data.draw(st.sampled_from(DOCS), label="golden"))
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        _mutate(data, doc)
    try:
        request = request_from_json(doc)
        request.validate()
        decision = scorer.score(request)
    except Exception as exc:  # noqa: BLE001  # the property is about which exceptions
        assert isinstance(exc, AdmatchError), f"{type(exc).__name__}: {exc} (a traceback)"
        assert isinstance(exc, InvalidArgument) and exc.field and exc.problem, exc
        event(f"refused: {exc.field.split('[')[0].split('.')[0]}")
        return
    event("scored")
    assert len(decision.ad_id) == len(doc["candidates"])
    assert all(math.isfinite(u) for u in decision.utility[decision.rank > 0])


# What the property found (each was a TypeError, AttributeError or ValueError), pinned.
FIRST_COUNT = EXPOSURE_SCHEMA.names()[0]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["candidates"].__setitem__(0, 5), "candidates[0]"),
        (lambda d: d.__setitem__("pod", [2]), "request.pod"),
        (lambda d: d.__setitem__("pod", {"max_ads": "2"}), "request.pod.max_ads"),
        (lambda d: d.__setitem__("pod", {"max_ads": 2, "max": 1}), "request.pod.max"),
        (
            lambda d: d.__setitem__("pod", {"max_ads": 2, "max_total_duration_s": math.nan}),
            "request.pod.max_total_duration_s",
        ),
        (lambda d: d.__setitem__("campaign_caps", [1]), "request.campaign_caps"),
        (lambda d: d.__setitem__("campaign_caps", {"c1": 3}), "request.campaign_caps.c1"),
        (lambda d: d.__setitem__("campaign_caps", {"c1": [3]}), "request.campaign_caps.c1[0]"),
        (
            lambda d: d["candidates"][1].__setitem__("exposures", {FIRST_COUNT: "many"}),
            f"candidates[1].exposures.{FIRST_COUNT}",
        ),
        (lambda d: d["candidates"][1].__setitem__("exposures", [1]), "candidates[1].exposures"),
        (lambda d: d.__setitem__("slot", ["ott_preroll"]), "request.slot"),
        (lambda d: d.__setitem__("touchpoint", {"ott": 1}), "request.touchpoint"),
        (lambda d: d.__setitem__("user_interests", "sports"), "request.user_interests"),
        (lambda d: d.__setitem__("user_interests", [1]), "request.user_interests"),
        (lambda d: d.__setitem__("ts", 1767225600), "request.ts"),
        (lambda d: d.__setitem__("request_id", 7), "request.request_id"),
        (lambda d: d["candidates"][0].__setitem__("ad_id", ""), "request.candidates[0].ad_id"),
        (lambda d: d["candidates"][0].__setitem__("ad_id", ["a"]), "request.candidates[0].ad_id"),
        (lambda d: d.__setitem__("local_hour", 24), "request.local_hour"),
    ],
)
def test_odd_json_values_are_refused_naming_the_field(
    change: Callable[[dict[str, Any]], None], field: str
) -> None:
    doc = json.loads((GOLDEN / "exemplary" / "ott_preroll_pod.json").read_text())["request"]
    change(doc)
    with pytest.raises(InvalidArgument) as info:
        request_from_json(doc).validate()
    assert info.value.field == field
