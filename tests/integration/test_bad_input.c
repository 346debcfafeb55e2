/*
 * test_bad_input.c - every class of bad input is rejected with its reason
 * (the reply's code and the dead letter's x-payq-reason), nothing is
 * applied, and the worker keeps going.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "harness.h"
#include "topology.h"

static pid_t worker;
static mq_t *mq;

static int setup(void **state)
{
    (void)state;
    h_init();
    mq = h_mq();
    worker = h_worker_start(NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    int st = h_worker_stop(worker, SIGTERM);
    mq_close(mq);
    return (WIFEXITED(st) && WEXITSTATUS(st) == 0) ? 0 : -1;
}

/* Publishes with optional extra headers (n entries) and checks the reply
 * and the dead letter carry `reason`. */
static void expect_rejected(const char *name, const char *rk, const char *content_type,
                            const void *body, size_t len, amqp_table_entry_t *headers, int n,
                            const char *reason)
{
    const char *mid = h_id(name);
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
               AMQP_BASIC_REPLY_TO_FLAG;
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    p.message_id = amqp_cstring_bytes(mid);
    p.reply_to = amqp_cstring_bytes("amq.rabbitmq.reply-to");
    if (content_type) {
        p._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        p.content_type = amqp_cstring_bytes(content_type);
    }
    if (n > 0) {
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
        p.headers.num_entries = n;
        p.headers.entries = headers;
    }
    uint64_t seq;
    assert_int_equal(mq_publish(mq, PAYQ_X_COMMANDS, rk, true, &p, body, len, &seq), PAYQ_OK);
    assert_int_equal(mq_wait_confirms(mq, seq, 10000), PAYQ_OK);
    json_t *r = h_reply(mq, 20000);
    if (!r)
        fail_msg("%s: no reply", name);
    if (strcmp(h_status(r), "rejected") != 0 || strcmp(h_code(r), reason) != 0) {
        char *s = json_dumps(r, 0);
        fail_msg("%s: expected rejected %s, got %s", name, reason, s);
    }
    json_decref(r);
    struct mq_delivery *d = h_dlq_take(mid, 20000);
    if (!d)
        fail_msg("%s: no dead letter", name);
    assert_string_equal(h_header(d, "x-payq-reason"), reason);
    /* a dead letter never carries the offending headers along */
    assert_true(!(d->message.properties._flags & AMQP_BASIC_HEADERS_FLAG) ||
                d->message.properties.headers.num_entries < 40);
    mq_delivery_free(d);
}

static void reject_json(const char *name, const char *rk, const char *body, const char *reason)
{
    expect_rejected(name, rk, "application/json", body, strlen(body), NULL, 0, reason);
}

static void test_body_classes(void **state)
{
    (void)state;
    char body[1024];
    const char *acc = h_id("bad-acct");

    /* size: one byte over 64 KiB */
    size_t big = 64 * 1024 + 1;
    char *huge = malloc(big);
    assert_non_null(huge);
    memset(huge, ' ', big);
    memcpy(huge, "{\"account\":\"x\"}", 15);
    expect_rejected("too-big", "account.open", "application/json", huge, big, NULL, 0,
                    "schema_invalid");
    free(huge);

    /* content type, UTF-8, syntax, nesting */
    expect_rejected("text-plain", "account.open", "text/plain", "{}", 2, NULL, 0,
                    "malformed_json");
    expect_rejected("bad-utf8", "account.open", "application/json",
                    "{\"account\":\"\xc3\x28\",\"currency\":\"USD\",\"kind\":\"customer\"}", 50,
                    NULL, 0, "malformed_json");
    char *deep = malloc(20001);
    assert_non_null(deep);
    for (int i = 0; i < 10000; i++) {
        deep[i] = '[';
        deep[10000 + i] = ']';
    }
    deep[20000] = 0;
    expect_rejected("deep", "account.open", "application/json", deep, 20000, NULL, 0,
                    "schema_invalid");
    free(deep);

    /* numbers */
    snprintf(body, sizeof body,
             "{\"deposit_id\":\"%s\",\"account\":\"%s\",\"amount\":%s,\"currency\":\"USD\"}",
             h_id("d1"), acc, "123456789012345678901234567890");
    reject_json("huge-number", "account.deposit", body, "schema_invalid");
    snprintf(body, sizeof body,
             "{\"deposit_id\":\"%s\",\"account\":\"%s\",\"amount\":-5,\"currency\":\"USD\"}",
             h_id("d2"), acc);
    reject_json("negative", "account.deposit", body, "schema_invalid");
    snprintf(body, sizeof body,
             "{\"deposit_id\":\"%s\",\"account\":\"%s\",\"amount\":0,\"currency\":\"USD\"}",
             h_id("d3"), acc);
    reject_json("zero", "account.deposit", body, "schema_invalid");
    snprintf(body, sizeof body,
             "{\"deposit_id\":\"%s\",\"account\":\"%s\",\"amount\":1000000000000001,"
             "\"currency\":\"USD\"}",
             h_id("d4"), acc);
    reject_json("over-max", "account.deposit", body, "schema_invalid");
    snprintf(body, sizeof body,
             "{\"deposit_id\":\"%s\",\"account\":\"%s\",\"amount\":5,\"currency\":\"XYZ\"}",
             h_id("d5"), acc);
    reject_json("currency", "account.deposit", body, "schema_invalid");

    /* field lengths */
    char longid[80];
    memset(longid, 'a', 65);
    longid[65] = 0;
    snprintf(body, sizeof body, "{\"account\":\"%s\",\"currency\":\"USD\",\"kind\":\"customer\"}",
             longid);
    reject_json("long-id", "account.open", body, "schema_invalid");
    char *desc = malloc(1200);
    assert_non_null(desc);
    memset(desc, 'x', 1001);
    desc[1001] = 0;
    char *pay = malloc(2000);
    assert_non_null(pay);
    snprintf(pay, 2000,
             "{\"payment_id\":\"%s\",\"amount\":5,\"currency\":\"USD\",\"source\":\"a\","
             "\"destination\":\"b\",\"capture\":true,\"description\":\"%s\"}",
             h_id("p1"), desc);
    reject_json("long-description", "payment.create", pay, "schema_invalid");
    free(desc);
    free(pay);

    /* nothing of it was applied */
    const char *p[1] = { acc };
    assert_int_equal(h_int("SELECT count(*) FROM payq.deposits WHERE account_id = $1", 1, p), 0);
}

static void test_header_classes(void **state)
{
    (void)state;
    /* too many headers */
    amqp_table_entry_t many[100];
    char keys[100][16];
    for (int i = 0; i < 100; i++) {
        snprintf(keys[i], sizeof keys[i], "h%d", i);
        many[i].key = amqp_cstring_bytes(keys[i]);
        many[i].value.kind = AMQP_FIELD_KIND_I64;
        many[i].value.value.i64 = i;
    }
    const char *ok = "{\"account\":\"x-hdr\",\"currency\":\"USD\",\"kind\":\"customer\"}";
    expect_rejected("many-headers", "account.open", "application/json", ok, strlen(ok), many,
                    100, "schema_invalid");

    /* one header of 20 KB */
    char *value = malloc(20 * 1024 + 1);
    assert_non_null(value);
    memset(value, 'v', 20 * 1024);
    value[20 * 1024] = 0;
    amqp_table_entry_t one[1];
    one[0].key = amqp_cstring_bytes("x-big");
    one[0].value.kind = AMQP_FIELD_KIND_UTF8;
    one[0].value.value.bytes = amqp_cstring_bytes(value);
    expect_rejected("big-header", "account.open", "application/json", ok, strlen(ok), one, 1,
                    "schema_invalid");
    free(value);

    /* a message_id that is not printable ASCII (over 255 bytes cannot even
     * be sent: AMQP carries it as a short string) */
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_REPLY_TO_FLAG;
    p.message_id = amqp_cstring_bytes("bad id\twith a tab");
    p.reply_to = amqp_cstring_bytes("amq.rabbitmq.reply-to");
    uint64_t seq;
    assert_int_equal(mq_publish(mq, PAYQ_X_COMMANDS, "account.open", true, &p, ok, strlen(ok),
                                &seq),
                     PAYQ_OK);
    assert_int_equal(mq_wait_confirms(mq, seq, 10000), PAYQ_OK);
    json_t *r = h_reply(mq, 20000);
    assert_non_null(r);
    assert_string_equal(h_code(r), "schema_invalid");
    json_decref(r);
}

/* After all of it, the same worker still applies a good command. */
static void test_still_working(void **state)
{
    (void)state;
    assert_int_equal(kill(worker, 0), 0);
    const char *acc = h_id("good-after-bad");
    h_open(mq, acc, "USD", "customer");
    h_deposit(mq, h_id("good-dep"), acc, 100, "USD");
    assert_int_equal(h_balance(acc), 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_classes),
        cmocka_unit_test(test_header_classes),
        cmocka_unit_test(test_still_working),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
