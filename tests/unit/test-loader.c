/* SPDX-License-Identifier: MIT */
/* daemon/loader.c: the start's load on two threads. The loader alone
 * (order, nothing lost or freed twice, errors on either side, a full ring,
 * faulting in the heap ahead), then a real Manager started on a store of
 * varied connections twice, with and without the linking thread: the same
 * maps, heaps, wheel and counters. An error on either side fails the start
 * cleanly (no hang, no leak: run under ASan too). */
#include <fcntl.h>
#include <ftw.h>
#include <sqlite3.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define TESTS_MAIN
#include "tests.h"

#include "common/intern.h"
#include "common/util.h"
#include "daemon/loader.h"
#include "daemon/manager.h"

/* ---- the loader alone ---------------------------------------------------- */

#define N_ITEMS 100000

typedef struct Fake {
        unsigned *order;           /* link()'s order, item numbers */
        unsigned n_linked;
        unsigned char *prefetched, *freed;
        unsigned slow_every;       /* link() sleeps 1 ms every this many (0: never) */
        unsigned fail_at;          /* link() of this item number (from 1) fails */
} Fake;

static unsigned items[N_ITEMS];
static Fake *fake_freeing;

static void fake_prefetch(void *item, void *userdata) {
        Fake *f = userdata;

        f->prefetched[*(unsigned *) item]++;
}

static int fake_link(void *item, void *side _unused_, void *userdata) {
        Fake *f = userdata;
        unsigned i = *(unsigned *) item;

        if (f->fail_at > 0 && i + 1 == f->fail_at)
                return -ENOTRECOVERABLE;
        if (f->slow_every > 0 && f->n_linked % f->slow_every == 0)
                usleep(1000);
        f->order[f->n_linked++] = i;
        return 0;
}

static void fake_free(void *item) {
        fake_freeing->freed[*(unsigned *) item]++;
}

static const LoaderOps fake_ops = { .prefetch = fake_prefetch, .link = fake_link, .free = fake_free };

static Fake *fake_new(void) {
        Fake *f = new0(Fake, 1);

        if (!f)
                abort();
        f->order = new0(unsigned, N_ITEMS);
        f->prefetched = new0(unsigned char, N_ITEMS);
        f->freed = new0(unsigned char, N_ITEMS);
        if (!f->order || !f->prefetched || !f->freed)
                abort();
        for (unsigned i = 0; i < N_ITEMS; i++)
                items[i] = i;
        fake_freeing = f;
        return f;
}

static void fake_free_all(Fake *f) {
        free(f->order);
        free(f->prefetched);
        free(f->freed);
        free(f);
}

/* Pushes n items (stopping at the first error), finishes with caller_r
 * (0: a normal end); returns loader_finish()'s result. Every item is then
 * linked once or freed once, never both; linked in order. */
static int fake_run(Fake *f, bool threaded, unsigned n, int caller_r, unsigned *ret_pushed) {
        Loader *l = NULL;
        unsigned pushed = 0;
        int r = 0;

        CHECK_EQ_INT(loader_new(&fake_ops, f, NULL, threaded, &l), 0);
        if (!l)
                return -ENOMEM;
        CHECK(loader_threaded(l) == threaded);
        while (pushed < n && r >= 0)
                r = loader_push(l, &items[pushed++]);
        r = loader_finish(l, caller_r < 0 ? caller_r : r, NULL);
        for (unsigned i = 0; i < f->n_linked; i++)
                CHECK_EQ_INT(f->order[i], i);
        for (unsigned i = 0; i < pushed; i++) {
                bool linked = i < f->n_linked;

                CHECK_EQ_INT(f->freed[i], linked ? 0 : 1);
                CHECK(f->prefetched[i] <= 1);
        }
        for (unsigned i = pushed; i < N_ITEMS; i++)
                CHECK(f->freed[i] == 0 && f->prefetched[i] == 0);
        if (ret_pushed)
                *ret_pushed = pushed;
        return r;
}

TEST(links_every_item_in_order) {
        for (int threaded = 0; threaded < 2; threaded++) {
                Fake *f = fake_new();

                /* not a multiple of the batch: the last one is partial */
                CHECK_EQ_INT(fake_run(f, threaded, N_ITEMS - 77, 0, NULL), 0);
                CHECK_EQ_INT(f->n_linked, N_ITEMS - 77);
                for (unsigned i = 0; i < N_ITEMS - 77; i++)
                        CHECK_EQ_INT(f->prefetched[i], 1);
                fake_free_all(f);
        }
}

TEST(nothing_to_load) {
        for (int threaded = 0; threaded < 2; threaded++) {
                Fake *f = fake_new();

                CHECK_EQ_INT(fake_run(f, threaded, 0, 0, NULL), 0);
                CHECK_EQ_INT(f->n_linked, 0);
                fake_free_all(f);
        }
}

TEST(a_slow_linker_fills_the_ring) {
        Fake *f = fake_new();

        /* ~20 ms of sleeps: the caller runs into a full ring and waits */
        f->slow_every = 500;
        CHECK_EQ_INT(fake_run(f, true, 10000, 0, NULL), 0);
        CHECK_EQ_INT(f->n_linked, 10000);
        fake_free_all(f);
}

TEST(a_caller_error_stops_the_load) {
        for (int threaded = 0; threaded < 2; threaded++) {
                Fake *f = fake_new();
                unsigned pushed = 0;

                f->slow_every = threaded ? 2000 : 0;
                CHECK_EQ_INT(fake_run(f, threaded, 9000, -EBADMSG, &pushed), -EBADMSG);
                CHECK_EQ_INT(pushed, 9000);
                CHECK(f->n_linked <= 9000);   /* the rest freed, checked by fake_run() */
                fake_free_all(f);
        }
}

TEST(a_link_error_ends_the_load) {
        for (int threaded = 0; threaded < 2; threaded++) {
                Fake *f = fake_new();
                unsigned pushed = 0;

                f->fail_at = 5000;
                CHECK_EQ_INT(fake_run(f, threaded, N_ITEMS, 0, &pushed), -ENOTRECOVERABLE);
                CHECK_EQ_INT(f->n_linked, 4999);
                /* the caller learnt it soon: at most the ring's worth later */
                CHECK(pushed < 5000 + 16 * 256 + 256);
                fake_free_all(f);
        }
}

TEST(a_push_error_is_not_lost) {
        for (int threaded = 0; threaded < 2; threaded++) {
                Fake *f = fake_new();
                Loader *l = NULL;
                unsigned i = 0;
                int r = 0;

                f->fail_at = 300;
                CHECK_EQ_INT(loader_new(&fake_ops, f, NULL, threaded, &l), 0);
                while (i < 20000 && r >= 0)
                        r = loader_push(l, &items[i++]);
                CHECK_EQ_INT(r, -ENOTRECOVERABLE);
                /* pushing on anyway: taken and freed, the error again */
                CHECK_EQ_INT(loader_push(l, &items[i++]), -ENOTRECOVERABLE);
                /* and a caller that ignores it still gets it at the end */
                CHECK_EQ_INT(loader_finish(l, 0, NULL), -ENOTRECOVERABLE);
                CHECK_EQ_INT(f->n_linked, 299);
                for (unsigned k = 0; k < i; k++)
                        CHECK_EQ_INT(f->freed[k], k < 299 ? 0 : 1);
                fake_free_all(f);
        }
}

TEST(a_link_error_in_the_last_batch) {
        for (int threaded = 0; threaded < 2; threaded++) {
                Fake *f = fake_new();

                f->fail_at = 1000;
                CHECK_EQ_INT(fake_run(f, threaded, 1001, 0, NULL), -ENOTRECOVERABLE);
                CHECK_EQ_INT(f->n_linked, 999);
                fake_free_all(f);
        }
}

TEST(the_heap_ahead_is_faulted_in) {
        size_t size = (size_t) 64 << 20, page = (size_t) sysconf(_SC_PAGESIZE);
        unsigned char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        uintptr_t start, ahead;
        unsigned char vec = 0;
        Loader *l = NULL;
        HeapRegion heap;
        Fake *f = fake_new();

        CHECK(p != MAP_FAILED);
        if (p == MAP_FAILED) {
                fake_free_all(f);
                return;
        }
        start = ((uintptr_t) p + ((uintptr_t) 2 << 20) - 1) & ~(((uintptr_t) 2 << 20) - 1);
        heap = (HeapRegion) { .start = start, .end = (uintptr_t) p + size };
        CHECK_EQ_INT(loader_new(&fake_ops, f, &heap, true, &l), 0);
        /* The items' addresses say where the caller allocates: 1 MiB in.
         * Nothing here writes the region; a page 6 MiB on is there only
         * if the linking thread faulted it in. */
        CHECK_EQ_INT(loader_push(l, (void *) (start + ((uintptr_t) 1 << 20))), 0);
        ahead = start + ((uintptr_t) 6 << 20);
        for (unsigned i = 0; i < 400; i++) {
                CHECK_EQ_INT(mincore((void *) (ahead & ~(page - 1)), page, &vec), 0);
                if (vec & 1)
                        break;
                usleep(5000);
        }
        CHECK(vec & 1);
        /* and not the end: 32 MiB ahead at most */
        CHECK_EQ_INT(mincore((void *) (heap.end - page), page, &vec), 0);
        CHECK(!(vec & 1));
        /* (the item reads as 0 if linked or freed: the region is zero) */
        CHECK_EQ_INT(loader_finish(l, -ECANCELED, NULL), -ECANCELED);
        munmap(p, size);
        fake_free_all(f);
}

/* ---- a Manager's load, with and without the linking thread ------------- */

static char dir[] = "/tmp/test-loader-XXXXXX";
static char conf_path[256];

static void write_file(const char *name, const char *text) {
        tests_write_file(dir, name, text);
}

static int start(bool threaded, Manager **ret) {
        BrokerConfig *cfg = NULL;
        ConfError err = {};
        Manager *m = NULL;
        int r;

        if (broker_config_load(conf_path, &cfg, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                abort();
        }
        if (manager_new(cfg, conf_path, &m) < 0)
                abort();
        loader_test_one_thread = !threaded;
        r = manager_startup(m);
        loader_test_one_thread = false;
        if (r < 0) {
                manager_free(m);
                return r;
        }
        *ret = m;
        return 0;
}

#define N_CONN 1500

static void setup_store(void) {
        Manager *m = NULL;
        char path[256];
        usec_t t = now(CLOCK_REALTIME);

        if (!mkdtemp(dir))
                abort();
        snprintf(path, sizeof path, "%s/providers.d", dir);
        mkdir(path, 0700);
        /* no jitter: both loads plan the same refreshes */
        write_file("tb.conf", "[broker]\nstate_dir = state\nsocket = tb.sock\ncallback_listen = 127.0.0.1:0\n"
                              "public_url = http://127.0.0.1:8421\nproviders_dir = providers.d\n"
                              "refresh_margin = 60s\nrefresh_ratio = 0.1\nrefresh_jitter = 0\n");
        write_file("providers.d/p.conf", "[provider]\nauthorize_url = https://id.example.com/authorize\n"
                                         "token_url = https://id.example.com/token\nclient_id = cid\n"
                                         "client_secret = s3cret\nscopes = openid email\n");
        write_file("providers.d/q.conf", "[provider]\nauthorize_url = https://q.example.com/authorize\n"
                                         "token_url = https://q.example.com/token\nclient_id = cid\n"
                                         "client_secret = s3cret\n");
        snprintf(conf_path, sizeof conf_path, "%s/tb.conf", dir);
        if (start(true, &m) < 0)
                abort();
        CHECK(sqlite3_exec(store_sqlite(m->store), "PRAGMA synchronous = OFF", NULL, NULL, NULL) == SQLITE_OK);
        /* Every kind the start links: active with and without a known
         * refresh-token end (warned about or not), pending with a state,
         * a device flow, needs re-authorization, two providers; names
         * put in an order that is not the ids'. */
        for (unsigned i = 0; i < N_CONN; i++) {
                char name[32], hash[65];
                Connection *c;
                unsigned k = (i * 7919u) % N_CONN;

                snprintf(name, sizeof name, "conn-%05u", k);
                c = connection_new(name);
                if (!c)
                        abort();
                if (connection_set_names(c, &(const ConnNames) { .provider = i % 5 == 0 ? "q" : "p",
                                                                 .token_type = "Bearer" }) < 0)
                        abort();
                c->created_at = c->updated_at = t - USEC_PER_HOUR;
                switch (i % 4) {
                case 0: case 1:
                        c->state = CONN_ACTIVE;
                        c->access_token = strdup("at-xxxxxxxx");
                        c->refresh_token = strdup("rt-yyyyyyyy");
                        c->obtained_at = t - USEC_PER_MINUTE;
                        /* expiries that collide too (heap ties) */
                        c->expires_at = t + (usec_t) (k % 97) * USEC_PER_MINUTE + 10 * USEC_PER_MINUTE;
                        if (i % 8 == 1) {
                                c->rt_end = t + (usec_t) (k % 13 + 1) * USEC_PER_DAY;
                                if (connection_set_rt_warned(c, i % 16 == 1 ? c->rt_end : 0) < 0)
                                        abort();
                        }
                        break;
                case 2:
                        c->state = CONN_PENDING;
                        snprintf(hash, sizeof hash, "%064u", k);
                        if (connection_set_state_hash(c, strdup(hash)) < 0)
                                abort();
                        if (connection_set_code_verifier(c, strdup("verifier")) < 0)
                                abort();
                        if (connection_set_pending_until(c, t + (usec_t) (k % 9 + 1) * USEC_PER_MINUTE) < 0)
                                abort();
                        if (i % 8 == 6 && connection_set_device(c, USEC_PER_HOUR, NULL, NULL, NULL) < 0)
                                abort();
                        break;
                default:
                        c->state = CONN_NEEDS_REAUTH;
                        if (connection_set_last_error(c, strdup("invalid_grant")) < 0)
                                abort();
                        break;
                }
                CHECK_EQ_INT(store_connection_insert(m->store, c), 0);
                connection_free(c);
        }
        manager_free(m);
}

static void teardown_store(void) {
        tests_rm_tree(dir);
        strcpy(dir, "/tmp/test-loader-XXXXXX");
}

/* What a load leaves, in a form two loads can be compared by. */
typedef struct Seen {
        char name[32];
        int64_t id;
        ConnState state;
        bool armed, pending;
        usec_t deadline;
        uint32_t expiry_idx, rt_idx[2];
} Seen;

typedef struct Snapshot {
        Seen conn[N_CONN];
        size_t n, n_hash, n_expiry, n_rt[2];
        uint64_t n_unknown;
        unsigned n_state[_CONN_STATE_MAX];
        uint64_t p_state[2][_CONN_STATE_MAX];
        char expiry[N_CONN][32], rt[2][N_CONN][32];
        usec_t next;
} Snapshot;

static void snapshot(Manager *m, Snapshot *s) {
        OrdIter it;
        OrdNode *o;

        memset(s, 0, sizeof *s);
        s->n_hash = hashmap_size(m->connections);
        ordmap_seek(&m->ordered, &it, NULL, false);
        while ((o = ordmap_iter_next(&it)) && s->n < N_CONN) {
                Connection *c = container_of(o, Connection, by_order);
                Seen *x = &s->conn[s->n++];

                snprintf(x->name, sizeof x->name, "%s", c->name);
                x->id = c->id;
                x->state = c->state;
                x->armed = timerwheel_entry_armed(&c->timer);
                x->deadline = x->armed ? c->timer.deadline : 0;
                x->pending = connection_state_hash(c) && manager_get_pending(m, connection_state_hash(c)) == c;
                x->expiry_idx = c->expiry_idx;
                x->rt_idx[0] = c->rt_idx[0];
                x->rt_idx[1] = c->rt_idx[1];
                /* the name map finds it */
                CHECK(manager_get(m, c->name) == c);
                if (c->expiry_idx != CONN_NO_IDX)
                        CHECK(c->expiry_idx < m->n_expiry && m->expiry[c->expiry_idx] == c);
        }
        s->n_expiry = m->n_expiry;
        for (size_t i = 0; i < m->n_expiry && i < N_CONN; i++) {
                snprintf(s->expiry[i], sizeof s->expiry[i], "%s", m->expiry[i]->name);
                if (i > 0)   /* a heap */
                        CHECK(m->expiry[(i - 1) / 2]->expires_at <= m->expiry[i]->expires_at);
        }
        for (int k = 0; k < 2; k++) {
                s->n_rt[k] = m->rt.n[k];
                for (size_t i = 0; i < m->rt.n[k] && i < N_CONN; i++)
                        snprintf(s->rt[k][i], sizeof s->rt[k][i], "%s", m->rt.h[k][i]->name);
        }
        s->n_unknown = m->rt.n_unknown;
        memcpy(s->n_state, m->n_state, sizeof s->n_state);
        for (int p = 0; p < 2; p++) {
                ProviderStats *ps = manager_stats(m, p == 0 ? "p" : "q");

                CHECK(ps);
                if (ps)
                        memcpy(s->p_state[p], ps->n_state, sizeof s->p_state[p]);
        }
        s->next = manager_next_refresh(m);
}

static bool close_to(usec_t a, usec_t b) {
        /* deadlines come from realtime at each load: microseconds apart */
        return (a > b ? a - b : b - a) < 50 * USEC_PER_MSEC;
}

static void check_same_load(const Snapshot *a, const Snapshot *b) {
        CHECK_EQ_INT(a->n, N_CONN);
        CHECK_EQ_INT(a->n_hash, N_CONN);
        CHECK_EQ_INT(a->n, b->n);
        CHECK_EQ_INT(a->n_hash, b->n_hash);
        for (size_t i = 0; i < a->n && i < b->n; i++) {
                const Seen *x = &a->conn[i], *y = &b->conn[i];

                CHECK_STREQ(x->name, y->name);
                CHECK_EQ_INT(x->id, y->id);
                CHECK_EQ_INT(x->state, y->state);
                CHECK_EQ_INT(x->armed, y->armed);
                CHECK(close_to(x->deadline, y->deadline));
                CHECK_EQ_INT(x->pending, y->pending);
                CHECK_EQ_INT(x->expiry_idx, y->expiry_idx);
                CHECK_EQ_INT(x->rt_idx[0], y->rt_idx[0]);
                CHECK_EQ_INT(x->rt_idx[1], y->rt_idx[1]);
        }
        CHECK_EQ_INT(a->n_expiry, b->n_expiry);
        for (size_t i = 0; i < a->n_expiry && i < b->n_expiry; i++)
                CHECK_STREQ(a->expiry[i], b->expiry[i]);
        for (int k = 0; k < 2; k++) {
                CHECK_EQ_INT(a->n_rt[k], b->n_rt[k]);
                for (size_t i = 0; i < a->n_rt[k] && i < b->n_rt[k]; i++)
                        CHECK_STREQ(a->rt[k][i], b->rt[k][i]);
        }
        CHECK_EQ_INT(a->n_unknown, b->n_unknown);
        CHECK(memcmp(a->n_state, b->n_state, sizeof a->n_state) == 0);
        CHECK(memcmp(a->p_state, b->p_state, sizeof a->p_state) == 0);
        CHECK(close_to(a->next, b->next));
}

TEST(two_threads_load_what_one_thread_loads) {
        static Snapshot one, two;
        Manager *m = NULL;

        setup_store();
        CHECK_EQ_INT(start(false, &m), 0);
        if (m) {
                snapshot(m, &one);
                manager_free(m);
                m = NULL;
        }
        CHECK_EQ_INT(start(true, &m), 0);
        if (m) {
                snapshot(m, &two);
                manager_free(m);
        }
        check_same_load(&one, &two);
        /* every kind is there */
        CHECK(one.n_state[CONN_ACTIVE] > 0 && one.n_state[CONN_PENDING] > 0 && one.n_state[CONN_NEEDS_REAUTH] > 0);
        CHECK(one.n_rt[0] > 0 && one.n_rt[1] > 0 && one.n_rt[1] < one.n_rt[0] && one.n_unknown > 0);
        teardown_store();
}

TEST(a_link_error_fails_the_start_cleanly) {
        Manager *m = NULL;

        setup_store();
        for (int threaded = 0; threaded < 2; threaded++) {
                /* the first, one in the middle, the last */
                const unsigned at[] = { 1, 700, N_CONN };

                for (size_t i = 0; i < ELEMENTSOF(at); i++) {
                        loader_test_fail_at = at[i];
                        CHECK_EQ_INT(start(threaded, &m), -EIO);
                        loader_test_fail_at = 0;
                }
        }
        /* and the store is still fine */
        CHECK_EQ_INT(start(true, &m), 0);
        if (m) {
                CHECK_EQ_INT(hashmap_size(m->connections), N_CONN);
                manager_free(m);
        }
        teardown_store();
}

TEST(a_bad_row_fails_the_start_cleanly) {
        Manager *m = NULL;
        char db[300];
        sqlite3 *h = NULL;

        setup_store();
        snprintf(db, sizeof db, "%s/state/tokenbroker.db", dir);
        CHECK(sqlite3_open(db, &h) == SQLITE_OK);
        /* a sealed token that does not open, half-way through */
        CHECK(sqlite3_exec(h, "UPDATE connections SET access_token = x'00112233445566778899aabbccddeeff0011223344' "
                              "WHERE id = 800", NULL, NULL, NULL) == SQLITE_OK);
        CHECK_EQ_INT(sqlite3_changes(h), 1);
        sqlite3_close(h);
        for (int threaded = 0; threaded < 2; threaded++)
                CHECK_EQ_INT(start(threaded, &m), -EBADMSG);
        teardown_store();
}

/* Runs start() with stderr (the log) into a file; what it wrote, in buf. */
static int start_logged(bool threaded, Manager **ret, char *buf, size_t size) {
        char path[300];
        int fd, saved, r;
        ssize_t n;

        snprintf(path, sizeof path, "%s/stderr", dir);
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        CHECK(fd >= 0);
        fflush(stderr);
        saved = dup(STDERR_FILENO);
        CHECK(saved >= 0 && dup2(fd, STDERR_FILENO) >= 0);
        r = start(threaded, ret);
        fflush(stderr);
        CHECK(dup2(saved, STDERR_FILENO) >= 0);
        close(saved);
        n = pread(fd, buf, size - 1, 0);
        buf[n > 0 ? (size_t) n : 0] = 0;
        close(fd);
        unlink(path);
        return r;
}

/* A sealed token that is well formed but does not open (copied from
 * another row: bound to that row's id): read on the main thread, opened
 * on the linking side, and the start fails the same way it did when the
 * reader opened it, message included. The first row, one half-way, one
 * of the last; the access token and the refresh token (the access token,
 * opened already, is wiped and freed: ASan sees no leak). */
TEST(a_token_that_does_not_open_on_the_linking_side_fails_the_start) {
        static const struct {
                int64_t id, from;
                const char *column;
        } bad[] = {
                { 1, 2, "access_token" },
                { 801, 5, "access_token" },
                { 802, 1, "refresh_token" },
                { 1498, 801, "refresh_token" },
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                Manager *m = NULL;
                char db[300], sql[300], want[200], log[4096];
                sqlite3 *h = NULL;

                setup_store();
                snprintf(db, sizeof db, "%s/state/tokenbroker.db", dir);
                CHECK(sqlite3_open(db, &h) == SQLITE_OK);
                snprintf(sql, sizeof sql,
                         "UPDATE connections SET %s = (SELECT %s FROM connections WHERE id = %" PRId64 ") "
                         "WHERE id = %" PRId64, bad[i].column, bad[i].column, bad[i].from, bad[i].id);
                CHECK(sqlite3_exec(h, sql, NULL, NULL, NULL) == SQLITE_OK);
                CHECK_EQ_INT(sqlite3_changes(h), 1);
                sqlite3_close(h);
                snprintf(want, sizeof want, "connection %" PRId64 " ('", bad[i].id);
                for (int threaded = 0; threaded < 2; threaded++) {
                        CHECK_EQ_INT(start_logged(threaded, &m, log, sizeof log), -EBADMSG);
                        CHECK(strstr(log, "Failed to load connections from") != NULL);
                        CHECK(strstr(log, want) != NULL);
                        CHECK(strstr(log, bad[i].column) != NULL);
                        CHECK(strstr(log, "does not open under this key (modified, or copied from elsewhere)") != NULL);
                        /* no token in the log */
                        CHECK(strstr(log, "at-xxxxxxxx") == NULL && strstr(log, "rt-yyyyyyyy") == NULL);
                }
                teardown_store();
        }
}
