# The two commands of the README: `make run` (set up, run the main job) and `make test`
# (set up, run the whole test suite with linters). Both create .venv on first use.
.PHONY: setup run test lint bench
VENV := .venv/bin

setup:
	@scripts/setup.sh

run: setup
	$(VENV)/admatch quickstart

lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

test: lint
	$(VENV)/pytest -n 2 -q

bench: setup
	$(VENV)/python -m benchmarks.bench_features
