#!/usr/bin/env bash
# tests/stack.sh - a private RabbitMQ + PostgreSQL for payq's tests and demos.
#
#   bash tests/stack.sh up       install missing packages, start both services,
#                                load the topology, migrate, print the env
#   bash tests/stack.sh env      print `export` lines for eval (stdout only)
#   bash tests/stack.sh status   what runs, with pids and ports (exit 0 when
#                                both servers run, 1 otherwise)
#   bash tests/stack.sh down [--purge]   stop what `up` started (and delete
#                                its data with --purge)
#   bash tests/stack.sh deps [PKG...]    only install missing packages (plus PKG...)
#   bash tests/stack.sh stop|start pg|rabbitmq   stop or start one server (tests)
#
# Both servers run as plain background processes (no systemd, no service
# scripts) out of one private directory, $PAYQ_STACK_DIR (default
# <checkout>/.stack), listen on 127.0.0.1 only, and use ports that do not
# collide with a system-wide instance. Everything is idempotent: `up` on a
# running stack only re-imports the definitions, migrates and prints the env.
#
# TLS: `up` makes (once, with openssl) a private CA and a server certificate
# for 127.0.0.1 / localhost signed by it, in $PAYQ_STACK_DIR/tls. RabbitMQ
# listens for amqps:// on PAYQ_AMQPS_PORT beside the plain port, PostgreSQL
# accepts TLS (sslmode=verify-full with sslrootcert=<the CA>) and plain
# connections alike. `env` exports the CA (PAYQ_TLS_CA), a client
# certificate signed by the same CA (PAYQ_TLS_CLIENT_CERT / _KEY) and
# AMQPS_URL / DATABASE_TLS_URL, ready to use.
#
# THIS IS A LOCAL DEVELOPMENT STACK: the broker user and the database role are
# both payq / payq, which is fine on loopback and wrong anywhere else.
#
# Environment (defaults in brackets):
#   PAYQ_STACK_DIR [<checkout>/.stack]  PAYQ_AMQP_PORT [5673]
#   PAYQ_AMQPS_PORT [AMQP port + 1: 5674]  PAYQ_MGMT_PORT [15673]
#   PAYQ_PROM_PORT [15693]  PAYQ_DIST_PORT [25673]  PAYQ_PG_PORT [5433]
#   BUILD_DIR [<checkout>/build]
#   PAYQ_CMAKE_ARGS   extra arguments for the configure step when `up` has to
#                     build payq-worker itself
#   PAYQ_STACK_NO_MIGRATE=1   skip building the worker and migrating
#   PAYQ_STACK_TIMEOUT [120]  seconds to wait for each server to start
#   PAYQ_RMQ_ERL_ARGS ["+SP 50:50"]  extra Erlang VM flags of the broker; the
#                     default gives it schedulers for half the cores (one on
#                     two cores), the rest stays with PostgreSQL and the
#                     workers on this shared host; empty = Erlang's default
#                     (a scheduler per core)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
STACK_DIR=${PAYQ_STACK_DIR:-$REPO/.stack}
AMQP_PORT=${PAYQ_AMQP_PORT:-5673}
AMQPS_PORT=${PAYQ_AMQPS_PORT:-$((AMQP_PORT + 1))}
MGMT_PORT=${PAYQ_MGMT_PORT:-15673}
PROM_PORT=${PAYQ_PROM_PORT:-15693}
DIST_PORT=${PAYQ_DIST_PORT:-25673}
PG_PORT=${PAYQ_PG_PORT:-5433}
RMQ_ERL_ARGS=${PAYQ_RMQ_ERL_ARGS-+SP 50:50}
BUILD_DIR=${BUILD_DIR:-$REPO/build}
TIMEOUT=${PAYQ_STACK_TIMEOUT:-120}

HOST=127.0.0.1
USER_NAME=payq
USER_PASS=payq
DB_NAME=payq

PACKAGES=(rabbitmq-server postgresql postgresql-client librabbitmq-dev libpq-dev
          libjansson-dev libcmocka-dev amqp-tools cmake gcc libc6-dev pkg-config
          make curl jq clang libclang-rt-14-dev libmicrohttpd-dev openssl)

RMQ_BIN=/usr/lib/rabbitmq/bin
PG_BIN=/usr/lib/postgresql/15/bin

RMQ_DIR=$STACK_DIR/rabbitmq
# Two stacks on one host (other ports, other dir) need distinct node names.
if [[ $AMQP_PORT == 5673 ]]; then RMQ_NODE=payq@localhost; else RMQ_NODE=payq-$AMQP_PORT@localhost; fi
RMQ_PID_FILE=$RMQ_DIR/rabbitmq.pid # written by the broker itself: the VM's pid
RMQ_LOG_DIR=$RMQ_DIR/log
RMQ_CONF=$RMQ_DIR/rabbitmq.conf
TLS_DIR=$STACK_DIR/tls

log() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- packages

missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$' || echo "$p"
    done
}

# One `apt-get update`, then install only what is missing. Recommends are
# skipped (libc6-dev, which gcc only recommends, is listed explicitly).
install_packages() {
    local -a missing sudo=() extra=()
    # Node.js runs the client example's test. A machine may have it from
    # another source (its own nodejs package with npm inside): then nothing
    # is installed; else Debian's nodejs and npm.
    command -v node >/dev/null || extra+=(nodejs)
    command -v npm >/dev/null || extra+=(npm)
    mapfile -t missing < <(missing_packages "${PACKAGES[@]}" "${extra[@]}" "$@")
    ((${#missing[@]})) || return 0
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "missing packages: ${missing[*]} (run as root or install them)"
        sudo=(sudo)
    fi
    log "installing ${missing[*]}"
    # NEEDRESTART_SUSPEND: no service-restart scan after the install.
    local -a apt_env=(env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1)
    "${sudo[@]}" "${apt_env[@]}" apt-get update -q >&2
    "${sudo[@]}" "${apt_env[@]}" apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >&2
}

# ------------------------------------------------------------------ helpers

# True when something accepts TCP connections on 127.0.0.1:$1.
port_busy() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# Who listens on port $1, for error messages (ss may be absent on a fresh box).
port_owner() {
    command -v ss >/dev/null || return 0
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\(.*\)))/ (\1)/p' | head -n 1
}

require_free_ports() { # name:port ...
    local item
    for item in "$@"; do
        if port_busy "${item#*:}"; then
            die "port ${item#*:} (${item%%:*}) is already in use by another program$(port_owner "${item#*:}"); stop it or pick another port with PAYQ_*_PORT (see the top of $0)"
        fi
    done
}

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }
pid_gone() { ! pid_alive "$1"; }

# pid_cmdline_has PID STRING: the live process PID was started with STRING in
# its arguments. Used to tell our servers from a recycled pid.
pid_cmdline_has() {
    pid_alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"
}

wait_until() { # seconds command...: poll once a second
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

# ---------------------------------------------------------------------- TLS

# tls_valid FILE: a certificate that exists and stays valid for another day.
tls_valid() {
    [[ -s $1 ]] && openssl x509 -in "$1" -noout -checkend 86400 >/dev/null 2>&1
}

# tls_issue NAME SUBJECT EXTENSIONS...: NAME.key (P-256) and NAME.pem signed by
# the stack's CA, in the current directory.
tls_issue() {
    local name=$1 subj=$2
    shift 2
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -noenc \
        -keyout "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
        -sha256 -extfile <(printf '%s\n' "$@") -out "$name.pem" 2>/dev/null
    rm -f "$name.csr"
}

# The stack's private CA and the certificates it signs, made once (and again
# when one is about to expire): server.pem for 127.0.0.1 and localhost (both
# servers present it) and client.pem for mutual TLS (CN payq-worker). Keys
# are 0600; the certificates are public.
tls_make() {
    if tls_valid "$TLS_DIR/ca.pem" && tls_valid "$TLS_DIR/server.pem" &&
        tls_valid "$TLS_DIR/client.pem"; then
        return 0
    fi
    command -v openssl >/dev/null || die "openssl is missing (bash $0 deps installs it)"
    log "making a private CA and TLS certificates for $HOST / localhost in $TLS_DIR"
    mkdir -p "$TLS_DIR"
    (
        cd "$TLS_DIR"
        umask 077
        rm -f ./*.pem ./*.key ./*.srl
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -noenc \
            -keyout ca.key -out ca.pem -days 3650 -sha256 \
            -subj "/O=payq/CN=payq development CA ($(hostname -s 2>/dev/null || echo localhost))" \
            -addext 'basicConstraints=critical,CA:TRUE' \
            -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>/dev/null
        tls_issue server "/O=payq/CN=localhost" 'basicConstraints=CA:FALSE' \
            'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' \
            "subjectAltName=IP:$HOST,DNS:localhost"
        tls_issue client "/O=payq/CN=payq-worker" 'basicConstraints=CA:FALSE' \
            'keyUsage=critical,digitalSignature' 'extendedKeyUsage=clientAuth'
        chmod 644 ca.pem server.pem client.pem
    ) || die "openssl could not make the certificates in $TLS_DIR"
    tls_valid "$TLS_DIR/server.pem" || die "openssl made no valid server certificate in $TLS_DIR"
}

# ----------------------------------------------------------------- RabbitMQ

# The environment of the private node, for the server and the CLI alike.
# HOME holds the node's own Erlang cookie (the CLI needs the same HOME and node
# name to reach it). The system-wide /etc/rabbitmq files are shadowed so a
# local installation's settings cannot leak in. The distribution port listens
# on loopback only, and so does an epmd the node has to start itself.
RMQ_ENV=(
    HOME="$RMQ_DIR"
    RABBITMQ_NODENAME="$RMQ_NODE"
    RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia"
    RABBITMQ_LOG_BASE="$RMQ_LOG_DIR"
    RABBITMQ_PID_FILE="$RMQ_PID_FILE"
    RABBITMQ_CONFIG_FILE="$RMQ_CONF"
    RABBITMQ_CONFIG_FILES="$RMQ_DIR/conf.d"
    RABBITMQ_ADVANCED_CONFIG_FILE="$RMQ_DIR/advanced.config"
    RABBITMQ_CONF_ENV_FILE="$RMQ_DIR/rabbitmq-env.conf"
    RABBITMQ_ENABLED_PLUGINS_FILE="$REPO/rabbitmq/enabled_plugins"
    RABBITMQ_DIST_PORT="$DIST_PORT"
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} $RMQ_ERL_ARGS"
    ERL_EPMD_ADDRESS="$HOST"
)

# rmq TOOL ARGS...: run a RabbitMQ script from $RMQ_BIN against the private
# node. (Not /usr/sbin/rabbitmqctl: that wrapper switches to the rabbitmq user
# and its HOME, hence to the system node's cookie.)
rmq() {
    local tool=$1
    shift
    env "${RMQ_ENV[@]}" "$RMQ_BIN/$tool" "$@"
}

rmq_pid() { [[ -s $RMQ_PID_FILE ]] && tr -dc '0-9' <"$RMQ_PID_FILE"; }

# Our broker is running: the pid in its pid file is a live Erlang VM started
# with our private HOME (a stale file from a killed node fails this).
rmq_running() {
    local pid
    pid=$(rmq_pid) || return 1
    pid_cmdline_has "$pid" "-home $RMQ_DIR "
}

# The config the private node uses: rabbitmq/rabbitmq.conf with its listener
# and TLS lines replaced (loopback only, private ports, the stack's
# certificates) and a smaller disk limit, so a laptop with a few GB free still
# accepts publishes. Written to $1.
write_rmq_conf() {
    mkdir -p "$RMQ_DIR/conf.d" "$RMQ_LOG_DIR" "$RMQ_DIR/mnesia"
    : >"$RMQ_DIR/rabbitmq-env.conf"
    {
        echo "# Generated by tests/stack.sh from rabbitmq/rabbitmq.conf; edit that file instead."
        grep -vE '^[[:space:]]*(listeners\.|ssl_options\.|management\.tcp\.|prometheus\.tcp\.|disk_free_limit\.|load_definitions|default_(user|pass))' \
            "$REPO/rabbitmq/rabbitmq.conf"
        cat <<EOF

## tests/stack.sh overrides: loopback only, private ports.
listeners.tcp.local = $HOST:$AMQP_PORT
# amqps:// beside the plain listener, with the stack's private CA. A client
# certificate is optional (mutual TLS) but, when one is sent, it must be
# signed by that CA.
listeners.ssl.local = $HOST:$AMQPS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
management.tcp.ip = $HOST
management.tcp.port = $MGMT_PORT
prometheus.tcp.ip = $HOST
prometheus.tcp.port = $PROM_PORT
disk_free_limit.absolute = 500MB
# Seed the development user instead of guest on the node's first boot
# (up also re-creates it if it was deleted).
default_user = $USER_NAME
default_pass = $USER_PASS
default_user_tags.administrator = true
EOF
    } >"$1"
}

rmq_log_tail() {
    local f
    for f in "$RMQ_LOG_DIR/$RMQ_NODE.log" "$RMQ_DIR/stdout.log"; do
        [[ -s $f ]] || continue
        printf -- '--- last lines of %s\n' "$f" >&2
        tail -n 40 "$f" >&2
    done
}

rmq_start() {
    local launcher=
    write_rmq_conf "$RMQ_CONF.new"
    # A node started from an older configuration (before the TLS listener,
    # say) or other Erlang flags is restarted once so that it runs with the
    # current ones; edited comments alone restart nothing.
    if rmq_running && { ! cmp -s <(grep -v '^[[:space:]]*#' "$RMQ_CONF.new") \
        <(grep -v '^[[:space:]]*#' "$RMQ_CONF" 2>/dev/null) ||
        [[ $(cat "$RMQ_DIR/erl-args" 2>/dev/null) != "$RMQ_ERL_ARGS" ]]; }; then
        log "RabbitMQ's generated configuration or Erlang flags changed ($RMQ_CONF): restarting the node"
        rmq_stop
        require_free_ports "AMQP over TLS:$AMQPS_PORT"
    fi
    if rmq_running; then
        rm -f "$RMQ_CONF.new"
        log "RabbitMQ already running (pid $(rmq_pid), node $RMQ_NODE)"
    else
        if [[ -e $RMQ_PID_FILE ]]; then
            log "removing stale RabbitMQ pid file (pid $(rmq_pid || echo '?') is gone)"
            rm -f "$RMQ_PID_FILE"
        fi
        mv "$RMQ_CONF.new" "$RMQ_CONF"
        printf '%s' "$RMQ_ERL_ARGS" >"$RMQ_DIR/erl-args"
        log "starting RabbitMQ node $RMQ_NODE (AMQP $HOST:$AMQP_PORT, AMQPS $HOST:$AMQPS_PORT)"
        # A session of its own and every fd redirected: the server outlives
        # this script and never holds the caller's terminal or pipes open.
        cd /
        setsid env "${RMQ_ENV[@]}" "$RMQ_BIN/rabbitmq-server" \
            </dev/null >"$RMQ_DIR/stdout.log" 2>&1 9>&- &
        launcher=$!
        cd - >/dev/null
    fi
    local deadline=$((SECONDS + TIMEOUT))
    until rmq_running && rmq rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1; do
        if [[ -n $launcher ]] && ! pid_alive "$launcher"; then
            rmq_log_tail
            die "RabbitMQ exited during startup (logs in $RMQ_LOG_DIR)"
        fi
        if ((SECONDS >= deadline)); then
            rmq_log_tail
            die "RabbitMQ did not start within ${TIMEOUT}s (logs in $RMQ_LOG_DIR)"
        fi
        sleep 1
    done
}

rmq_setup() {
    # The development user: payq / payq, administrator, everything on "/".
    # A login over the HTTP API proves it exists with that password (and costs
    # milliseconds, where each rabbitmqctl call costs a second).
    if ! curl -fsS -o /dev/null -u "$USER_NAME:$USER_PASS" "$(mgmt_url)/api/whoami" 2>/dev/null; then
        log "creating RabbitMQ user $USER_NAME"
        rmq rabbitmqctl -q add_user "$USER_NAME" "$USER_PASS" >/dev/null 2>&1 ||
            rmq rabbitmqctl -q change_password "$USER_NAME" "$USER_PASS" >/dev/null
        rmq rabbitmqctl -q set_user_tags "$USER_NAME" administrator >/dev/null
        rmq rabbitmqctl -q set_permissions -p / "$USER_NAME" '.*' '.*' '.*' >/dev/null
    fi
    log "importing $REPO/rabbitmq/definitions.json"
    rmq rabbitmqctl -q import_definitions "$REPO/rabbitmq/definitions.json" >&2
    # definitions.json declares payq's least-privilege users without
    # passwords (an operator sets them); this development stack gives each
    # its own name as password. The HTTP API does it in milliseconds.
    local u tags
    for u in payq-publisher:"" payq-worker:"" payq-operator:management payq-monitor:monitoring; do
        tags=${u#*:}
        u=${u%%:*}
        curl -fsS -o /dev/null -u "$USER_NAME:$USER_PASS" -X PUT -H 'content-type: application/json' \
            -d "{\"password\":\"$u\",\"tags\":\"$tags\"}" "$(mgmt_url)/api/users/$u" ||
            die "cannot set the password of RabbitMQ user $u"
    done
}

rmq_stop() {
    if ! rmq_running; then
        rm -f "$RMQ_PID_FILE"
        log "RabbitMQ is not running"
        return 0
    fi
    local pid
    pid=$(rmq_pid)
    log "stopping RabbitMQ node $RMQ_NODE (pid $pid)"
    rmq rabbitmqctl -q stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until 60 pid_gone "$pid"; then
        log "RabbitMQ did not stop within 60s; killing pid $pid"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$RMQ_PID_FILE"
    # epmd is left running on purpose: it is the host-wide Erlang port mapper
    # that every Erlang node (a system RabbitMQ, another checkout's stack) shares,
    # and killing it would break their name resolution. It is tiny and idle.
}

# --------------------------------------------------------------- PostgreSQL

# Where the cluster lives. initdb refuses to run as root, so the server runs as
# the `postgres` system user, which must be able to reach its data directory.
# When it cannot (a checkout under /root, say) or the socket path would be too
# long for a unix socket, the cluster goes under /tmp, keyed by the stack dir.
pg_locate() {
    local dir=$STACK_DIR/postgres probe=$STACK_DIR
    if ((EUID == 0)); then
        while [[ ! -e $probe ]]; do probe=$(dirname "$probe"); done
        if ! (cd / && runuser -u postgres -- test -x "$probe") 2>/dev/null; then
            dir=/tmp/payq-stack-pg-$(printf '%s' "$STACK_DIR" | cksum | cut -d' ' -f1)
            log "the postgres user cannot traverse $STACK_DIR; PostgreSQL data goes to $dir"
        fi
    fi
    if ((${#dir} + ${#PG_PORT} + 20 > 100)); then
        dir=/tmp/payq-stack-pg-$(printf '%s' "$STACK_DIR" | cksum | cut -d' ' -f1)
        log "$STACK_DIR is too deep for a unix socket path; PostgreSQL data goes to $dir"
    fi
    PG_DIR=$dir
    PG_DATA=$dir/data
    PG_SOCK=$dir/run
    PG_LOG=$dir/postgresql.log
}

as_pg() {
    if ((EUID == 0)); then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

pg_running() {
    [[ -d $PG_DATA ]] && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

# psql as the cluster's superuser over the private unix socket (trust auth).
pg_psql() {
    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres "$@"
}

pg_init() {
    [[ -s $PG_DATA/PG_VERSION ]] && return 0
    id postgres >/dev/null 2>&1 || die "no postgres system user (is postgresql-15 installed?)"
    log "creating PostgreSQL cluster in $PG_DATA"
    mkdir -p "$PG_DIR"
    if ((EUID == 0)); then chown postgres: "$PG_DIR"; fi
    chmod 700 "$PG_DIR"
    # Local socket: trust (only this machine's users reach it; the superuser
    # has no password, so it cannot log in over TCP). TCP: SCRAM passwords.
    if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres \
        --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1; then
        cat "$PG_DIR/initdb.log" >&2
        die "initdb failed"
    fi
    # Durability stays at the defaults (fsync=on, synchronous_commit=on,
    # full_page_writes=on): the tests must see what production sees.
    as_pg sh -c 'cat >>"$1"' sh "$PG_DATA/postgresql.conf" <<'EOF'

# --- tests/stack.sh: listen address, port and socket are rewritten on every
# start into payq-stack.conf, so PAYQ_PG_PORT can change between runs.
include_if_exists = 'payq-stack.conf'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = 1000
log_lock_waits = on
max_connections = 200
EOF
}

# The server certificate and key, copied into the data directory: PostgreSQL
# refuses a key that others can read, or that belongs to another user than
# the server's (root may own it only with mode 0640).
pg_tls_files() {
    local -a owner=()
    if ((EUID == 0)); then owner=(-o postgres -g postgres); fi
    install "${owner[@]}" -m 600 "$TLS_DIR/server.pem" "$PG_DATA/server.crt"
    install "${owner[@]}" -m 600 "$TLS_DIR/server.key" "$PG_DATA/server.key"
}

# Rewritten on every start: listen address, port, socket and TLS. TLS is
# offered, not required: pg_hba's `host` lines take both, so the tests that
# connect in plain text keep working.
pg_write_conf() {
    as_pg sh -c 'cat >"$1"' sh "$PG_DATA/payq-stack.conf" <<EOF
# Generated by tests/stack.sh on every start.
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_min_protocol_version = 'TLSv1.2'
# Memory and checkpoints sized for a busy payq rather than PostgreSQL's
# 128 MB defaults (durability untouched: fsync, synchronous_commit and
# full_page_writes stay on). With 128 MB of buffers the ledger's and the
# idempotency keys' indexes no longer fit after a few benchmark runs, and a
# checkpoint every 1 GB of WAL rewrites each touched page in full into the WAL
# (a few kB per payment), the writes behind the latency spikes under load.
# Shared memory is only resident as it is used.
shared_buffers = '1GB'
max_wal_size = '8GB'
min_wal_size = '1GB'
checkpoint_timeout = '15min'
wal_compression = 'lz4'
EOF
}

pg_start() {
    pg_init
    if pg_running; then
        # A server started before TLS was configured: ssl is reloadable.
        if [[ $(pg_psql -d postgres -Atc 'SHOW ssl') != on ]]; then
            log "enabling TLS in the running PostgreSQL (reload)"
            pg_tls_files
            pg_write_conf
            pg_psql -d postgres -c 'SELECT pg_reload_conf()' >/dev/null
        fi
        log "PostgreSQL already running (data $PG_DATA)"
        return 0
    fi
    # A postmaster.pid left by a killed server: postgres treats a live process
    # with that pid as its own and refuses to start, so drop it when the pid is
    # gone or belongs to something else.
    if [[ -f $PG_DATA/postmaster.pid ]]; then
        local pid
        pid=$(head -n 1 "$PG_DATA/postmaster.pid" | tr -dc '0-9')
        if ! pid_cmdline_has "$pid" "$PG_DATA"; then
            log "removing stale PostgreSQL pid file (pid ${pid:-?})"
            rm -f "$PG_DATA/postmaster.pid"
        fi
    fi
    mkdir -p "$PG_SOCK"
    if ((EUID == 0)); then chown postgres: "$PG_SOCK"; fi
    pg_tls_files
    pg_write_conf
    log "starting PostgreSQL 15 ($HOST:$PG_PORT, TLS offered)"
    if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$TIMEOUT" start >/dev/null 9>&-; then
        [[ -f $PG_LOG ]] && tail -n 40 "$PG_LOG" >&2
        die "PostgreSQL did not start (log $PG_LOG)"
    fi
}

pg_setup() {
    # The development role and database: payq / payq, owner of database payq.
    pg_psql -d postgres -v user="$USER_NAME" -v pass="$USER_PASS" <<'EOF'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'user', :'pass')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'user', :'pass') \gexec
EOF
    # Beside it, payq_scratch: for tests that must start from an empty schema
    # (test_upgrade migrates an earlier version's schema there).
    local db
    for db in "$DB_NAME" "${DB_NAME}_scratch"; do
        pg_psql -d postgres -v db="$db" -v user="$USER_NAME" <<'EOF'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
EOF
    done
    # The least-privilege runtime role (password payq_worker, development
    # only): the migrations grant it what a worker needs and no more (see
    # sql/008_worker_role.sql); payq, the owner, runs the migrations.
    pg_psql -d postgres <<'EOF'
SELECT 'CREATE ROLE payq_worker LOGIN PASSWORD ''payq_worker'''
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'payq_worker') \gexec
EOF
}

pg_stop() {
    if pg_running; then
        log "stopping PostgreSQL (data $PG_DATA)"
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null
    else
        log "PostgreSQL is not running"
    fi
}

# ---------------------------------------------------------------- commands

# One `up` or `down` at a time per stack (two terminals, CI and a developer).
# The servers are started with fd 9 closed so they never inherit the lock.
lock_stack() {
    [[ -d $STACK_DIR ]] || mkdir -p -m 755 "$STACK_DIR"
    exec 9>"$STACK_DIR/.lock"
    flock -w 600 9 || die "another tests/stack.sh holds $STACK_DIR/.lock"
}

amqp_url() { echo "amqp://$USER_NAME:$USER_PASS@$HOST:$AMQP_PORT"; }
database_url() { echo "postgresql://$USER_NAME:$USER_PASS@$HOST:$PG_PORT/$DB_NAME"; }
mgmt_url() { echo "http://$HOST:$MGMT_PORT"; }
# The host name is the certificate's: rabbitmq-c checks DNS names only;
# libpq checks the IP address against the certificate's IP SAN.
amqps_url() { echo "amqps://$USER_NAME:$USER_PASS@localhost:$AMQPS_PORT"; }
database_tls_url() {
    echo "$(database_url)?sslmode=verify-full&sslrootcert=$TLS_DIR/ca.pem"
}

cmd_env() {
    printf 'export AMQP_URL=%q\n' "$(amqp_url)"
    printf 'export DATABASE_URL=%q\n' "$(database_url)"
    printf 'export PAYQ_MGMT_URL=%q\n' "$(mgmt_url)"
    printf 'export PAYQ_STACK_DIR=%q\n' "$STACK_DIR"
    # TLS: the private CA that signed both servers' certificate, a client
    # certificate of the same CA, and the URLs that use them.
    printf 'export PAYQ_TLS_CA=%q PAYQ_TLS_CERT=%q PAYQ_TLS_KEY=%q\n' \
        "$TLS_DIR/ca.pem" "$TLS_DIR/client.pem" "$TLS_DIR/client.key"
    printf 'export PAYQ_AMQPS_URL=%q\n' "$(amqps_url)"
    printf 'export PAYQ_DATABASE_TLS_URL=%q\n' "$(database_tls_url)"
    # The ports too, so a later `stack.sh stop|start` from this environment
    # (a test) acts on this stack and no other.
    printf 'export PAYQ_AMQP_PORT=%q PAYQ_AMQPS_PORT=%q PAYQ_MGMT_PORT=%q PAYQ_PROM_PORT=%q PAYQ_DIST_PORT=%q PAYQ_PG_PORT=%q\n' \
        "$AMQP_PORT" "$AMQPS_PORT" "$MGMT_PORT" "$PROM_PORT" "$DIST_PORT" "$PG_PORT"
}

# The worker binary: $BUILD_DIR/payq-worker, or worker/payq-worker when the
# build keeps CMake's per-directory output layout.
find_worker() {
    local f
    for f in "$BUILD_DIR/payq-worker" "$BUILD_DIR/worker/payq-worker"; do
        [[ -x $f ]] && { echo "$f"; return 0; }
    done
    return 1
}

migrate() {
    if [[ ${PAYQ_STACK_NO_MIGRATE:-0} == 1 ]]; then
        log "PAYQ_STACK_NO_MIGRATE=1: not building the worker, not migrating"
        return 0
    fi
    local worker
    if ! worker=$(find_worker); then
        log "building payq-worker in $BUILD_DIR"
        local -a extra=()
        [[ -n ${PAYQ_CMAKE_ARGS:-} ]] && read -r -a extra <<<"$PAYQ_CMAKE_ARGS"
        cmake -S "$REPO" -B "$BUILD_DIR" "${extra[@]}" >&2
        cmake --build "$BUILD_DIR" -j "${PAYQ_BUILD_JOBS:-2}" >&2
        worker=$(find_worker) || die "the build produced no payq-worker in $BUILD_DIR"
    fi
    log "migrating the database ($worker migrate)"
    AMQP_URL=$(amqp_url) DATABASE_URL=$(database_url) "$worker" migrate >&2 ||
        die "payq-worker migrate failed"
}

cmd_up() {
    local t0=$SECONDS
    install_packages
    lock_stack
    pg_locate
    # Every port a server about to start needs must be free, checked before
    # anything starts; a server of ours that already runs keeps its ports.
    local -a ports=()
    rmq_running || ports+=("AMQP:$AMQP_PORT" "AMQP over TLS:$AMQPS_PORT" "management UI:$MGMT_PORT"
                           "prometheus:$PROM_PORT" "Erlang distribution:$DIST_PORT")
    pg_running || ports+=("PostgreSQL:$PG_PORT")
    ((${#ports[@]} == 0)) || require_free_ports "${ports[@]}"
    tls_make
    rmq_start
    rmq_setup
    pg_start
    pg_setup
    migrate
    cmd_env
    log "up in $((SECONDS - t0))s. Management UI: $(mgmt_url) (login $USER_NAME / $USER_PASS)"
    # How to call this stack again, with the settings that differ from the defaults.
    local self= v
    for v in PAYQ_STACK_DIR PAYQ_AMQP_PORT PAYQ_AMQPS_PORT PAYQ_MGMT_PORT PAYQ_PROM_PORT PAYQ_DIST_PORT PAYQ_PG_PORT; do
        if [[ -n ${!v:-} ]]; then self+="$v=${!v} "; fi
    done
    self+="bash $REPO/tests/stack.sh"
    log "use it: eval \"\$($self env)\"   stop it: $self down"
}

cmd_down() {
    local purge=0
    [[ ${1:-} == --purge ]] && purge=1
    [[ -d $STACK_DIR ]] || { log "nothing to stop: $STACK_DIR does not exist"; return 0; }
    lock_stack
    pg_locate
    rmq_stop
    pg_stop
    if ((purge)); then
        log "deleting $STACK_DIR"
        rm -rf -- "$STACK_DIR"
        if [[ -d $PG_DIR ]]; then
            log "deleting $PG_DIR"
            rm -rf -- "$PG_DIR"
        fi
    fi
}

cmd_status() {
    local ok=0
    pg_locate
    if rmq_running; then
        if port_busy "$AMQP_PORT"; then
            echo "RabbitMQ    running   pid $(rmq_pid), node $RMQ_NODE, AMQP $HOST:$AMQP_PORT, AMQPS $HOST:$AMQPS_PORT, management $(mgmt_url), prometheus $HOST:$PROM_PORT, distribution port $DIST_PORT"
        else
            echo "RabbitMQ    starting  pid $(rmq_pid), node $RMQ_NODE (AMQP $HOST:$AMQP_PORT not accepting yet)"
            ok=1
        fi
    else
        echo "RabbitMQ    stopped   (would use AMQP $HOST:$AMQP_PORT, node $RMQ_NODE)"
        ok=1
    fi
    if pg_running; then
        echo "PostgreSQL  running   pid $(head -n 1 "$PG_DATA/postmaster.pid"), $HOST:$PG_PORT, socket $PG_SOCK, data $PG_DATA"
    else
        echo "PostgreSQL  stopped   (would use $HOST:$PG_PORT, data $PG_DATA)"
        ok=1
    fi
    echo "stack dir   $STACK_DIR"
    return "$ok"
}

# Fault injection for tests: stop or start one server of a running stack
# (its data and configuration stay), e.g. to prove the worker rides out a
# database outage.
cmd_service() { # stop|start pg|rabbitmq
    lock_stack
    pg_locate
    case $1:$2 in
    stop:pg) pg_stop ;;
    start:pg) tls_make; pg_start ;;
    stop:rabbitmq) rmq_stop ;;
    start:rabbitmq) tls_make; rmq_start ;;
    *) die "usage: bash tests/stack.sh stop|start pg|rabbitmq" ;;
    esac
}

case ${1:-} in
up) cmd_up ;;
stop | start) cmd_service "$1" "${2:-}" ;;
down) shift; cmd_down "$@" ;;
env) cmd_env ;;
status) cmd_status ;;
deps) shift; install_packages "$@"; log "all packages present" ;;
*)
    echo "usage: bash tests/stack.sh up | down [--purge] | env | status | deps [PKG...] | stop|start pg|rabbitmq" >&2
    exit 2
    ;;
esac
