#!/usr/bin/env bash
# bench/matrix.sh - the README's performance tables: runs payq-bench for each
# configuration several times and prints the medians as markdown.
#
#   eval "$(bash tests/stack.sh env)"
#   bash bench/matrix.sh [capacity|latency|scaling|all] [RUNS]
#
#   capacity  10,000 wallets, 60 s as fast as possible: uniform, then Zipf s=1.1
#   latency   10,000 wallets, 60 s at a fixed 1,000/s (1 and 2 threads) and 2,000/s
#   scaling   30 s as fast as possible: 1/2/4 threads, 2 processes, batch 1/10/50/100
#   all       every one of them (the default)
#
# RUNS (default 3) runs per configuration; the table shows the median of each
# column and every run's throughput. Every run's RESULT line goes to
# $PAYQ_MATRIX_LOG (default bench-matrix-<time>.ndjson in the current
# directory), so the table can be rebuilt or checked. Each run also verifies
# its invariants; a failed verification is shown in the table, never hidden.
# Environment: BUILD_DIR [<checkout>/build], PAYQ_MATRIX_SCALING_RUNS [RUNS]
# runs per scaling row, PAYQ_MATRIX_DURATION overrides
# every run's duration (a quick look), the AMQP_URL / DATABASE_URL /
# PAYQ_MGMT_URL of `tests/stack.sh env`.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
BUILD_DIR=${BUILD_DIR:-$REPO/build}
BENCH=$BUILD_DIR/payq-bench
WHAT=${1:-all}
RUNS=${2:-3}
SCALING_RUNS=${PAYQ_MATRIX_SCALING_RUNS:-$RUNS}
LOG=${PAYQ_MATRIX_LOG:-bench-matrix-$(date +%Y%m%d-%H%M%S).ndjson}

[[ -x $BENCH ]] || { echo "matrix: build first: $BENCH is missing" >&2; exit 2; }
command -v jq >/dev/null || { echo "matrix: jq is needed" >&2; exit 2; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "matrix: RUNS must be a positive number" >&2; exit 2; }

# median of the numbers on stdin (one per line)
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

rows=()
# run LABEL ARGS... : RUNS runs of payq-bench ARGS, one table row
run() {
    local label=$1
    shift
    local -a args=("$@")
    if [[ -n ${PAYQ_MATRIX_DURATION:-} ]]; then args+=(--duration "$PAYQ_MATRIX_DURATION"); fi
    local results=() i line
    for ((i = 1; i <= RUNS; i++)); do
        echo "matrix: $label, run $i of $RUNS: payq-bench ${args[*]}" >&2
        line=$("$BENCH" --worker-log-level warn "${args[@]}" 2>/dev/null | grep '^RESULT ' | tail -n 1 || true)
        if [[ -z $line ]]; then
            echo "matrix: the run printed no RESULT line" >&2
            line='RESULT {"ok":false}'
        fi
        printf '%s\n' "${line#RESULT }" | jq -c --arg name "$label" '. + {configuration: $name}' >>"$LOG"
        results+=("${line#RESULT }")
    done
    local all
    all=$(printf '%s\n' "${results[@]}")
    col() { jq -r "$1 // empty" <<<"$all" | median; }
    local tp p50 p99 cpu pg rmq rss ok runs ref
    tp=$(col .throughput); p50=$(col .p50_ms); p99=$(col .p99_ms)
    cpu=$(col .cpu_us_per_payment); pg=$(col .database_cpu_pct); rmq=$(col .broker_cpu_pct)
    rss=$(col .worker_rss_peak_mib)
    ref=$(col '(.machine_ref_before_ms + .machine_ref_after_ms) / 2')
    local fs99 fsmax
    fs99=$(col '.disk_fsync.p99_ms'); fsmax=$(col '.disk_fsync.max_ms')
    runs=$(jq -r '.throughput // "failed" | if type == "number" then (. | floor | tostring) else . end' <<<"$all" | paste -sd ' ')
    ok=$(jq -r '.ok' <<<"$all" | sort -u | paste -sd ' ')
    [[ $ok == true ]] && ok=yes || ok="NO ($ok)"
    local disk="-"
    [[ $fsmax != - ]] && disk=$(printf '%.1f / %.1f' "$fs99" "$fsmax")
    rows+=("$(printf '| %s | %.0f | %s | %.1f / %.1f | %.0f | %.0f / %.0f | %.1f | %.0f | %s | %s |' \
        "$label" "$tp" "$runs" "$p50" "$p99" "$cpu" "$pg" "$rmq" "$rss" "$ref" "$disk" "$ok")")
}

CAP=(--wallets 10000 --merchants 100 --duration 60 --rate 0)
SCALE=(--wallets 10000 --merchants 100 --duration 30 --rate 0)

case $WHAT in
capacity | all)
    run "uniform, 1 process x 2 threads, batch 100, 60 s" "${CAP[@]}" --worker-threads 2 --batch 100 --prefetch 200
    run "Zipf s=1.1, 1 process x 2 threads, batch 100, 60 s" "${CAP[@]}" --dist zipf --zipf-s 1.1 --worker-threads 2 --batch 100 --prefetch 200
    ;;&
latency | all)
    for t in 1 2; do
        run "fixed 1000/s, $t thread(s), 60 s" --wallets 10000 --merchants 100 --duration 60 --rate 1000 --worker-threads "$t" --batch 100 --prefetch 200
    done
    run "fixed 2000/s, 2 threads, 60 s" --wallets 10000 --merchants 100 --duration 60 --rate 2000 --worker-threads 2 --batch 100 --prefetch 200
    ;;&
scaling | all)
    RUNS=$SCALING_RUNS # PAYQ_MATRIX_SCALING_RUNS: fewer runs for this longer set
    for t in 1 2 4; do
        run "$t thread(s), batch 50" "${SCALE[@]}" --worker-threads "$t" --batch 50 --prefetch 100
    done
    run "2 processes x 2 threads, batch 50" "${SCALE[@]}" --spawn-workers 2 --worker-threads 2 --batch 50 --prefetch 100
    for b in 1 10 50 100; do
        run "2 threads, batch $b" "${SCALE[@]}" --worker-threads 2 --batch "$b" --prefetch $((b * 2 > 32 ? b * 2 : 32))
    done
    ;;
capacity | latency) ;;
*)
    echo "matrix: unknown set '$WHAT' (capacity, latency, scaling or all)" >&2
    exit 2
    ;;
esac

echo
echo "| configuration | payments/s (median) | runs | latency p50 / p99 ms | CPU per payment (us) | PostgreSQL / RabbitMQ, % of a core | worker peak RSS MiB | machine ref ms | disk fsync p99 / max ms | checks passed |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
echo
echo "(the runs column lists every run's throughput; machine ref: payq-bench's reference loop, about"
echo " 210 ms on a quiet machine, higher when the machine was slow; disk fsync: the bench's probe,"
echo " 8 KiB + fdatasync every 20 ms during the run; every RESULT line in $LOG)"
