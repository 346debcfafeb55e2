/*
 * apply.h - from a delivery to its outcome.
 *
 * apply_delivery validates the delivery (cmd.h), applies it through
 * payq.apply_command() in one transaction, and says what the worker must do
 * next. It publishes nothing and acks nothing: worker.c does that, after
 * this has returned, so the ack always follows a durable outcome.
 */
#ifndef PAYQ_APPLY_H
#define PAYQ_APPLY_H

#include <stdbool.h>

#include "db.h"
#include "fault.h"
#include "mq.h"
#include "provider.h"

enum outcome_kind {
    OUTCOME_DONE,        /* applied or refused by the business: reply, ack */
    OUTCOME_DEAD_LETTER, /* can never be applied as sent: DLQ, reply, ack */
    OUTCOME_RETRY,       /* transient trouble: a delayed retry, ack */
    OUTCOME_DB_LOST,     /* the database connection is gone: reconnect, then apply again */
    OUTCOME_BUSY         /* not applied: a wallet it names is held by another batch; the
                            worker hands it to its next batch (apply_batch only) */
};

struct outcome {
    enum outcome_kind kind;
    char reason[32];    /* x-payq-reason for dead letters: a CONTRACT.md code */
    char error[1024];   /* human text (dead letters, retries, logs) */
    char sqlstate[6];   /* when the database failed */
    char *reply;        /* JSON reply body (malloc'd) or NULL; owned by the outcome */
    bool redact;        /* the body holds a card number: mask it before it goes anywhere */
    long retry_after_ms; /* a retry must wait at least this long (the provider said so) */
    bool drop_headers;  /* the headers broke a limit: the dead letter does not copy them */
    bool dependency;    /* a retry caused by a dependency (database, provider) failing: it
                           counts towards opening the circuit */
    char command[32];   /* for logs */
    char id[65];        /* business id, for logs */
};

void outcome_clear(struct outcome *o);

/* Limits on the AMQP headers of a command (a bigger set is schema_invalid):
 * they keep a dead letter's copy well inside the broker's frame size. */
#define HEADERS_MAX 64
#define HEADER_KEY_MAX 128
#define HEADERS_BYTES_MAX (16 * 1024)

struct apply_opts {
    provider_t *provider; /* the payment provider (bound to the same db) */
    struct fault *fault;  /* fault injection (testing); may be NULL */
};

/* Fills *out (which the caller clears with outcome_clear). */
void apply_delivery(db_t *db, const struct mq_delivery *d, const struct apply_opts *opts,
                    struct outcome *out);

/*
 * Applies up to n deliveries with one database transaction for all their
 * first phases (payq.apply_batch: one subtransaction per command, so one
 * failing command never fails its neighbours); commands that need the
 * provider, or whose entry failed, go on alone. outs[i] is the outcome of
 * ds[i]; each is cleared by the caller with outcome_clear.
 *
 * A command whose wallet another transaction holds is not applied
 * (OUTCOME_BUSY) unless wait[i] is true: then it waits for the wallet. wait
 * may be NULL (no command waits). A command is passed over at most once if
 * the caller sets wait[i] when it hands a busy one to its next batch.
 */
void apply_batch(db_t *db, struct mq_delivery *const *ds, const bool *wait, size_t n,
                 const struct apply_opts *opts, struct outcome *outs);

#endif
