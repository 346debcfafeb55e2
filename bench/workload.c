/*
 * workload.c - JSON bodies of the bench's commands (see workload.h).
 */
#include "workload.h"

#include <inttypes.h>
#include <stdio.h>

static int finish(struct load_cmd *out, const char *rk, int n)
{
    if (n < 0 || (size_t)n >= sizeof out->body)
        return PAYQ_ERR_RANGE;
    out->routing_key = rk;
    out->len = (size_t)n;
    return PAYQ_OK;
}

int workload_open(void *arg, uint64_t i, struct load_cmd *out)
{
    const struct workload *w = arg;
    bool wallet = i < (uint64_t)w->wallets;
    uint64_t k = wallet ? i : i - (uint64_t)w->wallets;
    int n =
        snprintf(out->body, sizeof out->body,
                 "{\"account\":\"%s-%c%" PRIu64 "\",\"currency\":\"%s\",\"kind\":\"%s\"}",
                 w->prefix, wallet ? 'w' : 'm', k, w->currency, wallet ? "customer" : "merchant");
    return finish(out, "account.open", n);
}

int workload_deposit(void *arg, uint64_t i, struct load_cmd *out)
{
    const struct workload *w = arg;
    int n = snprintf(out->body, sizeof out->body,
                     "{\"deposit_id\":\"%s-d%" PRIu64 "\",\"account\":\"%s-w%" PRIu64
                     "\",\"amount\":%ld,\"currency\":\"%s\"}",
                     w->prefix, i, w->prefix, i, w->fund, w->currency);
    return finish(out, "account.deposit", n);
}

int workload_payment(void *arg, uint64_t i, struct load_cmd *out)
{
    struct workload *w = arg;
    uint64_t src = dist_sample(w->wallet_dist, &w->rng);
    uint64_t dst = dist_sample(w->merchant_dist, &w->rng);
    long amount =
        w->amount_min + (long)dist_below(&w->rng, (uint64_t)(w->amount_max - w->amount_min) + 1);
    int n = snprintf(out->body, sizeof out->body,
                     "{\"payment_id\":\"%s-p%" PRIu64 "\",\"amount\":%ld,\"currency\":\"%s\","
                     "\"source\":\"%s-w%" PRIu64 "\",\"destination\":\"%s-m%" PRIu64 "\","
                     "\"capture\":true}",
                     w->prefix, i, amount, w->currency, w->prefix, src, w->prefix, dst);
    return finish(out, "payment.create", n);
}
