/* SPDX-License-Identifier: MIT */

/* Leases and fencing on PostgreSQL (issue 10, daemon/cluster.h): two
 * "nodes" (two sessions with their own node names) against one database.
 * A refresh's commit names the lease epoch it was sent under; once another
 * node has taken the lease over, the loser's commit changes no row
 * (-ESTALE) and the winner's tokens stay. Shares spread over live nodes,
 * and two nodes taking leases at once never both get one.
 *
 *   TB_PG_URI            postgresql://tokenbroker@127.0.0.1:PORT/  (no database)
 *   TB_PG_PASSWORD_FILE  the role's password */

#include <errno.h>
#include <pthread.h>

#include "common/macro.h"
#include "common/util.h"
#include "daemon/cluster.h"
#include "daemon/pg.h"
#include "daemon/store.h"

#define TESTS_MAIN
#include "tests.h"
#include "store-fixtures.h"
#include "pg-env.h"
#include "pg-store-env.h"

static int64_t db_int(PgDb *d, const char *sql) {
        PGresult *res = NULL;
        int64_t v = -1;

        if (pg_db_query(d, sql, NULL, &res) > 0)
                v = pg_get_int64(res, 0, 0);
        else
                fprintf(stderr, "  %s: %s\n", sql, pg_db_error(d));
        PQclear(res);
        return v;
}

/* One heartbeat's lease work for node; returns how many it holds, the
 * epoch of the first in *ret_epoch. */
static int renew(PgDb *d, const char *node, size_t live, int64_t *ret_epoch) {
        _cleanup_free_ int64_t *ids = NULL, *epochs = NULL;
        size_t n = 0, total = 0;
        int r;

        r = cluster_leases_renew(d, node, live, &ids, &epochs, &n, &total);
        if (r < 0) {
                fprintf(stderr, "  renew %s: %s\n", node, pg_db_error(d));
                return r;
        }
        if (ret_epoch)
                *ret_epoch = n > 0 ? epochs[0] : 0;
        return (int) n;
}

/* A refresh's commit by node s under epoch, with access token at. */
static int fenced_commit(Store *s, Connection *c, const char *at, int64_t epoch) {
        _cleanup_(store_row_freep) StoreRow *row = NULL;
        char *old = c->access_token;
        int r;

        c->access_token = (char *) at;
        r = store_row_new(s, c, &row);
        c->access_token = old;
        if (r < 0)
                return r;
        store_row_fence(row, epoch);
        return store_row_save(s, row);
}

static char *stored_access_token(Store *s) {
        Loaded l = {};
        char *at = NULL;

        if (load_all(s, &l) == 0 && l.n == 1 && l.c[0]->access_token)
                at = strdup(l.c[0]->access_token);
        loaded_done(&l);
        return at;
}

TEST(the_loser_of_a_takeover_commits_nothing) {
        _cleanup_free_ char *uri = pg_env_fresh_db("l_fence");
        _cleanup_(connection_freep) Connection *c = conn_full();
        _cleanup_(pg_db_closep) PgDb *da = NULL, *db = NULL;
        _cleanup_free_ char *at = NULL;
        Store *a = NULL, *b = NULL;
        int64_t ea = 0, eb = 0;

        if (!uri || !c || pg_env_open_node(uri, "a", &a) < 0 || pg_env_open_node(uri, "b", &b) < 0)
                goto done;
        da = pg_env_connect("l_fence");
        db = pg_env_connect("l_fence");
        CHECK(da && db);
        if (!da || !db)
                goto done;
        CHECK_EQ_INT(store_connection_insert(a, c), 0);

        /* a holds it; b, alive too, finds nothing free to take */
        CHECK_EQ_INT(renew(da, "a", 2, &ea), 1);
        CHECK(ea > 0);
        CHECK_EQ_INT(renew(db, "b", 2, &eb), 0);
        /* without the lease, a commit under a made-up epoch is refused */
        CHECK_EQ_INT(fenced_commit(b, c, "at-from-b-without-lease", ea), -ESTALE);

        /* a sends a refresh under ea; meanwhile its lease lapses (a hangs)
         * and b takes over: a new epoch */
        CHECK_EQ_INT(pg_db_query(da, "UPDATE connections SET lease_until = 0", NULL, NULL), 1);
        CHECK_EQ_INT(renew(db, "b", 2, &eb), 1);
        CHECK_EQ_INT(eb, ea + 1);
        /* the winner commits; the loser's commit changes no row */
        CHECK_EQ_INT(fenced_commit(b, c, "at-from-b", eb), 0);
        CHECK_EQ_INT(fenced_commit(a, c, "at-from-a-late", ea), -ESTALE);
        at = stored_access_token(a);
        CHECK_STREQ(at, "at-from-b");
        /* a's next heartbeat does not take the lease back while b's runs */
        CHECK_EQ_INT(renew(da, "a", 2, NULL), 0);
        CHECK_EQ_INT(db_int(da, "SELECT lease_epoch FROM connections"), eb);
done:
        store_close(a);
        store_close(b);
}

/* A node without the lease writes everything but the tokens: an ACL
 * change on a node a moment behind never puts back a spent token. */
TEST(a_save_without_the_lease_keeps_the_tokens) {
        _cleanup_free_ char *uri = pg_env_fresh_db("l_keep");
        _cleanup_(connection_freep) Connection *c = conn_full();
        _cleanup_(store_row_freep) StoreRow *row = NULL;
        _cleanup_(pg_db_closep) PgDb *da = NULL;
        Store *a = NULL, *b = NULL;
        unsigned users[1] = { 4242 };
        int64_t ea = 0;
        Loaded l = {};

        if (!uri || !c || pg_env_open_node(uri, "a", &a) < 0 || pg_env_open_node(uri, "b", &b) < 0)
                goto done;
        da = pg_env_connect("l_keep");
        if (!da)
                goto done;
        CHECK_EQ_INT(store_connection_insert(a, c), 0);
        CHECK_EQ_INT(renew(da, "a", 1, &ea), 1);
        CHECK_EQ_INT(fenced_commit(a, c, "at-new", ea), 0);
        /* b's memory still has the old token; it changes the ACL */
        CHECK_EQ_INT(connection_set_acl(c, users, 1, NULL, 0), 0);
        CHECK_EQ_INT(store_row_new(b, c, &row), 0);
        if (!row)
                goto done;
        store_row_keep_tokens(row);
        CHECK_EQ_INT(store_row_save(b, row), 0);
        CHECK_EQ_INT(load_all(a, &l), 0);
        CHECK_EQ_INT((int) l.n, 1);
        if (l.n == 1) {
                CHECK_STREQ(l.c[0]->access_token, "at-new");
                CHECK_EQ_INT(l.c[0]->n_allow_users, 1);
        }
        loaded_done(&l);
done:
        store_close(a);
        store_close(b);
}

TEST(shares_spread_over_live_nodes) {
        _cleanup_free_ char *uri = pg_env_fresh_db("l_share");
        _cleanup_(pg_db_closep) PgDb *da = NULL, *db = NULL;
        Store *a = NULL;

        if (!uri || pg_env_open_node(uri, "a", &a) < 0)
                goto done;
        for (unsigned i = 0; i < 5; i++) {
                char name[16];
                _cleanup_(connection_freep) Connection *c = NULL;

                snprintf(name, sizeof name, "c%u", i);
                c = conn_new(name, "fake", CONN_ACTIVE);
                CHECK(c && store_connection_insert(a, c) == 0);
        }
        da = pg_env_connect("l_share");
        db = pg_env_connect("l_share");
        if (!da || !db)
                goto done;
        /* alone, a takes everything */
        CHECK_EQ_INT(renew(da, "a", 1, NULL), 5);
        /* b joins: a keeps its share of ceil(5/2) = 3 and lets 2 lapse,
         * which b takes once they have */
        CHECK_EQ_INT(renew(da, "a", 2, NULL), 3);
        CHECK_EQ_INT(renew(db, "b", 2, NULL), 0);
        CHECK_EQ_INT(pg_db_query(da, "UPDATE connections SET lease_until = 0 WHERE id NOT IN "
                                     "(SELECT id FROM connections ORDER BY id LIMIT 3)", NULL, NULL), 2);
        CHECK_EQ_INT(renew(db, "b", 2, NULL), 2);
        CHECK_EQ_INT(renew(da, "a", 2, NULL), 3);
        CHECK_EQ_INT(db_int(da, "SELECT count(DISTINCT lease_node) FROM connections"), 2);
done:
        store_close(a);
}

struct racer {
        const char *node;
        int n[20];
};

static void *race_thread(void *userdata) {
        struct racer *x = userdata;
        _cleanup_(pg_db_closep) PgDb *d = pg_env_connect("l_race");

        for (unsigned i = 0; d && i < ELEMENTSOF(x->n); i++)
                x->n[i] = renew(d, x->node, 2, NULL);
        return NULL;
}

/* Two nodes taking leases at once, over and over: every connection has
 * exactly one holder, never two. */
TEST(two_nodes_racing_never_share_a_lease) {
        _cleanup_free_ char *uri = pg_env_fresh_db("l_race");
        _cleanup_(pg_db_closep) PgDb *d = NULL;
        struct racer x[2] = { { .node = "a" }, { .node = "b" } };
        pthread_t t[2];
        Store *a = NULL;

        if (!uri || pg_env_open_node(uri, "a", &a) < 0)
                goto done;
        for (unsigned i = 0; i < 100; i++) {
                char name[16];
                _cleanup_(connection_freep) Connection *c = NULL;

                snprintf(name, sizeof name, "r%u", i);
                c = conn_new(name, "fake", CONN_ACTIVE);
                CHECK(c && store_connection_insert(a, c) == 0);
        }
        for (unsigned i = 0; i < 2; i++)
                CHECK_EQ_INT(pthread_create(&t[i], NULL, race_thread, &x[i]), 0);
        for (unsigned i = 0; i < 2; i++)
                pthread_join(t[i], NULL);
        d = pg_env_connect("l_race");
        if (!d)
                goto done;
        /* after the last round each holds its share, and the shares add up */
        CHECK_EQ_INT(x[0].n[19] + x[1].n[19], 100);
        CHECK(x[0].n[19] <= 50 && x[1].n[19] <= 50);
        for (unsigned i = 0; i < 20; i++)
                CHECK(x[0].n[i] >= 0 && x[1].n[i] >= 0 && x[0].n[i] <= 50 && x[1].n[i] <= 50);
        CHECK_EQ_INT(db_int(d, "SELECT count(*) FROM connections WHERE lease_node IS NULL"), 0);
done:
        store_close(a);
}
