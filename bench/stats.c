/*
 * stats.c - outcome tally and exact latency percentiles (see stats.h).
 *
 * Every sample is kept (4 bytes per command) rather than an HDR histogram:
 * a bench run has at most a few million commands, and exact percentiles need
 * no explanation of bucket error.
 */
#include "stats.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void stats_count(struct stats_outcomes *o, const char *status, const char *code)
{
    if (!code)
        code = "";
    for (int i = 0; i < o->n; i++) {
        if (strcmp(o->v[i].status, status) == 0 && strcmp(o->v[i].code, code) == 0) {
            o->v[i].n++;
            return;
        }
    }
    if (o->n == STATS_MAX_OUTCOMES) {
        o->other++;
        return;
    }
    struct stats_outcome *e = &o->v[o->n++];
    snprintf(e->status, sizeof e->status, "%s", status);
    snprintf(e->code, sizeof e->code, "%s", code);
    e->n = 1;
}

uint64_t stats_total(const struct stats_outcomes *o, const char *status)
{
    uint64_t n = 0;
    for (int i = 0; i < o->n; i++)
        if (strcmp(o->v[i].status, status) == 0)
            n += o->v[i].n;
    return n;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Nearest rank: the smallest sample with at least p of all samples at or
 * below it. */
static double rank_ms(const uint32_t *sorted, uint64_t n, double p)
{
    uint64_t k = (uint64_t)ceil(p * (double)n);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return sorted[k - 1] / 1000.0;
}

int stats_latency(const uint32_t *lat_us, const uint8_t *has, uint64_t n, struct stats_latency *out)
{
    memset(out, 0, sizeof *out);
    uint64_t m = has ? 0 : n;
    for (uint64_t i = 0; has && i < n; i++)
        m += has[i] != 0;
    if (m == 0)
        return PAYQ_OK;
    uint32_t *v = malloc(m * sizeof *v);
    if (!v)
        return PAYQ_ERR_NOMEM;
    double sum = 0;
    for (uint64_t i = 0, j = 0; i < n; i++) {
        if (!has || has[i]) {
            v[j++] = lat_us[i];
            sum += lat_us[i];
        }
    }
    qsort(v, m, sizeof *v, cmp_u32);
    out->n = m;
    out->mean = sum / (double)m / 1000.0;
    out->p50 = rank_ms(v, m, 0.50);
    out->p95 = rank_ms(v, m, 0.95);
    out->p99 = rank_ms(v, m, 0.99);
    out->p999 = rank_ms(v, m, 0.999);
    out->max = v[m - 1] / 1000.0;
    free(v);
    return PAYQ_OK;
}

double stats_machine_ref_ms(void)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    /* A chain of dependent xorshift steps: no memory traffic, no vector
     * shortcut, so it measures the core the bench runs on. */
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (uint32_t i = 0; i < 120000000u; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    volatile uint64_t sink = x;
    (void)sink;
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(b.tv_sec - a.tv_sec) * 1000.0 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
}
