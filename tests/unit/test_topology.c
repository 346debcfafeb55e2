/*
 * test_topology.c - rabbitmq/definitions.json declares exactly the objects
 * the worker declares (shared/topology.c), with the same arguments, so
 * importing the file first and starting the worker first are equivalent.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "topology.h"

static json_t *defs;

static int load(void **state)
{
    (void)state;
    json_error_t err;
    defs = json_load_file(PAYQ_SOURCE_DIR "/rabbitmq/definitions.json", 0, &err);
    if (!defs)
        fprintf(stderr, "definitions.json: %s (line %d)\n", err.text, err.line);
    return defs ? 0 : -1;
}

static int unload(void **state)
{
    (void)state;
    json_decref(defs);
    return 0;
}

/* args (C table) == arguments (JSON object), both ways. */
static void same_args(const char *what, const struct topo_arg *args, size_t n, json_t *obj)
{
    if (json_object_size(obj) != n)
        fail_msg("%s: definitions.json has %zu arguments, topology.c %zu", what,
                 json_object_size(obj), n);
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_object_get(obj, args[i].name);
        if (!v)
            fail_msg("%s: argument %s missing from definitions.json", what, args[i].name);
        if (args[i].type == TOPO_STR) {
            if (!json_is_string(v) || strcmp(json_string_value(v), args[i].s) != 0)
                fail_msg("%s: argument %s differs", what, args[i].name);
        } else if (!json_is_integer(v) || json_integer_value(v) != args[i].i) {
            fail_msg("%s: argument %s differs", what, args[i].name);
        }
    }
}

static json_t *find(const char *section, const char *key, const char *name)
{
    size_t i;
    json_t *o;
    json_array_foreach(json_object_get(defs, section), i, o)
        if (strcmp(json_string_value(json_object_get(o, key)), name) == 0)
            return o;
    return NULL;
}

static void test_exchanges(void **state)
{
    (void)state;
    assert_int_equal(json_array_size(json_object_get(defs, "exchanges")), topo_nexchanges);
    for (size_t i = 0; i < topo_nexchanges; i++) {
        json_t *x = find("exchanges", "name", topo_exchanges[i].name);
        if (!x)
            fail_msg("exchange %s missing from definitions.json", topo_exchanges[i].name);
        assert_string_equal(json_string_value(json_object_get(x, "type")),
                            topo_exchanges[i].type);
        assert_true(json_is_true(json_object_get(x, "durable")));
        assert_true(json_is_false(json_object_get(x, "auto_delete")));
    }
}

static void test_queues(void **state)
{
    (void)state;
    assert_int_equal(json_array_size(json_object_get(defs, "queues")), topo_nqueues);
    for (size_t i = 0; i < topo_nqueues; i++) {
        json_t *q = find("queues", "name", topo_queues[i].name);
        if (!q)
            fail_msg("queue %s missing from definitions.json", topo_queues[i].name);
        assert_true(json_is_true(json_object_get(q, "durable")));
        same_args(topo_queues[i].name, topo_queues[i].args, topo_queues[i].nargs,
                  json_object_get(q, "arguments"));
    }
}

static void test_bindings(void **state)
{
    (void)state;
    json_t *all = json_object_get(defs, "bindings");
    assert_int_equal(json_array_size(all), topo_nbindings);
    for (size_t i = 0; i < topo_nbindings; i++) {
        const struct topo_binding *b = &topo_bindings[i];
        size_t j;
        json_t *o, *hit = NULL;
        json_array_foreach(all, j, o)
            if (strcmp(json_string_value(json_object_get(o, "source")), b->exchange) == 0 &&
                strcmp(json_string_value(json_object_get(o, "destination")), b->queue) == 0)
                hit = o;
        if (!hit)
            fail_msg("binding %s -> %s missing from definitions.json", b->exchange, b->queue);
        assert_string_equal(json_string_value(json_object_get(hit, "routing_key")),
                            b->routing_key);
        same_args(b->queue, b->args, b->nargs, json_object_get(hit, "arguments"));
    }
}

/* The tiers' TTLs are increasing and each tier queue dead-letters back to
 * the command exchange, which routes to the work queue. */
static void test_tiers(void **state)
{
    (void)state;
    for (size_t i = 0; i < topo_ntiers; i++) {
        if (i > 0)
            assert_true(topo_tiers[i].delay_ms > topo_tiers[i - 1].delay_ms);
        json_t *q = find("queues", "name", topo_tiers[i].queue);
        assert_non_null(q);
        json_t *args = json_object_get(q, "arguments");
        assert_int_equal(json_integer_value(json_object_get(args, "x-message-ttl")),
                         topo_tiers[i].delay_ms);
        assert_string_equal(json_string_value(json_object_get(args, "x-dead-letter-exchange")),
                            PAYQ_X_COMMANDS);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exchanges),
        cmocka_unit_test(test_queues),
        cmocka_unit_test(test_bindings),
        cmocka_unit_test(test_tiers),
    };
    return cmocka_run_group_tests(tests, load, unload);
}
