/*
 * dlq_replay.c - replay and discard.
 *
 * Replay works from the archive row, never from the queue copy: it
 * publishes the row's body with its original properties to the original
 * exchange and routing key (persistent, mandatory, publisher confirms), and
 * only after the broker's confirm marks the row replayed. The queue copy is
 * acked afterwards by reconciling (dlq_sync.c). Killed at any point, nothing
 * is lost: before the mark the row is still 'dead' and a second replay
 * publishes again, which is harmless because message_id and the business
 * ids are unchanged and the worker applies a command once.
 *
 * What is dropped from the properties: every x-payq-* header but
 * x-payq-user-id (the publisher, which keeps the idempotency scope), the
 * broker's x-death family and x-delivery-count, and the retry tier header,
 * so the command starts with a fresh attempt count. user_id itself cannot be
 * sent (the broker checks it against our login), so it travels as
 * x-payq-user-id, as on retries.
 *
 * What is added: the header payq-replayed-at, the replay's time, which is
 * also the row's resolved_at. The worker keeps headers that are not
 * x-payq-*, so if the replayed message fails again, its new dead letter
 * carries the same stamp, and reconciling recognizes it as a new failure of
 * a replayed row (and reopens the row) instead of acking it as the old copy.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "dlq.h"
#include "mqjson.h"
#include "topology.h"

#define CONFIRM_TIMEOUT_MS 30000
#define REPLAYED_AT_HEADER "payq-replayed-at"

static bool key_is(amqp_bytes_t k, const char *s)
{
    return k.len == strlen(s) && memcmp(k.bytes, s, k.len) == 0;
}

static bool key_starts(amqp_bytes_t k, const char *s)
{
    return k.len >= strlen(s) && memcmp(k.bytes, s, strlen(s)) == 0;
}

static bool dropped_header(amqp_bytes_t k)
{
    if (key_is(k, "x-payq-user-id"))
        return false;
    return key_starts(k, "x-payq-") || key_starts(k, "x-death") ||
           key_starts(k, "x-first-death-") || key_starts(k, "x-last-death-") ||
           key_is(k, "x-delivery-count") || key_is(k, PAYQ_RETRY_TIER_HEADER) ||
           key_is(k, REPLAYED_AT_HEADER);
}

/* The replayed message's properties (see the top of the file), allocated
 * in pool. */
static int replay_props(const char *props_json, const char *replayed_at, amqp_pool_t *pool,
                        amqp_basic_properties_t *out, char *err, size_t errlen)
{
    json_error_t je;
    json_t *j = json_loads(props_json, 0, &je);
    if (!json_is_object(j)) {
        snprintf(err, errlen, "its stored properties are not a JSON object");
        json_decref(j);
        return PAYQ_ERR_INVALID;
    }
    amqp_basic_properties_t p;
    int rc = mq_props_from_json(j, pool, &p);
    json_decref(j);
    if (rc != PAYQ_OK) {
        snprintf(err, errlen, "cannot rebuild its properties: %s", payq_strerror(rc));
        return rc;
    }
    int n = (p._flags & AMQP_BASIC_HEADERS_FLAG) ? p.headers.num_entries : 0;
    amqp_table_entry_t *e = amqp_pool_alloc(pool, (size_t)(n + 2) * sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return PAYQ_ERR_NOMEM;
    }
    int k = 0;
    bool have_user = false;
    for (int i = 0; i < n; i++) {
        if (dropped_header(p.headers.entries[i].key))
            continue;
        have_user |= key_is(p.headers.entries[i].key, "x-payq-user-id");
        e[k++] = p.headers.entries[i];
    }
    if (p._flags & AMQP_BASIC_USER_ID_FLAG) {
        if (!have_user && p.user_id.len > 0) {
            e[k].key = amqp_cstring_bytes("x-payq-user-id");
            e[k].value.kind = AMQP_FIELD_KIND_UTF8;
            e[k].value.value.bytes = p.user_id;
            k++;
        }
        p._flags &= ~(amqp_flags_t)AMQP_BASIC_USER_ID_FLAG;
    }
    e[k].key = amqp_cstring_bytes(REPLAYED_AT_HEADER);
    e[k].value.kind = AMQP_FIELD_KIND_UTF8;
    e[k].value.value.bytes = amqp_cstring_bytes(replayed_at);
    k++;
    p.headers.entries = e;
    p.headers.num_entries = k;
    p._flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    *out = p;
    return PAYQ_OK;
}

/* ---- progress ---------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct progress {
    bool on;
    double start;
    long done, total;
};

static void progress_draw(struct progress *pg)
{
    if (!pg->on)
        return;
    double el = now_s() - pg->start;
    double rate = el > 0 ? (double)pg->done / el : 0;
    char eta[32] = "-";
    if (rate > 0)
        dlq_age((long long)((double)(pg->total - pg->done) / rate + 0.5), eta, sizeof eta);
    int width = 30, fill = pg->total ? (int)(width * pg->done / pg->total) : width;
    char bar[32];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    fprintf(stderr, "\r[%s] %ld/%ld  %.1f/s  ETA %s\033[K", bar, pg->done, pg->total, rate, eta);
}

/* Clears the bar so that a message can be printed. */
static void progress_clear(const struct progress *pg)
{
    if (pg->on)
        fprintf(stderr, "\r\033[K");
}

/* ---- waiting ----------------------------------------------------------- */

/* Sleeps about ms while the AMQP connection keeps answering heartbeats
 * (rabbitmq-c does that only inside its own calls). */
static void nap(struct dlq *t, long ms)
{
    if (ms <= 0)
        return;
    if (t->mq) {
        struct mq_delivery *d = NULL;
        int rc = mq_next(t->mq, (int)ms, &d);
        mq_delivery_free(d); /* nothing is consumed here; a stray delivery would be redelivered */
        if (rc == PAYQ_ERR_TIMEOUT || rc == PAYQ_OK)
            return;
    }
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* ---- canary -------------------------------------------------------------- */

enum {
    CANARY_PENDING = 0,
    CANARY_OK,
    CANARY_FAILED
};

/* What the outcome check needs of a replayed row (its page is gone by the
 * time the canaries are checked). */
struct canary_item {
    char id[40];
    char *short_id, *rk, *scope, *message_id, *message_key;
    char *body_json; /* the body as JSON text, or NULL when it is not a JSON object */
    char since[40];  /* the replay's time */
    int state;
    char why[1100];
};

static void canary_item_free(struct canary_item *c)
{
    free(c->short_id);
    free(c->rk);
    free(c->scope);
    free(c->message_id);
    free(c->message_key);
    free(c->body_json);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* The body as compact JSON text for the request-hash comparison, or NULL
 * when it is not a JSON object (then only the other signals count). */
static char *body_json_text(const unsigned char *body, size_t len)
{
    json_error_t err;
    json_t *j = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &err);
    char *s = json_is_object(j) ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

static int canary_item_init(struct canary_item *c, PGresult *rows, int i, const char *at,
                            const unsigned char *body, size_t len)
{
    memset(c, 0, sizeof *c);
    snprintf(c->id, sizeof c->id, "%s", PQgetvalue(rows, i, COL_ID));
    snprintf(c->since, sizeof c->since, "%s", at);
    c->short_id = strdup(PQgetvalue(rows, i, COL_SHORT));
    c->rk = strdup(PQgetvalue(rows, i, COL_RK));
    c->scope = strdup(PQgetvalue(rows, i, COL_SCOPE));
    c->message_id = dup_or_null(dlq_val(rows, i, COL_MSGID));
    c->message_key = strdup(PQgetvalue(rows, i, COL_MSGKEY));
    c->body_json = body_json_text(body, len);
    if (!c->short_id || !c->rk || !c->scope || !c->message_key ||
        (dlq_val(rows, i, COL_MSGID) && !c->message_id)) {
        canary_item_free(c);
        return PAYQ_ERR_NOMEM;
    }
    return PAYQ_OK;
}

/*
 * The outcome of a replayed message so far. Success: payq.inbox holds the
 * (publisher, message_id) key with a reply that is not "rejected" and the
 * request hash of this body. Failure: a payq.failures row for its message
 * key after the replay, a new or reopened dead letter, a stored "rejected"
 * reply (the worker would return it again), or the key already taken by
 * another command.
 */
static int canary_poll(struct dlq *t, struct canary_item *c)
{
    static const char sql[] =
        "SELECT"
        " (SELECT reply->>'status' FROM payq.inbox"
        "   WHERE scope = $1 AND message_id = $2 AND reply IS NOT NULL),"
        " (SELECT request_hash = sha256(convert_to($3 || ' ' || ($4::jsonb)::text, 'UTF8'))"
        "    FROM payq.inbox WHERE scope = $1 AND message_id = $2 AND $4 IS NOT NULL),"
        " (SELECT kind || ': ' || error FROM payq.failures"
        "   WHERE message_key = $5 AND occurred_at > $6::timestamptz"
        "   ORDER BY occurred_at DESC, id DESC LIMIT 1),"
        " EXISTS (SELECT 1 FROM payq.dead_letters WHERE (id = $7::uuid AND status = 'dead')"
        "   OR (message_key = $5 AND id <> $7::uuid AND created_at > $6::timestamptz))";
    const char *p[7] = { c->scope,       c->message_id, c->rk, c->body_json,
                         c->message_key, c->since,      c->id };
    PGresult *r;
    if (dlq_query(t, sql, 7, p, NULL, NULL, &r) != PAYQ_OK) {
        snprintf(c->why, sizeof c->why, "cannot read its outcome: %s", db_error(t->db));
        return CANARY_FAILED;
    }
    const char *status = dlq_val(r, 0, 0), *same = dlq_val(r, 0, 1), *fail = dlq_val(r, 0, 2);
    bool dead_again = strcmp(PQgetvalue(r, 0, 3), "t") == 0;
    int out = CANARY_PENDING;
    if (same && strcmp(same, "f") == 0) {
        snprintf(c->why, sizeof c->why,
                 "its message_id is already taken by another command "
                 "(idempotency_conflict)");
        out = CANARY_FAILED;
    } else if (status && strcmp(status, "rejected") != 0) {
        snprintf(c->why, sizeof c->why, "applied (%s)", status);
        out = CANARY_OK;
    } else if (status) {
        snprintf(c->why, sizeof c->why, "rejected again (the stored reply is \"rejected\")");
        out = CANARY_FAILED;
    } else if (fail) {
        snprintf(c->why, sizeof c->why, "failed again: %s", fail);
        out = CANARY_FAILED;
    } else if (dead_again) {
        snprintf(c->why, sizeof c->why, "dead-lettered again");
        out = CANARY_FAILED;
    }
    PQclear(r);
    return out;
}

/* Puts a replayed row back to 'dead' after its canary failed. */
static void reopen_after_canary(struct dlq *t, const struct canary_item *c)
{
    char note[1200];
    snprintf(note, sizeof note, "canary replay failed: %s", c->why);
    const char *p[2] = { c->id, note };
    PGresult *r;
    if (dlq_query(t,
                  "UPDATE payq.dead_letters SET status = 'dead', resolved_at = NULL,"
                  " resolved_by = NULL, resolution_note = $2"
                  " WHERE id = $1::uuid AND status = 'replayed'",
                  2, p, NULL, NULL, &r) != PAYQ_OK) {
        fprintf(stderr, "payq-dlq: could not put %s back to dead: %s\n", c->id, db_error(t->db));
        return;
    }
    PQclear(r);
}

/* Waits for the outcome of the canaries; returns how many failed (their
 * rows are back to 'dead'). */
static long canary_wait(struct dlq *t, struct canary_item *c, int n, struct progress *pg)
{
    long timeout_ms = t->cfg->canary_timeout * 1000;
    double start = now_s();
    if (pg->on)
        fprintf(stderr, "\r\033[Kcanary: waiting up to %ld s for the outcome of %d message%s",
                t->cfg->canary_timeout, n, n == 1 ? "" : "s");
    for (;;) {
        int pending = 0, failed = 0;
        for (int i = 0; i < n; i++) {
            if (c[i].state == CANARY_PENDING)
                c[i].state = canary_poll(t, &c[i]);
            pending += c[i].state == CANARY_PENDING;
            failed += c[i].state == CANARY_FAILED;
        }
        if (failed || !pending)
            break;
        if ((now_s() - start) * 1000 >= (double)timeout_ms || dlq_interrupted())
            break;
        nap(t, 250);
    }
    progress_clear(pg);
    long failed = 0;
    for (int i = 0; i < n; i++) {
        if (c[i].state == CANARY_PENDING) {
            if (!c[i].message_id) {
                /* Without a message_id there is no inbox key to read. */
                printf("canary %s: no failure within %ld s (no message_id, so success cannot "
                       "be confirmed)\n",
                       c[i].short_id, t->cfg->canary_timeout);
                continue;
            }
            snprintf(c[i].why, sizeof c[i].why, "no outcome within %ld s (is a worker running?)",
                     t->cfg->canary_timeout);
            c[i].state = CANARY_FAILED;
        }
        if (c[i].state == CANARY_OK) {
            printf("canary %s: %s\n", c[i].short_id, c[i].why);
        } else {
            fprintf(stderr, "payq-dlq: canary %s %s: %s\n", c[i].short_id, c[i].rk, c[i].why);
            reopen_after_canary(t, &c[i]);
            failed++;
        }
    }
    return failed;
}

/* ---- replay ---------------------------------------------------------------- */

/* Rows are read this many at a time, so a replay of a whole incident's
 * worth of dead letters never holds them all in memory. */
#define PAGE 500

/* Why a row is not replayed, or NULL. */
static const char *skip_reason(const struct dlq *t, PGresult *rows, int i, char *buf, size_t len)
{
    const char *status = PQgetvalue(rows, i, COL_STATUS);
    if (strcmp(status, "dead") != 0 && !t->cfg->force) {
        snprintf(buf, len, "already %s at %s (--force replays it again)", status,
                 dlq_or(rows, i, COL_RESOLVED_AT, "?"));
        return buf;
    }
    if (strcmp(PQgetvalue(rows, i, COL_REDACTED), "t") == 0) {
        snprintf(buf, len,
                 "refused: its body was masked because it held a card number, so a "
                 "replay would send another command; ask the publisher to send it "
                 "again with a card token, then discard this one");
        return buf;
    }
    return NULL;
}

/* The time of a replay, from the database's clock (resolved_at and the
 * payq-replayed-at header must be the same value, to the microsecond). */
static int replay_time(struct dlq *t, char *out, size_t len)
{
    PGresult *r;
    if (dlq_query(t,
                  "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC',"
                  " 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
                  0, NULL, NULL, NULL, &r) != PAYQ_OK)
        return PAYQ_ERR_DB;
    snprintf(out, len, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return PAYQ_OK;
}

/* Publishes row i and waits for the confirm. */
static int publish_row(struct dlq *t, PGresult *rows, int i, const char *at,
                       const unsigned char *body, size_t len, char *err, size_t errlen)
{
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_basic_properties_t props;
    int rc = replay_props(PQgetvalue(rows, i, COL_PROPS), at, &pool, &props, err, errlen);
    if (rc == PAYQ_OK) {
        const char *x = dlq_or(rows, i, COL_EXCHANGE, PAYQ_X_COMMANDS);
        uint64_t seq;
        rc = mq_publish(t->mq, x, PQgetvalue(rows, i, COL_RK), true, &props, body, len, &seq);
        if (rc == PAYQ_OK)
            rc = mq_wait_confirms(t->mq, seq, CONFIRM_TIMEOUT_MS);
        if (rc == PAYQ_ERR_UNROUTABLE)
            snprintf(err, errlen, "the broker could not route it (no queue bound to %s for %s)", x,
                     PQgetvalue(rows, i, COL_RK));
        else if (rc != PAYQ_OK)
            snprintf(err, errlen, "publish failed: %s (%s)", payq_strerror(rc), mq_error(t->mq));
    }
    empty_amqp_pool(&pool);
    return rc;
}

/* Marks row i replayed at `at`, if nobody changed it meanwhile. */
static int mark_replayed(struct dlq *t, PGresult *rows, int i, const char *at)
{
    char note[600];
    snprintf(note, sizeof note, "replayed to %s with routing key %s",
             dlq_or(rows, i, COL_EXCHANGE, PAYQ_X_COMMANDS), PQgetvalue(rows, i, COL_RK));
    const char *p[5] = { PQgetvalue(rows, i, COL_ID), at, t->user, note,
                         PQgetvalue(rows, i, COL_STATUS) };
    PGresult *r;
    if (dlq_query(t,
                  "UPDATE payq.dead_letters SET status = 'replayed',"
                  " resolved_at = $2::timestamptz, resolved_by = $3, resolution_note = $4"
                  " WHERE id = $1::uuid AND status = $5",
                  5, p, NULL, NULL, &r) != PAYQ_OK)
        return PAYQ_ERR_DB;
    if (strcmp(PQcmdTuples(r), "1") != 0)
        fprintf(stderr,
                "payq-dlq: %s was changed by someone else during the replay; "
                "left as it is\n",
                PQgetvalue(rows, i, COL_SHORT));
    PQclear(r);
    return PAYQ_OK;
}

static void kill_after_publish_for_tests(void)
{
    /* Testing only (DLQ_TEST_KILL_ENV): the broker has the message, the row
     * is not marked yet; the test checks a second replay is harmless. */
    const char *v = getenv(DLQ_TEST_KILL_ENV);
    if (v && strcmp(v, "1") == 0)
        raise(SIGKILL);
}

/* A replay in progress. */
struct run {
    struct dlq *t;
    struct progress pg;
    struct canary_item *canary; /* the first --canary replays */
    int ncanary;
    bool canary_done;
    bool stop; /* the connection broke, the database failed, or a canary failed */
    bool canary_failed;
    double start;
    long replayed, skipped, failed;
};

/* Replays row i of a page. */
static void replay_row(struct run *run, PGresult *rows, int i)
{
    struct dlq *t = run->t;
    char buf[512], err[512], at[40];
    const char *sid = PQgetvalue(rows, i, COL_SHORT);
    const char *why = skip_reason(t, rows, i, buf, sizeof buf);
    if (why) {
        progress_clear(&run->pg);
        fprintf(stderr, "payq-dlq: skipped %s %s: %s\n", sid, PQgetvalue(rows, i, COL_RK), why);
        run->skipped++;
        return;
    }
    /* --rate: the n-th publish no earlier than start + n / rate. */
    if (t->cfg->rate > 0) {
        double due = run->start + (double)(run->replayed + run->failed) / (double)t->cfg->rate;
        nap(t, (long)((due - now_s()) * 1000));
    }
    unsigned char *body = NULL;
    size_t len = 0;
    int rc = dlq_body(t, PQgetvalue(rows, i, COL_ID), &body, &len);
    if (rc == PAYQ_OK)
        rc = replay_time(t, at, sizeof at);
    if (rc != PAYQ_OK) {
        progress_clear(&run->pg);
        if (rc == PAYQ_ERR_DB)
            dlq_db_error(t, "reading the dead letter");
        else
            fprintf(stderr, "payq-dlq: cannot read %s: %s\n", sid, payq_strerror(rc));
        free(body);
        run->failed++;
        run->stop = rc == PAYQ_ERR_DB;
        return;
    }
    rc = publish_row(t, rows, i, at, body, len, err, sizeof err);
    if (rc != PAYQ_OK) {
        free(body);
        progress_clear(&run->pg);
        fprintf(stderr, "payq-dlq: replay of %s failed: %s; it stays a dead letter\n", sid, err);
        run->failed++;
        /* A message the broker refused does not spoil the connection;
         * anything else does. */
        run->stop = rc != PAYQ_ERR_INVALID && rc != PAYQ_ERR_NOMEM && rc != PAYQ_ERR_UNROUTABLE &&
                    rc != PAYQ_ERR_NACKED;
        return;
    }
    kill_after_publish_for_tests();
    if (mark_replayed(t, rows, i, at) != PAYQ_OK) {
        free(body);
        progress_clear(&run->pg);
        fprintf(stderr,
                "payq-dlq: %s was published but could not be marked replayed: %s\n"
                "  it is still 'dead'; replaying it again is harmless (same "
                "message_id)\n",
                sid, db_error(t->db));
        run->failed++;
        run->stop = true;
        return;
    }
    run->replayed++;
    if (!run->canary_done &&
        canary_item_init(&run->canary[run->ncanary], rows, i, at, body, len) == PAYQ_OK)
        run->ncanary++;
    free(body);
}

/* Runs the canary check once the first --canary replays are out. */
static void check_canaries(struct run *run)
{
    run->canary_done = true;
    long failed = canary_wait(run->t, run->canary, run->ncanary, &run->pg);
    if (failed) {
        run->replayed -= failed;
        run->failed += failed;
        run->canary_failed = run->stop = true;
    }
}

static int dry_run(struct dlq *t, const struct dlq_filter *f)
{
    long would = 0, skip = 0, seen = 0;
    char cur_ts[64] = "", cur_id[40] = "";
    for (;;) {
        long page = f->limit > 0 && f->limit - seen < PAGE ? f->limit - seen : PAGE;
        PGresult *rows;
        if (page <= 0)
            break;
        if (dlq_select_page(t, f, cur_ts[0] ? cur_ts : NULL, cur_id[0] ? cur_id : NULL, page,
                            &rows) != PAYQ_OK)
            return dlq_db_error(t, "selecting dead letters");
        int n = PQntuples(rows);
        for (int i = 0; i < n; i++) {
            char buf[512];
            const char *why = skip_reason(t, rows, i, buf, sizeof buf);
            if (why) {
                printf("would skip   %s  %s: %s\n", PQgetvalue(rows, i, COL_SHORT),
                       PQgetvalue(rows, i, COL_RK), why);
                skip++;
            } else {
                printf("would replay %s  %-20s message_id %s -> exchange %s\n",
                       PQgetvalue(rows, i, COL_SHORT), PQgetvalue(rows, i, COL_RK),
                       dlq_or(rows, i, COL_MSGID, "-"),
                       dlq_or(rows, i, COL_EXCHANGE, PAYQ_X_COMMANDS));
                would++;
            }
        }
        seen += n;
        if (n > 0) {
            snprintf(cur_ts, sizeof cur_ts, "%s", PQgetvalue(rows, n - 1, COL_CURSOR));
            snprintf(cur_id, sizeof cur_id, "%s", PQgetvalue(rows, n - 1, COL_ID));
        }
        PQclear(rows);
        if (n < page)
            break;
    }
    if (t->cfg->canary > 0 && would > 0)
        printf("--canary %ld: would replay %ld first and wait up to %ld s for their outcome\n",
               t->cfg->canary, t->cfg->canary < would ? t->cfg->canary : would,
               t->cfg->canary_timeout);
    printf("dry run: would replay %ld, skip %ld; nothing was changed\n", would, skip);
    return DLQ_EXIT_OK;
}

int dlq_replay(struct dlq *t, const struct dlq_filter *in)
{
    if (t->cfg->dry_run)
        return dry_run(t, in);
    /* Only dead letters archived before the replay started: one that
     * arrives meanwhile (perhaps a replayed message failing again) waits
     * for the next run instead of being chased. */
    struct dlq_filter fs = *in;
    const struct dlq_filter *f = &fs;
    if (!fs.until_abs[0] && replay_time(t, fs.until_abs, sizeof fs.until_abs) != PAYQ_OK)
        return dlq_db_error(t, "reading the clock");
    struct run run;
    memset(&run, 0, sizeof run);
    run.t = t;
    run.canary_done = t->cfg->canary == 0;
    if (!run.canary_done && !(run.canary = calloc((size_t)t->cfg->canary, sizeof *run.canary))) {
        fprintf(stderr, "payq-dlq: out of memory\n");
        return DLQ_EXIT_FAIL;
    }
    run.pg.on = t->progress;
    run.start = run.pg.start = now_s();
    long total = -1, seen = 0;
    int rc = DLQ_EXIT_OK;
    char cur_ts[64] = "", cur_id[40] = "";

    while (!run.stop && !dlq_interrupted()) {
        long page = f->limit > 0 && f->limit - seen < PAGE ? f->limit - seen : PAGE;
        if (page <= 0)
            break;
        PGresult *rows;
        if (dlq_select_page(t, f, cur_ts[0] ? cur_ts : NULL, cur_id[0] ? cur_id : NULL, page,
                            &rows) != PAYQ_OK) {
            progress_clear(&run.pg);
            rc = dlq_db_error(t, "selecting dead letters");
            break;
        }
        int n = PQntuples(rows);
        if (n > 0 && total < 0) {
            total = atol(PQgetvalue(rows, 0, COL_TOTAL));
            if (f->limit > 0 && total > f->limit)
                total = f->limit;
            run.pg.total = total;
            if (dlq_need_mq(t) != PAYQ_OK) {
                PQclear(rows);
                free(run.canary);
                return DLQ_EXIT_FAIL;
            }
        }
        for (int i = 0; i < n && !run.stop && !dlq_interrupted(); i++) {
            replay_row(&run, rows, i);
            seen++;
            run.pg.done = seen;
            progress_draw(&run.pg);
            if (!run.canary_done && run.ncanary == t->cfg->canary)
                check_canaries(&run);
        }
        if (n > 0) {
            snprintf(cur_ts, sizeof cur_ts, "%s", PQgetvalue(rows, n - 1, COL_CURSOR));
            snprintf(cur_id, sizeof cur_id, "%s", PQgetvalue(rows, n - 1, COL_ID));
        }
        PQclear(rows);
        if (n < page)
            break;
    }
    /* Fewer replays than --canary: check them all the same. */
    if (!run.canary_done && run.ncanary > 0)
        check_canaries(&run);
    progress_clear(&run.pg);
    for (int k = 0; k < run.ncanary; k++)
        canary_item_free(&run.canary[k]);
    free(run.canary);

    if (total < 0 && rc == DLQ_EXIT_OK) {
        printf("nothing to replay: no dead letters match\n");
        return DLQ_EXIT_OK;
    }
    if (run.canary_failed)
        fprintf(stderr, "payq-dlq: the canary failed; stopped before the other dead letters\n");
    if (run.replayed > 0 || run.canary_failed) {
        struct dlq_sync_stats st;
        if (dlq_reconcile(t, &st) == PAYQ_OK)
            dlq_print_sync(t, &st);
        else
            rc = DLQ_EXIT_FAIL;
    }
    long not_tried = total > seen ? total - seen : 0;
    printf("replayed %ld, skipped %ld, failed %ld", run.replayed, run.skipped, run.failed);
    if (not_tried)
        printf(", not attempted %ld%s", not_tried,
               run.canary_failed   ? " (stopped by the canary)"
               : dlq_interrupted() ? " (interrupted)"
                                   : "");
    printf("\n");
    if (run.failed || not_tried)
        rc = DLQ_EXIT_FAIL;
    return rc;
}

/* ---- discard --------------------------------------------------------------- */

/* Lists what a discard would do, or says why named rows are skipped. */
static int discard_preview(struct dlq *t, const struct dlq_filter *f, long *eligible)
{
    PGresult *rows;
    if (dlq_select(t, f, false, &rows) != PAYQ_OK)
        return dlq_db_error(t, "selecting dead letters");
    long skipped = 0;
    *eligible = 0;
    for (int i = 0, n = PQntuples(rows); i < n; i++) {
        const char *status = PQgetvalue(rows, i, COL_STATUS);
        bool ok =
            strcmp(status, "dead") == 0 || (t->cfg->force && strcmp(status, "discarded") != 0);
        if (!ok) {
            fprintf(stderr, "payq-dlq: %s %s: already %s at %s%s\n",
                    t->cfg->dry_run ? "would skip" : "skipped", PQgetvalue(rows, i, COL_SHORT),
                    status, dlq_or(rows, i, COL_RESOLVED_AT, "?"),
                    strcmp(status, "discarded") != 0 ? " (--force discards it anyway)" : "");
            skipped++;
        } else {
            (*eligible)++;
            if (t->cfg->dry_run)
                printf("would discard %s  %-20s message_id %s  (%s)\n",
                       PQgetvalue(rows, i, COL_SHORT), PQgetvalue(rows, i, COL_RK),
                       dlq_or(rows, i, COL_MSGID, "-"), PQgetvalue(rows, i, COL_REASON));
        }
    }
    PQclear(rows);
    if (t->cfg->dry_run)
        printf("dry run: would discard %ld, skip %ld; nothing was changed\n", *eligible, skipped);
    return DLQ_EXIT_OK;
}

int dlq_discard(struct dlq *t, const struct dlq_filter *f, const char *note)
{
    long eligible = 0;
    /* Named ids are few: say which of them are skipped, and why. A filter
     * can select many rows: those are discarded in one statement. */
    if (t->cfg->dry_run || f->ids) {
        int rc = discard_preview(t, f, &eligible);
        if (rc != DLQ_EXIT_OK || t->cfg->dry_run)
            return rc;
    }
    static const char sql[] =
        "WITH sel AS (SELECT d.id, d.status" DLQ_WHERE
        "   ORDER BY d.created_at, d.id LIMIT $10::bigint),"
        " upd AS (UPDATE payq.dead_letters u SET status = 'discarded', resolved_at = now(),"
        "   resolved_by = $11, resolution_note = $12 FROM sel WHERE u.id = sel.id"
        "   AND (u.status = 'dead' OR ($13::boolean AND u.status <> 'discarded'))"
        "   RETURNING 1)"
        " SELECT (SELECT count(*) FROM sel), (SELECT count(*) FROM upd)";
    char limit[32];
    const char *p[DLQ_NPARAMS + 3];
    dlq_filter_params(f, limit, sizeof limit, p);
    p[10] = t->user;
    p[11] = note;
    p[12] = t->cfg->force ? "true" : "false";
    PGresult *r;
    if (dlq_query(t, sql, DLQ_NPARAMS + 3, p, NULL, NULL, &r) != PAYQ_OK)
        return dlq_db_error(t, "discarding");
    long selected = atol(PQgetvalue(r, 0, 0)), discarded = atol(PQgetvalue(r, 0, 1));
    PQclear(r);
    if (selected == 0) {
        printf("nothing to discard: no dead letters match\n");
        return DLQ_EXIT_OK;
    }
    int rc = DLQ_EXIT_OK;
    if (discarded > 0) {
        struct dlq_sync_stats st;
        if (dlq_reconcile(t, &st) == PAYQ_OK) {
            dlq_print_sync(t, &st);
        } else {
            fprintf(stderr,
                    "payq-dlq: the rows are discarded, but their queue copies may still "
                    "be in %s: run `payq-dlq sync` once the broker is reachable\n",
                    t->cfg->queue);
            rc = DLQ_EXIT_FAIL;
        }
    }
    printf("discarded %ld, skipped %ld\n", discarded, selected - discarded);
    return rc;
}
