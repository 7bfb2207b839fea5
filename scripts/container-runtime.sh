# Sourced by the image scripts (build-image.sh, base-image.sh, image-smoke.sh): picks
# the container runtime and points podman at the repo's settings.
#
#   pick_runtime          sets $runtime: $CONTAINER_RUNTIME when set (a list is tried in order),
#                         else docker when its engine answers, else podman; exits 69 with what to
#                         do instead when none can build (docs/guides/kubernetes.md)
#
# Podman reads config/podman/containers.conf (runc, cgroupfs, file events, ulimits root may set:
# what Debian 12's podman 4.3 needs on CI's machines) unless CONTAINERS_CONF is already set;
# `CONTAINERS_CONF=/etc/containers/containers.conf` (or any file of yours) keeps your own.
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${CONTAINERS_CONF:-} ]]; then
    export CONTAINERS_CONF=$repo_root/config/podman/containers.conf
fi

pick_runtime() {
    local tried=() candidate answer
    runtime=
    for candidate in ${CONTAINER_RUNTIME:-docker podman}; do
        if ! command -v "$candidate" >/dev/null 2>&1; then
            tried+=("$candidate: not installed")
        elif ! answer=$("$candidate" info 2>&1 >/dev/null); then
            tried+=("$candidate: installed, but '$candidate info' failed: $(printf '%s' "$answer" | head -n 1)")
        else
            runtime=$candidate
            return 0
        fi
    done
    {
        echo "make image: no container runtime here can build the image."
        printf '  %s\n' "${tried[@]}"
        echo "Start Docker's engine or install podman, or build elsewhere (CI, another machine) and"
        echo "push there: docs/guides/kubernetes.md, 'No container runtime here'."
    } >&2
    exit 69
}
