/*
 * test_disk_probe.c - payq-bench's fsync probe (bench/disk.c): the summary's
 * arithmetic, a real probe on the build directory's file system, and the
 * refusal of tmpfs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "disk.h"

static void test_summary_percentiles_and_worst(void **state)
{
    (void)state;
    /* 1..100 ms, shuffled (a fixed permutation: i * 37 mod 100), taken 20 ms apart. */
    uint32_t us[100];
    uint64_t at[100];
    for (int i = 0; i < 100; i++) {
        us[i] = (uint32_t)(((i * 37) % 100) + 1) * 1000;
        at[i] = (uint64_t)i * 20000;
    }
    struct disk_summary s;
    assert_int_equal(disk_summarize(us, at, 100, &s), PAYQ_OK);
    assert_true(s.ran);
    assert_int_equal(s.n, 100);
    assert_float_equal(s.p50_ms, 50.0, 1e-9);
    assert_float_equal(s.p99_ms, 99.0, 1e-9);
    assert_float_equal(s.max_ms, 100.0, 1e-9);
    assert_int_equal(s.slow, 81); /* 20..100 ms */
    assert_int_equal(s.worst_n, DISK_PROBE_WORST);
    for (int k = 0; k < DISK_PROBE_WORST; k++) {
        double ms = 100.0 - k;
        assert_float_equal(s.worst[k].ms, ms, 1e-9);
        /* Which sample had that value, and so when it was taken. */
        int i = 0;
        while (us[i] != (uint32_t)(ms * 1000))
            i++;
        assert_float_equal(s.worst[k].at_s, i * 0.02, 1e-9);
    }
    /* The inputs are left as they were. */
    assert_int_equal(us[1], 38000);
}

static void test_summary_small_and_empty(void **state)
{
    (void)state;
    struct disk_summary s;
    assert_int_equal(disk_summarize(NULL, NULL, 0, &s), PAYQ_OK);
    assert_true(s.ran);
    assert_int_equal(s.n, 0);
    assert_int_equal(s.worst_n, 0);

    uint32_t us[2] = { 700, 25000 };
    uint64_t at[2] = { 0, 1500000 };
    assert_int_equal(disk_summarize(us, at, 2, &s), PAYQ_OK);
    assert_float_equal(s.p50_ms, 0.7, 1e-9);
    assert_float_equal(s.p99_ms, 25.0, 1e-9);
    assert_int_equal(s.slow, 1);
    assert_int_equal(s.worst_n, 2);
    assert_float_equal(s.worst[0].ms, 25.0, 1e-9);
    assert_float_equal(s.worst[0].at_s, 1.5, 1e-9);
    assert_float_equal(s.worst[1].ms, 0.7, 1e-9);
}

static void test_probe_on_disk(void **state)
{
    (void)state;
    struct disk_probe *p = NULL;
    char why[160] = "";
    int rc = disk_probe_start(PAYQ_BINARY_DIR, 5, &p, why, sizeof why);
    if (rc == PAYQ_ERR_INVALID)
        skip(); /* the build directory is on tmpfs here */
    assert_int_equal(rc, PAYQ_OK);
    assert_non_null(p);
    char path[4200];
    snprintf(path, sizeof path, "%s/payq-bench-fsync-probe-%d", PAYQ_BINARY_DIR, (int)getpid());
    assert_int_equal(access(path, F_OK), 0);
    struct timespec ts = { 0, 200 * 1000000L };
    nanosleep(&ts, NULL);
    struct disk_summary s;
    disk_probe_stop(p, &s, NULL);
    assert_true(s.ran);
    assert_string_equal(s.why, "");
    assert_true(s.n >= 3); /* every 5 ms for 200 ms, however slow the disk */
    assert_true(s.p50_ms > 0);
    assert_true(s.p50_ms <= s.p99_ms && s.p99_ms <= s.max_ms);
    assert_true(s.worst_n >= 1 && s.worst[0].ms == s.max_ms);
    assert_true(s.worst[0].at_s >= 0 && s.worst[0].at_s < 10);
    /* The file is gone again. */
    assert_int_not_equal(access(path, F_OK), 0);
}

static void test_probe_refuses_tmpfs(void **state)
{
    (void)state;
    struct statfs fs;
    if (statfs("/dev/shm", &fs) != 0 || fs.f_type != 0x01021994)
        skip(); /* no tmpfs to try it on */
    struct disk_probe *p = NULL;
    char why[160] = "";
    assert_int_equal(disk_probe_start("/dev/shm", 20, &p, why, sizeof why), PAYQ_ERR_INVALID);
    assert_null(p);
    assert_non_null(strstr(why, "tmpfs"));
    struct disk_summary s;
    disk_probe_stop(p, &s, why);
    assert_false(s.ran);
    assert_non_null(strstr(s.why, "tmpfs"));
}

static void test_probe_missing_directory(void **state)
{
    (void)state;
    struct disk_probe *p = NULL;
    char why[160] = "";
    assert_int_equal(disk_probe_start("/nonexistent/payq", 20, &p, why, sizeof why), PAYQ_ERR_IO);
    assert_null(p);
    assert_non_null(strstr(why, "/nonexistent/payq"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_summary_percentiles_and_worst),
        cmocka_unit_test(test_summary_small_and_empty),
        cmocka_unit_test(test_probe_on_disk),
        cmocka_unit_test(test_probe_refuses_tmpfs),
        cmocka_unit_test(test_probe_missing_directory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
