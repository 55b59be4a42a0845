/* SPDX-License-Identifier: MIT */

/* daemon/pg.c against a real PostgreSQL 15 server: the throwaway cluster
 * tests/integration/store-pg.test.js starts (tests/lib/pg.js), named by
 *   TB_PG_URI            postgresql://tokenbroker@127.0.0.1:PORT/  (no database)
 *   TB_PG_PASSWORD_FILE  the role's password
 * Each test works in a database of its own, created here. */

#include <errno.h>
#include <pthread.h>

#include "common/macro.h"
#include "common/util.h"
#include "daemon/pg.h"

#define TESTS_MAIN
#include "tests.h"
#include "pg-env.h"

/* A fresh, empty database for one test. */
static PgDb *fresh_db(const char *name) {
        return pg_env_recreate(name) < 0 ? NULL : pg_env_connect(name);
}

static unsigned last_version(void) {
        return store_pg_migrations[store_pg_n_migrations - 1].version;
}

TEST(connect_errors_say_why_and_never_the_password) {
        _cleanup_free_ char *u = pg_env_uri("postgres");
        _cleanup_free_ char *nodb = pg_env_uri("no_such_database");
        _cleanup_free_ char *with_pw = NULL;
        char err[512];
        PgDb *d = NULL;
        int r;

        r = pg_db_connect(u, "not-the-password-1234", &d, err, sizeof err);
        CHECK_EQ_INT(r, -EACCES);
        CHECK(!d);
        CHECK(strstr(err, "password authentication failed"));
        CHECK(!strstr(err, "not-the-password-1234"));

        r = pg_db_connect(nodb, pg_env_get_password(), &d, err, sizeof err);
        CHECK_EQ_INT(r, -ENOENT);
        CHECK(strstr(err, "no_such_database"));

        /* a port nothing listens on */
        r = pg_db_connect("postgresql://tokenbroker@127.0.0.1:1/x?connect_timeout=5", pg_env_get_password(), &d, err,
                          sizeof err);
        CHECK_EQ_INT(r, -ECONNREFUSED);
        CHECK(strstr(err, "127.0.0.1:1"));

        /* a password in the URI itself is not repeated in the message */
        CHECK(asprintf(&with_pw, "postgresql://tokenbroker:uri-secret-5678@127.0.0.1:1/x?connect_timeout=5") > 0);
        r = pg_db_connect(with_pw, NULL, &d, err, sizeof err);
        CHECK(r < 0);
        CHECK(!strstr(err, "uri-secret-5678"));
        CHECK(strstr(err, "tokenbroker:***@127.0.0.1:1"));
}

TEST(migrate_creates_the_schema_once) {
        _cleanup_(pg_db_closep) PgDb *db = fresh_db("t_migrate");
        PGresult *res = NULL;
        unsigned v = 0;

        CHECK(db);
        if (!db)
                return;
        CHECK_EQ_INT(pg_db_migrate(db, &v), 0);
        CHECK_EQ_INT(v, last_version());
        /* again: nothing to do, same version */
        v = 0;
        CHECK_EQ_INT(pg_db_migrate(db, &v), 0);
        CHECK_EQ_INT(v, last_version());
        CHECK_EQ_INT(pg_db_query(db, "SELECT count(*)::bigint FROM schema_version", NULL, &res), 1);
        CHECK_EQ_INT(pg_get_int64(res, 0, 0), 1);
        PQclear(res);
        CHECK_EQ_INT(pg_db_query(db, "SELECT name FROM connections", NULL, NULL), 0);
        CHECK_EQ_INT(pg_db_query(db, "SELECT name FROM nodes", NULL, NULL), 0);
}

TEST(migrate_refuses_a_newer_schema) {
        _cleanup_(pg_db_closep) PgDb *db = fresh_db("t_newer");
        char sql[128];
        unsigned v = 0;

        CHECK(db);
        if (!db)
                return;
        CHECK_EQ_INT(pg_db_migrate(db, &v), 0);
        snprintf(sql, sizeof sql, "UPDATE schema_version SET version = %u", last_version() + 1);
        CHECK_EQ_INT(pg_db_exec(db, sql), 0);
        CHECK_EQ_INT(pg_db_migrate(db, &v), -EPROTONOSUPPORT);
        CHECK(strstr(pg_db_error(db), "newer"));
        /* the advisory lock was let go: another session can take it */
        {
                _cleanup_(pg_db_closep) PgDb *other = pg_env_connect("t_newer");
                PGresult *res = NULL;

                CHECK(other);
                if (other) {
                        CHECK_EQ_INT(pg_db_query(other, "SELECT pg_try_advisory_lock(x'746f6b656e62726f'::bigint)",
                                                 NULL, &res), 1);
                        CHECK(res && PQgetlength(res, 0, 0) == 1 && PQgetvalue(res, 0, 0)[0] == 1);
                        PQclear(res);
                }
        }
}

struct racer {
        int r;
        unsigned v;
};

static void *race_migrate(void *userdata) {
        struct racer *x = userdata;
        _cleanup_(pg_db_closep) PgDb *db = pg_env_connect("t_race");

        x->r = db ? pg_db_migrate(db, &x->v) : -ENOTCONN;
        return NULL;
}

/* Several nodes starting on an empty database at once: one migrates,
 * the others wait on the advisory lock and find the work done. */
TEST(migrate_concurrently_from_four_sessions) {
        _cleanup_(pg_db_closep) PgDb *db = fresh_db("t_race");
        struct racer x[4] = { 0 };
        pthread_t t[4];

        CHECK(db);
        if (!db)
                return;
        for (unsigned i = 0; i < ELEMENTSOF(t); i++)
                CHECK_EQ_INT(pthread_create(&t[i], NULL, race_migrate, &x[i]), 0);
        for (unsigned i = 0; i < ELEMENTSOF(t); i++) {
                pthread_join(t[i], NULL);
                CHECK_EQ_INT(x[i].r, 0);
                CHECK_EQ_INT(x[i].v, last_version());
        }
        CHECK_EQ_INT(pg_db_query(db, "SELECT 1 FROM schema_version", NULL, NULL), 1);
}

TEST(values_round_trip_in_binary) {
        _cleanup_(pg_db_closep) PgDb *db = fresh_db("t_values");
        static const uint8_t blob[] = { 0, 1, 2, 0xff, 0, 'x' };
        PgParams p = { 0 };
        PGresult *res = NULL;
        char *s = NULL;
        size_t n = 0;

        CHECK(db);
        if (!db)
                return;
        CHECK_EQ_INT(pg_db_exec(db, "CREATE TABLE v (i BIGINT, t TEXT, b BYTEA)"), 0);
        pg_param_int64(&p, INT64_C(-1234567890123));
        pg_param_text(&p, "grüße, 'quoted'; DROP TABLE v; --");
        pg_param_bytea(&p, blob, sizeof blob);
        CHECK_EQ_INT(pg_db_query(db, "INSERT INTO v VALUES ($1, $2, $3)", &p, NULL), 1);
        p = (PgParams) { 0 };
        pg_param_int64(&p, INT64_MAX);
        pg_param_text(&p, NULL);
        pg_param_bytea(&p, NULL, 0);
        CHECK_EQ_INT(pg_db_query(db, "INSERT INTO v VALUES ($1, $2, $3)", &p, NULL), 1);

        CHECK_EQ_INT(pg_db_query(db, "SELECT i, t, b FROM v ORDER BY i", NULL, &res), 2);
        CHECK_EQ_INT(pg_get_int64(res, 0, 0), INT64_C(-1234567890123));
        CHECK_EQ_INT(pg_get_dup(res, 0, 1, &s, &n), 0);
        CHECK_STREQ(s, "grüße, 'quoted'; DROP TABLE v; --");
        free(s);
        CHECK_EQ_INT(pg_get_dup(res, 0, 2, &s, &n), 0);
        CHECK(n == sizeof blob && s && memcmp(s, blob, n) == 0);
        free(s);
        CHECK_EQ_INT(pg_get_int64(res, 1, 0), INT64_MAX);
        CHECK(pg_get_null(res, 1, 1));
        CHECK_EQ_INT(pg_get_dup(res, 1, 1, &s, &n), 0);
        CHECK(!s && n == 0);
        CHECK(pg_get_null(res, 1, 2));
        PQclear(res);
}

TEST(errors_map_to_errno) {
        _cleanup_(pg_db_closep) PgDb *db = fresh_db("t_errors");
        PgParams p = { 0 };

        CHECK(db);
        if (!db)
                return;
        CHECK_EQ_INT(pg_db_exec(db, "CREATE TABLE u (k TEXT UNIQUE)"), 0);
        pg_param_text(&p, "one");
        CHECK_EQ_INT(pg_db_query(db, "INSERT INTO u VALUES ($1)", &p, NULL), 1);
        CHECK_EQ_INT(pg_db_query(db, "INSERT INTO u VALUES ($1)", &p, NULL), -EEXIST);
        CHECK(strstr(pg_db_error(db), "23505"));
        CHECK_EQ_INT(pg_db_exec(db, "SELECT * FROM no_such_table"), -EIO);
        CHECK(strstr(pg_db_error(db), "no_such_table"));
        CHECK(!pg_db_broken(db));
}

/* The server ends the session (a restart, a failover, an admin): the next
 * statement says so and the handle reports itself broken. */
TEST(a_lost_session_is_reported) {
        _cleanup_(pg_db_closep) PgDb *db = fresh_db("t_lost");
        _cleanup_(pg_db_closep) PgDb *admin = pg_env_connect("postgres");
        PGresult *res = NULL;
        PgParams p = { 0 };
        int r;

        CHECK(db && admin);
        if (!db || !admin)
                return;
        CHECK_EQ_INT(pg_db_query(db, "SELECT pg_backend_pid()::bigint", NULL, &res), 1);
        pg_param_int64(&p, pg_get_int64(res, 0, 0));
        PQclear(res);
        CHECK_EQ_INT(pg_db_query(admin, "SELECT pg_terminate_backend($1::int)", &p, NULL), 1);
        r = pg_db_exec(db, "SELECT 1");
        CHECK_EQ_INT(r, -ECONNRESET);
        CHECK(pg_db_broken(db));
}
