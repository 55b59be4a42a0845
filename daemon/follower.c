/* SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>

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
        bool full;                 /* to the loop: compare everything held with the table */
        uint64_t read;             /* a row's: the thread's read it came from (Follower.reads) */
        int64_t *check_ids;        /* to the thread: what the loop held (ids, names) */
        char **check_names;
        size_t n_check;
} Change;

/* A refresh asked of another node, not arrived yet (the loop's). */
typedef struct Asked {
        char *name;
        int64_t id;
        usec_t asked_at;           /* DEADLINE_CLOCK */
        usec_t next;               /* the next look at the lease (DEADLINE_CLOCK) */
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
        bool full_retry;              /* under lock: the loop could not start the comparison */
        Change *head, **tail;         /* under lock: for the loop, in order */
        Change *out;                  /* under lock: requests for the thread to send */

        /* Reads of rows the thread has begun, counted (atomic): a delete
         * of this node done when the count was N may be undone only by a
         * row of a read up to N (begun before its commit); see
         * manager_deleting(). flushed: under lock, the count when the
         * last batch was handed over (every row of a read up to it is in
         * the loop's list). */
        uint64_t reads;
        uint64_t flushed;
        uint64_t read;                /* the thread's: the read under way */

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
        usec_t test_delay;            /* TOKENBROKER_TEST_FOLLOWER_DELAY_MS: a test hook */
        usec_t scan;                  /* FOLLOWER_SCAN, or TOKENBROKER_TEST_FOLLOWER_SCAN_MS (a test hook) */
        bool full_asked;              /* a full comparison is on its way */
        bool full_redo;               /* one failed: ask again */
        usec_t last_prune;            /* CLOCK_MONOTONIC */
};

static Change *change_free(Change *x) {
        store_row_free(x->row);
        free(x->deleted);
        free(x->requested);
        for (size_t i = 0; i < x->n_check; i++)
                free(x->check_names[i]);
        free(x->check_ids);
        free(x->check_names);
        free(x);
        return NULL;
}

static void batch_add(Follower *f, Change *x) {
        *f->batch_tail = x;
        f->batch_tail = &x->next;
}

/* A change naming connection id: its delete (deleted), or a refresh
 * asked of its lease holder; NULL when out of memory. */
static Change *change_named(int64_t id, const char *name, bool deleted) {
        Change *x = new0(Change, 1);
        char *copy = strdup(name);

        if (!x || !copy) {
                free(x);
                free(copy);
                return NULL;
        }
        x->id = id;
        if (deleted)
                x->deleted = copy;
        else
                x->requested = copy;
        return x;
}

static int batch_add_named(Follower *f, int64_t id, const char *name, bool deleted) {
        Change *x = change_named(id, name, deleted);

        if (!x)
                return -ENOMEM;
        batch_add(f, x);
        return 0;
}

static bool wait_stop(Follower *f, usec_t usec);

/* Hands the thread's batch to the loop. */
static void batch_flush(Follower *f) {
        if (!f->batch)
                return;
        if (f->test_delay > 0)
                (void) wait_stop(f, f->test_delay);   /* a test's slow follower */
        pthread_mutex_lock(&f->lock);
        *f->tail = f->batch;
        f->tail = f->batch_tail;
        f->flushed = f->read;
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
        x->read = f->read;
        f->since = MAX(f->since, store_row_version(row));
        batch_add(f, x);
        return 0;
}

/* The rows of these ids (or, ids NULL, every row above version after),
 * counted as a read begun now (Follower.reads). */
static int read_rows(Follower *f, Store *s, const int64_t *ids, size_t n, int64_t after) {
        f->read = __atomic_add_fetch(&f->reads, 1, __ATOMIC_SEQ_CST);
        return store_rows_changed(s, ids, n, after, on_row, f);
}

static int on_change(int64_t id, int64_t version, const char *node, const char *name, void *userdata) {
        Follower *f = userdata;

        f->since = MAX(f->since, version);
        if (streq(node, f->node))
                return 0;   /* this node's own: already in its memory */
        if (version < 0)   /* -2: a refresh asked of this node; else a delete */
                return batch_add_named(f, id, name, version != -2);
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

/* A tombstone (sql/pg/0005): a delete this node may have missed. */
static int on_deleted(int64_t id, int64_t version, const char *name, void *userdata) {
        Follower *f = userdata;

        f->since = MAX(f->since, version);
        return batch_add_named(f, id, name, true);
}

/* Everything with a version above after: rows, and the tombstones of
 * deletes. If tombstones above after were pruned already (a node cut off
 * for longer than STORE_TOMBSTONE_AGE), the loop compares everything it
 * holds with the table instead (full_check_start()). */
static int catch_up(Follower *f, Store *s, int64_t after) {
        int64_t horizon = 0;
        int r;

        pthread_mutex_lock(&f->lock);
        if (f->full_retry) {
                f->full_retry = false;
                f->full_asked = false;
                f->full_redo = true;
        }
        pthread_mutex_unlock(&f->lock);
        r = read_rows(f, s, NULL, 0, after);
        if (r >= 0)
                r = store_deleted_since(s, after, on_deleted, f);
        if (r >= 0)
                r = store_deleted_horizon(s, &horizon);
        if (r >= 0 && (horizon > after || f->full_redo) && !f->full_asked) {
                Change *x = new0(Change, 1);

                if (!x)
                        return -ENOMEM;
                x->full = true;
                f->full_asked = true;
                f->full_redo = false;
                f->since = MAX(f->since, horizon);
                batch_add(f, x);
        }
        return r;
}

/* The loop's list of what it held: the ids no row has any more go back
 * as deletes, in chunks. */
#define CHECK_CHUNK 4096

typedef struct CheckContext {
        Follower *f;
        const Change *list;
        size_t from, n;
} CheckContext;

static int on_missing(int64_t id, void *userdata) {
        CheckContext *k = userdata;

        for (size_t i = k->from; i < k->from + k->n; i++)
                if (k->list->check_ids[i] == id)
                        return batch_add_named(k->f, id, k->list->check_names[i], true);
        return 0;
}

static int full_check(Follower *f, Store *s, const Change *list) {
        int r = 0;

        for (size_t from = 0; from < list->n_check && r >= 0; from += CHECK_CHUNK) {
                CheckContext k = { .f = f, .list = list, .from = from, .n = MIN(CHECK_CHUNK, list->n_check - from) };

                r = store_ids_missing(s, list->check_ids + from, k.n, on_missing, &k);
                batch_flush(f);
        }
        f->full_asked = false;
        f->full_redo = r < 0;
        return r;
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
                                r = catch_up(f, s, f->since);
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
                                if (r >= 0 && x->check_ids)
                                        r = full_check(f, s, x);
                                else if (r >= 0 && x->requested)
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
                        r = catch_up(f, s, before);
                else if (r >= 0 && f->n_ids > 0)
                        r = read_rows(f, s, f->ids, f->n_ids, 0);
                if (r >= 0 && usec_sub(now(CLOCK_MONOTONIC), last_scan) >= f->scan) {
                        /* the safety net: anything a notification missed */
                        r = catch_up(f, s, before);
                        last_scan = now(CLOCK_MONOTONIC);
                }
                if (r >= 0 && usec_sub(now(CLOCK_MONOTONIC), f->last_prune) >= FOLLOWER_PRUNE) {
                        /* every node prunes: whichever comes first does it */
                        (void) store_deleted_prune(s, STORE_TOMBSTONE_AGE);
                        f->last_prune = now(CLOCK_MONOTONIC);
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
        if (connection_set_names(c, &(const ConnNames) {
                                            .provider = c->names->provider,
                                            .token_type = x->names->token_type,
                                            .scope = x->names->scope,
                                            .requested_scope = c->names->requested_scope,
                                    }) < 0)
                log_oom();   /* the old token type and scope are kept */
        if (connection_set_metadata(c, x->rare ? TAKE_PTR(x->rare->metadata) : NULL) < 0 ||
            connection_set_last_error(c, x->rare ? TAKE_PTR(x->rare->last_error) : NULL) < 0)
                log_oom();
        c->expires_at = x->expires_at;
        c->expires_deadline = c->expires_at ? deadline_from_realtime(c->expires_at) : 0;
        c->obtained_at = x->obtained_at;
        c->last_refresh_at = x->last_refresh_at;
        c->refreshes = x->refreshes;
        c->rt_end = x->rt_end;
        if (connection_set_rt_warned(c, connection_rt_warned(x)) < 0)
                log_oom();
        (void) connection_set_retry_at(c, 0);
        connection_refresh_trim(c);
        c->failures = 0;
        if (c->state != x->state)
                manager_set_state(m, c, x->state);
        manager_expiry_update(m, c);
}

/* The fields beyond the tokens: the row's. A pending authorization
 * started on another node replaces one started here (the later one is
 * in the database; the callback for either lands on its own node). */
static void take_others(Manager *m, Connection *c, Connection *x) {
        if (!connection_busy(c) && !streq_ptr(connection_state_hash(c), connection_state_hash(x))) {
                manager_pending_unlink(m, c);
                connection_clear_pending_auth(c);
                if (connection_set_state_hash(c, x->pending ? TAKE_PTR(x->pending->state_hash) : NULL) < 0 ||
                    connection_set_code_verifier(c, x->pending ? TAKE_PTR(x->pending->code_verifier) : NULL) < 0 ||
                    connection_set_pending_until(c, connection_pending_until(x)) < 0 ||
                    manager_pending_link(m, c) < 0)
                        log_oom();
        }
        if (connection_set_requested_scope(c, x->names->requested_scope) < 0)
                log_oom();   /* the old one is kept */
        if (!streq_ptr(connection_identity(c), connection_identity(x))) {
                char *id = connection_identity(x) ? strdup(connection_identity(x)) : NULL;

                if ((connection_identity(x) && !id) || connection_set_identity(c, id) < 0)
                        log_oom();   /* the old one is kept */
        }
        if (connection_set_params(c, x->rare ? TAKE_PTR(x->rare->params) : NULL) < 0 ||
            connection_set_username(c, x->pending ? TAKE_PTR(x->pending->username) : NULL) < 0)
                log_oom();
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

/* Queues "refresh ID NAME" for the thread to NOTIFY the lease holder. */
static int asked_send(Follower *f, int64_t id, const char *name) {
        Change *x = change_named(id, name, false);

        if (!x)
                return -ENOMEM;
        pthread_mutex_lock(&f->lock);
        x->next = f->out;
        f->out = x;
        pthread_mutex_unlock(&f->lock);
        (void) eventfd_write(f->wake_efd, 1);
        return 0;
}

static int asked_add(Follower *f, const Connection *c, usec_t asked_at, usec_t deadline) {
        Asked *a;
        char *name;

        a = reallocarray(f->asked, f->n_asked + 1, sizeof *a);
        if (!a)
                return -ENOMEM;
        f->asked = a;
        name = strdup(c->name);
        if (!name)
                return -ENOMEM;
        a[f->n_asked++] = (Asked) {
                .name = name,
                .id = c->id,
                .asked_at = asked_at,
                .next = usec_add(now(DEADLINE_CLOCK), CLUSTER_HEARTBEAT),
                .deadline = deadline,
        };
        return 0;
}

/* A heartbeat after an ask, and every heartbeat on: the holder asked may
 * have died. Once its lease lapsed and a heartbeat took it over, either
 * this node holds it (it refreshes here, under that lease: the fencing is
 * the lease's, as for any refresh) or another node does (asked again; a
 * holder busy with the connection joins its refresh in flight). Returns 1
 * when entry i is gone from the list. */
static int asked_look(Follower *f, size_t i, usec_t t) {
        Manager *m = f->manager;
        Asked a = f->asked[i];
        Connection *c = manager_get(m, a.name);
        int64_t epoch;
        usec_t until;
        int r;

        if (c && c->id == a.id && cluster_lease(m->cluster, c->id, &epoch, &until) <= 0) {
                if (t >= usec_add(a.asked_at, FOLLOWER_RESEND_AFTER)) {
                        log_debug("%s: refresh asked again of the node holding its lease.", a.name);
                        (void) asked_send(f, c->id, a.name);
                }
                f->asked[i].next = usec_add(t, CLUSTER_HEARTBEAT);
                return 0;
        }
        /* out of the list before the refresh: waking waiters may change it */
        f->asked[i] = f->asked[--f->n_asked];
        if (c && c->id == a.id) {
                r = refresher_refresh(m, c, NULL);
                if (r == -EREMOTE) {
                        /* too little of the lease left: the next heartbeat renews it */
                        if (asked_add(f, c, a.asked_at, a.deadline) < 0)
                                refresher_wake(c, -ENOMEM);
                } else {
                        log_info("%s: its lease came to this node: refreshing here what was asked of its holder.",
                                 a.name);
                        if (r < 0)
                                refresher_wake(c, r);
                        else
                                manager_wheel_rearm(m);
                }
        }
        free(a.name);
        return 1;
}

static int on_asked_timer(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        Follower *f = userdata;
        usec_t t = now(DEADLINE_CLOCK);

        for (size_t i = 0; i < f->n_asked; i++) {
                Connection *c;
                char *name;

                if (f->asked[i].deadline > t) {
                        if (f->asked[i].next <= t && asked_look(f, i, t) > 0)
                                i--;
                        continue;
                }
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
                first = MIN(first, MIN(f->asked[i].deadline, f->asked[i].next));
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
        bool known = false;
        int r;

        /* the part for w first: a request that cannot wait is not asked */
        if (w && !connection_refresh(c))
                return -ENOMEM;
        for (size_t i = 0; i < f->n_asked; i++)
                known = known || streq(f->asked[i].name, c->name);
        if (!known) {
                usec_t t = now(DEADLINE_CLOCK);

                r = asked_add(f, c, t, usec_add(t, FOLLOWER_REQUEST_WAIT));
                if (r >= 0)
                        r = asked_send(f, c->id, c->name);
                if (r < 0) {
                        if (f->n_asked > 0 && streq(f->asked[f->n_asked - 1].name, c->name))
                                free(f->asked[--f->n_asked].name);
                        connection_refresh_trim(c);
                        return r;
                }
                asked_arm(f);
                log_debug("%s: refresh asked of the node holding its lease.", c->name);
        }
        return refresher_add_waiter(c, w);   /* cannot fail: it has its part */
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

static void apply_row(Follower *f, const StoreRow *row, uint64_t read) {
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
        if (manager_deleting(m, x->id, read)) {
                /* Deleted here, the delete still in the writer (held up
                 * behind a slow commit), or done after this row's read
                 * began: the row was read before it went. Taking it would
                 * bring the connection back (or, made again here under
                 * the same name, put the old one in the new one's place). */
                log_debug("%s: being deleted on this node; the row read back is not taken.", x->name);
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
                if (connection_waiters(c) && fresh)
                        asked_done(f, c, 0);   /* a refresh asked of the holder: here it is */
        }
        f->applied++;
}

static void apply_delete(Follower *f, int64_t id, const char *name) {
        Manager *m = f->manager;
        Connection *c = manager_get(m, name);

        if (!c || (id > 0 && c->id != id))
                return;   /* gone already, or made again under the same name */
        log_debug("%s: deleted on another node.", name);
        manager_forget(m, c);
        f->applied++;
}

/* A full comparison (tombstones this node needed were pruned): once
 * every insert queued before now is committed (a barrier), the ids and
 * names of everything held go to the thread, which sends back as deletes
 * those no row has any more. A connection made after the barrier is not
 * in the list, so nothing new is taken for deleted. */
static void on_full_barrier(int result, const char *error _unused_, void *userdata) {
        Manager *m = userdata;
        Follower *f = m->follower;   /* NULL: stopped meanwhile (the barrier completes at the writer's flush) */
        size_t n, i = 0;
        Change *x;
        OrdIter it;

        if (!f || !m->connections)
                return;
        n = hashmap_size(m->connections);
        if (result < 0 || !(x = new0(Change, 1)))
                goto fail;
        x->check_ids = new(int64_t, MAX(n, (size_t) 1));
        x->check_names = new0(char *, MAX(n, (size_t) 1));
        if (!x->check_ids || !x->check_names) {
                change_free(x);
                goto fail;
        }
        ordmap_seek(&m->ordered, &it, NULL, false);
        for (OrdNode *o; i < n && (o = ordmap_iter_next(&it)); i++) {
                Connection *c = container_of(o, Connection, by_order);

                x->check_ids[i] = c->id;
                x->n_check = i + 1;
                if (!(x->check_names[i] = strdup(c->name))) {
                        change_free(x);
                        goto fail;
                }
        }
        log_info("Comparing %zu connections with the database: deletes older than the kept tombstones may have "
                 "been missed.", x->n_check);
        pthread_mutex_lock(&f->lock);
        x->next = f->out;
        f->out = x;
        pthread_mutex_unlock(&f->lock);
        (void) eventfd_write(f->wake_efd, 1);
        return;
fail:
        log_oom();
        /* the thread asks again at its next catch-up */
        pthread_mutex_lock(&f->lock);
        f->full_retry = true;
        pthread_mutex_unlock(&f->lock);
}

static void full_check_start(Follower *f) {
        if (!f->manager->writer || store_writer_barrier(f->manager->writer, on_full_barrier, f->manager) < 0)
                on_full_barrier(-ENOMEM, NULL, f->manager);
}

/* A bounded number a wake-up: the rest on the next turn. */
#define APPLY_MAX 1024

static int on_follower_event(sd_event_source *s _unused_, int fd, uint32_t revents _unused_, void *userdata) {
        Follower *f = userdata;
        Change *list;
        eventfd_t v;
        size_t n = 0;
        uint64_t flushed;

        (void) eventfd_read(fd, &v);
        pthread_mutex_lock(&f->lock);
        list = f->head;
        f->head = NULL;
        f->tail = &f->head;
        flushed = f->flushed;
        pthread_mutex_unlock(&f->lock);
        while (list && n < APPLY_MAX) {
                Change *x = list;

                list = x->next;
                if (x->row)
                        apply_row(f, x->row, x->read);
                else if (x->requested)
                        apply_request(f, x->id, x->requested);
                else if (x->full)
                        full_check_start(f);
                else
                        apply_delete(f, x->id, x->deleted);
                change_free(x);
                n++;
        }
        if (!list)
                /* every row of a read up to flushed is applied: deletes
                 * done before need not be remembered */
                manager_deleted_prune(f->manager, flushed);
        else {
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
        {
                const char *d = getenv("TOKENBROKER_TEST_FOLLOWER_DELAY_MS");

                if (d && atoi(d) > 0) {
                        f->test_delay = MIN((usec_t) atoi(d), (usec_t) 30000) * USEC_PER_MSEC;
                        log_warning("TOKENBROKER_TEST_FOLLOWER_DELAY_MS is set: other nodes' changes reach this node "
                                    "%u ms late (a test hook).", (unsigned) (f->test_delay / USEC_PER_MSEC));
                }
        }
        f->scan = FOLLOWER_SCAN;
        {
                const char *d = getenv("TOKENBROKER_TEST_FOLLOWER_SCAN_MS");

                if (d && atoi(d) > 0) {
                        f->scan = MIN((usec_t) atoi(d) * USEC_PER_MSEC, FOLLOWER_SCAN);
                        log_warning("TOKENBROKER_TEST_FOLLOWER_SCAN_MS is set: the safety-net scan runs every %u ms "
                                    "(a test hook).", (unsigned) (f->scan / USEC_PER_MSEC));
                }
        }
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

void follower_apply(Follower *f, const StoreRow *row) {
        apply_row(f, row, 0);   /* when it was read is not known: as the oldest */
}

uint64_t follower_reads(Follower *f) {
        return f ? __atomic_load_n(&f->reads, __ATOMIC_SEQ_CST) : 0;
}
