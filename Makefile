# The front door: `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.natskiq-installed
BENCH_STAMP = $(VENV)/.natskiq-bench-installed
DOCS_STAMP = $(VENV)/.natskiq-docs-installed
# `make bench BENCH_ARGS=--quick` for a one-repetition run on 1,000 jobs.
BENCH_ARGS ?=

.PHONY: demo test lint format clean bench soak docs docs-serve

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# .[dev,bench] includes .[dev], so it satisfies $(STAMP) too.
$(BENCH_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	touch $(STAMP) $(BENCH_STAMP)

# .[dev,docs] includes .[dev], so it satisfies $(STAMP) too.
$(DOCS_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,docs]'
	touch $(STAMP) $(DOCS_STAMP)

demo: $(STAMP)
	$(BIN)/natskiq demo

# Three test processes on 2 cores: most tests wait on servers, subprocesses
# and lease or ack-wait timers, not on the CPU, so the suite takes about
# 3½ minutes instead of about 5 on two processes (about 8 on one).
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 3 --dist loadgroup

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# 10,000 jobs of 0.5 s on a local 3-node cluster under 20 injected faults; fails if a
# job is lost, ran under a stale lease, or was not back within the recovery targets (see tests/chaos.py);
# then 10 batches of 200 jobs through a worker and a master killed (every callback exactly once).
soak: $(STAMP)
	$(BIN)/python -m tests.chaos --jobs 10000 --faults 20 --job-seconds 0.5
	NATSKIQ_BATCH_SOAK=1 $(BIN)/python -m pytest -q -p no:xdist tests/test_batches_cluster.py

# The documentation site (MkDocs Material, API reference by mkdocstrings) into site/;
# --strict: a broken link, anchor or reference fails the build.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/mypy src
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format src tests examples bench
	$(BIN)/ruff check --fix src tests examples bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
