/*
 * topology.h - the RabbitMQ objects of CONTRACT.md, as data.
 *
 * One table describes every exchange, queue and binding payq uses; the worker
 * declares it at start (mq_declare_topology) and rabbitmq/definitions.json
 * holds the same objects for operators who import definitions first. A unit
 * test reads definitions.json and checks it equals this table, so the two
 * cannot drift apart.
 */
#ifndef PAYQ_TOPOLOGY_H
#define PAYQ_TOPOLOGY_H

#include <stddef.h>

#define PAYQ_X_COMMANDS "payq.commands"
#define PAYQ_Q_COMMANDS "payq.commands"
#define PAYQ_X_RETRY "payq.retry"
#define PAYQ_X_DLX "payq.dlx"
#define PAYQ_Q_DLQ "payq.dlq"
#define PAYQ_X_EVENTS "payq.events"
/* Not x-prefixed: a headers exchange ignores x- headers when matching. */
#define PAYQ_RETRY_TIER_HEADER "payq-tier"

/* The work queue's backstop against a message that kills every worker that
 * touches it: after this many deliveries the broker dead-letters it. */
#define PAYQ_DELIVERY_LIMIT 10

struct topo_arg {
    const char *name;
    enum { TOPO_STR, TOPO_INT } type;
    const char *s;
    long long i;
};

#define TOPO_MAX_ARGS 6

struct topo_exchange {
    const char *name;
    const char *type; /* "topic", "headers", ... */
};

struct topo_queue {
    const char *name;
    struct topo_arg args[TOPO_MAX_ARGS];
    size_t nargs;
};

struct topo_binding {
    const char *exchange;
    const char *queue;
    const char *routing_key;
    struct topo_arg args[TOPO_MAX_ARGS];
    size_t nargs;
};

/* A delay tier: a queue whose messages wait `delay_ms` then return to work. */
struct topo_tier {
    const char *name;  /* the tier's label, e.g. "5s"; its queue is payq.retry.<name> */
    const char *queue; /* "payq.retry.5s" */
    long long delay_ms;
};

/* The shortest tier whose delay is at least delay_ms (the longest tier for
 * anything longer): a backoff delay is rounded up to a tier. */
const struct topo_tier *topo_tier_for(long delay_ms);

extern const struct topo_exchange topo_exchanges[];
extern const size_t topo_nexchanges;
extern const struct topo_queue topo_queues[];
extern const size_t topo_nqueues;
extern const struct topo_binding topo_bindings[];
extern const size_t topo_nbindings;
extern const struct topo_tier topo_tiers[];
extern const size_t topo_ntiers;

#endif
