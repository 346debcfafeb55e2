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

enum { CANARY_PENDING = 0, CANARY_OK, CANARY_FAILED };

/*
 * The outcome of a replayed message so far. Success: payq.inbox holds the
 * (publisher, message_id) key with a reply that is not "rejected" and the
 * same request hash as our body. Failure: a payq.failures row for its
 * message key after the replay, a new or reopened dead letter, a stored
 * "rejected" reply (which the worker would return again), or the key
 * already taken by another command.
 */
static int canary_poll(struct dlq *t, PGresult *rows, int i, const char *since,
                       const char *body_json, char *why, size_t whylen)
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
    const char *p[7] = { dlq_val(rows, i, COL_SCOPE), dlq_val(rows, i, COL_MSGID),
                         dlq_val(rows, i, COL_RK),    body_json,
                         dlq_val(rows, i, COL_MSGKEY), since,
                         dlq_val(rows, i, COL_ID) };
    PGresult *r;
    if (dlq_query(t, sql, 7, p, NULL, NULL, &r) != PAYQ_OK) {
        snprintf(why, whylen, "cannot read its outcome: %s", db_error(t->db));
        return CANARY_FAILED;
    }
    const char *status = dlq_val(r, 0, 0), *same = dlq_val(r, 0, 1), *fail = dlq_val(r, 0, 2);
    bool dead_again = strcmp(PQgetvalue(r, 0, 3), "t") == 0;
    int out = CANARY_PENDING;
    if (same && strcmp(same, "f") == 0) {
        snprintf(why, whylen, "its message_id is already taken by another command "
                              "(idempotency_conflict)");
        out = CANARY_FAILED;
    } else if (status && strcmp(status, "rejected") != 0) {
        snprintf(why, whylen, "applied (%s)", status);
        out = CANARY_OK;
    } else if (status) {
        snprintf(why, whylen, "rejected again (the stored reply is \"rejected\")");
        out = CANARY_FAILED;
    } else if (fail) {
        snprintf(why, whylen, "failed again: %s", fail);
        out = CANARY_FAILED;
    } else if (dead_again) {
        snprintf(why, whylen, "dead-lettered again");
        out = CANARY_FAILED;
    }
    PQclear(r);
    return out;
}

/* The body as JSON text for the request-hash comparison, or NULL when it
 * is not a JSON object (then only the other signals count). Caller frees. */
static char *body_json_text(const unsigned char *body, size_t len)
{
    json_error_t err;
    json_t *j = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &err);
    char *s = json_is_object(j) ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

/* Puts a replayed row back to 'dead' after its canary failed. */
static void reopen_after_canary(struct dlq *t, const char *id, const char *why)
{
    char note[1200];
    snprintf(note, sizeof note, "canary replay failed: %s", why);
    const char *p[2] = { id, note };
    PGresult *r;
    if (dlq_query(t, "UPDATE payq.dead_letters SET status = 'dead', resolved_at = NULL,"
                     " resolved_by = NULL, resolution_note = $2"
                     " WHERE id = $1::uuid AND status = 'replayed'",
                  2, p, NULL, NULL, &r) != PAYQ_OK) {
        fprintf(stderr, "payq-dlq: could not put %s back to dead: %s\n", id, db_error(t->db));
        return;
    }
    PQclear(r);
}

struct canary_item {
    int row;
    char since[40];
    char *body_json;
    int state;
    char why[1100];
};

/* Waits for the outcome of the canaries; true when all succeeded. */
static bool canary_wait(struct dlq *t, PGresult *rows, struct canary_item *c, int n,
                        struct progress *pg)
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
                c[i].state = canary_poll(t, rows, c[i].row, c[i].since, c[i].body_json, c[i].why,
                                         sizeof c[i].why);
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
    bool ok = true;
    for (int i = 0; i < n; i++) {
        const char *id = PQgetvalue(rows, c[i].row, COL_SHORT);
        if (c[i].state == CANARY_PENDING) {
            if (!dlq_val(rows, c[i].row, COL_MSGID)) {
                /* Without a message_id there is no inbox key to read. */
                printf("canary %s: no failure within %ld s (no message_id, so success cannot "
                       "be confirmed)\n", id, t->cfg->canary_timeout);
                continue;
            }
            snprintf(c[i].why, sizeof c[i].why, "no outcome within %ld s (is a worker running?)",
                     t->cfg->canary_timeout);
            c[i].state = CANARY_FAILED;
        }
        if (c[i].state == CANARY_OK) {
            printf("canary %s: %s\n", id, c[i].why);
        } else {
            ok = false;
            fprintf(stderr, "payq-dlq: canary %s %s: %s\n", id, PQgetvalue(rows, c[i].row, COL_RK),
                    c[i].why);
        }
    }
    return ok;
}

/* ---- replay ---------------------------------------------------------------- */

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
        snprintf(buf, len, "refused: its body was masked because it held a card number, so a "
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
    if (dlq_query(t, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC',"
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
            snprintf(err, errlen, "publish failed: %s (%s)", payq_strerror(rc),
                     mq_error(t->mq));
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
    if (dlq_query(t, "UPDATE payq.dead_letters SET status = 'replayed',"
                     " resolved_at = $2::timestamptz, resolved_by = $3, resolution_note = $4"
                     " WHERE id = $1::uuid AND status = $5",
                  5, p, NULL, NULL, &r) != PAYQ_OK)
        return PAYQ_ERR_DB;
    if (strcmp(PQcmdTuples(r), "1") != 0)
        fprintf(stderr, "payq-dlq: %s was changed by someone else during the replay; "
                        "left as it is\n", PQgetvalue(rows, i, COL_SHORT));
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

static void dry_run(struct dlq *t, PGresult *rows)
{
    int n = PQntuples(rows), would = 0, skip = 0;
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
    if (t->cfg->canary > 0 && would > 0)
        printf("--canary %ld: would replay %ld first and wait up to %ld s for their outcome\n",
               t->cfg->canary, t->cfg->canary < would ? t->cfg->canary : (long)would,
               t->cfg->canary_timeout);
    printf("dry run: would replay %d, skip %d; nothing was changed\n", would, skip);
}

int dlq_replay(struct dlq *t, const struct dlq_filter *f)
{
    PGresult *rows;
    if (dlq_select(t, f, false, &rows) != PAYQ_OK)
        return dlq_db_error(t, "selecting dead letters");
    int n = PQntuples(rows);
    if (n == 0) {
        printf("nothing to replay: no dead letters match\n");
        PQclear(rows);
        return DLQ_EXIT_OK;
    }
    if (t->cfg->dry_run) {
        dry_run(t, rows);
        PQclear(rows);
        return DLQ_EXIT_OK;
    }
    if (dlq_need_mq(t) != PAYQ_OK) {
        PQclear(rows);
        return DLQ_EXIT_FAIL;
    }

    long canary_n = t->cfg->canary;
    struct canary_item *canary = canary_n > 0 ? calloc((size_t)canary_n, sizeof *canary) : NULL;
    if (canary_n > 0 && !canary) {
        PQclear(rows);
        fprintf(stderr, "payq-dlq: out of memory\n");
        return DLQ_EXIT_FAIL;
    }
    int ncanary = 0;
    bool canary_done = canary_n == 0, stopped = false;
    long replayed = 0, skipped = 0, failed = 0, not_tried = 0;
    struct progress pg = { t->progress, now_s(), 0, n };
    double start = now_s();
    int rc = DLQ_EXIT_OK;

    for (int i = 0; i < n; i++) {
        if (stopped || dlq_interrupted()) {
            not_tried = n - i;
            break;
        }
        char buf[512], err[512], at[40];
        const char *why = skip_reason(t, rows, i, buf, sizeof buf);
        if (why) {
            progress_clear(&pg);
            fprintf(stderr, "payq-dlq: skipped %s %s: %s\n", PQgetvalue(rows, i, COL_SHORT),
                    PQgetvalue(rows, i, COL_RK), why);
            skipped++;
            pg.done++;
            progress_draw(&pg);
            continue;
        }
        /* --rate: the i-th publish no earlier than start + i / rate. */
        if (t->cfg->rate > 0) {
            double due = start + (double)(replayed + failed) / (double)t->cfg->rate;
            nap(t, (long)((due - now_s()) * 1000));
        }
        size_t len = 0;
        unsigned char *body =
            PQunescapeBytea((const unsigned char *)PQgetvalue(rows, i, COL_BODY), &len);
        if (!body || replay_time(t, at, sizeof at) != PAYQ_OK) {
            PQfreemem(body);
            progress_clear(&pg);
            rc = body ? dlq_db_error(t, "reading the clock") : DLQ_EXIT_FAIL;
            not_tried = n - i;
            break;
        }
        int prc = publish_row(t, rows, i, at, body, len, err, sizeof err);
        if (prc != PAYQ_OK) {
            PQfreemem(body);
            progress_clear(&pg);
            fprintf(stderr, "payq-dlq: replay of %s failed: %s; it stays a dead letter\n",
                    PQgetvalue(rows, i, COL_SHORT), err);
            failed++;
            pg.done++;
            if (prc != PAYQ_ERR_INVALID && prc != PAYQ_ERR_NOMEM && prc != PAYQ_ERR_UNROUTABLE &&
                prc != PAYQ_ERR_NACKED) {
                /* The connection is unusable: stop here. */
                not_tried = n - i - 1;
                break;
            }
            continue;
        }
        kill_after_publish_for_tests();
        if (mark_replayed(t, rows, i, at) != PAYQ_OK) {
            PQfreemem(body);
            progress_clear(&pg);
            fprintf(stderr, "payq-dlq: %s was published but could not be marked replayed: %s\n"
                            "  it is still 'dead'; replaying it again is harmless (same "
                            "message_id)\n",
                    PQgetvalue(rows, i, COL_SHORT), db_error(t->db));
            failed++;
            not_tried = n - i - 1;
            break;
        }
        replayed++;
        pg.done++;
        if (!canary_done) {
            struct canary_item *c = &canary[ncanary++];
            c->row = i;
            snprintf(c->since, sizeof c->since, "%s", at);
            c->body_json = body_json_text(body, len);
        }
        PQfreemem(body);
        progress_draw(&pg);

        bool last = !canary_done;
        for (int k = i + 1; !canary_done && k < n && last; k++)
            last = skip_reason(t, rows, k, buf, sizeof buf) != NULL;
        if (!canary_done && (ncanary == canary_n || last)) {
            canary_done = true;
            if (!canary_wait(t, rows, canary, ncanary, &pg)) {
                for (int k = 0; k < ncanary; k++) {
                    if (canary[k].state == CANARY_FAILED) {
                        reopen_after_canary(t, PQgetvalue(rows, canary[k].row, COL_ID),
                                            canary[k].why);
                        replayed--;
                        failed++;
                    }
                }
                fprintf(stderr, "payq-dlq: the canary failed; stopping before the other %d "
                                "dead letter%s\n", n - i - 1, n - i - 1 == 1 ? "" : "s");
                stopped = true;
            }
            progress_draw(&pg);
        }
    }
    progress_clear(&pg);
    for (int k = 0; k < ncanary; k++)
        free(canary[k].body_json);
    free(canary);
    PQclear(rows);

    if (replayed > 0) {
        struct dlq_sync_stats st;
        if (dlq_reconcile(t, &st) == PAYQ_OK)
            dlq_print_sync(t, &st);
        else
            rc = DLQ_EXIT_FAIL;
    }
    printf("replayed %ld, skipped %ld, failed %ld", replayed, skipped, failed);
    if (not_tried)
        printf(", not attempted %ld%s", not_tried,
               stopped ? " (stopped by the canary)" : dlq_interrupted() ? " (interrupted)" : "");
    printf("\n");
    if (failed || not_tried)
        rc = DLQ_EXIT_FAIL;
    return rc;
}

/* ---- discard --------------------------------------------------------------- */

int dlq_discard(struct dlq *t, const struct dlq_filter *f, const char *note)
{
    PGresult *rows;
    if (dlq_select(t, f, false, &rows) != PAYQ_OK)
        return dlq_db_error(t, "selecting dead letters");
    int n = PQntuples(rows);
    if (n == 0) {
        printf("nothing to discard: no dead letters match\n");
        PQclear(rows);
        return DLQ_EXIT_OK;
    }
    /* The ids to discard, as a uuid[] literal; resolved rows are skipped
     * unless --force (a discarded one is never discarded twice). */
    char *ids = malloc((size_t)n * 37 + 3);
    if (!ids) {
        PQclear(rows);
        fprintf(stderr, "payq-dlq: out of memory\n");
        return DLQ_EXIT_FAIL;
    }
    size_t pos = 0;
    long chosen = 0, skipped = 0;
    ids[pos++] = '{';
    for (int i = 0; i < n; i++) {
        const char *status = PQgetvalue(rows, i, COL_STATUS);
        bool ok = strcmp(status, "dead") == 0 ||
                  (t->cfg->force && strcmp(status, "discarded") != 0);
        if (!ok) {
            fprintf(stderr, "payq-dlq: skipped %s: already %s at %s%s\n",
                    PQgetvalue(rows, i, COL_SHORT), status, dlq_or(rows, i, COL_RESOLVED_AT, "?"),
                    strcmp(status, "discarded") != 0 ? " (--force discards it anyway)" : "");
            skipped++;
            continue;
        }
        if (t->cfg->dry_run)
            printf("would discard %s  %-20s message_id %s  (%s)\n", PQgetvalue(rows, i, COL_SHORT),
                   PQgetvalue(rows, i, COL_RK), dlq_or(rows, i, COL_MSGID, "-"),
                   PQgetvalue(rows, i, COL_REASON));
        if (chosen++)
            ids[pos++] = ',';
        memcpy(ids + pos, PQgetvalue(rows, i, COL_ID), 36);
        pos += 36;
    }
    ids[pos++] = '}';
    ids[pos] = 0;
    PQclear(rows);
    if (t->cfg->dry_run) {
        printf("dry run: would discard %ld, skip %ld; nothing was changed\n", chosen, skipped);
        free(ids);
        return DLQ_EXIT_OK;
    }
    long discarded = 0;
    if (chosen > 0) {
        /* The status is checked again: a row replayed since the selection
         * stays replayed. */
        const char *p[4] = { ids, t->user, note, t->cfg->force ? "true" : "false" };
        PGresult *r;
        if (dlq_query(t, "UPDATE payq.dead_letters SET status = 'discarded', resolved_at = now(),"
                         " resolved_by = $2, resolution_note = $3"
                         " WHERE id = ANY($1::uuid[])"
                         "   AND (status = 'dead' OR ($4::boolean AND status <> 'discarded'))",
                      4, p, NULL, NULL, &r) != PAYQ_OK) {
            free(ids);
            return dlq_db_error(t, "discarding");
        }
        discarded = atol(PQcmdTuples(r));
        PQclear(r);
    }
    free(ids);
    int rc = DLQ_EXIT_OK;
    if (discarded > 0) {
        struct dlq_sync_stats st;
        if (dlq_reconcile(t, &st) == PAYQ_OK) {
            dlq_print_sync(t, &st);
        } else {
            fprintf(stderr, "payq-dlq: the rows are discarded, but their queue copies are still "
                            "in %s: run `payq-dlq sync` once the broker is reachable\n",
                    t->cfg->queue);
            rc = DLQ_EXIT_FAIL;
        }
    }
    printf("discarded %ld, skipped %ld\n", discarded, skipped);
    return rc;
}
