/* SPDX-License-Identifier: MIT */

/* The links table on PostgreSQL (daemon/links-db.c, sql/pg/0004-links.sql):
 * the same cases as on SQLite, and what only several nodes have: ids
 * reserved by two nodes never collide, two nodes claiming one link at the
 * same instant, many times over, get it once, and a pending
 * authorization is found by its state's hash.
 *
 *   TB_PG_URI            postgresql://tokenbroker@127.0.0.1:PORT/  (no database)
 *   TB_PG_PASSWORD_FILE  the role's password
 * Run by tests/integration/ha-links.test.js. */

#include <errno.h>
#include <pthread.h>

#include "common/macro.h"
#include "common/util.h"
#include "daemon/pg.h"
#include "daemon/store.h"

#define TESTS_MAIN
#include "tests.h"
#include "links-db-cases.h"
#include "pg-env.h"
#include "pg-store-env.h"

TEST(links_db_on_postgresql) {
        _cleanup_free_ char *uri = pg_env_fresh_db("l_cases");
        Store *s = NULL;

        CHECK(uri);
        CHECK_EQ_INT(pg_env_open_node(uri, "a", &s), 0);
        if (s)
                links_db_cases(s);
        store_close(s);
}

TEST(reserved_ids_never_collide_between_nodes) {
        _cleanup_free_ char *uri = pg_env_fresh_db("l_ids");
        Store *a = NULL, *b = NULL;
        int64_t ia[16], ib[16];

        CHECK(uri);
        CHECK_EQ_INT(pg_env_open_node(uri, "a", &a), 0);
        CHECK_EQ_INT(pg_env_open_node(uri, "b", &b), 0);
        if (!a || !b)
                goto out;
        for (int round = 0; round < 4; round++) {
                CHECK_EQ_INT(links_db_reserve_ids(a, ia, 16), 0);
                CHECK_EQ_INT(links_db_reserve_ids(b, ib, 16), 0);
                for (int i = 0; i < 16; i++) {
                        CHECK(ia[i] > 0 && ib[i] > 0);
                        for (int j = 0; j < 16; j++)
                                CHECK(ia[i] != ib[j]);
                        if (i > 0)
                                CHECK(ia[i] > ia[i - 1]);
                }
        }
out:
        store_close(a);
        store_close(b);
}

typedef struct Claimer {
        Store *s;
        int64_t id;
        usec_t at;
        pthread_barrier_t *go;
        int result;
} Claimer;

static void *claim(void *userdata) {
        Claimer *c = userdata;

        pthread_barrier_wait(c->go);
        c->result = links_db_mark(c->s, LINK_MARK_USED, c->id, c->at);
        return NULL;
}

TEST(two_nodes_claiming_at_once_get_a_link_once) {
        _cleanup_free_ char *uri = pg_env_fresh_db("l_race");
        const usec_t t = 1700000000ULL * USEC_PER_SEC;
        Store *a = NULL, *b = NULL;
        unsigned both = 0, none = 0;

        CHECK(uri);
        CHECK_EQ_INT(pg_env_open_node(uri, "a", &a), 0);
        CHECK_EQ_INT(pg_env_open_node(uri, "b", &b), 0);
        if (!a || !b)
                goto out;
        for (int i = 1; i <= 100; i++) {
                Link l = link_sample(i, 'a', t, t + USEC_PER_DAY);
                pthread_barrier_t go;
                Claimer ca = { .s = a, .id = i, .at = t + 1, .go = &go }, cb = { .s = b, .id = i, .at = t + 2, .go = &go };
                pthread_t ta, tb;

                snprintf(l.hash, sizeof l.hash, "%064d", i);
                if (links_db_insert(a, &l) < 0) {
                        CHECK(false);
                        break;
                }
                pthread_barrier_init(&go, NULL, 2);
                pthread_create(&ta, NULL, claim, &ca);
                pthread_create(&tb, NULL, claim, &cb);
                pthread_join(ta, NULL);
                pthread_join(tb, NULL);
                pthread_barrier_destroy(&go);
                CHECK(ca.result >= 0 && cb.result >= 0);
                both += ca.result + cb.result > 1;
                none += ca.result + cb.result == 0;
        }
        CHECK_EQ_INT(both, 0);
        CHECK_EQ_INT(none, 0);
out:
        store_close(a);
        store_close(b);
}

TEST(pending_authorization_by_state_hash) {
        _cleanup_free_ char *uri = pg_env_fresh_db("l_pending");
        _cleanup_(pg_db_closep) PgDb *d = NULL;
        Store *s = NULL;
        int64_t id = 0;
        char h[65];

        CHECK(uri);
        CHECK_EQ_INT(pg_env_open_node(uri, "a", &s), 0);
        d = pg_env_connect("l_pending");
        CHECK(d);
        if (!s || !d)
                goto out;
        memset(h, 'e', 64);
        h[64] = 0;
        CHECK_EQ_INT(links_db_pending_id(s, h, &id), 0);
        CHECK(pg_db_exec(d, "INSERT INTO connections (id, name, provider, state, state_hash, created_at, updated_at) "
                            "VALUES (41, 'alice', 'local', 'pending', "
                            "'eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee', 1, 1)") >= 0);
        CHECK_EQ_INT(links_db_pending_id(s, h, &id), 1);
        CHECK_EQ_INT(id, 41);
        h[0] = 'd';
        CHECK_EQ_INT(links_db_pending_id(s, h, &id), 0);
out:
        store_close(s);
}
