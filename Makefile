# Set-up and the two commands of the README: `make demo` and `make test`; `make lab` for JupyterLab.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REFDET := $(VENV)/bin/refdet
STAMP := $(VENV)/.installed
# pip prints one harmless warning per package about this machine's local index folders
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

# JupyterLab reads this file of the environment it runs from: widget state is saved with the notebook, so a
# reloaded page shows the widgets instead of "model not found"
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json
# jupyter refuses to start as root without this flag (containers, CI boxes)
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: install demo test test-browser lab lint format clean-outputs

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]' $(QUIET_PIP)
	# ultralytics for the key-map test and `refdet weights convert`; --no-deps keeps opencv-python (needs libGL) out
	$(PY) -m pip install -q --no-deps ultralytics ultralytics-thop $(QUIET_PIP)
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (refdet)" > /dev/null
	mkdir -p $(dir $(LAB_SETTINGS))
	echo '{"@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": true}}' > $(LAB_SETTINGS)
	# a git filter strips notebook outputs (and saved widget state) from what is committed, not from the files
	if git rev-parse --git-dir > /dev/null 2>&1; then $(VENV)/bin/nbstripout --install; fi
	touch $(STAMP)

install: $(STAMP)

data/demo/splits.json: $(STAMP)
	$(REFDET) data demo data/demo --videos 120 --val-videos 8 --tune-videos 8 --train-frames 48

demo: $(STAMP) data/demo/splits.json
	$(REFDET) run --profile demo -o outputs/demo

test: $(STAMP)
	$(PY) -m pytest -q

# JupyterLab on the project: kernels start in notebooks/, paths in the params still mean the project root
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=. $(ALLOW_ROOT) $(LAB_ARGS)

# not part of `make test`: a real browser (Debian's chromium, installed when missing) against `jupyter lab`
test-browser: $(STAMP)
	$(PY) -c "import selenium" 2> /dev/null || $(PY) -m pip install -q -e '.[browser]' $(QUIET_PIP)
	$(PY) tests/browser/check_lab.py --out outputs/browser

lint: $(STAMP)
	$(VENV)/bin/ruff check refdet_core tests
	$(VENV)/bin/ruff format --check refdet_core tests

format: $(STAMP)
	$(VENV)/bin/ruff format refdet_core tests

clean-outputs:
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
