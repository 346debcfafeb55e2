/*
 * test_chaos.c - payq under faults.
 *
 * A seeded mixed workload (workload.h: opens, deposits, wallet and card
 * payments with normal, flaky, timing-out and meant-to-fail tokens,
 * captures, cancels, refunds, and a few messages meant for the DLQ), every
 * command published two or three times, at a steady rate, to two worker
 * processes, while the suite
 *   - SIGKILLs a worker process at random moments and starts a new one,
 *   - restarts RabbitMQ once (every connection drops, direct reply-to
 *     queues with them: the publisher reconnects and publishes again what
 *     was not confirmed),
 *   - stops PostgreSQL for a few seconds once while commands keep coming.
 * The outcomes are judged from the database and the queues, never from the
 * replies alone (a broker restart loses replies by design):
 *   - every command has exactly one outcome, the one the model computed from
 *     the workload (status and code), and its duplicates got the same one;
 *   - every payment and refund is in the state the model says, with exactly
 *     the events it should have, once each; every account event once;
 *   - every account holds what the model says to the minor unit, and the
 *     money of the run is conserved (deposits = wallets + merchants + fees -
 *     card net), the run's ledger sums to zero;
 *   - the outbox is published and every event reached payq.events;
 *   - the work queue and the retry tiers are empty; the DLQ and the
 *     dead-letter archive hold exactly the messages meant to fail;
 *   - `payq-worker check` passes.
 * Then it prints a summary table (Markdown, as in the README).
 *
 *   test_chaos [--seed N] [--commands N]
 *
 * Environment: PAYQ_CHAOS_SEED (default: from the clock; printed first, so a
 * failure can be replayed), PAYQ_CHAOS_COMMANDS (400), PAYQ_CHAOS_KILLS (6),
 * PAYQ_CHAOS_RATE (publishes per second, 40), PAYQ_CHAOS_PG_DOWN_MS (5000),
 * PAYQ_CHAOS_BROKER_DOWN_MS (2000). A seed replays the workload, its publish
 * order and the fault schedule (which publish each fault comes before);
 * thread timing is the machine's.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "integration/harness.h"
#include "topology.h"
#include "workload.h"

#define NWORKERS 2
#define WAIT_S 240 /* longest wait for a wave's outcomes */

static struct {
    uint64_t seed;
    long commands, kills, rate, pg_down_ms, broker_down_ms;
} cfg = { 0, 400, 6, 40, 5000, 2000 };

/* Each worker: two threads, a small prefetch (a killed worker returns few
 * deliveries), delays capped at the 5 s tier and a retry budget a 30%-flaky
 * provider practically never spends (exhaustion has its own test). A
 * delivery in hand when its worker is killed or the broker restarts comes
 * back counted, so with the default 6 kills and one broker restart a sound
 * command can be delivered up to 8 times: at the default poison limit of 5,
 * one that was in hand at four of those faults was dead-lettered as poison
 * (seed 396679376, once in a few runs). The limit here is the highest the
 * worker takes, 9, above what the faults alone can add up to; poison itself
 * has its own test. */
static const char *const worker_env[] = {
    "PAYQ_THREADS=2",       "PAYQ_PREFETCH=4",          "PAYQ_BATCH=4",
    "PAYQ_LOG_LEVEL=info",  "PAYQ_NO_MIGRATE=true",     "PAYQ_RETRY_CAP_MS=5000",
    "PAYQ_MAX_ATTEMPTS=20", "PAYQ_POISON_DELIVERIES=9", NULL,
};

static struct run {
    struct chaos_plan *plan;
    char prefix[96];
    char events_queue[160];
    bool events_queue_made;
    mq_t *mq; /* the publisher; NULL while it must reconnect */
    pid_t workers[NWORKERS];
    uint64_t fault_rng;
    /* the fault schedule, as publish indices */
    size_t kill_at[64];
    int nkill, next_kill, pending_kills;
    size_t broker_at, pg_at;
    bool pg_down, broker_down;
    long long pg_up_at;
    double pace_next;
    long long t0;
    /* what happened */
    long publishes, resends, connects, replies, replies_rejected;
    int kills, broker_restarts, pg_restarts;
    double broker_down_s, pg_down_s;
    int mismatches;
    char mismatch[4][512];
} run;

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

static double elapsed_s(void)
{
    return (double)(now_ms() - run.t0) / 1000.0;
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("# t+%5.1fs ", elapsed_s());
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
}

/* A difference between what the workload expects and what happened: kept
 * (the first few) and failed at the end, so one run shows several. */
static void mismatch(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void mismatch(const char *fmt, ...)
{
    if (run.mismatches < 4) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(run.mismatch[run.mismatches], sizeof run.mismatch[0], fmt, ap);
        va_end(ap);
        printf("# MISMATCH: %s\n", run.mismatch[run.mismatches]);
    }
    run.mismatches++;
}

static int stack(const char *verb, const char *what)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "bash %s/tests/stack.sh %s %s >/dev/null 2>&1", PAYQ_SOURCE_DIR, verb,
             what);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The management HTTP API (queues for events), through curl. */
static int mgmt(const char *method, const char *path, const char *body)
{
    const char *url = getenv("PAYQ_MGMT_URL");
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "curl -fsS -o /dev/null -u payq:payq -X %s -H 'content-type: application/json'"
             " %s%s%s '%s%s'",
             method, body ? "-d '" : "", body ? body : "", body ? "'" : "",
             url ? url : "http://127.0.0.1:15673", path);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ------------------------------------------------------------ publisher */

static const char *str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* A reply, checked against the model: the reply of a duplicate or of a
 * command redelivered after a crash must be the one the database keeps. */
static void on_reply(const struct mq_delivery *d)
{
    json_t *j = json_loadb(d->message.body.bytes, d->message.body.len, 0, NULL);
    if (!j) {
        mismatch("a reply is not JSON: %.*s", (int)d->message.body.len,
                 (const char *)d->message.body.bytes);
        return;
    }
    run.replies++;
    const char *command = str(j, "command"), *id = str(j, "id"), *status = str(j, "status"),
               *code = str(j, "code");
    const struct chaos_plan *p = run.plan;
    bool known = false;
    for (size_t k = 0; k < p->ncmds && !known; k++) {
        const struct plan_cmd *c = &p->cmds[k];
        if (strcmp(status, "rejected") == 0) {
            known = plan_is_bad(c) && strcmp(c->want_code, code) == 0;
        } else if (!plan_is_bad(c) && strcmp(c->rk, command) == 0 && strcmp(c->id, id) == 0) {
            known = true;
            if (strcmp(c->want_status, status) != 0 ||
                strcmp(c->want_code ? c->want_code : "", code) != 0)
                mismatch("%s %s: replied %s/%s, expected %s/%s", command, id, status, code,
                         c->want_status, c->want_code ? c->want_code : "");
        }
    }
    if (strcmp(status, "rejected") == 0)
        run.replies_rejected++;
    if (!known)
        mismatch("a reply about nothing the workload sent: %s %s %s/%s", command, id, status, code);
    json_decref(j);
}

static void pub_drop(void)
{
    mq_close(run.mq);
    run.mq = NULL;
}

static bool pub_connect(void)
{
    mq_t *mq;
    if (mq_connect(getenv("AMQP_URL"), NULL, "payq chaos publisher", 30, &mq) != PAYQ_OK)
        return false;
    if (mq_consume_direct_reply(mq) != PAYQ_OK) {
        mq_close(mq);
        return false;
    }
    run.mq = mq;
    run.connects++;
    return true;
}

/* Takes replies for up to wait_ms (sleeps when the publisher is down). */
static void drain_replies(long wait_ms)
{
    long long until = now_ms() + wait_ms;
    for (;;) {
        long long left = until - now_ms();
        if (left < 0)
            left = 0;
        if (!run.mq) {
            sleep_ms((long)left);
            return;
        }
        struct mq_delivery *d = NULL;
        int rc = mq_next(run.mq, (int)left, &d);
        if (rc == PAYQ_ERR_TIMEOUT)
            return;
        if (rc != PAYQ_OK) {
            pub_drop();
            continue;
        }
        on_reply(d);
        mq_delivery_free(d);
    }
}

/* Publishes one copy and waits for the broker's confirm; through a broker
 * restart it reconnects and publishes again (at least once, like any
 * careful publisher: the duplicates are payq's to absorb). */
static void publish_copy(const struct plan_cmd *c, int copy)
{
    long long give_up = now_ms() + 120000;
    for (;;) {
        if (run.mq || pub_connect()) {
            amqp_basic_properties_t p;
            memset(&p, 0, sizeof p);
            p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
                       AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_REPLY_TO_FLAG;
            p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
            p.content_type = amqp_cstring_bytes("application/json");
            p.message_id = amqp_cstring_bytes(c->mid[copy]);
            p.reply_to = amqp_cstring_bytes("amq.rabbitmq.reply-to");
            uint64_t seq;
            if (mq_publish(run.mq, PAYQ_X_COMMANDS, c->rk, true, &p, c->body, strlen(c->body),
                           &seq) == PAYQ_OK &&
                mq_wait_confirms(run.mq, seq, 10000) == PAYQ_OK) {
                run.publishes++;
                return;
            }
            pub_drop();
            run.resends++;
        }
        if (now_ms() > give_up)
            fail_msg("could not publish to RabbitMQ for 120 s");
        sleep_ms(500);
    }
}

/* A steady rate, so faults land while work is in flight rather than after
 * a burst; after a pause (an outage, a restart) it does not catch up. */
static void pace(void)
{
    double now = (double)now_ms() / 1000.0;
    if (run.pace_next < now - 1.0)
        run.pace_next = now;
    if (run.pace_next > now)
        drain_replies((long)((run.pace_next - now) * 1000.0));
    else
        drain_replies(0);
    run.pace_next += 1.0 / (double)cfg.rate;
}

/* --------------------------------------------------------------- faults */

static void kill_one(void)
{
    int k = (int)plan_below(&run.fault_rng, NWORKERS);
    /* a random moment: up to 300 ms into whatever the worker is doing */
    drain_replies((long)plan_below(&run.fault_rng, 300));
    int st = h_worker_stop(run.workers[k], SIGKILL);
    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL)
        fail_msg("worker %d had already died by itself (status %d)", (int)run.workers[k], st);
    run.kills++;
    note("SIGKILL worker %d (kill %d)", (int)run.workers[k], run.kills);
    run.workers[k] = h_worker_start(worker_env);
}

static void pg_up_when_due(bool now)
{
    if (!run.pg_down || (!now && now_ms() < run.pg_up_at))
        return;
    assert_int_equal(stack("start", "pg"), 0);
    run.pg_down = false;
    run.pg_restarts++;
    run.pg_down_s = (double)(now_ms() - run.pg_up_at) / 1000.0 + cfg.pg_down_ms / 1000.0;
    PQreset(h_db());
    note("PostgreSQL started again (down %.1f s)", run.pg_down_s);
}

/* The faults due before publish g (and whatever was postponed). A worker is
 * never started while PostgreSQL is down (it could not become ready), so
 * a kill due then waits for the database. */
static void faults_before(size_t g)
{
    pg_up_when_due(false);
    if (g == run.broker_at) {
        long long t = now_ms();
        note("stopping RabbitMQ");
        run.broker_down = true;
        assert_int_equal(stack("stop", "rabbitmq"), 0);
        pub_drop();
        sleep_ms(cfg.broker_down_ms);
        assert_int_equal(stack("start", "rabbitmq"), 0);
        run.broker_down = false;
        run.broker_restarts++;
        run.broker_down_s = (double)(now_ms() - t) / 1000.0;
        note("RabbitMQ started again (down %.1f s)", run.broker_down_s);
    }
    if (g == run.pg_at) {
        note("stopping PostgreSQL for %ld ms", cfg.pg_down_ms);
        assert_int_equal(stack("stop", "pg"), 0);
        run.pg_down = true;
        run.pg_up_at = now_ms() + cfg.pg_down_ms;
    }
    while (run.next_kill < run.nkill && run.kill_at[run.next_kill] <= g) {
        run.next_kill++;
        run.pending_kills++;
    }
    while (run.pending_kills > 0 && !run.pg_down) {
        run.pending_kills--;
        kill_one();
    }
}

static void schedule_faults(void)
{
    size_t n = run.plan->norder;
    run.fault_rng = cfg.seed ^ 0x6368616f73ULL;
    run.nkill = (int)(cfg.kills < 64 ? cfg.kills : 64);
    /* one kill in each of nkill equal stretches of the run's publishes */
    size_t lo = n * 5 / 100, hi = n * 95 / 100, seg = run.nkill ? (hi - lo) / (size_t)run.nkill : 0;
    for (int k = 0; k < run.nkill; k++)
        run.kill_at[k] = lo + (size_t)k * seg + plan_below(&run.fault_rng, seg ? seg : 1);
    run.broker_at = n * 30 / 100 + plan_below(&run.fault_rng, n * 15 / 100 + 1);
    run.pg_at = n * 55 / 100 + plan_below(&run.fault_rng, n * 10 / 100 + 1);
}

/* ------------------------------------------------------------ waiting */

static PGresult *rows(const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(h_db(), sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
        PQclear(r);
        fail_msg("query failed: %s\n%s", sql, msg);
    }
    return r;
}

/* A PostgreSQL text[] literal of message ids (their characters need no
 * quoting). Caller frees. */
static char *mid_array(int wave, bool bad, size_t *count)
{
    const struct chaos_plan *p = run.plan;
    size_t cap = 16 + p->ncmds * 2 * (PLAN_ID_LEN + 1), len = 0;
    char *s = malloc(cap);
    assert_non_null(s);
    s[len++] = '{';
    *count = 0;
    for (size_t k = 0; k < p->ncmds; k++) {
        const struct plan_cmd *c = &p->cmds[k];
        if (c->wave != wave || plan_is_bad(c) != bad)
            continue;
        for (int copy = 0; copy < c->copies; copy++) {
            if (copy > 0 && (copy < 2 || !c->new_mid))
                continue;
            len += (size_t)snprintf(s + len, cap - len, "%s%s", *count ? "," : "", c->mid[copy]);
            (*count)++;
        }
    }
    snprintf(s + len, cap - len, "}");
    return s;
}

static long long count_of(const char *sql, const char *param)
{
    const char *params[1] = { param };
    PGresult *r = rows(sql, param ? 1 : 0, params);
    long long n = PQntuples(r) ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : 0;
    PQclear(r);
    return n;
}

/* Until every command of the wave has its outcome in the database: a
 * stored reply for each message_id, a dead letter for each message meant
 * to fail. Faults due meanwhile (PostgreSQL coming back) happen too. */
static void wait_wave(int wave)
{
    size_t ngood, nbad;
    char *good = mid_array(wave, false, &ngood), *bad = mid_array(wave, true, &nbad);
    long long deadline = now_ms() + WAIT_S * 1000LL;
    long long done = 0, dead = 0;
    for (;;) {
        pg_up_when_due(false);
        while (run.pending_kills > 0 && !run.pg_down) {
            run.pending_kills--;
            kill_one();
        }
        if (!run.pg_down) {
            done = count_of("SELECT count(*) FROM payq.inbox WHERE scope = ''"
                            " AND message_id = ANY($1::text[]) AND reply IS NOT NULL",
                            good);
            dead = count_of("SELECT count(DISTINCT message_id) FROM payq.dead_letters"
                            " WHERE message_id = ANY($1::text[])",
                            bad);
            if (done == (long long)ngood && dead == (long long)nbad)
                break;
        }
        if (now_ms() > deadline) {
            const char *params[1] = { good };
            PGresult *r = rows("SELECT m FROM unnest($1::text[]) m WHERE NOT EXISTS"
                               " (SELECT 1 FROM payq.inbox i WHERE i.scope = '' AND"
                               "  i.message_id = m AND i.reply IS NOT NULL) LIMIT 1",
                               1, params);
            char missing[PLAN_ID_LEN] = "";
            if (PQntuples(r))
                snprintf(missing, sizeof missing, "%s", PQgetvalue(r, 0, 0));
            PQclear(r);
            free(good);
            free(bad);
            fail_msg("wave %d: after %d s only %lld of %zu messages have a stored reply and %lld"
                     " of %zu a dead letter (e.g. %s has none)",
                     wave, WAIT_S, done, ngood, dead, nbad, missing);
        }
        drain_replies(250);
    }
    free(good);
    free(bad);
    note("wave %d: every command has its outcome", wave);
}

/* Messages ready in the work queue and every retry tier. */
static long long queued(void)
{
    long long total = 0;
    for (size_t i = 0; i <= topo_ntiers; i++) {
        const char *q = i < topo_ntiers ? topo_tiers[i].queue : PAYQ_Q_COMMANDS;
        uint32_t n = 0;
        if (!run.mq && !pub_connect())
            fail_msg("cannot connect to RabbitMQ to read queue depths");
        if (mq_queue_depth(run.mq, q, &n) != PAYQ_OK)
            fail_msg("cannot read the depth of %s", q);
        total += n;
    }
    return total;
}

/* After the last wave: the relay has published the run's outbox and the
 * queues have stayed empty for three seconds. */
static void wait_settled(void)
{
    long long deadline = now_ms() + WAIT_S * 1000LL;
    int quiet = 0;
    char like[128];
    snprintf(like, sizeof like, "%s-%%", run.prefix);
    while (quiet < 3) {
        long long unpublished = count_of("SELECT count(*) FROM payq.outbox_unpublished()"
                                         " WHERE body->>'id' LIKE $1",
                                         like);
        long long q = queued();
        quiet = unpublished == 0 && q == 0 ? quiet + 1 : 0;
        if (now_ms() > deadline)
            fail_msg("not settled after %d s: %lld events unpublished, %lld messages queued",
                     WAIT_S, unpublished, q);
        drain_replies(1000);
    }
}

/* --------------------------------------------------------- verification */

/* Counts of outcomes, "<routing key> <status>[/<code>]", for the summary. */
struct tally {
    char key[96];
    int n;
};

static void tally_add(struct tally *t, size_t *nt, size_t cap, const char *key)
{
    for (size_t i = 0; i < *nt; i++)
        if (strcmp(t[i].key, key) == 0) {
            t[i].n++;
            return;
        }
    if (*nt < cap) {
        snprintf(t[*nt].key, sizeof t[*nt].key, "%s", key);
        t[(*nt)++].n = 1;
    }
}

static int cmp_tally(const void *a, const void *b)
{
    return strcmp(((const struct tally *)a)->key, ((const struct tally *)b)->key);
}

static int row_of(PGresult *r, int col, const char *value)
{
    for (int i = 0; i < PQntuples(r); i++)
        if (strcmp(PQgetvalue(r, i, col), value) == 0)
            return i;
    return -1;
}

static int64_t num(PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* Every command has exactly one outcome, the model's, stored for each of
 * its message_ids; duplicates under a new message_id got the same reply. */
static void verify_outcomes(struct tally *t, size_t *nt, size_t cap, int *one_outcome)
{
    const struct chaos_plan *p = run.plan;
    char like[128];
    snprintf(like, sizeof like, "%s-msg%%", run.prefix);
    const char *params[1] = { like };
    PGresult *r = rows("SELECT message_id, reply->>'status', COALESCE(reply->>'code', ''),"
                       " COALESCE(reply->>'id', ''), reply::text, command FROM payq.inbox"
                       " WHERE scope = '' AND message_id LIKE $1",
                       1, params);
    *one_outcome = 0;
    for (size_t k = 0; k < p->ncmds; k++) {
        const struct plan_cmd *c = &p->cmds[k];
        if (plan_is_bad(c))
            continue;
        int i = row_of(r, 0, c->mid[0]);
        if (i < 0) {
            mismatch("%s %s (%s): no stored outcome", c->rk, c->id, c->mid[0]);
            continue;
        }
        const char *status = PQgetvalue(r, i, 1), *code = PQgetvalue(r, i, 2);
        if (strcmp(status, c->want_status) != 0 ||
            strcmp(code, c->want_code ? c->want_code : "") != 0 ||
            strcmp(PQgetvalue(r, i, 3), c->id) != 0 || strcmp(PQgetvalue(r, i, 5), c->rk) != 0) {
            mismatch("%s %s: outcome %s/%s, expected %s/%s", c->rk, c->id, status, code,
                     c->want_status, c->want_code ? c->want_code : "");
            continue;
        }
        if (c->new_mid) {
            int j = row_of(r, 0, c->mid[2]);
            if (j < 0 || strcmp(PQgetvalue(r, j, 4), PQgetvalue(r, i, 4)) != 0) {
                mismatch("%s %s: the duplicate %s has %s, the original %s", c->rk, c->id, c->mid[2],
                         j < 0 ? "no outcome" : PQgetvalue(r, j, 4), PQgetvalue(r, i, 4));
                continue;
            }
        }
        char key[96];
        snprintf(key, sizeof key, "%s %s%s%s", c->rk, status, code[0] ? "/" : "", code);
        tally_add(t, nt, cap, key);
        (*one_outcome)++;
    }
    PQclear(r);
}

/* Payments and refunds in the model's state, with exactly the model's events. */
static void verify_payments(int64_t *fees, int64_t *card_net)
{
    const struct chaos_plan *p = run.plan;
    char like[128];
    snprintf(like, sizeof like, "%s-p%%", run.prefix);
    const char *params[1] = { like };
    PGresult *r = rows("SELECT p.payment_id, p.status, COALESCE(p.failure_code, ''),"
                       " p.captured_amount, p.refunded_amount, p.fee, p.recovery_point,"
                       " COALESCE((SELECT string_agg(e.type, ',' ORDER BY e.type)"
                       "             FROM payq.payment_events e"
                       "            WHERE e.payment_id = p.payment_id), ''), p.source_kind"
                       " FROM payq.payments p WHERE p.payment_id LIKE $1",
                       1, params);
    if ((size_t)PQntuples(r) != p->npayments)
        mismatch("%d payments in the database, the workload made %zu", PQntuples(r), p->npayments);
    *fees = *card_net = 0;
    for (size_t i = 0; i < p->npayments; i++) {
        const struct plan_payment *pm = &p->payments[i];
        int k = row_of(r, 0, pm->id);
        if (k < 0) {
            mismatch("payment %s is missing", pm->id);
            continue;
        }
        *fees += num(r, k, 5);
        if (strcmp(PQgetvalue(r, k, 8), "card") == 0)
            *card_net += num(r, k, 3) - num(r, k, 4);
        if (strcmp(PQgetvalue(r, k, 1), pm->status) != 0 ||
            strcmp(PQgetvalue(r, k, 2), pm->code ? pm->code : "") != 0 ||
            num(r, k, 3) != pm->captured || num(r, k, 4) != pm->refunded ||
            num(r, k, 5) != pm->fee || strcmp(PQgetvalue(r, k, 6), "finished") != 0)
            mismatch("payment %s (%s): %s/%s captured %s refunded %s fee %s at %s; expected"
                     " %s/%s captured %lld refunded %lld fee %lld",
                     pm->id, pm->token ? pm->token : "wallet", PQgetvalue(r, k, 1),
                     PQgetvalue(r, k, 2), PQgetvalue(r, k, 3), PQgetvalue(r, k, 4),
                     PQgetvalue(r, k, 5), PQgetvalue(r, k, 6), pm->status, pm->code ? pm->code : "",
                     (long long)pm->captured, (long long)pm->refunded, (long long)pm->fee);
        if (strcmp(PQgetvalue(r, k, 7), pm->events) != 0)
            mismatch("payment %s: events %s, expected %s", pm->id, PQgetvalue(r, k, 7), pm->events);
    }
    PQclear(r);

    r = rows("SELECT refund_id, status, COALESCE(failure_code, ''), amount, recovery_point"
             " FROM payq.refunds WHERE refund_id LIKE $1",
             1, params);
    int nref = 0;
    for (size_t k = 0; k < p->ncmds; k++) {
        const struct plan_cmd *c = &p->cmds[k];
        if (c->kind != K_REFUND)
            continue;
        nref++;
        int i = row_of(r, 0, c->id);
        if (i < 0 || strcmp(PQgetvalue(r, i, 1), c->want_status) != 0 ||
            strcmp(PQgetvalue(r, i, 2), c->want_code ? c->want_code : "") != 0 ||
            (strcmp(c->want_status, "succeeded") == 0 && num(r, i, 3) != c->amount) ||
            strcmp(PQgetvalue(r, i, 4), "finished") != 0)
            mismatch("refund %s: %s/%s amount %s; expected %s/%s amount %lld", c->id,
                     i < 0 ? "missing" : PQgetvalue(r, i, 1), i < 0 ? "" : PQgetvalue(r, i, 2),
                     i < 0 ? "" : PQgetvalue(r, i, 3), c->want_status,
                     c->want_code ? c->want_code : "", (long long)c->amount);
    }
    if (PQntuples(r) != nref)
        mismatch("%d refunds in the database, the workload made %d", PQntuples(r), nref);
    PQclear(r);
}

/* Every account holds what the model says; the run's money is conserved. */
static void verify_money(int64_t fees, int64_t card_net, char *line, size_t len)
{
    const struct chaos_plan *p = run.plan;
    char like[128];
    snprintf(like, sizeof like, "%s-%%", run.prefix);
    const char *params[1] = { like };
    int64_t deposited = 0;
    long long ndep = 0;
    PGresult *r = rows("SELECT count(*), COALESCE(sum(amount), 0) FROM payq.deposits"
                       " WHERE deposit_id LIKE $1 AND status = 'succeeded'",
                       1, params);
    ndep = num(r, 0, 0);
    deposited = num(r, 0, 1);
    PQclear(r);
    if (ndep != (long long)(2 * p->ncustomers) ||
        count_of("SELECT count(*) FROM payq.deposits WHERE deposit_id LIKE $1", like) != ndep)
        mismatch("%lld deposits succeeded, the workload made %zu (and no other)", ndep,
                 2 * p->ncustomers);

    r = rows("SELECT id, kind, posted, pending FROM payq.account_balances WHERE id LIKE $1", 1,
             params);
    int64_t wallets = 0, merchants = 0, pending = 0, want_pending = 0;
    size_t naccounts = p->ncustomers + p->nmerchants + 1;
    if ((size_t)PQntuples(r) != naccounts)
        mismatch("%d accounts, the workload opened %zu", PQntuples(r), naccounts);
    for (size_t i = 0; i < naccounts; i++) {
        const struct plan_account *a = i < p->ncustomers ? &p->customers[i]
                                       : i < p->ncustomers + p->nmerchants
                                           ? &p->merchants[i - p->ncustomers]
                                           : &p->poor;
        const char *kind = i < p->ncustomers || a == &p->poor ? "customer" : "merchant";
        int k = row_of(r, 0, a->id);
        if (k < 0 || strcmp(PQgetvalue(r, k, 1), kind) != 0 || num(r, k, 2) != a->posted ||
            num(r, k, 3) != a->pending) {
            mismatch("account %s: %s posted %s pending %s; expected %s posted %lld pending %lld",
                     a->id, k < 0 ? "missing" : PQgetvalue(r, k, 1),
                     k < 0 ? "" : PQgetvalue(r, k, 2), k < 0 ? "" : PQgetvalue(r, k, 3), kind,
                     (long long)a->posted, (long long)a->pending);
            continue;
        }
        if (strcmp(kind, "customer") == 0)
            wallets += num(r, k, 2);
        else
            merchants += num(r, k, 2);
        pending += num(r, k, 3);
        want_pending += a->pending;
    }
    PQclear(r);

    /* From the database alone: what came in is where it is now. */
    if (deposited != wallets + merchants + fees - card_net)
        mismatch("money not conserved: deposits %lld != wallets %lld + merchants %lld + fees"
                 " %lld - card net %lld",
                 (long long)deposited, (long long)wallets, (long long)merchants, (long long)fees,
                 (long long)card_net);
    if (deposited != p->deposited || fees != p->fees || card_net != p->card_net ||
        pending != want_pending)
        mismatch("totals differ from the model: deposits %lld/%lld fees %lld/%lld card net"
                 " %lld/%lld pending %lld/%lld",
                 (long long)deposited, (long long)p->deposited, (long long)fees, (long long)p->fees,
                 (long long)card_net, (long long)p->card_net, (long long)pending,
                 (long long)want_pending);
    long long ledger = count_of("SELECT COALESCE(sum(e.amount), 0) FROM payq.ledger_entries e"
                                " JOIN payq.postings po ON po.id = e.posting_id"
                                " WHERE po.ref LIKE $1",
                                like);
    if (ledger != 0)
        mismatch("the run's postings sum to %lld, not 0", ledger);
    snprintf(line, len,
             "deposits %lld = wallets %lld + merchants %lld + fees %lld − card net %lld"
             " (holds pending %lld); the run's ledger sums to %lld",
             (long long)deposited, (long long)wallets, (long long)merchants, (long long)fees,
             (long long)card_net, (long long)pending, ledger);
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Account events once each; the whole outbox of the run published, and
 * every event of it received on payq.events (at least once). */
static void verify_events(char *line, size_t len)
{
    const struct chaos_plan *p = run.plan;
    char like[128];
    snprintf(like, sizeof like, "%s-%%", run.prefix);
    const char *params[1] = { like };
    PGresult *r = rows("SELECT body->>'id', count(*) FROM payq.outbox WHERE routing_key IN"
                       " ('account.opened', 'account.deposited') AND body->>'id' LIKE $1"
                       " GROUP BY 1",
                       1, params);
    size_t want = p->ncustomers + p->nmerchants + 1 + 2 * p->ncustomers;
    if ((size_t)PQntuples(r) != want)
        mismatch("%d accounts and deposits have events, expected %zu", PQntuples(r), want);
    for (int i = 0; i < PQntuples(r); i++)
        if (num(r, i, 1) != 1)
            mismatch("%s has %s account events, expected 1", PQgetvalue(r, i, 0),
                     PQgetvalue(r, i, 1));
    PQclear(r);

    /* What reached the run's own queue bound to payq.events. */
    mq_t *mq;
    assert_int_equal(mq_connect(getenv("AMQP_URL"), NULL, "payq chaos events", 30, &mq), PAYQ_OK);
    size_t cap = 1024, n = 0;
    char **seen = malloc(cap * sizeof *seen);
    assert_non_null(seen);
    for (;;) {
        struct mq_delivery *d = NULL;
        assert_int_equal(mq_get(mq, run.events_queue, &d), PAYQ_OK);
        if (!d)
            break;
        json_t *j = json_loadb(d->message.body.bytes, d->message.body.len, 0, NULL);
        if (n == cap) {
            char **grown = realloc(seen, 2 * cap * sizeof *seen);
            assert_non_null(grown);
            seen = grown;
            cap *= 2;
        }
        seen[n++] = strdup(j ? str(j, "event_id") : "");
        json_decref(j);
        mq_delivery_free(d);
    }
    mq_close(mq);
    qsort(seen, n, sizeof *seen, cmp_cstr);
    size_t unique = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || strcmp(seen[i], seen[i - 1]) != 0)
            unique++;

    r = rows("SELECT event_id::text, payq.outbox_published(xid, id) FROM payq.outbox"
             " WHERE body->>'id' LIKE $1",
             1, params);
    int missing = 0, unpublished = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *id = PQgetvalue(r, i, 0);
        if (!bsearch(&id, seen, n, sizeof *seen, cmp_cstr))
            missing++;
        if (strcmp(PQgetvalue(r, i, 1), "t") != 0)
            unpublished++;
    }
    if (missing || unpublished)
        mismatch("%d of %d events of the run never reached payq.events (%d unpublished)", missing,
                 PQntuples(r), unpublished);
    snprintf(line, len,
             "%d in the outbox, all published; %zu deliveries on payq.events, %zu distinct (every"
             " event at least once, %zu redelivered)",
             PQntuples(r), n, unique, n - unique);
    PQclear(r);
    for (size_t i = 0; i < n; i++)
        free(seen[i]);
    free(seen);
}

/* The dead-letter archive and payq.dlq hold exactly the messages meant to
 * fail; the queue copies are taken off (and their rows resolved). */
static void verify_dead_letters(char *line, size_t len)
{
    const struct chaos_plan *p = run.plan;
    char like[128];
    snprintf(like, sizeof like, "%s-%%", run.prefix);
    const char *params[1] = { like };
    PGresult *r = rows("SELECT message_id, reason, count(*) FROM payq.dead_letters"
                       " WHERE message_id LIKE $1 GROUP BY 1, 2",
                       1, params);
    int nbad = 0;
    for (size_t k = 0; k < p->ncmds; k++) {
        const struct plan_cmd *c = &p->cmds[k];
        if (!plan_is_bad(c))
            continue;
        nbad++;
        int i = row_of(r, 0, c->mid[0]);
        if (i < 0 || strcmp(PQgetvalue(r, i, 1), c->want_code) != 0 || num(r, i, 2) != 1)
            mismatch("dead letter %s: %s, expected one with reason %s", c->mid[0],
                     i < 0 ? "none" : PQgetvalue(r, i, 1), c->want_code);
    }
    for (int i = 0; i < PQntuples(r); i++) {
        bool meant = false;
        for (size_t k = 0; k < p->ncmds && !meant; k++)
            meant = plan_is_bad(&p->cmds[k]) &&
                    strcmp(p->cmds[k].mid[0], PQgetvalue(r, i, 0)) == 0 &&
                    strcmp(p->cmds[k].want_code, PQgetvalue(r, i, 1)) == 0;
        if (!meant)
            mismatch("an unintended dead letter: %s reason %s", PQgetvalue(r, i, 0),
                     PQgetvalue(r, i, 1));
    }
    PQclear(r);
    long long exhausted =
        count_of("SELECT count(*) FROM payq.failures WHERE"
                 " message_key LIKE 'id:' || $1 AND kind IN ('exhausted', 'poison')",
                 like);
    long long transient = count_of("SELECT count(*) FROM payq.failures WHERE"
                                   " message_key LIKE 'id:' || $1 AND kind = 'transient'",
                                   like);

    /* The queue: the run's copies, taken off; other tests' are left. */
    mq_t *mq;
    assert_int_equal(mq_connect(getenv("AMQP_URL"), NULL, "payq chaos dlq", 30, &mq), PAYQ_OK);
    int copies = 0, unintended = 0;
    int *found = calloc(p->ncmds, sizeof *found);
    assert_non_null(found);
    for (;;) {
        struct mq_delivery *d = NULL;
        assert_int_equal(mq_get(mq, PAYQ_Q_DLQ, &d), PAYQ_OK);
        if (!d)
            break;
        const amqp_basic_properties_t *pr = &d->message.properties;
        char mid[PLAN_ID_LEN] = "";
        if ((pr->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) && pr->message_id.len < sizeof mid)
            snprintf(mid, sizeof mid, "%.*s", (int)pr->message_id.len,
                     (const char *)pr->message_id.bytes);
        if (strncmp(mid, run.prefix, strlen(run.prefix)) == 0) {
            copies++;
            const char *reason = h_header(d, "x-payq-reason");
            bool meant = false;
            for (size_t k = 0; k < p->ncmds && !meant; k++)
                if (plan_is_bad(&p->cmds[k]) && strcmp(p->cmds[k].mid[0], mid) == 0 &&
                    strcmp(p->cmds[k].want_code, reason) == 0) {
                    meant = true;
                    found[k]++;
                }
            if (!meant) {
                unintended++;
                mismatch("payq.dlq holds an unintended message %s (%s)", mid, reason);
            }
            assert_int_equal(mq_ack(mq, d->channel, d->tag, false), PAYQ_OK);
        }
        mq_delivery_free(d);
    }
    uint32_t depth;
    assert_int_equal(mq_queue_depth(mq, PAYQ_Q_DLQ, &depth), PAYQ_OK); /* a round trip */
    mq_close(mq);
    for (size_t k = 0; k < p->ncmds; k++)
        if (plan_is_bad(&p->cmds[k]) && found[k] == 0)
            mismatch("payq.dlq lacks %s (%s)", p->cmds[k].mid[0], p->cmds[k].want_code);
    free(found);
    assert_string_equal(h_exec("UPDATE payq.dead_letters SET status = 'discarded',"
                               " resolved_at = now(), resolved_by = 'test_chaos',"
                               " resolution_note = 'meant to fail: taken by the chaos suite'"
                               " WHERE message_id LIKE $1 AND status = 'dead'",
                               1, params),
                        "");
    if (exhausted)
        mismatch("%lld commands ran out of retries or were taken for poison", exhausted);
    snprintf(line, len,
             "%d, exactly the %d meant to fail (%d queue copies, %d unintended);"
             " retries_exhausted + poison: %lld; transient failures retried: %lld",
             copies, nbad, copies, unintended, exhausted, transient);
}

/* `payq-worker check` over the whole database; its verdict line. */
static void run_checker(char *line, size_t len)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/payq-worker check 2>&1", PAYQ_BINARY_DIR);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    char buf[512];
    line[0] = 0;
    while (fgets(buf, sizeof buf, f)) {
        fputs(buf, stdout);
        buf[strcspn(buf, "\n")] = 0;
        if (strncmp(buf, "OK", 2) == 0 || strstr(buf, "violation"))
            snprintf(line, len, "%s", buf);
    }
    int st = pclose(f);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        mismatch("payq-worker check failed (status %d): %s", st, line);
}

/* Lines of this test's worker logs that contain `what`. */
static int log_count(const char *what)
{
    char cmd[1024];
    size_t plen = strlen(run.prefix) - strlen("-chaos");
    snprintf(cmd, sizeof cmd, "cat %s/tests/worker-%.*s-%d.log | grep -c -- '%s'", PAYQ_BINARY_DIR,
             (int)plen, run.prefix, (int)getpid(), what);
    FILE *f = popen(cmd, "r");
    int n = 0;
    if (f) {
        if (fscanf(f, "%d", &n) != 1)
            n = 0;
        pclose(f);
    }
    return n;
}

/* ------------------------------------------------------------- the test */

static void test_chaos(void **state)
{
    (void)state;
    run.t0 = now_ms();
    snprintf(run.prefix, sizeof run.prefix, "%s", h_id("chaos"));
    run.plan = plan_new(cfg.seed, (size_t)cfg.commands, run.prefix);
    assert_non_null(run.plan);
    const struct chaos_plan *p = run.plan;
    schedule_faults();
    note("seed %llu: %zu commands, %zu publishes, %d kills, RabbitMQ restart before publish %zu,"
         " PostgreSQL stop before publish %zu",
         (unsigned long long)cfg.seed, p->ncmds, p->norder, run.nkill, run.broker_at, run.pg_at);

    /* The run's merchants pay a fee (the model's rule); a queue of its own
     * receives every event. */
    for (size_t i = 0; i < p->nmerchants; i++) {
        const char *m[1] = { p->merchants[i].id };
        char sql[256];
        snprintf(sql, sizeof sql,
                 "INSERT INTO payq.fee_rules (merchant, currency, bps, fixed)"
                 " VALUES ($1, 'USD', %d, %d)",
                 PLAN_FEE_BPS, PLAN_FEE_FIXED);
        assert_string_equal(h_exec(sql, 1, m), "");
    }
    snprintf(run.events_queue, sizeof run.events_queue, "chaos.events.%s", run.prefix);
    char path[256];
    snprintf(path, sizeof path, "/api/queues/%%2f/%s", run.events_queue);
    assert_int_equal(mgmt("PUT", path, "{\"durable\":true}"), 0);
    run.events_queue_made = true;
    snprintf(path, sizeof path, "/api/bindings/%%2f/e/payq.events/q/%s", run.events_queue);
    assert_int_equal(mgmt("POST", path, "{\"routing_key\":\"#\"}"), 0);

    for (int k = 0; k < NWORKERS; k++)
        run.workers[k] = h_worker_start(worker_env);
    assert_true(pub_connect());

    size_t g = 0;
    for (int w = 0; w < NWAVES; w++) {
        for (; g < p->wave_end[w]; g++) {
            faults_before(g);
            pace();
            size_t e = p->order[g];
            publish_copy(&p->cmds[e / PLAN_MAX_COPIES], (int)(e % PLAN_MAX_COPIES));
        }
        note("wave %d: published (%ld publishes so far)", w, run.publishes);
        wait_wave(w);
    }
    /* Faults not yet due happen now (a short run may end first). */
    faults_before(p->norder);
    pg_up_when_due(true);
    while (run.pending_kills > 0) {
        run.pending_kills--;
        kill_one();
    }
    for (int w = 0; w < NWAVES; w++)
        wait_wave(w);
    wait_settled();

    /* The workers drain and exit 0 on SIGTERM; nothing is left behind. */
    for (int k = 0; k < NWORKERS; k++) {
        int st = h_worker_stop(run.workers[k], SIGTERM);
        run.workers[k] = 0;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            mismatch("a worker did not exit 0 on SIGTERM (status %d)", st);
    }
    long long left = queued();
    if (left)
        mismatch("%lld messages left in payq.commands and the retry tiers", left);
    drain_replies(500);
    pub_drop();

    struct tally t[64];
    size_t nt = 0;
    int one_outcome;
    int64_t fees, card_net;
    char money[512], events[512], dead[512], checker[512];
    verify_outcomes(t, &nt, sizeof t / sizeof t[0], &one_outcome);
    verify_payments(&fees, &card_net);
    verify_money(fees, card_net, money, sizeof money);
    verify_events(events, sizeof events);
    verify_dead_letters(dead, sizeof dead);
    run_checker(checker, sizeof checker);
    double took = elapsed_s();

    /* The summary, as a Markdown table. */
    int per_kind[K_BAD + 1] = { 0 }, three = 0, new_mid = 0, ncmd = 0;
    for (size_t k = 0; k < p->ncmds; k++) {
        per_kind[p->cmds[k].kind]++;
        three += p->cmds[k].copies == 3;
        new_mid += p->cmds[k].new_mid;
        ncmd += !plan_is_bad(&p->cmds[k]);
    }
    qsort(t, nt, sizeof t[0], cmp_tally);
    printf("\n## chaos summary\n\n| | |\n| --- | --- |\n");
    printf("| seed | %llu (replay: `PAYQ_CHAOS_SEED=%llu PAYQ_CHAOS_COMMANDS=%ld`) |\n",
           (unsigned long long)cfg.seed, (unsigned long long)cfg.seed, cfg.commands);
    printf("| commands | %d: %d account.open, %d account.deposit, %d payment.create, %d"
           " payment.capture, %d payment.cancel, %d payment.refund; plus %d messages meant to"
           " fail |\n",
           ncmd, per_kind[K_OPEN], per_kind[K_DEPOSIT], per_kind[K_CREATE], per_kind[K_CAPTURE],
           per_kind[K_CANCEL], per_kind[K_REFUND], per_kind[K_BAD]);
    printf("| publishes | %ld at %ld/s: every command twice, %d of them three times (%d of those"
           " under a new message_id); %ld published again after the broker restart |\n",
           run.publishes, cfg.rate, three, new_mid, run.resends);
    printf("| duplicates absorbed | %ld (publishes − commands − messages meant to fail), with no"
           " second effect |\n",
           run.publishes - ncmd - per_kind[K_BAD]);
    printf("| faults injected | %d worker processes SIGKILLed (and restarted) of %d running;"
           " RabbitMQ restarted %d× (down %.1f s); PostgreSQL restarted %d× (down %.1f s) |\n",
           run.kills, NWORKERS, run.broker_restarts, run.broker_down_s, run.pg_restarts,
           run.pg_down_s);
    printf("| worker recovery (log lines) | %d \"reconnecting\" (broker), %d \"reconnected to"
           " PostgreSQL\", %d \"circuit open\" |\n",
           log_count("reconnecting"), log_count("reconnected to PostgreSQL"),
           log_count("circuit open"));
    printf("| exactly one outcome | %d of %d commands, the model's, stored for every message_id"
           " |\n",
           one_outcome, ncmd);
    for (size_t i = 0; i < nt; i++)
        printf("| %s | %d |\n", t[i].key, t[i].n);
    printf("| dead letters | %s |\n", dead);
    printf("| money | %s |\n", money);
    printf("| events | %s |\n", events);
    printf("| queues after | payq.commands and %zu retry tiers: %lld messages |\n", topo_ntiers,
           left);
    printf("| replies received | %ld (%ld rejections), all as the database says; the rest were"
           " lost with the publisher's connection at the broker restart |\n",
           run.replies, run.replies_rejected);
    printf("| checker | %s |\n", checker);
    printf("| elapsed | %.0f s |\n\n", took);
    fflush(stdout);

    if (run.mismatches)
        fail_msg("%d mismatch(es); the first: %s (seed %llu)", run.mismatches, run.mismatch[0],
                 (unsigned long long)cfg.seed);
}

/* Whatever happened, the stack is left running and the run's queue gone. */
static int teardown(void **state)
{
    (void)state;
    h_kill_workers();
    if (run.pg_down)
        (void)stack("start", "pg");
    if (run.broker_down)
        (void)stack("start", "rabbitmq");
    if (run.events_queue_made) {
        char path[256];
        snprintf(path, sizeof path, "/api/queues/%%2f/%s", run.events_queue);
        (void)mgmt("DELETE", path, NULL);
    }
    pub_drop();
    plan_free(run.plan);
    run.plan = NULL;
    return 0;
}

static long env_long(const char *name, long def)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : def;
}

int main(int argc, char **argv)
{
    const char *seed = getenv("PAYQ_CHAOS_SEED");
    cfg.commands = env_long("PAYQ_CHAOS_COMMANDS", cfg.commands);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--seed") == 0)
            seed = argv[i + 1];
        else if (strcmp(argv[i], "--commands") == 0)
            cfg.commands = strtol(argv[i + 1], NULL, 10);
        else
            break;
    }
    if (seed && *seed) {
        cfg.seed = strtoull(seed, NULL, 10);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        cfg.seed = ((uint64_t)ts.tv_sec * 1000003u ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid()) %
                   1000000000u;
    }
    cfg.kills = env_long("PAYQ_CHAOS_KILLS", cfg.kills);
    cfg.rate = env_long("PAYQ_CHAOS_RATE", cfg.rate);
    cfg.pg_down_ms = env_long("PAYQ_CHAOS_PG_DOWN_MS", cfg.pg_down_ms);
    cfg.broker_down_ms = env_long("PAYQ_CHAOS_BROKER_DOWN_MS", cfg.broker_down_ms);
    if (cfg.commands < 40 || cfg.rate < 1 || cfg.kills < 0 || cfg.pg_down_ms < 0 ||
        cfg.broker_down_ms < 0) {
        fprintf(stderr, "usage: test_chaos [--seed N] [--commands N>=40]\n"
                        "  (PAYQ_CHAOS_SEED, _COMMANDS, _KILLS, _RATE >= 1, _PG_DOWN_MS,"
                        " _BROKER_DOWN_MS)\n");
        return 2;
    }
    printf("# chaos seed %llu (replay: PAYQ_CHAOS_SEED=%llu PAYQ_CHAOS_COMMANDS=%ld, or"
           " test_chaos --seed %llu --commands %ld)\n",
           (unsigned long long)cfg.seed, (unsigned long long)cfg.seed, cfg.commands,
           (unsigned long long)cfg.seed, cfg.commands);
    fflush(stdout);
    h_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_chaos, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
