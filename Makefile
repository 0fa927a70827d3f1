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
	POLARS_MAX_THREADS=1 taskset -c 0 $(VENV)/python -m benchmarks.bench_features
	test -f data/bench/log_1m_c.parquet || $(VENV)/admatch gen-logs --rows 1000000 --seed 1 --out data/bench/log_1m_c.parquet
	test -d data/bench/model_1m || $(VENV)/admatch train --log data/bench/log_1m_c.parquet --out data/bench/model_1m --compile
	taskset -c 0 $(VENV)/python -m benchmarks.bench_runtimes --model data/bench/model_1m
	POLARS_MAX_THREADS=1 taskset -c 0 $(VENV)/python -m benchmarks.bench_scoring --model data/bench/model_1m --log data/bench/log_1m_c.parquet
	$(VENV)/python -m benchmarks.bench_caps
	$(VENV)/python -m benchmarks.bench_grpc --model data/bench/model_1m --log data/bench/log_1m_c.parquet
	$(VENV)/python -m benchmarks.bench_spool --model data/bench/model_1m --log data/bench/log_1m_c.parquet
	$(VENV)/python -m benchmarks.bench_replay
	POLARS_MAX_THREADS=1 taskset -c 1 $(VENV)/admatch tune --log data/bench/log_1m_c.parquet --model data/bench/model_1m --out data/bench/tune_1m/weights.toml --report data/bench/tune_1m --trials 40 --truth-trials 40 --max-negative-rate 0.12
