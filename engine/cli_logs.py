"""``admatch logs join``: the service's decision and event logs into the ad-opportunity log."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from engine.cliutil import console, fail
from engine.errors import AdmatchError, InvalidArgument

logs_app = typer.Typer(
    help="The service's own logs (docs/loop.md).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidArgument(
            option, f"{text!r} is not an ISO time like 2026-12-06T00:00Z"
        ) from exc
    if value.tzinfo is None:
        raise InvalidArgument(option, f"{text!r} has no time zone (add Z for UTC)")
    return value


@logs_app.command("join")
def join_cmd(
    directory: Annotated[str, typer.Option("--dir", help="the decision log directory (or URI)")],
    out: Annotated[Path, typer.Option(help="the ad-opportunity log to write (Parquet)")],
    events: Annotated[
        str | None, typer.Option(help="the event log directory (default: --dir)")
    ] = None,
    since: Annotated[str | None, typer.Option(help="decisions from this time (ISO, UTC)")] = None,
    until: Annotated[str | None, typer.Option(help="decisions before this time")] = None,
    config: Annotated[
        Path | None, typer.Option(help="config TOML: [decision_log] attribution windows")
    ] = None,
    spool: Annotated[
        str | None,
        typer.Option(
            help="the decision spool to convert first (default: the config's, else --dir/spool)"
        ),
    ] = None,
) -> None:
    """Convert what the decision spool still holds, then join decisions and events into one
    ad-opportunity log that train, replay, tune and summary read as it is; events that did not
    become outcomes are counted and kept."""
    from engine.config import load_config
    from engine.logs.converter import convert_pending
    from engine.logs.join import Windows, join_logs

    try:
        settings = load_config(config)
        c = settings.decision_log
        converted = convert_pending(directory, settings, spool)
        if converted:
            console.print(f"{converted} spool files converted into {directory}")
        windows = Windows.of(c.engaged_window, c.converted_window, c.negative_window)
        report = join_logs(
            directory, out, windows, events, _time(since, "--since"), _time(until, "--until")
        )
    except AdmatchError as exc:
        fail(exc)
    console.print(
        f"{report['rows']:,} rows of {report['requests']:,} requests -> {out}: "
        f"{report['shown']:,} shown, {report['engaged']:,} engaged, "
        f"{report['converted']:,} converted, {report['negative']:,} negative"
    )
    for why, n in report["events_not_used"].items():
        console.print(f"  {n:>8,} events not used: {why}")
    if report["decision_rows_repeated"]:
        console.print(
            f"  {report['decision_rows_repeated']:>8,} decision rows logged twice: kept once"
        )
