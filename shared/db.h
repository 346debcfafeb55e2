/*
 * db.h - PostgreSQL helpers: connecting, migrations, failure classification.
 *
 * A db_t wraps one libpq connection (one per worker thread). Every SQL text
 * is parameterized; results are cleared on every path. Errors are reported
 * as PAYQ_ERR_DB with the SQLSTATE kept in the db_t, so the caller can ask
 * whether the failure is worth a retry (db_transient).
 */
#ifndef PAYQ_DB_H
#define PAYQ_DB_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

#include "status.h"

typedef struct db db_t;

/*
 * Opens a connection. `url` may be a postgresql:// URI, a keyword/value
 * string, or NULL/"" to use libpq's PG* environment. Sets application_name
 * and the statement timeout (ms, 0 = none) so no call can starve the AMQP
 * heartbeat. The caller frees *out with db_close.
 */
int db_connect(const char *url, const char *application_name, long statement_timeout_ms,
               db_t **out) PAYQ_MUSTCHECK;

/* Closes and frees; NULL is a no-op. */
void db_close(db_t *db);

/* The libpq connection, for PQexecParams and friends. */
PGconn *db_conn(db_t *db);

/* True while the connection is usable (CONNECTION_OK). */
bool db_ok(db_t *db);

/*
 * Records a failed result: keeps its SQLSTATE and message (see db_sqlstate,
 * db_error), clears it, and returns PAYQ_ERR_DB. `res` may be NULL (then the
 * connection's error message is used and SQLSTATE is "08006").
 */
int db_fail(db_t *db, PGresult *res);

/* SQLSTATE of the last failure ("" if none) and its message. */
const char *db_sqlstate(const db_t *db);
const char *db_error(const db_t *db);

/*
 * True for failures that may succeed when tried again (DESIGN.md): lost or
 * refused connections (class 08), insufficient resources (53), operator
 * intervention such as a shutdown (57P), serialization failure (40001),
 * deadlock (40P01), lock timeout (55P03), object in use (55006: payq's
 * "a step of this payment is in flight"), query canceled / statement
 * timeout (57014), and a broken connection without a SQLSTATE.
 */
bool db_transient(const char *sqlstate);

/* Serialization failure or deadlock: worth an immediate in-process retry. */
bool db_retry_now(const char *sqlstate);

/* Runs a statement without parameters or rows (BEGIN, COMMIT, ...). */
int db_exec(db_t *db, const char *sql) PAYQ_MUSTCHECK;

/*
 * Applies the migrations in sql_dir (files NNN_name.sql, in order), each in
 * its own transaction, recording them in payq.schema_migrations with a
 * checksum; an already-applied file whose text changed is an error. Holds an
 * advisory lock so workers starting together migrate once. Idempotent.
 * *applied (may be NULL) gets the number of migrations applied now.
 */
int db_migrate(db_t *db, const char *sql_dir, int *applied) PAYQ_MUSTCHECK;

/* The directory of migrations: PAYQ_SQL_DIR, the build's source tree, or the
 * installed share/payq/sql, whichever exists first. */
const char *db_default_sql_dir(void);

#endif
