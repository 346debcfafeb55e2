/*
 * overview.h - payq at a glance (payq-worker status): queue depths and
 * consumers from the broker, payments, sagas in flight, throughput, the
 * outbox backlog and the dead letters from the database, as tables for a
 * terminal or as one JSON object for scripts. (Named overview, not status,
 * so it never shadows shared/status.h, the error codes.)
 */
#ifndef PAYQ_OVERVIEW_H
#define PAYQ_OVERVIEW_H

#include <stdio.h>

#include "db.h"
#include "status.h"

struct mq_tls;

/* What status needs; strings are not owned and must outlive the call. */
struct status_config {
    const char *amqp_url;          /* the broker; credentials also log in to the management API */
    const char *database_url;      /* "" or NULL = libpq's PG* variables */
    const char *mgmt_url;          /* RabbitMQ management API (unacked counts); NULL or "" = skip */
    long statement_timeout_ms;     /* bound on each query */
    int json;                      /* one JSON object instead of tables */
    const struct mq_tls *amqp_tls; /* amqps:// settings (mq.h); may be NULL */
};

/*
 * Reads the broker and the database and prints the status to out. Prints
 * what it can reach even when one side is down; errors go to the log
 * (stderr) with a hint. Returns PAYQ_OK, PAYQ_ERR_AMQP when the broker could
 * not be read, PAYQ_ERR_DB when the database could not (the broker wins when
 * both fail), or PAYQ_ERR_NOMEM.
 */
int status_print(const struct status_config *cfg, FILE *out) PAYQ_MUSTCHECK;

#endif
