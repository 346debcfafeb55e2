/*
 * verify.h - what the database says about one bench run, read with SQL.
 *
 * Every id of a run starts with "<prefix>-", so the run's accounts,
 * deposits, payments and postings can be told apart from everything else
 * in a shared database. The bench compares these numbers with what it sent
 * and what the replies said (main.c decides what passes).
 */
#ifndef PAYQ_BENCH_VERIFY_H
#define PAYQ_BENCH_VERIFY_H

#include <stdint.h>

#include "db.h"
#include "status.h"

struct verify_ledger {
    int64_t wallets, merchants;             /* the run's accounts found */
    int64_t wallet_posted, merchant_posted; /* sums of posted balances */
    int64_t pending;                        /* sum of pending (holds) over the run's accounts */
    int64_t overdrawn;                      /* wallets with posted or available below zero */
    int64_t deposits, deposited;            /* succeeded deposits and their sum */
    int64_t payments, succeeded;            /* payment rows, and those succeeded */
    int64_t captured, fees;                 /* sums over the succeeded ones */
    int64_t platform;                       /* entries on @platform:CUR from the run's captures */
};

/* Accounts whose id starts with "<prefix>-" (0 for a fresh run id). */
int verify_existing(db_t *db, const char *prefix, int64_t *n) PAYQ_MUSTCHECK;

/* Reads the numbers above for the run; currency names the platform account. */
int verify_read(db_t *db, const char *prefix, const char *currency,
                struct verify_ledger *out) PAYQ_MUSTCHECK;

#endif
