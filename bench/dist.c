/*
 * dist.c - xoshiro256** and uniform / Zipf samplers (see dist.h).
 *
 * Zipf uses an inverse-CDF table: n doubles, one binary search per sample.
 * For the bench's account counts (up to a million) that is a few MB and far
 * cheaper than the broker round trip each sample feeds.
 */
#include "dist.h"

#include <math.h>
#include <stdlib.h>

struct dist {
    enum dist_kind kind;
    uint64_t n;
    double *cdf; /* Zipf only: cdf[k] = P(item <= k); cdf[n - 1] = 1 */
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void dist_seed(struct dist_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t dist_next(struct dist_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t dist_below(struct dist_rng *r, uint64_t n)
{
    /* Rejects the top partial range so every value is equally likely. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = dist_next(r);
    while (x >= limit);
    return x % n;
}

/* Uniform in [0, 1) with 53 random bits. */
static double unit(struct dist_rng *r)
{
    return (double)(dist_next(r) >> 11) * 0x1.0p-53;
}

int dist_new(enum dist_kind kind, double s, uint64_t n, dist_t **out)
{
    if (n == 0 || (kind == DIST_ZIPF && !(s > 0)))
        return PAYQ_ERR_INVALID;
    dist_t *d = calloc(1, sizeof *d);
    if (!d)
        return PAYQ_ERR_NOMEM;
    d->kind = kind;
    d->n = n;
    if (kind == DIST_ZIPF) {
        d->cdf = malloc(n * sizeof *d->cdf);
        if (!d->cdf) {
            free(d);
            return PAYQ_ERR_NOMEM;
        }
        double sum = 0;
        for (uint64_t k = 0; k < n; k++)
            d->cdf[k] = (sum += pow((double)(k + 1), -s));
        for (uint64_t k = 0; k < n; k++)
            d->cdf[k] /= sum;
        d->cdf[n - 1] = 1.0;
    }
    *out = d;
    return PAYQ_OK;
}

void dist_free(dist_t *d)
{
    if (!d)
        return;
    free(d->cdf);
    free(d);
}

uint64_t dist_sample(const dist_t *d, struct dist_rng *r)
{
    if (d->kind == DIST_UNIFORM)
        return dist_below(r, d->n);
    /* The first k with cdf[k] > u. */
    double u = unit(r);
    uint64_t lo = 0, hi = d->n - 1;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (d->cdf[mid] > u)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

double dist_top_share(const dist_t *d)
{
    return d->kind == DIST_ZIPF ? d->cdf[0] : 1.0 / (double)d->n;
}
