# The two README commands: `make demo` and `make test`. Re-running is quick: the venv is
# rebuilt only when pyproject.toml changes, the store only when the bundled data changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STORE := data/qlab.duckdb
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))

# compiled numba kernels (qlab's and vectorbt's) survive fresh clones and CI runs
export NUMBA_CACHE_DIR ?= $(HOME)/.cache/qlab/numba
export MPLBACKEND ?= Agg
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: demo test lint bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(STORE): $(STAMP) $(wildcard data/sample/*.parquet)
	$(BIN)/qlab --store $(STORE) data load-sample
	touch $(STORE)

demo: $(STORE)
	@for nb in $(NOTEBOOKS); do $(BIN)/qlab run $$nb || exit 1; done
	@echo "reports written: $$(ls reports/*.html | grep -v index.html | tr '\n' ' ')"
	@echo "report index (parameters, dates, headline metrics): reports/index.html"

test: $(STAMP)
	$(BIN)/ruff check qlab tests benchmarks
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check qlab tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) reports $(STORE) .pytest_cache
