/* SPDX-License-Identifier: MIT */

/* The store on SQLite (daemon/store-engine.h): one file, WAL with
 * synchronous=FULL, so a COMMIT is fsynced before it returns. The
 * embedded default, and a single node's store. */

#include <sqlite3.h>
#include <stdarg.h>

#include "common/util.h"
#include "daemon/store-engine.h"

enum {
        STMT_INSERT,
        STMT_SAVE,
        STMT_DELETE,
        STMT_EVENT_ADD,
        STMT_EVENT_TRIM,
        STMT_SEALED_NEXT,
        STMT_SEALED_UPDATE,
        _STMT_MAX,
};

static const char *const stmt_sql[_STMT_MAX] = {
        [STMT_INSERT] =
                "INSERT INTO connections (id, name, provider, state, created_at, updated_at) "
                "VALUES (?5, ?1, ?2, ?3, ?4, ?4)",
        [STMT_SAVE] =
                "UPDATE connections SET provider = ?2, state = ?3, requested_scope = ?4, scope = ?5, "
                "identity = ?6, token_type = ?7, access_token = ?8, refresh_token = ?9, "
                "expires_at = ?10, obtained_at = ?11, state_hash = ?12, code_verifier = ?13, "
                "pending_until = ?14, allow_users = ?15, allow_groups = ?16, last_error = ?17, "
                "refreshes = ?18, updated_at = ?19, last_refresh_at = ?20, username = ?21, "
                "device_interval = ?22, params = ?23, metadata = ?24, rt_end = ?25, rt_warned = ?26 WHERE id = ?1",
        [STMT_DELETE] = "DELETE FROM connections WHERE id = ?1",
        [STMT_EVENT_ADD] = "INSERT INTO events (at, connection, kind, message) VALUES (?1, ?2, ?3, ?4)",
        /* Keep the table bounded: the integer key grows by one per event. */
        [STMT_EVENT_TRIM] = "DELETE FROM events WHERE id <= ?1",
        [STMT_SEALED_NEXT] =
                "SELECT id, access_token, refresh_token, code_verifier FROM connections "
                "WHERE id > ?1 ORDER BY id LIMIT 1",
        [STMT_SEALED_UPDATE] =
                "UPDATE connections SET access_token = ?2, refresh_token = ?3, code_verifier = ?4 WHERE id = ?1",
};

struct StoreDb {
        sqlite3 *db;
        sqlite3_stmt *stmt[_STMT_MAX];
        unsigned version;
        char error[256];   /* what went wrong beyond SQLite, if anything */
};

_printf_(2, 3) static void set_error(StoreDb *d, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(d->error, sizeof d->error, fmt, ap);
        va_end(ap);
}

static const char *sq_error(StoreDb *d) {
        if (!d || !d->db)
                return "out of memory";
        return d->error[0] ? d->error : sqlite3_errmsg(d->db);
}

static unsigned sq_schema_version(StoreDb *d) {
        return d->version;
}

static int sqlite_to_errno(int rc) {
        /* The connection is opened with SQLITE_OPEN_EXRESCODE: map the
         * extended codes (SQLITE_CONSTRAINT_UNIQUE, ...) by their primary. */
        switch (rc & 0xff) {
        case SQLITE_OK:
        case SQLITE_DONE:
        case SQLITE_ROW:
                return 0;
        case SQLITE_NOMEM:
                return -ENOMEM;
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
                return -EBUSY;
        case SQLITE_CONSTRAINT:
                return -EEXIST;
        case SQLITE_FULL:
                return -ENOSPC;
        case SQLITE_CANTOPEN:
        case SQLITE_PERM:
        case SQLITE_READONLY:
                return -EACCES;
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB:
                return -EBADMSG;
        default:
                return -EIO;
        }
}

static int exec(StoreDb *d, const char *sql) {
        d->error[0] = 0;
        return sqlite_to_errno(sqlite3_exec(d->db, sql, NULL, NULL, NULL));
}

static int step_done(sqlite3_stmt *st) {
        int rc = sqlite3_step(st);

        (void) sqlite3_reset(st);
        (void) sqlite3_clear_bindings(st);
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

static void bind_text(sqlite3_stmt *st, int i, const char *s) {
        if (s)
                (void) sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
        else
                (void) sqlite3_bind_null(st, i);
}

static void bind_sealed(sqlite3_stmt *st, int i, const uint8_t *p, size_t n) {
        if (p)
                (void) sqlite3_bind_blob(st, i, p, (int) n, SQLITE_STATIC);
        else
                (void) sqlite3_bind_null(st, i);
}

static void sq_close(StoreDb *d) {
        if (!d)
                return;
        for (size_t i = 0; i < _STMT_MAX; i++)
                sqlite3_finalize(d->stmt[i]);
        if (d->db)
                sqlite3_close_v2(d->db);
        free(d);
}

/* The one integer a query answers (0 when it answers no row). */
static int query_int64(StoreDb *d, const char *sql, int64_t *ret) {
        sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(d->db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        rc = sqlite3_step(st);
        *ret = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
        sqlite3_finalize(st);
        return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

static int get_version(StoreDb *d, unsigned *ret) {
        int64_t v = 0;
        int r = query_int64(d, "SELECT version FROM schema_version", &v);

        *ret = (unsigned) v;
        return r;
}

/* Each migration and the version bump commit together: a crash mid-way
 * leaves the previous version intact. */
static int migrate(StoreDb *d) {
        unsigned v;
        int r;

        r = exec(d, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
        if (r < 0)
                return r;
        r = get_version(d, &v);
        if (r < 0)
                return r;
        if (v > store_migrations[store_n_migrations - 1].version)
                return -EPROTONOSUPPORT;   /* a newer tokenbroker wrote this */

        for (size_t i = 0; i < store_n_migrations; i++) {
                const Migration *m = &store_migrations[i];
                char bump[128];

                if (m->version <= v)
                        continue;
                r = exec(d, "BEGIN IMMEDIATE");
                if (r < 0)
                        return r;
                snprintf(bump, sizeof bump,
                         "DELETE FROM schema_version; INSERT INTO schema_version VALUES (%u)", m->version);
                r = exec(d, m->sql);
                if (r >= 0)
                        r = exec(d, bump);
                if (r >= 0)
                        r = exec(d, "COMMIT");
                if (r < 0) {
                        (void) sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
                        return r;
                }
                v = m->version;
        }
        d->version = v;
        return 0;
}

static int sq_open(const char *path, const StoreOptions *options _unused_, StoreDb **ret, char *error,
                   size_t error_size) {
        StoreDb *d;
        int rc, r;

        *ret = NULL;
        d = new0(StoreDb, 1);
        if (!d) {
                snprintf(error, error_size, "out of memory");
                return -ENOMEM;
        }
        rc = sqlite3_open_v2(path, &d->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
                                     SQLITE_OPEN_EXRESCODE,
                             NULL);
        if (rc != SQLITE_OK) {
                snprintf(error, error_size, "%s", d->db ? sqlite3_errmsg(d->db) : "out of memory");
                sq_close(d);
                return sqlite_to_errno(rc & 0xff);
        }

        /* WAL with synchronous=FULL: a commit is fsynced before it returns,
         * so a token change is durable when the call that made it returns. */
        r = exec(d, "PRAGMA journal_mode = WAL");
        if (r >= 0)
                r = exec(d, "PRAGMA synchronous = FULL");
        if (r >= 0)
                r = exec(d, "PRAGMA foreign_keys = ON");
        if (r >= 0)
                r = exec(d, "PRAGMA secure_delete = ON");   /* freed pages held tokens */
        if (r >= 0) {
                (void) sqlite3_busy_timeout(d->db, 5000);
                r = migrate(d);
        }
        for (size_t i = 0; r >= 0 && i < _STMT_MAX; i++) {
                rc = sqlite3_prepare_v3(d->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &d->stmt[i], NULL);
                r = sqlite_to_errno(rc);
        }
        if (r < 0) {
                snprintf(error, error_size, "%s",
                         r == -EPROTONOSUPPORT ? "written by a newer tokenbroker" : sq_error(d));
                sq_close(d);
                return r;
        }
        *ret = d;
        return 0;
}

static int sq_begin(StoreDb *d) {
        return exec(d, "BEGIN IMMEDIATE");
}

static int sq_commit(StoreDb *d) {
        return exec(d, "COMMIT");
}

static void sq_rollback(StoreDb *d) {
        (void) sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
}

static int sq_key_check_get(StoreDb *d, uint8_t **ret, size_t *ret_size) {
        sqlite3_stmt *st = NULL;
        int rc, r = 0;

        *ret = NULL;
        *ret_size = 0;
        rc = sqlite3_prepare_v2(d->db, "SELECT value FROM key_check WHERE id = 1", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
                const void *p = sqlite3_column_blob(st, 0);
                int n = sqlite3_column_bytes(st, 0);

                *ret = malloc((size_t) n + 1);
                if (!*ret)
                        r = -ENOMEM;
                else {
                        if (n > 0)
                                memcpy(*ret, p, (size_t) n);
                        *ret_size = (size_t) n;
                        r = 1;
                }
        } else if (rc != SQLITE_DONE)
                r = sqlite_to_errno(rc);
        sqlite3_finalize(st);
        return r;
}

static int sq_key_check_set(StoreDb *d, const uint8_t *p, size_t n, bool replace) {
        sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(d->db,
                                replace ? "INSERT OR REPLACE INTO key_check (id, value) VALUES (1, ?1)"
                                        : "INSERT INTO key_check (id, value) VALUES (1, ?1)",
                                -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_blob(st, 1, p, (int) n, SQLITE_STATIC);
        rc = sqlite3_step(st);
        sqlite3_finalize(st);
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

/* The rowid b-tree's last entry: O(log n). */
static int sq_max_id(StoreDb *d, int64_t *ret) {
        return query_int64(d, "SELECT MAX(id) FROM connections", ret);
}

static int sq_row_save(StoreDb *d, const StoreRow *row) {
        sqlite3_stmt *st = d->stmt[STMT_SAVE];
        int r;

        d->error[0] = 0;
        (void) sqlite3_bind_int64(st, 1, row->id);
        bind_text(st, 2, row->text[ROW_PROVIDER]);
        bind_text(st, 3, conn_state_to_string(row->state));
        bind_text(st, 4, row->text[ROW_REQUESTED_SCOPE]);
        bind_text(st, 5, row->text[ROW_SCOPE]);
        bind_text(st, 6, row->text[ROW_IDENTITY]);
        bind_text(st, 7, row->text[ROW_TOKEN_TYPE]);
        bind_sealed(st, 8, row->sealed[0], row->sealed_size[0]);
        bind_sealed(st, 9, row->sealed[1], row->sealed_size[1]);
        (void) sqlite3_bind_int64(st, 10, (sqlite3_int64) row->expires_at);
        (void) sqlite3_bind_int64(st, 11, (sqlite3_int64) row->obtained_at);
        bind_text(st, 12, row->text[ROW_STATE_HASH]);
        bind_sealed(st, 13, row->sealed[2], row->sealed_size[2]);
        (void) sqlite3_bind_int64(st, 14, (sqlite3_int64) row->pending_until);
        bind_text(st, 15, row->users);
        bind_text(st, 16, row->groups);
        bind_text(st, 17, row->text[ROW_LAST_ERROR]);
        (void) sqlite3_bind_int64(st, 18, (sqlite3_int64) row->refreshes);
        (void) sqlite3_bind_int64(st, 19, (sqlite3_int64) row->updated_at);
        (void) sqlite3_bind_int64(st, 20, (sqlite3_int64) row->last_refresh_at);
        bind_text(st, 21, row->text[ROW_USERNAME]);
        (void) sqlite3_bind_int64(st, 22, (sqlite3_int64) row->device_interval);
        bind_text(st, 23, row->text[ROW_PARAMS]);
        bind_text(st, 24, row->text[ROW_METADATA]);
        (void) sqlite3_bind_int64(st, 25, (sqlite3_int64) row->rt_end);
        (void) sqlite3_bind_int64(st, 26, (sqlite3_int64) row->rt_warned);
        r = step_done(st);
        if (r >= 0 && sqlite3_changes(d->db) != 1) {
                set_error(d, "connection %" PRId64 " is not in the store", row->id);
                r = -ENOENT;
        }
        return r;
}

/* The bare row, then the image: one statement each, inside the caller's
 * transaction. */
static int sq_row_insert(StoreDb *d, const StoreRow *row) {
        sqlite3_stmt *st = d->stmt[STMT_INSERT];
        int r;

        d->error[0] = 0;
        bind_text(st, 1, row->text[ROW_NAME]);
        bind_text(st, 2, row->text[ROW_PROVIDER]);
        bind_text(st, 3, conn_state_to_string(row->state));
        (void) sqlite3_bind_int64(st, 4, (sqlite3_int64) row->created_at);
        (void) sqlite3_bind_int64(st, 5, row->id);
        r = step_done(st);
        if (r < 0)
                return r;
        return sq_row_save(d, row);
}

static int sq_row_delete(StoreDb *d, int64_t id) {
        sqlite3_stmt *st = d->stmt[STMT_DELETE];

        d->error[0] = 0;
        (void) sqlite3_bind_int64(st, 1, id);
        return step_done(st);
}

static char *column_text(sqlite3_stmt *st, int i) {
        return sqlite3_column_type(st, i) == SQLITE_NULL ? NULL : (char *) sqlite3_column_text(st, i);
}

static void column_sealed(sqlite3_stmt *st, int i, uint8_t **p, size_t *n) {
        if (sqlite3_column_type(st, i) == SQLITE_NULL) {
                *p = NULL;
                *n = 0;
                return;
        }
        *n = (size_t) sqlite3_column_bytes(st, i);
        *p = (uint8_t *) (sqlite3_column_blob(st, i) ?: "");
}

static int sq_rows_load(StoreDb *d, int (*fn)(const StoreRow *row, void *userdata), void *userdata) {
        static const char sql[] =
                "SELECT id, name, provider, state, requested_scope, scope, identity, token_type, "
                "access_token, refresh_token, expires_at, obtained_at, state_hash, code_verifier, "
                "pending_until, allow_users, allow_groups, last_error, refreshes, created_at, "
                "updated_at, last_refresh_at, username, device_interval, params, metadata, rt_end, rt_warned "
                "FROM connections ORDER BY id";
        sqlite3_stmt *st = NULL;
        int rc, r = 0;

        d->error[0] = 0;
        rc = sqlite3_prepare_v2(d->db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);

        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                StoreRow row = {
                        .id = sqlite3_column_int64(st, 0),
                        .expires_at = (usec_t) sqlite3_column_int64(st, 10),
                        .obtained_at = (usec_t) sqlite3_column_int64(st, 11),
                        .pending_until = (usec_t) sqlite3_column_int64(st, 14),
                        .refreshes = (uint64_t) sqlite3_column_int64(st, 18),
                        .created_at = (usec_t) sqlite3_column_int64(st, 19),
                        .updated_at = (usec_t) sqlite3_column_int64(st, 20),
                        .last_refresh_at = (usec_t) sqlite3_column_int64(st, 21),
                        .device_interval = (usec_t) sqlite3_column_int64(st, 23),
                        .rt_end = (usec_t) sqlite3_column_int64(st, 26),
                        .rt_warned = (usec_t) sqlite3_column_int64(st, 27),
                };
                const char *users = column_text(st, 15), *groups = column_text(st, 16);

                row.state = conn_state_from_string(column_text(st, 3) ?: "");
                if (row.state < 0) {
                        set_error(d, "connection %" PRId64 ": invalid state", row.id);
                        r = -EBADMSG;
                        break;
                }
                row.text[ROW_NAME] = column_text(st, 1);
                row.text[ROW_PROVIDER] = column_text(st, 2);
                row.text[ROW_REQUESTED_SCOPE] = column_text(st, 4);
                row.text[ROW_SCOPE] = column_text(st, 5);
                row.text[ROW_IDENTITY] = column_text(st, 6);
                row.text[ROW_TOKEN_TYPE] = column_text(st, 7);
                row.text[ROW_STATE_HASH] = column_text(st, 12);
                row.text[ROW_LAST_ERROR] = column_text(st, 17);
                row.text[ROW_USERNAME] = column_text(st, 22);
                row.text[ROW_PARAMS] = column_text(st, 24);
                row.text[ROW_METADATA] = column_text(st, 25);
                column_sealed(st, 8, &row.sealed[0], &row.sealed_size[0]);
                column_sealed(st, 9, &row.sealed[1], &row.sealed_size[1]);
                column_sealed(st, 13, &row.sealed[2], &row.sealed_size[2]);
                snprintf(row.users, sizeof row.users, "%s", users ?: "");
                snprintf(row.groups, sizeof row.groups, "%s", groups ?: "");

                r = fn(&row, userdata);
                if (r < 0)
                        break;
        }
        if (r >= 0 && rc != SQLITE_DONE)
                r = sqlite_to_errno(rc);
        sqlite3_finalize(st);
        return r;
}

static int sq_sealed_next(StoreDb *d, int64_t after, int64_t *ret_id, uint8_t *ret[STORE_SEALED_MAX],
                          size_t ret_size[STORE_SEALED_MAX]) {
        sqlite3_stmt *st = d->stmt[STMT_SEALED_NEXT];
        int rc, r = 1;

        for (size_t j = 0; j < STORE_SEALED_MAX; j++) {
                ret[j] = NULL;
                ret_size[j] = 0;
        }
        (void) sqlite3_bind_int64(st, 1, after);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW) {
                r = rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
                (void) sqlite3_reset(st);
                return r;
        }
        *ret_id = sqlite3_column_int64(st, 0);
        for (size_t j = 0; j < STORE_SEALED_MAX && r >= 0; j++) {
                uint8_t *p;
                size_t n;

                column_sealed(st, (int) j + 1, &p, &n);
                if (!p)
                        continue;
                ret[j] = malloc(n + 1);
                if (!ret[j]) {
                        r = -ENOMEM;
                        break;
                }
                memcpy(ret[j], p, n);
                ret_size[j] = n;
        }
        (void) sqlite3_reset(st);
        if (r < 0)
                for (size_t j = 0; j < STORE_SEALED_MAX; j++)
                        ret[j] = mfree(ret[j]);
        return r;
}

static int sq_sealed_update(StoreDb *d, int64_t id, uint8_t *const sealed[STORE_SEALED_MAX],
                            const size_t size[STORE_SEALED_MAX]) {
        sqlite3_stmt *st = d->stmt[STMT_SEALED_UPDATE];

        (void) sqlite3_bind_int64(st, 1, id);
        for (size_t j = 0; j < STORE_SEALED_MAX; j++)
                bind_sealed(st, (int) j + 2, sealed[j], size[j]);
        return step_done(st);
}

/* The old pages with the values are zeroed in the file (secure_delete),
 * but older copies may sit in the WAL: fold it in and cut it to nothing.
 * Best effort: a reader may hold it open. */
static void sq_forget_old_values(StoreDb *d) {
        (void) sqlite3_wal_checkpoint_v2(d->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
}

static int sq_event_add(StoreDb *d, usec_t at, const char *connection, const char *kind, const char *message) {
        sqlite3_stmt *st = d->stmt[STMT_EVENT_ADD];
        sqlite3_int64 id;
        int r;

        d->error[0] = 0;
        (void) sqlite3_bind_int64(st, 1, (sqlite3_int64) at);
        bind_text(st, 2, connection);
        bind_text(st, 3, kind);
        bind_text(st, 4, message);
        r = step_done(st);
        if (r < 0)
                return r;
        id = sqlite3_last_insert_rowid(d->db);
        if (id > STORE_EVENTS_MAX && id % 64 == 0) {
                st = d->stmt[STMT_EVENT_TRIM];
                (void) sqlite3_bind_int64(st, 1, id - STORE_EVENTS_MAX);
                r = step_done(st);
        }
        return r;
}

static int sq_events_list(StoreDb *d, const char *connection, int64_t before_id, unsigned limit,
                          int (*fn)(const StoreEvent *e, void *userdata), void *userdata) {
        static const char sql[] =
                "SELECT id, at, connection, kind, message FROM events "
                "WHERE (?1 IS NULL OR connection = ?1) AND (?2 <= 0 OR id < ?2) "
                "ORDER BY id DESC LIMIT ?3";
        sqlite3_stmt *st = NULL;
        int rc, r = 0;

        d->error[0] = 0;
        rc = sqlite3_prepare_v2(d->db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        bind_text(st, 1, connection);
        (void) sqlite3_bind_int64(st, 2, before_id);
        (void) sqlite3_bind_int64(st, 3, limit);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                StoreEvent e = {
                        .id = sqlite3_column_int64(st, 0),
                        .at = (usec_t) sqlite3_column_int64(st, 1),
                        .connection = (const char *) sqlite3_column_text(st, 2),
                        .kind = (const char *) sqlite3_column_text(st, 3),
                        .message = (const char *) sqlite3_column_text(st, 4),
                };
                r = fn(&e, userdata);
                if (r < 0)
                        break;
        }
        if (r >= 0 && rc != SQLITE_DONE)
                r = sqlite_to_errno(rc);
        sqlite3_finalize(st);
        return r;
}

/* The daemon's flock on state_dir guards the file. */
static int sq_lock_single_node(StoreDb *d _unused_) {
        return 0;
}

static int sq_lock_node(StoreDb *d _unused_, const char *node _unused_) {
        return 0;
}

sqlite3 *store_sqlite_db(StoreDb *d) {
        return d->db;
}

const StoreEngine store_engine_sqlite = {
        .name = "sqlite",
        .open = sq_open,
        .close = sq_close,
        .error = sq_error,
        .schema_version = sq_schema_version,
        .begin = sq_begin,
        .commit = sq_commit,
        .rollback = sq_rollback,
        .key_check_get = sq_key_check_get,
        .key_check_set = sq_key_check_set,
        .max_id = sq_max_id,
        .row_insert = sq_row_insert,
        .row_save = sq_row_save,
        .row_delete = sq_row_delete,
        .rows_load = sq_rows_load,
        .sealed_next = sq_sealed_next,
        .sealed_update = sq_sealed_update,
        .forget_old_values = sq_forget_old_values,
        .lock_single_node = sq_lock_single_node,
        .lock_node = sq_lock_node,
        .event_add = sq_event_add,
        .events_list = sq_events_list,
};
