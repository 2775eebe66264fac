# Every target sets up what it needs first (scripts/setup.sh is fast when nothing changed).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint bench clean

setup:
	@scripts/setup.sh

demo: setup
	$(VENV)/bin/icechunk-operator demo --dir demo-output

lint: setup
	$(VENV)/bin/ruff check operator tests
	$(VENV)/bin/ruff format --check operator tests
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not s3"

bench: setup
	$(PY) -m tests.bench.ingest

clean:
	rm -rf demo-output .pytest_cache .mypy_cache .ruff_cache
