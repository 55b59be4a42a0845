/* SPDX-License-Identifier: MIT */
#pragma once

/* Stores on the throwaway cluster of pg-env.h, for the C tests of tests/pg/
 * that open daemon/store.h's Store as nodes would. Include after
 * pg-env.h. */

#include "daemon/store.h"

static const CryptKey pg_env_key = { .bytes = "0123456789abcdef0123456789abcdef" };

/* A freshly created (empty) database name; its URI, or NULL. */
static inline char *pg_env_fresh_db(const char *name) {
        return pg_env_recreate(name) < 0 ? NULL : pg_env_uri(name);
}

/* The store at uri opened as node `node` (NULL: a single daemon) with
 * pg_env_key; the reason on stderr on failure. */
static inline int pg_env_open_node(const char *uri, const char *node, Store **ret) {
        StoreOptions o = { .password = pg_env_get_password(), .node = node };
        char err[512];
        int r;

        r = store_open_with(uri, &o, &pg_env_key, ret, err, sizeof err);
        if (r < 0)
                fprintf(stderr, "  open %s: %s\n", uri, err);
        return r;
}
