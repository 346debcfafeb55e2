/*
 * fuzz_table.c - libFuzzer harness for AMQP header tables as payq reads
 * them: decoding (rabbitmq-c), the lookups the worker does on every
 * delivery (mq_header_int / mq_header_str: x-delivery-count, x-payq-*), and
 * the JSON round trip dead letters make through PostgreSQL (mqjson).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <amqp.h>

#include "mq.h"
#include "mqjson.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_bytes_t encoded = { size, (void *)(uintptr_t)data };
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    size_t offset = 0;
    if (amqp_decode_table(encoded, &pool, &p.headers, &offset) == AMQP_STATUS_OK) {
        p._flags = AMQP_BASIC_HEADERS_FLAG;
        int64_t n;
        amqp_bytes_t s;
        (void)mq_header_int(&p, "x-delivery-count", &n);
        (void)mq_header_int(&p, "x-payq-attempts", &n);
        (void)mq_header_str(&p, "x-payq-first-failure-at", &s);
        (void)mq_header_str(&p, "x-payq-user-id", &s);

        json_t *j = mq_props_to_json(&p);
        if (j) {
            amqp_pool_t pool2;
            init_amqp_pool(&pool2, 4096);
            amqp_basic_properties_t back;
            if (mq_props_from_json(j, &pool2, &back) == PAYQ_OK) {
                /* a second trip is a fixed point */
                json_t *j2 = mq_props_to_json(&back);
                if (j2 && !json_equal(j, j2) && json_object_size(json_object_get(j, "headers")) ==
                                                    json_object_size(json_object_get(j2, "headers")))
                    abort();
                json_decref(j2);
            }
            empty_amqp_pool(&pool2);
            json_decref(j);
        }
    }
    empty_amqp_pool(&pool);
    return 0;
}
