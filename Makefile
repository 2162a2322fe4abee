# servomexlib developer tasks. `make demo` and `make test` work on a fresh clone:
# each creates the virtual environment (.venv) first if needed.

PYTHON ?= python3.13
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Test workers (pytest-xdist). Most of the suite waits on real ptys, sockets and subprocesses, so
# it gains from more workers than cores: measured on 2 cores, 4 → 161 s, 6 → 131 s, 8 → 123 s
# (more CPU-bound timing under load for little gain). `make test TEST_WORKERS=0` runs serially.
TEST_WORKERS ?= 6
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist worksteal

.PHONY: venv demo test test-all lint typecheck check bench bench-quick clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,plot]'
	touch $(STAMP)

# The main job: record a simulated analyser for 10 s, then plot it (no hardware needed).
demo: venv
	$(VENV)/bin/servomex capture "sim://?mode=modbus_rtu&scenario=drift" --duration 10 --out demo.csv --overwrite
	$(VENV)/bin/servomex plot demo.csv

test: venv
	$(PY) -m pytest $(PYTEST_PARALLEL)

# Also the tests marked slow (200 Modbus polls with the silence rule, ...).
test-all: venv
	$(PY) -m pytest $(PYTEST_PARALLEL) --run-slow

# Figures against physical limits, over real ptys with realistic line timing (~8 min).
bench: venv
	$(PY) -m benchmarks

bench-quick: venv
	$(PY) -m benchmarks --quick

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: venv
	$(PY) -m mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis demo.csv demo.png
