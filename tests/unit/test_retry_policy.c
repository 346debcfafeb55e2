/*
 * test_retry_policy.c - how failures are classified, and how retry delays
 * are chosen: capped exponential backoff with full jitter, rounded up to a
 * delay tier.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "backoff.h"
#include "cmd.h"
#include "db.h"
#include "topology.h"

static void test_sqlstate_classes(void **state)
{
    (void)state;
    static const struct {
        const char *sqlstate;
        bool transient, retry_now;
    } cases[] = {
        { "08006", true, false },  /* connection failure */
        { "08001", true, false },  /* cannot connect */
        { "53300", true, false },  /* too many connections */
        { "53100", true, false },  /* disk full */
        { "57P01", true, false },  /* admin shutdown */
        { "57P03", true, false },  /* cannot connect now (starting up) */
        { "57014", true, false },  /* statement timeout */
        { "40001", true, true },   /* serialization failure */
        { "40P01", true, true },   /* deadlock */
        { "55P03", true, false },  /* lock not available */
        { "55006", true, false },  /* a step of this payment is in flight */
        { "", true, false },       /* libpq lost the connection: no SQLSTATE */
        { "23505", false, false }, /* unique violation: a bug, not bad luck */
        { "23514", false, false }, /* check violation */
        { "42P01", false, false }, /* undefined table */
        { "0A000", false, false }, /* feature not supported */
        { "22P02", false, false }, /* invalid text representation */
        { "42501", false, false }, /* insufficient privilege */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (db_transient(cases[i].sqlstate) != cases[i].transient)
            fail_msg("SQLSTATE %s: transient should be %d", cases[i].sqlstate,
                     cases[i].transient);
        if (db_retry_now(cases[i].sqlstate) != cases[i].retry_now)
            fail_msg("SQLSTATE %s: retry_now should be %d", cases[i].sqlstate,
                     cases[i].retry_now);
    }
}

/* Permanent: each rejection code of the contract is a dead letter at once. */
static void test_rejection_codes(void **state)
{
    (void)state;
    static const struct {
        cmd_reject_t code;
        const char *name;
    } cases[] = {
        { CMD_REJECT_MALFORMED_JSON, "malformed_json" },
        { CMD_REJECT_SCHEMA_INVALID, "schema_invalid" },
        { CMD_REJECT_UNKNOWN_COMMAND, "unknown_command" },
        { CMD_REJECT_RAW_CARD_NUMBER, "raw_card_number" },
        { CMD_REJECT_IDEMPOTENCY_CONFLICT, "idempotency_conflict" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_string_equal(cmd_reject_code(cases[i].code), cases[i].name);
}

static void test_tier_rounding(void **state)
{
    (void)state;
    static const struct {
        long delay_ms;
        const char *tier;
    } cases[] = {
        { 0, "1s" },        { 1, "1s" },         { 1000, "1s" },       { 1001, "5s" },
        { 5000, "5s" },     { 5001, "30s" },     { 30000, "30s" },     { 119999, "2m" },
        { 120000, "2m" },   { 600000, "10m" },   { 600001, "1h" },     { 3600000, "1h" },
        { 99999999, "1h" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_string_equal(topo_tier_for(cases[i].delay_ms)->name, cases[i].tier);
}

static void test_ceiling_doubles_and_caps(void **state)
{
    (void)state;
    assert_int_equal(backoff_ceiling(1000, 3600000, 0), 1000);
    assert_int_equal(backoff_ceiling(1000, 3600000, 1), 2000);
    assert_int_equal(backoff_ceiling(1000, 3600000, 5), 32000);
    assert_int_equal(backoff_ceiling(1000, 3600000, 12), 3600000);
    assert_int_equal(backoff_ceiling(1000, 3600000, 1000), 3600000); /* no overflow */
}

/* Full jitter stays within [0, ceiling], and the mean delay grows with the
 * attempt until the cap. */
static void test_full_jitter(void **state)
{
    (void)state;
    unsigned int seed = 42;
    double prev_mean = 0;
    for (int n = 0; n < 8; n++) {
        long ceil = backoff_ceiling(1000, 60000, n);
        double sum = 0;
        long lo = ceil, hi = 0;
        for (int i = 0; i < 20000; i++) {
            long d = backoff_full_jitter(1000, 60000, n, &seed);
            assert_true(d >= 0 && d <= ceil);
            sum += (double)d;
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
        }
        double mean = sum / 20000;
        /* uniform on [0, ceil]: mean ceil/2, and both ends are reached */
        assert_true(mean > ceil * 0.45 && mean < ceil * 0.55);
        assert_true(lo < ceil / 20 && hi > ceil - ceil / 20);
        if (ceil < 60000)
            assert_true(mean > prev_mean * 1.5);
        prev_mean = mean;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sqlstate_classes),
        cmocka_unit_test(test_rejection_codes),
        cmocka_unit_test(test_tier_rounding),
        cmocka_unit_test(test_ceiling_doubles_and_caps),
        cmocka_unit_test(test_full_jitter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
