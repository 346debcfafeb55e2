/*
 * mq.h - one AMQP 0-9-1 connection, as payq uses it.
 *
 * rabbitmq-c connections are not thread-safe, so each worker thread owns one
 * mq_t. It carries two channels:
 *   MQ_CH_CONSUME  basic.qos + basic.consume with manual acks;
 *   MQ_CH_PUBLISH  confirm mode: every publish gets a sequence number and is
 *                  durable only once the broker acks it (mq_wait_confirms).
 * A single frame reader serves both: while waiting for confirms it buffers
 * deliveries that arrive, and while waiting for deliveries it records
 * confirms, so neither is ever lost or starved. Heartbeats are answered by
 * rabbitmq-c inside every wait.
 *
 * Any failure (socket error, heartbeat timeout, channel or connection closed
 * by the broker) makes the mq_t unusable: the caller closes it and
 * reconnects, and the broker redelivers whatever was not acked.
 */
#ifndef PAYQ_MQ_H
#define PAYQ_MQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <amqp.h>

#include "status.h"

#define MQ_CH_CONSUME 1
#define MQ_CH_PUBLISH 2

typedef struct mq mq_t;

/* A delivery, owned by the caller once returned; free with mq_delivery_free. */
struct mq_delivery {
    uint16_t channel;
    uint64_t tag;
    bool redelivered;
    char *exchange;    /* NUL-terminated copies */
    char *routing_key;
    amqp_message_t message; /* properties + body, in message.pool */
    uint32_t remaining;     /* mq_get only: messages left in the queue after this one */
    struct mq_delivery *next;
};

void mq_delivery_free(struct mq_delivery *d);

/*
 * TLS settings for amqps:// URLs; every field may be NULL. The broker's
 * certificate is always verified, against `cacert` (a PEM file of one or more
 * CA certificates) or else the system's CAs, and must name the URL's host
 * (a DNS name: rabbitmq-c does not match IP addresses). `cert` and `key`
 * (PEM files, the key unencrypted) present a client certificate for mutual
 * TLS. There is no switch to skip verification. The caller owns the strings,
 * which must outlive the calls that take the struct.
 */
struct mq_tls {
    const char *cacert; /* AMQP_CACERT / --amqp-cacert */
    const char *cert;   /* AMQP_CERT / --amqp-cert */
    const char *key;    /* AMQP_KEY / --amqp-key */
};

/*
 * Checks the TLS settings against the URL before any connection, for a clear
 * configuration error at start: the files exist, are readable and hold PEM;
 * cert and key come together; and TLS settings never go with a plain amqp://
 * URL (that connection would not be encrypted). PAYQ_ERR_CONFIG with the
 * reason in err otherwise. tls may be NULL.
 */
int mq_tls_check(const char *url, const struct mq_tls *tls, char *err,
                 size_t errlen) PAYQ_MUSTCHECK;

/*
 * Opens the socket of a connection to ci (from amqp_parse_url): TLS with the
 * checks above when ci->ssl, else plain TCP; never one for the other. The
 * connection owns the socket. On failure err says why, naming the
 * certificate problem and its fix.
 */
int mq_socket_open(amqp_connection_state_t conn, const struct amqp_connection_info *ci,
                   const struct mq_tls *tls, int timeout_s, char *err,
                   size_t errlen) PAYQ_MUSTCHECK;

/*
 * Connects to an amqp:// or amqps:// URL (amqps: see struct mq_tls; tls may
 * be NULL), logs in, opens both channels and puts the publish channel in
 * confirm mode. `name` is shown as the connection name in the management UI.
 * heartbeat in seconds (0 = off).
 *
 * url may list several brokers, the nodes of a cluster (mqurl.h): they are
 * tried in turn, each with the same tls settings, each call of the process
 * starting one further along the list (offset by the pid), so threads and
 * processes spread over the nodes and a reconnect after a node is lost begins
 * with another node. One round over the list per call: the caller's backoff
 * spaces the rounds.
 */
int mq_connect(const char *url, const struct mq_tls *tls, const char *name, int heartbeat,
               mq_t **out) PAYQ_MUSTCHECK;

/* "host:port" of the broker this connection reached (no credentials). */
const char *mq_peer(const mq_t *mq);

/* Why this thread's last mq_connect failed (like errno: thread-local, valid
 * until the next call); never contains credentials. */
const char *mq_connect_error(void);

/* Closes politely when possible and frees; NULL is a no-op. */
void mq_close(mq_t *mq);

/* The last error, for logs (never contains credentials). */
const char *mq_error(const mq_t *mq);

/* Declares every exchange, queue and binding of topology.h (idempotent). */
int mq_declare_topology(mq_t *mq) PAYQ_MUSTCHECK;

/* basic.qos(prefetch) + basic.consume(queue, manual ack) on MQ_CH_CONSUME. */
int mq_consume(mq_t *mq, const char *queue, uint16_t prefetch) PAYQ_MUSTCHECK;

/* Consumes amq.rabbitmq.reply-to (no-ack) on MQ_CH_PUBLISH, so messages
 * published there with reply_to = "amq.rabbitmq.reply-to" get their replies. */
int mq_consume_direct_reply(mq_t *mq) PAYQ_MUSTCHECK;

/*
 * Returns the next delivery, waiting up to timeout_ms (-1 = forever).
 * PAYQ_ERR_TIMEOUT when none came: normal, call again.
 */
int mq_next(mq_t *mq, int timeout_ms, struct mq_delivery **out) PAYQ_MUSTCHECK;

/*
 * basic.get on MQ_CH_CONSUME with manual ack: *out gets the head message of
 * the queue, or NULL when the queue is empty. Unacked messages go back to the
 * queue when the connection closes.
 */
int mq_get(mq_t *mq, const char *queue, struct mq_delivery **out) PAYQ_MUSTCHECK;

/* Messages ready in a queue (passive queue.declare). A missing queue closes
 * the channel: the mq_t is then unusable (PAYQ_ERR_CLOSED). */
int mq_queue_depth(mq_t *mq, const char *queue, uint32_t *ready) PAYQ_MUSTCHECK;

/* basic.ack / basic.nack on the delivery's channel. */
int mq_ack(mq_t *mq, uint16_t channel, uint64_t tag, bool multiple) PAYQ_MUSTCHECK;
int mq_nack(mq_t *mq, uint16_t channel, uint64_t tag, bool multiple, bool requeue) PAYQ_MUSTCHECK;

/*
 * Publishes on MQ_CH_PUBLISH. *seq (may be NULL) gets the confirm sequence
 * number. A mandatory message that no queue takes is returned by the broker;
 * mq_wait_confirms reports it.
 */
int mq_publish(mq_t *mq, const char *exchange, const char *routing_key, bool mandatory,
               const amqp_basic_properties_t *props, const void *body, size_t len,
               uint64_t *seq) PAYQ_MUSTCHECK;

/*
 * Waits until every publish up to `seq` is confirmed. PAYQ_ERR_NACKED if
 * the broker nacked any of them, PAYQ_ERR_UNROUTABLE if a mandatory one was
 * returned since the previous wait, PAYQ_ERR_TIMEOUT after timeout_ms.
 */
int mq_wait_confirms(mq_t *mq, uint64_t seq, int timeout_ms) PAYQ_MUSTCHECK;

/* Serves the connection for timeout_ms: answers heartbeats, records
 * confirms, buffers deliveries for mq_next. Returns PAYQ_OK when the time
 * is up, or the error that broke the connection. */
int mq_pump(mq_t *mq, int timeout_ms) PAYQ_MUSTCHECK;

/* The sequence number the next publish will get, minus one. */
uint64_t mq_last_seq(const mq_t *mq);

/* The value of header `name`, or NULL when absent. Points into p. */
const amqp_field_value_t *mq_header(const amqp_basic_properties_t *p, const char *name);

/* Looks up a header in a properties table: string (longstr) or integer
 * (any integer type). Return false when absent or of another type. */
bool mq_header_str(const amqp_basic_properties_t *p, const char *name, amqp_bytes_t *out);
bool mq_header_int(const amqp_basic_properties_t *p, const char *name, int64_t *out);

/* amqp_bytes_t of a C string (no copy). */
amqp_bytes_t mq_bytes(const char *s);

#endif
