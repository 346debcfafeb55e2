/*
 * test_saga.c - every command of the contract, its happy path and its
 * failure codes, with the money, holds, provider operations and history
 * each one must leave behind; then the invariant checker over all of it.
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
    /* Retry delays as short as the smallest tier, for the timeout token. */
    static const char *const env[] = { "PAYQ_RETRY_BASE_MS=1", NULL };
    worker = h_worker_start(env);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    int st = h_worker_stop(worker, SIGTERM);
    mq_close(mq);
    return (WIFEXITED(st) && WEXITSTATUS(st) == 0) ? 0 : -1;
}

/* Sends a command built from a printf format and returns the reply. */
static json_t *cmdf(const char *rk, const char *fmt, ...) PAYQ_PRINTF(2, 3);

static json_t *cmdf(const char *rk, const char *fmt, ...)
{
    char body[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    return h_call(mq, rk, NULL, body);
}

static void expect(json_t *r, const char *status, const char *code)
{
    if (strcmp(h_status(r), status) != 0 || strcmp(h_code(r), code) != 0) {
        char *s = json_dumps(r, 0);
        fail_msg("expected %s %s, got %s", status, code, s);
    }
}

static json_t *pay(const char *pid, long long amount, const char *cur, const char *src,
                   const char *dst, bool capture)
{
    return cmdf("payment.create",
                "{\"payment_id\":\"%s\",\"amount\":%lld,\"currency\":\"%s\",\"source\":\"%s\","
                "\"destination\":\"%s\",\"capture\":%s}",
                pid, amount, cur, src, dst, capture ? "true" : "false");
}

static int64_t pending(const char *account)
{
    const char *p[1] = { account };
    return h_int("SELECT pending FROM payq.accounts WHERE id = $1", 1, p);
}

static const char *pay_status(const char *pid)
{
    const char *p[1] = { pid };
    return h_text("SELECT status FROM payq.payments WHERE payment_id = $1", 1, p);
}

static const char *events(const char *pid)
{
    const char *p[1] = { pid };
    return h_text("SELECT string_agg(type, ',' ORDER BY version) FROM payq.payment_events"
                  " WHERE payment_id = $1",
                  1, p);
}

/* Provider operations performed for a payment, "op:status,..." in order. */
static const char *provider_ops(const char *pid)
{
    const char *p[1] = { pid };
    return h_text("SELECT COALESCE(string_agg(op || ':' || (result->>'status'), ','"
                  "                           ORDER BY created_at), '')"
                  "  FROM payq_sim.operations"
                  " WHERE split_part(idempotency_key, ':', 1) = $1"
                  "    OR idempotency_key IN (SELECT refund_id || ':refund' FROM payq.refunds"
                  "                            WHERE payment_id = $1)",
                  1, p);
}

static int64_t capture_postings(const char *pid)
{
    const char *p[1] = { pid };
    return h_int("SELECT count(*) FROM payq.postings WHERE kind = 'capture' AND ref = $1", 1, p);
}

/* Authorize a wallet payment, capture part of it (the rest is released),
 * refund it in two parts up to exactly the captured amount, and one minor
 * unit more is refused. */
static void test_wallet_authorize_capture_refund(void **state)
{
    (void)state;
    const char *c = h_id("w-cust"), *m = h_id("w-shop"), *pid = h_id("w-pay");
    h_open(mq, c, "USD", "customer");
    h_open(mq, m, "USD", "merchant");
    h_deposit(mq, h_id("w-dep"), c, 10000, "USD");

    json_t *r = pay(pid, 5000, "USD", c, m, false);
    expect(r, "authorized", "");
    json_decref(r);
    assert_int_equal(h_balance(c), 10000);
    assert_int_equal(pending(c), 5000);
    assert_int_equal(capture_postings(pid), 0);

    r = cmdf("payment.capture", "{\"payment_id\":\"%s\",\"amount\":3000}", pid);
    expect(r, "succeeded", "");
    assert_int_equal(json_integer_value(json_object_get(r, "amount")), 3000);
    json_decref(r);
    assert_int_equal(h_balance(c), 7000);
    assert_int_equal(pending(c), 0);
    assert_int_equal(h_balance(m), 3000);
    /* The same capture again: the same answer; another amount: a conflict. */
    r = cmdf("payment.capture", "{\"payment_id\":\"%s\",\"amount\":3000}", pid);
    expect(r, "succeeded", "");
    json_decref(r);
    r = cmdf("payment.capture", "{\"payment_id\":\"%s\",\"amount\":2000}", pid);
    expect(r, "rejected", "idempotency_conflict");
    json_decref(r);
    assert_int_equal(h_balance(c), 7000);
    /* A captured payment cannot be canceled. */
    r = cmdf("payment.cancel", "{\"payment_id\":\"%s\"}", pid);
    expect(r, "failed", "invalid_state");
    json_decref(r);

    r = cmdf("payment.refund", "{\"refund_id\":\"%s\",\"payment_id\":\"%s\",\"amount\":1000}",
             h_id("w-ref1"), pid);
    expect(r, "succeeded", "");
    json_decref(r);
    assert_string_equal(pay_status(pid), "succeeded");
    r = cmdf("payment.refund", "{\"refund_id\":\"%s\",\"payment_id\":\"%s\",\"reason\":\"rest\"}",
             h_id("w-ref2"), pid);
    expect(r, "succeeded", "");
    assert_int_equal(json_integer_value(json_object_get(r, "amount")), 2000);
    json_decref(r);
    assert_string_equal(pay_status(pid), "refunded");
    r = cmdf("payment.refund", "{\"refund_id\":\"%s\",\"payment_id\":\"%s\",\"amount\":1}",
             h_id("w-ref3"), pid);
    expect(r, "failed", "amount_exceeds_captured");
    json_decref(r);
    assert_int_equal(h_balance(c), 10000);
    assert_int_equal(h_balance(m), 0);
    assert_string_equal(events(pid), "payment.authorized,payment.captured,"
                                     "refund.succeeded,refund.succeeded,refund.failed");
}

/* An authorization canceled: the hold is released, nothing moves. */
static void test_wallet_cancel(void **state)
{
    (void)state;
    const char *c = h_id("x-cust"), *m = h_id("x-shop"), *pid = h_id("x-pay");
    h_open(mq, c, "EUR", "customer");
    h_open(mq, m, "EUR", "merchant");
    h_deposit(mq, h_id("x-dep"), c, 2500, "EUR");
    json_t *r = pay(pid, 2000, "EUR", c, m, false);
    expect(r, "authorized", "");
    json_decref(r);
    /* The hold counts: 500 available, so 600 more is refused. */
    r = pay(h_id("x-pay2"), 600, "EUR", c, m, true);
    expect(r, "failed", "insufficient_funds");
    json_decref(r);
    r = cmdf("payment.cancel", "{\"payment_id\":\"%s\"}", pid);
    expect(r, "succeeded", "");
    json_decref(r);
    assert_string_equal(pay_status(pid), "canceled");
    assert_int_equal(pending(c), 0);
    assert_int_equal(h_balance(c), 2500);
    const char *p[1] = { pid };
    assert_string_equal(h_text("SELECT status FROM payq.holds WHERE payment_id = $1", 1, p),
                        "released");
    r = cmdf("payment.capture", "{\"payment_id\":\"%s\"}", pid);
    expect(r, "failed", "invalid_state");
    json_decref(r);
    assert_string_equal(events(pid), "payment.authorized,payment.canceled");
}

/* Card payments through the simulated provider: one charge each, and the
 * compensations (void) when payq or the issuer refuses after authorizing. */
static void test_cards(void **state)
{
    (void)state;
    const char *m = h_id("k-shop");
    h_open(mq, m, "USD", "merchant");
    const char *p[1] = { m };
    assert_string_equal(h_exec("INSERT INTO payq.fee_rules (merchant, currency, bps, fixed)"
                               " VALUES ($1, 'USD', 100, 0)", 1, p), "");

    const char *ok = h_id("k-visa");
    json_t *r = pay(ok, 10000, "USD", "tok_visa", m, true);
    expect(r, "succeeded", "");
    assert_int_equal(json_integer_value(json_object_get(r, "fee")), 100);
    json_decref(r);
    assert_int_equal(h_balance(m), 9900);
    assert_string_equal(provider_ops(ok), "authorize:approved,capture:approved");
    assert_int_equal(capture_postings(ok), 1);

    const char *declined = h_id("k-declined");
    r = pay(declined, 500, "USD", "tok_chargeDeclined", m, true);
    expect(r, "failed", "card_declined");
    json_decref(r);
    assert_string_equal(provider_ops(declined), "authorize:declined");
    assert_int_equal(capture_postings(declined), 0);

    const char *risky = h_id("k-risky");
    r = pay(risky, 500, "USD", "tok_riskHighest", m, true);
    expect(r, "failed", "fraud_suspected");
    json_decref(r);
    assert_string_equal(provider_ops(risky), "authorize:approved,void:approved");
    assert_int_equal(capture_postings(risky), 0);

    const char *nocap = h_id("k-nocapture");
    r = pay(nocap, 500, "USD", "tok_captureDeclined", m, true);
    expect(r, "failed", "card_declined");
    json_decref(r);
    assert_string_equal(provider_ops(nocap), "authorize:approved,capture:declined,void:approved");
    assert_int_equal(capture_postings(nocap), 0);
    assert_string_equal(events(nocap), "payment.created,payment.failed");
    assert_int_equal(h_balance(m), 9900);

    /* Authorize, capture part, refund part, cancel refused. */
    const char *auth = h_id("k-auth");
    r = pay(auth, 4000, "USD", "tok_mastercard", m, false);
    expect(r, "authorized", "");
    json_decref(r);
    r = cmdf("payment.capture", "{\"payment_id\":\"%s\",\"amount\":2500}", auth);
    expect(r, "succeeded", "");
    json_decref(r);
    r = cmdf("payment.refund", "{\"refund_id\":\"%s\",\"payment_id\":\"%s\",\"amount\":500}",
             h_id("k-ref"), auth);
    expect(r, "succeeded", "");
    json_decref(r);
    assert_string_equal(provider_ops(auth),
                        "authorize:approved,capture:approved,refund:approved");
    assert_int_equal(h_balance(m), 9900 + 2500 - 25 - 500);
    const char *a[1] = { auth };
    assert_int_equal(h_int("SELECT refunded_amount FROM payq.payments WHERE payment_id = $1", 1,
                           a),
                     500);

    /* Cancel an authorized card payment: the provider voids it. */
    const char *cancel = h_id("k-cancel");
    r = pay(cancel, 700, "USD", "tok_amex", m, false);
    expect(r, "authorized", "");
    json_decref(r);
    r = cmdf("payment.cancel", "{\"payment_id\":\"%s\"}", cancel);
    expect(r, "succeeded", "");
    json_decref(r);
    assert_string_equal(provider_ops(cancel), "authorize:approved,void:approved");
    assert_string_equal(pay_status(cancel), "canceled");
}

/* A provider that times out three times: retried through the delay tiers,
 * then succeeds, charging once. */
static void test_timeout_then_success(void **state)
{
    (void)state;
    const char *m = h_id("t-shop"), *pid = h_id("t-pay");
    h_open(mq, m, "USD", "merchant");
    json_t *r = pay(pid, 1500, "USD", "tok_timeout3", m, true);
    expect(r, "succeeded", "");
    json_decref(r);
    const char *p[1] = { pid };
    assert_int_equal(h_int("SELECT calls FROM payq_sim.operations"
                           " WHERE idempotency_key = $1 || ':authorize'", 1, p),
                     4);
    assert_string_equal(provider_ops(pid), "authorize:approved,capture:approved");
    assert_int_equal(h_balance(m), 1500);
}

/* Fraud rules from the database: blocklist, amount limit, velocity. A hit
 * fails the payment and moves nothing. */
static void test_fraud_rules(void **state)
{
    (void)state;
    assert_string_equal(h_exec("INSERT INTO payq.fraud_rules (currency, max_amount,"
                               " velocity_window, velocity_max_count)"
                               " VALUES ('CHF', 100000, '1 minute', 3)"
                               " ON CONFLICT (currency) DO UPDATE SET max_amount = 100000,"
                               " velocity_window = '1 minute', velocity_max_count = 3",
                               0, NULL),
                        "");
    const char *c = h_id("f-cust"), *bad = h_id("f-bad"), *m = h_id("f-shop");
    h_open(mq, c, "CHF", "customer");
    h_open(mq, bad, "CHF", "customer");
    h_open(mq, m, "CHF", "merchant");
    h_deposit(mq, h_id("f-dep1"), c, 500000, "CHF");
    h_deposit(mq, h_id("f-dep2"), bad, 500000, "CHF");
    const char *b[1] = { bad };
    assert_string_equal(h_exec("INSERT INTO payq.fraud_blocklist (source, reason)"
                               " VALUES ($1, 'chargebacks')", 1, b), "");

    json_t *r = pay(h_id("f-blocked"), 100, "CHF", bad, m, true);
    expect(r, "failed", "fraud_suspected");
    json_decref(r);
    r = pay(h_id("f-big"), 100001, "CHF", c, m, true);
    expect(r, "failed", "fraud_suspected");
    json_decref(r);
    /* The over-limit attempt counts for velocity too: two more pass, the
     * fourth payment within the minute is refused. */
    for (int i = 0; i < 2; i++) {
        char id[32];
        snprintf(id, sizeof id, "f-ok%d", i);
        r = pay(h_id(id), 100, "CHF", c, m, true);
        expect(r, "succeeded", "");
        json_decref(r);
    }
    r = pay(h_id("f-fast"), 100, "CHF", c, m, true);
    expect(r, "failed", "fraud_suspected");
    json_decref(r);
    assert_int_equal(h_balance(c), 500000 - 200);
    assert_int_equal(h_balance(bad), 500000);
    assert_int_equal(pending(c), 0);
    assert_int_equal(h_balance(m), 200);
}

/* Business failures that name what is missing or wrong. */
static void test_not_found_and_mismatch(void **state)
{
    (void)state;
    const char *c = h_id("n-cust"), *m = h_id("n-shop");
    h_open(mq, c, "GBP", "customer");
    h_open(mq, m, "GBP", "merchant");
    h_deposit(mq, h_id("n-dep"), c, 1000, "GBP");
    json_t *r = cmdf("payment.capture", "{\"payment_id\":\"%s\"}", h_id("nope"));
    expect(r, "failed", "payment_not_found");
    json_decref(r);
    r = cmdf("payment.cancel", "{\"payment_id\":\"%s\"}", h_id("nope"));
    expect(r, "failed", "payment_not_found");
    json_decref(r);
    r = cmdf("payment.refund", "{\"refund_id\":\"%s\",\"payment_id\":\"%s\"}", h_id("n-ref"),
             h_id("nope"));
    expect(r, "failed", "payment_not_found");
    json_decref(r);
    r = pay(h_id("n-p1"), 100, "GBP", h_id("ghost"), m, true);
    expect(r, "failed", "account_not_found");
    json_decref(r);
    r = pay(h_id("n-p2"), 100, "GBP", c, h_id("ghost-shop"), true);
    expect(r, "failed", "account_not_found");
    json_decref(r);
    r = pay(h_id("n-p3"), 100, "USD", c, m, true);
    expect(r, "failed", "currency_mismatch");
    json_decref(r);
    r = cmdf("account.deposit",
             "{\"deposit_id\":\"%s\",\"account\":\"%s\",\"amount\":5,\"currency\":\"EUR\"}",
             h_id("n-dep2"), c);
    expect(r, "failed", "currency_mismatch");
    json_decref(r);
    /* A refund of an authorization that was never captured. */
    const char *auth = h_id("n-auth");
    r = pay(auth, 100, "GBP", c, m, false);
    expect(r, "authorized", "");
    json_decref(r);
    r = cmdf("payment.refund", "{\"refund_id\":\"%s\",\"payment_id\":\"%s\"}", h_id("n-ref2"),
             auth);
    expect(r, "failed", "invalid_state");
    json_decref(r);
    assert_int_equal(h_balance(c), 1000);
}

/* The checker is not blind (inside a transaction that is rolled back): an
 * event of the history kept before sql/016 without its outbox row, and an
 * event whose state the payment row does not have. */
static void test_checker_catches_violations(void **state)
{
    (void)state;
    assert_string_equal(h_exec("BEGIN", 0, NULL), "");
    assert_string_equal(h_exec("INSERT INTO payq.payment_events_archive (payment_id, version,"
                               " event_id, type, data)"
                               " SELECT payment_id, version + 1, gen_random_uuid(),"
                               " 'payment.canceled', '{}' FROM payq.payments"
                               "  WHERE recovery_point = 'finished' AND status = 'succeeded'"
                               "  ORDER BY payment_id LIMIT 1",
                               0, NULL),
                        "");
    int64_t unpaired = h_int("SELECT count(*) FROM payq.check_invariants()"
                             " WHERE invariant = 'event in outbox'", 0, NULL);
    int64_t rebuilt = h_int("SELECT count(*) FROM payq.check_invariants()"
                            " WHERE invariant = 'events rebuild state'", 0, NULL);
    assert_string_equal(h_exec("ROLLBACK", 0, NULL), "");
    assert_int_equal(unpaired, 1);
    assert_int_equal(rebuilt, 1);

    assert_string_equal(h_exec("BEGIN", 0, NULL), "");
    assert_string_equal(h_exec("INSERT INTO payq.outbox (event_id, routing_key, body,"
                               " payment_id, version)"
                               " SELECT gen_random_uuid(), 'payment.canceled', '{}', payment_id,"
                               " version + 1 FROM payq.payments"
                               "  WHERE recovery_point = 'finished' AND status = 'succeeded'"
                               "  ORDER BY payment_id LIMIT 1",
                               0, NULL),
                        "");
    unpaired = h_int("SELECT count(*) FROM payq.check_invariants()"
                     " WHERE invariant = 'event in outbox'", 0, NULL);
    rebuilt = h_int("SELECT count(*) FROM payq.check_invariants()"
                    " WHERE invariant = 'events rebuild state'", 0, NULL);
    assert_string_equal(h_exec("ROLLBACK", 0, NULL), "");
    assert_int_equal(unpaired, 0);
    assert_int_equal(rebuilt, 1);
}

/* After everything above, every invariant holds. */
static void test_checker_passes(void **state)
{
    (void)state;
    h_check_invariants();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wallet_authorize_capture_refund),
        cmocka_unit_test(test_wallet_cancel),
        cmocka_unit_test(test_cards),
        cmocka_unit_test(test_timeout_then_success),
        cmocka_unit_test(test_fraud_rules),
        cmocka_unit_test(test_not_found_and_mismatch),
        cmocka_unit_test(test_checker_catches_violations),
        cmocka_unit_test(test_checker_passes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
