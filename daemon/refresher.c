/* SPDX-License-Identifier: MIT */

/* Refresh: when, single-flight, parallelism, backoff, needs_reauth.
 *
 * Each connection has one TimerEntry on the wheel, meaning whatever is
 * due next for it: the refresh ahead of expiry, a retry after a
 * transient failure, or the end of a pending authorization. Demands for a
 * connection that is already refreshing join the request in flight as
 * Waiters instead of making another. At most max_parallel_refreshes run
 * at once; the rest wait in a FIFO queue. */

#include "common/log.h"
#include "common/util.h"
#include "daemon/manager.h"
#include "daemon/oauth.h"

#define BACKOFF_BASE (1 * USEC_PER_SEC)

typedef enum OpKind {
        OP_REFRESH,
        OP_EXCHANGE,
        OP_REVOKE,
} OpKind;

/* The userdata of a request in flight for a connection. */
typedef struct Op {
        Manager *manager;
        Connection *conn;
        OpKind kind;
        unsigned revoke_step;
} Op;


static void wake_waiters(Connection *c, int result) {
        /* Waiters may add new waiters or free themselves: detach first. */
        Waiter *w = c->waiters;

        c->waiters = NULL;
        while (w) {
                Waiter *next = w->next;
                w->next = NULL;
                w->fn(c, result, w->userdata);
                w = next;
        }
}

void refresher_detach_waiter(Connection *c, Waiter *w) {
        for (Waiter **p = &c->waiters; *p; p = &(*p)->next)
                if (*p == w) {
                        *p = w->next;
                        w->next = NULL;
                        return;
                }
}

void refresher_add_waiter(Connection *c, Waiter *w) {
        if (!w)
                return;
        w->next = c->waiters;
        c->waiters = w;
}

/* Refreshes waiting for a slot queue per provider, so that one slow
 * provider at its max_in_flight cannot hold up the others. O(1) in and out. */
static void queue_remove(Manager *m, Connection *c) {
        ProviderStats *ps;

        if (!c->queued)
                return;
        ps = manager_stats(m, c->provider);
        if (c->queue_prev)
                c->queue_prev->queue_next = c->queue_next;
        else if (ps)
                ps->queue_head = c->queue_next;
        if (c->queue_next)
                c->queue_next->queue_prev = c->queue_prev;
        else if (ps)
                ps->queue_tail = c->queue_prev;
        c->queue_next = c->queue_prev = NULL;
        c->queued = false;
}

static void queue_append(Manager *m, Connection *c) {
        ProviderStats *ps = manager_stats(m, c->provider);

        if (!ps || c->queued)
                return;
        c->queue_prev = ps->queue_tail;
        c->queue_next = NULL;
        if (ps->queue_tail)
                ps->queue_tail->queue_next = c;
        else
                ps->queue_head = c;
        ps->queue_tail = c;
        c->queued = true;
}

static bool provider_has_slot(Manager *m, const Connection *c) {
        const Provider *p = manager_provider(m, c);
        ProviderStats *ps = manager_stats(m, c->provider);

        return !p || p->max_in_flight == 0 || !ps || ps->in_flight < p->max_in_flight;
}

static void op_free(Connection *c) {
        if (!c->inflight)
                return;
        free(c->inflight->userdata);
        c->inflight = http_request_free(c->inflight);
}

void refresher_cancel(Manager *m, Connection *c) {
        if (c->inflight) {
                ProviderStats *ps = manager_stats(m, c->provider);
                op_free(c);
                m->refreshing--;
                if (ps)
                        ps->in_flight--;
        }
        queue_remove(m, c);
        timerwheel_cancel(m->wheel, &c->timer);
        wake_waiters(c, -ECANCELED);
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
                        margin += random_u64() % jitter;
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

void refresher_schedule(Manager *m, Connection *c) {
        usec_t due = USEC_INFINITY;

        if (c->inflight || c->queued)
                return;
        if (c->retry_at > 0)
                due = c->retry_at;   /* already monotonic */
        else if (c->state_hash && c->pending_until > 0 && c->state == CONN_PENDING)
                due = deadline_from_realtime(c->pending_until);
        else if (c->state == CONN_ACTIVE)
                due = refresh_due(m, c);
        /* A re-authorization's state also expires; check it with the refresh. */
        if (c->state_hash && c->pending_until > 0 && c->state != CONN_PENDING)
                due = MIN(due, deadline_from_realtime(c->pending_until));

        if (due == USEC_INFINITY)
                timerwheel_cancel(m->wheel, &c->timer);
        else
                timerwheel_add(m->wheel, &c->timer, due);
}

static void clear_pending(Manager *m, Connection *c) {
        manager_pending_unlink(m, c);
        c->state_hash = mfree(c->state_hash);
        c->code_verifier = secret_free(c->code_verifier);
        c->pending_until = 0;
}

static int save(Manager *m, Connection *c) {
        int r;

        c->updated_at = now(CLOCK_REALTIME);
        r = store_connection_save(m->store, c);
        if (r < 0)
                log_error_errno(r, "%s: failed to store connection: %s", c->name, store_last_error(m->store));
        return r;
}

static void set_last_error(Connection *c, const char *e) {
        char *s = e ? strdup(e) : NULL;

        free(c->last_error);
        c->last_error = s;
}

void refresher_on_timer(Manager *m, Connection *c) {
        usec_t t = now(CLOCK_REALTIME);
        bool retry;

        if (c->state_hash && c->pending_until > 0 && c->pending_until <= t + WHEEL_TICK) {
                if (c->state == CONN_PENDING) {
                        manager_event(m, c, "authorization-expired",
                                      "authorization not completed in time; connection removed");
                        if (manager_remove(m, c) < 0)
                                log_error("%s: failed to remove expired authorization: %s", c->name,
                                          store_last_error(m->store));
                        return;
                }
                clear_pending(m, c);
                (void) save(m, c);
        }
        /* A retry after a transient failure is due even when the token
         * itself is not: the failed refresh was wanted. */
        retry = c->retry_at > 0 && c->retry_at <= now(DEADLINE_CLOCK) + WHEEL_TICK;
        if (retry)
                c->retry_at = 0;
        if (c->state == CONN_ACTIVE && (retry || refresh_due(m, c) <= now(DEADLINE_CLOCK) + WHEEL_TICK))
                (void) refresher_refresh(m, c, NULL);
        else
                refresher_schedule(m, c);
}

static void on_request_done(HttpRequest *req, void *userdata);

static int start_request(Manager *m, Connection *c, OpKind kind, HttpRequest *req) {
        Op *op;
        int r;

        op = new0(Op, 1);
        if (!op)
                return -ENOMEM;
        *op = (Op) { .manager = m, .conn = c, .kind = kind };
        r = http_request_start(req, manager_provider(m, c)->timeout, on_request_done, op);
        if (r < 0) {
                free(op);
                return r;
        }
        c->inflight = req;
        m->refreshing++;
        {
                ProviderStats *ps = manager_stats(m, c->provider);
                if (ps)
                        ps->in_flight++;
        }
        return 0;
}

/* Starts the provider request for one refresh (or re-run grant). */
static int refresh_start(Manager *m, Connection *c) {
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        const Provider *p = manager_provider(m, c);
        int r;

        if (!p) {
                set_last_error(c, "provider is no longer configured");
                return -ENOENT;
        }
        if (c->refresh_token) {
                const Param params[] = {
                        { "grant_type", "refresh_token" },
                        { "refresh_token", c->refresh_token },
                };
                r = oauth_token_request(m->http, p, params, ELEMENTSOF(params), &req);
        } else if (p->grant == GRANT_CLIENT_CREDENTIALS) {
                const char *s = c->requested_scope ?: p->scopes;
                const Param params[] = {
                        { "grant_type", "client_credentials" },
                        { "scope", isempty(s) ? NULL : s },
                };
                r = oauth_token_request(m->http, p, params, ELEMENTSOF(params), &req);
        } else {
                set_last_error(c, "no refresh token: the provider issued none");
                return -ENOKEY;
        }
        if (r < 0)
                return r;
        r = start_request(m, c, OP_REFRESH, req);
        if (r < 0)
                return r;
        TAKE_PTR(req);
        return 0;
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
                                log_warning_errno(r, "%s: cannot start refresh: %m", c->name);
                                wake_waiters(c, r);
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

        if (c->revoke_waiter)
                return -EBUSY;
        if (m->stopping)
                return -ESHUTDOWN;
        if (c->inflight || c->queued) {
                refresher_add_waiter(c, w);   /* single-flight: join the one running */
                return 0;
        }
        if (c->state == CONN_PENDING && c->refresh_token == NULL &&
            manager_provider(m, c) && manager_provider(m, c)->grant == GRANT_AUTHORIZATION_CODE)
                return -EAGAIN;
        timerwheel_cancel(m->wheel, &c->timer);
        if (m->refreshing >= m->config->max_parallel_refreshes || !provider_has_slot(m, c)) {
                queue_append(m, c);
                refresher_add_waiter(c, w);
                return 0;
        }
        r = refresh_start(m, c);
        if (r < 0) {
                refresher_schedule(m, c);
                return r;
        }
        refresher_add_waiter(c, w);
        return 0;
}

static usec_t backoff_delay(Manager *m, Connection *c, const HttpRequest *req) {
        unsigned n = MIN(c->failures, 20u);
        usec_t ceiling = MAX(MIN(m->config->backoff_max, BACKOFF_BASE << n), (usec_t) 1), d;

        /* Full jitter, with the base as a floor so a burst of failures
         * cannot turn into a tight loop. */
        d = BACKOFF_BASE + random_u64() % ceiling;
        if (req && req->retry_after) {
                char *end;
                unsigned long s = strtoul(req->retry_after, &end, 10);
                if (end != req->retry_after && *end == 0 && s < 3600)
                        d = MAX(d, (usec_t) s * USEC_PER_SEC);
        }
        return d;
}

/* Commits new tokens: durable before any client can see them. */
static int apply_tokens(Manager *m, Connection *c, TokenSet *t, const HttpRequest *req) {
        Connection old = *c;
        int r;

        c->access_token = TAKE_PTR(t->access_token);
        /* A refresh answer without a refresh token keeps the old one. */
        if (t->refresh_token)
                c->refresh_token = TAKE_PTR(t->refresh_token);
        c->token_type = TAKE_PTR(t->token_type);
        if (t->scope)
                c->scope = TAKE_PTR(t->scope);
        c->expires_at = t->expires_at;
        c->expires_deadline = t->expires_at ? deadline_from_realtime(t->expires_at) : 0;
        c->obtained_at = req->sent_at;
        c->last_refresh_at = now(CLOCK_REALTIME);
        c->last_error = NULL;
        c->refreshes++;
        c->failures = 0;
        c->updated_at = c->last_refresh_at;

        r = store_connection_save(m->store, c);
        if (r < 0) {
                /* Put everything back: the provider's answer is lost, and
                 * the old refresh token may be dead if it rotated. */
                char *new_at = c->access_token, *new_rt = c->refresh_token, *new_tt = c->token_type,
                     *new_sc = c->scope;
                c->access_token = old.access_token;
                c->refresh_token = old.refresh_token;
                c->token_type = old.token_type;
                c->scope = old.scope;
                c->expires_at = old.expires_at;
                c->expires_deadline = old.expires_deadline;
                c->obtained_at = old.obtained_at;
                c->last_refresh_at = old.last_refresh_at;
                c->last_error = old.last_error;
                c->refreshes = old.refreshes;
                secret_free(new_at);
                if (new_rt != old.refresh_token)
                        secret_free(new_rt);
                if (new_tt != old.token_type)
                        free(new_tt);
                if (new_sc != old.scope)
                        free(new_sc);
                return log_error_errno(r, "%s: failed to store new tokens: %s", c->name,
                                       store_last_error(m->store));
        }
        manager_expiry_update(m, c);
        secret_free(old.access_token);
        if (old.refresh_token != c->refresh_token)
                secret_free(old.refresh_token);
        if (old.token_type != c->token_type)
                free(old.token_type);
        if (old.scope != c->scope)
                free(old.scope);
        free(old.last_error);
        return 0;
}

static void refresh_done(Manager *m, Connection *c, HttpRequest *req) {
        const Provider *p = manager_provider(m, c);
        _cleanup_free_ char *error = NULL;
        TokenSet t = {};
        OAuthOutcome o;
        int r;

        ProviderStats *ps = manager_stats(m, c->provider);

        o = p ? oauth_token_response(p, req, &t, &error) : OAUTH_TRANSIENT;
        if (!p)
                error = strdup("provider is no longer configured");

        if (o == OAUTH_OK) {
                ConnState before = c->state;
                unsigned failures = c->failures;

                r = apply_tokens(m, c, &t, req);
                token_set_done(&t);
                if (r >= 0) {
                        m->refresh_ok++;
                        if (ps)
                                ps->refresh_ok++;
                        if (before != CONN_ACTIVE) {
                                manager_set_state(m, c, CONN_ACTIVE);
                                (void) save(m, c);
                                if (before == CONN_NEEDS_REAUTH) {
                                        manager_event(m, c, "recovered", "connection works again");
                                        manager_notify(m, c, "recovered");
                                }
                                else
                                        manager_event(m, c, "active", "connection is active");
                        } else if (failures > 0)
                                manager_event(m, c, "recovered", "refresh works again after %u failures", failures);
                        log_debug("%s: refreshed, expires in %" PRIu64 " s.", c->name,
                                  c->expires_at ? usec_sub(c->expires_at, now(CLOCK_REALTIME)) / USEC_PER_SEC
                                                : 0);
                        refresher_schedule(m, c);
                        wake_waiters(c, 0);
                        return;
                }
                error = strdup("cannot store the new tokens");
                o = OAUTH_TRANSIENT;
        }

        m->refresh_failed++;
        if (ps) {
                if (o == OAUTH_PERMANENT)
                        ps->refresh_permanent++;
                else
                        ps->refresh_transient++;
        }
        set_last_error(c, error);
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
        c->retry_at = usec_add(now(DEADLINE_CLOCK), backoff_delay(m, c, req));
        manager_event(m, c, "refresh-failed", "refresh failed (attempt %u): %s", c->failures,
                      strempty(error));
        (void) save(m, c);
        refresher_schedule(m, c);
        wake_waiters(c, -EAGAIN);
}

static void exchange_done(Manager *m, Connection *c, HttpRequest *req) {
        const Provider *p = manager_provider(m, c);
        _cleanup_free_ char *error = NULL, *identity = NULL;
        TokenSet t = {};
        OAuthOutcome o;
        int r;

        o = p ? oauth_token_response(p, req, &t, &error) : OAUTH_PERMANENT;
        if (o != OAUTH_OK) {
                set_last_error(c, error ?: "provider is no longer configured");
                clear_pending(m, c);
                (void) save(m, c);
                manager_event(m, c, "authorization-failed", "code exchange failed: %s", strempty(error));
                refresher_schedule(m, c);
                wake_waiters(c, -EKEYREJECTED);
                return;
        }
        if (t.id_token && oauth_identity_from_id_token(t.id_token, &identity) >= 0) {
                free(c->identity);
                c->identity = TAKE_PTR(identity);
        }
        /* Tokens, state and the end of the pending authorization in one
         * write: the code is spent, so losing this would lose the grant. */
        {
                ConnState before = c->state;
                char *hash = c->state_hash, *verifier = c->code_verifier;
                usec_t until = c->pending_until;

                c->state_hash = NULL;
                c->code_verifier = NULL;
                c->pending_until = 0;
                manager_set_state(m, c, CONN_ACTIVE);
                r = apply_tokens(m, c, &t, req);
                if (r < 0) {
                        manager_set_state(m, c, before);
                        c->state_hash = hash;
                        c->code_verifier = verifier;
                        c->pending_until = until;
                        /* the state stays spent: pending_linked is false */
                        token_set_done(&t);
                        set_last_error(c, "cannot store the new tokens");
                        wake_waiters(c, r);
                        return;
                }
                manager_pending_unlink(m, c);
                free(hash);
                secret_free(verifier);
        }
        token_set_done(&t);
        m->refresh_ok++;
        if (c->notified_at > 0)
                manager_notify(m, c, "recovered");
        manager_event(m, c, "authorized", "authorized by %s", c->identity ?: "(unknown identity)");
        refresher_schedule(m, c);
        wake_waiters(c, 0);
}

static int revoke_next(Manager *m, Connection *c, unsigned step);

/* The revoke waiter runs last and alone: it may free the connection. */
static void revoke_finish(Connection *c, int result) {
        Waiter *w = c->revoke_waiter;

        c->revoke_waiter = NULL;
        wake_waiters(c, -ECANCELED);
        if (w)
                w->fn(c, result, w->userdata);
}

static void revoke_done(Manager *m, Connection *c, HttpRequest *req, unsigned step) {
        int r;

        if (req->result != CURLE_OK || req->status != 200) {
                /* RFC 7009 section 2.2: 200 for valid and invalid tokens alike. */
                set_last_error(c, req->result != CURLE_OK ? http_request_strerror(req)
                                                          : "revocation endpoint refused");
                log_warning("%s: revocation at the provider failed: %s (HTTP %ld)", c->name,
                            http_request_strerror(req), req->status);
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
        r = oauth_revoke_request(m->http, p, token, hint, &req);
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

        if (c->inflight || c->revoke_waiter)
                return -EBUSY;
        queue_remove(m, c);
        timerwheel_cancel(m->wheel, &c->timer);
        r = revoke_next(m, c, 0);
        if (r <= 0)
                return r;
        c->revoke_waiter = w;
        return 1;
}

int refresher_exchange_code(Manager *m, Connection *c, const char *code, Waiter *w) {
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        const Provider *p = manager_provider(m, c);
        int r;

        if (!p)
                return -ENOENT;
        if (c->inflight)
                return -EBUSY;
        {
                const Param params[] = {
                        { "grant_type", "authorization_code" },
                        { "code", code },
                        { "redirect_uri", m->redirect_uri },
                        { "code_verifier", c->code_verifier },
                };
                r = oauth_token_request(m->http, p, params, ELEMENTSOF(params), &req);
        }
        if (r < 0)
                return r;
        queue_remove(m, c);
        timerwheel_cancel(m->wheel, &c->timer);
        r = start_request(m, c, OP_EXCHANGE, req);
        if (r < 0) {
                refresher_schedule(m, c);
                return r;
        }
        TAKE_PTR(req);
        refresher_add_waiter(c, w);
        return 0;
}

static void on_request_done(HttpRequest *req, void *userdata) {
        Op *op = userdata;
        Manager *m = op->manager;
        Connection *c = op->conn;
        OpKind kind = op->kind;
        unsigned step = op->revoke_step;

        /* The request is ours to free once its result is read. */
        c->inflight = NULL;
        m->refreshing--;
        free(op);
        {
                static const double bounds[] = LATENCY_BOUNDS;
                ProviderStats *ps = manager_stats(m, c->provider);
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
                refresh_done(m, c, req);
                break;
        case OP_EXCHANGE:
                exchange_done(m, c, req);
                break;
        case OP_REVOKE:
                revoke_done(m, c, req, step);
                break;
        }
        http_request_free(req);
        drain_queue(m);
        manager_wheel_rearm(m);
        manager_maybe_exit(m);
}
