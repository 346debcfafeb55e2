/*
 * test_money.c - unit tests of shared/money.c.
 *
 * Money bugs are silent (a wrapped sum, a fee off by one minor unit), so the
 * edges are tested explicitly: INT64 limits, the half-up boundary, the
 * largest contract amount, and out-parameters left alone on error.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "money.h"

/* What an out-parameter holds when a failing call must not have touched it. */
#define UNTOUCHED INT64_C(-777)

/*
 * Every code the table must hold. Most have two minor-unit digits; the
 * others are listed by exponent. Looking each one up also proves that the
 * table is sorted, since bsearch misses entries in an unsorted table.
 */
static const char *const codes_exp0[] = {
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG",
    "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF",
};
static const char *const codes_exp3[] = { "BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND" };
static const char *const codes_exp4[] = { "CLF", "UYW" };
static const char *const codes_exp2[] = {
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD",
    "BDT", "BGN", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CNY", "COP", "COU", "CRC", "CUC", "CUP", "CVE",
    "CZK", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL",
    "GHS", "GIP", "GMD", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR",
    "IRR", "JMD", "KES", "KGS", "KHR", "KPW", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD",
    "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK",
    "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR", "SBD", "SCR", "SDG",
    "SEK", "SGD", "SHP", "SLE", "SLL", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL",
    "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "USD", "USN", "UYU",
    "UZS", "VED", "VES", "WST", "XCD", "XCG", "YER", "ZAR", "ZMW", "ZWG",
};

static void expect_exponents(const char *const *codes, size_t n, int exponent)
{
    for (size_t i = 0; i < n; i++) {
        int got = money_exponent(codes[i], strlen(codes[i]));
        if (got != exponent)
            fail_msg("money_exponent(%s) = %d, want %d", codes[i], got, exponent);
        assert_true(money_currency_valid(codes[i]));
    }
}

static void test_exponent_every_code(void **state)
{
    expect_exponents(codes_exp0, sizeof codes_exp0 / sizeof *codes_exp0, 0);
    expect_exponents(codes_exp2, sizeof codes_exp2 / sizeof *codes_exp2, 2);
    expect_exponents(codes_exp3, sizeof codes_exp3 / sizeof *codes_exp3, 3);
    expect_exponents(codes_exp4, sizeof codes_exp4 / sizeof *codes_exp4, 4);
}

static void test_exponent_unknown(void **state)
{
    static const char *const unknown[] = {
        /* no minor unit in ISO 4217 ("N.A."), or withdrawn */
        "XAU", "XAG", "XPD", "XPT", "XBA", "XBB", "XBC", "XBD", "XDR", "XSU", "XUA", "XTS",
        "XXX", "HRK", "ZWL",
        /* not exactly three upper-case letters */
        "usd", "Usd", "uSD", "US", "U", "", "USDX", "US1", "U$D", "US ", " US", "ABC", "AAA",
        "ZZZ",
    };
    for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++) {
        if (money_exponent(unknown[i], strlen(unknown[i])) != -1)
            fail_msg("money_exponent(\"%s\") should be -1", unknown[i]);
        if (money_currency_valid(unknown[i]))
            fail_msg("money_currency_valid(\"%s\") should be false", unknown[i]);
    }
    assert_int_equal(money_exponent(NULL, 3), -1);
    assert_false(money_currency_valid(NULL));
    /* An embedded NUL is not a letter. */
    assert_int_equal(money_exponent("US\0", 3), -1);
    /* len decides, not the terminator. */
    assert_int_equal(money_exponent("USDX", 3), 2);
    assert_int_equal(money_exponent("USD", 2), -1);
}

struct arith_case {
    int64_t a, b;
    int rc;
    int64_t want;
};

typedef int (*arith_fn)(int64_t, int64_t, int64_t *);

static void run_arith(const char *name, arith_fn fn, const struct arith_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int64_t out = UNTOUCHED;
        int rc = fn(cases[i].a, cases[i].b, &out);
        int64_t want = cases[i].rc == PAYQ_OK ? cases[i].want : UNTOUCHED;
        if (rc != cases[i].rc || out != want)
            fail_msg("%s(%lld, %lld): rc %d out %lld, want rc %d out %lld", name,
                     (long long)cases[i].a, (long long)cases[i].b, rc, (long long)out,
                     cases[i].rc, (long long)want);
    }
}

static void test_add(void **state)
{
    static const struct arith_case cases[] = {
        { 1, 2, PAYQ_OK, 3 },
        { -5, 3, PAYQ_OK, -2 },
        { INT64_MAX, 0, PAYQ_OK, INT64_MAX },
        { INT64_MAX - 1, 1, PAYQ_OK, INT64_MAX },
        { INT64_MAX, 1, PAYQ_ERR_OVERFLOW, 0 },
        { INT64_MIN, -1, PAYQ_ERR_OVERFLOW, 0 },
        { INT64_MIN, INT64_MAX, PAYQ_OK, -1 },
        { INT64_MAX, INT64_MAX, PAYQ_ERR_OVERFLOW, 0 },
    };
    run_arith("money_add", money_add, cases, sizeof cases / sizeof *cases);
}

static void test_sub(void **state)
{
    static const struct arith_case cases[] = {
        { 5, 3, PAYQ_OK, 2 },
        { 3, 5, PAYQ_OK, -2 },
        { INT64_MIN + 1, 1, PAYQ_OK, INT64_MIN },
        { INT64_MIN, 1, PAYQ_ERR_OVERFLOW, 0 },
        { INT64_MAX, -1, PAYQ_ERR_OVERFLOW, 0 },
        { 0, INT64_MIN, PAYQ_ERR_OVERFLOW, 0 },
        { -1, INT64_MIN, PAYQ_OK, INT64_MAX },
    };
    run_arith("money_sub", money_sub, cases, sizeof cases / sizeof *cases);
}

static void test_mul(void **state)
{
    static const struct arith_case cases[] = {
        { 6, 7, PAYQ_OK, 42 },
        { -6, 7, PAYQ_OK, -42 },
        { INT64_MAX, 1, PAYQ_OK, INT64_MAX },
        { INT64_MAX, 2, PAYQ_ERR_OVERFLOW, 0 },
        { INT64_MIN, -1, PAYQ_ERR_OVERFLOW, 0 },
        { INT64_MIN, 1, PAYQ_OK, INT64_MIN },
        { MONEY_AMOUNT_MAX, 10000, PAYQ_ERR_OVERFLOW, 0 },
        { MONEY_AMOUNT_MAX, 9000, PAYQ_OK, INT64_C(9000000000000000000) },
        { INT64_C(3037000500), INT64_C(3037000500), PAYQ_ERR_OVERFLOW, 0 },
        { INT64_C(3037000499), INT64_C(3037000499), PAYQ_OK, INT64_C(9223372030926249001) },
    };
    run_arith("money_mul", money_mul, cases, sizeof cases / sizeof *cases);
}

static void test_check_amount(void **state)
{
    static const struct {
        int64_t amount;
        int rc;
    } cases[] = {
        { 0, PAYQ_ERR_RANGE },
        { 1, PAYQ_OK },
        { 1999, PAYQ_OK },
        { INT64_C(1000000000000000), PAYQ_OK },
        { INT64_C(1000000000000001), PAYQ_ERR_RANGE },
        { -1, PAYQ_ERR_RANGE },
        { INT64_MIN, PAYQ_ERR_RANGE },
        { INT64_MAX, PAYQ_ERR_RANGE },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        if (money_check_amount(cases[i].amount) != cases[i].rc)
            fail_msg("money_check_amount(%lld) != %d", (long long)cases[i].amount, cases[i].rc);
}

static void test_fee(void **state)
{
    static const struct {
        int64_t amount;
        int bps;
        int64_t fixed;
        int rc;
        int64_t fee;
    } cases[] = {
        /* 2.5% + 30: the usual card fee */
        { 1000, 250, 30, PAYQ_OK, 55 },
        { 10000, 290, 30, PAYQ_OK, 320 },
        /* half up at the .5 boundary, down just below it */
        { 50, 100, 0, PAYQ_OK, 1 },   /* 0.5 */
        { 49, 100, 0, PAYQ_OK, 0 },   /* 0.49 */
        { 150, 100, 0, PAYQ_OK, 2 },  /* 1.5 */
        { 149, 100, 0, PAYQ_OK, 1 },  /* 1.49 */
        { 151, 100, 0, PAYQ_OK, 2 },  /* 1.51 */
        { 1, 5000, 0, PAYQ_OK, 1 },   /* 0.5 */
        { 3, 5000, 0, PAYQ_OK, 2 },   /* 1.5 */
        { 1, 4999, 0, PAYQ_OK, 0 },   /* 0.4999 */
        { 20001, 1, 0, PAYQ_OK, 2 },  /* 2.0001 */
        { 25000, 1, 0, PAYQ_OK, 3 },  /* 2.5 */
        { 24999, 1, 0, PAYQ_OK, 2 },  /* 2.4999 */
        /* bps 0 and 10000 */
        { 12345, 0, 0, PAYQ_OK, 0 },
        { 12345, 0, 30, PAYQ_OK, 30 },
        { 12345, 10000, 0, PAYQ_OK, 12345 },
        /* never more than the amount */
        { 12345, 10000, 1, PAYQ_OK, 12345 },
        { 10, 290, 30, PAYQ_OK, 10 },
        { 100, 0, INT64_MAX, PAYQ_OK, 100 },
        { 0, 250, 30, PAYQ_OK, 0 },
        /* the largest contract amount: amount * bps is 10^19 > INT64_MAX */
        { INT64_C(1000000000000000), 10000, 0, PAYQ_OK, INT64_C(1000000000000000) },
        { INT64_C(1000000000000000), 9999, 0, PAYQ_OK, INT64_C(999900000000000) },
        { INT64_C(999999999999999), 9999, 0, PAYQ_OK, INT64_C(999899999999999) },
        { INT64_C(999999999999999), 5000, 0, PAYQ_OK, INT64_C(500000000000000) },
        { INT64_C(1000000000000000), 290, 30, PAYQ_OK, INT64_C(29000000000030) },
        { INT64_MAX, 10000, 0, PAYQ_OK, INT64_MAX },
        { INT64_MAX, 1, INT64_MAX, PAYQ_OK, INT64_MAX },
        { INT64_MAX, 5000, 0, PAYQ_OK, INT64_C(4611686018427387904) },
        /* out of range arguments */
        { -1, 250, 30, PAYQ_ERR_RANGE, 0 },
        { INT64_MIN, 0, 0, PAYQ_ERR_RANGE, 0 },
        { 1000, -1, 0, PAYQ_ERR_RANGE, 0 },
        { 1000, 10001, 0, PAYQ_ERR_RANGE, 0 },
        { 1000, 250, -1, PAYQ_ERR_RANGE, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int64_t fee = UNTOUCHED;
        int rc = money_fee(cases[i].amount, cases[i].bps, cases[i].fixed, &fee);
        int64_t want = cases[i].rc == PAYQ_OK ? cases[i].fee : UNTOUCHED;
        if (rc != cases[i].rc || fee != want)
            fail_msg("money_fee(%lld, %d, %lld): rc %d fee %lld, want rc %d fee %lld",
                     (long long)cases[i].amount, cases[i].bps, (long long)cases[i].fixed, rc,
                     (long long)fee, cases[i].rc, (long long)want);
    }
}

static void test_format(void **state)
{
    static const struct {
        int64_t amount;
        const char *currency;
        int rc;
        const char *text;
    } cases[] = {
        { 1234, "USD", PAYQ_OK, "12.34 USD" },
        { -5, "USD", PAYQ_OK, "-0.05 USD" },
        { 0, "USD", PAYQ_OK, "0.00 USD" },
        { 100, "EUR", PAYQ_OK, "1.00 EUR" },
        { 1000, "JPY", PAYQ_OK, "1000 JPY" },
        { -1000, "JPY", PAYQ_OK, "-1000 JPY" },
        { 1234, "KWD", PAYQ_OK, "1.234 KWD" },
        { -1, "KWD", PAYQ_OK, "-0.001 KWD" },
        { 5, "CLF", PAYQ_OK, "0.0005 CLF" },
        { INT64_MIN, "USD", PAYQ_OK, "-92233720368547758.08 USD" },
        { INT64_MAX, "USD", PAYQ_OK, "92233720368547758.07 USD" },
        { INT64_MIN, "JPY", PAYQ_OK, "-9223372036854775808 JPY" },
        { INT64_MIN, "UYW", PAYQ_OK, "-922337203685477.5808 UYW" },
        { 1234, "usd", PAYQ_ERR_CURRENCY, NULL },
        { 1234, "XAU", PAYQ_ERR_CURRENCY, NULL },
        { 1234, "", PAYQ_ERR_CURRENCY, NULL },
        { 1234, NULL, PAYQ_ERR_CURRENCY, NULL },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char buf[64] = "untouched";
        int rc = money_format(cases[i].amount, cases[i].currency, buf, sizeof buf);
        const char *want = cases[i].rc == PAYQ_OK ? cases[i].text : "untouched";
        if (rc != cases[i].rc || strcmp(buf, want) != 0)
            fail_msg("money_format(%lld, %s): rc %d \"%s\", want rc %d \"%s\"",
                     (long long)cases[i].amount,
                     cases[i].currency ? cases[i].currency : "NULL", rc, buf, cases[i].rc,
                     want);
    }
}

static void test_format_small_buffer(void **state)
{
    char buf[16];

    /* "12.34 USD" is 9 chars + NUL: 10 bytes fit, 9 do not. */
    memset(buf, 'x', sizeof buf);
    assert_int_equal(money_format(1234, "USD", buf, 10), PAYQ_OK);
    assert_string_equal(buf, "12.34 USD");

    memset(buf, 'x', sizeof buf);
    assert_int_equal(money_format(1234, "USD", buf, 9), PAYQ_ERR_RANGE);
    assert_string_equal(buf, "");
    assert_int_equal(buf[1], 'x'); /* nothing written past the empty string */

    memset(buf, 'x', sizeof buf);
    assert_int_equal(money_format(1234, "USD", buf, 1), PAYQ_ERR_RANGE);
    assert_string_equal(buf, "");

    memset(buf, 'x', sizeof buf);
    assert_int_equal(money_format(1234, "USD", buf, 0), PAYQ_ERR_RANGE);
    assert_int_equal(buf[0], 'x');
    assert_int_equal(money_format(1234, "USD", NULL, 10), PAYQ_ERR_RANGE);
}

static void test_parse(void **state)
{
    static const struct {
        const char *text;
        const char *currency;
        int rc;
        int64_t want;
    } cases[] = {
        { "12.34", "USD", PAYQ_OK, 1234 },
        { "12.3", "USD", PAYQ_OK, 1230 },
        { "12", "USD", PAYQ_OK, 1200 },
        { "0.5", "USD", PAYQ_OK, 50 },
        { "0.05", "USD", PAYQ_OK, 5 },
        { "0", "USD", PAYQ_OK, 0 },
        { "007", "USD", PAYQ_OK, 700 },
        { "5", "JPY", PAYQ_OK, 5 },
        { "1.234", "KWD", PAYQ_OK, 1234 },
        { "0.0001", "CLF", PAYQ_OK, 1 },
        { "92233720368547758.07", "USD", PAYQ_OK, INT64_MAX },
        { "9223372036854775807", "JPY", PAYQ_OK, INT64_MAX },
        /* too many fraction digits for the currency */
        { "1.234", "USD", PAYQ_ERR_INVALID, 0 },
        { "1.5", "JPY", PAYQ_ERR_INVALID, 0 },
        { "1.0", "JPY", PAYQ_ERR_INVALID, 0 },
        /* signs, spaces, exponents, empty parts, garbage */
        { "-1", "USD", PAYQ_ERR_INVALID, 0 },
        { "+1", "USD", PAYQ_ERR_INVALID, 0 },
        { " 1", "USD", PAYQ_ERR_INVALID, 0 },
        { "1 ", "USD", PAYQ_ERR_INVALID, 0 },
        { "1e3", "USD", PAYQ_ERR_INVALID, 0 },
        { "1.", "USD", PAYQ_ERR_INVALID, 0 },
        { ".5", "USD", PAYQ_ERR_INVALID, 0 },
        { "", "USD", PAYQ_ERR_INVALID, 0 },
        { ".", "USD", PAYQ_ERR_INVALID, 0 },
        { "1,00", "USD", PAYQ_ERR_INVALID, 0 },
        { "1.2.3", "USD", PAYQ_ERR_INVALID, 0 },
        { "0x10", "USD", PAYQ_ERR_INVALID, 0 },
        { "abc", "USD", PAYQ_ERR_INVALID, 0 },
        { "12.34 USD", "USD", PAYQ_ERR_INVALID, 0 },
        { "99999999999999999999x", "USD", PAYQ_ERR_INVALID, 0 },
        /* beyond int64 */
        { "92233720368547758.08", "USD", PAYQ_ERR_OVERFLOW, 0 },
        { "92233720368547759", "USD", PAYQ_ERR_OVERFLOW, 0 },
        { "9223372036854775808", "JPY", PAYQ_ERR_OVERFLOW, 0 },
        { "99999999999999999999999999999", "JPY", PAYQ_ERR_OVERFLOW, 0 },
        /* unknown currency */
        { "12.34", "usd", PAYQ_ERR_CURRENCY, 0 },
        { "12.34", "XAU", PAYQ_ERR_CURRENCY, 0 },
        { "12.34", NULL, PAYQ_ERR_CURRENCY, 0 },
        { NULL, "USD", PAYQ_ERR_INVALID, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int64_t out = UNTOUCHED;
        int rc = money_parse(cases[i].text, cases[i].currency, &out);
        int64_t want = cases[i].rc == PAYQ_OK ? cases[i].want : UNTOUCHED;
        if (rc != cases[i].rc || out != want)
            fail_msg("money_parse(\"%s\", %s): rc %d out %lld, want rc %d out %lld",
                     cases[i].text ? cases[i].text : "NULL",
                     cases[i].currency ? cases[i].currency : "NULL", rc, (long long)out,
                     cases[i].rc, (long long)want);
    }
}

static void test_format_parse_round_trip(void **state)
{
    static const char *const currencies[] = { "USD", "JPY", "KWD", "CLF" };
    static const int64_t amounts[] = { 0, 1, 9, 10, 99, 100, 12345, INT64_C(1000000000000000),
                                       INT64_MAX };
    for (size_t c = 0; c < sizeof currencies / sizeof *currencies; c++) {
        for (size_t a = 0; a < sizeof amounts / sizeof *amounts; a++) {
            char buf[64];
            assert_int_equal(money_format(amounts[a], currencies[c], buf, sizeof buf), PAYQ_OK);
            char *space = strchr(buf, ' ');
            assert_non_null(space);
            *space = '\0';
            int64_t back = UNTOUCHED;
            assert_int_equal(money_parse(buf, currencies[c], &back), PAYQ_OK);
            if (back != amounts[a])
                fail_msg("%s %s parsed back as %lld", buf, currencies[c], (long long)back);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exponent_every_code),
        cmocka_unit_test(test_exponent_unknown),
        cmocka_unit_test(test_add),
        cmocka_unit_test(test_sub),
        cmocka_unit_test(test_mul),
        cmocka_unit_test(test_check_amount),
        cmocka_unit_test(test_fee),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_format_small_buffer),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_format_parse_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
