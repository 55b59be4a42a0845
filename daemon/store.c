/* SPDX-License-Identifier: MIT */

/* The store, the same on every engine (daemon/store-engine.h): sealing,
 * the key check, ids, row images and the writer thread. The SQL is the
 * engine's: daemon/store-sqlite.c (the default, one file) or
 * daemon/store-pg.c (PostgreSQL, several nodes). */

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/crypt.h"
#include "daemon/store-engine.h"
#include "daemon/store.h"

struct Store {
        const StoreEngine *engine;
        StoreDb *db;
        CryptKey *key;             /* seals the secret columns; wiped on close */
        char error[256];           /* what went wrong beyond the engine, if anything */
        int64_t next_id;           /* store_connection_id_new() */
        int64_t count_hint;        /* the number of connections, counted at the first ask (ids with gaps) */
        char *where;               /* the file or URI, for the writer's own handle */
        char *password;            /* the same */
        char *node;                /* the same: StoreOptions.node */
        struct IdPool *ids;        /* several nodes: ids in blocks from the database; NULL on SQLite */
};

static struct IdPool *id_pool_new(void);
static void id_pool_free(struct IdPool *p);
static int64_t id_pool_take(Store *s);

const char *const store_sealed_columns[STORE_SEALED_MAX] = { "access_token", "refresh_token", "code_verifier" };

/* The key check: this constant, sealed under the key, in key_check. */
#define KEY_CHECK_AAD "tokenbroker key_check"
#define KEY_CHECK_TEXT "tokenbroker: the key that sealed this database"

bool store_is_postgresql(const char *where) {
        return where && (startswith(where, "postgresql://") || startswith(where, "postgres://"));
}

const StoreEngine *store_engine_for(const char *where) {
        return store_is_postgresql(where) ? &store_engine_pg : &store_engine_sqlite;
}

const char *store_last_error(Store *s) {
        if (!s || !s->db)
                return "out of memory";
        return s->error[0] ? s->error : s->engine->error(s->db);
}

_printf_(2, 3) static void store_set_error(Store *s, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(s->error, sizeof s->error, fmt, ap);
        va_end(ap);
}

unsigned store_schema_version(Store *s) {
        return s->engine->schema_version(s->db);
}

const char *store_engine_name(Store *s) {
        return s->engine->name;
}

int store_lock_node(Store *s, const char *node) {
        s->error[0] = 0;
        return s->engine->lock_node(s->db, node);
}

int store_lock_single_node(Store *s) {
        s->error[0] = 0;
        return s->engine->lock_single_node(s->db);
}

Store *store_close(Store *s) {
        if (!s)
                return NULL;
        if (s->db)
                s->engine->close(s->db);
        crypt_key_free(s->key);
        id_pool_free(s->ids);
        free(s->where);
        secret_free(s->password);
        free(s->node);
        free(s);
        return NULL;
}

/* Everything in one transaction, or nothing. */
static int begin(Store *s) {
        s->error[0] = 0;
        return s->engine->begin(s->db);
}

static int commit(Store *s) {
        int r = s->engine->commit(s->db);

        if (r < 0)
                s->engine->rollback(s->db);
        return r;
}

static int fail(Store *s, int r) {
        s->engine->rollback(s->db);
        return r;
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

static int open_value_into(Store *s, int64_t id, const char *column, const void *p, size_t n, char *out,
                           size_t cap) {
        char aad[SEAL_AAD_MAX];

        return crypt_open_into(s->key, aad, seal_aad(aad, id, column), p, n, out, cap);
}

/* 1 when key_check holds the constant sealed under our key, 0 when there is
 * no check yet (nothing sealed), -EKEYREJECTED when it was sealed under
 * another key. Reads one row and nothing else. */
static int store_check_key(Store *s) {
        _cleanup_free_ uint8_t *sealed = NULL;
        _cleanup_secret_ char *text = NULL;
        size_t size = 0, n = 0;
        int r;

        r = s->engine->key_check_get(s->db, &sealed, &size);
        if (r <= 0)
                return r;
        r = crypt_open(s->key, KEY_CHECK_AAD, strlen(KEY_CHECK_AAD), sealed, size, &text, &n);
        if (r == -ENOMEM)
                return r;
        if (r < 0 || n != strlen(KEY_CHECK_TEXT) || memcmp(text, KEY_CHECK_TEXT, n) != 0) {
                store_set_error(s, "the database was sealed with another key");
                return -EKEYREJECTED;
        }
        return 1;
}

static int write_key_check(Store *s, CryptKey *key, bool replace) {
        _cleanup_free_ uint8_t *check = NULL;
        size_t check_size;
        int r;

        r = crypt_seal(key, KEY_CHECK_AAD, strlen(KEY_CHECK_AAD), KEY_CHECK_TEXT, strlen(KEY_CHECK_TEXT), &check,
                       &check_size);
        if (r < 0)
                return r;
        return s->engine->key_check_set(s->db, check, check_size, replace);
}

/* The two passes that re-seal every row (sealing a store from before
 * encryption, rotating the key), inside the caller's transaction: one row
 * at a time by id, so the walk never meets a row it changed. transform
 * turns one column's stored value into its new sealed value. Returns how
 * many rows held a value. */
typedef int (*reseal_fn)(Store *s, int64_t id, const char *column, const uint8_t *value, size_t n,
                         uint8_t **ret, size_t *ret_size, void *userdata);

static int reseal_rows(Store *s, reseal_fn transform, void *userdata) {
        int64_t last = 0;
        int r = 0, n = 0;

        for (;;) {
                _cleanup_free_ uint8_t *old0 = NULL, *old1 = NULL, *old2 = NULL;
                uint8_t *old[STORE_SEALED_MAX] = {}, *sealed[STORE_SEALED_MAX] = {};
                size_t old_size[STORE_SEALED_MAX] = {}, size[STORE_SEALED_MAX] = {};
                bool any = false;
                int64_t id = 0;

                r = s->engine->sealed_next(s->db, last, &id, old, old_size);
                if (r <= 0)
                        break;
                old0 = old[0], old1 = old[1], old2 = old[2];
                for (size_t j = 0; j < STORE_SEALED_MAX && r >= 0; j++) {
                        if (!old[j])
                                continue;
                        r = transform(s, id, store_sealed_columns[j], old[j], old_size[j], &sealed[j], &size[j],
                                      userdata);
                        any = true;
                }
                if (r >= 0 && any) {
                        r = s->engine->sealed_update(s->db, id, sealed, size);
                        if (r >= 0)
                                n++;
                }
                for (size_t j = 0; j < STORE_SEALED_MAX; j++)
                        free(sealed[j]);
                if (r < 0)
                        break;
                last = id;
        }
        return r < 0 ? r : n;
}

static int seal_plain_value(Store *s, int64_t id, const char *column, const uint8_t *value, size_t n,
                            uint8_t **ret, size_t *ret_size, void *userdata _unused_) {
        return seal_value(s, id, column, value, n, ret, ret_size);
}

/* First start with a key on a store from before encryption (SQLite
 * schema version 1): seal the plain secrets of every row and write the key
 * check, all in one transaction, so a crash leaves either the plain file
 * or the sealed one. "No key check" is therefore the same as "nothing
 * sealed yet". Returns how many rows held secrets. */
static int store_seal_plain(Store *s) {
        int r, n;

        r = begin(s);
        if (r < 0)
                return r;
        /* Another broker on the same store may have been first. */
        r = store_check_key(s);
        if (r != 0)
                return fail(s, r < 0 ? r : 0);
        n = reseal_rows(s, seal_plain_value, NULL);
        if (n < 0)
                return fail(s, n);
        r = write_key_check(s, s->key, false);
        if (r == -EEXIST) {
                /* Another node sealed it between our check and our write
                 * (PostgreSQL; on SQLite BEGIN IMMEDIATE keeps it out):
                 * its key must be ours. */
                (void) fail(s, r);
                r = store_check_key(s);
                if (r == 0) {
                        store_set_error(s, "the key check could not be written");
                        return -EEXIST;
                }
                return r < 0 ? r : 0;
        }
        if (r < 0)
                return fail(s, r);
        r = commit(s);
        if (r < 0)
                return r;
        if (n > 0)
                s->engine->forget_old_values(s->db);
        return n;
}

static int rekey_value(Store *s, int64_t id, const char *column, const uint8_t *value, size_t n, uint8_t **ret,
                       size_t *ret_size, void *userdata) {
        CryptKey *nk = userdata;
        char aad[SEAL_AAD_MAX], *plain = NULL;
        size_t aad_size = seal_aad(aad, id, column), m = 0;
        int r;

        r = crypt_open(s->key, aad, aad_size, value, n, &plain, &m);
        if (r == -EBADMSG) {
                store_set_error(s, "a sealed value does not open with the current key");
                r = -EKEYREJECTED;
        }
        if (r >= 0)
                r = crypt_seal(nk, aad, aad_size, plain, m, ret, ret_size);
        if (plain) {
                explicit_wipe(plain, m);
                free(plain);
        }
        return r;
}

/* Key rotation: every sealed value opened under the store's key and
 * sealed again under new_key, and the key check replaced, in one
 * transaction: a crash before COMMIT leaves the store as it was (it opens
 * with the old key), after it the store opens with the new key only.
 * before_commit (may be NULL) runs inside the transaction, just before
 * COMMIT (a test hook). Returns how many connections held sealed values.
 * On success the store itself goes on with new_key. */
int store_rekey(Store *s, const CryptKey *new_key, const char *event_message, void (*before_commit)(void),
                int *ret_n) {
        _cleanup_(crypt_key_freep) CryptKey *nk = NULL;
        int r, n;

        r = crypt_key_dup(new_key, &nk);
        if (r < 0)
                return r;
        r = begin(s);
        if (r < 0)
                return r;
        /* Under the write lock: still sealed with our key. */
        r = store_check_key(s);
        if (r < 0)
                return fail(s, r);
        n = reseal_rows(s, rekey_value, nk);
        if (n < 0)
                return fail(s, n);
        r = write_key_check(s, nk, true);
        if (r >= 0 && event_message)
                r = s->engine->event_add(s->db, now(CLOCK_REALTIME), NULL, "key-rotated", event_message);
        if (r < 0)
                return fail(s, r);
        if (before_commit)
                before_commit();
        r = commit(s);
        if (r < 0)
                return r;
        crypt_key_free(s->key);
        s->key = TAKE_PTR(nk);
        /* Values under the old key may linger (SQLite's WAL): make them go. */
        s->engine->forget_old_values(s->db);
        if (ret_n)
                *ret_n = n;
        return 0;
}

int64_t store_connection_id_new(Store *s) {
        if (s->ids)
                return id_pool_take(s);
        return s->next_id++;
}

void store_connection_id_seen(Store *s, int64_t id) {
        if (s->ids)
                return;   /* another node's block: never ours */
        s->next_id = MAX(s->next_id, id + 1);
}

int store_open_with(const char *where, const StoreOptions *options, const CryptKey *key, Store **ret, char *error,
                    size_t error_size) {
        _cleanup_(store_closep) Store *s = NULL;
        int r, sealed;

        assert(key);
        assert(error && error_size > 0);

        error[0] = 0;
        s = new0(Store, 1);
        if (!s)
                return -ENOMEM;
        s->engine = store_engine_for(where);
        s->where = strdup(where);
        if (!s->where || (options && options->password && !(s->password = strdup(options->password))) ||
            (options && options->node && !(s->node = strdup(options->node)))) {
                snprintf(error, error_size, "out of memory");
                return -ENOMEM;
        }
        r = s->engine->open(where, options, &s->db, error, error_size);
        if (r < 0)
                return r;
        if (s->engine->id_block && !(s->ids = id_pool_new())) {
                snprintf(error, error_size, "out of memory");
                return -ENOMEM;
        }

        /* The key is checked before any row is read or written. */
        r = crypt_key_dup(key, &s->key);
        if (r < 0)
                return r;
        r = store_check_key(s);
        if (r == 0)
                r = store_seal_plain(s);
        else if (r > 0)
                r = 0;
        if (r >= 0) {
                sealed = r;
                r = s->engine->max_id(s->db, &s->next_id);
        }
        if (r < 0) {
                snprintf(error, error_size, "%s", store_last_error(s));
                return r;
        }
        s->next_id++;
        *ret = TAKE_PTR(s);
        return sealed;
}

int store_open(const char *path, const CryptKey *key, Store **ret) {
        char error[512];

        return store_open_with(path, NULL, key, ret, error, sizeof error);
}

sqlite3 *store_sqlite(Store *s) {
        return s && s->engine == &store_engine_sqlite && s->db ? store_sqlite_db(s->db) : NULL;
}

struct PgDb *store_pg(Store *s) {
        return s && s->engine == &store_engine_pg && s->db ? store_pg_db(s->db) : NULL;
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

StoreRow *store_row_free(StoreRow *row) {
        if (!row)
                return NULL;
        for (size_t i = 0; i < _ROW_TEXT_MAX; i++)
                free(row->text[i]);
        for (size_t j = 0; j < STORE_SEALED_MAX; j++)
                free(row->sealed[j]);
        free(row);
        return NULL;
}

void store_row_fence(StoreRow *row, int64_t epoch) {
        row->fence_epoch = epoch;
}

int store_row_save(Store *s, const StoreRow *row) {
        s->error[0] = 0;
        return s->engine->row_save(s->db, row);
}

void store_row_keep_tokens(StoreRow *row) {
        row->keep_tokens = true;
}

/* Seals every secret again, each with a fresh nonce: this runs on writes
 * only (a grant, a refresh, a new authorization), never on a handout. */
static int row_new(Store *s, const Connection *c, const char *name, StoreRow **ret);

int store_row_new(Store *s, const Connection *c, StoreRow **ret) {
        return row_new(s, c, c->name, ret);
}

int store_image_row_new(Store *s, const ConnImage *img, StoreRow **ret) {
        return row_new(s, &img->conn, img->name, ret);
}

static int row_new(Store *s, const Connection *c, const char *name, StoreRow **ret) {
        _cleanup_(store_row_freep) StoreRow *row = NULL;
        const char *text[_ROW_TEXT_MAX] = {
                [ROW_NAME] = name,
                [ROW_PROVIDER] = c->names->provider,
                [ROW_REQUESTED_SCOPE] = c->names->requested_scope,
                [ROW_SCOPE] = c->names->scope,
                [ROW_IDENTITY] = connection_identity(c),
                [ROW_TOKEN_TYPE] = c->names->token_type,
                [ROW_STATE_HASH] = connection_state_hash(c),
                [ROW_LAST_ERROR] = connection_last_error(c),
                [ROW_USERNAME] = connection_username(c),
        };
        const char *secret[STORE_SEALED_MAX] = { c->access_token, c->refresh_token, connection_code_verifier(c) };
        _cleanup_free_ char *params = NULL, *metadata = NULL;
        int r;

        /* compact, keys sorted: the same object gives the same text */
        if (connection_params(c) && json_object_size(connection_params(c)) > 0 &&
            !(params = json_dumps(connection_params(c), JSON_COMPACT | JSON_SORT_KEYS)))
                return -ENOMEM;
        if (connection_metadata(c) && json_object_size(connection_metadata(c)) > 0 &&
            !(metadata = json_dumps(connection_metadata(c), JSON_COMPACT | JSON_SORT_KEYS)))
                return -ENOMEM;
        text[ROW_PARAMS] = params;
        text[ROW_METADATA] = metadata;

        row = new0(StoreRow, 1);
        if (!row)
                return -ENOMEM;
        *row = (StoreRow) {
                .id = c->id,
                .state = c->state,
                .expires_at = c->expires_at,
                .obtained_at = c->obtained_at,
                .pending_until = connection_pending_until(c),
                .created_at = c->created_at,
                .updated_at = c->updated_at,
                .last_refresh_at = c->last_refresh_at,
                .device_interval = connection_device_interval(c),
                .rt_end = c->rt_end,
                .rt_warned = connection_rt_warned(c),
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
        for (size_t j = 0; j < STORE_SEALED_MAX; j++)
                if (secret[j]) {
                        r = seal_value(s, c->id, store_sealed_columns[j], secret[j], strlen(secret[j]),
                                       &row->sealed[j], &row->sealed_size[j]);
                        if (r < 0)
                                return r;
                }
        *ret = TAKE_PTR(row);
        return 0;
}

/* Insert and the first save are one transaction: one fsync, and no
 * half-written row can hold the name after a failure or a crash. Sets
 * c->id: c->id when it is > 0 already, else the next free one. */
int store_connection_insert(Store *s, Connection *c) {
        _cleanup_(store_row_freep) StoreRow *row = NULL;
        int64_t given = c->id;
        int r;

        s->error[0] = 0;
        if (c->id <= 0) {
                c->id = store_connection_id_new(s);
                if (c->id < 0) {
                        r = (int) c->id;
                        c->id = given;
                        return r;
                }
        } else if (c->id >= s->next_id)
                s->next_id = c->id + 1;
        r = store_row_new(s, c, &row);
        if (r >= 0)
                r = begin(s);
        if (r >= 0) {
                r = s->engine->row_insert(s->db, row);
                r = r < 0 ? fail(s, r) : commit(s);
        }
        if (r < 0)
                c->id = given;
        return r;
}

int store_connection_save(Store *s, const Connection *c) {
        _cleanup_(store_row_freep) StoreRow *row = NULL;
        int r;

        s->error[0] = 0;
        r = store_row_new(s, c, &row);
        if (r < 0)
                return r;
        return s->engine->row_save(s->db, row);
}

int store_connection_delete(Store *s, int64_t id) {
        s->error[0] = 0;
        return s->engine->row_delete(s->db, id);
}

static int text_dup(const char *t, char **ret) {
        if (!t) {
                *ret = NULL;
                return 0;
        }
        *ret = strdup(t);
        return *ret ? 0 : -ENOMEM;
}

/* A secret column: opened under the key, bound to this row and column. A
 * value that does not open stops the load: it was modified, copied from
 * another row or column, or sealed under another key. */
static int unseal(Store *s, const StoreRow *row, size_t j, const char *name, char **ret) {
        int r;

        if (!row->sealed[j]) {
                *ret = NULL;
                return 0;
        }
        r = open_value(s, row->id, store_sealed_columns[j], row->sealed[j], row->sealed_size[j], ret);
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                store_set_error(s, "connection %" PRId64 " ('%.64s'): %s does not open under this key "
                                "(modified, or copied from elsewhere)", row->id, name, store_sealed_columns[j]);
                return -EBADMSG;
        }
        return 0;
}

static void set_unseal_error(char *error, size_t error_size, int64_t id, const char *name, size_t j) {
        (void) snprintf(error, error_size, "connection %" PRId64 " ('%.64s'): %s does not open under this key "
                        "(modified, or copied from elsewhere)", id, name, store_sealed_columns[j]);
}

/* Both tokens into one allocation, opened in place (issue 9: one malloc a
 * connection instead of three, see connection_join_tokens()); a row with
 * one token or none goes through unseal(). With defer (the start's load):
 * the chunk gets the two ciphertexts, *defer the rest, and
 * store_tokens_open() opens them later, on another thread. */
static int unseal_tokens(Store *s, const StoreRow *row, Connection *c, StoreSealedTokens *defer) {
        size_t m0, m1;
        char *chunk;
        int r;

        if (!row->sealed[0] || !row->sealed[1] || row->sealed_size[0] < CRYPT_OVERHEAD ||
            row->sealed_size[1] < CRYPT_OVERHEAD || row->sealed_size[0] - CRYPT_OVERHEAD > CRYPT_PLAINTEXT_MAX ||
            row->sealed_size[1] - CRYPT_OVERHEAD > CRYPT_PLAINTEXT_MAX) {
                if ((r = unseal(s, row, 0, c->name, &c->access_token)) < 0 ||
                    (r = unseal(s, row, 1, c->name, &c->refresh_token)) < 0)
                        return r;
                return connection_join_tokens(c);
        }
        m0 = row->sealed_size[0] - CRYPT_OVERHEAD;
        m1 = row->sealed_size[1] - CRYPT_OVERHEAD;
        chunk = malloc(m0 + 1 + m1 + 1);
        if (!chunk)
                return -ENOMEM;
        if (defer && m0 <= UINT32_MAX && m1 <= UINT32_MAX) {
                for (size_t j = 0; j < 2; j++)
                        if (row->sealed[j][0] != CRYPT_VERSION) {
                                free(chunk);
                                store_set_error(s, "connection %" PRId64 " ('%.64s'): %s does not open under this "
                                                "key (modified, or copied from elsewhere)", row->id, c->name,
                                                store_sealed_columns[j]);
                                return -EBADMSG;
                        }
                /* ciphertext only: nothing secret in memory until opened */
                memcpy(chunk, row->sealed[0] + 1 + CRYPT_NONCE_SIZE, m0);
                chunk[m0] = 0;
                memcpy(chunk + m0 + 1, row->sealed[1] + 1 + CRYPT_NONCE_SIZE, m1);
                chunk[m0 + 1 + m1] = 0;
                defer->id = row->id;
                defer->sealed = true;
                for (size_t j = 0; j < 2; j++) {
                        size_t m = j == 0 ? m0 : m1;

                        defer->size[j] = (uint32_t) m;
                        memcpy(defer->nonce[j], row->sealed[j] + 1, CRYPT_NONCE_SIZE);
                        memcpy(defer->tag[j], row->sealed[j] + 1 + CRYPT_NONCE_SIZE + m, CRYPT_TAG_SIZE);
                }
                c->access_token = chunk;
                c->refresh_token = chunk + m0 + 1;
                c->tokens_joined = true;
                return 0;
        }
        for (size_t j = 0; j < 2; j++) {
                r = open_value_into(s, row->id, store_sealed_columns[j], row->sealed[j], row->sealed_size[j],
                                    j == 0 ? chunk : chunk + m0 + 1, j == 0 ? m0 + 1 : m1 + 1);
                if (r < 0) {
                        explicit_wipe(chunk, m0 + 1 + m1 + 1);
                        free(chunk);
                        if (r == -ENOMEM)
                                return r;
                        set_unseal_error(s->error, sizeof s->error, row->id, c->name, j);
                        return -EBADMSG;
                }
        }
        c->access_token = chunk;
        c->refresh_token = chunk + m0 + 1;
        c->tokens_joined = true;
        return 0;
}

int store_tokens_open(CryptKey *k, Connection *c, const StoreSealedTokens *t, char *error, size_t error_size) {
        char *chunk = c->access_token;
        size_t total;
        int r;

        if (!t->sealed)
                return 0;
        assert(c->tokens_joined && chunk);
        total = (size_t) t->size[0] + 1 + t->size[1] + 1;
        for (size_t j = 0; j < 2; j++) {
                char aad[SEAL_AAD_MAX], *out = j == 0 ? chunk : chunk + t->size[0] + 1;

                r = crypt_open_parts(k, aad, seal_aad(aad, t->id, store_sealed_columns[j]), t->nonce[j], out,
                                     t->size[j], t->tag[j], out);
                if (r < 0) {
                        /* the access token, when the refresh token failed */
                        explicit_wipe(chunk, total);
                        if (r == -ENOMEM)
                                return r;
                        set_unseal_error(error, error_size, t->id, c->name, j);
                        return -EBADMSG;
                }
        }
        return 0;
}

size_t store_connection_count_hint(Store *s) {
        /* several nodes: counted (at start: a blocking read is fine),
         * since ids come in blocks, with gaps */
        if (s->engine->count) {
                if (s->count_hint == 0 && s->engine->count(s->db, &s->count_hint) < 0)
                        s->count_hint = 0;
                return (size_t) MAX(s->count_hint, (int64_t) 0);
        }
        /* ids count from 1 and are never reused: the largest is an upper
         * bound, known since the store was opened */
        return s->next_id > 1 ? (size_t) (s->next_id - 1) : 0;
}

typedef struct LoadContext {
        Store *store;
        int (*fn)(Connection *c, void *userdata);
        int (*fn_deferred)(Connection *c, const StoreSealedTokens *t, void *userdata);
        bool (*want_deferred)(void *userdata);
        void *userdata;
} LoadContext;

/* A JSON object of strings (params, metadata), or NULL. */
static int json_column(Store *s, const StoreRow *row, size_t i, const char *column, json_t **ret) {
        const char *key;
        json_t *j, *v;

        *ret = NULL;
        if (!row->text[i])
                return 0;
        j = json_loads(row->text[i], JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(j))
                goto bad;
        json_object_foreach(j, key, v)
                if (!json_is_string(v))
                        goto bad;
        *ret = j;
        return 0;
bad:
        json_decref(j);
        store_set_error(s, "connection %" PRId64 " ('%.64s'): %s is not a JSON object of strings", row->id,
                        row->text[ROW_NAME] ?: "?", column);
        return -EBADMSG;
}

static int row_to_connection(Store *s, const StoreRow *row, StoreSealedTokens *defer, Connection **ret) {
        _cleanup_(connection_freep) Connection *c = NULL;
        unsigned users[ACL_MAX], groups[ACL_MAX], nu, ng;
        int r;

        if (!row->text[ROW_NAME] || !row->text[ROW_PROVIDER]) {
                store_set_error(s, "connection %" PRId64 ": no name or provider", row->id);
                return -EBADMSG;
        }
        /* the identity inline after the name, room for it exactly */
        c = connection_new_with(row->text[ROW_NAME], row->text[ROW_IDENTITY], 0);
        if (!c)
                return -ENOMEM;
        c->id = row->id;
        c->state = row->state;
        /* one interned tuple (most rows share the previous row's: a
         * match costs four compares, no lookup) */
        if ((r = connection_set_names(c, &(const ConnNames) {
                                                 .provider = row->text[ROW_PROVIDER],
                                                 .token_type = row->text[ROW_TOKEN_TYPE],
                                                 .scope = row->text[ROW_SCOPE],
                                                 .requested_scope = row->text[ROW_REQUESTED_SCOPE],
                                         })) < 0)
                return r;
        /* the out-of-line parts, allocated only when a field is set */
        {
                char *state_hash = NULL, *last_error = NULL, *username = NULL, *verifier = NULL;
                json_t *params = NULL, *metadata = NULL;

                if ((r = text_dup(row->text[ROW_STATE_HASH], &state_hash)) < 0 ||
                    (r = connection_set_state_hash(c, state_hash)) < 0 ||
                    (r = text_dup(row->text[ROW_LAST_ERROR], &last_error)) < 0 ||
                    (r = connection_set_last_error(c, last_error)) < 0 ||
                    (r = text_dup(row->text[ROW_USERNAME], &username)) < 0 ||
                    (r = connection_set_username(c, username)) < 0 ||
                    (r = json_column(s, row, ROW_PARAMS, "params", &params)) < 0 ||
                    (r = connection_set_params(c, params)) < 0 ||
                    (r = json_column(s, row, ROW_METADATA, "metadata", &metadata)) < 0 ||
                    (r = connection_set_metadata(c, metadata)) < 0)
                        return r;
                if ((r = unseal_tokens(s, row, c, defer)) < 0 ||
                    (r = unseal(s, row, 2, c->name, &verifier)) < 0 ||
                    (r = connection_set_code_verifier(c, verifier)) < 0 ||
                    (r = connection_set_pending_until(c, row->pending_until)) < 0)
                        return r;
        }
        c->expires_at = row->expires_at;
        c->obtained_at = row->obtained_at;
        id_list_parse(row->users, users, &nu);
        id_list_parse(row->groups, groups, &ng);
        if (connection_set_acl(c, users, nu, groups, ng) < 0)
                return -ENOMEM;
        c->refreshes = connection_refreshes_from_store(row->refreshes);
        c->created_at = row->created_at;
        c->updated_at = row->updated_at;
        c->last_refresh_at = row->last_refresh_at;
        if (row->device_interval > 0 && connection_set_device(c, row->device_interval, NULL, NULL, NULL) < 0)
                return -ENOMEM;
        c->rt_end = row->rt_end;
        if (connection_set_rt_warned(c, row->rt_warned) < 0)
                return -ENOMEM;
        *ret = TAKE_PTR(c);
        return 0;
}

int store_row_to_connection(Store *s, const StoreRow *row, Connection **ret) {
        return row_to_connection(s, row, NULL, ret);
}

static int load_row(const StoreRow *row, void *userdata) {
        LoadContext *l = userdata;
        StoreSealedTokens t = {};
        Connection *c = NULL;
        int r;

        r = row_to_connection(l->store, row, l->fn_deferred && (!l->want_deferred || l->want_deferred(l->userdata)) ? &t : NULL,
                              &c);
        if (r < 0)
                return r;
        return l->fn_deferred ? l->fn_deferred(c, &t, l->userdata) : l->fn(c, l->userdata);
}

/* ---- followers ----------------------------------------------------------- */

int store_changes_listen(Store *s) {
        s->error[0] = 0;
        return s->engine->changes_listen ? s->engine->changes_listen(s->db) : -EOPNOTSUPP;
}

int store_open_again(Store *s, Store **ret, char *error, size_t error_size) {
        StoreOptions o = { .password = s->password, .node = s->node };

        return store_open_with(s->where, &o, s->key, ret, error, error_size);
}

int store_max_version(Store *s, int64_t *ret) {
        s->error[0] = 0;
        *ret = 0;
        return s->engine->max_version ? s->engine->max_version(s->db, ret) : 0;
}

int store_changes_wait(Store *s, usec_t timeout, int wake_fd,
                       int (*fn)(int64_t id, int64_t version, const char *node, const char *name, void *userdata),
                       void *userdata) {
        s->error[0] = 0;
        return s->engine->changes_wait ? s->engine->changes_wait(s->db, timeout, wake_fd, fn, userdata) : -EOPNOTSUPP;
}

int store_changes_request(Store *s, int64_t id, const char *name) {
        s->error[0] = 0;
        return s->engine->changes_request ? s->engine->changes_request(s->db, id, name) : -EOPNOTSUPP;
}

static int row_dup(const StoreRow *row, StoreRow **ret) {
        _cleanup_(store_row_freep) StoreRow *x = NULL;

        x = new(StoreRow, 1);
        if (!x)
                return -ENOMEM;
        *x = *row;
        for (size_t i = 0; i < _ROW_TEXT_MAX; i++)
                x->text[i] = NULL;
        for (size_t j = 0; j < STORE_SEALED_MAX; j++)
                x->sealed[j] = NULL;
        for (size_t i = 0; i < _ROW_TEXT_MAX; i++)
                if (row->text[i] && !(x->text[i] = strdup(row->text[i])))
                        return -ENOMEM;
        for (size_t j = 0; j < STORE_SEALED_MAX; j++)
                if (row->sealed[j]) {
                        x->sealed[j] = malloc(MAX(row->sealed_size[j], (size_t) 1));
                        if (!x->sealed[j])
                                return -ENOMEM;
                        memcpy(x->sealed[j], row->sealed[j], row->sealed_size[j]);
                }
        *ret = TAKE_PTR(x);
        return 0;
}

typedef struct ChangedContext {
        int (*fn)(StoreRow *row, void *userdata);
        void *userdata;
} ChangedContext;

static int changed_row(const StoreRow *row, void *userdata) {
        ChangedContext *x = userdata;
        StoreRow *copy = NULL;
        int r;

        r = row_dup(row, &copy);
        if (r < 0)
                return r;
        return x->fn(copy, x->userdata);
}

int store_rows_changed(Store *s, const int64_t *ids, size_t n, int64_t after_version,
                       int (*fn)(StoreRow *row, void *userdata), void *userdata) {
        ChangedContext x = { .fn = fn, .userdata = userdata };

        s->error[0] = 0;
        if (!s->engine->rows_changed)
                return -EOPNOTSUPP;
        return s->engine->rows_changed(s->db, ids, n, after_version, changed_row, &x);
}

int64_t store_row_version(const StoreRow *row) {
        return row->version;
}


int store_load_connections(Store *s, int (*fn)(Connection *c, void *userdata), void *userdata) {
        LoadContext l = { .store = s, .fn = fn, .userdata = userdata };

        s->error[0] = 0;
        return s->engine->rows_load(s->db, load_row, &l);
}

int store_load_connections_deferred(Store *s, int (*fn)(Connection *c, const StoreSealedTokens *t, void *userdata),
                                    bool (*want_deferred)(void *userdata), void *userdata) {
        LoadContext l = { .store = s, .fn_deferred = fn, .want_deferred = want_deferred, .userdata = userdata };

        s->error[0] = 0;
        return s->engine->rows_load(s->db, load_row, &l);
}

int store_key_dup(Store *s, CryptKey **ret) {
        _cleanup_(crypt_key_freep) CryptKey *k = NULL;
        int r;

        r = crypt_key_dup(s->key, &k);
        if (r < 0)
                return r;
        r = crypt_key_prepare_open(k);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(k);
        return 0;
}

/* ---- copying between stores -------------------------------------------- */

typedef struct CopyContext {
        Store *from, *to;
        unsigned n;
        StoreEvent *events;        /* newest first, copies */
        size_t n_events;
} CopyContext;

static int copy_row(const StoreRow *row, void *userdata) {
        CopyContext *x = userdata;
        int r;

        for (size_t j = 0; j < STORE_SEALED_MAX; j++) {
                _cleanup_secret_ char *plain = NULL;

                if (!row->sealed[j])
                        continue;
                r = unseal(x->from, row, j, row->text[ROW_NAME] ?: "?", &plain);
                if (r < 0) {
                        store_set_error(x->to, "%s", store_last_error(x->from));
                        return r;
                }
        }
        r = x->to->engine->row_insert(x->to->db, row);
        if (r < 0)
                return r;
        x->n++;
        return 0;
}

static int copy_event(const StoreEvent *e, void *userdata) {
        CopyContext *x = userdata;
        StoreEvent *c = &x->events[x->n_events];

        *c = (StoreEvent) { .id = e->id, .at = e->at };
        if ((e->connection && !(c->connection = strdup(e->connection))) ||
            !(c->kind = strdup(e->kind ?: "")) || !(c->message = strdup(e->message ?: ""))) {
                free((char *) c->connection);
                free((char *) c->kind);
                return -ENOMEM;
        }
        x->n_events++;
        return 0;
}

static int count_one(const StoreEvent *e _unused_, void *userdata) {
        (*(unsigned *) userdata)++;
        return 0;
}

int store_copy(Store *from, Store *to, unsigned *ret_connections, unsigned *ret_events) {
        CopyContext x = { .from = from, .to = to };
        int64_t max = 0;
        unsigned any = 0;
        int r;

        from->error[0] = to->error[0] = 0;
        r = to->engine->max_id(to->db, &max);
        if (r >= 0)
                r = to->engine->events_list(to->db, NULL, 0, 1, count_one, &any);
        if (r < 0)
                return r;
        if (max > 0 || any > 0) {
                store_set_error(to, "the target holds %s already", max > 0 ? "connections" : "events");
                return -ENOTEMPTY;
        }
        /* Events are bounded (STORE_EVENTS_MAX, trimmed every 64): newest
         * first, then written oldest first. */
        x.events = new0(StoreEvent, STORE_EVENTS_MAX + 64);
        if (!x.events)
                return -ENOMEM;
        r = from->engine->events_list(from->db, NULL, 0, STORE_EVENTS_MAX + 64, copy_event, &x);
        if (r >= 0)
                r = begin(to);
        if (r >= 0) {
                r = from->engine->rows_load(from->db, copy_row, &x);
                for (size_t i = x.n_events; r >= 0 && i > 0; i--) {
                        const StoreEvent *e = &x.events[i - 1];
                        r = to->engine->event_add(to->db, e->at, e->connection, e->kind, e->message);
                }
                r = r < 0 ? fail(to, r) : commit(to);
        }
        for (size_t i = 0; i < x.n_events; i++) {
                free((char *) x.events[i].connection);
                free((char *) x.events[i].kind);
                free((char *) x.events[i].message);
        }
        free(x.events);
        if (r < 0)
                return r;
        to->next_id = MAX(to->next_id, from->next_id);
        if (ret_connections)
                *ret_connections = x.n;
        if (ret_events)
                *ret_events = (unsigned) x.n_events;
        return 0;
}

int store_event_add(Store *s, usec_t at, const char *connection, const char *kind, const char *message) {
        s->error[0] = 0;
        return s->engine->event_add(s->db, at, connection, kind, message);
}

int store_events_list(Store *s, const char *connection, int64_t before_id, unsigned limit,
                      int (*fn)(const StoreEvent *e, void *userdata), void *userdata) {
        s->error[0] = 0;
        return s->engine->events_list(s->db, connection, before_id, limit, fn, userdata);
}

/* ---- the writer: group commit off the loop ----------------------------- */

typedef enum WriteKind {
        WRITE_INSERT,
        WRITE_SAVE,
        WRITE_DELETE,
        WRITE_EVENT,
        WRITE_BARRIER,
        WRITE_CUSTOM,
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
        store_custom_fn run;          /* custom */
        void *data;
        void (*data_free)(void *data);
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

        struct IdPool *pool;          /* the loop's store's ids (several nodes): this thread reserves them */
        usec_t refill_retry;          /* the thread's: CLOCK_MONOTONIC, after a reservation failed */

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
        if (x->data_free)
                x->data_free(x->data);
        free(x);
        return NULL;
}

/* One change inside the batch's transaction. -ENOENT (a save of a row
 * that is gone) fails that change alone, not the transaction. */
static int write_run(Store *s, Write *x) {
        s->error[0] = 0;
        switch (x->kind) {
        case WRITE_INSERT:
                return s->engine->row_insert(s->db, x->row);
        case WRITE_SAVE:
                return s->engine->row_save(s->db, x->row);
        case WRITE_DELETE:
                return store_connection_delete(s, x->id);
        case WRITE_EVENT:
                return store_event_add(s, x->at, x->connection, x->event_kind, x->message);
        case WRITE_BARRIER:
                return 0;
        case WRITE_CUSTOM:
                return x->run(s, x->data);
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

        r = begin(s);
        failed = r < 0;
        for (Write *x = batch; x && !failed; x = x->next) {
                x->result = write_run(s, x);
                if (x->result == -ENOENT || x->result == -ESTALE)   /* gone, or the lease lost */
                        write_failed(s, x, x->result);
                else if (x->result < 0)
                        failed = true;
        }
        if (!failed)
                failed = s->engine->commit(s->db) < 0;
        if (!failed)
                return;   /* durable: the engine's COMMIT returns once it is */

        s->engine->rollback(s->db);
        for (Write *x = batch; x; x = x->next) {
                r = begin(s);
                if (r >= 0)
                        r = write_run(s, x);
                if (r >= 0)
                        r = s->engine->commit(s->db);
                if (r < 0) {
                        write_failed(s, x, r);
                        s->engine->rollback(s->db);
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

static bool id_pool_wanted(struct IdPool *p);
static void writer_refill(StoreWriter *w);

static bool writer_refill_due(StoreWriter *w) {
        return w->pool && id_pool_wanted(w->pool) && now(CLOCK_MONOTONIC) >= w->refill_retry;
}

static void *writer_thread(void *userdata) {
        StoreWriter *w = userdata;

        pthread_mutex_lock(&w->lock);
        for (;;) {
                WriteList batch;

                while (!w->queue.head && !w->stopping && !writer_refill_due(w)) {
                        if (w->pool && id_pool_wanted(w->pool)) {
                                /* a reservation failed: again in a moment */
                                struct timespec until;

                                (void) clock_gettime(CLOCK_REALTIME, &until);
                                until.tv_sec++;
                                (void) pthread_cond_timedwait(&w->wake, &w->lock, &until);
                        } else
                                pthread_cond_wait(&w->wake, &w->lock);
                }
                if (!w->stopping && writer_refill_due(w)) {
                        pthread_mutex_unlock(&w->lock);
                        writer_refill(w);
                        pthread_mutex_lock(&w->lock);
                        continue;
                }
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
 * when the loop looks: run a bounded number of completions a wake-up (a
 * completion publishes a token, schedules, answers waiters: 64 keep a turn
 * of the loop short in a refresh storm); the eventfd is written again for
 * the rest, so they run on the next turns. */
#define DISPATCH_MAX 64

static int on_writer_done(sd_event_source *src _unused_, int fd, uint32_t revents _unused_, void *userdata) {
        StoreWriter *w = userdata;
        eventfd_t v;

        (void) eventfd_read(fd, &v);
        (void) writer_dispatch(w, DISPATCH_MAX);
        if (w->ready.head)
                (void) eventfd_write(w->efd, 1);   /* the rest on the next turn */
        return 0;
}

static void writer_attach_ids(StoreWriter *w, Store *s);
static void writer_detach_ids(StoreWriter *w);

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

        {
                StoreOptions o = { .password = s->password, .node = s->node };
                char error[512];

                r = store_open_with(s->where, &o, s->key, &w->db, error, sizeof error);
                if (r < 0)
                        return r;
        }
        if (s->ids) {
                /* The first block of ids now (the start: blocking is
                 * fine), the next ones by the thread, ahead of need. */
                writer_attach_ids(w, s);
        }
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

int store_writer_custom(StoreWriter *w, store_custom_fn run, void *data, void (*data_free)(void *data),
                        store_done_fn fn, void *userdata) {
        Write *x = new0(Write, 1);

        if (!x) {
                if (data_free)
                        data_free(data);
                return -ENOMEM;
        }
        *x = (Write) { .kind = WRITE_CUSTOM, .run = run, .data = data, .data_free = data_free, .fn = fn,
                       .userdata = userdata };
        return writer_submit(w, x);
}

void store_custom_error(Store *s, const char *error) {
        snprintf(s->error, sizeof s->error, "%s", error);
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
                writer_detach_ids(w);
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

/* ---- ids in blocks (several nodes, issue 10) ----------------------------- */

typedef struct IdPool {
        pthread_mutex_t lock;
        int64_t next, last;        /* the block in use: next..last; empty when next > last */
        int64_t next2, last2;      /* the block reserved ahead; next2 == 0: none */
        bool wanted;               /* the writer is to reserve the next */
        StoreWriter *writer;       /* attached: it reserves, nobody blocks; NULL: the store reserves itself */
} IdPool;

static IdPool *id_pool_new(void) {
        IdPool *p = new0(IdPool, 1);

        if (!p)
                return NULL;
        pthread_mutex_init(&p->lock, NULL);
        p->next = 1;
        return p;
}

static void id_pool_free(IdPool *p) {
        if (!p)
                return;
        pthread_mutex_destroy(&p->lock);
        free(p);
}

/* Under p->lock: a block reserved goes in use, or ahead. */
static void id_pool_put_locked(IdPool *p, int64_t first, int64_t last) {
        if (p->next > p->last) {
                p->next = first;
                p->last = last;
        } else if (p->next2 == 0) {
                p->next2 = first;
                p->last2 = last;
        }
        /* else: two ahead can only come from a retry race: dropped, ids
         * are plentiful and never reused */
}

static bool id_pool_wanted(IdPool *p) {
        bool v;

        pthread_mutex_lock(&p->lock);
        v = p->wanted;
        pthread_mutex_unlock(&p->lock);
        return v;
}

static int64_t id_pool_take(Store *s) {
        IdPool *p = s->ids;
        StoreWriter *wake = NULL;
        int64_t id;

        pthread_mutex_lock(&p->lock);
        if (p->next > p->last && p->next2 > 0) {
                p->next = p->next2;
                p->last = p->last2;
                p->next2 = p->last2 = 0;
        }
        if (p->next > p->last && !p->writer) {
                /* a tool, or a test: reserve here, blocking */
                int64_t first = 0, last = 0;
                int r;

                pthread_mutex_unlock(&p->lock);
                s->error[0] = 0;
                r = s->engine->id_block(s->db, &first, &last);
                if (r < 0)
                        return r;
                pthread_mutex_lock(&p->lock);
                id_pool_put_locked(p, first, last);
        }
        if (p->next > p->last) {
                store_set_error(s, "no connection id reserved yet (the database is busy or out of reach)");
                id = -EAGAIN;
        } else
                id = p->next++;
        if (p->writer && p->next2 == 0 && !p->wanted && p->last - p->next + 1 < STORE_ID_BLOCK / 2) {
                p->wanted = true;
                wake = p->writer;
        }
        pthread_mutex_unlock(&p->lock);
        if (wake) {
                pthread_mutex_lock(&wake->lock);
                pthread_cond_signal(&wake->wake);
                pthread_mutex_unlock(&wake->lock);
        }
        return id;
}

/* On the writer's thread, with its own handle, outside any batch. */
static void writer_refill(StoreWriter *w) {
        int64_t first = 0, last = 0;
        int r;

        r = w->db->engine->id_block(w->db->db, &first, &last);
        if (r < 0) {
                w->refill_retry = usec_add(now(CLOCK_MONOTONIC), USEC_PER_SEC);
                return;
        }
        pthread_mutex_lock(&w->pool->lock);
        id_pool_put_locked(w->pool, first, last);
        w->pool->wanted = false;
        pthread_mutex_unlock(&w->pool->lock);
}

static void writer_attach_ids(StoreWriter *w, Store *s) {
        IdPool *p = s->ids;
        int64_t first = 0, last = 0;
        bool have = false;

        pthread_mutex_lock(&p->lock);
        have = p->next <= p->last;
        pthread_mutex_unlock(&p->lock);
        if (!have && s->engine->id_block(s->db, &first, &last) >= 0) {
                pthread_mutex_lock(&p->lock);
                id_pool_put_locked(p, first, last);
                pthread_mutex_unlock(&p->lock);
        }
        pthread_mutex_lock(&p->lock);
        p->writer = w;
        p->wanted = p->next > p->last || p->last - p->next + 1 < STORE_ID_BLOCK / 2;
        pthread_mutex_unlock(&p->lock);
        w->pool = p;
}

static void writer_detach_ids(StoreWriter *w) {
        if (!w->pool)
                return;
        pthread_mutex_lock(&w->pool->lock);
        w->pool->writer = NULL;
        w->pool->wanted = false;
        pthread_mutex_unlock(&w->pool->lock);
        w->pool = NULL;
}

int64_t store_ids_left(Store *s) {
        int64_t n;

        if (!s->ids)
                return 0;
        pthread_mutex_lock(&s->ids->lock);
        n = (s->ids->next <= s->ids->last ? s->ids->last - s->ids->next + 1 : 0) +
            (s->ids->next2 > 0 ? s->ids->last2 - s->ids->next2 + 1 : 0);
        pthread_mutex_unlock(&s->ids->lock);
        return n;
}

/* ---- tombstones (several nodes, issue 10) -------------------------------- */

int store_deleted_since(Store *s, int64_t after,
                        int (*fn)(int64_t id, int64_t version, const char *name, void *userdata), void *userdata) {
        s->error[0] = 0;
        return s->engine->deleted_since ? s->engine->deleted_since(s->db, after, fn, userdata) : -EOPNOTSUPP;
}

int store_deleted_horizon(Store *s, int64_t *ret) {
        s->error[0] = 0;
        *ret = 0;
        return s->engine->deleted_horizon ? s->engine->deleted_horizon(s->db, ret) : -EOPNOTSUPP;
}

int store_deleted_prune(Store *s, usec_t age) {
        s->error[0] = 0;
        return s->engine->deleted_prune ? s->engine->deleted_prune(s->db, age) : -EOPNOTSUPP;
}

int store_ids_missing(Store *s, const int64_t *ids, size_t n, int (*fn)(int64_t id, void *userdata), void *userdata) {
        s->error[0] = 0;
        return s->engine->ids_missing ? s->engine->ids_missing(s->db, ids, n, fn, userdata) : -EOPNOTSUPP;
}
