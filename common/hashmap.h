/* SPDX-License-Identifier: MIT */
#pragma once

/* An intrusive, string-keyed hash map.
 *
 * The owner embeds a HashmapNode in its struct and keeps the key string
 * alive (and unchanged) for as long as the node is in the map; the map
 * allocates nothing per entry. The node does not point at its key: the
 * map's key function finds it from the node (the key is usually in the
 * same struct: a pointer to it would be 8 bytes of every entry; issue 9).
 * Separate chaining over a power-of-two bucket array; the hash is
 * SipHash-1-3, 32 bits of it, keyed with 128 random bits per map
 * (getrandom()), so peers who choose keys cannot force collisions.
 *
 * The bucket array grows (doubles) when the load factor exceeds 1, and
 * shrinks when it drops below 1/8; both are decided inside hashmap_put().
 * A resize is incremental: the old array stays beside the new one and each
 * later put moves a bounded number of its buckets (lookups search both), so
 * no single put pays for rehashing a million entries. Removal never
 * rehashes, so removing during iteration is safe (see hashmap_iter_next()).
 * If growing fails for lack of memory, the put still succeeds with a higher
 * load factor.
 *
 * Not thread-safe. */

#include <stddef.h>
#include <stdint.h>

#include "common/macro.h"

#ifndef container_of
#define container_of(ptr, type, member)                                    \
        ((type *) (void *) ((char *) (1 ? (ptr) : &((type *) 0)->member) - \
                            offsetof(type, member)))
#endif

typedef struct HashmapNode {
        struct HashmapNode *next;
        uint32_t hash;             /* the key's, 32 bits of it: buckets enough for 4 billion entries */
        /* Not the map's: 32 bits the owner may keep a field of its own in
         * (they would be padding otherwise). The map never reads or writes
         * them. */
        uint32_t spare;
} HashmapNode;

typedef struct Hashmap Hashmap;

/* A node's key: a NUL-terminated string that stays the same while the
 * node is in the map. */
typedef const char *(*hashmap_key_fn)(const HashmapNode *n);

/* 0, -EINVAL (no key function), -ENOMEM, or -errno from getrandom(). */
int hashmap_new(Hashmap **ret, hashmap_key_fn key);
/* Frees the map, not the entries (iterate first to free them). NULL ok.
 * Returns NULL. */
Hashmap *hashmap_free(Hashmap *h);
DEFINE_TRIVIAL_CLEANUP_FUNC(Hashmap *, hashmap_free)
#define _cleanup_hashmap_free_ _cleanup_(hashmap_freep)

/* Insert n under its key (the key function's, not copied). 0 on success,
 * -EEXIST if the key is already present (n is left untouched), -EINVAL on
 * NULL arguments or a NULL key, -ENOMEM only if the very first bucket
 * array cannot be allocated. Must not be called while iterating. */
int hashmap_put(Hashmap *h, HashmapNode *n);
/* The same without looking for the key first: the caller knows it is
 * absent (a bulk load of names unique in the store). Saves the chain walk
 * (a cache miss a node at a million); a duplicate would be a second entry
 * that hashmap_get() never returns. 0, -EINVAL or -ENOMEM as above. */
int hashmap_put_unique(Hashmap *h, HashmapNode *n);
/* A bulk load's pipeline (daemon/loader.c): the hash of key in h, a hint
 * to the CPU to fetch the bucket it goes to (some puts ahead: at a
 * million entries every bucket is a cache miss), then the put with that
 * hash. hashmap_put_unique_hashed() with another hash than
 * hashmap_hash()'s of n's key puts an entry no lookup finds. */
uint32_t hashmap_hash(const Hashmap *h, const char *key);
void hashmap_prefetch(const Hashmap *h, uint32_t hash);
/* Asks for the cache lines of the entry key (len bytes, no NUL needed)
 * most likely names, without waiting for them: the first node of its
 * bucket and the span bytes from it. Reads the bucket only, compares no
 * key: a lookup that follows finds the lines there (the API asks when a
 * request's line is in, the lookup comes once its headers are). */
void hashmap_prefetch_entry(const Hashmap *h, const char *key, size_t len, size_t span);
int hashmap_put_unique_hashed(Hashmap *h, HashmapNode *n, uint32_t hash);
/* Makes room for n entries at load factor 1 now (one bucket array, no
 * resize while they are put) and keeps the array from shrinking below
 * that until hashmap_reserve(h, 0). For a bulk load whose size is known.
 * 0, -EINVAL, or -ENOMEM (the map is unchanged). */
int hashmap_reserve(Hashmap *h, size_t n);
/* NULL if absent (or h/key NULL). */
HashmapNode *hashmap_get(Hashmap *h, const char *key);
/* The same, for a node at the start of an entry of span bytes that the
 * caller reads next: once a node's hash matches, the entry's other cache
 * lines are prefetched before the key is compared, so their misses
 * overlap the key's instead of following one another (the token
 * handout: daemon/manager.c's manager_get()). */
HashmapNode *hashmap_get_prefetch(Hashmap *h, const char *key, size_t span);
/* Unlink and return the node with this key, NULL if absent. */
HashmapNode *hashmap_remove(Hashmap *h, const char *key);
/* Unlink n if it is in h; no-op otherwise (or if h or n is NULL). */
void hashmap_remove_node(Hashmap *h, HashmapNode *n);
size_t hashmap_size(const Hashmap *h);

/* Iteration in unspecified order:
 *
 *         HashmapIter it = {};
 *         HashmapNode *n;
 *         while ((n = hashmap_iter_next(h, &it))) ...
 *
 * Removing the node just returned (or any node already returned) is safe,
 * and so is freeing it after removal. Removing other not-yet-returned nodes
 * is NOT safe (the iterator caches the successor), nor is hashmap_put()
 * (it may rehash). */
typedef struct {
        size_t bucket;
        HashmapNode *next;
} HashmapIter;
HashmapNode *hashmap_iter_next(Hashmap *h, HashmapIter *it);

/* Exposed for tests: the number of buckets of the current array, and how
 * many buckets of the old array a resize under way has still to move (0
 * when none is). */
size_t hashmap_buckets(const Hashmap *h);
size_t hashmap_resizing(const Hashmap *h);
