/* SPDX-License-Identifier: MIT */
#pragma once

/* The links table's statements (daemon/links-db.c), the same on each
 * engine: tests/unit/test-links-db.c on SQLite, tests/pg/test-links-db.c
 * on PostgreSQL. Include after tests.h. */

#include "common/util.h"
#include "daemon/links-db.h"

typedef struct LinkList {
        Link *l[16];
        size_t n;
} LinkList;

static inline int link_list_add(Link *l, void *userdata) {
        LinkList *x = userdata;

        if (x->n >= ELEMENTSOF(x->l)) {
                link_free(l);
                return -E2BIG;
        }
        x->l[x->n++] = l;
        return 0;
}

static inline void link_list_done(LinkList *x) {
        for (size_t i = 0; i < x->n; i++)
                link_free(x->l[i]);
        x->n = 0;
}

static inline Link link_sample(int64_t id, char c, usec_t created, usec_t expires) {
        Link l = { .id = id, .connection = (char *) "alice", .provider = (char *) "local",
                   .scope = id % 2 ? (char *) "openid email" : NULL, .by_name = id % 2 ? NULL : (char *) "root",
                   .creates = id % 2, .by = id % 2 ? -1 : 0, .created_at = created, .expires_at = expires };

        memset(l.hash, c, 64);
        l.hash[64] = 0;
        return l;
}

/* s: a fresh store, no links yet. */
static inline void links_db_cases(Store *s) {
        const usec_t t = 1700000000ULL * USEC_PER_SEC;
        Link a = link_sample(7, 'a', t, t + USEC_PER_DAY), b = link_sample(8, 'b', t, t + USEC_PER_HOUR);
        Link old = link_sample(9, 'c', t - 3 * USEC_PER_DAY, t - 2 * USEC_PER_DAY);
        LinkList x = {};

        CHECK_EQ_INT(links_db_insert(s, &a), 0);
        CHECK_EQ_INT(links_db_insert(s, &b), 0);
        CHECK_EQ_INT(links_db_insert(s, &old), 0);
        CHECK(links_db_insert(s, &a) < 0);   /* the same id and hash again */

        /* every row, by id, every field back */
        CHECK_EQ_INT(links_db_load(s, NULL, link_list_add, &x), 0);
        CHECK_EQ_INT(x.n, 3);
        if (x.n == 3) {
                CHECK_EQ_INT(x.l[0]->id, 7);
                CHECK_STREQ(x.l[0]->hash, a.hash);
                CHECK_STREQ(x.l[0]->connection, "alice");
                CHECK_STREQ(x.l[0]->provider, "local");
                CHECK_STREQ(x.l[0]->scope, "openid email");
                CHECK(!x.l[0]->by_name);
                CHECK(x.l[0]->creates);
                CHECK_EQ_INT(x.l[0]->by, -1);
                CHECK(x.l[0]->created_at == t && x.l[0]->expires_at == t + USEC_PER_DAY);
                CHECK(x.l[0]->used_at == 0 && x.l[0]->revoked_at == 0);
                CHECK_EQ_INT(x.l[1]->id, 8);
                CHECK(!x.l[1]->scope);
                CHECK_STREQ(x.l[1]->by_name, "root");
                CHECK(!x.l[1]->creates);
                CHECK_EQ_INT(x.l[1]->by, 0);
        }
        link_list_done(&x);

        /* one by its hash; an unknown hash: none */
        CHECK_EQ_INT(links_db_load(s, b.hash, link_list_add, &x), 0);
        CHECK(x.n == 1 && x.l[0]->id == 8);
        link_list_done(&x);
        {
                char none[65];

                memset(none, 'f', 64);
                none[64] = 0;
                CHECK_EQ_INT(links_db_load(s, none, link_list_add, &x), 0);
                CHECK_EQ_INT(x.n, 0);
        }

        /* the claim: once; not after expiry; undone only by its own time */
        CHECK_EQ_INT(links_db_mark(s, LINK_MARK_USED, 7, t + 10), 1);
        CHECK_EQ_INT(links_db_mark(s, LINK_MARK_USED, 7, t + 20), 0);
        CHECK_EQ_INT(links_db_mark(s, LINK_MARK_UNUSED, 7, t + 20), 0);
        CHECK_EQ_INT(links_db_mark(s, LINK_MARK_REVOKED, 7, t + 30), 0);    /* used: not revoked */
        CHECK_EQ_INT(links_db_mark(s, LINK_MARK_USED, 9, t), 0);            /* expired */
        CHECK_EQ_INT(links_db_mark(s, LINK_MARK_USED, 8, t + USEC_PER_HOUR), 0);   /* at its expiry */
        CHECK_EQ_INT(links_db_mark(s, LINK_MARK_UNUSED, 7, t + 10), 1);
        CHECK_EQ_INT(links_db_mark(s, LINK_MARK_USED, 7, t + 40), 1);       /* usable again */
        CHECK_EQ_INT(links_db_load(s, a.hash, link_list_add, &x), 0);
        CHECK(x.n == 1 && x.l[0]->used_at == t + 40 && x.l[0]->revoked_at == 0);
        link_list_done(&x);

        /* revoked: once, and then not usable */
        CHECK_EQ_INT(links_db_mark(s, LINK_MARK_REVOKED, 8, t + 50), 1);
        CHECK_EQ_INT(links_db_mark(s, LINK_MARK_REVOKED, 8, t + 60), 0);
        CHECK_EQ_INT(links_db_mark(s, LINK_MARK_USED, 8, t + 70), 0);
        CHECK_EQ_INT(links_db_load(s, b.hash, link_list_add, &x), 0);
        CHECK(x.n == 1 && x.l[0]->revoked_at == t + 50 && x.l[0]->used_at == 0);
        link_list_done(&x);

        /* the ones expired before a time go */
        CHECK_EQ_INT(links_db_mark(s, LINK_MARK_DELETE_OLD, 0, t - USEC_PER_DAY), 1);
        CHECK_EQ_INT(links_db_load(s, NULL, link_list_add, &x), 0);
        CHECK_EQ_INT(x.n, 2);
        link_list_done(&x);
        CHECK_EQ_INT(links_db_mark(s, 99, 7, t), -EINVAL);
}
