/*
 * provider.c - the provider interface and the simulated provider.
 */
#include "provider.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int provider_call(provider_t *p, const json_t *call, struct prov_answer *out)
{
    memset(out, 0, sizeof *out);
    return p->ops->call(p, call, out);
}

void provider_free(provider_t *p)
{
    if (p)
        p->ops->free(p);
}

bool provider_step(provider_t *p, const json_t *call, char **answer, char *err, size_t errlen,
                   long *retry_after_ms)
{
    struct prov_answer a;
    int rc = provider_call(p, call, &a);
    *retry_after_ms = 0;
    if (rc != PAYQ_OK || a.status == PROV_TRANSIENT) {
        snprintf(err, errlen, "%s", rc != PAYQ_OK ? payq_strerror(rc) : a.error);
        *retry_after_ms = a.retry_after_ms;
        prov_answer_clear(&a);
        return false;
    }
    free(*answer);
    *answer = a.json;
    a.json = NULL;
    prov_answer_clear(&a);
    return true;
}

void prov_answer_clear(struct prov_answer *a)
{
    free(a->json);
    memset(a, 0, sizeof *a);
}

struct sim {
    struct provider base;
    db_t *db;
    struct provider_sim_opts opts;
    unsigned int seed;
};

static void transient(struct prov_answer *out, const char *what, const char *detail)
{
    out->status = PROV_TRANSIENT;
    snprintf(out->error, sizeof out->error, "%s%s%s", what, detail[0] ? ": " : "", detail);
}

static int sim_call(provider_t *p, const json_t *call, struct prov_answer *out)
{
    struct sim *s = (struct sim *)p;
    const char *op = json_string_value(json_object_get(call, "op"));
    const char *key = json_string_value(json_object_get(call, "key"));
    const char *token = json_string_value(json_object_get(call, "token"));
    if (!op || !key) {
        transient(out, "malformed provider call", "");
        return PAYQ_OK;
    }
    /* The card behind a capture/void/refund is known to the provider by
     * auth_id; the simulated network effects are decided by its token. */
    if (token && strcmp(token, "tok_flaky") == 0 &&
        (int)(rand_r(&s->seed) % 100) < s->opts.flaky_percent) {
        transient(out, "provider unavailable (simulated)", "tok_flaky");
        return PAYQ_OK;
    }
    if (token && strcmp(token, "tok_slow") == 0 && s->opts.slow_ms > 0) {
        struct timespec ts = { s->opts.slow_ms / 1000, (s->opts.slow_ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
    }
    char *request = json_dumps(call, JSON_COMPACT);
    if (!request)
        return PAYQ_ERR_NOMEM;
    const char *params[3] = { key, op, request };
    PGresult *res = PQexecParams(db_conn(s->db), "SELECT payq_sim.perform($1, $2, $3::jsonb)::text",
                                 3, NULL, params, NULL, NULL, 0);
    free(request);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        db_fail(s->db, res);
        transient(out, "provider unreachable", db_error(s->db));
        return PAYQ_OK;
    }
    const char *text = PQgetvalue(res, 0, 0);
    json_t *answer = json_loads(text, 0, NULL);
    const char *status = answer ? json_string_value(json_object_get(answer, "status")) : NULL;
    if (!status || strcmp(status, "timeout") == 0) {
        transient(out, "provider timed out (simulated)", token ? token : op);
    } else if (strcmp(status, "busy") == 0) {
        transient(out, "provider busy, asked to retry later (simulated)", token ? token : op);
        out->retry_after_ms = (long)json_integer_value(json_object_get(answer, "retry_after_ms"));
    } else {
        out->status = strcmp(status, "approved") == 0 ? PROV_APPROVED : PROV_DECLINED;
        out->json = strdup(text);
    }
    json_decref(answer);
    PQclear(res);
    if (out->status != PROV_TRANSIENT && !out->json)
        return PAYQ_ERR_NOMEM;
    return PAYQ_OK;
}

static void sim_free(provider_t *p)
{
    free(p);
}

static const struct provider_ops sim_ops = { sim_call, sim_free };

int provider_sim_new(db_t *db, const struct provider_sim_opts *opts, provider_t **out)
{
    struct sim *s = calloc(1, sizeof *s);
    if (!s)
        return PAYQ_ERR_NOMEM;
    s->base.ops = &sim_ops;
    s->db = db;
    s->opts = *opts;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    s->seed = (unsigned int)(ts.tv_nsec ^ (long)(uintptr_t)s);
    *out = &s->base;
    return PAYQ_OK;
}
