/* SPDX-License-Identifier: MIT */
/*
 * floor: the throughput floor for tokenbroker.
 *
 * A bare libmicrohttpd server that answers every request with one fixed
 * JSON body. It drives MHD exactly like the broker does (MHD_USE_EPOLL, no
 * internal thread, a listening Unix socket we bind ourselves, an external
 * single-threaded event loop that waits on MHD's epoll fd with the timeout
 * from MHD_get_timeout() and then calls MHD_run()), so whatever the broker
 * loses against this number is the cost of the broker's own work, not of
 * HTTP or of the transport.
 *
 * Usage: floor SOCKET_PATH BODY_BYTES [echo-auth]
 *
 * With echo-auth (the proxy bench's upstream), the body's first member is
 * "auth":"H" instead, H the FNV-1a 64 hash (16 hex digits) of the request's
 * Authorization header ("-" without one): a client can check which token
 * the request carried without the answer ever holding the token. Each
 * answer is then built per request (one allocation).
 */

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <microhttpd.h>

#include "common/macro.h"

#define LISTEN_BACKLOG 4096
#define CONNECTION_LIMIT 4096
#define CONNECTION_TIMEOUT_SEC 60
/* The broker's MHD_OPTION_CONNECTION_MEMORY_LIMIT (daemon/api.c): MHD
 * clears a connection's pool on every request, so its size is part of
 * each request's cost and must be the same on both sides (with MHD's
 * default, 32 KiB, the floor paid four times the broker's memset). */
#define CONNECTION_MEMORY (8U * 1024U)
/* Far above anything the load generator reads (64 KiB); only a sanity cap. */
#define BODY_MAX (16U * 1024U * 1024U)

/* The body looks like a token response so that its size and shape match
 * what the broker sends; the "pad" member absorbs the requested size. */
#define BODY_PREFIX "{\"access_token\":\"at-floor\",\"token_type\":\"Bearer\",\"expires_in\":3600,\"pad\":\""
#define BODY_SUFFIX "\"}"

/* Something non-NULL and unique to mark "first call seen" in *req_cls. */
static int first_call_marker;

static uint64_t n_requests;
static const char *response_body;
static bool echo_auth;
static size_t body_size;
static uint64_t n_connections;

static _noreturn_ _printf_(1, 2) void die(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        fputs("floor: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        exit(EXIT_FAILURE);
}

static enum MHD_Result on_request(
                void *cls,
                struct MHD_Connection *connection,
                const char *url,
                const char *method,
                const char *version,
                const char *upload_data,
                size_t *upload_data_size,
                void **req_cls) {

        struct MHD_Response *response = cls;

        (void) url;
        (void) method;
        (void) version;
        (void) upload_data;

        /* Queueing on the first call makes MHD 0.9.75 answer with
         * "Connection: close"; remember the request and answer on the
         * next call, like the broker, so keep-alive works. */
        if (!*req_cls) {
                *req_cls = &first_call_marker;
                return MHD_YES;
        }

        /* A request with a body: swallow it, the answer does not depend
         * on it. MHD calls again with size 0 once it is all read. */
        if (*upload_data_size > 0) {
                *upload_data_size = 0;
                return MHD_YES;
        }

        n_requests++;
        if (echo_auth) {
                const char *auth = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Authorization");
                struct MHD_Response *r;
                enum MHD_Result ret;
                uint64_t h = 0xcbf29ce484222325ULL;
                char *b = malloc(body_size + 1);
                int k;

                if (!b)
                        return MHD_NO;
                for (const unsigned char *p = (const unsigned char *) auth; p && *p; p++)
                        h = (h ^ *p) * 0x100000001b3ULL;
                memcpy(b, response_body, body_size + 1);
                /* same size as the fixed body: "auth" over "access_token"'s place */
                k = snprintf(b, body_size + 1, "{\"auth\":\"%016" PRIx64 "\",\"pad\":\"", auth ? h : 0);
                if (k > 0 && (size_t) k < body_size - 2)
                        memset(b + k, 'x', body_size - 2 - (size_t) k);
                memcpy(b + body_size - 2, "\"}", 2);
                if (!auth)
                        memcpy(b + 9, "-               ", 16);
                r = MHD_create_response_from_buffer(body_size, b, MHD_RESPMEM_MUST_FREE);
                if (!r) {
                        free(b);
                        return MHD_NO;
                }
                (void) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
                ret = MHD_queue_response(connection, MHD_HTTP_OK, r);
                MHD_destroy_response(r);
                return ret;
        }
        /* The response is shared and reference-counted by MHD, so every
         * request costs no allocation here: this is the floor. */
        return MHD_queue_response(connection, MHD_HTTP_OK, response);
}

static void on_connection(
                void *cls,
                struct MHD_Connection *connection,
                void **socket_context,
                enum MHD_ConnectionNotificationCode toe) {

        (void) cls;
        (void) connection;
        (void) socket_context;

        /* Counting accepted connections lets the operator check, from
         * the server side too, that clients kept their connections. */
        if (toe == MHD_CONNECTION_NOTIFY_STARTED)
                n_connections++;
}

static char *make_body(size_t size) {
        size_t fixed = strlen(BODY_PREFIX) + strlen(BODY_SUFFIX);
        char *body;

        if (size < fixed || size > BODY_MAX)
                return NULL;

        body = malloc(size + 1);
        if (!body)
                return NULL;

        memcpy(body, BODY_PREFIX, strlen(BODY_PREFIX));
        memset(body + strlen(BODY_PREFIX), 'x', size - fixed);
        memcpy(body + size - strlen(BODY_SUFFIX), BODY_SUFFIX, strlen(BODY_SUFFIX));
        body[size] = '\0';
        return body;
}

static int bind_unix_socket(const char *path) {
        _cleanup_close_ int fd = -EBADF;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char tmp[sizeof(sa.sun_path)];
        struct stat st;
        int r;

        if (strlen(path) >= sizeof(sa.sun_path))
                die("socket path too long (max %zu bytes): %s", sizeof(sa.sun_path) - 1, path);

        /* Bind under a temporary name and rename into place once we
         * listen, so that a client which sees the path can connect. */
        r = snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long) getpid());
        if (r < 0 || (size_t) r >= sizeof(tmp))
                die("socket path too long for the temporary name: %s", path);

        /* Remove a stale socket from an earlier run, but never clobber a
         * regular file that happens to have the name. */
        if (lstat(path, &st) == 0) {
                if (!S_ISSOCK(st.st_mode))
                        die("%s exists and is not a socket", path);
                if (unlink(path) < 0)
                        die("unlink %s: %m", path);
        }
        (void) unlink(tmp);

        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                die("socket: %m");

        strcpy(sa.sun_path, tmp);
        if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                die("bind %s: %m", tmp);
        if (listen(fd, LISTEN_BACKLOG) < 0) {
                (void) unlink(tmp);
                die("listen: %m");
        }
        if (rename(tmp, path) < 0) {
                (void) unlink(tmp);
                die("rename %s -> %s: %m", tmp, path);
        }

        return TAKE_FD(fd);
}

/* "tcp:127.0.0.1:PORT": a loopback TCP listener (the proxy bench's API). */
static int bind_tcp_socket(const char *spec) {
        _cleanup_close_ int fd = -EBADF;
        struct sockaddr_in sa = { .sin_family = AF_INET };
        const char *colon = strrchr(spec, ':');
        char host[64];
        int one = 1;

        if (!colon || (size_t) (colon - spec) >= sizeof host)
                die("tcp:ADDRESS:PORT expected: %s", spec);
        snprintf(host, sizeof host, "%.*s", (int) (colon - spec), spec);
        if (inet_pton(AF_INET, host, &sa.sin_addr) != 1 || (ntohl(sa.sin_addr.s_addr) >> 24) != 127)
                die("a loopback address expected: %s", host);
        sa.sin_port = htons((uint16_t) atoi(colon + 1));
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                die("socket: %m");
        (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                die("bind %s: %m", spec);
        if (listen(fd, LISTEN_BACKLOG) < 0)
                die("listen: %m");
        return TAKE_FD(fd);
}

static void raise_fd_limit(void) {
        struct rlimit rl;

        /* Debian's soft limit of 1024 descriptors would cap the number of
         * connections below CONNECTION_LIMIT. */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }
}

int main(int argc, char *argv[]) {
        _cleanup_free_ char *body = NULL;
        _cleanup_close_ int sfd = -EBADF, efd = -EBADF;
        struct MHD_Response *response;
        struct MHD_Daemon *daemon;
        const union MHD_DaemonInfo *info;
        struct epoll_event ev;
        const char *path;
        unsigned long size;
        char *end;
        sigset_t mask;
        int lfd, mhd_epfd;
        bool stop = false;

        if (argc == 4 && strcmp(argv[3], "echo-auth") == 0)
                echo_auth = true;
        else if (argc != 3) {
                fprintf(stderr, "Usage: %s SOCKET_PATH BODY_BYTES [echo-auth]\n", argv[0]);
                return EXIT_FAILURE;
        }
        path = argv[1];

        errno = 0;
        size = strtoul(argv[2], &end, 10);
        if (errno != 0 || end == argv[2] || *end != '\0')
                die("invalid BODY_BYTES: %s", argv[2]);
        body = make_body(size);
        if (!body || (echo_auth && size < 64))
                die("BODY_BYTES must be between %zu and %u (64 with echo-auth)",
                    strlen(BODY_PREFIX) + strlen(BODY_SUFFIX), BODY_MAX);
        response_body = body;
        body_size = size;

        raise_fd_limit();

        /* MHD writes with MSG_NOSIGNAL on Linux; this is belt and braces
         * so a client vanishing mid-write never kills the floor. */
        (void) signal(SIGPIPE, SIG_IGN);

        /* Signals arrive as events on the loop, like sd-event's signal
         * sources, so shutdown happens between MHD_run() calls. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                die("sigprocmask: %m");
        sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
        if (sfd < 0)
                die("signalfd: %m");

        response = MHD_create_response_from_buffer(size, body, MHD_RESPMEM_PERSISTENT);
        if (!response)
                die("cannot create the response");
        if (MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json") != MHD_YES)
                die("cannot add Content-Type");

        lfd = strncmp(path, "tcp:", 4) == 0 ? bind_tcp_socket(path + 4) : bind_unix_socket(path);

        /* Port 0 is ignored with MHD_OPTION_LISTEN_SOCKET. MHD owns lfd
         * from here on and closes it in MHD_stop_daemon(). */
        daemon = MHD_start_daemon(
                        MHD_USE_EPOLL | MHD_USE_ERROR_LOG,
                        0,
                        NULL, NULL,
                        on_request, response,
                        MHD_OPTION_LISTEN_SOCKET, (MHD_socket) lfd,
                        MHD_OPTION_CONNECTION_LIMIT, (unsigned) CONNECTION_LIMIT,
                        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned) CONNECTION_TIMEOUT_SEC,
                        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) CONNECTION_MEMORY,
                        MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL,
                        MHD_OPTION_END);
        if (!daemon) {
                (void) unlink(path);
                die("MHD_start_daemon failed");
        }

        info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_EPOLL_FD);
        if (!info || info->epoll_fd < 0)
                die("no MHD epoll fd");
        mhd_epfd = info->epoll_fd;

        /* Our own epoll set holding MHD's epoll fd, as sd-event does. We
         * must not epoll_wait() on MHD's fd directly: that would consume
         * the edge-triggered events MHD expects to find in MHD_run(). */
        efd = epoll_create1(EPOLL_CLOEXEC);
        if (efd < 0)
                die("epoll_create1: %m");
        ev = (struct epoll_event) { .events = EPOLLIN, .data.fd = mhd_epfd };
        if (epoll_ctl(efd, EPOLL_CTL_ADD, mhd_epfd, &ev) < 0)
                die("epoll_ctl(MHD fd): %m");
        ev = (struct epoll_event) { .events = EPOLLIN, .data.fd = sfd };
        if (epoll_ctl(efd, EPOLL_CTL_ADD, sfd, &ev) < 0)
                die("epoll_ctl(signalfd): %m");

        fprintf(stderr, "floor: listening on %s, body %lu bytes, pid %ld\n", path, size, (long) getpid());

        while (!stop) {
                struct epoll_event events[2];
                MHD_UNSIGNED_LONG_LONG mhd_timeout;
                int timeout = -1, n;

                /* MHD answers 0 when it has work left over (e.g. more
                 * ready connections than one MHD_run() handled), so the
                 * timeout must be fetched anew on every iteration. */
                if (MHD_get_timeout(daemon, &mhd_timeout) == MHD_YES)
                        timeout = mhd_timeout > INT_MAX ? INT_MAX : (int) mhd_timeout;

                n = epoll_wait(efd, events, ELEMENTSOF(events), timeout);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        die("epoll_wait: %m");
                }

                for (int i = 0; i < n; i++)
                        if (events[i].data.fd == sfd) {
                                struct signalfd_siginfo si;

                                if (read(sfd, &si, sizeof(si)) == (ssize_t) sizeof(si))
                                        fprintf(stderr, "floor: got signal %u, stopping\n", si.ssi_signo);
                                stop = true;
                        }

                if (MHD_run(daemon) != MHD_YES)
                        die("MHD_run failed");
        }

        MHD_stop_daemon(daemon);
        MHD_destroy_response(response);
        (void) unlink(path);

        fprintf(stderr, "floor: served %" PRIu64 " requests on %" PRIu64 " connections\n",
                n_requests, n_connections);
        return EXIT_SUCCESS;
}
