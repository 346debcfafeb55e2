/*
 * test_upgrade.c - upgrading a database that has history: migrations
 * applied to a database made and used by an earlier version keep every
 * record it holds readable, and the history goes on where it stopped.
 *
 * Runs in the scratch database (tests/stack.sh creates payq_scratch next to
 * payq, owned by the same role), which it empties first: the schema is
 * migrated up to an earlier migration with a copy of those files, payments
 * are made, then the rest is applied as `payq-worker migrate` would.
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

#define SCRATCH_DB "payq_scratch"

static PGconn *db;
static char conninfo[2048];

/* The harness's connection settings, with the scratch database. */
static void scratch_conninfo(void)
{
    PQconninfoOption *opts = PQconninfo(h_db());
    size_t n = 0;
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (!o->val || !*o->val || strcmp(o->keyword, "dbname") == 0)
            continue;
        n += (size_t)snprintf(conninfo + n, sizeof conninfo - n, "%s='%s' ", o->keyword, o->val);
        assert_true(n < sizeof conninfo);
    }
    snprintf(conninfo + n, sizeof conninfo - n, "dbname=%s", SCRATCH_DB);
    PQconninfoFree(opts);
}

static void exec_ok(const char *sql, int n, const char *const *params)
{
    PQclear(h_run(db, sql, n, params));
}

static char *text_of(const char *sql, int n, const char *const *params)
{
    PGresult *r = h_run(db, sql, n, params);
    char *v = strdup(PQntuples(r) && !PQgetisnull(r, 0, 0) ? PQgetvalue(r, 0, 0) : "(null)");
    PQclear(r);
    return v;
}

static void expect_text(const char *sql, int n, const char *const *params, const char *want)
{
    char *got = text_of(sql, n, params);
    if (strcmp(got, want) != 0)
        fail_msg("%s\n  got  %s\n  want %s", sql, got, want);
    free(got);
}

/* payq-worker migrate with the migrations of dir, on the scratch database. */
static void migrate(const char *dir)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "DATABASE_URL=\"%s\" PAYQ_LOG_LEVEL=warn %s/payq-worker migrate --sql-dir %s",
             conninfo, PAYQ_BINARY_DIR, dir);
    int st = system(cmd);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("migrate with %s failed", dir);
}

static int setup(void **state)
{
    (void)state;
    scratch_conninfo();
    db = PQconnectdb(conninfo);
    if (PQstatus(db) != CONNECTION_OK)
        fail_msg("cannot connect to the scratch database %s (tests/stack.sh up creates it): %s",
                 SCRATCH_DB, PQerrorMessage(db));
    PQclear(PQexec(db, "SET client_min_messages = warning"));
    exec_ok("DROP SCHEMA IF EXISTS payq CASCADE", 0, NULL);
    exec_ok("DROP SCHEMA IF EXISTS payq_sim CASCADE", 0, NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    PQclear(PQexec(db, "DROP SCHEMA IF EXISTS payq CASCADE"));
    PQclear(PQexec(db, "DROP SCHEMA IF EXISTS payq_sim CASCADE"));
    PQfinish(db);
    return 0;
}

/* sql/016: payment events written before it stay in the event store (the
 * table renamed payq.payment_events_archive), read through the view with
 * the ones written after it, in one version order; nothing is published
 * again, the checker finds nothing, the history rebuilds the state, and the
 * worker role keeps reading the history and can no longer rewrite the
 * outbox. */
static void test_events_before_016(void **state)
{
    (void)state;
    char dir[] = "/tmp/payq-sql-XXXXXX", cmd[2048];
    assert_non_null(mkdtemp(dir));
    snprintf(cmd, sizeof cmd, "cp %s/sql/00[0-9]_*.sql %s/ && cp %s/sql/01[0-5]_*.sql %s/",
             PAYQ_SOURCE_DIR, dir, PAYQ_SOURCE_DIR, dir);
    assert_int_equal(system(cmd), 0);
    migrate(dir);
    expect_text("SELECT max(version) FROM payq.schema_migrations", 0, NULL, "15");

    h_apply(db, "account.open", "succeeded",
            "{\"account\": \"w1\", \"currency\": \"USD\","
            " \"kind\": \"customer\"}");
    h_apply(db, "account.open", "succeeded",
            "{\"account\": \"m1\", \"currency\": \"USD\","
            " \"kind\": \"merchant\"}");
    h_apply(db, "account.deposit", "succeeded",
            "{\"deposit_id\": \"d1\", \"account\": \"w1\","
            " \"amount\": 1000, \"currency\": \"USD\"}");
    /* p1 authorized only, p2 captured at once: both have history before. */
    h_apply(db, "payment.create", "authorized",
            "{\"payment_id\": \"p1\", \"amount\": 300,"
            " \"currency\": \"USD\", \"source\": \"w1\","
            " \"destination\": \"m1\", \"capture\": false}");
    h_apply(db, "payment.create", "succeeded",
            "{\"payment_id\": \"p2\", \"amount\": 200,"
            " \"currency\": \"USD\", \"source\": \"w1\","
            " \"destination\": \"m1\", \"capture\": true}");
    expect_text("SELECT count(*) FROM payq.payment_events", 0, NULL, "2");
    /* The relay published everything so far. */
    exec_ok("UPDATE payq.relay_position SET snapshot = pg_current_snapshot(),"
            "       horizon = pg_current_xact_id(),"
            "       max_id = (SELECT max(id) FROM payq.outbox)",
            0, NULL);
    char *outbox_before = text_of("SELECT count(*) FROM payq.outbox", 0, NULL);

    snprintf(cmd, sizeof cmd, "%s/sql", PAYQ_SOURCE_DIR);
    migrate(cmd);
    expect_text("SELECT count(*) FROM payq.payment_events_archive", 0, NULL, "2");
    expect_text("SELECT count(*) FROM payq.outbox", 0, NULL, outbox_before);
    expect_text("SELECT count(*) FROM payq.outbox_unpublished()", 0, NULL, "0");
    free(outbox_before);

    /* p1's history goes on in the outbox, after its version 1. */
    h_apply(db, "payment.capture", "succeeded", "{\"payment_id\": \"p1\"}");
    h_apply(db, "payment.refund", "succeeded",
            "{\"refund_id\": \"r2\", \"payment_id\": \"p2\","
            " \"amount\": 50}");
    expect_text("SELECT string_agg(payment_id || ' v' || version || ' ' || type, ', '"
                "                  ORDER BY payment_id, version)"
                "  FROM payq.payment_events",
                0, NULL,
                "p1 v1 payment.authorized, p1 v2 payment.captured,"
                " p2 v1 payment.succeeded, p2 v2 refund.succeeded");
    expect_text("SELECT string_agg(routing_key, ', ' ORDER BY id)"
                "  FROM payq.outbox_unpublished()",
                0, NULL, "payment.captured, refund.succeeded");
    expect_text("SELECT count(*) FROM payq.outbox WHERE payment_id IS NOT NULL", 0, NULL, "2");
    expect_text("SELECT count(*) FROM payq.check_invariants()", 0, NULL, "0");
    expect_text("SELECT status || ' ' || captured_amount || ' ' || refunded_amount"
                "  FROM payq.payment_rebuild('p1')",
                0, NULL, "succeeded 300 0");
    expect_text("SELECT status || ' ' || captured_amount || ' ' || refunded_amount"
                "  FROM payq.payment_rebuild('p2')",
                0, NULL, "succeeded 200 50");
    expect_text("SELECT posted FROM payq.accounts WHERE id = 'w1'", 0, NULL, "550");

    /* The archive stays append-only. */
    PGresult *r = PQexec(db, "DELETE FROM payq.payment_events_archive");
    assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "42501");
    PQclear(r);
    /* What the worker role may do with the history (sql/008's role). */
    expect_text("SELECT has_table_privilege('payq_worker', 'payq.payment_events', 'SELECT')"
                "   AND has_table_privilege('payq_worker', 'payq.outbox', 'INSERT')"
                "   AND NOT has_table_privilege('payq_worker', 'payq.outbox', 'UPDATE')"
                "   AND NOT has_table_privilege('payq_worker', 'payq.outbox', 'DELETE')"
                "   AND NOT has_table_privilege('payq_worker', 'payq.payment_events_archive',"
                "                               'INSERT')",
                0, NULL, "t");

    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    h_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_events_before_016),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
