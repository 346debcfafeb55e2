/*
 * mqurl.c - the broker address list of AMQP_URL (see mqurl.h).
 */
#include "mqurl.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

size_t mq_url_count(const char *list)
{
    size_t n = 1;
    for (const char *p = list; p && *p; p++)
        n += *p == ',';
    return n;
}

/* Entry i of the list, spaces trimmed: [*start, *start + *len). */
static bool entry(const char *list, size_t i, const char **start, size_t *len)
{
    const char *p = list;
    for (; i > 0; i--) {
        p = strchr(p, ',');
        if (!p)
            return false;
        p++;
    }
    const char *end = strchr(p, ',');
    if (!end)
        end = p + strlen(p);
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *start = p;
    *len = (size_t)(end - p);
    return true;
}

static bool has_scheme(const char *s, size_t len)
{
    for (size_t k = 0; k + 3 <= len; k++)
        if (memcmp(s + k, "://", 3) == 0)
            return true;
    return false;
}

int mq_url_at(const char *list, size_t i, char *out, size_t len, char *err, size_t errlen)
{
    const char *e, *first;
    size_t elen, flen;
    if (!list || !*list) {
        if (i != 0 || len < 1)
            return PAYQ_ERR_RANGE;
        out[0] = 0;
        return PAYQ_OK;
    }
    if (!entry(list, i, &e, &elen))
        return PAYQ_ERR_RANGE;
    if (elen == 0) {
        snprintf(err, errlen, "AMQP_URL: address %zu of %zu is empty", i + 1, mq_url_count(list));
        return PAYQ_ERR_CONFIG;
    }
    if (i == 0 || has_scheme(e, elen)) {
        if (elen >= len)
            return PAYQ_ERR_RANGE;
        memcpy(out, e, elen);
        out[elen] = 0;
        return PAYQ_OK;
    }

    /* host[:port]: the first URL with its host and port replaced. */
    if (memchr(e, '@', elen) || memchr(e, '/', elen)) {
        snprintf(err, errlen,
                 "AMQP_URL: address %zu is neither a URL nor host[:port] "
                 "(credentials and vhost come from the first URL)",
                 i + 1);
        return PAYQ_ERR_CONFIG;
    }
    (void)entry(list, 0, &first, &flen);
    const char *scheme_end = NULL;
    for (size_t k = 0; k + 3 <= flen && !scheme_end; k++)
        if (memcmp(first + k, "://", 3) == 0)
            scheme_end = first + k + 3;
    if (!scheme_end) {
        snprintf(err, errlen,
                 "AMQP_URL: the first address must be a full URL (amqp://user:password@host:port/"
                 "vhost) when others are host[:port]");
        return PAYQ_ERR_CONFIG;
    }
    const char *fend = first + flen;
    const char *path = memchr(scheme_end, '/', (size_t)(fend - scheme_end));
    if (!path)
        path = fend;
    /* The userinfo ends at the last '@' of the authority (a password may
     * hold an encoded one, never a raw one, but be lenient). */
    const char *host = scheme_end;
    for (const char *p = scheme_end; p < path; p++)
        if (*p == '@')
            host = p + 1;
    size_t head = (size_t)(host - first), tail = (size_t)(fend - path);
    if (head + elen + tail >= len)
        return PAYQ_ERR_RANGE;
    memcpy(out, first, head);
    memcpy(out + head, e, elen);
    memcpy(out + head + elen, path, tail);
    out[head + elen + tail] = 0;
    return PAYQ_OK;
}
