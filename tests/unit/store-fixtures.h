/* SPDX-License-Identifier: MIT */
#pragma once

/* Connections with every stored field set, and loading them back: for the
 * store's tests on each engine (tests/unit/test-store.c on SQLite,
 * tests/pg/test-store-pg.c on PostgreSQL). Include after tests.h. */

#include "common/intern.h"
#include "common/macro.h"
#include "common/util.h"
#include "daemon/connection.h"
#include "daemon/store.h"

/* Collects loaded connections. */
typedef struct Loaded {
        Connection *c[64];
        size_t n;
} Loaded;

static inline int collect(Connection *c, void *userdata) {
        Loaded *l = userdata;

        if (l->n >= ELEMENTSOF(l->c)) {
                connection_free(c);
                return -E2BIG;
        }
        l->c[l->n++] = c;
        return 0;
}

static inline void loaded_done(Loaded *l) {
        for (size_t i = 0; i < l->n; i++)
                connection_free(l->c[i]);
        l->n = 0;
}

static inline int load_all(Store *s, Loaded *l) {
        loaded_done(l);
        return store_load_connections(s, collect, l);
}

static inline Connection *conn_new(const char *name, const char *provider, ConnState state) {
        Connection *c = connection_new(name);

        if (!c)
                return NULL;
        c->state = state;
        c->created_at = c->updated_at = UINT64_C(1700000000) * USEC_PER_SEC;
        if (connection_set_provider(c, provider) < 0)
                return connection_free(c);
        return c;
}

/* Every persistent field set to a distinctive value. */
static inline Connection *conn_full(void) {
        Connection *c = conn_new("full-conn_1.x", "github", CONN_ACTIVE);

        if (!c)
                return NULL;
        c->access_token = strdup("gho_AccessToken'\"; DROP TABLE connections;--");
        c->refresh_token = strdup("ghr_Refresh\xc3\xa9token");
        if (connection_set_names(c, &(const ConnNames) { .provider = c->names->provider,
                                                         .token_type = "Bearer",
                                                         .scope = "repo read:org",
                                                         .requested_scope = "repo read:org user" }) < 0)
                return connection_free(c);
        (void) connection_set_identity(c, strdup("alice@example.com"));
        (void) connection_set_last_error(c, strdup("HTTP 503: temporarily_unavailable"));
        c->expires_at = UINT64_C(1893456000) * USEC_PER_SEC + 123456;
        c->obtained_at = UINT64_C(1893452400) * USEC_PER_SEC + 1;
        c->created_at = UINT64_C(1700000000) * USEC_PER_SEC + 7;
        c->updated_at = UINT64_C(1893452400) * USEC_PER_SEC + 2;
        c->last_refresh_at = UINT64_C(1893452400) * USEC_PER_SEC + 3;
        c->refreshes = UINT32_C(3456789012);   /* above INT32_MAX: unsigned through the store's int64 */
        (void) connection_set_state_hash(c, strdup("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
        (void) connection_set_code_verifier(c, strdup("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
        (void) connection_set_pending_until(c, UINT64_C(1893453000) * USEC_PER_SEC);
        (void) connection_set_params(c, json_pack("{s:s, s:s}", "tenant", "contoso'; --", "region", "eu west\xc3\xa9"));
        (void) connection_set_metadata(c, json_pack("{s:s, s:s}", "instance_url", "https://na1.salesforce.com", "realm", "9130 355"));
        if (!connection_params(c) || !connection_metadata(c))
                return connection_free(c);
        if (connection_set_acl(c, (const uid_t[]) { 0, 1000, 4294967294U }, 3, (const gid_t[]) { 27 }, 1) < 0)
                return connection_free(c);
        if (!c->access_token || !c->refresh_token || !c->names->token_type || !c->names->scope || !c->names->requested_scope ||
            !connection_identity(c) || !connection_last_error(c) || !connection_state_hash(c) || !connection_code_verifier(c))
                return connection_free(c);
        return c;
}

static inline void check_same(const Connection *a, const Connection *b) {
        CHECK(a && b);
        if (!a || !b)
                return;
        CHECK_EQ_INT(a->id, b->id);
        CHECK_STREQ(a->name, b->name);
        CHECK_STREQ(a->names->provider, b->names->provider);
        CHECK_EQ_INT(a->state, b->state);
        CHECK(streq_ptr(a->access_token, b->access_token));
        CHECK(streq_ptr(a->refresh_token, b->refresh_token));
        CHECK(streq_ptr(a->names->token_type, b->names->token_type));
        CHECK(streq_ptr(a->names->scope, b->names->scope));
        CHECK(streq_ptr(a->names->requested_scope, b->names->requested_scope));
        CHECK(streq_ptr(connection_identity(a), connection_identity(b)));
        CHECK(streq_ptr(connection_last_error(a), connection_last_error(b)));
        CHECK(streq_ptr(connection_state_hash(a), connection_state_hash(b)));
        CHECK(streq_ptr(connection_code_verifier(a), connection_code_verifier(b)));
        CHECK(a->expires_at == b->expires_at);
        CHECK(a->obtained_at == b->obtained_at);
        CHECK(a->created_at == b->created_at);
        CHECK(a->updated_at == b->updated_at);
        CHECK(a->last_refresh_at == b->last_refresh_at);
        CHECK(a->refreshes == b->refreshes);
        CHECK(connection_pending_until(a) == connection_pending_until(b));
        CHECK_EQ_INT(a->n_allow_users, b->n_allow_users);
        for (unsigned i = 0; i < a->n_allow_users && i < b->n_allow_users; i++)
                CHECK_EQ_INT(a->allow_users[i], b->allow_users[i]);
        CHECK_EQ_INT(a->n_allow_groups, b->n_allow_groups);
        for (unsigned i = 0; i < a->n_allow_groups && i < b->n_allow_groups; i++)
                CHECK_EQ_INT(connection_allow_groups(a)[i], connection_allow_groups(b)[i]);
        /* params and metadata: the same objects (NULL and {} alike) */
        CHECK(json_object_size(connection_params(a)) == json_object_size(connection_params(b)));
        CHECK(json_object_size(connection_metadata(a)) == json_object_size(connection_metadata(b)));
        CHECK(!connection_params(a) || !connection_params(b) || json_equal(connection_params(a), connection_params(b)));
        CHECK(!connection_metadata(a) || !connection_metadata(b) || json_equal(connection_metadata(a), connection_metadata(b)));
}

/* The store writer's completions, in the order they ran: userdata is the
 * change's number. */
typedef struct Done {
        unsigned n;
        int order[16];
        int result[16];
} Done;

static Done done;

static inline void on_done(int result, const char *error, void *userdata) {
        int i = (int) (intptr_t) userdata;

        (void) error;
        if (done.n < ELEMENTSOF(done.order)) {
                done.order[done.n] = i;
                done.result[done.n] = result;
        }
        done.n++;
}
