/*
 * test_schema.c - the database enforces the invariants itself: migrations
 * are idempotent and tamper-evident, postings balance, wallets never go
 * below zero, balances move only through the ledger, and the ledger and the
 * event store are append-only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "harness.h"
#include "money.h"

static int run(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_migrate_idempotent_and_tamper_evident(void **state)
{
    (void)state;
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s/payq-worker migrate --sql-dir %s/sql 2>/dev/null",
             PAYQ_BINARY_DIR, PAYQ_SOURCE_DIR);
    assert_int_equal(run(cmd), 0);
    assert_int_equal(run(cmd), 0);
    snprintf(cmd, sizeof cmd, "ls %s/sql/[0-9][0-9][0-9]_*.sql | wc -l", PAYQ_SOURCE_DIR);
    FILE *p = popen(cmd, "r");
    int files = 0;
    assert_int_equal(fscanf(p, "%d", &files), 1);
    pclose(p);
    assert_true(files >= 2);
    assert_int_equal(h_int("SELECT count(*) FROM payq.schema_migrations", 0, NULL), files);

    /* An applied migration that was edited afterwards is refused. */
    char dir[] = "/tmp/payq-sql-XXXXXX";
    assert_non_null(mkdtemp(dir));
    snprintf(cmd, sizeof cmd,
             "cp %s/sql/*.sql %s/ && echo '-- edited' >> %s/001_ledger.sql && "
             "%s/payq-worker migrate --sql-dir %s 2>/dev/null",
             PAYQ_SOURCE_DIR, dir, dir, PAYQ_BINARY_DIR, dir);
    assert_int_equal(run(cmd), 1);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(run(cmd), 0);
}

/* Two accounts made directly in SQL, with money in the customer's. */
static void make_accounts(const char *cust, const char *merch)
{
    const char *p[2] = { cust, merch };
    assert_string_equal(h_exec("SELECT payq.ensure_system_accounts('USD')", 0, NULL), "");
    assert_string_equal(h_exec("INSERT INTO payq.accounts (id, currency, kind) VALUES"
                               " ($1, 'USD', 'customer'), ($2, 'USD', 'merchant')",
                               2, p),
                        "");
    const char *f[1] = { cust };
    assert_string_equal(h_exec("SELECT payq.post('deposit', $1 || '-fund', 'USD',"
                               " ARRAY['@external:USD', $1], ARRAY[-100, 100]::bigint[])",
                               1, f),
                        "");
    assert_int_equal(h_balance(cust), 100);
}

static void test_postings_must_balance(void **state)
{
    (void)state;
    const char *c = h_id("s-cust"), *m = h_id("s-merch");
    make_accounts(c, m);
    const char *p[3] = { h_id("unbalanced"), c, m };
    /* 23514 check_violation, raised by the ledger's statement trigger. */
    assert_string_equal(h_exec("SELECT payq.post('payment', $1, 'USD', ARRAY[$2, $3],"
                               " ARRAY[-10, 9]::bigint[])",
                               3, p),
                        "23514");
    assert_int_equal(h_balance(c), 100);
    const char *q[3] = { h_id("balanced"), c, m };
    assert_string_equal(h_exec("SELECT payq.post('payment', $1, 'USD', ARRAY[$2, $3],"
                               " ARRAY[-10, 10]::bigint[])",
                               3, q),
                        "");
    assert_int_equal(h_balance(c), 90);
    assert_int_equal(h_balance(m), 10);
}

static void test_no_overdraft(void **state)
{
    (void)state;
    const char *c = h_id("o-cust"), *m = h_id("o-merch");
    make_accounts(c, m);
    const char *p[3] = { h_id("overdraw"), c, m };
    assert_string_equal(h_exec("SELECT payq.post('payment', $1, 'USD', ARRAY[$2, $3],"
                               " ARRAY[-101, 101]::bigint[])",
                               3, p),
                        "23514");
    assert_int_equal(h_balance(c), 100);
}

/* One statement that posts to many wallets at once (what a batch of payments
 * does), after small statements have run in the same session (the trigger's
 * plans are cached then): every wallet gets its own amount; an entry for an
 * unknown account or in another currency than its account's fails the whole
 * statement and changes nothing. */
static void test_ledger_statement_many_wallets(void **state)
{
    (void)state;
    const char *c = h_id("m-cust"), *m = h_id("m-merch");
    make_accounts(c, m);
    for (int i = 0; i < 8; i++) {
        char name[32];
        snprintf(name, sizeof name, "small-%d", i);
        const char *ref = h_id(name);
        const char *q[3] = { ref, c, m };
        assert_string_equal(h_exec("SELECT payq.post('payment', $1, 'USD', ARRAY[$2, $3],"
                                   " ARRAY[-1, 1]::bigint[])",
                                   3, q),
                            "");
    }
    assert_int_equal(h_balance(c), 92);

    const char *w = h_id("many");
    const char *pw[1] = { w };
    assert_string_equal(h_exec("SELECT payq.ensure_system_accounts('EUR')", 0, NULL), "");
    assert_string_equal(h_exec("INSERT INTO payq.accounts (id, currency, kind)"
                               " SELECT $1 || '-w' || g, 'USD', 'customer'"
                               "   FROM generate_series(1, 150) g",
                               1, pw),
                        "");
    /* Wallet g gets g; the external account gives 1 + ... + 150 = 11325. */
    static const char post_sql[] =
        "WITH po AS (INSERT INTO payq.postings (kind, ref) VALUES ('deposit', $1 || $2)"
        "            RETURNING id)"
        " INSERT INTO payq.ledger_entries (posting_id, account_id, currency, amount)"
        " SELECT po.id, v.a, v.cur, v.m FROM po,"
        "  (SELECT $1 || '-w' || g AS a, 'USD' AS cur, g::bigint AS m"
        "     FROM generate_series(1, 150) g"
        "   UNION ALL SELECT '@external:USD', 'USD', -11325"
        "   UNION ALL SELECT $3, $4, -1"
        "   UNION ALL SELECT '@external:' || $4, $4, 1) v";
    /* An account that does not exist: 23503, nothing posted. */
    const char *bad1[4] = { w, "-a", "nobody-at-all", "EUR" };
    assert_string_equal(h_exec(post_sql, 4, bad1), "23503");
    /* A USD wallet with an EUR entry: 23503, nothing posted. */
    const char *bad2[4] = { w, "-b", c, "EUR" };
    assert_string_equal(h_exec(post_sql, 4, bad2), "23503");
    assert_int_equal(h_int("SELECT COALESCE(sum(posted), 0) FROM payq.accounts"
                           " WHERE starts_with(id, $1 || '-w')",
                           1, pw),
                     0);
    assert_int_equal(h_balance(c), 92);
    /* With a valid last pair (the customer pays 1 back to USD's external
     * account) the statement posts. */
    const char *good[4] = { w, "-c", c, "USD" };
    assert_string_equal(h_exec(post_sql, 4, good), "");
    assert_int_equal(h_int("SELECT sum(posted) FROM payq.accounts WHERE starts_with(id, $1 || '-w')",
                           1, pw),
                     11325);
    char w77[96];
    snprintf(w77, sizeof w77, "%s-w77", w);
    assert_int_equal(h_balance(w77), 77);
    assert_int_equal(h_balance(c), 91);
}

static void test_balances_only_through_ledger(void **state)
{
    (void)state;
    const char *c = h_id("b-cust"), *m = h_id("b-merch");
    make_accounts(c, m);
    const char *p[1] = { c };
    assert_string_equal(h_exec("UPDATE payq.accounts SET posted = posted + 1000 WHERE id = $1",
                               1, p),
                        "42501");
    assert_int_equal(h_balance(c), 100);
}

static void test_append_only(void **state)
{
    (void)state;
    const char *c = h_id("a-cust"), *m = h_id("a-merch");
    make_accounts(c, m);
    const char *p[1] = { c };
    assert_string_equal(h_exec("UPDATE payq.ledger_entries SET amount = amount * 2"
                               " WHERE account_id = $1", 1, p),
                        "42501");
    assert_string_equal(h_exec("DELETE FROM payq.ledger_entries WHERE account_id = $1", 1, p),
                        "42501");
    assert_string_equal(h_exec("TRUNCATE payq.ledger_entries CASCADE", 0, NULL), "42501");
    assert_string_equal(h_exec("DELETE FROM payq.postings WHERE ref = $1 || '-fund'", 1, p),
                        "42501");
    /* The event store: the outbox (sql/016), the events stored before it,
     * and the view over both, which no statement can write through. */
    assert_string_equal(h_exec("DELETE FROM payq.outbox WHERE false", 0, NULL), "42501");
    assert_string_equal(h_exec("UPDATE payq.outbox SET body = body WHERE false", 0, NULL),
                        "42501");
    assert_string_equal(h_exec("TRUNCATE payq.outbox", 0, NULL), "42501");
    assert_string_equal(h_exec("DELETE FROM payq.payment_events_archive", 0, NULL), "42501");
    assert_string_equal(h_exec("DELETE FROM payq.payment_events", 0, NULL), "55000");
    assert_int_equal(h_balance(c), 100);
}

/* References are checked once per statement (sql/011): an entry of an unknown
 * posting and an event of an unknown payment fail with 23503 and leave
 * nothing; accounts and payments refuse DELETE and TRUNCATE, so nothing a
 * ledger entry or an event refers to can go away. */
static void test_references_per_statement(void **state)
{
    (void)state;
    const char *c = h_id("r-cust"), *m = h_id("r-merch");
    make_accounts(c, m);
    const char *p[2] = { c, m };
    /* One good posting and one id that no posting has, in one statement. */
    assert_string_equal(h_exec("WITH po AS (INSERT INTO payq.postings (kind, ref)"
                               "            VALUES ('payment', $1 || '-ref') RETURNING id)"
                               " INSERT INTO payq.ledger_entries (posting_id, account_id,"
                               "                                  currency, amount)"
                               " SELECT v.pid, v.a, 'USD', v.amt FROM po, LATERAL (VALUES"
                               "   (po.id, $1, -5::bigint), (po.id, $2, 5::bigint),"
                               "   (-po.id, $1, -5::bigint), (-po.id, $2, 5::bigint))"
                               "   AS v(pid, a, amt)",
                               2, p),
                        "23503");
    assert_int_equal(h_int("SELECT count(*) FROM payq.postings WHERE ref = $1 || '-ref'", 1, p),
                     0);
    assert_int_equal(h_balance(c), 100);
    /* The same posting with entries of its own: accepted. */
    assert_string_equal(h_exec("WITH po AS (INSERT INTO payq.postings (kind, ref)"
                               "            VALUES ('payment', $1 || '-ref') RETURNING id)"
                               " INSERT INTO payq.ledger_entries (posting_id, account_id,"
                               "                                  currency, amount)"
                               " SELECT po.id, v.a, 'USD', v.amt FROM po, LATERAL (VALUES"
                               "   ($1, -5::bigint), ($2, 5::bigint)) AS v(a, amt)",
                               2, p),
                        "");
    assert_int_equal(h_balance(c), 95);

    /* Events of no payment (an account's) and of a known payment pass; one
     * of an unknown payment fails the whole statement. */
    const char *e[1] = { h_id("r-no-such-payment") };
    assert_string_equal(h_exec("INSERT INTO payq.outbox (event_id, routing_key, body, payment_id,"
                               "                         version)"
                               " VALUES (gen_random_uuid(), 'account.opened', '{}', NULL, NULL),"
                               "        (gen_random_uuid(), 'payment.created', '{}', $1, 1)",
                               1, e),
                        "23503");
    assert_int_equal(h_int("SELECT count(*) FROM payq.payment_events WHERE payment_id = $1", 1, e),
                     0);

    assert_string_equal(h_exec("DELETE FROM payq.accounts WHERE id = $1", 1, p), "42501");
    assert_string_equal(h_exec("DELETE FROM payq.accounts WHERE false", 0, NULL), "42501");
    assert_string_equal(h_exec("TRUNCATE payq.accounts CASCADE", 0, NULL), "42501");
    assert_string_equal(h_exec("DELETE FROM payq.payments WHERE false", 0, NULL), "42501");
    assert_string_equal(h_exec("TRUNCATE payq.payments CASCADE", 0, NULL), "42501");
    assert_int_equal(h_int("SELECT count(*) FROM payq.accounts WHERE id IN ($1, $2)", 2, p), 2);
}

/* A payment event is written once (sql/016): its outbox row, carrying the
 * payment and the version, is its entry in payq.payment_events; an event of
 * no payment is published but is no payment's history; one version per
 * payment, and a payment's events carry both or neither. */
static void test_event_written_once(void **state)
{
    (void)state;
    const char *c = h_id("e-cust"), *m = h_id("e-merch"), *pay = h_id("e-pay");
    h_apply(h_db(), "account.open", "succeeded",
            "{\"account\": \"%s\", \"currency\": \"USD\", \"kind\": \"customer\"}", c);
    h_apply(h_db(), "account.open", "succeeded",
            "{\"account\": \"%s\", \"currency\": \"USD\", \"kind\": \"merchant\"}", m);
    h_apply(h_db(), "account.deposit", "succeeded",
            "{\"deposit_id\": \"%s-d\", \"account\": \"%s\", \"amount\": 500,"
            " \"currency\": \"USD\"}",
            c, c);
    /* Through the set-based path (sql/009) ... */
    char batch[512];
    snprintf(batch, sizeof batch,
             "[{\"command\": \"payment.create\", \"body\": {\"payment_id\": \"%s\","
             " \"amount\": 100, \"currency\": \"USD\", \"source\": \"%s\","
             " \"destination\": \"%s\", \"capture\": true}}]",
             pay, c, m);
    const char *b[1] = { batch };
    assert_string_equal(h_text("SELECT payq.apply_wallet_payments($1::jsonb)"
                               "         #>> '{1,reply,status}'",
                               1, b),
                        "succeeded");
    /* ... and through payq.emit() (a refund, command by command). */
    h_apply(h_db(), "payment.refund", "succeeded",
            "{\"refund_id\": \"%s-r\", \"payment_id\": \"%s\", \"amount\": 40}", pay, pay);
    assert_int_equal(h_balance(c), 440);

    const char *q[1] = { pay };
    assert_string_equal(h_text("SELECT string_agg(type || ' v' || version, ',' ORDER BY version)"
                               "  FROM payq.payment_events WHERE payment_id = $1",
                               1, q),
                        "payment.succeeded v1,refund.succeeded v2");
    /* Each is one outbox row, with the same event id, body and type. */
    assert_int_equal(
        h_int("SELECT count(*) FROM payq.payment_events e"
              "  JOIN payq.outbox o ON o.event_id = e.event_id"
              " WHERE e.payment_id = $1 AND o.payment_id = e.payment_id"
              "   AND o.version = e.version AND o.body = e.data"
              "   AND o.routing_key = e.type AND o.body->>'event_id' = e.event_id::text",
              1, q),
        2);
    assert_int_equal(h_int("SELECT count(*) FROM payq.outbox"
                           " WHERE body->>'id' = $1 OR body->>'payment_id' = $1",
                           1, q),
                     2);
    assert_int_equal(h_int("SELECT count(*) FROM payq.payment_events_archive"
                           " WHERE payment_id = $1",
                           1, q),
                     0);
    /* The account's events are published and are no payment's history. */
    const char *a[1] = { c };
    assert_int_equal(h_int("SELECT count(*) FROM payq.outbox WHERE body->>'id' = $1"
                           "   AND payment_id IS NULL AND version IS NULL",
                           1, a),
                     1);
    assert_int_equal(h_int("SELECT count(*) FROM payq.payment_events WHERE data->>'id' = $1", 1, a),
                     0);
    /* A second event with a taken version, or a payment without a version. */
    assert_string_equal(h_exec("INSERT INTO payq.outbox (event_id, routing_key, body, payment_id,"
                               "                         version)"
                               " VALUES (gen_random_uuid(), 'payment.canceled', '{}', $1, 2)",
                               1, q),
                        "23505");
    assert_string_equal(h_exec("INSERT INTO payq.outbox (event_id, routing_key, body, payment_id)"
                               " VALUES (gen_random_uuid(), 'payment.canceled', '{}', $1)",
                               1, q),
                        "23514");
    assert_string_equal(h_text("SELECT status || ' ' || refunded_amount"
                               "  FROM payq.payment_rebuild($1)",
                               1, q),
                        "succeeded 40");
}
/* Old message keys of finished commands are pruned; those of commands whose
 * saga is still in flight (reply NULL) are kept whatever their age. */
static void test_inbox_pruning(void **state)
{
    (void)state;
    const char *p[2] = { h_id("old-done"), h_id("old-running") };
    assert_string_equal(h_exec("INSERT INTO payq.inbox (scope, message_id, command, request_hash,"
                               " reply, created_at) VALUES"
                               " ('test', $1, 'payment.create', '\\x00', '{}',"
                               "  now() - interval '3 days'),"
                               " ('test', $2, 'payment.create', '\\x00', NULL,"
                               "  now() - interval '3 days')",
                               2, p),
                        "");
    assert_true(h_int("SELECT payq.prune_inbox('24 hours')", 0, NULL) >= 1);
    assert_int_equal(h_int("SELECT count(*) FROM payq.inbox WHERE scope = 'test'"
                           " AND message_id IN ($1, $2)", 2, p),
                     1);
    assert_string_equal(h_text("SELECT message_id FROM payq.inbox WHERE scope = 'test'"
                               " AND message_id IN ($1, $2)", 2, p),
                        p[1]);
}

/* The fee rule in the database (payq.fee_for, numeric) and in C (money_fee)
 * are one rule: the same fee for every case, rounding boundaries included. */
static void test_fee_rule_matches_c(void **state)
{
    (void)state;
    static const struct {
        int64_t amount;
        int bps;
        int64_t fixed;
    } cases[] = {
        { 1, 0, 0 },      { 1, 10000, 0 },   { 2500, 290, 30 },  { 50, 100, 0 },
        { 49, 100, 0 },   { 150, 100, 0 },   { 1250, 290, 30 },  { 10, 0, 20 },
        { 999999, 1, 0 }, { 1000000000000000LL, 10000, 0 }, { 1000000000000000LL, 9999, 7 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char merchant[64], bps[16], fixed[32], amount[32];
        snprintf(merchant, sizeof merchant, "%s-%zu", h_id("fee"), i);
        snprintf(bps, sizeof bps, "%d", cases[i].bps);
        snprintf(fixed, sizeof fixed, "%lld", (long long)cases[i].fixed);
        snprintf(amount, sizeof amount, "%lld", (long long)cases[i].amount);
        const char *ins[3] = { merchant, bps, fixed };
        assert_string_equal(h_exec("INSERT INTO payq.fee_rules (merchant, currency, bps, fixed)"
                                   " VALUES ($1, 'EUR', $2::int, $3::bigint)", 3, ins),
                            "");
        const char *q[2] = { merchant, amount };
        int64_t sql = h_int("SELECT payq.fee_for($1, 'EUR', $2::bigint)", 2, q);
        int64_t c_fee = -1;
        assert_int_equal(money_fee(cases[i].amount, cases[i].bps, cases[i].fixed, &c_fee),
                         PAYQ_OK);
        if (sql != c_fee)
            fail_msg("amount %lld, %d bps, fixed %lld: SQL %lld, C %lld",
                     (long long)cases[i].amount, cases[i].bps, (long long)cases[i].fixed,
                     (long long)sql, (long long)c_fee);
    }
}

int main(void)
{
    h_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrate_idempotent_and_tamper_evident),
        cmocka_unit_test(test_postings_must_balance),
        cmocka_unit_test(test_no_overdraft),
        cmocka_unit_test(test_ledger_statement_many_wallets),
        cmocka_unit_test(test_balances_only_through_ledger),
        cmocka_unit_test(test_append_only),
        cmocka_unit_test(test_references_per_statement),
        cmocka_unit_test(test_event_written_once),
        cmocka_unit_test(test_inbox_pruning),
        cmocka_unit_test(test_fee_rule_matches_c),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
