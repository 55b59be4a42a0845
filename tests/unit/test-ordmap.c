/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <stdlib.h>

#include "common/hashmap.h"
#include "common/macro.h"
#include "common/ordmap.h"

#define TESTS_MAIN
#include "tests.h"

typedef struct Item {
        char name[16];
        OrdNode node;
        bool in;
} Item;

static const char *item_key(const OrdNode *n) {
        return container_of(n, Item, node)->name;
}

static Item *item_of(OrdNode *n) {
        return n ? container_of(n, Item, node) : NULL;
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

TEST(node_is_two_pointers) {
        CHECK_EQ_INT(sizeof(OrdNode), 2 * sizeof(void *));
}

TEST(put_get_remove_seek) {
        Item a = { .name = "alpha" }, b = { .name = "bravo" }, c = { .name = "charlie" }, dup = { .name = "bravo" };
        Ordmap m;
        OrdIter it;

        ordmap_init(&m, item_key);
        CHECK(!ordmap_get(&m, "alpha"));
        ordmap_seek(&m, &it, NULL, false);
        CHECK(!ordmap_iter_next(&it));

        CHECK_EQ_INT(ordmap_put(&m, &c.node), 0);
        CHECK_EQ_INT(ordmap_put(&m, &a.node), 0);
        CHECK_EQ_INT(ordmap_put(&m, &b.node), 0);
        CHECK_EQ_INT(ordmap_put(&m, &dup.node), -EEXIST);
        CHECK_EQ_INT(ordmap_size(&m), 3);
        CHECK(item_of(ordmap_get(&m, "bravo")) == &b);
        CHECK_EQ_INT(ordmap_verify(&m), 0);

        ordmap_seek(&m, &it, NULL, false);
        CHECK(item_of(ordmap_iter_next(&it)) == &a);
        CHECK(item_of(ordmap_iter_next(&it)) == &b);
        CHECK(item_of(ordmap_iter_next(&it)) == &c);
        CHECK(!ordmap_iter_next(&it));

        /* after a key that is there, one that is not, past the end */
        ordmap_seek(&m, &it, "alpha", false);
        CHECK(item_of(ordmap_iter_next(&it)) == &b);
        ordmap_seek(&m, &it, "alpha", true);
        CHECK(item_of(ordmap_iter_next(&it)) == &a);
        ordmap_seek(&m, &it, "b", false);
        CHECK(item_of(ordmap_iter_next(&it)) == &b);
        ordmap_seek(&m, &it, "bravo-", false);
        CHECK(item_of(ordmap_iter_next(&it)) == &c);
        ordmap_seek(&m, &it, "charlie", false);
        CHECK(!ordmap_iter_next(&it));
        ordmap_seek(&m, &it, "", false);
        CHECK(item_of(ordmap_iter_next(&it)) == &a);

        /* a cursor naming a removed node continues after it */
        ordmap_remove(&m, &b.node);
        CHECK_EQ_INT(ordmap_size(&m), 2);
        CHECK(!ordmap_get(&m, "bravo"));
        ordmap_seek(&m, &it, "bravo", false);
        CHECK(item_of(ordmap_iter_next(&it)) == &c);
        CHECK_EQ_INT(ordmap_verify(&m), 0);
        ordmap_remove(&m, &a.node);
        ordmap_remove(&m, &c.node);
        CHECK_EQ_INT(ordmap_size(&m), 0);
        CHECK(!m.root);
}

TEST(byte_order_not_locale) {
        Item hi = { .name = "\xc3\xa9t\xc3\xa9" }, lo = { .name = "zz" }, up = { .name = "Z" };
        Ordmap m;
        OrdIter it;

        ordmap_init(&m, item_key);
        CHECK_EQ_INT(ordmap_put(&m, &hi.node), 0);
        CHECK_EQ_INT(ordmap_put(&m, &lo.node), 0);
        CHECK_EQ_INT(ordmap_put(&m, &up.node), 0);
        ordmap_seek(&m, &it, NULL, false);
        CHECK(item_of(ordmap_iter_next(&it)) == &up);
        CHECK(item_of(ordmap_iter_next(&it)) == &lo);
        CHECK(item_of(ordmap_iter_next(&it)) == &hi);   /* 0xc3 > 'z' */
}

/* Random puts and removes against a sorted array: the order, every seek,
 * the balance and the heights hold after each round. */
TEST(random_against_sorted_array) {
        enum { N = 4000, ROUNDS = 12 };
        Item *items = calloc(N, sizeof(Item));
        const char **want = calloc(N, sizeof(char *));
        unsigned seed = 12345;
        Ordmap m;

        if (!items || !want) {
                CHECK(false);
                goto out;
        }
        ordmap_init(&m, item_key);
        for (unsigned i = 0; i < N; i++)
                snprintf(items[i].name, sizeof items[i].name, "n%07u", (i * 7919u) % 100003u);
        for (unsigned round = 0; round < ROUNDS; round++) {
                size_t n = 0, k = 0;
                OrdIter it;
                OrdNode *x;

                for (unsigned j = 0; j < N; j++) {
                        Item *e = &items[rand_r(&seed) % N];
                        if (e->in) {
                                ordmap_remove(&m, &e->node);
                                e->in = false;
                        } else {
                                CHECK_EQ_INT(ordmap_put(&m, &e->node), 0);
                                e->in = true;
                        }
                }
                CHECK_EQ_INT(ordmap_verify(&m), 0);
                for (unsigned i = 0; i < N; i++)
                        if (items[i].in)
                                want[n++] = items[i].name;
                qsort(want, n, sizeof *want, cmp_str);
                CHECK_EQ_INT(ordmap_size(&m), n);
                ordmap_seek(&m, &it, NULL, false);
                while ((x = ordmap_iter_next(&it)) && k < n)
                        if (strcmp(item_key(x), want[k++]) != 0)
                                break;
                CHECK_EQ_INT(k, n);
                CHECK(!x);
                /* seek after every name of every item, in or out */
                for (unsigned i = 0; i < N; i += 37) {
                        size_t lo = 0, hi = n;
                        while (lo < hi) {
                                size_t mid = (lo + hi) / 2;
                                if (strcmp(want[mid], items[i].name) <= 0)
                                        lo = mid + 1;
                                else
                                        hi = mid;
                        }
                        ordmap_seek(&m, &it, items[i].name, false);
                        x = ordmap_iter_next(&it);
                        CHECK(lo == n ? !x : (x && streq(item_key(x), want[lo])));
                }
        }
out:
        free(items);
        free(want);
}

TEST(sorted_inserts_stay_shallow) {
        enum { N = 1 << 16 };
        Item *items = calloc(N, sizeof(Item));
        Ordmap m;

        if (!items) {
                CHECK(false);
                return;
        }
        ordmap_init(&m, item_key);
        for (unsigned i = 0; i < N; i++) {
                snprintf(items[i].name, sizeof items[i].name, "c%07u", i);
                CHECK_EQ_INT(ordmap_put(&m, &items[i].node), 0);
        }
        CHECK_EQ_INT(ordmap_verify(&m), 0);
        /* AVL: height <= 1.44 log2(n + 2); 17 levels for a perfect tree */
        CHECK((m.root->link[0] & 7) + ((m.root->link[1] & 7) << 3) <= 24);
        for (unsigned i = 0; i < N; i += 2)
                ordmap_remove(&m, &items[i].node);
        CHECK_EQ_INT(ordmap_verify(&m), 0);
        CHECK_EQ_INT(ordmap_size(&m), N / 2);
        free(items);
}

/* ordmap_put()'s shortcut past the greatest key: appends, a key equal to
 * the greatest, and keys inside, interleaved; the tree stays right. */
TEST(appends_mixed_with_inserts) {
        enum { N = 4000 };
        Item *items = calloc(N, sizeof(Item));
        Item dup = {};
        Ordmap m;
        OrdIter it;
        unsigned n = 0;

        if (!items) {
                CHECK(false);
                return;
        }
        ordmap_init(&m, item_key);
        /* even numbers ascending (each one the new greatest), then every
         * odd one inside, descending */
        for (unsigned i = 0; i < N; i += 2) {
                snprintf(items[i].name, sizeof items[i].name, "c%07u", i);
                CHECK_EQ_INT(ordmap_put(&m, &items[i].node), 0);
                snprintf(dup.name, sizeof dup.name, "c%07u", i);
                CHECK_EQ_INT(ordmap_put(&m, &dup.node), -EEXIST);
        }
        CHECK_EQ_INT(ordmap_verify(&m), 0);
        for (unsigned i = N - 1; i < N; i -= 2) {
                snprintf(items[i].name, sizeof items[i].name, "c%07u", i);
                CHECK_EQ_INT(ordmap_put(&m, &items[i].node), 0);
        }
        CHECK_EQ_INT(ordmap_verify(&m), 0);
        CHECK_EQ_INT(ordmap_size(&m), N);
        ordmap_seek(&m, &it, NULL, false);
        for (OrdNode *x; (x = ordmap_iter_next(&it)); n++)
                CHECK(item_of(x) == &items[n]);
        CHECK_EQ_INT(n, N);
        free(items);
}
