/* backoff.c - capped exponential backoff with full jitter. */
#include "backoff.h"

#include <stdlib.h>
#include <time.h>

void backoff_init(struct backoff *b, long base_ms, long cap_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    b->base_ms = base_ms;
    b->cap_ms = cap_ms;
    b->attempt = 0;
    b->seed = (unsigned int)(ts.tv_nsec ^ (long)b);
}

long backoff_ceiling(long base_ms, long cap_ms, int n)
{
    long d = base_ms;
    for (int i = 0; i < n && d < cap_ms; i++)
        d *= 2;
    return d < cap_ms ? d : cap_ms;
}

long backoff_next(struct backoff *b)
{
    long ceil = backoff_ceiling(b->base_ms, b->cap_ms, b->attempt);
    if (b->attempt < 62)
        b->attempt++;
    if (ceil <= b->base_ms)
        return ceil;
    return b->base_ms + (long)(rand_r(&b->seed) % (ceil - b->base_ms + 1));
}

void backoff_reset(struct backoff *b)
{
    b->attempt = 0;
}

long backoff_full_jitter(long base_ms, long cap_ms, int n, unsigned int *seed)
{
    long ceil = backoff_ceiling(base_ms, cap_ms, n);
    /* Two draws: RAND_MAX may be as small as 2^31 - 1 < an hour in ms * 2. */
    unsigned long r = ((unsigned long)rand_r(seed) << 16) ^ (unsigned long)rand_r(seed);
    return (long)(r % ((unsigned long)ceil + 1));
}
