/* SPDX-License-Identifier: MIT */

/* Several nodes creating and deleting connections on one PostgreSQL
 * (issue 10): connection ids in blocks reserved in the database (no two
 * nodes ever hand out the same id, with or without a writer reserving
 * ahead), and tombstones (a delete a node missed is found by version;
 * pruned tombstones move the horizon; the ids no row has any more).
 *
 * The cluster is tests/integration/store-pg.test.js's (tests/lib/pg.js):
 *   TB_PG_URI            postgresql://tokenbroker@127.0.0.1:PORT/  (no database)
 *   TB_PG_PASSWORD_FILE  the role's password */

#include <errno.h>
#include <pthread.h>
#include <unistd.h>

#include "common/macro.h"
#include "common/util.h"
#include "daemon/pg.h"
#include "daemon/store.h"

#define TESTS_MAIN
#include "tests.h"
#include "store-fixtures.h"
#include "pg-env.h"
#include "pg-store-env.h"

static int db_exec(const char *db, const char *sql) {
        _cleanup_(pg_db_closep) PgDb *d = pg_env_connect(db);
        int r;

        if (!d)
                return -EIO;
        r = pg_db_exec(d, sql);
        if (r < 0)
                fprintf(stderr, "  %s: %s\n", sql, pg_db_error(d));
        return r;
}

#define PER_NODE 2000

typedef struct Node {
        const char *uri;
        char name[16];
        bool writer;               /* a writer thread reserves ahead (the daemon's way) */
        int64_t ids[PER_NODE];
        size_t n;
        unsigned again;            /* -EAGAIN answers (a burst ahead of the reservation) */
        int error;
} Node;

/* A node taking PER_NODE ids as fast as it can, as the loop would: never
 * blocking when a writer reserves, retrying -EAGAIN after a moment. */
static void *node_thread(void *userdata) {
        Node *n = userdata;
        StoreWriter *w = NULL;
        Store *s = NULL;

        n->error = pg_env_open_node(n->uri, n->name, &s);
        if (n->error < 0)
                return NULL;
        if (n->writer && (n->error = store_writer_new(s, NULL, &w)) < 0) {
                store_close(s);
                return NULL;
        }
        while (n->n < PER_NODE) {
                int64_t id = store_connection_id_new(s);

                if (id == -EAGAIN && n->writer && n->again < 100000) {
                        n->again++;
                        (void) usleep(200);
                        continue;
                }
                if (id <= 0) {
                        n->error = id < 0 ? (int) id : -EINVAL;
                        break;
                }
                n->ids[n->n++] = id;
        }
        store_writer_free(w);
        store_close(s);
        return NULL;
}

static int cmp64(const void *a, const void *b) {
        int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;

        return x < y ? -1 : x > y;
}

static void two_nodes(const char *db, bool writer) {
        _cleanup_free_ char *uri = pg_env_fresh_db(db);
        static Node nodes[2];
        _cleanup_free_ int64_t *all = NULL;
        pthread_t t[2];
        size_t n = 0, dups = 0;

        if (!uri)
                return;
        /* a row copied in (--copy-store) or written by an older node: the
         * blocks start above it */
        {
                Store *s = NULL;
                _cleanup_(connection_freep) Connection *c = conn_new("copied", "p", CONN_PENDING);

                CHECK_EQ_INT(pg_env_open_node(uri, NULL, &s), 0);
                if (!s || !c)
                        return;
                c->id = 4321;
                CHECK_EQ_INT(store_connection_insert(s, c), 0);
                store_close(s);
        }
        for (unsigned i = 0; i < 2; i++) {
                nodes[i] = (Node) { .uri = uri, .writer = writer };
                snprintf(nodes[i].name, sizeof nodes[i].name, "node%u", i);
                CHECK_EQ_INT(pthread_create(&t[i], NULL, node_thread, &nodes[i]), 0);
        }
        for (unsigned i = 0; i < 2; i++)
                pthread_join(t[i], NULL);
        all = new(int64_t, 2 * PER_NODE);
        if (!all)
                return;
        for (unsigned i = 0; i < 2; i++) {
                CHECK_EQ_INT(nodes[i].error, 0);
                CHECK_EQ_INT((int) nodes[i].n, PER_NODE);
                for (size_t j = 0; j < nodes[i].n; j++) {
                        CHECK(nodes[i].ids[j] > 4321);
                        all[n++] = nodes[i].ids[j];
                }
        }
        qsort(all, n, sizeof *all, cmp64);
        for (size_t j = 1; j < n; j++)
                dups += all[j] == all[j - 1];
        CHECK_EQ_INT((int) dups, 0);
        CHECK_EQ_INT((int) n, 2 * PER_NODE);
}

/* Tools and tests (no writer): each node reserves its blocks itself. */
TEST(two_nodes_take_2000_ids_each_at_once_all_distinct) {
        two_nodes("i_sync", false);
}

/* The daemon's way: the writer thread reserves the next block ahead of
 * need; a burst faster than that gets -EAGAIN, never a shared id. */
TEST(two_nodes_with_writers_reserving_ahead_all_distinct) {
        two_nodes("i_writer", true);
}

/* A connection another node made never moves this node into that node's
 * block; with a writer, the next block is reserved before this one ends. */
TEST(an_id_seen_elsewhere_moves_nothing_and_blocks_come_ahead) {
        _cleanup_free_ char *uri = pg_env_fresh_db("i_seen");
        StoreWriter *w = NULL;
        Store *a = NULL, *b = NULL;
        int64_t x, y, first;
        usec_t until;

        if (!uri || pg_env_open_node(uri, "a", &a) < 0 || pg_env_open_node(uri, "b", &b) < 0)
                goto out;
        CHECK_EQ_INT(store_writer_new(a, NULL, &w), 0);
        CHECK_EQ_INT((int) store_ids_left(a), STORE_ID_BLOCK);   /* the first block at start */
        first = x = store_connection_id_new(a);
        y = store_connection_id_new(b);
        CHECK(x > 0 && y > 0 && x != y);
        store_connection_id_seen(a, y + 10);
        store_connection_id_seen(b, x + 10);
        CHECK_EQ_INT(store_connection_id_new(a), x + 1);
        CHECK_EQ_INT(store_connection_id_new(b), y + 1);
        /* past half of the block: the writer reserves the next one */
        for (int i = 0; i < STORE_ID_BLOCK / 2 + 10; i++)
                CHECK(store_connection_id_new(a) > 0);
        until = now(CLOCK_MONOTONIC) + 10 * USEC_PER_SEC;
        while (store_ids_left(a) < STORE_ID_BLOCK && now(CLOCK_MONOTONIC) < until)
                (void) usleep(1000);
        CHECK(store_ids_left(a) > STORE_ID_BLOCK);
        /* the rest of the block, then the next one, without a wait */
        for (int i = 0; i < STORE_ID_BLOCK; i++)
                x = store_connection_id_new(a);
        CHECK(x > first + STORE_ID_BLOCK - 1);
        CHECK(x < y || x > y + STORE_ID_BLOCK);   /* never in b's block */
out:
        store_writer_free(w);
        store_close(a);
        store_close(b);
}

typedef struct Seen {
        int64_t ids[16], versions[16];
        char names[16][32];
        size_t n;
} Seen;

static int on_deleted(int64_t id, int64_t version, const char *name, void *userdata) {
        Seen *s = userdata;

        if (s->n < ELEMENTSOF(s->ids)) {
                s->ids[s->n] = id;
                s->versions[s->n] = version;
                snprintf(s->names[s->n], sizeof s->names[s->n], "%s", name);
        }
        s->n++;
        return 0;
}

static int on_missing(int64_t id, void *userdata) {
        Seen *s = userdata;

        if (s->n < ELEMENTSOF(s->ids))
                s->ids[s->n] = id;
        s->n++;
        return 0;
}

/* A delete leaves a tombstone with the next version, read by a node
 * catching up from below it; pruning moves the horizon past it; the ids
 * no row has any more are found. */
TEST(tombstones_by_version_pruned_and_compared) {
        _cleanup_free_ char *uri = pg_env_fresh_db("i_tomb");
        _cleanup_(connection_freep) Connection *a = conn_new("gone", "p", CONN_PENDING);
        _cleanup_(connection_freep) Connection *b = conn_new("kept", "p", CONN_PENDING);
        Store *s = NULL, *other = NULL;
        int64_t before = 0, after = 0, horizon = -1;
        Seen seen = {};

        if (!uri || !a || !b || pg_env_open_node(uri, "a", &s) < 0 || pg_env_open_node(uri, "b", &other) < 0)
                goto out;
        CHECK_EQ_INT(store_connection_insert(s, a), 0);
        CHECK_EQ_INT(store_connection_insert(s, b), 0);
        CHECK_EQ_INT(store_max_version(other, &before), 0);
        CHECK_EQ_INT(store_deleted_horizon(other, &horizon), 0);
        CHECK_EQ_INT((int) horizon, 0);

        CHECK_EQ_INT(store_connection_delete(s, a->id), 0);
        CHECK_EQ_INT(store_deleted_since(other, before, on_deleted, &seen), 0);
        CHECK_EQ_INT((int) seen.n, 1);
        CHECK_EQ_INT(seen.ids[0], a->id);
        CHECK_STREQ(seen.names[0], "gone");
        CHECK(seen.versions[0] > before);
        /* a node that loaded after the delete has seen it */
        CHECK_EQ_INT(store_max_version(other, &after), 0);
        CHECK(after >= seen.versions[0]);
        seen.n = 0;
        CHECK_EQ_INT(store_deleted_since(other, after, on_deleted, &seen), 0);
        CHECK_EQ_INT((int) seen.n, 0);

        /* the ids no row has any more */
        {
                int64_t ids[3] = { a->id, b->id, 999999 };

                seen.n = 0;
                CHECK_EQ_INT(store_ids_missing(other, ids, 3, on_missing, &seen), 0);
                CHECK_EQ_INT((int) seen.n, 2);
                CHECK(seen.ids[0] == a->id || seen.ids[1] == a->id);
                CHECK(seen.ids[0] == 999999 || seen.ids[1] == 999999);
        }

        /* pruning: a young tombstone stays, an old one goes and moves the
         * horizon, so a node below it knows to compare */
        CHECK_EQ_INT(store_deleted_prune(other, STORE_TOMBSTONE_AGE), 0);
        seen.n = 0;
        CHECK_EQ_INT(store_deleted_since(other, before, on_deleted, &seen), 0);
        CHECK_EQ_INT((int) seen.n, 1);
        CHECK_EQ_INT(db_exec("i_tomb", "UPDATE deleted_connections SET deleted_at = deleted_at - 90000000000"), 0);
        CHECK_EQ_INT(store_deleted_prune(other, STORE_TOMBSTONE_AGE), 0);
        seen.n = 0;
        CHECK_EQ_INT(store_deleted_since(other, before, on_deleted, &seen), 0);
        CHECK_EQ_INT((int) seen.n, 0);
        CHECK_EQ_INT(store_deleted_horizon(other, &horizon), 0);
        CHECK(horizon > before);
        CHECK(horizon >= after);
out:
        store_close(s);
        store_close(other);
}
