/* SPDX-License-Identifier: MIT */

/* daemon/store.c on PostgreSQL (daemon/store-pg.c) against a real
 * PostgreSQL 15: the store's behaviour as tests/unit/test-store.c checks
 * it on SQLite (every field round-trips, sealed at rest, the key bound to
 * the database, the writer's order and failures), plus what only several
 * nodes meet: two stores opening one empty database at once, and a
 * session the server ends under the writer.
 *
 * The cluster is tests/integration/store-pg.test.js's (tests/lib/pg.js):
 *   TB_PG_URI            postgresql://tokenbroker@127.0.0.1:PORT/  (no database)
 *   TB_PG_PASSWORD_FILE  the role's password */

#include <errno.h>
#include <pthread.h>

#include "common/macro.h"
#include "common/util.h"
#include "daemon/pg.h"
#include "daemon/store.h"

#define TESTS_MAIN
#include "tests.h"
#include "store-fixtures.h"
#include "pg-env.h"

static const CryptKey test_key = { .bytes = "0123456789abcdef0123456789abcdef" };
static const CryptKey other_key = { .bytes = "fedcba9876543210fedcba9876543210" };


/* A fresh, empty database; returns its URI. */
static char *fresh_db(const char *name) {
        return pg_env_recreate(name) < 0 ? NULL : pg_env_uri(name);
}

static int open_store(const char *uri, const CryptKey *key, Store **ret) {
        StoreOptions o = { .password = pg_env_get_password() };
        char err[512];
        int r;

        r = store_open_with(uri, &o, key, ret, err, sizeof err);
        if (r < 0 && r != -EKEYREJECTED)
                fprintf(stderr, "  open %s: %s\n", uri, err);
        return r;
}

static int64_t db_int(const char *db, const char *sql) {
        _cleanup_(pg_db_closep) PgDb *d = pg_env_connect(db);
        PGresult *res = NULL;
        int64_t v = -1;

        if (d && pg_db_query(d, sql, NULL, &res) > 0)
                v = pg_get_int64(res, 0, 0);
        else if (d)
                fprintf(stderr, "  %s: %s\n", sql, pg_db_error(d));
        PQclear(res);
        return v;
}

TEST(open_fresh_then_reopen) {
        _cleanup_free_ char *uri = fresh_db("s_open");
        Store *s = NULL;

        CHECK(uri);
        if (!uri)
                return;
        CHECK_EQ_INT(open_store(uri, &test_key, &s), 0);
        CHECK(s);
        if (!s)
                return;
        CHECK_STREQ(store_engine_name(s), "postgresql");
        CHECK_EQ_INT(store_schema_version(s), store_pg_migrations[store_pg_n_migrations - 1].version);
        s = store_close(s);
        CHECK_EQ_INT(db_int("s_open", "SELECT count(*) FROM key_check"), 1);
        CHECK_EQ_INT(open_store(uri, &test_key, &s), 0);
        store_close(s);
}

TEST(round_trip_every_field) {
        _cleanup_free_ char *uri = fresh_db("s_fields");
        _cleanup_(connection_freep) Connection *c = conn_full();
        Store *s = NULL;
        Loaded l = {};

        CHECK(uri && c);
        if (!uri || !c || open_store(uri, &test_key, &s) < 0)
                return;
        CHECK_EQ_INT(store_connection_insert(s, c), 0);
        CHECK(c->id > 0);
        s = store_close(s);

        CHECK_EQ_INT(open_store(uri, &test_key, &s), 0);
        if (!s)
                return;
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT((int) l.n, 1);
        if (l.n == 1)
                check_same(c, l.c[0]);
        loaded_done(&l);

        /* every field changed, saved, loaded again */
        free(c->access_token);
        c->access_token = strdup("at-two");
        c->refresh_token = mfree(c->refresh_token);
        c->state = CONN_NEEDS_REAUTH;
        c->refreshes++;
        c->expires_at += 1;
        CHECK_EQ_INT(store_connection_save(s, c), 0);
        CHECK_EQ_INT(load_all(s, &l), 0);
        if (l.n == 1)
                check_same(c, l.c[0]);
        loaded_done(&l);
        store_close(s);
}

TEST(sealed_at_rest_and_bound_to_the_key) {
        _cleanup_free_ char *uri = fresh_db("s_sealed");
        _cleanup_(connection_freep) Connection *c = conn_full();
        Store *s = NULL;
        char err[512];

        if (!uri || !c || open_store(uri, &test_key, &s) < 0)
                return;
        CHECK_EQ_INT(store_connection_insert(s, c), 0);
        s = store_close(s);
        /* no plain secret in any column, read beneath the store */
        CHECK_EQ_INT(db_int("s_sealed", "SELECT count(*) FROM connections WHERE "
                                        "position('gho_AccessToken'::bytea in access_token) > 0 OR "
                                        "position('ghr_Refresh'::bytea in refresh_token) > 0 OR "
                                        "position('dBjftJeZ4CVP'::bytea in code_verifier) > 0"),
                     0);
        CHECK_EQ_INT(db_int("s_sealed", "SELECT count(*) FROM connections WHERE access_token IS NOT NULL AND "
                                        "refresh_token IS NOT NULL AND code_verifier IS NOT NULL"),
                     1);
        /* another key: refused before any row is read */
        {
                StoreOptions o = { .password = pg_env_get_password() };

                CHECK_EQ_INT(store_open_with(uri, &o, &other_key, &s, err, sizeof err), -EKEYREJECTED);
                CHECK(!s);
                CHECK(strstr(err, "another key"));
        }
}

TEST(names_and_states_unique_delete) {
        _cleanup_free_ char *uri = fresh_db("s_unique");
        _cleanup_(connection_freep) Connection *a = conn_new("one", "p", CONN_PENDING);
        _cleanup_(connection_freep) Connection *b = conn_new("one", "p", CONN_PENDING);
        _cleanup_(connection_freep) Connection *c = conn_new("two", "p", CONN_PENDING);
        Store *s = NULL;
        Loaded l = {};

        if (!uri || !a || !b || !c || open_store(uri, &test_key, &s) < 0)
                return;
        CHECK_EQ_INT(connection_set_state_hash(a, strdup("same-hash")), 0);
        CHECK_EQ_INT(connection_set_state_hash(c, strdup("same-hash")), 0);
        CHECK_EQ_INT(store_connection_insert(s, a), 0);
        CHECK_EQ_INT(store_connection_insert(s, b), -EEXIST);
        CHECK_EQ_INT(b->id, 0);   /* given back as it was */
        CHECK_EQ_INT(store_connection_insert(s, c), -EEXIST);
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT((int) l.n, 1);
        loaded_done(&l);
        CHECK_EQ_INT(store_connection_delete(s, a->id), 0);
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT((int) l.n, 0);
        /* a save of a row that is gone says so */
        CHECK_EQ_INT(store_connection_save(s, a), -ENOENT);
        store_close(s);
}

static int queue(Store *s, StoreWriter *w, Connection *c, bool insert, int i) {
        StoreRow *row = NULL;
        int r = store_row_new(s, c, &row);

        if (r < 0)
                return r;
        return insert ? store_writer_insert(w, row, on_done, (void *) (intptr_t) i)
                      : store_writer_save(w, row, on_done, (void *) (intptr_t) i);
}

TEST(writer_in_order_a_bad_change_fails_alone) {
        _cleanup_free_ char *uri = fresh_db("s_writer");
        _cleanup_(connection_freep) Connection *a = conn_new("wa", "p", CONN_ACTIVE);
        _cleanup_(connection_freep) Connection *b = conn_new("wa", "p", CONN_ACTIVE);
        _cleanup_(connection_freep) Connection *c = conn_new("wc", "p", CONN_ACTIVE);
        _cleanup_(store_closep) Store *s = NULL;
        StoreWriter *w = NULL;
        Loaded l = {};

        if (!uri || !a || !b || !c || open_store(uri, &test_key, &s) < 0)
                return;
        CHECK_EQ_INT(store_writer_new(s, NULL, &w), 0);
        if (!w)
                return;
        done = (Done) {};
        a->id = store_connection_id_new(s);
        b->id = store_connection_id_new(s);
        c->id = store_connection_id_new(s);
        a->access_token = strdup("at-a");
        CHECK_EQ_INT(queue(s, w, a, true, 0), 0);
        CHECK_EQ_INT(queue(s, w, b, true, 1), 0);   /* the same name: refused, alone */
        CHECK_EQ_INT(queue(s, w, c, true, 2), 0);
        free(a->access_token);
        a->access_token = strdup("at-a2");
        CHECK_EQ_INT(queue(s, w, a, false, 3), 0);
        CHECK_EQ_INT(store_writer_event(w, 7, "wa", "refresh", "ok"), 0);
        CHECK_EQ_INT(store_writer_delete(w, c->id, on_done, (void *) 4), 0);
        CHECK_EQ_INT(queue(s, w, c, false, 5), 0);   /* gone by then: fails alone */
        CHECK_EQ_INT(store_writer_flush(w), 0);
        CHECK_EQ_INT((int) done.n, 6);
        for (int i = 0; i < 6; i++)
                CHECK_EQ_INT(done.order[i], i);
        CHECK_EQ_INT(done.result[0], 0);
        CHECK_EQ_INT(done.result[1], -EEXIST);
        CHECK_EQ_INT(done.result[2], 0);
        CHECK_EQ_INT(done.result[3], 0);
        CHECK_EQ_INT(done.result[4], 0);
        CHECK_EQ_INT(done.result[5], -ENOENT);
        w = store_writer_free(w);
        CHECK_EQ_INT(db_int("s_writer", "SELECT count(*) FROM events WHERE connection = 'wa'"), 1);
        CHECK_EQ_INT(load_all(s, &l), 0);
        CHECK_EQ_INT((int) l.n, 1);
        if (l.n == 1) {
                CHECK_STREQ(l.c[0]->name, "wa");
                CHECK_STREQ(l.c[0]->access_token, "at-a2");
        }
        loaded_done(&l);
}

/* The server ends the writer's session (a restart, a failover): the next
 * batch meets the dead session when it begins, and each of its changes is
 * tried again alone, on a new session: nothing is lost and nothing waits
 * for a restart of the daemon. */
TEST(writer_survives_a_lost_session) {
        _cleanup_free_ char *uri = fresh_db("s_lost");
        _cleanup_(connection_freep) Connection *a = conn_new("la", "p", CONN_ACTIVE);
        _cleanup_(store_closep) Store *s = NULL;
        StoreWriter *w = NULL;

        if (!uri || !a || open_store(uri, &test_key, &s) < 0)
                return;
        CHECK_EQ_INT(store_writer_new(s, NULL, &w), 0);
        if (!w)
                return;
        done = (Done) {};
        a->id = store_connection_id_new(s);
        CHECK_EQ_INT(queue(s, w, a, true, 0), 0);
        CHECK_EQ_INT(store_writer_flush(w), 0);
        CHECK_EQ_INT(db_int("s_lost", "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                      "WHERE datname = 's_lost' AND pid <> pg_backend_pid()) t"),
                     2);   /* the loop's handle and the writer's */
        a->refreshes = 42;
        CHECK_EQ_INT(queue(s, w, a, false, 1), 0);
        CHECK_EQ_INT(store_writer_flush(w), 0);
        a->refreshes = 43;
        CHECK_EQ_INT(queue(s, w, a, false, 2), 0);
        CHECK_EQ_INT(store_writer_flush(w), 0);
        CHECK_EQ_INT((int) done.n, 3);
        CHECK_EQ_INT(done.result[0], 0);
        CHECK_EQ_INT(done.result[1], 0);
        CHECK_EQ_INT(done.result[2], 0);
        store_writer_free(w);
        CHECK_EQ_INT(db_int("s_lost", "SELECT refreshes FROM connections WHERE name = 'la'"), 43);
}

TEST(rekey) {
        _cleanup_free_ char *uri = fresh_db("s_rekey");
        _cleanup_(connection_freep) Connection *c = conn_full();
        Store *s = NULL;
        Loaded l = {};
        int n = -1;

        if (!uri || !c || open_store(uri, &test_key, &s) < 0)
                return;
        CHECK_EQ_INT(store_connection_insert(s, c), 0);
        CHECK_EQ_INT(store_rekey(s, &other_key, "rotated by a test", NULL, &n), 0);
        CHECK_EQ_INT(n, 1);
        s = store_close(s);
        CHECK_EQ_INT(open_store(uri, &test_key, &s), -EKEYREJECTED);
        CHECK_EQ_INT(open_store(uri, &other_key, &s), 0);
        if (!s)
                return;
        CHECK_EQ_INT(load_all(s, &l), 0);
        if (l.n == 1)
                check_same(c, l.c[0]);
        loaded_done(&l);
        CHECK_EQ_INT(db_int("s_rekey", "SELECT count(*) FROM events WHERE kind = 'key-rotated'"), 1);
        store_close(s);
}

static int listed;
static int count_event(const StoreEvent *e, void *userdata) {
        (void) userdata;
        if (e->connection && streq(e->connection, "ev") && e->kind && streq(e->kind, "k"))
                listed++;
        return 0;
}

TEST(events_listed_newest_first_by_page) {
        _cleanup_free_ char *uri = fresh_db("s_events");
        _cleanup_(store_closep) Store *s = NULL;

        if (!uri || open_store(uri, &test_key, &s) < 0)
                return;
        for (int i = 0; i < 5; i++)
                CHECK_EQ_INT(store_event_add(s, (usec_t) i, "ev", "k", "message"), 0);
        CHECK_EQ_INT(store_event_add(s, 9, NULL, "broker", "wide"), 0);
        listed = 0;
        CHECK_EQ_INT(store_events_list(s, "ev", 0, 3, count_event, NULL), 0);
        CHECK_EQ_INT(listed, 3);
        listed = 0;
        CHECK_EQ_INT(store_events_list(s, "ev", 3, 100, count_event, NULL), 0);   /* ids 1, 2 */
        CHECK_EQ_INT(listed, 2);
        listed = 0;
        CHECK_EQ_INT(store_events_list(s, NULL, 0, 100, count_event, NULL), 0);
        CHECK_EQ_INT(listed, 5);
}

struct opener {
        const char *uri;
        const CryptKey *key;
        int r;
};

static void *open_thread(void *userdata) {
        struct opener *o = userdata;
        Store *s = NULL;

        o->r = open_store(o->uri, o->key, &s);
        store_close(s);
        return NULL;
}

/* Nodes starting on an empty database at once: the schema is made once,
 * the key check written once, and a node with another key is refused. */
TEST(nodes_open_an_empty_database_at_once) {
        _cleanup_free_ char *uri = fresh_db("s_race");
        struct opener o[4];
        pthread_t t[4];
        int ok = 0, rejected = 0;

        if (!uri)
                return;
        for (unsigned i = 0; i < ELEMENTSOF(t); i++) {
                o[i] = (struct opener) { .uri = uri, .key = i == 3 ? &other_key : &test_key };
                CHECK_EQ_INT(pthread_create(&t[i], NULL, open_thread, &o[i]), 0);
        }
        for (unsigned i = 0; i < ELEMENTSOF(t); i++) {
                pthread_join(t[i], NULL);
                ok += o[i].r == 0;
                rejected += o[i].r == -EKEYREJECTED;
        }
        /* whichever key wrote the check first wins; every other opener with
         * another key is refused */
        CHECK_EQ_INT(ok + rejected, 4);
        CHECK(ok == 3 || ok == 1);
        CHECK_EQ_INT(db_int("s_race", "SELECT count(*) FROM key_check"), 1);
        CHECK_EQ_INT(db_int("s_race", "SELECT count(*) FROM schema_version"), 1);
}
