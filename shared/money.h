/*
 * money.h - amounts of money as int64 minor units, with the ISO 4217 table.
 *
 * An amount is always an integer count of the currency's minor unit (cents for
 * USD, yen for JPY, fils for KWD). No floating point is used anywhere. All
 * arithmetic is overflow-checked and returns PAYQ_ERR_OVERFLOW instead of
 * wrapping. Functions write their out-parameters only on success.
 */
#ifndef PAYQ_MONEY_H
#define PAYQ_MONEY_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* Bounds of a command amount (CONTRACT.md): 1 <= amount <= 10^15. */
#define MONEY_AMOUNT_MIN 1LL
#define MONEY_AMOUNT_MAX 1000000000000000LL

/* Number of minor-unit digits of an active ISO 4217 currency (USD 2, JPY 0,
 * KWD 3, CLF 4, ...), or -1 when the code is not exactly three upper-case
 * letters of a currency in the table. `code` need not be NUL-terminated after
 * its three letters only if len says so: pass len = strlen(code) for C strings. */
int money_exponent(const char *code, size_t len);

/* True when `code` (NUL-terminated) is a known currency. */
int money_currency_valid(const char *code);

/* PAYQ_OK when MONEY_AMOUNT_MIN <= amount <= MONEY_AMOUNT_MAX, else PAYQ_ERR_RANGE. */
int money_check_amount(int64_t amount) PAYQ_MUSTCHECK;

/* *out = a + b, a - b, a * b; PAYQ_ERR_OVERFLOW (out untouched) on overflow. */
int money_add(int64_t a, int64_t b, int64_t *out) PAYQ_MUSTCHECK;
int money_sub(int64_t a, int64_t b, int64_t *out) PAYQ_MUSTCHECK;
int money_mul(int64_t a, int64_t b, int64_t *out) PAYQ_MUSTCHECK;

/* The platform fee for `amount`: basis points plus a fixed fee, in minor
 * units. Rounding rule: the basis-point part is rounded half up (away from
 * zero for the .5 case) to the minor unit; the fee never exceeds the amount.
 * bps in 0..10000, fixed >= 0; PAYQ_ERR_RANGE / PAYQ_ERR_OVERFLOW otherwise. */
int money_fee(int64_t amount, int bps, int64_t fixed, int64_t *fee) PAYQ_MUSTCHECK;

/* Writes the amount as a decimal in major units followed by the code:
 * 1234 USD -> "12.34 USD", -5 USD -> "-0.05 USD", 1000 JPY -> "1000 JPY",
 * 1234 KWD -> "1.234 KWD", INT64_MIN handled. PAYQ_ERR_CURRENCY for an unknown
 * code, PAYQ_ERR_RANGE when buf is too small (buf then holds ""). */
int money_format(int64_t amount, const char *currency, char *buf, size_t len) PAYQ_MUSTCHECK;

/* Parses a decimal in major units ("12.34", "12", "0.5") into minor units of
 * `currency`: "12.34" USD -> 1234, "12.3" USD -> 1230, "5" JPY -> 5. Rejects
 * (PAYQ_ERR_INVALID) signs, spaces, exponents, empty parts and more fraction
 * digits than the currency has ("1.234" USD, "1.5" JPY); PAYQ_ERR_OVERFLOW
 * beyond int64; PAYQ_ERR_CURRENCY for an unknown code. */
int money_parse(const char *text, const char *currency, int64_t *out) PAYQ_MUSTCHECK;

#endif
