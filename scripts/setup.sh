#!/usr/bin/env bash
# Creates .venv in the repo root (if missing) and installs admatch into it, editable, with the
# development tools. Safe to run again: it only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "admatch needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=.venv/.admatch-installed
generated=admatch/v1/admatch_pb2.py
# (Re)install when the project, its tested versions (constraints.txt), the proto contract or a
# compiled module's source changed, or
# a compiled module is missing (a fresh clone, a `git clean`).
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ constraints.txt -nt "$stamp" ] \
   || [ ! -f "$generated" ] || [ -n "$(find proto -name '*.proto' -newer "$generated")" ] \
   || [ -n "$(find engine -name '*.pyx' -newer "$stamp")" ] \
   || ! ls engine/caps/_count.*.so engine/rpc/_rows.*.so >/dev/null 2>&1; then
    # The gRPC code is generated first (its tools come from the project's build requirements),
    # so the editable install sees the generated package. The install compiles the Cython
    # modules (gcc and the Python headers; Cython comes with the build requirements).
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
        "grpcio-tools>=1.60,<2" "mypy-protobuf>=3.5" "googleapis-common-protos>=1.60"
    .venv/bin/python scripts/gen_proto.py
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
        -e '.[dev]'
    touch "$stamp"
fi
# The independent Node.js gRPC client used by one integration test (skipped where node is absent).
if command -v npm >/dev/null 2>&1 && [ -f tests/node/package-lock.json ]; then
    if [ ! -d tests/node/node_modules ] || [ tests/node/package-lock.json -nt tests/node/node_modules ]; then
        (cd tests/node && npm ci --no-audit --no-fund --silent)
    fi
fi
