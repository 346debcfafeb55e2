/*
 * dlq_sync.c - keeping payq.dlq and payq.dead_letters in agreement.
 *
 * The row is the truth; the queue copy is what the management UI shows.
 * Reconciling reads the messages that are in the queue when it starts
 * (basic.get, manual ack; the count is taken from the first get, so a
 * message is never read twice) and for each one:
 *   - its row is 'dead': left unacked, so it returns to the queue when the
 *     connection closes;
 *   - its row is replayed or discarded: acked (removed);
 *   - its row was resolved but this copy is a newer failure (it carries the
 *     replay's payq-replayed-at stamp, or failed after the resolution):
 *     the row is reopened, the copy kept;
 *   - no header, or an id without a row: archived as a new row first (from
 *     its headers; reason "poison" when the broker's delivery limit put it
 *     there), then kept. Never lost.
 *
 * Import is the other direction: rows from an export that are missing here
 * are inserted and their copy is published to payq.dlx (with the
 * x-payq-dead-letter-id header) in the same step, so queue and archive
 * agree.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "dlq.h"
#include "mqjson.h"
#include "topology.h"

#define CONFIRM_TIMEOUT_MS 30000

/* ---- reading a queue message -------------------------------------------- */


/* Text fit for a PostgreSQL text parameter: no NUL, valid UTF-8 (other
 * bytes become '?'). Caller frees; NULL when out of memory. */
static char *pg_text(const void *bytes, size_t len)
{
    const unsigned char *b = bytes;
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = 1;
        if (b[i] >= 0x80) {
            n = (b[i] >= 0xC2 && b[i] <= 0xDF)   ? 2
                : (b[i] >= 0xE0 && b[i] <= 0xEF) ? 3
                : (b[i] >= 0xF0 && b[i] <= 0xF4) ? 4
                                                 : 0;
            for (size_t k = 1; n && k < n; k++)
                if (i + k >= len || (b[i + k] & 0xC0) != 0x80)
                    n = 0;
        }
        if (n == 0 || b[i] == 0) {
            out[o++] = '?';
            i++;
        } else {
            memcpy(out + o, b + i, n);
            o += n;
            i += n;
        }
    }
    out[o] = 0;
    return out;
}

/* A header as text for PostgreSQL (string headers only), or NULL. */
static char *header_text(const amqp_basic_properties_t *p, const char *name)
{
    const amqp_field_value_t *v = mq_header(p, name);
    if (!v || (v->kind != AMQP_FIELD_KIND_UTF8 && v->kind != AMQP_FIELD_KIND_BYTES))
        return NULL;
    return pg_text(v->value.bytes.bytes, v->value.bytes.len);
}

static bool header_int(const amqp_basic_properties_t *p, const char *name, int64_t *out)
{
    return mq_header_int(p, name, out);
}

static bool header_true(const amqp_basic_properties_t *p, const char *name)
{
    const amqp_field_value_t *v = mq_header(p, name);
    return v && v->kind == AMQP_FIELD_KIND_BOOLEAN && v->value.boolean;
}

/* A timestamp header, only when it is RFC 3339 (else NULL). */
static char *header_time(const amqp_basic_properties_t *p, const char *name)
{
    char *s = header_text(p, name);
    if (s && !dlq_is_rfc3339(s)) {
        free(s);
        return NULL;
    }
    return s;
}

static char *prop_text(amqp_flags_t flags, amqp_flags_t flag, amqp_bytes_t b)
{
    return (flags & flag) ? pg_text(b.bytes, b.len) : NULL;
}

/* True when the broker dead-lettered the message for its delivery limit
 * (x-first-death-reason, or the first x-death entry). */
static bool poison(const amqp_basic_properties_t *p)
{
    const amqp_field_value_t *v = mq_header(p, "x-first-death-reason");
    if (v && (v->kind == AMQP_FIELD_KIND_UTF8 || v->kind == AMQP_FIELD_KIND_BYTES) &&
        v->value.bytes.len == 14 && memcmp(v->value.bytes.bytes, "delivery_limit", 14) == 0)
        return true;
    v = mq_header(p, "x-death");
    if (!v || v->kind != AMQP_FIELD_KIND_ARRAY || v->value.array.num_entries < 1 ||
        v->value.array.entries[0].kind != AMQP_FIELD_KIND_TABLE)
        return false;
    const amqp_table_t *t = &v->value.array.entries[0].value.table;
    for (int i = 0; i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        if (e->key.len == 6 && memcmp(e->key.bytes, "reason", 6) == 0 &&
            (e->value.kind == AMQP_FIELD_KIND_UTF8 || e->value.kind == AMQP_FIELD_KIND_BYTES) &&
            e->value.value.bytes.len == 14 &&
            memcmp(e->value.value.bytes.bytes, "delivery_limit", 14) == 0)
            return true;
    }
    return false;
}

/* The command's business id, when the body is a JSON object holding it. */
static char *business_id(const char *rk, const amqp_bytes_t body)
{
    const char *field = strcmp(rk, "payment.refund") == 0    ? "refund_id"
                        : strncmp(rk, "payment.", 8) == 0    ? "payment_id"
                        : strcmp(rk, "account.deposit") == 0 ? "deposit_id"
                        : strcmp(rk, "account.open") == 0    ? "account"
                                                             : NULL;
    if (!field)
        return NULL;
    json_t *j = json_loadb(body.bytes, body.len, 0, NULL);
    const char *v = json_string_value(json_object_get(j, field));
    char *out = v ? pg_text(v, strlen(v)) : NULL;
    json_decref(j);
    return out;
}

/* What a queue message says about itself, as parameters for an archive
 * row. Every string is owned (freed by msg_facts_free). */
struct msg_facts {
    char *message_id, *correlation_id, *exchange, *routing_key, *business_id, *reason, *error;
    char *first, *last, *replayed_at, *properties;
    char attempts[24];
    bool redacted;
};

static void msg_facts_free(struct msg_facts *m)
{
    free(m->message_id);
    free(m->correlation_id);
    free(m->exchange);
    free(m->routing_key);
    free(m->business_id);
    free(m->reason);
    free(m->error);
    free(m->first);
    free(m->last);
    free(m->replayed_at);
    free(m->properties);
}

static int msg_facts(const struct mq_delivery *d, struct msg_facts *m)
{
    const amqp_basic_properties_t *p = &d->message.properties;
    memset(m, 0, sizeof *m);
    m->message_id = prop_text(p->_flags, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id);
    m->correlation_id = prop_text(p->_flags, AMQP_BASIC_CORRELATION_ID_FLAG, p->correlation_id);
    m->exchange = header_text(p, "x-payq-original-exchange");
    if (!m->exchange)
        m->exchange = header_text(p, "x-first-death-exchange");
    if (!m->exchange || !*m->exchange) {
        free(m->exchange);
        m->exchange = strdup(PAYQ_X_COMMANDS);
    }
    m->routing_key = header_text(p, "x-payq-original-routing-key");
    if (!m->routing_key)
        m->routing_key = pg_text(d->routing_key, strlen(d->routing_key));
    bool is_poison = poison(p);
    m->reason = header_text(p, "x-payq-reason");
    if (!m->reason)
        m->reason = strdup(is_poison ? "poison" : "unknown");
    int64_t n = 0;
    if (!header_int(p, "x-payq-attempts", &n) && !header_int(p, "x-delivery-count", &n))
        n = is_poison ? PAYQ_DELIVERY_LIMIT : 1;
    if (n < 1 || n > 1000000)
        n = 1;
    snprintf(m->attempts, sizeof m->attempts, "%lld", (long long)n);
    m->error = header_text(p, "x-payq-error");
    if (!m->error) {
        char buf[300];
        if (is_poison)
            snprintf(buf, sizeof buf,
                     "the broker dead-lettered it after %lld deliveries "
                     "(x-delivery-limit): it crashed or stalled every worker "
                     "that took it",
                     (long long)n);
        else
            snprintf(buf, sizeof buf,
                     "found in the dead-letter queue without payq's "
                     "diagnostics (no x-payq-error header)");
        m->error = strdup(buf);
    }
    m->first = header_time(p, "x-payq-first-failure-at");
    m->last = header_time(p, "x-payq-last-failure-at");
    m->replayed_at = header_time(p, "payq-replayed-at");
    m->redacted = header_true(p, "x-payq-redacted");
    json_t *props = mq_props_to_json(p);
    m->properties = props ? json_dumps(props, JSON_COMPACT) : NULL;
    json_decref(props);
    if (m->routing_key)
        m->business_id = business_id(m->routing_key, d->message.body);
    if (!m->exchange || !m->routing_key || !m->reason || !m->error || !m->properties) {
        msg_facts_free(m);
        return PAYQ_ERR_NOMEM;
    }
    return PAYQ_OK;
}

/* ---- the archive side --------------------------------------------------- */

/* Ends a failed transaction; the first error stays in t->db. */
static void rollback(struct dlq *t)
{
    PGresult *r = PQexec(db_conn(t->db), "ROLLBACK");
    PQclear(r);
}

/* The worker column of rows and failures the tool records itself. */
static void worker_name(const struct dlq *t, char *buf, size_t len)
{
    char host[128] = "?";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    snprintf(buf, len, "payq-dlq on %s (from queue %s)", host, t->cfg->queue);
}

/* Archives a message whose header names `id` but that has no row. */
static int archive_with_id(struct dlq *t, const struct mq_delivery *d, const char *id)
{
    static const char sql[] =
        "INSERT INTO payq.dead_letters (id, message_key, message_id, correlation_id, exchange,"
        " routing_key, business_id, reason, error, fingerprint, attempts, first_failure_at,"
        " last_failure_at, properties, body, redacted, worker)"
        " VALUES ($1::uuid, payq.message_key($2, $13::bytea), $2, $3, $4, $5,"
        " $6, $7, $8, payq.failure_fingerprint($7, $8), $9::integer,"
        " COALESCE($10::timestamptz, now()), COALESCE($11::timestamptz, now()), $12::jsonb,"
        " $13::bytea, $14::boolean, $15)"
        " ON CONFLICT (id) DO NOTHING";
    struct msg_facts m;
    if (msg_facts(d, &m) != PAYQ_OK)
        return PAYQ_ERR_NOMEM;
    char worker[256];
    worker_name(t, worker, sizeof worker);
    const char *p[15] = { id,
                          m.message_id,
                          m.correlation_id,
                          m.exchange,
                          m.routing_key,
                          m.business_id,
                          m.reason,
                          m.error,
                          m.attempts,
                          m.first,
                          m.last,
                          m.properties,
                          (const char *)d->message.body.bytes,
                          m.redacted ? "true" : "false",
                          worker };
    int lengths[15] = { 0 }, formats[15] = { 0 };
    lengths[12] = (int)d->message.body.len;
    formats[12] = 1;
    if (!p[12])
        p[12] = "";
    PGresult *r;
    int rc = dlq_query(t, sql, 15, p, lengths, formats, &r);
    if (rc == PAYQ_OK)
        PQclear(r);
    msg_facts_free(&m);
    return rc;
}

/* Archives a message without the id header through the same function the
 * worker uses, so a message archived twice gets one row. *id gets the row's
 * id, *created whether this call made it. */
static int archive_new(struct dlq *t, const struct mq_delivery *d, char *id, bool *created)
{
    static const char sql[] =
        "SELECT payq.record_dead_letter($1, $2, $3, $4, $5, $6, $7, NULL, $8::integer,"
        " $9::timestamptz, $10::jsonb, $12::bytea, $11::boolean, $13)::text";
    struct msg_facts m;
    if (msg_facts(d, &m) != PAYQ_OK)
        return PAYQ_ERR_NOMEM;
    char worker[256];
    worker_name(t, worker, sizeof worker);
    const char *p[13] = { m.message_id,
                          m.correlation_id,
                          m.exchange,
                          m.routing_key,
                          m.business_id,
                          m.reason,
                          m.error,
                          m.attempts,
                          m.first,
                          m.properties,
                          m.redacted ? "true" : "false",
                          (const char *)d->message.body.bytes,
                          worker };
    int lengths[13] = { 0 }, formats[13] = { 0 };
    lengths[11] = (int)d->message.body.len;
    formats[11] = 1;
    if (!p[11])
        p[11] = "";
    PGresult *r = NULL;
    int rc = db_exec(t->db, "BEGIN");
    if (rc == PAYQ_OK && (rc = dlq_query(t, sql, 13, p, lengths, formats, &r)) == PAYQ_OK) {
        snprintf(id, 37, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
        /* created_at defaults to now(), the transaction's start. */
        const char *q[1] = { id };
        rc = dlq_query(t, "SELECT created_at = now() FROM payq.dead_letters WHERE id = $1::uuid", 1,
                       q, NULL, NULL, &r);
        if (rc == PAYQ_OK) {
            *created = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
            PQclear(r);
        }
    }
    if (rc == PAYQ_OK)
        rc = db_exec(t->db, "COMMIT");
    if (rc != PAYQ_OK) /* the error stays in t->db for the caller */
        rollback(t);
    msg_facts_free(&m);
    return rc;
}

/* The row's status, and whether this copy is a failure newer than the
 * row's resolution. */
static int row_state(struct dlq *t, const char *id, const struct mq_delivery *d, bool *found,
                     char *status, size_t len, bool *newer)
{
    const amqp_basic_properties_t *p = &d->message.properties;
    char *replayed = header_time(p, "payq-replayed-at");
    char *last = header_time(p, "x-payq-last-failure-at");
    const char *q[3] = { id, replayed, last };
    PGresult *r;
    int rc = dlq_query(t,
                       "SELECT status, resolved_at IS NOT NULL AND"
                       " (COALESCE($2::timestamptz >= resolved_at, false)"
                       "  OR COALESCE($3::timestamptz > resolved_at, false))"
                       " FROM payq.dead_letters WHERE id = $1::uuid",
                       3, q, NULL, NULL, &r);
    free(replayed);
    free(last);
    if (rc != PAYQ_OK)
        return rc;
    *found = PQntuples(r) == 1;
    if (*found) {
        snprintf(status, len, "%s", PQgetvalue(r, 0, 0));
        *newer = strcmp(PQgetvalue(r, 0, 1), "t") == 0;
    }
    PQclear(r);
    return PAYQ_OK;
}

/* A resolved row whose command failed again: back to 'dead', with the new
 * failure recorded in payq.failures. */
static int reopen(struct dlq *t, const char *id, const struct mq_delivery *d)
{
    static const char sql[] =
        "WITH r AS ("
        "  UPDATE payq.dead_letters d SET status = 'dead', resolved_at = NULL,"
        "    resolved_by = NULL, last_failure_at = COALESCE($3::timestamptz, now()),"
        "    error = COALESCE($2, d.error),"
        "    resolution_note = 'failed again after it was ' || d.status || ' at '"
        "      || to_char(d.resolved_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
        "      || COALESCE(' by ' || d.resolved_by, '')"
        "  WHERE d.id = $1::uuid AND d.status <> 'dead'"
        "  RETURNING d.message_key, d.routing_key, d.business_id, d.attempts, d.reason, d.error,"
        "    d.sqlstate, d.fingerprint)"
        " INSERT INTO payq.failures (message_key, routing_key, business_id, attempt, kind,"
        "   reason, error, sqlstate, fingerprint, worker, occurred_at)"
        " SELECT message_key, routing_key, business_id, attempts,"
        "   CASE reason WHEN 'retries_exhausted' THEN 'exhausted' WHEN 'poison' THEN 'poison'"
        "   ELSE 'rejected' END, reason, error, sqlstate, fingerprint, $4,"
        "   COALESCE($3::timestamptz, now()) FROM r";
    const amqp_basic_properties_t *p = &d->message.properties;
    char *err = header_text(p, "x-payq-error");
    char *last = header_time(p, "x-payq-last-failure-at");
    char worker[256];
    worker_name(t, worker, sizeof worker);
    const char *q[4] = { id, err, last, worker };
    PGresult *r;
    int rc = dlq_query(t, sql, 4, q, NULL, NULL, &r);
    if (rc == PAYQ_OK)
        PQclear(r);
    free(err);
    free(last);
    return rc;
}

static bool is_uuid(const char *s, size_t n)
{
    if (n != 36)
        return false;
    for (size_t i = 0; i < n; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
            return false;
    }
    return true;
}

/* Decides what happens to one queue message; *ack says whether to ack. */
static int reconcile_one(struct dlq *t, const struct mq_delivery *d, struct dlq_sync_stats *st,
                         bool *ack)
{
    const amqp_basic_properties_t *p = &d->message.properties;
    char id[40] = "", status[16] = "";
    bool found = false, newer = false;
    amqp_bytes_t b;
    int rc;
    *ack = false;
    if (mq_header_str(p, DLQ_ID_HEADER, &b) && is_uuid(b.bytes, b.len)) {
        for (size_t i = 0; i < 36; i++)
            id[i] = (char)tolower(((const unsigned char *)b.bytes)[i]);
        id[36] = 0;
        if ((rc = row_state(t, id, d, &found, status, sizeof status, &newer)) != PAYQ_OK)
            return rc;
        if (!found) {
            if ((rc = archive_with_id(t, d, id)) != PAYQ_OK)
                return rc;
            st->archived++;
            st->kept++;
            return PAYQ_OK;
        }
    } else {
        bool created = false;
        if ((rc = archive_new(t, d, id, &created)) != PAYQ_OK)
            return rc;
        st->archived += created;
        if ((rc = row_state(t, id, d, &found, status, sizeof status, &newer)) != PAYQ_OK)
            return rc;
        if (!found) /* deleted a moment ago: keep the message, look again next time */
            strcpy(status, "dead");
    }
    if (strcmp(status, "dead") == 0) {
        st->kept++;
    } else if (newer) {
        if ((rc = reopen(t, id, d)) != PAYQ_OK)
            return rc;
        st->reopened++;
        st->kept++;
    } else {
        *ack = true;
    }
    return PAYQ_OK;
}

int dlq_reconcile(struct dlq *t, struct dlq_sync_stats *st)
{
    memset(st, 0, sizeof *st);
    if (dlq_need_mq(t) != PAYQ_OK)
        return PAYQ_ERR_AMQP;
    st->connected = true;
    const char *q = t->cfg->queue;
    long total = -1;
    int rc = PAYQ_OK;
    while (total < 0 || st->seen < total) {
        struct mq_delivery *d = NULL;
        if ((rc = mq_get(t->mq, q, &d)) != PAYQ_OK) {
            fprintf(stderr, "payq-dlq: cannot read %s: %s\n", q, mq_error(t->mq));
            break;
        }
        if (!d)
            break;
        /* Only what is there now: a replayed message that fails again
         * comes back behind us and is not read twice. */
        if (total < 0)
            total = (long)d->remaining + 1;
        st->seen++;
        bool ack = false;
        int one = reconcile_one(t, d, st, &ack);
        if (one != PAYQ_OK) {
            st->errors++;
            fprintf(stderr,
                    "payq-dlq: could not reconcile a message of %s: %s; it stays in "
                    "the queue\n",
                    q, one == PAYQ_ERR_DB ? db_error(t->db) : payq_strerror(one));
            if (one == PAYQ_ERR_DB) {
                /* The next message would fail the same way: stop, and
                 * leave the rest where it is. */
                if (strcmp(db_sqlstate(t->db), "42P01") == 0 ||
                    strcmp(db_sqlstate(t->db), "42883") == 0)
                    fprintf(stderr, "payq-dlq: the database schema is older than this tool: "
                                    "run `payq-worker migrate`\n");
                mq_delivery_free(d);
                break;
            }
        } else if (ack) {
            if ((rc = mq_ack(t->mq, d->channel, d->tag, false)) != PAYQ_OK) {
                fprintf(stderr, "payq-dlq: ack on %s failed: %s\n", q, mq_error(t->mq));
                mq_delivery_free(d);
                break;
            }
            st->acked++;
        }
        mq_delivery_free(d);
    }
    /* A round trip on the same channel: the acks are processed before the
     * answer comes; then closing returns the kept messages at once. */
    if (rc == PAYQ_OK && (rc = mq_queue_depth(t->mq, q, &st->remaining)) != PAYQ_OK)
        fprintf(stderr, "payq-dlq: cannot read the depth of %s: %s\n", q, mq_error(t->mq));
    mq_close(t->mq);
    t->mq = NULL;
    if (rc != PAYQ_OK)
        return rc;
    st->remaining += (unsigned)(st->kept + st->errors);
    return st->errors ? PAYQ_ERR_DB : PAYQ_OK;
}

void dlq_print_sync(const struct dlq *t, const struct dlq_sync_stats *st)
{
    printf("%s: %ld message%s looked at, %ld removed (replayed or discarded), %ld kept",
           t->cfg->queue, st->seen, st->seen == 1 ? "" : "s", st->acked, st->kept);
    if (st->archived)
        printf(", %ld archived as new rows", st->archived);
    if (st->reopened)
        printf(", %ld reopened (failed again after replay)", st->reopened);
    if (st->errors)
        printf(", %ld not handled (errors above)", st->errors);
    printf("; %u now in the queue\n", st->remaining);
}

int dlq_sync(struct dlq *t)
{
    struct dlq_sync_stats st;
    int rc = dlq_reconcile(t, &st);
    if (st.connected)
        dlq_print_sync(t, &st);
    return rc == PAYQ_OK ? DLQ_EXIT_OK : DLQ_EXIT_FAIL;
}

/* ---- import ----------------------------------------------------------------- */

/* Publishes the queue copy of an imported row: its stored properties plus
 * the id header, to payq.dlx with its routing key. */
static int publish_copy(struct dlq *t, const char *id, const char *rk, const char *props_json,
                        const unsigned char *body, size_t len, char *err, size_t errlen)
{
    json_t *j = json_loads(props_json, 0, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        snprintf(err, errlen, "its properties are not a JSON object");
        return PAYQ_ERR_INVALID;
    }
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_basic_properties_t p;
    int rc = mq_props_from_json(j, &pool, &p);
    json_decref(j);
    amqp_table_entry_t *e = NULL;
    int n = (p._flags & AMQP_BASIC_HEADERS_FLAG) ? p.headers.num_entries : 0, k = 0;
    if (rc == PAYQ_OK && !(e = amqp_pool_alloc(&pool, (size_t)(n + 1) * sizeof *e)))
        rc = PAYQ_ERR_NOMEM;
    if (rc == PAYQ_OK) {
        for (int i = 0; i < n; i++) {
            amqp_bytes_t key = p.headers.entries[i].key;
            if (key.len == strlen(DLQ_ID_HEADER) && memcmp(key.bytes, DLQ_ID_HEADER, key.len) == 0)
                continue;
            e[k++] = p.headers.entries[i];
        }
        e[k].key = amqp_cstring_bytes(DLQ_ID_HEADER);
        e[k].value.kind = AMQP_FIELD_KIND_UTF8;
        e[k].value.value.bytes = amqp_cstring_bytes(id);
        k++;
        p.headers.entries = e;
        p.headers.num_entries = k;
        /* user_id cannot be published by us; the worker's copies never
         * carry it (it is in x-payq-user-id). */
        p._flags &= ~(amqp_flags_t)AMQP_BASIC_USER_ID_FLAG;
        p._flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
        p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
        uint64_t seq;
        rc = mq_publish(t->mq, PAYQ_X_DLX, rk, true, &p, body, len, &seq);
        if (rc == PAYQ_OK)
            rc = mq_wait_confirms(t->mq, seq, CONFIRM_TIMEOUT_MS);
        if (rc != PAYQ_OK)
            snprintf(err, errlen, "publishing its copy to %s failed: %s (%s)", PAYQ_X_DLX,
                     payq_strerror(rc), mq_error(t->mq));
    } else {
        snprintf(err, errlen, "cannot rebuild its properties: %s", payq_strerror(rc));
    }
    empty_amqp_pool(&pool);
    return rc;
}

struct import_counts {
    long imported, published, present, invalid, failed;
};

/* One line of an export. PAYQ_ERR_INVALID for a bad line (counted), other
 * errors stop the import. */
static int import_line(struct dlq *t, const char *line, size_t len, long lineno,
                       struct import_counts *c)
{
    static const char sql[] =
        "INSERT INTO payq.dead_letters (id, message_key, message_id, correlation_id, exchange,"
        " routing_key, business_id, reason, error, sqlstate, fingerprint, attempts,"
        " first_failure_at, last_failure_at, properties, body, redacted, worker, status,"
        " resolved_at, resolved_by, resolution_note, created_at)"
        " SELECT r.id, r.message_key, r.message_id, r.correlation_id, r.exchange, r.routing_key,"
        " r.business_id, r.reason, r.error, r.sqlstate,"
        " COALESCE(r.fingerprint, payq.failure_fingerprint(r.reason, r.error)), r.attempts,"
        " r.first_failure_at, r.last_failure_at, COALESCE(r.properties, '{}'),"
        " decode($2, 'base64'), COALESCE(r.redacted, false), COALESCE(r.worker, 'payq-dlq import'),"
        " COALESCE(r.status, 'dead'), r.resolved_at, r.resolved_by, r.resolution_note,"
        " COALESCE(r.created_at, now())"
        " FROM jsonb_populate_record(NULL::payq.dead_letters, $1::jsonb) r"
        " ON CONFLICT (id) DO NOTHING"
        " RETURNING id::text, status, routing_key, properties::text, body";
    json_error_t je;
    json_t *j = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    const char *id = json_string_value(json_object_get(j, "id"));
    const char *b64 = json_string_value(json_object_get(j, "body_base64"));
    if (!json_is_object(j) || !id || !b64) {
        fprintf(stderr, "payq-dlq: line %ld: %s\n", lineno,
                !j ? je.text : "not an exported dead letter (needs \"id\" and \"body_base64\")");
        json_decref(j);
        c->invalid++;
        return PAYQ_ERR_INVALID;
    }
    char *text = strndup(line, len);
    char *b64copy = strdup(b64);
    json_decref(j);
    if (!text || !b64copy) {
        free(text);
        free(b64copy);
        return PAYQ_ERR_NOMEM;
    }
    const char *p[2] = { text, b64copy };
    PGresult *r = NULL;
    int rc = db_exec(t->db, "BEGIN");
    if (rc == PAYQ_OK)
        rc = dlq_query(t, sql, 2, p, NULL, NULL, &r);
    free(text);
    free(b64copy);
    if (rc != PAYQ_OK) {
        fprintf(stderr, "payq-dlq: line %ld: %s\n", lineno, db_error(t->db));
        rollback(t);
        if (!db_ok(t->db))
            return PAYQ_ERR_DB;
        c->invalid++;
        return PAYQ_ERR_INVALID;
    }
    if (PQntuples(r) == 0) { /* already here */
        PQclear(r);
        c->present++;
        return db_exec(t->db, "COMMIT") == PAYQ_OK ? PAYQ_OK : PAYQ_ERR_DB;
    }
    if (strcmp(PQgetvalue(r, 0, 1), "dead") == 0) {
        /* The copy first, the COMMIT after its confirm: killed between
         * the two, the copy's row is made by the next sync. */
        size_t blen = 0;
        unsigned char *body = PQunescapeBytea((const unsigned char *)PQgetvalue(r, 0, 4), &blen);
        char err[512] = "out of memory";
        rc = body ? publish_copy(t, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 3),
                                 body, blen, err, sizeof err)
                  : PAYQ_ERR_NOMEM;
        PQfreemem(body);
        if (rc != PAYQ_OK) {
            fprintf(stderr, "payq-dlq: line %ld (%s): %s; not imported\n", lineno,
                    PQgetvalue(r, 0, 0), err);
            PQclear(r);
            rollback(t);
            c->failed++;
            return rc; /* PAYQ_ERR_INVALID goes on with the next line */
        }
        c->published++;
    }
    PQclear(r);
    if (db_exec(t->db, "COMMIT") != PAYQ_OK) {
        fprintf(stderr, "payq-dlq: line %ld: COMMIT failed: %s\n", lineno, db_error(t->db));
        return PAYQ_ERR_DB;
    }
    c->imported++;
    return PAYQ_OK;
}

int dlq_import(struct dlq *t, const char *path)
{
    bool std_in = strcmp(path, "-") == 0;
    FILE *in = std_in ? stdin : fopen(path, "r");
    if (!in) {
        fprintf(stderr, "payq-dlq: cannot open %s: %s\n", path, strerror(errno));
        return DLQ_EXIT_FAIL;
    }
    if (dlq_need_mq(t) != PAYQ_OK) {
        if (!std_in)
            fclose(in);
        return DLQ_EXIT_FAIL;
    }
    struct import_counts c = { 0, 0, 0, 0, 0 };
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0;
    int rc = PAYQ_OK;
    while (!dlq_interrupted() && (n = getline(&line, &cap, in)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' '))
            line[--n] = 0;
        if (n == 0)
            continue;
        rc = import_line(t, line, (size_t)n, lineno, &c);
        if (rc == PAYQ_ERR_INVALID)
            rc = PAYQ_OK;
        if (rc != PAYQ_OK) {
            fprintf(stderr, "payq-dlq: import stopped at line %ld (%s)\n", lineno,
                    payq_strerror(rc));
            break;
        }
    }
    if (ferror(in)) {
        fprintf(stderr, "payq-dlq: reading %s failed: %s\n", std_in ? "stdin" : path,
                strerror(errno));
        rc = PAYQ_ERR_IO;
    }
    free(line);
    if (!std_in)
        fclose(in);
    printf("imported %ld (%ld copies published to %s), already present %ld, invalid %ld, "
           "failed %ld\n",
           c.imported, c.published, PAYQ_X_DLX, c.present, c.invalid, c.failed);
    return rc == PAYQ_OK && !c.invalid && !c.failed && !dlq_interrupted() ? DLQ_EXIT_OK
                                                                          : DLQ_EXIT_FAIL;
}
