/*
 * test_cmd.c - unit tests of shared/cmd.c: what the worker accepts as a
 * command, which rejection code everything else gets, and that no card
 * number survives into a cmd_t or an error message.
 *
 * Bodies are written with ' for " to stay readable; parse_q() swaps them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cmd.h"

#define BODY_TEXT_MAX 4096

struct result {
    int rc;
    cmd_t cmd;
    struct cmd_error err;
};

static void unquote(const char *src, char *dst, size_t size)
{
    size_t n = strlen(src);
    assert_true(n < size);
    for (size_t i = 0; i <= n; i++)
        dst[i] = src[i] == '\'' ? '"' : src[i];
}

/* Parses a delivery; *r starts filled with a pattern so "untouched" is checkable. */
static void parse_raw(const char *rk, const char *ct, const char *type, const void *body,
                      size_t len, struct result *r)
{
    memset(r, 0x5a, sizeof *r);
    r->rc = cmd_parse(rk, rk ? strlen(rk) : 0, ct, ct ? strlen(ct) : 0, type,
                      type ? strlen(type) : 0, body, len, &r->cmd, &r->err);
}

static void parse_q(const char *rk, const char *body_q, struct result *r)
{
    char body[BODY_TEXT_MAX];
    unquote(body_q, body, sizeof body);
    parse_raw(rk, NULL, NULL, body, strlen(body), r);
}

static bool has_long_digit_run(const char *s, size_t min)
{
    size_t run = 0;
    for (; *s; s++) {
        run = (*s >= '0' && *s <= '9') ? run + 1 : 0;
        if (run >= min)
            return true;
    }
    return false;
}

static void expect_ok(const struct result *r)
{
    if (r->rc != PAYQ_OK)
        fail_msg("expected success, got rc %d %s: %s", r->rc, cmd_reject_code(r->err.code),
                 r->err.message);
    assert_non_null(r->cmd.body);
    assert_true(json_is_object(r->cmd.body));
    assert_ptr_equal(r->cmd.id, cmd_business_id(&r->cmd));
}

/* A rejection: the code, a message that names `needle`, *out untouched. */
static void expect_reject(const struct result *r, cmd_reject_t code, const char *needle)
{
    struct result pattern;
    memset(&pattern, 0x5a, sizeof pattern);
    if (r->rc != PAYQ_ERR_INVALID || r->err.code != code)
        fail_msg("expected %s, got rc %d %s: %.255s", cmd_reject_code(code), r->rc,
                 r->rc == PAYQ_ERR_INVALID ? cmd_reject_code(r->err.code) : "(no error)",
                 r->rc == PAYQ_ERR_INVALID ? r->err.message : "");
    size_t len = strnlen(r->err.message, sizeof r->err.message);
    assert_true(len > 0 && len < sizeof r->err.message);
    if (needle != NULL && strstr(r->err.message, needle) == NULL)
        fail_msg("message \"%s\" does not mention \"%s\"", r->err.message, needle);
    /* No card number, nor a long piece of one, is ever echoed. */
    if (has_long_digit_run(r->err.message, 7))
        fail_msg("message echoes a long number: %s", r->err.message);
    assert_memory_equal(&r->cmd, &pattern.cmd, sizeof r->cmd);
}

static void reject_q(const char *rk, const char *body_q, cmd_reject_t code, const char *needle)
{
    struct result r;
    parse_q(rk, body_q, &r);
    expect_reject(&r, code, needle);
}

static void accept_q(const char *rk, const char *body_q)
{
    struct result r;
    parse_q(rk, body_q, &r);
    expect_ok(&r);
    cmd_free(&r.cmd);
}

#define CREATE_OK                                                                            \
    "{'payment_id':'pay_1','amount':1999,'currency':'USD','source':'tok_visa',"              \
    "'destination':'merchant_1','capture':true}"

/* ---- one valid body per command ---------------------------------------- */

static void test_account_open(void **state)
{
    struct result r;
    parse_q("account.open", "{'account':'acct_1','currency':'EUR','kind':'merchant'}", &r);
    expect_ok(&r);
    assert_int_equal(r.cmd.type, CMD_ACCOUNT_OPEN);
    assert_string_equal(r.cmd.account, "acct_1");
    assert_string_equal(r.cmd.currency, "EUR");
    assert_string_equal(r.cmd.kind, "merchant");
    assert_string_equal(r.cmd.id, "acct_1");
    assert_ptr_equal(r.cmd.id, r.cmd.account);
    assert_string_equal(r.cmd.payment_id, "");
    assert_string_equal(r.cmd.deposit_id, "");
    assert_false(r.cmd.has_amount);
    assert_int_equal(json_object_size(r.cmd.body), 3);
    cmd_free(&r.cmd);
    assert_null(r.cmd.body);

    parse_q("account.open", "{'account':'c.1:x-y_Z','currency':'JPY','kind':'customer'}", &r);
    expect_ok(&r);
    assert_string_equal(r.cmd.kind, "customer");
    assert_string_equal(r.cmd.account, "c.1:x-y_Z");
    cmd_free(&r.cmd);
}

static void test_account_deposit(void **state)
{
    struct result r;
    parse_q("account.deposit",
            "{'deposit_id':'dep_9','account':'acct_1','amount':1000000000000000,'currency':'KWD'}",
            &r);
    expect_ok(&r);
    assert_int_equal(r.cmd.type, CMD_ACCOUNT_DEPOSIT);
    assert_string_equal(r.cmd.deposit_id, "dep_9");
    assert_string_equal(r.cmd.account, "acct_1");
    assert_true(r.cmd.has_amount);
    assert_int_equal(r.cmd.amount, INT64_C(1000000000000000));
    assert_string_equal(r.cmd.currency, "KWD");
    assert_ptr_equal(r.cmd.id, r.cmd.deposit_id);
    cmd_free(&r.cmd);
}

static void test_payment_create(void **state)
{
    struct result r;
    parse_q("payment.create",
            "{'payment_id':'pay_1','amount':1999,'currency':'USD','source':'tok_visa',"
            "'destination':'merchant_1','capture':false,'description':'Order #1 \\u00e9',"
            "'metadata':{'order':'o-1','channel':'web'}}",
            &r);
    expect_ok(&r);
    assert_int_equal(r.cmd.type, CMD_PAYMENT_CREATE);
    assert_string_equal(r.cmd.payment_id, "pay_1");
    assert_true(r.cmd.has_amount);
    assert_int_equal(r.cmd.amount, 1999);
    assert_string_equal(r.cmd.currency, "USD");
    assert_string_equal(r.cmd.source, "tok_visa");
    assert_true(r.cmd.source_is_token);
    assert_string_equal(r.cmd.destination, "merchant_1");
    assert_false(r.cmd.capture);
    assert_ptr_equal(r.cmd.id, r.cmd.payment_id);
    assert_string_equal(json_string_value(json_object_get(r.cmd.body, "description")),
                        "Order #1 \xc3\xa9");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(r.cmd.body, "metadata"), "channel")),
        "web");
    cmd_free(&r.cmd);

    /* A wallet source is an account id, not a token. */
    parse_q("payment.create",
            "{'payment_id':'pay_2','amount':1,'currency':'JPY','source':'wallet_7',"
            "'destination':'merchant_1','capture':true}",
            &r);
    expect_ok(&r);
    assert_string_equal(r.cmd.source, "wallet_7");
    assert_false(r.cmd.source_is_token);
    assert_true(r.cmd.capture);
    cmd_free(&r.cmd);

    /* Digits failing Luhn are an ordinary account id. */
    parse_q("payment.create",
            "{'payment_id':'pay_3','amount':1,'currency':'USD','source':'4242424242424241',"
            "'destination':'merchant_1','capture':true}",
            &r);
    expect_ok(&r);
    assert_string_equal(r.cmd.source, "4242424242424241");
    cmd_free(&r.cmd);
}

static void test_payment_capture(void **state)
{
    struct result r;
    parse_q("payment.capture", "{'payment_id':'pay_1','amount':500}", &r);
    expect_ok(&r);
    assert_int_equal(r.cmd.type, CMD_PAYMENT_CAPTURE);
    assert_string_equal(r.cmd.payment_id, "pay_1");
    assert_true(r.cmd.has_amount);
    assert_int_equal(r.cmd.amount, 500);
    assert_ptr_equal(r.cmd.id, r.cmd.payment_id);
    cmd_free(&r.cmd);

    parse_q("payment.capture", "{'payment_id':'pay_1'}", &r);
    expect_ok(&r);
    assert_false(r.cmd.has_amount);
    assert_int_equal(r.cmd.amount, 0);
    cmd_free(&r.cmd);
}

static void test_payment_cancel(void **state)
{
    struct result r;
    parse_q("payment.cancel", " {\n 'payment_id' : 'pay_1' } \n", &r);
    expect_ok(&r);
    assert_int_equal(r.cmd.type, CMD_PAYMENT_CANCEL);
    assert_string_equal(r.cmd.payment_id, "pay_1");
    assert_string_equal(cmd_business_id(&r.cmd), "pay_1");
    assert_false(r.cmd.has_amount);
    cmd_free(&r.cmd);
}

static void test_payment_refund(void **state)
{
    struct result r;
    parse_q("payment.refund",
            "{'refund_id':'ref_1','payment_id':'pay_1','amount':250,'reason':'damaged'}", &r);
    expect_ok(&r);
    assert_int_equal(r.cmd.type, CMD_PAYMENT_REFUND);
    assert_string_equal(r.cmd.refund_id, "ref_1");
    assert_string_equal(r.cmd.payment_id, "pay_1");
    assert_true(r.cmd.has_amount);
    assert_int_equal(r.cmd.amount, 250);
    assert_ptr_equal(r.cmd.id, r.cmd.refund_id);
    cmd_free(&r.cmd);

    parse_q("payment.refund", "{'refund_id':'ref_2','payment_id':'pay_1'}", &r);
    expect_ok(&r);
    assert_false(r.cmd.has_amount);
    assert_string_equal(r.cmd.id, "ref_2");
    cmd_free(&r.cmd);
}

static void test_business_id_survives_copy(void **state)
{
    struct result r;
    parse_q("payment.refund", "{'refund_id':'ref_1','payment_id':'pay_1'}", &r);
    expect_ok(&r);
    cmd_t copy = r.cmd;
    assert_ptr_equal(cmd_business_id(&copy), copy.refund_id);
    assert_string_equal(cmd_business_id(&copy), "ref_1");
    cmd_free(&copy);

    cmd_t zero;
    memset(&zero, 0, sizeof zero);
    assert_string_equal(cmd_business_id(&zero), "");
    assert_string_equal(cmd_business_id(NULL), "");
    cmd_free(&zero);
    cmd_free(NULL);
}

/* ---- envelope ----------------------------------------------------------- */

static void test_content_type(void **state)
{
    static const struct {
        const char *ct;
        bool ok;
    } cases[] = {
        { NULL, true },
        { "application/json", true },
        { "Application/JSON", true },
        { "application/json; charset=utf-8", true },
        { "application/json;charset=UTF-8", true },
        { "application/json ; charset=utf-8", true },
        { "text/plain", false },
        { "application/xml", false },
        { "application/jsonx", false },
        { "application/json-patch+json", false },
        { "application/jso", false },
        { "json", false },
        { "", false },
    };
    char body[BODY_TEXT_MAX];
    unquote("{'payment_id':'pay_1'}", body, sizeof body);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct result r;
        parse_raw("payment.cancel", cases[i].ct, NULL, body, strlen(body), &r);
        if (cases[i].ok) {
            expect_ok(&r);
            cmd_free(&r.cmd);
        } else {
            expect_reject(&r, CMD_REJECT_MALFORMED_JSON, "content type");
        }
    }
}

/* A payment.cancel body padded with spaces to exactly `len` bytes. */
static char *padded_body(size_t len)
{
    static const char head[] = "{\"payment_id\":\"pay_1\"";
    char *body = malloc(len);
    assert_non_null(body);
    memcpy(body, head, sizeof head - 1);
    memset(body + sizeof head - 1, ' ', len - sizeof head);
    body[len - 1] = '}';
    return body;
}

static void test_body_size(void **state)
{
    struct result r;
    char *body = padded_body(CMD_BODY_MAX);
    parse_raw("payment.cancel", NULL, NULL, body, CMD_BODY_MAX, &r);
    expect_ok(&r);
    cmd_free(&r.cmd);
    free(body);

    body = padded_body(CMD_BODY_MAX + 1);
    parse_raw("payment.cancel", NULL, NULL, body, CMD_BODY_MAX + 1, &r);
    expect_reject(&r, CMD_REJECT_SCHEMA_INVALID, "body is 65537 bytes, the limit is 65536");
    free(body);
}

static void test_unknown_command(void **state)
{
    reject_q("payment.refundx", "{}", CMD_REJECT_UNKNOWN_COMMAND, "\"payment.refundx\"");
    reject_q("PAYMENT.CREATE", CREATE_OK, CMD_REJECT_UNKNOWN_COMMAND, "PAYMENT.CREATE");
    reject_q("", "{}", CMD_REJECT_UNKNOWN_COMMAND, "unknown command \"\"");
    reject_q("payment", "{}", CMD_REJECT_UNKNOWN_COMMAND, NULL);

    /* Control bytes and overlong keys are shown safely. */
    char rk[200];
    memset(rk, 'a', sizeof rk - 1);
    rk[sizeof rk - 1] = '\0';
    rk[3] = '\n';
    rk[4] = '\x1b';
    struct result r;
    parse_raw(rk, NULL, NULL, "{}", 2, &r);
    expect_reject(&r, CMD_REJECT_UNKNOWN_COMMAND, "aaa??aaa");
    assert_non_null(strstr(r.err.message, "..."));
    for (const char *p = r.err.message; *p; p++)
        assert_true(*p >= 0x20 && *p <= 0x7e);

    /* A card number as routing key is not echoed (expect_reject checks). */
    parse_raw("4242424242424242", NULL, NULL, "{}", 2, &r);
    expect_reject(&r, CMD_REJECT_UNKNOWN_COMMAND, NULL);

    /* Routing key bytes are taken by length, not up to a NUL. */
    r.rc = cmd_parse("payment.cancelled", 14, NULL, 0, NULL, 0, "{\"payment_id\":\"p\"}", 18,
                     &r.cmd, &r.err);
    expect_ok(&r);
    cmd_free(&r.cmd);
}

static void test_type_property(void **state)
{
    char body[BODY_TEXT_MAX];
    unquote("{'payment_id':'pay_1'}", body, sizeof body);
    struct result r;

    parse_raw("payment.cancel", NULL, "payment.cancel", body, strlen(body), &r);
    expect_ok(&r);
    cmd_free(&r.cmd);

    parse_raw("payment.cancel", NULL, "payment.create", body, strlen(body), &r);
    expect_reject(&r, CMD_REJECT_SCHEMA_INVALID, "type property \"payment.create\"");

    parse_raw("payment.cancel", NULL, "", body, strlen(body), &r);
    expect_reject(&r, CMD_REJECT_SCHEMA_INVALID, "type property");

    parse_raw("payment.cancel", NULL, "payment.cancel2", body, strlen(body), &r);
    expect_reject(&r, CMD_REJECT_SCHEMA_INVALID, "type property");
}

/* ---- JSON --------------------------------------------------------------- */

static void test_not_json(void **state)
{
    static const char *const bodies[] = {
        "not json", "", "   ", "{", "{'payment_id':'pay_1'", "{'payment_id':'pay_1'} x",
        "{'payment_id':'pay_1',}", "{payment_id:'pay_1'}", "{'payment_id':'pay_1'}{}",
        "{'payment_id':'\\x41'}",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++)
        reject_q("payment.cancel", bodies[i], CMD_REJECT_MALFORMED_JSON, "not valid JSON");
    reject_q("payment.cancel", "{", CMD_REJECT_MALFORMED_JSON, "line 1");
}

static void test_invalid_utf8_and_nul(void **state)
{
    static const struct {
        const char *body;
        size_t len;
    } cases[] = {
        { "{\"payment_id\":\"p\xff\"}", 19 },
        { "{\"payment_id\":\"p\xc3\"}", 19 },         /* truncated sequence */
        { "{\"payment_id\":\"p\xc0\xaf\"}", 20 },     /* overlong '/' */
        { "{\"payment_id\":\"p\xed\xa0\x80\"}", 21 }, /* UTF-16 surrogate */
        { "{\"payment_id\":\"p\\u0000\"}", 24 },      /* escaped NUL */
        { "{\"payment_id\":\"p\0\"}", 19 },           /* raw NUL */
        { "{\"payment_id\":\"p\"}\0", 19 },           /* NUL after the object */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct result r;
        parse_raw("payment.cancel", NULL, NULL, cases[i].body, cases[i].len, &r);
        expect_reject(&r, CMD_REJECT_MALFORMED_JSON, NULL);
    }
}

static void test_duplicate_keys(void **state)
{
    reject_q("payment.cancel", "{'payment_id':'pay_1','payment_id':'pay_2'}",
             CMD_REJECT_MALFORMED_JSON, "duplicate");
    reject_q("payment.create",
             "{'payment_id':'pay_1','amount':1,'currency':'USD','source':'tok_visa',"
             "'destination':'m','capture':true,'metadata':{'a':'1','a':'2'}}",
             CMD_REJECT_MALFORMED_JSON, "duplicate");
}

static void test_top_level_not_object(void **state)
{
    reject_q("payment.cancel", "[{'payment_id':'pay_1'}]", CMD_REJECT_SCHEMA_INVALID,
             "must be a JSON object, not an array");
    reject_q("payment.cancel", "'pay_1'", CMD_REJECT_SCHEMA_INVALID, "not a string");
    reject_q("payment.cancel", "42", CMD_REJECT_SCHEMA_INVALID, "not an integer");
    reject_q("payment.cancel", "null", CMD_REJECT_SCHEMA_INVALID, "not null");
}

static void test_huge_numbers_are_schema_errors(void **state)
{
    reject_q("payment.capture", "{'payment_id':'pay_1','amount':123456789012345678901234567890}",
             CMD_REJECT_SCHEMA_INVALID, "out of range");
    reject_q("payment.capture",
             "{'payment_id':'pay_1','amount':-123456789012345678901234567890}",
             CMD_REJECT_SCHEMA_INVALID, "out of range");
}

/* ---- fields ------------------------------------------------------------- */

static void test_missing_and_unknown_fields(void **state)
{
    reject_q("payment.cancel", "{}", CMD_REJECT_SCHEMA_INVALID, "missing field payment_id");
    reject_q("account.open", "{'account':'a','currency':'USD'}", CMD_REJECT_SCHEMA_INVALID,
             "missing field kind");
    reject_q("payment.create",
             "{'payment_id':'pay_1','amount':1999,'currency':'USD','source':'tok_visa',"
             "'destination':'merchant_1'}",
             CMD_REJECT_SCHEMA_INVALID, "missing field capture");
    /* The typo that would otherwise capture the full amount. */
    reject_q("payment.capture", "{'payment_id':'pay_1','ammount':500}",
             CMD_REJECT_SCHEMA_INVALID, "unknown field ammount");
    reject_q("payment.cancel", "{'payment_id':'pay_1','amount':500}",
             CMD_REJECT_SCHEMA_INVALID, "unknown field amount");
    reject_q("account.open", "{'account':'a','currency':'USD','kind':'customer','x':null}",
             CMD_REJECT_SCHEMA_INVALID, "unknown field x");
}

static void test_amount_rules(void **state)
{
    static const char *const bad[] = {
        "'500'", "10.0", "1e3", "0", "-1", "1000000000000001", "true", "null", "[5]", "{}",
        "9223372036854775807",
    };
    char body[256];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int n = snprintf(body, sizeof body, "{'payment_id':'pay_1','amount':%s}", bad[i]);
        assert_true(n > 0 && (size_t)n < sizeof body);
        reject_q("payment.capture", body, CMD_REJECT_SCHEMA_INVALID, "field amount");
    }
    accept_q("payment.capture", "{'payment_id':'pay_1','amount':1}");
    accept_q("payment.capture", "{'payment_id':'pay_1','amount':1000000000000000}");
}

static void test_currency_rules(void **state)
{
    static const char *const bad[] = { "'usd'", "'ABC'", "'US'", "'USDX'", "'XAU'", "''",
                                       "840", "null" };
    char body[256];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int n = snprintf(body, sizeof body,
                         "{'account':'acct_1','currency':%s,'kind':'customer'}", bad[i]);
        assert_true(n > 0 && (size_t)n < sizeof body);
        reject_q("account.open", body, CMD_REJECT_SCHEMA_INVALID, "field currency");
    }
}

static void test_id_rules(void **state)
{
    static const char *const bad[] = {
        "''", "'a b'", "'a/b'", "'caf\\u00e9'", "'tab\\there'", "42", "true",
        "'01234567890123456789012345678901234567890123456789012345678901234'", /* 65 */
    };
    char body[256];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int n = snprintf(body, sizeof body, "{'payment_id':%s}", bad[i]);
        assert_true(n > 0 && (size_t)n < sizeof body);
        reject_q("payment.cancel", body, CMD_REJECT_SCHEMA_INVALID, "field payment_id");
    }
    /* 64 characters is the limit, inclusive. */
    struct result r;
    parse_q("payment.cancel",
            "{'payment_id':'0123456789012345678901234567890123456789012345678901234567890123'}",
            &r);
    expect_ok(&r);
    assert_int_equal(strlen(r.cmd.payment_id), CMD_ID_MAX);
    cmd_free(&r.cmd);

    reject_q("account.deposit",
             "{'deposit_id':'d 1','account':'acct_1','amount':5,'currency':'USD'}",
             CMD_REJECT_SCHEMA_INVALID, "field deposit_id");
    reject_q("payment.refund", "{'refund_id':'r/1','payment_id':'pay_1'}",
             CMD_REJECT_SCHEMA_INVALID, "field refund_id");
    reject_q("payment.create",
             "{'payment_id':'pay_1','amount':1,'currency':'USD','source':'tok visa',"
             "'destination':'m','capture':true}",
             CMD_REJECT_SCHEMA_INVALID, "field source");
    reject_q("payment.create",
             "{'payment_id':'pay_1','amount':1,'currency':'USD','source':'tok_visa',"
             "'destination':'','capture':true}",
             CMD_REJECT_SCHEMA_INVALID, "field destination");
}

static void test_kind_and_capture_rules(void **state)
{
    reject_q("account.open", "{'account':'a','currency':'USD','kind':'admin'}",
             CMD_REJECT_SCHEMA_INVALID, "field kind");
    reject_q("account.open", "{'account':'a','currency':'USD','kind':'Customer'}",
             CMD_REJECT_SCHEMA_INVALID, "field kind");
    static const char *const bad[] = { "'true'", "1", "null" };
    char body[256];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int n = snprintf(body, sizeof body,
                         "{'payment_id':'pay_1','amount':1,'currency':'USD','source':'tok_visa',"
                         "'destination':'m','capture':%s}",
                         bad[i]);
        assert_true(n > 0 && (size_t)n < sizeof body);
        reject_q("payment.create", body, CMD_REJECT_SCHEMA_INVALID, "field capture");
    }
}

/* A payment.create body whose `field` is `value` (already JSON). */
static void create_with(const char *field, const char *value, char *body, size_t size)
{
    int n = snprintf(body, size,
                     "{'payment_id':'pay_1','amount':1,'currency':'USD','source':'tok_visa',"
                     "'destination':'m','capture':true,'%s':%s}",
                     field, value);
    assert_true(n > 0 && (size_t)n < size);
}

/* A JSON string of `len` copies of 'x'. */
static void x_string(size_t len, char *dst, size_t size)
{
    assert_true(len + 3 <= size);
    dst[0] = '\'';
    memset(dst + 1, 'x', len);
    dst[len + 1] = '\'';
    dst[len + 2] = '\0';
}

static void test_text_limits(void **state)
{
    char value[1100], body[BODY_TEXT_MAX];

    x_string(CMD_DESCRIPTION_MAX, value, sizeof value);
    create_with("description", value, body, sizeof body);
    accept_q("payment.create", body);
    x_string(CMD_DESCRIPTION_MAX + 1, value, sizeof value);
    create_with("description", value, body, sizeof body);
    reject_q("payment.create", body, CMD_REJECT_SCHEMA_INVALID, "field description");
    create_with("description", "5", body, sizeof body);
    reject_q("payment.create", body, CMD_REJECT_SCHEMA_INVALID, "field description");

    x_string(CMD_REASON_MAX, value, sizeof value);
    int n = snprintf(body, sizeof body, "{'refund_id':'r1','payment_id':'p1','reason':%s}",
                     value);
    assert_true(n > 0 && (size_t)n < sizeof body);
    accept_q("payment.refund", body);
    x_string(CMD_REASON_MAX + 1, value, sizeof value);
    n = snprintf(body, sizeof body, "{'refund_id':'r1','payment_id':'p1','reason':%s}", value);
    assert_true(n > 0 && (size_t)n < sizeof body);
    reject_q("payment.refund", body, CMD_REJECT_SCHEMA_INVALID, "field reason");
}

/* A metadata object of `keys` entries k0..kN with value `value`. */
static void metadata_with(size_t keys, const char *value, char *dst, size_t size)
{
    size_t used = 0;
    for (size_t i = 0; i < keys; i++) {
        int n = snprintf(dst + used, size - used, "%s'k%zu':%s", i ? "," : "{", i, value);
        assert_true(n > 0 && (size_t)n < size - used);
        used += (size_t)n;
    }
    int n = snprintf(dst + used, size - used, "%s}", keys ? "" : "{");
    assert_true(n > 0 && (size_t)n < size - used);
}

static void test_metadata_rules(void **state)
{
    char meta[2048], body[BODY_TEXT_MAX];

    metadata_with(CMD_METADATA_KEYS_MAX, "'v'", meta, sizeof meta);
    create_with("metadata", meta, body, sizeof body);
    accept_q("payment.create", body);

    metadata_with(CMD_METADATA_KEYS_MAX + 1, "'v'", meta, sizeof meta);
    create_with("metadata", meta, body, sizeof body);
    reject_q("payment.create", body, CMD_REJECT_SCHEMA_INVALID, "has 51 keys, the limit is 50");

    metadata_with(1, "5", meta, sizeof meta);
    create_with("metadata", meta, body, sizeof body);
    reject_q("payment.create", body, CMD_REJECT_SCHEMA_INVALID, "field metadata.k0");

    metadata_with(1, "{'nested':'no'}", meta, sizeof meta);
    create_with("metadata", meta, body, sizeof body);
    reject_q("payment.create", body, CMD_REJECT_SCHEMA_INVALID, "field metadata.k0");

    char value[600];
    x_string(CMD_METADATA_VALUE_MAX, value, sizeof value);
    metadata_with(1, value, meta, sizeof meta);
    create_with("metadata", meta, body, sizeof body);
    accept_q("payment.create", body);
    x_string(CMD_METADATA_VALUE_MAX + 1, value, sizeof value);
    metadata_with(1, value, meta, sizeof meta);
    create_with("metadata", meta, body, sizeof body);
    reject_q("payment.create", body, CMD_REJECT_SCHEMA_INVALID, "field metadata.k0");

    create_with("metadata", "{'0123456789012345678901234567890123456789':'v'}", body,
                sizeof body);
    accept_q("payment.create", body);
    create_with("metadata", "{'01234567890123456789012345678901234567890':'v'}", body,
                sizeof body);
    reject_q("payment.create", body, CMD_REJECT_SCHEMA_INVALID, "must be 1 to 40 bytes");
    create_with("metadata", "{'':'v'}", body, sizeof body);
    reject_q("payment.create", body, CMD_REJECT_SCHEMA_INVALID, "must be 1 to 40 bytes");

    create_with("metadata", "['v']", body, sizeof body);
    reject_q("payment.create", body, CMD_REJECT_SCHEMA_INVALID, "field metadata");
    create_with("metadata", "null", body, sizeof body);
    reject_q("payment.create", body, CMD_REJECT_SCHEMA_INVALID, "field metadata");
}

static void test_null_is_not_absent(void **state)
{
    reject_q("payment.capture", "{'payment_id':'pay_1','amount':null}",
             CMD_REJECT_SCHEMA_INVALID, "got null");
    reject_q("payment.refund", "{'refund_id':'r1','payment_id':'p1','reason':null}",
             CMD_REJECT_SCHEMA_INVALID, "field reason");
}

static void test_source_equals_destination(void **state)
{
    reject_q("payment.create",
             "{'payment_id':'pay_1','amount':1,'currency':'USD','source':'acct_1',"
             "'destination':'acct_1','capture':true}",
             CMD_REJECT_SCHEMA_INVALID, "must differ from source");
}

/* ---- card numbers ------------------------------------------------------- */

static void test_raw_card_number_in_body(void **state)
{
    static const char *const sources[] = {
        "'4242424242424242'", "'4242 4242 4242 4242'", "'4242-4242-4242-4242'",
        "'5555555555554444'", "'378282246310005'", /* 15-digit Amex */
        "4242424242424242",                        /* as a JSON number */
        "'\\u0034242424242424242'",                /* escaped digit */
    };
    char body[BODY_TEXT_MAX];
    for (size_t i = 0; i < sizeof sources / sizeof *sources; i++) {
        int n = snprintf(body, sizeof body,
                         "{'payment_id':'pay_1','amount':1,'currency':'USD','source':%s,"
                         "'destination':'m','capture':true}",
                         sources[i]);
        assert_true(n > 0 && (size_t)n < sizeof body);
        reject_q("payment.create", body, CMD_REJECT_RAW_CARD_NUMBER, "field source");
    }

    create_with("description", "'paid with 4242 4242 4242 4242, thanks'", body, sizeof body);
    reject_q("payment.create", body, CMD_REJECT_RAW_CARD_NUMBER, "field description");
    create_with("metadata", "{'card':'4000056655665556'}", body, sizeof body);
    reject_q("payment.create", body, CMD_REJECT_RAW_CARD_NUMBER, "field metadata");
    create_with("metadata", "{'4000056655665556':'v'}", body, sizeof body);
    reject_q("payment.create", body, CMD_REJECT_RAW_CARD_NUMBER, "field metadata");
    /* A card number wins over other complaints, so the dead letter gets masked. */
    create_with("pan", "'4242424242424242'", body, sizeof body);
    reject_q("payment.create", body, CMD_REJECT_RAW_CARD_NUMBER, "field pan");
    reject_q("payment.cancel", "{'payment_id':'4242-4242-4242-4242'}",
             CMD_REJECT_RAW_CARD_NUMBER, "field payment_id");
    reject_q("payment.cancel", "{'payment_id':'p1','4242424242424242':1}",
             CMD_REJECT_RAW_CARD_NUMBER, "field name");
    reject_q("payment.refund", "{'refund_id':'r1','payment_id':'p1','reason':'card 4242424242424242'}",
             CMD_REJECT_RAW_CARD_NUMBER, "field reason");
}

static void test_card_number_not_in_json_error(void **state)
{
    /* jansson quotes the bad token; the message must not carry the number. */
    reject_q("payment.cancel", "{'payment_id': 4242424242424242x}", CMD_REJECT_MALFORMED_JSON,
             "not valid JSON");
    reject_q("payment.cancel", "{'payment_id' 4242424242424242}", CMD_REJECT_MALFORMED_JSON,
             "near");
    reject_q("payment.cancel", "{'payment_id':'4242424242424242\n'}",
             CMD_REJECT_MALFORMED_JSON, "near");
    reject_q("payment.cancel", "{'payment_id': 42424242424242424242424242424242424242}",
             CMD_REJECT_SCHEMA_INVALID, "out of range");
}

static void test_message_id(void **state)
{
    char long_id[300];
    memset(long_id, 'm', sizeof long_id);
    assert_true(cmd_message_id_valid("a", 1));
    assert_true(cmd_message_id_valid("order-42/retry#1", 16));
    assert_true(cmd_message_id_valid("!~", 2));
    assert_true(cmd_message_id_valid(long_id, 255));
    assert_false(cmd_message_id_valid(long_id, 256));
    assert_false(cmd_message_id_valid("", 0));
    assert_false(cmd_message_id_valid(NULL, 0));
    assert_false(cmd_message_id_valid("a b", 3));
    assert_false(cmd_message_id_valid("ab\n", 3));
    assert_false(cmd_message_id_valid("a\tb", 3));
    assert_false(cmd_message_id_valid("a\x7f", 2));
    assert_false(cmd_message_id_valid("caf\xc3\xa9", 5));
    assert_false(cmd_message_id_valid("a\0b", 3));
}

static void test_id_valid(void **state)
{
    assert_true(cmd_id_valid("a", 1));
    assert_true(cmd_id_valid("Az09_.:-", 8));
    assert_false(cmd_id_valid("", 0));
    assert_false(cmd_id_valid(NULL, 0));
    assert_false(cmd_id_valid("a b", 3));
    assert_false(cmd_id_valid("a/b", 3));
    assert_false(cmd_id_valid("a\0b", 3));
    char id[65];
    memset(id, 'x', sizeof id);
    assert_true(cmd_id_valid(id, 64));
    assert_false(cmd_id_valid(id, 65));
}

static void test_is_card_number(void **state)
{
    static const struct {
        const char *s;
        bool card;
    } cases[] = {
        { "4242424242424242", true },
        { "4242 4242 4242 4242", true },
        { "4242-4242-4242-4242", true },
        { "5555555555554444", true },
        { "378282246310005", true },     /* 15 digits */
        { "4222222222222", true },       /* 13 digits */
        { "6011000990139424", true },
        { "3566002020360505", true },
        { "4000 0566 5566 5556", true },
        { "4242424242424241", false },   /* bad Luhn */
        { "424242424242", false },       /* 12 digits */
        { "42424242424242424242", false }, /* 20 digits */
        { "4242  4242 4242 4242", false }, /* double separator */
        { "4242 4242 4242 4242 ", false }, /* trailing separator */
        { " 4242424242424242", false },
        { "-4242424242424242", false },
        { "4242.4242.4242.4242", false },
        { "tok_visa", false },
        { "", false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        if (cmd_is_card_number(cases[i].s, strlen(cases[i].s)) != cases[i].card)
            fail_msg("cmd_is_card_number(\"%s\") should be %d", cases[i].s, cases[i].card);
    assert_false(cmd_is_card_number(NULL, 0));
    /* len bounds the check: a prefix of a card is not a card */
    assert_false(cmd_is_card_number("4242424242424242", 13));
    assert_false(cmd_is_card_number("4242424242424242", 12));
}

static void test_redact(void **state)
{
    static const struct {
        const char *in;
        const char *out;
        int count;
    } cases[] = {
        { "4242424242424242", "424242******4242", 1 },
        { "{\"source\":\"4242 4242 4242 4242\"}", "{\"source\":\"4242 42** **** 4242\"}", 1 },
        { "a 5555-5555-5555-4444 b 378282246310005",
          "a 5555-55**-****-4444 b 378282*****0005", 2 },
        { "{\"amount\":4242424242424242}", "{\"amount\":424242******4242}", 1 },
        { "card4242424242424242x", "card424242******4242x", 1 },
        { "tok_visa 4242424242424241 424242424242 2024-01-01",
          "tok_visa 4242424242424241 424242424242 2024-01-01", 0 },
        { "no digits at all", "no digits at all", 0 },
        { "", "", 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char buf[128];
        size_t len = strlen(cases[i].in);
        memcpy(buf, cases[i].in, len + 1);
        int count = cmd_redact_card_numbers(buf, len);
        if (count != cases[i].count || strcmp(buf, cases[i].out) != 0)
            fail_msg("redact(\"%s\") = %d \"%s\", want %d \"%s\"", cases[i].in, count, buf,
                     cases[i].count, cases[i].out);
    }

    /* Only body[0..len) is looked at: a card cut by len is not one. */
    char buf[] = "4242424242424242";
    assert_int_equal(cmd_redact_card_numbers(buf, 13), 0);
    assert_string_equal(buf, "4242424242424242");
    assert_int_equal(cmd_redact_card_numbers(NULL, 0), 0);

    /* Not NUL-terminated input (AMQP bytes): ASan catches any over-read. */
    char *raw = malloc(16);
    assert_non_null(raw);
    memcpy(raw, "4242424242424242", 16);
    assert_int_equal(cmd_redact_card_numbers(raw, 16), 1);
    assert_memory_equal(raw, "424242******4242", 16);
    free(raw);
}

static void test_names(void **state)
{
    static const struct {
        const char *name;
        cmd_type_t type;
    } cases[] = {
        { "account.open", CMD_ACCOUNT_OPEN },       { "account.deposit", CMD_ACCOUNT_DEPOSIT },
        { "payment.create", CMD_PAYMENT_CREATE },   { "payment.capture", CMD_PAYMENT_CAPTURE },
        { "payment.cancel", CMD_PAYMENT_CANCEL },   { "payment.refund", CMD_PAYMENT_REFUND },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        assert_int_equal(cmd_type_from_name(cases[i].name, strlen(cases[i].name)),
                         cases[i].type);
        assert_string_equal(cmd_type_name(cases[i].type), cases[i].name);
    }
    assert_int_equal(cmd_type_from_name("payment.creat", 13), CMD_UNKNOWN);
    assert_int_equal(cmd_type_from_name("payment.create", 13), CMD_UNKNOWN);
    assert_int_equal(cmd_type_from_name(NULL, 0), CMD_UNKNOWN);
    assert_string_equal(cmd_type_name(CMD_UNKNOWN), "unknown");

    assert_string_equal(cmd_reject_code(CMD_REJECT_NONE), "");
    assert_string_equal(cmd_reject_code(CMD_REJECT_MALFORMED_JSON), "malformed_json");
    assert_string_equal(cmd_reject_code(CMD_REJECT_SCHEMA_INVALID), "schema_invalid");
    assert_string_equal(cmd_reject_code(CMD_REJECT_UNKNOWN_COMMAND), "unknown_command");
    assert_string_equal(cmd_reject_code(CMD_REJECT_RAW_CARD_NUMBER), "raw_card_number");
    assert_string_equal(cmd_reject_code(CMD_REJECT_IDEMPOTENCY_CONFLICT),
                        "idempotency_conflict");
}

static void test_bad_arguments(void **state)
{
    struct cmd_error err;
    cmd_t out;
    assert_int_equal(cmd_parse("payment.cancel", 14, NULL, 0, NULL, 0, "{}", 2, NULL, &err),
                     PAYQ_ERR_INVALID);
    assert_int_equal(cmd_parse("payment.cancel", 14, NULL, 0, NULL, 0, "{}", 2, &out, NULL),
                     PAYQ_ERR_INVALID);
    /* A NULL body is an empty one. */
    struct result r;
    parse_raw("payment.cancel", NULL, NULL, NULL, 0, &r);
    expect_reject(&r, CMD_REJECT_MALFORMED_JSON, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_account_open),
        cmocka_unit_test(test_account_deposit),
        cmocka_unit_test(test_payment_create),
        cmocka_unit_test(test_payment_capture),
        cmocka_unit_test(test_payment_cancel),
        cmocka_unit_test(test_payment_refund),
        cmocka_unit_test(test_business_id_survives_copy),
        cmocka_unit_test(test_content_type),
        cmocka_unit_test(test_body_size),
        cmocka_unit_test(test_unknown_command),
        cmocka_unit_test(test_type_property),
        cmocka_unit_test(test_not_json),
        cmocka_unit_test(test_invalid_utf8_and_nul),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_top_level_not_object),
        cmocka_unit_test(test_huge_numbers_are_schema_errors),
        cmocka_unit_test(test_missing_and_unknown_fields),
        cmocka_unit_test(test_amount_rules),
        cmocka_unit_test(test_currency_rules),
        cmocka_unit_test(test_id_rules),
        cmocka_unit_test(test_kind_and_capture_rules),
        cmocka_unit_test(test_text_limits),
        cmocka_unit_test(test_metadata_rules),
        cmocka_unit_test(test_null_is_not_absent),
        cmocka_unit_test(test_source_equals_destination),
        cmocka_unit_test(test_raw_card_number_in_body),
        cmocka_unit_test(test_card_number_not_in_json_error),
        cmocka_unit_test(test_message_id),
        cmocka_unit_test(test_id_valid),
        cmocka_unit_test(test_is_card_number),
        cmocka_unit_test(test_redact),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
