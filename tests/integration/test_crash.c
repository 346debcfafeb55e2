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
#include <time.h>

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

/*
 * SIGTERM while payments stream in: the worker finishes the batches in
 * hand, acks them, publishes their events, and exits 0 in bounded time;
 * what it had not taken stays in the queue for the next worker. Every
 * payment ends applied once with one reply, and no event is left behind.
 */
static void test_sigterm_drains(void **state)
{
    (void)state;
    enum { PAYMENTS = 300 };
    mq_t *mq = h_mq();
    pid_t w = h_worker_start(NULL);
    const char *wallet = h_id("drain-wallet"), *shop = h_id("drain-shop");
    h_open(mq, wallet, "USD", "customer");
    h_open(mq, shop, "USD", "merchant");
    h_deposit(mq, h_id("drain-dep"), wallet, 1000000, "USD");

    char body[512], name[32];
    for (int i = 0; i < PAYMENTS; i++) {
        snprintf(name, sizeof name, "drain-p%d", i);
        snprintf(body, sizeof body,
                 "{\"payment_id\":\"%s\",\"amount\":%d,\"currency\":\"USD\","
                 "\"source\":\"%s\",\"destination\":\"%s\",\"capture\":true}",
                 h_id(name), 100 + i, wallet, shop);
        snprintf(name, sizeof name, "drain-m%d", i);
        h_publish(mq, "payment.create", h_id(name), body);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int st = h_worker_stop(w, SIGTERM);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_true(took < 15.0);

    char like[160];
    snprintf(like, sizeof like, "%s%%", h_id("drain-p"));
    const char *p[1] = { like };
    int64_t applied = h_int("SELECT count(*) FROM payq.payments WHERE payment_id LIKE $1", 1, p);
    /* Every event of what was applied went out before the exit. */
    assert_int_equal(h_int("SELECT count(*) FROM payq.outbox_unpublished()"
                           " WHERE body->>'id' LIKE $1",
                           1, p),
                     0);
    printf("SIGTERM drained in %.2f s: %lld of %d payments applied, their events published\n",
           took, (long long)applied, PAYMENTS);

    /* The next worker takes the rest: each payment once, one reply each. */
    w = h_worker_start(NULL);
    int replies = 0;
    json_t *r;
    while (replies < PAYMENTS && (r = h_reply(mq, 20000)) != NULL) {
        const char *id = json_string_value(json_object_get(r, "id"));
        if (id && strncmp(id, like, strlen(like) - 1) == 0) {
            assert_string_equal(h_status(r), "succeeded");
            replies++;
        }
        json_decref(r);
    }
    assert_int_equal(replies, PAYMENTS);
    assert_null(h_reply(mq, 1000)); /* and not one more */
    assert_int_equal(h_int("SELECT count(*) FROM payq.payments WHERE payment_id LIKE $1", 1, p),
                     PAYMENTS);
    int64_t spent = 0;
    for (int i = 0; i < PAYMENTS; i++)
        spent += 100 + i;
    assert_int_equal(h_balance(wallet), 1000000 - spent);
    assert_int_equal(h_balance(shop), spent);
    st = h_worker_stop(w, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    mq_close(mq);
}

int main(void)
{
    h_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_between_commit_and_ack),
        cmocka_unit_test(test_sigterm_drains),
        cmocka_unit_test(test_kill_at_every_card_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
