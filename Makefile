# Set-up and the two commands of the README: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REFDET := $(VENV)/bin/refdet
STAMP := $(VENV)/.installed
# pip prints one harmless warning per package about this machine's local index folders
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: install demo test lint format clean-outputs

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]' $(QUIET_PIP)
	# ultralytics for the key-map test and `refdet weights convert`; --no-deps keeps opencv-python (needs libGL) out
	$(PY) -m pip install -q --no-deps ultralytics ultralytics-thop $(QUIET_PIP)
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (refdet)" > /dev/null
	touch $(STAMP)

install: $(STAMP)

data/demo/splits.json: $(STAMP)
	$(REFDET) data demo data/demo --videos 16

demo: $(STAMP) data/demo/splits.json
	$(REFDET) run --profile demo -o outputs/demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check refdet_core tests
	$(VENV)/bin/ruff format --check refdet_core tests

format: $(STAMP)
	$(VENV)/bin/ruff format refdet_core tests

clean-outputs:
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
