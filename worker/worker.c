/*
 * worker.c - a worker thread: connections, the consume loop, and the
 * publication of each outcome before its ack.
 */
#include "worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "apply.h"
#include "backoff.h"
#include "cmd.h"
#include "config.h"
#include "db.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "mq.h"
#include "mqjson.h"
#include "provider.h"
#include "topology.h"

/* How long to wait for the broker to confirm an outcome before giving up on
 * the connection (the delivery is then redelivered). */
#define CONFIRM_TIMEOUT_MS 30000

struct thread_ctx {
    const struct worker_config *cfg;
    struct worker_shared *shared;
    int index;
    char name[128];
    mq_t *mq;
    db_t *db;
    provider_t *provider; /* bound to db: remade with it */
    struct backoff reconnect;
    /* Circuit breaker: consecutive dependency failures; open = probing. */
    int failures_in_a_row;
    bool circuit_open;
    struct backoff circuit;
    double taken_at; /* metrics_now() when the deliveries in hand were taken */
};

static bool stopping(const struct thread_ctx *t)
{
    return atomic_load(&t->shared->stop) != 0;
}

/* Sleeps up to ms, in short steps so a stop request is seen at once. */
static void nap(const struct thread_ctx *t, long ms)
{
    while (ms > 0 && !stopping(t)) {
        long step = ms < 100 ? ms : 100;
        struct timespec ts = { 0, step * 1000000L };
        nanosleep(&ts, NULL);
        ms -= step;
    }
}

/* Opens or closes this thread's circuit; readiness and the payq_circuit_open
 * gauge follow. */
static void set_circuit(struct thread_ctx *t, bool open)
{
    t->circuit_open = open;
    http_health_set_circuit(t->shared->health, t->index, open);
}

static void rfc3339_now(char *buf, size_t len)
{
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03ldZ", now.tv_nsec / 1000000);
}

/* Headers of a republished copy: the original ones except payq's own,
 * followed by payq's. Strings point into the delivery or into `store`. */
struct headers {
    amqp_table_entry_t e[96];
    int n;
    char store[8][1100];
    int nstore;
};

static void h_keep_original(struct headers *h, const amqp_basic_properties_t *p)
{
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
        return;
    for (int i = 0; i < p->headers.num_entries && h->n < 80; i++) {
        const amqp_table_entry_t *e = &p->headers.entries[i];
        if ((e->key.len >= 7 && memcmp(e->key.bytes, "x-payq-", 7) == 0) ||
            (e->key.len == strlen(PAYQ_RETRY_TIER_HEADER) &&
             memcmp(e->key.bytes, PAYQ_RETRY_TIER_HEADER, e->key.len) == 0))
            continue;
        h->e[h->n++] = *e;
    }
}

static void h_str(struct headers *h, const char *key, const char *value)
{
    char *s = h->store[h->nstore++];
    snprintf(s, sizeof h->store[0], "%s", value);
    h->e[h->n].key = amqp_cstring_bytes(key);
    h->e[h->n].value.kind = AMQP_FIELD_KIND_UTF8;
    h->e[h->n].value.value.bytes = amqp_cstring_bytes(s);
    h->n++;
}

static void h_int(struct headers *h, const char *key, int64_t v)
{
    h->e[h->n].key = amqp_cstring_bytes(key);
    h->e[h->n].value.kind = AMQP_FIELD_KIND_I64;
    h->e[h->n].value.value.i64 = v;
    h->n++;
}

static void h_bool(struct headers *h, const char *key, bool v)
{
    h->e[h->n].key = amqp_cstring_bytes(key);
    h->e[h->n].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    h->e[h->n].value.value.boolean = v;
    h->n++;
}

/* Copies the header value `key` of the delivery into `out`, or `def`. */
static void header_or(const amqp_basic_properties_t *p, const char *key, const char *def,
                      char *out, size_t len)
{
    amqp_bytes_t b;
    if (mq_header_str(p, key, &b) && b.len < len) {
        memcpy(out, b.bytes, b.len);
        out[b.len] = 0;
    } else {
        snprintf(out, len, "%s", def);
    }
}

/*
 * Fills the headers and properties of a copy of `d` bound for the DLQ or a
 * delay tier: the original properties (user_id moved to a header, since only
 * its publisher may set it), the original headers, and payq's.
 */
static void copy_props(const struct mq_delivery *d, const struct outcome *o, int attempts,
                       struct headers *h, amqp_basic_properties_t *props)
{
    const amqp_basic_properties_t *p = &d->message.properties;
    char now[40], first[64], orig_x[256], orig_rk[256];
    rfc3339_now(now, sizeof now);
    header_or(p, "x-payq-first-failure-at", now, first, sizeof first);
    header_or(p, "x-payq-original-exchange", d->exchange, orig_x, sizeof orig_x);
    header_or(p, "x-payq-original-routing-key", d->routing_key, orig_rk, sizeof orig_rk);

    h->n = h->nstore = 0;
    if (!o->drop_headers)
        h_keep_original(h, p);
    if (o->reason[0])
        h_str(h, "x-payq-reason", o->reason);
    h_str(h, "x-payq-error", o->error); /* at most 1 KiB: outcome.error's size */
    h_int(h, "x-payq-attempts", attempts);
    h_str(h, "x-payq-first-failure-at", first);
    h_str(h, "x-payq-last-failure-at", now);
    h_str(h, "x-payq-original-exchange", orig_x);
    h_str(h, "x-payq-original-routing-key", orig_rk);
    if (p->_flags & AMQP_BASIC_USER_ID_FLAG) {
        char user[256];
        snprintf(user, sizeof user, "%.*s", (int)p->user_id.len, (const char *)p->user_id.bytes);
        h_str(h, "x-payq-user-id", user);
    } else {
        amqp_bytes_t u;
        if (mq_header_str(p, "x-payq-user-id", &u)) {
            char user[256];
            snprintf(user, sizeof user, "%.*s", (int)u.len, (const char *)u.bytes);
            h_str(h, "x-payq-user-id", user);
        }
    }

    *props = *p;
    props->_flags &= ~(amqp_flags_t)AMQP_BASIC_USER_ID_FLAG;
    props->_flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    props->delivery_mode = AMQP_DELIVERY_PERSISTENT;
    props->headers.num_entries = h->n;
    props->headers.entries = h->e;
}

/* True when the first failure (header) is more than deadline_s ago. */
static bool past_deadline(const struct mq_delivery *d, long deadline_s)
{
    char first[64];
    header_or(&d->message.properties, "x-payq-first-failure-at", "", first, sizeof first);
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!first[0] || !strptime(first, "%Y-%m-%dT%H:%M:%S", &tm))
        return false;
    return time(NULL) - timegm(&tm) > deadline_s;
}

static int attempts_so_far(const struct mq_delivery *d)
{
    int64_t n;
    if (mq_header_int(&d->message.properties, "x-payq-attempts", &n) && n >= 0 && n < 1000000)
        return (int)n;
    return 0;
}

/* Publishes the reply, if the command asked for one (not mandatory: a
 * publisher that went away must not block the queue). */
static int publish_reply(struct thread_ctx *t, const struct mq_delivery *d,
                         const struct outcome *o)
{
    const amqp_basic_properties_t *p = &d->message.properties;
    if (!o->reply || !(p->_flags & AMQP_BASIC_REPLY_TO_FLAG) || p->reply_to.len == 0)
        return PAYQ_OK;
    char reply_to[256];
    snprintf(reply_to, sizeof reply_to, "%.*s", (int)p->reply_to.len,
             (const char *)p->reply_to.bytes);
    amqp_basic_properties_t rp;
    memset(&rp, 0, sizeof rp);
    rp._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    rp.content_type = amqp_cstring_bytes("application/json");
    rp.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) {
        rp._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        rp.correlation_id = p->correlation_id;
    }
    return mq_publish(t->mq, "", reply_to, false, &rp, o->reply, strlen(o->reply), NULL);
}

/* A NUL-terminated copy of an optional AMQP string property ("" if unset). */
static const char *prop(amqp_flags_t flags, amqp_flags_t flag, amqp_bytes_t b, char *buf,
                        size_t len)
{
    buf[0] = 0;
    if ((flags & flag) && b.len < len) {
        memcpy(buf, b.bytes, b.len);
        buf[b.len] = 0;
    }
    return buf;
}

/*
 * Archives the dead letter in payq.dead_letters (full diagnostics; the DLQ
 * copy's headers stay small) and writes its id into `id`. Best effort: if
 * the database is unreachable the copy still goes to the DLQ, without the
 * id header, and `payq-dlq sync` archives it later.
 */
static int record_dead_letter(struct thread_ctx *t, const struct mq_delivery *d,
                              const struct outcome *o, int attempts,
                              const amqp_basic_properties_t *props, const char *body, size_t len,
                              char id[40])
{
    if (!db_ok(t->db))
        return PAYQ_ERR_DB;
    const amqp_basic_properties_t *p = &d->message.properties;
    char mid[256], corr[256], exch[256], rk[256], first[64], att[16];
    json_t *pj = mq_props_to_json(props);
    char *pjs = pj ? json_dumps(pj, JSON_COMPACT) : NULL;
    json_decref(pj);
    if (!pjs)
        return PAYQ_ERR_NOMEM;
    header_or(p, "x-payq-original-exchange", d->exchange, exch, sizeof exch);
    header_or(p, "x-payq-original-routing-key", d->routing_key, rk, sizeof rk);
    header_or(p, "x-payq-first-failure-at", "", first, sizeof first);
    snprintf(att, sizeof att, "%d", attempts);
    bool redacted = false;
    amqp_table_t *hd = (amqp_table_t *)(uintptr_t)&props->headers;
    for (int i = 0; i < hd->num_entries; i++)
        if (hd->entries[i].key.len == 15 && memcmp(hd->entries[i].key.bytes, "x-payq-redacted", 15) == 0)
            redacted = true;
    const char *params[15] = {
        prop(p->_flags, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id, mid, sizeof mid)[0] ? mid : NULL,
        prop(p->_flags, AMQP_BASIC_CORRELATION_ID_FLAG, p->correlation_id, corr, sizeof corr)[0]
            ? corr : NULL,
        exch, rk, o->id[0] ? o->id : NULL, o->reason, o->error, o->sqlstate, att,
        first[0] ? first : NULL, pjs, body, redacted ? "true" : "false", t->name, NULL
    };
    int lengths[15] = { 0 };
    int formats[15] = { 0 };
    lengths[11] = (int)len;
    formats[11] = 1; /* the body as bytes */
    PGresult *res = PQexecParams(db_conn(t->db),
                                 "SELECT payq.record_dead_letter($1, $2, $3, $4, $5, $6, $7, $8,"
                                 " $9::int, $10::timestamptz, $11::jsonb, $12::bytea,"
                                 " $13::boolean, $14)",
                                 14, NULL, params, lengths, formats, 0);
    free(pjs);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        db_fail(t->db, res);
        log_warn("could not archive the dead letter (it still goes to the DLQ): %s",
                 db_error(t->db));
        return PAYQ_ERR_DB;
    }
    snprintf(id, 40, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return PAYQ_OK;
}

/* Records a transient failure in payq.failures (best effort). */
static void record_failure(struct thread_ctx *t, const struct mq_delivery *d,
                           const struct outcome *o, int attempt, const char *tier)
{
    if (!db_ok(t->db))
        return;
    const amqp_basic_properties_t *p = &d->message.properties;
    char mid[256], rk[256], att[16];
    header_or(p, "x-payq-original-routing-key", d->routing_key, rk, sizeof rk);
    snprintf(att, sizeof att, "%d", attempt);
    const char *params[9] = {
        prop(p->_flags, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id, mid, sizeof mid)[0] ? mid : NULL,
        d->message.body.bytes, rk, o->id[0] ? o->id : NULL, att, o->error, o->sqlstate, t->name,
        tier
    };
    int lengths[9] = { 0, (int)d->message.body.len };
    int formats[9] = { 0, 1 };
    PGresult *res = PQexecParams(db_conn(t->db),
                                 "SELECT payq.record_failure($1, $2::bytea, $3, $4, $5::int, $6,"
                                 " $7, $8, $9)",
                                 9, NULL, params, lengths, formats, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        db_fail(t->db, res);
        log_warn("could not record the failure: %s", db_error(t->db));
        return;
    }
    PQclear(res);
}

/* Sends a copy of the delivery to the DLQ (mandatory: it must land). */
static int publish_dead_letter(struct thread_ctx *t, const struct mq_delivery *d,
                               const struct outcome *o, int attempts)
{
    struct headers h;
    amqp_basic_properties_t props;
    copy_props(d, o, attempts, &h, &props);

    /* A card number never reaches the DLQ: mask it and say so. If the
     * parser saw one that the byte scanner cannot mask (e.g. written with
     * \u escapes), no byte of that body is kept. */
    static const char gone[] =
        "{\"redacted\":\"the body held a card number in a form that cannot be masked\"}";
    size_t len = d->message.body.len;
    char *body = malloc(len > sizeof gone ? len : sizeof gone);
    if (!body)
        return PAYQ_ERR_NOMEM;
    memcpy(body, d->message.body.bytes, len);
    if (cmd_redact_card_numbers(body, len) > 0) {
        h_bool(&h, "x-payq-redacted", true);
    } else if (o->redact) {
        len = sizeof gone - 1;
        memcpy(body, gone, len);
        h_bool(&h, "x-payq-redacted", true);
    }
    props.headers.num_entries = h.n;
    char id[40];
    if (record_dead_letter(t, d, o, attempts, &props, body, len, id) == PAYQ_OK) {
        h_str(&h, "x-payq-dead-letter-id", id);
        props.headers.num_entries = h.n;
    }

    int rc = mq_publish(t->mq, PAYQ_X_DLX, d->routing_key, true, &props, body, len, NULL);
    free(body);
    return rc;
}

/* The delay tier for the n-th retry (1-based): capped exponential backoff
 * with full jitter, rounded up to the next tier. */
static const struct topo_tier *pick_tier(const struct worker_config *cfg, int n,
                                         long at_least_ms, unsigned int *seed)
{
    long ms = backoff_full_jitter(cfg->retry_base_ms, cfg->retry_cap_ms, n - 1, seed);
    /* A dependency that said when to come back (Retry-After) is obeyed. */
    return topo_tier_for(ms > at_least_ms ? ms : at_least_ms);
}

static int publish_retry(struct thread_ctx *t, const struct mq_delivery *d,
                         const struct outcome *o, int attempts, const struct topo_tier **tier)
{
    struct headers h;
    amqp_basic_properties_t props;
    copy_props(d, o, attempts, &h, &props);
    unsigned int seed = (unsigned int)(d->tag ^ (uint64_t)time(NULL) ^ (uint64_t)t->index);
    *tier = pick_tier(t->cfg, attempts, o->retry_after_ms, &seed);
    h_str(&h, PAYQ_RETRY_TIER_HEADER, (*tier)->name);
    props.headers.num_entries = h.n;
    record_failure(t, d, o, attempts, (*tier)->name);
    return mq_publish(t->mq, PAYQ_X_RETRY, d->routing_key, true, &props,
                      d->message.body.bytes, d->message.body.len, NULL);
}

/* What a published outcome needs for its log line. */
struct settled {
    struct log_ctx lc;
    char mid[256], corr[256];
    const struct topo_tier *tier;
};

/*
 * Publishes what the outcome calls for (reply, dead letter or retry copy)
 * without waiting for the broker's confirm; the caller waits once for all.
 */
static int publish_outcome(struct thread_ctx *t, const struct mq_delivery *d, struct outcome *o,
                           struct settled *s)
{
    const amqp_basic_properties_t *p = &d->message.properties;
    prop(p->_flags, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id, s->mid, sizeof s->mid);
    prop(p->_flags, AMQP_BASIC_CORRELATION_ID_FLAG, p->correlation_id, s->corr, sizeof s->corr);
    int attempts = attempts_so_far(d) + 1;
    struct log_ctx lc = { s->mid, s->corr, o->command, o->id, attempts };
    s->lc = lc;
    s->tier = NULL;

    if (o->kind == OUTCOME_RETRY &&
        (attempts >= t->cfg->max_attempts || past_deadline(d, t->cfg->retry_deadline_s))) {
        o->kind = OUTCOME_DEAD_LETTER;
        snprintf(o->reason, sizeof o->reason, "retries_exhausted");
    }
    int rc = PAYQ_OK;
    switch (o->kind) {
    case OUTCOME_DONE:
        rc = publish_reply(t, d, o);
        break;
    case OUTCOME_DEAD_LETTER:
        rc = publish_dead_letter(t, d, o, attempts);
        if (rc == PAYQ_OK && strcmp(o->reason, "retries_exhausted") != 0 &&
            strcmp(o->reason, "poison") != 0)
            rc = publish_reply(t, d, o);
        break;
    case OUTCOME_RETRY:
        rc = publish_retry(t, d, o, attempts, &s->tier);
        break;
    case OUTCOME_DB_LOST:
        return PAYQ_ERR_DB;
    case OUTCOME_BUSY: /* never settled: handle_batch hands it to the next batch */
        return PAYQ_ERR_INVALID;
    }
    return rc;
}

static void log_outcome(const struct outcome *o, struct settled *s)
{
    switch (o->kind) {
    case OUTCOME_DONE:
        log_msg(LOG_INFO, &s->lc, "%s", o->error);
        break;
    case OUTCOME_DEAD_LETTER:
        log_msg(LOG_WARN, &s->lc, "dead-lettered: %s: %s", o->reason, o->error);
        break;
    case OUTCOME_RETRY:
        log_msg(LOG_WARN, &s->lc, "transient failure, retry in tier %s: %s", s->tier->name,
                o->error);
        break;
    case OUTCOME_DB_LOST:
    case OUTCOME_BUSY:
        break;
    }
}

/* The outcome label of payq_commands_total (metrics.h). */
static const char *outcome_name(const struct outcome *o)
{
    switch (o->kind) {
    case OUTCOME_DONE:
        /* finish() (apply.c) starts error with the reply's status. */
        if (strncmp(o->error, "authorized", 10) == 0)
            return "authorized";
        return strncmp(o->error, "failed", 6) == 0 ? "failed" : "succeeded";
    case OUTCOME_DEAD_LETTER:
        return strcmp(o->reason, "retries_exhausted") == 0 || strcmp(o->reason, "poison") == 0
                   ? "dead_lettered"
                   : "rejected";
    case OUTCOME_RETRY: return "retried";
    case OUTCOME_DB_LOST:
    case OUTCOME_BUSY: break;
    }
    return "other";
}

static void count_outcome(const struct outcome *o, const struct settled *s, double seconds)
{
    metrics_command_done(o->command, outcome_name(o), seconds);
    if (o->kind == OUTCOME_RETRY)
        metrics_retry(s->tier->name);
    else if (o->kind == OUTCOME_DEAD_LETTER)
        metrics_dead_letter(o->reason);
}

/*
 * Publishes the outcomes of n deliveries (in delivery order), waits once for
 * the broker's confirms, then acks them. Those with skip[i] set (skip may be
 * NULL) are left alone: the thread still holds them. Any failure leaves them
 * unacked: the connection is dropped and the broker redelivers them, which
 * the idempotency keys make harmless.
 */
static int settle_all(struct thread_ctx *t, struct mq_delivery *const *ds, struct outcome *os,
                      const bool *skip, size_t n)
{
    struct settled stack_s[1], *s = n == 1 ? stack_s : calloc(n, sizeof *s);
    if (!s)
        return PAYQ_ERR_NOMEM;
    int rc = PAYQ_OK;
    for (size_t i = 0; i < n && rc == PAYQ_OK; i++)
        if (!(skip && skip[i]))
            rc = publish_outcome(t, ds[i], &os[i], &s[i]);
    if (rc == PAYQ_OK)
        rc = mq_wait_confirms(t->mq, mq_last_seq(t->mq), CONFIRM_TIMEOUT_MS);
    if (rc != PAYQ_OK) {
        log_error("could not publish %zu outcome(s) (%s: %s); the deliveries stay unacked and "
                  "will be redelivered", n, payq_strerror(rc), mq_error(t->mq));
        goto out;
    }
    fault_hit(&t->shared->fault, "before_ack");
    /* Deliveries arrive in tag order and everything before them is settled,
     * so one ack with `multiple` covers the batch up to the first delivery
     * held back; those after it are acked one by one. */
    uint64_t held_from = UINT64_MAX, run_end = 0;
    size_t in_run = 0;
    for (size_t i = 0; i < n; i++)
        if (skip && skip[i] && ds[i]->tag < held_from)
            held_from = ds[i]->tag;
    for (size_t i = 0; i < n; i++)
        if (!(skip && skip[i]) && ds[i]->tag < held_from) {
            run_end = ds[i]->tag > run_end ? ds[i]->tag : run_end;
            in_run++;
        }
    if (in_run > 0 && (rc = mq_ack(t->mq, ds[0]->channel, run_end, in_run > 1)) != PAYQ_OK)
        goto out;
    for (size_t i = 0; i < n; i++)
        if (!(skip && skip[i]) && ds[i]->tag > held_from &&
            (rc = mq_ack(t->mq, ds[i]->channel, ds[i]->tag, false)) != PAYQ_OK)
            goto out;
    double took = metrics_now() - t->taken_at;
    for (size_t i = 0; i < n; i++) {
        if (skip && skip[i])
            continue;
        log_outcome(&os[i], &s[i]);
        count_outcome(&os[i], &s[i], took);
    }
out:
    if (s != stack_s)
        free(s);
    return rc;
}

static int settle(struct thread_ctx *t, struct mq_delivery *d, struct outcome *o)
{
    return settle_all(t, &d, o, NULL, 1);
}

static void db_drop(struct thread_ctx *t)
{
    http_health_set_db(t->shared->health, t->index, false);
    provider_free(t->provider);
    t->provider = NULL;
    db_close(t->db);
    t->db = NULL;
}

/* Connects the database and the provider that keeps its state there. */
static int db_open(struct thread_ctx *t)
{
    const struct worker_config *cfg = t->cfg;
    int rc = db_connect(cfg->database_url, "payq-worker", cfg->statement_timeout_ms, &t->db);
    if (rc != PAYQ_OK)
        return rc;
    struct provider_sim_opts so = { (int)cfg->sim_flaky_percent, cfg->sim_slow_ms };
    if ((rc = provider_sim_new(t->db, &so, &t->provider)) != PAYQ_OK)
        db_drop(t);
    else
        http_health_set_db(t->shared->health, t->index, true);
    return rc;
}

static void disconnect(struct thread_ctx *t)
{
    http_health_set_amqp(t->shared->health, t->index, false);
    mq_close(t->mq);
    t->mq = NULL;
    db_drop(t);
}

static int connect_all(struct thread_ctx *t)
{
    const struct worker_config *cfg = t->cfg;
    int rc;
    if (!t->db && (rc = db_open(t)) != PAYQ_OK)
        return rc;
    if ((rc = mq_connect(cfg->amqp_url, &cfg->amqp_tls, t->name, (int)cfg->heartbeat, &t->mq)) !=
        PAYQ_OK) {
        char red[256];
        cfg_redact_url(cfg->amqp_url, red, sizeof red);
        log_error("cannot connect to RabbitMQ at %s: %s", red, mq_connect_error());
        return rc;
    }
    if (!cfg->no_declare && (rc = mq_declare_topology(t->mq)) != PAYQ_OK) {
        log_error("cannot declare the topology: %s", mq_error(t->mq));
        return rc;
    }
    if ((rc = mq_consume(t->mq, cfg->queue, (uint16_t)cfg->prefetch)) != PAYQ_OK) {
        log_error("cannot consume %s: %s", cfg->queue, mq_error(t->mq));
        return rc;
    }
    http_health_set_amqp(t->shared->health, t->index, true);
    return PAYQ_OK;
}

/* Reconnects the database while keeping the broker connection alive (its
 * heartbeats are answered inside mq_pump). */
static int reconnect_db(struct thread_ctx *t)
{
    struct backoff b;
    backoff_init(&b, 200, 10000);
    db_drop(t);
    /* The database is the dependency that failed: the circuit is open
     * until it answers again, whatever found it gone (a command or the idle
     * check), and the delivery in hand (if any) waits. */
    if (!t->circuit_open)
        log_warn("thread %d: circuit open: lost the connection to PostgreSQL", t->index);
    set_circuit(t, true);
    while (!stopping(t)) {
        if (db_open(t) == PAYQ_OK) {
            metrics_reconnect("postgres");
            log_info("thread %d: reconnected to PostgreSQL; circuit closed", t->index);
            set_circuit(t, false);
            t->failures_in_a_row = 0;
            backoff_reset(&t->circuit);
            return PAYQ_OK;
        }
        long ms = backoff_next(&b);
        log_warn("PostgreSQL unavailable, next try in %ld ms", ms);
        int rc = mq_pump(t->mq, (int)ms);
        if (rc != PAYQ_OK)
            return rc;
    }
    return PAYQ_ERR_INTERRUPTED;
}

/* Runs one maintenance query returning a count; logs it when not zero. */
static void maintenance_count(struct thread_ctx *t, const char *sql, const char *param,
                              const char *what)
{
    const char *params[1] = { param };
    PGresult *res = PQexecParams(db_conn(t->db), sql, param ? 1 : 0, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        db_fail(t->db, res);
        log_warn("reaper: could not %s: %s", what, db_error(t->db));
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "0") != 0)
        log_info("reaper: %s: %s", what, PQgetvalue(res, 0, 0));
    PQclear(res);
}

/*
 * Drives one payment whose saga is stuck (its command was dead-lettered
 * mid-saga, or its worker died and the message is far away) from its
 * recovery point to its end, calling the provider as the phases ask, with
 * the same idempotency keys: the same engine as a command, without it.
 */
static void resume_payment(struct thread_ctx *t, const char *pid)
{
    char *answer = NULL;
    for (int n = 0; n < 8; n++) {
        const char *params[2] = { pid, answer };
        PGresult *res = PQexecParams(db_conn(t->db),
                                     "SELECT payq.resume_payment($1, $2::jsonb)::text", 2, NULL,
                                     params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
            db_fail(t->db, res);
            log_warn("reaper: payment %s: %s", pid, db_error(t->db));
            break;
        }
        json_t *r = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
        PQclear(res);
        json_t *call = json_object_get(r, "call");
        if (!call) {
            json_t *reply = json_object_get(r, "reply");
            if (reply && !json_is_null(reply))
                log_info("reaper: resumed payment %s to its end: %s", pid,
                         json_string_value(json_object_get(reply, "status")));
            json_decref(r);
            break;
        }
        char why[256];
        long retry_after_ms;
        bool answered = provider_step(t->provider, call, &answer, why, sizeof why,
                                      &retry_after_ms);
        json_decref(r);
        if (!answered) {
            log_info("reaper: payment %s waits: the provider is unavailable (%s)", pid, why);
            break;
        }
    }
    free(answer);
}

/*
 * Housekeeping done by thread 0 between deliveries, every
 * --reaper-interval-s: prune expired message idempotency keys, expire wallet
 * holds past their deadline, and resume sagas in flight for longer than
 * --stuck-after-s.
 */
static void maintain(struct thread_ctx *t, long long *next)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (t->index != 0 || now.tv_sec < *next || !db_ok(t->db))
        return;
    *next = now.tv_sec + t->cfg->reaper_interval_s;
    char keep[32], stuck[32];
    snprintf(keep, sizeof keep, "%ld hours", t->cfg->inbox_retention_hours);
    maintenance_count(t, "SELECT payq.prune_inbox($1::interval)", keep,
                      "pruned expired message idempotency keys");
    maintenance_count(t, "SELECT payq.expire_holds()", NULL, "expired wallet authorizations");

    snprintf(stuck, sizeof stuck, "%ld seconds", t->cfg->stuck_after_s);
    const char *params[1] = { stuck };
    PGresult *res = PQexecParams(db_conn(t->db), "SELECT payq.stuck_payments($1::interval)", 1,
                                 NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        db_fail(t->db, res);
        log_warn("reaper: could not list stuck payments: %s", db_error(t->db));
        return;
    }
    int n = PQntuples(res);
    char **ids = calloc((size_t)n + 1, sizeof *ids);
    for (int i = 0; ids && i < n; i++)
        ids[i] = strdup(PQgetvalue(res, i, 0));
    PQclear(res);
    /* Every id is freed, also those left when a SIGTERM stops the loop. */
    for (int i = 0; ids && i < n; i++) {
        if (ids[i] && !stopping(t))
            resume_payment(t, ids[i]);
        free(ids[i]);
    }
    free(ids);
}

/* Probes of one command while the circuit is open before it goes to a
 * delay tier after all (so one command that always fails cannot hold a
 * thread forever). */
#define CIRCUIT_PROBES_PER_COMMAND 3

/* Waits ms while keeping the broker connection alive (heartbeats, confirms,
 * and deliveries buffered for later). */
static int pause_ms(struct thread_ctx *t, long ms)
{
    return mq_pump(t->mq, (int)ms);
}

/* Updates the circuit after an attempt; true when the command should be
 * tried again in place (the circuit is open and this command may probe). */
static bool circuit_probe_again(struct thread_ctx *t, const struct outcome *o, int probes,
                                const struct log_ctx *lc)
{
    if (o->kind != OUTCOME_RETRY) {
        if (t->circuit_open)
            log_msg(LOG_INFO, lc, "circuit closed: the dependency answers again");
        set_circuit(t, false);
        t->failures_in_a_row = 0;
        backoff_reset(&t->circuit);
        return false;
    }
    if (!o->dependency)
        return false;
    if (++t->failures_in_a_row >= t->cfg->circuit_threshold && !t->circuit_open) {
        set_circuit(t, true);
        log_msg(LOG_WARN, lc, "circuit open after %d dependency failures in a row (%s); "
                "probing with backoff instead of spending retry budgets",
                t->failures_in_a_row, o->error);
    }
    return t->circuit_open && probes < CIRCUIT_PROBES_PER_COMMAND && !stopping(t);
}

/* Handles one delivery to the end. PAYQ_OK, or an error that requires
 * reconnecting to the broker. */
static int handle(struct thread_ctx *t, struct mq_delivery *d)
{
    const amqp_basic_properties_t *p = &d->message.properties;
    struct apply_opts opts = { t->provider, &t->shared->fault };
    struct outcome o;
    char mid[256];
    struct log_ctx lc = { prop(p->_flags, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id, mid,
                               sizeof mid), NULL, NULL, NULL, 0 };

    /* Poison: delivered again and again without an outcome, because it
     * killed or stalled every worker that took it. Quorum queues count
     * earlier deliveries in x-delivery-count. */
    int64_t earlier;
    if (mq_header_int(p, "x-delivery-count", &earlier) &&
        earlier + 1 >= t->cfg->poison_deliveries) {
        memset(&o, 0, sizeof o);
        o.kind = OUTCOME_DEAD_LETTER;
        snprintf(o.reason, sizeof o.reason, "poison");
        snprintf(o.error, sizeof o.error,
                 "delivered %lld times without an outcome: it crashed or stalled every worker "
                 "that took it", (long long)earlier + 1);
        snprintf(o.command, sizeof o.command, "%.31s", d->routing_key);
        int rc = settle(t, d, &o);
        outcome_clear(&o);
        return rc;
    }

    for (int probes = 0;; probes++) {
        opts.provider = t->provider;
        apply_delivery(t->db, d, &opts, &o);
        if (o.kind == OUTCOME_DB_LOST) {
            /* This delivery waits in hand until the database is back. */
            log_warn("lost the database connection: %s", o.error);
            outcome_clear(&o);
            int rc = reconnect_db(t);
            if (rc != PAYQ_OK)
                return rc;
            continue;
        }
        lc.command = o.command;
        lc.id = o.id;
        if (!circuit_probe_again(t, &o, probes, &lc))
            break;
        long ms = backoff_next(&t->circuit);
        log_msg(LOG_WARN, &lc, "circuit open: probing again in %ld ms (%s)", ms, o.error);
        outcome_clear(&o);
        int rc = pause_ms(t, ms);
        if (rc != PAYQ_OK)
            return rc;
    }
    int rc = settle(t, d, &o);
    outcome_clear(&o);
    return rc;
}

/* Milliseconds until `until` (metrics_now() time), rounded up; 0 once past. */
static int wait_left_ms(double until)
{
    double left = until - metrics_now();
    return left > 0 ? (int)(left * 1000.0) + 1 : 0;
}

/* True for a delivery that must take the careful path: a redelivery
 * (x-delivery-count set: maybe poison) goes alone. */
static bool redelivered(const struct mq_delivery *d)
{
    int64_t n;
    return mq_header_int(&d->message.properties, "x-delivery-count", &n) && n > 0;
}

/*
 * Handles a batch of deliveries: their first phases in one database
 * transaction, their outcomes published together and acked with one ack.
 * Commands that hit a failing dependency take the one-by-one path, where the
 * circuit breaker probes. A command whose wallet another batch holds is
 * neither applied nor acked: busy[i] says so, and the caller puts it in its
 * next batch with wait[i] set (it then waits for the wallet).
 */
static int handle_batch(struct thread_ctx *t, struct mq_delivery **ds, const bool *wait, size_t n,
                        bool *busy)
{
    memset(busy, 0, n * sizeof *busy);
    if (n == 1)
        return handle(t, ds[0]);
    struct outcome *os = calloc(n, sizeof *os);
    if (!os)
        return PAYQ_ERR_NOMEM;
    struct apply_opts opts = { t->provider, &t->shared->fault };
    int rc = PAYQ_OK;
    for (;;) {
        opts.provider = t->provider;
        apply_batch(t->db, ds, wait, n, &opts, os);
        bool lost = false;
        for (size_t i = 0; i < n; i++)
            lost |= os[i].kind == OUTCOME_DB_LOST;
        if (!lost)
            break;
        for (size_t i = 0; i < n; i++)
            outcome_clear(&os[i]);
        if ((rc = reconnect_db(t)) != PAYQ_OK)
            goto out;
    }
    /* A dependency failure inside the batch: settle the others, and give
     * each failed one the careful path (probing, circuit). */
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        busy[i] = os[i].kind == OUTCOME_BUSY;
        if (!(os[i].kind == OUTCOME_RETRY && os[i].dependency))
            ok++;
    }
    if (ok == n) {
        if (t->circuit_open)
            log_info("circuit closed: the dependency answers again");
        set_circuit(t, false);
        t->failures_in_a_row = 0;
        rc = settle_all(t, ds, os, busy, n);
        goto out;
    }
    for (size_t i = 0; i < n && rc == PAYQ_OK; i++) {
        if (busy[i])
            continue;
        if (os[i].kind == OUTCOME_RETRY && os[i].dependency)
            rc = handle(t, ds[i]); /* applies it again: idempotent */
        else
            rc = settle(t, ds[i], &os[i]);
    }
out:
    for (size_t i = 0; i < n; i++)
        outcome_clear(&os[i]);
    free(os);
    return rc;
}

/* How often an idle thread checks that its database connection is alive. */
#define DB_WATCH_MS 2000

/*
 * While no delivery comes: a round trip to the database every DB_WATCH_MS,
 * so a lost connection is noticed (readiness says so) and reopened before a
 * delivery needs it, instead of when one arrives. Errors are the broker's
 * (from reconnect_db), as elsewhere.
 */
static int watch_db(struct thread_ctx *t, double *next)
{
    double now = metrics_now();
    if (now < *next)
        return PAYQ_OK;
    *next = now + DB_WATCH_MS / 1000.0;
    if (db_exec(t->db, "SELECT 1") == PAYQ_OK)
        return PAYQ_OK;
    log_warn("thread %d: the database connection is gone while idle: %s", t->index,
             db_error(t->db));
    return reconnect_db(t);
}

/* How often a thread drops its session's cached query plans. */
#define REPLAN_MS 10000

/*
 * PostgreSQL keeps a plan a function's statement got on its first calls
 * until an ANALYZE of a table it reads (or DDL) invalidates it, not when the
 * table grows. On a new database the first batches saw an empty
 * payq.payments, got a plan that hashes the whole table to look their
 * payment ids up, and kept it while the table grew: a capacity run on a
 * freshly migrated database did 715 sequential scans of payq.payments
 * (25 million rows read) and ran at 1,820 payments/s, autovacuum's first
 * ANALYZE coming only at its end; with this, 82 scans in the first 10 s and
 * none after, 3,327/s. Every REPLAN_MS the thread drops its
 * cached plans (DISCARD PLANS; prepared statements stay, they are planned
 * again on their next use, against the tables as they are then).
 */
static void replan(struct thread_ctx *t, double *next)
{
    double now = metrics_now();
    if (now < *next || !db_ok(t->db))
        return;
    *next = now + REPLAN_MS / 1000.0;
    if (db_exec(t->db, "DISCARD PLANS") != PAYQ_OK)
        log_warn("thread %d: DISCARD PLANS: %s", t->index, db_error(t->db));
}

void *worker_thread(void *arg)
{
    struct worker_thread_arg *wa = arg;
    struct thread_ctx t = { .cfg = wa->shared->cfg, .shared = wa->shared, .index = wa->index };
    char host[64] = "localhost";
    (void)gethostname(host, sizeof host - 1);
    snprintf(t.name, sizeof t.name, "payq-worker %s pid %d thread %d", host, (int)getpid(),
             wa->index);
    backoff_init(&t.reconnect, 500, 30000);
    backoff_init(&t.circuit, 500, 30000);

    bool was_connected = false;
    while (!stopping(&t)) {
        if (connect_all(&t) != PAYQ_OK) {
            disconnect(&t);
            long ms = backoff_next(&t.reconnect);
            log_warn("thread %d: not connected, next try in %ld ms", t.index, ms);
            nap(&t, ms);
            continue;
        }
        backoff_reset(&t.reconnect);
        if (was_connected)
            metrics_reconnect("amqp");
        was_connected = true;
        log_info("thread %d consuming %s on %s (prefetch %ld)", t.index, t.cfg->queue,
                 mq_peer(t.mq), t.cfg->prefetch);
        long long next_maintenance = 0;
        double next_db_watch = 0;
        double next_replan = metrics_now() + REPLAN_MS / 1000.0;
        size_t cap = (size_t)t.cfg->batch;
        struct mq_delivery **batch = calloc(cap, sizeof *batch);
        bool *wait = calloc(cap, sizeof *wait), *busy = calloc(cap, sizeof *busy);
        size_t carried = 0; /* batch[0..carried): busy last time, held, not acked */
        /* On a stop request the commands carried from the last batch are
         * still applied (they wait for their wallets, so they cannot be
         * passed over again); nothing new joins them. */
        while (batch && wait && busy && (carried > 0 || !stopping(&t))) {
            maintain(&t, &next_maintenance);
            int rc = PAYQ_OK;
            if (carried == 0) {
                rc = mq_next(t.mq, 1000, &batch[0]);
                if (rc == PAYQ_ERR_TIMEOUT && (rc = watch_db(&t, &next_db_watch)) == PAYQ_OK)
                    continue;
            }
            if (rc == PAYQ_OK) {
                t.taken_at = metrics_now();
                /* What else arrives within --batch-wait-ms joins the batch:
                 * under load a batch fills at once; on a quiet queue a
                 * delivery waits at most that long. A redelivery (maybe
                 * poison) never joins a batch: it goes alone. Commands
                 * carried from the last batch come first and wait for
                 * their wallets this time. */
                size_t n = carried ? carried : 1;
                for (size_t i = 0; i < n; i++)
                    wait[i] = carried > 0;
                struct mq_delivery *alone = NULL;
                if (!carried && redelivered(batch[0])) {
                    alone = batch[0];
                    n = 0;
                }
                double fill_until = t.taken_at + (double)t.cfg->batch_wait_ms / 1000.0;
                while (!alone && n < cap && !stopping(&t) &&
                       mq_next(t.mq, wait_left_ms(fill_until), &batch[n]) == PAYQ_OK) {
                    if (redelivered(batch[n]))
                        alone = batch[n];
                    else
                        wait[n++] = false;
                }
                int held = (int)n + (alone ? 1 : 0);
                metrics_in_flight_add(held);
                if (n > 0) {
                    replan(&t, &next_replan);
                    metrics_batch((int)n);
                    rc = handle_batch(&t, batch, wait, n, busy);
                }
                if (alone && rc == PAYQ_OK) {
                    metrics_batch(1);
                    rc = handle(&t, alone);
                }
                carried = 0;
                for (size_t i = 0; i < n; i++) {
                    if (rc == PAYQ_OK && busy[i])
                        batch[carried++] = batch[i];
                    else
                        mq_delivery_free(batch[i]);
                }
                if (carried)
                    log_debug("thread %d: %zu command(s) whose wallets another batch held go "
                              "into the next batch", t.index, carried);
                mq_delivery_free(alone);
                metrics_in_flight_add(-held);
            }
            if (rc != PAYQ_OK && rc != PAYQ_ERR_INTERRUPTED) {
                log_warn("thread %d: %s; reconnecting", t.index,
                         mq_error(t.mq)[0] ? mq_error(t.mq) : payq_strerror(rc));
                break;
            }
        }
        /* Held deliveries (the connection failed) go back to the queue with it. */
        for (size_t i = 0; i < carried; i++)
            mq_delivery_free(batch[i]);
        free(wait);
        free(busy);
        free(batch);
        disconnect(&t);
    }
    disconnect(&t);
    set_circuit(&t, false);
    log_info("thread %d stopped", t.index);
    return NULL;
}
