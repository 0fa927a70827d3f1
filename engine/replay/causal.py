"""The causal order of a replay: which requests may share a batching pass, and which must
wait for which (pure functions of the requests' user, household and device ids; the replay's
engines and the tuner's simulation use them alike)."""

from __future__ import annotations

from collections.abc import Sequence

from engine.scoring.types import ScoreRequest


def entities(request: ScoreRequest) -> set[tuple[str, str]]:
    ctx = request.context
    ids = (("user", ctx.user_id), ("household", ctx.household_id), ("device", ctx.device_id))
    return {(kind, value) for kind, value in ids if value}


def causal_batches(requests: Sequence[ScoreRequest], max_batch: int) -> list[range]:
    """Consecutive runs of at most ``max_batch`` requests in which no user, household or
    device appears twice.

    A server's batcher merges requests that arrive within a millisecond, which in real time
    never holds two requests of one user: the second comes after the first's ad was shown. A
    replay runs far faster than real time, so it cuts a batch where a user, household or device
    repeats; otherwise the later request could not see the earlier one's exposure and a cap
    could be overrun only because the log was replayed fast.
    """
    return causal_spans([entities(r) for r in requests], max_batch)


def causal_spans(entities: Sequence[set[tuple[str, str]]], max_batch: int) -> list[range]:
    """:func:`causal_batches` over each request's set of (kind, id) entities."""
    out, start, seen = [], 0, set[tuple[str, str]]()
    for i, ids in enumerate(entities):
        if i - start >= max_batch or not seen.isdisjoint(ids):
            out.append(range(start, i))
            start, seen = i, set()
        seen |= ids
    if start < len(entities):
        out.append(range(start, len(entities)))
    return out


def previous_conflict(requests: Sequence[ScoreRequest]) -> list[int]:
    """Per request, the index of the latest earlier request sharing its user, household or
    device (-1 if none): a concurrent replay waits for that one before sending (see
    :func:`causal_batches` for why)."""
    last: dict[tuple[str, str], int] = {}
    out = []
    for i, r in enumerate(requests):
        ids = entities(r)
        out.append(max((last.get(e, -1) for e in ids), default=-1))
        for e in ids:
            last[e] = i
    return out
