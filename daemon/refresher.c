/* SPDX-License-Identifier: MIT */

/* Refresh: when, single-flight, parallelism, backoff, needs_reauth.
 *
 * Each connection has one TimerEntry on the wheel, meaning whatever is
 * due next for it: the refresh ahead of expiry, a retry after a
 * transient failure, or the end of a pending authorization. Demands for a
 * connection that is already refreshing join the request in flight as
 * Waiters instead of making another. At most max_parallel_refreshes run
 * at once; the rest wait in a FIFO queue.
 *
 * New tokens are staged, never handed out, until the batch that holds them
 * is durable: the provider's answer goes into a Staged beside the
 * connection and into a row image queued on the store writer; the
 * connection keeps serving its old, still valid token meanwhile. The
 * writer's completion (tokens_committed) swaps them in, and only then are
 * waiters woken. While a set is staged the connection counts as busy
 * (connection_busy()): no other refresh may present the refresh token the
 * staged answer rotated. */

#include "common/log.h"
#include "common/params.h"
#include "common/util.h"
#include "daemon/manager.h"
#include "daemon/oauth.h"
#include "daemon/steps.h"
#include "daemon/trace.h"

#define BACKOFF_BASE (1 * USEC_PER_SEC)

typedef enum OpKind {
        OP_REFRESH,
        OP_EXCHANGE,
        OP_REVOKE,
        OP_DEVICE_AUTH,           /* RFC 8628 section 3.1 */
        OP_DEVICE_POLL,           /* section 3.4 */
        OP_USERINFO,              /* who authorized, after the tokens are committed */
} OpKind;

static const char *const op_name[] = {
        [OP_REFRESH] = "refresh", [OP_EXCHANGE] = "exchange", [OP_REVOKE] = "revoke",
        [OP_DEVICE_AUTH] = "device", [OP_DEVICE_POLL] = "device_poll", [OP_USERINFO] = "userinfo",
};

/* The userdata of a request in flight for a connection. */
typedef struct Op {
        Manager *manager;
        Connection *conn;
        OpKind kind;
        unsigned revoke_step;
        unsigned secret_tries;    /* other client secrets tried after invalid_client */
        char *code;               /* secret: a code exchange's code, to retry with the next client secret */
        bool used_refresh_token;
        int64_t lease_epoch;      /* a refresh on a cluster: the lease it was sent under (0: none) */
} Op;

/* RFC 8628 section 3.5: slow_down adds 5 seconds to the interval. */
#define DEVICE_SLOW_DOWN (5 * USEC_PER_SEC)
#define DEVICE_INTERVAL_MAX (10 * USEC_PER_MINUTE)


/* A provider's answer whose commit is not durable yet. */
struct Staged {
        Staged *next;              /* in Manager.recommit */
        Manager *manager;
        Connection *conn;          /* NULL once the connection is gone */
        bool grant;                /* a grant (code exchange, device approval), not a refresh */
        char *access_token;        /* secret */
        char *refresh_token;       /* secret; NULL: the answer kept the old one */
        /* c's names with the answer's token type and scope (interned:
         * the commit, which must not fail, installs them without an
         * allocation unless c's other names changed meanwhile) */
        const ConnNames *names;
        bool scope_set;            /* the answer had a scope; otherwise c's is kept */
        char *identity;            /* a grant's, from its ID token; NULL: none */
        json_t *metadata;          /* the answer's metadata merged in; NULL: unchanged */
        ConnRare *rare;            /* with metadata, when conn had no ConnRare: its part, set aside */
        usec_t expires_at, obtained_at, last_refresh_at;
        usec_t rt_end;             /* the refresh token's end (daemon/rtend.c) */
        int64_t lease_epoch;       /* > 0: commit only under this lease (daemon/cluster.h) */
};

/* The names a commit of st gives c: c's own, with the answer's token
 * type and (when it had one) scope. */
static ConnNames staged_names(const Connection *c, const Staged *st) {
        return (ConnNames) {
                .provider = c->names->provider,
                .token_type = st->names->token_type,
                .scope = st->scope_set ? st->names->scope : c->names->scope,
                .requested_scope = c->names->requested_scope,
        };
}

static Staged *staged_free(Staged *st) {
        if (!st)
                return NULL;
        secret_free(st->access_token);
        secret_free(st->refresh_token);
        conn_names_unref(st->names);
        free(st->identity);
        json_decref(st->metadata);
        free(st->rare);   /* empty: never holds a value */
        free(st);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Staged *, staged_free);

void refresher_image(const Connection *c, ConnImage *img) {
        const Staged *st = connection_staged(c);
        Connection *ret = &img->conn;

        *img = (ConnImage) {
                .pending = c->pending ? *c->pending : (ConnPending) {},
                .rare = c->rare ? *c->rare : (ConnRare) {},
                .name = c->name,
                .conn = *c,
        };
        ret->pending = &img->pending;
        ret->rare = &img->rare;
        ret->refresh = NULL;   /* never written */
        /* the copy has no name[], so no room after it: the identity is
         * the image's ConnRare's (connection_identity() reads it there) */
        img->rare.identity = (char *) connection_identity(c);
        ret->identity_inline = false;
        ret->identity_room = 0;
        if (!st)
                return;
        ret->access_token = st->access_token;
        if (st->refresh_token)
                ret->refresh_token = st->refresh_token;
        img->names = staged_names(c, st);
        ret->names = &img->names;
        if (st->metadata)
                img->rare.metadata = st->metadata;
        ret->expires_at = st->expires_at;
        ret->rt_end = st->rt_end;
        ret->obtained_at = st->obtained_at;
        ret->last_refresh_at = ret->updated_at = st->last_refresh_at;
        img->rare.last_error = NULL;
        ret->state = CONN_ACTIVE;
        if (!st->grant)
                ret->refreshes = connection_count_refresh(c->refreshes);
        else {
                /* the pending authorization ends with the grant */
                img->pending.state_hash = NULL;
                img->pending.code_verifier = NULL;
                img->pending.pending_until = 0;
                img->pending.device = NULL;
                if (st->identity)
                        img->rare.identity = st->identity;
        }
}

static void wake_waiters(Connection *c, int result) {
        /* Waiters may add new waiters or free themselves: detach first.
         * A waiter for the insert (Waiter.on_insert) stays, unless the
         * connection goes. */
        Waiter *w = connection_waiters(c), *wake = NULL, **wake_tail = &wake, *keep = NULL, **keep_tail = &keep;

        while (w) {
                Waiter *next = w->next;

                w->next = NULL;
                if (w->on_insert && result != -ECANCELED) {
                        *keep_tail = w;
                        keep_tail = &w->next;
                } else {
                        *wake_tail = w;
                        wake_tail = &w->next;
                }
                w = next;
        }
        if (c->refresh) {
                c->refresh->waiters = keep;
                connection_refresh_trim(c);
        }
        while (wake) {
                Waiter *next = wake->next;

                wake->next = NULL;
                wake->fn(c, result, wake->userdata);
                wake = next;
        }
}

void refresher_wake(Connection *c, int result) {
        wake_waiters(c, result);
}

void refresher_detach_waiter(Connection *c, Waiter *w) {
        if (!c->refresh)
                return;
        for (Waiter **p = &c->refresh->waiters; *p; p = &(*p)->next)
                if (*p == w) {
                        *p = w->next;
                        w->next = NULL;
                        connection_refresh_trim(c);
                        return;
                }
}

int refresher_add_waiter(Connection *c, Waiter *w) {
        ConnRefresh *x;

        if (!w)
                return 0;
        x = connection_refresh(c);
        if (!x)
                return -ENOMEM;
        w->next = x->waiters;
        x->waiters = w;
        return 0;
}

/* Refreshes waiting for a slot queue per provider, so that one slow
 * provider at its max_in_flight cannot hold up the others. O(1) in and out. */
static void queue_remove(Manager *m, Connection *c) {
        ProviderStats *ps;
        ConnRefresh *x;

        if (!c->queued)
                return;
        ps = manager_stats(m, c->names->provider);
        x = c->refresh;   /* queued: it has one (queue_append()) */
        assert(x);
        if (x->queue_prev)
                x->queue_prev->refresh->queue_next = x->queue_next;
        else if (ps)
                ps->queue_head = x->queue_next;
        if (x->queue_next)
                x->queue_next->refresh->queue_prev = x->queue_prev;
        else if (ps)
                ps->queue_tail = x->queue_prev;
        x->queue_next = x->queue_prev = NULL;
        c->queued = false;
        /* not trimmed: a start usually follows (refresher_schedule() trims) */
}

/* 0 (queued, or not queueable: no provider stats), or -ENOMEM: no part,
 * not queued. */
static int queue_append(Manager *m, Connection *c) {
        ProviderStats *ps = manager_stats(m, c->names->provider);
        ConnRefresh *x;

        if (!ps || c->queued)
                return 0;
        x = connection_refresh(c);
        if (!x)
                return -ENOMEM;
        x->queue_prev = ps->queue_tail;
        x->queue_next = NULL;
        if (ps->queue_tail)
                ps->queue_tail->refresh->queue_next = c;
        else
                ps->queue_head = c;
        ps->queue_tail = c;
        c->queued = true;
        return 0;
}

static bool provider_has_slot(Manager *m, const Connection *c) {
        const Provider *p = manager_provider(m, c);
        ProviderStats *ps = manager_stats(m, c->names->provider);

        return !p || p->max_in_flight == 0 || !ps || ps->in_flight < p->max_in_flight;
}

static void op_free(Connection *c) {
        HttpRequest *req = connection_inflight(c);

        if (!req)
                return;
        secret_free(((Op *) req->userdata)->code);
        free(req->userdata);
        c->refresh->inflight = http_request_free(req);
}

void refresher_cancel(Manager *m, Connection *c) {
        if (connection_staged(c)) {
                /* its completion finds no connection and drops the tokens */
                c->refresh->staged->conn = NULL;
                c->refresh->staged = NULL;
        }
        if (connection_inflight(c)) {
                ProviderStats *ps = manager_stats(m, c->names->provider);
                op_free(c);
                m->refreshing--;
                if (ps)
                        ps->in_flight--;
        }
        queue_remove(m, c);
        timerwheel_cancel(m->wheel, &c->timer);
        wake_waiters(c, -ECANCELED);   /* trims */
}

/* When the next refresh is due, on DEADLINE_CLOCK; USEC_INFINITY for never. */
static usec_t refresh_due(Manager *m, const Connection *c) {
        const Provider *p = manager_provider(m, c);
        usec_t lifetime, margin, jitter, due = USEC_INFINITY;

        if (c->expires_at > 0) {
                lifetime = c->obtained_at > 0 && c->expires_at > c->obtained_at ? c->expires_at - c->obtained_at : 0;
                margin = MAX(m->config->refresh_margin, (usec_t) (m->config->refresh_ratio * (double) lifetime));
                /* A margin as long as the token's life would refresh in a loop. */
                if (lifetime > 0 && margin > lifetime / 2)
                        margin = lifetime / 2;
                jitter = MIN(m->config->refresh_jitter, lifetime / 10);
                if (jitter > 0)
                        margin += random_fast_u64() % jitter;
                due = usec_sub(c->expires_deadline, margin);
        }
        /* Some providers expire refresh tokens that go unused (Microsoft
         * after 90 days): refresh at least this often, whatever the expiry. */
        if (p && p->refresh_at_least > 0 && (c->refresh_token || p->grant == GRANT_CLIENT_CREDENTIALS)) {
                usec_t last = c->last_refresh_at ?: c->created_at;
                due = MIN(due, deadline_from_realtime(usec_add(last, p->refresh_at_least)));
        }
        return due;
}

/* On a cluster, a pending connection with a grant to prove (an import, a
 * client_credentials or password grant) whose first request waits for the
 * connection's lease (lease_wait()); not one that failed already. */
static bool grant_waits_for_lease(Manager *m, const Connection *c) {
        return m->cluster && c->state == CONN_PENDING && !connection_state_hash(c) && !connection_last_error(c) &&
               !connection_device_pending(c);
}

void refresher_schedule(Manager *m, Connection *c) {
        usec_t due = USEC_INFINITY;

        if (connection_busy(c) || c->queued) {
                connection_refresh_trim(c);   /* not while busy or queued: only a part with nothing in it goes */
                return;
        }
        if (connection_retry_at(c) > 0)
                due = connection_retry_at(c);   /* already monotonic */
        else if (connection_state_hash(c) && connection_pending_until(c) > 0 && c->state == CONN_PENDING)
                due = deadline_from_realtime(connection_pending_until(c));
        else if (c->state == CONN_ACTIVE)
                due = refresh_due(m, c);
        else if (grant_waits_for_lease(m, c))
                due = usec_add(now(DEADLINE_CLOCK), CLUSTER_HEARTBEAT);   /* as lease_wait(): kept, not cancelled */
        /* A re-authorization's state also expires; check it with the refresh. */
        if (connection_state_hash(c) && connection_pending_until(c) > 0 && c->state != CONN_PENDING)
                due = MIN(due, deadline_from_realtime(connection_pending_until(c)));
        /* A device authorization: the next poll, and its end. */
        if (connection_device_pending(c)) {
                if (connection_device(c)->next_poll == 0)
                        connection_device(c)->next_poll = usec_add(now(DEADLINE_CLOCK), connection_device(c)->interval);
                due = MIN(due, connection_device(c)->next_poll);
                if (connection_pending_until(c) > 0)
                        due = MIN(due, deadline_from_realtime(connection_pending_until(c)));
        }

        if (due == USEC_INFINITY)
                timerwheel_cancel(m->wheel, &c->timer);
        else
                timerwheel_add(m->wheel, &c->timer, due);
        connection_refresh_trim(c);
}

static void clear_pending(Manager *m, Connection *c) {
        manager_pending_unlink(m, c);
        connection_clear_pending_auth(c);
        connection_clear_device(c);
}

static int save(Manager *m, Connection *c) {
        int r;

        c->updated_at = now(CLOCK_REALTIME);
        r = manager_save(m, c);
        if (r < 0)
                log_error_errno(r, "%s: failed to store connection: %m", c->name);
        return r;
}

/* Provider text among it: escaped and bounded like any text that is shown. */
#define LAST_ERROR_MAX 1024

/* Out of memory: none (as when the text cannot be escaped). */
static void set_last_error(Connection *c, const char *e) {
        char *s = e ? text_escape_dup(e, LAST_ERROR_MAX) : NULL;

        if (connection_set_last_error(c, s) < 0)
                (void) connection_set_last_error(c, NULL);
}

static int device_poll(Manager *m, Connection *c);

void refresher_on_timer(Manager *m, Connection *c) {
        usec_t t = now(CLOCK_REALTIME);
        bool retry;

        if (connection_device_pending(c) && !connection_inflight(c)) {
                if (connection_pending_until(c) > 0 && connection_pending_until(c) <= t + WHEEL_TICK) {
                        /* RFC 8628 section 3.5: stop polling at the code's expiry. */
                        if (c->state == CONN_PENDING) {
                                manager_event(m, c, "authorization-expired",
                                              "device code expired before the user approved; connection removed");
                                wake_waiters(c, -ETIMEDOUT);
                                if (manager_remove(m, c) < 0)
                                        log_error("%s: failed to remove expired authorization: out of memory", c->name);
                                return;
                        }
                        manager_event(m, c, "authorization-expired", "device code expired before the user approved");
                        clear_pending(m, c);
                        (void) save(m, c);
                } else if (connection_device(c)->next_poll <= now(DEADLINE_CLOCK) + WHEEL_TICK) {
                        int r = device_poll(m, c);
                        if (r >= 0)
                                return;
                        log_warning_errno(r, "%s: cannot poll the token endpoint: %m", c->name);
                        if (connection_device(c))
                                connection_device(c)->next_poll = usec_add(now(DEADLINE_CLOCK), connection_device(c)->interval);
                }
        }

        if (connection_state_hash(c) && connection_pending_until(c) > 0 && connection_pending_until(c) <= t + WHEEL_TICK) {
                if (c->state == CONN_PENDING) {
                        manager_event(m, c, "authorization-expired",
                                      "authorization not completed in time; connection removed");
                        if (manager_remove(m, c) < 0)
                                log_error("%s: failed to remove expired authorization: out of memory", c->name);
                        return;
                }
                clear_pending(m, c);
                (void) save(m, c);
        }
        /* A retry after a transient failure is due even when the token
         * itself is not: the failed refresh was wanted. */
        retry = connection_retry_at(c) > 0 && connection_retry_at(c) <= now(DEADLINE_CLOCK) + WHEEL_TICK;
        if (retry)
                (void) connection_set_retry_at(c, 0);   /* trimmed by what follows (refresher_schedule()) */
        /* On a cluster a pending connection with a grant to prove (an
         * import, a client_credentials or password grant) waited for its
         * lease (lease_wait()): its first request, now that it may be here. */
        bool starting = !connection_busy(c) && (grant_waits_for_lease(m, c) || (m->cluster && retry &&
                                                                               c->state == CONN_PENDING && !connection_state_hash(c)));
        if (starting || (c->state == CONN_ACTIVE && (retry || refresh_due(m, c) <= now(DEADLINE_CLOCK) + WHEEL_TICK)))
                (void) refresher_refresh(m, c, NULL);
        else
                refresher_schedule(m, c);
}

static void on_request_done(HttpRequest *req, void *userdata);

/* timeout 0: the provider's. */
static int start_request_leased(Manager *m, Connection *c, OpKind kind, HttpRequest *req, usec_t timeout,
                                int64_t lease_epoch) {
        ConnRefresh *x;
        Op *op;
        int r;

        /* the bookkeeping's part first: a refresh that cannot have it does
         * not start (the caller retries it like any failed start) */
        x = connection_refresh(c);
        if (!x)
                return -ENOMEM;
        op = new0(Op, 1);
        if (!op)
                return -ENOMEM;
        *op = (Op) { .manager = m, .conn = c, .kind = kind, .used_refresh_token = kind == OP_REFRESH && c->refresh_token,
                     .lease_epoch = lease_epoch };
        req->keep_headers = trace_enabled(m->config);
        r = http_request_start(req, timeout ?: manager_provider(m, c)->timeout, on_request_done, op);
        if (r < 0) {
                free(op);
                return r;
        }
        x->inflight = req;
        m->refreshing++;
        {
                ProviderStats *ps = manager_stats(m, c->names->provider);
                if (ps)
                        ps->in_flight++;
        }
        return 0;
}

static int start_request(Manager *m, Connection *c, OpKind kind, HttpRequest *req) {
        return start_request_leased(m, c, kind, req, 0, 0);
}

static RequestVars request_vars(Manager *m _unused_, const Connection *c, const Provider *p) {
        return (RequestVars) {
                .redirect_uri = p->redirect_uri,
                .scope = c->names->requested_scope ?: p->scopes,
                .username = connection_username(c),
                /* a password grant keeps the connection's password there */
                .password = p->grant == GRANT_PASSWORD ? connection_code_verifier(c) : NULL,
                .refresh_token = c->refresh_token,
                .access_token = c->access_token,
                .state = connection_auth_state(c),
                .params = connection_params(c),
                .metadata = connection_metadata(c),
        };
}

/* Starts req at once, outside the refresh queue (a code exchange, a device
 * authorization: a person is waiting on them), taking ownership of req;
 * w, if given, is woken when it ends. */
static int start_now(Manager *m, Connection *c, OpKind kind, HttpRequest *req, Waiter *w) {
        int r;

        queue_remove(m, c);
        timerwheel_cancel(m->wheel, &c->timer);
        r = start_request(m, c, kind, req);
        if (r < 0) {
                http_request_free(req);
                refresher_schedule(m, c);
                return r;
        }
        (void) refresher_add_waiter(c, w);   /* cannot fail: it has its part (inflight) */
        return 0;
}

/* Starts the provider request for one refresh (or re-run grant). */
static int refresh_start(Manager *m, Connection *c) {
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        const Provider *p = manager_provider(m, c);
        usec_t timeout = 0;
        int64_t epoch = 0;
        RequestVars v;
        int r;

        if (!p) {
                set_last_error(c, "provider is no longer configured");
                return -ENOENT;
        }
        /* Several nodes (daemon/cluster.h): only the holder of the
         * connection's lease refreshes, with time left to commit the
         * answer under it. The others serve what the holder commits
         * (daemon/follower.c) and look again after the next heartbeat,
         * when the lease may have come to them (its holder died). */
        if (m->cluster) {
                usec_t until, left;

                if (cluster_lease(m->cluster, c->id, &epoch, &until) <= 0 ||
                    (left = usec_sub(until, now(CLOCK_BOOTTIME))) < CLUSTER_LEASE_MIN_LEFT)
                        return -EREMOTE;   /* the caller: lease_wait() */
                timeout = MIN(p->timeout, left - CLUSTER_LEASE_MARGIN);
        }
        /* A refresh token is sent only when its result can be committed:
         * with the store's database away the answer (and a rotated
         * refresh token) would be lost, and the old refresh token, sent
         * again, is theft to a provider that rotates. Tried again after
         * the next heartbeat; the current token is served meanwhile. */
        if (c->refresh_token && m->cluster && !cluster_reachable(m->cluster)) {
                set_last_error(c, "the store's database is unreachable");
                r = connection_set_retry_at(c, usec_add(now(DEADLINE_CLOCK), CLUSTER_HEARTBEAT));
                return r < 0 ? r : -ENOLINK;
        }
        v = request_vars(m, c, p);
        /* ${access_token} in the refresh templates: the current access token
         * is what buys the next one (Meta, Instagram) */
        if (c->refresh_token || (p->refresh_uses_access_token && c->access_token))
                r = step_refresh_request(m->http, p, &v, &req);
        else if (p->grant == GRANT_CLIENT_CREDENTIALS)
                r = step_client_credentials_request(m->http, p, &v, &req);
        else if (p->grant == GRANT_PASSWORD) {
                /* RFC 6749 section 4.3.2 */
                v.password = connection_code_verifier(c);
                r = step_password_request(m->http, p, &v, &req);
                if (r == -ENOKEY) {
                        set_last_error(c, "password grant without a username or password");
                        return -ENOKEY;
                }
        } else {
                set_last_error(c, "no refresh token: the provider issued none");
                return -ENOKEY;
        }
        if (r < 0)
                return r;
        r = start_request_leased(m, c, OP_REFRESH, req, timeout, epoch);
        if (r < 0)
                return r;
        TAKE_PTR(req);
        return 0;
}

/* Not this node's to refresh now (no lease, or too little of it left):
 * looked at again after the next heartbeat. Not a retry_at: that means a
 * failed refresh to the API, and nothing failed. */
static void lease_wait(Manager *m, Connection *c) {
        timerwheel_add(m->wheel, &c->timer, usec_add(now(DEADLINE_CLOCK), CLUSTER_HEARTBEAT));
        connection_refresh_trim(c);
}

static void drain_queue(Manager *m) {
        /* Round robin over the providers' queues, one at a time, while
         * the global cap allows: O(providers) per pass. */
        for (bool progress = true; progress && m->refreshing < m->config->max_parallel_refreshes;) {
                progress = false;
                for (size_t k = 0; k < m->n_stats && m->refreshing < m->config->max_parallel_refreshes; k++) {
                        ProviderStats *ps = &m->stats[(m->queue_cursor + k) % m->n_stats];
                        Connection *c = ps->queue_head;
                        int r;

                        if (!c || !provider_has_slot(m, c))
                                continue;
                        queue_remove(m, c);
                        progress = true;
                        r = refresh_start(m, c);
                        if (r < 0) {
                                if (r == -ENOLINK)
                                        log_debug("%s: refresh postponed: the store's database is unreachable",
                                                  c->name);
                                else if (r == -EREMOTE)
                                        log_debug("%s: refresh left to the node holding its lease", c->name);
                                else
                                        log_warning_errno(r, "%s: cannot start refresh: %m", c->name);
                                wake_waiters(c, r);
                                if (r == -EREMOTE)
                                        lease_wait(m, c);
                                else
                                        refresher_schedule(m, c);
                        }
                        /* refresh_start may grow m->stats: ps is not used after this */
                }
                if (m->n_stats > 0)
                        m->queue_cursor = (m->queue_cursor + 1) % m->n_stats;
        }
}

int refresher_refresh(Manager *m, Connection *c, Waiter *w) {
        int r;

        if (connection_revoke_waiter(c))
                return -EBUSY;
        if (m->stopping)
                return -ESHUTDOWN;
        /* A client's demand while the store's database is away cannot be
         * met: no refresh token is sent, the lease holder cannot be asked,
         * and an answer kept for its commit waits for the database. Answered
         * now from what is held (a valid token, else 503), not after 30 s. */
        if (w && m->cluster && !cluster_reachable(m->cluster)) {
                set_last_error(c, "the store's database is unreachable");
                return -ENOLINK;
        }
        if (connection_busy(c) || c->queued)
                return refresher_add_waiter(c, w);   /* single-flight: join the one running (or committing) */
        if (c->state == CONN_PENDING && c->refresh_token == NULL && manager_provider(m, c) &&
            (manager_provider(m, c)->grant == GRANT_AUTHORIZATION_CODE ||
             manager_provider(m, c)->grant == GRANT_DEVICE_CODE || connection_device_pending(c)))
                return -EAGAIN;
        /* Several nodes: the holder of the lease refreshes. A client's
         * demand here (tokenctl refresh, min_ttl, invalidate) is passed on
         * to it, and answered when its commit arrives (daemon/follower.h);
         * a due refresh is looked at again after the next heartbeat, when
         * the lease may have come here. */
        if (m->follower) {
                int64_t epoch;
                usec_t until;

                if (cluster_lease(m->cluster, c->id, &epoch, &until) <= 0) {
                        if (!w) {
                                lease_wait(m, c);
                                return 0;
                        }
                        return follower_request_refresh(m->follower, c, w);
                }
        }
        timerwheel_cancel(m->wheel, &c->timer);
        if (m->refreshing >= m->config->max_parallel_refreshes || !provider_has_slot(m, c)) {
                r = queue_append(m, c);
                if (r < 0) {
                        refresher_schedule(m, c);   /* looked at again when due, like a failed start */
                        return r;
                }
                return refresher_add_waiter(c, w);
        }
        r = refresh_start(m, c);
        if (r == -EREMOTE) {
                lease_wait(m, c);
                return r;
        }
        if (r < 0) {
                refresher_schedule(m, c);
                return r;
        }
        return refresher_add_waiter(c, w);   /* cannot fail: it has its part (inflight) */
}

static usec_t backoff_delay(Manager *m, Connection *c, const HttpRequest *req) {
        unsigned n = MIN(c->failures, 20u);
        usec_t ceiling = MAX(MIN(m->config->backoff_max, BACKOFF_BASE << n), (usec_t) 1), d;

        /* Full jitter, with the base as a floor so a burst of failures
         * cannot turn into a tight loop. */
        d = BACKOFF_BASE + random_fast_u64() % ceiling;
        if (req && req->retry_after) {
                char *end;
                unsigned long s = strtoul(req->retry_after, &end, 10);
                if (end != req->retry_after && *end == 0 && s < 3600)
                        d = MAX(d, (usec_t) s * USEC_PER_SEC);
        }
        return d;
}

static void tokens_committed(int result, const char *error, void *userdata);

/* Queues the commit of c's staged answer st (connection_staged(c) == st). */
static int queue_commit(Manager *m, Connection *c, Staged *st) {
        _cleanup_(store_row_freep) StoreRow *row = NULL;
        ConnImage img;
        int r;

        refresher_image(c, &img);
        r = store_image_row_new(m->store, &img, &row);
        if (r >= 0) {
                store_row_fence(row, st->lease_epoch);
                r = store_writer_save(m->writer, TAKE_PTR(row), tokens_committed, st);
        }
        if (r >= 0)
                m->committing++;
        return r;
}

/* Stages new tokens and queues their commit; tokens_committed() makes
 * them visible once it is durable. Takes t's tokens and identity. */
static int apply_tokens(Manager *m, Connection *c, TokenSet *t, const HttpRequest *req, bool grant, char *identity,
                        int64_t lease_epoch) {
        _cleanup_(staged_freep) Staged *st = NULL;
        ConnRefresh *x;
        int r;

        assert(!connection_staged(c));
        st = new0(Staged, 1);
        if (!st) {
                free(identity);
                return log_oom();
        }
        *st = (Staged) {
                .manager = m,
                .conn = c,
                .grant = grant,
                .access_token = TAKE_PTR(t->access_token),
                .refresh_token = TAKE_PTR(t->refresh_token),
                .names = conn_names_intern(&(const ConnNames) {
                        .provider = c->names->provider,
                        .token_type = t->token_type,
                        .scope = t->scope ?: c->names->scope,
                        .requested_scope = c->names->requested_scope,
                }),
                .scope_set = t->scope != NULL,
                .identity = identity,
                .expires_at = t->expires_at,
                .obtained_at = req->sent_at,
                .last_refresh_at = now(CLOCK_REALTIME),
                .lease_epoch = lease_epoch,
        };
        if (!st->names)
                return log_oom();
        {
                const Provider *p = manager_provider(m, c);

                /* "metadata NAME = /pointer": updated on every answer that has it */
                if (p && metadata_from_token_response(p, req->body, req->body_len, connection_metadata(c), &st->metadata) < 0)
                        return log_oom();
                /* the commit sets it (and an identity that will not be
                 * inline) and must not fail then */
                if ((st->metadata || !connection_identity_fits(c, st->identity)) && !(st->rare = new0(ConnRare, 1)))
                        return log_oom();
                st->rt_end = rtend_compute(c->rt_end, grant, p ? p->refresh_token_lifetime : 0, t->refresh_expires_at,
                                           req->sent_at);
        }
        x = connection_refresh(c);
        if (!x)
                return log_oom();   /* lost like an answer that cannot be queued */
        x->staged = st;
        r = queue_commit(m, c, st);
        if (r < 0) {
                /* the answer is lost; the old refresh token may be dead if it rotated */
                x->staged = NULL;
                return log_error_errno(r, "%s: failed to store new tokens: %m", c->name);
        }
        TAKE_PTR(st);
        return 0;
}

static void refresh_committed(Manager *m, Connection *c, unsigned failures) {
        ProviderStats *ps = manager_stats(m, c->names->provider);
        ConnState before = c->state;

        m->refresh_ok++;
        if (ps)
                ps->refresh_ok++;
        if (before != CONN_ACTIVE) {
                manager_set_state(m, c, CONN_ACTIVE);   /* already in the committed row */
                if (before == CONN_NEEDS_REAUTH) {
                        manager_event(m, c, "recovered", "connection works again");
                        manager_notify(m, c, "recovered");
                } else
                        manager_event(m, c, "active", "connection is active");
        } else if (failures > 0)
                manager_event(m, c, "recovered", "refresh works again after %u failures", failures);
        log_debug("%s: refreshed, expires in %" PRIu64 " s.", c->name,
                  c->expires_at ? usec_sub(c->expires_at, now(CLOCK_REALTIME)) / USEC_PER_SEC : 0);
        refresher_schedule(m, c);
        wake_waiters(c, 0);
}

static usec_t backoff_delay(Manager *m, Connection *c, const HttpRequest *req);

/* After a failed refresh: retry_at set. It has its part still (from the
 * request or the commit: trimmed only where a flow settles), so this does
 * not allocate unless something trimmed it meanwhile; out of memory then,
 * the retry is armed all the same by schedule_retry(), only the API does
 * not show it. Returns the retry's time. */
static usec_t set_retry(Connection *c, usec_t delay) {
        usec_t at = usec_add(now(DEADLINE_CLOCK), delay);

        if (connection_set_retry_at(c, at) < 0)
                log_oom();
        return at;
}

static void schedule_retry(Manager *m, Connection *c, usec_t at) {
        refresher_schedule(m, c);
        if (connection_retry_at(c) != at && !connection_busy(c) && !c->queued)
                timerwheel_add(m->wheel, &c->timer, at);   /* no part for retry_at */
}

/* ---- answers whose refresh token rotated, committed again -------------
 *
 * When the commit of a refresh answer fails and the answer rotated the
 * refresh token, the old one is spent at the provider: refreshing with it
 * again is a reuse, which providers that rotate take for theft (the grant
 * is revoked). Such an answer is kept, still staged (the connection stays
 * busy and serves its old access token, no refresh starts), and its
 * commit is queued again every RECOMMIT_INTERVAL until the store takes it
 * (the store's database is back, the disk has room again). Only then are
 * the tokens handed out. A stop or a crash meanwhile loses it: the next
 * start refreshes with the old refresh token, as before. */
#define RECOMMIT_INTERVAL (2 * USEC_PER_SEC)

static void recommit_arm(Manager *m);

static int on_recommit(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        Manager *m = userdata;
        Staged *list = m->recommit;

        m->recommit = NULL;
        while (list) {
                Staged *st = list;

                list = st->next;
                st->next = NULL;
                if (!st->conn) {
                        staged_free(st);   /* the connection was removed meanwhile */
                        continue;
                }
                if (queue_commit(m, st->conn, st) < 0) {
                        st->next = m->recommit;
                        m->recommit = st;
                }
        }
        if (m->recommit)
                recommit_arm(m);
        return 0;
}

static void recommit_arm(Manager *m) {
        usec_t at = usec_add(now(CLOCK_MONOTONIC), RECOMMIT_INTERVAL);

        if (!m->recommit_timer) {
                if (sd_event_add_time(m->event, &m->recommit_timer, CLOCK_MONOTONIC, at, 0, on_recommit, m) >= 0)
                        (void) sd_event_source_set_description(m->recommit_timer, "recommit");
                return;
        }
        (void) sd_event_source_set_time(m->recommit_timer, at);
        (void) sd_event_source_set_enabled(m->recommit_timer, SD_EVENT_ONESHOT);
}

void refresher_drop_recommits(Manager *m) {
        unsigned n = 0;

        while (m->recommit) {
                Staged *st = m->recommit;

                m->recommit = st->next;
                if (st->conn) {
                        st->conn->refresh->staged = NULL;
                        connection_refresh_trim(st->conn);
                        n++;
                }
                staged_free(st);
        }
        if (n > 0)
                log_warning("%u refreshed token set%s with a rotated refresh token could not be committed before "
                            "the stop: their connections refresh with the old refresh token at the next start.",
                            n, n == 1 ? "" : "s");
        m->recommit_timer = sd_event_source_disable_unref(m->recommit_timer);
}

/* The provider's answer could not be stored: it is dropped, as if the
 * refresh had failed for a moment; the old token stays, retry with backoff. */
static void refresh_store_failed(Manager *m, Connection *c) {
        ProviderStats *ps = manager_stats(m, c->names->provider);
        usec_t retry;

        log_warning("%s: refresh failed: cannot store the new tokens", c->name);
        m->refresh_failed++;
        if (ps)
                ps->refresh_transient++;
        set_last_error(c, "cannot store the new tokens");
        c->failures++;
        retry = set_retry(c, backoff_delay(m, c, NULL));
        manager_event(m, c, "refresh-failed", "refresh failed (attempt %u): cannot store the new tokens",
                      c->failures);
        (void) save(m, c);
        schedule_retry(m, c, retry);
        wake_waiters(c, -EAGAIN);
}

static void grant_committed(Manager *m, Connection *c, Staged *st);

/* The writer's completion for staged tokens, on the loop, in queue order.
 * This is where the durability rule is enforced: the tokens become the
 * connection's, and so reach clients, only with result 0, i.e. once the
 * batch holding them (and any rotated refresh token) is on disk. */
static void tokens_committed(int result, const char *error, void *userdata) {
        _cleanup_(staged_freep) Staged *st = userdata;
        Manager *m = st->manager;
        Connection *c = st->conn;
        unsigned failures;

        assert(m->committing > 0);
        m->committing--;
        if (!c) {
                manager_maybe_exit(m);
                return;   /* removed meanwhile: its delete came after, nothing to hand out */
        }
        assert(connection_staged(c) == st);
        c->refresh->staged = NULL;   /* not trimmed before what follows settles (refresher_schedule()) */
        if (result == -ESTALE) {
                /* Fenced (daemon/cluster.h): another node took the lease
                 * over meanwhile and refreshes from what it committed;
                 * this answer is not handed out. */
                log_warning("%s: refreshed tokens discarded: %s", c->name, strempty(error));
                manager_event(m, c, "lease-lost", "a refresh answer was discarded: the lease moved to another node");
                refresher_schedule(m, c);
                wake_waiters(c, -EAGAIN);
                manager_wheel_rearm(m);
                manager_maybe_exit(m);
                return;
        }
        if (result < 0 && result != -ENOENT && !st->grant && st->refresh_token && !m->stopping) {
                log_warning_errno(result, "%s: failed to store new tokens (%s): the refresh token rotated, so "
                                  "the answer is kept and stored again in %u s; the current token is served "
                                  "meanwhile.", c->name, strempty(error),
                                  (unsigned) (RECOMMIT_INTERVAL / USEC_PER_SEC));
                set_last_error(c, "cannot store the new tokens yet");
                assert(c->refresh);   /* not trimmed since */
                c->refresh->staged = st;
                st->next = m->recommit;
                m->recommit = TAKE_PTR(st);   /* c->staged stays: busy, no refresh with the spent token */
                recommit_arm(m);
                manager_maybe_exit(m);
                return;
        }
        if (result < 0) {
                log_error_errno(result, "%s: failed to store new tokens: %s", c->name, strempty(error));
                if (st->grant) {
                        /* the state stays spent (unlinked at the callback) */
                        set_last_error(c, "cannot store the new tokens");
                        wake_waiters(c, result);
                } else
                        refresh_store_failed(m, c);
                manager_wheel_rearm(m);
                manager_maybe_exit(m);
                return;
        }

        connection_set_access_token(c, TAKE_PTR(st->access_token));
        /* A refresh answer without a refresh token keeps the old one. */
        if (st->refresh_token)
                connection_set_refresh_token(c, TAKE_PTR(st->refresh_token));
        (void) connection_join_tokens(c);   /* on ENOMEM they stay apart */
        {
                ConnNames n = staged_names(c, st);

                /* st->names unless c's other names changed since: then
                 * no allocation (a lookup's key may need one) */
                if (conn_names_equal(&n, st->names)) {
                        conn_names_unref(c->names);
                        c->names = conn_names_ref(st->names);
                } else if (connection_set_names(c, &n) < 0)
                        log_oom();   /* the old token type and scope are kept */
        }
        if (st->metadata) {
                /* the part was set aside when it was staged: cannot fail */
                connection_give_rare(c, &st->rare);
                if (connection_set_metadata(c, TAKE_PTR(st->metadata)) < 0)
                        log_oom();   /* not reached: it has a ConnRare now */
        }
        c->expires_at = st->expires_at;
        /* A warning was about the old end only (it is compared with the
         * end): forgotten with it, so the ConnRare it took can go. */
        if (st->rt_end != c->rt_end)
                (void) connection_set_rt_warned(c, 0);
        c->rt_end = st->rt_end;
        c->expires_deadline = st->expires_at ? deadline_from_realtime(st->expires_at) : 0;
        c->obtained_at = st->obtained_at;
        c->last_refresh_at = c->updated_at = st->last_refresh_at;
        (void) connection_set_last_error(c, NULL);
        if (!st->grant)
                c->refreshes = connection_count_refresh(c->refreshes);
        failures = c->failures;
        c->failures = 0;
        manager_expiry_update(m, c);

        if (st->grant)
                grant_committed(m, c, st);
        else
                refresh_committed(m, c, failures);
        manager_wheel_rearm(m);
        manager_maybe_exit(m);
}

static void refresh_done(Manager *m, Connection *c, HttpRequest *req, bool used_refresh_token,
                         unsigned secret_tries, int64_t lease_epoch) {
        const Provider *p = manager_provider(m, c);
        _cleanup_free_ char *error = NULL;
        TokenSet t = {};
        OAuthOutcome o;
        bool importing = c->importing;
        usec_t retry;
        int r;

        ProviderStats *ps = manager_stats(m, c->names->provider);

        o = p ? oauth_token_response(p, req, &t, &error) : OAUTH_TRANSIENT;
        if (!p)
                error = strdup("provider is no longer configured");

        /* client_secret_file repeated: on invalid_client try the next
         * secret (each once a round); the one that works stays in use. */
        if (o == OAUTH_PERMANENT && p && p->n_client_secret_next > 0 && secret_tries < p->n_client_secret_next) {
                _cleanup_free_ char *code = oauth_error_code(p, req);

                if (code && streq(code, "invalid_client") && provider_next_client_secret((Provider *) p)) {
                        log_warning("%s: the client secret in use was refused (invalid_client); trying the next "
                                    "client_secret_file of provider %s.", c->name, p->name);
                        if (refresh_start(m, c) >= 0) {
                                ((Op *) connection_inflight(c)->userdata)->secret_tries = secret_tries + 1;
                                return;
                        }
                }
        }

        /* Grants that need no user can mint a new grant when the refresh
         * token they were handed dies: drop it and run the grant again. */
        if (o == OAUTH_PERMANENT && used_refresh_token && p &&
            (p->grant == GRANT_CLIENT_CREDENTIALS || p->grant == GRANT_PASSWORD)) {
                log_info("%s: refresh token refused (%s); running the %s grant again.", c->name, strempty(error),
                         grant_to_string(p->grant));
                connection_set_refresh_token(c, NULL);
                (void) save(m, c);
                if (refresh_start(m, c) >= 0)
                        return;
        }

        if (o == OAUTH_OK || o == OAUTH_PERMANENT)
                c->importing = false;   /* the imported token is proven, or refused */
        if (o == OAUTH_OK) {
                if (!connection_identity(c) && t.id_token) {
                        char *id = NULL;
                        if (oauth_identity_from_claims(p, t.id_token, &id) >= 0 && connection_set_identity(c, id) < 0)
                                log_oom();   /* still unknown */
                }

                r = apply_tokens(m, c, &t, req, false, NULL, lease_epoch);
                token_set_done(&t);
                if (r >= 0)
                        return;   /* refresh_committed() once it is durable */
                error = strdup("cannot store the new tokens");
                o = OAUTH_TRANSIENT;
        }

        log_warning("%s: refresh failed: %s", c->name, strempty(error));
        m->refresh_failed++;
        if (ps) {
                if (o == OAUTH_PERMANENT)
                        ps->refresh_permanent++;
                else
                        ps->refresh_transient++;
        }
        set_last_error(c, error);
        if (o == OAUTH_PERMANENT && used_refresh_token && c->state == CONN_PENDING && !c->access_token) {
                /* An import's proof refused: the refresh token was never
                 * good. Keep nothing of it, as a failed first
                 * authorization keeps nothing. */
                manager_event(m, c, "authorization-failed",
                              "import failed: the provider refused the refresh token: %s; connection removed",
                              strempty(error));
                log_warning("%s: import failed, connection removed: %s", c->name, strempty(error));
                timerwheel_cancel(m->wheel, &c->timer);
                wake_waiters(c, -EKEYREJECTED);
                if (manager_remove(m, c) < 0)
                        log_error("%s: failed to remove the connection: out of memory", c->name);
                return;
        }
        if (o == OAUTH_PERMANENT && used_refresh_token && importing) {
                /* Imported over an existing connection: the refused token
                 * replaced the old one; hold no token known to be bad. */
                connection_set_refresh_token(c, NULL);
                manager_event(m, c, "authorization-failed",
                              "import failed: the provider refused the refresh token: %s; token dropped",
                              strempty(error));
        }
        if (o == OAUTH_PERMANENT) {
                manager_set_state(m, c, CONN_NEEDS_REAUTH);
                c->failures = 0;
                (void) save(m, c);
                manager_event(m, c, "needs-reauth", "refresh refused: %s", strempty(error));
                manager_notify(m, c, "needs-reauth");
                log_warning("%s: needs re-authorization: %s", c->name, strempty(error));
                timerwheel_cancel(m->wheel, &c->timer);
                wake_waiters(c, -EKEYREJECTED);
                return;
        }
        c->failures++;
        retry = set_retry(c, backoff_delay(m, c, req));
        manager_event(m, c, "refresh-failed", "refresh failed (attempt %u): %s", c->failures,
                      strempty(error));
        (void) save(m, c);
        schedule_retry(m, c, retry);
        wake_waiters(c, -EAGAIN);
}

static int userinfo_start(Manager *m, Connection *c, const Provider *p) {
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        const UsageVars uv = { .access_token = c->access_token, .token_type = c->names->token_type, .params = connection_params(c),
                               .metadata = connection_metadata(c) };
        int r;

        r = step_usage_request(m->http, p, p->userinfo_url, &uv, &req);
        if (r < 0)
                return r;
        r = start_request(m, c, OP_USERINFO, req);
        if (r < 0)
                return r;
        TAKE_PTR(req);
        return 0;
}

static void authorized_finish(Manager *m, Connection *c) {
        _cleanup_free_ char *before = connection_take_previous_identity(c);

        /* Re-authorized as another account: the tokens now act for
         * someone else. Identities (an email, a subject) are no secret. */
        if (before && connection_identity(c) && !streq(before, connection_identity(c))) {
                manager_event(m, c, "identity-changed", "identity changed from %s to %s", before,
                              connection_identity(c));
                log_warning("%s: re-authorized as %s, no longer as %s.", c->name, connection_identity(c), before);
        } else if (before && !connection_identity(c)) {
                /* no word on who it is now: keep the last known one */
                if (connection_set_identity(c, TAKE_PTR(before)) < 0)
                        log_oom();   /* still unknown */
                else
                        (void) save(m, c);
        }
        if (c->notified_s > 0)
                manager_notify(m, c, "recovered");
        manager_event(m, c, "authorized", "authorized by %s", connection_identity(c) ?: "(unknown identity)");
        refresher_schedule(m, c);
        wake_waiters(c, 0);
}

static void userinfo_done(Manager *m, Connection *c, HttpRequest *req) {
        const Provider *p = manager_provider(m, c);
        char *identity = NULL;
        int r = -EPROTO;

        if (p && req->result == CURLE_OK && req->status == 200)
                r = oauth_identity_from_userinfo(p, req->body, req->body_len, &identity);
        if (r >= 0) {
                if (connection_set_identity(c, identity) < 0)
                        log_oom();   /* the one before is kept */
                (void) save(m, c);
        } else
                log_warning("%s: no identity from the userinfo endpoint (%s, HTTP %ld)", c->name,
                            http_request_strerror(req), req->status);
        authorized_finish(m, c);
}

/* A grant completed (code exchange, device approval): tokens, state and
 * the end of the pending authorization in one write. The code is spent,
 * so losing this would lose the grant. */
static void grant_completed(Manager *m, Connection *c, TokenSet *t, const HttpRequest *req) {
        const Provider *p = manager_provider(m, c);
        char *identity = NULL;
        int r;

        if (t->id_token)
                (void) oauth_identity_from_claims(p, t->id_token, &identity);
        r = apply_tokens(m, c, t, req, true, identity, 0);
        token_set_done(t);
        if (r < 0) {
                /* the state stays spent: pending_linked is false */
                set_last_error(c, "cannot store the new tokens");
                wake_waiters(c, r);
        }
        /* else grant_committed() once it is durable */
}

static void grant_committed(Manager *m, Connection *c, Staged *st) {
        const Provider *p = manager_provider(m, c);
        int r;

        /* The committed row has all this already. */
        manager_set_state(m, c, CONN_ACTIVE);
        manager_pending_unlink(m, c);
        connection_clear_pending_auth(c);
        connection_clear_device(c);
        /* The new grant says who authorized it (its ID token, else the
         * userinfo answer below); the old identity is kept aside so that
         * authorized_finish() can tell a change of account. */
        {
                const char *old = connection_identity(c);
                char *copy = old ? strdup(old) : NULL;

                if ((old && !copy) || connection_set_previous_identity(c, copy) < 0)
                        log_warning("%s: out of memory: a change of account will not be noticed", c->name);
        }
        /* a ConnRare set aside at staging when it does not fit inline */
        connection_give_rare(c, &st->rare);
        if (connection_set_identity(c, TAKE_PTR(st->identity)) < 0) {
                /* not reached: it fits, or c has a ConnRare now */
                log_oom();
                (void) connection_set_identity(c, NULL);   /* never fails; not the old account's */
        }
        if (p && p->userinfo_url) {
                r = userinfo_start(m, c, p);
                if (r >= 0)
                        return;   /* authorized_finish() when it lands */
                log_warning_errno(r, "%s: cannot ask the userinfo endpoint: %m", c->name);
        }
        authorized_finish(m, c);
}

static int exchange_start(Manager *m, Connection *c, const char *code, Waiter *w, unsigned secret_tries);

static void exchange_done(Manager *m, Connection *c, HttpRequest *req, char *code, unsigned secret_tries) {
        const Provider *p = manager_provider(m, c);
        _cleanup_free_ char *error = NULL;
        _cleanup_secret_ _unused_ char *code_owned = code;   /* freed (wiped) on the way out */
        TokenSet t = {};
        OAuthOutcome o;

        o = p ? oauth_token_response(p, req, &t, &error) : OAUTH_PERMANENT;
        /* client_secret_file repeated: the next secret on invalid_client,
         * with the same code (the provider refused the client, not it). */
        if (o == OAUTH_PERMANENT && p && code && p->n_client_secret_next > 0 &&
            secret_tries < p->n_client_secret_next) {
                _cleanup_free_ char *ecode = oauth_error_code(p, req);

                if (ecode && streq(ecode, "invalid_client") && provider_next_client_secret((Provider *) p)) {
                        log_warning("%s: the client secret in use was refused (invalid_client); trying the next "
                                    "client_secret_file of provider %s.", c->name, p->name);
                        if (exchange_start(m, c, code, NULL, secret_tries + 1) >= 0)
                                return;   /* the waiters stay, woken by the retry */
                }
        }
        if (o != OAUTH_OK) {
                log_warning("%s: code exchange failed: %s", c->name, strempty(error));
                set_last_error(c, error ?: "provider is no longer configured");
                clear_pending(m, c);
                (void) save(m, c);
                manager_event(m, c, "authorization-failed", "code exchange failed: %s", strempty(error));
                refresher_schedule(m, c);
                wake_waiters(c, -EKEYREJECTED);
                return;
        }
        grant_completed(m, c, &t, req);
}

/* ---- the device flow (RFC 8628) -------------------------------------- */

int refresher_device_start(Manager *m, Connection *c, Waiter *w) {
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        const Provider *p = manager_provider(m, c);
        RequestVars v;
        int r;

        if (!p)
                return -ENOENT;
        if (!p->device_authorization_url)
                return -EOPNOTSUPP;
        if (connection_busy(c) || connection_revoke_waiter(c))
                return -EBUSY;
        v = request_vars(m, c, p);
        r = step_device_request(m->http, p, &v, &req);
        if (r < 0)
                return r;
        return start_now(m, c, OP_DEVICE_AUTH, TAKE_PTR(req), w);
}

/* With remove, a pending connection that never held a token goes: its
 * device authorization never started. */
static void device_failed(Manager *m, Connection *c, const char *kind, const char *error, int result, bool remove) {
        set_last_error(c, error);
        clear_pending(m, c);
        (void) save(m, c);
        manager_event(m, c, kind, "device authorization failed: %s", strempty(error));
        log_warning("%s: device authorization failed: %s", c->name, strempty(error));
        refresher_schedule(m, c);
        wake_waiters(c, result);
        if (remove && c->state == CONN_PENDING && !c->access_token && !c->refresh_token && !connection_waiters(c) &&
            manager_remove(m, c) < 0)
                log_error("%s: failed to remove the connection: out of memory", c->name);
}

static void device_auth_finished(Manager *m, Connection *c, HttpRequest *req) {
        _cleanup_free_ char *error = NULL;
        DeviceAuth d = {};
        int r;

        if (req->result != CURLE_OK || req->too_large)
                r = -EIO, error = strdup(http_request_strerror(req));
        else if (manager_provider(m, c))
                r = oauth_device_response(manager_provider(m, c), req, &d, &error);
        else
                r = -ENOENT, error = strdup("provider is no longer configured");
        if (r < 0) {
                device_failed(m, c, "authorization-failed", error ?: "device authorization failed", -EPROTO, true);
                return;
        }
        clear_pending(m, c);
        if (connection_set_device(c, d.interval, &d.user_code, &d.verification_uri, &d.verification_uri_complete) < 0) {
                device_auth_done(&d);
                device_failed(m, c, "authorization-failed", "out of memory", -ENOMEM, true);
                return;
        }
        if (connection_set_code_verifier(c, TAKE_PTR(d.device_code)) < 0 ||
            connection_set_pending_until(c, now(CLOCK_REALTIME) + d.expires_in) < 0) {
                device_auth_done(&d);
                device_failed(m, c, "authorization-failed", "out of memory", -ENOMEM, true);
                return;
        }
        connection_device(c)->next_poll = usec_add(now(DEADLINE_CLOCK), d.interval);
        (void) connection_set_last_error(c, NULL);
        device_auth_done(&d);
        if (save(m, c) < 0) {
                device_failed(m, c, "authorization-failed", "cannot store the device authorization", -EIO, true);
                return;
        }
        manager_event(m, c, "authorization-started", "device authorization started: user code %s at %s",
                      connection_device(c)->user_code, connection_device(c)->verification_uri);
        refresher_schedule(m, c);
        wake_waiters(c, 0);
}

static int device_poll(Manager *m, Connection *c) {
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        const Provider *p = manager_provider(m, c);
        RequestVars v;
        int r;

        if (!p)
                return -ENOENT;
        v = request_vars(m, c, p);
        v.device_code = connection_code_verifier(c);
        r = step_device_poll_request(m->http, p, &v, &req);
        if (r < 0)
                return r;
        timerwheel_cancel(m->wheel, &c->timer);
        r = start_request(m, c, OP_DEVICE_POLL, req);
        if (r < 0)
                return r;
        TAKE_PTR(req);
        return 0;
}

static void device_poll_done(Manager *m, Connection *c, HttpRequest *req) {
        const Provider *p = manager_provider(m, c);
        _cleanup_free_ char *error = NULL, *code = NULL;
        TokenSet t = {};
        OAuthOutcome o;

        if (!connection_device_pending(c))
                return;   /* re-authorized or expired meanwhile */
        o = p ? oauth_token_response(p, req, &t, &error) : OAUTH_TRANSIENT;
        if (o == OAUTH_OK) {
                grant_completed(m, c, &t, req);
                return;
        }
        code = p ? oauth_error_code(p, req) : NULL;
        if (code && streq(code, "slow_down"))
                connection_device(c)->interval = MIN(connection_device(c)->interval + DEVICE_SLOW_DOWN, DEVICE_INTERVAL_MAX);
        if (code && streq(code, "expired_token")) {
                if (connection_set_pending_until(c, now(CLOCK_REALTIME)) < 0)   /* the timer removes it */
                        log_oom();
                connection_device(c)->next_poll = now(DEADLINE_CLOCK);
        } else if (o == OAUTH_PERMANENT && !(code && (streq(code, "authorization_pending") || streq(code, "slow_down")))) {
                device_failed(m, c, "authorization-failed", error, -EKEYREJECTED, false);
                return;
        } else if (code && (streq(code, "authorization_pending") || streq(code, "slow_down")))
                log_debug("%s: device authorization %s; next poll in %" PRIu64 " s.", c->name, code,
                          connection_device(c)->interval / USEC_PER_SEC);
        else
                log_warning("%s: device polling failed, trying again: %s", c->name, strempty(error));
        if (!(code && streq(code, "expired_token")))
                connection_device(c)->next_poll = usec_add(now(DEADLINE_CLOCK), connection_device(c)->interval);
        (void) save(m, c);   /* a slowed interval survives a restart */
        refresher_schedule(m, c);
}

static int revoke_next(Manager *m, Connection *c, unsigned step);

/* The revoke waiter runs last and alone: it may free the connection. */
static void revoke_finish(Connection *c, int result) {
        Waiter *w = connection_revoke_waiter(c);

        if (c->refresh)
                c->refresh->revoke_waiter = NULL;
        wake_waiters(c, -ECANCELED);   /* trims */
        if (w)
                w->fn(c, result, w->userdata);
}

static void revoke_done(Manager *m, Connection *c, HttpRequest *req, unsigned step) {
        const Provider *p = manager_provider(m, c);
        _cleanup_free_ char *error = NULL;
        int r;

        /* RFC 7009 section 2.2: 200 for valid and invalid tokens alike; and
         * for providers that answer errors with 200, revoke_ok_pointer /
         * revoke_error_pointer. */
        if (!p || !oauth_revoke_response(p, req, &error)) {
                set_last_error(c, error ?: "revocation endpoint refused");
                log_warning("%s: revocation at the provider failed: %s (HTTP %ld)", c->name,
                            strempty(error), req->status);
                revoke_finish(c, -EPROTO);
                return;
        }
        r = revoke_next(m, c, step + 1);
        if (r <= 0)
                revoke_finish(c, r);
}

/* Revokes the refresh token first (it is what lets anyone mint more),
 * then the access token. Returns 0 when there is nothing left to do,
 * 1 when a request was started. */
static int revoke_next(Manager *m, Connection *c, unsigned step) {
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        const Provider *p = manager_provider(m, c);
        const char *token = NULL, *hint = NULL;
        unsigned first = step;
        int r;

        for (; step < 2 && !token; step++) {
                if (step == 0 && c->refresh_token) {
                        token = c->refresh_token;
                        hint = "refresh_token";
                } else if (step == 1 && c->access_token) {
                        token = c->access_token;
                        hint = "access_token";
                }
        }
        if (!token || !p || !p->revoke_url)
                return 0;
        {
                /* Templates without ${token}: one request revokes the grant. */
                RequestVars v = request_vars(m, c, p);

                if (!p->revoke_per_token && first > 0)
                        return 0;
                r = oauth_revoke_request(m->http, p, token, hint, &v, &req);
        }
        if (r < 0)
                return r;
        r = start_request(m, c, OP_REVOKE, req);
        if (r < 0)
                return r;
        ((Op *) req->userdata)->revoke_step = step - 1;
        TAKE_PTR(req);
        return 1;
}

int refresher_revoke(Manager *m, Connection *c, Waiter *w) {
        int r;

        if (connection_busy(c) || connection_revoke_waiter(c))
                return -EBUSY;
        /* the part first: a revocation that cannot wait does not start */
        if (!connection_refresh(c))
                return -ENOMEM;
        queue_remove(m, c);
        timerwheel_cancel(m->wheel, &c->timer);
        r = revoke_next(m, c, 0);
        if (r <= 0) {
                connection_refresh_trim(c);
                return r;
        }
        c->refresh->revoke_waiter = w;   /* it has its part (inflight) */
        return 1;
}

int refresher_exchange_code(Manager *m, Connection *c, const char *code, Waiter *w) {
        return exchange_start(m, c, code, w, 0);
}

static int exchange_start(Manager *m, Connection *c, const char *code, Waiter *w, unsigned secret_tries) {
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        const Provider *p = manager_provider(m, c);
        int r;

        if (!p)
                return -ENOENT;
        if (connection_busy(c))
                return -EBUSY;
        {
                RequestVars v = request_vars(m, c, p);

                v.code = code;
                v.code_verifier = connection_code_verifier(c);
                r = step_exchange_request(m->http, p, &v, &req);
        }
        if (r < 0)
                return r;
        r = start_now(m, c, OP_EXCHANGE, TAKE_PTR(req), w);
        if (r >= 0 && connection_inflight(c)) {
                Op *op = connection_inflight(c)->userdata;

                op->secret_tries = secret_tries;
                /* kept only when another secret may be tried with it */
                if (p->n_client_secret_next > 0 && secret_tries < p->n_client_secret_next)
                        op->code = strdup(code);
        }
        return r;
}

static void on_request_done(HttpRequest *req, void *userdata) {
        Op *op = userdata;
        Manager *m = op->manager;
        Connection *c = op->conn;
        OpKind kind = op->kind;
        unsigned step = op->revoke_step;
        bool used_refresh_token = op->used_refresh_token;
        unsigned secret_tries = op->secret_tries;
        int64_t lease_epoch = op->lease_epoch;
        char *code = TAKE_PTR(op->code);

        /* `tokenctl trace`, before the answer is parsed (and wiped) */
        manager_trace_record(m, c, op_name[kind], req);
        /* The request is ours to free once its result is read. Its part
         * stays until what follows settles (refresher_schedule(), the
         * waiters woken): a retry_at set then needs no allocation. */
        c->refresh->inflight = NULL;
        m->refreshing--;
        free(op);
        {
                static const double bounds[] = LATENCY_BOUNDS;
                ProviderStats *ps = manager_stats(m, c->names->provider);
                double secs = (double) req->duration / (double) USEC_PER_SEC;
                size_t b = 0;

                if (ps) {
                        ps->in_flight--;
                        while (b < N_LATENCY_BOUNDS && secs > bounds[b])
                                b++;
                        ps->latency_buckets[b]++;
                        ps->latency_sum += secs;
                        ps->latency_count++;
                }
        }

        switch (kind) {
        case OP_REFRESH:
                refresh_done(m, c, req, used_refresh_token, secret_tries, lease_epoch);
                break;
        case OP_EXCHANGE:
                exchange_done(m, c, req, TAKE_PTR(code), secret_tries);
                break;
        case OP_DEVICE_AUTH:
                device_auth_finished(m, c, req);
                break;
        case OP_DEVICE_POLL:
                device_poll_done(m, c, req);
                break;
        case OP_USERINFO:
                userinfo_done(m, c, req);
                break;
        case OP_REVOKE:
                revoke_done(m, c, req, step);
                break;
        }
        secret_free(code);   /* an exchange's, when not handed on */
        http_request_free(req);
        drain_queue(m);
        manager_wheel_rearm(m);
        manager_maybe_exit(m);
}
