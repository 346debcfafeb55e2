/*
 * dist.h - the bench's random choices: a small fast PRNG and samplers over
 * [0, n) (uniform, or Zipf-skewed so a few hot accounts take most traffic).
 *
 * Everything is deterministic given the seed, so a run's workload can be
 * reproduced exactly with --seed.
 */
#ifndef PAYQ_BENCH_DIST_H
#define PAYQ_BENCH_DIST_H

#include <stdint.h>

#include "status.h"

/* xoshiro256** state; seed it with dist_seed. */
struct dist_rng {
    uint64_t s[4];
};

void dist_seed(struct dist_rng *r, uint64_t seed);
uint64_t dist_next(struct dist_rng *r);
/* Uniform in [0, n), n > 0, without modulo bias. */
uint64_t dist_below(struct dist_rng *r, uint64_t n);

enum dist_kind {
    DIST_UNIFORM,
    DIST_ZIPF
};

typedef struct dist dist_t;

/* A sampler over [0, n): uniform, or Zipf with exponent s > 0 (item k is
 * chosen with probability proportional to 1 / (k + 1)^s, so item 0 is the
 * hottest). The caller frees *out with dist_free. */
int dist_new(enum dist_kind kind, double s, uint64_t n, dist_t **out) PAYQ_MUSTCHECK;

/* Frees; NULL is a no-op. */
void dist_free(dist_t *d);

uint64_t dist_sample(const dist_t *d, struct dist_rng *r);

/* The probability of the hottest item (1/n when uniform), for the report. */
double dist_top_share(const dist_t *d);

#endif
