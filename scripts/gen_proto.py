"""Generate the gRPC Python code and typed stubs (mypy-protobuf) from proto/.

Output: the package ``admatch.v1`` at the repository root (``admatch/v1/*_pb2*.py`` and
``.pyi``), named like the proto package so the generated imports resolve. Run by
``scripts/setup.sh``; never edit the output (it is git-ignored and not linted).
"""

from __future__ import annotations

import importlib
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    # google/rpc/status.proto (ScoreResponse.error) ships with googleapis-common-protos, whose
    # generated google.rpc modules the admatch code imports at run time
    common = str(Path(importlib.import_module("google.rpc.status_pb2").__file__ or "").parents[2])
    bin_dir = Path(sys.executable).parent  # the plugins sit next to the interpreter
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{ROOT / 'proto'}",
        f"-I{well_known}",
        f"-I{common}",
        f"--python_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        f"--mypy_out={ROOT}",
        f"--mypy_grpc_out={ROOT}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        print("protoc failed", file=sys.stderr)
        return int(code)
    for package in {ROOT / Path(p).parent for p in protos} | {ROOT / "admatch"}:
        (package / "__init__.py").touch()
        (package / "py.typed").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
