# The two commands of the README: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV ?= $(shell command -v uv || echo .tools/bin/uv)
VENV := .venv
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON := $(PYTHON)
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test bench screenshot clean

# uv from PyPI when the machine has none (a fresh machine has only Python 3.11).
.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra test
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/python -m app.demo

# The README's picture of a triggered run, taken again in headless Chromium (apt-get install chromium).
screenshot: install
	DEMO_HOLD=0 DEMO_SCREENSHOT=docs/img/triggered-run.png $(VENV)/bin/python -m app.demo

# Three workers: the integration tests mostly wait on real processes, so they overlap well even on two
# cores; --dist loadfile keeps each module's shared sandbox inside one worker.
TEST_WORKERS ?= 3
test: install
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# Every benchmark, each printing its reference measured in the same run, then one table of all
# (bench/run_all.py; how to read it: docs/benchmarks.md). Under 15 minutes on 2 cores.
bench: install
	$(VENV)/bin/python -m bench.run_all

clean:
	-$(VENV)/bin/runbook sandbox down --dir .demo/sandbox
	rm -rf .demo .sandbox .pytest_cache
