/*
 * test_publish.c - payq-publish as people and scripts use it, against the
 * real broker and a real worker: --file with --wait (exit code and one
 * NDJSON reply per line), --example bodies the worker accepts, --rate as a
 * lower bound on the run time, and input errors that name the line.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "cmd.h"
#include "harness.h"

static pid_t worker;
static mq_t *mq;

static int setup(void **state)
{
    (void)state;
    h_init();
    worker = h_worker_start(NULL);
    mq = h_mq();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    mq_close(mq);
    h_worker_stop(worker, SIGTERM);
    return 0;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Writes text to a new temporary file named in path. */
static void write_tmp(char path[64], const char *text)
{
    snprintf(path, 64, "/tmp/payq-publish-test-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
}

/* Runs payq-publish with args (a shell fragment); returns its exit code and
 * its stdout (malloc'd) and stderr (malloc'd) in *out / *err. */
static int publish(const char *args, char **out, char **err)
{
    char errpath[64];
    write_tmp(errpath, "");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s/payq-publish %s 2>%s", PAYQ_BINARY_DIR, args, errpath);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += r;
        if (n + 1 == cap) {
            buf = realloc(buf, cap *= 2);
            assert_non_null(buf);
        }
    }
    buf[n] = 0;
    int st = pclose(p);
    FILE *f = fopen(errpath, "r");
    assert_non_null(f);
    char *e = calloc(1, 1 << 16);
    assert_non_null(e);
    size_t en = fread(e, 1, (1 << 16) - 1, f);
    e[en] = 0;
    fclose(f);
    unlink(errpath);
    if (err)
        *err = e;
    else
        free(e);
    if (out)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The replies of a --wait --file run, by line number (1-based, up to 63). */
static void parse_replies(char *out, json_t *by_line[64], int *count)
{
    *count = 0;
    for (char *save = NULL, *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        json_error_t jerr;
        json_t *r = json_loads(l, 0, &jerr);
        if (!r)
            fail_msg("stdout line is not JSON: %s", l);
        json_int_t line = json_integer_value(json_object_get(r, "line"));
        assert_true(line >= 1 && line < 64);
        assert_null(by_line[line]);
        assert_non_null(json_string_value(json_object_get(r, "correlation_id")));
        by_line[line] = r;
        (*count)++;
    }
}

static void test_file_wait_mixed(void **state)
{
    (void)state;
    const char *alice = h_id("fa"), *shop = h_id("fs");
    h_open(mq, alice, "USD", "customer");
    h_open(mq, shop, "USD", "merchant");
    h_deposit(mq, h_id("fd"), alice, 1000, "USD");

    /* Line 1 succeeds, line 3 is refused by the business, line 4 has a
     * body the worker rejects; line 2 is blank (allowed). */
    char text[4096], path[64];
    snprintf(text, sizeof text,
             "{\"command\":\"payment.create\",\"correlation_id\":\"%s\",\"body\":"
             "{\"payment_id\":\"%s\",\"amount\":400,\"currency\":\"USD\",\"source\":\"%s\","
             "\"destination\":\"%s\",\"capture\":true}}\n"
             "\n"
             "{\"command\":\"payment.create\",\"body\":{\"payment_id\":\"%s\",\"amount\":5000,"
             "\"currency\":\"USD\",\"source\":\"%s\",\"destination\":\"%s\",\"capture\":true}}\n"
             "{\"command\":\"payment.create\",\"message_id\":\"%s\",\"body\":"
             "{\"payment_id\":\"%s\",\"amount\":\"ten\",\"currency\":\"USD\",\"source\":\"%s\","
             "\"destination\":\"%s\",\"capture\":true}}\n",
             h_id("corr-1"), h_id("fp1"), alice, shop, h_id("fp2"), alice, shop, h_id("fm3"),
             h_id("fp3"), alice, shop);
    write_tmp(path, text);
    char args[256], *out, *err;
    snprintf(args, sizeof args, "--wait --timeout 60 --file %s", path);
    int rc = publish(args, &out, &err);
    unlink(path);
    assert_int_equal(rc, 3); /* the worst of failed (1) and rejected (3) */

    json_t *by_line[64] = { 0 };
    int count;
    parse_replies(out, by_line, &count);
    assert_int_equal(count, 3);
    assert_non_null(by_line[1]);
    assert_non_null(by_line[3]);
    assert_non_null(by_line[4]);
    assert_string_equal(h_status(by_line[1]), "succeeded");
    assert_string_equal(json_string_value(json_object_get(by_line[1], "correlation_id")),
                        h_id("corr-1"));
    assert_string_equal(json_string_value(json_object_get(by_line[1], "id")), h_id("fp1"));
    assert_string_equal(h_status(by_line[3]), "failed");
    assert_string_equal(h_code(by_line[3]), "insufficient_funds");
    assert_string_equal(h_status(by_line[4]), "rejected");
    assert_string_equal(h_code(by_line[4]), "schema_invalid");
    /* The summary (stderr is not a terminal: no progress line, no \r). */
    assert_non_null(strstr(err, "3 of 3 sent, 3 confirmed, 3 replies"));
    assert_non_null(strstr(err, "insufficient_funds 1"));
    assert_null(strchr(err, '\r'));
    for (int i = 0; i < 64; i++)
        json_decref(by_line[i]);
    free(out);
    free(err);
    /* The rejected one is dead-lettered; take it off so payq.dlq stays tidy. */
    struct mq_delivery *d = h_dlq_take(h_id("fm3"), 10000);
    assert_non_null(d);
    mq_delivery_free(d);

    /* All good (a replay of line 1: same payment, same outcome) exits 0. */
    snprintf(text, sizeof text,
             "{\"command\":\"payment.create\",\"body\":{\"payment_id\":\"%s\",\"amount\":400,"
             "\"currency\":\"USD\",\"source\":\"%s\",\"destination\":\"%s\",\"capture\":true}}\n",
             h_id("fp1"), alice, shop);
    write_tmp(path, text);
    snprintf(args, sizeof args, "--wait --quiet --file - < %s", path);
    rc = publish(args, &out, &err);
    unlink(path);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "\"succeeded\""));
    assert_string_equal(err, ""); /* --quiet */
    free(out);
    free(err);
}

/* Replaces every id of an example body by a unique one of this run. */
static char *unique_ids(const char *body)
{
    static const char *const keys[] = { "account",    "source",    "destination", "deposit_id",
                                        "payment_id", "refund_id", NULL };
    json_t *j = json_loads(body, 0, NULL);
    assert_non_null(j);
    for (const char *const *k = keys; *k; k++) {
        const char *v = json_string_value(json_object_get(j, *k));
        if (v && strncmp(v, "tok_", 4) != 0)
            json_object_set_new(j, *k, json_string(h_id(v)));
    }
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

/* Each example passes cmd_parse, and played in order against the worker
 * they tell a story that ends well. */
static void test_examples_accepted(void **state)
{
    (void)state;
    static const struct {
        const char *command;
        const char *tweak; /* a field to set before publishing, or NULL */
        const char *status;
    } steps[] = {
        { "account.open", NULL, "succeeded" },
        { "account.deposit", NULL, "succeeded" },
        { "payment.create", NULL, "succeeded" },
        { "payment.refund", NULL, "succeeded" },
        /* capture and cancel need a payment created with capture false */
        { "payment.capture", "authorize", "succeeded" },
        { "payment.cancel", "authorize", "succeeded" },
    };
    char *out;
    assert_int_equal(publish("--example", &out, NULL), 0);
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++)
        assert_non_null(strstr(out, steps[i].command));
    free(out);

    /* The payee of the examples. */
    char *create;
    assert_int_equal(publish("--example payment.create", &create, NULL), 0);
    json_t *cj = json_loads(create, 0, NULL);
    assert_non_null(cj);
    h_open(mq, h_id(json_string_value(json_object_get(cj, "destination"))), "USD", "merchant");

    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        char args[128];
        snprintf(args, sizeof args, "--example %s", steps[i].command);
        assert_int_equal(publish(args, &out, NULL), 0);
        size_t len = strlen(out);
        cmd_t cmd;
        struct cmd_error e;
        int st = cmd_parse(steps[i].command, strlen(steps[i].command), "application/json", 16, NULL,
                           0, out, len, &cmd, &e);
        if (st != PAYQ_OK)
            fail_msg("example %s: %s: %s", steps[i].command, cmd_reject_code(e.code), e.message);
        cmd_free(&cmd);

        char *body = unique_ids(out);
        if (steps[i].tweak) {
            /* First an authorized payment with the id the example names. */
            json_t *pj = json_loads(out, 0, NULL);
            json_t *c = json_deep_copy(cj);
            json_object_set(c, "payment_id", json_object_get(pj, "payment_id"));
            json_object_set_new(c, "capture", json_false());
            char *ctext = json_dumps(c, JSON_COMPACT);
            char *cu = unique_ids(ctext);
            json_t *r = h_call(mq, "payment.create", NULL, cu);
            assert_string_equal(h_status(r), "authorized");
            json_decref(r);
            free(cu);
            free(ctext);
            json_decref(c);
            json_decref(pj);
        }
        json_t *r = h_call(mq, steps[i].command, NULL, body);
        if (strcmp(h_status(r), steps[i].status) != 0)
            fail_msg("example %s: %s %s", steps[i].command, h_status(r), h_code(r));
        json_decref(r);
        free(body);
        free(out);
    }
    json_decref(cj);
    free(create);

    assert_int_equal(publish("--example payment.nope", NULL, NULL), 2);
}

static void test_rate_lower_bound(void **state)
{
    (void)state;
    char text[8192] = "", path[64];
    size_t n = 0;
    for (int i = 0; i < 20; i++) {
        char name[32];
        snprintf(name, sizeof name, "rate-%d", i);
        n += (size_t)snprintf(text + n, sizeof text - n,
                              "{\"command\":\"account.open\",\"body\":{\"account\":\"%s\","
                              "\"currency\":\"USD\",\"kind\":\"customer\"}}\n",
                              h_id(name));
        assert_true(n < sizeof text);
    }
    write_tmp(path, text);
    char args[256], *out;
    snprintf(args, sizeof args, "--rate 20 --wait --timeout 60 --file %s", path);
    long long t0 = now_ms();
    int rc = publish(args, &out, NULL);
    long long took = now_ms() - t0;
    unlink(path);
    assert_int_equal(rc, 0);
    /* 20 commands at 20/s: the last leaves 19/20 s after the first. A lower
     * bound only: a slow machine may take longer. */
    assert_true(took >= 900);
    json_t *by_line[64] = { 0 };
    int count;
    parse_replies(out, by_line, &count);
    assert_int_equal(count, 20);
    for (int i = 1; i <= 20; i++) {
        assert_non_null(by_line[i]);
        assert_string_equal(h_status(by_line[i]), "succeeded");
        json_decref(by_line[i]);
    }
    free(out);
}

/* Input errors stop the run before anything is published, and say where. */
static void test_input_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *expect;
    } cases[] = {
        { "{\"command\":\"account.open\",\"body\":{}}\n\nnot json\n", "line 3: not JSON" },
        { "{\"command\":\"account.opn\",\"body\":{}}\n", "line 1: unknown command" },
        { "{\"command\":\"account.open\",\"account\":\"x\"}\n", "line 1: unknown field" },
        { "{\"command\":\"account.open\",\"body\":\"x\"}\n", "must be a JSON object" },
        { "{\"command\":\"account.open\",\"body\":{},\"correlation_id\":\"c\"}\n"
          "{\"command\":\"account.open\",\"body\":{},\"correlation_id\":\"c\"}\n",
          "line 2: correlation_id \"c\" is already used by line 1" },
        { "\n", "no commands" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[64], args[128], *err;
        write_tmp(path, cases[i].text);
        snprintf(args, sizeof args, "--wait --file %s", path);
        assert_int_equal(publish(args, NULL, &err), 2);
        unlink(path);
        if (!strstr(err, cases[i].expect))
            fail_msg("case %zu: expected \"%s\" in: %s", i, cases[i].expect, err);
        free(err);
    }
    /* --rate that cannot finish within --timeout: said before publishing. */
    char path[64], *err;
    write_tmp(path, "{\"command\":\"account.open\",\"body\":{}}\n"
                    "{\"command\":\"account.open\",\"body\":{}}\n"
                    "{\"command\":\"account.open\",\"body\":{}}\n");
    char args[128];
    snprintf(args, sizeof args, "--rate 1 --timeout 1 --file %s", path);
    assert_int_equal(publish(args, NULL, &err), 2);
    unlink(path);
    assert_non_null(strstr(err, "raise it, e.g. --timeout"));
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_input_errors),
        cmocka_unit_test(test_file_wait_mixed),
        cmocka_unit_test(test_examples_accepted),
        cmocka_unit_test(test_rate_lower_bound),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
