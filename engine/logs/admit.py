"""Which requests of an imported log the service would take, by the service's own checks.

An imported row may be readable and still belong to a request the service refuses: its rows
disagree on the request's user or time, it names one ad twice, its slot is not one of its
touchpoint's, it carries more candidates than a server takes. Such a request is rejected whole
(every row, with the service's message), so that a replay never meets it; ``--dedupe`` repairs
a repeated ad instead by keeping its first row. The checks are the service's own: each request
is built as the replay builds it (``engine.replay.requests.to_requests``) and checked by
``ScoreRequest.validate`` and the server's bounds (``engine.rpc.limits.Limits``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from engine.errors import InvalidArgument, message_rule
from engine.replay.requests import to_requests
from engine.replay.source import RequestChunk, request_bounds
from engine.rpc.limits import Limits
from engine.scoring.types import ScoreRequest
from features.schema import REQUEST_COLUMNS

REASON, RULE = "reject_reason", "reject_rule"
_IDS = ("request_id", "user_id", "household_id", "device_id")
_CANDIDATE_TEXTS = (
    "ad_id",
    "creative_id",
    "campaign_id",
    "advertiser_id",
    "category",
    "advertiser_domain",
)


@dataclass(frozen=True)
class Admitted:
    """The rows of the requests the service takes (in replay order: ``ts``, then
    ``request_id``, each request's rows together in file order) and the others, each with
    its reason (``reject_reason``) and the reason's rule without its values (``reject_rule``:
    what reports count by)."""

    rows: pl.DataFrame
    rejected: pl.DataFrame


def admit(rows: pl.DataFrame, line: str, *, dedupe: bool, limits: Limits) -> Admitted:
    """Split ``rows`` (schema columns with their dtypes; ``line`` orders rows within a
    request) into the requests the service takes and the rest (see the module doc)."""
    rows = rows.with_columns(_disagreement().alias(REASON))
    rows = rows.with_columns(
        pl.when(pl.col(REASON).is_null() & _repeated(line, dedupe))
        .then(pl.lit("ad_id: given twice in its request (--dedupe keeps the first row)"))
        .otherwise(pl.col(REASON))
        .alias(REASON)
    )
    early = rows.filter(pl.col(REASON).is_not_null())
    rest = rows.filter(pl.col(REASON).is_null()).sort(
        ["ts", "request_id", line], maintain_order=True
    )
    reasons = _service_checks(rest, limits)
    refused = rest.with_columns(pl.Series(REASON, reasons, dtype=pl.String))
    rejected = pl.concat(
        [early, refused.filter(pl.col(REASON).is_not_null())], how="vertical_relaxed"
    )
    rules = {r: message_rule(r) for r in rejected[REASON].unique().to_list()}
    rejected = rejected.with_columns(
        pl.col(REASON).replace_strict(rules, return_dtype=pl.String).alias(RULE)
    )
    return Admitted(refused.filter(pl.col(REASON).is_null()).drop(REASON), rejected)


def _disagreement() -> pl.Expr:
    """Per row, the first request column its request's rows disagree on, as a reason."""
    reason: pl.Expr = pl.lit(None, dtype=pl.String)
    for name in reversed([c for c in REQUEST_COLUMNS if c != "request_id"]):
        differs = pl.col(name).n_unique().over("request_id") > 1
        text = f"{name}: differs between the rows of its request_id (one request, one {name})"
        reason = pl.when(differs).then(pl.lit(text)).otherwise(reason)
    return reason


def _repeated(line: str, dedupe: bool) -> pl.Expr:
    """With ``dedupe``: the rows of an ad already given earlier in its request."""
    if not dedupe:
        return pl.lit(False)
    first = pl.col(line).min().over(["request_id", "ad_id"])
    return pl.col(line) != first


def _service_checks(rows: pl.DataFrame, limits: Limits) -> list[str | None]:
    """Per row, the service's refusal of its request (None: taken)."""
    out: list[str | None] = [None] * len(rows)
    if rows.is_empty():
        return out
    bounds = request_bounds(rows)
    requests = to_requests(RequestChunk(rows, bounds))
    for i, request in enumerate(requests):
        try:
            _check(request, limits)
        except InvalidArgument as exc:
            out[int(bounds[i]) : int(bounds[i + 1])] = [str(exc)] * int(bounds[i + 1] - bounds[i])
    return out


def _check(request: ScoreRequest, limits: Limits) -> None:
    """What the service checks of one request: its bounds, then ``ScoreRequest.validate``."""
    ctx = request.context
    for name in _IDS:
        value = getattr(ctx, name)
        if value is not None:
            limits.text(f"request.{name}", value)
    for name, bound, key in (
        ("user_interests", limits.interests, "max_interests"),
        ("blocked_categories", limits.blocked, "max_blocked"),
        ("blocked_advertisers", limits.blocked, "max_blocked"),
        ("content_categories", limits.blocked, "max_blocked"),
    ):
        limits.entries(f"request.{name}", list(getattr(ctx, name) or ()), bound, key)
    ads = request.candidates["ad_id"]
    limits.count("request.candidates", len(ads), limits.candidates, "max_candidates")
    for name in _CANDIDATE_TEXTS:
        values = [v or "" for v in request.candidates.get(name, ())]
        limits.texts(values, _candidate_path(name))
    for i, entry in enumerate(request.candidates.get("excluded_content") or ()):
        if entry:  # a campaign's content exclusions
            path = f"request.candidates[{i}].excluded_content"
            limits.entries(path, list(entry), limits.blocked, "max_blocked")
    request.validate("request")


def _candidate_path(name: str) -> Callable[[int], str]:
    return lambda i: f"request.candidates[{i}].{name}"
