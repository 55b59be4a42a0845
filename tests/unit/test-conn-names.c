/* SPDX-License-Identifier: MIT */
/*
 * A connection's names (provider, token type, scope, requested scope) as
 * one interned tuple (issue 9): equal values share one ConnNames, each
 * reference is counted, the last frees it, and a change that cannot be
 * interned (ENOMEM) keeps the old tuple. Linked with -Wl,--wrap=malloc
 * (see the Makefile) so that the tuple's allocation can be made to fail.
 */

#include <stdlib.h>
#include <string.h>

#include "common/macro.h"
#include "daemon/connection.h"

#define TESTS_MAIN
#include "tests.h"

void *__real_malloc(size_t size);
void *__wrap_malloc(size_t size);

static unsigned fail_mallocs;      /* the next this many malloc() calls fail */

void *__wrap_malloc(size_t size) {
        if (fail_mallocs > 0) {
                fail_mallocs--;
                return NULL;
        }
        return __real_malloc(size);
}

TEST(equal_values_share_one_tuple) {
        char p[] = "github", s[] = "repo read:org";
        const ConnNames a = { .provider = p, .token_type = "Bearer", .scope = s, .requested_scope = s };
        const ConnNames b = { .provider = "github", .token_type = "Bearer", .scope = "repo read:org",
                              .requested_scope = "repo read:org" };
        const ConnNames *x, *y;
        size_t n0 = conn_names_count();

        x = conn_names_intern(&a);
        y = conn_names_intern(&b);
        CHECK(x && y);
        CHECK(x == y);
        CHECK_EQ_INT((int) conn_names_count(), (int) n0 + 1);
        if (!x)
                return;
        /* copies, not the caller's strings */
        CHECK(x->provider != p && x->scope != s);
        CHECK_STREQ(x->provider, "github");
        CHECK_STREQ(x->token_type, "Bearer");
        CHECK_STREQ(x->scope, "repo read:org");
        CHECK_STREQ(x->requested_scope, "repo read:org");
        CHECK(conn_names_equal(x, &a));
        /* alive while a reference is */
        CHECK(conn_names_unref(x) == NULL);
        CHECK_STREQ(y->provider, "github");
        CHECK(conn_names_ref(y) == y);
        conn_names_unref(y);
        conn_names_unref(y);
        CHECK_EQ_INT((int) conn_names_count(), (int) n0);
}

TEST(fields_do_not_run_together) {
        /* the same bytes in other fields, or split otherwise, or NULL
         * against empty: each its own tuple */
        const ConnNames v[] = {
                { .provider = "a", .token_type = "b" },
                { .provider = "a", .scope = "b" },
                { .provider = "ab" },
                { .provider = "a", .token_type = "" },
                { .provider = "a" },
                { .provider = "a", .token_type = "1:b" },
                { .provider = "a1:b" },
                { .provider = "a", .token_type = "-", .scope = "-" },
                { .provider = "a", .token_type = "--" },
        };
        const ConnNames *t[ELEMENTSOF(v)];

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                t[i] = conn_names_intern(&v[i]);
                CHECK(t[i]);
                if (t[i])
                        CHECK(conn_names_equal(t[i], &v[i]));
        }
        for (size_t i = 0; i < ELEMENTSOF(v); i++)
                for (size_t j = i + 1; j < ELEMENTSOF(v); j++)
                        CHECK(t[i] != t[j]);
        CHECK_EQ_INT((int) conn_names_count(), (int) ELEMENTSOF(v));
        for (size_t i = 0; i < ELEMENTSOF(v); i++)
                conn_names_unref(t[i]);
        CHECK_EQ_INT((int) conn_names_count(), 0);
}

TEST(none_and_long) {
        char scope[1200];
        const ConnNames *x, *y;

        /* all NULL: the static tuple, never counted */
        CHECK(conn_names_intern(&(const ConnNames) {}) == &conn_names_none);
        CHECK(conn_names_ref(&conn_names_none) == &conn_names_none);
        CHECK(conn_names_unref(&conn_names_none) == NULL);
        CHECK(conn_names_unref(NULL) == NULL);
        CHECK_EQ_INT((int) conn_names_count(), 0);
        /* a key longer than the lookup's stack buffer */
        memset(scope, 's', sizeof scope - 1);
        scope[sizeof scope - 1] = 0;
        x = conn_names_intern(&(const ConnNames) { .provider = "p", .scope = scope });
        y = conn_names_intern(&(const ConnNames) { .provider = "p", .scope = scope });
        CHECK(x && x == y);
        if (x)
                CHECK_STREQ(x->scope, scope);
        conn_names_unref(x);
        conn_names_unref(y);
        CHECK_EQ_INT((int) conn_names_count(), 0);
}

TEST(connection_set_names_and_enomem) {
        Connection *c = connection_new("c1"), *d = connection_new("c2");
        const ConnNames *old;

        CHECK(c && d);
        if (!c || !d)
                goto out;
        CHECK(c->names == &conn_names_none);
        CHECK_EQ_INT(connection_set_provider(c, "github"), 0);
        CHECK_EQ_INT(connection_set_requested_scope(c, "repo"), 0);
        CHECK_STREQ(c->names->provider, "github");
        CHECK_STREQ(c->names->requested_scope, "repo");
        CHECK(!c->names->token_type && !c->names->scope);
        /* the intermediate tuple ("github" alone) is gone */
        CHECK_EQ_INT((int) conn_names_count(), 1);
        CHECK_EQ_INT(connection_set_names(d, c->names), 0);
        CHECK(d->names == c->names);
        CHECK_EQ_INT((int) conn_names_count(), 1);

        /* a new tuple that cannot be allocated: the old one is kept */
        old = c->names;
        fail_mallocs = 1;
        CHECK_EQ_INT(connection_set_requested_scope(c, "repo user"), -ENOMEM);
        fail_mallocs = 0;
        CHECK(c->names == old);
        CHECK_STREQ(c->names->requested_scope, "repo");
        CHECK_EQ_INT((int) conn_names_count(), 1);
        CHECK_EQ_INT(connection_set_requested_scope(c, "repo user"), 0);
        CHECK(c->names != d->names);
        CHECK_EQ_INT((int) conn_names_count(), 2);
        /* back to one that exists (d's): no allocation */
        fail_mallocs = 1;
        CHECK_EQ_INT(connection_set_requested_scope(c, "repo"), 0);
        CHECK(fail_mallocs == 1);
        fail_mallocs = 0;
        CHECK(c->names == d->names);
        CHECK_EQ_INT((int) conn_names_count(), 1);
out:
        connection_free(c);
        connection_free(d);
        CHECK_EQ_INT((int) conn_names_count(), 0);
}

/* The tuple interned last is found without a lookup; once freed it is
 * not handed out again. */
TEST(last_tuple_forgotten_when_freed) {
        const ConnNames v = { .provider = "p", .scope = "s" }, w = { .provider = "p", .scope = "t" };
        const ConnNames *x, *y, *z;

        x = conn_names_intern(&v);
        y = conn_names_intern(&v);
        CHECK(x && x == y);
        conn_names_unref(x);
        conn_names_unref(y);
        CHECK_EQ_INT((int) conn_names_count(), 0);
        /* a new one for the same values, and a different one after it */
        x = conn_names_intern(&v);
        z = conn_names_intern(&w);
        y = conn_names_intern(&v);
        CHECK(x && y && z && x == y && x != z);
        if (x && z) {
                CHECK_STREQ(x->scope, "s");
                CHECK_STREQ(z->scope, "t");
        }
        conn_names_unref(x);
        conn_names_unref(y);
        conn_names_unref(z);
        CHECK_EQ_INT((int) conn_names_count(), 0);
}
