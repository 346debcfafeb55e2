/*
 * backoff.h - capped exponential backoff with full jitter.
 *
 * delay(n) = random in [base, min(cap, base * 2^n)], so many workers that lost
 * the same dependency at the same moment do not come back in lockstep. Used
 * for reconnects (reset after a success) and in-process retries.
 */
#ifndef PAYQ_BACKOFF_H
#define PAYQ_BACKOFF_H

struct backoff {
    long base_ms;
    long cap_ms;
    int attempt;
    unsigned int seed;
};

void backoff_init(struct backoff *b, long base_ms, long cap_ms);
/* The next delay in milliseconds; advances the attempt counter. */
long backoff_next(struct backoff *b);
void backoff_reset(struct backoff *b);
/* The upper bound of the delay for attempt n (0-based), before jitter. */
long backoff_ceiling(long base_ms, long cap_ms, int n);

/* Full jitter: a delay drawn uniformly from [0, backoff_ceiling(base, cap, n)]
 * (the retry delay of the n-th retry, 0-based). */
long backoff_full_jitter(long base_ms, long cap_ms, int n, unsigned int *seed);

#endif
