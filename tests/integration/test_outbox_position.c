/*
 * test_outbox_position.c - the relay's position arithmetic (sql/015) on the
 * real database, without a relay: payq.outbox_after, called the way the
 * relay calls it, returns every committed row exactly once across rounds,
 * however late its transaction commits and whatever its id, and pages a
 * backlog in id order against a fixed target snapshot.
 *
 * The test keeps positions of its own (it never touches
 * payq.relay_position) and looks only at rows whose body "id" carries this
 * run's prefix; its events stay in the outbox for the next relay to publish.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

/* A position as the relay keeps it. */
struct pos {
    char snapshot[4096];
    char horizon[32];
    long long max_id;
};

/* A second session, for transactions held open across rounds. */
static PGconn *other;

static void emit_on(PGconn *c, const char *name)
{
    const char *p[1] = { h_id(name) };
    PQclear(h_run(c, "SELECT payq.emit('test.position', $1, NULL, '{}'::jsonb)", 1, p));
}

/* A position now: this statement's snapshot, an xid taken after it, and the
 * largest id it sees (as the migration and the relay compute them). */
static struct pos now_position(void)
{
    struct pos p;
    PGresult *r = h_run(h_db(),
                        "SELECT pg_current_snapshot()::text, pg_current_xact_id()::text,"
                        "       COALESCE((SELECT max(id) FROM payq.outbox), 0)",
                        0, NULL);
    snprintf(p.snapshot, sizeof p.snapshot, "%s", PQgetvalue(r, 0, 0));
    snprintf(p.horizon, sizeof p.horizon, "%s", PQgetvalue(r, 0, 1));
    p.max_id = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
    PQclear(r);
    return p;
}

/*
 * One relay round from *p with no target (the statement's snapshot and an
 * xid taken after it become the new position): returns the names of this
 * run's rows in the round, in order, comma-separated ("" for none).
 */
static const char *round_from(struct pos *p)
{
    static char names[4096];
    char max_id[24];
    snprintf(max_id, sizeof max_id, "%lld", p->max_id);
    const char *params[4] = { p->snapshot, p->horizon, max_id, h_id("") };
    PGresult *r =
        h_run(h_db(),
              "SELECT t.s::text, t.n::text, max(o.id),"
              "       string_agg(substr(o.body->>'id', length($4) + 1), ','"
              "                  ORDER BY o.id) FILTER (WHERE starts_with(o.body->>'id', $4))"
              "  FROM (SELECT pg_current_snapshot() AS s, pg_current_xact_id() AS n) t"
              "  LEFT JOIN LATERAL payq.outbox_after($1::pg_snapshot, $2::xid8, $3::bigint,"
              "                                      t.s, 0, NULL) o ON true"
              " GROUP BY 1, 2",
              4, params);
    assert_int_equal(PQntuples(r), 1);
    snprintf(p->snapshot, sizeof p->snapshot, "%s", PQgetvalue(r, 0, 0));
    snprintf(p->horizon, sizeof p->horizon, "%s", PQgetvalue(r, 0, 1));
    if (!PQgetisnull(r, 0, 2) && strtoll(PQgetvalue(r, 0, 2), NULL, 10) > p->max_id)
        p->max_id = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
    snprintf(names, sizeof names, "%s", PQgetisnull(r, 0, 3) ? "" : PQgetvalue(r, 0, 3));
    PQclear(r);
    return names;
}

static int setup(void **state)
{
    (void)state;
    h_init();
    other = PQconnectdb(getenv("DATABASE_URL"));
    if (PQstatus(other) != CONNECTION_OK)
        fail_msg("cannot connect: %s", PQerrorMessage(other));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    PQfinish(other);
    return 0;
}

/*
 * A transaction that wrote its event before later ones (a smaller id) and
 * commits after a round published those: the next round publishes it. Its
 * xid is either in the round's snapshot's in-progress list or at/above its
 * xmax and below the horizon; both are looked up by xid, whatever the id.
 */
static void test_late_commit_is_published(void **state)
{
    (void)state;
    struct pos p = now_position();
    PQclear(h_run(other, "BEGIN", 0, NULL));
    emit_on(other, "late");
    emit_on(h_db(), "early-1");
    emit_on(h_db(), "early-2");
    assert_string_equal(round_from(&p), "early-1,early-2");
    assert_string_equal(round_from(&p), "");
    PQclear(h_run(other, "COMMIT", 0, NULL));
    /* behind the position's largest id: an id watermark would skip it */
    const char *n[1] = { h_id("late") };
    assert_true(h_int("SELECT id FROM payq.outbox WHERE body->>'id' = $1", 1, n) < p.max_id);
    assert_string_equal(round_from(&p), "late");
    assert_string_equal(round_from(&p), "");
}

/*
 * The case the horizon exists for: a transaction that has its xid (and
 * drew its id) before a round's snapshot, but whose xid is at or above that
 * snapshot's xmax, so the snapshot does not list it as in progress. Made
 * certain here: the open transaction is the newest one with an xid when the
 * snapshot is taken (nothing else commits in between on this test's
 * sessions; another session's commit could only put it in the list instead,
 * which the assertion below reports).
 */
static void test_xid_above_xmax_is_published(void **state)
{
    (void)state;
    struct pos p = now_position();
    PQclear(h_run(other, "BEGIN", 0, NULL));
    emit_on(other, "above");
    PGresult *r = h_run(other, "SELECT pg_current_xact_id()::text", 0, NULL);
    char xid[32];
    snprintf(xid, sizeof xid, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    assert_string_equal(round_from(&p), "");
    const char *q[2] = { xid, p.snapshot };
    if (h_int("SELECT ($1::xid8 >= pg_snapshot_xmax($2::pg_snapshot))::int", 2, q) != 1)
        print_message("another session committed meanwhile: the open xid is in the snapshot's "
                      "in-progress list, not above its xmax (this run tests the list)\n");
    PQclear(h_run(other, "COMMIT", 0, NULL));
    emit_on(h_db(), "after");
    assert_string_equal(round_from(&p), "above,after");
    assert_string_equal(round_from(&p), "");
}

/* A backlog paged against a fixed target: pages in id order, nothing of a
 * later commit in them, and the rest comes after the target is done. */
static void test_pages_against_a_target(void **state)
{
    (void)state;
    struct pos p = now_position();
    PQclear(h_run(other, "BEGIN", 0, NULL));
    emit_on(other, "open");
    for (int i = 0; i < 7; i++) {
        char name[16];
        snprintf(name, sizeof name, "page-%d", i);
        emit_on(h_db(), name);
    }
    PGresult *r =
        h_run(h_db(), "SELECT pg_current_snapshot()::text, pg_current_xact_id()::text", 0, NULL);
    char target[4096], target_horizon[32];
    snprintf(target, sizeof target, "%s", PQgetvalue(r, 0, 0));
    snprintf(target_horizon, sizeof target_horizon, "%s", PQgetvalue(r, 0, 1));
    PQclear(r);
    emit_on(h_db(), "newer");
    PQclear(h_run(other, "COMMIT", 0, NULL)); /* after the target: not in it */

    char max_id[24], through[24] = "0", got[4096] = "";
    snprintf(max_id, sizeof max_id, "%lld", p.max_id);
    for (int page = 0; page < 5; page++) {
        const char *params[6] = { p.snapshot, p.horizon, max_id, target, through, h_id("") };
        r = h_run(h_db(),
                  "SELECT max(id), count(*),"
                  "       string_agg(substr(body->>'id', length($6) + 1), ',' ORDER BY id)"
                  "         FILTER (WHERE starts_with(body->>'id', $6))"
                  "  FROM payq.outbox_after($1::pg_snapshot, $2::xid8, $3::bigint,"
                  "                         $4::pg_snapshot, $5::bigint, 3)",
                  6, params);
        long long n = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
        if (!PQgetisnull(r, 0, 2))
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%s", got[0] ? "|" : "",
                     PQgetvalue(r, 0, 2));
        if (n > 0) {
            snprintf(through, sizeof through, "%s", PQgetvalue(r, 0, 0));
            if (strtoll(through, NULL, 10) > p.max_id)
                p.max_id = strtoll(through, NULL, 10);
        }
        PQclear(r);
        if (n < 3)
            break;
    }
    /* Pages of three (of this run's rows, when nothing else was written
     * meanwhile; other rows in a page only move the cuts). */
    char want[4096] = "";
    for (int i = 0; i < 7; i++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%spage-%d", i ? "," : "", i);
    char flat[4096];
    snprintf(flat, sizeof flat, "%s", got);
    for (char *c = flat; *c; c++)
        if (*c == '|')
            *c = ',';
    assert_string_equal(flat, want);

    /* The target is the position now; the next round has the rest. */
    snprintf(p.snapshot, sizeof p.snapshot, "%s", target);
    snprintf(p.horizon, sizeof p.horizon, "%s", target_horizon);
    assert_string_equal(round_from(&p), "open,newer");
    assert_string_equal(round_from(&p), "");
}

/* The id of this run's row `name`. */
static const char *id_of(const char *name)
{
    static char id[24];
    const char *n[1] = { h_id(name) };
    snprintf(id, sizeof id, "%lld",
             (long long)h_int("SELECT id FROM payq.outbox WHERE body->>'id' = $1", 1, n));
    return id;
}

/* payq.outbox_published(xid, id) of this run's row `name`, 0 or 1. */
static int64_t published(const char *name)
{
    const char *n[1] = { h_id(name) };
    return h_int("SELECT payq.outbox_published(xid, id)::int FROM payq.outbox"
                 " WHERE body->>'id' = $1",
                 1, n);
}

/*
 * payq.outbox_published() and payq.outbox_unpublished() in each state a row
 * can be in, against a relay position set here inside a transaction that is
 * rolled back (no relay runs during this test): visible in the position's
 * snapshot; in the target up to through_id; in the target past it; after
 * the target; and not committed at all.
 */
static void test_published_and_unpublished(void **state)
{
    (void)state;
    PQclear(h_run(other, "BEGIN", 0, NULL));
    emit_on(other, "st-open");
    emit_on(h_db(), "st-before");
    struct pos s = now_position();
    emit_on(h_db(), "st-through");
    emit_on(h_db(), "st-past");
    struct pos t = now_position();
    emit_on(h_db(), "st-after");

    char max_id[24], through[24];
    snprintf(max_id, sizeof max_id, "%lld", s.max_id);
    snprintf(through, sizeof through, "%s", id_of("st-through"));
    const char *params[6] = { s.snapshot, s.horizon, max_id, t.snapshot, t.horizon, through };
    PQclear(h_run(h_db(), "BEGIN", 0, NULL));
    PQclear(h_run(h_db(),
                  "UPDATE payq.relay_position SET snapshot = $1::pg_snapshot, horizon = $2::xid8,"
                  "       max_id = $3::bigint, target = $4::pg_snapshot, target_horizon = $5::xid8,"
                  "       through_id = $6::bigint",
                  6, params));
    assert_int_equal(published("st-before"), 1);
    assert_int_equal(published("st-through"), 1);
    assert_int_equal(published("st-past"), 0);
    assert_int_equal(published("st-after"), 0);
    const char *pre[1] = { h_id("st-") };
    assert_string_equal(
        h_text("SELECT COALESCE(string_agg(substr(body->>'id', length($1) + 1),"
               "                           ',' ORDER BY id), '')"
               "  FROM payq.outbox_unpublished() WHERE starts_with(body->>'id', $1)",
               1, pre),
        "past,after");
    PQclear(h_run(h_db(), "ROLLBACK", 0, NULL));
    PQclear(h_run(other, "ROLLBACK", 0, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_late_commit_is_published),
        cmocka_unit_test(test_xid_above_xmax_is_published),
        cmocka_unit_test(test_pages_against_a_target),
        cmocka_unit_test(test_published_and_unpublished),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
