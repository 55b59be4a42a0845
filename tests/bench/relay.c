/* SPDX-License-Identifier: MIT */
/*
 * relay: the cheapest proxy there can be, for the proxy bench's bound
 * (issue 13). It accepts on a Unix socket and copies bytes both ways to
 * one loopback TCP connection per client: no HTTP parsing, no header
 * work, no token, one thread, one epoll set, 64 KiB reads. Whatever the
 * broker's proxy costs beyond this is its own work; what this costs is
 * the price of one more process and two more hops on the machine.
 *
 *   relay UNIX_PATH tcp:127.0.0.1:PORT
 *
 * Loopback only; runs until SIGTERM/SIGINT. Not installed.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_PAIRS 1024
#define BUF (64 * 1024)

/* One direction's bytes not yet written (the peer's buffer was full). */
typedef struct Pending {
        char *data;
        size_t len, off;
} Pending;

typedef struct End {
        int fd;
        struct End *peer;
        Pending out;    /* bytes waiting to be written to fd */
} End;

/* Both ends in one allocation; freed only after the epoll batch that
 * closed it (later events of the batch may still name it). */
typedef struct Pair {
        End a, b;
        struct Pair *next_dead;
} Pair;
static Pair *dead;

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
        (void) sig;
        stop = 1;
}

static void die(const char *what) {
        fprintf(stderr, "relay: %s: %s\n", what, strerror(errno));
        exit(1);
}

static Pair *pair_of(End *e) {
        return e->peer < e ? (Pair *) e->peer : (Pair *) e;
}

static void end_close(int ep, End *e) {
        Pair *p = pair_of(e);

        for (End *x = &p->a; x <= &p->b; x++)
                if (x->fd >= 0) {
                        epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL);
                        close(x->fd);
                        x->fd = -1;
                }
        p->next_dead = dead;
        dead = p;
}

/* Writes what is pending to e; 0 when all is written or it must wait, -1 on error. */
static int flush_out(int ep, End *e) {
        struct epoll_event ev = { .data.ptr = e };

        while (e->out.off < e->out.len) {
                ssize_t n = write(e->fd, e->out.data + e->out.off, e->out.len - e->out.off);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN) {
                        ev.events = EPOLLIN | EPOLLOUT;
                        epoll_ctl(ep, EPOLL_CTL_MOD, e->fd, &ev);
                        return 0;
                }
                if (n <= 0)
                        return -1;
                e->out.off += (size_t) n;
        }
        free(e->out.data);
        e->out = (Pending) {};
        ev.events = EPOLLIN;
        epoll_ctl(ep, EPOLL_CTL_MOD, e->fd, &ev);
        return 0;
}

/* Reads from e and writes to its peer; -1 when the pair is done. */
static int pump(int ep, End *e, char *buf) {
        End *p = e->peer;

        for (unsigned rounds = 0; rounds < 16; rounds++) {
                ssize_t n = read(e->fd, buf, BUF), w = 0;
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return 0;
                if (n <= 0)
                        return -1;
                if (p->out.len == 0)
                        while (w < n) {
                                ssize_t k = write(p->fd, buf + w, (size_t) (n - w));
                                if (k < 0 && errno == EINTR)
                                        continue;
                                if (k < 0 && errno == EAGAIN)
                                        break;
                                if (k <= 0)
                                        return -1;
                                w += k;
                        }
                if (w < n) {
                        /* keep the rest for flush_out() when the peer is writable again;
                         * later reads are appended behind it, in order */
                        char *d = realloc(p->out.data, p->out.len + (size_t) (n - w));
                        if (!d)
                                return -1;
                        memcpy(d + p->out.len, buf + w, (size_t) (n - w));
                        p->out.data = d;
                        p->out.len += (size_t) (n - w);
                        if (flush_out(ep, p) < 0)
                                return -1;
                        return 0;
                }
                if (n < BUF)
                        return 0;
        }
        return 0;
}

int main(int argc, char **argv) {
        struct sockaddr_un un = { .sun_family = AF_UNIX };
        struct sockaddr_in in = { .sin_family = AF_INET };
        struct epoll_event ev, evs[64];
        int lfd, ep, one = 1, pairs = 0;
        const char *colon;
        static char buf[BUF];
        End listener = { .fd = -1 };

        if (argc != 3 || strncmp(argv[2], "tcp:", 4) != 0 || !(colon = strrchr(argv[2] + 4, ':'))) {
                fprintf(stderr, "usage: relay UNIX_PATH tcp:127.0.0.1:PORT\n");
                return 2;
        }
        {
                char host[64];
                size_t hl = (size_t) (colon - (argv[2] + 4));
                if (hl >= sizeof host || strlen(argv[1]) >= sizeof un.sun_path)
                        return fprintf(stderr, "relay: address too long\n"), 2;
                memcpy(host, argv[2] + 4, hl);
                host[hl] = 0;
                if (inet_pton(AF_INET, host, &in.sin_addr) != 1 || (ntohl(in.sin_addr.s_addr) >> 24) != 127)
                        return fprintf(stderr, "relay: loopback IPv4 addresses only\n"), 2;
                in.sin_port = htons((uint16_t) atoi(colon + 1));
        }
        strcpy(un.sun_path, argv[1]);
        prctl(PR_SET_PDEATHSIG, SIGTERM);   /* the bench that started it died: go too */
        signal(SIGPIPE, SIG_IGN);
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);

        lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (lfd < 0)
                die("socket");
        unlink(un.sun_path);
        if (bind(lfd, (struct sockaddr *) &un, sizeof un) < 0 || listen(lfd, 128) < 0)
                die("bind/listen");
        ep = epoll_create1(EPOLL_CLOEXEC);
        if (ep < 0)
                die("epoll_create1");
        listener.fd = lfd;
        ev = (struct epoll_event) { .events = EPOLLIN, .data.ptr = &listener };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0)
                die("epoll_ctl");

        while (!stop) {
                int n = epoll_wait(ep, evs, 64, 1000);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        die("epoll_wait");
                for (int i = 0; i < n; i++) {
                        End *e = evs[i].data.ptr;
                        if (e == &listener) {
                                int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), u;
                                End *a, *b;
                                Pair *pr;
                                if (c < 0)
                                        continue;
                                if (pairs >= MAX_PAIRS) {
                                        close(c);
                                        continue;
                                }
                                /* a blocking connect on loopback: immediate */
                                u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                                if (u < 0 || connect(u, (struct sockaddr *) &in, sizeof in) < 0) {
                                        if (u >= 0)
                                                close(u);
                                        close(c);
                                        continue;
                                }
                                setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                                pr = calloc(1, sizeof *pr);
                                if (!pr || fcntl(u, F_SETFL, fcntl(u, F_GETFL) | O_NONBLOCK) < 0) {
                                        free(pr);
                                        close(u);
                                        close(c);
                                        continue;
                                }
                                a = &pr->a;
                                b = &pr->b;
                                *a = (End) { .fd = c, .peer = b };
                                *b = (End) { .fd = u, .peer = a };
                                ev = (struct epoll_event) { .events = EPOLLIN, .data.ptr = a };
                                epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                                ev = (struct epoll_event) { .events = EPOLLIN, .data.ptr = b };
                                epoll_ctl(ep, EPOLL_CTL_ADD, u, &ev);
                                pairs++;
                                continue;
                        }
                        if (e->fd < 0)
                                continue;   /* closed earlier in this batch */
                        if ((evs[i].events & EPOLLOUT) && flush_out(ep, e) < 0) {
                                end_close(ep, e);
                                pairs--;
                                continue;
                        }
                        if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && pump(ep, e, buf) < 0) {
                                end_close(ep, e);
                                pairs--;
                        }
                }
                while (dead) {
                        Pair *p = dead;
                        dead = p->next_dead;
                        free(p->a.out.data);
                        free(p->b.out.data);
                        free(p);
                }
        }
        unlink(un.sun_path);
        return 0;
}
