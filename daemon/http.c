/* SPDX-License-Identifier: MIT */
#include <strings.h>
#include <sys/epoll.h>

#include "common/egress.h"
#include "common/util.h"
#include "daemon/event-round.h"
#include "daemon/http.h"

/* Per-socket context that curl hands back to us via curl_multi_assign. */
typedef struct HttpSocket {
        uint32_t events;           /* in the Http's epoll set (0: not in it) */
        curl_socket_t fd;
        bool owned;                /* opened by open_socket(): closed through close_socket() */
        bool idle;                 /* curl no longer watches it (a kept-alive connection) */
} HttpSocket;

#define HTTP_POOL_MAX 64
/* Work a turn of the loop does for curl, so token handouts interleave with
 * a refresh storm: ready sockets served, finished transfers handled. What
 * is left is for the next turns (the epoll set stays readable; a defer
 * source takes the finished transfers left). */
/* 4, not 16: in a storm a ready socket costs curl 100-300 us (transfers
 * waiting for one of its 16 connections a host), so 16 a turn held the
 * API socket 1.3-5 ms each turn; with 4 a handout's p99 in the 20,000
 * storm went from 2.1-6.5 ms to 1.2-3.4 ms at the same refreshes/s
 * (tests/bench/storm.sh, 2026-12-04). */
#define HTTP_SOCKETS_PER_TURN 4
#define HTTP_DONE_PER_TURN 16

struct Http {
        sd_event *event;
        CURLM *multi;
        sd_event_source *timer;
        usec_t armed;              /* when the timer fires; USEC_INFINITY: off */
        sd_event_source *asap;     /* curl's "time out now": a defer, no timerfd to set */
        sd_event_source *more_done;   /* finished transfers left by a turn */
        EventRound round;          /* turns in a row that took asap or more_done (event-round.h) */
        unsigned in_flight;
        /* curl's sockets in an epoll set of their own, one io source for
         * the loop (on_epoll() serves HTTP_SOCKETS_PER_TURN at most) */
        int epfd;
        sd_event_source *epoll_source;
        /* every socket in the set, by descriptor: an idle kept-alive
         * connection stays in it (no epoll_ctl() pair per request) until
         * curl closes the socket (close_socket()) */
        HttpSocket **sockets;
        size_t n_sockets;
        void (*after)(void *userdata);
        void *after_userdata;
        /* finished easy handles, reset, for the next requests: no
         * curl_easy_init() and cleanup (a few KiB zeroed, buffers
         * allocated) per request */
        CURL *pool[HTTP_POOL_MAX];
        unsigned n_pool;
        char *ca_file;             /* [broker] ca_file, connect_to */
        char **connect_to;
        size_t n_connect_to;
};

static void egress_clear(Http *h) {
        for (size_t i = 0; i < h->n_connect_to; i++)
                free(h->connect_to[i]);
        free(h->connect_to);
        free(h->ca_file);
        h->connect_to = NULL;
        h->n_connect_to = 0;
        h->ca_file = NULL;
}

int http_set_egress(Http *h, const char *ca_file, char *const *connect_to, size_t n) {
        egress_clear(h);
        if (ca_file && !(h->ca_file = strdup(ca_file)))
                return -ENOMEM;
        if (n == 0)
                return 0;
        h->connect_to = new0(char *, n);
        if (!h->connect_to)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                h->connect_to[i] = strdup(connect_to[i]);
                if (!h->connect_to[i]) {
                        egress_clear(h);
                        return -ENOMEM;
                }
                h->n_connect_to = i + 1;
        }
        return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp);

/* Handles HTTP_DONE_PER_TURN finished transfers at most; the more_done
 * defer source takes the rest on the next turns. */
static void http_check_done(Http *h) {
        CURLMsg *msg;
        int left = 0;
        unsigned n = 0;

        while (n < HTTP_DONE_PER_TURN && (msg = curl_multi_info_read(h->multi, &left))) {
                HttpRequest *r = NULL;

                if (msg->msg != CURLMSG_DONE)
                        continue;
                n++;
                if (curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &r) != CURLE_OK || !r)
                        continue;
                r->result = msg->data.result;
                (void) curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
                (void) curl_multi_remove_handle(h->multi, r->easy);
                r->running = false;
                h->in_flight--;
                r->duration = usec_sub(now(CLOCK_REALTIME), r->sent_at);
                /* done may free r: it must be the last thing we touch */
                r->done(r, r->userdata);
        }
        /* left counts the messages after the last one read; done() may
         * have started or freed transfers since: look again next turn */
        if (n >= HTTP_DONE_PER_TURN && left > 0 && h->more_done) {
                if (event_round_defer(h->event, &h->round))
                        (void) sd_event_source_set_enabled(h->more_done, SD_EVENT_ONESHOT);
                else
                        (void) timer_cb(h->multi, 0, h);   /* the loop polls first (event-round.h) */
        }
}

static void after(Http *h) {
        if (h->after)
                h->after(h->after_userdata);
}

/* Takes fd out of the epoll set (while it is open); its entry stays. */
static void socket_unwatch(Http *h, HttpSocket *hs) {
        if (hs->events != 0) {
                (void) epoll_ctl(h->epfd, EPOLL_CTL_DEL, hs->fd, NULL);
                hs->events = 0;
        }
}

static int socket_watch(Http *h, HttpSocket *hs, uint32_t events) {
        struct epoll_event ev = { .events = events, .data.fd = hs->fd };

        if (hs->events == events)
                return 0;
        if (epoll_ctl(h->epfd, hs->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, hs->fd, &ev) < 0)
                return -errno;
        hs->events = events;
        return 0;
}

static void socket_ready(Http *h, int fd, uint32_t revents) {
        HttpSocket *hs = fd >= 0 && (size_t) fd < h->n_sockets ? h->sockets[fd] : NULL;
        int action = 0, running;

        if (hs && hs->idle) {
                /* a kept-alive connection curl does not watch: the server
                 * closed it (or sent what nobody asked for). Out of the
                 * set until curl reuses it (its check finds it dead) or
                 * closes it. */
                socket_unwatch(h, hs);
                return;
        }
        if (!hs)
                return;   /* closed by what an earlier one in this turn ran */

        if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR))
                action |= CURL_CSELECT_IN;
        if (revents & EPOLLOUT)
                action |= CURL_CSELECT_OUT;
        if (revents & EPOLLERR)
                action |= CURL_CSELECT_ERR;
        (void) curl_multi_socket_action(h->multi, fd, action, &running);
}

/* The epoll set is readable: serve HTTP_SOCKETS_PER_TURN ready sockets at
 * most; it stays readable (level-triggered) for the rest. */
static int on_epoll(sd_event_source *s _unused_, int fd _unused_, uint32_t revents _unused_, void *userdata) {
        struct epoll_event ev[HTTP_SOCKETS_PER_TURN];
        Http *h = userdata;
        int n;

        n = epoll_wait(h->epfd, ev, ELEMENTSOF(ev), 0);
        for (int i = 0; i < n; i++)
                socket_ready(h, ev[i].data.fd, ev[i].events);
        http_check_done(h);
        after(h);
        return 0;
}

static int on_more_done(sd_event_source *s _unused_, void *userdata) {
        Http *h = userdata;

        http_check_done(h);
        after(h);
        return 0;
}

static void run_timeouts(Http *h) {
        long ms = -1;
        int running;

        (void) curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        http_check_done(h);
        /* the timer may have fired before curl's deadline (it only ever
         * moves earlier, below), and curl names a deadline only once: ask */
        if (h->armed == USEC_INFINITY && curl_multi_timeout(h->multi, &ms) == CURLM_OK && ms >= 0)
                (void) timer_cb(h->multi, ms, h);
}

static int on_timer(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        Http *h = userdata;

        h->armed = USEC_INFINITY;
        run_timeouts(h);
        after(h);
        return 0;
}

static int on_asap(sd_event_source *s _unused_, void *userdata) {
        Http *h = userdata;

        run_timeouts(h);
        after(h);
        return 0;
}

bool http_run_pending(Http *h) {
        int enabled = SD_EVENT_OFF;

        if (!h->asap || sd_event_source_get_enabled(h->asap, &enabled) < 0 || enabled == SD_EVENT_OFF)
                return false;
        (void) sd_event_source_set_enabled(h->asap, SD_EVENT_OFF);
        run_timeouts(h);
        return true;
}

void http_set_after(Http *h, void (*fn)(void *userdata), void *userdata) {
        h->after = fn;
        h->after_userdata = userdata;
}

static HttpSocket *socket_free(Http *h, HttpSocket *hs) {
        if (!hs)
                return NULL;
        if ((size_t) hs->fd < h->n_sockets && h->sockets[hs->fd] == hs)
                h->sockets[hs->fd] = NULL;
        socket_unwatch(h, hs);
        free(hs);
        return NULL;
}

/* The table slot of descriptor fd, grown as needed; NULL: out of memory. */
static HttpSocket **socket_slot(Http *h, curl_socket_t fd) {
        if (fd < 0)
                return NULL;
        if ((size_t) fd >= h->n_sockets) {
                size_t n = MAX((size_t) fd + 1, h->n_sockets * 2);
                HttpSocket **a = reallocarray(h->sockets, n, sizeof *a);

                if (!a)
                        return NULL;
                memset(a + h->n_sockets, 0, (n - h->n_sockets) * sizeof *a);
                h->sockets = a;
                h->n_sockets = n;
        }
        return &h->sockets[fd];
}

static HttpSocket *socket_new(Http *h, curl_socket_t fd, bool owned) {
        HttpSocket **slot = socket_slot(h, fd);
        HttpSocket *hs;

        if (!slot)
                return NULL;
        /* a stale entry (its descriptor closed behind our back): dropped
         * while the new descriptor of that number is in no epoll set */
        socket_free(h, *slot);
        hs = new0(HttpSocket, 1);
        if (!hs)
                return NULL;
        hs->fd = fd;
        hs->owned = owned;
        *slot = hs;
        return hs;
}

static int socket_cb(CURL *easy _unused_, curl_socket_t fd, int what, void *userp, void *socketp) {
        Http *h = userp;
        HttpSocket *hs = socketp;
        uint32_t events = 0;

        if (!hs && fd >= 0 && (size_t) fd < h->n_sockets)
                hs = h->sockets[fd];   /* one of ours, new or idle */
        if (what == CURL_POLL_REMOVE) {
                if (!hs)
                        return 0;
                (void) curl_multi_assign(h->multi, fd, NULL);
                if (!hs->owned || hs->events == 0) {
                        /* not a connection of ours (the threaded resolver's
                         * socket pair, closed without close_socket()): out
                         * of epoll now, while the descriptor is open */
                        socket_free(h, hs);
                        return 0;
                }
                /* a kept-alive connection: stays in epoll, reading, until
                 * curl uses or closes it */
                hs->idle = true;
                (void) socket_watch(h, hs, EPOLLIN);
                return 0;
        }
        if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
                events |= EPOLLIN;
        if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
                events |= EPOLLOUT;

        if (!hs && !(hs = socket_new(h, fd, false)))
                return -1;
        if (!socketp && curl_multi_assign(h->multi, fd, hs) != CURLM_OK)
                return -1;
        hs->idle = false;
        if (socket_watch(h, hs, events) < 0) {
                if (hs->events == 0) {
                        (void) curl_multi_assign(h->multi, fd, NULL);
                        socket_free(h, hs);
                }
                return -1;
        }
        return 0;
}

/* Every socket curl opens for a connection of the multi: ours until
 * close_socket(). */
static curl_socket_t open_socket(void *userdata, curlsocktype purpose, struct curl_sockaddr *a) {
        Http *h = userdata;
        curl_socket_t fd = http_open_socket(NULL, purpose, a);

        if (fd >= 0 && h && !socket_new(h, fd, true)) {
                close(fd);
                return CURL_SOCKET_BAD;
        }
        return fd;
}

/* Every socket curl closes: its io source goes first (out of epoll while
 * the descriptor is still open, so a new socket of the same number starts
 * clean). CURLOPT_CLOSESOCKETDATA is the Http, which outlives the
 * connections (curl_multi_cleanup() closes them first). */
static int close_socket(void *userdata, curl_socket_t fd) {
        Http *h = userdata;

        if (h && fd >= 0 && (size_t) fd < h->n_sockets)
                socket_free(h, h->sockets[fd]);
        return close(fd);
}

/* Curl's deadlines: the timer only ever moves earlier (a request's
 * connect and speed limits move with each request; moving the timerfd
 * each time costs a syscall, on a VM a hypervisor exit), and a timer that
 * fires early asks curl for the real deadline (run_timeouts()). "No
 * deadline" leaves it armed: one early wake-up at most. */
static int timer_cb(CURLM *multi _unused_, long timeout_ms, void *userp) {
        Http *h = userp;
        usec_t when;

        if (timeout_ms < 0)
                return 0;
        if (timeout_ms == 0 && h->asap && event_round_defer(h->event, &h->round))
                /* every new request asks for this: on the loop's next
                 * turn; after EVENT_ROUND_DEFERS turns of it in a row,
                 * the timer below at now (the loop polls first) */
                return sd_event_source_set_enabled(h->asap, SD_EVENT_ONESHOT) < 0 ? -1 : 0;
        when = usec_add(now(CLOCK_MONOTONIC), (usec_t) timeout_ms * USEC_PER_MSEC);
        if (h->armed != USEC_INFINITY && h->armed <= when)
                return 0;
        if (sd_event_source_set_time(h->timer, when) < 0 ||
            sd_event_source_set_enabled(h->timer, SD_EVENT_ONESHOT) < 0)
                return -1;
        h->armed = when;
        return 0;
}

int http_new(sd_event *event, Http **ret) {
        _cleanup_(http_freep) Http *h = NULL;
        int r;

        h = new0(Http, 1);
        if (!h)
                return -ENOMEM;
        h->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (h->epfd < 0)
                return -errno;
        h->event = sd_event_ref(event);
        r = sd_event_add_io(event, &h->epoll_source, h->epfd, EPOLLIN, on_epoll, h);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(h->epoll_source, "curl-io");
        r = sd_event_add_defer(event, &h->more_done, on_more_done, h);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(h->more_done, SD_EVENT_OFF);
        (void) sd_event_source_set_description(h->more_done, "curl-done");
        h->multi = curl_multi_init();
        if (!h->multi)
                return -ENOMEM;
        r = sd_event_add_time(event, &h->timer, CLOCK_MONOTONIC, USEC_INFINITY, 1, on_timer, h);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(h->timer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(h->timer, "curl-timer");
        h->armed = USEC_INFINITY;
        r = sd_event_add_defer(event, &h->asap, on_asap, h);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(h->asap, SD_EVENT_OFF);
        (void) sd_event_source_set_description(h->asap, "curl-asap");

        if (curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb) != CURLM_OK ||
            curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h) != CURLM_OK ||
            curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb) != CURLM_OK ||
            curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h) != CURLM_OK ||
            curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 16L) != CURLM_OK ||
            curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, 64L) != CURLM_OK)
                return -EIO;
        *ret = TAKE_PTR(h);
        return 0;
}

Http *http_free(Http *h) {
        if (!h)
                return NULL;
        /* Requests are owned by their callers, who free them first. */
        if (h->multi)
                curl_multi_cleanup(h->multi);   /* closes its connections: close_socket() */
        for (size_t i = 0; i < h->n_sockets; i++)
                socket_free(h, h->sockets[i]);
        free(h->sockets);
        while (h->n_pool > 0)
                curl_easy_cleanup(h->pool[--h->n_pool]);
        sd_event_source_disable_unref(h->timer);
        sd_event_source_disable_unref(h->asap);
        sd_event_source_disable_unref(h->more_done);
        sd_event_source_disable_unref(h->epoll_source);
        safe_close(h->epfd);
        sd_event_unref(h->event);
        egress_clear(h);
        free(h);
        return NULL;
}

unsigned http_in_flight(const Http *h) {
        return h->in_flight;
}

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata) {
        HttpRequest *r = userdata;
        size_t n = size * nmemb;
        char *b;

        if (n > HTTP_BODY_MAX - r->body_len) {
                r->too_large = true;
                return 0;   /* aborts the transfer with CURLE_WRITE_ERROR */
        }
        b = realloc(r->body, r->body_len + n + 1);
        if (!b)
                return 0;
        r->body = b;
        memcpy(r->body + r->body_len, ptr, n);
        r->body_len += n;
        r->body[r->body_len] = 0;
        return n;
}

static char *header_value(const char *line, size_t n, const char *name) {
        size_t l = strlen(name);
        const char *v, *end = line + n;

        if (n <= l || strncasecmp(line, name, l) != 0 || line[l] != ':')
                return NULL;
        v = line + l + 1;
        while (v < end && (*v == ' ' || *v == '\t'))
                v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
                end--;
        return strndup(v, (size_t) (end - v));
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *userdata) {
        HttpRequest *r = userdata;
        size_t n = size * nitems;
        char *v;

        if (r->keep_headers) {
                size_t k = n;
                char *t;

                if (n >= 5 && memcmp(buf, "HTTP/", 5) == 0)
                        r->resp_headers_len = 0;   /* a new answer (after a 100 Continue) */
                if (k > HTTP_HEADERS_KEPT - r->resp_headers_len)
                        k = HTTP_HEADERS_KEPT - r->resp_headers_len;
                if (k > 0 && (t = realloc(r->resp_headers, r->resp_headers_len + k + 1))) {
                        memcpy(t + r->resp_headers_len, buf, k);
                        r->resp_headers = t;
                        r->resp_headers_len += k;
                        t[r->resp_headers_len] = 0;
                }
        }
        if ((v = header_value(buf, n, "Retry-After"))) {
                free(r->retry_after);
                r->retry_after = v;
        } else if ((v = header_value(buf, n, "Content-Type"))) {
                free(r->content_type);
                r->content_type = v;
        }
        return n;
}
/* Curl's sockets, close-on-exec like every descriptor of the daemon: a
 * notify_command must not inherit a keep-alive connection to a provider. */
curl_socket_t http_open_socket(void *userdata _unused_, curlsocktype purpose _unused_, struct curl_sockaddr *a) {
        return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}


int http_request_new(Http *h, const char *method, const char *url, HttpRequest **ret) {
        _cleanup_(http_request_freep) HttpRequest *r = NULL;

        r = new0(HttpRequest, 1);
        if (!r)
                return -ENOMEM;
        r->http = h;
        snprintf(r->method, sizeof r->method, "%s", method);
        r->url = strdup(url);
        /* h is NULL for a request only built, never sent (tests, preview) */
        r->easy = h && h->n_pool > 0 ? h->pool[--h->n_pool] : curl_easy_init();
        if (!r->easy || !r->url)
                return -ENOMEM;

        if (curl_easy_setopt(r->easy, CURLOPT_URL, url) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_PRIVATE, r) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_WRITEFUNCTION, write_cb) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_WRITEDATA, r) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_HEADERFUNCTION, header_cb) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_HEADERDATA, r) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_ERRORBUFFER, r->errbuf) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
            /* TLS verification is never turned off. */
            curl_easy_setopt(r->easy, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_USERAGENT, "tokenbroker/0.1") != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_CUSTOMREQUEST, method) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_OPENSOCKETFUNCTION, open_socket) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_OPENSOCKETDATA, h) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_CLOSESOCKETFUNCTION, close_socket) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_CLOSESOCKETDATA, h) != CURLE_OK)
                return -EINVAL;
        /* h is NULL for a request only built, never sent (tests, preview) */
        if (h && egress_apply(r->easy, h->ca_file, h->connect_to, h->n_connect_to, &r->connect_to) < 0)
                return -EINVAL;
        if (streq(method, "GET"))
                (void) curl_easy_setopt(r->easy, CURLOPT_HTTPGET, 1L);

        if (http_request_add_header(r, "Accept: application/json") < 0)
                return -ENOMEM;
        *ret = TAKE_PTR(r);
        return 0;
}

int http_request_add_header(HttpRequest *r, const char *line) {
        struct curl_slist *l;

        /* A CR or LF would end the line and inject another header: refused
         * here, whatever template or value built the line. */
        if (string_has_ctl(line))
                return -EBADMSG;
        l = curl_slist_append(r->headers, line);
        if (!l)
                return -ENOMEM;
        r->headers = l;
        return 0;
}

int http_request_set_body(HttpRequest *r, const char *content_type, char *data, size_t len) {
        char ct[256];
        int k;

        k = snprintf(ct, sizeof ct, "Content-Type: %s", content_type);
        if (k < 0 || (size_t) k >= sizeof ct) {
                secret_free(data);
                return -EINVAL;
        }
        if (http_request_add_header(r, ct) < 0) {
                secret_free(data);
                return -ENOMEM;
        }
        if (r->post_data)
                explicit_wipe(r->post_data, r->post_len);
        free(r->post_data);
        r->post_data = data;
        r->post_len = len;
        if (curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, r->post_data) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) len) != CURLE_OK)
                return -EINVAL;
        return 0;
}

int http_request_start(HttpRequest *r, usec_t timeout, http_done_fn done, void *userdata) {
        assert(!r->running);

        r->done = done;
        r->userdata = userdata;
        if (timeout == USEC_INFINITY) {
                /* the caller set its own timeouts (the proxy: no total) */
                if (curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers) != CURLE_OK)
                        return -EINVAL;
        } else if (curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS, (long) (timeout / USEC_PER_MSEC)) != CURLE_OK ||
            curl_easy_setopt(r->easy, CURLOPT_CONNECTTIMEOUT_MS,
                             (long) MIN(timeout, 10 * USEC_PER_SEC) / (long) USEC_PER_MSEC) != CURLE_OK)
                return -EINVAL;
        r->sent_at = now(CLOCK_REALTIME);
        if (curl_multi_add_handle(r->http->multi, r->easy) != CURLM_OK)
                return -EIO;
        r->running = true;
        r->http->in_flight++;
        return 0;
}

HttpRequest *http_request_free(HttpRequest *r) {
        if (!r)
                return NULL;
        if (r->running) {
                (void) curl_multi_remove_handle(r->http->multi, r->easy);
                r->http->in_flight--;
        }
        if (r->easy && r->http && r->http->n_pool < HTTP_POOL_MAX) {
                /* every option back to its default (headers, body, URL,
                 * callbacks); the connection cache is the multi's */
                curl_easy_reset(r->easy);
                r->http->pool[r->http->n_pool++] = r->easy;
        } else if (r->easy)
                curl_easy_cleanup(r->easy);
        curl_slist_free_all(r->headers);   /* may hold an Authorization header */
        curl_slist_free_all(r->connect_to);
        secret_free(r->url);
        if (r->post_data)
                explicit_wipe(r->post_data, r->post_len);
        free(r->post_data);
        if (r->body)
                explicit_wipe(r->body, r->body_len);
        free(r->body);
        free(r->retry_after);
        free(r->content_type);
        if (r->resp_headers)
                explicit_wipe(r->resp_headers, r->resp_headers_len);   /* a Set-Cookie */
        free(r->resp_headers);
        free(r);
        return NULL;
}

const char *http_request_strerror(const HttpRequest *r) {
        if (r->too_large)
                return "response larger than 1 MiB";
        if (r->result != CURLE_OK)
                return curl_easy_strerror(r->result);
        return "ok";
}
