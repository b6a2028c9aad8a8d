# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs seeking, runs `seeking compare` on the embedded data set
#   make test   creates .venv, installs seeking with its test tools, runs ruff and the tests
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# CI pins what it installs (torch: the CPU wheel); the package itself declares ranges.
CONSTRAINTS ?= .ci/constraints.txt

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[test]'

demo: install
	$(BIN)/seeking compare

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: install lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
