#!/usr/bin/env bash
# tests/run-tests.sh - payq's test command: every test, against a real broker
# and database, in a normal and in a sanitizer build.
#
#   bash tests/run-tests.sh [CTEST ARGS...]     e.g.  bash tests/run-tests.sh -L unit
#
# 1. `bash tests/stack.sh up`: installs missing packages, starts the private
#    RabbitMQ + PostgreSQL, builds payq-worker if needed and migrates.
# 2. build/       RelWithDebInfo, -Werror; ctest.
# 3. build-asan/  Debug, AddressSanitizer + UndefinedBehaviorSanitizer,
#    -Werror; ctest with leak detection, aborting on the first report.
# Exits non-zero if any build or test failed. The stack is left running for
# the next run (it takes ~10 s to start) unless PAYQ_STOP_STACK=1.
#
# 4. build-fuzz/  clang + libFuzzer: each fuzzer for PAYQ_FUZZ_SECONDS (30).
# Environment: PAYQ_SKIP_ASAN=1 skips step 3, PAYQ_SKIP_FUZZ=1 step 4; PAYQ_STOP_STACK=1 stops the
# stack at the end; PAYQ_BUILD_JOBS (default 2); the PAYQ_* port and
# directory variables of tests/stack.sh. A leak suppression file, if the
# project needs one, goes in tests/lsan.supp.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
JOBS=${PAYQ_BUILD_JOBS:-2}
NORMAL_ARGS=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DPAYQ_WERROR=ON)
ASAN_ARGS=(-DCMAKE_BUILD_TYPE=Debug -DPAYQ_SANITIZE=address,undefined -DPAYQ_WERROR=ON)

say() { printf '\n=== %s\n' "$*" >&2; }

if [[ ${PAYQ_STOP_STACK:-0} == 1 ]]; then
    trap 'say "stopping the stack (PAYQ_STOP_STACK=1)"; bash "$REPO/tests/stack.sh" down || true' EXIT
fi

say "stack"
# If stack.sh has to build payq-worker to migrate, it builds build/ exactly as
# below, so that build is not thrown away and redone.
stack_env=$(BUILD_DIR=$REPO/build PAYQ_CMAKE_ARGS="${NORMAL_ARGS[*]}" \
    bash "$REPO/tests/stack.sh" up)
eval "$stack_env"
export AMQP_URL DATABASE_URL PAYQ_MGMT_URL PAYQ_STACK_DIR

declare -a summary=()
failed=0

# suite NAME BUILD_DIR CMAKE_ARGS... -- CTEST_ARGS...
suite() {
    local name=$1 dir=$2 t0=$SECONDS result=passed
    shift 2
    local -a cmake_args=()
    while (($#)) && [[ $1 != -- ]]; do cmake_args+=("$1"); shift; done
    shift
    say "$name: configure and build ($dir)"
    if ! cmake -S "$REPO" -B "$dir" "${cmake_args[@]}" >&2 ||
        ! cmake --build "$dir" -j "$JOBS" >&2; then
        result="BUILD FAILED"
    else
        say "$name: ctest"
        # --no-tests=error: a run that selects no test at all is a failure,
        # never a silent pass.
        ctest --test-dir "$dir" --output-on-failure --no-tests=error "$@" >&2 ||
            result="TESTS FAILED"
    fi
    [[ $result == passed ]] || failed=1
    summary+=("$(printf '%-10s %-14s %4ds' "$name" "$result" $((SECONDS - t0)))")
}

suite normal "$REPO/build" "${NORMAL_ARGS[@]}" -- "$@"

# After every test run, every invariant must still hold over the whole
# database (all runs so far, all tests): the ledger balances, no overdraft,
# history rebuilds state, one outbox event per state change.
say "invariant checker"
if "$REPO/build/payq-worker" check >&2; then
    summary+=("$(printf '%-10s %-14s' checker passed)")
else
    summary+=("$(printf '%-10s %-14s' checker FAILED)")
    failed=1
fi

if [[ ${PAYQ_SKIP_ASAN:-0} == 1 ]]; then
    summary+=("$(printf '%-10s %-14s' sanitizer 'skipped (PAYQ_SKIP_ASAN=1)')")
else
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    if [[ -f $REPO/tests/lsan.supp ]]; then
        export LSAN_OPTIONS=suppressions=$REPO/tests/lsan.supp:print_suppressions=0
    fi
    suite sanitizer "$REPO/build-asan" "${ASAN_ARGS[@]}" -- "$@"
fi

# Fuzzing: the libFuzzer harnesses (clang), each for PAYQ_FUZZ_SECONDS from
# the seed corpus in tests/fuzz/corpus; a crash fails the run and leaves its
# input in build-fuzz/tests/ (add it to the corpus once fixed).
if [[ ${PAYQ_SKIP_FUZZ:-0} == 1 ]]; then
    summary+=("$(printf '%-10s %-14s' fuzz 'skipped (PAYQ_SKIP_FUZZ=1)')")
elif ! command -v clang >/dev/null; then
    summary+=("$(printf '%-10s %-14s' fuzz 'skipped (no clang)')")
    [[ ${CI:-} == true ]] && failed=1
else
    CC=clang suite fuzz "$REPO/build-fuzz" -DPAYQ_FUZZ=ON -DPAYQ_WERROR=ON \
        -DPAYQ_FUZZ_SECONDS="${PAYQ_FUZZ_SECONDS:-30}" -- -L fuzz
fi

say "summary"
printf '%s\n' "${summary[@]}" >&2
if [[ ${PAYQ_STOP_STACK:-0} != 1 ]]; then
    stack=
    for v in PAYQ_STACK_DIR PAYQ_AMQP_PORT PAYQ_MGMT_PORT PAYQ_PROM_PORT PAYQ_DIST_PORT PAYQ_PG_PORT; do
        if [[ -n ${!v:-} && ( $v != PAYQ_STACK_DIR || ${!v} != "$REPO/.stack" ) ]]; then
            stack+="$v=${!v} "
        fi
    done
    stack+="bash $REPO/tests/stack.sh"
    printf '\nThe stack is still running (%s, %s).\nUse it: eval "$(%s env)"   Stop it: %s down\n' \
        "$AMQP_URL" "$DATABASE_URL" "$stack" "$stack" >&2
fi
exit "$failed"
