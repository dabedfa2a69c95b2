# The only entry points people need: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP_BASE := $(VENV)/.installed-base
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test lint typecheck bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP_BASE): pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test,dev,spark,ml]'
	touch $@ $(STAMP_BASE)

demo: $(STAMP_BASE)
	$(PY) examples/demo.py
	$(PY) examples/demo_pipeline.py

test: $(STAMP_TEST)
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP_TEST)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP_TEST)
	$(PY) benchmarks/bench_gram.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
