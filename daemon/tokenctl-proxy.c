/* SPDX-License-Identifier: MIT */

/* tokenctl proxy NAME --listen 127.0.0.1:PORT: a loopback HTTP port in
 * front of one connection's proxy route on the broker's socket, for tools
 * that cannot speak to a Unix socket. It runs as the calling user, so the
 * broker's ACL sees that user.
 *
 * One request per client connection: the head is rewritten (httpfwd.c)
 * to /v1/connections/NAME/proxy/<path?query> with Connection: close, the
 * body is passed on up to where its framing (Content-Length or chunked)
 * ends, and the broker's answer is streamed back until the broker closes;
 * then the client connection is closed. Nothing after the first request
 * ever reaches the broker. One poll() loop, every buffer bounded. */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/api.h"
#include "common/httpfwd.h"
#include "common/macro.h"
#include "common/util.h"
#include "daemon/tokenctl.h"

#define PROXY_CONNECTIONS_MAX 128
#define PROXY_BUF 65536
/* the rewritten head and the body bytes that came with it fit at once */
#define PROXY_UP_BUF (HTTPFWD_HEAD_MAX + PROXY_BUF)
#define PROXY_HEAD_TIMEOUT_SEC 30
#define PROXY_IDLE_TIMEOUT_SEC 300
/* after our own error answer: what the client still sends is read and
 * dropped for a while, so closing does not reset the connection before
 * the client has read the answer */
#define PROXY_DRAIN_MAX (1024 * 1024)
#define PROXY_DRAIN_SEC 5

typedef struct Buf {
        char *p;
        size_t len, cap;
} Buf;

typedef struct Client {
        int cfd, bfd;
        Buf head;                /* the client's head while it arrives */
        Buf up;                  /* to the broker: the rewritten head, then the body */
        Buf down;                /* to the client: the broker's answer, or our own error */
        HttpFwdBody body;
        bool forwarding;         /* the head went through: up and down are streaming */
        bool broker_eof, closing;
        bool drain;              /* closing: our answer is out, reading what the client still sends */
        bool progress;           /* bytes moved in the last step */
        size_t drained;
        time_t deadline;
} Client;

static volatile sig_atomic_t stop_signal = 0;

static void on_signal(int sig) {
        stop_signal = sig;
}

static time_t now_sec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec;
}

static void client_free(Client *c) {
        if (!c)
                return;
        if (c->cfd >= 0)
                (void) close(c->cfd);
        if (c->bfd >= 0)
                (void) close(c->bfd);
        free(c->head.p);
        free(c->up.p);
        free(c->down.p);
        free(c);
}

static int buf_init(Buf *b, size_t cap) {
        b->p = malloc(cap);
        if (!b->p)
                return -ENOMEM;
        b->len = 0;
        b->cap = cap;
        return 0;
}

/* Our own answer, then close: the request never reached the broker (or
 * the broker could not be reached). */
static void client_answer(Client *c, int status, const char *reason, const char *why) {
        char msg[512];
        int n;

        n = snprintf(msg, sizeof msg, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                      "Content-Length: %zu\r\nConnection: close\r\n\r\ntokenctl proxy: %s\n",
                     status, reason, strlen("tokenctl proxy: \n") + strlen(why), why);
        if (n < 0 || (size_t) n >= sizeof msg || (size_t) n > c->down.cap)
                n = 0;
        memcpy(c->down.p, msg, (size_t) n);
        c->down.len = (size_t) n;
        c->closing = true;
        c->deadline = now_sec() + PROXY_DRAIN_SEC;
}

static const char *reason_of(int status) {
        switch (status) {
        case 400:
                return "Bad Request";
        case 431:
                return "Request Header Fields Too Large";
        case 501:
                return "Not Implemented";
        case 408:
                return "Request Timeout";
        case 502:
                return "Bad Gateway";
        case 505:
                return "HTTP Version Not Supported";
        default:
                return "Service Unavailable";
        }
}

static int broker_connect(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd;

        if (strlen(path) >= sizeof sa.sun_path)
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        /* a Unix socket connects at once, or fails (EAGAIN: backlog full) */
        if (connect(fd, (struct sockaddr *) &sa, sizeof sa) < 0) {
                int e = errno;

                (void) close(fd);
                return -e;
        }
        return fd;
}

/* The head has arrived in c->head: rewrite it, connect to the broker and
 * start forwarding (or answer the refusal). */
static void client_head(Client *c, size_t end, const char *name, const char *sock) {
        StrBuf out = {};
        const char *why = NULL;
        ssize_t used;
        int r;

        r = httpfwd_rewrite_head(c->head.p, end, name, &out, &c->body, &why);
        if (r < 0) {
                client_answer(c, -r, reason_of(-r), why);
                return;
        }
        if (out.len > c->up.cap) {
                strbuf_free(&out);
                client_answer(c, 431, reason_of(431), "the request head is too large");
                return;
        }
        memcpy(c->up.p, out.s, out.len);
        c->up.len = out.len;
        strbuf_free(&out);
        /* what came after the head: the body's first bytes */
        used = httpfwd_body_feed(&c->body, c->head.p + end, c->head.len - end);
        if (used < 0) {
                client_answer(c, 400, reason_of(400), "malformed chunked body");
                return;
        }
        if ((size_t) used > c->up.cap - c->up.len) {
                client_answer(c, 431, reason_of(431), "the request head is too large");
                return;
        }
        memcpy(c->up.p + c->up.len, c->head.p + end, (size_t) used);
        c->up.len += (size_t) used;
        free(c->head.p);
        c->head = (Buf) {};
        c->bfd = broker_connect(sock);
        if (c->bfd < 0) {
                char why2[256];
                int status = c->bfd == -EAGAIN ? 503 : 502;

                snprintf(why2, sizeof why2, "cannot reach tokenbrokerd at %s: %s", sock, strerror(-c->bfd));
                c->bfd = -EBADF;
                client_answer(c, status, reason_of(status), why2);
                return;
        }
        c->forwarding = true;
        c->deadline = now_sec() + PROXY_IDLE_TIMEOUT_SEC;
}

/* One step of c for the events in pc (client) and pb (broker). Returns
 * false when c is finished. */
static bool client_step(Client *c, short cev, short bev, const char *name, const char *sock) {
        ssize_t n;

        if (cev & (POLLERR | POLLNVAL))
                return false;
        if (!c->forwarding && !c->closing) {
                if (!(cev & (POLLIN | POLLHUP)))
                        return true;
                n = recv(c->cfd, c->head.p + c->head.len, c->head.cap - c->head.len, 0);
                if (n < 0)
                        return errno == EAGAIN || errno == EINTR;
                if (n == 0)
                        return false;   /* gone before a whole head */
                c->head.len += (size_t) n;
                {
                        size_t end = httpfwd_head_end(c->head.p, c->head.len);

                        if (end > 0)
                                client_head(c, end, name, sock);
                        else if (c->head.len == c->head.cap)
                                client_answer(c, 431, reason_of(431), "the request head is larger than 64 KiB");
                }
                return true;
        }
        if (c->closing && !c->forwarding) {
                if (c->drain) {
                        char tmp[4096];

                        n = recv(c->cfd, tmp, sizeof tmp, 0);
                        if (n < 0)
                                return errno == EAGAIN || errno == EINTR;
                        c->drained += (size_t) n;
                        return n > 0 && c->drained < PROXY_DRAIN_MAX;
                }
                if (c->down.len > 0 && (cev & POLLOUT)) {
                        n = send(c->cfd, c->down.p, c->down.len, MSG_NOSIGNAL);
                        if (n < 0)
                                return errno == EAGAIN || errno == EINTR;
                        memmove(c->down.p, c->down.p + n, c->down.len - (size_t) n);
                        c->down.len -= (size_t) n;
                }
                if (c->down.len == 0) {
                        (void) shutdown(c->cfd, SHUT_WR);
                        c->drain = true;
                }
                return true;
        }

        /* forwarding */
        if (bev & (POLLERR | POLLNVAL))
                return false;
        /* the client closed both ways after its request: nobody to answer */
        if ((cev & POLLHUP) && c->body.done)
                return false;
        if (!c->body.done && c->up.len < c->up.cap && (cev & (POLLIN | POLLHUP))) {
                char tmp[PROXY_BUF];
                size_t room = c->up.cap - c->up.len;
                ssize_t used;

                n = recv(c->cfd, tmp, MIN(room, sizeof tmp), 0);
                if (n == 0)
                        return false;   /* the client left in the middle of its body */
                if (n > 0) {
                        used = httpfwd_body_feed(&c->body, tmp, (size_t) n);
                        if (used < 0)
                                return false;   /* broken chunked framing: the broker sees a cut request */
                        memcpy(c->up.p + c->up.len, tmp, (size_t) used);
                        c->up.len += (size_t) used;
                        c->progress = true;
                } else if (errno != EAGAIN && errno != EINTR)
                        return false;
        }
        if (c->up.len > 0 && (bev & POLLOUT)) {
                n = send(c->bfd, c->up.p, c->up.len, MSG_NOSIGNAL);
                if (n < 0 && errno != EAGAIN && errno != EINTR)
                        return false;
                if (n > 0) {
                        memmove(c->up.p, c->up.p + n, c->up.len - (size_t) n);
                        c->up.len -= (size_t) n;
                        c->progress = true;
                }
        }
        if (!c->broker_eof && c->down.len < c->down.cap && (bev & (POLLIN | POLLHUP))) {
                n = recv(c->bfd, c->down.p + c->down.len, c->down.cap - c->down.len, 0);
                if (n == 0)
                        c->broker_eof = true;
                else if (n > 0) {
                        c->down.len += (size_t) n;
                        c->progress = true;
                }
                else if (errno != EAGAIN && errno != EINTR)
                        return false;
        }
        if (c->down.len > 0 && (cev & POLLOUT)) {
                n = send(c->cfd, c->down.p, c->down.len, MSG_NOSIGNAL);
                if (n < 0 && errno != EAGAIN && errno != EINTR)
                        return false;
                if (n > 0) {
                        memmove(c->down.p, c->down.p + n, c->down.len - (size_t) n);
                        c->down.len -= (size_t) n;
                        c->progress = true;
                }
        }
        if (c->broker_eof && c->down.len == 0) {
                (void) shutdown(c->cfd, SHUT_WR);
                return false;
        }
        return true;
}

static bool sockaddr_is_loopback(const struct sockaddr *sa) {
        if (sa->sa_family == AF_INET)
                return (ntohl(((const struct sockaddr_in *) sa)->sin_addr.s_addr) >> 24) == 127;
        if (sa->sa_family == AF_INET6) {
                const struct in6_addr *a = &((const struct sockaddr_in6 *) sa)->sin6_addr;

                if (IN6_IS_ADDR_LOOPBACK(a))
                        return true;
                return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
        }
        return false;
}

/* --listen HOST:PORT ([::1]:PORT for IPv6; localhost is 127.0.0.1).
 * Returns a listening socket, or an exit code (negative). */
static int listen_on(const char *spec, char *ret_name, size_t name_size) {
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV };
        _cleanup_free_ char *host = NULL;
        struct addrinfo *ai = NULL;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        const char *colon = strrchr(spec, ':'), *port;
        char hbuf[64], pbuf[16];
        int fd, r, one = 1;

        if (!colon || !colon[1] || colon == spec) {
                fprintf(stderr, "tokenctl: --listen takes ADDRESS:PORT on loopback (127.0.0.1:8080, [::1]:8080); "
                                "got '%s'\n", spec);
                return -EXIT_USAGE;
        }
        port = colon + 1;
        if (spec[0] == '[' && colon[-1] == ']')
                host = strndup(spec + 1, (size_t) (colon - spec - 2));
        else
                host = strndup(spec, (size_t) (colon - spec));
        if (!host)
                return -EXIT_FAILURE_GENERIC;
        if (streq(host, "localhost")) {
                free(host);
                host = strdup("127.0.0.1");
                if (!host)
                        return -EXIT_FAILURE_GENERIC;
        }
        for (const char *q = port; *q; q++)
                if (*q < '0' || *q > '9' || q - port > 5) {
                        fprintf(stderr, "tokenctl: --listen: '%s' is not a port number\n", port);
                        return -EXIT_USAGE;
                }
        r = getaddrinfo(host, port, &hints, &ai);
        if (r != 0 || !ai) {
                fprintf(stderr, "tokenctl: --listen: '%s' is not a numeric address (127.0.0.1, ::1 or "
                                "localhost): %s\n", host, gai_strerror(r));
                return -EXIT_USAGE;
        }
        if (!sockaddr_is_loopback(ai->ai_addr)) {
                fprintf(stderr, "tokenctl: --listen: %s is not a loopback address; the proxy listens on "
                                "loopback only (127.0.0.0/8 or ::1): anyone who reaches the port uses the "
                                "connection as you\n", host);
                freeaddrinfo(ai);
                return -EXIT_USAGE;
        }
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
            bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
                fprintf(stderr, "tokenctl: cannot listen on %s: %s\n", spec, strerror(errno));
                if (fd >= 0)
                        (void) close(fd);
                freeaddrinfo(ai);
                return -EXIT_FAILURE_GENERIC;
        }
        freeaddrinfo(ai);
        if (getsockname(fd, (struct sockaddr *) &ss, &sl) == 0 &&
            getnameinfo((struct sockaddr *) &ss, sl, hbuf, sizeof hbuf, pbuf, sizeof pbuf,
                        NI_NUMERICHOST | NI_NUMERICSERV) == 0)
                snprintf(ret_name, name_size, ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", hbuf, pbuf);
        else
                snprintf(ret_name, name_size, "%s", spec);
        return fd;
}

int do_proxy(int argc, char **argv) {
        const char *name = NULL, *listen_spec = NULL, *sock;
        Client *clients[PROXY_CONNECTIONS_MAX] = {};
        struct pollfd pfd[1 + 2 * PROXY_CONNECTIONS_MAX];
        struct sigaction sa = { .sa_handler = on_signal };
        sigset_t block, unblocked;
        char bound[128];
        size_t nclients = 0;
        int lfd, k = EXIT_OK;

        for (int i = 1; i < argc; i++) {
                if (streq(argv[i], "--listen") && i + 1 < argc)
                        listen_spec = argv[++i];
                else if (strncmp(argv[i], "--listen=", 9) == 0)
                        listen_spec = argv[i] + 9;
                else if (argv[i][0] == '-' || name) {
                        fprintf(stderr, "tokenctl: usage: tokenctl proxy NAME --listen ADDRESS:PORT\n");
                        return EXIT_USAGE;
                } else
                        name = argv[i];
        }
        if (!name || !listen_spec) {
                fprintf(stderr, "tokenctl: usage: tokenctl proxy NAME --listen ADDRESS:PORT\n");
                return EXIT_USAGE;
        }
        if (!name_ok(name))
                return EXIT_USAGE;
        sock = socket_path();
        lfd = listen_on(listen_spec, bound, sizeof bound);
        if (lfd < 0)
                return -lfd;
        /* SIGINT and SIGTERM are let in only inside ppoll(): none is lost
         * between the check of stop_signal and the wait */
        sigemptyset(&block);
        sigaddset(&block, SIGINT);
        sigaddset(&block, SIGTERM);
        (void) sigprocmask(SIG_BLOCK, &block, &unblocked);
        sigdelset(&unblocked, SIGINT);
        sigdelset(&unblocked, SIGTERM);
        (void) sigaction(SIGINT, &sa, NULL);
        (void) sigaction(SIGTERM, &sa, NULL);
        (void) signal(SIGPIPE, SIG_IGN);
        printf("tokenctl: forwarding http://%s/ to the proxy of '%s' at %s (one request per connection)\n",
               bound, name, sock);
        fflush(stdout);

        while (!stop_signal) {
                size_t np = 0;
                time_t now = now_sec(), next = now + PROXY_IDLE_TIMEOUT_SEC;
                int r;

                /* the listener only while there is room for another client */
                pfd[np++] = (struct pollfd) { .fd = nclients < PROXY_CONNECTIONS_MAX ? lfd : -1, .events = POLLIN };
                for (size_t i = 0; i < nclients; i++) {
                        Client *c = clients[i];
                        short ce = 0, be = 0;

                        if (!c->forwarding && !c->closing)
                                ce = POLLIN;
                        else if (c->closing && !c->forwarding)
                                ce = c->drain ? POLLIN : POLLOUT;
                        else {
                                if (!c->body.done && c->up.len < c->up.cap)
                                        ce |= POLLIN;
                                if (c->down.len > 0)
                                        ce |= POLLOUT;
                                if (c->up.len > 0)
                                        be |= POLLOUT;
                                if (!c->broker_eof && c->down.len < c->down.cap)
                                        be |= POLLIN;
                        }
                        pfd[np++] = (struct pollfd) { .fd = c->cfd, .events = ce };
                        /* after the broker's end, its fd would only ever report POLLHUP */
                        pfd[np++] = (struct pollfd) { .fd = c->forwarding && !c->broker_eof ? c->bfd : -1,
                                                      .events = be };
                        next = MIN(next, c->deadline);
                }
                {
                        struct timespec ts = { .tv_sec = MAX(next - now, 0), .tv_nsec = 100 * 1000 * 1000 };

                        r = ppoll(pfd, np, &ts, &unblocked);
                }
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        fprintf(stderr, "tokenctl: poll: %s\n", strerror(errno));
                        k = EXIT_FAILURE_GENERIC;
                        break;
                }
                now = now_sec();
                /* step the clients first: the array may then shrink */
                for (size_t i = nclients; i-- > 0;) {
                        Client *c = clients[i];
                        short cev = pfd[1 + 2 * i].revents, bev = pfd[2 + 2 * i].revents;
                        bool alive = true;

                        if (cev || bev) {
                                alive = client_step(c, cev, bev, name, sock);
                                /* a stream that moves stays; the head and a drain have fixed deadlines */
                                if (alive && c->forwarding && c->progress)
                                        c->deadline = now + PROXY_IDLE_TIMEOUT_SEC;
                                c->progress = false;
                        }
                        if (alive && now >= c->deadline) {
                                if (!c->forwarding && !c->closing) {
                                        client_answer(c, 408, "Request Timeout", "no complete request head in time");
                                        continue;
                                }
                                alive = false;
                        }
                        if (!alive) {
                                client_free(c);
                                clients[i] = clients[--nclients];
                                clients[nclients] = NULL;
                        }
                }
                if (pfd[0].revents & POLLIN) {
                        /* a few at a time: the clients' turn comes soon */
                        for (int a = 0; a < 16 && nclients < PROXY_CONNECTIONS_MAX; a++) {
                                int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                                Client *c;

                                if (cfd < 0)
                                        break;
                                c = calloc(1, sizeof *c);
                                if (!c || buf_init(&c->head, HTTPFWD_HEAD_MAX) < 0 || buf_init(&c->up, PROXY_UP_BUF) < 0 ||
                                    buf_init(&c->down, PROXY_BUF) < 0) {
                                        if (c) {
                                                c->cfd = cfd;
                                                c->bfd = -EBADF;
                                                client_free(c);
                                        } else
                                                (void) close(cfd);
                                        break;
                                }
                                c->cfd = cfd;
                                c->bfd = -EBADF;
                                c->deadline = now + PROXY_HEAD_TIMEOUT_SEC;
                                clients[nclients++] = c;
                        }
                }
        }
        for (size_t i = 0; i < nclients; i++)
                client_free(clients[i]);
        (void) close(lfd);
        return k;
}
