/*
 * test_reaper.c - every saga ends: the reaper resumes a payment left in
 * flight when its command was dead-lettered mid-saga, and expires wallet
 * authorizations past their deadline, releasing the funds.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include <cmocka.h>

#include "harness.h"

static mq_t *mq;

static const char *poll_text(const char *sql, const char *param, const char *want, int seconds)
{
    const char *p[1] = { param };
    const char *got = "";
    for (int i = 0; i < seconds * 10; i++) {
        got = h_text(sql, 1, p);
        if (strcmp(got, want) == 0)
            break;
        struct timespec ts = { 0, 100000000 };
        nanosleep(&ts, NULL);
    }
    return got;
}

static void test_resume_and_expire(void **state)
{
    (void)state;
    h_init();
    mq = h_mq();
    /* One attempt only: the timing-out authorization is dead-lettered at
     * once and leaves its payment in flight at authorize_started. */
    static const char *const env[] = { "PAYQ_MAX_ATTEMPTS=1", "PAYQ_REAPER_INTERVAL_S=1",
                                       "PAYQ_STUCK_AFTER_S=1", NULL };
    pid_t w = h_worker_start(env);
    const char *shop = h_id("reap-shop"), *cust = h_id("reap-cust");
    h_open(mq, shop, "USD", "merchant");
    h_open(mq, cust, "USD", "customer");
    h_deposit(mq, h_id("reap-dep"), cust, 1000, "USD");

    const char *pid = h_id("reap-pay"), *mid = h_id("reap-msg");
    char body[512];
    snprintf(body, sizeof body,
             "{\"payment_id\":\"%s\",\"amount\":300,\"currency\":\"USD\",\"source\":\"tok_timeout1\","
             "\"destination\":\"%s\",\"capture\":true}",
             pid, shop);
    h_publish_ex(mq, "payment.create", mid, "application/json", body, strlen(body), false);
    struct mq_delivery *d = h_dlq_take(mid, 20000);
    assert_non_null(d);
    assert_string_equal(h_header(d, "x-payq-reason"), "retries_exhausted");
    mq_delivery_free(d);

    /* The reaper finishes it: asks the provider again with the same key. */
    assert_string_equal(poll_text("SELECT status || '/' || recovery_point FROM payq.payments"
                                  " WHERE payment_id = $1", pid, "succeeded/finished", 20),
                        "succeeded/finished");
    assert_int_equal(h_balance(shop), 300);
    const char *p[1] = { pid };
    assert_string_equal(h_text("SELECT string_agg(op || ':' || (result->>'status'), ','"
                               " ORDER BY created_at) FROM payq_sim.operations"
                               " WHERE split_part(idempotency_key, ':', 1) = $1", 1, p),
                        "authorize:approved,capture:approved");

    /* An authorization past its deadline expires: funds released. */
    const char *auth = h_id("reap-auth");
    snprintf(body, sizeof body,
             "{\"payment_id\":\"%s\",\"amount\":400,\"currency\":\"USD\",\"source\":\"%s\","
             "\"destination\":\"%s\",\"capture\":false}",
             auth, cust, shop);
    json_t *r = h_call(mq, "payment.create", NULL, body);
    assert_string_equal(h_status(r), "authorized");
    json_decref(r);
    const char *a[1] = { auth };
    assert_int_equal(h_int("SELECT pending FROM payq.accounts a JOIN payq.holds h"
                           " ON h.account_id = a.id WHERE h.payment_id = $1", 1, a),
                     400);
    assert_string_equal(h_exec("UPDATE payq.holds SET expires_at = now() - interval '1 second'"
                               " WHERE payment_id = $1", 1, a),
                        "");
    assert_string_equal(poll_text("SELECT status FROM payq.payments WHERE payment_id = $1", auth,
                                  "canceled", 20),
                        "canceled");
    assert_string_equal(h_text("SELECT status FROM payq.holds WHERE payment_id = $1", 1, a),
                        "expired");
    const char *c[1] = { cust };
    assert_int_equal(h_int("SELECT pending FROM payq.accounts WHERE id = $1", 1, c), 0);
    assert_int_equal(h_balance(cust), 1000);
    assert_string_equal(h_text("SELECT string_agg(type, ',' ORDER BY version)"
                               " FROM payq.payment_events WHERE payment_id = $1", 1, a),
                        "payment.authorized,payment.canceled");

    int st = h_worker_stop(w, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    h_check_invariants();
    mq_close(mq);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resume_and_expire),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
