#!/usr/bin/env bash
# `make base-image`: a Python base image built from Debian's own packages, for machines that reach
# no container registry (the official python image cannot be pulled) but do reach a Debian mirror.
#
#   scripts/base-image.sh [--tag NAME] [--suite SUITE] [--mirror URL] [--force]
#
# debootstrap --variant=minbase SUITE (default bookworm: Python 3.11) with python3, python3-venv,
# python-is-python3 and ca-certificates, from the mirror apt already uses here (the first one in
# /etc/apt/sources.list*, else deb.debian.org), imported with `podman import` (or `docker import`)
# as NAME (default localhost/customevent-python:3.11-bookworm). An image of that name that exists
# already is kept unless --force: CI builds it once per machine. Then:
#
#   make image PYTHON_IMAGE=localhost/customevent-python:3.11-bookworm
#
# Needs root (debootstrap), debootstrap, and docker or podman (scripts/container-runtime.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/container-runtime.sh"

tag=localhost/customevent-python:3.11-bookworm
suite=bookworm
mirror=
force=
while [[ $# -gt 0 ]]; do
    case $1 in
    --tag) tag=$2; shift 2 ;;
    --suite) suite=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    --force) force=1; shift ;;
    *) echo "usage: $0 [--tag NAME] [--suite SUITE] [--mirror URL] [--force]" >&2; exit 64 ;;
    esac
done

pick_runtime
if [[ -z $force ]] && "$runtime" image inspect "$tag" >/dev/null 2>&1; then
    echo "base-image: $tag exists; keeping it (--force rebuilds it)"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || { echo "base-image: debootstrap needs root" >&2; exit 77; }
command -v debootstrap >/dev/null || {
    echo "base-image: debootstrap is not installed (apt-get install debootstrap)" >&2
    exit 69
}

# The Debian mirror apt uses: a deb822 `URIs:` line of a main archive (not -security), or a
# one-line `deb URI SUITE` entry.
apt_mirror() {
    local file
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$file"
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($i !~ /security/) print $i; break } }' "$file"
    done
}
if [[ -z $mirror ]]; then
    mirror=$(apt_mirror | grep -i debian | head -n 1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
started=$SECONDS
echo "base-image: debootstrap --variant=minbase $suite from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    "$suite" "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -n 20 "$root.log" >&2
    echo "base-image: debootstrap failed (log above: $root.log)" >&2
    exit 1
}
rm -f "$root.log"
# Nothing the image needs: apt's lists and caches, docs, man pages.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/*
version=$(chroot "$root" python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
tar -C "$root" --numeric-owner -c . |
    "$runtime" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$tag" >/dev/null
echo "base-image: $tag (Debian $suite, Python $version) in $((SECONDS - started)) s"
