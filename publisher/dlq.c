/*
 * payq-dlq - inspect and replay the dead-letter queue (payq.dlq).
 *
 *   payq-dlq list               a table of the dead letters, oldest first
 *   payq-dlq show N             headers and body of the N-th dead letter
 *   payq-dlq replay N | --all   put dead letters back on their original
 *                               routing key with their original message_id
 *
 * Inspection reads with basic.get and never acks, so every message returns
 * to the queue when the connection closes. Replay publishes the copy with
 * publisher confirms and acks the dead letter only after the confirm: a
 * replay killed at any point loses nothing, and a message replayed twice is
 * still applied once, because its message_id and business id are unchanged.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config.h"
#include "log.h"
#include "mq.h"
#include "topology.h"

struct dlq_config {
    const char *amqp_url;
    const char *queue;
    const char *message_id;
    long limit;
    int all;
    int dry_run;
};

#define OPT(f, e, t, d, lo, hi, field, mv, h) \
    { f, e, t, d, lo, hi, offsetof(struct dlq_config, field), mv, h }

static const struct cfg_opt options[] = {
    OPT("amqp-url", "AMQP_URL", CFG_SECRET, "amqp://guest:guest@localhost:5672", 0, 0, amqp_url,
        "URL", "RabbitMQ holding the dead-letter queue"),
    OPT("queue", "PAYQ_DLQ", CFG_STR, PAYQ_Q_DLQ, 0, 0, queue, "NAME", "dead-letter queue"),
    OPT("limit", NULL, CFG_INT, "1000", 1, 1000000, limit, "N",
        "look at no more than N dead letters"),
    OPT("all", NULL, CFG_BOOL, NULL, 0, 0, all, NULL, "replay: every dead letter"),
    OPT("message-id", NULL, CFG_STR, NULL, 0, 0, message_id, "ID",
        "replay: the dead letters with this message_id"),
    OPT("dry-run", NULL, CFG_BOOL, NULL, 0, 0, dry_run, NULL,
        "replay: say what would be replayed, change nothing"),
    CFG_END
};

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: payq-dlq COMMAND [OPTIONS]\n"
            "\n"
            "Inspects and replays payq's dead-letter queue.\n"
            "\n"
            "Commands:\n"
            "  list                 one line per dead letter: position, reason, attempts,\n"
            "                       routing key, message_id, last failure, error\n"
            "  show N               headers and body of dead letter N (from `list`)\n"
            "  replay N             republish dead letter N to its original routing key\n"
            "  replay --all         republish every dead letter\n"
            "  replay --message-id ID\n"
            "                       republish the dead letters with that message_id\n"
            "\n"
            "Options:\n");
    cfg_usage(out, options);
    fprintf(out,
            "\n"
            "Listing never removes a message. A replayed message keeps its message_id, so\n"
            "a command that had already been applied is not applied again.\n"
            "Exit status: 0 ok, 1 runtime error, 2 usage error.\n");
}

static void header_text(const amqp_basic_properties_t *p, const char *name, char *out,
                        size_t len)
{
    amqp_bytes_t b;
    int64_t n;
    if (mq_header_str(p, name, &b))
        snprintf(out, len, "%.*s", (int)b.len, (const char *)b.bytes);
    else if (mq_header_int(p, name, &n))
        snprintf(out, len, "%lld", (long long)n);
    else
        snprintf(out, len, "-");
}

static void prop_text(amqp_flags_t flags, amqp_flags_t flag, amqp_bytes_t b, char *out,
                      size_t len)
{
    if (flags & flag)
        snprintf(out, len, "%.*s", (int)b.len, (const char *)b.bytes);
    else
        snprintf(out, len, "-");
}

static void print_row(long pos, const struct mq_delivery *d)
{
    const amqp_basic_properties_t *p = &d->message.properties;
    char reason[64], attempts[16], rk[128], last[64], err[1100], mid[256];
    header_text(p, "x-payq-reason", reason, sizeof reason);
    header_text(p, "x-payq-attempts", attempts, sizeof attempts);
    header_text(p, "x-payq-original-routing-key", rk, sizeof rk);
    if (strcmp(rk, "-") == 0)
        snprintf(rk, sizeof rk, "%s", d->routing_key);
    header_text(p, "x-payq-last-failure-at", last, sizeof last);
    header_text(p, "x-payq-error", err, sizeof err);
    prop_text(p->_flags, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id, mid, sizeof mid);
    if (strlen(err) > 60)
        strcpy(err + 57, "...");
    printf("%4ld  %-20s %3s  %-16s %-36s %-24s %s\n", pos, reason, attempts, rk, mid, last,
           err);
}

static void print_table(const amqp_table_t *t)
{
    for (int i = 0; i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        const amqp_field_value_t *v = &e->value;
        printf("  %.*s: ", (int)e->key.len, (const char *)e->key.bytes);
        switch (v->kind) {
        case AMQP_FIELD_KIND_UTF8:
        case AMQP_FIELD_KIND_BYTES:
            printf("%.*s\n", (int)v->value.bytes.len, (const char *)v->value.bytes.bytes);
            break;
        case AMQP_FIELD_KIND_BOOLEAN:
            printf("%s\n", v->value.boolean ? "true" : "false");
            break;
        case AMQP_FIELD_KIND_I64:
            printf("%lld\n", (long long)v->value.i64);
            break;
        case AMQP_FIELD_KIND_I32:
            printf("%d\n", v->value.i32);
            break;
        default:
            printf("(%c value)\n", v->kind);
        }
    }
}

static void show(const struct mq_delivery *d)
{
    const amqp_basic_properties_t *p = &d->message.properties;
    char buf[512];
    printf("routing key: %s\n", d->routing_key);
    prop_text(p->_flags, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id, buf, sizeof buf);
    printf("message_id: %s\n", buf);
    prop_text(p->_flags, AMQP_BASIC_CORRELATION_ID_FLAG, p->correlation_id, buf, sizeof buf);
    printf("correlation_id: %s\n", buf);
    prop_text(p->_flags, AMQP_BASIC_CONTENT_TYPE_FLAG, p->content_type, buf, sizeof buf);
    printf("content_type: %s\n", buf);
    printf("headers:\n");
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG)
        print_table(&p->headers);
    printf("body:\n");
    json_t *j = json_loadb(d->message.body.bytes, d->message.body.len, 0, NULL);
    if (j) {
        char *s = json_dumps(j, JSON_INDENT(2));
        printf("%s\n", s ? s : "");
        free(s);
        json_decref(j);
    } else {
        printf("%.*s\n(not valid JSON)\n", (int)d->message.body.len,
               (const char *)d->message.body.bytes);
    }
}

/* Publishes a dead letter back to its original exchange and routing key,
 * with its original properties and without payq's failure headers (its
 * attempts start again). The publisher's user_id travels as x-payq-user-id,
 * so the idempotency scope stays the same. */
static int replay_one(mq_t *mq, const struct mq_delivery *d)
{
    const amqp_basic_properties_t *p = &d->message.properties;
    char x[256], rk[256];
    header_text(p, "x-payq-original-exchange", x, sizeof x);
    header_text(p, "x-payq-original-routing-key", rk, sizeof rk);
    if (strcmp(x, "-") == 0 || x[0] == 0)
        snprintf(x, sizeof x, "%s", PAYQ_X_COMMANDS);
    if (strcmp(rk, "-") == 0)
        snprintf(rk, sizeof rk, "%s", d->routing_key);

    amqp_table_entry_t e[80];
    int n = 0;
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
        for (int i = 0; i < p->headers.num_entries && n < 80; i++) {
            const amqp_table_entry_t *h = &p->headers.entries[i];
            bool ours = h->key.len >= 7 && memcmp(h->key.bytes, "x-payq-", 7) == 0;
            bool user = h->key.len == 14 && memcmp(h->key.bytes, "x-payq-user-id", 14) == 0;
            bool death = h->key.len >= 7 && memcmp(h->key.bytes, "x-death", 7) == 0;
            bool tier = h->key.len == strlen(PAYQ_RETRY_TIER_HEADER) &&
                        memcmp(h->key.bytes, PAYQ_RETRY_TIER_HEADER, h->key.len) == 0;
            if ((ours && !user) || death || tier)
                continue;
            e[n++] = *h;
        }
    }
    amqp_basic_properties_t props = *p;
    props.headers.num_entries = n;
    props.headers.entries = e;
    props._flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    uint64_t seq;
    int rc = mq_publish(mq, x, rk, true, &props, d->message.body.bytes, d->message.body.len,
                        &seq);
    if (rc == PAYQ_OK)
        rc = mq_wait_confirms(mq, seq, 30000);
    if (rc == PAYQ_OK)
        rc = mq_ack(mq, d->channel, d->tag, false);
    return rc;
}

static bool selected(const struct dlq_config *cfg, long pos, long want,
                     const struct mq_delivery *d)
{
    if (cfg->all)
        return true;
    if (cfg->message_id) {
        const amqp_basic_properties_t *p = &d->message.properties;
        return (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
               p->message_id.len == strlen(cfg->message_id) &&
               memcmp(p->message_id.bytes, cfg->message_id, p->message_id.len) == 0;
    }
    return pos == want;
}

int main(int argc, char **argv)
{
    struct dlq_config cfg;
    struct cfg_strings owned = { { 0 }, 0 };
    char err[512], red[512];
    int nargs, help, rc = 2;
    mq_t *mq = NULL;
    memset(&cfg, 0, sizeof cfg);
    log_init("payq-dlq", LOG_WARN);
    if (cfg_parse(options, &cfg, &owned, argc, argv, &nargs, &help, err, sizeof err) != PAYQ_OK) {
        fprintf(stderr, "payq-dlq: %s\n", err);
        goto out;
    }
    if (help || nargs == 0) {
        usage(help ? stdout : stderr);
        rc = help ? 0 : 2;
        goto out;
    }
    const char *command = argv[1];
    long want = nargs > 1 ? strtol(argv[2], NULL, 10) : 0;
    bool is_list = strcmp(command, "list") == 0, is_show = strcmp(command, "show") == 0,
         is_replay = strcmp(command, "replay") == 0;
    if (!is_list && !is_show && !is_replay) {
        fprintf(stderr, "payq-dlq: unknown command %s (list, show, replay; see --help)\n",
                command);
        goto out;
    }
    if ((is_show || (is_replay && !cfg.all && !cfg.message_id)) && want < 1) {
        fprintf(stderr, "payq-dlq: %s needs a position N from `payq-dlq list`%s\n", command,
                is_replay ? ", --all or --message-id" : "");
        goto out;
    }
    cfg_redact_url(cfg.amqp_url, red, sizeof red);
    if (mq_connect(cfg.amqp_url, "payq-dlq", 30, &mq) != PAYQ_OK) {
        fprintf(stderr, "payq-dlq: cannot connect to %s: %s — is RabbitMQ running? (set AMQP_URL)\n",
                red, mq_connect_error());
        mq = NULL;
        rc = 1;
        goto out;
    }

    rc = 0;
    long pos = 0, replayed = 0, total = -1;
    if (is_list)
        printf("%4s  %-20s %3s  %-16s %-36s %-24s %s\n", "N", "REASON", "TRY", "ROUTING KEY",
               "MESSAGE ID", "LAST FAILURE", "ERROR");
    while (pos < cfg.limit) {
        struct mq_delivery *d = NULL;
        if (mq_get(mq, cfg.queue, &d) != PAYQ_OK) {
            fprintf(stderr, "payq-dlq: cannot read %s: %s\n", cfg.queue, mq_error(mq));
            rc = 1;
            break;
        }
        if (!d)
            break;
        /* Only what was there when we started: a replayed message that
         * fails again comes back behind us and is not looked at twice. */
        if (total < 0)
            total = (long)d->remaining + 1;
        pos++;
        if (is_list) {
            print_row(pos, d);
        } else if (is_show && pos == want) {
            show(d);
            mq_delivery_free(d);
            break;
        } else if (is_replay && selected(&cfg, pos, want, d)) {
            if (cfg.dry_run) {
                printf("would replay: ");
                print_row(pos, d);
            } else if (replay_one(mq, d) != PAYQ_OK) {
                fprintf(stderr, "payq-dlq: replay of %ld failed: %s (it stays in the DLQ)\n",
                        pos, mq_error(mq));
                mq_delivery_free(d);
                rc = 1;
                break;
            } else {
                replayed++;
            }
        }
        mq_delivery_free(d);
        if ((is_replay && !cfg.all && !cfg.message_id && pos >= want) || pos >= total)
            break;
    }
    if (is_list && pos == 0)
        printf("(the dead-letter queue %s is empty)\n", cfg.queue);
    if (is_show && pos < want) {
        fprintf(stderr, "payq-dlq: there is no dead letter %ld (the queue holds %ld)\n", want,
                pos);
        rc = 1;
    }
    if (is_replay && !cfg.dry_run)
        fprintf(stderr, "payq-dlq: replayed %ld message(s)\n", replayed);
out:
    mq_close(mq);
    cfg_strings_free(&owned);
    return rc;
}
