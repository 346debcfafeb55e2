#!/usr/bin/env bash
# payq demo: brings up the local stack (RabbitMQ with its management UI, and
# PostgreSQL, as plain processes under .stack/), builds payq, starts two worker
# processes, and runs a small day of business through the real broker:
#
#   - opens two customer wallets and a merchant account (platform fee 2.9% + 0.30)
#   - deposits money into the wallets
#   - pays the merchant from both wallets
#   - publishes one payment twice with the same message_id (applied once)
#   - tries a payment larger than the wallet holds (failed: insufficient_funds)
#   - pays by card through the simulated provider, and tries a declined card
#   - authorizes a payment, captures part of it (the rest of the hold is released)
#   - refunds part of a payment
#   - publishes a malformed message (rejected to the dead-letter queue)
#
# then prints the balances and payment outcomes as tables, and leaves the
# stack running so you can look around in the management UI.
#
# Usage: bash tests/demo.sh           (run it as often as you like)
#        bash tests/stack.sh down     (stop the stack afterwards)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$REPO/build}

bash "$REPO/tests/stack.sh" up >&2
eval "$(bash "$REPO/tests/stack.sh" env)"

echo "==> building payq" >&2
cmake -S "$REPO" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j2 >/dev/null

WORKER="$BUILD_DIR/payq-worker"
PUBLISH="$BUILD_DIR/payq-publish"
LOGS="$PAYQ_STACK_DIR/demo"
mkdir -p "$LOGS"

pids=()
stop_workers() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_workers EXIT

echo "==> starting 2 worker processes (logs: $LOGS/worker-*.log)" >&2
for i in 1 2; do
  "$WORKER" run --threads 2 --metrics-port $((9463 + i)) >"$LOGS/worker-$i.log" 2>&1 &
  pids+=("$!")
done
for i in 1 2; do
  for _ in $(seq 1 100); do
    grep -q consuming "$LOGS/worker-$i.log" 2>/dev/null && break
    sleep 0.1
  done
  grep -q consuming "$LOGS/worker-$i.log" || { cat "$LOGS/worker-$i.log" >&2; exit 1; }
done

# Ids of this run, so the demo can run again and again.
run="demo$(date +%H%M%S)"
alice="$run-alice" bob="$run-bob" shop="$run-coffee-shop"

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
send() {
  # send COMMAND BODY [extra payq-publish flags]: prints the worker's reply
  local cmd=$1 body=$2
  shift 2
  printf '  %-16s ' "$cmd"
  "$PUBLISH" --quiet --wait "$@" "$cmd" "$body" || true
}

say "Opening accounts"
send account.open "{\"account\":\"$alice\",\"currency\":\"USD\",\"kind\":\"customer\"}"
send account.open "{\"account\":\"$bob\",\"currency\":\"USD\",\"kind\":\"customer\"}"
send account.open "{\"account\":\"$shop\",\"currency\":\"USD\",\"kind\":\"merchant\"}"
# The platform's fee for this merchant: 290 basis points + 30 cents.
psql -q "$DATABASE_URL" -c "INSERT INTO payq.fee_rules (merchant, currency, bps, fixed)
                            VALUES ('$shop', 'USD', 290, 30)"

say "Depositing"
send account.deposit "{\"deposit_id\":\"$run-dep-1\",\"account\":\"$alice\",\"amount\":10000,\"currency\":\"USD\"}"
send account.deposit "{\"deposit_id\":\"$run-dep-2\",\"account\":\"$bob\",\"amount\":2000,\"currency\":\"USD\"}"

say "Paying the coffee shop"
send payment.create "{\"payment_id\":\"$run-pay-1\",\"amount\":2500,\"currency\":\"USD\",\"source\":\"$alice\",\"destination\":\"$shop\",\"capture\":true,\"description\":\"beans\"}" --message-id "$run-msg-1"
send payment.create "{\"payment_id\":\"$run-pay-2\",\"amount\":1250,\"currency\":\"USD\",\"source\":\"$bob\",\"destination\":\"$shop\",\"capture\":true}"

say "The same payment again, same message_id (a redelivery or a publisher retry): no second effect"
send payment.create "{\"payment_id\":\"$run-pay-1\",\"amount\":2500,\"currency\":\"USD\",\"source\":\"$alice\",\"destination\":\"$shop\",\"capture\":true,\"description\":\"beans\"}" --message-id "$run-msg-1"

say "More than bob has left: declined"
send payment.create "{\"payment_id\":\"$run-pay-3\",\"amount\":3000,\"currency\":\"USD\",\"source\":\"$bob\",\"destination\":\"$shop\",\"capture\":true}"

say "Paying by card (simulated provider: tok_visa approves, tok_chargeDeclined declines)"
send payment.create "{\"payment_id\":\"$run-pay-4\",\"amount\":4000,\"currency\":\"USD\",\"source\":\"tok_visa\",\"destination\":\"$shop\",\"capture\":true}"
send payment.create "{\"payment_id\":\"$run-pay-5\",\"amount\":900,\"currency\":\"USD\",\"source\":\"tok_chargeDeclined\",\"destination\":\"$shop\",\"capture\":true}"

say "Authorize 30.00 on alice's wallet, capture 20.00: the other 10.00 of the hold is released"
send payment.create "{\"payment_id\":\"$run-pay-6\",\"amount\":3000,\"currency\":\"USD\",\"source\":\"$alice\",\"destination\":\"$shop\",\"capture\":false}"
send payment.capture "{\"payment_id\":\"$run-pay-6\",\"amount\":2000}"

say "Refund 5.00 of alice's first payment"
send payment.refund "{\"refund_id\":\"$run-refund-1\",\"payment_id\":\"$run-pay-1\",\"amount\":500,\"reason\":\"one bag was torn\"}"

say "A malformed message: rejected to the dead-letter queue payq.dlq"
send payment.create "{\"payment_id\": \"$run-pay-7\", \"amount\": 12,"

say "Outcome"
"$WORKER" report --prefix "$run"

say "Invariants (payq-worker check)"
"$WORKER" check

cat <<EOF

What to look at next:
  - the management UI: $PAYQ_MGMT_URL  (login payq / payq): queue payq.dlq holds the
    malformed message; "Get messages" shows its x-payq-reason header.
  - payq's dead-letter tool:  $BUILD_DIR/payq-dlq list
  - the ledger:  psql "$DATABASE_URL" -c 'SELECT * FROM payq.ledger_entries ORDER BY id DESC LIMIT 10'
  - the worker logs: $LOGS/worker-*.log
The stack keeps running; stop it with:  bash tests/stack.sh down
EOF
