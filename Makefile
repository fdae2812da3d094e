# The project's vocabulary: setup demo test lint bench crds e2e image. CI calls `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test unit integration lint typecheck bench crds e2e image clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)
	bash scripts/ensure-redis.sh
	bash scripts/ensure-prometheus.sh
	bash scripts/ensure-chromium.sh
	bash scripts/ensure-helm.sh $(VENV)

demo: $(STAMP)
	$(PY) -m llmkeys_operator.cli demo --manifests examples/standalone

lint: $(STAMP)
	$(VENV)/bin/ruff check operator proxy tests bench
	$(VENV)/bin/ruff format --check operator proxy tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: setup lint typecheck
	$(PY) -m pytest tests -q

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

integration: setup
	$(PY) -m pytest tests/integration -q

crds: $(STAMP)
	$(PY) -m llmkeys_operator.cli crds --out crds
	rm -f charts/llmkeys/files/crds/*.yaml && cp crds/*.yaml charts/llmkeys/files/crds/

e2e: $(STAMP)
	$(PY) -m pytest tests/e2e -q -m e2e

bench: setup
	$(PY) -m bench

# Base image of both stages; release builds pin it by digest (see the Dockerfile's header).
PYTHON_IMAGE ?= docker.io/library/python:3.11-slim
REQUIRE_PINNED_BASE ?=

image:
	@if [ -n "$(REQUIRE_PINNED_BASE)" ] && ! echo "$(PYTHON_IMAGE)" | grep -Eq '@sha256:[0-9a-f]{64}$$'; then \
	  echo "PYTHON_IMAGE must be pinned by digest (...@sha256:<64 hex>) when REQUIRE_PINNED_BASE is set" >&2; \
	  exit 2; \
	fi
	docker build --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t llmkeys:dev .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
