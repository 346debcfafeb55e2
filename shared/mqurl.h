/*
 * mqurl.h - AMQP_URL as a list of broker addresses (the nodes of a cluster).
 *
 * AMQP_URL holds one URL or several, separated by commas:
 *
 *   amqp://user:pass@10.0.0.1:5672/vh,amqp://user:pass@10.0.0.2:5672/vh
 *   amqp://user:pass@10.0.0.1:5672/vh,10.0.0.2:5672,10.0.0.3
 *
 * An entry without "://" is a host[:port] that reuses the first entry's
 * scheme, credentials and vhost; without a port it gets the scheme's default
 * (5672, or 5671 for amqps). Spaces around entries are ignored. A comma
 * inside a password must be percent-encoded (%2C), like any reserved
 * character of a URL.
 *
 * Pure string work, no I/O: mq_connect (mq.c) and the tools that open their
 * own connections walk the list with these two functions.
 */
#ifndef PAYQ_MQURL_H
#define PAYQ_MQURL_H

#include <stddef.h>

#include "status.h"

/* How many addresses the list holds (1 for NULL, "" or a single URL). */
size_t mq_url_count(const char *list);

/*
 * Writes address i (0-based) of the list into out as a complete URL. NULL or
 * "" gives "" (rabbitmq-c's default broker). PAYQ_ERR_CONFIG when the entry
 * is empty or malformed, with the reason (never a credential) in err;
 * PAYQ_ERR_RANGE when i is out of the list or out is too small. out is
 * written only on success.
 */
int mq_url_at(const char *list, size_t i, char *out, size_t len, char *err,
              size_t errlen) PAYQ_MUSTCHECK;

#endif
