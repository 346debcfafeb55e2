/*
 * test_retry.c - what happens when things go wrong: retries through the
 * delay tiers (measured), an exhausted budget, a poison message, the
 * database stopped mid-run, and the topology as the management API sees it.
 */
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

#include "backoff.h"
#include "harness.h"
#include "topology.h"

static mq_t *mq;

static int setup(void **state)
{
    (void)state;
    h_init();
    mq = h_mq();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    mq_close(mq);
    return 0;
}

static int kill_workers(void **state)
{
    (void)state;
    h_kill_workers();
    return 0;
}

static char *card_payment(char *buf, size_t len, const char *pid, const char *token,
                          const char *shop)
{
    snprintf(buf, len,
             "{\"payment_id\":\"%s\",\"amount\":700,\"currency\":\"USD\",\"source\":\"%s\","
             "\"destination\":\"%s\",\"capture\":true}",
             pid, token, shop);
    return buf;
}

/*
 * tok_timeout3 times out three times, then succeeds: one charge, and three
 * recorded failures whose spacing we measure: each retry waited at least its
 * tier's delay, and the tier never exceeds the backoff ceiling for that
 * attempt. In the same run, tok_timeout9 exhausts a budget of 4 attempts and
 * lands in the DLQ with retries_exhausted.
 */
static void test_backoff_and_exhaustion(void **state)
{
    (void)state;
    static const char *const env[] = { "PAYQ_THREADS=2", "PAYQ_RETRY_BASE_MS=1000",
                                       "PAYQ_RETRY_CAP_MS=5000", "PAYQ_MAX_ATTEMPTS=4",
                                       "PAYQ_CIRCUIT_THRESHOLD=1000", NULL };
    pid_t w = h_worker_start(env);
    const char *shop = h_id("r-shop");
    h_open(mq, shop, "USD", "merchant");
    char body[512];
    const char *ok = h_id("r-slow"), *never = h_id("r-never");
    const char *m_ok = h_id("r-msg-slow"), *m_never = h_id("r-msg-never");
    h_publish(mq, "payment.create", m_ok, card_payment(body, sizeof body, ok, "tok_timeout3", shop));
    card_payment(body, sizeof body, never, "tok_timeout9", shop);
    h_publish_ex(mq, "payment.create", m_never, "application/json", body, strlen(body), false);

    json_t *r = h_reply(mq, 40000);
    assert_non_null(r);
    assert_string_equal(h_status(r), "succeeded");
    json_decref(r);
    const char *p[1] = { ok };
    assert_string_equal(h_text("SELECT string_agg(op || ':' || (result->>'status'), ','"
                               " ORDER BY created_at) FROM payq_sim.operations"
                               " WHERE split_part(idempotency_key, ':', 1) = $1", 1, p),
                        "authorize:approved,capture:approved");
    assert_int_equal(h_balance(shop), 700);

    /* The measured spacing: failure n at t_n went to tier d_n; the next
     * attempt (failure n+1, or the success) came at least d_n later. */
    const char *k[1] = { m_ok };
    PGresult *res = PQexecParams(h_db(),
                                 "SELECT attempt, retry_tier,"
                                 "  extract(epoch FROM occurred_at)::float8,"
                                 "  (SELECT extract(epoch FROM max(answered_at))::float8"
                                 "     FROM payq.provider_calls WHERE payment_id = f.business_id)"
                                 " FROM payq.failures f WHERE message_key = 'id:' || $1"
                                 " ORDER BY attempt",
                                 1, NULL, k, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(res), 3);
    double done_at = strtod(PQgetvalue(res, 0, 3), NULL);
    for (int i = 0; i < 3; i++) {
        int attempt = atoi(PQgetvalue(res, i, 0));
        const char *tier = PQgetvalue(res, i, 1);
        double at = strtod(PQgetvalue(res, i, 2), NULL);
        double next = i + 1 < 3 ? strtod(PQgetvalue(res, i + 1, 2), NULL) : done_at;
        long tier_ms = 0;
        for (size_t j = 0; j < topo_ntiers; j++)
            if (strcmp(topo_tiers[j].name, tier) == 0)
                tier_ms = topo_tiers[j].delay_ms;
        assert_int_equal(attempt, i + 1);
        assert_true(tier_ms > 0);
        /* the tier is the ceiling's tier or a shorter one (full jitter) */
        assert_true(tier_ms <= topo_tier_for(backoff_ceiling(1000, 5000, attempt - 1))->delay_ms);
        printf("# retry %d: tier %s, next attempt %.2f s later\n", attempt, tier, next - at);
        assert_true(next - at >= tier_ms / 1000.0 - 0.05);
        assert_true(next - at < tier_ms / 1000.0 + 3.0);
    }
    PQclear(res);

    /* The other one ran out of attempts. */
    struct mq_delivery *d = h_dlq_take(m_never, 40000);
    assert_non_null(d);
    assert_string_equal(h_header(d, "x-payq-reason"), "retries_exhausted");
    assert_string_equal(h_header(d, "x-payq-attempts"), "4");
    assert_true(strlen(h_header(d, "x-payq-dead-letter-id")) == 36);
    assert_non_null(strstr(h_header(d, "x-payq-error"), "timed out"));
    mq_delivery_free(d);
    const char *n[1] = { m_never };
    assert_string_equal(h_text("SELECT string_agg(kind, ',' ORDER BY attempt)"
                               " FROM payq.failures WHERE message_key = 'id:' || $1", 1, n),
                        "transient,transient,transient,exhausted");
    assert_string_equal(h_text("SELECT reason || '/' || attempts || '/' || status"
                               " FROM payq.dead_letters WHERE message_key = 'id:' || $1", 1, n),
                        "retries_exhausted/4/discarded"); /* h_dlq_take resolved it */
    const char *q[1] = { never };
    assert_string_equal(h_text("SELECT status || '/' || recovery_point FROM payq.payments"
                               " WHERE payment_id = $1", 1, q),
                        "pending/authorize_started");
    int st = h_worker_stop(w, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* A provider that answers "busy, retry after 4 s" (HTTP 429 + Retry-After):
 * the retry waits in the 5 s tier although the backoff for a first retry
 * would have chosen the 1 s tier. */
static void test_retry_after(void **state)
{
    (void)state;
    pid_t w = h_worker_start(NULL);
    const char *shop = h_id("ra-shop"), *pid = h_id("ra-pay"), *mid = h_id("ra-msg");
    h_open(mq, shop, "USD", "merchant");
    char body[512];
    h_publish(mq, "payment.create", mid,
              card_payment(body, sizeof body, pid, "tok_rateLimited", shop));
    json_t *r = h_reply(mq, 30000);
    assert_non_null(r);
    assert_string_equal(h_status(r), "succeeded");
    json_decref(r);
    const char *k[1] = { mid };
    assert_string_equal(h_text("SELECT string_agg(retry_tier, ',' ORDER BY attempt)"
                               " FROM payq.failures WHERE message_key = 'id:' || $1", 1, k),
                        "5s");
    int st = h_worker_stop(w, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* A message that kills every worker that takes it: after
 * --poison-deliveries deliveries it goes to the DLQ as poison, unapplied,
 * and the next worker gets on with other work. */
static void test_poison(void **state)
{
    (void)state;
    static const char *const env[] = { "PAYQ_FAULT=body_contains:crash-the-worker", NULL };
    const char *acc = h_id("poison-acct"), *mid = h_id("poison-msg");
    char body[256];
    snprintf(body, sizeof body,
             "{\"account\":\"%s\",\"currency\":\"USD\",\"kind\":\"customer\"}", acc);
    char poison[256];
    snprintf(poison, sizeof poison,
             "{\"deposit_id\":\"%s\",\"account\":\"%s\",\"amount\":100,\"currency\":\"USD\","
             "\"x\":\"crash-the-worker\"}",
             h_id("poison-dep"), acc);
    h_publish_ex(mq, "account.deposit", mid, "application/json", poison, strlen(poison), false);
    int deaths = 0;
    for (int i = 0; i < 6; i++) {
        pid_t w = h_worker_start(env);
        int st = h_worker_wait(w, 3000);
        if (st == -1) {
            /* It survived: the poison is gone. The next command works. */
            json_t *r = h_call(mq, "account.open", NULL, body);
            assert_string_equal(h_status(r), "succeeded");
            json_decref(r);
            st = h_worker_stop(w, SIGTERM);
            assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
            break;
        }
        assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
        deaths++;
    }
    assert_int_equal(deaths, 4); /* the 5th delivery is dead-lettered unapplied */
    struct mq_delivery *d = h_dlq_take(mid, 10000);
    assert_non_null(d);
    assert_string_equal(h_header(d, "x-payq-reason"), "poison");
    assert_memory_equal(d->message.body.bytes, poison, strlen(poison));
    mq_delivery_free(d);
    const char *p[1] = { h_id("poison-dep") };
    assert_int_equal(h_int("SELECT count(*) FROM payq.deposits WHERE deposit_id = $1", 1, p), 0);
}

static int stack(const char *verb, const char *what)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "bash %s/tests/stack.sh %s %s >/dev/null 2>&1", PAYQ_SOURCE_DIR,
             verb, what);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* PostgreSQL stopped for 20 s while commands keep coming: nothing is lost,
 * nothing is dead-lettered, every command is applied once, and the worker
 * says the circuit opened and closed. */
static void test_database_outage(void **state)
{
    (void)state;
    pid_t w = h_worker_start(NULL);
    const char *acc = h_id("outage-acct");
    h_open(mq, acc, "USD", "customer");
    enum { N = 30 };
    char body[256], id[32];
    struct timespec half = { 0, 500000000 };
    for (int i = 0; i < N; i++) {
        if (i == 5)
            assert_int_equal(stack("stop", "pg"), 0);
        snprintf(id, sizeof id, "outage-dep-%d", i);
        snprintf(body, sizeof body,
                 "{\"deposit_id\":\"%s\",\"account\":\"%s\",\"amount\":10,\"currency\":\"USD\"}",
                 h_id(id), acc);
        snprintf(id, sizeof id, "outage-msg-%d", i);
        h_publish(mq, "account.deposit", h_id(id), body);
        nanosleep(&half, NULL); /* 30 commands over 15 s */
    }
    sleep(5); /* 20 s after the stop */
    assert_int_equal(stack("start", "pg"), 0);
    /* The harness' own database connection died with the server. */
    PQreset(h_db());
    for (int i = 0; i < N; i++) {
        json_t *r = h_reply(mq, 60000);
        if (!r)
            fail_msg("only %d of %d replies after the outage", i, N);
        assert_string_equal(h_status(r), "succeeded");
        json_decref(r);
    }
    assert_int_equal(h_balance(acc), 10 * N);
    int st = h_worker_stop(w, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    const char *p[1] = { acc };
    assert_int_equal(h_int("SELECT count(*) FROM payq.dead_letters WHERE body::text LIKE"
                           " '%' || $1 || '%'", 1, p), 0);
    /* The worker's log tells the story. */
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "grep -l 'circuit open' %s/tests/worker-*-%d.log >/dev/null && "
             "grep -l 'reconnected to PostgreSQL; circuit closed' %s/tests/worker-*-%d.log >/dev/null",
             PAYQ_BINARY_DIR, (int)getpid(), PAYQ_BINARY_DIR, (int)getpid());
    assert_int_equal(system(cmd), 0);
}

/* The management HTTP API shows the topology with the arguments of
 * topology.c (names, queue types, limits, TTLs, dead-letter targets). */
static void test_management_api(void **state)
{
    (void)state;
    const char *mgmt = getenv("PAYQ_MGMT_URL");
    if (!mgmt)
        mgmt = "http://127.0.0.1:15673";
    char cmd[512];
    snprintf(cmd, sizeof cmd, "curl -fsS -u payq:payq '%s/api/queues/%%2f'", mgmt);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    json_error_t err;
    json_t *queues = json_loadf(f, 0, &err);
    pclose(f);
    if (!queues)
        fail_msg("management API: %s", err.text);
    for (size_t i = 0; i < topo_nqueues; i++) {
        const struct topo_queue *q = &topo_queues[i];
        json_t *found = NULL, *o;
        size_t j;
        json_array_foreach(queues, j, o)
            if (strcmp(json_string_value(json_object_get(o, "name")), q->name) == 0)
                found = o;
        if (!found)
            fail_msg("queue %s missing from the broker", q->name);
        assert_true(json_is_true(json_object_get(found, "durable")));
        assert_string_equal(json_string_value(json_object_get(found, "type")), "quorum");
        json_t *args = json_object_get(found, "arguments");
        for (size_t a = 0; a < q->nargs; a++) {
            json_t *v = json_object_get(args, q->args[a].name);
            if (q->args[a].type == TOPO_STR)
                assert_string_equal(json_string_value(v), q->args[a].s);
            else
                assert_int_equal(json_integer_value(v), q->args[a].i);
        }
    }
    json_decref(queues);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_backoff_and_exhaustion, kill_workers),
        cmocka_unit_test_teardown(test_retry_after, kill_workers),
        cmocka_unit_test_teardown(test_poison, kill_workers),
        cmocka_unit_test_teardown(test_database_outage, kill_workers),
        cmocka_unit_test(test_management_api),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
