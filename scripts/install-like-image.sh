#!/usr/bin/env bash
# Install the project into a virtualenv exactly as the Dockerfile's builder stage does, so CI can
# prove the image's install steps on a machine with no Docker engine.
#
#   scripts/install-like-image.sh PREFIX      # e.g. /tmp/customevent-image
#
# KEEP IN STEP with Dockerfile: the same files are staged (its COPY lines, .dockerignore) and the
# same venv/pip commands run. PREFIX plays the part of /opt/customevent; PYTHON (default python3)
# the part of the image's python, which should be a 3.11.
set -euo pipefail

if [[ $# -ne 1 || -z "$1" ]]; then
    echo "usage: $0 PREFIX (directory to create the virtualenv in)" >&2
    exit 64
fi
prefix=$1
if [[ -e "$prefix" ]] && [[ -n "$(ls -A "$prefix" 2>/dev/null)" ]]; then
    echo "$0: $prefix exists and is not empty; give a new directory" >&2
    exit 1
fi
python=${PYTHON:-python3}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# The Docker build context: only these files reach the builder stage.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp "$repo/pyproject.toml" "$repo/README.md" "$src/"
cp -r "$repo/adapter" "$src/adapter"
find "$src" \( -name __pycache__ -o -name '*.py[co]' -o -name .mypy_cache -o -name .ruff_cache \) \
    -prune -exec rm -rf {} +

# The builder stage's RUN line, with /opt/customevent -> $prefix and /src -> $src.
"$python" -m venv "$prefix"
"$prefix/bin/pip" install "$src"
"$prefix/bin/customevent" --help
