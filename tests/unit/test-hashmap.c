/* SPDX-License-Identifier: MIT */

#include "common/hashmap.h"
#include "common/macro.h"

#define TESTS_MAIN
#include "tests.h"

typedef struct Item {
        unsigned id;
        unsigned seen;
        HashmapNode node;
        char name[24];
} Item;

static const char *item_key(const HashmapNode *n) {
        return container_of(n, const Item, node)->name;
}

static const char *null_key(const HashmapNode *n) {
        (void) n;
        return NULL;
}

static Item *item_of(HashmapNode *n) {
        return n ? container_of(n, Item, node) : NULL;
}

TEST(container_of_macro) {
        Item it = { .id = 7 };

        CHECK(container_of(&it.node, Item, node) == &it);
        CHECK(item_of(&it.node)->id == 7);
}

TEST(put_get_remove) {
        _cleanup_hashmap_free_ Hashmap *h = NULL;
        Item a = { .id = 1, .name = "alpha" }, b = { .id = 2, .name = "beta" };
        char key[] = "alpha";

        CHECK_EQ_INT(hashmap_new(&h, item_key), 0);
        if (!h)
                return;
        CHECK_EQ_INT(hashmap_size(h), 0);
        CHECK(!hashmap_get(h, "alpha"));
        CHECK(!hashmap_remove(h, "alpha"));

        CHECK_EQ_INT(hashmap_put(h, &a.node), 0);
        CHECK_EQ_INT(hashmap_put(h, &b.node), 0);
        CHECK_EQ_INT(hashmap_size(h), 2);

        /* lookup by content, not pointer */
        CHECK(item_of(hashmap_get(h, key)) == &a);
        CHECK(item_of(hashmap_get(h, "beta")) == &b);
        CHECK(!hashmap_get(h, "gamma"));
        CHECK(!hashmap_get(h, "alph"));
        CHECK(!hashmap_get(h, "alphaa"));
        CHECK(!hashmap_get(h, ""));

        CHECK(item_of(hashmap_remove(h, "alpha")) == &a);
        CHECK_EQ_INT(hashmap_size(h), 1);
        CHECK(!hashmap_get(h, "alpha"));
        CHECK(!hashmap_remove(h, "alpha"));

        hashmap_remove_node(h, &b.node);
        CHECK_EQ_INT(hashmap_size(h), 0);
        CHECK(!hashmap_get(h, "beta"));
        hashmap_remove_node(h, &b.node); /* not in the map: no-op */
        CHECK_EQ_INT(hashmap_size(h), 0);

        /* re-insert after removal */
        CHECK_EQ_INT(hashmap_put(h, &a.node), 0);
        CHECK(item_of(hashmap_get(h, "alpha")) == &a);
}

/* The prefetching lookups find what hashmap_get() finds, during an
 * incremental resize too, and prefetch_entry() of a missing key, of a key
 * with no NUL within len, or on an empty map only asks (ASan sees any
 * read out of bounds: a prefetch never faults, the bucket read would). */
TEST(prefetching_lookups_agree) {
        _cleanup_hashmap_free_ Hashmap *h = NULL;
        static Item items[3000];
        char key[24];

        CHECK_EQ_INT(hashmap_new(&h, item_key), 0);
        if (!h)
                return;
        hashmap_prefetch_entry(h, "nothing", 7, 4096);
        CHECK(!hashmap_get_prefetch(h, "nothing", 4096));
        for (unsigned i = 0; i < ELEMENTSOF(items); i++) {
                items[i].id = i;
                snprintf(items[i].name, sizeof items[i].name, "item-%u", i);
                CHECK_EQ_INT(hashmap_put(h, &items[i].node), 0);
                /* probe while resizes are under way */
                snprintf(key, sizeof key, "item-%u", i / 2);
                hashmap_prefetch_entry(h, key, strlen(key), sizeof(Item));
                CHECK(item_of(hashmap_get_prefetch(h, key, sizeof(Item))) == &items[i / 2]);
        }
        for (unsigned i = 0; i < ELEMENTSOF(items); i++) {
                snprintf(key, sizeof key, "item-%u", i);
                hashmap_prefetch_entry(h, key, strlen(key), 0);
                CHECK(hashmap_get_prefetch(h, key, 1000) == hashmap_get(h, key));
        }
        /* a name cut from a longer string: only len bytes count */
        hashmap_prefetch_entry(h, "item-7/token", 6, sizeof(Item));
        CHECK(!hashmap_get_prefetch(h, "item-3000", sizeof(Item)));
        CHECK(!hashmap_get_prefetch(h, NULL, 64));
}

TEST(empty_key) {
        _cleanup_hashmap_free_ Hashmap *h = NULL;
        Item a = { .name = "" };

        CHECK_EQ_INT(hashmap_new(&h, item_key), 0);
        CHECK_EQ_INT(hashmap_put(h, &a.node), 0);
        CHECK(item_of(hashmap_get(h, "")) == &a);
}

TEST(duplicates) {
        _cleanup_hashmap_free_ Hashmap *h = NULL;
        Item a = { .id = 1, .name = "dup" }, b = { .id = 2, .name = "dup" };

        CHECK_EQ_INT(hashmap_new(&h, item_key), 0);
        CHECK_EQ_INT(hashmap_put(h, &a.node), 0);
        b.node.hash = 42;
        CHECK_EQ_INT(hashmap_put(h, &b.node), -EEXIST);
        CHECK_EQ_INT(b.node.hash, 42); /* untouched */
        CHECK_EQ_INT(hashmap_size(h), 1);
        CHECK(item_of(hashmap_get(h, "dup")) == &a);

        /* after removal the other one can go in */
        CHECK(hashmap_remove(h, "dup") == &a.node);
        CHECK_EQ_INT(hashmap_put(h, &b.node), 0);
        CHECK(item_of(hashmap_get(h, "dup")) == &b);
}

TEST(null_args) {
        _cleanup_hashmap_free_ Hashmap *h = NULL;
        HashmapIter it = {};
        Item a = { .name = "x" };

        CHECK_EQ_INT(hashmap_new(NULL, item_key), -EINVAL);
        CHECK_EQ_INT(hashmap_new(&h, NULL), -EINVAL);
        CHECK(!h);
        CHECK_EQ_INT(hashmap_new(&h, item_key), 0);
        CHECK_EQ_INT(hashmap_put(NULL, &a.node), -EINVAL);
        CHECK_EQ_INT(hashmap_put(h, NULL), -EINVAL);
        {
                _cleanup_hashmap_free_ Hashmap *hn = NULL;

                /* a node whose key function says NULL */
                CHECK_EQ_INT(hashmap_new(&hn, null_key), 0);
                CHECK_EQ_INT(hashmap_put(hn, &a.node), -EINVAL);
                CHECK_EQ_INT(hashmap_put_unique(hn, &a.node), -EINVAL);
                CHECK_EQ_INT(hashmap_size(hn), 0);
        }
        CHECK(!hashmap_get(NULL, "x"));
        CHECK(!hashmap_get(h, NULL));
        CHECK(!hashmap_remove(NULL, "x"));
        CHECK(!hashmap_remove(h, NULL));
        hashmap_remove_node(NULL, &a.node);
        hashmap_remove_node(h, NULL);
        hashmap_remove_node(h, &a.node); /* empty map, never inserted */
        CHECK_EQ_INT(hashmap_size(NULL), 0);
        CHECK(!hashmap_iter_next(h, &it));
        CHECK(!hashmap_iter_next(NULL, &it));
        CHECK(!hashmap_free(NULL));
}

TEST(remove_node_every_other) {
        /* Unlinking from the middle and the ends of chains. */
        _cleanup_hashmap_free_ Hashmap *h = NULL;
        Item items[200];

        CHECK_EQ_INT(hashmap_new(&h, item_key), 0);
        for (unsigned i = 0; i < ELEMENTSOF(items); i++) {
                items[i] = (Item) { .id = i };
                snprintf(items[i].name, sizeof(items[i].name), "k%u", i);
                CHECK_EQ_INT(hashmap_put(h, &items[i].node), 0);
        }
        /* remove every other one via remove_node, then check the rest */
        for (unsigned i = 0; i < ELEMENTSOF(items); i += 2)
                hashmap_remove_node(h, &items[i].node);
        for (unsigned i = 0; i < ELEMENTSOF(items); i++) {
                Item *it = item_of(hashmap_get(h, items[i].name));
                CHECK(i % 2 ? it == &items[i] : it == NULL);
        }
        CHECK_EQ_INT(hashmap_size(h), ELEMENTSOF(items) / 2);
}

#define N_BIG 1000000u

TEST(one_million) {
        _cleanup_hashmap_free_ Hashmap *h = NULL;
        _cleanup_free_ Item *items = new0(Item, N_BIG);
        char key[24];
        size_t max_buckets = 0;

        CHECK(items);
        CHECK_EQ_INT(hashmap_new(&h, item_key), 0);
        if (!items || !h)
                return;

        for (unsigned i = 0; i < N_BIG; i++) {
                items[i].id = i;
                snprintf(items[i].name, sizeof(items[i].name), "conn-%u", i);
                if (hashmap_put(h, &items[i].node) != 0) {
                        CHECK(false);
                        break;
                }
                /* load factor stays <= 1 while growing */
                if (hashmap_size(h) > hashmap_buckets(h)) {
                        CHECK(false);
                        break;
                }
        }
        CHECK_EQ_INT(hashmap_size(h), N_BIG);
        max_buckets = hashmap_buckets(h);
        CHECK(max_buckets >= N_BIG);
        CHECK(max_buckets <= 2 * (size_t) N_BIG);
        CHECK((max_buckets & (max_buckets - 1)) == 0);

        unsigned bad = 0;
        for (unsigned i = 0; i < N_BIG; i++) {
                snprintf(key, sizeof(key), "conn-%u", i); /* different pointer */
                if (item_of(hashmap_get(h, key)) != &items[i])
                        bad++;
        }
        CHECK_EQ_INT(bad, 0);
        CHECK(!hashmap_get(h, "conn-1000000"));
        {
                Item dup = { .name = "conn-999999" };

                CHECK_EQ_INT(hashmap_put(h, &dup.node), -EEXIST);
        }

        /* remove 99%, by key; then a put shrinks the table */
        for (unsigned i = 0; i < N_BIG; i++)
                if (i % 100 != 0) {
                        snprintf(key, sizeof(key), "conn-%u", i);
                        if (hashmap_remove(h, key) != &items[i].node)
                                bad++;
                }
        CHECK_EQ_INT(bad, 0);
        CHECK_EQ_INT(hashmap_size(h), N_BIG / 100);
        CHECK_EQ_INT(hashmap_buckets(h), max_buckets); /* removal never rehashes */
        CHECK_EQ_INT(hashmap_put(h, &items[1].node), 0);
        CHECK(hashmap_buckets(h) < max_buckets);
        CHECK(hashmap_buckets(h) >= hashmap_size(h));
        for (unsigned i = 0; i < N_BIG; i++) {
                Item *it = item_of(hashmap_get(h, items[i].name));
                if (it != (i % 100 == 0 || i == 1 ? &items[i] : NULL))
                        bad++;
        }
        CHECK_EQ_INT(bad, 0);
}

/* A resize moves the old array a few buckets per put: while it is under
 * way every entry is found, removed and iterated exactly once, and no put
 * finishes it in one go. */
#define N_RESIZE 70000u

TEST(incremental_resize) {
        _cleanup_hashmap_free_ Hashmap *h = NULL;
        _cleanup_free_ Item *items = new0(Item, N_RESIZE);
        unsigned bad = 0, i = 0, puts_during = 0;
        size_t before;

        CHECK(items);
        CHECK_EQ_INT(hashmap_new(&h, item_key), 0);
        if (!items || !h)
                return;
        for (unsigned k = 0; k < N_RESIZE; k++)
                snprintf(items[k].name, sizeof(items[k].name), "r%u", k);

        /* fill to exactly the load that makes the next put grow 65536 -> 131072 */
        for (; i < 65536; i++)
                CHECK_EQ_INT(hashmap_put(h, &items[i].node), 0);
        CHECK_EQ_INT(hashmap_buckets(h), 65536);
        CHECK_EQ_INT(hashmap_resizing(h), 0);
        CHECK_EQ_INT(hashmap_put(h, &items[i].node), 0);
        i++;
        CHECK_EQ_INT(hashmap_buckets(h), 131072);
        CHECK_EQ_INT(hashmap_resizing(h), 65536); /* nothing moved by the put that grew it */

        /* a few puts later: still under way, moved a bounded amount per put */
        before = hashmap_resizing(h);
        CHECK_EQ_INT(hashmap_put(h, &items[i].node), 0);
        i++;
        CHECK(hashmap_resizing(h) < before);
        CHECK(before - hashmap_resizing(h) <= 128);

        /* mid-resize: every entry found, each iterated once, removal works */
        for (unsigned k = 0; k < i; k++)
                if (item_of(hashmap_get(h, items[k].name)) != &items[k])
                        bad++;
        CHECK_EQ_INT(bad, 0);
        {
                HashmapIter it = {};
                HashmapNode *n;
                unsigned count = 0;

                while ((n = hashmap_iter_next(h, &it)) && count <= N_RESIZE) {
                        item_of(n)->seen++;
                        count++;
                }
                CHECK_EQ_INT(count, i);
                for (unsigned k = 0; k < i; k++)
                        if (items[k].seen != 1)
                                bad++;
                CHECK_EQ_INT(bad, 0);
        }
        CHECK(item_of(hashmap_remove(h, items[0].name)) == &items[0]);      /* in the old array */
        hashmap_remove_node(h, &items[i - 1].node);                         /* in the new one */
        CHECK(!hashmap_get(h, items[0].name));
        CHECK(!hashmap_get(h, items[i - 1].name));
        CHECK_EQ_INT(hashmap_size(h), i - 2);
        CHECK_EQ_INT(hashmap_put(h, &items[1].node), -EEXIST); /* duplicate across arrays */

        /* the resize ends by itself after about n_old / step puts */
        CHECK(hashmap_resizing(h) > 0);
        for (; i < N_RESIZE && hashmap_resizing(h) > 0; i++, puts_during++)
                CHECK_EQ_INT(hashmap_put(h, &items[i].node), 0);
        CHECK_EQ_INT(hashmap_resizing(h), 0);
        CHECK(puts_during > 100);
        for (unsigned k = 1; k < i; k++)
                if (k != 65537 && item_of(hashmap_get(h, items[k].name)) != &items[k])
                        bad++;
        CHECK_EQ_INT(bad, 0);
}

TEST(iteration_visits_each_once) {
        _cleanup_hashmap_free_ Hashmap *h = NULL;
        static Item items[5000];
        HashmapIter it = {};
        HashmapNode *n;
        unsigned count = 0;

        CHECK_EQ_INT(hashmap_new(&h, item_key), 0);

        /* empty map */
        CHECK(!hashmap_iter_next(h, &it));

        for (unsigned i = 0; i < ELEMENTSOF(items); i++) {
                items[i] = (Item) { .id = i };
                snprintf(items[i].name, sizeof(items[i].name), "i%u", i);
                CHECK_EQ_INT(hashmap_put(h, &items[i].node), 0);
        }

        it = (HashmapIter) {};
        while ((n = hashmap_iter_next(h, &it))) {
                item_of(n)->seen++;
                count++;
        }
        CHECK_EQ_INT(count, ELEMENTSOF(items));
        for (unsigned i = 0; i < ELEMENTSOF(items); i++)
                CHECK_EQ_INT(items[i].seen, 1);

        /* exhausted iterator stays exhausted */
        CHECK(!hashmap_iter_next(h, &it));
        CHECK(!hashmap_iter_next(h, &it));
}

TEST(remove_during_iteration) {
        _cleanup_hashmap_free_ Hashmap *h = NULL;
        enum { N = 10000 };
        Item *items = new0(Item, N);
        HashmapIter it = {};
        HashmapNode *n;
        unsigned visited = 0, removed = 0;

        CHECK(items);
        CHECK_EQ_INT(hashmap_new(&h, item_key), 0);
        if (!items || !h) {
                free(items);
                return;
        }
        for (unsigned i = 0; i < N; i++) {
                items[i].id = i;
                snprintf(items[i].name, sizeof(items[i].name), "r%u", i);
                CHECK_EQ_INT(hashmap_put(h, &items[i].node), 0);
        }

        /* remove the odd ones while iterating, both ways */
        while ((n = hashmap_iter_next(h, &it))) {
                Item *x = item_of(n);

                x->seen++;
                visited++;
                if (x->id % 2) {
                        if (x->id % 4 == 1)
                                hashmap_remove_node(h, n);
                        else
                                CHECK(hashmap_remove(h, x->name) == n);
                        /* scribble over the removed node: iteration must
                         * not look at it again */
                        n->next = (HashmapNode *) 0x1;
                        removed++;
                }
        }
        CHECK_EQ_INT(visited, N);
        CHECK_EQ_INT(removed, N / 2);
        CHECK_EQ_INT(hashmap_size(h), N / 2);
        for (unsigned i = 0; i < N; i++) {
                CHECK_EQ_INT(items[i].seen, 1);
                CHECK((hashmap_get(h, items[i].name) != NULL) == (i % 2 == 0));
        }

        /* drain completely while iterating (the "free everything" idiom),
         * freeing each owner as we go */
        Hashmap *h2 = NULL;
        CHECK_EQ_INT(hashmap_new(&h2, item_key), 0);
        for (unsigned i = 0; i < 1000 && h2; i++) {
                Item *x = new0(Item, 1);
                CHECK(x);
                if (!x)
                        break;
                snprintf(x->name, sizeof(x->name), "heap%u", i);
                CHECK_EQ_INT(hashmap_put(h2, &x->node), 0);
        }
        it = (HashmapIter) {};
        unsigned freed = 0;
        while (h2 && (n = hashmap_iter_next(h2, &it))) {
                hashmap_remove_node(h2, n);
                free(item_of(n));
                freed++;
        }
        CHECK_EQ_INT(freed, 1000);
        CHECK_EQ_INT(hashmap_size(h2), 0);
        CHECK(!hashmap_free(h2));

        free(items);
}

TEST(seeded_per_map) {
        /* Two maps hash differently (random key per map): the iteration
         * order of the same key set almost surely differs. */
        _cleanup_hashmap_free_ Hashmap *a = NULL, *b = NULL;
        static Item ia[64], ib[64];
        HashmapIter ita = {}, itb = {};
        unsigned same = 0;

        CHECK_EQ_INT(hashmap_new(&a, item_key), 0);
        CHECK_EQ_INT(hashmap_new(&b, item_key), 0);
        for (unsigned i = 0; i < 64; i++) {
                snprintf(ia[i].name, sizeof(ia[i].name), "s%u", i);
                snprintf(ib[i].name, sizeof(ib[i].name), "s%u", i);
                CHECK_EQ_INT(hashmap_put(a, &ia[i].node), 0);
                CHECK_EQ_INT(hashmap_put(b, &ib[i].node), 0);
        }
        for (unsigned i = 0; i < 64; i++) {
                HashmapNode *x = hashmap_iter_next(a, &ita), *y = hashmap_iter_next(b, &itb);
                if (x && y && streq(item_key(x), item_key(y)))
                        same++;
        }
        CHECK(same < 64);
        CHECK(ia[0].node.hash != ib[0].node.hash);
}

TEST(reserve_presizes) {
        _cleanup_hashmap_free_ Hashmap *h = NULL;
        Item *items = new0(Item, 1000);

        CHECK(items);
        CHECK_EQ_INT(hashmap_new(&h, item_key), 0);
        if (!items || !h) {
                free(items);
                return;
        }
        CHECK_EQ_INT(hashmap_reserve(NULL, 10), -EINVAL);
        CHECK_EQ_INT(hashmap_reserve(h, 1000), 0);
        CHECK_EQ_INT((int) hashmap_buckets(h), 1024);
        for (unsigned i = 0; i < 1000; i++) {
                snprintf(items[i].name, sizeof items[i].name, "k%u", i);
                CHECK_EQ_INT(hashmap_put(h, &items[i].node), 0);
                /* never a resize while the reserved room lasts */
                CHECK_EQ_INT((int) hashmap_buckets(h), 1024);
                CHECK_EQ_INT((int) hashmap_resizing(h), 0);
        }
        /* no shrinking below the reservation */
        for (unsigned i = 1; i < 1000; i++)
                hashmap_remove_node(h, &items[i].node);
        CHECK_EQ_INT(hashmap_put(h, &items[1].node), 0);
        CHECK_EQ_INT((int) hashmap_buckets(h), 1024);
        /* released: the next put shrinks it */
        hashmap_remove_node(h, &items[1].node);
        CHECK_EQ_INT(hashmap_reserve(h, 0), 0);
        CHECK_EQ_INT(hashmap_put(h, &items[1].node), 0);
        CHECK((int) hashmap_buckets(h) < 1024);
        CHECK(hashmap_get(h, "k0") == &items[0].node);
        CHECK(hashmap_get(h, "k1") == &items[1].node);
        free(items);
}

TEST(put_unique_skips_the_lookup) {
        _cleanup_hashmap_free_ Hashmap *h = NULL;
        Item *items = new0(Item, 5000);

        CHECK(items);
        CHECK_EQ_INT(hashmap_new(&h, item_key), 0);
        if (!items || !h) {
                free(items);
                return;
        }
        CHECK_EQ_INT(hashmap_put_unique(NULL, &items[0].node), -EINVAL);
        CHECK_EQ_INT(hashmap_put_unique(h, NULL), -EINVAL);
        /* grows like hashmap_put() (no reservation), mixed with it */
        for (unsigned i = 0; i < 5000; i++) {
                snprintf(items[i].name, sizeof items[i].name, "c%07u", i);
                CHECK_EQ_INT(i % 3 ? hashmap_put_unique(h, &items[i].node)
                                   : hashmap_put(h, &items[i].node), 0);
        }
        CHECK_EQ_INT((int) hashmap_size(h), 5000);
        for (unsigned i = 0; i < 5000; i++)
                CHECK(hashmap_get(h, items[i].name) == &items[i].node);
        /* hashmap_put() still refuses a name put without the lookup */
        {
                Item dup = {};

                strcpy(dup.name, items[1].name);
                CHECK_EQ_INT(hashmap_put(h, &dup.node), -EEXIST);
        }
        free(items);
}

TEST(put_unique_hashed_as_a_pipeline) {
        _cleanup_hashmap_free_ Hashmap *h = NULL;
        Item *items = new0(Item, 3000);

        CHECK(items);
        CHECK_EQ_INT(hashmap_new(&h, item_key), 0);
        if (!items || !h) {
                free(items);
                return;
        }
        CHECK_EQ_INT(hashmap_put_unique_hashed(h, NULL, 1), -EINVAL);
        hashmap_prefetch(h, 42);   /* no bucket array yet: a no-op */
        hashmap_prefetch(NULL, 42);
        CHECK_EQ_INT(hashmap_reserve(h, 1000), 0);
        /* hashed 8 ahead of the put, as the loader does; the map also
         * grows past its reservation */
        for (unsigned i = 0; i < 3000; i++)
                snprintf(items[i].name, sizeof items[i].name, "c%07u", i);
        for (unsigned i = 0; i < 8; i++)
                items[i].node.hash = hashmap_hash(h, items[i].name);
        for (unsigned i = 0; i < 3000; i++) {
                if (i + 8 < 3000) {
                        items[i + 8].node.hash = hashmap_hash(h, items[i + 8].name);
                        hashmap_prefetch(h, items[i + 8].node.hash);
                }
                CHECK_EQ_INT(hashmap_put_unique_hashed(h, &items[i].node, items[i].node.hash), 0);
        }
        CHECK_EQ_INT((int) hashmap_size(h), 3000);
        for (unsigned i = 0; i < 3000; i++)
                CHECK(hashmap_get(h, items[i].name) == &items[i].node);
        {
                Item dup = {};

                strcpy(dup.name, items[2999].name);
                CHECK_EQ_INT(hashmap_put(h, &dup.node), -EEXIST);
        }
        free(items);
}
