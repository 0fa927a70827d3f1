"""The learning loop, closed: a synthetic world plays live traffic against a real server for D
days, and every night the server's own logs become a new model and new weights.

    .venv/bin/python -m benchmarks.closed_loop --out data/bench/loop            # 7 days
    .venv/bin/python -m benchmarks.closed_loop --out data/bench/loop_q --quick  # < 10 min

Setup. ``engine.synth`` builds one world (users, households, devices, ads, a known truth) and
D + 1 days of its traffic. Day 0 is a seed log: the generator's own uniform-random policy and
outcomes; a model trained on it and the shipped weights start the loop. Days 1..D are live:

* ``admatch serve`` runs with its decision log on, exploration on (share ``--explore``), the
  embedded Redis for caps and fatigue, and an operator token for reloads.
* Each request goes through ``Score`` with ``reserve_caps``, in time order (requests of one
  user, household or device never in flight together, as in real time).
* For what was shown, the outcomes are drawn from the world's true probabilities, which use the
  exposures the served history itself created (the truth's fatigue terms), and reported with
  ``RecordEvents`` under the impression ids the responses gave.
* Each night, as a scheduler would run it: ``admatch nightly`` (a subprocess) joins the day's
  logs, trains on the last days, tunes on the day's log with its propensities (and, on this
  synthetic world, against the truth), and reloads the server.

``report.json``: per day the true revenue, negative feedback and engagements per request of
what was served (expected values under the truth), ads per household-day, the regret of the
serving weights against the truth-optimal ones on that day, the tuner's estimate for the next
day with its interval and what the next day realised; ``first_regret_pct``,
``final_regret_pct``, ``ope_coverage``, ``exploration_cost_pct`` (the truth's revenue given up
by exploring, against the current weights' own choices on the same requests),
``requests_served`` and ``decisions_logged``; one plot per figure across days.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import polars as pl

from engine.pricing import earned

from .machine import describe

TOKEN = "closed-loop-operator"
US = 1_000_000
KIND_P = {"timed": [0.6, 0.15, 0.12, 0.08, 0.05], "static": [0.0, 0.55, 0.15, 0.2, 0.1]}


@dataclass(frozen=True)
class Setup:
    """The run's size."""

    days: int
    requests_per_day: int
    trials: int
    truth_trials: int
    explore: float
    train_days: int
    seed: int
    max_negative: float
    negative_z: float = 1.0


# --- the world -------------------------------------------------------------------------------


@dataclass
class World:
    """The synthetic world's traffic and truth."""

    seed_log: pl.DataFrame  # day 0, with the generator's policy and outcomes
    days: list[pl.DataFrame]  # days 1..D, request and candidate columns, in time order
    quality: dict[str, float]
    params: Any  # TruthParams
    start: date


def make_world(s: Setup) -> World:
    """One world, D + 1 days of its traffic (about 4.7 candidates a request)."""
    from engine.synth.generator import generate
    from engine.synth.params import WorldParams

    rows = int((s.days + 1) * s.requests_per_day * 4.7)
    params = WorldParams(rows=rows, seed=s.seed, days=s.days + 1, rows_per_household=400)
    g = generate(params)
    log = g.log.with_columns(day=(pl.col("ts").dt.date() - params.start.date()).dt.total_days())
    quality = {a["ad_id"]: a["quality"] for a in g.truth["ads"]}
    live = [
        log.filter(pl.col("day") == d).drop("day").sort("ts", "request_id", maintain_order=True)
        for d in range(1, s.days + 1)
    ]
    return World(
        log.filter(pl.col("day") == 0).drop("day"), live, quality, params.truth, params.start.date()
    )


class History:
    """Impression times per (scope, target) key, for the truth's fatigue terms."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, ...], list[int]] = defaultdict(list)

    def add(self, key: tuple[str, ...], t: int) -> None:
        times = self.times[key]
        if times and t < times[-1]:
            times.insert(bisect_left(times, t), t)
        else:
            times.append(t)

    def count(self, key: tuple[str, ...], t: int, window_s: int) -> int:
        times = self.times.get(key)
        if not times:
            return 0
        return bisect_left(times, t) - bisect_left(times, t - window_s * US)


def truth(rows: pl.DataFrame, world: World, history: History) -> pl.DataFrame:
    """True probabilities of rows at their time, given the impressions served before."""
    from engine.synth.truth import conversion_rate, engage_logit, negative_logit, sigmoid

    ts = rows["ts"].dt.epoch("us").to_list()
    users, homes, camps = rows["user_id"], rows["household_id"], rows["campaign_id"]
    counts = [
        (
            history.count(("uc", u, c or ""), t, 86_400),
            history.count(("ua", u), t, 3_600),
            history.count(("ha", h or u), t, 86_400),
        )
        for u, h, c, t in zip(users, homes, camps, ts, strict=True)  # a harness, not a server
    ]
    exposure = pl.DataFrame(
        counts,
        schema=["exp_user_campaign_24h", "exp_user_any_1h", "exp_household_any_24h"],
        orient="row",
    )
    frame = pl.concat([rows, exposure], how="horizontal").with_columns(
        quality=pl.col("ad_id").replace_strict(world.quality, default=0.0, return_dtype=pl.Float64)
    )
    t = world.params
    return frame.select(
        "request_id",
        "ad_id",
        true_p_engaged=sigmoid(engage_logit(t)),
        true_p_negative=sigmoid(negative_logit(t)),
        true_p_converted=sigmoid(engage_logit(t)) * conversion_rate(t),
    )


# --- a day of live traffic ---------------------------------------------------------------------


@dataclass
class Day:
    """What one live day served and what happened."""

    served: list[dict[str, Any]] = field(default_factory=list)  # one per shown row
    requests: int = 0
    truth: list[pl.DataFrame] = field(default_factory=list)


def play_day(
    rows: pl.DataFrame, world: World, history: History, target: str, rng: np.random.Generator
) -> Day:
    """Serve a day's requests in causal chunks; outcomes from the truth; events reported."""
    from admatch.v1 import admatch_pb2 as pb
    from admatch.v1 import admatch_pb2_grpc as pb_grpc
    from engine.replay.causal import causal_spans
    from engine.replay.requests import to_requests
    from engine.replay.source import RequestChunk
    from engine.rpc.convert import request_to_proto

    chunk = RequestChunk.of(rows)
    requests = to_requests(chunk)
    entities = [
        {
            (k, v)
            for k, v in (
                ("u", r.context.user_id),
                ("h", r.context.household_id),
                ("d", r.context.device_id),
            )
            if v
        }
        for r in requests
    ]
    day = Day(requests=len(requests))
    with grpc.insecure_channel(target) as channel, ThreadPoolExecutor(8) as pool:
        stub = pb_grpc.AdMatchingStub(channel)
        for span in causal_spans(entities, 32):
            part = chunk.slice(span.start, span.stop)
            probs = truth(part.rows, world, history)
            day.truth.append(probs)
            messages = []
            for r in requests[span.start : span.stop]:
                m = request_to_proto(r)
                m.reserve_caps = True
                messages.append(m)
            replies = list(pool.map(lambda m: stub.Score(m, timeout=30), messages))
            events = _outcomes(part.rows, probs, replies, rng, day, history, pb)
            if events:
                stub.RecordEvents(pb.EventBatch(events=events), timeout=30)
    return day


def _outcomes(
    rows: pl.DataFrame,
    probs: pl.DataFrame,
    replies: list[Any],
    rng: np.random.Generator,
    day: Day,
    history: History,
    pb: Any,
) -> list[Any]:
    """Draw the shown rows' outcomes; note them, their exposures and their events."""
    table = rows.with_columns(probs.drop("request_id", "ad_id"))
    index = {
        (r, a): i for i, (r, a) in enumerate(zip(table["request_id"], table["ad_id"], strict=True))
    }
    events = []
    for reply in replies:
        for ad, imp in zip(reply.selected_ad_ids, reply.impression_ids, strict=True):
            row = table.row(index[(reply.request_id, ad)], named=True)
            t = int(row["ts"].timestamp() * US)
            engaged = rng.random() < row["true_p_engaged"]
            negative = rng.random() < row["true_p_negative"]
            converted = engaged and rng.random() < row["true_p_converted"] / row["true_p_engaged"]
            day.served.append(
                {**row, "engaged": engaged, "negative": negative, "converted": converted}
            )
            history.add(("uc", row["user_id"], row["campaign_id"] or ""), t)
            history.add(("ua", row["user_id"]), t)
            history.add(("ha", row["household_id"] or row["user_id"]), t)
            later = row["ts"] + timedelta(seconds=30)
            common = {
                "impression_id": imp,
                "user_id": row["user_id"],
                "household_id": row["household_id"] or "",
                "campaign_id": row["campaign_id"] or "",
                "advertiser_id": row["advertiser_id"] or "",
                "category": row["category"] or "",
            }
            for kind, happened in (
                (pb.Event.TYPE_ENGAGEMENT, engaged),
                (pb.Event.TYPE_CONVERSION, converted),
            ):
                if happened:
                    e = pb.Event(type=kind, **common)
                    e.time.FromDatetime(later)
                    events.append(e)
            if negative:
                timed = row["format"] in ("video", "audio")
                p = KIND_P["timed" if timed else "static"]
                kind = int(np.searchsorted(np.cumsum(p), rng.random(), side="right"))
                e = pb.Event(
                    type=pb.Event.TYPE_NEGATIVE_FEEDBACK, negative_kind=min(kind, 4) + 1, **common
                )
                e.time.FromDatetime(later)
                events.append(e)
    return events


# --- the server and the nights -----------------------------------------------------------------


def loop_config(work: Path, explore: float, max_negative: float, negative_z: float) -> Path:
    """The shipped config with the decision log on (rotating every second), exploration on,
    reloads by ReloadModel only, no metrics endpoint, and the stated objective: the most
    revenue with at most ``max_negative`` negative feedback per request."""
    from .bench_grpc import config_text

    changes = {
        "dir": f'"{work / "decisions"}"',
        "rotate_s": "1.0",
        "share": f"{explore}",
        "reload_interval_s": "0",
        "metrics_port": "0",
        "state_dir": '""',  # each night's server starts from empty counts, as the tuner's days
    }
    text = config_text(changes)
    bound = "# max_negative_rate = 0.05"
    assert bound in text, "default_config.toml changed: update loop_config"
    text = text.replace(bound, f"max_negative_rate = {max_negative}")
    margin = "negative_z = 0.0"
    assert margin in text, "default_config.toml changed: update loop_config"
    text = text.replace(margin, f"negative_z = {negative_z}")
    path = work / "loop.toml"
    path.write_text(text)
    return path


class Server:
    """``admatch serve`` with the operator token, until stopped."""

    def __init__(self, model: Path, config: Path) -> None:
        admatch = Path(sys.executable).with_name("admatch")
        self.proc = subprocess.Popen(
            [
                str(admatch),
                "serve",
                "--model",
                str(model),
                "--config",
                str(config),
                "--port",
                "0",
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "ADMATCH_OPERATOR_TOKEN": TOKEN},
            start_new_session=True,
        )
        self.lines: list[str] = []
        ready = threading.Event()
        self.target = ""

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if "admatch serving on" in line:
                    self.target = line.split("admatch serving on ", 1)[1].split()[0]
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(300):
            self.stop()
            raise RuntimeError("admatch serve did not start:\n" + "".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    """An admatch command, as a scheduler runs it; its output on failure."""
    admatch = Path(sys.executable).with_name("admatch")
    out = subprocess.run(
        [str(admatch), *cmd],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"admatch {cmd[0]} failed ({out.returncode}):\n{out.stdout}{out.stderr}")


# --- figures -----------------------------------------------------------------------------------


def _value(frame: pl.DataFrame) -> np.ndarray:
    """The true expected revenue of each row, were it shown."""
    return earned(
        frame["pricing"].cast(pl.String).to_numpy(),
        frame["bid"].cast(pl.Float64).to_numpy(),
        frame["true_p_engaged"].cast(pl.Float64).to_numpy(),
        frame["true_p_converted"].cast(pl.Float64).to_numpy(),
    )


def day_figures(day: Day, rows: pl.DataFrame) -> dict[str, float]:
    """True expected revenue, negative feedback and engagements per request of what was
    served; ads per household-day."""
    requests = max(day.requests, 1)
    if not day.served:
        return {"revenue": 0.0, "negative": 0.0, "engagement": 0.0, "ads_per_household_day": 0.0}
    served = pl.DataFrame(day.served)
    sums = served.select(
        negative=pl.col("true_p_negative").sum(), engagement=pl.col("true_p_engaged").sum()
    ).row(0, named=True)
    sums["revenue"] = float(_value(served).sum())
    homes = rows.select(pl.coalesce("household_id", "user_id").n_unique()).item()
    return {
        **{k: float(v) / requests for k, v in sums.items()},
        "ads_per_household_day": len(served) / max(homes, 1),
        "realised_engaged_rate": float(served["engaged"].cast(pl.Float64).mean() or 0.0),  # type: ignore[arg-type]
    }


def exploration_cost(joined: Path) -> float:
    """The truth's revenue given up by exploring on a day: what the current weights would
    have selected against what was selected, on the same requests."""
    log = pl.read_parquet(joined)
    value = _value(log)
    v = {
        "current": float((value * (log["current_rank"] > 0).to_numpy()).sum()),
        "served": float((value * (log["rank"] > 0).to_numpy()).sum()),
    }
    return 100.0 * (v["current"] - v["served"]) / v["current"] if v["current"] else 0.0


def plot(days: list[dict[str, Any]], out: Path) -> None:
    """One plot per figure across days."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [d["day"] for d in days]
    for key, label in (
        ("revenue", "true revenue per request"),
        ("negative", "true negative feedback per request"),
        ("engagement", "true engagements per request"),
        ("ads_per_household_day", "ads per household-day"),
        ("regret_pct", "regret against the truth optimum (%)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot(x, [d.get(key) or np.nan for d in days], marker="o")
        if key == "revenue":
            est = [d.get("estimate_next") for d in days]
            ax.errorbar(
                [i + 1 for i, e in zip(x, est, strict=True) if e],
                [e["value"] for e in est if e],
                yerr=[
                    [e["value"] - e["low"] for e in est if e],
                    [e["high"] - e["value"] for e in est if e],
                ],
                fmt="x",
                label="tuner's estimate for the next day",
            )
            ax.legend()
        ax.set_xlabel("day")
        ax.set_title(label)
        fig.tight_layout()
        fig.savefig(out / f"{key}.png", dpi=100)
        plt.close(fig)


# --- the loop ----------------------------------------------------------------------------------


def closed_loop(s: Setup, out: Path) -> dict[str, Any]:
    """Run the loop; write and return the report."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    (work / "nightly" / "logs").mkdir(parents=True)
    (work / "truth").mkdir()
    world = make_world(s)
    seed_day = world.start
    seed_log = work / "nightly" / "logs" / f"{seed_day.isoformat()}.parquet"
    world.seed_log.write_parquet(seed_log)
    run(
        [
            "train",
            "--log",
            str(seed_log),
            "--out",
            str(work / "seed_model"),
            "--no-compile",
            "--seed",
            str(s.seed),
        ]
    )
    config = loop_config(work, s.explore, s.max_negative, s.negative_z)
    server = Server(work / "seed_model", config)
    history, rng = History(), np.random.default_rng(s.seed + 1)
    days: list[dict[str, Any]] = []
    served_total = 0
    try:
        for k, rows in enumerate(world.days, start=1):
            when = seed_day + timedelta(days=k)
            t0 = time.perf_counter()
            day = play_day(rows, world, history, server.target, rng)
            served_total += day.requests
            pl.concat(day.truth).write_parquet(work / "truth" / f"{when}.parquet")
            figures = day_figures(day, rows)
            time.sleep(2.5)  # the decision log finalises its files every second
            t1 = time.perf_counter()
            run(
                [
                    "nightly",
                    "--logs",
                    str(work / "decisions"),
                    "--work",
                    str(work / "nightly"),
                    "--config",
                    str(config),
                    "--day",
                    when.isoformat(),
                    "--target",
                    server.target,
                    "--train-days",
                    str(s.train_days),
                    "--trials",
                    str(s.trials),
                    "--truth-trials",
                    str(s.truth_trials),
                    "--truth",
                    str(work / "truth" / f"{when}.parquet"),
                    "--seed",
                    str(s.seed),
                    "--no-compile",
                ],
                env={"ADMATCH_OPERATOR_TOKEN": TOKEN},
            )
            night = json.loads((work / "nightly" / "nightly" / f"{when}.json").read_text())
            config = Path(night["config"])
            days.append(
                _day_report(k, when, figures, night, work, t1 - t0, time.perf_counter() - t1)
            )
            print(_line(days[-1]), flush=True)
    finally:
        server.stop()
    return _report(s, days, served_total, out, time.perf_counter() - started)


def _day_report(
    k: int,
    when: date,
    figures: dict[str, float],
    night: dict[str, Any],
    work: Path,
    serve_s: float,
    night_s: float,
) -> dict[str, Any]:
    tune = night["tune"]
    truth = tune.get("truth") or {}
    optimum = (truth.get("optimum") or {}).get("truth", {})
    current = truth.get("current", {})
    bound = (truth.get("limits") or {}).get("max_negative_per_request")
    feasible = bool(current) and (bound is None or current["negative"] <= bound * 1.001)
    top = optimum.get("revenue")
    regret = None  # an infeasible day has no regret: it breaks the stated constraint
    if top and current and feasible:
        regret = 100.0 * max(0.0, top - current["revenue"]) / top
    chosen = tune.get("chosen") or tune["current"]
    estimate = chosen.get("revenue") if chosen else None
    return {
        "day": k,
        "date": when.isoformat(),
        **figures,
        "regret_pct": regret,
        "serving_weights_feasible": feasible,
        "serving_weights_true_negative": current.get("negative"),
        "max_negative": bound,
        "truth_optimum_revenue": top,
        "serving_weights_true_revenue": current.get("revenue"),
        "estimate_next": estimate,
        "recommended": tune.get("chosen") is not None,
        "exploration_cost_pct": exploration_cost(work / "nightly" / "logs" / f"{when}.parquet"),
        "decisions_logged": night["join"]["requests"],
        "model_version": night["model"]["version"],
        "serve_seconds": serve_s,
        "night_seconds": night_s,
    }


def _line(d: dict[str, Any]) -> str:
    regret = f"{d['regret_pct']:.2f}%" if d["regret_pct"] is not None else "infeasible"
    return (
        f"day {d['day']}: revenue {d['revenue']:.5f}, negative {d['negative']:.4f}, "
        f"engagement {d['engagement']:.4f} per request; {d['ads_per_household_day']:.2f} ads per "
        f"household-day; regret {regret}; exploration cost {d['exploration_cost_pct']:.2f}%; "
        f"{d['decisions_logged']} decisions logged; serve {d['serve_seconds']:.0f} s, night "
        f"{d['night_seconds']:.0f} s"
    )


def _report(
    s: Setup, days: list[dict[str, Any]], served: int, out: Path, seconds: float
) -> dict[str, Any]:
    for d, nxt in zip(days, days[1:] + [None], strict=True):
        e = d["estimate_next"]
        d["realised_next"] = nxt["revenue"] if nxt else None
        d["covered_next"] = e["low"] <= nxt["revenue"] <= e["high"] if (e and nxt) else None
    covered = [d["covered_next"] for d in days if d["covered_next"] is not None]
    logged = sum(d["decisions_logged"] for d in days)
    first, final = days[0]["regret_pct"], days[-1]["regret_pct"]
    report = {
        "setup": s.__dict__,
        "days": days,
        "first_regret_pct": first,  # None: the serving weights broke the constraint that day
        "final_regret_pct": final,
        "ope_coverage": sum(covered) / len(covered) if covered else None,
        "exploration_cost_pct": float(np.mean([d["exploration_cost_pct"] for d in days])),
        "requests_served": served,
        "decisions_logged": logged,
        "seconds": seconds,
        "environment": describe(),
    }
    report["targets"] = {
        "final within 2% of the truth optimum": final is not None and final <= 2.0,
        "final below the first day's regret": final is not None
        and (first is None or final < first or final == first == 0.0),
        "OPE coverage at least 90%": (report["ope_coverage"] or 0) >= 0.9,
        "every served decision logged": logged == served,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    plot(days, out)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("data/bench/loop"))
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--requests-per-day", type=int, default=5000)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--truth-trials", type=int, default=40)
    parser.add_argument("--explore", type=float, default=0.2, help="exploration share")
    parser.add_argument("--train-days", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--max-negative", type=float, default=0.13, help="the stated bound, per request"
    )
    parser.add_argument(
        "--negative-z",
        type=float,
        default=1.0,
        help="the tuner's margin on the bound, in standard errors (tuning.constraints.negative_z)",
    )
    parser.add_argument("--quick", action="store_true", help="3 days, fewer requests and trials")
    a = parser.parse_args()
    if a.quick:
        a.days, a.requests_per_day, a.trials, a.truth_trials = 3, 2500, 20, 20
    print(describe(), flush=True)
    s = Setup(
        a.days,
        a.requests_per_day,
        a.trials,
        a.truth_trials,
        a.explore,
        a.train_days,
        a.seed,
        a.max_negative,
        a.negative_z,
    )
    r = closed_loop(s, a.out)
    print(
        json.dumps(
            {k: v for k, v in r.items() if k not in ("days", "environment")}, indent=1, default=str
        )
    )


if __name__ == "__main__":
    main()
