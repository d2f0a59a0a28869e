# keyrelay developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast lint bench bench-goodput demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev,bench]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" -x -q

bench: $(STAMP)
	$(BIN)/python bench/lease_throughput.py

# keyrelay against an oracle, naive rotation and LiteLLM Router on the provider emulator
# (bench/goodput, ~20 min); appends to docs/benchmarks.md. Installs the `compare` extra (LiteLLM,
# matplotlib), which `make test` never does. `make bench-goodput GOODPUT_ARGS="--repeats 1"`.
bench-goodput: $(STAMP)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev,bench,compare]'
	$(BIN)/python -m bench.goodput --write $(GOODPUT_ARGS)

# A local Prefect server, the provider emulator, three keys and more runs than they allow, live;
# about a minute, nothing left running afterwards. `make demo DEMO_ARGS=--keep` keeps the UI up.
demo: $(STAMP)
	$(BIN)/keyrelay demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
