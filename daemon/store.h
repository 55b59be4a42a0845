/* SPDX-License-Identifier: MIT */
#pragma once

#include <sqlite3.h>
#include <systemd/sd-event.h>

#include "daemon/connection.h"
#include "daemon/crypt.h"

/* The connections, their sealed secrets and the events, on SQLite in the
 * state directory (WAL, synchronous=FULL) or on PostgreSQL
 * (daemon/store-engine.h has the engines). Numbered migrations from sql/
 * (sql/pg/) are compiled in and applied at open. Library-level:
 * returns -errno-style codes and never logs; store_last_error() says what
 * went wrong.
 *
 * Two ways to write:
 *  - synchronous (store_connection_insert/save/delete, store_event_add):
 *    the change is on disk when the call returns. For unit tests and tools
 *    (tests/bench/seed.c); never on the daemon's event loop, where one
 *    fsync'd commit stalls every client.
 *  - the writer (StoreWriter, below): the daemon's way. Changes are queued
 *    on the loop as row images and committed in batches by a thread with
 *    its own SQLite handle; each change's completion comes back to the
 *    loop, in the order the changes were queued, once its batch is on
 *    disk (or failed).
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

/* The same on any engine: where is a SQLite file path, or a PostgreSQL
 * connection URI (postgresql://USER@HOST:PORT/DB?..., see daemon/pg.h),
 * with options->password for it (NULL options or password: libpq's own
 * ways). On failure error says why, never with the password in it. */
typedef struct StoreOptions {
        const char *password;
        /* PostgreSQL, several nodes (issue 10): the node this handle
         * writes for (its lease fences refreshes' commits, and every
         * change it announces names it); NULL: a tool, no node. */
        const char *node;
} StoreOptions;
int store_open_with(const char *where, const StoreOptions *options, const CryptKey *key, Store **ret, char *error,
                    size_t error_size);
/* "sqlite" or "postgresql". */
const char *store_engine_name(Store *s);
/* Whether where names a PostgreSQL database (postgresql:// or
 * postgres://) rather than a SQLite file. */
bool store_is_postgresql(const char *where);
/* One daemon per database (a SQLite file is guarded by the lock on
 * state_dir; a PostgreSQL database by a session advisory lock, kept while
 * the handle's session lasts): -EBUSY when another daemon holds it. */
int store_lock_single_node(Store *s);
/* A node of a cluster on PostgreSQL (issue 10): shares the database with
 * other nodes (a shared advisory lock, so that the tools that want it
 * alone, store_lock_single_node(), are refused while a node runs), but
 * not its name: -EBUSY when a running node already has that node_name.
 * Held while the handle's session lasts. A no-op on SQLite (state_dir's
 * lock guards the file). */
int store_lock_node(Store *s, const char *node);
/* Re-seals every sealed value and the key check under new_key in one
 * transaction (with a 'key-rotated' event carrying event_message, if not
 * NULL); before_commit, if not NULL, runs just before COMMIT. From then on
 * the file opens with new_key only; a crash before COMMIT leaves it as it
 * was. *ret_n: connections re-sealed. */
int store_rekey(Store *s, const CryptKey *new_key, const char *event_message, void (*before_commit)(void),
                int *ret_n);
/* Copies every connection (its sealed values as they are: both stores
 * must be open under the same key) and every event from one store into
 * another, of either engine, in one transaction on the target: all or
 * nothing. Each sealed value is opened first, so a damaged one stops the
 * copy. -ENOTEMPTY when the target holds a connection or an event. */
int store_copy(Store *from, Store *to, unsigned *ret_connections, unsigned *ret_events);

Store *store_close(Store *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(Store *, store_close);
const char *store_last_error(Store *s);
unsigned store_schema_version(Store *s);

/* Calls fn for each stored connection; fn takes ownership of c. */
/* An upper bound of the number of connections (the span of their ids),
 * for presizing; 0 when there are none or on error. O(log n); on
 * PostgreSQL (ids in blocks, with gaps) a count, read once. */
size_t store_connection_count_hint(Store *s);
int store_load_connections(Store *s, int (*fn)(Connection *c, void *userdata), void *userdata);

/* A connection's two tokens read but not opened yet: its access_token
 * chunk (tokens_joined) holds their ciphertexts, this the rest. sealed
 * false: nothing to open (the tokens were opened as they were read, or
 * there are not two). */
typedef struct StoreSealedTokens {
        int64_t id;
        uint32_t size[2];          /* of each token, ciphertext and plaintext */
        uint8_t nonce[2][CRYPT_NONCE_SIZE];
        uint8_t tag[2][CRYPT_TAG_SIZE];
        bool sealed;
} StoreSealedTokens;

/* store_load_connections() that leaves opening the two tokens to
 * store_tokens_open() (issue 9: the start opens them on its linking
 * thread) for each row want_deferred() (NULL: every row) says so, before
 * the row is read. fn takes ownership of c; t is only valid during the
 * call. Until opened, c's tokens are ciphertext: c is only for
 * store_tokens_open() or connection_free(). */
int store_load_connections_deferred(Store *s, int (*fn)(Connection *c, const StoreSealedTokens *t, void *userdata),
                                    bool (*want_deferred)(void *userdata), void *userdata);
/* Opens c's tokens in place under k (any thread: touches c, t and k only,
 * never the store; k is that thread's, see store_key_dup()). 0, or -EBADMSG
 * with the message the store would give in error (the chunk wiped: c keeps
 * no token, and is to be freed). */
int store_tokens_open(CryptKey *k, Connection *c, const StoreSealedTokens *t, char *error, size_t error_size);
/* A copy of the store's key for another thread, its opening context made
 * already (opening allocates nothing). */
int store_key_dup(Store *s, CryptKey **ret);

/* Synchronous: commits before returning. Sets c->id: c->id when it is > 0
 * already (one from store_connection_id_new()), else the next free one. */
int store_connection_insert(Store *s, Connection *c);
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

/* ---- group commit ------------------------------------------------------
 *
 * The durability rule: no client ever receives an access token before the
 * transaction that holds it (and any rotated refresh token) is durable.
 * The writer keeps its half: a completion with result 0 is only delivered
 * once the batch holding that change is committed and fsynced (WAL,
 * synchronous=FULL). The caller keeps the other half: it does not hand
 * out what it queued until that completion (daemon/refresher.c stages new
 * tokens beside the connection until then). */

/* An id for a new connection, without touching the disk: on SQLite one
 * more than the highest id the file had at open or handed out since. On
 * PostgreSQL (several nodes) from a block of STORE_ID_BLOCK ids reserved
 * in the database for this node alone: the writer thread reserves the
 * first at store_writer_new() and the next when half of the current one
 * is used. -EAGAIN (never blocking) when a burst used the block up before
 * the next arrived (or the database is out of reach): retry in a moment.
 * A store without a writer (tools, tests) reserves its blocks itself,
 * blocking. */
#define STORE_ID_BLOCK 1000
int64_t store_connection_id_new(Store *s);
/* A connection another node made (daemon/follower.c): on SQLite the next
 * id is above it; on PostgreSQL nothing (ids come from this node's
 * blocks, never from another's). */
void store_connection_id_seen(Store *s, int64_t id);

/* An image of one connections row, its secrets sealed under the store's
 * key (bound to c->id), everything copied: c may change or go at once. */
typedef struct StoreRow StoreRow;
int store_row_new(Store *s, const Connection *c, StoreRow **ret);
/* The same of an image (refresher_image()), under the connection's name. */
int store_image_row_new(Store *s, const ConnImage *img, StoreRow **ret);
StoreRow *store_row_free(StoreRow *row);
/* Several nodes on PostgreSQL (issue 10; no effect on SQLite): a
 * refresh's answer, committed only while this node holds the
 * connection's lease at epoch (else its completion gets -ESTALE and
 * nothing is written); or a save by a node without the lease, which
 * leaves the token columns to the holder. */
void store_row_fence(StoreRow *row, int64_t epoch);
void store_row_keep_tokens(StoreRow *row);
/* Synchronous, like store_connection_save(), for an image (tests and
 * tools): -ESTALE for a fenced image whose lease moved. */
int store_row_save(Store *s, const StoreRow *row);
DEFINE_TRIVIAL_CLEANUP_FUNC(StoreRow *, store_row_free);

/* ---- followers (several nodes on PostgreSQL, daemon/follower.c) --------
 *
 * Every change of a connection is announced to every node in the
 * transaction that makes it (LISTEN/NOTIFY on PostgreSQL). On a handle of
 * its own, a follower listens, reads the rows that changed, and hands
 * them to the loop, which turns them into connections. -EOPNOTSUPP on
 * SQLite (one node: nothing to follow). */
/* Another handle on s's database, as s was opened (a thread's own: s's
 * target, password, key and node never change after the open). */
int store_open_again(Store *s, Store **ret, char *error, size_t error_size);
int store_changes_listen(Store *s);
/* Asks the node holding connection id's lease to refresh it. */
int store_changes_request(Store *s, int64_t id, const char *name);
/* The highest version of any row now (0 on SQLite): read before the
 * rows are loaded, it is where a follower starts. */
int store_max_version(Store *s, int64_t *ret);
/* Waits up to timeout (or until wake_fd, an eventfd or -1, is readable);
 * fn gets each change: version -1 and the name for a delete, version -2
 * and the name for a refresh request (store_changes_request()), node the
 * node that made it ("" or "-": a tool). Returns how many, 0 on a
 * timeout, -errno (the handle is then to be closed). */
int store_changes_wait(Store *s, usec_t timeout, int wake_fd,
                       int (*fn)(int64_t id, int64_t version, const char *node, const char *name, void *userdata),
                       void *userdata);
/* The rows with these ids (n > 0), or every row whose version is above
 * after_version (n == 0: a catch-up), by version; fn takes ownership of
 * a copy of each. */
int store_rows_changed(Store *s, const int64_t *ids, size_t n, int64_t after_version,
                       int (*fn)(StoreRow *row, void *userdata), void *userdata);
int64_t store_row_version(const StoreRow *row);
/* A connection made from a row (its secrets opened under s's key): on
 * the loop, which owns the interned strings. */
int store_row_to_connection(Store *s, const StoreRow *row, Connection **ret);

typedef struct StoreWriter StoreWriter;

/* Called on the loop when a queued change is durable (result 0) or failed
 * (-errno; error says what went wrong, never a secret). */
typedef void (*store_done_fn)(int result, const char *error, void *userdata);

/* A batch closes when the writer is free to commit it: at once when the
 * writer is idle (a lone change waits for nothing but its own commit), or
 * with whatever queued while it committed the one before, at most this
 * many changes a transaction. */
#define STORE_BATCH_MAX 512

/* Opens a second handle on s's file for a writer thread and watches the
 * completions on event (an eventfd, an sd-event io source). s stays the
 * loop's: reads (store_events_list) and row images (store_row_new). While
 * the environment names a file in TOKENBROKER_TEST_WRITER_STALL and it
 * exists, the writer holds each batch before committing it (a test hook:
 * never more than STORE_WRITER_STALL_MAX a batch, never while stopping). */
#define STORE_WRITER_STALL_MAX (120 * USEC_PER_SEC)
int store_writer_new(Store *s, sd_event *event, StoreWriter **ret);
/* The test hook holds nothing from now on (the daemon is stopping:
 * SIGTERM, store_writer_flush()). */
void store_writer_unstall(StoreWriter *w);
/* Stops the writer after it has committed everything queued, then runs
 * the completions still due: see store_writer_flush(). */
StoreWriter *store_writer_free(StoreWriter *w);
DEFINE_TRIVIAL_CLEANUP_FUNC(StoreWriter *, store_writer_free);

/* Queue one change; they commit in this order. Each takes ownership of
 * row; fn may be NULL. Fails only for memory (-ENOMEM, row freed) or a
 * writer already stopped (-ESHUTDOWN). */
int store_writer_insert(StoreWriter *w, StoreRow *row, store_done_fn fn, void *userdata);
int store_writer_save(StoreWriter *w, StoreRow *row, store_done_fn fn, void *userdata);
int store_writer_delete(StoreWriter *w, int64_t id, store_done_fn fn, void *userdata);
int store_writer_event(StoreWriter *w, usec_t at, const char *connection, const char *kind, const char *message);
/* Nothing to write: fn runs once everything queued before it is done
 * (read-your-writes for a reader of the loop's handle). */
int store_writer_barrier(StoreWriter *w, store_done_fn fn, void *userdata);

/* Work on the writer's thread, in order with the changes queued: a change
 * of a table the store itself does not know (daemon/links.c), or a read
 * that must not block the loop (the events listing: on PostgreSQL every
 * statement is a network round trip). run(s, data) runs inside the
 * batch's transaction with the writer's own handle, after every change
 * queued before it (and again if its batch is retried alone: it must start
 * from scratch); it returns 0 or -errno (store_custom_error() says why) and
 * touches nothing the loop uses. fn gets its result on the loop;
 * data_free(data), if not NULL, runs when the change is done with, on the
 * loop. */
typedef int (*store_custom_fn)(Store *s, void *data);
int store_writer_custom(StoreWriter *w, store_custom_fn run, void *data, void (*data_free)(void *data),
                        store_done_fn fn, void *userdata);
/* The SQLite handle: the loop's for reads at startup, the writer's inside
 * a store_custom_fn; NULL on PostgreSQL. */
sqlite3 *store_sqlite(Store *s);
/* The same for PostgreSQL (daemon/pg.h): NULL on SQLite. */
struct PgDb;
struct PgDb *store_pg(Store *s);
void store_custom_error(Store *s, const char *error);

/* Changes queued whose completion has not run yet. */
size_t store_writer_pending(StoreWriter *w);

/* Blocks until everything queued is committed and its completion has run
 * (completions may queue more: those too, a bounded number of rounds).
 * For shutdown and unit tests, never for a loop that serves clients. */
int store_writer_flush(StoreWriter *w);

/* ---- several nodes: deletes by tombstone (issue 10) ----------------------
 *
 * A delete on PostgreSQL leaves a tombstone (id, name, version) written in
 * the same statement, so that a node that missed its notification learns
 * of it by version. -EOPNOTSUPP on SQLite. */
int store_deleted_since(Store *s, int64_t after,
                        int (*fn)(int64_t id, int64_t version, const char *name, void *userdata), void *userdata);
/* The highest version whose tombstone was pruned: a node that has seen
 * less than this compares what it holds with store_ids_missing() instead. */
int store_deleted_horizon(Store *s, int64_t *ret);
/* Prunes tombstones older than age. */
#define STORE_TOMBSTONE_AGE (24 * 3600 * USEC_PER_SEC)
int store_deleted_prune(Store *s, usec_t age);
/* Of ids, those no connection has any more, each to fn. */
int store_ids_missing(Store *s, const int64_t *ids, size_t n, int (*fn)(int64_t id, void *userdata), void *userdata);
/* How many ids this store has reserved and not handed out yet (tests,
 * metrics); 0 on SQLite. */
int64_t store_ids_left(Store *s);
