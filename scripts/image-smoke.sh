#!/usr/bin/env bash
# CI's image smoke test (`make image-smoke`): build the daemon's image, run it as Kubernetes would
# (read-only root filesystem, uid 10001, no capabilities, no new privileges) against the RabbitMQ
# and Mosquitto on this machine, and use it as a client would:
#
#   /healthz, /readyz (RabbitMQ connected), an HTTP long-poll wait answered by a vRO REST send,
#   one by a SOAP send, one by an MQTT device message (mosquitto_pub), /metrics counting them,
#   then SIGTERM with a wait still open: the wait is answered 503 (not a dropped connection) and
#   the container exits 0.
#
#   scripts/image-smoke.sh [--image REF]     # --image: test REF as it is instead of building one
#   scripts/image-smoke.sh --keep REF        # build as REF and keep it afterwards (CI's next
#                                            # step, scripts/kube_play.py, runs it; CI removes it)
#
# Environment:
#   PYTHON_IMAGE  base of the build (default localhost/customevent-python:3.11-bookworm, made by
#                 scripts/base-image.sh when missing: needs no registry)
#   CA_FILE       CA bundle for pip during the build (default: the system's,
#                 /etc/ssl/certs/ca-certificates.crt, when it exists; empty: none)
#   BUILD_FLAGS   more build flags (podman: --layers=false is added, so no layer is left behind)
#   CUSTOMEVENT_TEST_AMQP_URL  default amqp://guest:guest@127.0.0.1:5672/
#   CUSTOMEVENT_TEST_MQTT_URL  default mqtt://127.0.0.1:1883
# The container uses the host's network (the brokers listen on 127.0.0.1), an exchange and an MQTT
# prefix of its own (deleted at the end, like the container and the image it built), so it runs
# beside the test suite. Prints the build time and the image size.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/container-runtime.sh"
cd "$repo_root"

say() { echo "image-smoke: $*"; }
fail() { echo "image-smoke: FAILED: $*" >&2; exit 1; }

ref=
keep=
case ${1:-} in
--image) ref=${2:?--image needs a reference} ;;
--keep) keep=${2:?--keep needs a reference} ;;
"") ;;
*) echo "usage: $0 [--image REF | --keep REF]" >&2; exit 64 ;;
esac

amqp_url=${CUSTOMEVENT_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
mqtt_url=${CUSTOMEVENT_TEST_MQTT_URL:-mqtt://127.0.0.1:1883}
mqtt_hostport=${mqtt_url#*://}
mqtt_hostport=${mqtt_hostport##*@}
mqtt_hostport=${mqtt_hostport%%/*}
for tool in curl mosquitto_pub python3; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
pick_runtime

run_id=smoke-$$-$RANDOM
ctr=customevent-$run_id
exchange=customevents.$run_id
built=
work=$(mktemp -d)
cleanup() {
    "$runtime" rm -f "$ctr" >/dev/null 2>&1 || true
    if [[ -n $ref ]]; then
        # The exchange the daemon declared, deleted with the image's own aio-pika.
        "$runtime" run --rm --network host --entrypoint python3 "$ref" -c '
import asyncio, sys, aio_pika
async def main():
    async with await aio_pika.connect(sys.argv[1]) as connection:
        await (await connection.channel()).exchange_delete(sys.argv[2])
asyncio.run(main())' "$amqp_url" "$exchange" >/dev/null 2>&1 || say "could not delete exchange $exchange"
    fi
    [[ -z $built ]] || "$runtime" rmi "$built" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

if [[ -z $ref ]]; then
    base=${PYTHON_IMAGE:-localhost/customevent-python:3.11-bookworm}
    if [[ -z ${PYTHON_IMAGE:-} ]]; then scripts/base-image.sh --tag "$base"; fi
    ca=${CA_FILE-/etc/ssl/certs/ca-certificates.crt}
    [[ -z $ca || -r $ca ]] || ca=
    read -r -a extra <<<"${BUILD_FLAGS:-}"
    [[ $runtime != podman ]] || extra+=(--layers=false)
    ref=${keep:-localhost/customevent-bridge:$run_id}
    started=$SECONDS
    scripts/build-image.sh --python-image "$base" ${ca:+--ca-file "$ca"} "$ref" -- "${extra[@]}" \
        >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; fail "the build failed"; }
    [[ -n $keep ]] || built=$ref
    build_seconds=$((SECONDS - started))
fi
size=$("$runtime" image inspect --format '{{.Size}}' "$ref")
say "image $ref: $((size / 1000000)) MB${build_seconds:+, built in ${build_seconds} s (from $base)}"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
password=pw-$run_id
hash=$(printf '%s' "$password" | "$runtime" run --rm -i --network none "$ref" hash-secret)
principals='[{"name": "smoke", "password_hash": "'$hash'", "allow": ["smoke.#"]}]'
base_url=http://127.0.0.1:$port
prefix=$run_id

# What the chart's pod spec asks for: read-only root, uid/gid 10001, no capabilities, no new
# privileges; a tmpfs /tmp as the chart's emptyDir.
"$runtime" run -d --name "$ctr" --network host --read-only --tmpfs /tmp:rw,size=64m \
    --user 10001:10001 --cap-drop=ALL --security-opt no-new-privileges \
    -e CUSTOMEVENT_HTTP__PORT="$port" \
    -e CUSTOMEVENT_HTTP__DRAIN_SECONDS=3 \
    -e CUSTOMEVENT_AMQP__URL="$amqp_url" \
    -e CUSTOMEVENT_AMQP__EXCHANGE="$exchange" \
    -e CUSTOMEVENT_MQTT__URL="$mqtt_url" \
    -e CUSTOMEVENT_MQTT__PREFIX="$prefix" \
    -e CUSTOMEVENT_MQTT__CLIENT_ID="$run_id" \
    -e CUSTOMEVENT_MQTT__SESSION_EXPIRY=0 \
    -e CUSTOMEVENT_AUTH__PRINCIPALS="$principals" \
    "$ref" >/dev/null
logs() { "$runtime" logs "$ctr" 2>&1 | tail -n 30 >&2; }

for _ in $(seq 120); do
    curl -fsS "$base_url/readyz" >/dev/null 2>&1 && break
    "$runtime" container inspect --format '{{.State.Running}}' "$ctr" | grep -q true ||
        { logs; fail "the container exited"; }
    sleep 0.5
done
curl -fsS "$base_url/readyz" >/dev/null || { logs; fail "/readyz never answered 200"; }
curl -fsS "$base_url/healthz" >/dev/null || fail "/healthz"
say "ready on $base_url (/healthz, /readyz: RabbitMQ connected)"

uid=$("$runtime" exec "$ctr" id -u)
[[ $uid == 10001 ]] || fail "the daemon runs as uid $uid, not 10001"
if "$runtime" exec "$ctr" sh -c 'echo x > /opt/customevent/x' 2>/dev/null; then
    fail "the root filesystem is writable"
fi
caps=$("$runtime" exec "$ctr" sh -c "grep CapEff /proc/1/status" | awk '{print $2}')
[[ $caps =~ ^0+$ ]] || fail "the daemon has capabilities ($caps)"

active_waits() {
    curl -fsS "$base_url/metrics" | awk '$1 == "customevent_http_waits_active" { print int($2) }'
}
open_wait() {  # open_wait NAME TIMEOUT: a long-poll wait in the background, once it is bound
    local name=$1 before
    before=$(active_waits)
    curl -sS -u "smoke:$password" -o "$work/$name.body" -w '%{http_code}' \
        "$base_url/api/v1/events/$name/wait?timeout=$2" >"$work/$name.status" 2>"$work/$name.err" &
    echo $! >"$work/$name.pid"
    for _ in $(seq 100); do
        (($(active_waits) > before)) && return 0
        sleep 0.1
    done
    fail "the wait on $name was never bound"
}
answered() {  # answered NAME STATUS [TEXT]: the wait ended with STATUS (and a body with TEXT)
    local name=$1
    wait "$(cat "$work/$name.pid")" || true
    [[ $(cat "$work/$name.status") == "$2" ]] ||
        fail "the wait on $name answered '$(cat "$work/$name.status")' ($(cat "$work/$name.err" "$work/$name.body")), not $2"
    [[ -z ${3:-} ]] || grep -q "$3" "$work/$name.body" ||
        fail "the wait on $name answered $(cat "$work/$name.body"), without $3"
}

open_wait smoke.rest 30s
curl -fsS -u "smoke:$password" -X POST \
    "$base_url/vco/api/customevent/smoke.rest?properties=answer%3D42%0Avia%3Drest" >/dev/null
answered smoke.rest 200 '"answer": *"42"'
say "vRO REST send -> HTTP long-poll wait: 200 answer=42"

open_wait smoke.soap 30s
curl -fsS -u "smoke:$password" -H 'Content-Type: text/xml; charset=utf-8' -H 'SOAPAction: ""' \
    --data-binary @- "$base_url/vco/vmware-vmo-webcontrol/webservice" >"$work/soap.xml" <<'XML'
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
                  xmlns:web="http://webservice.vso.dunes.ch">
  <soapenv:Body>
    <web:sendCustomEvent>
      <web:eventName>smoke.soap</web:eventName>
      <web:serializedProperties>answer=42
via=soap</web:serializedProperties>
    </web:sendCustomEvent>
  </soapenv:Body>
</soapenv:Envelope>
XML
grep -q sendCustomEventResponse "$work/soap.xml" || fail "SOAP answered $(cat "$work/soap.xml")"
answered smoke.soap 200 '"via": *"soap"'
say "SOAP sendCustomEvent -> wait: 200"

open_wait smoke.mqtt 30s
mosquitto_pub -h "${mqtt_hostport%:*}" -p "${mqtt_hostport##*:}" -q 1 \
    -t "$prefix/external/smoke/mqtt" -m $'answer=42\nvia=mqtt'
answered smoke.mqtt 200 '"via": *"mqtt"'
say "MQTT device message ($prefix/external/smoke/mqtt) -> wait: 200"

metrics=$(curl -fsS "$base_url/metrics")
grep -q '^customevent_http_waits_active' <<<"$metrics" || fail "/metrics has no customevent_http_waits_active"
grep -q '^customevent_' <<<"$metrics" || fail "/metrics has no customevent_ series"
say "/metrics: $(grep -c '^customevent_' <<<"$metrics") customevent_ samples"

# SIGTERM with a wait open: the daemon drains, answers the wait 503 (the caller waits again),
# and exits 0.
open_wait smoke.term 60s
started=$SECONDS
"$runtime" kill --signal TERM "$ctr" >/dev/null
code=$("$runtime" wait "$ctr")
answered smoke.term 503
[[ $code == 0 ]] || { logs; fail "the container exited $code after SIGTERM, not 0"; }
if "$runtime" logs "$ctr" 2>&1 | grep -q Traceback; then logs; fail "a traceback in the logs"; fi
say "SIGTERM: open wait answered 503, exit 0 in $((SECONDS - started)) s"
say "passed"
