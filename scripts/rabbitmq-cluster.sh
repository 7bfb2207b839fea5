#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster on this machine, for the cluster tests and benchmarks.
#
#   scripts/rabbitmq-cluster.sh start     # start (or heal) the three nodes, join them, print the
#                                         # amqp.url list on stdout (progress goes to stderr)
#   scripts/rabbitmq-cluster.sh stop      # stop the three nodes; their data stays (a later start
#                                         # is a whole-cluster restart)
#   scripts/rabbitmq-cluster.sh status    # each node's state; exit 0 when all three run clustered
#   scripts/rabbitmq-cluster.sh destroy   # stop, then delete the nodes' data, logs and config
#
# Every command is idempotent. Settings (environment; the tests read the same ones,
# tests/support/cluster.py):
#   CUSTOMEVENT_TEST_CLUSTER_NAME  node name prefix (default customevent): nodes
#                                  <name>-1@localhost, <name>-2@localhost, <name>-3@localhost
#   CUSTOMEVENT_TEST_CLUSTER_PORT  AMQP port of node 1 (default 5741); node N listens on
#                                  PORT+N-1 and distributes on PORT+N-1+20000, all on 127.0.0.1
#   CUSTOMEVENT_TEST_CLUSTER_DIR   where the nodes keep config, data and logs
#                                  (default ${TMPDIR:-/tmp}/rabbitmq-cluster-<name>)
# Each node has its own RABBITMQ_NODENAME, RABBITMQ_NODE_PORT, RABBITMQ_DIST_PORT,
# RABBITMQ_MNESIA_BASE, config file and enabled-plugins file (no plugins). Run as root, the nodes
# run as the `rabbitmq` user, as the packaged server does; run as any other user, as that user.
set -euo pipefail

name=${CUSTOMEVENT_TEST_CLUSTER_NAME:-customevent}
port=${CUSTOMEVENT_TEST_CLUSTER_PORT:-5741}
dir=${CUSTOMEVENT_TEST_CLUSTER_DIR:-${TMPDIR:-/tmp}/rabbitmq-cluster-$name}
nodes=(1 2 3)
# A node waits this long for its peers' tables after a whole-cluster restart, and for start-up.
startup_timeout=120

say() { echo "rabbitmq-cluster: $*" >&2; }
die() { say "$*"; exit 1; }

usage() {
    echo "usage: $0 start|stop|status|destroy (see the comment at the top of this script)" >&2
    exit 64
}

[[ $# -eq 1 ]] || usage
[[ $name =~ ^[A-Za-z0-9_-]+$ ]] || die "CUSTOMEVENT_TEST_CLUSTER_NAME=$name: use letters, digits, - and _"
[[ $port =~ ^[0-9]+$ ]] && ((port >= 1024 && port + 2 + 20000 <= 65535)) ||
    die "CUSTOMEVENT_TEST_CLUSTER_PORT=$port: give a port from 1024 to 45533"
for tool in rabbitmq-server rabbitmqctl; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH: install RabbitMQ (3.10 or newer)"
done

node_name() { echo "$name-$1@localhost"; }
node_port() { echo $((port + $1 - 1)); }
node_dir() { echo "$dir/node$1"; }
node_url() { echo "amqp://guest:guest@127.0.0.1:$(node_port "$1")/"; }

# As root, RabbitMQ runs as its own user (the packaged rabbitmqctl does the same).
as_rabbitmq() {
    if [[ $(id -u) -eq 0 ]] && id rabbitmq >/dev/null 2>&1; then
        su rabbitmq -s /bin/sh -c "$1"
    else
        sh -c "$1"
    fi
}

ctl() {  # ctl NODE ARGS...: rabbitmqctl against node NODE, quietly
    local n=$1
    shift
    rabbitmqctl -q -n "$(node_name "$n")" "$@"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
dist_port() { echo $(($(node_port "$1") + 20000)); }
pid_file() { echo "$(node_dir "$1")/pid"; }
pid_alive() { [[ -s $(pid_file "$1") ]] && ps -p "$(cat "$(pid_file "$1")")" >/dev/null 2>&1; }
# Our node's VM runs: its pid file names a live process or, when the file is gone, the process
# on its distribution port answers to its name. A port alone may be another process's. Each
# rabbitmqctl call costs a second or more on a loaded machine, so it is the last resort.
vm_running() { pid_alive "$1" || { port_open "$(dist_port "$1")" && ctl "$1" ping >/dev/null 2>&1; }; }
# Its app runs while its AMQP listener is open.
app_running() { port_open "$(node_port "$1")"; }

log_tail() {
    local file
    for file in "$(node_dir "$1")"/log/*.log; do
        [[ -f $file ]] && tail -n 20 "$file" >&2
    done
    return 0
}

launch() {  # launch NODE: start node NODE's VM, detached
    local n=$1 d amqp dist peer
    d=$(node_dir "$n")
    amqp=$(node_port "$n")
    dist=$((amqp + 20000))
    mkdir -p "$d/mnesia" "$d/log"
    # Blank nodes find each other at first boot (peer discovery, with RabbitMQ's own lock: one
    # node forms the cluster, the others join it): no stop_app/join_cluster/start_app round.
    {
        printf 'listeners.tcp.local = 127.0.0.1:%s\n' "$amqp"
        printf 'cluster_formation.peer_discovery_backend = classic_config\n'
        for peer in "${nodes[@]}"; do
            printf 'cluster_formation.classic_config.nodes.%s = %s\n' "$peer" "$(node_name "$peer")"
        done
    } >"$d/rabbitmq.conf"
    printf '[].\n' >"$d/enabled_plugins"
    if [[ $(id -u) -eq 0 ]] && id rabbitmq >/dev/null 2>&1; then
        chown -R rabbitmq: "$dir"
    fi
    say "starting $(node_name "$n") on 127.0.0.1:$amqp"
    as_rabbitmq "cd '$d' && \
        RABBITMQ_NODENAME='$(node_name "$n")' RABBITMQ_NODE_PORT='$amqp' RABBITMQ_DIST_PORT='$dist' \
        RABBITMQ_MNESIA_BASE='$d/mnesia' RABBITMQ_LOG_BASE='$d/log' \
        RABBITMQ_CONFIG_FILE='$d/rabbitmq.conf' RABBITMQ_ENABLED_PLUGINS_FILE='$d/enabled_plugins' \
        RABBITMQ_PID_FILE='$d/pid' \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}' \
        rabbitmq-server -detached" ||
        die "rabbitmq-server did not start $(node_name "$n")"
}

await() {  # await NODE: until the node's app runs (its AMQP listener opens last)
    local n=$1 deadline=$((SECONDS + startup_timeout))
    until app_running "$n"; do
        if ((SECONDS >= deadline)); then
            log_tail "$n"
            die "$(node_name "$n") did not start within ${startup_timeout}s; its log: $(node_dir "$n")/log"
        fi
        sleep 0.2
    done
}

cluster_nodes() {  # cluster_nodes disk|running: the nodes node 1 counts, one a line (none: none)
    { ctl 1 cluster_status --formatter json 2>/dev/null || true; } |
        grep -o "\"$1_nodes\":\\[[^]]*\\]" | grep -o '"[^"]*@[^"]*"' | tr -d '"' || true
}

join() {  # join NODE: make node NODE a member of node 1's cluster (when peer discovery did not)
    local n=$1
    say "joining $(node_name "$n") to $(node_name 1)"
    local out
    # A node that was in another cluster (its peer's data was deleted) must forget it first.
    out=$({ ctl "$n" stop_app && ctl "$n" reset && ctl "$n" join_cluster "$(node_name 1)" &&
        ctl "$n" start_app; } 2>&1) || die "$(node_name "$n") could not join $(node_name 1): $out"
}

urls() {
    local n out=()
    for n in "${nodes[@]}"; do out+=("$(node_url "$n")"); done
    (IFS=,; echo "${out[*]}")
}

start() {
    local n p started=$SECONDS state=()
    for n in "${nodes[@]}"; do
        if ! vm_running "$n"; then
            state[n]=down
            for p in "$(node_port "$n")" "$(dist_port "$n")"; do
                port_open "$p" && die "port $p (for $(node_name "$n")) is taken by another process: set CUSTOMEVENT_TEST_CLUSTER_PORT to a free range"
            done
        elif app_running "$n"; then
            state[n]=running
        else
            state[n]=stopped
        fi
    done
    # All three boot side by side: after a whole-cluster restart each waits for its peers.
    local pids=()
    for n in "${nodes[@]}"; do
        case ${state[n]} in
        running) continue ;;
        stopped)
            # A test may have left the app stopped (rabbitmqctl stop_app): start it again.
            say "starting the app of $(node_name "$n")"
            ctl "$n" start_app >/dev/null &
            ;;
        down) launch "$n" & ;;
        esac
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || die "a node did not start (\`$0 stop\` stops the others)"; done
    for n in "${nodes[@]}"; do await "$n"; done
    local members running
    members=" $(cluster_nodes disk | tr '\n' ' ') "
    for n in "${nodes[@]:1}"; do
        [[ $members == *" $(node_name "$n") "* ]] || join "$n"
    done
    running=$(cluster_nodes running | sort | tr '\n' ' ')
    [[ -n $running ]] || die "$(node_name 1) does not answer rabbitmqctl cluster_status; its log: $(node_dir 1)/log"
    for n in "${nodes[@]}"; do
        [[ " $running " == *" $(node_name "$n") "* ]] ||
            die "$(node_name "$n") is not running in the cluster (running: $running)"
    done
    say "3 nodes running, clustered, in $((SECONDS - started)) s"
    urls
}

stop() {
    local n
    # The last node to stop holds the newest view: node 1, which the others join.
    for n in 3 2 1; do
        if pid_alive "$n"; then
            say "stopping $(node_name "$n")"
            # With its pid file, rabbitmqctl returns once the process has exited.
            ctl "$n" stop "$(pid_file "$n")" >/dev/null || die "could not stop $(node_name "$n")"
        elif vm_running "$n"; then
            say "stopping $(node_name "$n") (its pid file is gone)"
            ctl "$n" stop >/dev/null || die "could not stop $(node_name "$n")"
        fi
    done
}

status() {
    local n state healthy=0 running
    running=" $(cluster_nodes running | tr '\n' ' ') "
    for n in "${nodes[@]}"; do
        if ! vm_running "$n"; then
            state="not running"
            port_open "$(node_port "$n")" && state+=" (port $(node_port "$n") taken by another process)"
            healthy=1
        elif ! app_running "$n"; then
            state="node up, app stopped"
            healthy=1
        elif [[ $running != *" $(node_name "$n") "* ]]; then
            state="running, not in the cluster of $(node_name 1)"
            healthy=1
        else
            state="running, clustered"
        fi
        echo "$(node_name "$n")  127.0.0.1:$(node_port "$n")  $state"
    done
    echo "amqp.url: $(urls)"
    return $healthy
}

case $1 in
start) start ;;
stop) stop ;;
status) status ;;
destroy)
    stop
    rm -rf "$dir"
    say "deleted $dir"
    ;;
*) usage ;;
esac
