"""The ``admatch`` command line. Each command parses options, calls one job, prints a result."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import polars as pl
import typer

from engine.cliutil import console, err_console
from engine.cliutil import fail as _fail
from engine.cliutil import table as _table
from engine.errors import AdmatchError, InvalidArgument

if TYPE_CHECKING:
    from engine.logs.importer import ImportReport

app = typer.Typer(
    help="admatch: user-first ad matching for AI voice, OTT, IoT and mobile touchpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command("gen-logs")
def gen_logs(
    out: Annotated[Path, typer.Option(help="output Parquet log; truth goes to <out>.truth.json")],
    rows: Annotated[int, typer.Option(min=1, help="candidate rows to generate")] = 1_000_000,
    seed: Annotated[int, typer.Option(help="random seed; same seed, same log")] = 0,
    days: Annotated[int, typer.Option(min=1, max=366, help="days of traffic")] = 14,
    policy: Annotated[str, typer.Option(help="logging policy: uniform or greedy")] = "uniform",
) -> None:
    """Generate a synthetic AI voice / OTT / IoT / mobile log with a known truth."""
    from engine.synth.generator import generate, write_generated
    from engine.synth.params import WorldParams

    if policy not in ("uniform", "greedy"):
        _fail(AdmatchError(f"--policy: must be uniform or greedy, not {policy!r}"))
    try:
        params = WorldParams(rows=rows, seed=seed, days=days, policy=policy)
        start = time.perf_counter()
        with console.status(f"generating {rows:,} rows"):
            generated = generate(params)
            truth = write_generated(generated, out)
        seconds = time.perf_counter() - start
    except AdmatchError as exc:
        _fail(exc)
    s = generated.truth["summary"]
    console.print(
        f"wrote {s['rows']:,} rows ({s['requests']:,} requests, {s['impressions']:,} impressions)"
        f" to {out} in {seconds:.1f} s ({rows / seconds:,.0f} rows/s); truth: {truth}"
    )


@app.command("import-log")
def import_log_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="CSV or Parquet files of one log")],
    mapping: Annotated[str, typer.Option(help="mapping TOML file, or ipinyou / open_bandit")],
    out: Annotated[Path, typer.Option(help="output Parquet log")],
    max_rejected_pct: Annotated[
        float,
        typer.Option(min=0, max=100, help="fail (exit 1, no log written) above this % rejected"),
    ] = 1.0,
    dedupe: Annotated[
        bool,
        typer.Option(
            help="an ad given twice in a request keeps its first row (else the "
            "request is rejected, as the service refuses it)"
        ),
    ] = False,
) -> None:
    """Import a log in your own format through a declarative mapping file."""
    from engine.logs.importer import TooManyRejected, import_log
    from engine.logs.mapping import load_mapping

    try:
        report = import_log(
            load_mapping(mapping), inputs, out, max_rejected_pct=max_rejected_pct, dedupe=dedupe
        )
    except TooManyRejected as exc:
        print_import(exc.report)
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(code=1) from None
    except AdmatchError as exc:
        _fail(exc)
    print_import(report)


def print_import(report: ImportReport) -> None:
    """What an import did: counts, the top reasons with a first row each, the warnings."""
    from engine.logs.importer import EXAMPLES

    written = (
        f"wrote {report.rows_written:,} to {report.out}"
        if report.rows_written
        else ("wrote no log")
    )
    console.print(
        f"read {report.rows_read:,} rows, {written}, rejected {report.rows_rejected:,} "
        f"({report.rejected_pct:.2f}%)",
        highlight=False,
        soft_wrap=True,
    )
    for r in report.reasons[:EXAMPLES]:
        console.print(
            f"  {r.rows:>9,}  {r.rule}\n             first: {r.example_file}:{r.example_line}: "
            f"{r.example}",
            highlight=False,
            soft_wrap=True,
        )
    if len(report.reasons) > EXAMPLES:
        more = sum(r.rows for r in report.reasons[EXAMPLES:])
        console.print(f"  {more:>9,}  for {len(report.reasons) - EXAMPLES} other reasons")
    if report.rejects:
        console.print(
            f"rejected rows with their reasons: {report.rejects}", highlight=False, soft_wrap=True
        )
    for name, (n, key) in report.nulls.items():
        console.print(
            f"note: {name} is NULL on {n:,} rows whose inputs have values ({key} made it so): "
            "taken as no value",
            highlight=False,
            soft_wrap=True,
        )
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


@app.command()
def summary(log: Annotated[Path, typer.Option(help="a log in the admatch schema")]) -> None:
    """Print the size, time span and per-slot rates of a log."""
    from engine.logs.lint import log_warnings
    from engine.logs.summary import summarize
    from features.logio import scan_log

    try:
        s = summarize(scan_log(log))
    except AdmatchError as exc:
        _fail(exc)
    console.print(
        f"{s.rows:,} rows, {s.requests:,} requests, {s.impressions:,} impressions, "
        f"{s.users:,} users, {s.households:,} households, {s.start} .. {s.end}"
    )
    by_slot = s.by_slot.select(
        [c for c in s.by_slot.columns if s.by_slot[c].null_count() < len(s.by_slot)]
    )
    console.print(_table(by_slot, "per slot (rates over shown candidates)"))
    for warning in log_warnings(scan_log(log)):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


@app.command()
def features(
    log: Annotated[Path, typer.Option(help="a log in the admatch schema")],
    out: Annotated[Path, typer.Option(help="output Parquet of features")],
    stats: Annotated[
        Path | None, typer.Option(help="directory with feature_stats.json; default: fit on LOG")
    ] = None,
) -> None:
    """Compute every registered feature over a log, point-in-time correct."""
    from engine.jobs import build_features, feature_overview

    try:
        with console.status("building features"):
            job = build_features(log, out, stats)
    except AdmatchError as exc:
        _fail(exc)
    console.print(
        f"{job.rows:,} rows x {job.features} features -> {job.out} in {job.seconds:.1f} s "
        f"({job.rows_per_s:,.0f} rows/s incl. read and write); statistics: {job.stats_dir}"
    )
    console.print(_table(feature_overview(out), "features"))


@app.command()
def quickstart(
    rows: Annotated[int, typer.Option(min=1000, help="rows of the synthetic log")] = 200_000,
    directory: Annotated[Path, typer.Option("--dir", help="where to write")] = Path(
        "data/quickstart"
    ),
    seed: Annotated[int, typer.Option(help="random seed")] = 7,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="start the service at the end")
    ] = True,
    port: Annotated[int | None, typer.Option(help="override server.port")] = None,
) -> None:
    """The main job: a synthetic log and a default model (made once), then the service, its
    decision and event logs under ``<dir>/logs`` (docs/loop.md)."""
    log, model = directory / "log.parquet", directory / "model"
    if not log.exists():
        gen_logs(out=log, rows=rows, seed=seed, days=14, policy="uniform")
    summary(log=log)
    made = (model / "metadata.json").exists()
    stale = _stale_model(model) if made else ""
    if stale:
        console.print(f"training again: the model in {model} no longer loads ({stale})")
    if stale or not made:
        train(log=log, out=model, seed=seed, compile_trees=None, threads=0)
    else:
        console.print(f"using the model in {model} (delete it to train again)")
    if serve_after:
        config = _quickstart_config(directory)
        request = Path(__file__).resolve().parents[1] / "tests/golden/scoring/exemplary"
        console.print(
            "call it from another terminal, e.g.\n"
            f"  .venv/bin/admatch score --target 127.0.0.1:{port or 50051} "
            f"--request {request / 'ott_preroll_pod.json'}\n"
            f"decisions and events are logged under {directory / 'logs'}; join them with\n"
            f"  .venv/bin/admatch logs join --dir {directory / 'logs'} --out joined.parquet"
        )
        serve(model=model, config=config, port=port)


def _stale_model(model: Path) -> str:
    """Why the model directory cannot serve this admatch ("" when it can), e.g. a model
    trained on other feature definitions."""
    from engine.errors import ModelError
    from engine.model.bundle import ModelBundle

    try:
        ModelBundle.load(model, runtime="lightgbm")
    except ModelError as exc:
        return str(exc)
    return ""


def _quickstart_config(directory: Path) -> Path:
    """The shipped config with the decision log under ``<dir>/logs`` and the embedded cap
    store's state under ``<dir>/state`` (written once; edit it)."""
    from importlib import resources

    path = directory / "admatch.toml"
    if not path.exists():
        text = resources.files("engine").joinpath("default_config.toml").read_text()
        logs = (directory / "logs").resolve()
        state = (directory / "state").resolve()
        text = text.replace('state_dir = "data/state"', f'state_dir = "{state}"', 1)
        path.write_text(text.replace('dir = ""', f'dir = "{logs}"', 1))
    return path


@app.command()
def train(
    log: Annotated[Path, typer.Option(help="a log in the admatch schema (with outcomes)")],
    out: Annotated[Path, typer.Option(help="model directory to write")],
    seed: Annotated[int, typer.Option(help="random seed; same seed, same model")] = 0,
    compile_trees: Annotated[
        bool | None,
        typer.Option("--compile/--no-compile", help="compile with lleaves (default: if installed)"),
    ] = None,
    threads: Annotated[int, typer.Option(min=0, help="LightGBM threads; 0 = all")] = 0,
    allow_constant: Annotated[
        bool, typer.Option(help="train a target whose outcomes are all the same (else an error)")
    ] = False,
    taxonomy: Annotated[
        str,
        typer.Option(
            help="a category taxonomy TSV (IAB Ad Product Taxonomy layout): interest tags then "
            "match the ads of their category and every category under it, by id or name"
        ),
    ] = "",
) -> None:
    """Train the engagement and negative-feedback models on a log."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from engine.model.train import TrainParams
    from engine.model.train import train as train_models

    params = TrainParams(
        seed=seed,
        compile=compile_trees,
        threads=threads,
        allow_constant=allow_constant,
        taxonomy=taxonomy,
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            tasks: dict[str, Any] = {}

            def progress(target: str, done: int, total: int) -> None:
                if target not in tasks:
                    tasks[target] = bar.add_task(f"training {target}", total=total)
                bar.update(tasks[target], completed=done)

            meta = train_models(log, out, params, progress)
    except AdmatchError as exc:
        _fail(exc)
    rows = [
        {
            "target": t,
            "auc": m["auc"],
            "truth_auc": m.get("truth_auc"),
            "log_loss": m["log_loss"],
            "trees": m["trees"],
            "valid_rows": m["rows"],
            "positives": m["positives"],
        }
        for t, m in meta["metrics"].items()
    ]
    console.print(_table(pl.DataFrame(rows), f"model {meta['model_version']} -> {out}"))
    t = meta["training"]
    compiled = f", compiled in {t['compile_seconds']:.1f} s" if t["compile_seconds"] else ""
    console.print(f"trained in {t['seconds']:.1f} s{compiled}: {', '.join(meta['metrics'])}")
    from engine.model.bundle import ASSUMED

    for target, why in meta.get("not_trained", {}).items():
        console.print(f"[yellow]not trained:[/] {target}: {why}; {ASSUMED[target]}", soft_wrap=True)


@app.command()
def decide(
    model: Annotated[Path, typer.Option(help="model directory")],
    request: Annotated[Path, typer.Option(help="request JSON (see docs/scoring.md)")],
    config: Annotated[Path | None, typer.Option(help="config TOML; default: shipped")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Score one request in process and print every candidate's decision."""
    import json

    from engine.config import load_config
    from engine.model.bundle import ModelBundle
    from engine.scoring.jsonio import decision_to_json, request_from_json
    from engine.scoring.scorer import Scorer

    try:
        scorer = Scorer(ModelBundle.load(model), load_config(config))
        decision = scorer.score(request_from_json(_request_doc(request)))
    except AdmatchError as exc:
        _fail(exc)
    except (OSError, ValueError) as exc:
        _fail(AdmatchError(f"{request}: {exc}"))
    if as_json:
        console.print_json(json.dumps(decision_to_json(decision)))
        return
    rows = [
        {
            "ad_id": r["ad_id"],
            "decision": r["reason"],
            "rank": r["rank"] or "",
            "p_engage": r["p_engage"],
            "p_negative": r["p_negative"],
            "value": r["expected_value"],
            "cost": r["cost_total"],
            "utility": r["utility"],
        }
        for r in decision.rows()
    ]
    shown = ", ".join(decision.selected) or "no ad"
    console.print(_table(pl.DataFrame(rows), f"{decision.request_id}: {shown}"))


@app.command()
def serve(
    model: Annotated[Path, typer.Option(help="model directory")],
    config: Annotated[Path | None, typer.Option(help="config TOML; default: shipped")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="override server.port")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="server processes on one port")] = 1,
    log_format: Annotated[str, typer.Option(help="text or json (one object per line)")] = "text",
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
) -> None:
    """Serve the AdMatching gRPC API (health checking and reflection included): a parent
    process that owns the port and the store, and --workers processes that serve
    (docs/operations.md). Exits 1 when it cannot start (the port is in use, a worker cannot
    load the model or bind)."""
    from engine.config import load_config
    from engine.logs.jsonlog import configure
    from engine.model.bundle import ModelBundle
    from engine.rpc.run import Server

    if log_format not in ("text", "json") or log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        _fail(AdmatchError("--log-format must be text or json; --log-level DEBUG..ERROR"))
    configure(log_format, log_level)
    try:
        settings = load_config(config)
        version = ModelBundle.load(model, runtime="lightgbm").version  # refuse a broken model now
    except AdmatchError as exc:
        _fail(exc)
    if port is not None:
        settings = settings.model_copy(
            update={"server": settings.server.model_copy(update={"port": port})}
        )
    host = settings.server.host

    def ready(bound: int, names: list[str]) -> None:
        console.print(
            f"admatch serving on {host}:{bound} (model {version}, {len(names)} worker(s)); "
            "Ctrl-C to stop"
        )

    try:
        Server(settings, model, workers, (log_format, log_level), config).serve(ready)
    except AdmatchError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(code=1) from None


@app.command("store-migrate")
def store_migrate(
    config: Annotated[Path | None, typer.Option(help="config TOML; default: shipped")] = None,
) -> None:
    """Carry the cap store the config names (store.url, or the embedded one's state_dir) from
    an earlier key layout (v6, v7) to this admatch's, in place: counts, feedback blocks and
    idempotency markers. Stop every admatch using the store first. Run again if cut short."""
    import redis

    from engine.caps.connect import migrate_store
    from engine.caps.keys import KEY_VERSION
    from engine.config import load_config

    try:
        done = migrate_store(load_config(config))
    except (AdmatchError, ValueError, redis.RedisError) as exc:
        _fail(AdmatchError(f"store-migrate: {exc} (run it again to carry what is left)"))
    if done.found == KEY_VERSION:
        console.print(f"the cap store is at key layout v{KEY_VERSION} already: nothing to do")
        return
    console.print(
        f"the cap store carried from key layout v{done.found} to v{KEY_VERSION}: "
        f"{done.renamed:,} keys renamed, {done.rewritten:,} rewritten"
    )


@app.command()
def score(
    target: Annotated[str, typer.Option(help="server host:port")],
    request: Annotated[Path, typer.Option(help="request JSON (docs/scoring.md)")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    columnar: Annotated[bool, typer.Option(help="send the columnar candidate encoding")] = False,
    timeout: Annotated[float, typer.Option(min=0.001, help="deadline, seconds")] = 5.0,
) -> None:
    """Send one request to a running server and print its decision."""
    import json

    import grpc
    from google.protobuf.json_format import MessageToDict

    from admatch.v1 import admatch_pb2 as pb
    from admatch.v1 import admatch_pb2_grpc as pb_grpc
    from engine.rpc.convert import request_to_proto
    from engine.scoring.jsonio import request_from_json

    try:
        message = request_to_proto(request_from_json(_request_doc(request)), columnar)
    except AdmatchError as exc:
        _fail(exc)
    except (OSError, ValueError) as exc:
        _fail(AdmatchError(f"{request}: {exc}"))
    try:
        with grpc.insecure_channel(target) as channel:
            reply = pb_grpc.AdMatchingStub(channel).Score(message, timeout=timeout)
    except grpc.RpcError as exc:
        err_console.print(
            f"[bold red]error:[/] {exc.code().name}: {exc.details()}", highlight=False
        )
        raise typer.Exit(code=2) from None
    if as_json:
        console.print_json(json.dumps(MessageToDict(reply, preserving_proto_field_name=True)))
        return
    rows = [
        {
            "ad_id": d.ad_id,
            "decision": pb.Reason.Name(d.reason).removeprefix("REASON_"),
            "rank": d.rank or "",
            "p_engage": d.score.p_engage,
            "utility": d.score.utility,
        }
        for d in reply.decisions
    ]
    shown = ", ".join(reply.selected_ad_ids) or "no ad"
    console.print(_table(pl.DataFrame(rows), f"{reply.request_id}: {shown}"))


@app.command()
def nightly(
    logs: Annotated[str, typer.Option(help="the server's decision log directory (or URI)")],
    work: Annotated[Path, typer.Option(help="where joined logs, models and configs go")],
    config: Annotated[Path, typer.Option(help="the config serving now (the tuner's base)")],
    day: Annotated[
        str | None, typer.Option(help="the UTC day to learn from (default: yesterday)")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="reload this server (host:port); ADMATCH_OPERATOR_TOKEN")
    ] = None,
    train_days: Annotated[int, typer.Option(min=1, help="days of logs to train on")] = 3,
    trials: Annotated[int, typer.Option(min=1, help="tuning trials")] = 40,
    truth_trials: Annotated[int, typer.Option(min=0, help="synthetic logs: truth trials")] = 0,
    truth: Annotated[
        Path | None, typer.Option(help="synthetic worlds: true probabilities per row")
    ] = None,
    seed: Annotated[int, typer.Option(help="of training and tuning")] = 0,
    compile_trees: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="lleaves (default: if installed)")
    ] = None,
) -> None:
    """The learning loop's nightly job: join the day's logs, train, tune, reload the server
    (docs/loop.md); schedule it once a day with cron or any scheduler."""
    from datetime import UTC, date, datetime, timedelta

    from engine.loop import NightlyOptions
    from engine.loop import nightly as run_nightly

    try:
        when = date.fromisoformat(day) if day else (datetime.now(UTC) - timedelta(days=1)).date()
    except ValueError:
        _fail(InvalidArgument("--day", f"{day!r} is not a date like 2026-12-05"))
    options = NightlyOptions(
        logs,
        work,
        when,
        config,
        train_days,
        trials,
        truth_trials,
        seed,
        truth,
        target,
        compile_trees,
    )
    try:
        report = run_nightly(options)
    except AdmatchError as exc:
        _fail(exc)
    chosen = report["tune"]["chosen"]
    console.print(
        f"{when}: {report['join']['rows']:,} rows joined, model {report['model']['version']}, "
        + (f"config {chosen['config_version']}" if chosen else "no recommendation: config kept")
        + (f"; reloaded in {len(report['reloaded']['workers'])} worker(s)" if target else "")
        + f" ({report['seconds']:.0f} s)"
    )


def _request_doc(path: Path) -> dict[str, Any]:
    """A request JSON file, or a golden file's ``request`` (tests/golden/scoring)."""
    import json

    doc = json.loads(path.read_text())
    if not isinstance(doc, dict):
        raise InvalidArgument("request", f"{path} holds a {type(doc).__name__}, not an object")
    if "candidates" not in doc and isinstance(doc.get("request"), dict):
        return dict(doc["request"])
    return doc


def _register() -> None:
    from engine.cli_logs import logs_app
    from engine.cli_replay import replay_app
    from engine.cli_tune import tune

    app.add_typer(replay_app, name="replay")
    app.add_typer(logs_app, name="logs")
    app.command("tune")(tune)


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except AdmatchError as exc:  # a job raised outside a command's own handling
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
