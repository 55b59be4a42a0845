/* SPDX-License-Identifier: MIT */
/*
 * loadgen: a closed-loop HTTP/1.1 load generator for a Unix socket.
 *
 * N keep-alive connections, each with exactly one GET in flight (no
 * pipelining), all driven by one thread with one epoll set: the machines
 * we bench on have two cores and the server under test gets the other.
 * Every response is parsed (status line, headers, Content-Length) and
 * checked: status 200 and, if the request line carries one, an expected
 * substring in the body. Latency (send start to full response, in
 * CLOCK_MONOTONIC nanoseconds) goes into a fixed-size log-linear
 * histogram; throughput counts responses completed after the warm-up.
 *
 * Run with --help for the options.
 */

/* memmem(), asprintf() */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <time.h>
#include <unistd.h>

#include "common/macro.h"

/* Responses are read into one buffer per connection; these bound it. */
#define HEADER_MAX (16U * 1024U)
#define BODY_MAX (64U * 1024U)
#define BUF_SIZE (HEADER_MAX + BODY_MAX)

#define CONNECTIONS_MAX 65536U
#define EVENTS_MAX 256
/* Print the reason of only the first few failures: the counts say the rest. */
#define LOG_MAX 10
/* After a failed reconnect, wait this long before the next try so a dead
 * server costs a bounded number of attempts, not a busy loop. */
#define RETRY_DELAY_NS (10ULL * 1000ULL * 1000ULL)
/* At the end, wait at most this long for the requests still in flight. */
#define DRAIN_NS (1000ULL * 1000ULL * 1000ULL)

#define NSEC_PER_SEC 1000000000ULL
#define NSEC_PER_MSEC 1000000ULL

/* Log-linear histogram, in the spirit of HdrHistogram: values below
 * 2^SUB_BITS ns are exact, above that each power of two is split into
 * 2^SUB_BITS buckets, so any value is known within 1/128 (0.8 %) in a
 * fixed 58 * 128 * 8 = 59 KiB, whatever the range. */
#define HIST_SUB_BITS 7
#define HIST_SUB (1U << HIST_SUB_BITS)
#define HIST_BUCKETS ((64U - HIST_SUB_BITS + 1U) * HIST_SUB)

typedef struct Histogram {
        uint64_t counts[HIST_BUCKETS];
        uint64_t total;
        uint64_t min, max;
        long double sum;
} Histogram;

typedef struct Request {
        char *wire;             /* the whole GET, prebuilt */
        size_t wire_len;
        char *path;
        char *expect;           /* NULL: only the status is checked */
        size_t expect_len;
} Request;

typedef enum ConnState {
        CONN_DOWN,              /* no socket; waiting for retry_at */
        CONN_CONNECTING,
        CONN_SENDING,
        CONN_RECEIVING,
        CONN_IDLE,              /* connected, nothing in flight (end of run) */
} ConnState;

typedef struct Conn {
        unsigned id;
        int fd;
        ConnState state;
        uint32_t armed;         /* events registered with epoll */

        const Request *req;
        size_t sent;
        uint64_t t_start;

        char *buf;
        size_t len;

        /* Parse state of the response being read. */
        size_t header_len;      /* 0 until the header block is complete */
        int status;
        uint64_t body_len;
        bool body_until_close;  /* no Content-Length: the body ends at EOF */
        bool close_after;       /* "Connection: close" or HTTP/1.0 */

        uint64_t n_served;      /* responses on the current socket */
        size_t next;            /* round-robin position */
        uint64_t rng;           /* --random state */
        uint64_t retry_at;
} Conn;

static struct {
        const char *socket_path;
        unsigned connections;
        double duration;
        double warmup;
        const char *label;
        bool json;
        bool random;
        uint64_t seed;
        bool verbose;
        bool count_expired;
        const char *refuse;     /* an answer holding this (headers or body) is a mismatch */
        long long max_reconnects;       /* < 0: no limit */
} arg = {
        .connections = 1,
        .duration = 10.0,
        .warmup = 1.0,
        .label = "loadgen",
        .seed = 1,
        .max_reconnects = -1,
};

static Request *requests;
static size_t n_requests;

static struct sockaddr_un server_addr;
/* --socket tcp:127.0.0.1:PORT: a loopback TCP server instead (the proxy bench's direct row) */
static struct sockaddr_in server_tcp;
static bool use_tcp;
static int epfd = -EBADF;

static Histogram hist;
static uint64_t t_measure_start, t_measure_end;

static uint64_t n_measured;     /* responses completed inside the window */
static uint64_t n_responses;    /* all responses, warm-up included */
static uint64_t n_errors;
static uint64_t n_mismatches;
static uint64_t n_refused;
/* --count-expired: 200 answers whose "expires_at" had passed when they
 * arrived (a token served past its expiry), and those without one. */
static uint64_t n_expired, n_no_expiry;
static uint64_t n_bad_status;
static uint64_t n_reconnects;
static uint64_t n_logged;
static unsigned n_down;
static bool draining;

static volatile sig_atomic_t interrupted;

static _noreturn_ _printf_(1, 2) void die(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        fputs("loadgen: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        exit(2);
}

static uint64_t now_ns(void) {
        struct timespec ts;

        /* Not macro.h's now(): that asserts, and asserts vanish with
         * NDEBUG, and we want nanoseconds. */
        if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
                abort();
        return (uint64_t) ts.tv_sec * NSEC_PER_SEC + (uint64_t) ts.tv_nsec;
}

static uint64_t seconds_to_ns(double s) {
        return (uint64_t) (s * (double) NSEC_PER_SEC + 0.5);
}

/* splitmix64: tiny, good enough, and reproducible from --seed. */
static uint64_t rng_next(uint64_t *state) {
        uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

static unsigned hist_index(uint64_t v) {
        unsigned msb, shift;

        if (v < HIST_SUB)
                return (unsigned) v;
        msb = 63U - (unsigned) __builtin_clzll(v);
        shift = msb - HIST_SUB_BITS;
        return (shift + 1U) * HIST_SUB + (unsigned) ((v >> shift) - HIST_SUB);
}

/* The highest value that falls into bucket i, as HdrHistogram reports. */
static uint64_t hist_bucket_high(unsigned i) {
        unsigned shift;
        uint64_t top;

        if (i < HIST_SUB)
                return i;
        shift = i / HIST_SUB - 1U;
        top = HIST_SUB + i % HIST_SUB;
        return ((top + 1U) << shift) - 1U;
}

static void hist_record(Histogram *h, uint64_t v) {
        h->counts[hist_index(v)]++;
        if (h->total == 0 || v < h->min)
                h->min = v;
        if (v > h->max)
                h->max = v;
        h->total++;
        h->sum += v;
}

static uint64_t hist_percentile(const Histogram *h, double p) {
        double exact = p / 100.0 * (double) h->total;
        uint64_t target, seen = 0;

        if (h->total == 0)
                return 0;
        /* The rank of the value, rounded up; no libm for ceil(). */
        target = (uint64_t) exact;
        if ((double) target < exact)
                target++;
        if (target == 0)
                target = 1;
        for (unsigned i = 0; i < HIST_BUCKETS; i++) {
                seen += h->counts[i];
                if (seen >= target)
                        return MIN(hist_bucket_high(i), h->max);
        }
        return h->max;
}

static _printf_(2, 3) void log_failure(const Conn *c, const char *fmt, ...) {
        va_list ap;

        if (n_logged >= LOG_MAX)
                return;

        va_start(ap, fmt);
        fprintf(stderr, "loadgen: conn %u: ", c->id);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);

        if (++n_logged == LOG_MAX)
                fprintf(stderr, "loadgen: (further failures are only counted)\n");
}

static void conn_arm(Conn *c, uint32_t events) {
        struct epoll_event ev = { .events = events, .data.ptr = c };

        if (events == c->armed)
                return;
        if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
                die("epoll_ctl(MOD): %m");
        c->armed = events;
}

static void conn_reset_response(Conn *c) {
        c->len = 0;
        c->header_len = 0;
        c->status = 0;
        c->body_len = 0;
        c->body_until_close = false;
        c->close_after = false;
}

static const Request *pick_request(Conn *c) {
        size_t i;

        if (arg.random)
                return &requests[rng_next(&c->rng) % n_requests];

        i = c->next;
        c->next = (c->next + 1 == n_requests) ? 0 : c->next + 1;
        return &requests[i];
}

static void conn_close(Conn *c) {
        /* close() drops the fd from the epoll set as well. */
        c->fd = safe_close(c->fd);
        c->armed = 0;
        conn_reset_response(c);
}

static void conn_send(Conn *c);

/* Returns 0 when connected (or connecting), -errno on failure. */
static int conn_open(Conn *c) {
        struct epoll_event ev;
        int fd, r;

        fd = socket(use_tcp ? AF_INET : AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;

        if (use_tcp) {
                int one = 1;
                (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                r = connect(fd, (struct sockaddr *) &server_tcp, sizeof(server_tcp));
        } else
                r = connect(fd, (struct sockaddr *) &server_addr, sizeof(server_addr));
        if (r < 0 && errno != EINPROGRESS) {
                r = -errno;
                close(fd);
                return r;
        }

        c->fd = fd;
        c->n_served = 0;
        c->state = r < 0 ? CONN_CONNECTING : CONN_SENDING;
        c->armed = r < 0 ? EPOLLOUT : EPOLLIN;
        ev = (struct epoll_event) { .events = c->armed, .data.ptr = c };
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
                die("epoll_ctl(ADD): %m");
        return 0;
}

/* Put a request on the wire: the same one again if @retry (the server
 * closed an idle connection before it could read it), else the next. */
static void conn_start(Conn *c, bool retry) {
        /* Once the run is over, leave the connection idle: the server
         * then sees a plain close of a keep-alive connection at exit
         * rather than a request it can no longer answer. */
        if (draining) {
                c->state = CONN_IDLE;
                conn_arm(c, EPOLLIN);
                return;
        }
        if (!retry || !c->req)
                c->req = pick_request(c);
        c->sent = 0;
        conn_reset_response(c);
        c->state = CONN_SENDING;
        c->t_start = now_ns();
        conn_send(c);
}

static void conn_go_down(Conn *c, uint64_t delay) {
        if (c->fd >= 0)
                conn_close(c);
        c->state = CONN_DOWN;
        c->retry_at = now_ns() + delay;
        n_down++;
}

/* Replace the connection by a new one and carry on. */
static void conn_reopen(Conn *c, bool retry) {
        int r;

        conn_close(c);
        n_reconnects++;
        if (draining) {
                c->state = CONN_IDLE;
                return;
        }

        r = conn_open(c);
        if (r < 0) {
                n_errors++;
                log_failure(c, "reconnect: %s", strerror(-r));
                conn_go_down(c, RETRY_DELAY_NS);
                return;
        }
        if (c->state == CONN_SENDING)
                conn_start(c, retry);
}

static void conn_fail(Conn *c, const char *fmt, ...) _printf_(2, 3);
static void conn_fail(Conn *c, const char *fmt, ...) {
        char msg[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);

        n_errors++;
        log_failure(c, "%s (%s)", msg, c->req ? c->req->path : "-");
        conn_reopen(c, false);
}

/* The server may close a keep-alive connection that has served requests
 * just as we send the next request: that is a close, not an error, and the
 * request, which it never answered, goes again on a new connection. On a
 * connection that has served nothing, the same thing is a failure (or a
 * request that kills connections would be retried silently forever). */
static bool conn_closed_while_idle(Conn *c) {
        if (c->len > 0 || c->n_served == 0)
                return false;
        conn_reopen(c, true);
        return true;
}

static void conn_send(Conn *c) {
        while (c->sent < c->req->wire_len) {
                ssize_t n = send(c->fd, c->req->wire + c->sent, c->req->wire_len - c->sent, MSG_NOSIGNAL);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                conn_arm(c, EPOLLIN | EPOLLOUT);
                                return;
                        }
                        if ((errno == EPIPE || errno == ECONNRESET) && conn_closed_while_idle(c))
                                return;
                        conn_fail(c, "send: %m");
                        return;
                }
                c->sent += (size_t) n;
        }

        c->state = CONN_RECEIVING;
        conn_arm(c, EPOLLIN);
}

static bool header_is(const char *name, size_t name_len, const char *want) {
        return name_len == strlen(want) && strncasecmp(name, want, name_len) == 0;
}

/* Does the comma-separated header value contain the token @want? */
static bool value_has_token(const char *v, size_t len, const char *want) {
        size_t want_len = strlen(want);

        for (size_t i = 0; i < len;) {
                size_t start, end;

                while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
                        i++;
                start = i;
                while (i < len && v[i] != ',')
                        i++;
                end = i;
                while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
                        end--;
                if (end - start == want_len && strncasecmp(v + start, want, want_len) == 0)
                        return true;
        }
        return false;
}

/* Parse the header block c->buf[0, header_len). Returns 0 or a negative
 * value after having failed the connection. */
static int conn_parse_header(Conn *c) {
        const char *p = c->buf, *end = c->buf + c->header_len - 2, *eol;
        bool http10, have_length = false, keep_alive = false, chunked = false;
        char *e;

        /* "HTTP/1.1 200 Reason" */
        eol = memmem(p, (size_t) (end - p), "\r\n", 2);
        if (!eol || eol - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ' ||
            p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9' ||
            (eol - p > 12 && p[12] != ' ')) {
                conn_fail(c, "malformed status line");
                return -1;
        }
        http10 = p[7] == '0';
        c->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');

        for (p = eol + 2; p < end; p = eol + 2) {
                const char *colon, *v;
                size_t name_len, v_len;

                eol = memmem(p, (size_t) (end - p), "\r\n", 2);
                if (!eol)
                        eol = end;
                colon = memchr(p, ':', (size_t) (eol - p));
                if (!colon || colon == p) {
                        conn_fail(c, "malformed header line");
                        return -1;
                }
                name_len = (size_t) (colon - p);
                for (v = colon + 1; v < eol && (*v == ' ' || *v == '\t'); v++)
                        ;
                v_len = (size_t) (eol - v);
                while (v_len > 0 && (v[v_len - 1] == ' ' || v[v_len - 1] == '\t'))
                        v_len--;

                if (header_is(p, name_len, "content-length")) {
                        unsigned long long l;

                        errno = 0;
                        l = strtoull(v, &e, 10);
                        if (errno != 0 || e == v || e != v + v_len || (have_length && l != c->body_len)) {
                                conn_fail(c, "bad Content-Length");
                                return -1;
                        }
                        c->body_len = l;
                        have_length = true;
                } else if (header_is(p, name_len, "connection")) {
                        if (value_has_token(v, v_len, "close"))
                                c->close_after = true;
                        if (value_has_token(v, v_len, "keep-alive"))
                                keep_alive = true;
                } else if (header_is(p, name_len, "transfer-encoding"))
                        chunked = true;
        }

        if (http10 && !keep_alive)
                c->close_after = true;

        /* Our servers send buffers of known size, hence Content-Length;
         * a chunked reply would mean something changed, so say so. */
        if (chunked) {
                conn_fail(c, "Transfer-Encoding is not supported");
                return -1;
        }
        if (c->status == 204 || c->status == 304) {
                c->body_len = 0;
        } else if (!have_length) {
                c->body_until_close = true;
                c->close_after = true;
        } else if (c->body_len > BODY_MAX) {
                conn_fail(c, "body of %" PRIu64 " bytes exceeds %u", c->body_len, BODY_MAX);
                return -1;
        }
        return 0;
}

/* "expires_at":"YYYY-MM-DDTHH:MM:SSZ" in body, as seconds since the epoch;
 * -1 if absent or malformed. */
static int64_t body_expires_at(const char *body, size_t len) {
        static const char key[] = "\"expires_at\":\"";
        const char *p = memmem(body, len, key, sizeof key - 1);
        struct tm tm = {};
        char ts[21];

        if (!p || (size_t) (body + len - (p + sizeof key - 1)) < 20)
                return -1;
        memcpy(ts, p + sizeof key - 1, 20);
        ts[20] = 0;
        if (!strptime(ts, "%Y-%m-%dT%H:%M:%SZ", &tm))
                return -1;
        return (int64_t) timegm(&tm);
}

static void conn_complete(Conn *c) {
        const char *body = c->buf + c->header_len;
        size_t body_len = c->len - c->header_len;
        uint64_t t_end = now_ns();

        n_responses++;
        c->n_served++;
        if (t_end >= t_measure_start && t_end < t_measure_end) {
                hist_record(&hist, t_end - c->t_start);
                n_measured++;
        }

        if (c->status != 200) {
                n_bad_status++;
                n_mismatches++;
                log_failure(c, "%s: status %d", c->req->path, c->status);
        } else if (c->req->expect && !memmem(body, body_len, c->req->expect, c->req->expect_len)) {
                n_mismatches++;
                /* Bodies may hold tokens: show them only when asked. */
                if (arg.verbose)
                        log_failure(c, "%s: body lacks '%s': %.*s", c->req->path, c->req->expect,
                                    (int) MIN(body_len, 512U), body);
                else
                        log_failure(c, "%s: body (%zu bytes) lacks '%s'", c->req->path, body_len, c->req->expect);
        }

        if (arg.refuse && memmem(c->buf, c->len, arg.refuse, strlen(arg.refuse))) {
                /* e.g. the token, which a proxied answer must never carry
                 * (never printed: it is a secret) */
                n_refused++;
                n_mismatches++;
                log_failure(c, "%s: the answer holds the --refuse text", c->req->path);
        }

        if (arg.count_expired && c->status == 200) {
                int64_t e = body_expires_at(body, body_len);
                struct timespec ts;

                clock_gettime(CLOCK_REALTIME, &ts);
                if (e < 0)
                        n_no_expiry++;
                else if (e <= (int64_t) ts.tv_sec)
                        n_expired++;
        }

        if (c->close_after)
                conn_reopen(c, false);
        else
                conn_start(c, false);
}

static void conn_receive(Conn *c) {
        size_t old_len = c->len;
        ssize_t n;

        /* recv() into no room would return 0 and look like EOF. */
        if (c->len == BUF_SIZE) {
                conn_fail(c, "response exceeds %u bytes", BUF_SIZE);
                return;
        }

        n = recv(c->fd, c->buf + c->len, BUF_SIZE - c->len, 0);
        if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                        return;
                if (errno == ECONNRESET && conn_closed_while_idle(c))
                        return;
                conn_fail(c, "recv: %m");
                return;
        }

        if (n == 0) {
                if (c->header_len > 0 && c->body_until_close) {
                        conn_complete(c);
                        return;
                }
                if (conn_closed_while_idle(c))
                        return;
                conn_fail(c, "connection closed mid-response after %zu bytes", c->len);
                return;
        }
        c->len += (size_t) n;

        while (c->header_len == 0) {
                size_t from = old_len > 3 ? old_len - 3 : 0;
                const char *hend = memmem(c->buf + from, c->len - from, "\r\n\r\n", 4);

                if (!hend) {
                        if (c->len >= HEADER_MAX) {
                                conn_fail(c, "header block exceeds %u bytes", HEADER_MAX);
                                return;
                        }
                        return;
                }
                c->header_len = (size_t) (hend - c->buf) + 4;
                /* Keeps header plus a BODY_MAX body inside the buffer. */
                if (c->header_len > HEADER_MAX) {
                        conn_fail(c, "header block exceeds %u bytes", HEADER_MAX);
                        return;
                }
                if (conn_parse_header(c) < 0)
                        return;

                /* An interim 1xx answer: drop it and read the real one. */
                if (c->status < 200) {
                        size_t rest = c->len - c->header_len;

                        memmove(c->buf, c->buf + c->header_len, rest);
                        conn_reset_response(c);
                        c->len = rest;
                        old_len = 0;
                }
        }

        if (c->body_until_close) {
                if (c->len - c->header_len > BODY_MAX)
                        conn_fail(c, "body exceeds %u bytes", BODY_MAX);
                return;
        }
        if (c->len - c->header_len < c->body_len)
                return;
        if (c->len - c->header_len > c->body_len) {
                /* One request in flight: nothing may follow the body. */
                conn_fail(c, "%zu unexpected bytes after the body", c->len - c->header_len - (size_t) c->body_len);
                return;
        }
        conn_complete(c);
}

static void conn_event(Conn *c, uint32_t events) {
        if (c->state == CONN_IDLE) {
                /* The server closing an idle connection at the end is fine. */
                conn_close(c);
                return;
        }
        if (c->state == CONN_CONNECTING) {
                int err = 0;
                socklen_t l = sizeof(err);

                if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
                        err = errno;
                if (err != 0) {
                        errno = err;
                        n_errors++;
                        log_failure(c, "connect: %m");
                        conn_go_down(c, RETRY_DELAY_NS);
                        return;
                }
                conn_start(c, true);
                return;
        }

        /* Read first: a server may answer (and close) before it has read
         * all of the request, and EPOLLHUP/EPOLLERR surface via recv(). */
        if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                conn_receive(c);
                return;
        }
        if ((events & EPOLLOUT) && c->state == CONN_SENDING)
                conn_send(c);
}

/* Bring back connections whose retry time has come; returns the earliest
 * pending retry time, or UINT64_MAX. */
static uint64_t retry_down(Conn *conns, uint64_t t) {
        uint64_t next = UINT64_MAX;

        for (unsigned i = 0; i < arg.connections && n_down > 0; i++) {
                Conn *c = &conns[i];
                int r;

                if (c->state != CONN_DOWN)
                        continue;
                if (c->retry_at > t) {
                        next = MIN(next, c->retry_at);
                        continue;
                }

                n_down--;
                r = conn_open(c);
                if (r < 0) {
                        /* A full backlog is the server being busy, not an
                         * I/O error; anything else is counted. */
                        if (r != -EAGAIN) {
                                n_errors++;
                                log_failure(c, "connect: %s", strerror(-r));
                        }
                        conn_go_down(c, RETRY_DELAY_NS);
                        next = MIN(next, c->retry_at);
                        continue;
                }
                /* Not counted as a reconnect again: that happened when
                 * the connection was lost. */
                if (c->state == CONN_SENDING)
                        conn_start(c, true);
        }
        return next;
}

static void dispatch(int timeout) {
        struct epoll_event events[EVENTS_MAX];
        int n;

        n = epoll_wait(epfd, events, EVENTS_MAX, timeout);
        if (n < 0) {
                if (errno == EINTR)
                        return;
                die("epoll_wait: %m");
        }
        for (int i = 0; i < n; i++) {
                Conn *k = events[i].data.ptr;

                /* An earlier event in this batch may have closed the
                 * socket this event was for; skip stale ones. (A socket
                 * reopened since then only gets a spurious wake-up.) */
                if (k->fd < 0)
                        continue;
                conn_event(k, events[i].events);
        }
}

static bool any_in_flight(const Conn *conns) {
        for (unsigned i = 0; i < arg.connections; i++)
                if (conns[i].fd >= 0 && conns[i].state != CONN_IDLE)
                        return true;
        return false;
}

static int timeout_ms(uint64_t deadline, uint64_t t) {
        /* Round up so we do not spin just before the deadline. */
        return deadline > t ? (int) ((deadline - t + NSEC_PER_MSEC - 1) / NSEC_PER_MSEC) : 0;
}

static char *strip_eol(char *s) {
        size_t l = strlen(s);

        while (l > 0 && (s[l - 1] == '\n' || s[l - 1] == '\r'))
                s[--l] = '\0';
        return s;
}

static bool path_valid(const char *p) {
        if (p[0] != '/')
                return false;
        for (; *p; p++)
                if (*p <= 0x20 || *p >= 0x7f)
                        return false;
        return true;
}

static void add_request(const char *path, const char *expect, const char *headers) {
        Request *r;
        int l;

        if (!path_valid(path))
                die("invalid request path: '%s'", path);

        if (n_requests % 1024 == 0) {
                requests = realloc(requests, (n_requests + 1024) * sizeof(Request));
                if (!requests)
                        die("out of memory");
        }
        r = &requests[n_requests++];
        *r = (Request) {};

        r->path = strdup(path);
        if (!r->path)
                die("out of memory");
        if (!isempty(expect)) {
                r->expect = strdup(expect);
                if (!r->expect)
                        die("out of memory");
                r->expect_len = strlen(expect);
        }

        /* Build the bytes once: per-request work in the client should be
         * one send(), nothing else. */
        l = asprintf(&r->wire,
                     "GET %s HTTP/1.1\r\n"
                     "Host: localhost\r\n"
                     "User-Agent: tokenbroker-loadgen\r\n"
                     "Accept: application/json\r\n"
                     "%s"
                     "\r\n",
                     path, headers);
        if (l < 0)
                die("out of memory");
        r->wire_len = (size_t) l;
}

/* One request per line: "PATH" or "PATH EXPECTED_SUBSTRING"; the
 * substring is the rest of the line after the blanks following PATH, taken
 * verbatim (quotes included). Blank lines and '#' comments are skipped. */
static void load_request_file(const char *fn, const char *default_expect, const char *headers) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *line = NULL;
        size_t cap = 0;
        unsigned lineno = 0;

        f = fopen(fn, "re");
        if (!f)
                die("open %s: %m", fn);

        while (getline(&line, &cap, f) >= 0) {
                char *p = strip_eol(line), *expect = NULL;
                size_t l;

                lineno++;
                p += strspn(p, " \t");
                if (*p == '\0' || *p == '#')
                        continue;

                l = strcspn(p, " \t");
                if (p[l] != '\0') {
                        p[l] = '\0';
                        expect = p + l + 1;
                        expect += strspn(expect, " \t");
                }
                if (!path_valid(p))
                        die("%s:%u: invalid path '%s'", fn, lineno, p);
                add_request(p, isempty(expect) ? default_expect : expect, headers);
        }
        if (ferror(f))
                die("read %s: %m", fn);
        if (n_requests == 0)
                die("%s: no requests", fn);
}

static void raise_fd_limit(void) {
        struct rlimit rl;

        /* Debian's soft limit of 1024 descriptors would cap --connections. */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }
}

static void on_sigint(int sig) {
        (void) sig;
        interrupted = 1;
}

static void json_string(FILE *f, const char *s) {
        fputc('"', f);
        for (; *s; s++) {
                unsigned char ch = (unsigned char) *s;

                if (ch == '"' || ch == '\\')
                        fprintf(f, "\\%c", ch);
                else if (ch < 0x20)
                        fprintf(f, "\\u%04x", ch);
                else
                        fputc(ch, f);
        }
        fputc('"', f);
}

static double ns_to_ms(uint64_t ns) {
        return (double) ns / (double) NSEC_PER_MSEC;
}

static void help(void) {
        printf("Usage: loadgen --socket PATH [OPTIONS]\n"
               "\n"
               "Closed-loop HTTP/1.1 GET load over keep-alive connections to a Unix socket.\n"
               "\n"
               "  --socket PATH          server socket (required; tcp:ADDRESS:PORT for TCP)\n"
               "  --connections N        concurrent connections, one request in flight each (1)\n"
               "  --duration SECONDS     measured time, after the warm-up (10)\n"
               "  --warmup SECONDS       unmeasured time first (1)\n"
               "  --path /X              request this one path (default /)\n"
               "  --path-file FILE       requests, one 'PATH [EXPECTED_SUBSTRING]' per line\n"
               "  --expect-file FILE     same format as --path-file (use one or the other)\n"
               "  --expect TEXT          expected body substring where a line has none\n"
               "  --refuse TEXT          an answer holding TEXT (headers or body) is a mismatch\n"
               "  --header 'NAME: VALUE' extra request header (repeatable)\n"
               "  --random               pick requests pseudo-randomly (default round-robin)\n"
               "  --seed N               seed for --random (1)\n"
               "  --max-reconnects N     fail if the server closed more connections than N\n"
               "  --label TEXT           label of the result line\n"
               "  --json                 print one JSON object on stdout (text line on stderr)\n"
               "  --verbose              show response bodies of mismatches\n"
               "  --count-expired        count 200 answers whose expires_at had passed on arrival\n"
               "\n"
               "Exit status: 0 ok; 1 errors, mismatches, no response or too many reconnects; 2 setup.\n");
}

static double parse_seconds(const char *s, const char *what, bool allow_zero) {
        char *e;
        double d;

        errno = 0;
        d = strtod(s, &e);
        /* Written so that NaN fails too. */
        if (errno != 0 || e == s || *e != '\0' || !(d >= 0 && d <= 86400) || (!allow_zero && d == 0))
                die("invalid %s: %s", what, s);
        return d;
}

static unsigned long long parse_number(const char *s, const char *what, unsigned long long min, unsigned long long max) {
        unsigned long long v;
        char *e;

        errno = 0;
        v = strtoull(s, &e, 10);
        if (errno != 0 || e == s || *e != '\0' || s[0] == '-' || v < min || v > max)
                die("invalid %s: %s", what, s);
        return v;
}

int main(int argc, char *argv[]) {
        enum {
                ARG_SOCKET = 0x100,
                ARG_CONNECTIONS,
                ARG_DURATION,
                ARG_WARMUP,
                ARG_PATH,
                ARG_PATH_FILE,
                ARG_EXPECT_FILE,
                ARG_EXPECT,
                ARG_REFUSE,
                ARG_HEADER,
                ARG_RANDOM,
                ARG_SEED,
                ARG_MAX_RECONNECTS,
                ARG_LABEL,
                ARG_JSON,
                ARG_VERBOSE,
                ARG_COUNT_EXPIRED,
                ARG_HELP,
        };
        static const struct option options[] = {
                { "socket", required_argument, NULL, ARG_SOCKET },
                { "connections", required_argument, NULL, ARG_CONNECTIONS },
                { "duration", required_argument, NULL, ARG_DURATION },
                { "warmup", required_argument, NULL, ARG_WARMUP },
                { "path", required_argument, NULL, ARG_PATH },
                { "path-file", required_argument, NULL, ARG_PATH_FILE },
                { "expect-file", required_argument, NULL, ARG_EXPECT_FILE },
                { "expect", required_argument, NULL, ARG_EXPECT },
                { "refuse", required_argument, NULL, ARG_REFUSE },
                { "header", required_argument, NULL, ARG_HEADER },
                { "random", no_argument, NULL, ARG_RANDOM },
                { "seed", required_argument, NULL, ARG_SEED },
                { "max-reconnects", required_argument, NULL, ARG_MAX_RECONNECTS },
                { "label", required_argument, NULL, ARG_LABEL },
                { "json", no_argument, NULL, ARG_JSON },
                { "verbose", no_argument, NULL, ARG_VERBOSE },
                { "count-expired", no_argument, NULL, ARG_COUNT_EXPIRED },
                { "help", no_argument, NULL, ARG_HELP },
                {}
        };
        const char *path = NULL, *request_file = NULL, *expect = NULL;
        _cleanup_free_ char *headers = strdup("");
        _cleanup_free_ Conn *conns = NULL;
        struct sigaction sa = { .sa_handler = on_sigint };
        uint64_t t0, t, t_end, next_retry = UINT64_MAX;
        double measured, rate;
        FILE *human;
        int c;

        if (!headers)
                die("out of memory");

        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case ARG_SOCKET:
                        arg.socket_path = optarg;
                        break;
                case ARG_CONNECTIONS:
                        arg.connections = (unsigned) parse_number(optarg, "--connections", 1, CONNECTIONS_MAX);
                        break;
                case ARG_DURATION:
                        arg.duration = parse_seconds(optarg, "--duration", false);
                        break;
                case ARG_WARMUP:
                        arg.warmup = parse_seconds(optarg, "--warmup", true);
                        break;
                case ARG_PATH:
                        path = optarg;
                        break;
                case ARG_PATH_FILE:
                case ARG_EXPECT_FILE:
                        if (request_file)
                                die("give only one of --path-file and --expect-file");
                        request_file = optarg;
                        break;
                case ARG_EXPECT:
                        expect = optarg;
                        break;
                case ARG_REFUSE:
                        if (isempty(optarg))
                                die("--refuse needs a non-empty text");
                        arg.refuse = optarg;
                        break;
                case ARG_HEADER: {
                        char *h;

                        if (!strchr(optarg, ':') || strpbrk(optarg, "\r\n"))
                                die("invalid --header: %s", optarg);
                        if (asprintf(&h, "%s%s\r\n", headers, optarg) < 0)
                                die("out of memory");
                        free(headers);
                        headers = h;
                        break;
                }
                case ARG_RANDOM:
                        arg.random = true;
                        break;
                case ARG_SEED:
                        arg.seed = parse_number(optarg, "--seed", 0, UINT64_MAX);
                        break;
                case ARG_MAX_RECONNECTS:
                        arg.max_reconnects = (long long) parse_number(optarg, "--max-reconnects", 0, LLONG_MAX);
                        break;
                case ARG_LABEL:
                        arg.label = optarg;
                        break;
                case ARG_JSON:
                        arg.json = true;
                        break;
                case ARG_COUNT_EXPIRED:
                        arg.count_expired = true;
                        break;
                case ARG_VERBOSE:
                        arg.verbose = true;
                        break;
                case ARG_HELP:
                        help();
                        return 0;
                default:
                        fprintf(stderr, "Try --help.\n");
                        return 2;
                }

        if (optind < argc)
                die("unexpected argument: %s", argv[optind]);
        if (!arg.socket_path)
                die("--socket is required (see --help)");
        if (strlen(arg.socket_path) >= sizeof(server_addr.sun_path))
                die("socket path too long: %s", arg.socket_path);
        if (path && request_file)
                die("give either --path or a request file, not both");

        if (request_file)
                load_request_file(request_file, expect, headers);
        else
                add_request(path ?: "/", expect, headers);

        server_addr.sun_family = AF_UNIX;
        strcpy(server_addr.sun_path, arg.socket_path);
        if (strncmp(arg.socket_path, "tcp:", 4) == 0) {
                const char *colon = strrchr(arg.socket_path + 4, ':');
                char host[64];

                if (!colon || (size_t) (colon - arg.socket_path - 4) >= sizeof host)
                        die("--socket tcp:ADDRESS:PORT");
                snprintf(host, sizeof host, "%.*s", (int) (colon - arg.socket_path - 4), arg.socket_path + 4);
                server_tcp.sin_family = AF_INET;
                server_tcp.sin_port = htons((uint16_t) atoi(colon + 1));
                if (inet_pton(AF_INET, host, &server_tcp.sin_addr) != 1)
                        die("--socket tcp:ADDRESS:PORT: bad address %s", host);
                use_tcp = true;
        }

        raise_fd_limit();
        (void) signal(SIGPIPE, SIG_IGN);
        /* No SA_RESTART: ^C must break epoll_wait() so we still report. */
        sigemptyset(&sa.sa_mask);
        (void) sigaction(SIGINT, &sa, NULL);
        (void) sigaction(SIGTERM, &sa, NULL);

        epfd = epoll_create1(EPOLL_CLOEXEC);
        if (epfd < 0)
                die("epoll_create1: %m");

        conns = new0(Conn, arg.connections);
        if (!conns)
                die("out of memory");

        /* Connect everything before the clock starts; a server that is
         * not there at all is a setup error, not a measurement. */
        for (unsigned i = 0; i < arg.connections; i++) {
                Conn *k = &conns[i];
                int r;

                k->id = i;
                k->fd = -EBADF;
                k->buf = malloc(BUF_SIZE);
                if (!k->buf)
                        die("out of memory");
                /* Spread the connections over the request list so they do
                 * not walk it in lockstep. */
                k->next = (size_t) (((uint64_t) i * n_requests) / arg.connections);
                k->rng = arg.seed * 0x100000001b3ULL + i;

                r = conn_open(k);
                if (r == -EAGAIN) {
                        conn_go_down(k, 0);
                        continue;
                }
                if (r < 0)
                        die("connect %s: %s", arg.socket_path, strerror(-r));
        }

        t0 = now_ns();
        t_measure_start = t0 + seconds_to_ns(arg.warmup);
        t_measure_end = t_measure_start + seconds_to_ns(arg.duration);

        for (unsigned i = 0; i < arg.connections; i++)
                if (conns[i].state == CONN_SENDING)
                        conn_start(&conns[i], false);
        if (n_down > 0)
                next_retry = 0;

        for (t = now_ns(); t < t_measure_end && !interrupted; t = now_ns()) {
                uint64_t deadline = t_measure_end;

                if (n_down > 0 && next_retry <= t)
                        next_retry = retry_down(conns, t);
                if (n_down > 0)
                        deadline = MIN(deadline, next_retry);

                dispatch(timeout_ms(deadline, t));

                /* A connection went down since: look at it next round. */
                if (n_down > 0 && next_retry == UINT64_MAX)
                        next_retry = 0;
        }

        /* Interrupted runs report on the time actually measured. */
        t_end = MIN(now_ns(), t_measure_end);

        /* Let the requests in flight finish, without starting new ones, so
         * the server never has its answer cut off by our exit; responses
         * from here on are checked but not measured. */
        draining = true;
        if (!interrupted) {
                uint64_t drain_end = now_ns() + DRAIN_NS;

                for (t = now_ns(); t < drain_end && !interrupted && any_in_flight(conns); t = now_ns())
                        dispatch(timeout_ms(drain_end, t));
        }

        t = t_end;
        measured = t > t_measure_start ? (double) (t - t_measure_start) / (double) NSEC_PER_SEC : 0.0;
        rate = measured > 0 ? (double) n_measured / measured : 0.0;

        human = arg.json ? stderr : stdout;
        fprintf(human,
                "%s  conns=%u  req/s=%.0f  p50=%.3fms  p99=%.3fms  p999=%.3fms  max=%.3fms  "
                "errors=%" PRIu64 "  mismatches=%" PRIu64 "  reconnects=%" PRIu64 "  requests=%" PRIu64 "\n",
                arg.label, arg.connections, rate,
                ns_to_ms(hist_percentile(&hist, 50.0)),
                ns_to_ms(hist_percentile(&hist, 99.0)),
                ns_to_ms(hist_percentile(&hist, 99.9)),
                ns_to_ms(hist.max),
                n_errors, n_mismatches, n_reconnects, n_measured);
        if (arg.count_expired)
                fprintf(human, "%s  expired=%" PRIu64 "  without_expiry=%" PRIu64 "\n", arg.label, n_expired, n_no_expiry);

        if (arg.json) {
                printf("{\"label\":");
                json_string(stdout, arg.label);
                printf(",\"conns\":%u,\"duration_s\":%.3f,\"warmup_s\":%.3f,\"requests\":%" PRIu64
                       ",\"responses_total\":%" PRIu64 ",\"req_s\":%.1f"
                       ",\"p50_ms\":%.6f,\"p99_ms\":%.6f,\"p999_ms\":%.6f,\"max_ms\":%.6f"
                       ",\"min_ms\":%.6f,\"mean_ms\":%.6f"
                       ",\"errors\":%" PRIu64 ",\"mismatches\":%" PRIu64 ",\"bad_status\":%" PRIu64
                       ",\"refused\":%" PRIu64 ",\"reconnects\":%" PRIu64 ",\"interrupted\":%s}\n",
                       arg.connections, measured, arg.warmup, n_measured, n_responses, rate,
                       ns_to_ms(hist_percentile(&hist, 50.0)),
                       ns_to_ms(hist_percentile(&hist, 99.0)),
                       ns_to_ms(hist_percentile(&hist, 99.9)),
                       ns_to_ms(hist.max),
                       ns_to_ms(hist.min),
                       hist.total > 0 ? (double) (hist.sum / hist.total) / (double) NSEC_PER_MSEC : 0.0,
                       n_errors, n_mismatches, n_bad_status, n_refused, n_reconnects,
                       interrupted ? "true" : "false");
        }
        fflush(stdout);

        for (unsigned i = 0; i < arg.connections; i++) {
                safe_close(conns[i].fd);
                free(conns[i].buf);
        }
        for (size_t i = 0; i < n_requests; i++) {
                free(requests[i].wire);
                free(requests[i].path);
                free(requests[i].expect);
        }
        free(requests);
        safe_close(epfd);

        if (n_errors > 0 || n_mismatches > 0 || n_measured == 0)
                return 1;
        if (arg.max_reconnects >= 0 && n_reconnects > (uint64_t) arg.max_reconnects)
                return 1;
        return 0;
}
