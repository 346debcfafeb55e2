/*
 * procs.h - the other programs the bench drives: payq-worker processes it
 * starts and stops, `payq-worker check`, and what /proc says about CPU use.
 *
 * Children get AMQP_URL and DATABASE_URL through their environment, never
 * on their command line (where `ps` shows passwords), and die with the
 * bench (PR_SET_PDEATHSIG) so an interrupted run leaves no worker behind.
 */
#ifndef PAYQ_BENCH_PROCS_H
#define PAYQ_BENCH_PROCS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "mq.h"
#include "status.h"

/* The URLs children get as AMQP_URL / DATABASE_URL, and the amqps://
 * settings as AMQP_CACERT / AMQP_CERT / AMQP_KEY (NULL: leave as is). */
struct procs_env {
    const char *amqp_url;
    const char *database_url;
    const struct mq_tls *amqp_tls;
};

/* Starts argv (argv[0] is the path) with stdout and stderr written to
 * log_path (truncated). *out gets its pid; reap it with procs_stop. */
int procs_spawn(char *const argv[], const struct procs_env *env, const char *log_path,
                pid_t *out) PAYQ_MUSTCHECK;

/* True once the child has exited; *status gets its wait status. */
bool procs_exited(pid_t pid, int *status);

/* Waits up to timeout_ms for the child to exit (after the caller sent it
 * SIGTERM), then SIGKILLs it; reaps it and stores its wait status. */
void procs_reap(pid_t pid, int timeout_ms, int *status);

/* Runs argv to its end with stdout and stderr captured in out (the last
 * outlen - 1 bytes, NUL-terminated); *status gets the wait status. */
int procs_run(char *const argv[], const struct procs_env *env, char *out, size_t outlen,
              int *status) PAYQ_MUSTCHECK;

/* User + system CPU seconds of a live process, all its threads; -1 if unknown. */
double procs_cpu_seconds(pid_t pid);

/* Peak resident set size (VmHWM) of a process in KiB, or -1. */
long procs_peak_rss_kib(pid_t pid);

/* CPU seconds of every live process with one name, by pid. */
#define PROCS_SAMPLE_MAX 512
struct procs_sample {
    int n;
    pid_t pid[PROCS_SAMPLE_MAX];
    double cpu[PROCS_SAMPLE_MAX];
};

/* Samples the processes whose name (/proc/PID/comm) is `comm`, e.g.
 * "postgres" or "beam.smp": the database and the broker when they run on
 * this host. */
void procs_sample_named(const char *comm, struct procs_sample *out);

/* CPU seconds used between two samples: per pid, so processes that started
 * in between count whole and those that ended in between are left out. */
double procs_sample_delta(const struct procs_sample *before, const struct procs_sample *after);

/* CPU time of the whole host so far (jiffies): busy and total. */
int procs_host_cpu(uint64_t *busy, uint64_t *total) PAYQ_MUSTCHECK;

/* The directory holding this executable, without a trailing slash. */
int procs_self_dir(char *buf, size_t len) PAYQ_MUSTCHECK;

/* Lines of a file that contain needle; 0 when it cannot be read. */
int procs_count_lines(const char *path, const char *needle);

/* Copies the last `lines` lines of a file to out, indented. */
void procs_print_tail(FILE *out, const char *path, int lines);

#endif
