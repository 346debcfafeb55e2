/*
 * http.c - /metrics, /healthz and /readyz on libmicrohttpd's own thread, and
 * the readiness flags the worker threads keep (see http.h).
 */
#include "http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "log.h"
#include "metrics.h"

/* libmicrohttpd before 0.9.71 returned int from its callbacks. */
#if MHD_VERSION < 0x00097002
typedef int mhd_result;
#else
typedef enum MHD_Result mhd_result;
#endif

/* A scrape or a probe is a single short request: a few connections are plenty,
 * and an idle one is dropped soon so nothing can pile up. */
#define MAX_CONNECTIONS 16
#define IDLE_TIMEOUT_S 10

struct thread_health {
    atomic_bool amqp;
    atomic_bool db;
    atomic_bool circuit_open;
};

struct http_health {
    int n;
    struct thread_health t[];
};

struct http_health *http_health_new(int nthreads)
{
    if (nthreads < 0)
        return NULL;
    struct http_health *h = malloc(sizeof *h + (size_t)nthreads * sizeof h->t[0]);
    if (!h)
        return NULL;
    h->n = nthreads;
    for (int i = 0; i < nthreads; i++) {
        atomic_init(&h->t[i].amqp, false);
        atomic_init(&h->t[i].db, false);
        atomic_init(&h->t[i].circuit_open, false);
    }
    return h;
}

void http_health_free(struct http_health *h)
{
    free(h);
}

static struct thread_health *slot(struct http_health *h, int thread)
{
    return h && thread >= 0 && thread < h->n ? &h->t[thread] : NULL;
}

void http_health_set_amqp(struct http_health *h, int thread, bool up)
{
    struct thread_health *t = slot(h, thread);
    if (t)
        atomic_store(&t->amqp, up);
}

void http_health_set_db(struct http_health *h, int thread, bool up)
{
    struct thread_health *t = slot(h, thread);
    if (t)
        atomic_store(&t->db, up);
}

void http_health_set_circuit(struct http_health *h, int thread, bool open)
{
    struct thread_health *t = slot(h, thread);
    if (t && atomic_exchange(&t->circuit_open, open) != open)
        metrics_circuit(open);
}

bool http_health_ready(const struct http_health *h, char *why, size_t len)
{
    size_t pos = 0;
    bool ready = true;
    if (len > 0)
        why[0] = 0;
    for (int i = 0; h && i < h->n; i++) {
        /* Casts: reading an atomic is not a write, whatever the C11
         * prototypes say about const. */
        struct thread_health *t = (struct thread_health *)(uintptr_t)&h->t[i];
        const char *problems[3] = {
            atomic_load(&t->amqp) ? NULL : "not connected to RabbitMQ",
            atomic_load(&t->db) ? NULL : "not connected to PostgreSQL",
            atomic_load(&t->circuit_open) ? "circuit open" : NULL,
        };
        for (size_t k = 0; k < 3; k++) {
            if (!problems[k])
                continue;
            ready = false;
            if (pos < len) {
                int n = snprintf(why + pos, len - pos, "thread %d: %s\n", i, problems[k]);
                pos = n < 0 ? len : pos + (size_t)n;
            }
        }
    }
    return ready;
}

struct http_server {
    struct MHD_Daemon *daemon;
    const struct http_health *health;
};

/* Queues one response. `body` is static (free_it false) or malloc'd, and
 * then libmicrohttpd frees it. */
static mhd_result reply(struct MHD_Connection *c, unsigned int status, const char *type, char *body,
                        size_t len, bool free_it)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, body, free_it ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (free_it)
            free(body);
        return MHD_NO; /* libmicrohttpd closes the connection */
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    mhd_result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static mhd_result reply_text(struct MHD_Connection *c, unsigned int status, const char *text)
{
    return reply(c, status, "text/plain; charset=utf-8", (char *)(uintptr_t)text, strlen(text),
                 false);
}

static mhd_result on_metrics(struct MHD_Connection *c)
{
    char *text;
    size_t len;
    if (metrics_render(&text, &len) != PAYQ_OK)
        return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len, true);
}

static mhd_result on_ready(struct MHD_Connection *c, const struct http_health *h)
{
    char why[1024];
    if (http_health_ready(h, why, sizeof why))
        return reply_text(c, MHD_HTTP_OK, "ready\n");
    char *body = strdup(why);
    if (!body)
        return reply_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "not ready\n");
    return reply(c, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", body, strlen(body),
                 true);
}

/* libmicrohttpd's request callback; every request is answered on its first
 * call (a body, if any, is not read: no path takes one). */
static mhd_result on_request(void *cls, struct MHD_Connection *c, const char *url,
                             const char *method, const char *version, const char *upload_data,
                             size_t *upload_data_size, void **con_cls)
{
    const struct http_server *s = cls;
    enum {
        METRICS,
        HEALTHZ,
        READYZ,
        UNKNOWN
    } path = UNKNOWN;
    if (strcmp(url, "/metrics") == 0)
        path = METRICS;
    else if (strcmp(url, "/healthz") == 0)
        path = HEALTHZ;
    else if (strcmp(url, "/readyz") == 0)
        path = READYZ;
    if (path == UNKNOWN)
        return reply_text(c, MHD_HTTP_NOT_FOUND, "not found: try /metrics, /healthz, /readyz\n");
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    switch (path) {
    case METRICS: return on_metrics(c);
    case HEALTHZ: return reply_text(c, MHD_HTTP_OK, "ok\n");
    case READYZ: return on_ready(c, s->health);
    case UNKNOWN: break;
    }
    return MHD_NO;
}

/* libmicrohttpd's own messages (a failed bind, a broken client) go to our
 * log. They never hold request data beyond a peer address. */
__attribute__((format(printf, 2, 0))) static void on_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    if (n < 0)
        return;
    size_t len = strlen(msg);
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == '\r'))
        msg[--len] = 0;
    log_warn("http: %s", msg);
}

int http_start(const char *addr, int port, const struct http_health *h, http_server_t **out)
{
    if (port == 0) {
        *out = NULL;
        return PAYQ_OK;
    }
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    memset(&v4, 0, sizeof v4);
    memset(&v6, 0, sizeof v6);
    struct sockaddr *sa;
    unsigned int flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    if (port < 0 || port > 65535 || !addr) {
        log_error("http: invalid listen address or port %d", port);
        return PAYQ_ERR_INVALID;
    }
    if (inet_pton(AF_INET, addr, &v4.sin_addr) == 1) {
        v4.sin_family = AF_INET;
        v4.sin_port = htons((uint16_t)port);
        sa = (struct sockaddr *)&v4;
    } else if (inet_pton(AF_INET6, addr, &v6.sin6_addr) == 1) {
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons((uint16_t)port);
        sa = (struct sockaddr *)&v6;
        flags |= MHD_USE_IPv6;
    } else {
        log_error("http: %s is not a numeric IPv4 or IPv6 address", addr);
        return PAYQ_ERR_INVALID;
    }

    struct http_server *s = calloc(1, sizeof *s);
    if (!s)
        return PAYQ_ERR_NOMEM;
    s->health = h;
    /* The logger first: libmicrohttpd reports problems with later options. */
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, on_log, NULL,
        MHD_OPTION_SOCK_ADDR, sa, MHD_OPTION_CONNECTION_LIMIT, (unsigned int)MAX_CONNECTIONS,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)IDLE_TIMEOUT_S, MHD_OPTION_END);
    const char *l = sa->sa_family == AF_INET6 ? "[" : "", *r = sa->sa_family == AF_INET6 ? "]" : "";
    if (!s->daemon) {
        free(s);
        log_error("http: cannot serve metrics on %s%s%s:%d (see the message above); choose "
                  "another --metrics-port, or 0 to turn the endpoint off",
                  l, addr, r, port);
        return PAYQ_ERR_IO;
    }
    log_info("serving /metrics, /healthz and /readyz on http://%s%s%s:%d", l, addr, r, port);
    *out = s;
    return PAYQ_OK;
}

void http_stop(http_server_t *s)
{
    if (!s)
        return;
    MHD_stop_daemon(s->daemon);
    free(s);
}
