/*
 * report.h - human-readable tables of accounts and payments, read from the
 * database (payq-worker report).
 */
#ifndef PAYQ_REPORT_H
#define PAYQ_REPORT_H

#include <stdio.h>

#include "db.h"

/* Prints accounts and payments whose id starts with `prefix` ("" = all,
 * at most `limit` rows each). Returns PAYQ_OK or PAYQ_ERR_DB. */
int report_print(db_t *db, FILE *out, const char *prefix, long limit);

/* Runs payq.check_invariants() and prints its findings. *violations gets
 * the number of violations (warnings are printed, not counted). */
int report_check(db_t *db, FILE *out, int *violations);

#endif
