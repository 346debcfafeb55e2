/*
 * broker.h - a look at the work queue from outside: how many messages wait
 * in it and how many consumers take from it.
 *
 * The bench uses it to wait until the workers it started consume, to notice
 * workers it did not start (they would take part of the load), and to
 * notice a backlog left by someone else. mq.h does not expose the consumer
 * count, so this opens its own short-lived rabbitmq-c connection.
 */
#ifndef PAYQ_BENCH_BROKER_H
#define PAYQ_BENCH_BROKER_H

#include <stddef.h>
#include <stdint.h>

#include "mq.h"
#include "status.h"

/*
 * Passive queue.declare of `queue` on a fresh connection to url (amqps://
 * with tls, see mq.h; may be NULL; of a list of cluster nodes, mqurl.h, the
 * first that answers). Returns
 * PAYQ_OK with both counts, PAYQ_ERR_CLOSED when the queue does not exist
 * (404), or another error with a reason (never a password) in err.
 */
int broker_queue_stats(const char *url, const struct mq_tls *tls, const char *queue,
                       uint32_t *messages, uint32_t *consumers, char *err,
                       size_t errlen) PAYQ_MUSTCHECK;

#endif
