/*
 * cmd.h - parsing and validation of payq commands (CONTRACT.md).
 *
 * A delivery becomes a cmd_t only after every rule of the contract holds:
 * content type, size, UTF-8, JSON shape, known command, every field present
 * with the right type and range, no unknown field, no raw card number. When a
 * rule fails, cmd_parse() fills a cmd_error with the contract's rejection code
 * and a human message, and the caller dead-letters the message.
 */
#ifndef PAYQ_CMD_H
#define PAYQ_CMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "status.h"

#define CMD_BODY_MAX (64 * 1024) /* bytes */
#define CMD_ID_MAX 64            /* business ids: 1..64 chars of [A-Za-z0-9_.:-] */
#define CMD_MESSAGE_ID_MAX 255   /* message_id: 1..255 printable ASCII */
#define CMD_DESCRIPTION_MAX 1000 /* payment.create description, UTF-8 bytes */
#define CMD_REASON_MAX 500       /* payment.refund reason, UTF-8 bytes */
#define CMD_METADATA_KEYS_MAX 50 /* metadata: object of string values */
#define CMD_METADATA_KEY_MAX 40
#define CMD_METADATA_VALUE_MAX 500

typedef enum cmd_type {
    CMD_UNKNOWN = 0,
    CMD_ACCOUNT_OPEN,
    CMD_ACCOUNT_DEPOSIT,
    CMD_PAYMENT_CREATE,
    CMD_PAYMENT_CAPTURE,
    CMD_PAYMENT_CANCEL,
    CMD_PAYMENT_REFUND
} cmd_type_t;

/* Rejection codes of CONTRACT.md ("rejected" outcome). */
typedef enum cmd_reject {
    CMD_REJECT_NONE = 0,
    CMD_REJECT_MALFORMED_JSON,  /* not JSON, not UTF-8, duplicate keys, or content type not JSON */
    CMD_REJECT_SCHEMA_INVALID,  /* missing/extra field, wrong type, out of range, body too big */
    CMD_REJECT_UNKNOWN_COMMAND, /* routing key is no command of the contract */
    CMD_REJECT_RAW_CARD_NUMBER, /* a card number where a token belongs */
    CMD_REJECT_IDEMPOTENCY_CONFLICT /* decided by the database, listed for the code table */
} cmd_reject_t;

struct cmd_error {
    cmd_reject_t code;
    char message[256]; /* human text, e.g. "field amount: must be an integer between 1 and 10^15" */
};

/*
 * A validated command. String fields are NUL-terminated and empty when the
 * command has no such field. `body` is the parsed JSON object, owned by the
 * cmd (released by cmd_free); it holds exactly the validated fields.
 */
typedef struct cmd {
    cmd_type_t type;
    const char *id;        /* points into the struct cmd_parse filled: the command's business id
                              (CONTRACT.md "Reply body"); dangles in a copy of the struct, so
                              prefer cmd_business_id() */
    char account[CMD_ID_MAX + 1];     /* account.open, account.deposit */
    char kind[16];                    /* account.open: "customer" | "merchant" */
    char currency[4];                 /* account.open, account.deposit, payment.create */
    char deposit_id[CMD_ID_MAX + 1];  /* account.deposit */
    char payment_id[CMD_ID_MAX + 1];  /* payment.* */
    char refund_id[CMD_ID_MAX + 1];   /* payment.refund */
    char source[CMD_ID_MAX + 1];      /* payment.create: account id or "tok_..." */
    char destination[CMD_ID_MAX + 1]; /* payment.create */
    bool source_is_token;             /* source starts with "tok_" */
    bool capture;                     /* payment.create */
    bool has_amount;                  /* amount present (always for deposit/create) */
    int64_t amount;
    json_t *body;
} cmd_t;

/* "payment.create" -> CMD_PAYMENT_CREATE; anything else -> CMD_UNKNOWN. */
cmd_type_t cmd_type_from_name(const char *name, size_t len);
/* CMD_PAYMENT_CREATE -> "payment.create"; CMD_UNKNOWN -> "unknown". */
const char *cmd_type_name(cmd_type_t type);
/* CMD_REJECT_SCHEMA_INVALID -> "schema_invalid"; CMD_REJECT_NONE -> "". */
const char *cmd_reject_code(cmd_reject_t code);

/*
 * Validates a delivery and fills *out (which the caller then releases with
 * cmd_free). routing_key/content_type/type_prop are byte strings (not
 * NUL-terminated); content_type and type_prop may be NULL (absent property).
 * Returns PAYQ_OK (*err untouched), or PAYQ_ERR_INVALID with *err filled and
 * *out untouched. err->message never contains a card number.
 * PAYQ_ERR_NOMEM (err->code CMD_REJECT_NONE, *out untouched) when memory ran
 * out: that says nothing about the message, so retry it rather than reject it.
 */
int cmd_parse(const char *routing_key, size_t routing_key_len,
              const char *content_type, size_t content_type_len,
              const char *type_prop, size_t type_prop_len,
              const void *body, size_t body_len,
              cmd_t *out, struct cmd_error *err) PAYQ_MUSTCHECK;

/*
 * The command's business id (CONTRACT.md "Reply body"): payment_id for
 * payment.*, refund_id for payment.refund, deposit_id for account.deposit,
 * account for account.open. Points into *cmd, so it is right for a copied
 * struct too. Never NULL: "" for NULL or a zeroed cmd.
 */
const char *cmd_business_id(const cmd_t *cmd);

/* Releases what cmd_parse allocated; NULL and a zeroed cmd are no-ops. */
void cmd_free(cmd_t *cmd);

/* True when s[0..len) is a valid message_id: 1..255 printable ASCII (0x21..0x7e). */
bool cmd_message_id_valid(const char *s, size_t len);

/* True when s is a valid business id: 1..64 chars of [A-Za-z0-9_.:-]. */
bool cmd_id_valid(const char *s, size_t len);

/*
 * True when s[0..len) looks like a payment card number: 13..19 digits,
 * optionally grouped by single spaces or dashes, passing the Luhn check.
 */
bool cmd_is_card_number(const char *s, size_t len);

/*
 * Masks every card number (as cmd_is_card_number, found anywhere in the
 * bytes, e.g. inside JSON strings) in body[0..len), keeping the first 6 and
 * last 4 digits and replacing the others with '*', in place (same length).
 * Returns the number of card numbers masked.
 */
int cmd_redact_card_numbers(char *body, size_t len);

#endif
