/*
 * test_crash.c - a worker killed with SIGKILL between COMMIT and ack.
 *
 * The first worker is started with the fault point after_commit: it applies
 * the command, commits, and dies before it can reply or ack. The broker
 * redelivers to a second worker, which finds the idempotency keys already
 * claimed and answers with the stored reply: one effect, one posting, and
 * the publisher still gets its reply.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "harness.h"

static void test_kill_between_commit_and_ack(void **state)
{
    (void)state;
    mq_t *mq = h_mq();

    /* Accounts first, with a normal worker. */
    pid_t w = h_worker_start(NULL);
    const char *gina = h_id("gina"), *shop = h_id("shop");
    h_open(mq, gina, "USD", "customer");
    h_open(mq, shop, "USD", "merchant");
    h_deposit(mq, h_id("dep"), gina, 5000, "USD");
    int st = h_worker_stop(w, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);

    /* A worker that dies right after its first COMMIT. */
    const char *env[] = { "PAYQ_FAULT=after_commit", NULL };
    w = h_worker_start(env);
    char body[512];
    const char *pid = h_id("pay");
    snprintf(body, sizeof body,
             "{\"payment_id\":\"%s\",\"amount\":1500,\"currency\":\"USD\",\"source\":\"%s\","
             "\"destination\":\"%s\",\"capture\":true}",
             pid, gina, shop);
    h_publish(mq, "payment.create", h_id("msg-pay"), body);
    st = h_worker_wait(w, 20000);
    assert_true(st != -1);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGKILL);

    /* The effect is committed, but no reply went out. */
    assert_int_equal(h_balance(gina), 3500);
    assert_null(h_reply(mq, 500));

    /* The redelivery goes to a healthy worker: same outcome, no new effect. */
    w = h_worker_start(NULL);
    json_t *r = h_reply(mq, 20000);
    assert_non_null(r);
    assert_string_equal(h_status(r), "succeeded");
    assert_string_equal(json_string_value(json_object_get(r, "id")), pid);
    json_decref(r);
    assert_int_equal(h_balance(gina), 3500);
    assert_int_equal(h_balance(shop), 1500);
    const char *p[1] = { pid };
    assert_int_equal(h_int("SELECT count(*) FROM payq.postings WHERE ref = $1", 1, p), 1);
    assert_int_equal(h_int("SELECT count(*) FROM payq.payment_events WHERE payment_id = $1"
                           " AND type = 'payment.succeeded'", 1, p),
                     1);
    st = h_worker_stop(w, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    mq_close(mq);
}

/*
 * A card payment with capture crosses eight boundaries: three phase
 * commits, two provider calls (before and after each) and the ack. A worker
 * killed at each of them in turn, then replaced by a healthy one, still ends
 * with one authorization, one capture, one posting and the right state.
 */
static void test_kill_at_every_card_step(void **state)
{
    (void)state;
    static const char *const points[] = {
        "after_commit:1",        "before_provider_call:1", "after_provider_call:1",
        "after_commit:2",        "before_provider_call:2", "after_provider_call:2",
        "after_commit:3",        "before_ack:1",
    };
    mq_t *mq = h_mq();
    pid_t w = h_worker_start(NULL);
    const char *shop = h_id("card-shop");
    h_open(mq, shop, "USD", "merchant");
    int st = h_worker_stop(w, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);

    for (size_t i = 0; i < sizeof points / sizeof points[0]; i++) {
        char envvar[64], name[32], msg[32], body[512];
        snprintf(envvar, sizeof envvar, "PAYQ_FAULT=%s", points[i]);
        const char *env[] = { envvar, NULL };
        w = h_worker_start(env);
        snprintf(name, sizeof name, "card-%zu", i);
        const char *pid = h_id(name);
        snprintf(body, sizeof body,
                 "{\"payment_id\":\"%s\",\"amount\":1000,\"currency\":\"USD\","
                 "\"source\":\"tok_visa\",\"destination\":\"%s\",\"capture\":true}",
                 pid, shop);
        snprintf(msg, sizeof msg, "card-msg-%zu", i);
        h_publish(mq, "payment.create", h_id(msg), body);
        st = h_worker_wait(w, 20000);
        if (st == -1 || !WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL)
            fail_msg("the worker did not die at %s (status %d)", points[i], st);

        w = h_worker_start(NULL);
        json_t *r = h_reply(mq, 20000);
        if (!r)
            fail_msg("no reply after a crash at %s", points[i]);
        assert_string_equal(h_status(r), "succeeded");
        json_decref(r);
        st = h_worker_stop(w, SIGTERM);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);

        const char *p[1] = { pid };
        assert_string_equal(h_text("SELECT status || '/' || recovery_point FROM payq.payments"
                                   " WHERE payment_id = $1", 1, p),
                            "succeeded/finished");
        /* One authorization and one capture were performed at the provider,
         * however often they were asked for. */
        assert_string_equal(h_text("SELECT string_agg(op || ':' || (result->>'status'), ','"
                                   " ORDER BY created_at) FROM payq_sim.operations"
                                   " WHERE split_part(idempotency_key, ':', 1) = $1",
                                   1, p),
                            "authorize:approved,capture:approved");
        assert_int_equal(h_int("SELECT count(*) FROM payq.postings WHERE ref = $1", 1, p), 1);
        assert_int_equal(h_int("SELECT count(*) FROM payq.payment_events WHERE payment_id = $1"
                               " AND type = 'payment.succeeded'", 1, p),
                         1);
        assert_int_equal(h_balance(shop), 1000 * (int64_t)(i + 1));
    }
    mq_close(mq);
}

int main(void)
{
    h_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_between_commit_and_ack),
        cmocka_unit_test(test_kill_at_every_card_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
