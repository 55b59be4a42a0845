/* SPDX-License-Identifier: MIT */
#include <sqlite3.h>

#include "common/util.h"
#include "daemon/links-db.h"
#include "daemon/pg.h"

#define LINK_COLUMNS                                                                                            \
        "id, hash, connection, provider, scope, creates, created_by, created_by_name, created_at, expires_at, "  \
        "used_at, revoked_at"

void link_strings_free(Link *l) {
        free(l->connection);
        free(l->provider);
        free(l->scope);
        free(l->by_name);
}

Link *link_free(Link *l) {
        if (!l)
                return NULL;
        link_strings_free(l);
        explicit_wipe(l->hash, sizeof l->hash);
        free(l);
        return NULL;
}

/* ---- SQLite --------------------------------------------------------------- */

static char *column_dup(sqlite3_stmt *st, int i) {
        const unsigned char *s = sqlite3_column_text(st, i);

        return s ? strdup((const char *) s) : NULL;
}

static void bind_opt_text(sqlite3_stmt *st, int i, const char *s) {
        if (s)
                sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
        else
                sqlite3_bind_null(st, i);
}

static int sqlite_fail(Store *s, sqlite3 *db) {
        store_custom_error(s, sqlite3_errmsg(db));
        return -EIO;
}

static int sqlite_load(Store *s, sqlite3 *db, const char *hash, int (*fn)(Link *l, void *userdata),
                       void *userdata) {
        sqlite3_stmt *st = NULL;
        int rc, r = 0;

        rc = sqlite3_prepare_v2(db,
                                hash ? "SELECT " LINK_COLUMNS " FROM links WHERE hash = ?"
                                     : "SELECT " LINK_COLUMNS " FROM links ORDER BY id",
                                -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_fail(s, db);
        if (hash)
                sqlite3_bind_text(st, 1, hash, -1, SQLITE_TRANSIENT);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                const unsigned char *h = sqlite3_column_text(st, 1);
                Link *l;

                if (!h || strlen((const char *) h) != 64)
                        continue;
                l = new0(Link, 1);
                if (!l) {
                        r = -ENOMEM;
                        break;
                }
                l->id = sqlite3_column_int64(st, 0);
                memcpy(l->hash, h, 65);
                l->connection = column_dup(st, 2);
                l->provider = column_dup(st, 3);
                l->scope = column_dup(st, 4);
                l->creates = sqlite3_column_int(st, 5) != 0;
                l->by = sqlite3_column_int64(st, 6);
                l->by_name = column_dup(st, 7);
                l->created_at = (usec_t) sqlite3_column_int64(st, 8);
                l->expires_at = (usec_t) sqlite3_column_int64(st, 9);
                l->used_at = (usec_t) sqlite3_column_int64(st, 10);
                l->revoked_at = (usec_t) sqlite3_column_int64(st, 11);
                if (!l->connection || !l->provider) {
                        link_free(l);
                        r = -ENOMEM;
                        break;
                }
                r = fn(l, userdata);
                if (r < 0)
                        break;
        }
        if (r >= 0 && rc != SQLITE_DONE)
                r = sqlite_fail(s, db);
        sqlite3_finalize(st);
        return r;
}

static int sqlite_insert(Store *s, sqlite3 *db, const Link *l) {
        sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(db, "INSERT INTO links (" LINK_COLUMNS ") VALUES (?,?,?,?,?,?,?,?,?,?,0,0)", -1, &st,
                                NULL);
        if (rc != SQLITE_OK)
                return sqlite_fail(s, db);
        sqlite3_bind_int64(st, 1, l->id);
        sqlite3_bind_text(st, 2, l->hash, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 3, l->connection, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 4, l->provider, -1, SQLITE_TRANSIENT);
        bind_opt_text(st, 5, l->scope);
        sqlite3_bind_int(st, 6, l->creates);
        sqlite3_bind_int64(st, 7, l->by);
        bind_opt_text(st, 8, l->by_name);
        sqlite3_bind_int64(st, 9, (sqlite3_int64) l->created_at);
        sqlite3_bind_int64(st, 10, (sqlite3_int64) l->expires_at);
        rc = sqlite3_step(st);
        sqlite3_finalize(st);
        return rc == SQLITE_DONE ? 0 : sqlite_fail(s, db);
}

static const char *const sqlite_mark_sql[] = {
        [LINK_MARK_USED] = "UPDATE links SET used_at = ?1 WHERE id = ?2 AND used_at = 0 AND revoked_at = 0 AND "
                           "expires_at > ?1",
        [LINK_MARK_UNUSED] = "UPDATE links SET used_at = 0 WHERE id = ?2 AND used_at = ?1",
        [LINK_MARK_REVOKED] = "UPDATE links SET revoked_at = ?1 WHERE id = ?2 AND used_at = 0 AND revoked_at = 0",
        [LINK_MARK_DELETE_OLD] = "DELETE FROM links WHERE expires_at < ?1",
};

static int sqlite_mark(Store *s, sqlite3 *db, LinkMark op, int64_t id, usec_t at) {
        sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(db, sqlite_mark_sql[op], -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_fail(s, db);
        sqlite3_bind_int64(st, 1, (sqlite3_int64) at);
        if (op != LINK_MARK_DELETE_OLD)
                sqlite3_bind_int64(st, 2, id);
        rc = sqlite3_step(st);
        sqlite3_finalize(st);
        return rc == SQLITE_DONE ? sqlite3_changes(db) : sqlite_fail(s, db);
}

/* ---- PostgreSQL ------------------------------------------------------------ */

static int pg_fail(Store *s, PgDb *db, int r) {
        store_custom_error(s, pg_db_error(db));
        return r;
}

static int pg_load(Store *s, PgDb *db, const char *hash, int (*fn)(Link *l, void *userdata), void *userdata) {
        PGresult *res = NULL;
        PgParams p = {};
        int n, r = 0;

        if (hash)
                pg_param_text(&p, hash);
        n = pg_db_query(db,
                        hash ? "SELECT " LINK_COLUMNS " FROM links WHERE hash = $1"
                             : "SELECT " LINK_COLUMNS " FROM links ORDER BY id",
                        hash ? &p : NULL, &res);
        if (n < 0)
                return pg_fail(s, db, n);
        for (int i = 0; i < n && r >= 0; i++) {
                _cleanup_free_ char *h = NULL;
                Link *l;

                if (pg_get_dup(res, i, 1, &h, NULL) < 0) {
                        r = -ENOMEM;
                        break;
                }
                if (!h || strlen(h) != 64)
                        continue;
                l = new0(Link, 1);
                if (!l) {
                        r = -ENOMEM;
                        break;
                }
                l->id = pg_get_int64(res, i, 0);
                memcpy(l->hash, h, 65);
                explicit_wipe(h, 64);
                if (pg_get_dup(res, i, 2, &l->connection, NULL) < 0 || pg_get_dup(res, i, 3, &l->provider, NULL) < 0 ||
                    pg_get_dup(res, i, 4, &l->scope, NULL) < 0 || pg_get_dup(res, i, 7, &l->by_name, NULL) < 0 ||
                    !l->connection || !l->provider) {
                        link_free(l);
                        r = -ENOMEM;
                        break;
                }
                l->creates = pg_get_int64(res, i, 5) != 0;
                l->by = pg_get_int64(res, i, 6);
                l->created_at = (usec_t) pg_get_int64(res, i, 8);
                l->expires_at = (usec_t) pg_get_int64(res, i, 9);
                l->used_at = (usec_t) pg_get_int64(res, i, 10);
                l->revoked_at = (usec_t) pg_get_int64(res, i, 11);
                r = fn(l, userdata);
        }
        PQclear(res);
        return r;
}

static int pg_insert(Store *s, PgDb *db, const Link *l) {
        PgParams p = {};
        int r;

        pg_param_int64(&p, l->id);
        pg_param_text(&p, l->hash);
        pg_param_text(&p, l->connection);
        pg_param_text(&p, l->provider);
        pg_param_text(&p, l->scope);
        pg_param_int64(&p, l->creates);
        pg_param_int64(&p, l->by);
        pg_param_text(&p, l->by_name);
        pg_param_int64(&p, (int64_t) l->created_at);
        pg_param_int64(&p, (int64_t) l->expires_at);
        r = pg_db_query(db, "INSERT INTO links (" LINK_COLUMNS ") VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,0,0)", &p,
                        NULL);
        return r < 0 ? pg_fail(s, db, r) : 0;
}

static const char *const pg_mark_sql[] = {
        [LINK_MARK_USED] = "UPDATE links SET used_at = $1 WHERE id = $2 AND used_at = 0 AND revoked_at = 0 AND "
                           "expires_at > $1",
        [LINK_MARK_UNUSED] = "UPDATE links SET used_at = 0 WHERE id = $2 AND used_at = $1",
        [LINK_MARK_REVOKED] = "UPDATE links SET revoked_at = $1 WHERE id = $2 AND used_at = 0 AND revoked_at = 0",
        [LINK_MARK_DELETE_OLD] = "DELETE FROM links WHERE expires_at < $1",
};

static int pg_mark(Store *s, PgDb *db, LinkMark op, int64_t id, usec_t at) {
        PgParams p = {};
        int r;

        pg_param_int64(&p, (int64_t) at);
        if (op != LINK_MARK_DELETE_OLD)
                pg_param_int64(&p, id);
        r = pg_db_query(db, pg_mark_sql[op], &p, NULL);
        return r < 0 ? pg_fail(s, db, r) : r;
}

/* ---- either ---------------------------------------------------------------- */

int links_db_load(Store *s, const char *hash, int (*fn)(Link *l, void *userdata), void *userdata) {
        sqlite3 *db = store_sqlite(s);
        PgDb *pg = store_pg(s);

        if (db)
                return sqlite_load(s, db, hash, fn, userdata);
        if (pg)
                return pg_load(s, pg, hash, fn, userdata);
        return -EOPNOTSUPP;
}

int links_db_insert(Store *s, const Link *l) {
        sqlite3 *db = store_sqlite(s);
        PgDb *pg = store_pg(s);

        if (db)
                return sqlite_insert(s, db, l);
        if (pg)
                return pg_insert(s, pg, l);
        return -EOPNOTSUPP;
}

int links_db_mark(Store *s, LinkMark op, int64_t id, usec_t at) {
        sqlite3 *db = store_sqlite(s);
        PgDb *pg = store_pg(s);

        if (op > LINK_MARK_DELETE_OLD)
                return -EINVAL;
        if (db)
                return sqlite_mark(s, db, op, id, at);
        if (pg)
                return pg_mark(s, pg, op, id, at);
        return -EOPNOTSUPP;
}

int links_db_reserve_ids(Store *s, int64_t *ids, size_t n) {
        PgDb *pg = store_pg(s);
        PGresult *res = NULL;
        PgParams p = {};
        int k;

        if (!pg)
                return -EOPNOTSUPP;
        pg_param_int64(&p, (int64_t) n);
        k = pg_db_query(pg, "SELECT nextval('links_id') FROM generate_series(1, $1::bigint)", &p, &res);
        if (k < 0)
                return pg_fail(s, pg, k);
        if ((size_t) k != n) {
                PQclear(res);
                store_custom_error(s, "the links_id sequence gave too few ids");
                return -EIO;
        }
        for (size_t i = 0; i < n; i++)
                ids[i] = pg_get_int64(res, (int) i, 0);
        PQclear(res);
        return 0;
}

int links_db_pending_id(Store *s, const char *state_hash, int64_t *ret_id) {
        PgDb *pg = store_pg(s);
        PGresult *res = NULL;
        PgParams p = {};
        int k;

        if (!pg)
                return -EOPNOTSUPP;
        pg_param_text(&p, state_hash);
        k = pg_db_query(pg, "SELECT id FROM connections WHERE state_hash = $1 LIMIT 1", &p,
                        &res);
        if (k < 0)
                return pg_fail(s, pg, k);
        if (k > 0)
                *ret_id = pg_get_int64(res, 0, 0);
        PQclear(res);
        return k > 0;
}
