#!/usr/bin/env bash
# test_examples.sh [BUILD_DIR] - runs examples/node/publish.js against the
# real stack (AMQP_URL, DATABASE_URL; `bash tests/stack.sh up`): starts a
# payq-worker, opens and funds two accounts with payq-publish, then checks
# the example's output and exit code for a payment that succeeds and one the
# card issuer declines. Installs the example's npm packages (npm ci) when
# examples/node/node_modules is missing. Registered as ctest test_node_example.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
BUILD=${1:-$REPO/build}
EXAMPLE=$REPO/examples/node

die() { printf 'test_examples.sh: FAIL: %s\n' "$*" >&2; exit 1; }

command -v node >/dev/null 2>&1 ||
    die "node is not installed; this test needs Node.js 20 or later with npm" \
        "(Debian/Ubuntu: apt-get install nodejs npm; or https://nodejs.org)"
major=$(node -p 'process.versions.node.split(".")[0]')
((major >= 20)) || die "Node.js $(node --version) is too old; the example needs Node.js 20 or later"
[[ -n ${AMQP_URL:-} && -n ${DATABASE_URL:-} ]] ||
    die "AMQP_URL and DATABASE_URL are unset: run eval \"\$(bash tests/stack.sh env)\" after bash tests/stack.sh up"
[[ -x $BUILD/payq-worker && -x $BUILD/payq-publish ]] ||
    die "no $BUILD/payq-worker or payq-publish: build first (cmake --build build)"

if [[ ! -d $EXAMPLE/node_modules/amqplib ]]; then
    command -v npm >/dev/null 2>&1 || die "npm is not installed (apt-get install npm)"
    echo "test_examples.sh: installing the example's packages (npm ci)" >&2
    (cd "$EXAMPLE" && npm ci --no-audit --no-fund) >&2 || die "npm ci failed in $EXAMPLE"
fi

mkdir -p "$BUILD/tests"
LOG=$BUILD/tests/worker-node-example-$$.log
: >"$LOG"
PAYQ_METRICS_PORT=0 PAYQ_THREADS=1 PAYQ_LOG_LEVEL=debug "$BUILD/payq-worker" run 2>>"$LOG" &
WORKER=$!
stop_worker() {
    kill -TERM "$WORKER" 2>/dev/null || return 0
    for _ in $(seq 1 300); do kill -0 "$WORKER" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$WORKER" 2>/dev/null || true
    wait "$WORKER" 2>/dev/null || true
}
trap stop_worker EXIT
for _ in $(seq 1 300); do
    grep -q consuming "$LOG" && break
    kill -0 "$WORKER" 2>/dev/null || die "payq-worker exited during start; see $LOG"
    sleep 0.1
done
grep -q consuming "$LOG" || die "payq-worker did not start consuming within 30 s; see $LOG"

# A letter between the time and the pid: 10 + up to 7 digits in one run can pass
# the Luhn check, and the worker rightly refuses an id that looks like a card.
P=nx$(date +%s)p$$
"$BUILD/payq-publish" --wait --quiet --timeout 60 --file - >/dev/null <<NDJSON ||
{"command": "account.open", "body": {"account": "$P-alice", "currency": "USD", "kind": "customer"}}
{"command": "account.open", "body": {"account": "$P-shop", "currency": "USD", "kind": "merchant"}}
NDJSON
    die "payq-publish could not open the accounts"
"$BUILD/payq-publish" --wait --quiet --timeout 60 account.deposit \
    "{\"deposit_id\": \"$P-dep\", \"account\": \"$P-alice\", \"amount\": 10000, \"currency\": \"USD\"}" \
    >/dev/null || die "payq-publish could not fund $P-alice"

# run NAME EXPECTED_EXIT EXPECTED_STATUS EXPECTED_CODE BODY
run() {
    local name=$1 want_rc=$2 want_status=$3 want_code=$4 body=$5 out rc=0
    out=$(cd "$EXAMPLE" && PAYQ_TIMEOUT=60 node publish.js "$body") || rc=$?
    [[ $rc == "$want_rc" ]] || die "$name: exit code $rc, expected $want_rc (output: $out)"
    got=$(printf '%s' "$out" | node -e '
        const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
        process.stdout.write(`${r.status} ${r.code || "-"} ${r.id}`);') ||
        die "$name: the output is not one JSON reply: $out"
    [[ $got == "$want_status $want_code $P-$name" ]] ||
        die "$name: reply says \"$got\", expected \"$want_status $want_code $P-$name\": $out"
    echo "test_examples.sh: ok $name: $out"
}

run pay-wallet 0 succeeded - \
    "{\"payment_id\": \"$P-pay-wallet\", \"amount\": 2500, \"currency\": \"USD\", \"source\": \"$P-alice\", \"destination\": \"$P-shop\", \"capture\": true}"
run pay-declined 1 failed card_declined \
    "{\"payment_id\": \"$P-pay-declined\", \"amount\": 700, \"currency\": \"USD\", \"source\": \"tok_chargeDeclined\", \"destination\": \"$P-shop\", \"capture\": true}"

echo "test_examples.sh: PASS"
