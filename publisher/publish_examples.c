/*
 * publish_examples.c - one valid body per command for `payq-publish
 * --example`, so nobody has to write a first command from the contract's
 * table alone. The bodies tell one story (alice pays the shop, the shop
 * refunds part of it) and each passes the worker's validation; the
 * integration test test_publish checks that against cmd_parse and a real
 * worker.
 */
#include <stdio.h>
#include <string.h>

#include "publish.h"

struct example {
    const char *command;
    const char *what;
    const char *body;
};

static const struct example examples[] = {
    { "account.open", "opens a wallet (kind customer) or a merchant account",
      "{\"account\":\"alice\",\"currency\":\"USD\",\"kind\":\"customer\"}" },
    { "account.deposit", "puts money into an account from outside (amount in cents)",
      "{\"deposit_id\":\"dep-1001\",\"account\":\"alice\",\"amount\":10000,"
      "\"currency\":\"USD\"}" },
    { "payment.create", "pays from a wallet or a card token (tok_visa) to a merchant",
      "{\"payment_id\":\"pay-1001\",\"amount\":2500,\"currency\":\"USD\",\"source\":\"alice\","
      "\"destination\":\"shop\",\"capture\":true,\"description\":\"Order 1001\","
      "\"metadata\":{\"order_id\":\"1001\"}}" },
    { "payment.capture", "captures a payment created with \"capture\": false (amount optional)",
      "{\"payment_id\":\"pay-1002\",\"amount\":1500}" },
    { "payment.cancel", "voids a payment created with \"capture\": false",
      "{\"payment_id\":\"pay-1003\"}" },
    { "payment.refund", "refunds a captured payment, in part here (amount optional)",
      "{\"refund_id\":\"ref-1001\",\"payment_id\":\"pay-1001\",\"amount\":500,"
      "\"reason\":\"one item returned\"}" },
};

#define NEXAMPLES (sizeof examples / sizeof examples[0])

const char *publish_example(const char *command)
{
    for (size_t i = 0; i < NEXAMPLES; i++)
        if (strcmp(examples[i].command, command) == 0)
            return examples[i].body;
    return NULL;
}

static void list(FILE *out)
{
    fprintf(out, "Commands (payq-publish --example COMMAND prints a valid body):\n");
    for (size_t i = 0; i < NEXAMPLES; i++)
        fprintf(out, "  %-16s %s\n", examples[i].command, examples[i].what);
    fprintf(out,
            "\n"
            "Publish one:\n"
            "  payq-publish --example payment.create | payq-publish --wait payment.create -\n"
            "A line of a --file:\n"
            "  {\"command\": \"payment.create\", \"body\": %s}\n",
            publish_example("payment.create"));
}

int publish_example_main(int nargs, char **args, FILE *out)
{
    if (nargs == 0) {
        list(out);
        return EXIT_SUCCEEDED;
    }
    if (nargs > 1) {
        fprintf(stderr, "payq-publish: --example takes at most one COMMAND, e.g. "
                        "payq-publish --example payment.create\n");
        return EXIT_USAGE;
    }
    const char *body = publish_example(args[0]);
    if (!body) {
        fprintf(stderr, "payq-publish: no command %s; one of:", args[0]);
        for (size_t i = 0; i < NEXAMPLES; i++)
            fprintf(stderr, " %s", examples[i].command);
        fprintf(stderr, "\n");
        return EXIT_USAGE;
    }
    fprintf(out, "%s\n", body);
    return EXIT_SUCCEEDED;
}
