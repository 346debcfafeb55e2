/*
 * harness.h - helpers for payq's integration tests.
 *
 * The tests run against the real RabbitMQ and PostgreSQL named by AMQP_URL
 * and DATABASE_URL (`bash tests/stack.sh up` starts both), start the real
 * payq-worker binary as a child process, publish real messages and assert
 * on what ends up in the database and the queues. Every id a test creates
 * carries a per-run prefix (h_id), so runs never see each other's data.
 */
#ifndef PAYQ_HARNESS_H
#define PAYQ_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "mq.h"

/* Reads AMQP_URL / DATABASE_URL; fails the test run with a hint if unset. */
void h_init(void);

/* A unique id for this run: "<prefix>-<name>"; valid until the test exits. */
const char *h_id(const char *name);

/* Starts build/worker/payq-worker run; env entries "NAME=value" are added.
 * Returns once its threads consume (or fails the test). */
pid_t h_worker_start(const char *const *extra_env);
/* Sends sig and waits for the exit; returns the wait status. */
int h_worker_stop(pid_t pid, int sig);
/* SIGKILLs every worker this test started and has not reaped (a test's
 * teardown, so a failed assertion leaves no worker behind). */
void h_kill_workers(void);
/* Waits for the child to exit by itself, up to timeout_ms; wait status or -1. */
int h_worker_wait(pid_t pid, int timeout_ms);

/* A publisher connection that consumes direct replies. */
mq_t *h_mq(void);

/* Publishes body on routing key rk to payq.commands with reply-to; message_id
 * may be NULL (then none is set). Waits for the broker's confirm. */
void h_publish(mq_t *mq, const char *rk, const char *message_id, const char *body);
/* Same, with a content type (NULL = absent) and no reply-to when reply is false. */
void h_publish_ex(mq_t *mq, const char *rk, const char *message_id, const char *content_type,
                  const char *body, size_t len, bool reply);

/* The next reply, parsed, or NULL after timeout_ms. Caller json_decref's. */
json_t *h_reply(mq_t *mq, int timeout_ms);
/* Publishes and waits for the reply (fails the test on timeout). */
json_t *h_call(mq_t *mq, const char *rk, const char *message_id, const char *body);
/* reply["status"] / reply["code"] or "" */
const char *h_status(json_t *reply);
const char *h_code(json_t *reply);

/* Takes the dead letter whose message_id is `message_id` off payq.dlq
 * (acking it), waiting up to timeout_ms; NULL if none. Others are left. */
struct mq_delivery *h_dlq_take(const char *message_id, int timeout_ms);
/* A header of a delivery as text ("" when absent). Static storage. */
const char *h_header(const struct mq_delivery *d, const char *name);

/* The database. */
PGconn *h_db(void);
/* Runs a query with text parameters and returns the first column of the
 * first row as int64 (fails the test on error or NULL). */
int64_t h_int(const char *sql, int nparams, const char *const *params);
/* Same for text, whole; valid until the next call. */
const char *h_text(const char *sql, int nparams, const char *const *params);
/* Runs a statement; returns its SQLSTATE ("" on success). Static storage. */
const char *h_exec(const char *sql, int nparams, const char *const *params);
/* Runs a statement or query on connection c (a second session, another
 * database); fails the test on error. The caller clears the result. */
PGresult *h_run(PGconn *c, const char *sql, int nparams, const char *const *params);
/* Applies one command on connection c the way a worker's transaction does
 * (payq.apply_command, its body made from fmt) and fails the test unless
 * the reply's status is `status`. */
void h_apply(PGconn *c, const char *command, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Posted balance of an account (payq.account_balances). */
int64_t h_balance(const char *account);

/* Runs `payq-worker check` over the whole database; fails the test on any
 * violation. */
void h_check_invariants(void);

/* Opens a customer and a merchant account and funds the customer; returns
 * nothing, fails the test on any non-success. */
void h_open(mq_t *mq, const char *account, const char *currency, const char *kind);
void h_deposit(mq_t *mq, const char *deposit_id, const char *account, int64_t amount,
               const char *currency);

#endif
