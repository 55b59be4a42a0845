/* SPDX-License-Identifier: MIT */

#include <sys/random.h>

#include "common/hashmap.h"

#define BUCKETS_MIN ((size_t) 16)
/* Keep n_buckets * sizeof(pointer) far from overflow; and a 32-bit hash
 * indexes no more buckets. */
#define BUCKETS_MAX ((size_t) 1 << MIN(32, sizeof(size_t) * 8 - 5))

/* Buckets of the old table moved to the new one per hashmap_put() while the
 * table is being resized: a resize costs every put a little, never one put
 * everything (2^20 buckets would be tens of milliseconds on the loop). */
#define MIGRATE_STEP ((size_t) 64)

struct Hashmap {
        HashmapNode **buckets;
        size_t n_buckets;     /* 0 or a power of two */
        /* While resizing: the table being emptied into buckets; its buckets
         * below old_pos are empty already. NULL otherwise. */
        HashmapNode **old;
        size_t n_old;
        size_t old_pos;
        size_t size;
        size_t min_buckets;   /* hashmap_reserve(): no shrinking below it */
        hashmap_key_fn key;
        uint64_t k0, k1;      /* SipHash key */
};

/* SipHash-1-3 (Aumasson & Bernstein), 64-bit output. */
#define ROTL(x, b) (uint64_t) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                          \
        do {                                                              \
                v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
                v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                    \
                v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                    \
                v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
        } while (0)

static uint64_t load_le64(const uint8_t *p) {
        return (uint64_t) p[0] | (uint64_t) p[1] << 8 | (uint64_t) p[2] << 16 |
               (uint64_t) p[3] << 24 | (uint64_t) p[4] << 32 | (uint64_t) p[5] << 40 |
               (uint64_t) p[6] << 48 | (uint64_t) p[7] << 56;
}

static uint64_t siphash13(const void *data, size_t len, uint64_t k0, uint64_t k1) {
        const uint8_t *in = data, *end = in + (len - len % 8);
        uint64_t v0 = UINT64_C(0x736f6d6570736575) ^ k0;
        uint64_t v1 = UINT64_C(0x646f72616e646f6d) ^ k1;
        uint64_t v2 = UINT64_C(0x6c7967656e657261) ^ k0;
        uint64_t v3 = UINT64_C(0x7465646279746573) ^ k1;
        uint64_t b = (uint64_t) len << 56;

        for (; in != end; in += 8) {
                uint64_t m = load_le64(in);

                v3 ^= m;
                SIPROUND;
                v0 ^= m;
        }

        for (size_t i = 0; i < len % 8; i++)
                b |= (uint64_t) in[i] << (8 * i);

        v3 ^= b;
        SIPROUND;
        v0 ^= b;

        v2 ^= 0xff;
        SIPROUND;
        SIPROUND;
        SIPROUND;

        return v0 ^ v1 ^ v2 ^ v3;
}

static uint32_t hash_key_n(const Hashmap *h, const char *key, size_t len) {
        return (uint32_t) siphash13(key, len, h->k0, h->k1);
}

static uint32_t hash_key(const Hashmap *h, const char *key) {
        return hash_key_n(h, key, strlen(key));
}

static int random_key(uint8_t *buf, size_t n) {
        size_t done = 0;

        while (done < n) {
                ssize_t k = getrandom(buf + done, n - done, 0);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                done += (size_t) k;
        }
        return 0;
}

int hashmap_new(Hashmap **ret, hashmap_key_fn key_fn) {
        uint8_t key[16];
        Hashmap *h;
        int r;

        if (!ret || !key_fn)
                return -EINVAL;

        r = random_key(key, sizeof(key));
        if (r < 0)
                return r;

        h = new0(Hashmap, 1);
        if (!h)
                return -ENOMEM;

        h->key = key_fn;
        h->k0 = load_le64(key);
        h->k1 = load_le64(key + 8);
        explicit_wipe(key, sizeof(key));

        *ret = h;
        return 0;
}

Hashmap *hashmap_free(Hashmap *h) {
        if (!h)
                return NULL;

        free(h->buckets);
        free(h->old);
        explicit_wipe(h, sizeof(*h));
        free(h);
        return NULL;
}

size_t hashmap_size(const Hashmap *h) {
        return h ? h->size : 0;
}

size_t hashmap_buckets(const Hashmap *h) {
        return h ? h->n_buckets : 0;
}

size_t hashmap_resizing(const Hashmap *h) {
        return h && h->old ? h->n_old - h->old_pos : 0;
}

/* Move up to max buckets of the old table into the current one. */
static void migrate(Hashmap *h, size_t max) {
        if (!h->old)
                return;

        for (size_t done = 0; done < max && h->old_pos < h->n_old; done++) {
                HashmapNode *n = h->old[h->old_pos];

                h->old[h->old_pos++] = NULL;
                while (n) {
                        HashmapNode *next = n->next;
                        size_t j = (size_t) n->hash & (h->n_buckets - 1);

                        n->next = h->buckets[j];
                        h->buckets[j] = n;
                        n = next;
                }
        }
        if (h->old_pos >= h->n_old) {
                h->old = mfree(h->old);
                h->n_old = h->old_pos = 0;
        }
}

/* Start moving to a table of n_buckets: the current table becomes the old
 * one, emptied MIGRATE_STEP buckets per put. A resize still under way is
 * finished first (it is rare: the next one is due only after the table's
 * size in puts, and a resize takes n_old / MIGRATE_STEP puts). */
static int resize(Hashmap *h, size_t n_buckets) {
        HashmapNode **b;

        assert(n_buckets > 0 && (n_buckets & (n_buckets - 1)) == 0);

        b = new0(HashmapNode *, n_buckets);
        if (!b)
                return -ENOMEM;

        migrate(h, SIZE_MAX);
        if (h->n_buckets == 0) {
                h->buckets = b;
                h->n_buckets = n_buckets;
                return 0;
        }

        h->old = h->buckets;
        h->n_old = h->n_buckets;
        h->old_pos = 0;
        h->buckets = b;
        h->n_buckets = n_buckets;
        return 0;
}

/* Prefetches the span bytes from n on, a line at a time past the first
 * (the node's own, loaded already), and the line of the span's last byte. */
static inline void prefetch_span(const HashmapNode *n, size_t span) {
        if (span == 0)
                return;
        for (size_t off = 64; off < span; off += 64)
                __builtin_prefetch((const char *) n + off);
        __builtin_prefetch((const char *) n + span - 1);
}

/* The link pointing at the node with this key, in whichever table holds
 * it. With span > 0, a node whose hash matches has its entry's span bytes
 * prefetched before its key is compared (hashmap_get_prefetch()). */
static HashmapNode **find_slot(Hashmap *h, const char *key, uint32_t hash, size_t span) {
        HashmapNode **p;

        if (h->old)
                for (p = &h->old[(size_t) hash & (h->n_old - 1)]; *p; p = &(*p)->next)
                        if ((*p)->hash == hash) {
                                prefetch_span(*p, span);
                                if (streq(h->key(*p), key))
                                        return p;
                        }

        if (h->n_buckets == 0)
                return NULL;

        for (p = &h->buckets[(size_t) hash & (h->n_buckets - 1)]; *p; p = &(*p)->next)
                if ((*p)->hash == hash) {
                        prefetch_span(*p, span);
                        if (streq(h->key(*p), key))
                                return p;
                }

        return NULL;
}

static int put_hashed(Hashmap *h, HashmapNode *n, uint32_t hash);

int hashmap_put(Hashmap *h, HashmapNode *n) {
        const char *key;
        uint32_t hash;

        if (!h || !n || !(key = h->key(n)))
                return -EINVAL;

        hash = hash_key(h, key);
        if (find_slot(h, key, hash, 0))
                return -EEXIST;
        return put_hashed(h, n, hash);
}

int hashmap_put_unique(Hashmap *h, HashmapNode *n) {
        const char *key;

        if (!h || !n || !(key = h->key(n)))
                return -EINVAL;
        return put_hashed(h, n, hash_key(h, key));
}

uint32_t hashmap_hash(const Hashmap *h, const char *key) {
        return h && key ? hash_key(h, key) : 0;
}

void hashmap_prefetch(const Hashmap *h, uint32_t hash) {
        if (h && h->n_buckets > 0)
                __builtin_prefetch(&h->buckets[(size_t) hash & (h->n_buckets - 1)], 1);
}

void hashmap_prefetch_entry(const Hashmap *h, const char *key, size_t len, size_t span) {
        const HashmapNode *n;

        if (!h || !key || h->n_buckets == 0 || h->old)
                return;
        n = h->buckets[(size_t) hash_key_n(h, key, len) & (h->n_buckets - 1)];
        if (!n)
                return;
        __builtin_prefetch(n);
        prefetch_span(n, span);
}

int hashmap_put_unique_hashed(Hashmap *h, HashmapNode *n, uint32_t hash) {
        if (!h || !n)
                return -EINVAL;
        return put_hashed(h, n, hash);
}

static int put_hashed(Hashmap *h, HashmapNode *n, uint32_t hash) {
        size_t i;

        if (h->n_buckets == 0) {
                int r = resize(h, BUCKETS_MIN);
                if (r < 0)
                        return r;
        } else if (h->old)
                migrate(h, MIGRATE_STEP);
        else if (h->size + 1 > h->n_buckets && h->n_buckets < BUCKETS_MAX)
                (void) resize(h, h->n_buckets * 2); /* on ENOMEM carry on */
        else if (h->n_buckets > MAX(BUCKETS_MIN, h->min_buckets) && (h->size + 1) < h->n_buckets / 8) {
                /* Shrink to the smallest size with load >= 1/4. */
                size_t m = h->n_buckets;

                while (m > MAX(BUCKETS_MIN, h->min_buckets) && (h->size + 1) < m / 4)
                        m /= 2;
                (void) resize(h, m);
        }

        n->hash = hash;
        i = (size_t) hash & (h->n_buckets - 1);
        n->next = h->buckets[i];
        h->buckets[i] = n;
        h->size++;
        return 0;
}

int hashmap_reserve(Hashmap *h, size_t n) {
        size_t m = BUCKETS_MIN;

        if (!h)
                return -EINVAL;
        if (n == 0) {
                h->min_buckets = 0;
                return 0;
        }
        if (n > BUCKETS_MAX)
                return -ENOMEM;
        while (m < n)
                m *= 2;
        h->min_buckets = m;
        if (m <= h->n_buckets)
                return 0;
        /* no migration needed when empty; otherwise the usual
         * incremental one */
        return resize(h, m);
}

HashmapNode *hashmap_get(Hashmap *h, const char *key) {
        return hashmap_get_prefetch(h, key, 0);
}

HashmapNode *hashmap_get_prefetch(Hashmap *h, const char *key, size_t span) {
        HashmapNode **p;

        if (!h || !key)
                return NULL;

        p = find_slot(h, key, hash_key(h, key), span);
        return p ? *p : NULL;
}

HashmapNode *hashmap_remove(Hashmap *h, const char *key) {
        HashmapNode **p, *n;

        if (!h || !key)
                return NULL;

        p = find_slot(h, key, hash_key(h, key), 0);
        if (!p)
                return NULL;

        n = *p;
        *p = n->next;
        n->next = NULL;
        h->size--;
        return n;
}

static bool unlink_from(HashmapNode **bucket, HashmapNode *n) {
        for (HashmapNode **p = bucket; *p; p = &(*p)->next)
                if (*p == n) {
                        *p = n->next;
                        n->next = NULL;
                        return true;
                }
        return false;
}

void hashmap_remove_node(Hashmap *h, HashmapNode *n) {
        if (!h || !n || h->n_buckets == 0)
                return;

        if ((h->old && unlink_from(&h->old[(size_t) n->hash & (h->n_old - 1)], n)) ||
            unlink_from(&h->buckets[(size_t) n->hash & (h->n_buckets - 1)], n))
                h->size--;
}

/* Buckets are numbered across both tables: the old one's first. Nothing
 * moves between them during an iteration (only hashmap_put() migrates). */
HashmapNode *hashmap_iter_next(Hashmap *h, HashmapIter *it) {
        HashmapNode *n;

        if (!h || !it)
                return NULL;

        n = it->next;
        while (!n) {
                size_t n_old = h->old ? h->n_old : 0;

                if (it->bucket >= n_old + h->n_buckets)
                        return NULL;
                n = it->bucket < n_old ? h->old[it->bucket] : h->buckets[it->bucket - n_old];
                it->bucket++;
        }

        it->next = n->next;
        return n;
}
