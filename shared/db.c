/*
 * db.c - PostgreSQL connection, migrations and SQLSTATE classification.
 */
#include "db.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"

struct db {
    PGconn *conn;
    char sqlstate[6];
    char error[512];
};

/* A stable key for pg_advisory_lock: "payq" in ASCII. */
#define MIGRATION_LOCK_KEY 0x70617971

/* Server NOTICEs become debug log lines instead of raw stderr text. */
static void notice(void *arg, const char *message)
{
    (void)arg;
    log_debug("PostgreSQL: %.*s", (int)strcspn(message, "\n"), message);
}

int db_connect(const char *url, const char *application_name, long statement_timeout_ms,
               db_t **out)
{
    db_t *db = calloc(1, sizeof *db);
    if (!db)
        return PAYQ_ERR_NOMEM;
    char timeout[32];
    snprintf(timeout, sizeof timeout, "%ld", statement_timeout_ms);
    /* expand_dbname lets `dbname` carry a whole URI or keyword string; the
     * later keywords override what it says. */
    const char *keys[] = { "dbname", "application_name", "connect_timeout", NULL };
    const char *vals[] = { url && *url ? url : NULL, application_name, "10", NULL };
    db->conn = PQconnectdbParams(keys, vals, 1);
    if (!db->conn) {
        free(db);
        return PAYQ_ERR_NOMEM;
    }
    if (PQstatus(db->conn) != CONNECTION_OK) {
        int rc = db_fail(db, NULL);
        log_error("cannot connect to PostgreSQL: %s", db->error);
        db_close(db);
        return rc;
    }
    PQsetNoticeProcessor(db->conn, notice, NULL);
    char sql[128];
    snprintf(sql, sizeof sql, "SET statement_timeout = %ld", statement_timeout_ms);
    if (db_exec(db, sql) != PAYQ_OK || db_exec(db, "SET synchronous_commit = on") != PAYQ_OK) {
        log_error("cannot configure the PostgreSQL session: %s", db->error);
        db_close(db);
        return PAYQ_ERR_DB;
    }
    *out = db;
    return PAYQ_OK;
}

void db_close(db_t *db)
{
    if (!db)
        return;
    if (db->conn)
        PQfinish(db->conn);
    free(db);
}

PGconn *db_conn(db_t *db) { return db->conn; }

bool db_ok(db_t *db) { return db && db->conn && PQstatus(db->conn) == CONNECTION_OK; }

const char *db_sqlstate(const db_t *db) { return db->sqlstate; }

const char *db_error(const db_t *db) { return db->error; }

int db_fail(db_t *db, PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorMessage(res) : NULL;
    if (!msg || !*msg)
        msg = PQerrorMessage(db->conn);
    /* No SQLSTATE means libpq itself failed: the connection is gone. */
    snprintf(db->sqlstate, sizeof db->sqlstate, "%s", state ? state : "08006");
    snprintf(db->error, sizeof db->error, "%s", msg ? msg : "unknown error");
    size_t n = strlen(db->error);
    while (n > 0 && (db->error[n - 1] == '\n' || db->error[n - 1] == ' '))
        db->error[--n] = 0;
    if (res)
        PQclear(res);
    return PAYQ_ERR_DB;
}

bool db_transient(const char *s)
{
    if (!s || !*s)
        return true;
    return strncmp(s, "08", 2) == 0 || strncmp(s, "53", 2) == 0 || strncmp(s, "57P", 3) == 0 ||
           strcmp(s, "57014") == 0 || strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0 ||
           strcmp(s, "55P03") == 0 || strcmp(s, "55006") == 0;
}

bool db_retry_now(const char *s)
{
    return s && (strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0);
}

int db_exec(db_t *db, const char *sql)
{
    PGresult *res = PQexec(db->conn, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        return db_fail(db, res);
    PQclear(res);
    return PAYQ_OK;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) != 0)
        goto fail;
    long n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0)
        goto fail;
    buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n)
        goto fail;
    buf[n] = 0;
    fclose(f);
    return buf;
fail:
    free(buf);
    fclose(f);
    return NULL;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Migration files: NNN_name.sql, sorted. Caller frees each name and the array. */
static int list_migrations(const char *dir, char ***out, size_t *count)
{
    DIR *d = opendir(dir);
    if (!d)
        return PAYQ_ERR_IO;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 8 || strcmp(e->d_name + len - 4, ".sql") != 0 ||
            strspn(e->d_name, "0123456789") != 3 || e->d_name[3] != '_')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown)
                goto nomem;
            names = grown;
        }
        if (!(names[n] = strdup(e->d_name)))
            goto nomem;
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    *out = names;
    *count = n;
    return PAYQ_OK;
nomem:
    closedir(d);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return PAYQ_ERR_NOMEM;
}

/* Applies one file unless recorded; checks the checksum when it is. */
static int migrate_one(db_t *db, const char *dir, const char *name, int *applied)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return PAYQ_ERR_RANGE;
    char *sql = read_file(path);
    if (!sql) {
        log_error("cannot read migration %s: %s", path, strerror(errno));
        return PAYQ_ERR_IO;
    }
    char version[4] = { name[0], name[1], name[2], 0 };
    const char *params[3] = { version, name, sql };
    int rc = PAYQ_ERR_DB;
    PGresult *res;

    if (db_exec(db, "BEGIN") != PAYQ_OK)
        goto out;
    res = PQexecParams(db->conn,
                       "SELECT name, checksum = encode(sha256(convert_to($2, 'UTF8')), 'hex')"
                       "  FROM payq.schema_migrations WHERE version = $1::int",
                       2, NULL, (const char *const[]){ version, sql }, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        db_fail(db, res);
        goto rollback;
    }
    if (PQntuples(res) == 1) {
        bool same = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
        PQclear(res);
        if (!same) {
            snprintf(db->error, sizeof db->error,
                     "migration %s was changed after it was applied; add a new migration instead",
                     name);
            snprintf(db->sqlstate, sizeof db->sqlstate, "XX000");
            goto rollback;
        }
        rc = db_exec(db, "COMMIT");
        goto out;
    }
    PQclear(res);
    log_info("applying migration %s", name);
    if (db_exec(db, sql) != PAYQ_OK)
        goto rollback;
    res = PQexecParams(db->conn,
                       "INSERT INTO payq.schema_migrations (version, name, checksum)"
                       " VALUES ($1::int, $2, encode(sha256(convert_to($3, 'UTF8')), 'hex'))",
                       3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        db_fail(db, res);
        goto rollback;
    }
    PQclear(res);
    if ((rc = db_exec(db, "COMMIT")) == PAYQ_OK)
        (*applied)++;
    goto out;
rollback:
    rc = PAYQ_ERR_DB;
    {
        PGresult *rb = PQexec(db->conn, "ROLLBACK");
        PQclear(rb);
    }
out:
    free(sql);
    return rc;
}

int db_migrate(db_t *db, const char *sql_dir, int *applied_out)
{
    char **names = NULL;
    size_t n = 0;
    int applied = 0, rc;
    if ((rc = list_migrations(sql_dir, &names, &n)) != PAYQ_OK) {
        log_error("cannot list migrations in %s: %s", sql_dir, strerror(errno));
        return rc;
    }
    if (n == 0) {
        log_error("no migrations (NNN_name.sql) in %s", sql_dir);
        rc = PAYQ_ERR_IO;
        goto out;
    }
    char lock[64];
    snprintf(lock, sizeof lock, "SELECT pg_advisory_lock(%d)", MIGRATION_LOCK_KEY);
    if ((rc = db_exec(db, lock)) != PAYQ_OK)
        goto out;
    rc = db_exec(db, "SET client_min_messages = warning;"
                     "CREATE SCHEMA IF NOT EXISTS payq;"
                     "CREATE TABLE IF NOT EXISTS payq.schema_migrations ("
                     " version integer PRIMARY KEY, name text NOT NULL,"
                     " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())");
    for (size_t i = 0; rc == PAYQ_OK && i < n; i++)
        rc = migrate_one(db, sql_dir, names[i], &applied);
    if (rc != PAYQ_OK)
        log_error("migration failed: %s", db->error);
    snprintf(lock, sizeof lock, "SELECT pg_advisory_unlock(%d)", MIGRATION_LOCK_KEY);
    if (db_exec(db, lock) != PAYQ_OK && rc == PAYQ_OK)
        rc = PAYQ_ERR_DB;
    if (rc == PAYQ_OK && applied_out)
        *applied_out = applied;
out:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

static bool is_dir(const char *p)
{
    struct stat st;
    return p && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

const char *db_default_sql_dir(void)
{
    const char *env = getenv("PAYQ_SQL_DIR");
    if (env && *env)
        return env;
    if (is_dir(PAYQ_SQL_DIR_DEFAULT))
        return PAYQ_SQL_DIR_DEFAULT;
    return "/usr/local/share/payq/sql";
}
