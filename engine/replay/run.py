"""``admatch replay``: a log through the engine, measured, in one run.

The log is read in bounded memory as whole requests in time order (``source``), turned into
the requests an ad server would send (``requests``), and decided in process or by a server over
gRPC (``engines``, ``grpc_engine``); each request's exposures are recorded as they go, so caps
and fatigue evolve as in production. What comes back is collected chunk by chunk
(``collect``) and summed up in one report (``summarize``).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.config import AdmatchConfig, load_config
from engine.errors import InvalidArgument
from engine.model.bundle import ModelBundle
from engine.replay.collect import Collector
from engine.replay.engines import EventsOf, InProcessEngine, ReplayEngine
from engine.replay.floor import Floor, measure_floor
from engine.replay.requests import ChunkEvents, Events, namespaced, to_requests
from engine.replay.server_stages import StageHistogram, scrape
from engine.replay.source import RequestChunk, count_rows, iter_chunks, prepare_log
from engine.scoring.types import ScoreRequest

Record = Literal["selected", "logged", "none"]
Progress = Callable[[int, int, int, float], None]  # rows done, requests done, rows total, s


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay, through what, and how.

    Attributes:
        log: the log (schema Parquet/IPC, or any input of ``mapping``).
        report_dir: where report.json, report.md and the plots go.
        model_dir: the model (required in process; over gRPC only for the floor).
        config_path: the config (default: the shipped one). Over gRPC it must be the one the
            server runs with: the cap check applies its rules.
        target: ``host:port`` of a server; ``None`` decides in process.
        batch: in process, requests per scoring pass at most (``None``: the server
            config's ``batch_max``; 1: one at a time).
        concurrency: over gRPC, requests in flight.
        rate: over gRPC, open-loop arrivals per second (``None``: closed loop).
        stream: over gRPC, one ScoreStream per in-flight slot instead of unary calls.
        record: which exposures go into the cap store: the engine's picks, the log's, none.
        reserve: reserve the selected ads' caps atomically when deciding (which records
            their impressions), as the server does with ``reserve_caps``; needs ``selected``.
        fresh_state: start from an empty store (in process: a new embedded Redis; over gRPC:
            user, household and device ids get a prefix no store has seen).
        max_requests, duration_s: stop after this many requests / seconds.
        mapping: import mapping for a log in another format.
        metrics_url: over gRPC, the server's /metrics for per-stage times.
        save_decisions: write every candidate's decision to decisions.parquet.
        chunk_rows: rows read per batch of the log.
        floor_requests: requests whose rows the floor measures.
        plots: write the PNG plots.
        connect_timeout_s: over gRPC, how long to wait for the server at the start.
        store_deadline_ms: in process, the cap store's per-call deadline. A replay is not a
            serving call: on a busy machine a read that takes longer than the server's budget
            (``store.deadline_ms``, 50 ms) must not fail its request closed and change the
            decisions measured. ``None``: the config's.
    """

    log: Path
    report_dir: Path
    model_dir: Path | None = None
    config_path: Path | None = None
    target: str | None = None
    batch: int | None = None
    concurrency: int = 1
    rate: float | None = None
    stream: bool = False
    record: Record = "selected"
    reserve: bool = False
    fresh_state: bool = False
    max_requests: int | None = None
    duration_s: float | None = None
    mapping: str | None = None
    metrics_url: str | None = None
    save_decisions: bool = False
    chunk_rows: int = 65_536
    floor_requests: int = 2_048
    plots: bool = True
    connect_timeout_s: float = 30.0
    store_deadline_ms: float | None = 5_000.0


@dataclass
class Session:
    """An open engine and what the report needs to know about it."""

    engine: ReplayEngine
    config: AdmatchConfig
    bundle: ModelBundle | None
    describe: dict[str, Any]
    group: int
    namespace: str = ""
    metrics_before: dict[str, StageHistogram] | None = None


def open_session(o: ReplayOptions) -> Session:
    """The engine the options name, ready to take requests.

    Raises:
        InvalidArgument: a missing model directory in process, bad option values.
        ConfigError, ModelError: as loading them raises.
    """
    config = load_config(o.config_path)
    if o.record not in ("selected", "logged", "none"):
        raise InvalidArgument("--record", f"must be selected, logged or none, not {o.record!r}")
    if o.reserve and o.record != "selected":
        raise InvalidArgument(
            "--reserve", "records the engine's picks: use it with --record selected"
        )
    if o.target is None:
        return _in_process(o, config)
    return _remote(o, config)


def _in_process(o: ReplayOptions, config: AdmatchConfig) -> Session:
    from engine.app import build_app

    if o.model_dir is None:
        raise InvalidArgument("--model", "required to replay in process")
    store = config.store
    if o.fresh_state:
        store = store.model_copy(update={"url": "", "cluster": False})
    if o.store_deadline_ms is not None:
        store = store.model_copy(update={"deadline_ms": o.store_deadline_ms})
    config = config.model_copy(update={"store": store})
    server = config.server
    batch = o.batch or server.batch_max
    app = build_app(config, o.model_dir)
    bundle = app.scorer.model
    describe = {
        "mode": "in-process",
        "batch": batch,
        "store": config.store.url or "embedded Redis",
        "model_dir": str(o.model_dir),
        "model_version": bundle.version,
        "runtime": bundle.runtime,
        "config_version": config.version,
        "assumptions": "; ".join(bundle.assumptions) or "none",
    }
    return Session(InProcessEngine(app, batch, o.reserve), config, bundle, describe, batch)


def _remote(o: ReplayOptions, config: AdmatchConfig) -> Session:
    from engine.replay.grpc_engine import GrpcEngine

    assert o.target is not None
    engine = GrpcEngine(o.target, o.concurrency, o.rate, o.stream, o.reserve)
    try:
        engine.wait_ready(o.connect_timeout_s)
        info = engine.model_info()
    except Exception as exc:
        engine.close()
        raise InvalidArgument(
            "--target", f"no admatch server answers at {o.target}: {exc}"
        ) from exc
    bundle = ModelBundle.load(o.model_dir) if o.model_dir else None
    describe = {
        "mode": "grpc",
        "target": o.target,
        "call": "stream" if o.stream else "unary",
        "concurrency": engine.concurrency,
        "rate": o.rate,
        "model_version": info.model_version,
        "runtime": info.runtime,
        "config_version": info.config_version,
        "config_matches_server": info.config_version == config.version,
    }
    namespace = f"replay-{uuid.uuid4().hex[:8]}/" if o.fresh_state else ""
    before = scrape(o.metrics_url) if o.metrics_url else None
    return Session(engine, config, bundle, describe, 1, namespace, before)


def _events_of(record: Record, chunk: RequestChunk, reserved: bool) -> EventsOf:
    """Per request, what to record after its decision: the log's shown rows, the engine's
    picks (only their feedback when reserving caps recorded the impressions), or nothing."""
    events = ChunkEvents(chunk)
    shown = chunk.rows["shown"].to_numpy()
    b = chunk.bounds
    nothing: Events = ([], [])
    if record == "logged":
        return lambda i, _d: events.of_request(i, shown[b[i] : b[i + 1]])
    if record == "selected" and reserved:
        return lambda i, d: nothing if d is None else ([], events.of_request(i, d.rank > 0)[1])
    if record == "selected":
        return lambda i, d: nothing if d is None else events.of_request(i, d.rank > 0)
    return lambda _i, _d: nothing


@dataclass
class Replayed:
    """What the loop produced."""

    collector: Collector
    floor_requests: list[ScoreRequest]
    wall_s: float
    cpu_s: float


def run_loop(o: ReplayOptions, s: Session, log: Path, progress: Progress | None) -> Replayed:
    """Replay the prepared log through the session's engine."""
    total = count_rows(log)
    decisions = o.report_dir / "decisions.parquet" if o.save_decisions else None
    collector = Collector(decisions_path=decisions, record=o.record)
    keep: list[ScoreRequest] = []
    step = max(256, 32 * o.concurrency)
    start, cpu0 = time.perf_counter(), time.process_time()
    rows_done = 0
    try:
        for chunk in _bounded(iter_chunks(log, o.chunk_rows), o, step, start, collector):
            chunk = namespaced(chunk, s.namespace)
            requests = to_requests(chunk)
            results = s.engine.decide(requests, _events_of(o.record, chunk, o.reserve))
            collector.add(chunk, results, time.perf_counter() - start)
            keep += requests[: max(0, o.floor_requests - len(keep))]
            rows_done += len(chunk.rows)
            if progress is not None:
                progress(rows_done, collector.requests, total, time.perf_counter() - start)
    finally:
        collector.close()
    return Replayed(collector, keep, time.perf_counter() - start, time.process_time() - cpu0)


def _bounded(chunks: Any, o: ReplayOptions, step: int, start: float, collector: Collector) -> Any:
    """Sub-chunks of at most ``step`` requests, until a bound is reached (the duration is
    checked between sub-chunks, after the first)."""
    for chunk in chunks:
        for k in range(0, chunk.requests, step):
            left = None if o.max_requests is None else o.max_requests - collector.requests
            if left is not None and left <= 0:
                return
            spent = time.perf_counter() - start
            if o.duration_s is not None and collector.requests and spent >= o.duration_s:
                return
            part = chunk.slice(k, min(chunk.requests, k + step))
            yield part if left is None or part.requests <= left else part.head(left)


def replay(o: ReplayOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run a replay and write its report; return the report (``report.json``'s content).

    Raises:
        InvalidArgument: bad options, a log that breaks the schema (naming the column), no
            server at the target.
    """
    from engine.replay.summarize import build_report, write_report

    o.report_dir.mkdir(parents=True, exist_ok=True)
    session = open_session(o)
    try:
        with tempfile.TemporaryDirectory(prefix="admatch-replay-") as work:
            log = prepare_log(o.log, Path(work), o.mapping)
            replayed = run_loop(o, session, log, progress)
            floor = _floor(session, replayed.floor_requests)
            report = build_report(o, session, replayed, floor)
    finally:
        session.engine.close()
    write_report(report, replayed, o)
    return report


def _floor(s: Session, requests: list[ScoreRequest]) -> Floor | None:
    if s.bundle is None or not requests:
        return None
    return measure_floor(s.bundle, requests, s.group)


def ads_per_user_day(collector: Collector) -> dict[str, Any]:
    """Per touchpoint, the engine's and the log's ads per active user and day."""
    if not collector.load:
        return {}
    load = collector.load.frame()
    out = {}
    for (tp,), part in load.group_by("touchpoint", maintain_order=True):
        out[str(tp)] = {who: _spread(part[who].to_numpy()) for who in ("engine", "logged")}
    return dict(sorted(out.items()))


def _spread(per_user_day: np.ndarray) -> dict[str, float | int]:
    return {
        "mean": float(per_user_day.mean()),
        "p95": float(np.percentile(per_user_day, 95)),
        "max": int(per_user_day.max()),
        "user_days": len(per_user_day),
    }
