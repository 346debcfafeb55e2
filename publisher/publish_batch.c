/*
 * publish_batch.c - payq-publish --file: many commands, one JSON object a
 * line (NDJSON), over one connection.
 *
 * The whole input is read and checked first, so a typo on line 900 stops the
 * run before line 1 is published. Then the commands go out with up to
 * PUBLISH_WINDOW publisher confirms outstanding (waiting for each confirm in
 * turn would cap a run at one command per round trip), paced by --rate.
 * With --wait every command carries reply_to amq.rabbitmq.reply-to and its
 * own correlation_id, by which its reply is found; replies are printed as
 * they come, one JSON line each, so scripts can pipe them. --timeout bounds
 * the whole run.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cmd.h"
#include "config.h"
#include "mq.h"
#include "publish.h"

#define EXPECTED_LINE "expected {\"command\": \"payment.create\", \"body\": {...}}"

/* One line of the input. */
struct item {
    long line;
    char *command;
    char *body; /* compact JSON text of the line's body */
    size_t body_len;
    char *message_id;     /* NULL: none (--no-message-id) */
    char *correlation_id; /* NULL only without --wait */
    bool replied;
};

/* Replies counted by status and code, for the summary. */
struct tally {
    char status[16];
    char code[48];
    long n;
};

struct batch {
    const struct publish_config *cfg;
    struct item *items;
    size_t n, cap;
    struct item **by_cid; /* items sorted by correlation_id (--wait) */
    mq_t *mq;
    size_t sent;
    uint64_t confirmed; /* every seq up to this one is confirmed */
    size_t replies;
    int worst;
    struct tally tally[32];
    size_t ntally;
    long long start, deadline, last_draw;
    bool progress;   /* stderr is a terminal and not --quiet */
    bool line_drawn; /* a progress line is on the screen */
    bool stdout_tty;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int worse(int a, int b)
{
    return a > b ? a : b;
}

static void items_free(struct batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        free(b->items[i].command);
        free(b->items[i].body);
        free(b->items[i].message_id);
        free(b->items[i].correlation_id);
    }
    free(b->items);
    free(b->by_cid);
}

/* A string member of a line: absent is fine (*out NULL), anything but a
 * string is an error. */
static int line_string(json_t *o, const char *key, long line, const char **out)
{
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v)
        return 0;
    if (!json_is_string(v)) {
        fprintf(stderr, "payq-publish: line %ld: \"%s\" must be a string\n", line, key);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

static void list_commands(FILE *out)
{
    for (int t = CMD_ACCOUNT_OPEN; t <= CMD_PAYMENT_REFUND; t++)
        fprintf(out, "%s%s", t == CMD_ACCOUNT_OPEN ? "" : ", ", cmd_type_name((cmd_type_t)t));
}

/* Parses one non-blank line into b->items[b->n]. Errors are printed. */
static int parse_line(struct batch *b, const char *text, size_t len, long line, const char *run_id)
{
    json_error_t jerr;
    json_t *o = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) {
        fprintf(stderr,
                "payq-publish: line %ld: not JSON: %s at column %d (" EXPECTED_LINE
                ", the whole object on one line)\n",
                line, jerr.text, jerr.column);
        return -1;
    }
    int rc = -1;
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        if (strcmp(key, "command") != 0 && strcmp(key, "body") != 0 &&
            strcmp(key, "message_id") != 0 && strcmp(key, "correlation_id") != 0) {
            fprintf(stderr,
                    "payq-publish: line %ld: unknown field \"%s\" (a line has "
                    "\"command\", \"body\" and optionally \"message_id\", "
                    "\"correlation_id\"; the command's own fields go inside "
                    "\"body\")\n",
                    line, key);
            goto done;
        }
    }
    const char *command, *mid, *cid;
    if (line_string(o, "command", line, &command) || line_string(o, "message_id", line, &mid) ||
        line_string(o, "correlation_id", line, &cid))
        goto done;
    if (!command) {
        fprintf(stderr, "payq-publish: line %ld: no \"command\" (" EXPECTED_LINE ")\n", line);
        goto done;
    }
    if (cmd_type_from_name(command, strlen(command)) == CMD_UNKNOWN) {
        fprintf(stderr, "payq-publish: line %ld: unknown command \"%s\"; one of ", line, command);
        list_commands(stderr);
        fprintf(stderr, "\n");
        goto done;
    }
    json_t *body = json_object_get(o, "body");
    if (!json_is_object(body)) {
        fprintf(stderr,
                "payq-publish: line %ld: \"body\" must be a JSON object (" EXPECTED_LINE
                "; payq-publish --example %s prints one)\n",
                line, command);
        goto done;
    }
    if (mid && !cmd_message_id_valid(mid, strlen(mid))) {
        fprintf(stderr,
                "payq-publish: line %ld: message_id must be 1-255 printable ASCII "
                "characters (or leave it out: payq-publish makes a UUID)\n",
                line);
        goto done;
    }
    if (cid && (cid[0] == 0 || strlen(cid) > 255)) {
        fprintf(stderr,
                "payq-publish: line %ld: correlation_id must be 1-255 characters (or "
                "leave it out)\n",
                line);
        goto done;
    }
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        struct item *g = realloc(b->items, cap * sizeof *g);
        if (!g)
            goto nomem;
        b->items = g;
        b->cap = cap;
    }
    struct item *it = &b->items[b->n];
    memset(it, 0, sizeof *it);
    it->line = line;
    it->command = strdup(command);
    it->body = json_dumps(body, JSON_COMPACT);
    char made[80];
    if (mid) {
        it->message_id = strdup(mid);
    } else if (!b->cfg->no_message_id) {
        char uuid[37];
        if (publish_uuid4(uuid) != 0) {
            fprintf(stderr, "payq-publish: cannot read /dev/urandom\n");
            goto done;
        }
        it->message_id = strdup(uuid);
    }
    if (cid) {
        it->correlation_id = strdup(cid);
    } else if (b->cfg->wait) {
        /* Unique per run and per line, and says where it came from. */
        snprintf(made, sizeof made, "%s-%ld", run_id, line);
        it->correlation_id = strdup(made);
    }
    b->n++; /* from here items_free owns the strings */
    if (!it->command || !it->body || (!mid && !b->cfg->no_message_id && !it->message_id) ||
        ((cid || b->cfg->wait) && !it->correlation_id))
        goto nomem;
    it->body_len = strlen(it->body);
    rc = 0;
    goto done;
nomem:
    fprintf(stderr, "payq-publish: out of memory\n");
done:
    json_decref(o);
    return rc;
}

static int read_input(struct batch *b)
{
    const char *name = b->cfg->file;
    bool is_stdin = strcmp(name, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(name, "r");
    if (!f) {
        fprintf(stderr, "payq-publish: cannot open %s: %s\n", name, strerror(errno));
        return -1;
    }
    if (is_stdin && isatty(STDIN_FILENO))
        fprintf(stderr, "payq-publish: reading commands from standard input, one JSON object a "
                        "line; end with Ctrl-D...\n");
    char run_id[37];
    if (publish_uuid4(run_id) != 0) {
        fprintf(stderr, "payq-publish: cannot read /dev/urandom\n");
        return -1;
    }
    run_id[13] = 0; /* 12 hex digits and a dash are unique enough per run */
    char *text = NULL;
    size_t cap = 0;
    ssize_t len;
    long line = 0;
    int rc = 0;
    while (rc == 0 && (len = getline(&text, &cap, f)) >= 0) {
        line++;
        while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
            len--;
        size_t i = 0;
        while (i < (size_t)len && (text[i] == ' ' || text[i] == '\t'))
            i++;
        if (i == (size_t)len)
            continue; /* blank lines are allowed */
        rc = parse_line(b, text, (size_t)len, line, run_id);
    }
    if (rc == 0 && ferror(f)) {
        fprintf(stderr, "payq-publish: cannot read %s: %s\n", name, strerror(errno));
        rc = -1;
    }
    free(text);
    if (!is_stdin)
        fclose(f);
    if (rc == 0 && b->n == 0) {
        fprintf(stderr, "payq-publish: no commands in %s (" EXPECTED_LINE " on each line)\n",
                is_stdin ? "standard input" : name);
        rc = -1;
    }
    return rc;
}

static int cmp_cid(const void *a, const void *b)
{
    return strcmp((*(struct item *const *)a)->correlation_id,
                  (*(struct item *const *)b)->correlation_id);
}

/* With --wait, replies are found by correlation_id, so each must be unique. */
static int index_by_cid(struct batch *b)
{
    b->by_cid = malloc(b->n * sizeof *b->by_cid);
    if (!b->by_cid) {
        fprintf(stderr, "payq-publish: out of memory\n");
        return -1;
    }
    for (size_t i = 0; i < b->n; i++)
        b->by_cid[i] = &b->items[i];
    qsort(b->by_cid, b->n, sizeof *b->by_cid, cmp_cid);
    for (size_t i = 1; i < b->n; i++) {
        if (strcmp(b->by_cid[i - 1]->correlation_id, b->by_cid[i]->correlation_id) == 0) {
            const struct item *x = b->by_cid[i - 1], *y = b->by_cid[i];
            if (x->line > y->line) {
                const struct item *t = x;
                x = y;
                y = t;
            }
            fprintf(stderr,
                    "payq-publish: line %ld: correlation_id \"%s\" is already used by "
                    "line %ld; --wait matches replies by correlation_id, so give each "
                    "line its own (or leave it out: payq-publish makes one)\n",
                    y->line, y->correlation_id, x->line);
            return -1;
        }
    }
    return 0;
}

static struct item *find_cid(struct batch *b, const char *cid, size_t len)
{
    size_t lo = 0, hi = b->n;
    if (len == 0 || !cid)
        return NULL;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *c = b->by_cid[mid]->correlation_id;
        int d = strncmp(c, cid, len);
        if (d == 0 && c[len] != 0)
            d = 1;
        if (d == 0)
            return b->by_cid[mid];
        if (d < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* ---------------------------------------------------------------- output */

static void clear_progress(struct batch *b)
{
    if (b->line_drawn) {
        fputs("\r\033[K", stderr);
        b->line_drawn = false;
    }
}

static void format_duration(char *out, size_t len, double sec)
{
    if (sec < 60)
        snprintf(out, len, "%.0fs", sec);
    else if (sec < 3600)
        snprintf(out, len, "%dm%02ds", (int)sec / 60, (int)sec % 60);
    else
        snprintf(out, len, "%dh%02dm", (int)(sec / 3600), ((int)sec % 3600) / 60);
}

/* Redraws the progress line, at most ten times a second unless forced. */
static void draw_progress(struct batch *b, bool force)
{
    if (!b->progress)
        return;
    long long now = now_ms();
    if (!force && now - b->last_draw < 100)
        return;
    b->last_draw = now;
    double elapsed = (double)(now - b->start) / 1000.0;
    /* While sending, the send rate; then the rate replies come in. */
    bool sending = b->sent < b->n;
    size_t done = sending ? b->sent : b->replies;
    double rate = elapsed > 0.05 ? (double)done / elapsed : 0;
    char eta[32] = "?";
    if (!sending && !b->cfg->wait)
        snprintf(eta, sizeof eta, "confirming");
    else if (rate > 0)
        format_duration(eta, sizeof eta, (double)(b->n - done) / rate);
    fprintf(stderr, "\r\033[Kpayq-publish: sent %zu/%zu", b->sent, b->n);
    if (b->cfg->wait)
        fprintf(stderr, "  replies %zu", b->replies);
    fprintf(stderr, "  %.0f %s/s  ETA %s", rate, sending ? "sent" : "replies", eta);
    fflush(stderr);
    b->line_drawn = true;
}

static void count(struct batch *b, const char *status, const char *code)
{
    for (size_t i = 0; i < b->ntally; i++) {
        if (strcmp(b->tally[i].status, status) == 0 && strcmp(b->tally[i].code, code) == 0) {
            b->tally[i].n++;
            return;
        }
    }
    if (b->ntally == sizeof b->tally / sizeof b->tally[0])
        return; /* more kinds than the contract has codes: not worth a line */
    struct tally *t = &b->tally[b->ntally++];
    snprintf(t->status, sizeof t->status, "%s", status);
    snprintf(t->code, sizeof t->code, "%s", code);
    t->n++;
}

/* Prints one JSON line on stdout: the reply with "line" and
 * "correlation_id" added (unless the reply has them). */
static void print_reply(struct batch *b, const struct item *it, json_t *reply)
{
    if (!json_object_get(reply, "correlation_id"))
        json_object_set_new(reply, "correlation_id", json_string(it->correlation_id));
    if (!json_object_get(reply, "line"))
        json_object_set_new(reply, "line", json_integer(it->line));
    if (b->stdout_tty)
        clear_progress(b);
    json_dumpf(reply, stdout, JSON_COMPACT);
    fputc('\n', stdout);
    fflush(stdout);
}

static void handle_reply(struct batch *b, struct mq_delivery *d)
{
    const amqp_basic_properties_t *p = &d->message.properties;
    if (!(p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG))
        return; /* not ours */
    struct item *it = find_cid(b, p->correlation_id.bytes, p->correlation_id.len);
    if (!it || it->replied)
        return; /* a stray, or a duplicate reply: the first one counts */
    it->replied = true;
    b->replies++;
    json_t *reply = json_loadb(d->message.body.bytes, d->message.body.len, 0, NULL);
    if (!json_is_object(reply)) {
        json_decref(reply);
        reply = json_pack("{s:s, s:s, s:s#}", "status", "invalid_reply", "message",
                          "the reply is not a JSON object", "raw", d->message.body.bytes,
                          (int)d->message.body.len);
    }
    if (!reply)
        return;
    const char *status = json_string_value(json_object_get(reply, "status"));
    const char *code = json_string_value(json_object_get(reply, "code"));
    count(b, status ? status : "?", code ? code : "");
    b->worst = worse(b->worst, publish_status_exit(status));
    print_reply(b, it, reply);
    json_decref(reply);
}

/* Takes every delivery that is ready, waiting up to timeout_ms for the
 * first. Returns PAYQ_OK, or the error that broke the connection. */
static int serve(struct batch *b, int timeout_ms)
{
    for (;;) {
        struct mq_delivery *d = NULL;
        int st = mq_next(b->mq, timeout_ms, &d);
        if (st == PAYQ_ERR_TIMEOUT)
            return PAYQ_OK;
        if (st != PAYQ_OK)
            return st;
        handle_reply(b, d);
        mq_delivery_free(d);
        timeout_ms = 0;
    }
}

/* Advances b->confirmed as far as the broker has confirmed, without
 * waiting. */
static int poll_confirms(struct batch *b)
{
    while (b->confirmed < mq_last_seq(b->mq)) {
        int st = mq_wait_confirms(b->mq, b->confirmed + 1, 0);
        if (st == PAYQ_ERR_TIMEOUT)
            return PAYQ_OK;
        if (st != PAYQ_OK)
            return st;
        b->confirmed++;
    }
    return PAYQ_OK;
}

/* Waits for the confirm of `seq`, serving the progress line meanwhile. */
static int wait_confirm(struct batch *b, uint64_t seq)
{
    for (;;) {
        long long left = b->deadline - now_ms();
        if (left <= 0)
            return PAYQ_ERR_TIMEOUT;
        int st = mq_wait_confirms(b->mq, seq, left < 100 ? (int)left : 100);
        if (st == PAYQ_OK) {
            if (seq > b->confirmed)
                b->confirmed = seq;
            return PAYQ_OK;
        }
        if (st != PAYQ_ERR_TIMEOUT)
            return st;
        draw_progress(b, false);
    }
}

static int publish_one(struct batch *b, const struct item *it)
{
    const struct publish_config *cfg = b->cfg;
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    if (it->message_id) {
        p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        p.message_id = amqp_cstring_bytes(it->message_id);
    }
    if (it->correlation_id) {
        p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        p.correlation_id = amqp_cstring_bytes(it->correlation_id);
    }
    if (cfg->wait || cfg->reply_to) {
        p._flags |= AMQP_BASIC_REPLY_TO_FLAG;
        p.reply_to = amqp_cstring_bytes(cfg->wait ? "amq.rabbitmq.reply-to" : cfg->reply_to);
    }
    if (cfg->user_id) {
        p._flags |= AMQP_BASIC_USER_ID_FLAG;
        p.user_id = amqp_cstring_bytes(cfg->user_id);
    }
    return mq_publish(b->mq, cfg->exchange, it->command, true, &p, it->body, it->body_len, NULL);
}

/* Sends everything and collects the confirms (and replies met on the way).
 * Returns PAYQ_OK, PAYQ_ERR_TIMEOUT, or a broker error. */
static int send_all(struct batch *b)
{
    const long rate = b->cfg->rate;
    int st;
    for (size_t i = 0; i < b->n; i++) {
        if (rate > 0) {
            /* Command i leaves at start + i/rate: no burst after a stall. */
            long long due = b->start + (long long)((double)i * 1000.0 / (double)rate);
            for (long long now = now_ms(); now < due; now = now_ms()) {
                if (now >= b->deadline)
                    return PAYQ_ERR_TIMEOUT;
                long long wait = due - now;
                if ((st = serve(b, wait < 100 ? (int)wait : 100)) != PAYQ_OK)
                    return st;
                draw_progress(b, false);
            }
        }
        if ((st = poll_confirms(b)) != PAYQ_OK)
            return st;
        if (b->sent - b->confirmed >= PUBLISH_WINDOW &&
            (st = wait_confirm(b, b->sent - PUBLISH_WINDOW + 1)) != PAYQ_OK)
            return st;
        if (now_ms() >= b->deadline)
            return PAYQ_ERR_TIMEOUT;
        if ((st = publish_one(b, &b->items[i])) != PAYQ_OK)
            return st;
        b->sent++;
        if ((st = serve(b, 0)) != PAYQ_OK)
            return st;
        draw_progress(b, false);
    }
    return wait_confirm(b, b->sent);
}

static void summary(struct batch *b, double elapsed)
{
    clear_progress(b);
    if (b->cfg->quiet)
        return;
    fprintf(stderr, "payq-publish: %zu of %zu sent, %llu confirmed", b->sent, b->n,
            (unsigned long long)b->confirmed);
    if (b->cfg->wait)
        fprintf(stderr, ", %zu replies", b->replies);
    if (elapsed >= 0.1)
        fprintf(stderr, " in %.2f s (%.0f/s)\n", elapsed, (double)b->sent / elapsed);
    else
        fprintf(stderr, " in %.2f s\n", elapsed);
    if (!b->cfg->wait)
        return;
    /* One line per status, with its codes: "failed 2 (insufficient_funds 1, card_declined 1)". */
    static const char *const order[] = { "succeeded", "authorized", "failed", "rejected", NULL };
    for (size_t pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < b->ntally; i++) {
            const char *s = b->tally[i].status;
            bool known = false;
            for (const char *const *o = order; *o; o++)
                known = known || strcmp(*o, s) == 0;
            if (pass == 0 && !known)
                continue;
            if (pass == 1 && known)
                continue;
            bool first = true;
            for (size_t j = 0; j < i; j++)
                first = first && strcmp(b->tally[j].status, s) != 0;
            if (!first)
                continue;
            long total = 0;
            for (size_t j = i; j < b->ntally; j++)
                if (strcmp(b->tally[j].status, s) == 0)
                    total += b->tally[j].n;
            fprintf(stderr, "payq-publish:   %-10s %ld", s, total);
            const char *sep = " (";
            for (size_t j = i; j < b->ntally; j++) {
                if (strcmp(b->tally[j].status, s) != 0 || !b->tally[j].code[0])
                    continue;
                fprintf(stderr, "%s%s %ld", sep, b->tally[j].code, b->tally[j].n);
                sep = ", ";
            }
            fprintf(stderr, "%s\n", sep[0] == ',' ? ")" : "");
        }
    }
    if (b->replies < b->n)
        fprintf(stderr, "payq-publish:   %-10s %zu\n", "no reply", b->n - b->replies);
}

int publish_batch(const struct publish_config *cfg)
{
    struct batch b;
    memset(&b, 0, sizeof b);
    b.cfg = cfg;
    b.worst = EXIT_SUCCEEDED;
    int rc = EXIT_USAGE;
    if (read_input(&b) != 0 || (cfg->wait && index_by_cid(&b) != 0))
        goto out;
    if (cfg->rate > 0 && (double)(b.n - 1) / (double)cfg->rate >= (double)cfg->timeout) {
        long need = (long)((double)(b.n - 1) / (double)cfg->rate) + 1;
        fprintf(stderr,
                "payq-publish: %zu commands at --rate %ld take %ld s, but --timeout is "
                "%ld s for the whole run; raise it, e.g. --timeout %ld\n",
                b.n, cfg->rate, need, cfg->timeout, need + 30);
        goto out;
    }

    char red[512];
    cfg_redact_url(cfg->amqp_url, red, sizeof red);
    if (mq_connect(cfg->amqp_url, &cfg->amqp_tls, "payq-publish", 30, &b.mq) != PAYQ_OK) {
        const char *why = mq_connect_error();
        fprintf(stderr, "payq-publish: cannot connect to %s: %s%s\n", red, why,
                strstr(why, "TLS") != NULL
                    ? ""
                    : " — is RabbitMQ running? (bash tests/stack.sh up starts a local one; "
                      "set AMQP_URL)");
        b.mq = NULL;
        rc = EXIT_UNAVAILABLE;
        goto out;
    }
    if (cfg->wait && mq_consume_direct_reply(b.mq) != PAYQ_OK) {
        fprintf(stderr, "payq-publish: cannot consume amq.rabbitmq.reply-to: %s\n", mq_error(b.mq));
        rc = EXIT_UNAVAILABLE;
        goto out;
    }
    b.progress = !cfg->quiet && isatty(STDERR_FILENO);
    b.stdout_tty = isatty(STDOUT_FILENO);
    b.start = now_ms();
    b.deadline = b.start + cfg->timeout * 1000;

    int st = send_all(&b);
    if (st == PAYQ_ERR_TIMEOUT) {
        clear_progress(&b);
        fprintf(stderr,
                "payq-publish: the broker confirmed %llu of %zu commands (%zu sent) "
                "within --timeout %ld s; is it overloaded (memory or disk alarm)?\n",
                (unsigned long long)b.confirmed, b.n, b.sent, cfg->timeout);
        rc = EXIT_UNAVAILABLE;
    } else if (st != PAYQ_OK) {
        clear_progress(&b);
        fprintf(stderr, "payq-publish: the broker did not accept every message: %s%s%s\n",
                payq_strerror(st), mq_error(b.mq)[0] ? ": " : "", mq_error(b.mq));
        if (st == PAYQ_ERR_UNROUTABLE)
            fprintf(stderr,
                    "payq-publish: no queue is bound on exchange %s for a command; "
                    "start payq-worker once or import rabbitmq/definitions.json\n",
                    cfg->exchange);
        rc = EXIT_UNAVAILABLE;
    } else {
        rc = EXIT_SUCCEEDED;
    }
    if (cfg->wait && rc == EXIT_SUCCEEDED) {
        long long left;
        while (b.replies < b.n && (left = b.deadline - now_ms()) > 0) {
            if ((st = serve(&b, left < 100 ? (int)left : 100)) != PAYQ_OK) {
                clear_progress(&b);
                fprintf(stderr, "payq-publish: lost the broker while waiting: %s\n",
                        mq_error(b.mq));
                rc = EXIT_UNAVAILABLE;
                break;
            }
            draw_progress(&b, false);
        }
    }
    if (cfg->wait) {
        /* Every command gets a line: those without a reply say so. */
        for (size_t i = 0; i < b.n; i++) {
            struct item *it = &b.items[i];
            if (it->replied)
                continue;
            bool broken = rc == EXIT_UNAVAILABLE;
            const char *why = broken       ? "the broker did not take every command (see stderr)"
                              : i < b.sent ? "no reply before --timeout (is payq-worker running?)"
                                           : "not sent before --timeout";
            json_t *t = json_pack("{s:s, s:s, s:s, s:s}", "command", it->command, "status",
                                  broken ? "error" : "timeout", "message", why, "correlation_id",
                                  it->correlation_id);
            if (t) {
                json_object_set_new(t, "line", json_integer(it->line));
                if (b.stdout_tty)
                    clear_progress(&b);
                json_dumpf(t, stdout, JSON_COMPACT);
                fputc('\n', stdout);
                json_decref(t);
            }
        }
        fflush(stdout);
        if (b.replies < b.n && rc == EXIT_SUCCEEDED) {
            clear_progress(&b);
            fprintf(stderr,
                    "payq-publish: %zu of %zu commands got no reply within %ld s (is "
                    "payq-worker running? raise --timeout?)\n",
                    b.n - b.replies, b.n, cfg->timeout);
        }
        if (b.replies < b.n)
            b.worst = worse(b.worst, EXIT_TIMEOUT);
        rc = worse(rc, b.worst);
    }
    summary(&b, (double)(now_ms() - b.start) / 1000.0);
out:
    mq_close(b.mq);
    items_free(&b);
    return rc;
}
