/*
 * test_config.c - settings: defaults < environment < flags, bounds, files
 * for secrets, URLs that never show a password, and AMQP_URL's list of
 * broker addresses (and the TLS settings' check of each).
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
#include "mq.h"
#include "mqurl.h"

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
        /* AMQP_URL listing a cluster's nodes: every password masked. */
        { "amqp://a:secret1@h1:5711,amqp://b:secret2@h2:5712/vh,amqps://c:secret3@h3",
          "amqp://a:***@h1:5711,amqp://b:***@h2:5712/vh,amqps://c:***@h3" },
        { "amqp://u:secret@h1:5711/vh, h2:5712 ,h3", "amqp://u:***@h1:5711/vh, h2:5712 ,h3" },
        { "amqp://u:secret@h1,h2:5712,h3", "amqp://u:***@h1,h2:5712,h3" },
        { "amqp://h1:5711,amqp://u:secret@h2", "amqp://h1:5711,amqp://u:***@h2" },
        /* Unencoded ',' and '@' in a password are masked whole. */
        { "amqp://u:se,cret@h1,amqp://u:s@cret@h2/", "amqp://u:***@h1,amqp://u:***@h2/" },
        { "postgresql://u:secret@db1:5432,db2:5432/payq",
          "postgresql://u:***@db1:5432,db2:5432/payq" },
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
        /* Both at once: a list whose URLs carry password parameters. */
        { "postgresql://u:secret@db1:5432,db2:5432/payq?sslmode=verify-full&sslpassword=secret",
          "postgresql://u:***@db1:5432,db2:5432/payq?sslmode=verify-full&sslpassword=***" },
        { "amqps://u:secret@h1/vh?password=secret,amqps://v:secret@h2",
          "amqps://u:***@h1/vh?password=***,amqps://v:***@h2" },
        /* "://" in a parameter does not start another URL. */
        { "postgresql://u:secret@db/p?x=http://y", "postgresql://u:***@db/p?x=http://y" },
    };
    char out[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cfg_redact_url(cases[i].in, out, sizeof out);
        assert_string_equal(out, cases[i].out);
        assert_null(strstr(out, "secret"));
        assert_null(strstr(out, "cret"));
    }
    /* Truncation never lets a password through. */
    for (size_t len = 1; len < 40; len++) {
        cfg_redact_url("amqp://u:secret@h1,amqp://v:secret@h2", out, len);
        assert_true(strlen(out) < len);
        assert_null(strstr(out, "sec"));
    }
}

/* AMQP_URL as a list: each address as a complete URL. */
static void test_url_list(void **state)
{
    (void)state;
    static const struct {
        const char *list;
        size_t n;
        const char *at[3];
    } cases[] = {
        { "amqp://u:p@h:5672/vh", 1, { "amqp://u:p@h:5672/vh" } },
        { "", 1, { "" } },
        { "amqp://u:p@h1:5711,amqp://v:q@h2:5712/x", 2,
          { "amqp://u:p@h1:5711", "amqp://v:q@h2:5712/x" } },
        /* host[:port] reuses the first URL's scheme, credentials and vhost. */
        { "amqp://u:p@h1:5711/vh, h2:5712 ,h3", 3,
          { "amqp://u:p@h1:5711/vh", "amqp://u:p@h2:5712/vh", "amqp://u:p@h3/vh" } },
        { "amqps://u:p%2Cx@h1,[::1]:5671", 2,
          { "amqps://u:p%2Cx@h1", "amqps://u:p%2Cx@[::1]:5671" } },
        { "amqp://h1:5711,h2:5712", 2, { "amqp://h1:5711", "amqp://h2:5712" } },
    };
    char out[256], err[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(mq_url_count(cases[i].list), cases[i].n);
        for (size_t k = 0; k < cases[i].n; k++) {
            assert_int_equal(mq_url_at(cases[i].list, k, out, sizeof out, err, sizeof err),
                             PAYQ_OK);
            assert_string_equal(out, cases[i].at[k]);
        }
        assert_int_equal(mq_url_at(cases[i].list, cases[i].n, out, sizeof out, err, sizeof err),
                         PAYQ_ERR_RANGE);
    }
    assert_int_equal(mq_url_count(NULL), 1);

    /* Errors name the address, never a credential; out stays untouched. */
    static const struct {
        const char *list;
        size_t i;
        const char *why;
    } bad[] = {
        { "amqp://u:secret@h1,,h3", 1, "address 2 of 3 is empty" },
        { "amqp://u:secret@h1,", 1, "address 2 of 2 is empty" },
        { "amqp://u:secret@h1,x:secret@h2", 1, "neither a URL nor host[:port]" },
        { "amqp://u:secret@h1,h2/vh", 1, "neither a URL nor host[:port]" },
        { "h1:5711,h2:5712", 1, "the first address must be a full URL" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        strcpy(out, "untouched");
        err[0] = 0;
        assert_int_equal(mq_url_at(bad[i].list, bad[i].i, out, sizeof out, err, sizeof err),
                         PAYQ_ERR_CONFIG);
        assert_non_null(strstr(err, bad[i].why));
        assert_null(strstr(err, "secret"));
        assert_string_equal(out, "untouched");
    }
    /* Too small a buffer: PAYQ_ERR_RANGE, nothing written. */
    strcpy(out, "untouched");
    assert_int_equal(mq_url_at("amqp://u:p@h1:5711/vh,h2", 1, out, 10, err, sizeof err),
                     PAYQ_ERR_RANGE);
    assert_string_equal(out, "untouched");
}

/* TLS settings go with amqps:// only: every address of a list is checked,
 * a host[:port] entry with the first URL's scheme. */
static void test_tls_check_list(void **state)
{
    (void)state;
    char ca[] = "/tmp/payq-ca-XXXXXX";
    int fd = mkstemp(ca);
    assert_true(fd >= 0);
    const char *pem = "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
    assert_int_equal(write(fd, pem, strlen(pem)), (ssize_t)strlen(pem));
    close(fd);
    const struct mq_tls tls = { ca, NULL, NULL };
    static const struct {
        const char *url;
        int rc;
        const char *why;
    } cases[] = {
        { "amqps://u:secret@h1:5671/vh", PAYQ_OK, NULL },
        { "amqps://u:secret@h1/vh,h2:5672, h3", PAYQ_OK, NULL },
        { "amqps://u:secret@h1,amqps://v:secret@h2/vh", PAYQ_OK, NULL },
        { "amqp://u:secret@h1", PAYQ_ERR_CONFIG, "is not amqps://" },
        { "amqp://u:secret@h1,h2", PAYQ_ERR_CONFIG, "(address 1 of 2) is not amqps://" },
        { "amqps://u:secret@h1,amqp://v:secret@h2", PAYQ_ERR_CONFIG,
          "(address 2 of 2) is not amqps://" },
        { "amqps://u:secret@h1,,h3", PAYQ_ERR_CONFIG, "address 2 of 3 is empty" },
        { "", PAYQ_ERR_CONFIG, "is not amqps://" },
    };
    char err[512];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = 0;
        assert_int_equal(mq_tls_check(cases[i].url, &tls, err, sizeof err), cases[i].rc);
        if (cases[i].why)
            assert_non_null(strstr(err, cases[i].why));
        assert_null(strstr(err, "secret"));
    }
    /* No TLS settings: anything goes. */
    assert_int_equal(mq_tls_check("amqp://u:p@h1,amqps://v:q@h2", NULL, err, sizeof err), PAYQ_OK);
    unlink(ca);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_secret_from_file),
        cmocka_unit_test(test_redact),
        cmocka_unit_test(test_url_list),
        cmocka_unit_test(test_tls_check_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
