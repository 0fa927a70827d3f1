"""What the decision log costs a worker per request: serializing the request it received and
encoding and writing the spool record (engine/logs/spool.py), against scoring the same
requests, in one process. The converter's Parquet work runs in idle CPU, elsewhere
(BENCHMARKS.md, "What the decision log costs the service").

    .venv/bin/python -m benchmarks.bench_spool --model data/bench/model_200k \
        --log data/bench/log_200k.parquet
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from admatch.v1 import admatch_pb2 as pb
from engine.config import load_config
from engine.logs.spool import Logged, encode
from engine.model.bundle import ModelBundle
from engine.rpc.decode import decode_request
from engine.scoring.scorer import Scorer

from .bench_grpc import make_requests
from .machine import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("data/bench/model_1m"))
    parser.add_argument("--log", type=Path, default=Path("data/bench/log_1m_c.parquet"))
    parser.add_argument("--requests", type=int, default=512)
    args = parser.parse_args()
    print(describe())
    payloads = make_requests(args.log, args.requests)
    messages = [pb.ScoreRequest.FromString(p) for p in payloads]
    requests = [decode_request(m) for m in messages]
    scorer = Scorer(ModelBundle.load(args.model), load_config())
    start = time.process_time()
    decisions = []
    for k in range(0, len(requests), 32):
        decisions += scorer.score_batch(requests[k : k + 32])
    scoring = (time.process_time() - start) / len(requests)
    best = float("inf")
    with tempfile.TemporaryFile() as spool:
        for _ in range(5):
            start = time.process_time()
            for message, request, decision in zip(messages, requests, decisions, strict=True):
                wire = message.SerializeToString()
                spool.write(encode(Logged(request, decision, False, time.time(), wire)))
            spool.flush()
            best = min(best, (time.process_time() - start) / len(requests))
    print(f"scoring (batches of 32: features, model, selection): {scoring * 1e3:.3f} ms/request")
    print(
        f"spooling (serialize, encode, write; best of 5): {best * 1e3:.4f} ms/request "
        f"= {best / scoring:.1%} of scoring alone"
    )


if __name__ == "__main__":
    main()
