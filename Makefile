# Same targets for people and CI. Everything installs into .venv from the hashed lock file.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null)

.PHONY: install sysdeps demo test lint typecheck fmt bench lock schema clean image

$(BIN)/python:
	@if [ -z "$(UV)" ]; then $(PY) -m pip install --quiet --disable-pip-version-check 'uv==0.13.8'; fi
	uv venv --quiet --python $(PY) $(VENV)

install: $(BIN)/python  ## create .venv and install the locked dependency set + the package
	uv pip sync --quiet --compile-bytecode --python $(BIN)/python --require-hashes requirements.lock
	uv pip install --quiet --python $(BIN)/python --no-deps -e .

lock:  ## re-resolve requirements.lock (dev), requirements-runtime.lock (image) and the build backend lock
	uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes -o requirements.lock
	uv pip compile pyproject.toml --python-version 3.11 --generate-hashes --only-binary :all: -c requirements.lock -o requirements-runtime.lock
	printf 'setuptools>=69\nwheel\n' | uv pip compile - --python-version 3.11 --generate-hashes -o requirements-build.lock

demo: install  ## run the real pipeline against an embedded moto server and print a summary
	$(BIN)/ctagg demo

# System programs the tests run for real (a real rsyslog for the syslog connector, with TLS and
# RELP (imrelp) inputs, openssl for its TLS certificates, promtool for the chart's alert rules).
# Installed with apt when running as root; otherwise the command to run is printed and the
# target fails, so a missing receiver is never a surprise later.
SYSTEM_PROGRAMS := rsyslogd:rsyslog openssl:openssl promtool:prometheus
SYSTEM_EXTRAS := rsyslog-gnutls rsyslog-openssl rsyslog-relp

sysdeps:  ## install the system programs the tests need (apt, as root)
	@missing=""; for pair in $(SYSTEM_PROGRAMS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	for pkg in $(SYSTEM_EXTRAS); do \
	  if command -v dpkg-query >/dev/null 2>&1; then \
	    dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"; \
	  fi; \
	done; \
	if [ -n "$$missing" ]; then \
	  pkgs="$$missing"; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing system packages:$$pkgs"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs >/dev/null; \
	  else \
	    echo "missing system packages:$$pkgs"; \
	    echo "run: sudo apt-get install -y --no-install-recommends$$pkgs"; \
	    exit 1; \
	  fi; \
	fi

test: install sysdeps lint  ## lint, type-check and run the whole test suite
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
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
