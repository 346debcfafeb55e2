/* mqjson.c - see mqjson.h. */
#include "mqjson.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static json_t *field_to_json(const amqp_field_value_t *v);

/* A JSON string of AMQP bytes; an empty value may have no buffer at all. */
static json_t *bytes_json(amqp_bytes_t b)
{
    return b.len ? json_stringn_nocheck(b.bytes, b.len) : json_string("");
}

static json_t *table_to_json(const amqp_table_t *t)
{
    json_t *o = json_object();
    for (int i = 0; o && i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        char *key = malloc(e->key.len + 1);
        if (!key)
            break;
        if (e->key.len)
            memcpy(key, e->key.bytes, e->key.len);
        key[e->key.len] = 0;
        json_object_set_new(o, key, field_to_json(&e->value));
        free(key);
    }
    return o;
}

static json_t *field_to_json(const amqp_field_value_t *v)
{
    switch (v->kind) {
    case AMQP_FIELD_KIND_BOOLEAN: return json_boolean(v->value.boolean);
    case AMQP_FIELD_KIND_I8: return json_integer(v->value.i8);
    case AMQP_FIELD_KIND_U8: return json_integer(v->value.u8);
    case AMQP_FIELD_KIND_I16: return json_integer(v->value.i16);
    case AMQP_FIELD_KIND_U16: return json_integer(v->value.u16);
    case AMQP_FIELD_KIND_I32: return json_integer(v->value.i32);
    case AMQP_FIELD_KIND_U32: return json_integer(v->value.u32);
    case AMQP_FIELD_KIND_I64: return json_integer(v->value.i64);
    case AMQP_FIELD_KIND_U64: return json_integer((json_int_t)v->value.u64);
    case AMQP_FIELD_KIND_TIMESTAMP: return json_integer((json_int_t)v->value.u64);
    case AMQP_FIELD_KIND_F32: return json_real(v->value.f32);
    case AMQP_FIELD_KIND_F64: return json_real(v->value.f64);
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        return bytes_json(v->value.bytes);
    case AMQP_FIELD_KIND_TABLE: return table_to_json(&v->value.table);
    case AMQP_FIELD_KIND_ARRAY: {
        json_t *a = json_array();
        for (int i = 0; a && i < v->value.array.num_entries; i++)
            json_array_append_new(a, field_to_json(&v->value.array.entries[i]));
        return a;
    }
    default: return json_null();
    }
}

static void set_bytes(json_t *o, const char *name, amqp_flags_t flags, amqp_flags_t flag,
                      amqp_bytes_t b)
{
    if (flags & flag)
        json_object_set_new(o, name, bytes_json(b));
}

json_t *mq_props_to_json(const amqp_basic_properties_t *p)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    amqp_flags_t f = p->_flags;
    set_bytes(o, "content_type", f, AMQP_BASIC_CONTENT_TYPE_FLAG, p->content_type);
    set_bytes(o, "content_encoding", f, AMQP_BASIC_CONTENT_ENCODING_FLAG, p->content_encoding);
    set_bytes(o, "message_id", f, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id);
    set_bytes(o, "correlation_id", f, AMQP_BASIC_CORRELATION_ID_FLAG, p->correlation_id);
    set_bytes(o, "reply_to", f, AMQP_BASIC_REPLY_TO_FLAG, p->reply_to);
    set_bytes(o, "expiration", f, AMQP_BASIC_EXPIRATION_FLAG, p->expiration);
    set_bytes(o, "type", f, AMQP_BASIC_TYPE_FLAG, p->type);
    set_bytes(o, "user_id", f, AMQP_BASIC_USER_ID_FLAG, p->user_id);
    set_bytes(o, "app_id", f, AMQP_BASIC_APP_ID_FLAG, p->app_id);
    if (f & AMQP_BASIC_DELIVERY_MODE_FLAG)
        json_object_set_new(o, "delivery_mode", json_integer(p->delivery_mode));
    if (f & AMQP_BASIC_PRIORITY_FLAG)
        json_object_set_new(o, "priority", json_integer(p->priority));
    if (f & AMQP_BASIC_TIMESTAMP_FLAG)
        json_object_set_new(o, "timestamp", json_integer((json_int_t)p->timestamp));
    if (f & AMQP_BASIC_HEADERS_FLAG)
        json_object_set_new(o, "headers", table_to_json(&p->headers));
    return o;
}

static int json_to_field(const json_t *j, amqp_pool_t *pool, amqp_field_value_t *v);

static int json_to_table(const json_t *j, amqp_pool_t *pool, amqp_table_t *t)
{
    size_t n = json_object_size(j);
    t->num_entries = 0;
    t->entries = n ? amqp_pool_alloc(pool, n * sizeof *t->entries) : NULL;
    if (n && !t->entries)
        return PAYQ_ERR_NOMEM;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)(uintptr_t)j, key, val) {
        amqp_table_entry_t *e = &t->entries[t->num_entries];
        amqp_pool_alloc_bytes(pool, strlen(key), &e->key);
        if (!e->key.bytes && key[0])
            return PAYQ_ERR_NOMEM;
        if (key[0])
            memcpy(e->key.bytes, key, strlen(key));
        int rc = json_to_field(val, pool, &e->value);
        if (rc != PAYQ_OK)
            return rc;
        t->num_entries++;
    }
    return PAYQ_OK;
}

static int json_to_field(const json_t *j, amqp_pool_t *pool, amqp_field_value_t *v)
{
    switch (json_typeof(j)) {
    case JSON_TRUE:
    case JSON_FALSE:
        v->kind = AMQP_FIELD_KIND_BOOLEAN;
        v->value.boolean = json_is_true(j);
        return PAYQ_OK;
    case JSON_INTEGER:
        v->kind = AMQP_FIELD_KIND_I64;
        v->value.i64 = json_integer_value(j);
        return PAYQ_OK;
    case JSON_REAL:
        v->kind = AMQP_FIELD_KIND_F64;
        v->value.f64 = json_real_value(j);
        return PAYQ_OK;
    case JSON_STRING: {
        size_t n = json_string_length(j);
        v->kind = AMQP_FIELD_KIND_UTF8;
        amqp_pool_alloc_bytes(pool, n, &v->value.bytes);
        if (n && !v->value.bytes.bytes)
            return PAYQ_ERR_NOMEM;
        if (n) /* an empty string has no buffer: memcpy(NULL, ..., 0) is undefined */
            memcpy(v->value.bytes.bytes, json_string_value(j), n);
        return PAYQ_OK;
    }
    case JSON_OBJECT:
        v->kind = AMQP_FIELD_KIND_TABLE;
        return json_to_table(j, pool, &v->value.table);
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        v->kind = AMQP_FIELD_KIND_ARRAY;
        v->value.array.num_entries = 0;
        v->value.array.entries = n ? amqp_pool_alloc(pool, n * sizeof(amqp_field_value_t)) : NULL;
        if (n && !v->value.array.entries)
            return PAYQ_ERR_NOMEM;
        for (size_t i = 0; i < n; i++) {
            int rc = json_to_field(json_array_get(j, i), pool, &v->value.array.entries[i]);
            if (rc != PAYQ_OK)
                return rc;
            v->value.array.num_entries++;
        }
        return PAYQ_OK;
    }
    default:
        v->kind = AMQP_FIELD_KIND_VOID;
        return PAYQ_OK;
    }
}

static int get_bytes(const json_t *o, const char *name, amqp_pool_t *pool, amqp_flags_t flag,
                     amqp_basic_properties_t *p, amqp_bytes_t *out)
{
    const json_t *v = json_object_get(o, name);
    if (!json_is_string(v))
        return PAYQ_OK;
    size_t n = json_string_length(v);
    amqp_pool_alloc_bytes(pool, n, out);
    if (n && !out->bytes)
        return PAYQ_ERR_NOMEM;
    if (n)
        memcpy(out->bytes, json_string_value(v), n);
    p->_flags |= flag;
    return PAYQ_OK;
}

int mq_props_from_json(const json_t *j, amqp_pool_t *pool, amqp_basic_properties_t *p)
{
    memset(p, 0, sizeof *p);
    int rc = PAYQ_OK;
    rc |= get_bytes(j, "content_type", pool, AMQP_BASIC_CONTENT_TYPE_FLAG, p, &p->content_type);
    rc |= get_bytes(j, "content_encoding", pool, AMQP_BASIC_CONTENT_ENCODING_FLAG, p,
                    &p->content_encoding);
    rc |= get_bytes(j, "message_id", pool, AMQP_BASIC_MESSAGE_ID_FLAG, p, &p->message_id);
    rc |= get_bytes(j, "correlation_id", pool, AMQP_BASIC_CORRELATION_ID_FLAG, p,
                    &p->correlation_id);
    rc |= get_bytes(j, "reply_to", pool, AMQP_BASIC_REPLY_TO_FLAG, p, &p->reply_to);
    rc |= get_bytes(j, "expiration", pool, AMQP_BASIC_EXPIRATION_FLAG, p, &p->expiration);
    rc |= get_bytes(j, "type", pool, AMQP_BASIC_TYPE_FLAG, p, &p->type);
    rc |= get_bytes(j, "user_id", pool, AMQP_BASIC_USER_ID_FLAG, p, &p->user_id);
    rc |= get_bytes(j, "app_id", pool, AMQP_BASIC_APP_ID_FLAG, p, &p->app_id);
    if (rc != PAYQ_OK)
        return PAYQ_ERR_NOMEM;
    const json_t *v;
    if (json_is_integer(v = json_object_get(j, "delivery_mode"))) {
        p->_flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
        p->delivery_mode = (uint8_t)json_integer_value(v);
    }
    if (json_is_integer(v = json_object_get(j, "priority"))) {
        p->_flags |= AMQP_BASIC_PRIORITY_FLAG;
        p->priority = (uint8_t)json_integer_value(v);
    }
    if (json_is_integer(v = json_object_get(j, "timestamp"))) {
        p->_flags |= AMQP_BASIC_TIMESTAMP_FLAG;
        p->timestamp = (uint64_t)json_integer_value(v);
    }
    if (json_is_object(v = json_object_get(j, "headers"))) {
        p->_flags |= AMQP_BASIC_HEADERS_FLAG;
        return json_to_table(v, pool, &p->headers);
    }
    return PAYQ_OK;
}
