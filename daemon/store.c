/* SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/intern.h"
#include "common/util.h"
#include "daemon/crypt.h"
#include "daemon/store.h"

enum {
        STMT_INSERT,
        STMT_SAVE,
        STMT_DELETE,
        STMT_EVENT_ADD,
        STMT_EVENT_TRIM,
        _STMT_MAX,
};

static const char *const stmt_sql[_STMT_MAX] = {
        [STMT_INSERT] =
                "INSERT INTO connections (id, name, provider, state, created_at, updated_at) "
                "VALUES (?5, ?1, ?2, ?3, ?4, ?4)",   /* ?5 NULL: the next rowid */
        [STMT_SAVE] =
                "UPDATE connections SET provider = ?2, state = ?3, requested_scope = ?4, scope = ?5, "
                "identity = ?6, token_type = ?7, access_token = ?8, refresh_token = ?9, "
                "expires_at = ?10, obtained_at = ?11, state_hash = ?12, code_verifier = ?13, "
                "pending_until = ?14, allow_users = ?15, allow_groups = ?16, last_error = ?17, "
                "refreshes = ?18, updated_at = ?19, last_refresh_at = ?20, username = ?21, "
                "device_interval = ?22 WHERE id = ?1",
        [STMT_DELETE] = "DELETE FROM connections WHERE id = ?1",
        [STMT_EVENT_ADD] = "INSERT INTO events (at, connection, kind, message) VALUES (?1, ?2, ?3, ?4)",
        /* Keep the table bounded: the integer key grows by one per event. */
        [STMT_EVENT_TRIM] = "DELETE FROM events WHERE id <= ?1",
};

struct Store {
        sqlite3 *db;               /* first: the unit tests peek at it */
        sqlite3_stmt *stmt[_STMT_MAX];
        unsigned version;
        CryptKey *key;             /* seals the secret columns; wiped on close */
        char error[256];           /* what went wrong beyond SQLite, if anything */
        int64_t next_id;           /* store_connection_id_new() */
        char *path;
};

/* The secret columns, sealed with the row's id and the column's name as
 * associated data (see seal_aad()). */
static const char *const sealed_columns[] = { "access_token", "refresh_token", "code_verifier" };

/* The key check: this constant, sealed under the key, in key_check. */
#define KEY_CHECK_AAD "tokenbroker key_check"
#define KEY_CHECK_TEXT "tokenbroker: the key that sealed this database"

const char *store_last_error(Store *s) {
        if (!s || !s->db)
                return "out of memory";
        return s->error[0] ? s->error : sqlite3_errmsg(s->db);
}

_printf_(2, 3) static void store_set_error(Store *s, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(s->error, sizeof s->error, fmt, ap);
        va_end(ap);
}

unsigned store_schema_version(Store *s) {
        return s->version;
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

static int exec(Store *s, const char *sql) {
        return sqlite_to_errno(sqlite3_exec(s->db, sql, NULL, NULL, NULL));
}

Store *store_close(Store *s) {
        if (!s)
                return NULL;
        for (size_t i = 0; i < _STMT_MAX; i++)
                sqlite3_finalize(s->stmt[i]);
        if (s->db)
                sqlite3_close_v2(s->db);
        crypt_key_free(s->key);
        free(s->path);
        free(s);
        return NULL;
}

static int store_get_version(Store *s, unsigned *ret) {
        sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(s->db, "SELECT version FROM schema_version", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        rc = sqlite3_step(st);
        *ret = rc == SQLITE_ROW ? (unsigned) sqlite3_column_int(st, 0) : 0;
        sqlite3_finalize(st);
        return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

/* Each migration and the version bump commit together: a crash mid-way
 * leaves the previous version intact. */
static int store_migrate(Store *s) {
        unsigned v;
        int r;

        r = exec(s, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
        if (r < 0)
                return r;
        r = store_get_version(s, &v);
        if (r < 0)
                return r;
        if (v > store_migrations[store_n_migrations - 1].version)
                return -EPROTONOSUPPORT;   /* a newer tokenbroker wrote this */

        for (size_t i = 0; i < store_n_migrations; i++) {
                const Migration *m = &store_migrations[i];
                char bump[128];

                if (m->version <= v)
                        continue;
                r = exec(s, "BEGIN IMMEDIATE");
                if (r < 0)
                        return r;
                snprintf(bump, sizeof bump,
                         "DELETE FROM schema_version; INSERT INTO schema_version VALUES (%u)", m->version);
                r = exec(s, m->sql);
                if (r >= 0)
                        r = exec(s, bump);
                if (r >= 0)
                        r = exec(s, "COMMIT");
                if (r < 0) {
                        (void) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
                        return r;
                }
                v = m->version;
        }
        s->version = v;
        return 0;
}

static int step_done(sqlite3_stmt *st) {
        int rc = sqlite3_step(st);

        (void) sqlite3_reset(st);
        (void) sqlite3_clear_bindings(st);
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

/* ---- sealing ---------------------------------------------------------- */

/* Where a sealed value belongs: "connections.<column>:<id>". Column names
 * hold no ':' and the id is in decimal, so no two places share their
 * associated data and a value copied elsewhere fails to open. */
#define SEAL_AAD_MAX 64
static size_t seal_aad(char buf[static SEAL_AAD_MAX], int64_t id, const char *column) {
        /* "connections.%s:%" PRId64, by hand: snprintf() was 5 % of the
         * time to load a million rows (two values a row). */
        static const char prefix[] = "connections.";
        size_t n = sizeof(prefix) - 1, k = strlen(column), d = 0;
        uint64_t u = id < 0 ? -(uint64_t) id : (uint64_t) id;
        char digits[20];

        assert(n + k + 2 + sizeof(digits) < SEAL_AAD_MAX);
        memcpy(buf, prefix, n);
        memcpy(buf + n, column, k);
        n += k;
        buf[n++] = ':';
        if (id < 0)
                buf[n++] = '-';
        do {
                digits[d++] = (char) ('0' + u % 10);
                u /= 10;
        } while (u > 0);
        while (d > 0)
                buf[n++] = digits[--d];
        buf[n] = 0;
        return n;
}

static int seal_value(Store *s, int64_t id, const char *column, const void *p, size_t n, uint8_t **ret,
                      size_t *ret_size) {
        char aad[SEAL_AAD_MAX];

        return crypt_seal(s->key, aad, seal_aad(aad, id, column), p, n, ret, ret_size);
}

static int open_value(Store *s, int64_t id, const char *column, const void *p, size_t n, char **ret) {
        char aad[SEAL_AAD_MAX];

        return crypt_open(s->key, aad, seal_aad(aad, id, column), p, n, ret, NULL);
}

/* 1 when key_check holds the constant sealed under our key, 0 when there is
 * no check yet (nothing sealed), -EKEYREJECTED when it was sealed under
 * another key. Reads one row and nothing else. */
static int store_check_key(Store *s) {
        sqlite3_stmt *st = NULL;
        _cleanup_secret_ char *text = NULL;
        size_t n = 0;
        int rc, r;

        rc = sqlite3_prepare_v2(s->db, "SELECT value FROM key_check WHERE id = 1", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW) {
                sqlite3_finalize(st);
                return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
        }
        r = crypt_open(s->key, KEY_CHECK_AAD, strlen(KEY_CHECK_AAD), sqlite3_column_blob(st, 0),
                       (size_t) sqlite3_column_bytes(st, 0), &text, &n);
        sqlite3_finalize(st);
        if (r == -ENOMEM)
                return r;
        if (r < 0 || n != strlen(KEY_CHECK_TEXT) || memcmp(text, KEY_CHECK_TEXT, n) != 0) {
                store_set_error(s, "the database was sealed with another key");
                return -EKEYREJECTED;
        }
        return 1;
}

/* First start with a key on a file of schema version 1: seal the plain
 * secrets of every row and write the key check, all in one transaction, so
 * a crash leaves either the plain file or the sealed one. "No key check"
 * is therefore the same as "nothing sealed yet". Returns how many rows
 * held secrets. */
/* UPDATE connections SET the sealed columns (?2..) WHERE id = ?1: the
 * values of sealed[] (NULL ones as NULL), for the two passes that re-seal
 * every row (sealing a store from before encryption, rotating the key). */
static int update_sealed_row(sqlite3_stmt *upd, int64_t id, uint8_t *const *sealed, const size_t *size) {
        (void) sqlite3_bind_int64(upd, 1, id);
        for (size_t j = 0; j < ELEMENTSOF(sealed_columns); j++)
                if (sealed[j])
                        (void) sqlite3_bind_blob(upd, (int) j + 2, sealed[j], (int) size[j], SQLITE_STATIC);
                else
                        (void) sqlite3_bind_null(upd, (int) j + 2);
        return step_done(upd);
}

static int store_seal_plain(Store *s) {
        static const char sel_sql[] =
                "SELECT id, access_token, refresh_token, code_verifier FROM connections "
                "WHERE id > ?1 ORDER BY id LIMIT 1";
        static const char upd_sql[] =
                "UPDATE connections SET access_token = ?2, refresh_token = ?3, code_verifier = ?4 WHERE id = ?1";
        sqlite3_stmt *sel = NULL, *upd = NULL, *ins = NULL;
        _cleanup_free_ uint8_t *check = NULL;
        size_t check_size;
        int64_t last = 0;
        int rc, r, n = 0;

        r = exec(s, "BEGIN IMMEDIATE");
        if (r < 0)
                return r;
        /* Another broker on the same file may have been first. */
        r = store_check_key(s);
        if (r != 0) {
                (void) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
                return r < 0 ? r : 0;
        }

        rc = sqlite3_prepare_v2(s->db, sel_sql, -1, &sel, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v2(s->db, upd_sql, -1, &upd, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v2(s->db, "INSERT INTO key_check (id, value) VALUES (1, ?1)", -1, &ins,
                                        NULL);
        r = sqlite_to_errno(rc);

        /* One row at a time by id: the scan never meets a row it changed. */
        while (r >= 0) {
                uint8_t *sealed[ELEMENTSOF(sealed_columns)] = {};
                size_t size[ELEMENTSOF(sealed_columns)] = {};
                bool any = false;
                int64_t id;

                (void) sqlite3_bind_int64(sel, 1, last);
                rc = sqlite3_step(sel);
                if (rc != SQLITE_ROW) {
                        r = rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
                        (void) sqlite3_reset(sel);
                        break;
                }
                id = sqlite3_column_int64(sel, 0);
                for (size_t j = 0; j < ELEMENTSOF(sealed_columns) && r >= 0; j++) {
                        const void *p;
                        int m;

                        if (sqlite3_column_type(sel, (int) j + 1) == SQLITE_NULL)
                                continue;
                        p = sqlite3_column_blob(sel, (int) j + 1);
                        m = sqlite3_column_bytes(sel, (int) j + 1);
                        if (!p && m > 0)
                                r = -ENOMEM;
                        else
                                r = seal_value(s, id, sealed_columns[j], p ?: "", (size_t) m, &sealed[j],
                                               &size[j]);
                        any = true;
                }
                (void) sqlite3_reset(sel);
                if (r >= 0 && any) {
                        r = update_sealed_row(upd, id, sealed, size);
                        if (r >= 0)
                                n++;
                }
                for (size_t j = 0; j < ELEMENTSOF(sealed_columns); j++)
                        free(sealed[j]);
                last = id;
        }

        if (r >= 0)
                r = crypt_seal(s->key, KEY_CHECK_AAD, strlen(KEY_CHECK_AAD), KEY_CHECK_TEXT,
                               strlen(KEY_CHECK_TEXT), &check, &check_size);
        if (r >= 0) {
                (void) sqlite3_bind_blob(ins, 1, check, (int) check_size, SQLITE_STATIC);
                r = step_done(ins);
        }
        sqlite3_finalize(sel);
        sqlite3_finalize(upd);
        sqlite3_finalize(ins);
        if (r >= 0)
                r = exec(s, "COMMIT");
        if (r < 0) {
                (void) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
                return r;
        }
        /* The old pages with the plain values are zeroed in the file
         * (secure_delete), but older copies may sit in the WAL: fold it in
         * and cut it to nothing. Best effort: a reader may hold it open. */
        if (n > 0)
                (void) sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        return n;
}

/* Key rotation: every sealed value opened under the store's key and
 * sealed again under new_key, and the key check replaced, in one
 * transaction: a crash before COMMIT leaves the file as it was (it opens
 * with the old key), after it the file opens with the new key only.
 * before_commit (may be NULL) runs inside the transaction, just before
 * COMMIT (a test hook). Returns how many connections held sealed values.
 * On success the store itself goes on with new_key. */
int store_rekey(Store *s, const CryptKey *new_key, const char *event_message, void (*before_commit)(void),
                int *ret_n) {
        static const char sel_sql[] =
                "SELECT id, access_token, refresh_token, code_verifier FROM connections "
                "WHERE id > ?1 ORDER BY id LIMIT 1";
        static const char upd_sql[] =
                "UPDATE connections SET access_token = ?2, refresh_token = ?3, code_verifier = ?4 WHERE id = ?1";
        _cleanup_(crypt_key_freep) CryptKey *nk = NULL;
        sqlite3_stmt *sel = NULL, *upd = NULL, *chk = NULL, *ev = NULL;
        _cleanup_free_ uint8_t *check = NULL;
        size_t check_size;
        int64_t last = 0;
        int rc, r, n = 0;

        r = crypt_key_dup(new_key, &nk);
        if (r < 0)
                return r;
        r = exec(s, "BEGIN IMMEDIATE");
        if (r < 0)
                return r;
        /* Under the write lock: still sealed with our key. */
        r = store_check_key(s);
        if (r < 0) {
                (void) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
                return r;
        }
        rc = sqlite3_prepare_v2(s->db, sel_sql, -1, &sel, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v2(s->db, upd_sql, -1, &upd, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO key_check (id, value) VALUES (1, ?1)", -1,
                                        &chk, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v2(s->db, "INSERT INTO events (at, connection, kind, message) "
                                               "VALUES (?1, NULL, 'key-rotated', ?2)", -1, &ev, NULL);
        r = sqlite_to_errno(rc);

        /* One row at a time by id, as store_seal_plain(). */
        while (r >= 0) {
                uint8_t *sealed[ELEMENTSOF(sealed_columns)] = {};
                size_t size[ELEMENTSOF(sealed_columns)] = {};
                bool any = false;
                int64_t id;

                (void) sqlite3_bind_int64(sel, 1, last);
                rc = sqlite3_step(sel);
                if (rc != SQLITE_ROW) {
                        r = rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
                        (void) sqlite3_reset(sel);
                        break;
                }
                id = sqlite3_column_int64(sel, 0);
                for (size_t j = 0; j < ELEMENTSOF(sealed_columns) && r >= 0; j++) {
                        char aad[SEAL_AAD_MAX], *plain = NULL;
                        size_t aad_size = seal_aad(aad, id, sealed_columns[j]), m = 0;

                        if (sqlite3_column_type(sel, (int) j + 1) == SQLITE_NULL)
                                continue;
                        r = crypt_open(s->key, aad, aad_size, sqlite3_column_blob(sel, (int) j + 1),
                                       (size_t) sqlite3_column_bytes(sel, (int) j + 1), &plain, &m);
                        if (r == -EBADMSG) {
                                store_set_error(s, "a sealed value does not open with the current key");
                                r = -EKEYREJECTED;
                        }
                        if (r >= 0)
                                r = crypt_seal(nk, aad, aad_size, plain, m, &sealed[j], &size[j]);
                        if (plain) {
                                explicit_wipe(plain, m);
                                free(plain);
                        }
                        any = true;
                }
                (void) sqlite3_reset(sel);
                if (r >= 0 && any) {
                        r = update_sealed_row(upd, id, sealed, size);
                        if (r >= 0)
                                n++;
                }
                for (size_t j = 0; j < ELEMENTSOF(sealed_columns); j++)
                        free(sealed[j]);
                last = id;
        }

        if (r >= 0)
                r = crypt_seal(nk, KEY_CHECK_AAD, strlen(KEY_CHECK_AAD), KEY_CHECK_TEXT, strlen(KEY_CHECK_TEXT),
                               &check, &check_size);
        if (r >= 0) {
                (void) sqlite3_bind_blob(chk, 1, check, (int) check_size, SQLITE_STATIC);
                r = step_done(chk);
        }
        if (r >= 0 && event_message) {
                (void) sqlite3_bind_int64(ev, 1, (sqlite3_int64) now(CLOCK_REALTIME));
                (void) sqlite3_bind_text(ev, 2, event_message, -1, SQLITE_STATIC);
                r = step_done(ev);
        }
        sqlite3_finalize(sel);
        sqlite3_finalize(upd);
        sqlite3_finalize(chk);
        sqlite3_finalize(ev);
        if (r >= 0 && before_commit)
                before_commit();
        if (r >= 0)
                r = exec(s, "COMMIT");
        if (r < 0) {
                (void) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
                return r;
        }
        crypt_key_free(s->key);
        s->key = TAKE_PTR(nk);
        /* Values under the old key may sit in the WAL: fold it in. */
        (void) sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        if (ret_n)
                *ret_n = n;
        return 0;
}

/* The rowid b-tree's last entry: O(log n). */
static int store_max_id(Store *s, int64_t *ret) {
        sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(s->db, "SELECT MAX(id) FROM connections", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        rc = sqlite3_step(st);
        *ret = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
        sqlite3_finalize(st);
        return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

int64_t store_connection_id_new(Store *s) {
        return s->next_id++;
}

int store_open(const char *path, const CryptKey *key, Store **ret) {
        _cleanup_(store_closep) Store *s = NULL;
        int rc, r, sealed;

        assert(key);

        s = new0(Store, 1);
        if (!s)
                return -ENOMEM;
        rc = sqlite3_open_v2(path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
                                     SQLITE_OPEN_EXRESCODE,
                             NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc & 0xff);

        /* WAL with synchronous=FULL: a commit is fsynced before it returns,
         * so a token change is durable when the call that made it returns. */
        r = exec(s, "PRAGMA journal_mode = WAL");
        if (r >= 0)
                r = exec(s, "PRAGMA synchronous = FULL");
        if (r >= 0)
                r = exec(s, "PRAGMA foreign_keys = ON");
        if (r >= 0)
                r = exec(s, "PRAGMA secure_delete = ON");   /* freed pages held tokens */
        if (r < 0)
                return r;
        (void) sqlite3_busy_timeout(s->db, 5000);

        r = store_migrate(s);
        if (r < 0)
                return r;

        /* The key is checked before any row is read or written. */
        r = crypt_key_dup(key, &s->key);
        if (r < 0)
                return r;
        r = store_check_key(s);
        if (r == 0)
                r = store_seal_plain(s);
        else if (r > 0)
                r = 0;
        if (r < 0)
                return r;
        sealed = r;

        for (size_t i = 0; i < _STMT_MAX; i++) {
                rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[i], NULL);
                if (rc != SQLITE_OK)
                        return sqlite_to_errno(rc);
        }
        r = store_max_id(s, &s->next_id);
        if (r < 0)
                return r;
        s->next_id++;
        s->path = strdup(path);
        if (!s->path)
                return -ENOMEM;
        *ret = TAKE_PTR(s);
        return sealed;
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

static int id_list_format(const unsigned *ids, unsigned n, char *buf, size_t size) {
        size_t off = 0;

        buf[0] = 0;
        for (unsigned i = 0; i < n; i++) {
                int k = snprintf(buf + off, size - off, "%s%u", i ? "," : "", ids[i]);
                if (k < 0 || (size_t) k >= size - off)
                        return -E2BIG;
                off += (size_t) k;
        }
        return 0;
}

static void id_list_parse(const char *s, unsigned *ids, unsigned *n) {
        *n = 0;
        while (s && *s && *n < ACL_MAX) {
                char *end;
                unsigned long u = strtoul(s, &end, 10);
                if (end == s)
                        break;
                ids[(*n)++] = (unsigned) u;
                s = *end == ',' ? end + 1 : end;
                if (*end != ',')
                        break;
        }
}

/* ---- row images ------------------------------------------------------ */

enum {
        ROW_NAME,
        ROW_PROVIDER,
        ROW_REQUESTED_SCOPE,
        ROW_SCOPE,
        ROW_IDENTITY,
        ROW_TOKEN_TYPE,
        ROW_STATE_HASH,
        ROW_LAST_ERROR,
        ROW_USERNAME,
        _ROW_TEXT_MAX,
};

struct StoreRow {
        int64_t id;
        ConnState state;
        char *text[_ROW_TEXT_MAX];
        char users[ACL_MAX * 12], groups[ACL_MAX * 12];
        uint8_t *sealed[ELEMENTSOF(sealed_columns)];   /* ciphertext, bound to id */
        size_t sealed_size[ELEMENTSOF(sealed_columns)];
        usec_t expires_at, obtained_at, pending_until, created_at, updated_at, last_refresh_at, device_interval;
        uint64_t refreshes;
};

StoreRow *store_row_free(StoreRow *row) {
        if (!row)
                return NULL;
        for (size_t i = 0; i < _ROW_TEXT_MAX; i++)
                free(row->text[i]);
        for (size_t j = 0; j < ELEMENTSOF(sealed_columns); j++)
                free(row->sealed[j]);
        free(row);
        return NULL;
}

/* Seals every secret again, each with a fresh nonce: this runs on writes
 * only (a grant, a refresh, a new authorization), never on a handout. */
int store_row_new(Store *s, const Connection *c, StoreRow **ret) {
        _cleanup_(store_row_freep) StoreRow *row = NULL;
        const char *text[_ROW_TEXT_MAX] = {
                [ROW_NAME] = c->name,
                [ROW_PROVIDER] = c->provider,
                [ROW_REQUESTED_SCOPE] = c->requested_scope,
                [ROW_SCOPE] = c->scope,
                [ROW_IDENTITY] = c->identity,
                [ROW_TOKEN_TYPE] = c->token_type,
                [ROW_STATE_HASH] = c->state_hash,
                [ROW_LAST_ERROR] = c->last_error,
                [ROW_USERNAME] = c->username,
        };
        const char *secret[ELEMENTSOF(sealed_columns)] = { c->access_token, c->refresh_token, c->code_verifier };
        int r;

        row = new0(StoreRow, 1);
        if (!row)
                return -ENOMEM;
        *row = (StoreRow) {
                .id = c->id,
                .state = c->state,
                .expires_at = c->expires_at,
                .obtained_at = c->obtained_at,
                .pending_until = c->pending_until,
                .created_at = c->created_at,
                .updated_at = c->updated_at,
                .last_refresh_at = c->last_refresh_at,
                .device_interval = connection_device_interval(c),
                .refreshes = c->refreshes,
        };
        r = id_list_format((const unsigned *) c->allow_users, c->n_allow_users, row->users, sizeof row->users);
        if (r < 0)
                return r;
        r = id_list_format((const unsigned *) connection_allow_groups(c), c->n_allow_groups, row->groups, sizeof row->groups);
        if (r < 0)
                return r;
        for (size_t i = 0; i < _ROW_TEXT_MAX; i++)
                if (text[i] && !(row->text[i] = strdup(text[i])))
                        return -ENOMEM;
        for (size_t j = 0; j < ELEMENTSOF(sealed_columns); j++)
                if (secret[j]) {
                        r = seal_value(s, c->id, sealed_columns[j], secret[j], strlen(secret[j]), &row->sealed[j],
                                       &row->sealed_size[j]);
                        if (r < 0)
                                return r;
                }
        *ret = TAKE_PTR(row);
        return 0;
}

static int row_save(Store *s, const StoreRow *row) {
        sqlite3_stmt *st = s->stmt[STMT_SAVE];
        int r;

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
        r = step_done(st);
        if (r >= 0 && sqlite3_changes(s->db) != 1) {
                store_set_error(s, "connection %" PRId64 " is not in the store", row->id);
                r = -ENOENT;
        }
        return r;
}

/* The bare row with the given id (0: the next rowid); returns the id. */
static int row_insert_bare(Store *s, const Connection *c, int64_t id, int64_t *ret_id) {
        sqlite3_stmt *st = s->stmt[STMT_INSERT];
        int r;

        bind_text(st, 1, c->name);
        bind_text(st, 2, c->provider);
        bind_text(st, 3, conn_state_to_string(c->state));
        (void) sqlite3_bind_int64(st, 4, (sqlite3_int64) c->created_at);
        if (id > 0)
                (void) sqlite3_bind_int64(st, 5, id);
        else
                (void) sqlite3_bind_null(st, 5);
        r = step_done(st);
        if (r < 0)
                return r;
        *ret_id = sqlite3_last_insert_rowid(s->db);
        if (*ret_id >= s->next_id)
                s->next_id = *ret_id + 1;
        return 0;
}

/* Insert and the first save are one transaction: one fsync, and no
 * half-written row can hold the name after a failure or a crash. */
int store_connection_insert(Store *s, Connection *c) {
        int64_t given = c->id, id = 0;
        int r;

        s->error[0] = 0;
        r = exec(s, "BEGIN IMMEDIATE");
        if (r < 0)
                return r;
        r = row_insert_bare(s, c, given, &id);
        if (r >= 0) {
                c->id = id;
                r = store_connection_save(s, c);
        }
        if (r >= 0)
                r = exec(s, "COMMIT");
        if (r < 0) {
                (void) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
                c->id = given;
        }
        return r;
}

int store_connection_save(Store *s, const Connection *c) {
        _cleanup_(store_row_freep) StoreRow *row = NULL;
        int r;

        s->error[0] = 0;
        r = store_row_new(s, c, &row);
        if (r < 0)
                return r;
        return row_save(s, row);
}

int store_connection_delete(Store *s, int64_t id) {
        sqlite3_stmt *st = s->stmt[STMT_DELETE];

        s->error[0] = 0;
        (void) sqlite3_bind_int64(st, 1, id);
        return step_done(st);
}

static int column_strdup(sqlite3_stmt *st, int i, char **ret) {
        const unsigned char *t;
        int n;

        if (sqlite3_column_type(st, i) == SQLITE_NULL) {
                *ret = NULL;
                return 0;
        }
        t = sqlite3_column_blob(st, i);
        n = sqlite3_column_bytes(st, i);
        if (!t && n > 0)
                return -ENOMEM;
        *ret = strndup(t ? (const char *) t : "", (size_t) n);
        return *ret ? 0 : -ENOMEM;
}

/* A column of few distinct values (provider, scopes, token type): a
 * reference to its interned copy, not a copy of its own. */
static int column_intern(sqlite3_stmt *st, int i, const char **ret) {
        const unsigned char *t;
        int n;

        if (sqlite3_column_type(st, i) == SQLITE_NULL) {
                *ret = NULL;
                return 0;
        }
        t = sqlite3_column_blob(st, i);
        n = sqlite3_column_bytes(st, i);
        if (!t && n > 0)
                return -ENOMEM;
        *ret = intern_n(t ? (const char *) t : "", (size_t) n);
        return *ret ? 0 : -ENOMEM;
}

/* A secret column: opened under the key, bound to this row and column. A
 * value that does not open stops the load: it was modified, copied from
 * another row or column, or sealed under another key. */
static int column_unseal(Store *s, sqlite3_stmt *st, int i, const Connection *c, const char *column,
                         char **ret) {
        const void *p;
        int n, r;

        if (sqlite3_column_type(st, i) == SQLITE_NULL) {
                *ret = NULL;
                return 0;
        }
        p = sqlite3_column_blob(st, i);
        n = sqlite3_column_bytes(st, i);
        if (!p && n > 0)
                return -ENOMEM;
        r = open_value(s, c->id, column, p ?: "", (size_t) n, ret);
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                store_set_error(s, "connection %" PRId64 " ('%.64s'): %s does not open under this key "
                                "(modified, or copied from elsewhere)", c->id, c->name, column);
                return -EBADMSG;
        }
        return 0;
}

size_t store_connection_count_hint(Store *s) {
        sqlite3_stmt *st = NULL;
        size_t n = 0;

        /* Two lookups at the ends of the rowid tree, where COUNT(*) would
         * read every page of the table. */
        if (sqlite3_prepare_v2(s->db, "SELECT MIN(id), MAX(id) FROM connections", -1, &st, NULL) != SQLITE_OK)
                return 0;
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
                int64_t lo = sqlite3_column_int64(st, 0), hi = sqlite3_column_int64(st, 1);

                if (hi >= lo && (uint64_t) (hi - lo) < SIZE_MAX)
                        n = (size_t) (hi - lo) + 1;
        }
        sqlite3_finalize(st);
        return n;
}

int store_load_connections(Store *s, int (*fn)(Connection *c, void *userdata), void *userdata) {
        static const char sql[] =
                "SELECT id, name, provider, state, requested_scope, scope, identity, token_type, "
                "access_token, refresh_token, expires_at, obtained_at, state_hash, code_verifier, "
                "pending_until, allow_users, allow_groups, last_error, refreshes, created_at, "
                "updated_at, last_refresh_at, username, device_interval FROM connections ORDER BY id";
        sqlite3_stmt *st = NULL;
        int rc, r = 0;

        s->error[0] = 0;
        rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);

        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                _cleanup_(connection_freep) Connection *c = NULL;
                const char *name = (const char *) sqlite3_column_text(st, 1);
                ConnState state;

                if (!name) {
                        if (sqlite3_column_type(st, 1) != SQLITE_NULL) {
                                r = -ENOMEM;
                                break;
                        }
                        store_set_error(s, "connection %" PRId64 ": no name or provider",
                                        (int64_t) sqlite3_column_int64(st, 0));
                        r = -EBADMSG;
                        break;
                }
                c = connection_new(name);
                if (!c) {
                        r = -ENOMEM;
                        break;
                }
                c->id = sqlite3_column_int64(st, 0);
                state = conn_state_from_string((const char *) sqlite3_column_text(st, 3) ?: "");
                if (state < 0) {
                        store_set_error(s, "connection %" PRId64 ": invalid state", c->id);
                        r = -EBADMSG;
                        break;
                }
                c->state = state;
                if ((r = column_intern(st, 2, &c->provider)) < 0 ||
                    (r = column_intern(st, 4, &c->requested_scope)) < 0 ||
                    (r = column_intern(st, 5, &c->scope)) < 0 ||
                    (r = column_strdup(st, 6, &c->identity)) < 0 ||
                    (r = column_intern(st, 7, &c->token_type)) < 0 ||
                    (r = column_strdup(st, 12, &c->state_hash)) < 0 ||
                    (r = column_strdup(st, 17, &c->last_error)) < 0 ||
                    (r = column_strdup(st, 22, &c->username)) < 0)
                        break;
                if (!c->provider) {
                        store_set_error(s, "connection %" PRId64 ": no name or provider", c->id);
                        r = -EBADMSG;
                        break;
                }
                if ((r = column_unseal(s, st, 8, c, "access_token", &c->access_token)) < 0 ||
                    (r = column_unseal(s, st, 9, c, "refresh_token", &c->refresh_token)) < 0 ||
                    (r = column_unseal(s, st, 13, c, "code_verifier", &c->code_verifier)) < 0)
                        break;
                c->expires_at = (usec_t) sqlite3_column_int64(st, 10);
                c->obtained_at = (usec_t) sqlite3_column_int64(st, 11);
                c->pending_until = (usec_t) sqlite3_column_int64(st, 14);
                {
                        unsigned users[ACL_MAX], groups[ACL_MAX], nu, ng;

                        id_list_parse((const char *) sqlite3_column_text(st, 15), users, &nu);
                        id_list_parse((const char *) sqlite3_column_text(st, 16), groups, &ng);
                        if (connection_set_acl(c, users, nu, groups, ng) < 0) {
                                r = -ENOMEM;
                                break;
                        }
                }
                c->refreshes = (uint64_t) sqlite3_column_int64(st, 18);
                c->created_at = (usec_t) sqlite3_column_int64(st, 19);
                c->updated_at = (usec_t) sqlite3_column_int64(st, 20);
                c->last_refresh_at = (usec_t) sqlite3_column_int64(st, 21);
                if (sqlite3_column_int64(st, 23) > 0 &&
                    connection_set_device(c, (usec_t) sqlite3_column_int64(st, 23), NULL, NULL, NULL) < 0) {
                        r = -ENOMEM;
                        break;
                }

                r = fn(TAKE_PTR(c), userdata);
                if (r < 0)
                        break;
        }
        if (r >= 0 && rc != SQLITE_DONE)
                r = sqlite_to_errno(rc);
        sqlite3_finalize(st);
        return r;
}

int store_event_add(Store *s, usec_t at, const char *connection, const char *kind, const char *message) {
        sqlite3_stmt *st = s->stmt[STMT_EVENT_ADD];
        sqlite3_int64 id;
        int r;

        s->error[0] = 0;
        (void) sqlite3_bind_int64(st, 1, (sqlite3_int64) at);
        bind_text(st, 2, connection);
        bind_text(st, 3, kind);
        bind_text(st, 4, message);
        r = step_done(st);
        if (r < 0)
                return r;
        id = sqlite3_last_insert_rowid(s->db);
        if (id > STORE_EVENTS_MAX && id % 64 == 0) {
                st = s->stmt[STMT_EVENT_TRIM];
                (void) sqlite3_bind_int64(st, 1, id - STORE_EVENTS_MAX);
                r = step_done(st);
        }
        return r;
}

int store_events_list(Store *s, const char *connection, int64_t before_id, unsigned limit,
                      int (*fn)(const StoreEvent *e, void *userdata), void *userdata) {
        static const char sql[] =
                "SELECT id, at, connection, kind, message FROM events "
                "WHERE (?1 IS NULL OR connection = ?1) AND (?2 <= 0 OR id < ?2) "
                "ORDER BY id DESC LIMIT ?3";
        sqlite3_stmt *st = NULL;
        int rc, r = 0;

        rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
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

/* ---- the writer: group commit off the loop ----------------------------- */

typedef enum WriteKind {
        WRITE_INSERT,
        WRITE_SAVE,
        WRITE_DELETE,
        WRITE_EVENT,
        WRITE_BARRIER,
} WriteKind;

typedef struct Write {
        struct Write *next;
        WriteKind kind;
        StoreRow *row;                /* insert, save */
        int64_t id;                   /* delete */
        usec_t at;                    /* event */
        char *connection, *event_kind, *message;
        store_done_fn fn;
        void *userdata;
        int result;
        char *error;
} Write;

typedef struct WriteList {
        Write *head, **tail;
        size_t n;
} WriteList;

struct StoreWriter {
        Store *db;                    /* the thread's own handle */
        int efd;                      /* the thread -> the loop: batches done */
        sd_event_source *source;
        pthread_t thread;
        bool started;
        char *stall_path;
        bool unstalled;               /* atomic: the test hook holds nothing from now on */

        pthread_mutex_t lock;
        pthread_cond_t wake;          /* to the thread: work queued, or stop */
        pthread_cond_t idle;          /* from the thread: a batch is done */
        /* under lock */
        WriteList queue;              /* queued, not taken yet */
        WriteList done;               /* committed (or failed), completion not run */
        bool busy;                    /* a batch is being committed */
        bool stopping;

        /* the loop's only */
        WriteList ready;              /* taken from done, completion not run */
        size_t pending;
        bool stopped;
};

static void list_init(WriteList *l) {
        *l = (WriteList) { .tail = &l->head };
}

static void list_append(WriteList *l, Write *x) {
        x->next = NULL;
        *l->tail = x;
        l->tail = &x->next;
        l->n++;
}

static void list_splice(WriteList *to, WriteList *from) {
        if (!from->head)
                return;
        *to->tail = from->head;
        to->tail = from->tail;
        to->n += from->n;
        list_init(from);
}

static Write *list_pop(WriteList *l) {
        Write *x = l->head;

        if (!x)
                return NULL;
        l->head = x->next;
        if (!l->head)
                l->tail = &l->head;
        l->n--;
        x->next = NULL;
        return x;
}

static Write *write_free(Write *x) {
        if (!x)
                return NULL;
        store_row_free(x->row);
        free(x->connection);
        free(x->event_kind);
        free(x->message);
        free(x->error);
        free(x);
        return NULL;
}

/* One change inside the batch's transaction. -ENOENT (a save of a row
 * that is gone) fails that change alone, not the transaction. */
static int write_run(Store *s, Write *x) {
        int64_t id;
        int r;

        s->error[0] = 0;
        switch (x->kind) {
        case WRITE_INSERT: {
                /* the bare row, then the image: as store_connection_insert() */
                Connection bare = {
                        .name = x->row->text[ROW_NAME],
                        .provider = x->row->text[ROW_PROVIDER],
                        .state = x->row->state,
                        .created_at = x->row->created_at,
                };
                r = row_insert_bare(s, &bare, x->row->id, &id);
                if (r >= 0)
                        r = row_save(s, x->row);
                return r;
        }
        case WRITE_SAVE:
                return row_save(s, x->row);
        case WRITE_DELETE:
                return store_connection_delete(s, x->id);
        case WRITE_EVENT:
                return store_event_add(s, x->at, x->connection, x->event_kind, x->message);
        case WRITE_BARRIER:
                return 0;
        }
        return -EINVAL;
}

static void write_failed(Store *s, Write *x, int r) {
        x->result = r;
        free(x->error);
        x->error = strdup(store_last_error(s));
}

/* One transaction for the whole batch, one fsync. If the transaction
 * fails, each change is tried again in a transaction of its own, so one
 * bad change fails alone and the others still commit. */
static void writer_commit(StoreWriter *w, Write *batch) {
        Store *s = w->db;
        bool failed;
        int r;

        r = exec(s, "BEGIN IMMEDIATE");
        failed = r < 0;
        for (Write *x = batch; x && !failed; x = x->next) {
                x->result = write_run(s, x);
                if (x->result == -ENOENT)
                        write_failed(s, x, x->result);
                else if (x->result < 0)
                        failed = true;
        }
        if (!failed)
                failed = exec(s, "COMMIT") < 0;
        if (!failed)
                return;   /* durable: synchronous=FULL fsyncs the WAL at COMMIT */

        (void) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        for (Write *x = batch; x; x = x->next) {
                r = exec(s, "BEGIN IMMEDIATE");
                if (r >= 0)
                        r = write_run(s, x);
                if (r >= 0)
                        r = exec(s, "COMMIT");
                if (r < 0) {
                        write_failed(s, x, r);
                        (void) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
                } else
                        x->result = 0;
        }
}

/* The test hook: hold the batch while the file exists (bounded). */
static void writer_stall(StoreWriter *w) {
        usec_t start;

        if (!w->stall_path)
                return;
        start = now(CLOCK_MONOTONIC);
        while (!__atomic_load_n(&w->stopping, __ATOMIC_RELAXED) && !__atomic_load_n(&w->unstalled, __ATOMIC_RELAXED) &&
               access(w->stall_path, F_OK) >= 0 &&
               now(CLOCK_MONOTONIC) - start < STORE_WRITER_STALL_MAX)
                (void) usleep(5000);
}

static void *writer_thread(void *userdata) {
        StoreWriter *w = userdata;

        pthread_mutex_lock(&w->lock);
        for (;;) {
                WriteList batch;

                while (!w->queue.head && !w->stopping)
                        pthread_cond_wait(&w->wake, &w->lock);
                if (!w->queue.head)
                        break;   /* stopping, and everything is committed */
                list_init(&batch);
                while (w->queue.head && batch.n < STORE_BATCH_MAX)
                        list_append(&batch, list_pop(&w->queue));
                w->busy = true;
                pthread_mutex_unlock(&w->lock);

                writer_stall(w);
                writer_commit(w, batch.head);

                pthread_mutex_lock(&w->lock);
                list_splice(&w->done, &batch);
                w->busy = false;
                pthread_cond_broadcast(&w->idle);
                (void) eventfd_write(w->efd, 1);
        }
        pthread_mutex_unlock(&w->lock);
        return NULL;
}

/* Runs up to max completions, in the order their changes were queued. */
static size_t writer_dispatch(StoreWriter *w, size_t max) {
        size_t n = 0;

        pthread_mutex_lock(&w->lock);
        list_splice(&w->ready, &w->done);
        pthread_mutex_unlock(&w->lock);
        for (Write *x; n < max && (x = list_pop(&w->ready)); n++) {
                assert(w->pending > 0);
                w->pending--;
                if (x->fn)
                        x->fn(x->result, x->error, x->userdata);
                write_free(x);
        }
        return n;
}

/* A batch is STORE_BATCH_MAX changes at most, but several may be done
 * when the loop looks: run a bounded number of completions a wake-up. */
#define DISPATCH_MAX 1024

static int on_writer_done(sd_event_source *src _unused_, int fd, uint32_t revents _unused_, void *userdata) {
        StoreWriter *w = userdata;
        eventfd_t v;

        (void) eventfd_read(fd, &v);
        (void) writer_dispatch(w, DISPATCH_MAX);
        if (w->ready.head)
                (void) eventfd_write(w->efd, 1);   /* the rest on the next turn */
        return 0;
}

int store_writer_new(Store *s, sd_event *event, StoreWriter **ret) {
        _cleanup_(store_writer_freep) StoreWriter *w = NULL;
        const char *stall;
        sigset_t all, old;
        int r;

        w = new0(StoreWriter, 1);
        if (!w)
                return -ENOMEM;
        w->efd = -EBADF;
        list_init(&w->queue);
        list_init(&w->done);
        list_init(&w->ready);
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->wake, NULL);
        pthread_cond_init(&w->idle, NULL);

        r = store_open(s->path, s->key, &w->db);
        if (r < 0)
                return r;
        stall = getenv("TOKENBROKER_TEST_WRITER_STALL");
        if (stall && *stall && !(w->stall_path = strdup(stall)))
                return -ENOMEM;
        w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (w->efd < 0)
                return -errno;
        if (event) {
                r = sd_event_add_io(event, &w->source, w->efd, EPOLLIN, on_writer_done, w);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_description(w->source, "store-writer");
        }

        /* Signals go to the loop's signalfd: none may land on this thread. */
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        r = -pthread_create(&w->thread, NULL, writer_thread, w);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0)
                return r;
        w->started = true;
        *ret = TAKE_PTR(w);
        return 0;
}

static int writer_submit(StoreWriter *w, Write *x) {
        if (w->stopped) {
                write_free(x);
                return -ESHUTDOWN;
        }
        pthread_mutex_lock(&w->lock);
        list_append(&w->queue, x);
        pthread_cond_signal(&w->wake);
        pthread_mutex_unlock(&w->lock);
        w->pending++;
        return 0;
}

static int writer_submit_row(StoreWriter *w, WriteKind kind, StoreRow *row, store_done_fn fn, void *userdata) {
        Write *x = new0(Write, 1);

        if (!x) {
                store_row_free(row);
                return -ENOMEM;
        }
        *x = (Write) { .kind = kind, .row = row, .id = row ? row->id : 0, .fn = fn, .userdata = userdata };
        return writer_submit(w, x);
}

int store_writer_insert(StoreWriter *w, StoreRow *row, store_done_fn fn, void *userdata) {
        assert(row && row->id > 0 && row->text[ROW_NAME] && row->text[ROW_PROVIDER]);
        return writer_submit_row(w, WRITE_INSERT, row, fn, userdata);
}

int store_writer_save(StoreWriter *w, StoreRow *row, store_done_fn fn, void *userdata) {
        assert(row);
        return writer_submit_row(w, WRITE_SAVE, row, fn, userdata);
}

int store_writer_delete(StoreWriter *w, int64_t id, store_done_fn fn, void *userdata) {
        Write *x = new0(Write, 1);

        if (!x)
                return -ENOMEM;
        *x = (Write) { .kind = WRITE_DELETE, .id = id, .fn = fn, .userdata = userdata };
        return writer_submit(w, x);
}

int store_writer_event(StoreWriter *w, usec_t at, const char *connection, const char *kind, const char *message) {
        Write *x = new0(Write, 1);

        if (!x)
                return -ENOMEM;
        *x = (Write) { .kind = WRITE_EVENT, .at = at };
        if ((connection && !(x->connection = strdup(connection))) || (kind && !(x->event_kind = strdup(kind))) ||
            (message && !(x->message = strdup(message)))) {
                write_free(x);
                return -ENOMEM;
        }
        return writer_submit(w, x);
}

int store_writer_barrier(StoreWriter *w, store_done_fn fn, void *userdata) {
        Write *x = new0(Write, 1);

        if (!x)
                return -ENOMEM;
        *x = (Write) { .kind = WRITE_BARRIER, .fn = fn, .userdata = userdata };
        return writer_submit(w, x);
}

size_t store_writer_pending(StoreWriter *w) {
        return w ? w->pending : 0;
}

/* Completions may queue changes (an event after a commit, say), whose own
 * completions may queue more: a few rounds settle any real chain. */
#define FLUSH_ROUNDS_MAX 64

void store_writer_unstall(StoreWriter *w) {
        if (w)
                __atomic_store_n(&w->unstalled, true, __ATOMIC_RELAXED);
}

int store_writer_flush(StoreWriter *w) {
        if (!w || !w->started)
                return 0;
        store_writer_unstall(w);   /* a flush never waits for the test hook */
        for (unsigned round = 0; w->pending > 0; round++) {
                if (round >= FLUSH_ROUNDS_MAX)
                        return -EBUSY;
                pthread_mutex_lock(&w->lock);
                while (w->queue.head || w->busy)
                        pthread_cond_wait(&w->idle, &w->lock);
                pthread_mutex_unlock(&w->lock);
                while (writer_dispatch(w, SIZE_MAX) > 0)
                        ;
        }
        return 0;
}

StoreWriter *store_writer_free(StoreWriter *w) {
        if (!w)
                return NULL;
        if (w->started) {
                (void) store_writer_flush(w);
                pthread_mutex_lock(&w->lock);
                w->stopping = true;
                pthread_cond_signal(&w->wake);
                pthread_mutex_unlock(&w->lock);
                (void) pthread_join(w->thread, NULL);
                w->stopped = true;
                /* what the last round of completions queued: committed by
                 * the thread before it ended; run their completions */
                while (writer_dispatch(w, SIZE_MAX) > 0)
                        ;
        }
        for (Write *x; (x = list_pop(&w->queue));)
                write_free(x);
        sd_event_source_disable_unref(w->source);
        safe_close(w->efd);
        store_close(w->db);
        free(w->stall_path);
        pthread_cond_destroy(&w->idle);
        pthread_cond_destroy(&w->wake);
        pthread_mutex_destroy(&w->lock);
        free(w);
        return NULL;
}
