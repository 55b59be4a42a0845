/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-event.h>

#include "common/conf.h"
#include "common/hashmap.h"
#include "daemon/cluster.h"
#include "daemon/connection.h"
#include "daemon/follower.h"
#include "daemon/http.h"
#include "daemon/rtend.h"
#include "daemon/store.h"
#include "daemon/timerwheel.h"
#include "daemon/trace.h"

typedef struct Api Api;
typedef struct Callback Callback;
typedef struct Links Links;

/* Prometheus histogram bounds for provider request latency, seconds. */
#define LATENCY_BOUNDS { 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 }
#define N_LATENCY_BOUNDS 10

/* Per-provider counters, kept up to date as things happen so that
 * /metrics never walks the connections. */
typedef struct ProviderStats {
        char *name;
        uint64_t n_state[_CONN_STATE_MAX];
        uint64_t refresh_ok, refresh_transient, refresh_permanent;
        uint64_t latency_buckets[N_LATENCY_BOUNDS + 1];
        double latency_sum;
        uint64_t latency_count;
        unsigned in_flight;
        /* refreshes waiting for a slot, FIFO, doubly linked */
        Connection *queue_head, *queue_tail;
} ProviderStats;

/* Deadlines are kept at this granularity: refreshes are planned minutes
 * ahead, so a tenth of a second is plenty and keeps the wheel shallow. */
#define WHEEL_TICK (100 * USEC_PER_MSEC)

/* One Manager holds the loop and everything hanging off it. */
struct Manager {
        sd_event *event;
        BrokerConfig *config;
        char *config_path;
        Store *store;              /* the loop's handle: reads, row images */
        StoreWriter *writer;       /* every write: group commit off the loop */
        unsigned committing;       /* staged token sets whose commit is not done */
        Staged *recommit;          /* staged sets whose commit failed after a rotation: again (refresher.c) */
        sd_event_source *recommit_timer;
        Http *http;
        TraceStore *trace;         /* `tokenctl trace`; NULL until the first exchange */
        sd_event_source *trace_sweep;   /* redacts recorded exchanges when the loop is idle */

        TimerWheel *wheel;
        sd_event_source *wheel_timer;
        usec_t wheel_armed;

        Hashmap *connections;      /* by name */
        Ordmap ordered;            /* the same, in byte order of name: paged listing */
        Hashmap *pending;          /* by state hash */
        Hashmap *deleting;         /* this node's deletes not done yet, or done but maybe read back, by connection id (decimal) */
        struct Deleting *deleted_head, **deleted_tail;   /* the done ones, oldest first */
        size_t n_deleted;
        unsigned n_state[_CONN_STATE_MAX];

        unsigned refreshing;
        size_t queue_cursor;       /* round robin over providers' queues */
        unsigned notify_running;

        Api *api;
        Callback *callback;
        Links *links;              /* re-authorization links (daemon/links.c) */
        Follower *follower;        /* PostgreSQL: other nodes' changes (daemon/follower.h); NULL on SQLite */
        Cluster *cluster;          /* PostgreSQL: the nodes' heartbeats (daemon/cluster.h); NULL on SQLite */
        int api_fd, callback_fd;   /* passed by systemd, or -EBADF */
        bool api_passed, callback_passed;

        /* flock(2) on state_dir/lock: one daemon per store. */
        int lock_fd;
        /* The API socket we bound (not one passed by systemd): removed at
         * exit if the path still names it. */
        char *api_bound_path;
        dev_t api_bound_dev;
        ino_t api_bound_ino;

        /* Timers the kernel refused to arm (EINVAL from sd_event_run):
         * from the first one on, the loop also wakes every WHEEL_TICK. */
        unsigned timer_errors;

        sd_event_source *sigterm, *sigint, *sighup;

        /* min-heap of connections by access token expiry (for metrics) */
        Connection **expiry;
        size_t n_expiry, expiry_cap;
        RtEnds rt;                 /* refresh-token ends (daemon/rtend.c) */

        ProviderStats *stats;
        size_t n_stats;

        sd_event_source *status_timer;
        sd_event_source *stop_timer;
        bool stopping;

        usec_t started_at;
        uint64_t tokens_served;
        uint64_t refresh_ok, refresh_failed;
        bool check_only;
        /* The start's load runs (daemon/loader.c): its linking thread
         * fills the maps, heaps and counters, so nothing may touch
         * sd-event from them (status and timers are armed after). */
        bool loading;
};

int manager_new(BrokerConfig *config, const char *config_path, Manager **ret);
Manager *manager_free(Manager *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(Manager *, manager_free);

int manager_startup(Manager *m);
int manager_run(Manager *m);

Connection *manager_get(Manager *m, const char *name);
/* Asks for the cache lines of the connection name (len bytes) most
 * likely is, without waiting: manager_get() of it soon after finds them. */
void manager_prefetch(Manager *m, const char *name, size_t len);
ProviderStats *manager_stats(Manager *m, const char *provider);
/* Keeps the expiry heap in step with c->expires_at / c->access_token. */
void manager_expiry_update(Manager *m, Connection *c);
usec_t manager_earliest_expiry(Manager *m);
/* Marks the sd_notify STATUS= line stale; sent at most once a second. */
void manager_status_changed(Manager *m);
int manager_reload(Manager *m);
/* tokenbrokerd --rotate-key: with the daemon stopped (the store's lock is
 * taken, or refused), re-seals the store under the key in new_key_file in
 * one transaction. The caller then swaps the key files. */
int manager_rotate_key(Manager *m, const char *new_key_file, void (*before_commit)(void));
/* tokenbrokerd --copy-store FROM TO: every connection, event and sealed
 * value from one store (a SQLite file or a postgresql:// URI) into an
 * empty other, under the configured key and store password; the daemon
 * must not run. */
int manager_copy_store(Manager *m, const char *from, const char *to);
/* Runs notify_command for a connection event ("needs-reauth",
 * "recovered"), rate limited per connection; never with a secret. */
void manager_notify(Manager *m, Connection *c, const char *event);
/* Called when a provider request finishes; may end a graceful stop. */
void manager_maybe_exit(Manager *m);
const Provider *manager_provider(Manager *m, const Connection *c);

/* Bookkeeping when a connection changes state; keeps counters right. */
void manager_set_state(Manager *m, Connection *c, ConnState s);
void manager_event(Manager *m, const Connection *c, const char *kind, const char *fmt, ...)
        _printf_(4, 5);
/* The same for a connection known by name only (it may not exist, or no
 * longer); NULL for a broker-wide event. */
void manager_event_named(Manager *m, const char *name, const char *kind, const char *fmt, ...)
        _printf_(4, 5);

/* Starts an authorization: a new pending connection, or a re-authorization
 * in place of an existing one. Returns the URL to open (NULL for grants
 * without a browser). On failure *ret_error says why (for the client). */
typedef struct AuthorizeRequest {
        const char *name;
        const char *provider;
        const char *scope;
        uid_t *allow_users;
        unsigned n_allow_users;
        gid_t *allow_groups;
        unsigned n_allow_groups;
        bool device;               /* RFC 8628 even if the provider's grant is the code flow */
        const char *username;      /* password grant */
        const char *password;      /* secret; NULL: the provider's password_file */
        const char *refresh_token; /* secret: adopt one obtained elsewhere (import) */
        json_t *params;            /* the connection's parameters, checked (params_resolve()); NULL: none */
} AuthorizeRequest;
int manager_authorize(Manager *m, const AuthorizeRequest *req, Connection **ret_conn, char **ret_url,
                      const char **ret_error);
/* Several nodes: queues a new connection's insert; a Waiter.on_insert of
 * c's learns how it went, and a failed insert (the name taken on another
 * node meanwhile: -EEXIST) takes c out of memory. row is consumed. */
typedef struct StoreRow StoreRow;
int manager_insert_clustered(Manager *m, Connection *c, StoreRow *row);
/* Whether an authorization request runs the device flow. */
bool manager_wants_device(const Provider *p, const AuthorizeRequest *req);

/* The index of pending authorizations by state hash; idempotent. */
int manager_pending_link(Manager *m, Connection *c);
void manager_pending_unlink(Manager *m, Connection *c);
/* The connection whose pending authorization has this state hash, or NULL. */
Connection *manager_get_pending(Manager *m, const char *state_hash);

/* Removes a connection from memory at once and queues its deletion from
 * the store. */
int manager_remove(Manager *m, Connection *c);
/* The same; fn runs on the loop once the deletion is durable (0) or
 * failed (-errno), for a caller that must not answer before (a revoke). */
int manager_remove_then(Manager *m, Connection *c, store_done_fn fn, void *userdata);
/* Whether a row of connection id that the follower's read number read
 * (follower_reads(); 0: not known) must not be taken: this node's delete
 * of it is queued and not done yet (the row may still be in the store),
 * or was committed after that read began (the row is older than the
 * delete). */
bool manager_deleting(Manager *m, int64_t id, uint64_t read);
/* Every row of a read up to flushed is applied: committed deletes
 * remembered from before are forgotten. */
void manager_deleted_prune(Manager *m, uint64_t flushed);

/* Queues a write of the connection's row as it stands (with any staged
 * tokens: see refresher_image()); durable some milliseconds later, in
 * order with every other write. Fails only for memory. */
int manager_save(Manager *m, Connection *c);
/* Several nodes (daemon/follower.c): a connection another node made
 * joins memory (takes c; on failure the caller still owns it), and one
 * another node deleted leaves it (nothing is written). */
int manager_adopt(Manager *m, Connection *c);
void manager_forget(Manager *m, Connection *c);

/* refresher.c */
typedef struct Waiter Waiter;
typedef void (*waiter_fn)(Connection *c, int result, void *userdata);
struct Waiter {
        Waiter *next;
        waiter_fn fn;
        void *userdata;
        bool on_insert;            /* several nodes: woken by the new connection's insert (0, or why it
                                    * failed: -EEXIST the name was taken on another node meanwhile), or
                                    * -ECANCELED when the connection goes; never by a refresh */
};
void refresher_schedule(Manager *m, Connection *c);
/* Starts a refresh unless one is running (single-flight). If w is given it
 * is called when that refresh ends, with 0 or a negative errno. */
int refresher_refresh(Manager *m, Connection *c, Waiter *w);
void refresher_cancel(Manager *m, Connection *c);
/* Drops the answers still waiting to be committed again (at the stop). */
void refresher_drop_recommits(Manager *m);
/* The row to write for c: c itself, or c with the tokens it has staged,
 * so a write queued behind a staged commit never takes it back. A shallow
 * copy with its own ConnPending and ConnRare (the image's fields differ
 * without touching c's): valid while c and its staged set are unchanged,
 * on the loop, for store_row_new(). */
void refresher_image(const Connection *c, ConnImage *ret);
void refresher_on_timer(Manager *m, Connection *c);
void refresher_detach_waiter(Connection *c, Waiter *w);
/* Waits for whatever the connection does next (exchange, refresh). */
int refresher_add_waiter(Connection *c, Waiter *w);
/* Wakes every waiter of c with result (daemon/follower.c: a refresh asked
 * of another node arrived, or did not in time). */
void refresher_wake(Connection *c, int result);

/* Code exchange after the callback: calls fn when done. */
int refresher_exchange_code(Manager *m, Connection *c, const char *code, Waiter *w);

/* RFC 8628: asks for a device code; w is called when the answer (user
 * code, verification URI) is in, then polling runs on the timer wheel. */
int refresher_device_start(Manager *m, Connection *c, Waiter *w);

/* Revocation at the provider, then the callback. */
int refresher_revoke(Manager *m, Connection *c, Waiter *w);

void manager_wheel_rearm(Manager *m);
/* Records a finished exchange for `tokenctl trace` (raw: redacted later,
 * when the loop has nothing more pressing, or when read). */
void manager_trace_record(Manager *m, const Connection *c, const char *what, const HttpRequest *req);
usec_t manager_next_refresh(Manager *m);
