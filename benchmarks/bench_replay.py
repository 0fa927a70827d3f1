"""The replay matrix of BENCHMARKS.md: synthetic and real logs, in process and over gRPC.

    .venv/bin/python -m benchmarks.bench_replay [--quick] [--out data/bench/replay]

Each row is one ``admatch replay`` run (its report.json and report.md stay in ``--out``):

* the 1M-row synthetic log in process, batched as the server batches (32) and one at a time;
* the same log over gRPC to ``admatch serve`` with 1 and 2 workers (the embedded Redis, the
  shipped config with batching across requests on), 8 requests in flight, streaming;
* the iPinYou and Open Bandit samples (``../shared/data``, imported through their mappings,
  with small models trained on them) in process and over gRPC.

Bounded runs (``--max-requests``) keep the whole matrix to about half an hour; ``--quick``
runs a few thousand requests per row. The table printed at the end is the one in
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .bench_grpc import bench_config, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ADMATCH = str(Path(sys.executable).with_name("admatch"))


def admatch(*args: str) -> None:
    subprocess.run([ADMATCH, *args], check=True, stdout=subprocess.DEVNULL)


def real_logs(work: Path) -> dict[str, tuple[Path, Path]]:
    """The shipped real samples as logs in the schema, each with a model trained on it."""
    out = {}
    samples = {
        "ipinyou": ("ipinyou", sorted((SHARED / "ipinyou").glob("ipinyou.*.csv"))),
        "open_bandit": ("open_bandit", [SHARED / "open_bandit" / "random_men" / "men.csv"]),
    }
    for name, (mapping, inputs) in samples.items():
        if not all(p.exists() for p in inputs):
            print(f"# {name}: sample not found under {SHARED}, skipped")
            continue
        log, model = work / f"{name}.parquet", work / f"model_{name}"
        if not log.exists():
            admatch("import-log", "--mapping", mapping, "--out", str(log), *map(str, inputs))
        if not model.exists():
            admatch("train", "--log", str(log), "--out", str(model), "--no-compile")
        out[name] = (log, model)
    return out


def replay(label: str, out: Path, *args: str) -> dict[str, Any]:
    report = out / label
    admatch("replay", "--report", str(report), *args)
    doc: dict[str, Any] = json.loads((report / "report.json").read_text())
    doc["label"] = label
    return doc


def row(d: dict[str, Any]) -> str:
    t, lat, f, dec = d["throughput"], d["latency_ms"], d["floor"], d["decisions"]
    fit = d["quality"]["user_fit"]["engaged"]["auc"]
    ope = d["quality"]["off_policy"]
    rev = "-"
    if ope.get("available"):
        e = ope["engine"]["revenue"]["dr"]
        rev = f"{e['value']:.4f} [{e['low']:.4f}, {e['high']:.4f}]"
        if ope["engine"]["revenue"]["truth"] is not None:
            rev += f" (truth {ope['engine']['revenue']['truth']:.4f})"
    ratio = "-" if f["ratio"] is None else f"{f['ratio']:.2f}"
    return (
        f"| {d['label']} | {d['requests']:,} | {t['requests_per_s']:,.0f} | "
        f"{t['candidates_per_s']:,.0f} | {lat['p50']:.2f} / {lat['p99']:.2f} | {ratio} | "
        f"{dec['fill_rate']:.3f} | {dec['cap_violations']} | {d['errors']['total']} | "
        f"{'-' if fit is None else f'{fit:.3f}'} | {rev} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "bench" / "replay")
    parser.add_argument("--log", type=Path, default=ROOT / "data" / "bench" / "log_1m_c.parquet")
    parser.add_argument("--model", type=Path, default=ROOT / "data" / "bench" / "model_1m")
    parser.add_argument("--quick", action="store_true")
    a = parser.parse_args()
    n = 3000 if a.quick else 20000
    a.out.mkdir(parents=True, exist_ok=True)
    docs = []
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        config = bench_config(Path(tmp), batch_window_ms=1.0)
        common = ["--config", str(config), "--fresh-state", "--no-plots"]
        syn = ["--log", str(a.log), "--model", str(a.model), *common]
        full = [] if not a.quick else ["--max-requests", str(n)]
        docs.append(
            replay("synthetic 1M, in process, batch 32", a.out, *syn, "--batch", "32", *full)
        )
        docs.append(
            replay(
                "synthetic 1M, in process, batch 1",
                a.out,
                *syn,
                "--batch",
                "1",
                "--max-requests",
                str(n),
            )
        )
        logs = real_logs(a.out)
        for name, (log, model) in logs.items():
            real = ["--log", str(log), "--model", str(model), *common]
            docs.append(replay(f"{name}, in process, batch 32", a.out, *real, "--batch", "32"))
        for workers in (1, 2):
            proc, target = start_server(a.model, config, workers)
            try:
                grpc_args = ["--target", target, "--concurrency", "8", "--stream"]
                docs.append(
                    replay(
                        f"synthetic 1M, gRPC, {workers} worker(s), 8 streams",
                        a.out,
                        *syn,
                        *grpc_args,
                        "--max-requests",
                        str(n),
                    )
                )
            finally:
                stop_server(proc)
        for name, (log, model) in logs.items():
            proc, target = start_server(model, config, 1)
            try:
                real = ["--log", str(log), "--model", str(model), *common]
                docs.append(
                    replay(
                        f"{name}, gRPC, 1 worker, 8 streams",
                        a.out,
                        *real,
                        "--target",
                        target,
                        "--concurrency",
                        "8",
                        "--stream",
                    )
                )
            finally:
                stop_server(proc)
    print(
        "| run | requests | requests/s | candidates/s | p50 / p99 ms | floor ratio | fill | "
        "cap violations | errors | AUC engaged | revenue/request DR [95%] |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for d in docs:
        print(row(d))
    env = docs[0]["environment"]
    print(f"\n{env['cpu']}, {env['cores']} cores, Python {env['python']}, {env['versions']}")


if __name__ == "__main__":
    main()
