/*
 * worker.h - the consuming side of payq-worker.
 *
 * Each worker thread owns one AMQP connection and one PostgreSQL connection,
 * consumes the work queue with manual acks and a prefetch, and for every
 * delivery: validates the command, applies it in one transaction, publishes
 * its outcome (reply, dead letter or delayed retry) with publisher confirms,
 * and only then acks. A crash anywhere before the ack means redelivery,
 * which the database's idempotency keys turn into "no second effect".
 */
#ifndef PAYQ_WORKER_H
#define PAYQ_WORKER_H

#include <stdatomic.h>

#include "fault.h"
#include "mq.h"

struct worker_config {
    const char *amqp_url;
    struct mq_tls amqp_tls; /* amqps:// CA file and client certificate */
    const char *database_url;
    const char *queue;
    const char *sql_dir;
    const char *log_level;
    const char *prefix;         /* report: id prefix */
    const char *fault;          /* testing only: "after_commit", ... (see fault.h) */
    long threads;
    long prefetch;
    long batch;                 /* deliveries applied per database transaction, at most */
    long batch_wait_ms;         /* how long a batch may wait to fill once one is in hand */
    long heartbeat;
    long statement_timeout_ms;
    long max_attempts;
    long retry_base_ms;
    long retry_cap_ms;
    long retry_deadline_s;      /* give up this long after the first failure */
    long poison_deliveries;     /* dead-letter as poison after this many deliveries */
    long circuit_threshold;     /* consecutive transient failures that open the circuit */
    long inbox_retention_hours;
    long reaper_interval_s;     /* how often thread 0 runs the reaper */
    long stuck_after_s;         /* a saga in flight this long is resumed by the reaper */ /* message-level idempotency keys are kept this long */
    long sim_flaky_percent;     /* simulated provider: tok_flaky failure rate */
    long sim_slow_ms;           /* simulated provider: tok_slow delay */
    long relay_batch;           /* outbox events per relay publish batch */
    long metrics_port;          /* /metrics, /healthz, /readyz (0 = off) */
    const char *metrics_address; /* numeric IP to listen on */
    int json;                   /* status: one JSON object instead of tables */
    const char *mgmt_url;       /* status: RabbitMQ management API, for unacked counts */
    int no_migrate;
    int no_declare;
    int no_relay;               /* do not run the outbox relay thread */
};

struct http_health;

struct worker_shared {
    const struct worker_config *cfg;
    atomic_int stop; /* set by the signal thread: finish the delivery in hand, then exit */
    atomic_int relay_stop; /* set once the consumer threads stopped: flush the outbox, exit */
    struct fault fault;
    struct http_health *health; /* readiness flags, one set per thread (http.h); may be NULL */
};

/* Runs one worker thread until shared->stop; arg is a struct worker_thread_arg. */
struct worker_thread_arg {
    struct worker_shared *shared;
    int index;
};
void *worker_thread(void *arg);

#endif
