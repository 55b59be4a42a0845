/* SPDX-License-Identifier: MIT */

/* An AVL tree of intrusive nodes (see ordmap.h). Insertion and removal
 * are recursive (depth bounded by the height, < ORDMAP_DEPTH_MAX). */

#include <assert.h>
#include <errno.h>
#include <stdalign.h>
#include <string.h>

#include "common/ordmap.h"

#define TAG_BITS 3
#define TAG_MASK ((uintptr_t) ((1u << TAG_BITS) - 1))

/* Heights go in the low bits of the child pointers. */
static_assert(alignof(OrdNode) >= (1u << TAG_BITS), "OrdNode pointers need 3 free low bits");

static inline OrdNode *child(const OrdNode *t, int dir) {
        return (OrdNode *) (t->link[dir] & ~TAG_MASK);
}

static inline void set_child(OrdNode *t, int dir, OrdNode *c) {
        t->link[dir] = (uintptr_t) c | (t->link[dir] & TAG_MASK);
}

static inline unsigned height(const OrdNode *t) {
        return t ? (unsigned) ((t->link[0] & TAG_MASK) | ((t->link[1] & TAG_MASK) << TAG_BITS)) : 0;
}

static inline void set_height(OrdNode *t, unsigned h) {
        assert(h < (1u << (2 * TAG_BITS)));
        t->link[0] = (t->link[0] & ~TAG_MASK) | (h & TAG_MASK);
        t->link[1] = (t->link[1] & ~TAG_MASK) | ((h >> TAG_BITS) & TAG_MASK);
}

static inline void fix_height(OrdNode *t) {
        unsigned l = height(child(t, 0)), r = height(child(t, 1));

        set_height(t, 1 + (l > r ? l : r));
}

/* dir 0: rotate left (the right child comes up); dir 1: rotate right. */
static OrdNode *rotate(OrdNode *p, int dir) {
        OrdNode *q = child(p, !dir);

        set_child(p, !dir, child(q, dir));
        set_child(q, dir, p);
        fix_height(p);
        fix_height(q);
        return q;
}

static OrdNode *balance(OrdNode *p) {
        int bf;

        fix_height(p);
        bf = (int) height(child(p, 1)) - (int) height(child(p, 0));
        if (bf == 2) {
                OrdNode *r = child(p, 1);
                if (height(child(r, 0)) > height(child(r, 1)))
                        set_child(p, 1, rotate(r, 1));
                return rotate(p, 0);
        }
        if (bf == -2) {
                OrdNode *l = child(p, 0);
                if (height(child(l, 1)) > height(child(l, 0)))
                        set_child(p, 0, rotate(l, 0));
                return rotate(p, 1);
        }
        return p;
}

void ordmap_init(Ordmap *m, ordmap_key_fn key) {
        *m = (Ordmap) { .key = key };
}

static OrdNode *insert(const Ordmap *m, OrdNode *t, OrdNode *n, const char *key, int *err) {
        int c;

        if (!t) {
                n->link[0] = n->link[1] = 0;
                set_height(n, 1);
                return n;
        }
        c = strcmp(key, m->key(t));
        if (c == 0) {
                *err = -EEXIST;
                return t;
        }
        set_child(t, c > 0, insert(m, child(t, c > 0), n, key, err));
        return balance(t);
}

/* Appends n as the new greatest node: the right spine, no comparisons. */
static OrdNode *insert_max(OrdNode *t, OrdNode *n) {
        if (!t) {
                n->link[0] = n->link[1] = 0;
                set_height(n, 1);
                return n;
        }
        set_child(t, 1, insert_max(child(t, 1), n));
        return balance(t);
}

int ordmap_put(Ordmap *m, OrdNode *n) {
        const char *key;
        int err = 0;
        OrdNode *root, *last;

        assert(m && n);
        key = m->key(n);
        /* Keys often come in order (a load in id order of names made in
         * sequence): past the greatest, one comparison instead of one per
         * level (the right spine is walked without reading any key). */
        if (m->root) {
                for (last = m->root; child(last, 1); last = child(last, 1))
                        ;
                if (strcmp(key, m->key(last)) > 0) {
                        m->root = insert_max(m->root, n);
                        m->size++;
                        return 0;
                }
        }
        root = insert(m, m->root, n, key, &err);
        if (err < 0)
                return err;
        m->root = root;
        m->size++;
        return 0;
}

static OrdNode *remove_min(OrdNode *t, OrdNode **ret_min) {
        if (!child(t, 0)) {
                *ret_min = t;
                return child(t, 1);
        }
        set_child(t, 0, remove_min(child(t, 0), ret_min));
        return balance(t);
}

static OrdNode *remove_node(const Ordmap *m, OrdNode *t, OrdNode *n, const char *key, bool *found) {
        if (!t)
                return NULL;
        if (t == n) {
                OrdNode *l = child(t, 0), *r = child(t, 1), *min;

                *found = true;
                if (!r)
                        return l;
                r = remove_min(r, &min);
                set_child(min, 0, l);
                set_child(min, 1, r);
                return balance(min);
        }
        {
                int dir = strcmp(key, m->key(t)) > 0;
                set_child(t, dir, remove_node(m, child(t, dir), n, key, found));
        }
        return balance(t);
}

void ordmap_remove(Ordmap *m, OrdNode *n) {
        bool found = false;

        assert(m && n);
        m->root = remove_node(m, m->root, n, m->key(n), &found);
        assert(found);
        if (found)
                m->size--;
        n->link[0] = n->link[1] = 0;
}

OrdNode *ordmap_get(const Ordmap *m, const char *key) {
        OrdNode *t = m->root;

        while (t) {
                int c = strcmp(key, m->key(t));
                if (c == 0)
                        return t;
                t = child(t, c > 0);
        }
        return NULL;
}

static void push_left(OrdIter *it, OrdNode *t) {
        for (; t && it->depth < ORDMAP_DEPTH_MAX; t = child(t, 0))
                it->stack[it->depth++] = t;
}

void ordmap_seek(const Ordmap *m, OrdIter *it, const char *key, bool inclusive) {
        OrdNode *t = m->root;

        it->depth = 0;
        if (!key) {
                push_left(it, t);
                return;
        }
        /* The stack ends up holding exactly the nodes > key (>= key) whose
         * left subtrees hold nothing > key that is not on the stack. */
        while (t && it->depth < ORDMAP_DEPTH_MAX) {
                int c = strcmp(m->key(t), key);
                if (c > 0 || (inclusive && c == 0)) {
                        it->stack[it->depth++] = t;
                        t = child(t, 0);
                } else
                        t = child(t, 1);
        }
}

OrdNode *ordmap_iter_next(OrdIter *it) {
        OrdNode *t;

        if (it->depth == 0)
                return NULL;
        t = it->stack[--it->depth];
        push_left(it, child(t, 1));
        return t;
}

/* Height of t, or -1 if the subtree is broken; keys within (lo, hi). */
static int verify(const Ordmap *m, const OrdNode *t, const char *lo, const char *hi, size_t *count) {
        int l, r;

        if (!t)
                return 0;
        if ((lo && strcmp(m->key(t), lo) <= 0) || (hi && strcmp(m->key(t), hi) >= 0))
                return -1;
        (*count)++;
        l = verify(m, child(t, 0), lo, m->key(t), count);
        r = verify(m, child(t, 1), m->key(t), hi, count);
        if (l < 0 || r < 0 || l - r > 1 || r - l > 1)
                return -1;
        if (height(t) != (unsigned) (1 + (l > r ? l : r)))
                return -1;
        return (int) height(t);
}

int ordmap_verify(const Ordmap *m) {
        size_t count = 0;

        if (verify(m, m->root, NULL, NULL, &count) < 0 || count != m->size)
                return -EUCLEAN;
        return 0;
}
