/* SPDX-License-Identifier: MIT */
#include "common/intern.h"
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
        return !r->last_error && !r->previous_identity && !r->params && !r->metadata && r->rt_warned == 0;
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

Connection *connection_new(const char *name) {
        size_t n = strlen(name);
        Connection *c = malloc(MAX(sizeof(Connection), offsetof(Connection, name) + n + 1));

        if (!c)
                return NULL;
        *c = (Connection) {};
        memcpy(c->name, name, n + 1);
        return c;
}

Connection *connection_free(Connection *c) {
        if (!c)
                return NULL;
        connection_clear_tokens(c);
        pending_free(c->pending);   /* and its device part */
        rare_free(c->rare);
        free(c->refresh);   /* its request, staged answer and waiters are the refresher's, gone before */
        intern_unref(c->provider);
        intern_unref(c->token_type);
        intern_unref(c->scope);
        intern_unref(c->requested_scope);
        free(c->identity);
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
