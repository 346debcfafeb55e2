/*
 * test_storm.c - concurrency: four worker threads racing on duplicates of
 * every command, and on one hot wallet.
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
    static const char *const env[] = { "PAYQ_THREADS=4", "PAYQ_PREFETCH=8", NULL };
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

struct sent {
    char id[128];   /* business id the replies carry */
    char *first;    /* first reply, canonical JSON */
    int replies;
};

/* Collects n replies and checks that all replies about one id are equal. */
static void collect(struct sent *s, size_t ns, int n)
{
    for (int i = 0; i < n; i++) {
        json_t *r = h_reply(mq, 30000);
        if (!r)
            fail_msg("only %d of %d replies arrived", i, n);
        const char *id = json_string_value(json_object_get(r, "id"));
        char *text = json_dumps(r, JSON_SORT_KEYS | JSON_COMPACT);
        size_t k = 0;
        while (k < ns && (!id || strcmp(s[k].id, id) != 0))
            k++;
        if (k == ns)
            fail_msg("a reply about nothing we sent: %s", text);
        if (!s[k].first) {
            s[k].first = text;
        } else {
            if (strcmp(s[k].first, text) != 0)
                fail_msg("duplicates got different replies:\n%s\n%s", s[k].first, text);
            free(text);
        }
        s[k].replies++;
        json_decref(r);
    }
    for (size_t k = 0; k < ns; k++) {
        assert_int_equal(s[k].replies, 3);
        free(s[k].first);
        s[k].first = NULL;
        s[k].replies = 0;
    }
}

/* Publishes body three times: twice with one message_id, once with another. */
static void thrice(const char *rk, const char *body, const char *tag)
{
    char m1[64], m2[64];
    snprintf(m1, sizeof m1, "%s-a", tag);
    snprintf(m2, sizeof m2, "%s-b", tag);
    const char *id1 = h_id(m1), *id2 = h_id(m2);
    h_publish(mq, rk, id1, body);
    h_publish(mq, rk, id1, body);
    h_publish(mq, rk, id2, body);
}

#define N 12

/* Every command three times at once, on four threads: each effect once. */
static void test_duplicate_storm(void **state)
{
    (void)state;
    const char *shop = h_id("s-shop");
    h_open(mq, shop, "USD", "merchant");
    const char *cust[N];
    for (int i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "s-cust%d", i);
        cust[i] = h_id(name);
        h_open(mq, cust[i], "USD", "customer");
    }

    /* Deposits, three times each. */
    struct sent s[N];
    memset(s, 0, sizeof s);
    char body[4096], tag[64];
    for (int i = 0; i < N; i++) {
        snprintf(tag, sizeof tag, "s-dep%d", i);
        snprintf(s[i].id, sizeof s[i].id, "%s", h_id(tag));
        snprintf(body, sizeof body,
                 "{\"deposit_id\":\"%s\",\"account\":\"%s\",\"amount\":10000,\"currency\":\"USD\"}",
                 s[i].id, cust[i]);
        thrice("account.deposit", body, tag);
    }
    collect(s, N, 3 * N);

    /* Payments: even customers pay captured, odd ones authorize only; every
     * third is a card payment instead. */
    for (int i = 0; i < N; i++) {
        snprintf(tag, sizeof tag, "s-pay%d", i);
        snprintf(s[i].id, sizeof s[i].id, "%s", h_id(tag));
        snprintf(body, sizeof body,
                 "{\"payment_id\":\"%s\",\"amount\":%d,\"currency\":\"USD\",\"source\":\"%s\","
                 "\"destination\":\"%s\",\"capture\":%s}",
                 s[i].id, 1000 + i, i % 3 == 2 ? "tok_visa" : cust[i], shop,
                 i % 2 ? "false" : "true");
        thrice("payment.create", body, tag);
    }
    collect(s, N, 3 * N);

    /* Then capture the authorizations and refund the captures, in part. */
    for (int i = 0; i < N; i++) {
        char payid[sizeof s[i].id];
        memcpy(payid, s[i].id, sizeof payid);
        if (i % 2) {
            snprintf(body, sizeof body, "{\"payment_id\":\"%s\",\"amount\":500}", payid);
            snprintf(tag, sizeof tag, "s-cap%d", i);
            thrice("payment.capture", body, tag);
        } else {
            snprintf(tag, sizeof tag, "s-ref%d", i);
            snprintf(s[i].id, sizeof s[i].id, "%s", h_id(tag));
            snprintf(body, sizeof body,
                     "{\"refund_id\":\"%s\",\"payment_id\":\"%s\",\"amount\":300}", s[i].id,
                     payid);
            thrice("payment.refund", body, tag);
        }
    }
    collect(s, N, 3 * N);

    /* Each effect exactly once. */
    int64_t shop_expected = 0;
    for (int i = 0; i < N; i++) {
        int64_t paid = i % 2 ? 500 : 1000 + i - 300;
        shop_expected += paid;
        if (i % 3 != 2)
            assert_int_equal(h_balance(cust[i]), 10000 - paid);
        else
            assert_int_equal(h_balance(cust[i]), 10000);
        assert_int_equal(h_int("SELECT pending FROM payq.accounts WHERE id = $1", 1, &cust[i]),
                         0);
    }
    assert_int_equal(h_balance(shop), shop_expected);
    const char *p[1] = { shop };
    assert_int_equal(h_int("SELECT count(*) FROM payq.postings po WHERE po.kind = 'capture'"
                           " AND po.ref IN (SELECT payment_id FROM payq.payments"
                           "                 WHERE destination = $1)", 1, p),
                     N);
    assert_int_equal(h_int("SELECT count(*) FROM payq_sim.operations o"
                           " JOIN payq.payments pm ON split_part(o.idempotency_key, ':', 1)"
                           "                          = pm.payment_id"
                           " WHERE pm.destination = $1 AND o.op = 'capture'", 1, p),
                     N / 3);
}

/* Fifty payments of 300 from one wallet holding 10000, all at once, on four
 * threads: exactly 33 succeed, 17 fail with insufficient_funds, and the
 * wallet never goes below zero. */
static void test_hot_wallet(void **state)
{
    (void)state;
    const char *c = h_id("hot-cust"), *m = h_id("hot-shop");
    h_open(mq, c, "USD", "customer");
    h_open(mq, m, "USD", "merchant");
    h_deposit(mq, h_id("hot-dep"), c, 10000, "USD");
    char body[512];
    for (int i = 0; i < 50; i++) {
        char name[32];
        snprintf(name, sizeof name, "hot-%d", i);
        snprintf(body, sizeof body,
                 "{\"payment_id\":\"%s\",\"amount\":300,\"currency\":\"USD\",\"source\":\"%s\","
                 "\"destination\":\"%s\",\"capture\":true}",
                 h_id(name), c, m);
        h_publish(mq, "payment.create", NULL, body);
    }
    int ok = 0, poor = 0;
    for (int i = 0; i < 50; i++) {
        json_t *r = h_reply(mq, 30000);
        assert_non_null(r);
        if (strcmp(h_status(r), "succeeded") == 0)
            ok++;
        else if (strcmp(h_code(r), "insufficient_funds") == 0)
            poor++;
        json_decref(r);
    }
    assert_int_equal(ok, 33);
    assert_int_equal(poor, 17);
    assert_int_equal(h_balance(c), 100);
    assert_int_equal(h_balance(m), 9900);
}

static void test_checker_passes(void **state)
{
    (void)state;
    h_check_invariants();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duplicate_storm),
        cmocka_unit_test(test_hot_wallet),
        cmocka_unit_test(test_checker_passes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
