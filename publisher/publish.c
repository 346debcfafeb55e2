/*
 * payq-publish - sends payq commands the way CONTRACT.md asks: persistent,
 * mandatory, with publisher confirms and a message_id, and optionally waits
 * for the worker's reply (direct reply-to). This file holds the options and
 * the one-command mode; --file is publish_batch.c, --example
 * publish_examples.c.
 */
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cmd.h"
#include "config.h"
#include "log.h"
#include "mq.h"
#include "publish.h"
#include "topology.h"

#define OPT(f, e, t, d, lo, hi, field, mv, h) \
    { f, e, t, d, lo, hi, offsetof(struct publish_config, field), mv, h }

static const struct cfg_opt options[] = {
    OPT("amqp-url", "AMQP_URL", CFG_SECRET, "amqp://guest:guest@localhost:5672", 0, 0, amqp_url,
        "URL[,URL...]",
        "RabbitMQ to publish to (amqp:// or amqps://; a cluster's nodes comma-separated)"),
    OPT("amqp-cacert", "AMQP_CACERT", CFG_STR, NULL, 0, 0, amqp_tls.cacert, "FILE",
        "amqps://: PEM file of the CA(s) that signed the broker's certificate (default: the "
        "system's CAs). The certificate is always verified and must name the URL's host"),
    OPT("amqp-cert", "AMQP_CERT", CFG_STR, NULL, 0, 0, amqp_tls.cert, "FILE",
        "amqps://: client certificate (PEM) for mutual TLS, with --amqp-key"),
    OPT("amqp-key", "AMQP_KEY", CFG_STR, NULL, 0, 0, amqp_tls.key, "FILE",
        "amqps://: the client certificate's private key (PEM, not encrypted)"),
    OPT("wait", NULL, CFG_BOOL, NULL, 0, 0, wait, NULL,
        "wait for the worker's reply, print it on stdout, exit with its status"),
    OPT("timeout", "PAYQ_TIMEOUT", CFG_INT, "30", 1, 86400, timeout, "SEC",
        "how long --wait waits for the reply, and publishing for the broker's confirm; "
        "with --file, for everything (all confirms and replies)"),
    OPT("message-id", NULL, CFG_STR, NULL, 0, 0, message_id, "ID",
        "idempotency key (1-255 printable ASCII); default: a new random UUID"),
    OPT("no-message-id", NULL, CFG_BOOL, NULL, 0, 0, no_message_id, NULL,
        "send without a message_id (idempotency then rests on the business id alone)"),
    OPT("correlation-id", NULL, CFG_STR, NULL, 0, 0, correlation_id, "ID",
        "copied to the reply, the events and the worker's log lines"),
    OPT("reply-to", NULL, CFG_STR, NULL, 0, 0, reply_to, "QUEUE",
        "queue for the reply (cannot be combined with --wait, which uses direct reply-to)"),
    OPT("user-id", NULL, CFG_STR, NULL, 0, 0, user_id, "USER",
        "AMQP user_id property; the broker checks it equals the login user"),
    OPT("exchange", NULL, CFG_STR, PAYQ_X_COMMANDS, 0, 0, exchange, "NAME",
        "exchange to publish to"),
    OPT("file", NULL, CFG_STR, NULL, 0, 0, file, "FILE",
        "publish many commands, one JSON object a line (`-` = standard input): "
        "{\"command\": ..., \"body\": {...}, \"message_id\"?, \"correlation_id\"?}"),
    OPT("rate", NULL, CFG_INT, "0", 0, 1000000, rate, "N",
        "with --file, publish at most N commands a second (0 = as fast as the broker confirms)"),
    OPT("example", NULL, CFG_BOOL, NULL, 0, 0, example, NULL,
        "print a valid example body of COMMAND, or list the commands"),
    OPT("quiet", NULL, CFG_BOOL, NULL, 0, 0, quiet, NULL,
        "print nothing on stderr but errors (no progress, no summary)"),
    CFG_END
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: payq-publish [OPTIONS] COMMAND [BODY]\n"
            "       payq-publish [OPTIONS] --file FILE|-\n"
            "       payq-publish --example [COMMAND]\n"
            "\n"
            "Publishes one payq command. COMMAND is the routing key (account.open,\n"
            "account.deposit, payment.create, payment.capture, payment.cancel,\n"
            "payment.refund); BODY is its JSON object, or `-` (or nothing) to read it\n"
            "from standard input. The message is persistent and mandatory, and this\n"
            "program returns only once the broker has confirmed it.\n"
            "\n"
            "With --file it publishes every line of FILE, one JSON object a line:\n"
            "  {\"command\": \"payment.create\", \"body\": {...}, \"message_id\": \"...\",\n"
            "   \"correlation_id\": \"...\"}   (message_id, correlation_id optional)\n"
            "with up to %d confirms outstanding; --wait then prints every reply as one\n"
            "JSON line on stdout, with \"line\" and \"correlation_id\" added, and a\n"
            "command without a reply as {\"status\": \"timeout\", ...}.\n"
            "\n"
            "Options:\n", PUBLISH_WINDOW);
    cfg_usage(out, options);
    fprintf(out,
            "\n"
            "Exit status: 0 published (with --wait: succeeded or authorized), 1 failed\n"
            "(a business refusal such as insufficient_funds), 2 usage error, 3 rejected\n"
            "(dead-lettered), 4 no reply before --timeout, 5 broker unreachable or the\n"
            "message was refused. With --file: 0 only if every line was confirmed (with\n"
            "--wait: succeeded or authorized), else the worst code of all lines.\n"
            "\n"
            "Examples:\n"
            "  payq-publish account.open '{\"account\":\"alice\",\"currency\":\"USD\","
            "\"kind\":\"customer\"}'\n"
            "  payq-publish --wait payment.create '{\"payment_id\":\"p-1\",\"amount\":1250,"
            "\"currency\":\"USD\",\n"
            "      \"source\":\"alice\",\"destination\":\"shop\",\"capture\":true}'\n"
            "  payq-publish --wait --rate 100 --file payments.ndjson > replies.ndjson\n"
            "  payq-publish --example payment.create\n");
}

int publish_uuid4(char out[37])
{
    unsigned char b[16];
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, b, sizeof b);
    close(fd);
    if (n != (ssize_t)sizeof b)
        return -1;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
             b[13], b[14], b[15]);
    return 0;
}

static char *read_stdin(size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, stdin);
        n += r;
        if (r == 0)
            break;
        if (n == cap) {
            if (cap > 4 * CMD_BODY_MAX)
                break;
            char *g = realloc(buf, cap *= 2);
            if (!g) {
                free(buf);
                return NULL;
            }
            buf = g;
        }
    }
    if (buf)
        *len = n;
    return buf;
}

int publish_status_exit(const char *s)
{
    if (s && (strcmp(s, "succeeded") == 0 || strcmp(s, "authorized") == 0))
        return EXIT_SUCCEEDED;
    if (s && strcmp(s, "rejected") == 0)
        return EXIT_REJECTED;
    return EXIT_FAILED;
}

/* Exit code for a reply's body. */
static int reply_exit(const char *body, size_t len)
{
    json_t *r = json_loadb(body, len, 0, NULL);
    int rc = publish_status_exit(r ? json_string_value(json_object_get(r, "status")) : NULL);
    json_decref(r);
    return rc;
}

int main(int argc, char **argv)
{
    struct publish_config cfg;
    struct cfg_strings owned = { { 0 }, 0 };
    char err[512], red[512], mid[37];
    int nargs, help, rc = EXIT_USAGE;
    char *body = NULL;
    size_t body_len = 0;
    mq_t *mq = NULL;
    memset(&cfg, 0, sizeof cfg);
    log_init("payq-publish", LOG_WARN);

    if (cfg_parse(options, &cfg, &owned, argc, argv, &nargs, &help, err, sizeof err) != PAYQ_OK) {
        fprintf(stderr, "payq-publish: %s\n", err);
        goto out;
    }
    if (help) {
        usage(stdout);
        rc = 0;
        goto out;
    }
    if (cfg.example) {
        rc = publish_example_main(nargs, argv + 1, stdout);
        goto out;
    }
    if (mq_tls_check(cfg.amqp_url, &cfg.amqp_tls, err, sizeof err) != PAYQ_OK) {
        fprintf(stderr, "payq-publish: %s\n", err);
        goto out;
    }
    if (cfg.file) {
        if (nargs > 0) {
            fprintf(stderr, "payq-publish: --file takes the commands from %s; drop %s "
                            "(or drop --file to publish one command)\n",
                    cfg.file, argv[1]);
            goto out;
        }
        if (cfg.message_id || cfg.correlation_id) {
            fprintf(stderr, "payq-publish: --%s sets one value for every line; with --file "
                            "put \"%s\" in each line instead (or leave it out: each line "
                            "gets a fresh one)\n",
                    cfg.message_id ? "message-id" : "correlation-id",
                    cfg.message_id ? "message_id" : "correlation_id");
            goto out;
        }
        if (cfg.wait && cfg.reply_to) {
            fprintf(stderr, "payq-publish: --wait and --reply-to exclude each other\n");
            goto out;
        }
        rc = publish_batch(&cfg);
        goto out;
    }
    if (cfg.rate) {
        fprintf(stderr, "payq-publish: --rate applies to --file only\n");
        goto out;
    }
    if (nargs < 1 || nargs > 2) {
        fprintf(stderr, "payq-publish: expected COMMAND [BODY], --file FILE or --example "
                        "(see --help)\n");
        goto out;
    }
    if (cfg.wait && cfg.reply_to) {
        fprintf(stderr, "payq-publish: --wait and --reply-to exclude each other\n");
        goto out;
    }
    const char *command = argv[1];
    if (nargs == 2 && strcmp(argv[2], "-") != 0) {
        body = strdup(argv[2]);
        body_len = body ? strlen(body) : 0;
    } else {
        if (isatty(STDIN_FILENO))
            fprintf(stderr, "payq-publish: reading the JSON body from standard input...\n");
        body = read_stdin(&body_len);
    }
    if (!body) {
        fprintf(stderr, "payq-publish: out of memory\n");
        goto out;
    }
    if (cfg.message_id && !cmd_message_id_valid(cfg.message_id, strlen(cfg.message_id))) {
        fprintf(stderr, "payq-publish: --message-id must be 1-255 printable ASCII characters\n");
        goto out;
    }
    if (!cfg.message_id && !cfg.no_message_id) {
        if (publish_uuid4(mid) != 0) {
            fprintf(stderr, "payq-publish: cannot read /dev/urandom\n");
            goto out;
        }
        cfg.message_id = mid;
    }

    cfg_redact_url(cfg.amqp_url, red, sizeof red);
    if (mq_connect(cfg.amqp_url, &cfg.amqp_tls, "payq-publish", 30, &mq) != PAYQ_OK) {
        const char *why = mq_connect_error();
        fprintf(stderr, "payq-publish: cannot connect to %s: %s%s\n", red, why,
                strstr(why, "TLS") != NULL
                    ? ""
                    : " — is RabbitMQ running? (bash tests/stack.sh up starts a local one; "
                      "set AMQP_URL)");
        mq = NULL;
        rc = EXIT_UNAVAILABLE;
        goto out;
    }
    if (cfg.wait && mq_consume_direct_reply(mq) != PAYQ_OK) {
        fprintf(stderr, "payq-publish: cannot consume amq.rabbitmq.reply-to: %s\n", mq_error(mq));
        rc = EXIT_UNAVAILABLE;
        goto out;
    }

    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    if (cfg.message_id) {
        p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        p.message_id = amqp_cstring_bytes(cfg.message_id);
    }
    if (cfg.correlation_id) {
        p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        p.correlation_id = amqp_cstring_bytes(cfg.correlation_id);
    }
    if (cfg.wait || cfg.reply_to) {
        p._flags |= AMQP_BASIC_REPLY_TO_FLAG;
        p.reply_to = amqp_cstring_bytes(cfg.wait ? "amq.rabbitmq.reply-to" : cfg.reply_to);
    }
    if (cfg.user_id) {
        p._flags |= AMQP_BASIC_USER_ID_FLAG;
        p.user_id = amqp_cstring_bytes(cfg.user_id);
    }

    uint64_t seq;
    int st = mq_publish(mq, cfg.exchange, command, true, &p, body, body_len, &seq);
    if (st == PAYQ_OK)
        st = mq_wait_confirms(mq, seq, (int)cfg.timeout * 1000);
    if (st != PAYQ_OK) {
        fprintf(stderr, "payq-publish: the broker did not accept the message: %s%s%s\n",
                payq_strerror(st), mq_error(mq)[0] ? ": " : "", mq_error(mq));
        if (st == PAYQ_ERR_UNROUTABLE)
            fprintf(stderr, "payq-publish: no queue is bound for %s on exchange %s; start "
                    "payq-worker once or import rabbitmq/definitions.json\n", command,
                    cfg.exchange);
        rc = EXIT_UNAVAILABLE;
        goto out;
    }
    if (!cfg.quiet)
        fprintf(stderr, "payq-publish: %s confirmed by the broker (message_id %s)\n", command,
                cfg.message_id ? cfg.message_id : "none");
    if (!cfg.wait) {
        rc = EXIT_SUCCEEDED;
        goto out;
    }

    struct mq_delivery *d = NULL;
    st = mq_next(mq, (int)cfg.timeout * 1000, &d);
    if (st == PAYQ_ERR_TIMEOUT) {
        fprintf(stderr, "payq-publish: no reply within %ld s (is payq-worker running?)\n",
                cfg.timeout);
        rc = EXIT_TIMEOUT;
        goto out;
    }
    if (st != PAYQ_OK) {
        fprintf(stderr, "payq-publish: lost the broker while waiting: %s\n", mq_error(mq));
        rc = EXIT_UNAVAILABLE;
        goto out;
    }
    fwrite(d->message.body.bytes, 1, d->message.body.len, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    rc = reply_exit(d->message.body.bytes, d->message.body.len);
    mq_delivery_free(d);
out:
    mq_close(mq);
    free(body);
    cfg_strings_free(&owned);
    return rc;
}
