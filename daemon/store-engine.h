/* SPDX-License-Identifier: MIT */
#pragma once

/* What a database engine does for the store: SQL, and nothing else.
 *
 * daemon/store.c keeps everything that is the same on every engine: the
 * sealing of secrets (values reach an engine sealed and leave it sealed),
 * the meaning of the key check, row images, ids, and the writer thread
 * with its batches and completions. An engine (store-sqlite.c,
 * store-pg.c) keeps a handle on one database and turns those into
 * statements. Every call blocks: engines are called at start, by tools,
 * and on the writer's thread, never for a client on the event loop.
 *
 * Library-level: -errno codes, never logs; error() says what went wrong,
 * never with a secret in it (a password, a sealed value). */

#include "daemon/store.h"

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
        ROW_PARAMS,                /* JSON objects of strings: connection parameters, response metadata */
        ROW_METADATA,
        _ROW_TEXT_MAX,
};

/* The secret columns, sealed with the row's id and the column's name as
 * associated data: access_token, refresh_token, code_verifier. */
#define STORE_SEALED_MAX 3
extern const char *const store_sealed_columns[STORE_SEALED_MAX];

/* One connections row. Written: an image store_row_new() made, owning
 * its strings. Loaded: the engine's view of a row, borrowed (valid until
 * the callback returns). allow_users/allow_groups: comma-separated ids. */
struct StoreRow {
        int64_t id;
        ConnState state;
        char *text[_ROW_TEXT_MAX];
        char users[ACL_MAX * 12], groups[ACL_MAX * 12];
        uint8_t *sealed[STORE_SEALED_MAX];   /* ciphertext, bound to id; NULL: none */
        size_t sealed_size[STORE_SEALED_MAX];
        usec_t expires_at, obtained_at, pending_until, created_at, updated_at, last_refresh_at, device_interval;
        usec_t rt_end, rt_warned;   /* the refresh token's end (daemon/rtend.c), and the one warned about */
        uint64_t refreshes;

        /* Several nodes on PostgreSQL (issue 10); SQLite ignores these
         * (its one daemon holds every lease). */
        int64_t fence_epoch;   /* > 0: a refresh's commit: the token columns only, and only while this node
                                * holds the connection's lease at this epoch (else -ESTALE, nothing written) */
        bool keep_tokens;      /* a save by a node that does not hold the lease: every column but the token
                                * columns, which are the lease holder's to write */
        int64_t version;       /* loaded: the row's version (0 on SQLite) */
};

typedef struct StoreDb StoreDb;

typedef struct StoreEngine {
        const char *name;   /* "sqlite", "postgresql" */

        /* Opens (creating the database's tables if needed) and applies
         * the engine's migrations. On failure error says why. */
        int (*open)(const char *where, const StoreOptions *options, StoreDb **ret, char *error, size_t error_size);
        void (*close)(StoreDb *db);
        const char *(*error)(StoreDb *db);
        unsigned (*schema_version)(StoreDb *db);

        /* A write transaction; commit() returns once it is durable. */
        int (*begin)(StoreDb *db);
        int (*commit)(StoreDb *db);
        void (*rollback)(StoreDb *db);

        /* The sealed key check: 1 and a copy in *ret, or 0 when there is
         * none yet. set() inserts it (-EEXIST when there is one: another
         * node wrote it first), or replaces it (a key rotation). */
        int (*key_check_get)(StoreDb *db, uint8_t **ret, size_t *ret_size);
        int (*key_check_set)(StoreDb *db, const uint8_t *p, size_t n, bool replace);

        int (*max_id)(StoreDb *db, int64_t *ret);
        /* -EEXIST: the name (or id) is taken. */
        int (*row_insert)(StoreDb *db, const StoreRow *row);
        /* -ENOENT: no row with that id. */
        int (*row_save)(StoreDb *db, const StoreRow *row);
        int (*row_delete)(StoreDb *db, int64_t id);
        /* Every row, by id; fn's row is borrowed. A row whose state is not
         * one of ConnState is -EBADMSG. */
        int (*rows_load)(StoreDb *db, int (*fn)(const StoreRow *row, void *userdata), void *userdata);

        /* For re-sealing every row (sealing a store from before
         * encryption, rotating the key), one row at a time by id: the
         * sealed columns of the first row with id > after, as copies
         * (1), or 0 when there is none. */
        int (*sealed_next)(StoreDb *db, int64_t after, int64_t *ret_id, uint8_t *ret[STORE_SEALED_MAX],
                           size_t ret_size[STORE_SEALED_MAX]);
        int (*sealed_update)(StoreDb *db, int64_t id, uint8_t *const sealed[STORE_SEALED_MAX],
                             const size_t size[STORE_SEALED_MAX]);
        /* After a re-seal committed: old copies of the values may linger
         * (SQLite's WAL): make them go, as far as the engine can. */
        void (*forget_old_values)(StoreDb *db);

        /* Until several nodes share a database by leases (issue 10), one
         * daemon per database: -EBUSY when another holds it. Held as long
         * as this handle's session lasts. */
        int (*lock_single_node)(StoreDb *db);
        /* One node of several (store_lock_node()). */
        int (*lock_node)(StoreDb *db, const char *node);

        /* Followers (several nodes; NULL on SQLite): see store_changes_*()
         * in daemon/store.h. */
        int (*changes_listen)(StoreDb *db);
        int (*max_version)(StoreDb *db, int64_t *ret);
        int (*changes_request)(StoreDb *db, int64_t id, const char *name);
        int (*changes_wait)(StoreDb *db, usec_t timeout, int wake_fd,
                            int (*fn)(int64_t id, int64_t version, const char *node, const char *name, void *userdata),
                            void *userdata);
        int (*rows_changed)(StoreDb *db, const int64_t *ids, size_t n, int64_t after_version,
                            int (*fn)(const StoreRow *row, void *userdata), void *userdata);

        int (*event_add)(StoreDb *db, usec_t at, const char *connection, const char *kind, const char *message);
        int (*events_list)(StoreDb *db, const char *connection, int64_t before_id, unsigned limit,
                           int (*fn)(const StoreEvent *e, void *userdata), void *userdata);

        /* Several nodes (NULL on SQLite): a block of ids no other node
         * gets, *ret_first..*ret_last, above every id in the table. */
        int (*id_block)(StoreDb *db, int64_t *ret_first, int64_t *ret_last);
        /* Tombstones (sql/pg/0005): deletes with version > after, by
         * version; the highest version pruned so far; and the pruning of
         * those older than age (the database's clock). */
        int (*deleted_since)(StoreDb *db, int64_t after,
                             int (*fn)(int64_t id, int64_t version, const char *name, void *userdata),
                             void *userdata);
        int (*deleted_horizon)(StoreDb *db, int64_t *ret);
        int (*deleted_prune)(StoreDb *db, usec_t age);
        /* Of ids, those no row has (a full comparison), each to fn. */
        int (*ids_missing)(StoreDb *db, const int64_t *ids, size_t n, int (*fn)(int64_t id, void *userdata),
                           void *userdata);
        /* How many connections there are (ids in blocks have gaps: the
         * largest says little). */
        int (*count)(StoreDb *db, int64_t *ret);
} StoreEngine;

extern const StoreEngine store_engine_sqlite;
extern const StoreEngine store_engine_pg;

/* The engine a store target names: a postgresql:// or postgres:// URI,
 * or a file path (SQLite). */
const StoreEngine *store_engine_for(const char *where);

/* The SQLite engine's handle of db (store_sqlite() is the Store's). */
struct sqlite3;
struct sqlite3 *store_sqlite_db(StoreDb *db);   /* store_engine_sqlite's handles only */
/* The PostgreSQL engine's (store_pg() is the Store's). */
struct PgDb;
struct PgDb *store_pg_db(StoreDb *db);          /* store_engine_pg's handles only */
