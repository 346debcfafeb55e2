#!/usr/bin/env bash
# tests/cluster.sh - a three-node RabbitMQ cluster on loopback, with payq's
# queues as quorum queues replicated on every node.
#
#   bash tests/cluster.sh up            start the nodes (in parallel), join them
#                                       into one cluster, load the topology and
#                                       users, check every quorum queue has a
#                                       replica on every node; print the env
#   bash tests/cluster.sh env           print `export` lines for eval: AMQP_URL
#                                       (the list of the nodes), PAYQ_MGMT_URL
#   bash tests/cluster.sh status        nodes (pid, ports, running), each quorum
#                                       queue's leader and members (exit 0 when
#                                       every node runs, 1 otherwise)
#   bash tests/cluster.sh stop N        stop node N (1..3) politely; kill N
#   bash tests/cluster.sh kill N        SIGKILLs it (a crash); start N starts it
#   bash tests/cluster.sh start N       again: it rejoins and its replicas catch up
#   bash tests/cluster.sh leader [Q]    the number of the node leading quorum
#                                       queue Q (payq.commands)
#   bash tests/cluster.sh online [Q]    how many of Q's replicas are online
#   bash tests/cluster.sh down [--purge]   stop every node (and delete the data)
#
# The nodes are plain background processes (no systemd) out of one private
# directory, $PAYQ_CLUSTER_DIR, listening on 127.0.0.1 only. They share an
# Erlang cookie kept in that directory (HOME points there for the servers and
# the CLI; the user's ~/.erlang.cookie is never read or written). epmd, the
# host's Erlang port mapper on 4369, is shared with every other node on the
# host and left running. PostgreSQL is not started here: the tests use the one
# of tests/stack.sh.
#
# Every node has the settings of rabbitmq/rabbitmq.conf (listeners rewritten);
# `up` imports rabbitmq/definitions.json once all nodes have joined, so each
# quorum queue (the work queue payq.commands, the retry tiers, payq.dlq) is
# declared with a replica on every node, and grows any queue that lacks one
# (a queue declared before a node joined). Idempotent: `up` on a running
# cluster only checks, re-imports and prints the env.
#
# LOCAL DEVELOPMENT ONLY: the broker user is payq / payq, like tests/stack.sh.
#
# Environment (defaults in brackets); node N uses PORT + N - 1:
#   PAYQ_CLUSTER_DIR [<checkout>/.cluster]   PAYQ_CLUSTER_SIZE [3]
#   PAYQ_CLUSTER_AMQP_PORT [5711]   PAYQ_CLUSTER_MGMT_PORT [15715]
#   PAYQ_CLUSTER_PROM_PORT [15725]  PAYQ_CLUSTER_DIST_PORT [25711]
# (none of them tests/stack.sh's defaults, so both run side by side)
#   PAYQ_CLUSTER_TIMEOUT [120]  seconds to wait for a node to start
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
DIR=${PAYQ_CLUSTER_DIR:-$REPO/.cluster}
SIZE=${PAYQ_CLUSTER_SIZE:-3}
AMQP_PORT=${PAYQ_CLUSTER_AMQP_PORT:-5711}
MGMT_PORT=${PAYQ_CLUSTER_MGMT_PORT:-15715}
PROM_PORT=${PAYQ_CLUSTER_PROM_PORT:-15725}
DIST_PORT=${PAYQ_CLUSTER_DIST_PORT:-25711}
TIMEOUT=${PAYQ_CLUSTER_TIMEOUT:-120}

HOST=127.0.0.1
USER_NAME=payq
USER_PASS=payq
RMQ_BIN=/usr/lib/rabbitmq/bin

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { printf 'cluster: error: %s\n' "$*" >&2; exit 1; }

[[ $SIZE =~ ^[1-9]$ ]] || die "PAYQ_CLUSTER_SIZE must be 1..9"

# ------------------------------------------------------------ per node

amqp_port() { echo $((AMQP_PORT + $1 - 1)); }
mgmt_port() { echo $((MGMT_PORT + $1 - 1)); }
prom_port() { echo $((PROM_PORT + $1 - 1)); }
dist_port() { echo $((DIST_PORT + $1 - 1)); }
# Names come from the ports, so two clusters on one host never share one.
node_name() { echo "payqc-$(amqp_port "$1")@localhost"; }
node_dir() { echo "$DIR/node$1"; }
pid_file() { echo "$(node_dir "$1")/rabbitmq.pid"; }
mgmt_url() { echo "http://$HOST:$(mgmt_port "${1:-1}")"; }

node_env() { # N: the environment of node N, for the server and the CLI alike
    local d
    d=$(node_dir "$1")
    echo HOME="$DIR"
    echo RABBITMQ_NODENAME="$(node_name "$1")"
    echo RABBITMQ_MNESIA_BASE="$d/mnesia"
    echo RABBITMQ_LOG_BASE="$d/log"
    echo RABBITMQ_PID_FILE="$(pid_file "$1")"
    echo RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
    echo RABBITMQ_CONFIG_FILES="$d/conf.d"
    echo RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
    echo RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
    echo RABBITMQ_ENABLED_PLUGINS_FILE="$REPO/rabbitmq/enabled_plugins"
    echo RABBITMQ_DIST_PORT="$(dist_port "$1")"
    echo "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
    echo ERL_EPMD_ADDRESS="$HOST"
}

# rmq N TOOL ARGS...: a RabbitMQ CLI tool against node N. (Not the
# /usr/sbin wrappers: they switch to the rabbitmq user and its cookie.)
rmq() {
    local n=$1 tool=$2
    shift 2
    local -a env
    mapfile -t env < <(node_env "$n")
    env "${env[@]}" "$RMQ_BIN/$tool" -n "$(node_name "$n")" "$@"
}

node_pid() { [[ -s $(pid_file "$1") ]] && tr -dc '0-9' <"$(pid_file "$1")"; }

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

# Node N runs: the pid in its pid file is a live VM started as that node (a
# stale file left by a killed node, its pid reused, fails this).
node_running() {
    local pid
    pid=$(node_pid "$1") || return 1
    pid_alive "$pid" && tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null |
        grep -qxF -- "RABBITMQ_NODENAME=$(node_name "$1")"
}

port_busy() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

# The HTTP API of node N answers our user (cheap, where a CLI call costs a
# second of CPU).
api_ok() { curl -fsS -o /dev/null -m 5 -u "$USER_NAME:$USER_PASS" "$(mgmt_url "$1")/api/whoami" 2>/dev/null; }

api() { # N PATH [curl args...]
    local n=$1 path=$2
    shift 2
    curl -fsS -m 10 -u "$USER_NAME:$USER_PASS" "$@" "$(mgmt_url "$n")/api$path"
}

# Any node whose API answers (for queries while one is down).
any_node() {
    local n
    for ((n = 1; n <= SIZE; n++)); do
        if node_running "$n" && api_ok "$n"; then
            echo "$n"
            return 0
        fi
    done
    return 1
}

write_conf() { # N
    local d
    d=$(node_dir "$1")
    mkdir -p "$d/conf.d" "$d/log" "$d/mnesia"
    : >"$d/rabbitmq-env.conf"
    {
        echo "# Generated by tests/cluster.sh from rabbitmq/rabbitmq.conf; edit that file instead."
        grep -vE '^[[:space:]]*(listeners\.|management\.tcp\.|prometheus\.tcp\.|disk_free_limit\.|load_definitions|default_(user|pass))' \
            "$REPO/rabbitmq/rabbitmq.conf"
        cat <<EOF

## tests/cluster.sh overrides: loopback only, node $1's ports.
listeners.tcp.local = $HOST:$(amqp_port "$1")
management.tcp.ip = $HOST
management.tcp.port = $(mgmt_port "$1")
prometheus.tcp.ip = $HOST
prometheus.tcp.port = $(prom_port "$1")
disk_free_limit.absolute = 500MB
default_user = $USER_NAME
default_pass = $USER_PASS
default_user_tags.administrator = true
EOF
        # A fresh node other than node 1 joins node 1 as it boots (peer
        # discovery from a fixed list), waiting for node 1 to come up; `up`
        # checks and falls back to rabbitmqctl join_cluster. Node 1 lists no
        # peer, so it alone can found the cluster.
        if (($1 > 1)); then
            cat <<EOF
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = $(node_name 1)
cluster_formation.discovery_retry_limit = $((TIMEOUT / 2))
cluster_formation.discovery_retry_interval = 2000
cluster_formation.randomized_startup_delay_range.min = 0
cluster_formation.randomized_startup_delay_range.max = 1
EOF
        fi
    } >"$d/rabbitmq.conf.tmp"
    mv "$d/rabbitmq.conf.tmp" "$d/rabbitmq.conf"
}

# One Erlang cookie for the whole cluster, made before any node starts (nodes
# started together would each write their own otherwise).
write_cookie() {
    local f=$DIR/.erlang.cookie
    [[ -s $f ]] && return 0
    mkdir -p "$DIR"
    (umask 077 && head -c 64 /dev/urandom | tr -dc 'A-Z' | head -c 20 >"$f.tmp")
    [[ $(wc -c <"$f.tmp") -eq 20 ]] || (umask 077 && printf '%s' "PAYQCLUSTER$RANDOM$RANDOM" >"$f.tmp")
    chmod 400 "$f.tmp"
    mv "$f.tmp" "$f"
}

log_tail() { # N
    local f
    for f in "$(node_dir "$1")/log/$(node_name "$1").log" "$(node_dir "$1")/stdout.log"; do
        [[ -s $f ]] || continue
        printf -- '--- last lines of %s\n' "$f" >&2
        tail -n 30 "$f" >&2
    done
}

# The ports of the nodes given that do not run yet must all be free,
# checked before any node starts.
require_free_ports() { # N...
    local n p
    for n in "$@"; do
        node_running "$n" && continue
        for p in "AMQP:$(amqp_port "$n")" "management:$(mgmt_port "$n")" \
            "prometheus:$(prom_port "$n")" "Erlang distribution:$(dist_port "$n")"; do
            if port_busy "${p#*:}"; then
                die "port ${p#*:} (${p%%:*} of node $n) is in use by another program; pick other ports with PAYQ_CLUSTER_*_PORT (see the top of $0)"
            fi
        done
    done
}

# Launches node N in the background (returns at once).
launch() {
    local n=$1
    if node_running "$n"; then
        return 0
    fi
    rm -f "$(pid_file "$n")"
    require_free_ports "$n"
    write_conf "$n"
    log "starting node $n: $(node_name "$n"), AMQP $HOST:$(amqp_port "$n")"
    local -a env
    mapfile -t env < <(node_env "$n")
    # Own session, every fd redirected: the node outlives this script.
    cd /
    setsid env "${env[@]}" "$RMQ_BIN/rabbitmq-server" \
        </dev/null >"$(node_dir "$n")/stdout.log" 2>&1 9>&- &
    echo $! >"$(node_dir "$n")/launcher.pid"
    cd - >/dev/null
}

# Waits until node N's HTTP API answers (the broker has booted).
await_node() {
    local n=$1 deadline=$((SECONDS + TIMEOUT))
    until api_ok "$n"; do
        if ((SECONDS >= deadline)); then
            log_tail "$n"
            die "node $n did not start within ${TIMEOUT}s (logs in $(node_dir "$n")/log)"
        fi
        if ! node_running "$n" && ! pid_alive "$(cat "$(node_dir "$n")/launcher.pid" 2>/dev/null)"; then
            log_tail "$n"
            die "node $n exited during start (logs in $(node_dir "$n")/log)"
        fi
        sleep 1
    done
}

# Cluster members as node 1 sees them, one name a line.
members() { api 1 /nodes | jq -r '.[].name'; }

join() { # N: node N joins node 1's cluster (its own data is reset)
    local n=$1
    log "node $n joins $(node_name 1)"
    rmq "$n" rabbitmqctl -q stop_app >/dev/null
    rmq "$n" rabbitmqctl -q join_cluster "$(node_name 1)" >/dev/null
    rmq "$n" rabbitmqctl -q start_app >/dev/null
}

# Every quorum queue has a replica on every node; grows those that do not.
replicate() {
    local n missing
    for ((n = 1; n <= SIZE; n++)); do
        missing=$(api 1 /queues/%2F | jq -r --arg node "$(node_name "$n")" \
            '.[] | select(.type == "quorum") | select((.members // []) | index($node) | not) | .name')
        [[ -z $missing ]] && continue
        log "adding a replica on node $n to: $(echo $missing)"
        rmq "$n" rabbitmq-queues -q grow "$(node_name "$n")" all --vhost-pattern '^/$' >/dev/null
    done
    local bad
    bad=$(api 1 /queues/%2F | jq -r --argjson size "$SIZE" \
        '.[] | select(.type == "quorum") | select(((.members // []) | length) != $size) | "\(.name): \(.members)"')
    [[ -z $bad ]] || die "quorum queues not replicated on all $SIZE nodes: $bad"
}

setup_definitions() {
    log "importing $REPO/rabbitmq/definitions.json"
    api 1 /definitions -o /dev/null -X POST -H 'content-type: application/json' \
        --data-binary "@$REPO/rabbitmq/definitions.json" || die "importing the definitions failed"
    # The least-privilege users of definitions.json have no password; like
    # tests/stack.sh, this development cluster gives each its own name.
    local u tags
    for u in payq-publisher:"" payq-worker:"" payq-operator:management payq-monitor:monitoring; do
        tags=${u#*:}
        u=${u%%:*}
        api 1 "/users/$u" -o /dev/null -X PUT -H 'content-type: application/json' \
            -d "{\"password\":\"$u\",\"tags\":\"$tags\"}" || die "cannot set the password of $u"
    done
}

lock() {
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"
    flock -w 600 9 || die "another tests/cluster.sh holds $DIR/.lock"
}

# ------------------------------------------------------------ commands

amqp_list() {
    local n list="amqp://$USER_NAME:$USER_PASS@$HOST:$(amqp_port 1)"
    for ((n = 2; n <= SIZE; n++)); do list+=",$HOST:$(amqp_port "$n")"; done
    echo "$list"
}

cmd_env() {
    printf 'export AMQP_URL=%q\n' "$(amqp_list)"
    printf 'export PAYQ_MGMT_URL=%q\n' "$(mgmt_url 1)"
    printf 'export PAYQ_CLUSTER_DIR=%q PAYQ_CLUSTER_SIZE=%q\n' "$DIR" "$SIZE"
    printf 'export PAYQ_CLUSTER_AMQP_PORT=%q PAYQ_CLUSTER_MGMT_PORT=%q PAYQ_CLUSTER_PROM_PORT=%q PAYQ_CLUSTER_DIST_PORT=%q\n' \
        "$AMQP_PORT" "$MGMT_PORT" "$PROM_PORT" "$DIST_PORT"
}

cmd_up() {
    local t0=$SECONDS n
    [[ -x $RMQ_BIN/rabbitmq-server ]] && command -v jq >/dev/null && command -v curl >/dev/null ||
        bash "$REPO/tests/stack.sh" deps
    lock
    write_cookie
    local -a all=()
    for ((n = 1; n <= SIZE; n++)); do all+=("$n"); done
    require_free_ports "${all[@]}"
    for n in "${all[@]}"; do launch "$n"; done
    for ((n = 1; n <= SIZE; n++)); do await_node "$n"; done
    # Nodes not yet in node 1's cluster join it, in parallel.
    local -a joining=() pids=()
    local current
    current=$(members)
    for ((n = 2; n <= SIZE; n++)); do
        grep -qxF "$(node_name "$n")" <<<"$current" || joining+=("$n")
    done
    for n in "${joining[@]}"; do
        join "$n" &
        pids+=($!)
    done
    local p
    for p in "${pids[@]}"; do wait "$p" || die "a node failed to join the cluster"; done
    for n in "${joining[@]}"; do await_node "$n"; done
    current=$(members)
    for ((n = 1; n <= SIZE; n++)); do
        grep -qxF "$(node_name "$n")" <<<"$current" || die "node $n is not in the cluster: $current"
    done
    setup_definitions
    replicate
    cmd_env
    log "up in $((SECONDS - t0))s: $SIZE nodes, AMQP $HOST:$(amqp_port 1)..$(amqp_port "$SIZE"), management $(mgmt_url 1)"
}

stop_node() { # N SIGNAL
    local n=$1 sig=$2 pid
    if ! node_running "$n"; then
        rm -f "$(pid_file "$n")"
        log "node $n is not running"
        return 0
    fi
    pid=$(node_pid "$n")
    log "stopping node $n (pid $pid, SIG$sig)"
    # RabbitMQ shuts down cleanly on SIGTERM (closing client connections
    # first); SIGKILL is a crash.
    kill -"$sig" "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 60))
    while pid_alive "$pid"; do
        if ((SECONDS >= deadline)); then
            log "node $n did not stop within 60s; killing pid $pid"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 10))
        fi
        sleep 0.2
    done
    rm -f "$(pid_file "$n")"
}

cmd_node() { # stop|kill|start N
    local n=${2:-}
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= SIZE)) || die "usage: bash tests/cluster.sh $1 N (1..$SIZE)"
    case $1 in
    stop) stop_node "$n" TERM ;;
    kill) stop_node "$n" KILL ;;
    start)
        [[ -s $DIR/.erlang.cookie ]] || die "no cluster in $DIR: run bash tests/cluster.sh up first"
        launch "$n"
        await_node "$n"
        ;;
    esac
}

cmd_leader() {
    local q=${1:-payq.commands} n leader k
    n=$(any_node) || die "no node of the cluster answers"
    leader=$(api "$n" "/queues/%2F/$q" | jq -r '.leader // empty') || die "no queue $q"
    for ((k = 1; k <= SIZE; k++)); do
        if [[ $(node_name "$k") == "$leader" ]]; then
            echo "$k"
            return 0
        fi
    done
    die "queue $q has no leader (${leader:-none})"
}

cmd_online() {
    local q=${1:-payq.commands} n
    n=$(any_node) || die "no node of the cluster answers"
    api "$n" "/queues/%2F/$q" | jq -r '(.online // []) | length' || die "no queue $q"
}

cmd_status() {
    local ok=0 n
    for ((n = 1; n <= SIZE; n++)); do
        if node_running "$n" && api_ok "$n"; then
            echo "node $n  running   pid $(node_pid "$n"), $(node_name "$n"), AMQP $HOST:$(amqp_port "$n"), management $(mgmt_url "$n"), distribution port $(dist_port "$n")"
        elif node_running "$n"; then
            echo "node $n  starting  pid $(node_pid "$n"), $(node_name "$n")"
            ok=1
        else
            echo "node $n  stopped   ($(node_name "$n"), AMQP $HOST:$(amqp_port "$n"))"
            ok=1
        fi
    done
    if n=$(any_node); then
        echo "quorum queues (leader; members, * = online):"
        api "$n" /queues/%2F | jq -r '.[] | select(.type == "quorum") |
            "  \(.name): \(.leader // "none"); " +
            ([.members[] as $m | $m + (if ((.online // []) | index($m)) then "*" else "" end)] | join(" "))'
    fi
    echo "cluster dir $DIR"
    return "$ok"
}

cmd_down() {
    local purge=0 n
    [[ ${1:-} == --purge ]] && purge=1
    [[ -d $DIR ]] || { log "nothing to stop: $DIR does not exist"; return 0; }
    lock
    # All at once: a node that waits for its peers stops faster with them.
    local -a pids=()
    for ((n = 1; n <= SIZE; n++)); do
        stop_node "$n" TERM &
        pids+=($!)
    done
    for n in "${pids[@]}"; do wait "$n" || true; done
    if ((purge)); then
        log "deleting $DIR"
        rm -rf -- "$DIR"
    fi
}

case ${1:-} in
up) cmd_up ;;
down) shift; cmd_down "$@" ;;
env) cmd_env ;;
status) cmd_status ;;
stop | kill | start) cmd_node "$@" ;;
leader) shift; cmd_leader "$@" ;;
online) shift; cmd_online "$@" ;;
*)
    echo "usage: bash tests/cluster.sh up | down [--purge] | env | status | stop|kill|start N | leader|online [QUEUE]" >&2
    exit 2
    ;;
esac
