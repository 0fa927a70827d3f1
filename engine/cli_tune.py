"""``admatch tune``: search the experience-cost weights on a log (docs/tuning.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from engine.cliutil import console, fail
from engine.errors import AdmatchError, InvalidArgument


def _household_limits(values: list[str]) -> dict[str, int]:
    out = {}
    for v in values:
        tp, _, k = v.partition("=")
        if not k.isdigit():
            raise InvalidArgument(
                "--max-ads-per-household-day", f"{v!r}: use TOUCHPOINT=K, e.g. ott=4"
            )
        out[tp] = int(k)
    return out


def tune(
    log: Annotated[Path, typer.Option(help="log with outcomes and propensities")],
    model: Annotated[Path, typer.Option(help="model directory (scores the log once)")],
    out: Annotated[Path, typer.Option(help="recommended config TOML to write")],
    report: Annotated[Path, typer.Option(help="report directory")],
    trials: Annotated[
        int, typer.Option(min=1, help="complete trials the study should reach")
    ] = 100,
    config: Annotated[Path | None, typer.Option(help="base config (ranges, constraints)")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="processes running trials at once")] = 1,
    seed: Annotated[int, typer.Option(help="sampler seed")] = 0,
    storage: Annotated[
        str | None,
        typer.Option(
            help="journal:///file, sqlite:///file or postgresql://...; default: in --report"
        ),
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="study name (default: from log, model, seed)")
    ] = None,
    max_negative_rate: Annotated[
        float | None, typer.Option(min=0, help="negative feedback per request at most this")
    ] = None,
    max_ads_per_household_day: Annotated[
        list[str] | None,
        typer.Option(help="TOUCHPOINT=K: no household-day above K ads (repeatable)"),
    ] = None,
    min_revenue_pct: Annotated[
        float | None, typer.Option(min=0, help="revenue at least this % of the current weights'")
    ] = None,
    direct_method: Annotated[
        bool, typer.Option(help="without propensities, judge trials by the model alone (biased)")
    ] = False,
    truth_trials: Annotated[
        int | None, typer.Option(min=0, help="true-optimum search trials (synthetic logs); 0: none")
    ] = None,
    history: Annotated[
        list[Path] | None,
        typer.Option(help="an earlier log whose impressions the caps and fatigue start from"),
    ] = None,
) -> None:
    """Tune the experience-cost weights, lambda and the reserve on a log: a Pareto frontier,
    a recommended config the server loads, and a report."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from engine.tune.run import TuneOptions
    from engine.tune.run import tune as run_tune

    try:
        constraints: dict[str, Any] = {}
        if max_negative_rate is not None:
            constraints["max_negative_rate"] = max_negative_rate
        if max_ads_per_household_day:
            constraints["max_ads_per_household_day"] = _household_limits(max_ads_per_household_day)
        if min_revenue_pct is not None:
            constraints["min_revenue_pct"] = min_revenue_pct
        options = TuneOptions(
            log=log,
            model_dir=model,
            out=out,
            report_dir=report,
            config_path=config,
            trials=trials,
            jobs=jobs,
            seed=seed,
            storage=storage,
            study=study,
            direct_method=direct_method,
            truth_trials=truth_trials,
            constraints=constraints,
            history=tuple(history or ()),
        )
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("preparing the log, then trials", total=trials)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total, description="trials")

            doc = run_tune(options, progress)
    except AdmatchError as exc:
        fail(exc)
    _print(doc, out, report)


def _print(doc: dict[str, Any], out: Path, report: Path) -> None:
    for assumption in doc.get("assumptions", []):
        console.print(f"[yellow]assumed:[/] {assumption}", highlight=False, soft_wrap=True)
    ch = doc["chosen"]
    if ch is None:
        console.print(f"[bold yellow]{doc['note']}[/]; see {report / 'report.md'}")
        return
    rev, neg = ch["revenue"], ch["negative"]
    console.print(
        f"recommended trial {ch['trial']} of {doc['trials']}: revenue/request {rev['value']:.5g} "
        f"[{rev['low']:.5g}, {rev['high']:.5g}], negative/request {neg['value']:.5g} "
        f"[{neg['low']:.5g}, {neg['high']:.5g}], ads/user-day {ch['ads_per_user_day']:.3g}"
    )
    t = doc.get("truth")
    if t and "regret_pct" in t:
        console.print(f"against the truth: regret {t['regret_pct']:.2f}% of the true optimum")
    tm = doc["timing"]
    if tm["trials_per_minute"]:
        console.print(
            f"{tm['trials_per_minute']:.1f} trials/minute; config -> {out}; report -> {report}"
        )
