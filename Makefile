# One command to set up and run the daemon (`make serve`), one to run the tests (`make test`).
#
# Two installs into the one .venv: `make serve` needs only the daemon's own dependencies, pinned by
# requirements/image.txt (the image's lock); `make install-dev` (= `make install`) adds the dev
# extras (pytest, mypy, ruff, mkdocs, playwright, ...) that test, lint, docs and bench use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: test-fast install install-dev install-runtime serve test lint bench docs image base-image lock image-smoke

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The image's own install steps (Dockerfile), editable: the lock with its hashes, then the project
# with nothing more resolved (the lock holds the setuptools it builds with).
$(VENV)/.runtime: pyproject.toml requirements/image.txt | $(VENV)/bin/python
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements/image.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e ".[dev]"
	touch $(VENV)/.runtime $@

install-runtime: $(VENV)/.runtime
install-dev: $(VENV)/.installed
install: install-dev

# The daemon on the in-process bus, anonymous sending allowed (it warns): see README.
serve: install-runtime
	$(VENV)/bin/customevent serve --config config/quickstart.toml

# Every test, broker tests included: RabbitMQ and Mosquitto must be running (see README).
test: install-dev
	$(PY) -m pytest

# The tests that need no broker, browser, Helm or image tooling (markers: tests/conftest.py), in
# FAST_WORKERS processes (pytest-xdist): most of their time is waiting on deadlines, daemons and
# subprocesses, so more workers than cores pay. Bytecode is written even where the environment
# says not to (PYTHONDONTWRITEBYTECODE): each worker would otherwise compile the package and
# rewrite every test module again, half of its start. Only here: the full suite (`make test`)
# stops and starts RabbitMQ in its fault tests and runs in one process.
FAST_WORKERS ?= 3
test-fast: install-dev
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -q -n $(FAST_WORKERS) -m "not rabbitmq and not mosquitto and not cluster and not slow and not chromium and not docs and not helm and not image"

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The documentation site, strictly: a broken link or a failing generator fails the build. No -q:
# it would hide the warnings --strict counts.
docs: install-dev
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: install-dev
	$(PY) bench/run.py all

# The daemon's image, tagged with the package version: `make image IMAGE=registry.example.com/x`.
# PYTHON_IMAGE: the base (default python:3.11-slim; `make base-image` builds one from Debian's
# packages); CA_FILE: a CA bundle pip trusts during the build (a TLS-inspecting proxy);
# BUILD_FLAGS: more flags for docker/podman build. Needs docker (with its engine running) or
# podman; says what to do instead when neither can build (docs/guides/kubernetes.md).
IMAGE ?= customevent-bridge
PYTHON_IMAGE ?=
CA_FILE ?=
BUILD_FLAGS ?=
BASE_IMAGE ?= localhost/customevent-python:3.11-bookworm
image:
	scripts/build-image.sh $(if $(PYTHON_IMAGE),--python-image $(PYTHON_IMAGE)) \
		$(if $(CA_FILE),--ca-file $(CA_FILE)) $(IMAGE) $(if $(BUILD_FLAGS),-- $(BUILD_FLAGS))

# A Python base image from Debian's packages (debootstrap, root), for machines with no registry;
# kept when it exists (scripts/base-image.sh --force rebuilds it).
base-image:
	scripts/base-image.sh --tag $(BASE_IMAGE)

# Re-pin the runtime dependencies (requirements/image.txt, with hashes) after a change to
# pyproject.toml's dependencies, or to take newer releases.
lock:
	scripts/lock.sh

# The built image run read-only as uid 10001 against RabbitMQ and Mosquitto on 127.0.0.1:
# see scripts/image-smoke.sh. Builds from $(BASE_IMAGE) unless PYTHON_IMAGE is set.
image-smoke:
	scripts/image-smoke.sh
