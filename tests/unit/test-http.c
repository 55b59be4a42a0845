/* SPDX-License-Identifier: MIT */

/* The curl multi on sd-event (daemon/http.c) against a tiny keep-alive
 * HTTP server on the same loop: kept-alive connections are reused with
 * their io source left in epoll, a connection the server closes while idle
 * leaves epoll (no busy loop) and the next request opens a new one, and a
 * host name resolved by curl's threaded resolver (its socket pair is not a
 * connection: it must leave epoll at once) works before and after. A
 * turn of the loop serves 16 ready sockets and 16 finished transfers at
 * most, and the rest complete on the next turns. */

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/macro.h"
#include "common/util.h"
#include "daemon/http.h"

#define TESTS_MAIN
#include "tests.h"

#define CLIENTS_MAX 80

typedef struct Server {
        sd_event *event;
        int listen_fd;
        sd_event_source *listen_src;
        int fds[CLIENTS_MAX];
        sd_event_source *srcs[CLIENTS_MAX];
        unsigned accepted, answered;
} Server;

/* Across servers: answer nothing until this many requests wait, then
 * all of them at once. */
static struct {
        unsigned hold, n_held;
        int held[4 * CLIENTS_MAX];
} holding;

static int on_client(sd_event_source *s _unused_, int fd, uint32_t revents _unused_, void *userdata) {
        static const char answer[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
        Server *srv = userdata;
        char buf[4096];
        ssize_t n = read(fd, buf, sizeof buf);

        if (n <= 0) {
                for (unsigned i = 0; i < CLIENTS_MAX; i++)
                        if (srv->fds[i] == fd) {
                                srv->srcs[i] = sd_event_source_disable_unref(srv->srcs[i]);
                                close(fd);
                                srv->fds[i] = -1;
                        }
                return 0;
        }
        /* one request per read is all this test sends */
        if (memmem(buf, (size_t) n, "\r\n\r\n", 4) && holding.hold > 0) {
                holding.held[holding.n_held++] = fd;
                if (holding.n_held < holding.hold)
                        return 0;
                for (unsigned i = 0; i < holding.n_held; i++)
                        CHECK_EQ_INT(write(holding.held[i], answer, sizeof answer - 1), (ssize_t) sizeof answer - 1);
                holding.n_held = holding.hold = 0;
        } else if (memmem(buf, (size_t) n, "\r\n\r\n", 4)) {
                CHECK_EQ_INT(write(fd, answer, sizeof answer - 1), (ssize_t) sizeof answer - 1);
                srv->answered++;
        }
        return 0;
}

static int on_accept(sd_event_source *s _unused_, int fd, uint32_t revents _unused_, void *userdata) {
        Server *srv = userdata;
        int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (c < 0)
                return 0;
        for (unsigned i = 0; i < CLIENTS_MAX; i++)
                if (srv->fds[i] < 0) {
                        srv->fds[i] = c;
                        CHECK(sd_event_add_io(srv->event, &srv->srcs[i], c, EPOLLIN, on_client, srv) >= 0);
                        srv->accepted++;
                        return 0;
                }
        close(c);
        return 0;
}

/* Closes every connection the server holds (as a server's idle timeout would). */
static void server_close_all(Server *srv) {
        for (unsigned i = 0; i < CLIENTS_MAX; i++)
                if (srv->fds[i] >= 0) {
                        srv->srcs[i] = sd_event_source_disable_unref(srv->srcs[i]);
                        close(srv->fds[i]);
                        srv->fds[i] = -1;
                }
}

static int server_start(Server *srv, sd_event *e) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof sa;

        *srv = (Server) { .event = e };
        for (unsigned i = 0; i < CLIENTS_MAX; i++)
                srv->fds[i] = -1;
        srv->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (srv->listen_fd < 0 || bind(srv->listen_fd, (struct sockaddr *) &sa, sizeof sa) < 0 ||
            listen(srv->listen_fd, CLIENTS_MAX) < 0 || getsockname(srv->listen_fd, (struct sockaddr *) &sa, &len) < 0 ||
            sd_event_add_io(e, &srv->listen_src, srv->listen_fd, EPOLLIN, on_accept, srv) < 0)
                return -1;
        return ntohs(sa.sin_port);
}

static void server_stop(Server *srv) {
        server_close_all(srv);
        srv->listen_src = sd_event_source_disable_unref(srv->listen_src);
        close(srv->listen_fd);
}

typedef struct Result {
        bool done;
        long status;
        CURLcode result;
        char body[16];
} Result;

static void on_done(HttpRequest *req, void *userdata) {
        Result *res = userdata;

        res->done = true;
        res->status = req->status;
        res->result = req->result;
        snprintf(res->body, sizeof res->body, "%s", req->body ?: "");
}

/* Runs the loop until done, at most ~5 s. */
static void run_until(sd_event *e, const bool *done) {
        for (unsigned i = 0; i < 500 && !*done; i++)
                (void) sd_event_run(e, 10 * USEC_PER_MSEC);
}

static void get(Http *h, sd_event *e, const char *url) {
        HttpRequest *req = NULL;
        Result res = {};

        CHECK(http_request_new(h, "GET", url, &req) >= 0);
        if (!req)
                return;
        CHECK(http_request_start(req, 5 * USEC_PER_SEC, on_done, &res) >= 0);
        run_until(e, &res.done);
        CHECK(res.done);
        CHECK_EQ_INT(res.result, CURLE_OK);
        CHECK_EQ_INT(res.status, 200);
        CHECK_STREQ(res.body, "ok");
        http_request_free(req);
}

/* The machine's own name when it resolves to a loopback address through
 * getaddrinfo() (so curl's threaded resolver runs: "localhost" it answers
 * itself); NULL otherwise. */
static bool loopback_name(char *name, size_t size) {
        struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM }, *ai = NULL;
        bool ok;

        if (gethostname(name, size) < 0 || !*name || streq(name, "localhost"))
                return false;
        name[size - 1] = 0;
        if (getaddrinfo(name, NULL, &hints, &ai) != 0 || !ai)
                return false;
        ok = (ntohl(((struct sockaddr_in *) ai->ai_addr)->sin_addr.s_addr) >> 24) == 127;
        freeaddrinfo(ai);
        return ok;
}

TEST(keepalive_idle_close_and_resolver) {
        sd_event *e = NULL;
        Http *h = NULL;
        Server srv;
        char url[128], name[64];
        int port;

        CHECK(curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK);
        CHECK(sd_event_new(&e) >= 0);
        CHECK(http_new(e, &h) >= 0);
        port = server_start(&srv, e);
        CHECK(port > 0);
        if (!e || !h || port <= 0)
                return;
        snprintf(url, sizeof url, "http://127.0.0.1:%d/x", port);

        get(h, e, url);
        get(h, e, url);
        get(h, e, url);
        CHECK_EQ_INT(srv.accepted, 1);   /* kept alive */
        CHECK_EQ_INT(srv.answered, 3);

        /* the server closes the idle connection: the broker's loop must
         * not spin on it (a level-triggered EOF) */
        server_close_all(&srv);
        {
                unsigned turns = 0;
                for (unsigned i = 0; i < 50; i++)
                        if (sd_event_run(e, 2 * USEC_PER_MSEC) > 0)
                                turns++;
                CHECK(turns <= 3);
        }
        get(h, e, url);
        CHECK_EQ_INT(srv.accepted, 2);   /* a new connection */
        get(h, e, url);
        CHECK_EQ_INT(srv.accepted, 2);

        if (loopback_name(name, sizeof name)) {
                snprintf(url, sizeof url, "http://%s:%d/y", name, port);
                get(h, e, url);
                get(h, e, url);
                server_close_all(&srv);
                get(h, e, url);
                get(h, e, url);
                CHECK_EQ_INT(srv.answered, 9);
        } else
                fprintf(stderr, "  (no loopback host name: the resolver part is skipped)\n");

        http_free(h);
        server_stop(&srv);
        sd_event_unref(e);
        curl_global_cleanup();
}



/* 64 transfers finish in the same turn (4 servers, 16 connections each,
 * answer them all at once): the loop handles 4 ready sockets and 16
 * finished transfers a turn at most (HTTP_SOCKETS_PER_TURN,
 * HTTP_DONE_PER_TURN), and the rest on the next turns, every one of
 * them. */
TEST(bounded_work_a_turn_and_all_complete) {
        enum { N = 64 };
        HttpRequest *req[N] = {};
        Result res[N] = {};
        sd_event *e = NULL;
        Http *h = NULL;
        Server srv[4];
        int port[4];
        char url[128];
        unsigned most = 0, turns = 0, done = 0;

        CHECK(curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK);
        CHECK(sd_event_new(&e) >= 0);
        CHECK(http_new(e, &h) >= 0);
        if (!e || !h)
                return;
        for (unsigned k = 0; k < 4; k++) {
                port[k] = server_start(&srv[k], e);
                CHECK(port[k] > 0);
                if (port[k] <= 0)
                        return;
        }
        holding.hold = N;
        for (unsigned i = 0; i < N; i++) {
                snprintf(url, sizeof url, "http://127.0.0.1:%d/z", port[i % 4]);
                CHECK(http_request_new(h, "GET", url, &req[i]) >= 0);
                if (req[i])
                        CHECK(http_request_start(req[i], 10 * USEC_PER_SEC, on_done, &res[i]) >= 0);
        }
        while (done < N && turns < 5000) {
                unsigned before = done;

                (void) sd_event_run(e, 10 * USEC_PER_MSEC);
                turns++;
                done = 0;
                for (unsigned i = 0; i < N; i++)
                        done += res[i].done;
                most = MAX(most, done - before);
        }
        CHECK_EQ_INT(done, N);
        CHECK_EQ_INT(holding.hold, 0);   /* all 64 were held, then answered */
        CHECK(most <= 4);                /* 4 sockets a turn, one transfer each */
        CHECK(most >= 2);                /* many ready at once, or this shows nothing */
        for (unsigned i = 0; i < N; i++) {
                if (res[i].status != 200 || !streq(res[i].body, "ok")) {
                        fprintf(stderr, "  request %u: curl %d, status %ld\n", i, (int) res[i].result, res[i].status);
                        CHECK(false);
                        break;
                }
        }
        for (unsigned i = 0; i < N; i++)
                req[i] = http_request_free(req[i]);

        /* 48 time out together (the servers hold them): curl finishes them
         * in one timeout run, 16 a turn reach their callers, and all do */
        holding.hold = 1000;
        memset(res, 0, sizeof res);
        for (unsigned i = 0; i < 48; i++) {
                snprintf(url, sizeof url, "http://127.0.0.1:%d/t", port[i % 4]);
                CHECK(http_request_new(h, "GET", url, &req[i]) >= 0);
                if (req[i])
                        CHECK(http_request_start(req[i], 300 * USEC_PER_MSEC, on_done, &res[i]) >= 0);
        }
        most = turns = done = 0;
        while (done < 48 && turns < 5000) {
                unsigned before = done;

                (void) sd_event_run(e, 10 * USEC_PER_MSEC);
                turns++;
                done = 0;
                for (unsigned i = 0; i < 48; i++)
                        done += res[i].done;
                most = MAX(most, done - before);
        }
        CHECK_EQ_INT(done, 48);
        CHECK(most <= 16);
        for (unsigned i = 0; i < 48; i++) {
                CHECK_EQ_INT(res[i].result, CURLE_OPERATION_TIMEDOUT);
                http_request_free(req[i]);
        }
        holding = (typeof(holding)) {};
        http_free(h);
        for (unsigned k = 0; k < 4; k++)
                server_stop(&srv[k]);
        sd_event_unref(e);
        curl_global_cleanup();
}
