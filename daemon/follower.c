/* SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>

#include "common/intern.h"
#include "common/log.h"
#include "common/util.h"
#include "daemon/follower.h"
#include "daemon/manager.h"

/* A change for the loop: a row (a copy, sealed), a delete by name, or
 * another node's request to refresh (name, id); or, the other way, this
 * node's request for the thread to send. */
typedef struct Change {
        struct Change *next;
        StoreRow *row;
        char *deleted;
        char *requested;
        int64_t id;
} Change;

/* A refresh asked of another node, not arrived yet (the loop's). */
typedef struct Asked {
        char *name;
        usec_t deadline;           /* DEADLINE_CLOCK */
} Asked;

/* Ids changed by one wait, read back together. */
#define IDS_MAX 256

struct Follower {
        Manager *manager;
        Store *store;                 /* the loop's: the thread opens its own like it */
        char node[128];

        pthread_t thread;
        bool started;
        pthread_mutex_t lock;
        pthread_cond_t wake;
        bool stopping;                /* under lock */
        Change *head, **tail;         /* under lock: for the loop, in order */
        Change *out;                  /* under lock: requests for the thread to send */

        int efd;                      /* the thread -> the loop: changes queued */
        int wake_efd;                 /* the loop -> the thread: requests queued */
        sd_event_source *source;
        uint64_t applied;             /* the loop's */
        Asked *asked;                 /* the loop's */
        size_t n_asked;
        sd_event_source *asked_timer;

        /* the thread's */
        int64_t since;                /* the highest version seen */
        int64_t ids[IDS_MAX];
        size_t n_ids;
        bool overflow;
        Change *batch, **batch_tail;
};

static Change *change_free(Change *x) {
        store_row_free(x->row);
        free(x->deleted);
        free(x->requested);
        free(x);
        return NULL;
}

static void batch_add(Follower *f, Change *x) {
        *f->batch_tail = x;
        f->batch_tail = &x->next;
}

/* Hands the thread's batch to the loop. */
static void batch_flush(Follower *f) {
        if (!f->batch)
                return;
        pthread_mutex_lock(&f->lock);
        *f->tail = f->batch;
        f->tail = f->batch_tail;
        pthread_mutex_unlock(&f->lock);
        f->batch = NULL;
        f->batch_tail = &f->batch;
        (void) eventfd_write(f->efd, 1);
}

static int on_row(StoreRow *row, void *userdata) {
        Follower *f = userdata;
        Change *x = new0(Change, 1);

        if (!x) {
                store_row_free(row);
                return -ENOMEM;
        }
        x->row = row;
        f->since = MAX(f->since, store_row_version(row));
        batch_add(f, x);
        return 0;
}

static int on_change(int64_t id, int64_t version, const char *node, const char *name, void *userdata) {
        Follower *f = userdata;

        f->since = MAX(f->since, version);
        if (streq(node, f->node))
                return 0;   /* this node's own: already in its memory */
        if (version == -2) {
                Change *x = new0(Change, 1);

                if (!x || !(x->requested = strdup(name))) {
                        free(x);
                        return -ENOMEM;
                }
                x->id = id;
                batch_add(f, x);
                return 0;
        }
        if (version < 0) {
                Change *x = new0(Change, 1);

                if (!x || !(x->deleted = strdup(name))) {
                        free(x);
                        return -ENOMEM;
                }
                batch_add(f, x);
                return 0;
        }
        for (size_t i = 0; i < f->n_ids; i++)
                if (f->ids[i] == id)
                        return 0;
        if (f->n_ids == IDS_MAX) {
                f->overflow = true;
                return 0;
        }
        f->ids[f->n_ids++] = id;
        return 0;
}

static bool wait_stop(Follower *f, usec_t usec) {
        struct timespec until;
        bool stop;

        (void) clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += (time_t) (usec / USEC_PER_SEC);
        until.tv_nsec += (long) (usec % USEC_PER_SEC) * 1000;
        if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&f->lock);
        while (!f->stopping && pthread_cond_timedwait(&f->wake, &f->lock, &until) == 0)
                ;
        stop = f->stopping;
        pthread_mutex_unlock(&f->lock);
        return stop;
}

static bool stopping(Follower *f) {
        bool stop;

        pthread_mutex_lock(&f->lock);
        stop = f->stopping;
        pthread_mutex_unlock(&f->lock);
        return stop;
}

static void *follower_thread(void *userdata) {
        Follower *f = userdata;
        Store *s = NULL;
        usec_t last_scan = 0;

        while (!stopping(f)) {
                int64_t before;
                char error[512];
                int r;

                if (!s) {
                        r = store_open_again(f->store, &s, error, sizeof error);
                        if (r >= 0)
                                r = store_changes_listen(s);
                        /* what changed while no one listened */
                        if (r >= 0)
                                r = store_rows_changed(s, NULL, 0, f->since, on_row, f);
                        batch_flush(f);
                        if (r < 0) {
                                s = store_close(s);
                                if (wait_stop(f, USEC_PER_SEC))
                                        break;
                                continue;
                        }
                        last_scan = now(CLOCK_MONOTONIC);
                }

                /* this node's requests to the holders */
                {
                        Change *out;

                        pthread_mutex_lock(&f->lock);
                        out = f->out;
                        f->out = NULL;
                        pthread_mutex_unlock(&f->lock);
                        r = 0;
                        while (out) {
                                Change *x = out;

                                out = x->next;
                                if (r >= 0)
                                        r = store_changes_request(s, x->id, x->requested);
                                change_free(x);
                        }
                        if (r < 0) {
                                s = store_close(s);
                                continue;
                        }
                }

                before = f->since;
                f->n_ids = 0;
                f->overflow = false;
                r = store_changes_wait(s, FOLLOWER_WAIT, f->wake_efd, on_change, f);
                if (r >= 0 && f->overflow)
                        r = store_rows_changed(s, NULL, 0, before, on_row, f);
                else if (r >= 0 && f->n_ids > 0)
                        r = store_rows_changed(s, f->ids, f->n_ids, 0, on_row, f);
                if (r >= 0 && usec_sub(now(CLOCK_MONOTONIC), last_scan) >= FOLLOWER_SCAN) {
                        /* the safety net: anything a notification missed */
                        r = store_rows_changed(s, NULL, 0, before, on_row, f);
                        last_scan = now(CLOCK_MONOTONIC);
                }
                batch_flush(f);
                if (r < 0)
                        s = store_close(s);   /* reconnect, and catch up */
        }
        store_close(s);
        return NULL;
}

/* Tokens and what comes with them, from x into c (the row's are newer). */
static void take_tokens(Manager *m, Connection *c, Connection *x) {
        /* the pair as it is (one allocation, connection_join_tokens()) */
        connection_clear_tokens(c);
        c->access_token = TAKE_PTR(x->access_token);
        c->refresh_token = TAKE_PTR(x->refresh_token);
        c->tokens_joined = x->tokens_joined;
        x->tokens_joined = false;
        intern_unref(c->token_type);
        c->token_type = TAKE_PTR(x->token_type);
        intern_unref(c->scope);
        c->scope = TAKE_PTR(x->scope);
        json_decref(c->metadata);
        c->metadata = TAKE_PTR(x->metadata);
        free(c->last_error);
        c->last_error = TAKE_PTR(x->last_error);
        c->expires_at = x->expires_at;
        c->expires_deadline = c->expires_at ? deadline_from_realtime(c->expires_at) : 0;
        c->obtained_at = x->obtained_at;
        c->last_refresh_at = x->last_refresh_at;
        c->refreshes = x->refreshes;
        c->rt_end = x->rt_end;
        c->rt_warned = x->rt_warned;
        c->retry_at = 0;
        c->failures = 0;
        if (c->state != x->state)
                manager_set_state(m, c, x->state);
        manager_expiry_update(m, c);
}

/* The fields beyond the tokens: the row's. A pending authorization
 * started on another node replaces one started here (the later one is
 * in the database; the callback for either lands on its own node). */
static void take_others(Manager *m, Connection *c, Connection *x) {
        if (!connection_busy(c) && !streq_ptr(c->state_hash, x->state_hash)) {
                manager_pending_unlink(m, c);
                free(c->state_hash);
                c->state_hash = TAKE_PTR(x->state_hash);
                secret_free(c->code_verifier);
                c->code_verifier = TAKE_PTR(x->code_verifier);
                c->auth_state = secret_free(c->auth_state);
                c->pending_until = x->pending_until;
                if (manager_pending_link(m, c) < 0)
                        log_oom();
        }
        intern_unref(c->requested_scope);
        c->requested_scope = TAKE_PTR(x->requested_scope);
        free(c->identity);
        c->identity = TAKE_PTR(x->identity);
        json_decref(c->params);
        c->params = TAKE_PTR(x->params);
        free(c->username);
        c->username = TAKE_PTR(x->username);
        if (connection_set_acl(c, x->allow_users, x->n_allow_users, connection_allow_groups(x), x->n_allow_groups) < 0)
                log_oom();
        c->updated_at = MAX(c->updated_at, x->updated_at);
}

static void asked_arm(Follower *f);

/* The refresh asked for c arrived (or will not): its waiters are answered. */
static void asked_done(Follower *f, Connection *c, int result) {
        for (size_t i = 0; i < f->n_asked; i++)
                if (streq(f->asked[i].name, c->name)) {
                        free(f->asked[i].name);
                        f->asked[i--] = f->asked[--f->n_asked];
                }
        refresher_wake(c, result);
}

static int on_asked_timer(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        Follower *f = userdata;
        usec_t t = now(DEADLINE_CLOCK);

        for (size_t i = 0; i < f->n_asked; i++) {
                Connection *c;
                char *name;
                int64_t epoch;
                usec_t until;

                /* The lease came here meanwhile (a single node takes a new
                 * connection's lease at its next heartbeat; a holder died):
                 * this node refreshes, and the waiters get its answer. */
                c = manager_get(f->manager, f->asked[i].name);
                if (c && f->manager->cluster && cluster_lease(f->manager->cluster, c->id, &epoch, &until) > 0 &&
                    usec_sub(until, now(CLOCK_BOOTTIME)) >= CLUSTER_LEASE_MIN_LEFT) {
                        int r;

                        free(f->asked[i].name);
                        f->asked[i--] = f->asked[--f->n_asked];
                        log_debug("%s: the lease came to this node: refreshing here.", c->name);
                        r = refresher_refresh(f->manager, c, NULL);
                        if (r < 0)
                                refresher_wake(c, r);
                        else
                                manager_wheel_rearm(f->manager);
                        continue;
                }
                if (f->asked[i].deadline > t)
                        continue;
                name = f->asked[i].name;
                f->asked[i--] = f->asked[--f->n_asked];
                c = manager_get(f->manager, name);
                if (c) {
                        log_info("%s: the node holding the lease did not refresh it within %u s.", name,
                                 (unsigned) (FOLLOWER_REQUEST_WAIT / USEC_PER_SEC));
                        refresher_wake(c, -ETIMEDOUT);
                }
                free(name);
        }
        asked_arm(f);
        return 0;
}

static void asked_arm(Follower *f) {
        usec_t first = USEC_INFINITY;

        for (size_t i = 0; i < f->n_asked; i++)
                first = MIN(first, f->asked[i].deadline);
        /* and, while any is asked, a look every 0.5 s: has its lease come here? */
        if (first != USEC_INFINITY)
                first = MIN(first, usec_add(now(DEADLINE_CLOCK), CLUSTER_HEARTBEAT / 4));
        if (first == USEC_INFINITY) {
                if (f->asked_timer)
                        (void) sd_event_source_set_enabled(f->asked_timer, SD_EVENT_OFF);
                return;
        }
        if (!f->asked_timer) {
                if (sd_event_add_time(f->manager->event, &f->asked_timer, DEADLINE_CLOCK, first, 0, on_asked_timer,
                                      f) >= 0)
                        (void) sd_event_source_set_description(f->asked_timer, "follower-asked");
                return;
        }
        (void) sd_event_source_set_time(f->asked_timer, first);
        (void) sd_event_source_set_enabled(f->asked_timer, SD_EVENT_ONESHOT);
}

int follower_request_refresh(Follower *f, Connection *c, Waiter *w) {
        Change *x;
        Asked *a;
        bool known = false;

        for (size_t i = 0; i < f->n_asked; i++)
                known = known || streq(f->asked[i].name, c->name);
        if (!known) {
                a = reallocarray(f->asked, f->n_asked + 1, sizeof *a);
                if (!a)
                        return -ENOMEM;
                f->asked = a;
                x = new0(Change, 1);
                if (!x || !(x->requested = strdup(c->name)) || !(a[f->n_asked].name = strdup(c->name))) {
                        if (x)
                                change_free(x);
                        return -ENOMEM;
                }
                a[f->n_asked++].deadline = usec_add(now(DEADLINE_CLOCK), FOLLOWER_REQUEST_WAIT);
                x->id = c->id;
                pthread_mutex_lock(&f->lock);
                x->next = f->out;
                f->out = x;
                pthread_mutex_unlock(&f->lock);
                (void) eventfd_write(f->wake_efd, 1);
                asked_arm(f);
                log_debug("%s: refresh asked of the node holding its lease.", c->name);
        }
        refresher_add_waiter(c, w);
        return 0;
}

/* Another node asks this one, the holder, to refresh. */
static void apply_request(Follower *f, int64_t id, const char *name) {
        Manager *m = f->manager;
        Connection *c = manager_get(m, name);
        int64_t epoch;
        usec_t until;

        if (!c || c->id != id || cluster_lease(m->cluster, c->id, &epoch, &until) <= 0)
                return;   /* not ours (any more): the asker times out, or asks the new holder */
        log_debug("%s: refresh asked by another node.", name);
        if (refresher_refresh(m, c, NULL) >= 0)
                manager_wheel_rearm(m);
}

static void apply_row(Follower *f, const StoreRow *row) {
        Manager *m = f->manager;
        _cleanup_(connection_freep) Connection *x = NULL;
        Connection *c;
        int64_t epoch;
        usec_t until;
        bool holder, tokens;
        int r;

        r = store_row_to_connection(m->store, row, &x);
        if (r < 0) {
                log_warning_errno(r, "A connection changed by another node cannot be read: %s",
                                  store_last_error(m->store));
                return;
        }
        c = manager_get(m, x->name);
        if (c && c->id != x->id) {
                /* deleted and made again elsewhere under the same name */
                manager_forget(m, c);
                c = NULL;
        }
        if (!c) {
                store_connection_id_seen(m->store, x->id);
                if (hashmap_size(m->connections) >= m->config->max_connections) {
                        log_warning("%s: made on another node, but this node holds max_connections already.",
                                    x->name);
                        return;
                }
                r = manager_adopt(m, x);
                if (r < 0) {
                        log_warning_errno(r, "%s: cannot take the connection another node made: %m", x->name);
                        return;
                }
                TAKE_PTR(x);
                f->applied++;
                return;
        }

        /* A row older than what this node holds: a catch-up scan read this
         * node's own earlier commit while a newer change of it still waited
         * in the writer (seen setting up 5,000 connections on one node: a
         * connection just authorized went back to pending for a moment).
         * Nothing in it is news. */
        if (x->updated_at < c->updated_at)
                return;

        /* This node's own refresh in flight or committing: its tokens are
         * the ones that count. The lease holder takes tokens only newer
         * than its own (a grant on another node); everyone else the row's. */
        holder = m->cluster && cluster_lease(m->cluster, c->id, &epoch, &until) > 0;
        tokens = !connection_busy(c) && !c->queued && (!holder || x->obtained_at > c->obtained_at);
        take_others(m, c, x);
        if (tokens) {
                /* Only a new access token answers a refresh asked of the
                 * holder: a catch-up scan also reads this node's own last
                 * commit back, and its (old) token is no answer. */
                bool fresh = !streq_ptr(x->access_token, c->access_token);

                take_tokens(m, c, x);
                refresher_schedule(m, c);
                manager_wheel_rearm(m);
                if (c->waiters && fresh)
                        asked_done(f, c, 0);   /* a refresh asked of the holder: here it is */
        }
        f->applied++;
}

static void apply_delete(Follower *f, const char *name) {
        Manager *m = f->manager;
        Connection *c = manager_get(m, name);

        if (!c)
                return;
        log_debug("%s: deleted on another node.", name);
        manager_forget(m, c);
        f->applied++;
}

/* A bounded number a wake-up: the rest on the next turn. */
#define APPLY_MAX 1024

static int on_follower_event(sd_event_source *s _unused_, int fd, uint32_t revents _unused_, void *userdata) {
        Follower *f = userdata;
        Change *list;
        eventfd_t v;
        size_t n = 0;

        (void) eventfd_read(fd, &v);
        pthread_mutex_lock(&f->lock);
        list = f->head;
        f->head = NULL;
        f->tail = &f->head;
        pthread_mutex_unlock(&f->lock);
        while (list && n < APPLY_MAX) {
                Change *x = list;

                list = x->next;
                if (x->row)
                        apply_row(f, x->row);
                else if (x->requested)
                        apply_request(f, x->id, x->requested);
                else
                        apply_delete(f, x->deleted);
                change_free(x);
                n++;
        }
        if (list) {
                /* put the rest back in front */
                Change **end = &list;

                while (*end)
                        end = &(*end)->next;
                pthread_mutex_lock(&f->lock);
                *end = f->head;
                if (!f->head)
                        f->tail = end;
                f->head = list;
                pthread_mutex_unlock(&f->lock);
                (void) eventfd_write(f->efd, 1);
        }
        return 0;
}

int follower_new(Manager *m, int64_t since, Follower **ret) {
        _cleanup_(follower_freep) Follower *f = NULL;
        sigset_t all, old;
        int r;

        f = new0(Follower, 1);
        if (!f)
                return -ENOMEM;
        f->efd = f->wake_efd = -EBADF;
        f->manager = m;
        f->store = m->store;
        f->since = since;
        f->tail = &f->head;
        f->batch_tail = &f->batch;
        snprintf(f->node, sizeof f->node, "%s", m->config->node_name ?: "");
        pthread_mutex_init(&f->lock, NULL);
        pthread_cond_init(&f->wake, NULL);
        f->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (f->efd < 0)
                return -errno;
        f->wake_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (f->wake_efd < 0)
                return -errno;
        r = sd_event_add_io(m->event, &f->source, f->efd, EPOLLIN, on_follower_event, f);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(f->source, "follower");
        /* Signals go to the loop's signalfd: none may land on this thread. */
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        r = -pthread_create(&f->thread, NULL, follower_thread, f);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0)
                return r;
        f->started = true;
        *ret = TAKE_PTR(f);
        return 0;
}

Follower *follower_free(Follower *f) {
        if (!f)
                return NULL;
        if (f->started) {
                pthread_mutex_lock(&f->lock);
                f->stopping = true;
                pthread_cond_signal(&f->wake);
                pthread_mutex_unlock(&f->lock);
                (void) pthread_join(f->thread, NULL);
        }
        while (f->head) {
                Change *x = f->head;

                f->head = x->next;
                change_free(x);
        }
        while (f->batch) {
                Change *x = f->batch;

                f->batch = x->next;
                change_free(x);
        }
        while (f->out) {
                Change *x = f->out;

                f->out = x->next;
                change_free(x);
        }
        for (size_t i = 0; i < f->n_asked; i++)
                free(f->asked[i].name);
        free(f->asked);
        sd_event_source_disable_unref(f->asked_timer);
        sd_event_source_disable_unref(f->source);
        safe_close(f->efd);
        safe_close(f->wake_efd);
        pthread_cond_destroy(&f->wake);
        pthread_mutex_destroy(&f->lock);
        free(f);
        return NULL;
}

uint64_t follower_applied(Follower *f) {
        return f ? f->applied : 0;
}
