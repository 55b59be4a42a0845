/* SPDX-License-Identifier: MIT */
/*
 * fastprovider: a fast local OAuth 2.0 token endpoint for benchmarks.
 *
 * libmicrohttpd with its own thread pool (epoll), listening on 127.0.0.1
 * only. It answers
 *
 *   POST /token    grant_type=refresh_token (RFC 6749 section 6), also
 *                  client_credentials and authorization_code (any code):
 *                  {"access_token","token_type":"Bearer","expires_in",
 *                   "refresh_token"}; errors as RFC 6749 section 5.2
 *   POST /revoke   200 (RFC 7009), and the token is forgotten
 *   GET  /stats    totals and the peak number of requests in flight, JSON
 *   POST /stats/reset  zeroes the totals and the peak
 *
 * Which refresh tokens it takes (--accept):
 *   issued  only the live ones it issued itself
 *   unseen  those, and any token it has never seen (a seeded store holds
 *           random tokens); a token rotated away or revoked is refused
 *   any     anything, remembering nothing
 * With --rotate each refresh issues a new refresh token and retires the
 * old one: presenting a retired token again is counted as "reused" and
 * refused with invalid_grant, as a real provider treats a replay.
 *
 * A request to /token or /revoke is "in flight" from its headers to the
 * end of its answer (MHD's completion callback); the peak over the run is what
 * a broker's max_in_flight must bound. With --delay-ms every /token
 * answer is held that long (the connection is suspended, no thread
 * sleeps), so requests pile up as they would at a slow provider.
 *
 * Tokens are never printed. SIGTERM or SIGINT stop it; the totals go to
 * stderr.
 *
 * Run with --help for the options.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BODY_MAX (8U * 1024U)
#define TOKEN_LENGTH_MIN 24U
#define TOKEN_LENGTH_MAX 4096U
#define THREADS_MAX 64U
#define DELAY_MS_MAX 600000U
#define CONNECTION_LIMIT 16384U
#define NSEC_PER_SEC 1000000000ULL
#define NSEC_PER_MSEC 1000000ULL

static unsigned arg_port = 0;
static const char *arg_port_file = NULL;
static unsigned arg_threads = 2;
static bool arg_rotate = false;
static enum { ACCEPT_ISSUED, ACCEPT_UNSEEN, ACCEPT_ANY } arg_accept = ACCEPT_ISSUED;
static unsigned long arg_expires_in = 3600;
static unsigned arg_delay_ms = 0;
static unsigned arg_token_length = 40;

/* ---- counters ---------------------------------------------------------- */

static struct {
        atomic_ullong requests, token_requests, refreshes, grants, invalid_grant, reused, bad_requests,
                revokes, not_found;
        atomic_llong in_flight, peak_in_flight;
} stats;
static uint64_t started_ns;

static uint64_t now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * NSEC_PER_SEC + (uint64_t) ts.tv_nsec;
}

static void in_flight_add(long long d) {
        long long n = atomic_fetch_add(&stats.in_flight, d) + d, peak;

        if (d <= 0)
                return;
        peak = atomic_load(&stats.peak_in_flight);
        while (n > peak && !atomic_compare_exchange_weak(&stats.peak_in_flight, &peak, n))
                ;
}

/* ---- the refresh tokens it knows ---------------------------------------- */

/* A set of 64-bit hashes of tokens, each live or retired: 16 bytes a token
 * whatever its length, so a million rotations cost 16 MB. Open addressing,
 * linear probing, grown at half full; one mutex (a refresh holds it for a
 * lookup and an insert). A 64-bit hash makes a false match between two of a
 * few million tokens a 1-in-10^6 event. */
enum { SLOT_FREE = 0, SLOT_LIVE = 1, SLOT_RETIRED = 2 };
typedef struct Slot {
        uint64_t hash;
        uint64_t state;
} Slot;

static struct {
        pthread_mutex_t lock;
        Slot *slots;
        size_t cap, used, live;
} known = { .lock = PTHREAD_MUTEX_INITIALIZER };

static uint64_t token_hash(const char *s, size_t n) {
        uint64_t h = 0xcbf29ce484222325ULL;   /* FNV-1a, then a splitmix64 finish */

        for (size_t i = 0; i < n; i++)
                h = (h ^ (uint8_t) s[i]) * 0x100000001b3ULL;
        h ^= h >> 30;
        h *= 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 27;
        h *= 0x94d049bb133111ebULL;
        h ^= h >> 31;
        return h ?: 1;   /* 0 marks a free slot */
}

static Slot *known_find(uint64_t h) {
        size_t i;

        if (known.cap == 0)
                return NULL;
        for (i = h & (known.cap - 1);; i = (i + 1) & (known.cap - 1)) {
                if (known.slots[i].hash == h)
                        return &known.slots[i];
                if (known.slots[i].hash == 0)
                        return NULL;
        }
}

static int known_grow(void) {
        size_t cap = known.cap ? known.cap * 2 : 1024;
        Slot *n = calloc(cap, sizeof(Slot));

        if (!n)
                return -ENOMEM;
        for (size_t j = 0; j < known.cap; j++) {
                size_t i;

                if (known.slots[j].hash == 0)
                        continue;
                for (i = known.slots[j].hash & (cap - 1); n[i].hash != 0; i = (i + 1) & (cap - 1))
                        ;
                n[i] = known.slots[j];
        }
        free(known.slots);
        known.slots = n;
        known.cap = cap;
        return 0;
}

/* Sets the state of h, adding it if absent. Called with the lock held. */
static int known_set(uint64_t h, uint64_t state) {
        Slot *s = known_find(h);
        size_t i;

        if (s) {
                if (s->state == SLOT_LIVE && state != SLOT_LIVE)
                        known.live--;
                else if (s->state != SLOT_LIVE && state == SLOT_LIVE)
                        known.live++;
                s->state = state;
                return 0;
        }
        if ((known.used + 1) * 2 > known.cap && known_grow() < 0)
                return -ENOMEM;
        for (i = h & (known.cap - 1); known.slots[i].hash != 0; i = (i + 1) & (known.cap - 1))
                ;
        known.slots[i] = (Slot) { .hash = h, .state = state };
        known.used++;
        if (state == SLOT_LIVE)
                known.live++;
        return 0;
}

/* ---- tokens ------------------------------------------------------------- */

/* Unique by construction (a global counter), unpredictable enough for a
 * benchmark (a per-thread xorshift seeded from getrandom). */
static atomic_ullong token_counter;
static _Thread_local uint64_t rng_state;

static uint64_t rng_next(void) {
        uint64_t x;

        if (rng_state == 0) {
                if (getrandom(&rng_state, sizeof rng_state, 0) != sizeof rng_state || rng_state == 0)
                        rng_state = now_ns() | 1;
        }
        x = rng_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return rng_state = x;
}

/* buf holds arg_token_length + 1 bytes: "fp" kind counter "." random */
static void token_new(char *buf, char kind) {
        static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        unsigned long long n = atomic_fetch_add(&token_counter, 1) + 1;
        int k = snprintf(buf, arg_token_length + 1, "fp%c%llx.", kind, n);
        uint64_t x = 0;

        for (size_t i = (size_t) k, j = 0; i < arg_token_length; i++, j++) {
                if (j % 10 == 0)
                        x = rng_next();
                buf[i] = alphabet[x & 63];
                x >>= 6;
        }
        buf[arg_token_length] = 0;
}

/* ---- requests ----------------------------------------------------------- */

typedef struct Req {
        struct MHD_Connection *conn;
        char body[BODY_MAX + 1];
        size_t len;
        bool too_big;
        bool delayed;              /* was held for --delay-ms */
        bool counted;              /* in stats.in_flight */
        uint64_t due_ns;
        struct Req *next;
} Req;

/* Requests held for --delay-ms, oldest first: with one fixed delay the
 * order they arrive in is the order they fall due. */
static struct {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        Req *head, *tail;
        bool stopping;
} delayq = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void *delay_thread(void *userdata) {
        (void) userdata;

        pthread_mutex_lock(&delayq.lock);
        for (;;) {
                Req *due = NULL, **tail = &due;
                uint64_t t = now_ns();

                while (delayq.head && (delayq.stopping || delayq.head->due_ns <= t)) {
                        Req *r = delayq.head;

                        delayq.head = r->next;
                        if (!delayq.head)
                                delayq.tail = NULL;
                        r->next = NULL;
                        *tail = r;
                        tail = &r->next;
                }
                if (due) {
                        /* Resume without holding the lock: MHD takes its own. */
                        pthread_mutex_unlock(&delayq.lock);
                        while (due) {
                                Req *r = due;

                                due = r->next;
                                MHD_resume_connection(r->conn);
                        }
                        pthread_mutex_lock(&delayq.lock);
                        continue;
                }
                if (delayq.stopping)
                        break;
                if (delayq.head) {
                        uint64_t until = delayq.head->due_ns;
                        struct timespec ts = { .tv_sec = (time_t) (until / NSEC_PER_SEC),
                                               .tv_nsec = (long) (until % NSEC_PER_SEC) };

                        (void) pthread_cond_timedwait(&delayq.cond, &delayq.lock, &ts);
                } else
                        (void) pthread_cond_wait(&delayq.cond, &delayq.lock);
        }
        pthread_mutex_unlock(&delayq.lock);
        return NULL;
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* The value of name in an application/x-www-form-urlencoded body, decoded
 * in place into out (at most out_size - 1 bytes). Returns its length, or
 * -1 when absent, malformed or too long. */
static ssize_t form_get(const char *body, size_t len, const char *name, char *out, size_t out_size) {
        size_t nlen = strlen(name);
        const char *p = body, *end = body + len;

        while (p < end) {
                const char *amp = memchr(p, '&', (size_t) (end - p)) ?: end;

                if ((size_t) (amp - p) > nlen && memcmp(p, name, nlen) == 0 && p[nlen] == '=') {
                        size_t o = 0;

                        for (const char *q = p + nlen + 1; q < amp; q++) {
                                char c = *q;

                                if (c == '+')
                                        c = ' ';
                                else if (c == '%') {
                                        int hi, lo;

                                        if (amp - q < 3 || (hi = unhex(q[1])) < 0 || (lo = unhex(q[2])) < 0)
                                                return -1;
                                        c = (char) (hi * 16 + lo);
                                        q += 2;
                                }
                                if (c == 0 || o + 1 >= out_size)
                                        return -1;
                                out[o++] = c;
                        }
                        out[o] = 0;
                        return (ssize_t) o;
                }
                p = amp + 1;
        }
        return -1;
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *json) {
        struct MHD_Response *resp;
        enum MHD_Result ret;

        resp = MHD_create_response_from_buffer(strlen(json), (void *) json, MHD_RESPMEM_MUST_COPY);
        if (!resp)
                return MHD_NO;
        (void) MHD_add_response_header(resp, "Content-Type", "application/json");
        (void) MHD_add_response_header(resp, "Cache-Control", "no-store");
        ret = MHD_queue_response(conn, status, resp);
        MHD_destroy_response(resp);
        return ret;
}

static enum MHD_Result reply_error(struct MHD_Connection *conn, unsigned status, const char *error,
                                   const char *description) {
        char buf[256];

        snprintf(buf, sizeof buf, "{\"error\":\"%s\",\"error_description\":\"%s\"}", error, description);
        return reply(conn, status, buf);
}

static enum MHD_Result handle_stats(struct MHD_Connection *conn) {
        char buf[1024];
        size_t live;

        pthread_mutex_lock(&known.lock);
        live = known.live;
        pthread_mutex_unlock(&known.lock);
        snprintf(buf, sizeof buf,
                 "{\"requests\":%llu,\"token_requests\":%llu,\"refreshes\":%llu,\"grants\":%llu,"
                 "\"invalid_grant\":%llu,\"reused\":%llu,\"bad_requests\":%llu,\"revokes\":%llu,"
                 "\"not_found\":%llu,\"in_flight\":%lld,\"peak_in_flight\":%lld,\"live_refresh_tokens\":%zu,"
                 "\"rotate\":%s,\"accept\":\"%s\",\"delay_ms\":%u,\"expires_in\":%lu,\"uptime_s\":%.3f}",
                 atomic_load(&stats.requests), atomic_load(&stats.token_requests),
                 atomic_load(&stats.refreshes), atomic_load(&stats.grants), atomic_load(&stats.invalid_grant),
                 atomic_load(&stats.reused), atomic_load(&stats.bad_requests), atomic_load(&stats.revokes),
                 atomic_load(&stats.not_found), atomic_load(&stats.in_flight),
                 atomic_load(&stats.peak_in_flight), live,
                 arg_rotate ? "true" : "false",
                 arg_accept == ACCEPT_ISSUED ? "issued" : arg_accept == ACCEPT_UNSEEN ? "unseen" : "any",
                 arg_delay_ms, arg_expires_in, (double) (now_ns() - started_ns) / NSEC_PER_SEC);
        return reply(conn, 200, buf);
}

static void stats_reset(void) {
        atomic_store(&stats.requests, 0);
        atomic_store(&stats.token_requests, 0);
        atomic_store(&stats.refreshes, 0);
        atomic_store(&stats.grants, 0);
        atomic_store(&stats.invalid_grant, 0);
        atomic_store(&stats.reused, 0);
        atomic_store(&stats.bad_requests, 0);
        atomic_store(&stats.revokes, 0);
        atomic_store(&stats.not_found, 0);
        /* The peak starts again from what is in flight now. */
        atomic_store(&stats.peak_in_flight, atomic_load(&stats.in_flight));
}

/* 0: accepted (and retired when rotating), -1 unknown, -2 reused. */
static int refresh_token_take(const char *token, size_t n) {
        uint64_t h;
        Slot *s;
        int r = 0;

        if (arg_accept == ACCEPT_ANY)
                return 0;
        h = token_hash(token, n);
        pthread_mutex_lock(&known.lock);
        s = known_find(h);
        if (s && s->state == SLOT_RETIRED)
                r = -2;
        else if (!s && arg_accept == ACCEPT_ISSUED)
                r = -1;
        else if (arg_rotate)
                (void) known_set(h, SLOT_RETIRED);
        else if (!s)
                (void) known_set(h, SLOT_LIVE);   /* --accept unseen: seen now */
        pthread_mutex_unlock(&known.lock);
        return r;
}

static int refresh_token_issued(const char *token) {
        int r;

        if (arg_accept == ACCEPT_ANY)
                return 0;
        pthread_mutex_lock(&known.lock);
        r = known_set(token_hash(token, strlen(token)), SLOT_LIVE);
        pthread_mutex_unlock(&known.lock);
        return r;
}

static enum MHD_Result handle_token(struct MHD_Connection *conn, Req *req) {
        char grant[64], old[TOKEN_LENGTH_MAX + 1], access[TOKEN_LENGTH_MAX + 1], refresh[TOKEN_LENGTH_MAX + 1];
        char buf[3 * TOKEN_LENGTH_MAX + 256];
        ssize_t n;
        bool with_refresh = true;
        int r;

        atomic_fetch_add(&stats.token_requests, 1);
        if (req->too_big || form_get(req->body, req->len, "grant_type", grant, sizeof grant) < 0) {
                atomic_fetch_add(&stats.bad_requests, 1);
                return reply_error(conn, 400, "invalid_request", "no grant_type");
        }
        if (strcmp(grant, "refresh_token") == 0) {
                n = form_get(req->body, req->len, "refresh_token", old, sizeof old);
                /* Answered back without --rotate: only characters that need
                 * no JSON escaping (RFC 6749 A.17 allows any VSCHAR). */
                for (ssize_t i = 0; i < n; i++)
                        if (old[i] < 0x20 || old[i] > 0x7e || old[i] == '"' || old[i] == '\\')
                                n = -1;
                if (n <= 0) {
                        atomic_fetch_add(&stats.bad_requests, 1);
                        return reply_error(conn, 400, "invalid_request", "no refresh_token");
                }
                r = refresh_token_take(old, (size_t) n);
                /* Without --rotate the same refresh token is answered back. */
                if (r == 0 && !arg_rotate)
                        memcpy(refresh, old, (size_t) n + 1);
                explicit_bzero(old, sizeof old);
                if (r < 0) {
                        atomic_fetch_add(&stats.invalid_grant, 1);
                        if (r == -2)
                                atomic_fetch_add(&stats.reused, 1);
                        return reply_error(conn, 400, "invalid_grant",
                                           r == -2 ? "refresh token reused" : "unknown refresh token");
                }
                atomic_fetch_add(&stats.refreshes, 1);
                if (arg_rotate)
                        token_new(refresh, 'r');
        } else if (strcmp(grant, "authorization_code") == 0 || strcmp(grant, "client_credentials") == 0) {
                atomic_fetch_add(&stats.grants, 1);
                with_refresh = strcmp(grant, "authorization_code") == 0;
                if (with_refresh)
                        token_new(refresh, 'r');
        } else {
                atomic_fetch_add(&stats.bad_requests, 1);
                return reply_error(conn, 400, "unsupported_grant_type", "refresh_token, authorization_code, "
                                   "client_credentials");
        }
        if (with_refresh && refresh_token_issued(refresh) < 0)
                return reply_error(conn, 500, "server_error", "out of memory");
        token_new(access, 'a');
        snprintf(buf, sizeof buf,
                 "{\"access_token\":\"%s\",\"token_type\":\"Bearer\",\"expires_in\":%lu%s%s%s}", access,
                 arg_expires_in, with_refresh ? ",\"refresh_token\":\"" : "", with_refresh ? refresh : "",
                 with_refresh ? "\"" : "");
        explicit_bzero(access, sizeof access);
        explicit_bzero(refresh, sizeof refresh);
        {
                enum MHD_Result ret = reply(conn, 200, buf);

                explicit_bzero(buf, sizeof buf);
                return ret;
        }
}

static enum MHD_Result handle_revoke(struct MHD_Connection *conn, Req *req) {
        char token[TOKEN_LENGTH_MAX + 1];
        ssize_t n;

        atomic_fetch_add(&stats.revokes, 1);
        /* RFC 7009 section 2.2: 200 whether or not the token was valid. */
        n = form_get(req->body, req->len, "token", token, sizeof token);
        if (n > 0 && arg_accept != ACCEPT_ANY) {
                uint64_t h = token_hash(token, (size_t) n);

                pthread_mutex_lock(&known.lock);
                if (known_find(h))
                        (void) known_set(h, SLOT_RETIRED);
                pthread_mutex_unlock(&known.lock);
        }
        explicit_bzero(token, sizeof token);
        return reply(conn, 200, "{}");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **req_cls) {
        Req *req = *req_cls;
        bool post = strcmp(method, "POST") == 0;

        (void) cls;
        (void) version;

        if (!req) {
                /* First call: headers only. Answering now would turn keep-
                 * alive off (libmicrohttpd 0.9.75): answer on a later call. */
                req = calloc(1, sizeof *req);
                if (!req)
                        return MHD_NO;
                req->conn = conn;
                *req_cls = req;
                atomic_fetch_add(&stats.requests, 1);
                /* Only the provider's endpoints: polling /stats does not
                 * raise the peak it reports. */
                req->counted = strcmp(url, "/token") == 0 || strcmp(url, "/revoke") == 0;
                if (req->counted)
                        in_flight_add(+1);
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                size_t n = *upload_data_size;

                if (req->len + n > BODY_MAX)
                        req->too_big = true;
                else {
                        memcpy(req->body + req->len, upload_data, n);
                        req->len += n;
                }
                *upload_data_size = 0;
                return MHD_YES;
        }

        if (post && strcmp(url, "/token") == 0) {
                if (arg_delay_ms > 0 && !req->delayed) {
                        req->delayed = true;
                        pthread_mutex_lock(&delayq.lock);
                        if (!delayq.stopping) {
                                MHD_suspend_connection(conn);
                                req->due_ns = now_ns() + arg_delay_ms * NSEC_PER_MSEC;
                                if (delayq.tail)
                                        delayq.tail->next = req;
                                else
                                        delayq.head = req;
                                delayq.tail = req;
                                pthread_cond_signal(&delayq.cond);
                                pthread_mutex_unlock(&delayq.lock);
                                return MHD_YES;
                        }
                        pthread_mutex_unlock(&delayq.lock);
                }
                return handle_token(conn, req);
        }
        if (post && strcmp(url, "/revoke") == 0)
                return handle_revoke(conn, req);
        if (strcmp(method, "GET") == 0 && strcmp(url, "/stats") == 0)
                return handle_stats(conn);
        if (post && strcmp(url, "/stats/reset") == 0) {
                stats_reset();
                return reply(conn, 200, "{}");
        }
        atomic_fetch_add(&stats.not_found, 1);
        return reply_error(conn, 404, "not_found", "POST /token, POST /revoke, GET /stats, POST /stats/reset");
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe) {
        Req *req = *req_cls;

        (void) cls;
        (void) conn;
        (void) toe;
        if (!req)
                return;
        if (req->counted)
                in_flight_add(-1);
        explicit_bzero(req->body, req->len);
        free(req);
        *req_cls = NULL;
}

/* ---- setup -------------------------------------------------------------- */

static void help(void) {
        printf("Usage: fastprovider [OPTIONS]\n\n"
               "A fast local OAuth 2.0 token endpoint on 127.0.0.1, for benchmarks.\n\n"
               "  --port N            port to listen on; 0 (default) picks a free one\n"
               "  --port-file FILE    write the port there once it accepts connections\n"
               "  --threads N         libmicrohttpd thread pool size (default 2)\n"
               "  --rotate            issue a new refresh token on each refresh, retire the old\n"
               "  --accept MODE       refresh tokens taken: issued (default), unseen, any\n"
               "  --expires-in S      expires_in of each access token (default 3600)\n"
               "  --delay-ms N        hold each /token answer N ms (default 0)\n"
               "  --token-length N    characters of each token issued (default 40, at least 24)\n"
               "  -h, --help          this text\n\n"
               "Routes: POST /token, POST /revoke, GET /stats, POST /stats/reset.\n"
               "Prints \"fastprovider: listening on http://127.0.0.1:PORT\" on stdout when ready;\n"
               "SIGTERM or SIGINT stop it and print the totals on stderr.\n");
}

static int parse_num(const char *s, unsigned long max, unsigned long *ret) {
        char *end;
        unsigned long u;

        if (!s || !*s || *s == '-' || *s == '+')
                return -1;
        errno = 0;
        u = strtoul(s, &end, 10);
        if (errno || *end || u > max)
                return -1;
        *ret = u;
        return 0;
}

static int parse_argv(int argc, char *argv[]) {
        enum { ARG_PORT = 0x100, ARG_PORT_FILE, ARG_THREADS, ARG_ROTATE, ARG_ACCEPT, ARG_EXPIRES, ARG_DELAY,
               ARG_LENGTH };
        static const struct option options[] = {
                { "port", required_argument, NULL, ARG_PORT },
                { "port-file", required_argument, NULL, ARG_PORT_FILE },
                { "threads", required_argument, NULL, ARG_THREADS },
                { "rotate", no_argument, NULL, ARG_ROTATE },
                { "accept", required_argument, NULL, ARG_ACCEPT },
                { "expires-in", required_argument, NULL, ARG_EXPIRES },
                { "delay-ms", required_argument, NULL, ARG_DELAY },
                { "token-length", required_argument, NULL, ARG_LENGTH },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        unsigned long u;
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                const char *bad = NULL;

                switch (c) {
                case ARG_PORT:
                        if (parse_num(optarg, 65535, &u) < 0)
                                bad = "--port wants 0..65535";
                        arg_port = (unsigned) u;
                        break;
                case ARG_PORT_FILE:
                        arg_port_file = optarg;
                        break;
                case ARG_THREADS:
                        if (parse_num(optarg, THREADS_MAX, &u) < 0 || u == 0)
                                bad = "--threads wants 1..64";
                        arg_threads = (unsigned) u;
                        break;
                case ARG_ROTATE:
                        arg_rotate = true;
                        break;
                case ARG_ACCEPT:
                        if (strcmp(optarg, "issued") == 0)
                                arg_accept = ACCEPT_ISSUED;
                        else if (strcmp(optarg, "unseen") == 0)
                                arg_accept = ACCEPT_UNSEEN;
                        else if (strcmp(optarg, "any") == 0)
                                arg_accept = ACCEPT_ANY;
                        else
                                bad = "--accept wants issued, unseen or any";
                        break;
                case ARG_EXPIRES:
                        if (parse_num(optarg, 10UL * 366 * 86400, &u) < 0)
                                bad = "--expires-in wants seconds, 0..316224000";
                        arg_expires_in = u;
                        break;
                case ARG_DELAY:
                        if (parse_num(optarg, DELAY_MS_MAX, &u) < 0)
                                bad = "--delay-ms wants 0..600000";
                        arg_delay_ms = (unsigned) u;
                        break;
                case ARG_LENGTH:
                        if (parse_num(optarg, TOKEN_LENGTH_MAX, &u) < 0 || u < TOKEN_LENGTH_MIN)
                                bad = "--token-length wants 24..4096";
                        arg_token_length = (unsigned) u;
                        break;
                case 'h':
                        help();
                        return 0;
                default:
                        return -1;
                }
                if (bad) {
                        fprintf(stderr, "fastprovider: bad value '%s': %s\n", optarg, bad);
                        return -1;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "fastprovider: unexpected argument '%s'\n", argv[optind]);
                return -1;
        }
        return 1;
}

static int listen_loopback(unsigned port, unsigned *ret_port) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t) port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof sa;
        int fd, one = 1;

        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *) &sa, sizeof sa) < 0 || listen(fd, 4096) < 0 ||
            getsockname(fd, (struct sockaddr *) &sa, &len) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        *ret_port = ntohs(sa.sin_port);
        return fd;
}

static int write_port_file(const char *path, unsigned port) {
        char tmp[4096];
        FILE *f;
        int r = 0;

        if (snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int) getpid()) >= (int) sizeof tmp)
                return -ENAMETOOLONG;
        f = fopen(tmp, "we");
        if (!f)
                return -errno;
        fprintf(f, "%u\n", port);
        if (fclose(f) != 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0)
                (void) unlink(tmp);
        return r;
}

int main(int argc, char *argv[]) {
        struct MHD_Daemon *d;
        pthread_condattr_t ca;
        pthread_t delayer;
        struct rlimit rl;
        sigset_t mask;
        unsigned port = 0;
        int r, fd, sig;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? 2 : 0;

        /* The delay queue's deadlines are on CLOCK_MONOTONIC. */
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&delayq.cond, &ca);
        pthread_condattr_destroy(&ca);

        /* Every thread started from here on inherits the blocked signals;
         * only sigwait() below takes them. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        pthread_sigmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);

        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }

        fd = listen_loopback(arg_port, &port);
        if (fd < 0) {
                fprintf(stderr, "fastprovider: cannot listen on 127.0.0.1:%u: %s\n", arg_port, strerror(-fd));
                return 1;
        }
        started_ns = now_ns();
        if (pthread_create(&delayer, NULL, delay_thread, NULL) != 0) {
                fprintf(stderr, "fastprovider: cannot start a thread\n");
                return 1;
        }
        d = MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0,
                             NULL, NULL, on_request, NULL,
                             MHD_OPTION_LISTEN_SOCKET, fd,
                             MHD_OPTION_THREAD_POOL_SIZE, arg_threads,
                             MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT,
                             MHD_OPTION_CONNECTION_TIMEOUT, 60U,
                             MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                             MHD_OPTION_END);
        if (!d) {
                fprintf(stderr, "fastprovider: libmicrohttpd did not start\n");
                return 1;
        }
        if (arg_port_file) {
                r = write_port_file(arg_port_file, port);
                if (r < 0) {
                        fprintf(stderr, "fastprovider: cannot write '%s': %s\n", arg_port_file, strerror(-r));
                        MHD_stop_daemon(d);
                        return 1;
                }
        }
        printf("fastprovider: listening on http://127.0.0.1:%u\n", port);
        fflush(stdout);

        do
                r = sigwait(&mask, &sig);
        while (r == EINTR);

        /* Stop accepting, answer whatever is held back, then stop: MHD
         * must not be stopped with a connection suspended. */
        (void) MHD_quiesce_daemon(d);
        pthread_mutex_lock(&delayq.lock);
        delayq.stopping = true;
        pthread_cond_signal(&delayq.cond);
        pthread_mutex_unlock(&delayq.lock);
        pthread_join(delayer, NULL);
        /* Resuming is asynchronous: give the answers up to 2 s to go out. */
        for (unsigned i = 0; i < 200 && atomic_load(&stats.in_flight) > 0; i++)
                (void) usleep(10000);
        MHD_stop_daemon(d);
        close(fd);

        fprintf(stderr,
                "fastprovider: %llu requests, %llu refreshes, %llu grants, %llu invalid_grant (%llu reused), "
                "%llu revokes, peak in flight %lld\n",
                atomic_load(&stats.requests), atomic_load(&stats.refreshes), atomic_load(&stats.grants),
                atomic_load(&stats.invalid_grant), atomic_load(&stats.reused), atomic_load(&stats.revokes),
                atomic_load(&stats.peak_in_flight));
        free(known.slots);
        if (arg_port_file)
                (void) unlink(arg_port_file);
        return 0;
}
