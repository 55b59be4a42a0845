/* SPDX-License-Identifier: MIT */
#pragma once

#include "daemon/connection.h"
#include "daemon/crypt.h"

/* SQLite in the state directory: WAL, synchronous=FULL, so every change is
 * on disk when the call that made it returns. Numbered migrations from sql/
 * are compiled in and applied at open. Library-level: returns -errno-style
 * codes and never logs; store_last_error() says what went wrong.
 *
 * The secrets of a connection (access_token, refresh_token, code_verifier)
 * are sealed with AES-256-GCM under the store's key (daemon/crypt.h), bound
 * to the row's id and the column's name: sealed on every save, opened on
 * load, so a token handout never meets the cipher. */

typedef struct Store Store;

typedef struct Migration {
        unsigned version;
        const char *name;
        const char *sql;
} Migration;
extern const Migration store_migrations[];
extern const size_t store_n_migrations;

/* Opens (creating if needed) and migrates the file, then checks the key
 * against the key check kept in it, before any row is read or written:
 * -EKEYREJECTED when the file was sealed under another key. On the first
 * open with a key, the plain secrets a file from before encryption holds
 * are sealed, with the key check written, in one transaction. Returns how
 * many connections that sealed (0 on every later open). The store keeps
 * its own copy of key. */
int store_open(const char *path, const CryptKey *key, Store **ret);
Store *store_close(Store *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(Store *, store_close);
const char *store_last_error(Store *s);
unsigned store_schema_version(Store *s);

/* Calls fn for each stored connection; fn takes ownership of c. */
int store_load_connections(Store *s, int (*fn)(Connection *c, void *userdata), void *userdata);

int store_connection_insert(Store *s, Connection *c);   /* sets c->id */
int store_connection_save(Store *s, const Connection *c);
int store_connection_delete(Store *s, int64_t id);

#define STORE_EVENTS_MAX 10000
int store_event_add(Store *s, usec_t at, const char *connection, const char *kind, const char *message);

typedef struct StoreEvent {
        int64_t id;
        usec_t at;
        const char *connection;   /* NULL for broker-wide events */
        const char *kind;
        const char *message;
} StoreEvent;

/* Newest first; before_id > 0 pages back from there. */
int store_events_list(Store *s, const char *connection, int64_t before_id, unsigned limit,
                      int (*fn)(const StoreEvent *e, void *userdata), void *userdata);
