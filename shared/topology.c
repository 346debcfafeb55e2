/*
 * topology.c - the objects of CONTRACT.md "Topology".
 *
 * Every queue is a quorum queue (replicated once the broker is a cluster).
 * Dead-lettering is at-least-once, which quorum queues only offer with
 * overflow=reject-publish: a message is removed from its queue only after the
 * target queue confirmed it, so a broker crash mid-dead-letter loses nothing.
 *
 * Retries: the worker publishes a retried copy to the headers exchange
 * payq.retry with header payq-tier=<tier> and the command's own routing
 * key. The tier queue holds it for its fixed TTL (never a per-message TTL,
 * which blocks the head of the queue), then dead-letters it to payq.commands
 * with the routing key it was published with, so it reaches the work queue
 * as the same command type.
 */
#include "topology.h"

#define ARG_S(n, v) { (n), TOPO_STR, (v), 0 }
#define ARG_I(n, v) { (n), TOPO_INT, NULL, (v) }

#define TIER_QUEUE(q, ms)                                                     \
    { (q),                                                                    \
      { ARG_S("x-queue-type", "quorum"),                                      \
        ARG_I("x-message-ttl", (ms)),                                         \
        ARG_S("x-dead-letter-exchange", PAYQ_X_COMMANDS),                     \
        ARG_S("x-dead-letter-strategy", "at-least-once"),                     \
        ARG_S("x-overflow", "reject-publish") },                              \
      5 }

#define TIER_BINDING(q, tier)                                                 \
    { PAYQ_X_RETRY, (q), "",                                                  \
      { ARG_S("x-match", "all"), ARG_S(PAYQ_RETRY_TIER_HEADER, (tier)) },     \
      2 }

const struct topo_exchange topo_exchanges[] = {
    { PAYQ_X_COMMANDS, "topic" },
    { PAYQ_X_RETRY, "headers" },
    { PAYQ_X_DLX, "topic" },
    { PAYQ_X_EVENTS, "topic" },
};
const size_t topo_nexchanges = sizeof topo_exchanges / sizeof topo_exchanges[0];

const struct topo_tier topo_tiers[] = {
    { "1s", "payq.retry.1s", 1000 },
    { "5s", "payq.retry.5s", 5000 },
    { "30s", "payq.retry.30s", 30000 },
    { "2m", "payq.retry.2m", 120000 },
    { "10m", "payq.retry.10m", 600000 },
    { "1h", "payq.retry.1h", 3600000 },
};
const size_t topo_ntiers = sizeof topo_tiers / sizeof topo_tiers[0];

const struct topo_queue topo_queues[] = {
    { PAYQ_Q_COMMANDS,
      { ARG_S("x-queue-type", "quorum"),
        ARG_I("x-delivery-limit", PAYQ_DELIVERY_LIMIT),
        ARG_S("x-dead-letter-exchange", PAYQ_X_DLX),
        ARG_S("x-dead-letter-strategy", "at-least-once"),
        ARG_S("x-overflow", "reject-publish") },
      5 },
    TIER_QUEUE("payq.retry.1s", 1000),
    TIER_QUEUE("payq.retry.5s", 5000),
    TIER_QUEUE("payq.retry.30s", 30000),
    TIER_QUEUE("payq.retry.2m", 120000),
    TIER_QUEUE("payq.retry.10m", 600000),
    TIER_QUEUE("payq.retry.1h", 3600000),
    { PAYQ_Q_DLQ, { ARG_S("x-queue-type", "quorum") }, 1 },
};
const size_t topo_nqueues = sizeof topo_queues / sizeof topo_queues[0];

const struct topo_binding topo_bindings[] = {
    { PAYQ_X_COMMANDS, PAYQ_Q_COMMANDS, "#", { { 0 } }, 0 },
    TIER_BINDING("payq.retry.1s", "1s"),
    TIER_BINDING("payq.retry.5s", "5s"),
    TIER_BINDING("payq.retry.30s", "30s"),
    TIER_BINDING("payq.retry.2m", "2m"),
    TIER_BINDING("payq.retry.10m", "10m"),
    TIER_BINDING("payq.retry.1h", "1h"),
    { PAYQ_X_DLX, PAYQ_Q_DLQ, "#", { { 0 } }, 0 },
};
const size_t topo_nbindings = sizeof topo_bindings / sizeof topo_bindings[0];

const struct topo_tier *topo_tier_for(long delay_ms)
{
    for (size_t i = 0; i < topo_ntiers; i++)
        if (topo_tiers[i].delay_ms >= delay_ms)
            return &topo_tiers[i];
    return &topo_tiers[topo_ntiers - 1];
}
