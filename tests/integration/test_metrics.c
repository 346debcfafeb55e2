/*
 * test_metrics.c - the worker's HTTP endpoint against the real stack: the
 * counters of /metrics move by exactly the commands sent (succeeded, failed,
 * rejected, unknown), /healthz answers, and /readyz follows the database:
 * 503 soon after PostgreSQL stops, 200 again once it is back.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

static mq_t *mq;
static bool pg_stopped;

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

static int stack(const char *verb, const char *what)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "bash %s/tests/stack.sh %s %s >/dev/null 2>&1", PAYQ_SOURCE_DIR, verb,
             what);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Whatever happened in the test, the shared database runs again after it. */
static int restore(void **state)
{
    (void)state;
    if (pg_stopped && stack("start", "pg") == 0) {
        pg_stopped = false;
        PQreset(h_db()); /* the harness' connection died with the server */
    }
    h_kill_workers();
    return 0;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* A port nobody listens on right now (the kernel's pick). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0 };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static int port;
static char port_env[64];

static pid_t start_worker(void)
{
    port = free_port();
    snprintf(port_env, sizeof port_env, "PAYQ_METRICS_PORT=%d", port);
    const char *env[] = { port_env, NULL };
    return h_worker_start(env);
}

/* One request with curl; *status gets the HTTP status (0: no answer). The
 * body is malloc'd; the caller frees it. */
static char *request(const char *method, const char *path, int *status)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "curl -s -X %s --max-time 5 -w '\\n%%{http_code}' http://127.0.0.1:%d%s", method, port,
             path);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (len + 1 == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    pclose(f);
    buf[len] = 0;
    char *nl = strrchr(buf, '\n');
    *status = nl ? atoi(nl + 1) : 0;
    if (nl)
        *nl = 0;
    return buf;
}

static char *get(const char *path, int *status)
{
    return request("GET", path, status);
}

static char *scrape(void)
{
    int status;
    char *text = get("/metrics", &status);
    if (status != 200)
        fail_msg("GET /metrics: status %d: %s", status, text);
    return text;
}

/* The value of one sample of a scrape; fails if the series is absent. */
static double sample(const char *text, const char *series)
{
    char key[512];
    snprintf(key, sizeof key, "\n%s ", series);
    const char *p = strstr(text, key);
    if (!p)
        fail_msg("no series %s in /metrics", series);
    return strtod(p + strlen(key), NULL);
}

/* Polls GET path until it answers `want`, up to ms; returns the last body. */
static char *wait_status(const char *path, int want, int ms)
{
    long long deadline = now_ms() + ms;
    for (;;) {
        int status;
        char *body = get(path, &status);
        if (status == want)
            return body;
        if (now_ms() > deadline)
            fail_msg("GET %s: status %d after %d ms, expected %d: %s", path, status, ms, want,
                     body);
        free(body);
        sleep_ms(200);
    }
}

/* The series whose change this test predicts exactly, and by how much. */
static const struct {
    const char *series;
    double delta;
} expected[] = {
    { "payq_commands_total{command=\"account.open\",outcome=\"succeeded\"}", 2 },
    { "payq_commands_total{command=\"account.deposit\",outcome=\"succeeded\"}", 1 },
    { "payq_commands_total{command=\"payment.create\",outcome=\"failed\"}", 1 },
    { "payq_commands_total{command=\"payment.create\",outcome=\"succeeded\"}", 0 },
    { "payq_commands_total{command=\"payment.create\",outcome=\"rejected\"}", 1 },
    { "payq_commands_total{command=\"other\",outcome=\"rejected\"}", 1 },
    { "payq_commands_total{command=\"account.open\",outcome=\"retried\"}", 0 },
    { "payq_command_duration_seconds_count{command=\"account.open\"}", 2 },
    { "payq_command_duration_seconds_count{command=\"payment.create\"}", 2 },
    { "payq_command_duration_seconds_count{command=\"other\"}", 1 },
    { "payq_dead_letters_total{reason=\"malformed_json\"}", 1 },
    { "payq_dead_letters_total{reason=\"unknown_command\"}", 1 },
    { "payq_dead_letters_total{reason=\"retries_exhausted\"}", 0 },
    { "payq_retries_total{tier=\"1s\"}", 0 },
    { "payq_batch_size_count", 6 }, /* one command at a time: each its own batch */
    { "payq_batch_size_sum", 6 },
    { "payq_deliveries_in_flight", 0 },
    { "payq_circuit_open", 0 },
};
#define NEXPECTED (sizeof expected / sizeof expected[0])

/* True when this worker's relay holds the leader lock (relay.h). */
static bool relay_leader(pid_t w)
{
    char app[64];
    snprintf(app, sizeof app, "payq-worker relay pid %d", (int)w);
    const char *p[1] = { app };
    return h_int("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                 " WHERE l.locktype = 'advisory' AND l.granted"
                 "   AND l.classid = x'70617971'::bigint::oid"
                 "   AND l.objid = x'6f757462'::bigint::oid AND a.application_name = $1",
                 1, p) == 1;
}

static void test_counters_and_health(void **state)
{
    (void)state;
    pid_t w = start_worker();

    int status;
    char *body = get("/healthz", &status);
    assert_int_equal(status, 200);
    assert_string_equal(body, "ok\n");
    free(body);
    free(wait_status("/readyz", 200, 5000));
    body = get("/nothing-here", &status);
    assert_int_equal(status, 404);
    free(body);
    body = request("POST", "/metrics", &status);
    assert_int_equal(status, 405);
    free(body);

    char *before = scrape();
    assert_non_null(strstr(before, "# TYPE payq_commands_total counter\n"));
    assert_non_null(strstr(before, "# TYPE payq_command_duration_seconds histogram\n"));
    double published_before = sample(before, "payq_outbox_published_total");

    const char *payer = h_id("payer"), *shop = h_id("shop");
    h_open(mq, payer, "USD", "customer");
    h_open(mq, shop, "USD", "merchant");
    h_deposit(mq, h_id("dep"), payer, 1000, "USD");
    char json[512];
    snprintf(json, sizeof json,
             "{\"payment_id\":\"%s\",\"source\":\"%s\",\"destination\":\"%s\",\"amount\":5000,"
             "\"capture\":true,"
             "\"currency\":\"USD\"}",
             h_id("pay"), payer, shop);
    json_t *r = h_call(mq, "payment.create", NULL, json);
    assert_string_equal(h_status(r), "failed");
    json_decref(r);
    static const char broken[] = "{\"payment_id\": ";
    const char *mid_broken = h_id("broken");
    h_publish_ex(mq, "payment.create", mid_broken, "application/json", broken, strlen(broken),
                 true);
    r = h_reply(mq, 20000);
    assert_non_null(r);
    assert_string_equal(h_code(r), "malformed_json");
    json_decref(r);
    const char *mid_unknown = h_id("unknown");
    h_publish(mq, "payment.teleport", mid_unknown, "{}");
    r = h_reply(mq, 20000);
    assert_non_null(r);
    assert_string_equal(h_code(r), "unknown_command");
    json_decref(r);

    /* The reply goes out before the ack, and the counters move after it:
     * wait until they reached their predicted values, then check that none
     * went further. */
    char *after = NULL;
    long long deadline = now_ms() + 5000;
    for (;;) {
        after = scrape();
        bool all = true;
        for (size_t i = 0; i < NEXPECTED; i++)
            all &= sample(after, expected[i].series) - sample(before, expected[i].series) >=
                   expected[i].delta;
        if (all || now_ms() > deadline)
            break;
        free(after);
        sleep_ms(100);
    }
    for (size_t i = 0; i < NEXPECTED; i++) {
        double moved = sample(after, expected[i].series) - sample(before, expected[i].series);
        if (moved != expected[i].delta)
            fail_msg("%s moved by %g, expected %g", expected[i].series, moved, expected[i].delta);
    }
    /* Four valid commands, each at least one payq.apply_command call. */
    assert_true(sample(after, "payq_db_transaction_duration_seconds_count") -
                    sample(before, "payq_db_transaction_duration_seconds_count") >=
                4);
    assert_true(sample(after, "payq_command_duration_seconds_sum{command=\"account.open\"}") >
                sample(before, "payq_command_duration_seconds_sum{command=\"account.open\"}"));
    free(after);

    /* Four events (2 x account.opened, account.deposited, payment.failed):
     * published by this worker's relay if it leads. */
    if (relay_leader(w)) {
        deadline = now_ms() + 5000;
        for (;;) {
            after = scrape();
            double published = sample(after, "payq_outbox_published_total") - published_before;
            double lag = sample(after, "payq_outbox_lag_seconds");
            free(after);
            if (published >= 4 && lag == 0)
                break;
            if (now_ms() > deadline)
                fail_msg("relay: %g events published, lag %g s", published, lag);
            sleep_ms(100);
        }
    } else {
        print_message("another payq-worker leads the outbox relay: its counters not checked\n");
    }
    free(before);

    struct mq_delivery *d = h_dlq_take(mid_broken, 10000);
    assert_non_null(d);
    mq_delivery_free(d);
    assert_non_null(d = h_dlq_take(mid_unknown, 10000));
    mq_delivery_free(d);

    int st = h_worker_stop(w, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* PostgreSQL stops while the worker is idle: /readyz says so within a few
 * seconds (the idle check), /healthz and /metrics keep answering, and /readyz
 * is 200 again once the worker reconnected. */
static void test_readiness_follows_the_database(void **state)
{
    (void)state;
    pid_t w = start_worker();
    free(wait_status("/readyz", 200, 5000));
    char *text = scrape();
    double reconnects = sample(text, "payq_reconnects_total{dependency=\"postgres\"}");
    free(text);

    long long t0 = now_ms();
    pg_stopped = true;
    assert_int_equal(stack("stop", "pg"), 0);
    char *body = wait_status("/readyz", 503, 8000);
    print_message("/readyz 503 %lld ms after the stop began: %s", now_ms() - t0, body);
    assert_non_null(strstr(body, "thread 0: not connected to PostgreSQL"));
    assert_null(strstr(body, "RabbitMQ"));
    free(body);
    int status;
    free(get("/healthz", &status));
    assert_int_equal(status, 200);
    free(scrape());

    assert_int_equal(stack("start", "pg"), 0);
    pg_stopped = false;
    PQreset(h_db());
    t0 = now_ms();
    free(wait_status("/readyz", 200, 20000));
    print_message("/readyz 200 again %lld ms after PostgreSQL was back\n", now_ms() - t0);
    text = scrape();
    assert_true(sample(text, "payq_reconnects_total{dependency=\"postgres\"}") == reconnects + 1);
    assert_true(sample(text, "payq_circuit_open") == 0);
    free(text);

    /* And it works: a command goes through. */
    h_open(mq, h_id("after-outage"), "EUR", "customer");
    int st = h_worker_stop(w, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_counters_and_health, restore),
        cmocka_unit_test_teardown(test_readiness_follows_the_database, restore),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
