/*
 * cmd.c - from an AMQP delivery to a validated command (CONTRACT.md).
 *
 * Everything the saga later trusts is decided here: a cmd_t exists only when
 * the envelope, the JSON and every field obey the contract. Unknown fields are
 * refused rather than ignored, because a misspelt optional field ("ammount" in
 * payment.capture) would otherwise silently change what the command does. Card
 * numbers are refused wherever they appear and are never echoed in an error
 * message, since messages end up in replies, logs and dead-letter headers.
 */
#include "cmd.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "money.h"

#define CARD_DIGITS_MIN 13
#define CARD_DIGITS_MAX 19
#define CARD_KEEP_FIRST 6
#define CARD_KEEP_LAST 4

/* Bytes of client-supplied text (routing key, field name) an error message shows. */
#define SHOW_NAME_MAX 64
/* jansson's error text can quote the input near the error. */
#define SHOW_JSON_ERROR_MAX 120
/* A run of this many digits in echoed text is masked whole, Luhn or not: a
 * card number cut short by a truncation would fail the card test. */
#define SHOW_DIGITS_MASK 12

enum field_rule {
    RULE_ID,       /* business id, cmd_id_valid */
    RULE_SOURCE,   /* account id or card token */
    RULE_CURRENCY, /* ISO 4217, exact upper case */
    RULE_KIND,     /* "customer" | "merchant" */
    RULE_AMOUNT,   /* JSON integer in MONEY_AMOUNT_MIN..MAX */
    RULE_CAPTURE,  /* JSON boolean */
    RULE_TEXT,     /* string of at most `max` bytes */
    RULE_METADATA  /* object of short string values */
};

struct field_spec {
    const char *name;
    enum field_rule rule;
    bool required;
    size_t offset; /* char array in cmd_t that receives the string, if any */
    size_t size;   /* its size, or for RULE_TEXT the byte limit */
};

struct command_spec {
    cmd_type_t type;
    const char *name;
    size_t id_offset; /* the business id (CONTRACT.md "Reply body") */
    const struct field_spec *fields;
    size_t nfields;
};

#define STR_MEMBER(m) offsetof(cmd_t, m), sizeof(((cmd_t *)0)->m)
#define NO_MEMBER 0, 0
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const struct field_spec open_fields[] = {
    { "account", RULE_ID, true, STR_MEMBER(account) },
    { "currency", RULE_CURRENCY, true, STR_MEMBER(currency) },
    { "kind", RULE_KIND, true, STR_MEMBER(kind) },
};

static const struct field_spec deposit_fields[] = {
    { "deposit_id", RULE_ID, true, STR_MEMBER(deposit_id) },
    { "account", RULE_ID, true, STR_MEMBER(account) },
    { "amount", RULE_AMOUNT, true, NO_MEMBER },
    { "currency", RULE_CURRENCY, true, STR_MEMBER(currency) },
};

static const struct field_spec create_fields[] = {
    { "payment_id", RULE_ID, true, STR_MEMBER(payment_id) },
    { "amount", RULE_AMOUNT, true, NO_MEMBER },
    { "currency", RULE_CURRENCY, true, STR_MEMBER(currency) },
    { "source", RULE_SOURCE, true, STR_MEMBER(source) },
    { "destination", RULE_ID, true, STR_MEMBER(destination) },
    { "capture", RULE_CAPTURE, true, NO_MEMBER },
    { "description", RULE_TEXT, false, 0, CMD_DESCRIPTION_MAX },
    { "metadata", RULE_METADATA, false, NO_MEMBER },
};

static const struct field_spec capture_fields[] = {
    { "payment_id", RULE_ID, true, STR_MEMBER(payment_id) },
    { "amount", RULE_AMOUNT, false, NO_MEMBER },
};

static const struct field_spec cancel_fields[] = {
    { "payment_id", RULE_ID, true, STR_MEMBER(payment_id) },
};

static const struct field_spec refund_fields[] = {
    { "refund_id", RULE_ID, true, STR_MEMBER(refund_id) },
    { "payment_id", RULE_ID, true, STR_MEMBER(payment_id) },
    { "amount", RULE_AMOUNT, false, NO_MEMBER },
    { "reason", RULE_TEXT, false, 0, CMD_REASON_MAX },
};

static const struct command_spec commands[] = {
    { CMD_ACCOUNT_OPEN, "account.open", offsetof(cmd_t, account),
      open_fields, COUNT(open_fields) },
    { CMD_ACCOUNT_DEPOSIT, "account.deposit", offsetof(cmd_t, deposit_id),
      deposit_fields, COUNT(deposit_fields) },
    { CMD_PAYMENT_CREATE, "payment.create", offsetof(cmd_t, payment_id),
      create_fields, COUNT(create_fields) },
    { CMD_PAYMENT_CAPTURE, "payment.capture", offsetof(cmd_t, payment_id),
      capture_fields, COUNT(capture_fields) },
    { CMD_PAYMENT_CANCEL, "payment.cancel", offsetof(cmd_t, payment_id),
      cancel_fields, COUNT(cancel_fields) },
    { CMD_PAYMENT_REFUND, "payment.refund", offsetof(cmd_t, refund_id),
      refund_fields, COUNT(refund_fields) },
};

/* ---- names and codes ---------------------------------------------------- */

static const struct command_spec *spec_by_type(cmd_type_t type)
{
    for (size_t i = 0; i < COUNT(commands); i++)
        if (commands[i].type == type)
            return &commands[i];
    return NULL;
}

cmd_type_t cmd_type_from_name(const char *name, size_t len)
{
    if (name == NULL)
        return CMD_UNKNOWN;
    for (size_t i = 0; i < COUNT(commands); i++)
        if (strlen(commands[i].name) == len && memcmp(commands[i].name, name, len) == 0)
            return commands[i].type;
    return CMD_UNKNOWN;
}

const char *cmd_type_name(cmd_type_t type)
{
    const struct command_spec *spec = spec_by_type(type);
    return spec != NULL ? spec->name : "unknown";
}

const char *cmd_reject_code(cmd_reject_t code)
{
    switch (code) {
    case CMD_REJECT_NONE: return "";
    case CMD_REJECT_MALFORMED_JSON: return "malformed_json";
    case CMD_REJECT_SCHEMA_INVALID: return "schema_invalid";
    case CMD_REJECT_UNKNOWN_COMMAND: return "unknown_command";
    case CMD_REJECT_RAW_CARD_NUMBER: return "raw_card_number";
    case CMD_REJECT_IDEMPOTENCY_CONFLICT: return "idempotency_conflict";
    }
    return "";
}

const char *cmd_business_id(const cmd_t *cmd)
{
    const struct command_spec *spec = cmd != NULL ? spec_by_type(cmd->type) : NULL;
    return spec != NULL ? (const char *)cmd + spec->id_offset : "";
}

/* ---- ids and card numbers ----------------------------------------------- */

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_card_separator(char c)
{
    return c == ' ' || c == '-';
}

bool cmd_message_id_valid(const char *s, size_t len)
{
    if (s == NULL || len == 0 || len > CMD_MESSAGE_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x21 || c > 0x7e)
            return false;
    }
    return true;
}

bool cmd_id_valid(const char *s, size_t len)
{
    if (s == NULL || len == 0 || len > CMD_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) ||
                  c == '_' || c == '.' || c == ':' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* Length of the run of digits joined by single separators starting at s[0]. */
static size_t digit_run(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (is_digit(s[i]))
            i++;
        else if (i > 0 && is_card_separator(s[i]) && i + 1 < len && is_digit(s[i + 1]))
            i += 2;
        else
            break;
    }
    return i;
}

static size_t count_digits(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += is_digit(s[i]);
    return n;
}

static bool luhn_valid(const char *s, size_t len)
{
    unsigned sum = 0;
    bool twice = false;
    for (size_t i = len; i-- > 0;) {
        if (!is_digit(s[i]))
            continue;
        unsigned d = (unsigned)(s[i] - '0');
        if (twice)
            d = d * 2 > 9 ? d * 2 - 9 : d * 2;
        sum += d;
        twice = !twice;
    }
    return sum % 10 == 0;
}

bool cmd_is_card_number(const char *s, size_t len)
{
    if (s == NULL || len < CARD_DIGITS_MIN || !is_digit(s[0]) || digit_run(s, len) != len)
        return false;
    size_t digits = count_digits(s, len);
    return digits >= CARD_DIGITS_MIN && digits <= CARD_DIGITS_MAX && luhn_valid(s, len);
}

/*
 * Finds the next card number in s[*pos..len): maximal runs of digits and
 * single separators are tested whole, so "2024-01-01" or a long reference
 * number is left alone. Advances *pos past the runs it looked at.
 */
static bool next_card(const char *s, size_t len, size_t *pos, size_t *start, size_t *end)
{
    size_t i = *pos;
    while (i < len) {
        if (!is_digit(s[i])) {
            i++;
            continue;
        }
        size_t n = digit_run(s + i, len - i);
        if (cmd_is_card_number(s + i, n)) {
            *start = i;
            *end = i + n;
            *pos = i + n;
            return true;
        }
        i += n;
    }
    *pos = len;
    return false;
}

static bool text_has_card(const char *s, size_t len)
{
    size_t pos = 0, start, end;
    return next_card(s, len, &pos, &start, &end);
}

int cmd_redact_card_numbers(char *body, size_t len)
{
    if (body == NULL)
        return 0;
    int count = 0;
    size_t pos = 0, start, end;
    while (next_card(body, len, &pos, &start, &end)) {
        size_t digits = count_digits(body + start, end - start);
        size_t seen = 0;
        for (size_t i = start; i < end; i++) {
            if (!is_digit(body[i]))
                continue; /* separators stay, so the length and grouping do too */
            if (seen >= CARD_KEEP_FIRST && seen < digits - CARD_KEEP_LAST)
                body[i] = '*';
            seen++;
        }
        count++;
    }
    return count;
}

/* ---- error messages ----------------------------------------------------- */

/*
 * Copies client text for an error message: at most `max` bytes, printable
 * ASCII only, "..." when cut, and any long digit run masked whole. Runs are
 * measured on the full input, so a card number cut by the limit is masked too.
 * dst must hold max + 4 bytes.
 */
static void show(const char *s, size_t len, size_t max, char *dst)
{
    size_t out = 0, i = 0;
    if (s == NULL)
        len = 0;
    while (i < len && out < max) {
        if (is_digit(s[i])) {
            size_t n = digit_run(s + i, len - i);
            bool mask = count_digits(s + i, n) >= SHOW_DIGITS_MASK;
            size_t k = 0;
            for (; k < n && out < max; k++)
                dst[out++] = mask && is_digit(s[i + k]) ? '*' : s[i + k];
            i += k;
            continue;
        }
        unsigned char c = (unsigned char)s[i++];
        dst[out++] = c >= 0x20 && c <= 0x7e ? (char)c : '?';
    }
    if (i < len) {
        memcpy(dst + out, "...", 3);
        out += 3;
    }
    dst[out] = '\0';
}

static int reject(struct cmd_error *err, cmd_reject_t code, const char *fmt, ...)
    PAYQ_PRINTF(3, 4);

static int reject(struct cmd_error *err, cmd_reject_t code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    /* A cut message is still a useful message; only an encoding error is not. */
    if (n < 0) {
        const char *fallback = cmd_reject_code(code);
        size_t flen = strlen(fallback);
        memcpy(err->message, fallback, flen + 1);
    }
    err->code = code;
    return PAYQ_ERR_INVALID;
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number with a fraction or exponent";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "an unknown JSON value";
}

/* ---- envelope: size, content type, routing key, type property ----------- */

static bool content_type_is_json(const char *ct, size_t len)
{
    static const char json[] = "application/json";
    size_t n = sizeof json - 1;
    if (len < n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = ct[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != json[i])
            return false;
    }
    /* Parameters ("; charset=utf-8") are allowed; a longer type is not. */
    size_t i = n;
    while (i < len && (ct[i] == ' ' || ct[i] == '\t'))
        i++;
    return i == len || ct[i] == ';';
}

static int check_envelope(const char *routing_key, size_t routing_key_len,
                          const char *content_type, size_t content_type_len,
                          const char *type_prop, size_t type_prop_len, size_t body_len,
                          const struct command_spec **spec, struct cmd_error *err)
{
    char shown[SHOW_NAME_MAX + 4];
    char shown2[SHOW_NAME_MAX + 4];

    if (body_len > CMD_BODY_MAX)
        return reject(err, CMD_REJECT_SCHEMA_INVALID, "body is %zu bytes, the limit is %d",
                      body_len, CMD_BODY_MAX);

    if (content_type != NULL && !content_type_is_json(content_type, content_type_len)) {
        show(content_type, content_type_len, SHOW_NAME_MAX, shown);
        return reject(err, CMD_REJECT_MALFORMED_JSON,
                      "content type \"%s\" is not application/json", shown);
    }

    const struct command_spec *found =
        spec_by_type(cmd_type_from_name(routing_key, routing_key_len));
    if (found == NULL) {
        show(routing_key, routing_key_len, SHOW_NAME_MAX, shown);
        return reject(err, CMD_REJECT_UNKNOWN_COMMAND,
                      "unknown command \"%s\" (routing key): expected account.open, "
                      "account.deposit, payment.create, payment.capture, payment.cancel "
                      "or payment.refund",
                      shown);
    }

    if (type_prop != NULL && (type_prop_len != routing_key_len ||
                              memcmp(type_prop, routing_key, routing_key_len) != 0)) {
        show(type_prop, type_prop_len, SHOW_NAME_MAX, shown);
        show(routing_key, routing_key_len, SHOW_NAME_MAX, shown2);
        return reject(err, CMD_REJECT_SCHEMA_INVALID,
                      "type property \"%s\" does not match the routing key \"%s\"", shown,
                      shown2);
    }

    *spec = found;
    return PAYQ_OK;
}

/* ---- body: JSON decoding ------------------------------------------------ */

static int json_failure(const json_error_t *jerr, struct cmd_error *err)
{
    char shown[SHOW_JSON_ERROR_MAX + 4];
    enum json_error_code code = json_error_code(jerr);

    /* Out of memory says nothing about the message: retry, never reject it.
     * err is still filled so that a caller which only logs it reads text. */
    if (code == json_error_out_of_memory) {
        (void)reject(err, CMD_REJECT_NONE, "out of memory while decoding the body");
        return PAYQ_ERR_NOMEM;
    }

    show(jerr->text, strlen(jerr->text), SHOW_JSON_ERROR_MAX, shown);
    /* Well-formed JSON beyond a limit (a number wider than 64 bits, nesting
     * deeper than jansson's limit) is out of range, not malformed. */
    if (code == json_error_numeric_overflow || code == json_error_stack_overflow)
        return reject(err, CMD_REJECT_SCHEMA_INVALID,
                      "body has a value out of range: %s (line %d, column %d)", shown,
                      jerr->line, jerr->column);
    return reject(err, CMD_REJECT_MALFORMED_JSON,
                  "body is not valid JSON: %s (line %d, column %d, byte %d)", shown,
                  jerr->line, jerr->column, jerr->position);
}

static int decode_body(const void *body, size_t body_len, json_t **root, struct cmd_error *err)
{
    json_error_t jerr;
    /* JSON_DECODE_ANY lets a scalar through so that it is reported as the
     * wrong shape (schema_invalid) rather than as broken JSON. NUL bytes stay
     * forbidden: a C string must never be cut short silently. */
    json_t *v = json_loadb(body != NULL ? body : "", body != NULL ? body_len : 0,
                           JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (v == NULL)
        return json_failure(&jerr, err);
    if (!json_is_object(v)) {
        int rc = reject(err, CMD_REJECT_SCHEMA_INVALID, "body must be a JSON object, not %s",
                        json_kind(v));
        json_decref(v);
        return rc;
    }
    *root = v;
    return PAYQ_OK;
}

/* ---- body: card numbers anywhere ---------------------------------------- */

static bool value_has_card(json_t *v, bool check_integers)
{
    switch (json_typeof(v)) {
    case JSON_STRING:
        return text_has_card(json_string_value(v), json_string_length(v));
    case JSON_INTEGER: {
        if (!check_integers)
            return false;
        char digits[32];
        int n = snprintf(digits, sizeof digits, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return n > 0 && (size_t)n < sizeof digits && text_has_card(digits, (size_t)n);
    }
    case JSON_ARRAY:
        for (size_t i = 0; i < json_array_size(v); i++)
            if (value_has_card(json_array_get(v, i), true))
                return true;
        return false;
    case JSON_OBJECT:
        for (void *it = json_object_iter(v); it != NULL; it = json_object_iter_next(v, it)) {
            const char *key = json_object_iter_key(it);
            if (text_has_card(key, strlen(key)) ||
                value_has_card(json_object_iter_value(it), true))
                return true;
        }
        return false;
    default:
        return false;
    }
}

/*
 * Runs before the schema checks so that a card number wins over any other
 * complaint: raw_card_number is the code that tells the dead-letter path to
 * mask the body. The top-level amount is the one integer exempt, since a
 * legitimate 13..16 digit amount passes Luhn one time in ten.
 */
static int check_cards(json_t *root, struct cmd_error *err)
{
    char shown[SHOW_NAME_MAX + 4];
    for (void *it = json_object_iter(root); it != NULL; it = json_object_iter_next(root, it)) {
        const char *key = json_object_iter_key(it);
        size_t key_len = strlen(key);
        if (text_has_card(key, key_len))
            return reject(err, CMD_REJECT_RAW_CARD_NUMBER,
                          "a field name contains a card number; card numbers are never "
                          "accepted");
        if (!value_has_card(json_object_iter_value(it), strcmp(key, "amount") != 0))
            continue;
        if (strcmp(key, "source") == 0)
            return reject(err, CMD_REJECT_RAW_CARD_NUMBER,
                          "field source: a card number is not accepted, send a card token "
                          "(tok_...) or an account id");
        show(key, key_len, SHOW_NAME_MAX, shown);
        return reject(err, CMD_REJECT_RAW_CARD_NUMBER,
                      "field %s contains a card number; card numbers are never accepted",
                      shown);
    }
    return PAYQ_OK;
}

/* ---- body: fields ------------------------------------------------------- */

static const struct field_spec *find_field(const struct command_spec *spec, const char *name)
{
    for (size_t i = 0; i < spec->nfields; i++)
        if (strcmp(spec->fields[i].name, name) == 0)
            return &spec->fields[i];
    return NULL;
}

static int reject_unknown_field(const struct command_spec *spec, const char *key,
                                struct cmd_error *err)
{
    char shown[SHOW_NAME_MAX + 4];
    char names[160];
    size_t used = 0;
    names[0] = '\0';
    for (size_t i = 0; i < spec->nfields; i++) {
        int n = snprintf(names + used, sizeof names - used, "%s%s", i > 0 ? ", " : "",
                         spec->fields[i].name);
        if (n < 0 || (size_t)n >= sizeof names - used)
            break; /* the list is a courtesy; a cut list is still right */
        used += (size_t)n;
    }
    show(key, strlen(key), SHOW_NAME_MAX, shown);
    return reject(err, CMD_REJECT_SCHEMA_INVALID, "unknown field %s (%s accepts: %s)", shown,
                  spec->name, names);
}

/* Copies a validated string into its cmd_t member. */
static int store(const struct field_spec *f, const char *s, size_t len, cmd_t *c,
                 struct cmd_error *err)
{
    if (len >= f->size) /* the rules keep every value shorter than its member */
        return reject(err, CMD_REJECT_SCHEMA_INVALID, "field %s: value too long", f->name);
    memcpy((char *)c + f->offset, s, len + 1);
    return PAYQ_OK;
}

static int wrong_type(const struct field_spec *f, const char *want, const json_t *v,
                      struct cmd_error *err)
{
    return reject(err, CMD_REJECT_SCHEMA_INVALID, "field %s: must be %s, got %s", f->name,
                  want, json_kind(v));
}

static int check_id(const struct field_spec *f, json_t *v, cmd_t *c, struct cmd_error *err)
{
    if (!json_is_string(v))
        return wrong_type(f, "a string", v, err);
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (!cmd_id_valid(s, len)) {
        const char *what = f->rule == RULE_SOURCE ? "an account id or a card token (tok_...): "
                                                  : "";
        return reject(err, CMD_REJECT_SCHEMA_INVALID,
                      "field %s: must be %s1 to %d characters of A-Z a-z 0-9 _ . : -", f->name,
                      what, CMD_ID_MAX);
    }
    if (f->rule == RULE_SOURCE)
        c->source_is_token = strncmp(s, "tok_", 4) == 0;
    return store(f, s, len, c, err);
}

static int check_currency(const struct field_spec *f, json_t *v, cmd_t *c,
                          struct cmd_error *err)
{
    if (!json_is_string(v))
        return wrong_type(f, "a string", v, err);
    if (!money_currency_valid(json_string_value(v)))
        return reject(err, CMD_REJECT_SCHEMA_INVALID,
                      "field %s: must be an ISO 4217 currency code in upper case, like USD",
                      f->name);
    return store(f, json_string_value(v), json_string_length(v), c, err);
}

static int check_kind(const struct field_spec *f, json_t *v, cmd_t *c, struct cmd_error *err)
{
    if (!json_is_string(v))
        return wrong_type(f, "a string", v, err);
    const char *s = json_string_value(v);
    if (strcmp(s, "customer") != 0 && strcmp(s, "merchant") != 0)
        return reject(err, CMD_REJECT_SCHEMA_INVALID,
                      "field %s: must be \"customer\" or \"merchant\"", f->name);
    return store(f, s, json_string_length(v), c, err);
}

static int check_amount(const struct field_spec *f, json_t *v, cmd_t *c, struct cmd_error *err)
{
    /* Integers only: 10.0 or "10" may be a client that thinks in major units. */
    if (!json_is_integer(v) || money_check_amount(json_integer_value(v)) != PAYQ_OK)
        return reject(err, CMD_REJECT_SCHEMA_INVALID,
                      "field %s: must be an integer between 1 and 10^15 (minor units), "
                      "got %s%s",
                      f->name, json_kind(v), json_is_integer(v) ? " out of range" : "");
    c->amount = json_integer_value(v);
    c->has_amount = true;
    return PAYQ_OK;
}

static int check_capture(const struct field_spec *f, json_t *v, cmd_t *c,
                         struct cmd_error *err)
{
    if (!json_is_boolean(v))
        return wrong_type(f, "true or false", v, err);
    c->capture = json_is_true(v);
    return PAYQ_OK;
}

static int check_text(const struct field_spec *f, json_t *v, struct cmd_error *err)
{
    if (!json_is_string(v))
        return wrong_type(f, "a string", v, err);
    if (json_string_length(v) > f->size)
        return reject(err, CMD_REJECT_SCHEMA_INVALID,
                      "field %s: is %zu bytes, the limit is %zu", f->name,
                      json_string_length(v), f->size);
    return PAYQ_OK;
}

static int check_metadata(const struct field_spec *f, json_t *v, struct cmd_error *err)
{
    char shown[SHOW_NAME_MAX + 4];
    if (!json_is_object(v))
        return wrong_type(f, "an object", v, err);
    if (json_object_size(v) > CMD_METADATA_KEYS_MAX)
        return reject(err, CMD_REJECT_SCHEMA_INVALID,
                      "field %s: has %zu keys, the limit is %d", f->name, json_object_size(v),
                      CMD_METADATA_KEYS_MAX);
    for (void *it = json_object_iter(v); it != NULL; it = json_object_iter_next(v, it)) {
        const char *key = json_object_iter_key(it);
        json_t *value = json_object_iter_value(it);
        size_t key_len = strlen(key);
        show(key, key_len, SHOW_NAME_MAX, shown);
        if (key_len == 0 || key_len > CMD_METADATA_KEY_MAX)
            return reject(err, CMD_REJECT_SCHEMA_INVALID,
                          "field %s: key \"%s\" must be 1 to %d bytes", f->name, shown,
                          CMD_METADATA_KEY_MAX);
        if (!json_is_string(value) || json_string_length(value) > CMD_METADATA_VALUE_MAX)
            return reject(err, CMD_REJECT_SCHEMA_INVALID,
                          "field %s.%s: must be a string of at most %d bytes, got %s", f->name,
                          shown, CMD_METADATA_VALUE_MAX,
                          json_is_string(value) ? "a longer one" : json_kind(value));
    }
    return PAYQ_OK;
}

static int check_field(const struct field_spec *f, json_t *v, cmd_t *c, struct cmd_error *err)
{
    switch (f->rule) {
    case RULE_ID:
    case RULE_SOURCE: return check_id(f, v, c, err);
    case RULE_CURRENCY: return check_currency(f, v, c, err);
    case RULE_KIND: return check_kind(f, v, c, err);
    case RULE_AMOUNT: return check_amount(f, v, c, err);
    case RULE_CAPTURE: return check_capture(f, v, c, err);
    case RULE_TEXT: return check_text(f, v, err);
    case RULE_METADATA: return check_metadata(f, v, err);
    }
    return reject(err, CMD_REJECT_SCHEMA_INVALID, "field %s: no rule", f->name);
}

static int check_fields(json_t *root, const struct command_spec *spec, cmd_t *c,
                        struct cmd_error *err)
{
    /* Unknown fields first: "ammount" explains a missing "amount" better. */
    for (void *it = json_object_iter(root); it != NULL; it = json_object_iter_next(root, it)) {
        const char *key = json_object_iter_key(it);
        if (find_field(spec, key) == NULL)
            return reject_unknown_field(spec, key, err);
    }
    for (size_t i = 0; i < spec->nfields; i++) {
        const struct field_spec *f = &spec->fields[i];
        /* Only absence counts as absent: a JSON null reaches its rule and is
         * refused there, so "amount": null never turns into a full capture. */
        json_t *v = json_object_get(root, f->name);
        if (v == NULL) {
            if (f->required)
                return reject(err, CMD_REJECT_SCHEMA_INVALID, "missing field %s (%s requires it)",
                              f->name, spec->name);
            continue;
        }
        int rc = check_field(f, v, c, err);
        if (rc != PAYQ_OK)
            return rc;
    }
    if (spec->type == CMD_PAYMENT_CREATE && strcmp(c->source, c->destination) == 0)
        return reject(err, CMD_REJECT_SCHEMA_INVALID,
                      "field destination: must differ from source");
    return PAYQ_OK;
}

/* ---- entry points ------------------------------------------------------- */

int cmd_parse(const char *routing_key, size_t routing_key_len,
              const char *content_type, size_t content_type_len,
              const char *type_prop, size_t type_prop_len,
              const void *body, size_t body_len,
              cmd_t *out, struct cmd_error *err)
{
    if (out == NULL || err == NULL)
        return PAYQ_ERR_INVALID;

    const struct command_spec *spec = NULL;
    int rc = check_envelope(routing_key, routing_key_len, content_type, content_type_len,
                            type_prop, type_prop_len, body_len, &spec, err);
    if (rc != PAYQ_OK)
        return rc;

    json_t *root = NULL;
    rc = decode_body(body, body_len, &root, err);
    if (rc != PAYQ_OK)
        return rc;

    cmd_t c;
    memset(&c, 0, sizeof c);
    c.type = spec->type;
    rc = check_cards(root, err);
    if (rc != PAYQ_OK)
        goto fail;
    rc = check_fields(root, spec, &c, err);
    if (rc != PAYQ_OK)
        goto fail;

    c.body = root;
    *out = c;
    out->id = cmd_business_id(out);
    return PAYQ_OK;

fail:
    json_decref(root);
    return rc;
}

void cmd_free(cmd_t *cmd)
{
    if (cmd == NULL)
        return;
    json_decref(cmd->body);
    cmd->body = NULL;
}
