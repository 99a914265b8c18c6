# Two entry points for people: `make run` (the main job) and `make test` (the whole suite).
# Both create .venv and install what they need; on this CPU-only machine kind the local
# CPU torch wheel (/opt/wheels) is installed first so nothing pulls a multi-GB CUDA build.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WHEELS ?= /opt/wheels
TORCH_VERSION ?= 2.13.0
FIND_LINKS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),)
STAMP := $(VENV)/.installed

.PHONY: install system-packages run test test-kafka-python lint typecheck check bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(FIND_LINKS) "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q $(FIND_LINKS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Real peers some tests drive (promtool, Alertmanager, kcat); installed where we are root, skipped otherwise.
system-packages:
	bash scripts/system-packages.sh

run: $(STAMP)
	$(BIN)/zeroproof run $(ARGS)

test: $(STAMP) system-packages
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The worker-process suites (integration, reliability) on the other transport than the default (librdkafka).
test-kafka-python: $(STAMP) system-packages
	ZEROPROOF_TEST_KAFKA_CLIENT=kafka-python $(BIN)/python -m pytest tests/reliability tests/workers/test_integration.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.decode

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
