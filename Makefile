# MaaS Portal — the two commands: `make run` (install + start with demo data) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-integration lint format bench screenshot clean

install: $(STAMP)

# pip (not uv/poetry): torch is pinned to the CPU wheel on these machines' disk.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(PY) manage.py runportal

test: install
	scripts/ensure-chromium
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) bench/embedded_broker.py

screenshot: install
	PYTHONPATH=. $(PY) scripts/screenshot.py docs/screenshot.png http://127.0.0.1:8000  # with `make run` going

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache
