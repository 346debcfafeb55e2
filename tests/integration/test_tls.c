/*
 * test_tls.c - payq over TLS, on loopback with the stack's private CA
 * (tests/stack.sh makes it): the worker talks amqps:// to RabbitMQ, with a
 * client certificate (mutual TLS), and sslmode=verify-full to PostgreSQL;
 * this test publishes over amqps:// too. Payments go through and both
 * servers say the worker's connections are encrypted. A CA that did not sign
 * the servers' certificate is refused by both sides of the worker, with an
 * error that names the certificate problem, and nothing falls back to plain
 * text or to an unverified connection.
 */
#include <fcntl.h>
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

#include "harness.h"

static const char *ca, *client_cert, *client_key, *mgmt;
static char plain_url[512]; /* AMQP_URL as the stack gave it: amqp:// */
static char wrong_ca[512];  /* a CA of its own that signed nothing the servers use */

static const char *need_env(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        fprintf(stderr,
                "test_tls needs %s: start the stack with `bash tests/stack.sh up` and "
                "eval \"$(bash tests/stack.sh env)\"\n",
                name);
        exit(1);
    }
    return v;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* The whole of a small file ("" when it cannot be read). Static storage. */
static const char *slurp(const char *path)
{
    static char buf[1 << 16];
    buf[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return buf;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static int setup(void **state)
{
    (void)state;
    ca = need_env("PAYQ_TLS_CA");
    client_cert = need_env("PAYQ_TLS_CERT");
    client_key = need_env("PAYQ_TLS_KEY");
    mgmt = need_env("PAYQ_MGMT_URL");
    /* Everything this test and the workers it starts do goes over TLS:
     * the harness and payq-worker read the same variables. */
    setenv("AMQP_URL", need_env("PAYQ_AMQPS_URL"), 1);
    setenv("DATABASE_URL", need_env("PAYQ_DATABASE_TLS_URL"), 1);
    setenv("AMQP_CACERT", ca, 1);
    h_init();

    char dir[400], cmd[1400];
    snprintf(dir, sizeof dir, "%s/tests/tls-%d", PAYQ_BINARY_DIR, (int)getpid());
    snprintf(wrong_ca, sizeof wrong_ca, "%s/other-ca.pem", dir);
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s' && openssl req -x509 -new -newkey ec -pkeyopt "
             "ec_paramgen_curve:prime256v1 -noenc -keyout /dev/null -out '%s' -days 1 "
             "-subj '/CN=not the payq CA' 2>/dev/null",
             dir, wrong_ca);
    if (system(cmd) != 0) {
        fprintf(stderr, "test_tls: openssl could not make %s\n", wrong_ca);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    h_kill_workers();
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/tests/tls-%d'", PAYQ_BINARY_DIR, (int)getpid());
    return system(cmd) == 0 ? 0 : -1;
}

/* The broker's connections (management API), parsed. Caller json_decref's. */
static json_t *broker_connections(void)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "curl -fsS -u payq:payq '%s/api/connections'", mgmt);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    json_error_t e;
    json_t *all = json_loadf(f, 0, &e);
    int st = pclose(f);
    if (!all || st != 0)
        fail_msg("cannot read %s/api/connections (curl exit %d): %s", mgmt, st, all ? "" : e.text);
    assert_true(json_is_array(all));
    return all;
}

/* The broker's connections whose name contains `needle`: how many, how many
 * of them use TLS, and whether each showed the client certificate
 * (peer_cert_subject) of payq-worker. */
struct conn_count {
    int total, tls, client_cert;
};

static struct conn_count count_connections(const char *needle)
{
    struct conn_count c = { 0, 0, 0 };
    json_t *all = broker_connections();
    size_t i;
    json_t *conn;
    json_array_foreach(all, i, conn)
    {
        json_t *props = json_object_get(conn, "client_properties");
        const char *name = json_string_value(json_object_get(props, "connection_name"));
        if (!name || !strstr(name, needle))
            continue;
        c.total++;
        if (json_is_true(json_object_get(conn, "ssl")))
            c.tls++;
        const char *subject = json_string_value(json_object_get(conn, "peer_cert_subject"));
        if (subject && strstr(subject, "CN=payq-worker"))
            c.client_cert++;
    }
    json_decref(all);
    return c;
}

/* Starts `payq-worker CMD` with env entries added (after the test's own
 * TLS environment), stdout and stderr to log. Not waited for. */
static pid_t spawn_worker(const char *cmd, const char *const *env, const char *log)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0)
            _exit(126);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        putenv("PAYQ_THREADS=1");
        putenv("PAYQ_NO_RELAY=1");
        putenv("PAYQ_NO_MIGRATE=1");
        putenv("PAYQ_METRICS_PORT=0");
        putenv("PAYQ_LOG_LEVEL=debug");
        for (const char *const *e = env; e && *e; e++)
            putenv((char *)(uintptr_t)*e);
        char bin[512];
        snprintf(bin, sizeof bin, "%s/payq-worker", PAYQ_BINARY_DIR);
        execl(bin, bin, cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static void log_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/tests/tls-%d/%s.log", PAYQ_BINARY_DIR, (int)getpid(), name);
}

/* Payments end to end through the TLS connections, and proof that they
 * are TLS on both servers. */
static void test_payments_over_tls(void **state)
{
    (void)state;
    mq_t *mq = h_mq(); /* amqps:// with the stack's CA */

    /* The worker presents a client certificate too (mutual TLS). */
    char cert_env[600], key_env[600];
    snprintf(cert_env, sizeof cert_env, "AMQP_CERT=%s", client_cert);
    snprintf(key_env, sizeof key_env, "AMQP_KEY=%s", client_key);
    const char *env[] = { cert_env, key_env, NULL };
    const char *since = h_text("SELECT now()::text", 0, NULL);
    char started[64];
    snprintf(started, sizeof started, "%s", since);
    pid_t worker = h_worker_start(env);

    const char *alice = h_id("tls-alice"), *shop = h_id("tls-shop");
    h_open(mq, alice, "USD", "customer");
    h_open(mq, shop, "USD", "merchant");
    h_deposit(mq, h_id("tls-dep"), alice, 10000, "USD");
    char body[512];
    const char *pay = h_id("tls-pay");
    snprintf(body, sizeof body,
             "{\"payment_id\":\"%s\",\"amount\":2500,\"currency\":\"USD\",\"source\":\"%s\","
             "\"destination\":\"%s\",\"capture\":true}",
             pay, alice, shop);
    json_t *r = h_call(mq, "payment.create", h_id("tls-msg-pay"), body);
    assert_string_equal(h_status(r), "succeeded");
    assert_string_equal(json_string_value(json_object_get(r, "id")), pay);
    int64_t fee = json_integer_value(json_object_get(r, "fee"));
    json_decref(r);
    snprintf(body, sizeof body,
             "{\"payment_id\":\"%s\",\"amount\":20000,\"currency\":\"USD\",\"source\":\"%s\","
             "\"destination\":\"%s\",\"capture\":true}",
             h_id("tls-pay-big"), alice, shop);
    r = h_call(mq, "payment.create", h_id("tls-msg-pay-big"), body);
    assert_string_equal(h_status(r), "failed");
    assert_string_equal(h_code(r), "insufficient_funds");
    json_decref(r);
    assert_int_equal(h_balance(alice), 7500);
    assert_int_equal(h_balance(shop), 2500 - fee);

    /* PostgreSQL: every session the worker opened since it started (its
     * thread's, and the relay's) is TLS, and this test's own too. */
    char relay_name[64];
    snprintf(relay_name, sizeof relay_name, "payq-worker relay pid %d", (int)worker);
    const char *p[2] = { started, relay_name };
    assert_true(h_int("SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s"
                      " USING (pid) WHERE a.backend_start >= $1::timestamptz"
                      " AND a.application_name IN ('payq-worker', $2) AND s.ssl",
                      2, p) >= 2);
    assert_int_equal(h_int("SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s"
                           " USING (pid) WHERE a.backend_start >= $1::timestamptz"
                           " AND a.application_name IN ('payq-worker', $2) AND NOT s.ssl",
                           2, p),
                     0);
    assert_true(h_int("SELECT count(*) FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                      " AND ssl AND version IN ('TLSv1.2', 'TLSv1.3')",
                      0, NULL) == 1);

    /* RabbitMQ: the worker's connections (thread and relay, named with its
     * pid) are TLS and showed the client certificate. The management API
     * lists a connection once its first statistics are out (~5 s). */
    char needle[64];
    snprintf(needle, sizeof needle, "pid %d", (int)worker);
    struct conn_count c = { 0, 0, 0 };
    for (int i = 0; i < 150 && c.total < 2; i++) {
        c = count_connections(needle);
        if (c.total < 2)
            sleep_ms(100);
    }
    assert_true(c.total >= 2);
    assert_int_equal(c.tls, c.total);
    assert_int_equal(c.client_cert, c.total);
    /* ... and so is this test's own publisher connection */
    c = count_connections("payq test");
    assert_true(c.total >= 1);
    assert_int_equal(c.tls, c.total);

    int st = h_worker_stop(worker, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    mq_close(mq);
}

/* A CA that did not sign the broker's certificate: the worker does not
 * connect at all (neither plain nor unverified) and says why. */
static void test_wrong_ca_refused_by_worker(void **state)
{
    (void)state;
    char log[600], ca_env[600];
    log_path(log, sizeof log, "wrong-ca");
    snprintf(ca_env, sizeof ca_env, "AMQP_CACERT=%s", wrong_ca);
    const char *env[] = { ca_env, NULL };
    pid_t pid = spawn_worker("run", env, log);

    const char *text = "";
    for (int i = 0; i < 200 && !strstr(text, "certificate verify failed"); i++) {
        sleep_ms(50);
        text = slurp(log);
    }
    if (!strstr(text, "certificate verify failed"))
        fail_msg("no certificate error from the worker; its log:\n%s", text);
    /* The message names the CA file it used and the setting that fixes it. */
    assert_non_null(strstr(text, wrong_ca));
    assert_non_null(strstr(text, "AMQP_CACERT"));
    assert_null(strstr(text, "consuming"));
    assert_null(strstr(text, "payq:payq@")); /* the URL is logged redacted */

    /* Long enough for any connection to show in the management API (its
     * statistics come every 5 s): there is none from this worker. */
    sleep_ms(6000);
    char needle[64];
    snprintf(needle, sizeof needle, "pid %d", (int)pid);
    struct conn_count c = count_connections(needle);
    assert_int_equal(c.total, 0);
    assert_null(strstr(slurp(log), "consuming"));

    /* Still retrying (the broker's certificate may be fixed), and it stops
     * cleanly. */
    kill(pid, SIGTERM);
    int st = h_worker_wait(pid, 15000);
    if (st == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("payq-worker did not stop within 15 s of SIGTERM");
    }
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* TLS settings with a plain amqp:// URL would not encrypt anything: a
 * configuration error at start, not a silent plain-text connection. */
static void test_tls_settings_with_plain_url_refused(void **state)
{
    (void)state;
    char log[600], url_env[600];
    log_path(log, sizeof log, "plain-url");
    snprintf(url_env, sizeof url_env, "AMQP_URL=%s", plain_url);
    const char *env[] = { url_env, NULL };
    pid_t pid = spawn_worker("run", env, log);
    int st = h_worker_wait(pid, 15000);
    if (st == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("payq-worker kept running with TLS settings and a plain URL; log:\n%s",
                 slurp(log));
    }
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 2);
    const char *text = slurp(log);
    assert_non_null(strstr(text, "not amqps://"));
    assert_null(strstr(text, "consuming"));
}

/* sslmode=verify-full with a CA that did not sign the server's certificate:
 * libpq refuses the server, and payq says so. */
static void test_wrong_ca_refused_by_postgres_client(void **state)
{
    (void)state;
    char url[1200], log[600];
    const char *good = getenv("DATABASE_URL");
    const char *q = strstr(good, "sslrootcert=");
    assert_non_null(q);
    snprintf(url, sizeof url, "DATABASE_URL=%.*ssslrootcert=%s", (int)(q - good), good, wrong_ca);
    log_path(log, sizeof log, "pg-wrong-ca");
    const char *env[] = { url, NULL };
    pid_t pid = spawn_worker("check", env, log);
    int st = h_worker_wait(pid, 30000);
    if (st == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("payq-worker check did not give up on a wrong CA within 30 s");
    }
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 1);
    const char *text = slurp(log);
    if (!strstr(text, "certificate verify failed"))
        fail_msg("no certificate error from libpq; log:\n%s", text);
    assert_null(strstr(text, "payq:payq@"));

    /* The server takes plain connections too (sslmode=disable), so the
     * refusal is the certificate's, not the server's. */
    char plain[1200];
    const char *query = strchr(good, '?');
    assert_non_null(query);
    snprintf(plain, sizeof plain, "%.*s?sslmode=disable", (int)(query - good), good);
    PGconn *c = PQconnectdb(plain);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    assert_null(PQsslAttribute(c, "protocol"));
    PQfinish(c);
}

int main(void)
{
    /* The plain URL of the same stack, before setup points AMQP_URL at TLS. */
    snprintf(plain_url, sizeof plain_url, "%s", need_env("AMQP_URL"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_payments_over_tls),
        cmocka_unit_test(test_wrong_ca_refused_by_worker),
        cmocka_unit_test(test_tls_settings_with_plain_url_refused),
        cmocka_unit_test(test_wrong_ca_refused_by_postgres_client),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
