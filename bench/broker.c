/*
 * broker.c - message and consumer counts of a queue (see broker.h).
 */
#include "broker.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <amqp.h>

#include "mqurl.h"

static int rpc_error(amqp_rpc_reply_t r, const char *what, char *err, size_t errlen)
{
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return PAYQ_OK;
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_t *c = r.reply.decoded;
        snprintf(err, errlen, "%s: %u %.*s", what, c->reply_code, (int)c->reply_text.len,
                 (const char *)c->reply_text.bytes);
        return c->reply_code == 404 ? PAYQ_ERR_CLOSED : PAYQ_ERR_AMQP;
    }
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
        r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_connection_close_t *c = r.reply.decoded;
        snprintf(err, errlen, "%s: %u %.*s", what, c->reply_code, (int)c->reply_text.len,
                 (const char *)c->reply_text.bytes);
        return PAYQ_ERR_AMQP;
    }
    snprintf(err, errlen, "%s: %s", what,
             r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION ? amqp_error_string2(r.library_error)
                                                             : "unexpected reply");
    return PAYQ_ERR_AMQP;
}

static int stats_one(const char *url, const struct mq_tls *tls, const char *queue,
                     uint32_t *messages, uint32_t *consumers, char *err, size_t errlen)
{
    char *copy = strdup(url ? url : "");
    amqp_connection_state_t conn = NULL;
    bool logged_in = false;
    int rc = PAYQ_ERR_NOMEM;
    err[0] = 0;
    if (!copy)
        goto fail;
    struct amqp_connection_info ci;
    amqp_default_connection_info(&ci);
    if (*copy && amqp_parse_url(copy, &ci) != AMQP_STATUS_OK) {
        snprintf(err, errlen, "cannot parse the AMQP URL");
        rc = PAYQ_ERR_CONFIG;
        goto fail;
    }
    if (!(conn = amqp_new_connection()))
        goto fail;
    if ((rc = mq_socket_open(conn, &ci, tls, 10, err, errlen)) != PAYQ_OK)
        goto fail;
    rc = rpc_error(
        amqp_login(conn, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password),
        "login", err, errlen);
    if (rc != PAYQ_OK)
        goto fail;
    logged_in = true;
    amqp_channel_open(conn, 1);
    if ((rc = rpc_error(amqp_get_rpc_reply(conn), "channel.open", err, errlen)) != PAYQ_OK)
        goto fail;
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(conn, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
    char what[200];
    snprintf(what, sizeof what, "queue %s", queue);
    if ((rc = rpc_error(amqp_get_rpc_reply(conn), what, err, errlen)) != PAYQ_OK)
        goto fail;
    *messages = ok->message_count;
    *consumers = ok->consumer_count;
    rc = PAYQ_OK;
fail:
    if (conn) {
        if (logged_in)
            (void)amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(conn);
    }
    free(copy);
    return rc;
}

/* AMQP_URL may list the nodes of a cluster: the first that answers. */
int broker_queue_stats(const char *url, const struct mq_tls *tls, const char *queue,
                       uint32_t *messages, uint32_t *consumers, char *err, size_t errlen)
{
    size_t n = mq_url_count(url);
    int rc = PAYQ_ERR_AMQP;
    char one[1024];
    for (size_t k = 0; k < n; k++) {
        if ((rc = mq_url_at(url, k, one, sizeof one, err, errlen)) != PAYQ_OK) {
            if (rc == PAYQ_ERR_RANGE)
                snprintf(err, errlen, "an AMQP_URL address is too long");
            return PAYQ_ERR_CONFIG;
        }
        rc = stats_one(one, tls, queue, messages, consumers, err, errlen);
        if (rc == PAYQ_OK || rc == PAYQ_ERR_CONFIG)
            return rc;
    }
    return rc;
}
