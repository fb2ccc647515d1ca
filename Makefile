# Two entry points: `make demo` (set up + run the main job on built-in synthetic data)
# and `make test` (set up + run the test suite). Both create .venv on first use.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-quick test test-fast browser clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/protloc demo --out demo_out

demo-quick: $(STAMP)
	$(BIN)/protloc demo --quick --out demo_out

browser: $(STAMP)
	bash scripts/install_browser.sh

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

clean:
	rm -rf $(VENV) demo_out .pytest_cache
