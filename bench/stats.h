/*
 * stats.h - what the bench counts: outcomes of replies by status and code,
 * and latency percentiles over every sample (exact, from a sorted copy).
 */
#ifndef PAYQ_BENCH_STATS_H
#define PAYQ_BENCH_STATS_H

#include <stdint.h>

#include "status.h"

#define STATS_MAX_OUTCOMES 32

/* One (status, code) pair and how often it was seen. */
struct stats_outcome {
    char status[16];
    char code[48]; /* "" when the reply had none */
    uint64_t n;
};

/* A small tally; pairs beyond STATS_MAX_OUTCOMES are counted in `other`. */
struct stats_outcomes {
    struct stats_outcome v[STATS_MAX_OUTCOMES];
    int n;
    uint64_t other;
};

/* Counts one reply; code may be NULL. */
void stats_count(struct stats_outcomes *o, const char *status, const char *code);

/* Replies with this status, over every code. */
uint64_t stats_total(const struct stats_outcomes *o, const char *status);

/* Latency summary in milliseconds. */
struct stats_latency {
    uint64_t n;
    double mean, p50, p95, p99, p999, max;
};

/*
 * Summarizes the samples lat_us[i] for which has[i] != 0 (i < n; every one
 * when has is NULL): nearest-rank percentiles over all of them. Allocates a
 * temporary copy.
 */
int stats_latency(const uint32_t *lat_us, const uint8_t *has, uint64_t n,
                  struct stats_latency *out) PAYQ_MUSTCHECK;

/*
 * The machine's speed right now: milliseconds of wall time a fixed piece of
 * integer arithmetic takes on one core (about 210 ms on a quiet machine of
 * the kind the README's figures come from). Shared machines slow down by half
 * and more for minutes at a time; a run whose reference is high ran on a slow
 * machine, and its figures say so rather than about payq.
 */
double stats_machine_ref_ms(void);

#endif
