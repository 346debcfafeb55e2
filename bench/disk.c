/*
 * disk.c - the fsync probe of payq-bench (see disk.h).
 */
#include "disk.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "stats.h"

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif

#define BLOCK 8192         /* bytes written before each sync */
#define SPAN (1024 * 1024) /* the file cycles over this many bytes */
#define INITIAL_SAMPLES 4096

struct disk_probe {
    pthread_t thread;
    atomic_int stop;
    long interval_ms;
    int fd;
    char path[4096];
    int64_t t0_ns;
    uint32_t *sync_us; /* [cap] */
    uint64_t *at_us;   /* [cap] */
    uint64_t n, cap;
    int err; /* errno of a failed write or sync; the probe then stops */
};

/* Undoes what disk_probe_start did so far: the file (when open), the
 * sample arrays, p itself. */
static void discard(struct disk_probe *p)
{
    if (p->fd >= 0) {
        close(p->fd);
        unlink(p->path);
    }
    free(p->sync_us);
    free(p->at_us);
    free(p);
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static bool grow(struct disk_probe *p)
{
    uint64_t cap = p->cap ? p->cap * 2 : INITIAL_SAMPLES;
    uint32_t *s = realloc(p->sync_us, cap * sizeof *s);
    if (!s)
        return false;
    p->sync_us = s;
    uint64_t *a = realloc(p->at_us, cap * sizeof *a);
    if (!a)
        return false;
    p->at_us = a;
    p->cap = cap;
    return true;
}

static void *probe_main(void *arg)
{
    struct disk_probe *p = arg;
    static const char block[BLOCK] = { 'p' };
    off_t off = 0;
    while (!atomic_load(&p->stop)) {
        if (pwrite(p->fd, block, sizeof block, off) != (ssize_t)sizeof block) {
            p->err = errno ? errno : EIO;
            break;
        }
        off = (off + BLOCK) % SPAN;
        int64_t t = mono_ns();
        if (fdatasync(p->fd) != 0) {
            p->err = errno;
            break;
        }
        int64_t done = mono_ns();
        if (p->n == p->cap && !grow(p)) {
            p->err = ENOMEM;
            break;
        }
        int64_t us = (done - t) / 1000;
        p->sync_us[p->n] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
        p->at_us[p->n] = (uint64_t)((t - p->t0_ns) / 1000);
        p->n++;
        /* The next sync is due interval_ms after this one began, not after
         * it ended: a stall does not thin the samples that follow it. */
        int64_t next = t + (int64_t)p->interval_ms * 1000000;
        for (int64_t now = mono_ns(); now < next && !atomic_load(&p->stop); now = mono_ns()) {
            int64_t left = next - now;
            if (left > 5000000)
                left = 5000000; /* a stop request is seen within 5 ms */
            struct timespec ts = { 0, (long)left };
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

int disk_probe_start(const char *dir, long interval_ms, struct disk_probe **out, char *why,
                     size_t whylen)
{
    *out = NULL;
    struct statfs fs;
    if (statfs(dir, &fs) != 0) {
        snprintf(why, whylen, "cannot look at %s: %s", dir, strerror(errno));
        return PAYQ_ERR_IO;
    }
    if (fs.f_type == TMPFS_MAGIC) {
        snprintf(why, whylen, "%s is on tmpfs (memory): its syncs say nothing about a disk", dir);
        return PAYQ_ERR_INVALID;
    }
    struct disk_probe *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(why, whylen, "out of memory");
        return PAYQ_ERR_NOMEM;
    }
    p->fd = -1;
    if (!grow(p)) {
        discard(p);
        snprintf(why, whylen, "out of memory");
        return PAYQ_ERR_NOMEM;
    }
    p->interval_ms = interval_ms > 0 ? interval_ms : 1;
    snprintf(p->path, sizeof p->path, "%s/payq-bench-fsync-probe-%d", dir, (int)getpid());
    p->fd = open(p->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (p->fd < 0) {
        snprintf(why, whylen, "cannot create %s: %s", p->path, strerror(errno));
        discard(p);
        return PAYQ_ERR_IO;
    }
    /* Written whole and synced before the first timed sync, so that every
     * timed one overwrites blocks the file already has (as PostgreSQL does
     * in its recycled WAL segments) instead of also growing the file. */
    static const char zeros[BLOCK];
    int rc = 0;
    for (off_t off = 0; off < SPAN && rc == 0; off += BLOCK)
        if (pwrite(p->fd, zeros, sizeof zeros, off) != (ssize_t)sizeof zeros)
            rc = errno ? errno : EIO;
    if (rc == 0 && fdatasync(p->fd) != 0)
        rc = errno;
    if (rc != 0) {
        snprintf(why, whylen, "cannot write %s: %s", p->path, strerror(rc));
        discard(p);
        return PAYQ_ERR_IO;
    }
    p->t0_ns = mono_ns();
    rc = pthread_create(&p->thread, NULL, probe_main, p);
    if (rc != 0) {
        snprintf(why, whylen, "cannot start a thread: %s", strerror(rc));
        discard(p);
        return PAYQ_ERR_IO;
    }
    *out = p;
    return PAYQ_OK;
}

int disk_summarize(const uint32_t *sync_us, const uint64_t *at_us, uint64_t n,
                   struct disk_summary *s)
{
    memset(s, 0, sizeof *s);
    s->ran = true;
    s->n = n;
    if (n == 0)
        return PAYQ_OK;
    struct stats_latency l; /* the same nearest-rank percentiles as the payments' */
    int rc = stats_latency(sync_us, NULL, n, &l);
    if (rc != PAYQ_OK)
        return rc;
    s->p50_ms = l.p50;
    s->p99_ms = l.p99;
    s->max_ms = l.max;
    /* The slowest few, slowest first: one pass keeping a short sorted list. */
    for (uint64_t i = 0; i < n; i++) {
        if (sync_us[i] >= DISK_PROBE_SLOW_MS * 1000u)
            s->slow++;
        double ms = sync_us[i] / 1000.0;
        int k = s->worst_n;
        if (k == DISK_PROBE_WORST && ms <= s->worst[k - 1].ms)
            continue;
        if (k < DISK_PROBE_WORST)
            s->worst_n++;
        else
            k--; /* the last one drops out */
        while (k > 0 && s->worst[k - 1].ms < ms) {
            s->worst[k] = s->worst[k - 1];
            k--;
        }
        s->worst[k].ms = ms;
        s->worst[k].at_s = at_us[i] / 1e6;
    }
    return PAYQ_OK;
}

void disk_probe_stop(struct disk_probe *p, struct disk_summary *s, const char *why_not)
{
    memset(s, 0, sizeof *s);
    if (!p) {
        snprintf(s->why, sizeof s->why, "%s", why_not ? why_not : "not started");
        return;
    }
    atomic_store(&p->stop, 1);
    pthread_join(p->thread, NULL);
    if (disk_summarize(p->sync_us, p->at_us, p->n, s) != PAYQ_OK) {
        memset(s, 0, sizeof *s);
        snprintf(s->why, sizeof s->why, "out of memory");
    } else if (p->err) {
        /* What was timed before the failure stands; say why it ended. */
        snprintf(s->why, sizeof s->why, "the probe stopped early: %s", strerror(p->err));
    }
    discard(p);
}
