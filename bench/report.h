/*
 * report.h - the end of a bench run: verdicts, a table for people, one
 * RESULT line of JSON for scripts, and the command line that repeats the run.
 */
#ifndef PAYQ_BENCH_REPORT_H
#define PAYQ_BENCH_REPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "bench.h"
#include "disk.h"
#include "load.h"
#include "stats.h"
#include "verify.h"

/* The verdict of one check. */
enum report_verdict {
    CHECK_SKIPPED = 0,
    CHECK_OK,
    CHECK_FAILED
};

struct report {
    const struct bench_config *cfg;
    const char *program; /* argv[0], for the command line that repeats the run */
    const char *prefix;
    uint64_t seed;
    double zipf_s;
    double top_wallet, top_merchant; /* share of payments the hottest account takes */
    const char *worker;              /* path of payq-worker */
    uint32_t other_consumers;        /* consumers on the queue the bench did not start */
    uint32_t backlog;                /* messages waiting in the queue before the run */

    double setup_s;
    double settle_s; /* VACUUM (ANALYZE) of what setup wrote; < 0: it failed */
    uint64_t setup_commands;
    const struct load_result *m; /* the measured phase */
    struct stats_latency lat;
    double throughput;
    double bench_cpu, workers_cpu, host_busy; /* percent of one core; host: of all cores */
    double broker_cpu, database_cpu; /* beam.smp and postgres on this host, percent of a core */
    long host_cores;
    double worker_rss_mib; /* the largest peak RSS (VmHWM) of the spawned workers; 0 unknown */
    double ref_before_ms, ref_after_ms; /* stats_machine_ref_ms() before setup, after the run */
    struct disk_summary disk;           /* the fsync probe during the measured phase */

    /* Checks. */
    enum report_verdict replies, conserved, overdraft, agree, checker, workers;
    bool ledger_read;
    struct verify_ledger v;
    char ledger_error[256];
    int checker_exit;
    double checker_s;
    char checker_line[256];
    char workers_note[512];
};

/* Decides replies/conserved/overdraft/agree from m and v. */
void report_judge(struct report *r);

/* True when no check failed and nothing is missing. */
bool report_ok(const struct report *r);

/* The table, the RESULT line and the command line, on out. */
void report_print(const struct report *r, FILE *out);

#endif
