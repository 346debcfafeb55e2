/*
 * money.c - ISO 4217 exponents and exact integer arithmetic on minor units.
 *
 * Every amount is an int64 count of minor units; nothing here touches floating
 * point, so a value read from a message is the value posted to the ledger.
 * Arithmetic reports overflow instead of wrapping, because a wrapped balance
 * is money created or destroyed.
 */
#include "money.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct currency {
    char code[4];
    int exponent;
};

/*
 * ISO 4217 List One, active codes with a defined minor unit, as of 2025.
 * Codes whose minor unit is "N.A." (precious metals XAU XAG XPD XPT, the
 * bond-market units XBA..XBD, XDR, XSU, XUA, the test code XTS and XXX) are
 * left out: they have no minor unit to count in. Withdrawn codes (HRK since
 * Croatia joined the euro, ZWL replaced by ZWG) are left out so that nothing
 * new is opened in them. ANG, SLL and CUC are still listed by ISO while their
 * successors (XCG, SLE) take over, so both are accepted.
 *
 * Sorted by code: money_exponent() relies on it for bsearch, and
 * test_money checks the order.
 */
static const struct currency currencies[] = {
    { "AED", 2 }, { "AFN", 2 }, { "ALL", 2 }, { "AMD", 2 }, { "ANG", 2 },
    { "AOA", 2 }, { "ARS", 2 }, { "AUD", 2 }, { "AWG", 2 }, { "AZN", 2 },
    { "BAM", 2 }, { "BBD", 2 }, { "BDT", 2 }, { "BGN", 2 }, { "BHD", 3 },
    { "BIF", 0 }, { "BMD", 2 }, { "BND", 2 }, { "BOB", 2 }, { "BOV", 2 },
    { "BRL", 2 }, { "BSD", 2 }, { "BTN", 2 }, { "BWP", 2 }, { "BYN", 2 },
    { "BZD", 2 }, { "CAD", 2 }, { "CDF", 2 }, { "CHE", 2 }, { "CHF", 2 },
    { "CHW", 2 }, { "CLF", 4 }, { "CLP", 0 }, { "CNY", 2 }, { "COP", 2 },
    { "COU", 2 }, { "CRC", 2 }, { "CUC", 2 }, { "CUP", 2 }, { "CVE", 2 },
    { "CZK", 2 }, { "DJF", 0 }, { "DKK", 2 }, { "DOP", 2 }, { "DZD", 2 },
    { "EGP", 2 }, { "ERN", 2 }, { "ETB", 2 }, { "EUR", 2 }, { "FJD", 2 },
    { "FKP", 2 }, { "GBP", 2 }, { "GEL", 2 }, { "GHS", 2 }, { "GIP", 2 },
    { "GMD", 2 }, { "GNF", 0 }, { "GTQ", 2 }, { "GYD", 2 }, { "HKD", 2 },
    { "HNL", 2 }, { "HTG", 2 }, { "HUF", 2 }, { "IDR", 2 }, { "ILS", 2 },
    { "INR", 2 }, { "IQD", 3 }, { "IRR", 2 }, { "ISK", 0 }, { "JMD", 2 },
    { "JOD", 3 }, { "JPY", 0 }, { "KES", 2 }, { "KGS", 2 }, { "KHR", 2 },
    { "KMF", 0 }, { "KPW", 2 }, { "KRW", 0 }, { "KWD", 3 }, { "KYD", 2 },
    { "KZT", 2 }, { "LAK", 2 }, { "LBP", 2 }, { "LKR", 2 }, { "LRD", 2 },
    { "LSL", 2 }, { "LYD", 3 }, { "MAD", 2 }, { "MDL", 2 }, { "MGA", 2 },
    { "MKD", 2 }, { "MMK", 2 }, { "MNT", 2 }, { "MOP", 2 }, { "MRU", 2 },
    { "MUR", 2 }, { "MVR", 2 }, { "MWK", 2 }, { "MXN", 2 }, { "MXV", 2 },
    { "MYR", 2 }, { "MZN", 2 }, { "NAD", 2 }, { "NGN", 2 }, { "NIO", 2 },
    { "NOK", 2 }, { "NPR", 2 }, { "NZD", 2 }, { "OMR", 3 }, { "PAB", 2 },
    { "PEN", 2 }, { "PGK", 2 }, { "PHP", 2 }, { "PKR", 2 }, { "PLN", 2 },
    { "PYG", 0 }, { "QAR", 2 }, { "RON", 2 }, { "RSD", 2 }, { "RUB", 2 },
    { "RWF", 0 }, { "SAR", 2 }, { "SBD", 2 }, { "SCR", 2 }, { "SDG", 2 },
    { "SEK", 2 }, { "SGD", 2 }, { "SHP", 2 }, { "SLE", 2 }, { "SLL", 2 },
    { "SOS", 2 }, { "SRD", 2 }, { "SSP", 2 }, { "STN", 2 }, { "SVC", 2 },
    { "SYP", 2 }, { "SZL", 2 }, { "THB", 2 }, { "TJS", 2 }, { "TMT", 2 },
    { "TND", 3 }, { "TOP", 2 }, { "TRY", 2 }, { "TTD", 2 }, { "TWD", 2 },
    { "TZS", 2 }, { "UAH", 2 }, { "UGX", 0 }, { "USD", 2 }, { "USN", 2 },
    { "UYI", 0 }, { "UYU", 2 }, { "UYW", 4 }, { "UZS", 2 }, { "VED", 2 },
    { "VES", 2 }, { "VND", 0 }, { "VUV", 0 }, { "WST", 2 }, { "XAF", 0 },
    { "XCD", 2 }, { "XCG", 2 }, { "XOF", 0 }, { "XPF", 0 }, { "YER", 2 },
    { "ZAR", 2 }, { "ZMW", 2 }, { "ZWG", 2 },
};

/* The largest exponent in the table (CLF, UYW); bounds the power-of-ten table. */
#define MONEY_EXPONENT_MAX 4

static const int64_t pow10_table[MONEY_EXPONENT_MAX + 1] = { 1, 10, 100, 1000, 10000 };

static int currency_cmp(const void *key, const void *elem)
{
    const struct currency *c = elem;
    return memcmp(key, c->code, 3);
}

int money_exponent(const char *code, size_t len)
{
    if (code == NULL || len != 3)
        return -1;
    /* Only upper-case ASCII: "usd" is a typo, not a currency. */
    for (size_t i = 0; i < 3; i++)
        if (code[i] < 'A' || code[i] > 'Z')
            return -1;
    const struct currency *c = bsearch(code, currencies,
                                       sizeof currencies / sizeof currencies[0],
                                       sizeof currencies[0], currency_cmp);
    return c != NULL ? c->exponent : -1;
}

int money_currency_valid(const char *code)
{
    return code != NULL && money_exponent(code, strlen(code)) >= 0;
}

int money_check_amount(int64_t amount)
{
    if (amount < MONEY_AMOUNT_MIN || amount > MONEY_AMOUNT_MAX)
        return PAYQ_ERR_RANGE;
    return PAYQ_OK;
}

int money_add(int64_t a, int64_t b, int64_t *out)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return PAYQ_ERR_OVERFLOW;
    *out = r;
    return PAYQ_OK;
}

int money_sub(int64_t a, int64_t b, int64_t *out)
{
    int64_t r;
    if (__builtin_sub_overflow(a, b, &r))
        return PAYQ_ERR_OVERFLOW;
    *out = r;
    return PAYQ_OK;
}

int money_mul(int64_t a, int64_t b, int64_t *out)
{
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r))
        return PAYQ_ERR_OVERFLOW;
    *out = r;
    return PAYQ_OK;
}

/*
 * amount * bps can exceed INT64_MAX (10^15 * 10^4 = 10^19), so the product is
 * split: amount = q * 10000 + r gives amount * bps / 10000 = q * bps +
 * r * bps / 10000, where q * bps <= amount and r * bps < 10^8. The result is
 * exact for every non-negative int64 amount, so PAYQ_ERR_OVERFLOW never
 * happens in practice; the cap at `amount` also keeps `+ fixed` in range.
 */
int money_fee(int64_t amount, int bps, int64_t fixed, int64_t *fee)
{
    if (amount < 0 || bps < 0 || bps > 10000 || fixed < 0)
        return PAYQ_ERR_RANGE;

    int64_t q = amount / 10000;
    int64_t r = amount % 10000;
    int64_t part = q * bps + (r * bps) / 10000;
    int64_t rem = (r * bps) % 10000;
    if (rem * 2 >= 10000) /* half up: exactly .5 rounds to the next unit */
        part++;

    int64_t result = fixed >= amount - part ? amount : part + fixed;
    *fee = result;
    return PAYQ_OK;
}

/*
 * Longest output: "-" + 19 integer digits + "." + 4 fraction digits + " " +
 * code + NUL stays well under this.
 */
#define MONEY_FORMAT_MAX 48

int money_format(int64_t amount, const char *currency, char *buf, size_t len)
{
    int exp = money_currency_valid(currency) ? money_exponent(currency, 3) : -1;
    if (exp < 0)
        return PAYQ_ERR_CURRENCY;
    if (buf == NULL || len == 0)
        return PAYQ_ERR_RANGE;

    /* Negate in unsigned arithmetic: -INT64_MIN does not fit in an int64. */
    uint64_t mag = amount < 0 ? 0u - (uint64_t)amount : (uint64_t)amount;
    uint64_t unit = (uint64_t)pow10_table[exp];
    const char *sign = amount < 0 ? "-" : "";
    char tmp[MONEY_FORMAT_MAX];
    int n;
    if (exp == 0)
        n = snprintf(tmp, sizeof tmp, "%s%llu %s", sign, (unsigned long long)mag, currency);
    else
        n = snprintf(tmp, sizeof tmp, "%s%llu.%0*llu %s", sign,
                     (unsigned long long)(mag / unit), exp,
                     (unsigned long long)(mag % unit), currency);
    if (n < 0 || (size_t)n >= sizeof tmp || (size_t)n >= len) {
        buf[0] = '\0';
        return PAYQ_ERR_RANGE;
    }
    memcpy(buf, tmp, (size_t)n + 1);
    return PAYQ_OK;
}

/* Counts leading ASCII digits of s. */
static size_t digit_run(const char *s)
{
    size_t n = 0;
    while (s[n] >= '0' && s[n] <= '9')
        n++;
    return n;
}

/* Accumulates the digits s[0..n) into *acc, overflow-checked. */
static int accumulate(const char *s, size_t n, int64_t *acc)
{
    int64_t v = *acc;
    for (size_t i = 0; i < n; i++) {
        if (money_mul(v, 10, &v) != PAYQ_OK || money_add(v, s[i] - '0', &v) != PAYQ_OK)
            return PAYQ_ERR_OVERFLOW;
    }
    *acc = v;
    return PAYQ_OK;
}

int money_parse(const char *text, const char *currency, int64_t *out)
{
    int exp = money_currency_valid(currency) ? money_exponent(currency, 3) : -1;
    if (exp < 0)
        return PAYQ_ERR_CURRENCY;
    if (text == NULL)
        return PAYQ_ERR_INVALID;

    /* Check the whole syntax first so that "999...9x" is invalid, not overflow. */
    size_t nint = digit_run(text);
    if (nint == 0)
        return PAYQ_ERR_INVALID;
    const char *frac = text + nint;
    size_t nfrac = 0;
    if (*frac == '.') {
        frac++;
        nfrac = digit_run(frac);
        if (nfrac == 0 || nfrac > (size_t)exp)
            return PAYQ_ERR_INVALID;
    }
    if (frac[nfrac] != '\0')
        return PAYQ_ERR_INVALID;

    int64_t v = 0;
    if (accumulate(text, nint, &v) != PAYQ_OK || accumulate(frac, nfrac, &v) != PAYQ_OK)
        return PAYQ_ERR_OVERFLOW;
    /* "12.3" USD has one fraction digit of two: scale by the missing ones. */
    if (money_mul(v, pow10_table[(size_t)exp - nfrac], &v) != PAYQ_OK)
        return PAYQ_ERR_OVERFLOW;
    *out = v;
    return PAYQ_OK;
}
