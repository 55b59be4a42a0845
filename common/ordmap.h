/* SPDX-License-Identifier: MIT */
#pragma once

/* An intrusive, string-keyed ordered map: an AVL tree in byte order
 * (strcmp()), for paging through connections by name with a stable cursor.
 *
 * The owner embeds an OrdNode (16 bytes: two child pointers, the node's
 * height kept in their low 3 bits each) and gives the map a function that
 * returns a node's key; the key must stay alive and unchanged while the
 * node is in the map. The map allocates nothing.
 *
 * Costs, n entries (height at most 1.44 log2(n + 2), 29 at 10^6):
 *   ordmap_put, ordmap_remove, ordmap_get, ordmap_seek   O(log n)
 *   ordmap_iter_next                                     O(1) amortized,
 *                                                        O(log n) worst
 *
 * An iterator is valid only until the map is next changed: walk a page in
 * one go, and come back with the last key as the cursor (a seek is
 * O(log n) and well-defined even if that key is gone by then).
 *
 * Not thread-safe. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct OrdNode {
        uintptr_t link[2];         /* left, right; low 3 bits: this node's height */
} OrdNode;

typedef const char *(*ordmap_key_fn)(const OrdNode *n);

typedef struct Ordmap {
        OrdNode *root;
        size_t size;
        ordmap_key_fn key;
} Ordmap;

/* Deeper than any AVL tree that fits in memory (2^40 nodes: 58). */
#define ORDMAP_DEPTH_MAX 64

typedef struct OrdIter {
        OrdNode *stack[ORDMAP_DEPTH_MAX];
        unsigned depth;
} OrdIter;

void ordmap_init(Ordmap *m, ordmap_key_fn key);
/* 0, or -EEXIST if the key is present (n is left untouched). */
int ordmap_put(Ordmap *m, OrdNode *n);
/* n must be in m. */
void ordmap_remove(Ordmap *m, OrdNode *n);
OrdNode *ordmap_get(const Ordmap *m, const char *key);
static inline size_t ordmap_size(const Ordmap *m) {
        return m->size;
}

/* Positions it before the first node whose key is > key (>= key with
 * inclusive); key NULL: before the first node. */
void ordmap_seek(const Ordmap *m, OrdIter *it, const char *key, bool inclusive);
/* The next node in byte order, or NULL at the end. */
OrdNode *ordmap_iter_next(OrdIter *it);

/* For tests: 0 if the tree is ordered, balanced and its heights right;
 * -EUCLEAN otherwise. Walks the whole tree. */
int ordmap_verify(const Ordmap *m);
