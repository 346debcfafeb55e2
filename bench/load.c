/*
 * load.c - the bench's publish/receive loop (see load.h for the design).
 *
 * Per command the loop keeps 5 bytes: its due (or send) time, replaced by
 * its latency when the first reply comes, and a reply count. Nothing else
 * grows with the run: unconfirmed publishes are capped by the window, and
 * replies are parsed and dropped as they arrive.
 */
#include "load.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "topology.h"

#define MS ((int64_t)1000000) /* nanoseconds */
#define BURST_MAX 256         /* publishes before replies get a turn */
#define DRAIN_MAX 512         /* replies handled before publishing gets a turn */
/* Publishing stops an hour into a phase, so that with the longest reply
 * timeout every time offset still fits the 32-bit microseconds kept per
 * command (71 minutes). */
#define PUBLISH_MAX_NS ((int64_t)3600 * 1000 * MS)

struct state {
    const struct load_spec *s;
    struct load_result *r;
    mq_t *mq;
    int64_t t0;
    uint64_t cap;
    size_t prefix_len;
    int64_t last_reply;
    double lag_sum;
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = { (time_t)(ns / 1000000000), (long)(ns % 1000000000) };
    nanosleep(&ts, NULL);
}

/* Makes room for `need` commands. */
static int grow(struct state *st, uint64_t need)
{
    if (need <= st->cap)
        return PAYQ_OK;
    uint64_t cap = st->cap ? st->cap : 4096;
    while (cap < need)
        cap *= 2;
    uint32_t *lat = realloc(st->r->lat_us, cap * sizeof *lat);
    if (!lat)
        return PAYQ_ERR_NOMEM;
    st->r->lat_us = lat;
    uint8_t *nrep = realloc(st->r->nrep, cap);
    if (!nrep)
        return PAYQ_ERR_NOMEM;
    memset(nrep + st->cap, 0, cap - st->cap);
    st->r->nrep = nrep;
    st->cap = cap;
    return PAYQ_OK;
}

/*
 * Whether one more publish keeps the unconfirmed ones within the window.
 * Never blocks: a wait here would hold replies in mq's buffer and add to
 * their measured latency.
 */
static int window_open(struct state *st, bool *open)
{
    uint64_t last = mq_last_seq(st->mq);
    *open = true;
    if (last < (uint64_t)st->s->window)
        return PAYQ_OK;
    int rc = mq_wait_confirms(st->mq, last + 1 - (uint64_t)st->s->window, 0);
    switch (rc) {
    case PAYQ_OK: return PAYQ_OK;
    case PAYQ_ERR_TIMEOUT: *open = false; return PAYQ_OK;
    case PAYQ_ERR_NACKED:
        st->r->nacked = true; /* their replies will be missing */
        return PAYQ_OK;
    case PAYQ_ERR_UNROUTABLE:
        snprintf(st->r->error, sizeof st->r->error,
                 "the broker routed a command to no queue: does %s exist? (start payq-worker "
                 "once, or import rabbitmq/definitions.json)",
                 PAYQ_Q_COMMANDS);
        return rc;
    default:
        snprintf(st->r->error, sizeof st->r->error, "lost the broker: %s", mq_error(st->mq));
        return rc;
    }
}

/* Every publish so far confirmed (nacks recorded)? */
static int all_confirmed(struct state *st, bool *done)
{
    int rc = mq_wait_confirms(st->mq, mq_last_seq(st->mq), 0);
    *done = rc != PAYQ_ERR_TIMEOUT;
    if (rc == PAYQ_ERR_NACKED)
        st->r->nacked = true;
    if (rc == PAYQ_OK || rc == PAYQ_ERR_TIMEOUT || rc == PAYQ_ERR_NACKED)
        return PAYQ_OK;
    snprintf(st->r->error, sizeof st->r->error, "lost the broker: %s", mq_error(st->mq));
    return rc;
}

static int publish(struct state *st, uint64_t i, int64_t due)
{
    const struct load_spec *s = st->s;
    struct load_cmd c = { NULL, { 0 }, 0 };
    int rc = s->build(s->arg, i, &c);
    if (rc != PAYQ_OK) {
        snprintf(st->r->error, sizeof st->r->error, "%s: cannot build command %" PRIu64, s->label,
                 i);
        return rc;
    }
    char id[128];
    snprintf(id, sizeof id, "%s.%c.%" PRIu64, s->prefix, s->tag, i);
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
               AMQP_BASIC_REPLY_TO_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    p.message_id = amqp_cstring_bytes(id);
    p.correlation_id = amqp_cstring_bytes(id);
    p.reply_to = amqp_cstring_bytes("amq.rabbitmq.reply-to");
    rc = mq_publish(st->mq, PAYQ_X_COMMANDS, c.routing_key, true, &p, c.body, c.len, NULL);
    if (rc != PAYQ_OK) {
        snprintf(st->r->error, sizeof st->r->error, "publish failed: %s", mq_error(st->mq));
        return rc;
    }
    st->r->lat_us[i] = (uint32_t)((due - st->t0) / 1000);
    return PAYQ_OK;
}

/* "<prefix>.<tag>.<index>" -> index of a command of this phase. */
static bool command_index(const struct state *st, const amqp_basic_properties_t *p, uint64_t *out)
{
    if (!(p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG))
        return false;
    const char *b = p->correlation_id.bytes;
    size_t len = p->correlation_id.len, n = st->prefix_len;
    if (len < n + 4 || len > n + 23 || memcmp(b, st->s->prefix, n) != 0 || b[n] != '.' ||
        b[n + 1] != st->s->tag || b[n + 2] != '.')
        return false;
    uint64_t v = 0;
    for (size_t k = n + 3; k < len; k++) {
        if (b[k] < '0' || b[k] > '9')
            return false;
        v = v * 10 + (uint64_t)(b[k] - '0');
    }
    if (v >= st->r->sent)
        return false;
    *out = v;
    return true;
}

static void tally(struct state *st, const amqp_bytes_t *body)
{
    struct load_result *r = st->r;
    json_t *j = json_loadb(body->bytes, body->len, 0, NULL);
    const char *status = j ? json_string_value(json_object_get(j, "status")) : NULL;
    const char *code = j ? json_string_value(json_object_get(j, "code")) : NULL;
    if (!status)
        status = "unparseable";
    stats_count(&r->outcomes, status, code);
    if (strcmp(status, "succeeded") == 0) {
        r->ok_amount += json_integer_value(json_object_get(j, "amount"));
        r->ok_fee += json_integer_value(json_object_get(j, "fee"));
    } else if (!r->first_problem[0]) {
        snprintf(r->first_problem, sizeof r->first_problem, "%.*s",
                 (int)(body->len < 300 ? body->len : 300), (const char *)body->bytes);
    }
    json_decref(j);
}

static void on_reply(struct state *st, struct mq_delivery *d)
{
    int64_t now = now_ns();
    struct load_result *r = st->r;
    uint64_t i;
    if (!command_index(st, &d->message.properties, &i)) {
        r->stray++;
    } else if (r->nrep[i]) {
        if (r->nrep[i] < 255)
            r->nrep[i]++;
        r->duplicates++;
    } else {
        r->nrep[i] = 1;
        r->replied++;
        int64_t at = (now - st->t0) / 1000;
        r->lat_us[i] = at > (int64_t)r->lat_us[i] ? (uint32_t)(at - r->lat_us[i]) : 0;
        st->last_reply = now;
        tally(st, &d->message.body);
    }
    mq_delivery_free(d);
}

/*
 * Handles replies for up to wait_ns (returns early once some came).
 *
 * mq waits in whole milliseconds and truncates twice, so mq_next(1) may not
 * block at all (a busy loop) while mq_next(k >= 2) blocks at least ~k - 1 ms.
 * Waits under 2 ms are therefore slept instead, at most 1 ms at a time: a
 * reply is never left unread for more than a millisecond, publishes are
 * never early, and the loop never spins.
 */
static int drain(struct state *st, int64_t wait_ns)
{
    struct mq_delivery *d;
    int ms = wait_ns >= 2 * MS ? (int)(wait_ns / MS) : 0, n = 0;
    int rc = mq_next(st->mq, ms, &d);
    while (rc == PAYQ_OK) {
        on_reply(st, d);
        if (++n == DRAIN_MAX)
            return PAYQ_OK;
        rc = mq_next(st->mq, 0, &d);
    }
    if (rc != PAYQ_ERR_TIMEOUT) {
        snprintf(st->r->error, sizeof st->r->error, "lost the broker: %s", mq_error(st->mq));
        return rc;
    }
    if (n == 0 && ms == 0 && wait_ns > 0)
        sleep_ns(wait_ns < MS ? wait_ns : MS);
    return PAYQ_OK;
}

static uint64_t initial_capacity(const struct load_spec *s)
{
    if (s->count)
        return s->count;
    if (s->rate > 0)
        return (uint64_t)s->rate * (uint64_t)s->duration_ms / 1000 + 1;
    return 65536;
}

int load_run(mq_t *mq, const struct load_spec *s, struct load_result *r)
{
    memset(r, 0, sizeof *r);
    struct state st = { s, r, mq, 0, 0, strlen(s->prefix), 0, 0 };
    int rc = grow(&st, initial_capacity(s));
    if (rc != PAYQ_OK) {
        snprintf(r->error, sizeof r->error, "%s: out of memory", s->label);
        return rc;
    }
    const int64_t t0 = now_ns();
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    r->started_unix_s = (double)wall.tv_sec + (double)wall.tv_nsec / 1e9;
    const int64_t end = t0 + (s->count ? PUBLISH_MAX_NS : s->duration_ms * MS);
    const double ns_per_cmd = s->rate > 0 ? 1e9 / (double)s->rate : 0;
    int64_t last_pub = t0, grace_end = 0, next_progress = t0 + s->progress_ms * MS;
    bool issuing = true;
    st.t0 = t0;
    st.last_reply = t0;

    for (;;) {
        if (s->stop && *s->stop) {
            r->interrupted = true;
            break;
        }
        int64_t now = now_ns(), next_due = 0;
        int burst = 0;
        bool blocked = false;
        while (issuing && burst < BURST_MAX) {
            uint64_t i = r->sent;
            int64_t due;
            if (s->count && i >= s->count) {
                issuing = false;
                break;
            }
            if (s->rate > 0) {
                due = t0 + (int64_t)((double)i * ns_per_cmd);
                if (due >= end) {
                    issuing = false;
                    break;
                }
                if (due > now) {
                    next_due = due;
                    break;
                }
            } else {
                if (now >= end) {
                    issuing = false;
                    break;
                }
                if (i - r->replied >= (uint64_t)s->max_inflight)
                    break;
                due = now;
            }
            bool open;
            if ((rc = window_open(&st, &open)) != PAYQ_OK)
                goto out;
            if (!open) {
                blocked = true;
                break;
            }
            if ((rc = grow(&st, i + 1)) != PAYQ_OK) {
                snprintf(r->error, sizeof r->error, "%s: out of memory after %" PRIu64 " commands",
                         s->label, i);
                goto out;
            }
            if ((rc = publish(&st, i, due)) != PAYQ_OK)
                goto out;
            now = now_ns();
            if (s->rate > 0) {
                double lag = (double)(now - due) / 1e6;
                st.lag_sum += lag;
                if (lag > r->lag_max_ms)
                    r->lag_max_ms = lag;
            }
            r->sent++;
            last_pub = now;
            burst++;
        }

        if (!issuing) {
            bool confirmed;
            if ((rc = all_confirmed(&st, &confirmed)) != PAYQ_OK)
                goto out;
            if (r->replied == r->sent && confirmed) {
                if (!grace_end)
                    grace_end = now + s->grace_ms * MS;
                if (now >= grace_end)
                    break;
            }
            /* Missing: no reply came for reply_timeout since the last
             * publish (or the last reply, while a backlog drains). */
            if (now - (st.last_reply > last_pub ? st.last_reply : last_pub) >=
                s->reply_timeout_ms * MS)
                break;
        }

        int64_t wait = 10 * MS;
        if (burst == BURST_MAX)
            wait = 0;
        else if (blocked)
            wait = MS;
        else if (issuing && next_due)
            wait = next_due - now < 10 * MS ? next_due - now : 10 * MS;
        else if (grace_end)
            wait = grace_end - now;
        if (wait < 0)
            wait = 0;
        if ((rc = drain(&st, wait)) != PAYQ_OK)
            goto out;

        if (s->progress_ms && now >= next_progress) {
            fprintf(stderr, "payq-bench: %s: %.0f s, %" PRIu64 " published, %" PRIu64 " replies\n",
                    s->label, (double)(now - t0) / 1e9, r->sent, r->replied);
            next_progress += s->progress_ms * MS;
        }
    }
    rc = PAYQ_OK;
out:
    r->missing = r->sent - r->replied;
    r->publish_s = (double)(last_pub - t0) / 1e9;
    r->elapsed_s = (double)((r->replied ? st.last_reply : last_pub) - t0) / 1e9;
    if (s->rate > 0 && r->sent)
        r->lag_mean_ms = st.lag_sum / (double)r->sent;
    return rc;
}

void load_result_free(struct load_result *r)
{
    free(r->lat_us);
    free(r->nrep);
    r->lat_us = NULL;
    r->nrep = NULL;
}
