/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/hashmap.h"
#include "common/intern.h"

#define INTERN_MAGIC UINT32_C(0x1e7e4a11)

typedef struct Interned {
        HashmapNode node;          /* key = s */
        size_t refs;
        uint32_t magic;
        char s[];
} Interned;

static Hashmap *table = NULL;
static size_t table_bytes = 0;

static const char *interned_key(const HashmapNode *n) {
        return container_of(n, const Interned, node)->s;
}

static Interned *interned_of(const char *s) {
        Interned *i = (Interned *) (void *) ((char *) s - offsetof(Interned, s));

        assert(i->magic == INTERN_MAGIC && i->refs > 0);
        return i;
}

const char *intern_n(const char *s, size_t n) {
        HashmapNode *node;
        Interned *i;
        char buf[256];
        const char *key = s;
        char *heap = NULL;

        if (!s)
                return NULL;
        n = strnlen(s, n);
        if (s[n] != 0) {
                /* the lookup needs a NUL-terminated key */
                if (n < sizeof(buf)) {
                        memcpy(buf, s, n);
                        buf[n] = 0;
                        key = buf;
                } else {
                        heap = strndup(s, n);
                        if (!heap)
                                return NULL;
                        key = heap;
                }
        }
        if (!table && hashmap_new(&table, interned_key) < 0) {
                free(heap);
                return NULL;
        }
        node = hashmap_get(table, key);
        if (node) {
                i = container_of(node, Interned, node);
                i->refs++;
                free(heap);
                return i->s;
        }
        i = malloc(sizeof(Interned) + n + 1);
        if (!i) {
                free(heap);
                return NULL;
        }
        *i = (Interned) { .refs = 1, .magic = INTERN_MAGIC };
        memcpy(i->s, key, n);
        i->s[n] = 0;
        free(heap);
        if (hashmap_put(table, &i->node) < 0) {
                free(i);
                return NULL;
        }
        table_bytes += sizeof(Interned) + n + 1;
        return i->s;
}

const char *intern(const char *s) {
        return s ? intern_n(s, SIZE_MAX) : NULL;
}

const char *intern_ref(const char *s) {
        if (s)
                interned_of(s)->refs++;
        return s;
}

const char *intern_unref(const char *s) {
        Interned *i;

        if (!s)
                return NULL;
        i = interned_of(s);
        if (--i->refs > 0)
                return NULL;
        hashmap_remove_node(table, &i->node);
        table_bytes -= sizeof(Interned) + strlen(i->s) + 1;
        i->magic = 0;
        free(i);
        return NULL;
}

size_t intern_count(void) {
        return table ? hashmap_size(table) : 0;
}

size_t intern_bytes(void) {
        return table_bytes;
}
