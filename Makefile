# Same targets for people and CI. Everything installs into .venv from the hashed lock file.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null)

.PHONY: install demo test lint typecheck fmt bench lock schema clean image

$(BIN)/python:
	@if [ -z "$(UV)" ]; then $(PY) -m pip install --quiet --disable-pip-version-check 'uv==0.13.8'; fi
	uv venv --quiet --python $(PY) $(VENV)

install: $(BIN)/python  ## create .venv and install the locked dependency set + the package
	uv pip sync --quiet --python $(BIN)/python --require-hashes requirements.lock
	uv pip install --quiet --python $(BIN)/python --no-deps -e .

lock:  ## re-resolve requirements.lock (dev), requirements-runtime.lock (image) and the build backend lock
	uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes -o requirements.lock
	uv pip compile pyproject.toml --python-version 3.11 --generate-hashes --only-binary :all: -c requirements.lock -o requirements-runtime.lock
	printf 'setuptools>=69\nwheel\n' | uv pip compile - --python-version 3.11 --generate-hashes -o requirements-build.lock

demo: install  ## run the real pipeline against an embedded moto server and print a summary
	$(BIN)/ctagg demo

test: install lint  ## lint, type-check and run the whole test suite
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m aggregator.detect.lint
	$(BIN)/python -m aggregator.config --check-schema config/schema.json

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schema: install  ## regenerate config/schema.json from the pydantic models
	$(BIN)/python -m aggregator.config --write-schema config/schema.json

bench: install
	$(BIN)/python bench/ingest.py

PYTHON_IMAGE ?= python:3.11-slim-bookworm
image:  ## build the container image (needs a container engine; not available in CI here)
	docker build --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t ctagg:$$($(PY) -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])') .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
