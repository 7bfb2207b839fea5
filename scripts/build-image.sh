#!/usr/bin/env bash
# `make image`: build the daemon's image from the Dockerfile, tagged with the package version
# (pyproject.toml; the Helm chart's appVersion is the same, so the chart pulls this tag).
#
#   scripts/build-image.sh [--python-image IMAGE] [--ca-file FILE] [NAME] [-- BUILD FLAGS...]
#
#   NAME              default customevent-bridge -> customevent-bridge:0.1.0; a NAME with a tag
#                     (customevent-bridge:dev) is used as it is
#   --python-image    the base of both stages (the Dockerfile's PYTHON_IMAGE, default
#                     python:3.11-slim), e.g. the Debian-built one of `make base-image`
#   --ca-file         a CA bundle pip trusts while it fetches the dependencies (a TLS-inspecting
#                     proxy): passed as the build secret `ca`, never stored in the image
#   -- FLAGS          more flags for `docker build` / `podman build` (--network host, --pull=never, ...)
#
# Make passes PYTHON_IMAGE, CA_FILE and BUILD_FLAGS: `make image PYTHON_IMAGE=... CA_FILE=...`.
# Uses $CONTAINER_RUNTIME when set, else docker when its engine answers, else podman
# (scripts/container-runtime.sh). Exits 69 with what to do instead when none can build
# (docs/guides/kubernetes.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/container-runtime.sh"
cd "$repo_root"

usage() {
    echo "usage: $0 [--python-image IMAGE] [--ca-file FILE] [NAME] [-- BUILD FLAGS...]" >&2
    exit 64
}
image=customevent-bridge
flags=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --python-image) [[ $# -ge 2 ]] || usage; flags+=(--build-arg "PYTHON_IMAGE=$2"); shift 2 ;;
    --ca-file)
        [[ $# -ge 2 ]] || usage
        [[ -r $2 ]] || { echo "make image: CA bundle $2 is not a readable file" >&2; exit 66; }
        flags+=(--secret "id=ca,src=$2")
        shift 2
        ;;
    --) shift; flags+=("$@"); break ;;
    -*) usage ;;
    *) image=$1; shift ;;
    esac
done
[[ -n $image ]] || image=customevent-bridge

version=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' pyproject.toml | head -n 1)
[[ -n "$version" ]] || { echo "make image: no version in pyproject.toml" >&2; exit 1; }
if [[ ${image##*/} == *:* ]]; then ref=$image; else ref=$image:$version; fi

pick_runtime
echo "make image: $runtime build ${flags[*]:+${flags[*]} }-t $ref ."
started=$SECONDS
"$runtime" build "${flags[@]}" -t "$ref" .
echo "built $ref in $((SECONDS - started)) s; next: push it, or load it into kind or minikube (docs/guides/kubernetes.md)"
