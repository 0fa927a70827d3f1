"""Batching across requests: concurrent decisions share one pass of the scoring core.

Request threads do their own cap-store I/O, then hand the prepared request to the batcher and
wait. One scoring thread takes the first waiting request, gathers more for up to ``window_s``
(at most ``max_batch``), and decides them with ``Scorer.score_batch``: one polars and one model
pass over the batch instead of one per request. Each caller gets its own decision. If the
batch pass fails, its requests are decided one by one, so one bad request fails alone.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from engine.deadline import Deadline
from engine.scoring.scorer import Scorer
from engine.scoring.types import Decision, ScoreRequest
from engine.timing import NULL_TIMER, StageTimer


@dataclass
class _Job:
    scorer: Scorer
    request: ScoreRequest
    future: Future[Decision] = field(default_factory=Future)


class Batcher:
    """Merges requests that arrive within ``window_s`` (up to ``max_batch``) into one pass."""

    def __init__(self, window_s: float, max_batch: int) -> None:
        self.window_s = window_s
        self.max_batch = max_batch
        self.batches = 0
        self.requests = 0
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="admatch-batcher", daemon=True)
        self._thread.start()

    def score(
        self, scorer: Scorer, request: ScoreRequest, timer: StageTimer, deadline: Deadline
    ) -> Decision:
        """Decide ``request`` with ``scorer`` in the next batch; waits at most the deadline."""
        job = _Job(scorer, request)
        with timer.stage("batched"):
            self._queue.put(job)
            try:
                return job.future.result(timeout=deadline.remaining())
            except TimeoutError:
                raise deadline.exceeded("scoring finished") from None

    def _gather(self) -> list[_Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        jobs = [first]
        end = time.monotonic() + self.window_s
        while len(jobs) < self.max_batch:
            try:
                nxt = self._queue.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)  # stop after this batch
                break
            jobs.append(nxt)
        return jobs

    def _run(self) -> None:
        while (jobs := self._gather()) is not None:
            self.batches += 1
            self.requests += len(jobs)
            by_scorer: dict[int, list[_Job]] = {}
            for job in jobs:  # a reload mid-batch: each request keeps the scorer it started with
                by_scorer.setdefault(id(job.scorer), []).append(job)
            for group in by_scorer.values():
                _decide(group)

    def close(self) -> None:
        """Finish the queued requests, then stop the scoring thread."""
        self._queue.put(None)
        self._thread.join()


def _decide(jobs: list[_Job]) -> None:
    try:
        decisions = jobs[0].scorer.score_batch([j.request for j in jobs], NULL_TIMER)
    except Exception as exc:  # delivered to the caller, mapped by the interceptor there
        if len(jobs) == 1:
            jobs[0].future.set_exception(exc)
        else:  # find the bad one: decide each alone
            for job in jobs:
                _decide([job])
        return
    for job, decision in zip(jobs, decisions, strict=True):
        job.future.set_result(decision)
