/*
 * mq.c - an AMQP connection with a consume channel and a confirm channel,
 * served by one frame reader (see mq.h).
 */
#include "mq.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include "log.h"
#include "mqurl.h"
#include "topology.h"

struct mq {
    amqp_connection_state_t conn;
    bool broken;
    char error[512];
    char peer[128]; /* "host:port" of the broker, for logs */

    /* Deliveries read while waiting for something else, oldest first. */
    struct mq_delivery *head, *tail;

    /* Publisher confirms: seq numbers 1..published; every seq below `low`
     * is resolved. state[i] is the state of seq base + i (0 = waiting,
     * 1 = acked, 2 = nacked). */
    uint64_t published;
    uint64_t low;
    uint64_t base;
    uint8_t *state;
    size_t cap;
    unsigned nacks;   /* since the last mq_wait_confirms */
    unsigned returns; /* mandatory messages returned since the last wait */
};

static void set_error(mq_t *mq, const char *fmt, ...) PAYQ_PRINTF(2, 3);

static void set_error(mq_t *mq, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(mq->error, sizeof mq->error, fmt, ap);
    va_end(ap);
    mq->broken = true;
}

const char *mq_error(const mq_t *mq) { return mq->error; }

amqp_bytes_t mq_bytes(const char *s)
{
    amqp_bytes_t b = { s ? strlen(s) : 0, (void *)(uintptr_t)s };
    return b;
}

uint64_t mq_last_seq(const mq_t *mq) { return mq->published; }

void mq_delivery_free(struct mq_delivery *d)
{
    if (!d)
        return;
    free(d->exchange);
    free(d->routing_key);
    amqp_destroy_message(&d->message);
    free(d);
}

/* Translates an RPC reply into a status, answering a close from the broker. */
static int rpc_check(mq_t *mq, amqp_rpc_reply_t r, const char *what)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return PAYQ_OK;
    case AMQP_RESPONSE_NONE:
        set_error(mq, "%s: missing RPC reply", what);
        return PAYQ_ERR_AMQP;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        set_error(mq, "%s: %s", what, amqp_error_string2(r.library_error));
        return PAYQ_ERR_AMQP;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *c = r.reply.decoded;
            set_error(mq, "%s: connection closed by the broker: %u %.*s", what, c->reply_code,
                      (int)c->reply_text.len, (const char *)c->reply_text.bytes);
            amqp_connection_close_ok_t ok;
            (void)amqp_send_method(mq->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *c = r.reply.decoded;
            set_error(mq, "%s: channel closed by the broker: %u %.*s", what, c->reply_code,
                      (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        } else {
            set_error(mq, "%s: unexpected server method 0x%08x", what, r.reply.id);
        }
        return PAYQ_ERR_CLOSED;
    }
    return PAYQ_ERR_AMQP;
}

/* PAYQ_OK when the file is readable and holds a PEM block (a certificate or
 * a key); else PAYQ_ERR_CONFIG with the reason in err. */
static int pem_file_check(const char *what, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot read %s: %s", what, path, strerror(errno));
        return PAYQ_ERR_CONFIG;
    }
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    if (!strstr(buf, "-----BEGIN ")) {
        snprintf(err, errlen, "%s: %s is not a PEM file (no -----BEGIN line)", what, path);
        return PAYQ_ERR_CONFIG;
    }
    return PAYQ_OK;
}

static bool set(const char *s)
{
    return s && *s;
}

int mq_tls_check(const char *url, const struct mq_tls *tls, char *err, size_t errlen)
{
    if (!tls || (!set(tls->cacert) && !set(tls->cert) && !set(tls->key)))
        return PAYQ_OK;
    if (set(tls->cert) != set(tls->key)) {
        snprintf(err, errlen,
                 "AMQP_CERT (--amqp-cert) and AMQP_KEY (--amqp-key) go together: a client "
                 "certificate and its private key");
        return PAYQ_ERR_CONFIG;
    }
    /* Every address of the list must be amqps:// (a host[:port] entry takes
     * the first URL's scheme, mqurl.h). */
    int rc;
    size_t n = mq_url_count(url);
    for (size_t k = 0; k < n; k++) {
        char one[1024];
        if ((rc = mq_url_at(url, k, one, sizeof one, err, errlen)) != PAYQ_OK) {
            if (rc == PAYQ_ERR_RANGE)
                snprintf(err, errlen, "an AMQP_URL address is too long");
            return PAYQ_ERR_CONFIG;
        }
        if (strncmp(one, "amqps://", 8) != 0) {
            char which[64] = "";
            if (n > 1)
                snprintf(which, sizeof which, " (address %zu of %zu)", k + 1, n);
            snprintf(err, errlen,
                     "TLS settings (AMQP_CACERT, AMQP_CERT, AMQP_KEY) are set but the broker URL%s "
                     "is not amqps://: that connection would not be encrypted; use "
                     "amqps://host:5671",
                     which);
            return PAYQ_ERR_CONFIG;
        }
    }
    if (set(tls->cacert) &&
        (rc = pem_file_check("AMQP_CACERT (--amqp-cacert)", tls->cacert, err, errlen)) != PAYQ_OK)
        return rc;
    if (set(tls->cert) &&
        (rc = pem_file_check("AMQP_CERT (--amqp-cert)", tls->cert, err, errlen)) != PAYQ_OK)
        return rc;
    if (set(tls->key) &&
        (rc = pem_file_check("AMQP_KEY (--amqp-key)", tls->key, err, errlen)) != PAYQ_OK)
        return rc;
    return PAYQ_OK;
}

/* Why amqp_socket_open failed, in words that name the fix. */
static void open_error(int st, const struct amqp_connection_info *ci, const struct mq_tls *tls,
                       char *err, size_t errlen)
{
    const char *ca = tls && set(tls->cacert) ? tls->cacert : NULL;
    switch (st) {
    case AMQP_STATUS_SSL_PEER_VERIFY_FAILED:
        snprintf(err, errlen,
                 "TLS: certificate verify failed: the broker's certificate is not trusted by %s%s "
                 "(signed by another CA, expired or not yet valid); set AMQP_CACERT "
                 "(--amqp-cacert) to the CA that signed it",
                 ca ? "the CA file " : "the system's CAs", ca ? ca : "");
        break;
    case AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED:
        snprintf(err, errlen,
                 "TLS: the broker's certificate does not name the host \"%s\" (only DNS names "
                 "are matched, not IP addresses); connect by a host name the certificate lists",
                 ci->host);
        break;
    case AMQP_STATUS_SSL_CONNECTION_FAILED:
        snprintf(err, errlen,
                 "TLS handshake with %s:%d failed: is that port a TLS listener (amqps, 5671 by "
                 "default, not amqp's 5672)? Or the broker refused the client certificate",
                 ci->host, ci->port);
        break;
    default: snprintf(err, errlen, "%s", amqp_error_string2(st));
    }
}

int mq_socket_open(amqp_connection_state_t conn, const struct amqp_connection_info *ci,
                   const struct mq_tls *tls, int timeout_s, char *err, size_t errlen)
{
    amqp_socket_t *sock;
    if (ci->ssl) {
        if (!(sock = amqp_ssl_socket_new(conn))) {
            snprintf(err, errlen, "cannot create a TLS socket");
            return PAYQ_ERR_AMQP;
        }
        amqp_ssl_socket_set_verify_peer(sock, 1);
        amqp_ssl_socket_set_verify_hostname(sock, 1);
        if (tls && set(tls->cacert) &&
            amqp_ssl_socket_set_cacert(sock, tls->cacert) != AMQP_STATUS_OK) {
            snprintf(err, errlen,
                     "TLS: cannot load the CA file %s (AMQP_CACERT): unreadable or not PEM",
                     tls->cacert);
            return PAYQ_ERR_CONFIG;
        }
        if (tls && set(tls->cert) &&
            amqp_ssl_socket_set_key(sock, tls->cert, set(tls->key) ? tls->key : tls->cert) !=
                AMQP_STATUS_OK) {
            snprintf(err, errlen,
                     "TLS: cannot load the client certificate %s with the key %s (AMQP_CERT, "
                     "AMQP_KEY): unreadable, not PEM, an encrypted key or a key of another "
                     "certificate",
                     tls->cert, set(tls->key) ? tls->key : tls->cert);
            return PAYQ_ERR_CONFIG;
        }
    } else if (!(sock = amqp_tcp_socket_new(conn))) {
        snprintf(err, errlen, "cannot create a TCP socket");
        return PAYQ_ERR_AMQP;
    }
    struct timeval tv = { timeout_s, 0 };
    int st = amqp_socket_open_noblock(sock, ci->host, ci->port, &tv);
    if (st != AMQP_STATUS_OK) {
        /* The URL is redacted by the caller; this names only the failure. */
        open_error(st, ci, tls, err, errlen);
        return PAYQ_ERR_AMQP;
    }
    return PAYQ_OK;
}

static int open_socket(mq_t *mq, const struct amqp_connection_info *ci, const struct mq_tls *tls)
{
    int rc = mq_socket_open(mq->conn, ci, tls, 10, mq->error, sizeof mq->error);
    if (rc != PAYQ_OK)
        mq->broken = true;
    return rc;
}

/* Room for "host:port: " (peer) and a connection's error. */
static _Thread_local char connect_error[768];

const char *mq_connect_error(void) { return connect_error; }

const char *mq_peer(const mq_t *mq) { return mq->peer; }

/* Connects to one broker; on failure *out is untouched and why (no
 * credentials) is in connect_error. */
static int connect_one(const char *url, const struct mq_tls *tls, const char *name, int heartbeat,
                       mq_t **out)
{
    connect_error[0] = 0;
    mq_t *mq = calloc(1, sizeof *mq);
    char *copy = strdup(url ? url : "");
    int rc = PAYQ_ERR_NOMEM;
    if (!mq || !copy)
        goto fail;
    mq->low = mq->base = 1;

    struct amqp_connection_info ci;
    amqp_default_connection_info(&ci);
    if (url && *url && amqp_parse_url(copy, &ci) != AMQP_STATUS_OK) {
        snprintf(mq->error, sizeof mq->error,
                 "cannot parse the AMQP URL (expected amqp://user:password@host:port/vhost)");
        rc = PAYQ_ERR_CONFIG;
        goto fail;
    }
    snprintf(mq->peer, sizeof mq->peer, "%s:%d", ci.host, ci.port);
    if (!(mq->conn = amqp_new_connection()))
        goto fail;
    if ((rc = open_socket(mq, &ci, tls)) != PAYQ_OK)
        goto fail;

    amqp_table_entry_t props[2];
    props[0].key = amqp_cstring_bytes("connection_name");
    props[0].value.kind = AMQP_FIELD_KIND_UTF8;
    props[0].value.value.bytes = mq_bytes(name);
    props[1].key = amqp_cstring_bytes("product");
    props[1].value.kind = AMQP_FIELD_KIND_UTF8;
    props[1].value.value.bytes = amqp_cstring_bytes("payq");
    amqp_table_t client_props = { 2, props };
    rc = rpc_check(mq,
                   amqp_login_with_properties(mq->conn, ci.vhost, 0, 131072, heartbeat,
                                              &client_props, AMQP_SASL_METHOD_PLAIN, ci.user,
                                              ci.password),
                   "login");
    if (rc != PAYQ_OK)
        goto fail;
    amqp_channel_open(mq->conn, MQ_CH_CONSUME);
    if ((rc = rpc_check(mq, amqp_get_rpc_reply(mq->conn), "channel.open")) != PAYQ_OK)
        goto fail;
    amqp_channel_open(mq->conn, MQ_CH_PUBLISH);
    if ((rc = rpc_check(mq, amqp_get_rpc_reply(mq->conn), "channel.open")) != PAYQ_OK)
        goto fail;
    amqp_confirm_select(mq->conn, MQ_CH_PUBLISH);
    if ((rc = rpc_check(mq, amqp_get_rpc_reply(mq->conn), "confirm.select")) != PAYQ_OK)
        goto fail;
    mq->broken = false;
    free(copy);
    *out = mq;
    return PAYQ_OK;
fail:
    if (mq && mq->peer[0])
        snprintf(connect_error, sizeof connect_error, "%s: %s", mq->peer,
                 mq->error[0] ? mq->error : payq_strerror(rc));
    else
        snprintf(connect_error, sizeof connect_error, "%s",
                 mq && mq->error[0] ? mq->error : payq_strerror(rc));
    free(copy);
    mq_close(mq);
    return rc;
}

/* Where the next mq_connect of this process starts in the address list:
 * round robin, so the threads of a process spread over the nodes, offset by
 * the pid, so processes started together do not all begin with node 1. */
static atomic_uint next_start;

int mq_connect(const char *url, const struct mq_tls *tls, const char *name, int heartbeat,
               mq_t **out)
{
    size_t n = mq_url_count(url);
    if (n == 1)
        return connect_one(url, tls, name, heartbeat, out);
    size_t start = (atomic_fetch_add(&next_start, 1) + (unsigned)getpid()) % n;
    char addr[1024], why[sizeof connect_error - 64] = "";
    size_t used = 0;
    int rc = PAYQ_ERR_AMQP;
    for (size_t k = 0; k < n; k++) {
        char err[256];
        rc = mq_url_at(url, (start + k) % n, addr, sizeof addr, err, sizeof err);
        if (rc != PAYQ_OK) {
            snprintf(connect_error, sizeof connect_error, "%s",
                     rc == PAYQ_ERR_CONFIG ? err : "an AMQP_URL address is too long");
            return PAYQ_ERR_CONFIG;
        }
        rc = connect_one(addr, tls, name, heartbeat, out);
        if (rc == PAYQ_OK || rc == PAYQ_ERR_CONFIG || rc == PAYQ_ERR_NOMEM)
            return rc;
        /* Every node's reason, in the order tried. */
        int w = snprintf(why + used, sizeof why - used, "%s%s", used ? "; " : "", connect_error);
        if (w > 0)
            used = used + (size_t)w < sizeof why ? used + (size_t)w : sizeof why - 1;
    }
    snprintf(connect_error, sizeof connect_error, "no broker of %zu answered: %s", n, why);
    return rc;
}

void mq_close(mq_t *mq)
{
    if (!mq)
        return;
    if (mq->conn) {
        if (!mq->broken)
            (void)amqp_connection_close(mq->conn, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(mq->conn);
    }
    while (mq->head) {
        struct mq_delivery *d = mq->head;
        mq->head = d->next;
        mq_delivery_free(d);
    }
    free(mq->state);
    free(mq);
}

/* Fills an amqp_table_t from topology args; entries must have room. */
static amqp_table_t make_table(const struct topo_arg *args, size_t n, amqp_table_entry_t *e)
{
    for (size_t i = 0; i < n; i++) {
        e[i].key = amqp_cstring_bytes(args[i].name);
        if (args[i].type == TOPO_STR) {
            e[i].value.kind = AMQP_FIELD_KIND_UTF8;
            e[i].value.value.bytes = amqp_cstring_bytes(args[i].s);
        } else {
            e[i].value.kind = AMQP_FIELD_KIND_I64;
            e[i].value.value.i64 = args[i].i;
        }
    }
    amqp_table_t t = { (int)n, n ? e : NULL };
    return t;
}

int mq_declare_topology(mq_t *mq)
{
    amqp_table_entry_t e[TOPO_MAX_ARGS];
    int rc;
    char what[160];
    for (size_t i = 0; i < topo_nexchanges; i++) {
        const struct topo_exchange *x = &topo_exchanges[i];
        amqp_exchange_declare(mq->conn, MQ_CH_PUBLISH, amqp_cstring_bytes(x->name),
                              amqp_cstring_bytes(x->type), 0, 1, 0, 0, amqp_empty_table);
        snprintf(what, sizeof what, "declare exchange %s", x->name);
        if ((rc = rpc_check(mq, amqp_get_rpc_reply(mq->conn), what)) != PAYQ_OK)
            return rc;
    }
    for (size_t i = 0; i < topo_nqueues; i++) {
        const struct topo_queue *q = &topo_queues[i];
        amqp_queue_declare(mq->conn, MQ_CH_PUBLISH, amqp_cstring_bytes(q->name), 0, 1, 0, 0,
                           make_table(q->args, q->nargs, e));
        snprintf(what, sizeof what, "declare queue %s", q->name);
        if ((rc = rpc_check(mq, amqp_get_rpc_reply(mq->conn), what)) != PAYQ_OK)
            return rc;
    }
    for (size_t i = 0; i < topo_nbindings; i++) {
        const struct topo_binding *b = &topo_bindings[i];
        amqp_queue_bind(mq->conn, MQ_CH_PUBLISH, amqp_cstring_bytes(b->queue),
                        amqp_cstring_bytes(b->exchange), amqp_cstring_bytes(b->routing_key),
                        make_table(b->args, b->nargs, e));
        snprintf(what, sizeof what, "bind %s to %s", b->queue, b->exchange);
        if ((rc = rpc_check(mq, amqp_get_rpc_reply(mq->conn), what)) != PAYQ_OK)
            return rc;
    }
    return PAYQ_OK;
}

int mq_consume(mq_t *mq, const char *queue, uint16_t prefetch)
{
    int rc;
    amqp_basic_qos(mq->conn, MQ_CH_CONSUME, 0, prefetch, 0);
    if ((rc = rpc_check(mq, amqp_get_rpc_reply(mq->conn), "basic.qos")) != PAYQ_OK)
        return rc;
    amqp_basic_consume(mq->conn, MQ_CH_CONSUME, amqp_cstring_bytes(queue), amqp_empty_bytes, 0,
                       0, 0, amqp_empty_table);
    return rpc_check(mq, amqp_get_rpc_reply(mq->conn), "basic.consume");
}

int mq_consume_direct_reply(mq_t *mq)
{
    amqp_basic_consume(mq->conn, MQ_CH_PUBLISH, amqp_cstring_bytes("amq.rabbitmq.reply-to"),
                       amqp_empty_bytes, 0, 1, 0, amqp_empty_table);
    return rpc_check(mq, amqp_get_rpc_reply(mq->conn), "basic.consume amq.rabbitmq.reply-to");
}

/* Marks seq numbers resolved: `tag` alone, or everything up to it. */
static void confirm(mq_t *mq, uint64_t tag, bool multiple, uint8_t how)
{
    if (tag > mq->published || tag < mq->low)
        return;
    uint64_t from = multiple ? mq->low : tag;
    for (uint64_t s = from; s <= tag; s++) {
        uint8_t *st = &mq->state[s - mq->base];
        if (*st == 0) {
            *st = how;
            if (how == 2)
                mq->nacks++;
        }
    }
    while (mq->low <= mq->published && mq->state[mq->low - mq->base] != 0)
        mq->low++;
}

/* Handles one method frame. A delivery is returned through *out (or queued
 * when out is NULL). */
static int handle_frame(mq_t *mq, amqp_frame_t *f, struct mq_delivery **out)
{
    if (f->frame_type != AMQP_FRAME_METHOD)
        return PAYQ_OK; /* a stray header/body frame: nothing to do */
    switch (f->payload.method.id) {
    case AMQP_BASIC_DELIVER_METHOD: {
        amqp_basic_deliver_t *m = f->payload.method.decoded;
        struct mq_delivery *d = calloc(1, sizeof *d);
        if (!d)
            return PAYQ_ERR_NOMEM;
        d->channel = f->channel;
        d->tag = m->delivery_tag;
        d->redelivered = m->redelivered;
        d->exchange = strndup(m->exchange.bytes ? m->exchange.bytes : "", m->exchange.len);
        d->routing_key =
            strndup(m->routing_key.bytes ? m->routing_key.bytes : "", m->routing_key.len);
        if (!d->exchange || !d->routing_key) {
            mq_delivery_free(d);
            return PAYQ_ERR_NOMEM;
        }
        amqp_rpc_reply_t r = amqp_read_message(mq->conn, f->channel, &d->message, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            free(d->exchange);
            free(d->routing_key);
            free(d);
            return rpc_check(mq, r, "read message");
        }
        if (out) {
            *out = d;
        } else {
            if (mq->tail)
                mq->tail->next = d;
            else
                mq->head = d;
            mq->tail = d;
        }
        return PAYQ_OK;
    }
    case AMQP_BASIC_ACK_METHOD: {
        amqp_basic_ack_t *m = f->payload.method.decoded;
        confirm(mq, m->delivery_tag, m->multiple, 1);
        return PAYQ_OK;
    }
    case AMQP_BASIC_NACK_METHOD: {
        amqp_basic_nack_t *m = f->payload.method.decoded;
        confirm(mq, m->delivery_tag, m->multiple, 2);
        return PAYQ_OK;
    }
    case AMQP_BASIC_RETURN_METHOD: {
        amqp_basic_return_t *m = f->payload.method.decoded;
        log_warn("broker returned an unroutable message (%u %.*s, routing key %.*s)",
                 m->reply_code, (int)m->reply_text.len, (const char *)m->reply_text.bytes,
                 (int)m->routing_key.len, (const char *)m->routing_key.bytes);
        amqp_message_t msg;
        amqp_rpc_reply_t r = amqp_read_message(mq->conn, f->channel, &msg, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            return rpc_check(mq, r, "read returned message");
        amqp_destroy_message(&msg);
        mq->returns++;
        return PAYQ_OK;
    }
    case AMQP_CHANNEL_CLOSE_METHOD: {
        amqp_channel_close_t *c = f->payload.method.decoded;
        set_error(mq, "channel %u closed by the broker: %u %.*s", f->channel, c->reply_code,
                  (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        amqp_channel_close_ok_t ok;
        (void)amqp_send_method(mq->conn, f->channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        return PAYQ_ERR_CLOSED;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        amqp_connection_close_t *c = f->payload.method.decoded;
        set_error(mq, "connection closed by the broker: %u %.*s", c->reply_code,
                  (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        amqp_connection_close_ok_t ok;
        (void)amqp_send_method(mq->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        return PAYQ_ERR_CLOSED;
    }
    case AMQP_BASIC_CANCEL_METHOD:
        set_error(mq, "the broker cancelled the consumer (queue deleted?)");
        return PAYQ_ERR_CLOSED;
    default:
        return PAYQ_OK;
    }
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads and handles one frame, waiting until deadline (ms, -1 = forever). */
static int read_one(mq_t *mq, long long deadline, struct mq_delivery **out)
{
    if (mq->broken)
        return PAYQ_ERR_CLOSED;
    if (!amqp_frames_enqueued(mq->conn) && !amqp_data_in_buffer(mq->conn))
        amqp_maybe_release_buffers(mq->conn);
    amqp_frame_t f;
    struct timeval tv, *tvp = NULL;
    if (deadline >= 0) {
        long long left = deadline - now_ms();
        if (left < 0)
            left = 0;
        tv.tv_sec = left / 1000;
        tv.tv_usec = (left % 1000) * 1000;
        tvp = &tv;
    }
    int st = amqp_simple_wait_frame_noblock(mq->conn, &f, tvp);
    if (st == AMQP_STATUS_TIMEOUT)
        return PAYQ_ERR_TIMEOUT;
    if (st != AMQP_STATUS_OK) {
        set_error(mq, "connection lost: %s", amqp_error_string2(st));
        return PAYQ_ERR_AMQP;
    }
    return handle_frame(mq, &f, out);
}

int mq_next(mq_t *mq, int timeout_ms, struct mq_delivery **out)
{
    if (mq->head) {
        struct mq_delivery *d = mq->head;
        mq->head = d->next;
        if (!mq->head)
            mq->tail = NULL;
        d->next = NULL;
        *out = d;
        return PAYQ_OK;
    }
    long long deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        struct mq_delivery *d = NULL;
        int rc = read_one(mq, deadline, &d);
        if (rc != PAYQ_OK)
            return rc;
        if (d) {
            *out = d;
            return PAYQ_OK;
        }
    }
}

int mq_get(mq_t *mq, const char *queue, struct mq_delivery **out)
{
    if (mq->broken)
        return PAYQ_ERR_CLOSED;
    amqp_rpc_reply_t r = amqp_basic_get(mq->conn, MQ_CH_CONSUME, amqp_cstring_bytes(queue), 0);
    int rc = rpc_check(mq, r, "basic.get");
    if (rc != PAYQ_OK)
        return rc;
    if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD) {
        *out = NULL;
        return PAYQ_OK;
    }
    amqp_basic_get_ok_t *m = r.reply.decoded;
    struct mq_delivery *d = calloc(1, sizeof *d);
    if (!d)
        return PAYQ_ERR_NOMEM;
    d->channel = MQ_CH_CONSUME;
    d->tag = m->delivery_tag;
    d->redelivered = m->redelivered;
    d->remaining = m->message_count;
    d->exchange = strndup(m->exchange.bytes ? m->exchange.bytes : "", m->exchange.len);
    d->routing_key = strndup(m->routing_key.bytes ? m->routing_key.bytes : "", m->routing_key.len);
    if (!d->exchange || !d->routing_key) {
        free(d->exchange);
        free(d->routing_key);
        free(d);
        return PAYQ_ERR_NOMEM;
    }
    r = amqp_read_message(mq->conn, MQ_CH_CONSUME, &d->message, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        free(d->exchange);
        free(d->routing_key);
        free(d);
        return rpc_check(mq, r, "read message");
    }
    *out = d;
    return PAYQ_OK;
}

int mq_queue_depth(mq_t *mq, const char *queue, uint32_t *ready)
{
    if (mq->broken)
        return PAYQ_ERR_CLOSED;
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(mq->conn, MQ_CH_CONSUME,
                                                     amqp_cstring_bytes(queue), 1, 0, 0, 0,
                                                     amqp_empty_table);
    int rc = rpc_check(mq, amqp_get_rpc_reply(mq->conn), "queue.declare (passive)");
    if (rc == PAYQ_OK)
        *ready = ok->message_count;
    return rc;
}

int mq_ack(mq_t *mq, uint16_t channel, uint64_t tag, bool multiple)
{
    if (mq->broken)
        return PAYQ_ERR_CLOSED;
    int st = amqp_basic_ack(mq->conn, channel, tag, multiple);
    if (st != AMQP_STATUS_OK) {
        set_error(mq, "basic.ack failed: %s", amqp_error_string2(st));
        return PAYQ_ERR_AMQP;
    }
    return PAYQ_OK;
}

int mq_nack(mq_t *mq, uint16_t channel, uint64_t tag, bool multiple, bool requeue)
{
    if (mq->broken)
        return PAYQ_ERR_CLOSED;
    int st = amqp_basic_nack(mq->conn, channel, tag, multiple, requeue);
    if (st != AMQP_STATUS_OK) {
        set_error(mq, "basic.nack failed: %s", amqp_error_string2(st));
        return PAYQ_ERR_AMQP;
    }
    return PAYQ_OK;
}

/* Makes room to track seq number `seq`. */
static int track(mq_t *mq, uint64_t seq)
{
    if (mq->low - mq->base > 4096 && mq->low - mq->base > mq->cap / 2) {
        size_t drop = (size_t)(mq->low - mq->base);
        memmove(mq->state, mq->state + drop, mq->cap - drop);
        memset(mq->state + mq->cap - drop, 0, drop);
        mq->base = mq->low;
    }
    size_t need = (size_t)(seq - mq->base) + 1;
    if (need > mq->cap) {
        size_t cap = mq->cap ? mq->cap * 2 : 1024;
        while (cap < need)
            cap *= 2;
        uint8_t *s = realloc(mq->state, cap);
        if (!s)
            return PAYQ_ERR_NOMEM;
        memset(s + mq->cap, 0, cap - mq->cap);
        mq->state = s;
        mq->cap = cap;
    }
    return PAYQ_OK;
}

int mq_publish(mq_t *mq, const char *exchange, const char *routing_key, bool mandatory,
               const amqp_basic_properties_t *props, const void *body, size_t len, uint64_t *seq)
{
    if (mq->broken)
        return PAYQ_ERR_CLOSED;
    int rc = track(mq, mq->published + 1);
    if (rc != PAYQ_OK)
        return rc;
    amqp_bytes_t b = { len, (void *)(uintptr_t)body };
    int st = amqp_basic_publish(mq->conn, MQ_CH_PUBLISH, amqp_cstring_bytes(exchange),
                                amqp_cstring_bytes(routing_key), mandatory, 0, props, b);
    if (st != AMQP_STATUS_OK) {
        set_error(mq, "publish to %s failed: %s", exchange[0] ? exchange : "(default)",
                  amqp_error_string2(st));
        return PAYQ_ERR_AMQP;
    }
    mq->published++;
    if (seq)
        *seq = mq->published;
    return PAYQ_OK;
}

int mq_wait_confirms(mq_t *mq, uint64_t seq, int timeout_ms)
{
    long long deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    while (mq->low <= seq) {
        int rc = read_one(mq, deadline, NULL);
        if (rc != PAYQ_OK)
            return rc;
    }
    int rc = PAYQ_OK;
    if (mq->nacks)
        rc = PAYQ_ERR_NACKED;
    else if (mq->returns)
        rc = PAYQ_ERR_UNROUTABLE;
    mq->nacks = 0;
    mq->returns = 0;
    return rc;
}

int mq_pump(mq_t *mq, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        int rc = read_one(mq, deadline, NULL);
        if (rc == PAYQ_ERR_TIMEOUT)
            return PAYQ_OK;
        if (rc != PAYQ_OK)
            return rc;
    }
}

const amqp_field_value_t *mq_header(const amqp_basic_properties_t *p, const char *name)
{
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
        return NULL;
    size_t n = strlen(name);
    for (int i = 0; i < p->headers.num_entries; i++) {
        const amqp_table_entry_t *e = &p->headers.entries[i];
        if (e->key.len == n && memcmp(e->key.bytes, name, n) == 0)
            return &e->value;
    }
    return NULL;
}

bool mq_header_str(const amqp_basic_properties_t *p, const char *name, amqp_bytes_t *out)
{
    const amqp_field_value_t *v = mq_header(p, name);
    if (!v || (v->kind != AMQP_FIELD_KIND_UTF8 && v->kind != AMQP_FIELD_KIND_BYTES))
        return false;
    *out = v->value.bytes;
    return true;
}

bool mq_header_int(const amqp_basic_properties_t *p, const char *name, int64_t *out)
{
    const amqp_field_value_t *v = mq_header(p, name);
    if (!v)
        return false;
    switch (v->kind) {
    case AMQP_FIELD_KIND_I8: *out = v->value.i8; return true;
    case AMQP_FIELD_KIND_U8: *out = v->value.u8; return true;
    case AMQP_FIELD_KIND_I16: *out = v->value.i16; return true;
    case AMQP_FIELD_KIND_U16: *out = v->value.u16; return true;
    case AMQP_FIELD_KIND_I32: *out = v->value.i32; return true;
    case AMQP_FIELD_KIND_U32: *out = v->value.u32; return true;
    case AMQP_FIELD_KIND_I64: *out = v->value.i64; return true;
    case AMQP_FIELD_KIND_U64:
        if (v->value.u64 > INT64_MAX)
            return false;
        *out = (int64_t)v->value.u64;
        return true;
    default:
        return false;
    }
}
