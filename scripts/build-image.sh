#!/usr/bin/env bash
# `make image`: build the daemon's image from the Dockerfile, tagged with the package version
# (pyproject.toml; the Helm chart's appVersion is the same, so the chart pulls this tag).
#
#   scripts/build-image.sh [IMAGE]       # default customevent-bridge -> customevent-bridge:0.1.0
#
# Uses $CONTAINER_RUNTIME when set, else docker when its engine answers, else podman. Exits 69
# with what to do instead when none can build (see docs/guides/kubernetes.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

image=${1:-customevent-bridge}
version=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' pyproject.toml | head -n 1)
[[ -n "$version" ]] || { echo "make image: no version in pyproject.toml" >&2; exit 1; }

tried=()
usable() {  # usable RUNTIME: the runtime is installed and can build (its engine answers)
  if ! command -v "$1" >/dev/null 2>&1; then
    tried+=("$1: not installed")
    return 1
  fi
  local answer
  if ! answer=$("$1" info 2>&1 >/dev/null); then
    tried+=("$1: installed, but '$1 info' failed: $(printf '%s' "$answer" | head -n 1)")
    return 1
  fi
}

runtime=
for candidate in ${CONTAINER_RUNTIME:-docker podman}; do
  if usable "$candidate"; then runtime=$candidate; break; fi
done
if [[ -z "$runtime" ]]; then
  {
    echo "make image: no container runtime here can build the image."
    printf '  %s\n' "${tried[@]}"
    echo "Start Docker's engine or install podman, or build elsewhere (CI, another machine) and"
    echo "push there: docs/guides/kubernetes.md, 'No container runtime here'."
  } >&2
  exit 69
fi

echo "make image: $runtime build -t $image:$version ."
"$runtime" build -t "$image:$version" .
echo "built $image:$version; next: push it, or load it into kind or minikube (docs/guides/kubernetes.md)"
