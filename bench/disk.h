/*
 * disk.h - how long the disk takes to make a write durable, sampled during
 * the measured phase.
 *
 * PostgreSQL's commits and the quorum queue's write-ahead log both wait for
 * fdatasync, so a disk that stalls stalls every payment in flight. On a
 * shared virtual disk those stalls come and go (an fsync that usually takes
 * under a millisecond now and then takes 50-100 ms), and they decide the
 * tail of a latency run the way a slow CPU decides its throughput. A probe
 * thread writes 8 KiB and calls fdatasync every 20 ms on the same file
 * system as the stack, and the report gives what it saw, with the moments of
 * the slowest, to line up with the --latency-log timeline.
 */
#ifndef PAYQ_BENCH_DISK_H
#define PAYQ_BENCH_DISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* A probe at work; opaque. */
struct disk_probe;

/* payq-bench's interval: 50 syncs a second, a load the disk hardly notices
 * beside the database's and the broker's. */
#define DISK_PROBE_INTERVAL_MS 20
#define DISK_PROBE_WORST 5    /* slowest syncs reported with their moment */
#define DISK_PROBE_SLOW_MS 20 /* a sync at least this long counts as slow */

struct disk_summary {
    bool ran;      /* false: no probe (see why) */
    char why[160]; /* why not, when !ran */
    uint64_t n;    /* syncs timed */
    double p50_ms, p99_ms, max_ms;
    uint64_t slow; /* syncs of DISK_PROBE_SLOW_MS or more */
    int worst_n;   /* entries in worst[] (the slowest first) */
    struct {
        double at_s; /* seconds after the probe started */
        double ms;
    } worst[DISK_PROBE_WORST];
};

/*
 * Starts probing with a file in dir (created, removed again by
 * disk_probe_stop) every interval_ms. Returns PAYQ_OK and *out, or an error
 * with why filled: dir cannot take the file, or it is on tmpfs (memory, where
 * a sync costs nothing and says nothing about the disk).
 */
int disk_probe_start(const char *dir, long interval_ms, struct disk_probe **out, char *why,
                     size_t whylen) PAYQ_MUSTCHECK;

/* Stops the probe, fills s, removes the file and frees p. p may be NULL (s
 * then says the probe did not run, with the reason given). */
void disk_probe_stop(struct disk_probe *p, struct disk_summary *s, const char *why_not);

/*
 * Summarizes n sync times (microseconds) taken at at_us (microseconds after
 * the start) into s: nearest-rank percentiles, the slow count and the
 * slowest ones. Sorts a copy; the inputs are left as they are.
 */
int disk_summarize(const uint32_t *sync_us, const uint64_t *at_us, uint64_t n,
                   struct disk_summary *s) PAYQ_MUSTCHECK;

#endif
