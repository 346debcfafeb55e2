/*
 * workload.h - the commands of a bench run, built on demand by index.
 *
 * Ids: wallets "<prefix>-w<i>", merchants "<prefix>-m<j>", deposits
 * "<prefix>-d<i>" (one per wallet), payments "<prefix>-p<k>". Payment k
 * draws its wallet, merchant and amount from the run's seeded generator, in
 * order, so the same seed gives the same payments.
 */
#ifndef PAYQ_BENCH_WORKLOAD_H
#define PAYQ_BENCH_WORKLOAD_H

#include <stdint.h>

#include "dist.h"
#include "load.h"

struct workload {
    const char *prefix;
    const char *currency;
    long wallets, merchants;
    long fund; /* deposit per wallet, minor units */
    long amount_min, amount_max;
    dist_t *wallet_dist;   /* sources of payments */
    dist_t *merchant_dist; /* destinations of payments */
    struct dist_rng rng;
};

/* account.open: indexes below `wallets` open wallets, the rest merchants. */
int workload_open(void *w, uint64_t i, struct load_cmd *out);
/* account.deposit of `fund` into wallet i. */
int workload_deposit(void *w, uint64_t i, struct load_cmd *out);
/* payment.create with capture: a drawn wallet pays a drawn merchant. */
int workload_payment(void *w, uint64_t i, struct load_cmd *out);

#endif
