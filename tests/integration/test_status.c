/*
 * test_status.c - payq-worker status against the real stack: after a few
 * commands through a real worker, the tables name every queue and section,
 * --json parses and its figures cover what this test created, and the exit
 * code is 0; with the broker or the database on a closed port, exit code 1
 * and the hint on stderr.
 *
 * Other runs share the broker and the database, so figures are checked as
 * lower bounds or deltas of quantities that never shrink (payments are never
 * deleted), never as exact global counts.
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
#include <unistd.h>

#include <cmocka.h>

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

static int cleanup(void **state)
{
    (void)state;
    h_kill_workers();
    return 0;
}

/* Runs `env payq-worker status args` and returns its stdout (malloc'd; the
 * caller frees); *code gets the exit code. stderr goes to err_path when
 * given, else to the test's stderr. */
static char *run_status(const char *env, const char *args, const char *err_path, int *code)
{
    char cmd[2048];
    int n = snprintf(cmd, sizeof cmd, "%s %s/payq-worker status %s 2>%s", env ? env : "",
                     PAYQ_BINARY_DIR, args ? args : "", err_path ? err_path : "&2");
    assert_true(n > 0 && (size_t)n < sizeof cmd);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    size_t cap = 65536, len = 0, got;
    char *buf = malloc(cap);
    assert_non_null(buf);
    while ((got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (len + 1 == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    buf[len] = 0;
    int st = pclose(f);
    *code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return buf;
}

static json_t *status_json(void)
{
    int code;
    char *out = run_status(NULL, "--json", NULL, &code);
    json_error_t err;
    json_t *j = json_loads(out, JSON_REJECT_DUPLICATES, &err);
    if (!j)
        fail_msg("status --json is not JSON (%s at line %d): %s", err.text, err.line, out);
    free(out);
    assert_int_equal(code, 0);
    assert_true(json_is_object(j));
    return j;
}

/* An integer member of o (fails when absent or of another type). */
static long long member(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        fail_msg("\"%s\" is not an integer", key);
    return json_integer_value(v);
}

/* Payments of one currency over every status: never shrinks. */
static void payments_of(json_t *st, const char *currency, long long *count, long long *amount)
{
    json_t *list = json_object_get(st, "payments"), *p;
    assert_true(json_is_array(list));
    size_t i;
    *count = *amount = 0;
    json_array_foreach(list, i, p)
    {
        assert_true(json_is_string(json_object_get(p, "status")));
        if (strcmp(json_string_value(json_object_get(p, "currency")), currency) != 0)
            continue;
        *count += member(p, "count");
        *amount += member(p, "amount");
    }
}

static json_t *queue(json_t *st, const char *name)
{
    json_t *q;
    size_t i;
    json_array_foreach(json_object_get(st, "queues"), i,
                       q) if (strcmp(json_string_value(json_object_get(q, "name")), name) ==
                              0) return q;
    fail_msg("queue %s missing from status --json", name);
    return NULL;
}

static void test_status_after_commands(void **state)
{
    (void)state;
    json_t *before = status_json();
    long long count0, amount0;
    payments_of(before, "USD", &count0, &amount0);

    pid_t worker = h_worker_start(NULL);
    const char *alice = h_id("alice"), *shop = h_id("shop");
    h_open(mq, alice, "USD", "customer");
    h_open(mq, shop, "USD", "merchant");
    h_deposit(mq, h_id("dep-1"), alice, 10000, "USD");
    int commands = 0; /* with a message_id: what throughput counts */
    for (int i = 0; i < 3; i++) {
        char id[64], mid[64], body[512];
        snprintf(id, sizeof id, "pay-%d", i);
        snprintf(mid, sizeof mid, "msg-pay-%d", i);
        snprintf(body, sizeof body,
                 "{\"payment_id\":\"%s\",\"amount\":%d,\"currency\":\"USD\",\"source\":\"%s\","
                 "\"destination\":\"%s\",\"capture\":true}",
                 h_id(id), 1000 + i, alice, shop);
        json_t *r = h_call(mq, "payment.create", h_id(mid), body);
        assert_string_equal(h_status(r), "succeeded");
        json_decref(r);
        commands++;
    }
    /* One dead letter (status 'dead' until h_dlq_take, at the end, resolves
     * it and takes it off the shared DLQ). */
    const char *junk_mid = h_id("msg-junk");
    h_publish(mq, "payment.create", junk_mid, "{not json");
    json_t *r = h_reply(mq, 20000);
    assert_non_null(r);
    assert_string_equal(h_status(r), "rejected");
    json_decref(r);
    const char *p[1] = { junk_mid };
    int64_t recorded = 0;
    for (int i = 0; i < 100 && !recorded; i++) { /* the reply may come first */
        recorded = h_int("SELECT count(*) FROM payq.dead_letters"
                         " WHERE message_id = $1 AND status = 'dead'",
                         1, p);
        if (!recorded)
            usleep(100000);
    }
    assert_int_equal(recorded, 1);

    /* Tables: every queue and every section, exit code 0. */
    int code;
    char *text = run_status(NULL, NULL, NULL, &code);
    assert_int_equal(code, 0);
    assert_non_null(strstr(text, PAYQ_Q_COMMANDS));
    assert_non_null(strstr(text, PAYQ_Q_DLQ));
    for (size_t i = 0; i < topo_ntiers; i++)
        assert_non_null(strstr(text, topo_tiers[i].queue));
    for (const char *const *s = (const char *const[]){ "READY", "UNACKED", "CONSUMERS", "Payments",
                                                       "succeeded", "Sagas in flight", "Throughput",
                                                       "Outbox", "Dead letters", NULL };
         *s; s++)
        if (!strstr(text, *s))
            fail_msg("\"%s\" missing from status:\n%s", *s, text);
    free(text);

    /* JSON: the keys, and figures covering what this test did. */
    json_t *after = status_json();
    assert_true(json_is_true(json_object_get(after, "broker_ok")));
    assert_true(json_is_true(json_object_get(after, "database_ok")));
    json_t *q = queue(after, PAYQ_Q_COMMANDS);
    assert_true(json_is_true(json_object_get(q, "exists")));
    assert_true(member(q, "consumers") >= 1); /* our worker, still running */
    assert_true(member(q, "ready") >= 0);
    q = queue(after, PAYQ_Q_DLQ);
    assert_true(member(q, "ready") >= 0);
    for (size_t i = 0; i < topo_ntiers; i++)
        assert_true(json_is_true(json_object_get(queue(after, topo_tiers[i].queue), "exists")));
    json_t *u = json_object_get(queue(after, PAYQ_Q_COMMANDS), "unacked");
    assert_true(json_is_integer(u) || json_is_null(u));

    long long count1, amount1;
    payments_of(after, "USD", &count1, &amount1);
    assert_true(count1 - count0 >= 3);
    assert_true(amount1 - amount0 >= 1000 + 1001 + 1002);

    json_t *sagas = json_object_get(after, "sagas_in_flight");
    assert_true(member(sagas, "payments") >= 0 && member(sagas, "refunds") >= 0);
    json_t *age = json_object_get(sagas, "oldest_age_s");
    assert_true(json_is_null(age) || json_integer_value(age) >= 0);

    json_t *tp = json_object_get(after, "throughput");
    assert_string_equal(json_string_value(json_object_get(tp, "source")), "payq.inbox");
    assert_true(member(tp, "commands_1m") >= commands); /* the test took well under a minute */
    assert_true(member(tp, "commands_5m") >= member(tp, "commands_1m"));

    json_t *ob = json_object_get(after, "outbox");
    assert_true(member(ob, "unpublished") >= 0);
    assert_true(json_object_get(ob, "oldest_age_s") != NULL);

    json_t *dead = json_object_get(after, "dead_letters");
    long long total = member(dead, "total");
    assert_true(total >= 1);
    json_t *top = json_object_get(dead, "top_reasons"), *t;
    assert_true(json_is_array(top));
    assert_true(json_array_size(top) >= 1 && json_array_size(top) <= 5);
    long long sum = 0, prev = -1;
    size_t i;
    json_array_foreach(top, i, t)
    {
        assert_true(json_is_string(json_object_get(t, "reason")));
        assert_true(json_is_string(json_object_get(t, "last_seen")));
        long long c = member(t, "count");
        assert_true(c >= 1);
        assert_true(prev < 0 || c <= prev); /* most frequent first */
        prev = c;
        sum += c;
    }
    assert_true(sum <= total);

    json_decref(before);
    json_decref(after);
    struct mq_delivery *d = h_dlq_take(junk_mid, 20000);
    assert_non_null(d);
    mq_delivery_free(d);
    assert_int_equal(h_worker_stop(worker, SIGTERM), 0);
}

/* A port nobody listens on right now (the kernel's pick, released). */
static int closed_port(void)
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

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char buf[16384];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* The broker or the database on a closed port: exit 1, the hint on stderr,
 * and what could be read is still printed. */
static void test_unreachable(void **state)
{
    (void)state;
    char env[256], err_path[512];
    snprintf(err_path, sizeof err_path, "%s/tests/status-err-%d.log", PAYQ_BINARY_DIR,
             (int)getpid());
    int code;

    snprintf(env, sizeof env, "AMQP_URL=amqp://payq:payq@127.0.0.1:%d", closed_port());
    char *out = run_status(env, NULL, err_path, &code);
    assert_int_equal(code, 1);
    const char *err = slurp(err_path);
    if (!strstr(err, "is RabbitMQ running?") || !strstr(err, "bash tests/stack.sh up"))
        fail_msg("no hint in stderr: %s", err);
    assert_null(strstr(err, ":payq@"));       /* the password is redacted */
    assert_non_null(strstr(out, "Payments")); /* the database part is still there */
    free(out);

    out = run_status(env, "--json", err_path, &code);
    assert_int_equal(code, 1);
    json_t *j = json_loads(out, 0, NULL);
    assert_non_null(j);
    assert_true(json_is_false(json_object_get(j, "broker_ok")));
    assert_true(json_is_true(json_object_get(j, "database_ok")));
    assert_true(json_is_string(json_object_get(j, "broker_error")));
    json_decref(j);
    free(out);

    snprintf(env, sizeof env, "DATABASE_URL=postgresql://payq:payq@127.0.0.1:%d/payq",
             closed_port());
    out = run_status(env, NULL, err_path, &code);
    assert_int_equal(code, 1);
    err = slurp(err_path);
    if (!strstr(err, "is PostgreSQL running?") || !strstr(err, "bash tests/stack.sh up"))
        fail_msg("no hint in stderr: %s", err);
    assert_non_null(strstr(out, PAYQ_Q_COMMANDS)); /* the broker part is still there */
    free(out);
    unlink(err_path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_status_after_commands, cleanup),
        cmocka_unit_test_teardown(test_unreachable, cleanup),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
