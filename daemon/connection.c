/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/connection.h"

static const char *const conn_state_table[_CONN_STATE_MAX] = {
        [CONN_PENDING] = "pending",
        [CONN_ACTIVE] = "active",
        [CONN_NEEDS_REAUTH] = "needs_reauth",
};

const char *conn_state_to_string(ConnState s) {
        return s >= 0 && s < _CONN_STATE_MAX ? conn_state_table[s] : NULL;
}

ConnState conn_state_from_string(const char *s) {
        for (int i = 0; i < _CONN_STATE_MAX; i++)
                if (streq(conn_state_table[i], s))
                        return (ConnState) i;
        return _CONN_STATE_INVALID;
}

void connection_clear_tokens(Connection *c) {
        if (c->tokens_joined && c->refresh_token)
                /* inside the access token's chunk: wiped, freed with it */
                explicit_wipe(c->refresh_token, strlen(c->refresh_token));
        else
                secret_free(c->refresh_token);
        c->refresh_token = NULL;
        c->tokens_joined = false;
        c->access_token = secret_free(c->access_token);
}

int connection_join_tokens(Connection *c) {
        size_t la, lr;
        char *chunk;

        if (c->tokens_joined || !c->access_token || !c->refresh_token)
                return 0;
        la = strlen(c->access_token);
        lr = strlen(c->refresh_token);
        chunk = malloc(la + 1 + lr + 1);
        if (!chunk)
                return -ENOMEM;
        memcpy(chunk, c->access_token, la + 1);
        memcpy(chunk + la + 1, c->refresh_token, lr + 1);
        secret_free(c->access_token);
        secret_free(c->refresh_token);
        c->access_token = chunk;
        c->refresh_token = chunk + la + 1;
        c->tokens_joined = true;
        return 0;
}

void connection_set_access_token(Connection *c, char *access) {
        if (c->tokens_joined) {
                /* The refresh token moves to the front of the chunk, which
                 * it then owns alone (no allocation: this cannot fail). */
                char *chunk = c->access_token, *rt = c->refresh_token;
                size_t lr = strlen(rt), total = (size_t) (rt - chunk) + lr + 1;

                memmove(chunk, rt, lr + 1);
                explicit_wipe(chunk + lr + 1, total - (lr + 1));
                c->refresh_token = chunk;
                c->tokens_joined = false;
        } else
                secret_free(c->access_token);
        c->access_token = access;
}

void connection_set_refresh_token(Connection *c, char *refresh) {
        if (c->tokens_joined) {
                /* wiped in place; the access token keeps the chunk */
                explicit_wipe(c->refresh_token, strlen(c->refresh_token));
                c->tokens_joined = false;
        } else
                secret_free(c->refresh_token);
        c->refresh_token = refresh;
}

static void device_free(ConnDevice *d) {
        if (!d)
                return;
        free(d->user_code);
        free(d->verification_uri);
        free(d->verification_uri_complete);
        free(d);
}

static bool pending_empty(const ConnPending *p) {
        return !p->state_hash && !p->code_verifier && !p->auth_state && !p->username && p->pending_until == 0 &&
               !p->device;
}

static bool rare_empty(const ConnRare *r) {
        return !r->last_error && !r->identity && !r->previous_identity && !r->params && !r->metadata && r->rt_warned == 0;
}

/* Wipes the secrets, as the setters and connection_clear_pending_auth() do. */
static ConnPending *pending_free(ConnPending *p) {
        if (!p)
                return NULL;
        free(p->state_hash);
        secret_free(p->code_verifier);
        secret_free(p->auth_state);
        free(p->username);
        device_free(p->device);
        free(p);
        return NULL;
}

static ConnRare *rare_free(ConnRare *r) {
        if (!r)
                return NULL;
        free(r->last_error);
        free(r->identity);
        free(r->previous_identity);
        json_decref(r->params);
        json_decref(r->metadata);
        free(r);
        return NULL;
}

/* The part, allocated if there is none and want is set (a value is to
 * be stored). NULL: there is none and want is unset (nothing to clear),
 * or want is set and the allocation failed (-ENOMEM). */
static ConnPending *pending_get(Connection *c, bool want) {
        if (!c->pending && want)
                c->pending = new0(ConnPending, 1);
        return c->pending;
}

static ConnRare *rare_get(Connection *c, bool want) {
        if (!c->rare && want)
                c->rare = new0(ConnRare, 1);
        return c->rare;
}

static void pending_trim(Connection *c) {
        if (c->pending && pending_empty(c->pending))
                c->pending = pending_free(c->pending);
}

static void rare_trim(Connection *c) {
        if (c->rare && rare_empty(c->rare))
                c->rare = rare_free(c->rare);
}

int connection_set_device(Connection *c, usec_t interval, char **user_code, char **verification_uri,
                          char **verification_uri_complete) {
        ConnPending *x;
        ConnDevice *d;

        assert(interval > 0);
        d = new0(ConnDevice, 1);
        if (!d)
                return -ENOMEM;
        x = pending_get(c, true);
        if (!x) {
                free(d);
                return -ENOMEM;
        }
        *d = (ConnDevice) {
                .interval = interval,
                .user_code = user_code ? TAKE_PTR(*user_code) : NULL,
                .verification_uri = verification_uri ? TAKE_PTR(*verification_uri) : NULL,
                .verification_uri_complete = verification_uri_complete ? TAKE_PTR(*verification_uri_complete) : NULL,
        };
        device_free(x->device);   /* any earlier one */
        x->device = d;
        return 0;
}

void connection_clear_device(Connection *c) {
        if (!c->pending)
                return;
        device_free(TAKE_PTR(c->pending->device));
        pending_trim(c);
}

/* One setter per field: the part as needed, the old value freed with
 * free_fn, the part trimmed once empty. */
#define DEFINE_PART_SETTER(field, part, type, free_fn)                          \
        int connection_set_##field(Connection *c, type v) {                     \
                __typeof__(c->part) x = part##_get(c, v != NULL);               \
                                                                                \
                if (!x) {                                                       \
                        if (!v)                                                 \
                                return 0;                                       \
                        free_fn(v);                                             \
                        return -ENOMEM;                                         \
                }                                                               \
                free_fn(x->field);                                              \
                x->field = v;                                                   \
                part##_trim(c);                                                 \
                return 0;                                                       \
        }

DEFINE_PART_SETTER(state_hash, pending, char *, free)
DEFINE_PART_SETTER(code_verifier, pending, char *, secret_free)
DEFINE_PART_SETTER(auth_state, pending, char *, secret_free)
DEFINE_PART_SETTER(username, pending, char *, free)
DEFINE_PART_SETTER(last_error, rare, char *, free)
DEFINE_PART_SETTER(previous_identity, rare, char *, free)
DEFINE_PART_SETTER(params, rare, json_t *, json_decref)
DEFINE_PART_SETTER(metadata, rare, json_t *, json_decref)

int connection_set_pending_until(Connection *c, usec_t t) {
        ConnPending *x = pending_get(c, t != 0);

        if (!x)
                return t != 0 ? -ENOMEM : 0;
        x->pending_until = t;
        pending_trim(c);
        return 0;
}

int connection_set_rt_warned(Connection *c, usec_t t) {
        ConnRare *x = rare_get(c, t != 0);

        if (!x)
                return t != 0 ? -ENOMEM : 0;
        x->rt_warned = t;
        rare_trim(c);
        return 0;
}

const char *connection_identity(const Connection *c) {
        if (c->identity_inline)
                return c->name + strlen(c->name) + 1;
        return c->rare ? c->rare->identity : NULL;
}

int connection_set_identity(Connection *c, char *s) {
        ConnRare *x;

        if (connection_identity_fits(c, s)) {
                if (c->rare && c->rare->identity) {
                        c->rare->identity = mfree(c->rare->identity);
                        rare_trim(c);
                }
                c->identity_inline = s != NULL;
                if (s) {
                        char *room = c->name + strlen(c->name) + 1;

                        memcpy(room, s, strlen(s) + 1);
                        free(s);
                }
                return 0;
        }
        x = rare_get(c, true);
        if (!x) {
                free(s);
                return -ENOMEM;
        }
        free(x->identity);
        x->identity = s;
        c->identity_inline = false;
        return 0;
}

char *connection_take_previous_identity(Connection *c) {
        char *s;

        if (!c->rare)
                return NULL;
        s = TAKE_PTR(c->rare->previous_identity);
        rare_trim(c);
        return s;
}

void connection_clear_pending_auth(Connection *c) {
        ConnPending *x = c->pending;

        if (!x)
                return;
        x->state_hash = mfree(x->state_hash);
        x->code_verifier = secret_free(x->code_verifier);
        x->auth_state = secret_free(x->auth_state);
        x->pending_until = 0;
        pending_trim(c);
}

void connection_give_rare(Connection *c, ConnRare **spare) {
        if (!c->rare && spare && *spare) {
                assert(rare_empty(*spare));
                c->rare = TAKE_PTR(*spare);
        }
}

ConnRefresh *connection_refresh(Connection *c) {
        if (!c->refresh)
                c->refresh = new0(ConnRefresh, 1);
        return c->refresh;
}

void connection_refresh_trim(Connection *c) {
        const ConnRefresh *x = c->refresh;

        if (x && !x->queue_next && !x->queue_prev && !c->queued && !x->inflight && !x->staged && x->retry_at == 0 &&
            !x->waiters && !x->revoke_waiter)
                c->refresh = mfree(c->refresh);
}

int connection_set_retry_at(Connection *c, usec_t t) {
        ConnRefresh *x = t != 0 ? connection_refresh(c) : c->refresh;

        if (!x)
                return t != 0 ? -ENOMEM : 0;
        x->retry_at = t;
        return 0;
}

/* ---- names: interned tuples ---------------------------------------- */

#define NAMES_MAGIC UINT32_C(0x4e414d45)

typedef struct NamesEntry {
        HashmapNode node;          /* key = key[] */
        size_t refs;
        uint32_t magic;
        ConnNames names;           /* pointing into key[], after the key */
        /* The key (each field "-" when NULL, else its length, ':' and its
         * bytes: no two tuples share one), its NUL, then the four values,
         * each with its NUL. */
        char key[];
} NamesEntry;

const ConnNames conn_names_none = {};

static Hashmap *names_table = NULL;
/* The tuple interned last: a load's rows mostly repeat it, and a match
 * needs neither the key nor the hash (forgotten when it is freed). */
static NamesEntry *names_last = NULL;

static const char *names_key(const HashmapNode *n) {
        return container_of(n, const NamesEntry, node)->key;
}

static NamesEntry *names_entry_of(const ConnNames *n) {
        NamesEntry *e = container_of(n, NamesEntry, names);

        assert(e->magic == NAMES_MAGIC && e->refs > 0);
        return e;
}

/* The key of n into buf (size bytes): its length without the NUL; a
 * length >= size means it did not fit. */
static size_t names_key_format(const ConnNames *n, char *buf, size_t size) {
        const char *f[4] = { n->provider, n->token_type, n->scope, n->requested_scope };
        size_t len = 0;

        for (size_t i = 0; i < 4; i++) {
                char num[24];
                size_t l, k;

                if (!f[i]) {
                        if (len + 1 < size)
                                buf[len] = '-';
                        len++;
                        continue;
                }
                l = strlen(f[i]);
                k = (size_t) snprintf(num, sizeof num, "%zu:", l);
                if (len + k + l < size) {
                        memcpy(buf + len, num, k);
                        memcpy(buf + len + k, f[i], l);
                }
                len += k + l;
        }
        if (len < size)
                buf[len] = 0;
        else if (size > 0)
                buf[0] = 0;
        return len;
}

const ConnNames *conn_names_intern(const ConnNames *n) {
        const char *f[4] = { n->provider, n->token_type, n->scope, n->requested_scope };
        const char **out[4];
        _cleanup_free_ char *heap = NULL;
        char buf[256], *key = buf, *p;
        HashmapNode *node;
        NamesEntry *e;
        size_t len, bytes;

        if (!n->provider && !n->token_type && !n->scope && !n->requested_scope)
                return &conn_names_none;
        if (names_last && conn_names_equal(&names_last->names, n)) {
                names_last->refs++;
                return &names_last->names;
        }
        len = names_key_format(n, buf, sizeof buf);
        if (len >= sizeof buf) {
                heap = malloc(len + 1);
                if (!heap)
                        return NULL;
                (void) names_key_format(n, heap, len + 1);
                key = heap;
        }
        if (!names_table && hashmap_new(&names_table, names_key) < 0)
                return NULL;
        node = hashmap_get(names_table, key);
        if (node) {
                e = container_of(node, NamesEntry, node);
                e->refs++;
                names_last = e;
                return &e->names;
        }
        bytes = sizeof(NamesEntry) + len + 1;
        for (size_t i = 0; i < 4; i++)
                bytes += f[i] ? strlen(f[i]) + 1 : 0;
        e = malloc(bytes);
        if (!e)
                return NULL;
        *e = (NamesEntry) { .refs = 1, .magic = NAMES_MAGIC };
        memcpy(e->key, key, len + 1);
        p = e->key + len + 1;
        out[0] = &e->names.provider;
        out[1] = &e->names.token_type;
        out[2] = &e->names.scope;
        out[3] = &e->names.requested_scope;
        for (size_t i = 0; i < 4; i++) {
                size_t l;

                if (!f[i])
                        continue;
                l = strlen(f[i]);
                memcpy(p, f[i], l + 1);
                *out[i] = p;
                p += l + 1;
        }
        if (hashmap_put(names_table, &e->node) < 0) {
                free(e);
                return NULL;
        }
        names_last = e;
        return &e->names;
}

const ConnNames *conn_names_ref(const ConnNames *n) {
        if (n && n != &conn_names_none)
                names_entry_of(n)->refs++;
        return n;
}

const ConnNames *conn_names_unref(const ConnNames *n) {
        NamesEntry *e;

        if (!n || n == &conn_names_none)
                return NULL;
        e = names_entry_of(n);
        if (--e->refs > 0)
                return NULL;
        hashmap_remove_node(names_table, &e->node);
        if (names_last == e)
                names_last = NULL;
        e->magic = 0;
        free(e);
        return NULL;
}

size_t conn_names_count(void) {
        return names_table ? hashmap_size(names_table) : 0;
}

bool conn_names_equal(const ConnNames *a, const ConnNames *b) {
        return a == b || (streq_ptr(a->provider, b->provider) && streq_ptr(a->token_type, b->token_type) &&
                          streq_ptr(a->scope, b->scope) && streq_ptr(a->requested_scope, b->requested_scope));
}

int connection_set_names(Connection *c, const ConnNames *n) {
        const ConnNames *t;

        if (conn_names_equal(c->names, n))
                return 0;
        t = conn_names_intern(n);
        if (!t)
                return -ENOMEM;
        conn_names_unref(c->names);
        c->names = t;
        return 0;
}

int connection_set_provider(Connection *c, const char *provider) {
        ConnNames n = *c->names;

        n.provider = provider;
        return connection_set_names(c, &n);
}

int connection_set_requested_scope(Connection *c, const char *requested_scope) {
        ConnNames n = *c->names;

        n.requested_scope = requested_scope;
        return connection_set_names(c, &n);
}

Connection *connection_new_with(const char *name, const char *identity, size_t room) {
        size_t n = strlen(name), k = identity ? strlen(identity) + 1 : 0;
        Connection *c;

        if (k > room && k <= CONN_IDENTITY_ROOM_MAX)
                room = k;
        room = MIN(room, (size_t) CONN_IDENTITY_ROOM_MAX);
        c = malloc(MAX(sizeof(Connection), offsetof(Connection, name) + n + 1 + room));
        if (!c)
                return NULL;
        *c = (Connection) { .names = &conn_names_none, .identity_room = room };
        memcpy(c->name, name, n + 1);
        if (identity && k <= room) {
                memcpy(c->name + n + 1, identity, k);
                c->identity_inline = true;
        } else if (identity) {
                char *s = strdup(identity);

                if (!s || connection_set_identity(c, s) < 0)
                        return connection_free(c);
        }
        return c;
}

Connection *connection_free(Connection *c) {
        if (!c)
                return NULL;
        connection_clear_tokens(c);
        pending_free(c->pending);   /* and its device part */
        rare_free(c->rare);
        free(c->refresh);   /* its request, staged answer and waiters are the refresher's, gone before */
        conn_names_unref(c->names);
        free(c->allow_users);
        free(c);
        return NULL;
}

int connection_set_acl(Connection *c, const uid_t *users, unsigned n_users, const gid_t *groups, unsigned n_groups) {
        uint32_t *block = NULL;

        assert(c);
        _Static_assert(sizeof(uid_t) == sizeof(uint32_t) && sizeof(gid_t) == sizeof(uint32_t), "ids are 32-bit");
        _Static_assert(ACL_MAX <= UINT8_MAX, "ACL counts are 8-bit");
        n_users = MIN(n_users, ACL_MAX);
        n_groups = MIN(n_groups, ACL_MAX);
        if (n_users + n_groups > 0) {
                block = new(uint32_t, n_users + n_groups);
                if (!block)
                        return -ENOMEM;
                if (n_users > 0)
                        memcpy(block, users, sizeof(uint32_t) * n_users);
                if (n_groups > 0)
                        memcpy(block + n_users, groups, sizeof(uint32_t) * n_groups);
        }
        free(c->allow_users);
        c->allow_users = block;
        c->n_allow_users = (uint8_t) n_users;
        c->n_allow_groups = (uint8_t) n_groups;
        return 0;
}

usec_t deadline_from_realtime(usec_t rt) {
        usec_t n_rt = now(CLOCK_REALTIME), n = now(DEADLINE_CLOCK);

        if (rt >= n_rt)
                return usec_add(n, rt - n_rt);
        return usec_sub(n, n_rt - rt);
}

usec_t connection_ttl(const Connection *c) {
        if (c->expires_at == 0)
                return USEC_INFINITY;
        return usec_sub(c->expires_deadline, now(DEADLINE_CLOCK));
}
