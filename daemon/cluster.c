/* SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>

#include "common/api.h"
#include "common/util.h"
#include "daemon/cluster.h"
#include "daemon/pg.h"

struct Cluster {
        char *uri;
        char *password;
        char name[CLUSTER_NAME_MAX + 1];
        usec_t started_at;

        pthread_t thread;
        bool started;
        pthread_mutex_t lock;
        pthread_cond_t wake;
        bool stopping;                /* under lock */
        ClusterView view;             /* under lock */
        int64_t *lease_ids, *lease_epochs;   /* under lock: sorted by id */
        size_t n_leases;
        usec_t lease_until;           /* under lock: DEADLINE_CLOCK */

        int efd;                      /* the thread -> the loop: reachability changed */
        sd_event_source *source;
        bool announced_reachable;     /* the loop's: what on_change last said */
        bool announced;
        cluster_change_fn on_change;
        void *userdata;
};

/* The database's clock, in microseconds since the epoch. */
#define DB_NOW "(extract(epoch from clock_timestamp()) * 1000000)::bigint"

static int heartbeat(Cluster *c, PgDb *db, ClusterView *v) {
        PGresult *res = NULL;
        PgParams p = { 0 };
        int r;

        pg_param_text(&p, c->name);
        pg_param_text(&p, TOKENBROKER_VERSION);
        pg_param_int64(&p, (int64_t) c->started_at);
        r = pg_db_query(db,
                        "INSERT INTO nodes (name, version, started_at, heartbeat_at) VALUES ($1, $2, $3, " DB_NOW ") "
                        "ON CONFLICT (name) DO UPDATE SET version = $2, started_at = $3, heartbeat_at = " DB_NOW,
                        &p, NULL);
        if (r < 0)
                return r;
        r = pg_db_query(db, "SELECT name, version, started_at, heartbeat_at, " DB_NOW " FROM nodes ORDER BY name",
                        NULL, &res);
        if (r < 0)
                return r;
        v->n = 0;
        for (int i = 0; i < r && v->n < CLUSTER_NODES_MAX; i++) {
                ClusterNode *n = &v->nodes[v->n++];
                usec_t at = (usec_t) pg_get_int64(res, i, 3), db_now = (usec_t) pg_get_int64(res, i, 4);

                *n = (ClusterNode) {
                        .started_at = (usec_t) pg_get_int64(res, i, 2),
                        .heartbeat_at = at,
                        .age = usec_sub(db_now, at),
                };
                snprintf(n->name, sizeof n->name, "%.*s", MIN(PQgetlength(res, i, 0), CLUSTER_NAME_MAX),
                         PQgetvalue(res, i, 0));
                snprintf(n->version, sizeof n->version, "%.*s", MIN(PQgetlength(res, i, 1), 31),
                         PQgetvalue(res, i, 1));
                n->self = streq(n->name, c->name);
                n->alive = n->age < CLUSTER_NODE_TIMEOUT;
        }
        PQclear(res);
        return 0;
}

typedef struct Lease {
        int64_t id, epoch;
} Lease;

static int lease_cmp(const void *a, const void *b) {
        const Lease *x = a, *y = b;

        return x->id < y->id ? -1 : x->id > y->id;
}

static int leases_append(PGresult *res, int n, Lease **l, size_t *n_l) {
        Lease *p;

        if (n <= 0)
                return 0;
        p = reallocarray(*l, *n_l + (size_t) n, sizeof(Lease));
        if (!p)
                return -ENOMEM;
        *l = p;
        for (int i = 0; i < n; i++)
                p[(*n_l)++] = (Lease) { pg_get_int64(res, i, 0), pg_get_int64(res, i, 1) };
        return 0;
}

int cluster_leases_renew(PgDb *db, const char *node, size_t live, int64_t **ret_ids, int64_t **ret_epochs,
                         size_t *ret_n, size_t *ret_connections) {
        _cleanup_free_ Lease *l = NULL;
        _cleanup_free_ int64_t *ids = NULL, *epochs = NULL;
        PGresult *res = NULL;
        PgParams p = { 0 };
        int64_t db_now, total, fair;
        size_t n = 0;
        int r;

        r = pg_db_query(db, "SELECT " DB_NOW ", count(*) FROM connections", NULL, &res);
        if (r < 0)
                return r;
        db_now = pg_get_int64(res, 0, 0);
        total = pg_get_int64(res, 0, 1);
        PQclear(res);
        live = MAX(live, (size_t) 1);
        fair = (total + (int64_t) live - 1) / (int64_t) live;

        /* Renew ours, up to the share: the rest lapse for the others. */
        pg_param_text(&p, node);
        pg_param_int64(&p, fair);
        pg_param_int64(&p, db_now + (int64_t) CLUSTER_LEASE_TIME);
        r = pg_db_query(db,
                        "UPDATE connections SET lease_until = $3 WHERE id IN (SELECT id FROM connections "
                        "WHERE lease_node = $1 ORDER BY id LIMIT $2) RETURNING id, lease_epoch",
                        &p, &res);
        if (r < 0)
                return r;
        r = leases_append(res, r, &l, &n);
        PQclear(res);
        if (r < 0)
                return r;

        /* Take free and lapsed ones up to the share: a takeover is a new
         * epoch. Rows another node is taking right now are skipped. */
        if ((int64_t) n < fair) {
                p = (PgParams) { 0 };
                pg_param_text(&p, node);
                pg_param_int64(&p, fair - (int64_t) n);
                pg_param_int64(&p, db_now + (int64_t) CLUSTER_LEASE_TIME);
                pg_param_int64(&p, db_now);
                r = pg_db_query(db,
                                "UPDATE connections SET lease_node = $1, lease_until = $3, "
                                "lease_epoch = lease_epoch + 1 WHERE id IN (SELECT id FROM connections "
                                "WHERE lease_node IS NULL OR lease_until < $4 ORDER BY id LIMIT $2 "
                                "FOR UPDATE SKIP LOCKED) AND (lease_node IS NULL OR lease_until < $4) "
                                "RETURNING id, lease_epoch",
                                &p, &res);
                if (r < 0)
                        return r;
                r = leases_append(res, r, &l, &n);
                PQclear(res);
                if (r < 0)
                        return r;
        }

        if (n > 0)
                qsort(l, n, sizeof *l, lease_cmp);
        ids = new(int64_t, MAX(n, (size_t) 1));
        epochs = new(int64_t, MAX(n, (size_t) 1));
        if (!ids || !epochs)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                ids[i] = l[i].id;
                epochs[i] = l[i].epoch;
        }
        *ret_ids = TAKE_PTR(ids);
        *ret_epochs = TAKE_PTR(epochs);
        *ret_n = n;
        *ret_connections = (size_t) total;
        return 0;
}

int cluster_lease(Cluster *c, int64_t id, int64_t *ret_epoch, usec_t *ret_until) {
        size_t lo = 0, hi;
        int found = 0;

        pthread_mutex_lock(&c->lock);
        hi = c->n_leases;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (c->lease_ids[mid] < id)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (lo < c->n_leases && c->lease_ids[lo] == id && c->lease_until > now(CLOCK_BOOTTIME)) {
                *ret_epoch = c->lease_epochs[lo];
                *ret_until = c->lease_until;
                found = 1;
        }
        pthread_mutex_unlock(&c->lock);
        return found;
}

/* The thread's leases after a heartbeat, swapped in for the loop. */
static void publish_leases(Cluster *c, int64_t *ids, int64_t *epochs, size_t n, usec_t until) {
        int64_t *old_ids, *old_epochs;

        pthread_mutex_lock(&c->lock);
        old_ids = c->lease_ids;
        old_epochs = c->lease_epochs;
        c->lease_ids = ids;
        c->lease_epochs = epochs;
        c->n_leases = n;
        c->lease_until = until;
        pthread_mutex_unlock(&c->lock);
        free(old_ids);
        free(old_epochs);
}

static void publish(Cluster *c, const ClusterView *v) {
        bool changed;

        pthread_mutex_lock(&c->lock);
        changed = c->view.reachable != v->reachable || c->view.last_ok == 0;
        c->view = *v;
        pthread_mutex_unlock(&c->lock);
        if (changed)
                (void) eventfd_write(c->efd, 1);
}

/* How many live leases each node holds (for status). */
static int count_holds(PgDb *db, ClusterView *v) {
        PGresult *res = NULL;
        int r;

        r = pg_db_query(db, "SELECT lease_node, count(*) FROM connections WHERE lease_node IS NOT NULL AND "
                            "lease_until > " DB_NOW " GROUP BY lease_node", NULL, &res);
        if (r < 0)
                return r;
        for (size_t i = 0; i < v->n; i++)
                v->nodes[i].holds = 0;
        for (int k = 0; k < r; k++)
                for (size_t i = 0; i < v->n; i++)
                        if ((size_t) PQgetlength(res, k, 0) == strlen(v->nodes[i].name) &&
                            memcmp(PQgetvalue(res, k, 0), v->nodes[i].name, strlen(v->nodes[i].name)) == 0)
                                v->nodes[i].holds = (size_t) pg_get_int64(res, k, 1);
        PQclear(res);
        return 0;
}

static void *cluster_thread(void *userdata) {
        Cluster *c = userdata;
        _cleanup_(pg_db_closep) PgDb *db = NULL;
        ClusterView v = {};

        for (;;) {
                struct timespec until;
                char error[512];
                int r = 0;

                if (!db) {
                        r = pg_db_connect(c->uri, c->password, &db, error, sizeof error);
                        if (r < 0)
                                snprintf(v.error, sizeof v.error, "%.255s", error);
                }
                if (r >= 0) {
                        usec_t t0 = now(CLOCK_BOOTTIME);   /* before the database's clock is read */

                        r = heartbeat(c, db, &v);
                        if (r >= 0) {
                                int64_t *ids = NULL, *epochs = NULL;
                                size_t n = 0, live = 0;

                                for (size_t i = 0; i < v.n; i++)
                                        live += v.nodes[i].alive;
                                r = cluster_leases_renew(db, c->name, live, &ids, &epochs, &n, &v.connections);
                                if (r >= 0) {
                                        v.leases = n;
                                        v.live = live;
                                        publish_leases(c, ids, epochs, n, usec_add(t0, CLUSTER_LEASE_TIME));
                                        r = count_holds(db, &v);
                                }
                        }
                        if (r < 0) {
                                snprintf(v.error, sizeof v.error, "%s", pg_db_error(db));
                                if (pg_db_broken(db))
                                        db = pg_db_close(db);
                        }
                }
                if (r >= 0) {
                        v.reachable = true;
                        v.failures = 0;
                        v.last_ok = now(CLOCK_REALTIME);
                        v.error[0] = 0;
                } else {
                        v.reachable = false;
                        v.failures++;
                        for (size_t i = 0; i < v.n; i++)
                                v.nodes[i].alive = false;   /* unknown: none counted alive */
                }
                publish(c, &v);

                /* the next heartbeat, or a stop */
                (void) clock_gettime(CLOCK_REALTIME, &until);
                until.tv_sec += CLUSTER_HEARTBEAT / USEC_PER_SEC;
                pthread_mutex_lock(&c->lock);
                while (!c->stopping && pthread_cond_timedwait(&c->wake, &c->lock, &until) == 0)
                        ;
                if (c->stopping) {
                        pthread_mutex_unlock(&c->lock);
                        break;
                }
                pthread_mutex_unlock(&c->lock);
        }
        return NULL;
}

void cluster_view(Cluster *c, ClusterView *ret) {
        pthread_mutex_lock(&c->lock);
        *ret = c->view;
        pthread_mutex_unlock(&c->lock);
}

bool cluster_reachable(Cluster *c) {
        bool r;

        pthread_mutex_lock(&c->lock);
        r = c->view.reachable || c->view.last_ok == 0;
        pthread_mutex_unlock(&c->lock);
        return r;
}

static int on_cluster_event(sd_event_source *s _unused_, int fd, uint32_t revents _unused_, void *userdata) {
        Cluster *c = userdata;
        eventfd_t x;
        bool reachable;
        char error[256];

        (void) eventfd_read(fd, &x);
        pthread_mutex_lock(&c->lock);
        reachable = c->view.reachable;
        snprintf(error, sizeof error, "%s", c->view.error);
        pthread_mutex_unlock(&c->lock);
        if (c->announced && reachable == c->announced_reachable)
                return 0;
        c->announced = true;
        c->announced_reachable = reachable;
        if (c->on_change)
                c->on_change(reachable, error, c->userdata);
        return 0;
}

int cluster_new(const char *uri, const char *password, const char *node_name, usec_t started_at, sd_event *event,
                cluster_change_fn on_change, void *userdata, Cluster **ret) {
        _cleanup_(cluster_freep) Cluster *c = NULL;
        sigset_t all, old;
        int r;

        c = new0(Cluster, 1);
        if (!c)
                return -ENOMEM;
        c->efd = -EBADF;
        pthread_mutex_init(&c->lock, NULL);
        pthread_cond_init(&c->wake, NULL);
        c->uri = strdup(uri);
        if (!c->uri || (password && !(c->password = strdup(password))))
                return -ENOMEM;
        snprintf(c->name, sizeof c->name, "%s", node_name);
        c->started_at = started_at;
        c->on_change = on_change;
        c->userdata = userdata;
        c->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (c->efd < 0)
                return -errno;
        if (event) {
                r = sd_event_add_io(event, &c->source, c->efd, EPOLLIN, on_cluster_event, c);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_description(c->source, "cluster");
        }
        /* Signals go to the loop's signalfd: none may land on this thread. */
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        r = -pthread_create(&c->thread, NULL, cluster_thread, c);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0)
                return r;
        c->started = true;
        *ret = TAKE_PTR(c);
        return 0;
}

Cluster *cluster_free(Cluster *c) {
        if (!c)
                return NULL;
        if (c->started) {
                pthread_mutex_lock(&c->lock);
                c->stopping = true;
                pthread_cond_signal(&c->wake);
                pthread_mutex_unlock(&c->lock);
                (void) pthread_join(c->thread, NULL);
        }
        sd_event_source_disable_unref(c->source);
        safe_close(c->efd);
        free(c->uri);
        free(c->lease_ids);
        free(c->lease_epochs);
        secret_free(c->password);
        pthread_cond_destroy(&c->wake);
        pthread_mutex_destroy(&c->lock);
        free(c);
        return NULL;
}
