"""Batching across requests: concurrent requests share one pass of the scoring core.

A request is queued as ``Work``: what must happen before scoring (``prepare``: decoding and
validation) and after (``complete``: reserving caps, encoding). There is no scoring thread: the
first waiting caller that finds no pass running runs one (it "leads") over everything queued,
its own request included, up to ``max_batch``: each request's ``prepare``, one cap-store read
for all of them (``CapGate.prepare_many``: one round trip), one ``Scorer.score_batch`` (one
polars and one model pass instead of one per request), each ``complete``. Requests that arrive
meanwhile queue up for the next pass, so the batch grows with the load by itself ("natural"
batching), and one request at a time is decided at once in its caller's thread, with no
hand-off and no added latency. ``window_s`` > 0 makes a leader wait up to that long for as
many requests as the recent passes took (``Batcher``): under load, the requests whose answers
just left come back a moment later, and a pass that starts before them is a small one (a pass
of 8 costs ~1.4 ms a request, one of 32 ~0.9, in process); when the load falls, the passes
shrink and so does what a leader waits for.

Doing all of a pass's work in one thread is cheaper than having each request thread do its own
decoding and cap read: on a 2-core machine shared with Redis and the clients, threads running
Python side by side cost 20-25% more CPU per request (GIL hand-offs, context switches); and
the leader waits for the cap store once per pass, not once per request.

Each caller gets its own outcome; a request whose ``prepare``, cap read or ``complete`` fails
fails alone (a cap store that does not answer fails each request closed or open, as
``CapGate`` does for one; the read waits at most as long as the pass's most patient request
has left), a request whose deadline has passed before the cap read or before scoring fails
with ``DeadlineExceeded``, and if a pass's ``score_batch`` fails, its requests
are scored one by one, so one bad request fails alone there too. Each request keeps the scorer
and gate it was prepared with (``Prepared``): after a reload, a pass reads the store once per
gate and scores once per scorer. The pass's cap read, features, model and rank are timed by the
leader's timer.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from engine.caps.gate import CapGate
from engine.deadline import Deadline
from engine.errors import DeadlineExceeded
from engine.scoring.scorer import Scorer
from engine.scoring.types import Decision, ScoreRequest
from engine.timing import StageTimer

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


@dataclass(frozen=True)
class Prepared:
    """A request ready for its pass: decoded and validated (no exposures or caps read yet),
    with the scorer and cap gate serving when it was prepared and its deadline."""

    scorer: Scorer
    gate: CapGate
    request: ScoreRequest
    deadline: Deadline


class Work(Protocol[R_co]):
    """One request's part of a pass; both methods run in the leading caller's thread."""

    def prepare(self) -> Prepared:
        """The request decoded and validated, with the scorer and gate to decide it with (the
        pass reads the cap store for it). Raises to fail this request alone."""
        ...

    def complete(self, decision: Decision) -> R_co:
        """The outcome, from the request's decision. Raises to fail this request alone."""
        ...


@dataclass(frozen=True)
class Call(Generic[R]):
    """Work made of two plain functions (what ``App.work`` builds from a transport's decode
    and encode)."""

    prepare: Callable[[], Prepared]
    complete: Callable[[Decision], R]


def run_alone(work: Work[R], timer: StageTimer) -> R:
    """``work`` without batching: prepare, read the cap store, score, complete in this
    thread."""
    ready = work.prepare()
    ready.deadline.check("caps")
    with timer.stage("caps"):
        request = ready.gate.prepare(ready.request, ready.deadline.remaining())
    ready.deadline.check("scoring")
    return work.complete(ready.scorer.score(request, timer))


@dataclass(eq=False)
class Job(Generic[R]):
    """One queued request. Its waiter (``waiting``) sleeps on ``wake`` (held from creation)
    until a pass has finished it (``done``) or the lead is handed to it (``lead``)."""

    work: Work[R]
    waiting: bool = False
    lead: bool = False
    done: bool = False
    result: R | None = None
    error: BaseException | None = field(default=None, repr=False)
    wake: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.wake.acquire()

    def outcome(self) -> R:
        """The result, or raise the request's error."""
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # set when error is None


RECENT_PASSES = 4  # a leader waits for as many requests as the largest of these passes took
WAIT_FROM = 8  # ... when that is at least this many (or batch_max): smaller is light load


class Batcher:
    """Merges concurrent requests into passes of at most ``max_batch``; a leader waits up to
    ``window_s`` (0: not at all) until the queue holds as many requests as the largest of the
    last ``RECENT_PASSES`` passes took (at first ``max_batch``), then takes what is queued. It
    does not wait when those passes were small (under ``WAIT_FROM``, or ``max_batch`` if that is
    less): light load, where a wait would only add latency.

    Each waiter is woken once, by its own lock: when its request is done, or when the lead
    passes to it (the oldest queued request someone waits for leads the next pass).
    """

    def __init__(self, window_s: float, max_batch: int) -> None:
        self.window_s = window_s
        self.max_batch = max_batch
        self.batches = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._full = threading.Condition(self._lock)  # a leader gathering in its window
        self._queue: deque[Job[object]] = deque()
        self._leading = False
        self._recent: deque[int] = deque([max_batch], maxlen=RECENT_PASSES)
        self.target = max_batch  # what a leader waits for: the largest recent pass
        self._wait_from = min(WAIT_FROM, max_batch)

    def _pass_taken(self, n: int) -> None:
        """A pass of ``n`` requests starts (counted): the next leader waits for as many as the
        largest recent pass."""
        self.batches += 1
        self.requests += n
        self._recent.append(n)
        self.target = max(self._recent)

    def run(self, work: Work[R], timer: StageTimer, deadline: Deadline) -> R:
        """Do ``work`` in the next pass; waits at most the deadline."""
        return self.wait(self.submit(work), timer, deadline)

    def submit(self, work: Work[R]) -> Job[R]:
        """Queue ``work`` for the next pass (a caller may submit several before waiting)."""
        job = Job(work)
        with self._lock:
            self._queue.append(job)  # type: ignore[arg-type]
            if self.window_s and len(self._queue) >= self.target:
                self._full.notify()  # a leader gathering in its window: the pass is full
        return job

    def wait(self, job: Job[R], timer: StageTimer, deadline: Deadline) -> R:
        """The outcome of a submitted ``job``: leads passes while none is running (or when the
        lead is handed to it), else sleeps until a pass has done it. Timed as stage "batched"
        (queue and pass); a leader's timer also times its passes' stages (features, model,
        rank).

        Raises:
            DeadlineExceeded: the deadline passed first (a queued request is withdrawn).
        """
        with timer.stage("batched"):
            with self._lock:
                if not job.done and not self._leading:
                    self._leading = job.lead = True
                job.waiting = True
            if not job.lead and not job.done:
                self._sleep(job, deadline)
            if job.lead:
                self._lead(job, timer)
        return job.outcome()

    def _sleep(self, job: Job[R], deadline: Deadline) -> None:
        left = deadline.remaining()
        if job.wake.acquire(timeout=-1 if left is None else max(left, 0.0)):
            return
        with self._lock:
            if job.done or job.lead:  # woken just as the deadline passed: carry on
                return
            job.waiting = False
            if job in self._queue:
                self._queue.remove(job)  # type: ignore[arg-type]
        raise deadline.exceeded("scoring finished")

    def _lead(self, own: Job[R], timer: StageTimer) -> None:
        """Run passes over the queue until ``own`` is done, then hand the lead on to the oldest
        queued request someone waits for (none: the next caller of ``wait`` leads)."""
        try:
            while not own.done:
                jobs = self._take()
                run_pass(jobs, timer)
                with self._lock:
                    for job in jobs:
                        job.done = True
                        if job.waiting and job is not own:
                            job.wake.release()
        finally:
            with self._lock:
                own.lead = False
                nxt = next((j for j in self._queue if j.waiting), None)
                if nxt is None:
                    self._leading = False
                else:
                    nxt.lead = True
                    nxt.wake.release()

    def _take(self) -> list[Job[object]]:
        with self._lock:
            if self.window_s and self.target >= self._wait_from:
                end = time.monotonic() + self.window_s
                while len(self._queue) < self.target and (left := end - time.monotonic()) > 0:
                    self._full.wait(left)
            n = min(len(self._queue), self.max_batch)
            jobs = [self._queue.popleft() for _ in range(n)]
            self._pass_taken(n)
        return jobs

    def close(self) -> None:
        """Nothing to stop: passes run in the callers' threads."""


def one_pass(works: Sequence[Work[R]], timer: StageTimer) -> list[R | BaseException]:
    """``works`` in one pass in this thread, as a leader runs one (no queue, no waiting): each
    outcome, or the error that failed it alone."""
    jobs: list[Job[R]] = [Job(w) for w in works]
    run_pass(jobs, timer)  # type: ignore[arg-type]  # a pass holds jobs of any outcome type
    return [j.error if j.error is not None else j.outcome() for j in jobs]


Scored = tuple[Job[object], Scorer, ScoreRequest]  # a job with its scorer and prepared request


def run_pass(jobs: list[Job[object]], timer: StageTimer) -> None:
    """Prepare every job, read the cap store for them together, score them together (grouped
    by scorer: after a reload, a request keeps the scorer it was prepared with), complete each;
    set each job's result or error."""
    ready: list[tuple[Job[object], Prepared]] = []
    for job in jobs:
        try:
            ready.append((job, job.work.prepare()))
        except Exception as exc:  # delivered to the caller, mapped by the interceptor there
            job.error = exc
    groups: dict[int, list[Scored]] = {}
    for job, scorer, request in _read_caps(ready, timer):
        groups.setdefault(id(scorer), []).append((job, scorer, request))
    for group in groups.values():
        for job, decision in _score(group, timer):
            try:
                job.result = job.work.complete(decision)
            except Exception as exc:
                job.error = exc


def _read_caps(ready: list[tuple[Job[object], Prepared]], timer: StageTimer) -> list[Scored]:
    """Exposures and caps of the jobs' requests: one ``prepare_many`` per gate (one round trip;
    after a reload a pass may hold requests of two gates). A request whose deadline has passed
    is not read; one whose deadline passes during the read is not scored."""
    by_gate: dict[int, list[tuple[Job[object], Prepared]]] = {}
    for job, p in ready:
        job.error = _past(p.deadline, "caps")
        if job.error is None:
            by_gate.setdefault(id(p.gate), []).append((job, p))
    out: list[Scored] = []
    for group in by_gate.values():
        try:
            with timer.stage("caps"):
                results = group[0][1].gate.prepare_many(
                    [p.request for _, p in group], _longest_wait(p.deadline for _, p in group)
                )
        except Exception as exc:  # not a request's fault: each fails with it
            results = [exc] * len(group)
        for (job, p), result in zip(group, results, strict=True):
            if isinstance(result, Exception):
                job.error = result
                continue
            job.error = _past(p.deadline, "scoring")
            if job.error is None:
                out.append((job, p.scorer, result))
    return out


def _longest_wait(deadlines: Iterable[Deadline]) -> float | None:
    """How long a pass's cap read may wait: as long as its most patient request has left
    (``None``: one has no deadline); requests whose time runs out meanwhile are not scored."""
    left = [d.remaining() for d in deadlines]
    return None if any(x is None for x in left) else max(x for x in left if x is not None)


def _past(deadline: Deadline, stage: str) -> DeadlineExceeded | None:
    """The error of a deadline that has passed before ``stage``, or ``None``."""
    try:
        deadline.check(stage)
    except DeadlineExceeded as exc:
        return exc
    return None


def _score(group: list[Scored], timer: StageTimer) -> list[tuple[Job[object], Decision]]:
    """Decisions of a group's jobs; when the batch fails, each is scored alone (a job that
    still fails gets its error and no decision)."""
    scorer = group[0][1]
    try:
        decisions = scorer.score_batch([request for _, _, request in group], timer)
        return [(job, d) for (job, _, _), d in zip(group, decisions, strict=True)]
    except Exception as exc:
        if len(group) == 1:
            group[0][0].error = exc
            return []
    out = []
    for job, _, request in group:  # find the bad one
        try:
            out.append((job, scorer.score_batch([request], timer)[0]))
        except Exception as exc:
            job.error = exc
    return out
