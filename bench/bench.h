/*
 * bench.h - payq-bench's settings, shared by its modules.
 *
 * Filled once by cfg_parse from the option table in main.c (defaults <
 * environment < flags) and passed down as const; no module keeps globals.
 */
#ifndef PAYQ_BENCH_H
#define PAYQ_BENCH_H

#include "mq.h"

#define BENCH_CURRENCY "USD"
#define BENCH_PREFIX_MAX 40 /* ids are "<prefix>-w<i>": at most 64 characters */

struct bench_config {
    const char *amqp_url;
    struct mq_tls amqp_tls; /* amqps:// CA file and client certificate */
    const char *database_url;
    const char *run_id;
    long wallets;
    long merchants;
    long fund;
    long rate;
    long duration;
    long count;
    const char *dist;
    const char *zipf_s;
    long amount_min;
    long amount_max;
    long confirm_window;
    long max_inflight;
    long reply_timeout;
    long seed;
    long spawn_workers;
    long worker_threads;
    long prefetch;
    long batch; /* 0 = not given: the worker's own default */
    const char *worker;
    const char *worker_log_level;
    const char *log_dir;
    const char *latency_log;
    const char *disk_probe_dir; /* NULL: $PAYQ_STACK_DIR, $TMPDIR or /tmp */
    int no_disk_probe;
    int no_check;
    int smoke;
    int quiet;
};

#endif
