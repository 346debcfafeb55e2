/*
 * fuzz_cmd.c - libFuzzer harness for command validation (cmd_parse) and card
 * number masking, the code every untrusted byte from the broker goes through.
 *
 * Input: first byte picks the routing key (a known command, or garbage from
 * the input), second byte the content type; the rest is the body. Checks
 * beyond "no crash, no leak, no undefined behaviour": a parsed command has a
 * valid business id and an amount in range; a rejection has a code and a
 * message that contains no card number; masking keeps the length and leaves
 * no maskable card number behind.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "money.h"

static const char *const keys[] = { "account.open",    "account.deposit", "payment.create",
                                    "payment.capture", "payment.cancel",  "payment.refund",
                                    "payment.teleport", "" };
static const char *const types[] = { "application/json", "application/json; charset=utf-8",
                                     "text/plain", NULL };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const char *rk = keys[data[0] % (sizeof keys / sizeof keys[0])];
    const char *ct = types[data[1] % (sizeof types / sizeof types[0])];
    const char *body = (const char *)data + 2;
    size_t len = size - 2;

    cmd_t cmd;
    struct cmd_error err;
    memset(&err, 0, sizeof err);
    int rc = cmd_parse(rk, strlen(rk), ct, ct ? strlen(ct) : 0, NULL, 0, body, len, &cmd, &err);
    if (rc == PAYQ_OK) {
        const char *id = cmd_business_id(&cmd);
        if (!cmd_id_valid(id, strlen(id)))
            abort();
        if (cmd.has_amount && money_check_amount(cmd.amount) != PAYQ_OK)
            abort();
        cmd_free(&cmd);
    } else if (rc == PAYQ_ERR_INVALID) {
        if (err.code == CMD_REJECT_NONE || !err.message[0])
            abort();
        /* the message never echoes a card number */
        for (const char *p = err.message; *p; p++)
            for (size_t n = 13; n <= 19 && p + n <= err.message + strlen(err.message); n++)
                if (cmd_is_card_number(p, n))
                    abort();
    }

    char *copy = malloc(len ? len : 1);
    if (!copy)
        return 0;
    memcpy(copy, body, len);
    cmd_redact_card_numbers(copy, len);
    if (cmd_redact_card_numbers(copy, len) != 0) /* nothing left to mask */
        abort();
    free(copy);
    return 0;
}
