/*
 * fleet.h - the payq-worker processes a bench run starts itself.
 *
 * Each runs `payq-worker run --threads T --prefetch N [--batch B]` with its
 * log in <log-dir>/payq-bench-<prefix>-worker<k>.log. The fleet counts as
 * ready once the broker reports their consumers on the work queue (or, as a
 * fallback, once each log says every thread is consuming). Stopping sends
 * SIGTERM to all of them at once, so they drain in parallel.
 */
#ifndef PAYQ_BENCH_FLEET_H
#define PAYQ_BENCH_FLEET_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "bench.h"
#include "status.h"

#define FLEET_MAX 64

struct fleet {
    int n;
    pid_t pid[FLEET_MAX];
    int status[FLEET_MAX]; /* wait status once reaped */
    bool reaped[FLEET_MAX];
    char log[FLEET_MAX][512];
};

/*
 * Starts cfg->spawn_workers workers of `worker` and waits until they
 * consume: the work queue's consumer count reaches consumers_before plus
 * theirs. On failure prints why (with the log tail) to stderr, stops what
 * it started and returns an error. *f must be zeroed.
 */
int fleet_start(struct fleet *f, const struct bench_config *cfg, const char *worker,
                const char *prefix, uint32_t consumers_before,
                volatile sig_atomic_t *stop) PAYQ_MUSTCHECK;

/* CPU seconds used so far by the live workers. */
double fleet_cpu_seconds(const struct fleet *f);

/* The largest peak RSS (VmHWM) of the live workers in KiB; 0 when unknown. */
long fleet_peak_rss_kib(const struct fleet *f);

/* SIGTERM to every live worker, then waits (SIGKILL after 30 s). Returns
 * true when all exited with status 0; describes the first that did not in
 * note. Calling it again signals nobody and returns the same verdict. */
bool fleet_stop(struct fleet *f, char *note, size_t notelen);

#endif
