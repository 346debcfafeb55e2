#!/usr/bin/env bash
# tests/integration/test_cluster.sh BUILD_DIR - the ctest `test_cluster`
# (label cluster): starts a fresh three-node RabbitMQ cluster
# (tests/cluster.sh, in BUILD_DIR/cluster unless PAYQ_CLUSTER_DIR is set),
# runs BUILD_DIR/test_cluster against it with AMQP_URL = the list of its
# nodes and the DATABASE_URL of tests/stack.sh, and always stops and deletes
# the cluster afterwards (PAYQ_CLUSTER_KEEP=1 leaves it running).
set -euo pipefail

BUILD=$(cd "$1" && pwd -P)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
[[ -n ${DATABASE_URL:-} ]] || {
    echo "test_cluster needs DATABASE_URL: eval \"\$(bash tests/stack.sh env)\" after bash tests/stack.sh up" >&2
    exit 1
}
export PAYQ_CLUSTER_DIR=${PAYQ_CLUSTER_DIR:-$BUILD/cluster}
t0=$SECONDS
finish() {
    local rc=$?
    if [[ ${PAYQ_CLUSTER_KEEP:-0} == 1 ]]; then
        echo "# the cluster keeps running: bash $REPO/tests/cluster.sh status (PAYQ_CLUSTER_DIR=$PAYQ_CLUSTER_DIR)" >&2
    else
        bash "$REPO/tests/cluster.sh" down --purge >&2 || true
    fi
    echo "# test_cluster: $((SECONDS - t0)) s in all" >&2
    exit "$rc"
}
trap finish EXIT
# A cluster left by an interrupted run starts from scratch.
bash "$REPO/tests/cluster.sh" down --purge >&2
env_lines=$(bash "$REPO/tests/cluster.sh" up)
eval "$env_lines"
echo "# cluster up after $((SECONDS - t0)) s: AMQP_URL=${AMQP_URL//payq:payq@/payq:***@}" >&2
"$BUILD/test_cluster"
