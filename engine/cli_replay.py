"""``admatch replay``: replay a log through the engine and report; ``replay compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer

from engine.cliutil import console, fail, table
from engine.errors import AdmatchError, InvalidArgument

replay_app = typer.Typer(
    help="Replay a log through the engine: throughput, latency and decision quality.",
    no_args_is_help=False,
    pretty_exceptions_enable=False,
)


@replay_app.callback(invoke_without_command=True)
def replay(
    ctx: typer.Context,
    log: Annotated[Path | None, typer.Option(help="log in the schema (or --mapping input)")] = None,
    report: Annotated[Path | None, typer.Option(help="report directory to write")] = None,
    model: Annotated[Path | None, typer.Option(help="model dir (in process; gRPC: floor)")] = None,
    config: Annotated[Path | None, typer.Option(help="config TOML; default: shipped")] = None,
    target: Annotated[
        str | None, typer.Option(help="server host:port (default: in process)")
    ] = None,
    in_process: Annotated[
        bool, typer.Option("--in-process", help="decide in this process")
    ] = False,
    batch: Annotated[
        int | None, typer.Option(min=1, help="in process: requests per pass (default: config)")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="gRPC: requests in flight")] = 1,
    rate: Annotated[
        float | None, typer.Option(min=0.001, help="gRPC: open-loop requests/s (default: closed)")
    ] = None,
    stream: Annotated[bool, typer.Option(help="gRPC: ScoreStream instead of unary")] = False,
    record: Annotated[
        str, typer.Option(help="exposures recorded: selected (engine), logged (log), none")
    ] = "selected",
    reserve: Annotated[
        bool, typer.Option(help="reserve the picks' caps atomically (server reserve_caps)")
    ] = False,
    fresh_state: Annotated[bool, typer.Option(help="start from an empty cap store")] = False,
    max_requests: Annotated[int | None, typer.Option(min=1, help="stop after N requests")] = None,
    duration: Annotated[float | None, typer.Option(min=0.001, help="stop after S seconds")] = None,
    mapping: Annotated[str | None, typer.Option(help="import mapping for other formats")] = None,
    metrics_url: Annotated[
        str | None, typer.Option(help="gRPC: server /metrics URL for per-stage times")
    ] = None,
    save_decisions: Annotated[
        bool, typer.Option(help="write every decision to decisions.parquet")
    ] = False,
    plots: Annotated[bool, typer.Option(help="write the PNG plots")] = True,
    store_deadline_ms: Annotated[
        float,
        typer.Option(min=0.001, help="in process: cap-store call deadline (not the server's)"),
    ] = 5_000.0,
) -> None:
    """Replay a log in time order through the engine, in process or over gRPC, recording
    exposures as it goes; write report.json, report.md and plots to --report."""
    if ctx.invoked_subcommand is not None:
        return
    from engine.replay.run import ReplayOptions
    from engine.replay.run import replay as run_replay

    try:
        if log is None or report is None:
            raise InvalidArgument("--log" if log is None else "--report", "required")
        if in_process and target is not None:
            raise InvalidArgument("--target", "give either --target or --in-process, not both")
        options = ReplayOptions(
            log=log,
            report_dir=report,
            model_dir=model,
            config_path=config,
            target=target,
            batch=batch,
            concurrency=concurrency,
            rate=rate,
            stream=stream,
            record=record,  # type: ignore[arg-type]  # checked by open_session
            reserve=reserve,
            fresh_state=fresh_state,
            max_requests=max_requests,
            duration_s=duration,
            mapping=mapping,
            metrics_url=metrics_url,
            save_decisions=save_decisions,
            plots=plots,
            store_deadline_ms=store_deadline_ms,
        )
        doc = _run(run_replay, options)
    except AdmatchError as exc:
        fail(exc)
    _print(doc, report)


def _run(run_replay: Any, options: Any) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} rows"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("replaying", total=0)

        def progress(rows: int, requests: int, total: int, seconds: float) -> None:
            rate = requests / seconds if seconds else 0.0
            text = f"{requests:,} requests, {rate:,.0f}/s"
            bar.update(task, completed=rows, total=total, description=text)

        doc: dict[str, Any] = run_replay(options, progress)
    return doc


def _print(doc: dict[str, Any], report: Path | None) -> None:
    thr, lat, d, f = doc["throughput"], doc["latency_ms"], doc["decisions"], doc["floor"]
    rows = [
        {"figure": "requests", "value": f"{doc['requests']:,}"},
        {"figure": f"requests/s ({thr['basis']})", "value": f"{thr['requests_per_s']:,.0f}"},
        {"figure": "candidates/s", "value": f"{thr['candidates_per_s']:,.0f}"},
        {"figure": "mean requests per pass", "value": _fmt(thr.get("mean_batch_requests"))},
        {"figure": "latency p50/p99 ms", "value": _pair(lat["p50"], lat["p99"])},
        {"figure": "floor ratio (engine/LightGBM)", "value": _fmt(f["ratio"])},
        {"figure": "fill rate", "value": _fmt(d["fill_rate"])},
        {"figure": "cap violations", "value": str(d["cap_violations"])},
        {"figure": "errors", "value": str(doc["errors"]["total"])},
    ]
    errors = doc["errors"]
    failed = (errors.get("cap_read_errors") or 0) + sum(errors["record_errors"].values())
    if failed:
        rows.append({"figure": "cap-store calls failed", "value": f"{failed:,}"})
    for e in errors.get("by_message", [])[:3]:
        rows.append(
            {"figure": f"{e['status']} ({e['requests']:,} requests)", "value": e["example"]}
        )
    console.print(table(pl.DataFrame(rows), f"replay -> {report}"))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pair(a: float | None, b: float | None) -> str:
    return f"{_fmt(a)} / {_fmt(b)}"


@replay_app.command("compare")
def compare_cmd(
    a: Annotated[Path, typer.Argument(help="report.json (or its directory) of run A")],
    b: Annotated[Path, typer.Argument(help="report.json (or its directory) of run B")],
) -> None:
    """Print two replay reports side by side, with B/A ratios."""
    from engine.replay.compare import compare, load_report

    try:
        rows = compare(load_report(a), load_report(b))
    except AdmatchError as exc:
        fail(exc)
    frame = pl.DataFrame(
        {
            "figure": [r[0] for r in rows],
            "A": [_cell(r[1]) for r in rows],
            "B": [_cell(r[2]) for r in rows],
            "B/A": ["-" if r[3] is None else f"{r[3]:.3f}" for r in rows],
            "": [r[4] for r in rows],
        }
    )
    console.print(table(frame, f"A = {a}, B = {b}"))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)
