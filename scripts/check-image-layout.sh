#!/usr/bin/env bash
# CI's stand-in for `docker build` + `docker run` (no Docker engine on these machines): install the
# project exactly as the Dockerfile does (scripts/install-like-image.sh), then run its entry point
# as the image's non-root user (uid 10001) on 0.0.0.0, check it serves, and stop it with SIGTERM.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=$(mktemp -d)/customevent
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$(dirname "$prefix")"' EXIT
pid=
"$repo/scripts/install-like-image.sh" "$prefix" > /dev/null 2> >(grep -v "^WARNING: Location" >&2)
chmod -R a+rX "$(dirname "$prefix")"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The image's environment: listen on every address, no broker (the in-process bus), a writable /tmp.
env -i PATH="$prefix/bin:/usr/bin:/bin" HOME=/tmp CUSTOMEVENT_HTTP__HOST=0.0.0.0 \
    CUSTOMEVENT_HTTP__PORT="$port" CUSTOMEVENT_AUTH__ANONYMOUS=true \
    setpriv --reuid=10001 --regid=10001 --clear-groups "$prefix/bin/customevent" serve &
pid=$!
for _ in $(seq 100); do
    if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null
curl -fsS -X POST "http://127.0.0.1:$port/vco/api/customevent/image.check?properties=a%3D1" >/dev/null
owner=$(ps -o uid= -p "$pid" | tr -d ' ')
[[ "$owner" == 10001 ]] || { echo "the daemon runs as uid $owner, not 10001" >&2; exit 1; }
kill -TERM "$pid"
wait "$pid"
echo "image layout: installed, served on 0.0.0.0:$port as uid 10001, stopped cleanly"
