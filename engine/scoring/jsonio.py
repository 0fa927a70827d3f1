"""Requests and decisions as JSON: the format of golden files and of ``admatch decide``.

A request is an object with the request fields of the log schema (``ts`` as ISO 8601 with a
zone), an optional ``pod`` (``max_ads``, ``max_total_duration_s``) and ``candidates``: a list of
objects with the candidate fields and, optionally, ``exposures``: the candidate's non-zero
exposure counts and recencies by column name (see ``docs/features.md``); absent counts are 0 and
absent recencies null. ``campaign_caps`` (optional) maps a campaign id to its own cap rules,
e.g. ``{"c1": [{"scope": "user", "window": "24h", "limit": 2}]}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from pydantic import ValidationError

from engine.caps.rules import CapRule
from engine.errors import InvalidArgument
from engine.scoring.types import (
    Decision,
    PodLimits,
    ScoreRequest,
    attribute_mask,
)
from features.exposure import EXPOSURE_SCHEMA, SINCE_COLUMNS
from features.online import LIST_FIELDS, REQUEST_FIELDS, RequestContext
from features.schema import CANDIDATE_COLUMNS

_EXPOSURE_INDEX = {name: i for i, name in enumerate(EXPOSURE_SCHEMA.names())}


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(field, f"must be an object, got {type(value).__name__}")
    return value


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidArgument(field, f"must be a list, got {type(value).__name__}")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(field, f"must be a number, got {value!r}")
    return float(value)


def _context(doc: dict[str, Any]) -> RequestContext:
    fields: dict[str, Any] = {k: doc.get(k) for k in REQUEST_FIELDS}
    for key in ("request_id", "ts", "user_id", "touchpoint", "slot"):
        if fields[key] is None:
            raise InvalidArgument(f"request.{key}", "required")
    for key in ("request_id", "user_id"):  # not feature columns: nothing else checks them
        if not isinstance(fields[key], str) or not fields[key]:
            raise InvalidArgument(
                f"request.{key}", f"must be a non-empty string, got {fields[key]!r}"
            )
    if not isinstance(fields["ts"], str | datetime):
        raise InvalidArgument("request.ts", f"must be an ISO 8601 string, got {fields['ts']!r}")
    try:
        if isinstance(fields["ts"], str):
            fields["ts"] = datetime.fromisoformat(fields["ts"])
    except ValueError as exc:
        raise InvalidArgument("request.ts", f"not an ISO 8601 time: {exc}") from exc
    for name in LIST_FIELDS:
        values = _list(doc.get(name) or [], f"request.{name}")
        if not all(isinstance(t, str) for t in values):
            raise InvalidArgument(f"request.{name}", "must be a list of strings")
        fields[name] = tuple(values)
    blocked = doc.get("blocked_attributes")  # OpenRTB battr: attribute numbers
    fields["blocked_attributes"] = (
        attribute_mask(blocked, "request.blocked_attributes") or None if blocked else None
    )
    return RequestContext(**fields)


def _exposures(candidates: list[dict[str, Any]]) -> np.ndarray | None:
    if not any("exposures" in c for c in candidates):
        return None
    out = np.zeros((len(candidates), len(EXPOSURE_SCHEMA)))
    for name in SINCE_COLUMNS:
        out[:, _EXPOSURE_INDEX[name]] = np.nan
    for i, cand in enumerate(candidates):
        field = f"candidates[{i}].exposures"
        for name, value in _object(cand.get("exposures") or {}, field).items():
            if name not in _EXPOSURE_INDEX:
                raise InvalidArgument(f"{field}.{name}", "unknown column")
            if value is not None or name not in SINCE_COLUMNS:  # a null recency: none
                out[i, _EXPOSURE_INDEX[name]] = _number(value, f"{field}.{name}")
    return out


def request_from_json(doc: dict[str, Any]) -> ScoreRequest:
    """Build a :class:`ScoreRequest` from its JSON form, validated (JSON is where it enters).

    Raises:
        InvalidArgument: a missing, unknown or invalid field, naming it.
    """
    _object(doc, "request")
    candidates = doc.get("candidates")
    if not isinstance(candidates, list):
        raise InvalidArgument("request.candidates", "must be a list of candidate objects")
    allowed = set(CANDIDATE_COLUMNS) | {"exposures"}
    for i, cand in enumerate(candidates):
        unknown = set(_object(cand, f"candidates[{i}]")) - allowed
        if unknown:
            raise InvalidArgument(f"candidates[{i}].{sorted(unknown)[0]}", "unknown field")
    present = [c for c in CANDIDATE_COLUMNS if any(c in cand for cand in candidates)]
    columns = {c: [cand.get(c) for cand in candidates] for c in present}
    for i, entry in enumerate(columns.get("excluded_content", ())):
        if entry is not None and not (
            isinstance(entry, list) and all(isinstance(v, str) for v in entry)
        ):
            raise InvalidArgument(f"candidates[{i}].excluded_content", "must be a list of strings")
    if "creative_attributes" in columns:  # OpenRTB attr: attribute numbers, as bitmasks
        columns["creative_attributes"] = [
            attribute_mask(v, f"candidates[{i}].creative_attributes") if v else None
            for i, v in enumerate(columns["creative_attributes"])
        ]
    request = ScoreRequest(
        context=_context(doc),
        candidates=columns,
        exposures=_exposures(candidates),
        pod=_pod(doc.get("pod")),
        campaign_caps=_campaign_caps(
            _object(doc.get("campaign_caps") or {}, "request.campaign_caps")
        ),
    )
    request.validate("request")
    return request


def _pod(doc: Any) -> PodLimits | None:
    """``{"max_ads": 2, "max_total_duration_s": 60}`` (the total optional); types and ranges
    are checked by ``ScoreRequest.validate``."""
    if not doc:
        return None
    unknown = set(_object(doc, "request.pod")) - {"max_ads", "max_total_duration_s"}
    if unknown:
        raise InvalidArgument(f"request.pod.{sorted(unknown)[0]}", "unknown field")
    if "max_ads" not in doc:
        raise InvalidArgument("request.pod.max_ads", "required")
    return PodLimits(doc["max_ads"], doc.get("max_total_duration_s"))


def _campaign_caps(doc: dict[str, Any]) -> dict[str, list[CapRule]]:
    """``{"campaign_id": [{"scope": "user", "window": "24h", "limit": 2}]}`` -> rules."""
    out: dict[str, list[CapRule]] = {}
    for campaign, rules in doc.items():
        out[campaign] = []
        field = f"request.campaign_caps.{campaign}"
        for i, rule in enumerate(_list(rules, field)):
            try:
                out[campaign].append(
                    CapRule.model_validate(
                        {
                            "target": "campaign",
                            **_object(rule, f"{field}[{i}]"),
                            "campaign_id": campaign,
                        }
                    )
                )
            except ValidationError as exc:
                problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise InvalidArgument(f"{field}[{i}]", problem) from exc
    return out


def decision_to_json(decision: Decision) -> dict[str, Any]:
    """A decision as JSON: selected ads in order and every candidate's decision and score."""
    return {
        "request_id": decision.request_id,
        "selected": decision.selected,
        "model_version": decision.model_version,
        "config_version": decision.config_version,
        "candidates": decision.rows(),
    }
