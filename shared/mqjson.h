/*
 * mqjson.h - AMQP message properties as JSON and back.
 *
 * Dead letters are archived in PostgreSQL with their properties and headers
 * (payq.dead_letters.properties), and replayed from there, so the
 * properties must survive the trip: strings, integers, booleans, nested
 * tables and arrays round-trip; other field types (floats, decimals,
 * timestamps, byte arrays) become numbers or strings.
 */
#ifndef PAYQ_MQJSON_H
#define PAYQ_MQJSON_H

#include <amqp.h>
#include <jansson.h>

#include "status.h"

/* {"content_type", "message_id", "correlation_id", "reply_to", "type",
 *  "user_id", "delivery_mode", "priority", "timestamp", "expiration",
 *  "app_id", "headers": {...}}, with only the properties that are set.
 * The caller json_decref's the result; NULL when out of memory. */
json_t *mq_props_to_json(const amqp_basic_properties_t *p);

/* The reverse; strings and tables are allocated in `pool` (the caller
 * empties it with empty_amqp_pool after publishing). */
int mq_props_from_json(const json_t *j, amqp_pool_t *pool, amqp_basic_properties_t *out)
    PAYQ_MUSTCHECK;

#endif
