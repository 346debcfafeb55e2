/*
 * test_e2e.c - one payment the whole way: publisher -> RabbitMQ -> worker ->
 * PostgreSQL -> reply, and the ways it can go wrong at the edges: duplicate
 * publishes, insufficient funds, malformed and invalid messages.
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
    /* A clean drain exits 0. */
    return (WIFEXITED(st) && WEXITSTATUS(st) == 0) ? 0 : -1;
}

static char *payment_body(char *buf, size_t len, const char *id, long long amount,
                          const char *src, const char *dst)
{
    snprintf(buf, len,
             "{\"payment_id\":\"%s\",\"amount\":%lld,\"currency\":\"USD\",\"source\":\"%s\","
             "\"destination\":\"%s\",\"capture\":true,\"description\":\"order 42\"}",
             id, amount, src, dst);
    return buf;
}

static int64_t postings_for(const char *kind, const char *ref)
{
    const char *p[2] = { kind, ref };
    return h_int("SELECT count(*) FROM payq.postings WHERE kind = $1 AND ref = $2", 2, p);
}

/* Open, fund, pay with a fee: balances, ledger, payment row, reply. */
static void test_happy_path(void **state)
{
    (void)state;
    const char *alice = h_id("alice"), *shop = h_id("shop");
    h_open(mq, alice, "USD", "customer");
    h_open(mq, shop, "USD", "merchant");
    const char *fee_params[1] = { shop };
    assert_string_equal(h_exec("INSERT INTO payq.fee_rules (merchant, currency, bps, fixed)"
                               " VALUES ($1, 'USD', 290, 30)", 1, fee_params), "");
    h_deposit(mq, h_id("dep-1"), alice, 10000, "USD");
    assert_int_equal(h_balance(alice), 10000);

    char body[512];
    const char *pid = h_id("pay-1");
    json_t *r = h_call(mq, "payment.create", h_id("msg-pay-1"),
                       payment_body(body, sizeof body, pid, 2500, alice, shop));
    assert_string_equal(h_status(r), "succeeded");
    assert_string_equal(json_string_value(json_object_get(r, "command")), "payment.create");
    assert_string_equal(json_string_value(json_object_get(r, "id")), pid);
    assert_int_equal(json_integer_value(json_object_get(r, "amount")), 2500);
    /* fee = round_half_up(2500 * 2.90%) + 30 = 73 + 30 */
    assert_int_equal(json_integer_value(json_object_get(r, "fee")), 103);
    json_decref(r);

    assert_int_equal(h_balance(alice), 7500);
    assert_int_equal(h_balance(shop), 2397);
    const char *p1[1] = { pid };
    assert_string_equal(h_text("SELECT status FROM payq.payments WHERE payment_id = $1", 1, p1),
                        "succeeded");
    /* Three entries (payer, merchant, platform fee) summing to zero. */
    assert_int_equal(h_int("SELECT count(*) FROM payq.ledger_entries e JOIN payq.postings p"
                           " ON p.id = e.posting_id WHERE p.ref = $1",
                           1, p1),
                     3);
    assert_int_equal(h_int("SELECT sum(e.amount) FROM payq.ledger_entries e JOIN payq.postings p"
                           " ON p.id = e.posting_id WHERE p.ref = $1",
                           1, p1),
                     0);
    /* The whole ledger balances, per currency. */
    assert_int_equal(h_int("SELECT count(*) FROM (SELECT currency FROM payq.ledger_entries"
                           " GROUP BY currency HAVING sum(amount) <> 0) x",
                           0, NULL),
                     0);
    /* The event store: one transaction, one state change, one event. */
    assert_string_equal(h_text("SELECT string_agg(type, ',' ORDER BY version)"
                               " FROM payq.payment_events WHERE payment_id = $1",
                               1, p1),
                        "payment.succeeded");
}

/* The same command three times (same message_id twice, then a new one):
 * one effect, the same reply each time. */
static void test_duplicates(void **state)
{
    (void)state;
    const char *bob = h_id("bob"), *shop = h_id("shop2");
    h_open(mq, bob, "USD", "customer");
    h_open(mq, shop, "USD", "merchant");
    h_deposit(mq, h_id("dep-2"), bob, 5000, "USD");
    /* A duplicate deposit (new message, same deposit_id) adds nothing. */
    h_deposit(mq, h_id("dep-2"), bob, 5000, "USD");
    assert_int_equal(h_balance(bob), 5000);

    char body[512];
    const char *pid = h_id("pay-dup");
    payment_body(body, sizeof body, pid, 1200, bob, shop);
    const char *mid = h_id("msg-dup");
    h_publish(mq, "payment.create", mid, body);
    h_publish(mq, "payment.create", mid, body);
    h_publish(mq, "payment.create", h_id("msg-dup-other"), body);
    char *first = NULL;
    for (int i = 0; i < 3; i++) {
        json_t *r = h_reply(mq, 20000);
        assert_non_null(r);
        assert_string_equal(h_status(r), "succeeded");
        char *s = json_dumps(r, JSON_SORT_KEYS | JSON_COMPACT);
        if (!first)
            first = s;
        else {
            assert_string_equal(s, first);
            free(s);
        }
        json_decref(r);
    }
    free(first);
    assert_int_equal(h_balance(bob), 3800);
    assert_int_equal(h_balance(shop), 1200);
    assert_int_equal(postings_for("capture", pid), 1);
    assert_int_equal(postings_for("deposit", h_id("dep-2")), 1);
}

/* More than the balance: failed insufficient_funds, nothing moved. */
static void test_insufficient_funds(void **state)
{
    (void)state;
    const char *carol = h_id("carol"), *shop = h_id("shop3");
    h_open(mq, carol, "USD", "customer");
    h_open(mq, shop, "USD", "merchant");
    h_deposit(mq, h_id("dep-3"), carol, 1000, "USD");
    char body[512];
    const char *pid = h_id("pay-poor");
    json_t *r = h_call(mq, "payment.create", h_id("msg-poor"),
                       payment_body(body, sizeof body, pid, 1001, carol, shop));
    assert_string_equal(h_status(r), "failed");
    assert_string_equal(h_code(r), "insufficient_funds");
    json_decref(r);
    assert_int_equal(h_balance(carol), 1000);
    assert_int_equal(h_balance(shop), 0);
    assert_int_equal(postings_for("capture", pid), 0);
    const char *p1[1] = { pid };
    assert_string_equal(h_text("SELECT status || ':' || failure_code FROM payq.payments"
                               " WHERE payment_id = $1", 1, p1),
                        "failed:insufficient_funds");
    /* Exactly the balance goes through. */
    r = h_call(mq, "payment.create", h_id("msg-exact"),
               payment_body(body, sizeof body, h_id("pay-exact"), 1000, carol, shop));
    assert_string_equal(h_status(r), "succeeded");
    json_decref(r);
    assert_int_equal(h_balance(carol), 0);
}

static void expect_dead_letter(const char *mid, const char *reason, const char *body)
{
    struct mq_delivery *d = h_dlq_take(mid, 20000);
    if (!d)
        fail_msg("no dead letter with message_id %s", mid);
    assert_string_equal(h_header(d, "x-payq-reason"), reason);
    assert_string_equal(h_header(d, "x-payq-attempts"), "1");
    assert_string_equal(h_header(d, "x-payq-original-exchange"), "payq.commands");
    assert_true(strlen(h_header(d, "x-payq-error")) > 0);
    assert_true(strlen(h_header(d, "x-payq-first-failure-at")) > 0);
    if (body) {
        assert_int_equal(d->message.body.len, strlen(body));
        assert_memory_equal(d->message.body.bytes, body, strlen(body));
    }
    mq_delivery_free(d);
}

/* Garbage is rejected with a reason and lands in the DLQ unchanged; the
 * worker keeps going and applies the next message. */
static void test_malformed_then_next(void **state)
{
    (void)state;
    const char *junk = "{\"payment_id\": \"x\", not json";
    const char *mid = h_id("msg-junk");
    h_publish(mq, "payment.create", mid, junk);
    json_t *r = h_reply(mq, 20000);
    assert_non_null(r);
    assert_string_equal(h_status(r), "rejected");
    assert_string_equal(h_code(r), "malformed_json");
    json_decref(r);
    expect_dead_letter(mid, "malformed_json", junk);

    /* Still alive, still working. */
    assert_int_equal(kill(worker, 0), 0);
    const char *dave = h_id("dave");
    h_open(mq, dave, "EUR", "customer");
    h_deposit(mq, h_id("dep-4"), dave, 700, "EUR");
    assert_int_equal(h_balance(dave), 700);
}

/* Each rejection code reaches the DLQ with its reason. */
static void test_rejections(void **state)
{
    (void)state;
    const char *erin = h_id("erin"), *shop = h_id("shop5");
    h_open(mq, erin, "USD", "customer");
    h_open(mq, shop, "USD", "merchant");
    h_deposit(mq, h_id("dep-5"), erin, 900, "USD");
    char body[512];

    /* schema_invalid: amount as a string */
    const char *bad = "{\"deposit_id\":\"d\",\"account\":\"a\",\"amount\":\"10\",\"currency\":\"USD\"}";
    const char *m1 = h_id("msg-schema");
    h_publish(mq, "account.deposit", m1, bad);
    json_t *r = h_reply(mq, 20000);
    assert_string_equal(h_code(r), "schema_invalid");
    json_decref(r);
    expect_dead_letter(m1, "schema_invalid", bad);

    /* unknown_command */
    const char *m2 = h_id("msg-unknown");
    h_publish(mq, "payment.teleport", m2, "{}");
    r = h_reply(mq, 20000);
    assert_string_equal(h_code(r), "unknown_command");
    json_decref(r);
    expect_dead_letter(m2, "unknown_command", "{}");

    /* content type other than JSON */
    const char *m3 = h_id("msg-xml");
    h_publish_ex(mq, "account.open", m3, "application/xml", "<a/>", 4, false);
    expect_dead_letter(m3, "malformed_json", "<a/>");

    /* idempotency_conflict: same payment_id, other amount */
    const char *pid = h_id("pay-conflict");
    r = h_call(mq, "payment.create", h_id("msg-c1"),
               payment_body(body, sizeof body, pid, 100, erin, shop));
    assert_string_equal(h_status(r), "succeeded");
    json_decref(r);
    const char *m4 = h_id("msg-c2");
    r = h_call(mq, "payment.create", m4, payment_body(body, sizeof body, pid, 101, erin, shop));
    assert_string_equal(h_status(r), "rejected");
    assert_string_equal(h_code(r), "idempotency_conflict");
    json_decref(r);
    expect_dead_letter(m4, "idempotency_conflict", body);
    assert_int_equal(h_balance(erin), 800);

    /* raw_card_number: never stored, masked in the dead letter */
    const char *m5 = h_id("msg-card");
    snprintf(body, sizeof body,
             "{\"payment_id\":\"%s\",\"amount\":100,\"currency\":\"USD\","
             "\"source\":\"4242424242424242\",\"destination\":\"%s\",\"capture\":true}",
             h_id("pay-card"), shop);
    h_publish(mq, "payment.create", m5, body);
    r = h_reply(mq, 20000);
    assert_string_equal(h_code(r), "raw_card_number");
    char *text = json_dumps(r, 0);
    assert_null(strstr(text, "4242424242424242"));
    free(text);
    json_decref(r);
    struct mq_delivery *d = h_dlq_take(m5, 20000);
    assert_non_null(d);
    assert_string_equal(h_header(d, "x-payq-reason"), "raw_card_number");
    assert_string_equal(h_header(d, "x-payq-redacted"), "true");
    assert_null(memmem(d->message.body.bytes, d->message.body.len, "4242424242424242", 16));
    assert_non_null(memmem(d->message.body.bytes, d->message.body.len, "424242******4242", 16));
    mq_delivery_free(d);
    const char *p5[1] = { h_id("pay-card") };
    assert_int_equal(h_int("SELECT count(*) FROM payq.payments WHERE payment_id = $1", 1, p5), 0);
}

/* account.open again: same parameters is a no-op, others a conflict. */
static void test_account_open_idempotent(void **state)
{
    (void)state;
    const char *acc = h_id("frank");
    h_open(mq, acc, "JPY", "customer");
    h_open(mq, acc, "JPY", "customer");
    char body[256];
    snprintf(body, sizeof body, "{\"account\":\"%s\",\"currency\":\"USD\",\"kind\":\"customer\"}",
             acc);
    const char *mid = h_id("msg-reopen");
    json_t *r = h_call(mq, "account.open", mid, body);
    assert_string_equal(h_code(r), "idempotency_conflict");
    json_decref(r);
    expect_dead_letter(mid, "idempotency_conflict", body);
    const char *p[1] = { acc };
    assert_string_equal(h_text("SELECT currency FROM payq.accounts WHERE id = $1", 1, p), "JPY");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_happy_path),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_insufficient_funds),
        cmocka_unit_test(test_malformed_then_next),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_account_open_idempotent),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
