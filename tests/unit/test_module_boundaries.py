"""What each offline job loads: the tuner and the replay's simulation of causality import no
gRPC contract, servicer or serving app (issue 21: `admatch tune` imported the whole gRPC stack
for one small helper)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SERVING = ("grpc", "admatch.v1", "engine.rpc", "engine.app")


@pytest.mark.parametrize("module", ["engine.tune.run", "engine.cli_tune", "engine.replay.causal"])
def test_offline_jobs_import_no_serving_stack(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc' "
        f"or m.startswith({SERVING!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout
