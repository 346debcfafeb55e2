/*
 * http.h - payq-worker's HTTP endpoint for monitoring (libmicrohttpd).
 *
 *   GET /metrics   the metrics registry (metrics.h), Prometheus text 0.0.4
 *   GET /healthz   200 "ok" while the process runs (liveness)
 *   GET /readyz    200 "ready" when every worker thread is connected to both
 *                  the broker and the database and no circuit is open; else
 *                  503 with the reasons, one per line (readiness)
 *
 * HEAD works too; any other method is 405, any other path 404. Nothing it
 * serves holds a URL, a credential or a message body. The server runs on
 * libmicrohttpd's own thread; it reads only atomics (the registry and the
 * health flags), so it never waits for a worker thread nor slows one down.
 *
 * Readiness is a struct http_health the worker owns: one set of atomic flags
 * per worker thread, which that thread updates as its connections and its
 * circuit change; the server reads them on each GET /readyz.
 */
#ifndef PAYQ_HTTP_H
#define PAYQ_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "status.h"

struct http_health;

/* Health flags of nthreads worker threads, all down (not ready) until the
 * threads say otherwise. NULL when out of memory. Free with
 * http_health_free after the server and the threads are gone. */
struct http_health *http_health_new(int nthreads);
/* NULL is a no-op. */
void http_health_free(struct http_health *h);

/* Thread `thread` is (up = true) or is not connected to the broker / the
 * database. A NULL h or an index out of range is a no-op. */
void http_health_set_amqp(struct http_health *h, int thread, bool up);
void http_health_set_db(struct http_health *h, int thread, bool up);
/* Thread `thread`'s circuit is open or closed. Also keeps the
 * payq_circuit_open gauge: it changes when the flag does. */
void http_health_set_circuit(struct http_health *h, int thread, bool open);

/* True when ready; otherwise writes the reasons, one line each ("thread 0:
 * not connected to PostgreSQL"), into why (always NUL-terminated). */
bool http_health_ready(const struct http_health *h, char *why, size_t len);

typedef struct http_server http_server_t;

/*
 * Starts serving on addr:port on libmicrohttpd's own thread. addr is a
 * numeric IPv4 or IPv6 address ("127.0.0.1", "0.0.0.0", "::1"). port 0 means
 * off: PAYQ_OK with *out = NULL. h must outlive the server. Start it after
 * blocking the signals that the main thread sigwait()s for: its thread
 * inherits the mask. PAYQ_ERR_INVALID (bad address) or PAYQ_ERR_IO (cannot
 * listen: the reason is logged); *out is written only on success. Stop with
 * http_stop.
 */
int http_start(const char *addr, int port, const struct http_health *h,
               http_server_t **out) PAYQ_MUSTCHECK;

/* Stops serving (waits for requests in progress) and frees; NULL is a no-op. */
void http_stop(http_server_t *s);

#endif
