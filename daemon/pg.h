/* SPDX-License-Identifier: MIT */
#pragma once

/* PostgreSQL through libpq, for the store on several nodes (issue 10).
 *
 * Library-level like daemon/store.h: -errno codes, never logs, and
 * pg_db_error() says what went wrong in words that never hold a password
 * (a URI is shown through pg_uri_redact()). Every call here blocks on the
 * network: for the store's writer thread, the start, and tools such as
 * --copy-store, never for the event loop.
 *
 * Values travel in binary both ways: int64 as 8 big-endian bytes, bytea
 * as its bytes, text as its bytes. No value is ever spliced into SQL. */

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/macro.h"
#include "daemon/store.h"

extern const Migration store_pg_migrations[];
extern const size_t store_pg_n_migrations;

/* Where every change of a connection is announced (daemon/store-pg.c,
 * daemon/follower.c). */
#define PG_CHANGES_CHANNEL "tokenbroker_changes"
/* Where a node without a connection's lease asks its holder to refresh
 * it (tokenctl refresh, min_ttl, invalidate on any node). */
#define PG_REQUESTS_CHANNEL "tokenbroker_requests"

typedef struct PgDb PgDb;

/* Connects to uri (a libpq connection URI, postgresql://..., or a
 * key=value string): anything libpq accepts, sslmode=verify-full
 * included. password NULL: libpq's own ways (PGPASSFILE, ~/.pgpass, the
 * URI). On failure *ret is NULL and error holds the reason. */
int pg_db_connect(const char *uri, const char *password, PgDb **ret, char *error, size_t error_size);
PgDb *pg_db_close(PgDb *db);
DEFINE_TRIVIAL_CLEANUP_FUNC(PgDb *, pg_db_close);
const char *pg_db_error(PgDb *db);
/* The server has gone (or the link to it): the caller reconnects. */
bool pg_db_broken(PgDb *db);

/* The migrations of sql/pg/, each in its own transaction with the version
 * bump, all under an advisory lock, so of several nodes starting at once
 * one migrates and the others wait and find the work done.
 * -EPROTONOSUPPORT when a newer tokenbroker wrote the database. */
int pg_db_migrate(PgDb *db, unsigned *ret_version);

/* Parameters of one statement. */
#define PG_PARAMS_MAX 32
typedef struct PgParams {
        int n;
        Oid types[PG_PARAMS_MAX];
        const char *values[PG_PARAMS_MAX];
        int lengths[PG_PARAMS_MAX];
        int formats[PG_PARAMS_MAX];
        uint64_t ints[PG_PARAMS_MAX];   /* the big-endian int64 values point here */
} PgParams;
void pg_param_text(PgParams *p, const char *s);                 /* NULL: SQL NULL */
void pg_param_int64(PgParams *p, int64_t v);
void pg_param_bytea(PgParams *p, const void *b, size_t n);      /* b NULL: SQL NULL */

/* Runs one statement (p may be NULL), results in binary. Returns the
 * number of rows (a SELECT, or RETURNING) or of rows changed, or -errno;
 * when there are rows, *ret (if not NULL) takes them, to free with
 * PQclear(); otherwise *ret is NULL. */
int pg_db_query(PgDb *db, const char *sql, const PgParams *p, PGresult **ret);
/* A statement without parameters or rows (BEGIN, COMMIT, DDL). */
int pg_db_exec(PgDb *db, const char *sql);
/* A query whose rows come one at a time (libpq's single-row mode), in
 * constant memory however many there are: fn gets a result holding one
 * row (row 0), valid until it returns; a negative return stops the walk
 * and is returned. */
int pg_db_query_each(PgDb *db, const char *sql, const PgParams *p, int (*fn)(const PGresult *res, void *userdata),
                     void *userdata);
/* Reconnects a broken handle with the parameters it was opened with. */
int pg_db_reset(PgDb *db);

/* Waits up to timeout for notifications (LISTEN) and hands each to fn
 * (payload as sent); returns how many, 0 on a timeout or when wake_fd
 * (an eventfd, or -1) became readable (it is read), or -errno
 * (-ECONNRESET: the session is gone). Notifications already received
 * are handed over without waiting. */
int pg_db_wait_notify(PgDb *db, usec_t timeout, int wake_fd, int (*fn)(const char *payload, void *userdata),
                      void *userdata);

/* Values of a binary result. */
bool pg_get_null(const PGresult *res, int row, int col);
int64_t pg_get_int64(const PGresult *res, int row, int col);     /* NULL: 0 */
/* A copy of a text or bytea value (NUL-terminated too); NULL stays NULL. */
int pg_get_dup(const PGresult *res, int row, int col, char **ret, size_t *ret_size);

/* The errno for a SQLSTATE: 23505 (unique) -EEXIST, 40001/40P01 -EAGAIN,
 * class 08 and 57P0x -ECONNRESET, class 28 -EACCES, 3D000 -ENOENT,
 * class 53 -ENOSPC, anything else -EIO. */
int pg_sqlstate_to_errno(const char *sqlstate);

/* uri with any password in it replaced by "***" (user:pw@ in a URI,
 * password=... in a query or a key=value string), for messages. */
char *pg_uri_redact(const char *uri);
