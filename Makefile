# One command to set up and run the daemon (`make serve`), one to run the tests (`make test`).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install serve test lint bench docs image

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The daemon on the in-process bus, anonymous sending allowed (it warns): see README.
serve: install
	$(VENV)/bin/customevent serve --config config/quickstart.toml

# Every test, broker tests included: RabbitMQ and Mosquitto must be running (see README).
test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The documentation site, strictly: a broken link or a failing generator fails the build. No -q:
# it would hide the warnings --strict counts.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: install
	$(PY) bench/run.py all

# The daemon's image, tagged with the package version: `make image IMAGE=registry.example.com/x`.
# Needs docker (with its engine running) or podman; says what to do instead when neither can build.
IMAGE ?= customevent-bridge
image:
	scripts/build-image.sh $(IMAGE)
