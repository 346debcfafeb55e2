/*
 * provider.h - the payment provider (card processor) behind a small interface.
 *
 * A saga phase that needs the provider stops and hands the worker a call
 * (a JSON object: op = authorize | capture | void | refund, key = the
 * idempotency key derived from the business id and the step, and the op's
 * fields). The worker passes it to provider_call, outside any database
 * transaction, and gives the answer to the next phase. A provider must be
 * idempotent by key, as real processors are with an Idempotency-Key header:
 * asking again after a crash returns the first answer and never charges
 * twice.
 *
 * payq ships one implementation, the simulated provider (provider_sim_new),
 * deterministic by card token; an HTTP adapter for a Stripe-like API can
 * implement the same interface.
 */
#ifndef PAYQ_PROVIDER_H
#define PAYQ_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "db.h"
#include "status.h"

enum prov_status {
    PROV_APPROVED,
    PROV_DECLINED, /* a business answer: the phase records it */
    PROV_TRANSIENT /* timeout, unavailable, 5xx: retry the command later */
};

struct prov_answer {
    enum prov_status status;
    char *json;       /* the answer for the database (malloc'd; NULL when transient) */
    char error[256];  /* what went wrong when transient */
    long retry_after_ms; /* transient: the provider asked to wait at least this long (0 = no) */
};

typedef struct provider provider_t;

struct provider_ops {
    int (*call)(provider_t *p, const json_t *call, struct prov_answer *out);
    void (*free)(provider_t *p);
};

struct provider {
    const struct provider_ops *ops;
};

/* Makes one call; fills *out (release with prov_answer_clear). Returns
 * PAYQ_OK whenever *out was filled, whatever its status. */
int provider_call(provider_t *p, const json_t *call, struct prov_answer *out) PAYQ_MUSTCHECK;
void provider_free(provider_t *p);

/*
 * One step of a saga's conversation with the provider: makes the call and,
 * on a definite answer (approved or declined), replaces *answer (freeing the
 * old one) with the answer's JSON for the next phase, and returns true.
 * Returns false when the call failed transiently: err says why,
 * *retry_after_ms how long the provider asked to wait (0 = no wish), and
 * *answer is unchanged.
 */
bool provider_step(provider_t *p, const json_t *call, char **answer, char *err, size_t errlen,
                   long *retry_after_ms);
void prov_answer_clear(struct prov_answer *a);

struct provider_sim_opts {
    int flaky_percent; /* tok_flaky: chance (0..100) that a call fails transiently */
    long slow_ms;      /* tok_slow: delay before answering */
};

/* The simulated provider; it keeps its state in schema payq_sim through
 * `db` (borrowed, not freed). */
int provider_sim_new(db_t *db, const struct provider_sim_opts *opts, provider_t **out)
    PAYQ_MUSTCHECK;

#endif
