#!/usr/bin/env bash
# `make lock`: pin the daemon's runtime dependencies (with the `otel` extra: the image exports
# traces when OTEL_TRACES_EXPORTER asks it to), with their hashes, in requirements/image.txt
# (the image installs exactly these, `pip install --require-hashes`; `make serve` uses them as
# constraints). Run it after a change to the dependencies in pyproject.toml, and to take newer
# releases; commit the result.
#
# pip-compile (pip-tools, pinned below) runs in a throwaway virtualenv on $PYTHON (default
# python3), which must be the image's Python minor version (3.11): markers are resolved for it.
# The lock comes from PyPI alone, whatever pip configuration this machine has (extra indexes,
# local wheel directories and constraints would otherwise end up in it, or their files' hashes).
# A TLS-inspecting proxy's CA: PIP_CERT=/path/to/bundle.crt make lock.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
want=3.11
have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ $have == "$want" ]] || {
    echo "make lock: $python is Python $have; the image runs $want: PYTHON=python$want make lock" >&2
    exit 1
}

venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT
"$python" -m venv "$venv"
"$venv/bin/pip" install -q "pip==25.2" "pip-tools==7.5.0"
CUSTOM_COMPILE_COMMAND="make lock" "$venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
    --all-build-deps --no-emit-index-url --no-emit-find-links \
    --index-url https://pypi.org/simple \
    --extra otel \
    --output-file requirements/image.txt pyproject.toml
echo "make lock: requirements/image.txt ($(grep -c '^[a-z0-9]' requirements/image.txt) packages)"
