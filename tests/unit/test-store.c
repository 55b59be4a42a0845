/* SPDX-License-Identifier: MIT */

/* Unit tests for daemon/store.c: each test opens a fresh SQLite file in its
 * own mkdtemp() folder; checks that look beneath the API use sqlite3 on the
 * same file.
 *
 * The store matrix (issue 10): tests/pg/test-store-matrix.c compiles this
 * file again with TB_STORE_PG, and the tests of the store's behaviour run
 * on PostgreSQL: "the file" is a fresh database on the cluster named by
 * TB_PG_URI and TB_PG_PASSWORD_FILE (tests/pg/pg-env.h), the checks
 * beneath the API go through libpq. Tests of what only SQLite has (WAL,
 * its files, its migrations, a file that is not a database) are left out
 * there (#ifndef TB_STORE_PG). */

#include <ftw.h>
#include <limits.h>
#ifndef TB_STORE_PG
#include <sqlite3.h>
#endif
#include <sys/stat.h>

#include "common/intern.h"
#include "common/macro.h"
#include "daemon/store-engine.h"
#include "daemon/store.h"

#define TESTS_MAIN
#include "tests.h"
#include "store-fixtures.h"
#ifdef TB_STORE_PG
#include "daemon/pg.h"
#include "tests/pg/pg-env.h"
#endif

/* ---- helpers ---------------------------------------------------------- */

static char *tmpdir_new(void) {
        const char *base = getenv("TMPDIR");
        char *d = NULL;

        if (asprintf(&d, "%s/tb-test-store-XXXXXX", isempty(base) ? "/tmp" : base) < 0)
                return NULL;
        if (!mkdtemp(d)) {
                free(d);
                return NULL;
        }
        return d;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) st;
        (void) ftw;
        return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void tmpdir_free(char **d) {
        if (*d) {
                (void) nftw(*d, rm_one, 16, FTW_DEPTH | FTW_PHYS);
                free(*d);
                *d = NULL;
        }
}
#define _cleanup_tmpdir_ _cleanup_(tmpdir_free)

#ifdef TB_STORE_PG
/* A fresh database on the cluster for each test ("the file"): its URI. */
static char *db_path(const char *dir) {
        static unsigned n;
        char name[64];

        (void) dir;
        snprintf(name, sizeof name, "ut_%u", ++n);
        return pg_env_recreate(name) < 0 ? NULL : pg_env_uri(name);
}

/* store_open() of the SQLite tests, on the database of that URI. */
static int pg_store_open(const char *uri, const CryptKey *key, Store **ret) {
        StoreOptions o = { .password = pg_env_get_password() };
        char err[512];
        int r;

        if (!uri)
                return -EINVAL;
        r = store_open_with(uri, &o, key, ret, err, sizeof err);
        if (r < 0 && r != -EKEYREJECTED)
                fprintf(stderr, "  open %s: %s\n", uri, err);
        return r;
}
#define store_open pg_store_open

/* Every store here is sealed under this key. */
static const CryptKey test_key = { .bytes = "0123456789abcdef0123456789abcdef" };

static unsigned last_migration(void) {
        return store_pg_migrations[store_pg_n_migrations - 1].version;
}

/* The tests' `sqlite3 *db`: a session of their own on the same database. */
#define sqlite3 PgDb
static PgDb *db_open(const char *uri) {
        char err[512];
        PgDb *d = NULL;

        if (!uri)
                return NULL;
        if (pg_db_connect(uri, pg_env_get_password(), &d, err, sizeof err) < 0)
                fprintf(stderr, "  connect %s: %s\n", uri, err);
        return d;
}

static void db_closep(PgDb **db) {
        if (*db)
                pg_db_close(*db);
}
#define _cleanup_db_ _cleanup_(db_closep)

static long long db_int(PgDb *db, const char *sql) {
        PGresult *res = NULL;
        long long v = LLONG_MIN;

        if (db && pg_db_query(db, sql, NULL, &res) > 0)
                v = pg_get_int64(res, 0, 0);
        else
                fprintf(stderr, "  %s: %s\n", sql, db ? pg_db_error(db) : "no db");
        PQclear(res);
        return v;
}

static char *db_text(PgDb *db, const char *sql) {
        PGresult *res = NULL;
        char *v = NULL;

        if (db && pg_db_query(db, sql, NULL, &res) > 0 && !PQgetisnull(res, 0, 0))
                v = strdup(PQgetvalue(res, 0, 0));
        PQclear(res);
        return v;
}
/* A blob column as upper-case hex, in the SQL of each engine. */
#define HEX(col) "upper(encode(" col ", 'hex'))"
#else
static char *db_path(const char *dir) {
        char *p = NULL;

        return asprintf(&p, "%s/tokenbroker.db", dir) < 0 ? NULL : p;
}

/* Every store here is sealed under this key. */
static const CryptKey test_key = { .bytes = "0123456789abcdef0123456789abcdef" };

static unsigned last_migration(void) {
        return store_migrations[store_n_migrations - 1].version;
}

/* A second, independent connection to the same file. */
static sqlite3 *db_open(const char *path) {
        sqlite3 *db = NULL;

        if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
                fprintf(stderr, "  cannot open %s: %s\n", path, db ? sqlite3_errmsg(db) : "?");
                sqlite3_close(db);
                return NULL;
        }
        (void) sqlite3_busy_timeout(db, 5000);
        return db;
}

static void db_closep(sqlite3 **db) {
        if (*db)
                sqlite3_close(*db);
}
#define _cleanup_db_ _cleanup_(db_closep)

/* The first column of the first row of sql as an integer; LLONG_MIN on error. */
static long long db_int(sqlite3 *db, const char *sql) {
        sqlite3_stmt *st = NULL;
        long long v = LLONG_MIN;

        if (!db || sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
                fprintf(stderr, "  %s: %s\n", sql, db ? sqlite3_errmsg(db) : "no db");
                return v;
        }
        if (sqlite3_step(st) == SQLITE_ROW)
                v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        return v;
}

/* Same, as a string (owned by the caller); NULL on error. */
static char *db_text(sqlite3 *db, const char *sql) {
        sqlite3_stmt *st = NULL;
        char *v = NULL;

        if (!db || sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
                return NULL;
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
                v = strdup((const char *) sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
        return v;
}

/* The Store's own connection (store_sqlite()). Per-connection
 * settings (synchronous) can only be seen there. store_db() checks that
 * the handle really is the connection to path before anyone trusts it. */
static sqlite3 *store_db(Store *s, const char *path) {
        sqlite3 *db = store_sqlite(s);
        const char *f = db ? sqlite3_db_filename(db, "main") : NULL;
        _cleanup_free_ char *want = realpath(path, NULL);

        if (!f || !want || !streq(f, want)) {
                fprintf(stderr, "  struct Store layout changed: update store_db()\n");
                return NULL;
        }
        return db;
}

#define HEX(col) "hex(" col ")"
#endif

/* ---- tests ------------------------------------------------------------ */

#ifndef TB_STORE_PG   /* SQLite's own */
TEST(migrations_table_sane) {
        CHECK(store_n_migrations >= 1);
        for (size_t i = 0; i < store_n_migrations; i++) {
                CHECK(store_migrations[i].version > 0);
                CHECK(store_migrations[i].name && store_migrations[i].sql);
                CHECK(!isempty(store_migrations[i].sql));
                if (i > 0)
                        CHECK(store_migrations[i].version > store_migrations[i - 1].version);
        }
        CHECK_EQ_INT(store_migrations[0].version, 1);
        CHECK_STREQ(store_migrations[0].name, "0001-initial.sql");
}
#endif

#ifndef TB_STORE_PG   /* SQLite's own */
TEST(open_fresh_applies_migrations) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_db_ sqlite3 *db = NULL;
        struct stat st;

        CHECK(dir && path);
        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        CHECK(s);
        if (!s)
                return;
        CHECK_EQ_INT(stat(path, &st), 0);
        CHECK_EQ_INT(store_schema_version(s), last_migration());

        db = db_open(path);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"),
                     1);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM schema_version"), 1);
        CHECK_EQ_INT(db_int(db, "SELECT version FROM schema_version"), last_migration());
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'connections'"),
                     1);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'"), 1);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM connections"), 0);
}
#endif

TEST(reopen_idempotent) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(connection_freep) Connection *c = conn_new("keep", "p", CONN_PENDING);
        Loaded l = {};
        Store *s = NULL;

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s)
                return;
        CHECK_EQ_INT(store_connection_insert(s, c), 0);
        s = store_close(s);
        CHECK(!s);

        for (int i = 0; i < 3; i++) {
                _cleanup_db_ sqlite3 *db = NULL;

                CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
                if (!s)
                        return;
                CHECK_EQ_INT(store_schema_version(s), last_migration());
                db = db_open(path);
                CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM schema_version"), 1);
                CHECK_EQ_INT(db_int(db, "SELECT version FROM schema_version"), last_migration());
                /* nothing re-created, nothing lost */
                CHECK_EQ_INT(load_all(s, &l), 0);
                CHECK_EQ_INT(l.n, 1);
                if (l.n == 1)
                        CHECK_STREQ(l.c[0]->name, "keep");
                s = store_close(s);
        }
        loaded_done(&l);
}

#ifndef TB_STORE_PG   /* SQLite's own */
TEST(wal_and_synchronous_full) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir), *mode = NULL, *wal = NULL;
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_db_ sqlite3 *db = NULL;
        sqlite3 *own;

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s)
                return;

        /* journal_mode=WAL is a property of the file: any connection sees it */
        db = db_open(path);
        mode = db_text(db, "PRAGMA journal_mode");
        CHECK_STREQ(mode, "wal");
        CHECK(asprintf(&wal, "%s-wal", path) >= 0);
        CHECK_EQ_INT(access(wal, F_OK), 0);

        /* synchronous is per connection: ask the store's own */
        own = store_db(s, path);
        CHECK(own);
        if (!own)
                return;
        CHECK_EQ_INT(db_int(own, "PRAGMA synchronous"), 2);   /* 2 = FULL */
        mode = mfree(mode);
        mode = db_text(own, "PRAGMA journal_mode");
        CHECK_STREQ(mode, "wal");
        CHECK_EQ_INT(db_int(own, "PRAGMA foreign_keys"), 1);
        CHECK_EQ_INT(db_int(own, "PRAGMA secure_delete"), 1);
}
#endif

#ifndef TB_STORE_PG   /* SQLite's own */
TEST(changes_committed_on_return) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir), *tok = NULL;
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_(connection_freep) Connection *c = conn_new("now", "p", CONN_ACTIVE);
        _cleanup_db_ sqlite3 *db = NULL;

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s || !c)
                return;
        db = db_open(path);
        CHECK_EQ_INT(store_connection_insert(s, c), 0);
        /* another connection sees it at once: no transaction left open */
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM connections WHERE name = 'now'"), 1);

        c->access_token = strdup("at-1");
        CHECK_EQ_INT(store_connection_save(s, c), 0);
        /* committed, and sealed: version byte, nonce, 4 bytes, tag */
        CHECK_EQ_INT(db_int(db, "SELECT length(access_token) FROM connections WHERE name = 'now'"),
                     CRYPT_OVERHEAD + 4);
        tok = db_text(db, "SELECT hex(substr(access_token, 1, 1)) FROM connections WHERE name = 'now'");
        CHECK_STREQ(tok, "01");
        CHECK_EQ_INT(db_int(db, "SELECT instr(access_token, CAST('at-1' AS BLOB)) FROM connections WHERE name = 'now'"), 0);

        CHECK_EQ_INT(store_event_add(s, 1, "now", "refresh", "ok"), 0);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM events"), 1);

        CHECK_EQ_INT(store_connection_delete(s, c->id), 0);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM connections"), 0);
}
#endif

TEST(round_trip_every_field) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(connection_freep) Connection *c = conn_full();
        Loaded l = {};
        Store *s = NULL;

        CHECK(c);
        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s || !c)
                return;
        CHECK_EQ_INT(store_connection_insert(s, c), 0);
        CHECK(c->id > 0);

        /* loaded back in the same process */
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT(l.n, 1);
        if (l.n == 1)
                check_same(c, l.c[0]);

        /* and after a restart */
        s = store_close(s);
        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s)
                goto out;
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT(l.n, 1);
        if (l.n == 1)
                check_same(c, l.c[0]);
out:
        loaded_done(&l);
        store_close(s);
}

TEST(save_changes_every_field) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(connection_freep) Connection *c = conn_new("conn", "google", CONN_PENDING);
        _cleanup_(store_closep) Store *s = NULL;
        Loaded l = {};

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s || !c)
                return;
        CHECK_EQ_INT(store_connection_insert(s, c), 0);

        /* a bare pending connection: NULLs stay NULL, zeros stay zero */
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT(l.n, 1);
        if (l.n == 1) {
                check_same(c, l.c[0]);
                CHECK(!l.c[0]->access_token);
                CHECK(!l.c[0]->refresh_token);
                CHECK(!connection_state_hash(l.c[0]));
                CHECK_EQ_INT(l.c[0]->n_allow_users, 0);
                CHECK(l.c[0]->expires_at == 0);
        }

        /* pending with a state */
        CHECK_EQ_INT(connection_set_state_hash(c, strdup("aaaa")), 0);
        CHECK_EQ_INT(connection_set_code_verifier(c, strdup("verifier")), 0);
        CHECK_EQ_INT(connection_set_pending_until(c, 42), 0);
        CHECK_EQ_INT(connection_set_requested_scope(c, "openid email"), 0);
        CHECK_EQ_INT(store_connection_save(s, c), 0);
        CHECK_EQ_INT(load_all(s, &l), 0);
        if (l.n == 1)
                check_same(c, l.c[0]);

        /* authorized: tokens in, pending state out; every ACL slot used */
        c->state = CONN_ACTIVE;
        (void) connection_set_state_hash(c, NULL);
        (void) connection_set_code_verifier(c, NULL);
        CHECK_EQ_INT(connection_set_pending_until(c, 0), 0);
        CHECK_EQ_INT(connection_set_names(c, &(const ConnNames) { .provider = "google2", .token_type = "Bearer",
                                                                  .scope = "openid email",
                                                                  .requested_scope = c->names->requested_scope }),
                     0);
        c->access_token = strdup("ya29.token");
        c->refresh_token = strdup("1//refresh");
        CHECK_EQ_INT(connection_set_identity(c, strdup("bob@example.com")), 0);
        c->expires_at = UINT64_C(2000000000) * USEC_PER_SEC;
        c->obtained_at = UINT64_C(1999996400) * USEC_PER_SEC;
        c->updated_at = UINT64_C(1999996400) * USEC_PER_SEC;
        c->last_refresh_at = UINT64_C(1999996400) * USEC_PER_SEC;
        c->refreshes = 3;
        {
                uid_t users[ACL_MAX + 1];
                gid_t groups[ACL_MAX + 1];

                for (unsigned i = 0; i < ACL_MAX + 1; i++) {
                        users[i] = 4294967295U - i;
                        groups[i] = i;
                }
                /* one more than fits: the last is dropped */
                CHECK_EQ_INT(connection_set_acl(c, users, ACL_MAX + 1, groups, ACL_MAX + 1), 0);
                CHECK_EQ_INT(c->n_allow_users, ACL_MAX);
                CHECK_EQ_INT(c->n_allow_groups, ACL_MAX);
                CHECK_EQ_INT(connection_allow_groups(c)[ACL_MAX - 1], ACL_MAX - 1);
        }
        CHECK_EQ_INT(store_connection_save(s, c), 0);
        CHECK_EQ_INT(load_all(s, &l), 0);
        if (l.n == 1)
                check_same(c, l.c[0]);

        /* needs re-authorization: tokens dropped, an error kept */
        c->state = CONN_NEEDS_REAUTH;
        connection_clear_tokens(c);
        CHECK_EQ_INT(connection_set_last_error(c, strdup("HTTP 400: invalid_grant")), 0);
        CHECK_EQ_INT(connection_set_acl(c, c->allow_users, c->n_allow_users, NULL, 0), 0);
        CHECK_EQ_INT(c->n_allow_groups, 0);
        CHECK(!connection_allow_groups(c));
        CHECK_EQ_INT(store_connection_save(s, c), 0);
        CHECK_EQ_INT(load_all(s, &l), 0);
        if (l.n == 1) {
                check_same(c, l.c[0]);
                CHECK(!l.c[0]->access_token);
                CHECK(!l.c[0]->refresh_token);
                CHECK_EQ_INT(l.c[0]->state, CONN_NEEDS_REAUTH);
        }
        loaded_done(&l);
}

TEST(several_in_id_order) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(store_closep) Store *s = NULL;
        static const char *const names[] = { "c", "a", "b", "z", "m" };
        Connection *c[ELEMENTSOF(names)] = {};
        Loaded l = {};

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s)
                return;
        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                c[i] = conn_new(names[i], "p", CONN_ACTIVE);
                CHECK_EQ_INT(store_connection_insert(s, c[i]), 0);
                if (i > 0)
                        CHECK(c[i]->id > c[i - 1]->id);
        }
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT(l.n, ELEMENTSOF(names));
        for (size_t i = 0; i < l.n && i < ELEMENTSOF(names); i++)
                check_same(c[i], l.c[i]);
        loaded_done(&l);
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                connection_free(c[i]);
}

TEST(delete) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_(connection_freep) Connection *a = conn_new("a", "p", CONN_ACTIVE);
        _cleanup_(connection_freep) Connection *b = conn_new("b", "p", CONN_ACTIVE);
        _cleanup_(connection_freep) Connection *again = conn_new("a", "p", CONN_PENDING);
        Loaded l = {};

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s)
                return;
        CHECK_EQ_INT(store_connection_insert(s, a), 0);
        CHECK_EQ_INT(store_connection_insert(s, b), 0);
        CHECK_EQ_INT(store_connection_delete(s, a->id), 0);
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT(l.n, 1);
        if (l.n == 1)
                CHECK_STREQ(l.c[0]->name, "b");

        /* deleting what is gone is not an error */
        CHECK_EQ_INT(store_connection_delete(s, a->id), 0);
        CHECK_EQ_INT(store_connection_delete(s, 987654), 0);
        /* saving it is */
        CHECK_EQ_INT(store_connection_save(s, a), -ENOENT);

        /* the name is free again */
        CHECK_EQ_INT(store_connection_insert(s, again), 0);
        CHECK(again->id != b->id);
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT(l.n, 2);
        loaded_done(&l);
}

TEST(name_unique) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_(connection_freep) Connection *a = conn_new("same", "p", CONN_ACTIVE);
        _cleanup_(connection_freep) Connection *b = conn_new("same", "q", CONN_PENDING);
        _cleanup_(connection_freep) Connection *c = conn_new("other", "q", CONN_PENDING);
        Loaded l = {};

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s)
                return;
        CHECK_EQ_INT(store_connection_insert(s, a), 0);
        CHECK_EQ_INT(store_connection_insert(s, b), -EEXIST);
        /* the store is still usable after the failure */
        CHECK_EQ_INT(store_connection_insert(s, c), 0);
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT(l.n, 2);
        if (l.n == 2) {
                CHECK_STREQ(l.c[0]->name, "same");
                CHECK_STREQ(l.c[0]->names->provider, "p");
                CHECK_STREQ(l.c[1]->name, "other");
        }
        loaded_done(&l);
}

TEST(state_hash_unique) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_(connection_freep) Connection *a = conn_new("a", "p", CONN_PENDING);
        _cleanup_(connection_freep) Connection *b = conn_new("b", "p", CONN_PENDING);

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s)
                return;
        CHECK_EQ_INT(connection_set_state_hash(a, strdup("0123abcd")), 0);
        CHECK_EQ_INT(store_connection_insert(s, a), 0);
        CHECK_EQ_INT(store_connection_insert(s, b), 0);
        CHECK_EQ_INT(connection_set_state_hash(b, strdup("0123abcd")), 0);
        CHECK_EQ_INT(store_connection_save(s, b), -EEXIST);
        (void) connection_set_state_hash(b, NULL);
        CHECK_EQ_INT(store_connection_save(s, b), 0);   /* NULLs do not collide */
}

TEST(failed_insert_leaves_nothing) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_(connection_freep) Connection *a = conn_new("a", "p", CONN_PENDING);
        _cleanup_(connection_freep) Connection *b = conn_new("b", "p", CONN_PENDING);
        Loaded l = {};

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s)
                return;
        CHECK_EQ_INT(connection_set_state_hash(a, strdup("0123abcd")), 0);
        CHECK_EQ_INT(connection_set_state_hash(b, strdup("0123abcd")), 0);
        CHECK_EQ_INT(store_connection_insert(s, a), 0);
        /* The insert of b fails at its second step (the state's hash is
         * taken): no half-written row may stay behind under b's name. */
        CHECK_EQ_INT(store_connection_insert(s, b), -EEXIST);
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT(l.n, 1);
        if (l.n == 1)
                CHECK_STREQ(l.c[0]->name, "a");
        /* and the name is still free */
        (void) connection_set_state_hash(b, NULL);
        CHECK_EQ_INT(store_connection_insert(s, b), 0);
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT(l.n, 2);
        loaded_done(&l);
}

#ifndef TB_STORE_PG   /* SQLite's own */
TEST(events_bounded) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_db_ sqlite3 *db = NULL;
        const long long total = STORE_EVENTS_MAX + 500;
        long long n;
        sqlite3 *own;

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s)
                return;
        /* One transaction around the lot, or 10500 fsyncs make this slow;
         * store_event_add()'s own logic is the same inside it. */
        own = store_db(s, path);
        CHECK(own);
        if (own)
                CHECK_EQ_INT(sqlite3_exec(own, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
        for (long long i = 1; i <= total; i++) {
                char msg[64];

                snprintf(msg, sizeof msg, "event %lld", i);
                if (store_event_add(s, (usec_t) i * USEC_PER_SEC, i % 3 ? "conn" : NULL, "refresh", msg) < 0) {
                        CHECK(!"store_event_add failed");
                        break;
                }
        }
        if (own)
                CHECK_EQ_INT(sqlite3_exec(own, "COMMIT", NULL, NULL, NULL), SQLITE_OK);

        db = db_open(path);
        n = db_int(db, "SELECT count(*) FROM events");
        CHECK(n <= STORE_EVENTS_MAX + 64);
        CHECK(n >= STORE_EVENTS_MAX);           /* trimmed, not emptied */
        /* the newest are kept, the oldest went */
        CHECK_EQ_INT(db_int(db, "SELECT max(id) FROM events"), total);
        CHECK(db_int(db, "SELECT min(id) FROM events") > total - STORE_EVENTS_MAX - 64);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM events WHERE message = 'event 10500'"), 1);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM events WHERE message = 'event 1'"), 0);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM events WHERE connection IS NULL AND id = 10500"), 1);
}
#endif

#ifndef TB_STORE_PG   /* SQLite's own */
TEST(events_bounded_autocommit) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_db_ sqlite3 *db = NULL;
        sqlite3 *own;

        /* The same without a surrounding transaction, on a table already
         * at its bound (filled directly), so few real commits are needed. */
        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s)
                return;
        own = store_db(s, path);
        if (!own)
                return;
        CHECK_EQ_INT(sqlite3_exec(own,
                                  "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10050) "
                                  "INSERT INTO events (id, at, connection, kind, message) "
                                  "SELECT i, i, 'c', 'k', 'm' FROM n",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
        for (int i = 0; i < 100; i++)
                CHECK_EQ_INT(store_event_add(s, 1, "c", "k", "m"), 0);
        db = db_open(path);
        CHECK(db_int(db, "SELECT count(*) FROM events") <= STORE_EVENTS_MAX + 64);
        CHECK_EQ_INT(db_int(db, "SELECT max(id) FROM events"), 10150);
}
#endif

#ifndef TB_STORE_PG   /* SQLite's own */
TEST(newer_schema_refused) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir), *sql = NULL;
        _cleanup_db_ sqlite3 *db = NULL;
        Store *s = NULL, *sentinel = (Store *) (uintptr_t) 1;

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        s = store_close(s);

        db = db_open(path);
        CHECK(asprintf(&sql, "UPDATE schema_version SET version = %u", last_migration() + 1) >= 0);
        CHECK_EQ_INT(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
        db = NULL;

        s = sentinel;
        CHECK_EQ_INT(store_open(path, &test_key, &s), -EPROTONOSUPPORT);
        CHECK(s == sentinel);   /* untouched on failure */

        /* and nothing was changed by the attempt */
        db = db_open(path);
        CHECK_EQ_INT(db_int(db, "SELECT version FROM schema_version"), last_migration() + 1);
}
#endif

#ifndef TB_STORE_PG   /* SQLite's own */
TEST(older_schema_migrated) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_db_ sqlite3 *db = NULL;
        Store *s = NULL;

        /* A file from before any migration ran: an empty database. */
        CHECK_EQ_INT(sqlite3_open(path, &db), SQLITE_OK);
        CHECK_EQ_INT(sqlite3_exec(db, "CREATE TABLE unrelated (x INTEGER)", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
        db = NULL;

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (s)
                CHECK_EQ_INT(store_schema_version(s), last_migration());
        store_close(s);
        db = db_open(path);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'unrelated'"), 1);
}
#endif

#ifndef TB_STORE_PG   /* SQLite's own */
TEST(not_a_database) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir), *missing = NULL;
        char junk[4096];
        Store *s = NULL;
        FILE *f;

        memset(junk, 'x', sizeof junk);
        f = fopen(path, "we");
        CHECK(f);
        if (!f)
                return;
        CHECK_EQ_INT(fwrite(junk, 1, sizeof junk, f), sizeof junk);
        fclose(f);
        CHECK_EQ_INT(store_open(path, &test_key, &s), -EBADMSG);
        CHECK(!s);

        /* a folder that does not exist */
        CHECK(asprintf(&missing, "%s/no/such/dir/db", dir) >= 0);
        CHECK_EQ_INT(store_open(missing, &test_key, &s), -EACCES);
        CHECK(!s);
}
#endif

/* ---- sealing ---------------------------------------------------------- */

/* The whole file as bytes (NULL when missing); size in *n. */
#ifndef TB_STORE_PG   /* SQLite's own */
static uint8_t *file_bytes(const char *path, size_t *n) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        uint8_t *p = NULL;
        long l;

        *n = 0;
        if (!f || fseek(f, 0, SEEK_END) < 0 || (l = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) < 0)
                return NULL;
        p = malloc((size_t) l + 1);
        if (p && fread(p, 1, (size_t) l, f) != (size_t) l)
                p = mfree(p);
        if (p)
                *n = (size_t) l;
        return p;
}
#endif

/* Whether s occurs in the database file or its WAL. */
#ifndef TB_STORE_PG   /* SQLite's own */
static bool db_files_contain(const char *path, const char *s) {
        static const char *const suffix[] = { "", "-wal", "-journal" };

        for (size_t i = 0; i < ELEMENTSOF(suffix); i++) {
                _cleanup_free_ char *p = NULL;
                _cleanup_free_ uint8_t *b = NULL;
                size_t n;

                if (asprintf(&p, "%s%s", path, suffix[i]) < 0)
                        abort();
                b = file_bytes(p, &n);
                if (b && memmem(b, n, s, strlen(s)))
                        return true;
        }
        return false;
}
#endif

static const CryptKey other_key = { .bytes = "fedcba9876543210fedcba9876543210" };

#ifndef TB_STORE_PG   /* SQLite's own */
TEST(sealed_at_rest) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_(connection_freep) Connection *c = conn_full();
        _cleanup_db_ sqlite3 *db = NULL;
        Loaded l = {};

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s || !c)
                return;
        CHECK_EQ_INT(store_connection_insert(s, c), 0);
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT(l.n, 1);
        if (l.n == 1)
                check_same(c, l.c[0]);
        loaded_done(&l);

        db = db_open(path);
        CHECK_EQ_INT(db_int(db, "SELECT length(access_token) FROM connections"),
                     CRYPT_OVERHEAD + strlen(c->access_token));
        CHECK_EQ_INT(db_int(db, "SELECT length(refresh_token) FROM connections"),
                     CRYPT_OVERHEAD + strlen(c->refresh_token));
        CHECK_EQ_INT(db_int(db, "SELECT length(code_verifier) FROM connections"),
                     CRYPT_OVERHEAD + strlen(connection_code_verifier(c)));
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM key_check"), 1);
        /* not a byte of them in the file or the WAL, before or after a checkpoint */
        CHECK(!db_files_contain(path, c->access_token));
        CHECK(!db_files_contain(path, c->refresh_token));
        CHECK(!db_files_contain(path, connection_code_verifier(c)));
        CHECK(db_files_contain(path, connection_identity(c)));   /* the search works */
        CHECK_EQ_INT(sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL), SQLITE_OK);
        CHECK(!db_files_contain(path, c->access_token));
        CHECK(!db_files_contain(path, c->refresh_token));
        CHECK(!db_files_contain(path, connection_code_verifier(c)));
}
#endif

static bool rekey_hook_ran;
static void rekey_hook(void) {
        rekey_hook_ran = true;
}

TEST(rekey) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(connection_freep) Connection *c = conn_full(), *p = conn_new("plain", "github", CONN_PENDING);
        _cleanup_db_ sqlite3 *db = NULL;
        Store *s = NULL;
        Loaded l = {};
        int n = -1;

        CHECK(c && p);
        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s || !c || !p)
                return;
        CHECK_EQ_INT(store_connection_insert(s, c), 0);
        CHECK_EQ_INT(store_connection_insert(s, p), 0);   /* no secrets: nothing to re-seal */
        CHECK_EQ_INT(store_rekey(s, &other_key, "rotated", rekey_hook, &n), 0);
        CHECK(rekey_hook_ran);
        CHECK_EQ_INT(n, 1);
        /* the same store goes on with the new key */
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT(l.n, 2);
        if (l.n == 2)
                check_same(c, l.c[0]);
        loaded_done(&l);
        s = store_close(s);

        db = db_open(path);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM events WHERE kind = 'key-rotated'"), 1);
        CHECK_EQ_INT(store_open(path, &test_key, &s), -EKEYREJECTED);
        CHECK(!s);
        CHECK_EQ_INT(store_open(path, &other_key, &s), 0);
        if (!s)
                return;
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT(l.n, 2);
        if (l.n == 2)
                check_same(c, l.c[0]);
        loaded_done(&l);
        /* back again: a second rotation from the new key works too */
        CHECK_EQ_INT(store_rekey(s, &test_key, NULL, NULL, NULL), 0);
        s = store_close(s);
        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        store_close(s);
}

TEST(fresh_nonce_per_save) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir), *a = NULL, *b = NULL;
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_(connection_freep) Connection *c = conn_full();
        _cleanup_db_ sqlite3 *db = NULL;

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s || !c)
                return;
        CHECK_EQ_INT(store_connection_insert(s, c), 0);
        db = db_open(path);
        a = db_text(db, "SELECT " HEX("access_token") " FROM connections");
        CHECK_EQ_INT(store_connection_save(s, c), 0);
        b = db_text(db, "SELECT " HEX("access_token") " FROM connections");
        CHECK(a && b && !streq(a, b));
}

TEST(wrong_key_refused_before_any_row) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir), *before = NULL, *after = NULL;
        _cleanup_(connection_freep) Connection *c = conn_full();
        _cleanup_db_ sqlite3 *db = NULL;
        Store *s = NULL, *sentinel = (Store *) (uintptr_t) 1;
#ifdef TB_STORE_PG
        static const char dump[] =
                "SELECT string_agg(id || " HEX("access_token") " || " HEX("refresh_token") " || " HEX("code_verifier")
                " || updated_at, ',') FROM connections";
#else
        static const char dump[] =
                "SELECT group_concat(id || hex(access_token) || hex(refresh_token) || hex(code_verifier) || "
                "updated_at, ',') FROM connections";
#endif
        Loaded l = {};

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s || !c)
                return;
        CHECK_EQ_INT(store_connection_insert(s, c), 0);
        s = store_close(s);
        db = db_open(path);
        before = db_text(db, dump);
        CHECK(before);

        s = sentinel;
        CHECK_EQ_INT(store_open(path, &other_key, &s), -EKEYREJECTED);
        CHECK(s == sentinel);
        after = db_text(db, dump);
        CHECK_STREQ(after, before);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM key_check"), 1);

        /* the right key still opens it, with everything in it */
        s = NULL;
        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s)
                return;
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT(l.n, 1);
        if (l.n == 1)
                check_same(c, l.c[0]);
        loaded_done(&l);
        store_close(s);
}

/* Flips one bit of a blob in the connections table. */
#ifndef TB_STORE_PG   /* SQLite's own */
static void flip_bit(sqlite3 *db, const char *column, const char *name, size_t bit) {
        _cleanup_free_ char *sel = NULL, *upd = NULL;
        _cleanup_free_ uint8_t *b = NULL;
        sqlite3_stmt *st = NULL;
        int n = 0;

        CHECK(asprintf(&sel, "SELECT %s FROM connections WHERE name = ?1", column) >= 0);
        CHECK(asprintf(&upd, "UPDATE connections SET %s = ?2 WHERE name = ?1", column) >= 0);
        CHECK_EQ_INT(sqlite3_prepare_v2(db, sel, -1, &st, NULL), SQLITE_OK);
        (void) sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
                n = sqlite3_column_bytes(st, 0);
                b = malloc((size_t) n + 1);
                if (b)
                        memcpy(b, sqlite3_column_blob(st, 0), (size_t) n);
        }
        sqlite3_finalize(st);
        CHECK(b && bit / 8 < (size_t) n);
        if (!b || bit / 8 >= (size_t) n)
                return;
        b[bit / 8] ^= (uint8_t) (1u << (bit % 8));
        CHECK_EQ_INT(sqlite3_prepare_v2(db, upd, -1, &st, NULL), SQLITE_OK);
        (void) sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        (void) sqlite3_bind_blob(st, 2, b, n, SQLITE_STATIC);
        CHECK_EQ_INT(sqlite3_step(st), SQLITE_DONE);
        sqlite3_finalize(st);
}
#endif

#ifndef TB_STORE_PG   /* SQLite's own */
TEST(value_moved_or_modified_fails_to_load) {
        static const char *const attacks[] = {
                /* b's token replaced by a's: another row */
                "UPDATE connections SET access_token = (SELECT access_token FROM connections WHERE name = 'a') "
                "WHERE name = 'b'",
                /* a's refresh token replaced by its access token: another column */
                "UPDATE connections SET refresh_token = access_token WHERE name = 'a'",
                /* one bit of the ciphertext flipped (see flip_bit()) */
                NULL,
                /* cut short */
                "UPDATE connections SET access_token = substr(access_token, 1, length(access_token) - 1) "
                "WHERE name = 'a'",
                /* plain text where a sealed value belongs */
                "UPDATE connections SET access_token = CAST('plain' AS BLOB) WHERE name = 'b'",
        };
        static const char *const column[] = {
                "access_token", "refresh_token", "code_verifier", "access_token", "access_token",
        };

        for (size_t i = 0; i < ELEMENTSOF(attacks); i++) {
                _cleanup_tmpdir_ char *dir = tmpdir_new();
                _cleanup_free_ char *path = db_path(dir);
                _cleanup_(store_closep) Store *s = NULL;
                _cleanup_(connection_freep) Connection *a = conn_new("a", "p", CONN_ACTIVE);
                _cleanup_(connection_freep) Connection *b = conn_new("b", "p", CONN_PENDING);
                _cleanup_db_ sqlite3 *db = NULL;
                Loaded l = {};
                int r;

                CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
                if (!s || !a || !b)
                        return;
                a->access_token = strdup("at-aaaaaaaaaaaaaaaaaaaa");
                a->refresh_token = strdup("rt-aaaaaaaaaaaaaaaaaaaa");
                b->access_token = strdup("at-bbbbbbbbbbbbbbbbbbbb");
                CHECK_EQ_INT(connection_set_code_verifier(b, strdup("verifier-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")), 0);
                CHECK_EQ_INT(store_connection_insert(s, a), 0);
                CHECK_EQ_INT(store_connection_insert(s, b), 0);
                CHECK_EQ_INT(load_all(s, &l), 0);
                CHECK_EQ_INT(l.n, 2);

                db = db_open(path);
                if (attacks[i])
                        CHECK_EQ_INT(sqlite3_exec(db, attacks[i], NULL, NULL, NULL), SQLITE_OK);
                else
                        flip_bit(db, "code_verifier", "b", 20 * 8 + 3);
                CHECK_EQ_INT(sqlite3_changes(db), 1);
                r = load_all(s, &l);
                if (r != -EBADMSG)
                        fprintf(stderr, "  attack %zu: load gave %d\n", i, r);
                CHECK_EQ_INT(r, -EBADMSG);
                CHECK(strstr(store_last_error(s), column[i]));
                /* the message names the place, never the secret */
                CHECK(!strstr(store_last_error(s), "aaaa"));
                CHECK(!strstr(store_last_error(s), "bbbb"));
                loaded_done(&l);
        }
}
#endif

/* Writes a file of schema version 1 holding plain secrets, as tokenbroker
 * did before encryption at rest. */
#ifndef TB_STORE_PG   /* SQLite's own */
static void write_v1_file(const char *path) {
        _cleanup_db_ sqlite3 *db = NULL;

        CHECK_EQ_INT(sqlite3_open(path, &db), SQLITE_OK);
        CHECK_EQ_INT(sqlite3_exec(db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL), SQLITE_OK);
        CHECK_EQ_INT(sqlite3_exec(db, store_migrations[0].sql, NULL, NULL, NULL), SQLITE_OK);
        CHECK_EQ_INT(sqlite3_exec(db,
                                  "CREATE TABLE schema_version (version INTEGER NOT NULL);"
                                  "INSERT INTO schema_version VALUES (1);"
                                  "INSERT INTO connections (id, name, provider, state, access_token, refresh_token, "
                                  "  created_at, updated_at) VALUES (3, 'active1', 'p', 'active', "
                                  "  CAST('plain-access-one' AS BLOB), CAST('plain-refresh-one' AS BLOB), 1, 1);"
                                  "INSERT INTO connections (id, name, provider, state, state_hash, code_verifier, "
                                  "  created_at, updated_at) VALUES (7, 'pending1', 'p', 'pending', 'abcd', "
                                  "  CAST('plain-verifier-two' AS BLOB), 1, 1);"
                                  "INSERT INTO connections (id, name, provider, state, created_at, updated_at) "
                                  "  VALUES (9, 'bare', 'p', 'needs_reauth', 1, 1);"
                                  "INSERT INTO connections (id, name, provider, state, access_token, "
                                  "  created_at, updated_at) VALUES (12, 'empty', 'p', 'active', "
                                  "  CAST('' AS BLOB), 1, 1);",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
}
#endif

#ifndef TB_STORE_PG   /* SQLite's own */
TEST(plain_file_sealed_on_first_open) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_db_ sqlite3 *db = NULL;
        Store *s = NULL;
        Loaded l = {};

        write_v1_file(path);
        CHECK(db_files_contain(path, "plain-access-one"));

        /* three rows held secrets (the empty one counts); the bare one not */
        CHECK_EQ_INT(store_open(path, &test_key, &s), 3);
        if (!s)
                return;
        CHECK_EQ_INT(store_schema_version(s), last_migration());
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT(l.n, 4);
        if (l.n == 4) {
                CHECK_STREQ(l.c[0]->access_token, "plain-access-one");
                CHECK_STREQ(l.c[0]->refresh_token, "plain-refresh-one");
                CHECK(!connection_code_verifier(l.c[0]));
                CHECK_STREQ(connection_code_verifier(l.c[1]), "plain-verifier-two");
                CHECK(!l.c[1]->access_token);
                CHECK(!l.c[2]->access_token && !l.c[2]->refresh_token && !connection_code_verifier(l.c[2]));
                CHECK_STREQ(l.c[3]->access_token, "");
        }
        loaded_done(&l);
        s = store_close(s);

        db = db_open(path);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM key_check"), 1);
        CHECK_EQ_INT(db_int(db, "SELECT length(access_token) FROM connections WHERE id = 3"),
                     CRYPT_OVERHEAD + strlen("plain-access-one"));
        CHECK_EQ_INT(db_int(db, "SELECT length(access_token) FROM connections WHERE id = 12"), CRYPT_OVERHEAD);
        CHECK(!db_files_contain(path, "plain-access-one"));
        CHECK(!db_files_contain(path, "plain-refresh-one"));
        CHECK(!db_files_contain(path, "plain-verifier-two"));

        /* once only: a second open seals nothing again */
        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s)
                return;
        CHECK_EQ_INT(load_all(s, &l), 0);
        if (l.n == 4)
                CHECK_STREQ(l.c[0]->access_token, "plain-access-one");
        loaded_done(&l);
        s = store_close(s);

        /* and now the key is bound to it */
        CHECK_EQ_INT(store_open(path, &other_key, &s), -EKEYREJECTED);
}
#endif

#ifndef TB_STORE_PG   /* SQLite's own */
TEST(plain_file_untouched_when_sealing_fails) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir), *before = NULL, *after = NULL;
        _cleanup_db_ sqlite3 *db = NULL;
        Store *s = NULL;

        /* A crash between the schema's migration to version 2 and the
         * sealing: the file is at version 2 and holds plain values still. */
        write_v1_file(path);
        db = db_open(path);
        CHECK(store_n_migrations >= 2 && store_migrations[1].version == 2);
        CHECK_EQ_INT(sqlite3_exec(db, store_migrations[1].sql, NULL, NULL, NULL), SQLITE_OK);
        CHECK_EQ_INT(sqlite3_exec(db, "UPDATE schema_version SET version = 2", NULL, NULL, NULL), SQLITE_OK);
        before = db_text(db, "SELECT group_concat(hex(access_token) || hex(code_verifier), ',') FROM connections");
        /* The last step, writing the key check, fails: every row was
         * sealed by then, and all of it must roll back. */
        CHECK_EQ_INT(sqlite3_exec(db, "CREATE TRIGGER refuse BEFORE INSERT ON key_check "
                                      "BEGIN SELECT RAISE(ABORT, 'refused'); END",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
        CHECK(store_open(path, &test_key, &s) < 0);
        CHECK(!s);
        CHECK_EQ_INT(sqlite3_exec(db, "DROP TRIGGER refuse", NULL, NULL, NULL), SQLITE_OK);
        after = db_text(db, "SELECT group_concat(hex(access_token) || hex(code_verifier), ',') FROM connections");
        CHECK_STREQ(after, before);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM key_check"), 0);

        /* free again: sealed now, all of it */
        CHECK_EQ_INT(store_open(path, &test_key, &s), 3);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM key_check"), 1);
        CHECK(!db_files_contain(path, "plain-access-one"));
        store_close(s);
}
#endif

/* ---- the writer (group commit) ----------------------------------------- */

static int queue_save(Store *s, StoreWriter *w, Connection *c, int i) {
        StoreRow *row = NULL;
        int r = store_row_new(s, c, &row);

        return r < 0 ? r : store_writer_save(w, row, on_done, (void *) (intptr_t) i);
}

TEST(writer_commits_in_order_and_only_then_completes) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir), *stall = NULL;
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_(connection_freep) Connection *a = conn_new("wa", "p", CONN_ACTIVE);
        _cleanup_(connection_freep) Connection *b = conn_new("wb", "p", CONN_ACTIVE);
        _cleanup_db_ sqlite3 *db = NULL;
        StoreWriter *w = NULL;
        StoreRow *row = NULL;
        Loaded l = {};

        CHECK(asprintf(&stall, "%s/stall", dir) > 0);
        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s || !a || !b || !stall)
                return;
        CHECK_EQ_INT(store_connection_insert(s, a), 0);   /* a synchronous one first */
        db = db_open(path);

        CHECK_EQ_INT(setenv("TOKENBROKER_TEST_WRITER_STALL", stall, 1), 0);
        CHECK_EQ_INT(store_writer_new(s, NULL, &w), 0);
        CHECK_EQ_INT(unsetenv("TOKENBROKER_TEST_WRITER_STALL"), 0);
        if (!w)
                return;
        fclose(fopen(stall, "w"));
        done = (Done) {};

        /* ids from memory: after the highest in the file */
        b->id = store_connection_id_new(s);
        CHECK(b->id > a->id);
        CHECK_EQ_INT(store_row_new(s, b, &row), 0);
        CHECK_EQ_INT(store_writer_insert(w, row, on_done, (void *) 0), 0);
        free(a->access_token);
        a->access_token = strdup("at-new");
        CHECK_EQ_INT(queue_save(s, w, a, 1), 0);
        CHECK_EQ_INT(store_writer_event(w, 7, "wa", "refresh", "ok"), 0);
        CHECK_EQ_INT(store_writer_delete(w, a->id, on_done, (void *) 2), 0);
        CHECK_EQ_INT(queue_save(s, w, a, 3), 0);   /* its row is gone by then: fails alone */
        CHECK_EQ_INT(store_writer_barrier(w, on_done, (void *) 4), 0);
        CHECK_EQ_INT((int) store_writer_pending(w), 6);

        /* held: nothing on disk, nothing completed */
        usleep(100 * 1000);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM connections WHERE name = 'wb'"), 0);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM events"), 0);
        CHECK_EQ_INT((int) done.n, 0);

        CHECK_EQ_INT(unlink(stall), 0);
        CHECK_EQ_INT(store_writer_flush(w), 0);
        CHECK_EQ_INT((int) store_writer_pending(w), 0);
        CHECK_EQ_INT((int) done.n, 5);
        for (int i = 0; i < 5; i++)
                CHECK_EQ_INT(done.order[i], i);
        CHECK_EQ_INT(done.result[0], 0);
        CHECK_EQ_INT(done.result[1], 0);
        CHECK_EQ_INT(done.result[2], 0);
        CHECK_EQ_INT(done.result[3], -ENOENT);
        CHECK_EQ_INT(done.result[4], 0);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM connections WHERE name = 'wa'"), 0);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM events WHERE connection = 'wa'"), 1);
        w = store_writer_free(w);

        /* what the writer inserted loads, with its id, under the key */
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT((int) l.n, 1);
        if (l.n == 1) {
                CHECK_STREQ(l.c[0]->name, "wb");
                CHECK_EQ_INT(l.c[0]->id, b->id);
        }
        loaded_done(&l);
}

/* Completions reach the loop at most 64 a wake-up (a turn of the loop),
 * the rest on the next turns: a burst of 1,000 all complete, in order. */
static unsigned burst_n, burst_bad_order;

static void on_burst(int result, const char *error _unused_, void *userdata) {
        if (result != 0 || (uintptr_t) userdata != burst_n)
                burst_bad_order++;
        burst_n++;
}

TEST(writer_completions_64_a_turn_and_all_of_them) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_(store_writer_freep) StoreWriter *w = NULL;
        sd_event *e = NULL;
        unsigned turns = 0, most = 0;

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        CHECK(sd_event_new(&e) >= 0);
        if (!s || !e)
                return;
        CHECK_EQ_INT(store_writer_new(s, e, &w), 0);
        if (!w) {
                sd_event_unref(e);
                return;
        }
        burst_n = burst_bad_order = 0;
        for (uintptr_t i = 0; i < 1000; i++)
                CHECK_EQ_INT(store_writer_barrier(w, on_burst, (void *) i), 0);
        while (burst_n < 1000 && turns < 10000) {
                unsigned before = burst_n;

                (void) sd_event_run(e, 100 * USEC_PER_MSEC);
                most = MAX(most, burst_n - before);
                turns++;
        }
        CHECK_EQ_INT(burst_n, 1000);
        CHECK_EQ_INT(burst_bad_order, 0);
        CHECK(most <= 64);
        CHECK(turns >= 1000 / 64);
        CHECK_EQ_INT((int) store_writer_pending(w), 0);
        w = store_writer_free(w);
        sd_event_unref(e);
}

TEST(writer_a_bad_change_fails_alone) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_(connection_freep) Connection *a = conn_new("same", "p", CONN_ACTIVE);
        _cleanup_(connection_freep) Connection *b = conn_new("same", "p", CONN_ACTIVE);
        _cleanup_(connection_freep) Connection *c = conn_new("other", "p", CONN_ACTIVE);
        _cleanup_(store_writer_freep) StoreWriter *w = NULL;
        _cleanup_db_ sqlite3 *db = NULL;
        StoreRow *row = NULL;

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s || !a || !b || !c)
                return;
        CHECK_EQ_INT(store_writer_new(s, NULL, &w), 0);
        if (!w)
                return;
        done = (Done) {};
        a->id = store_connection_id_new(s);
        b->id = store_connection_id_new(s);
        c->id = store_connection_id_new(s);
        CHECK_EQ_INT(store_row_new(s, a, &row), 0);
        CHECK_EQ_INT(store_writer_insert(w, row, on_done, (void *) 0), 0);
        CHECK_EQ_INT(store_row_new(s, b, &row), 0);   /* the same name: refused */
        CHECK_EQ_INT(store_writer_insert(w, row, on_done, (void *) 1), 0);
        CHECK_EQ_INT(store_row_new(s, c, &row), 0);
        CHECK_EQ_INT(store_writer_insert(w, row, on_done, (void *) 2), 0);
        CHECK_EQ_INT(store_writer_flush(w), 0);
        CHECK_EQ_INT((int) done.n, 3);
        CHECK_EQ_INT(done.result[0], 0);
        CHECK_EQ_INT(done.result[1], -EEXIST);
        CHECK_EQ_INT(done.result[2], 0);
        db = db_open(path);
        CHECK_EQ_INT(db_int(db, "SELECT count(*) FROM connections"), 2);
}

/* ---- the start's load: tokens read on one thread, opened on another ---- */

typedef struct Deferred {
        Connection *c[8];
        StoreSealedTokens t[8];
        size_t n;
} Deferred;

static int collect_deferred(Connection *c, const StoreSealedTokens *t, void *userdata) {
        Deferred *d = userdata;

        if (d->n >= ELEMENTSOF(d->c)) {
                connection_free(c);
                return -E2BIG;
        }
        d->t[d->n] = *t;
        d->c[d->n++] = c;
        return 0;
}

static bool defer_odd(void *userdata) {
        Deferred *d = userdata;

        return d->n % 2 == 1;
}

TEST(deferred_load_opens_the_same_tokens) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = db_path(dir);
        _cleanup_(store_closep) Store *s = NULL;
        _cleanup_(crypt_key_freep) CryptKey *k = NULL;
        Connection *c[4] = {};
        Deferred d = {};
        char error[256] = "";

        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (!s)
                return;
        /* every row: a full one, one with an access token only, one with none */
        c[0] = conn_full();
        c[1] = conn_new("only-at", "p", CONN_ACTIVE);
        c[2] = conn_new("none", "p", CONN_NEEDS_REAUTH);
        c[3] = conn_new("both", "p", CONN_ACTIVE);
        CHECK(c[0] && c[1] && c[2] && c[3]);
        c[1]->access_token = strdup("at-only");
        c[3]->access_token = strdup("at-3");
        c[3]->refresh_token = strdup("rt-\x01\x02-3");
        for (size_t i = 0; i < ELEMENTSOF(c); i++)
                CHECK_EQ_INT(store_connection_insert(s, c[i]), 0);

        /* every row deferred */
        CHECK_EQ_INT(store_load_connections_deferred(s, collect_deferred, NULL, &d), 0);
        CHECK_EQ_INT(d.n, ELEMENTSOF(c));
        CHECK(d.t[0].sealed && !d.t[1].sealed && !d.t[2].sealed && d.t[3].sealed);
        /* not opened yet: ciphertext, not the token */
        CHECK(memcmp(d.c[3]->access_token, "at-3", 4) != 0);
        CHECK_EQ_INT(store_key_dup(s, &k), 0);
        for (size_t i = 0; i < d.n; i++) {
                CHECK_EQ_INT(store_tokens_open(k, d.c[i], &d.t[i], error, sizeof error), 0);
                check_same(c[i], d.c[i]);
        }
        for (size_t i = 0; i < d.n; i++)
                connection_free(d.c[i]);
        d.n = 0;

        /* only some: the others are open already, the same */
        CHECK_EQ_INT(store_load_connections_deferred(s, collect_deferred, defer_odd, &d), 0);
        CHECK_EQ_INT(d.n, ELEMENTSOF(c));
        CHECK(!d.t[0].sealed && d.t[3].sealed);
        for (size_t i = 0; i < d.n; i++) {
                CHECK_EQ_INT(store_tokens_open(k, d.c[i], &d.t[i], error, sizeof error), 0);
                check_same(c[i], d.c[i]);
        }

        /* a refresh token that does not open: the access token, opened
         * first, is wiped too; the store's message */
        for (size_t i = 0; i < d.n; i++)
                connection_free(d.c[i]);
        d.n = 0;
        CHECK_EQ_INT(store_load_connections_deferred(s, collect_deferred, NULL, &d), 0);
        CHECK_EQ_INT(d.n, ELEMENTSOF(c));
        d.t[3].tag[1][0] ^= 1;
        CHECK_EQ_INT(store_tokens_open(k, d.c[3], &d.t[3], error, sizeof error), -EBADMSG);
        CHECK(strstr(error, "('both'): refresh_token does not open under this key") != NULL);
        CHECK(d.c[3]->access_token[0] == 0 && d.c[3]->refresh_token[0] == 0);
        for (size_t i = 0; i < d.n; i++)
                connection_free(d.c[i]);
        for (size_t i = 0; i < ELEMENTSOF(c); i++)
                connection_free(c[i]);
}
