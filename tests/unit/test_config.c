/*
 * test_config.c - settings: defaults < environment < flags, bounds, files
 * for secrets, and URLs that never show a password.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

struct cfg {
    const char *url;
    const char *name;
    long n;
    int flag;
};

static const struct cfg_opt opts[] = {
    { "url", "TEST_URL", CFG_SECRET, "amqp://guest:guest@localhost", 0, 0,
      offsetof(struct cfg, url), "URL", "a url" },
    { "name", "TEST_NAME", CFG_STR, "dflt", 0, 0, offsetof(struct cfg, name), "S", "a name" },
    { "n", "TEST_N", CFG_INT, "5", 1, 10, offsetof(struct cfg, n), "N", "a number" },
    { "flag", "TEST_FLAG", CFG_BOOL, NULL, 0, 0, offsetof(struct cfg, flag), NULL, "a flag" },
    CFG_END
};

static int parse(struct cfg *c, struct cfg_strings *owned, int argc, char **argv, int *nargs,
                 char *err)
{
    int help;
    memset(c, 0, sizeof *c);
    return cfg_parse(opts, c, owned, argc, argv, nargs, &help, err, 256);
}

static void clear_env(void)
{
    unsetenv("TEST_URL");
    unsetenv("TEST_URL_FILE");
    unsetenv("TEST_NAME");
    unsetenv("TEST_N");
    unsetenv("TEST_FLAG");
}

static void test_precedence(void **state)
{
    (void)state;
    clear_env();
    struct cfg c;
    struct cfg_strings owned = { { 0 }, 0 };
    char err[256];
    int nargs;
    char *a0[] = { "prog", NULL };
    assert_int_equal(parse(&c, &owned, 1, a0, &nargs, err), PAYQ_OK);
    assert_string_equal(c.name, "dflt");
    assert_int_equal(c.n, 5);
    assert_int_equal(c.flag, 0);

    setenv("TEST_NAME", "fromenv", 1);
    setenv("TEST_N", "7", 1);
    setenv("TEST_FLAG", "yes", 1);
    assert_int_equal(parse(&c, &owned, 1, a0, &nargs, err), PAYQ_OK);
    assert_string_equal(c.name, "fromenv");
    assert_int_equal(c.n, 7);
    assert_int_equal(c.flag, 1);

    char *a1[] = { "prog", "run", "--name", "fromflag", "--n=9", "extra", NULL };
    assert_int_equal(parse(&c, &owned, 6, a1, &nargs, err), PAYQ_OK);
    assert_string_equal(c.name, "fromflag");
    assert_int_equal(c.n, 9);
    assert_int_equal(nargs, 2);
    assert_string_equal(a1[1], "run");
    assert_string_equal(a1[2], "extra");
    clear_env();
}

static void test_errors(void **state)
{
    (void)state;
    clear_env();
    struct cfg c;
    struct cfg_strings owned = { { 0 }, 0 };
    char err[256];
    int nargs;
    char *a1[] = { "prog", "--n", "11", NULL };
    assert_int_equal(parse(&c, &owned, 3, a1, &nargs, err), PAYQ_ERR_CONFIG);
    assert_non_null(strstr(err, "from 1 to 10"));
    char *a2[] = { "prog", "--n", "3x", NULL };
    assert_int_equal(parse(&c, &owned, 3, a2, &nargs, err), PAYQ_ERR_CONFIG);
    char *a3[] = { "prog", "--bogus", NULL };
    assert_int_equal(parse(&c, &owned, 2, a3, &nargs, err), PAYQ_ERR_CONFIG);
    assert_non_null(strstr(err, "--bogus"));
    char *a4[] = { "prog", "--name", NULL };
    assert_int_equal(parse(&c, &owned, 2, a4, &nargs, err), PAYQ_ERR_CONFIG);
    setenv("TEST_FLAG", "maybe", 1);
    char *a5[] = { "prog", NULL };
    assert_int_equal(parse(&c, &owned, 1, a5, &nargs, err), PAYQ_ERR_CONFIG);
    assert_non_null(strstr(err, "TEST_FLAG"));
    clear_env();
}

static void test_secret_from_file(void **state)
{
    (void)state;
    clear_env();
    char path[] = "/tmp/payq-secret-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *url = "postgresql://u:s3cret@db/payq\n";
    assert_int_equal(write(fd, url, strlen(url)), (ssize_t)strlen(url));
    close(fd);
    setenv("TEST_URL_FILE", path, 1);
    struct cfg c;
    struct cfg_strings owned = { { 0 }, 0 };
    char err[256];
    int nargs;
    char *a[] = { "prog", NULL };
    assert_int_equal(parse(&c, &owned, 1, a, &nargs, err), PAYQ_OK);
    assert_string_equal(c.url, "postgresql://u:s3cret@db/payq");
    cfg_strings_free(&owned);
    unlink(path);
    assert_int_equal(parse(&c, &owned, 1, a, &nargs, err), PAYQ_ERR_CONFIG);
    clear_env();
}

static void test_redact(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } cases[] = {
        { "amqp://payq:payq@127.0.0.1:5673", "amqp://payq:***@127.0.0.1:5673" },
        { "amqps://u:p%40ss@host/vh", "amqps://u:***@host/vh" },
        { "amqp://host:5672/", "amqp://host:5672/" },
        { "postgresql://payq:secret@db:5432/payq", "postgresql://payq:***@db:5432/payq" },
        { "postgresql://payq@db/payq", "postgresql://payq@db/payq" },
        { "host=db password=secret user=x", "host=db password=*** user=x" },
        { "host=db password='se cret' user=x", "host=db password=*** user=x" },
        /* TLS settings in the URL stay readable; passwords anywhere do not */
        { "postgresql://payq:secret@127.0.0.1:5433/payq?sslmode=verify-full&sslrootcert=/x/ca.pem",
          "postgresql://payq:***@127.0.0.1:5433/payq?sslmode=verify-full&sslrootcert=/x/ca.pem" },
        { "postgresql://payq@db/payq?password=secret&sslmode=verify-full",
          "postgresql://payq@db/payq?password=***&sslmode=verify-full" },
        { "postgresql://u:secret@db/p?sslkey=/k.pem&sslpassword=secret#x",
          "postgresql://u:***@db/p?sslkey=/k.pem&sslpassword=***#x" },
        { "host=db sslmode=verify-full sslrootcert=/ca.pem sslpassword=secret password=secret",
          "host=db sslmode=verify-full sslrootcert=/ca.pem sslpassword=*** password=***" },
        { "amqps://payq:secret@localhost:5671/%2f", "amqps://payq:***@localhost:5671/%2f" },
    };
    char out[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cfg_redact_url(cases[i].in, out, sizeof out);
        assert_string_equal(out, cases[i].out);
        assert_null(strstr(out, "secret"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_secret_from_file),
        cmocka_unit_test(test_redact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
