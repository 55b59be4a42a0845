/* SPDX-License-Identifier: MIT */
/*
 * The refresh bookkeeping out of line (ConnRefresh, issue 9): allocated
 * when a refresh is queued or started, kept while a retry is due or an
 * API request waits, freed once the commit (or the failure) has settled.
 * A real manager and store; the token endpoint a tiny HTTP server on a
 * loopback port in a thread, answering each request with the next
 * canned answer. Linked with -Wl,--wrap=calloc (see the Makefile): the
 * part comes from new0(), which can be made to fail.
 */

#include <arpa/inet.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <systemd/sd-event.h>

#include "common/conf.h"
#include "common/macro.h"
#include "daemon/connection.h"
#include "daemon/manager.h"

#define TESTS_MAIN
#include "tests.h"

void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);

static unsigned fail_callocs;   /* the next this many calloc() calls fail */

void *__wrap_calloc(size_t n, size_t size) {
        if (fail_callocs > 0) {
                fail_callocs--;
                return NULL;
        }
        return __real_calloc(n, size);
}

/* ---- the token endpoint ------------------------------------------------ */

static int listen_fd = -1;
static int port;
static const char *answer_status = "200 OK";
static const char *answer_body;
static unsigned served;

static void serve_one(int fd) {
        char buf[8192], out[1024];
        size_t got = 0;
        long need = -1;

        for (;;) {
                ssize_t k = read(fd, buf + got, sizeof buf - 1 - got);
                char *end, *cl;

                if (k <= 0)
                        return;
                got += (size_t) k;
                buf[got] = 0;
                end = strstr(buf, "\r\n\r\n");
                if (!end)
                        continue;
                if (need < 0) {
                        cl = strcasestr(buf, "content-length:");
                        need = (long) (end + 4 - buf) + (cl && cl < end ? strtol(cl + 15, NULL, 10) : 0);
                }
                if ((long) got >= need || got >= sizeof buf - 1)
                        break;
        }
        int n = snprintf(out, sizeof out,
                         "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                         "Connection: close\r\n\r\n%s",
                         answer_status, strlen(answer_body), answer_body);
        __atomic_add_fetch(&served, 1, __ATOMIC_SEQ_CST);
        (void) !write(fd, out, (size_t) n);
}

static void *server(void *arg _unused_) {
        for (;;) {
                int fd = accept(listen_fd, NULL, NULL);

                if (fd < 0)
                        return NULL;
                serve_one(fd);
                close(fd);
        }
}

static void server_start(void) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof a;
        pthread_t t;

        listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *) &a, sizeof a) < 0 || listen(listen_fd, 16) < 0 ||
            getsockname(listen_fd, (struct sockaddr *) &a, &len) < 0)
                abort();
        port = ntohs(a.sin_port);
        if (pthread_create(&t, NULL, server, NULL) != 0)
                abort();
        pthread_detach(t);
}

/* ---- the manager ---------------------------------------------------------- */

static char dir[] = "/tmp/test-conn-refresh-XXXXXX";

static void write_file(const char *name, const char *text) {
        tests_write_file(dir, name, text);
}

static Manager *manager_setup(void) {
        BrokerConfig *cfg = NULL;
        ConfError err = {};
        char path[256], text[1024];
        Manager *m = NULL;

        if (listen_fd < 0)
                server_start();
        if (!mkdtemp(dir))
                abort();
        snprintf(path, sizeof path, "%s/providers.d", dir);
        mkdir(path, 0700);
        /* one refresh at a time: a second one queues */
        write_file("tb.conf", "[broker]\nstate_dir = state\nsocket = tb.sock\ncallback_listen = 127.0.0.1:0\n"
                              "public_url = http://127.0.0.1:8421\nproviders_dir = providers.d\n"
                              "max_parallel_refreshes = 1\n");
        snprintf(text, sizeof text,
                 "[provider]\nauthorize_url = http://127.0.0.1:%d/authorize\n"
                 "token_url = http://127.0.0.1:%d/token\nclient_id = cid\nclient_secret = s3cret\n"
                 "scopes = openid\n", port, port);
        write_file("providers.d/p.conf", text);
        snprintf(path, sizeof path, "%s/tb.conf", dir);
        if (broker_config_load(path, &cfg, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                abort();
        }
        if (manager_new(cfg, path, &m) < 0 || manager_startup(m) < 0)
                abort();
        return m;
}

static void manager_teardown(Manager *m) {
        manager_free(m);
        tests_rm_tree(dir);
        strcpy(dir, "/tmp/test-conn-refresh-XXXXXX");
}

#define OK_ANSWER "{\"access_token\":\"at-new\",\"token_type\":\"Bearer\",\"expires_in\":3600,\"refresh_token\":\"rt-new\"}"

/* An imported connection: its first refresh starts at once. */
static Connection *import(Manager *m, const char *name) {
        AuthorizeRequest req = { .name = name, .provider = "p", .refresh_token = "rt-old" };
        Connection *c = NULL;
        const char *error = NULL;
        char *url = NULL;
        int r;

        r = manager_authorize(m, &req, &c, &url, &error);
        free(url);
        CHECK_EQ_INT(r, 0);
        return c;
}

typedef struct Woken {
        int n, result;
        bool part_at_wake;   /* the waiter list it was on had a part */
} Woken;

static void on_woken(Connection *c, int result, void *userdata) {
        Woken *w = userdata;

        w->n++;
        w->result = result;
        w->part_at_wake = c->refresh != NULL;
}

static void run_until(Manager *m, const int *flag, int want) {
        for (int i = 0; i < 300 && *flag < want; i++)
                (void) sd_event_run(m->event, 20 * USEC_PER_MSEC);
}

TEST(part_allocated_on_start_kept_for_waiters_freed_after_commit) {
        Manager *m;
        Connection *c;
        Woken wk = {};
        Waiter w = { .fn = on_woken, .userdata = &wk };

        answer_status = "200 OK";
        answer_body = OK_ANSWER;
        m = manager_setup();
        c = import(m, "one");
        CHECK(c->refresh != NULL);
        CHECK(connection_inflight(c) != NULL);
        /* single-flight: a second demand joins, on the part's list */
        CHECK_EQ_INT(refresher_refresh(m, c, &w), 0);
        CHECK(connection_waiters(c) == &w);
        run_until(m, &wk.n, 1);
        CHECK_EQ_INT(wk.n, 1);
        CHECK_EQ_INT(wk.result, 0);
        CHECK(!wk.part_at_wake);   /* detached, then freed before the waiter ran */
        CHECK(c->refresh == NULL);
        CHECK_STREQ(c->access_token, "at-new");
        CHECK_STREQ(c->refresh_token, "rt-new");
        CHECK_EQ_INT(c->state, CONN_ACTIVE);
        manager_teardown(m);
}

TEST(part_kept_for_the_retry_after_a_failure_then_freed) {
        Manager *m;
        Connection *c;
        Woken wk = {};
        Waiter w = { .fn = on_woken, .userdata = &wk };

        answer_status = "200 OK";
        answer_body = OK_ANSWER;
        m = manager_setup();
        c = import(m, "one");
        CHECK_EQ_INT(refresher_refresh(m, c, &w), 0);
        run_until(m, &wk.n, 1);
        CHECK(c->refresh == NULL);

        /* a transient failure: the retry needs the part, nothing else */
        answer_status = "503 Service Unavailable";
        answer_body = "{\"error\":\"temporarily_unavailable\"}";
        wk = (Woken) {};
        CHECK_EQ_INT(refresher_refresh(m, c, &w), 0);
        CHECK(connection_inflight(c) != NULL);
        run_until(m, &wk.n, 1);
        CHECK_EQ_INT(wk.n, 1);
        CHECK(wk.result < 0);
        CHECK(c->refresh != NULL);
        CHECK(connection_retry_at(c) > 0);
        CHECK(!connection_busy(c));
        CHECK(connection_waiters(c) == NULL);
        CHECK_STREQ(c->access_token, "at-new");   /* the old token stays */
        /* the retry taken: the part goes where the flow settles */
        (void) connection_set_retry_at(c, 0);
        CHECK(c->refresh != NULL);
        refresher_schedule(m, c);
        CHECK(c->refresh == NULL);
        manager_teardown(m);
}

TEST(part_allocated_on_queue_and_freed_after_both_commits) {
        Manager *m;
        Connection *a, *b;
        Woken wa = {}, wb = {};
        Waiter w1 = { .fn = on_woken, .userdata = &wa }, w2 = { .fn = on_woken, .userdata = &wb };

        answer_status = "200 OK";
        answer_body = OK_ANSWER;
        m = manager_setup();
        a = import(m, "a");
        CHECK(connection_inflight(a) != NULL);
        b = import(m, "b");   /* max_parallel_refreshes = 1: queued */
        CHECK(b->queued);
        CHECK(b->refresh != NULL);
        CHECK(!connection_busy(b));
        CHECK_EQ_INT(refresher_refresh(m, a, &w1), 0);
        CHECK_EQ_INT(refresher_refresh(m, b, &w2), 0);   /* joins the queued one */
        CHECK(connection_waiters(b) == &w2);
        run_until(m, &wb.n, 1);
        run_until(m, &wa.n, 1);
        CHECK_EQ_INT(wa.result, 0);
        CHECK_EQ_INT(wb.result, 0);
        CHECK(a->refresh == NULL);
        CHECK(b->refresh == NULL);
        CHECK(!b->queued);
        manager_teardown(m);
}

TEST(a_refresh_without_its_part_does_not_start) {
        Manager *m;
        Connection *c;
        Woken wk = {};
        Waiter w = { .fn = on_woken, .userdata = &wk };
        unsigned before;

        answer_status = "200 OK";
        answer_body = OK_ANSWER;
        m = manager_setup();
        c = import(m, "one");
        CHECK_EQ_INT(refresher_refresh(m, c, &w), 0);
        run_until(m, &wk.n, 1);
        CHECK(c->refresh == NULL);

        before = __atomic_load_n(&served, __ATOMIC_SEQ_CST);
        wk = (Woken) {};
        fail_callocs = 1;   /* the part is the first allocation of a start */
        CHECK_EQ_INT(refresher_refresh(m, c, &w), -ENOMEM);
        fail_callocs = 0;
        CHECK(c->refresh == NULL);
        CHECK(!connection_busy(c));
        CHECK_EQ_INT(wk.n, 0);   /* not added: its caller answers (500) */
        /* looked at again later like any failed start: it works then */
        CHECK_EQ_INT(refresher_refresh(m, c, &w), 0);
        CHECK(connection_inflight(c) != NULL);
        run_until(m, &wk.n, 1);
        CHECK_EQ_INT(wk.result, 0);
        CHECK(c->refresh == NULL);
        CHECK(__atomic_load_n(&served, __ATOMIC_SEQ_CST) == before + 1);
        manager_teardown(m);
}

TEST(a_waiter_is_kept_when_a_cancel_frees_the_part) {
        Manager *m;
        Connection *c;
        Woken wk = {};
        Waiter w = { .fn = on_woken, .userdata = &wk };

        answer_status = "200 OK";
        answer_body = OK_ANSWER;
        m = manager_setup();
        c = import(m, "one");
        CHECK_EQ_INT(refresher_refresh(m, c, &w), 0);
        run_until(m, &wk.n, 1);
        CHECK(c->refresh == NULL);

        /* a waiter alone keeps the part (an asked refresh on a cluster
         * waits so, with nothing in flight here) */
        wk = (Woken) {};
        CHECK_EQ_INT(refresher_add_waiter(c, &w), 0);
        CHECK(c->refresh != NULL);
        refresher_schedule(m, c);   /* a settle point: kept */
        CHECK(connection_waiters(c) == &w);
        refresher_detach_waiter(c, &w);
        CHECK(c->refresh == NULL);
        CHECK_EQ_INT(refresher_add_waiter(c, &w), 0);
        refresher_cancel(m, c);
        CHECK_EQ_INT(wk.n, 1);
        CHECK_EQ_INT(wk.result, -ECANCELED);
        CHECK(c->refresh == NULL);
        manager_teardown(m);
}
