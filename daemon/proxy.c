/* SPDX-License-Identifier: MIT */

/* The auth-injecting proxy: see proxy.h. Everything runs on the loop.
 * The two sides are joined by two rings:
 *
 *   client body -> MHD handler -> up ring   -> curl read callback  -> API
 *   client      <- MHD reader  <- down ring <- curl write callback <- API
 *
 * A full ring pauses its writer (the MHD connection is suspended, curl's
 * write callback returns CURL_WRITEFUNC_PAUSE), an empty one its reader
 * (suspended again, CURL_READFUNC_PAUSE); the other side wakes it. curl is
 * only ever unpaused from MHD's callbacks and MHD only ever resumed (its
 * inter-thread channel wakes the loop) from curl's, never re-entered. */

#include <jansson.h>
#include <strings.h>

#include "common/api.h"
#include "common/log.h"
#include "common/util.h"
#include "daemon/api.h"
#include "daemon/http.h"
#include "daemon/oauth.h"
#include "daemon/proxy-path.h"
#include "daemon/proxy.h"

/* Upstream headers kept for the answer, all together. */
#define PROXY_HEADERS_MAX (64 * 1024)
#define PROXY_BLOCK (32 * 1024)

typedef struct Ring {
        char *buf;
        size_t head, len;
} Ring;

typedef struct ProviderCount {
        struct ProviderCount *next;
        char *name;
        unsigned n;
} ProviderCount;

struct ProxyCtx {
        Manager *manager;
        MhdLoop *loop;
        Proxy *all;
        ProviderCount *counts;
        sd_event_source *kick;     /* runs MHD once after connections were resumed */
        bool kicked;               /* kick enabled */
        bool pumping;
};

typedef enum RetryHow {
        RETRY_NONE,
        RETRY_NOW,                 /* the token changed since it was sent */
        RETRY_AFTER_REFRESH,
} RetryHow;

struct Proxy {
        ProxyCtx *ctx;
        Proxy *next, *prev;
        struct MHD_Connection *conn;
        char name[CONNECTION_NAME_MAX + 1];
        char *method;
        char *url;                 /* origin + path + client query, no token */
        char *origin;
        struct curl_slist *fwd;    /* the client's headers that go on */
        bool head;
        ProviderCount *count;

        /* the request body */
        bool has_body, streamed, body_done, have_content_type;
        curl_off_t content_length; /* -1: chunked */
        char *body;                /* kept (replayable) */
        size_t body_len;
        Ring up;
        bool read_paused;

        /* the upstream request */
        HttpRequest *req;
        char *sent_token;          /* secret: the token this attempt sent */
        unsigned attempt;
        RetryHow retry;
        Waiter waiter;
        Connection *waiting;       /* while waiting for a refresh */

        /* the answer */
        long status;
        bool headers_done, upstream_done, failed;
        struct curl_slist *resp_headers;
        size_t resp_headers_size;
        curl_off_t resp_length;    /* -1: unknown */
        Ring down;
        bool write_paused;
        unsigned err_status;
        char *err_body;
        const char *err_header;
        char err_value[16];

        bool suspended, queued;
};

/* ---- rings ------------------------------------------------------------- */

static size_t ring_space(const Ring *r) {
        return PROXY_RING - r->len;
}

static size_t ring_write(Ring *r, const char *data, size_t n) {
        size_t done = 0;

        if (!r->buf && !(r->buf = malloc(PROXY_RING)))
                return 0;
        n = MIN(n, ring_space(r));
        while (done < n) {
                size_t tail = (r->head + r->len) % PROXY_RING;
                size_t k = MIN(n - done, PROXY_RING - tail);

                memcpy(r->buf + tail, data + done, k);
                r->len += k;
                done += k;
        }
        return done;
}

static size_t ring_read(Ring *r, char *out, size_t n) {
        size_t done = 0;

        n = MIN(n, r->len);
        while (done < n) {
                size_t k = MIN(n - done, PROXY_RING - r->head);

                memcpy(out + done, r->buf + r->head, k);
                r->head = (r->head + k) % PROXY_RING;
                r->len -= k;
                done += k;
        }
        if (r->len == 0)
                r->head = 0;
        return done;
}

static void ring_free(Ring *r) {
        free(r->buf);
        *r = (Ring) {};
}

/* ---- MHD side: suspend and wake ---------------------------------------- */

static void suspend(Proxy *p) {
        if (p->suspended)
                return;
        MHD_suspend_connection(p->conn);
        p->suspended = true;
}

/* Something p waits for may have happened: MHD calls the handler or the
 * reader again, which suspends again if not. */
static void wake(Proxy *p) {
        if (!p->suspended)
                return;
        p->suspended = false;
        MHD_resume_connection(p->conn);
        /* MHD handles a resumed connection on its next run: have one soon,
         * from the loop (never from inside curl's or MHD's callbacks) */
        if (p->ctx && p->ctx->kick && !p->ctx->kicked) {
                (void) sd_event_source_set_enabled(p->ctx->kick, SD_EVENT_ONESHOT);
                p->ctx->kicked = true;
        }
}

static int on_kick(sd_event_source *s _unused_, void *userdata) {
        ProxyCtx *x = userdata;

        x->kicked = false;
        mhd_loop_kick(x->loop);
        return 0;
}

/* After MHD ran (a request started a transfer: curl asked to run at once)
 * or curl ran (a transfer woke a suspended request): the other side's
 * turn now, in the same turn of the loop, rather than through a defer
 * source each (a loop turn costs an epoll_wait() and more). Outside both
 * libraries' callbacks; a few rounds at most, the rest on the next turn. */
static void pump(void *userdata) {
        ProxyCtx *x = userdata;

        if (x->pumping)
                return;   /* called from the kick or the curl run below */
        x->pumping = true;
        for (unsigned i = 0; i < 4; i++) {
                bool did = http_run_pending(x->manager->http);

                if (x->kicked) {
                        x->kicked = false;
                        (void) sd_event_source_set_enabled(x->kick, SD_EVENT_OFF);
                        mhd_loop_kick(x->loop);
                        did = true;
                }
                if (!did)
                        break;
        }
        x->pumping = false;
}

static void fail(Proxy *p, unsigned status, const char *error, const char *desc) {
        json_t *j;

        if (p->err_status)
                return;
        p->err_status = status;
        j = json_pack("{s:s, s:s}", "error", error, "error_description", desc);
        free(p->err_body);
        p->err_body = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
}

static void provider_count_put(Proxy *p) {
        if (p->count)
                p->count->n--;
        p->count = NULL;
}

/* ---- curl side --------------------------------------------------------- */

static bool hop_by_hop(const char *name, size_t n) {
        static const char *const hop[] = {
                "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
                "Proxy-Authenticate", "Proxy-Authorization", "Content-Length", "Date",
        };

        for (size_t i = 0; i < ELEMENTSOF(hop); i++)
                if (strlen(hop[i]) == n && strncasecmp(hop[i], name, n) == 0)
                        return true;
        return false;
}

static RetryHow retry_how(Proxy *p) {
        Manager *m = p->ctx->manager;
        Connection *c;

        if (p->attempt > 0 || (p->has_body && p->streamed))
                return RETRY_NONE;
        c = manager_get(m, p->name);
        if (!c || c->state != CONN_ACTIVE)
                return RETRY_NONE;
        if (!c->access_token || !p->sent_token || !streq(c->access_token, p->sent_token))
                return RETRY_NOW;
        if (connection_busy(c) || c->queued)
                return RETRY_AFTER_REFRESH;   /* joins the one under way */
        if (api_client_refresh_wait(c) > 0)
                return RETRY_NONE;            /* the invalidate limit: the 401 goes back */
        return RETRY_AFTER_REFRESH;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *userdata) {
        Proxy *p = userdata;
        size_t n = size * nitems, len = n;
        const char *colon, *v;
        char *line;

        if (p->headers_done)
                return n;   /* trailers: dropped */
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
                len--;
        if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
                const char *sp = memchr(buf, ' ', len);

                curl_slist_free_all(p->resp_headers);
                p->resp_headers = NULL;
                p->resp_headers_size = 0;
                p->resp_length = -1;
                p->status = sp && len - (size_t) (sp - buf) >= 4 ? strtol(sp + 1, NULL, 10) : 0;
                return n;
        }
        if (len == 0) {
                if (p->status >= 100 && p->status < 200)
                        return n;   /* interim: the real one follows */
                if (p->status == 401 && (p->retry = retry_how(p)) != RETRY_NONE)
                        return 0;   /* aborts; on_done() retries */
                if (p->status < 200 || p->status > 999) {
                        fail(p, 502, API_ERR_SERVER, "the API answered with no valid status");
                        return 0;
                }
                p->headers_done = true;
                wake(p);
                return n;
        }
        if (buf[0] == ' ' || buf[0] == '\t')
                return n;   /* obsolete line folding: dropped */
        colon = memchr(buf, ':', len);
        if (!colon || colon == buf)
                return n;
        if ((size_t) (colon - buf) == 14 && strncasecmp(buf, "Content-Length", 14) == 0) {
                p->resp_length = (curl_off_t) strtoll(colon + 1, NULL, 10);
                return n;
        }
        if (hop_by_hop(buf, (size_t) (colon - buf)))
                return n;
        /* A header that carries the token back (a Location keeping the
         * query, an echo): never to the client. */
        if (p->sent_token && memmem(buf, len, p->sent_token, strlen(p->sent_token)))
                return n;
        if (p->resp_headers_size + len > PROXY_HEADERS_MAX) {
                fail(p, 502, API_ERR_SERVER, "the API's answer headers are too large");
                return 0;
        }
        for (v = colon + 1; v < buf + len && (*v == ' ' || *v == '\t'); v++)
                ;
        if (asprintf(&line, "%.*s:%.*s", (int) (colon - buf), buf, (int) (buf + len - v), v) < 0)
                return 0;
        {
                struct curl_slist *l = curl_slist_append(p->resp_headers, line);
                free(line);
                if (!l)
                        return 0;
                p->resp_headers = l;
        }
        p->resp_headers_size += len;
        return n;
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *userdata) {
        Proxy *p = userdata;
        size_t n = size * nmemb;

        if (p->head)
                return n;   /* no body to a HEAD */
        if (n > ring_space(&p->down)) {
                p->write_paused = true;
                return CURL_WRITEFUNC_PAUSE;   /* curl keeps it and hands it over again */
        }
        if (ring_write(&p->down, ptr, n) != n)
                return 0;
        /* No room for another write: pause now rather than refuse the next
         * one (curl would copy a refused write aside, a malloc a chunk). */
        if (ring_space(&p->down) < CURL_MAX_WRITE_SIZE && p->req) {
                p->write_paused = true;
                (void) curl_easy_pause(p->req->easy, CURLPAUSE_RECV);
        }
        wake(p);
        return n;
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *userdata) {
        Proxy *p = userdata;
        size_t n = ring_read(&p->up, buf, size * nitems);

        if (n > 0) {
                wake(p);   /* room for more of the client's body */
                return n;
        }
        if (p->body_done)
                return 0;
        p->read_paused = true;
        return CURL_READFUNC_PAUSE;
}

static void unpause(Proxy *p) {
        if (p->req && (p->read_paused || p->write_paused)) {
                p->read_paused = p->write_paused = false;
                (void) curl_easy_pause(p->req->easy, CURLPAUSE_CONT);
        }
}

static int start_attempt(Proxy *p);

static void on_refreshed(Connection *c, int result, void *userdata) {
        Proxy *p = userdata;

        p->waiting = NULL;
        if (!p->streamed && !p->body_done)
                return;   /* the last call of the request starts it */
        if (result == -ECANCELED)
                fail(p, 404, API_ERR_NOT_FOUND, "connection was removed");
        else if (c->state == CONN_NEEDS_REAUTH || result == -EKEYREJECTED)
                fail(p, 409, API_ERR_NEEDS_REAUTH, "connection needs re-authorization");
        else if (!c->access_token || connection_ttl(c) == 0)
                fail(p, 503, API_ERR_UNAVAILABLE, "no valid token; provider unreachable");
        if (!p->err_status && start_attempt(p) < 0)
                fail(p, 502, API_ERR_SERVER, "cannot start the request to the API");
        wake(p);
}

/* Waits for a refresh of the connection (joining one under way). */
static int wait_refresh(Proxy *p, Connection *c, bool client_driven) {
        Manager *m = p->ctx->manager;
        bool starts = client_driven && !connection_busy(c) && !c->queued;
        int r;

        p->waiter = (Waiter) { .fn = on_refreshed, .userdata = p };
        r = refresher_refresh(m, c, &p->waiter);
        if (r < 0)
                return r;
        if (starts)
                c->client_refresh_8 = deadline_units(now(DEADLINE_CLOCK), CLIENT_REFRESH_UNIT);
        manager_wheel_rearm(m);
        p->waiting = c;
        return 0;
}

static void on_done(HttpRequest *req, void *userdata) {
        Proxy *p = userdata;
        Manager *m = p->ctx->manager;
        RetryHow how = p->retry;

        p->retry = RETRY_NONE;
        if (how != RETRY_NONE) {
                Connection *c = manager_get(m, p->name);

                p->req = http_request_free(req);
                p->attempt++;
                if (c && how == RETRY_AFTER_REFRESH && p->sent_token && c->access_token &&
                    streq(c->access_token, p->sent_token)) {
                        if (wait_refresh(p, c, true) < 0)
                                fail(p, 503, API_ERR_UNAVAILABLE, "cannot refresh the token");
                        wake(p);
                        return;
                }
                if (!c)
                        fail(p, 404, API_ERR_NOT_FOUND, "connection was removed");
                else if (start_attempt(p) < 0)
                        fail(p, 502, API_ERR_SERVER, "cannot start the request to the API");
                wake(p);
                return;
        }
        p->upstream_done = true;
        p->failed = req->result != CURLE_OK;
        if (!p->headers_done && p->failed)
                fail(p, req->result == CURLE_OPERATION_TIMEDOUT ? 504 : 502, API_ERR_SERVER,
                     http_request_strerror(req));
        else if (!p->headers_done)
                fail(p, 502, API_ERR_SERVER, "the API sent no answer");
        if (p->failed && p->headers_done)
                log_debug("proxy: %s: the API transfer failed mid-answer: %s", p->name, http_request_strerror(req));
        p->req = http_request_free(req);
        provider_count_put(p);
        wake(p);
}

/* Builds and starts one attempt with the connection's current token. */
static int start_attempt(Proxy *p) {
        Manager *m = p->ctx->manager;
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        _cleanup_free_ char *query = NULL;
        _cleanup_secret_ char *url = NULL;
        const Provider *prov;
        Connection *c;
        char **lines = NULL;
        size_t n = 0;
        int r;

        c = manager_get(m, p->name);
        prov = c ? manager_provider(m, c) : NULL;
        if (!c || !prov || !c->access_token)
                return -ENOENT;
        r = oauth_usage_headers(prov, c->access_token, c->names->token_type, &lines, &n, &query);
        if (r < 0)
                return r;
        if (query) {
                /* name=value, the value %-encoded */
                char *eq = strchr(query, '='), *enc;

                enc = eq ? curl_easy_escape(NULL, eq + 1, 0) : NULL;
                if (!enc || asprintf(&url, "%s%c%.*s=%s", p->url, strchr(p->url, '?') ? '&' : '?',
                                     (int) (eq - query), query, enc) < 0)
                        r = -ENOMEM;
                if (enc) {
                        explicit_wipe(enc, strlen(enc));
                        curl_free(enc);
                }
                explicit_wipe(query, strlen(query));
        }
        if (r >= 0)
                r = http_request_new(m->http, p->method, url ?: p->url, &req);
        if (r >= 0) {
                curl_slist_free_all(req->headers);   /* no default Accept: the client's go on */
                req->headers = NULL;
        }
        for (struct curl_slist *l = p->fwd; r >= 0 && l; l = l->next)
                r = http_request_add_header(req, l->data);
        for (size_t i = 0; i < n; i++) {
                if (r >= 0)
                        r = http_request_add_header(req, lines[i]);
                secret_free(lines[i]);
        }
        free(lines);
        if (r < 0)
                return r;
        if (http_request_add_header(req, "Expect:") < 0)
                return -ENOMEM;
        if (p->has_body && !p->have_content_type && http_request_add_header(req, "Content-Type:") < 0)
                return -ENOMEM;

        if (curl_easy_setopt(req->easy, CURLOPT_WRITEFUNCTION, on_write) != CURLE_OK ||
            curl_easy_setopt(req->easy, CURLOPT_WRITEDATA, p) != CURLE_OK ||
            curl_easy_setopt(req->easy, CURLOPT_HEADERFUNCTION, on_header) != CURLE_OK ||
            curl_easy_setopt(req->easy, CURLOPT_HEADERDATA, p) != CURLE_OK ||
            curl_easy_setopt(req->easy, CURLOPT_CONNECTTIMEOUT_MS,
                             (long) (MIN(prov->api_timeout ?: 10 * USEC_PER_SEC, 10 * USEC_PER_SEC) / USEC_PER_MSEC)) != CURLE_OK ||
            curl_easy_setopt(req->easy, CURLOPT_LOW_SPEED_LIMIT, prov->api_timeout ? 1L : 0L) != CURLE_OK ||
            curl_easy_setopt(req->easy, CURLOPT_LOW_SPEED_TIME, (long) (prov->api_timeout / USEC_PER_SEC)) != CURLE_OK)
                return -EINVAL;
        if (p->head)
                (void) curl_easy_setopt(req->easy, CURLOPT_NOBODY, 1L);
        if (p->has_body && !p->streamed) {
                if (curl_easy_setopt(req->easy, CURLOPT_POSTFIELDS, p->body ?: "") != CURLE_OK ||
                    curl_easy_setopt(req->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) p->body_len) != CURLE_OK)
                        return -EINVAL;
        } else if (p->has_body) {
                if (curl_easy_setopt(req->easy, CURLOPT_UPLOAD, 1L) != CURLE_OK ||
                    curl_easy_setopt(req->easy, CURLOPT_READFUNCTION, on_read) != CURLE_OK ||
                    curl_easy_setopt(req->easy, CURLOPT_READDATA, p) != CURLE_OK ||
                    curl_easy_setopt(req->easy, CURLOPT_INFILESIZE_LARGE, p->content_length) != CURLE_OK)
                        return -EINVAL;
        }
        secret_free(p->sent_token);
        p->sent_token = strdup(c->access_token);
        if (!p->sent_token)
                return -ENOMEM;
        p->read_paused = p->write_paused = false;
        p->status = 0;
        r = http_request_start(req, USEC_INFINITY, on_done, p);
        if (r < 0)
                return r;
        p->req = TAKE_PTR(req);
        return 0;
}

/* ---- the request ------------------------------------------------------- */

typedef struct HeaderScan {
        Proxy *p;
        const Provider *prov;
        const char *host;
        const char *origin_choice;
        const char *content_length;
        bool chunked;
        const char *connection;    /* the Connection header: the names it lists are hop-by-hop too */
        int error;
} HeaderScan;

static bool listed(const char *list, const char *name) {
        size_t n = strlen(name);

        for (const char *s = list; s && *s;) {
                s += strspn(s, " \t,");
                size_t k = strcspn(s, " \t,");
                if (k == n && strncasecmp(s, name, n) == 0)
                        return true;
                s += k;
        }
        return false;
}

static bool usage_sets(const Provider *prov, const char *name) {
        size_t n = strlen(name);

        for (size_t i = 0; i < prov->n_usage_header; i++) {
                const char *colon = strchr(prov->usage_header[i], ':');
                if (colon && (size_t) (colon - prov->usage_header[i]) == n &&
                    strncasecmp(prov->usage_header[i], name, n) == 0)
                        return true;
        }
        return false;
}

static enum MHD_Result scan_pass1(void *cls, enum MHD_ValueKind kind _unused_, const char *key, const char *value) {
        HeaderScan *s = cls;

        if (!key)
                return MHD_YES;
        if (strcasecmp(key, "Host") == 0) {
                if (s->host)
                        s->error = -ENOTUNIQ;   /* two Host headers: which counts? */
                s->host = value ?: "";
        } else if (strcasecmp(key, PROXY_ORIGIN_HEADER) == 0) {
                if (s->origin_choice)
                        s->error = -ENOTUNIQ;
                s->origin_choice = value ?: "";
        } else if (strcasecmp(key, "Content-Length") == 0)
                s->content_length = value;
        else if (strcasecmp(key, "Transfer-Encoding") == 0)
                s->chunked = true;
        else if (strcasecmp(key, "Connection") == 0)
                s->connection = value;
        return MHD_YES;
}

static enum MHD_Result scan_pass2(void *cls, enum MHD_ValueKind kind _unused_, const char *key, const char *value) {
        static const char *const dropped[] = {
                "Host", "Authorization", "Proxy-Authorization", "Cookie", "Connection", "Keep-Alive",
                "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length", "Expect",
                "Forwarded",
        };
        HeaderScan *s = cls;
        _cleanup_free_ char *line = NULL;
        struct curl_slist *l;

        if (!key || s->error)
                return MHD_YES;
        for (size_t i = 0; i < ELEMENTSOF(dropped); i++)
                if (strcasecmp(key, dropped[i]) == 0)
                        return MHD_YES;
        if (strncasecmp(key, "X-Tokenbroker-", 14) == 0 || strncasecmp(key, "X-Forwarded-", 12) == 0 ||
            listed(s->connection, key) || usage_sets(s->prov, key))
                return MHD_YES;
        if (strcasecmp(key, "Content-Type") == 0)
                s->p->have_content_type = true;
        value = value ?: "";
        if (asprintf(&line, *value ? "%s: %s" : "%s;", key, value) < 0) {
                s->error = -ENOMEM;
                return MHD_NO;
        }
        if (string_has_ctl(line))
                return MHD_YES;
        l = curl_slist_append(s->p->fwd, line);
        if (!l) {
                s->error = -ENOMEM;
                return MHD_NO;
        }
        s->p->fwd = l;
        return MHD_YES;
}

static enum MHD_Result refuse(struct MHD_Connection *conn, unsigned status, const char *error, const char *desc) {
        json_t *j = json_pack("{s:s, s:s}", "error", error, "error_description", desc);
        char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;

        json_decref(j);
        return mhd_respond(conn, status, "application/json", body, status == 503 ? "Retry-After" : NULL, "1");
}

static bool query_has_param(const char *q, const char *name, size_t n) {
        for (const char *s = q; s && *s;) {
                size_t k = strcspn(s, "&");
                size_t kn = strcspn(s, "=&");
                if (kn == n && strncmp(s, name, n) == 0)
                        return true;
                s += k;
                if (*s)
                        s++;
        }
        return false;
}

enum MHD_Result proxy_begin(ProxyCtx *x, struct MHD_Connection *conn, const Peer *peer, const char *method,
                            const char *raw, Proxy **ret) {
        Manager *m = x->manager;
        ProxyTarget t;
        HeaderScan scan = {};
        const Provider *prov;
        Connection *c;
        const char *origin;
        ProviderCount *pc;
        Proxy *p;
        int k;

        *ret = NULL;
        k = proxy_target_parse(raw, &t);
        if (!peer)
                return refuse(conn, 403, API_ERR_FORBIDDEN, "cannot identify the peer");
        c = t.name[0] ? manager_get(m, t.name) : NULL;
        /* Unknown and forbidden look the same to a peer that may not know
         * which connections exist; nothing is forwarded for either. */
        if (!c || !peer_may_read(peer, c)) {
                if (peer->admin)
                        return refuse(conn, 404, API_ERR_NOT_FOUND, "unknown connection");
                return refuse(conn, 403, API_ERR_FORBIDDEN, "peer not allowed");
        }
        if (k == -EMSGSIZE)
                return refuse(conn, 414, API_ERR_INVALID_REQUEST, "request target too long");
        if (k < 0)
                return refuse(conn, 400, API_ERR_INVALID_REQUEST,
                              "the path could leave the API origin (a scheme, '..', '@', '\\', %2f, %5c, %2e, '//' "
                              "or a bad escape)");
        prov = manager_provider(m, c);
        if (!prov || prov->n_api_url == 0)
                return refuse(conn, 400, API_ERR_INVALID_REQUEST, "the provider names no api_url: nothing to proxy to");

        p = new0(Proxy, 1);
        if (!p)
                return MHD_NO;
        scan.p = p;
        scan.prov = prov;
        (void) MHD_get_connection_values(conn, MHD_HEADER_KIND, scan_pass1, &scan);
        origin = prov->api_url[0];
        if (!scan.error && scan.origin_choice) {
                origin = NULL;
                for (size_t i = 0; i < prov->n_api_url; i++)
                        if (strcasecmp(prov->api_url[i], scan.origin_choice) == 0)
                                origin = prov->api_url[i];
                if (!origin) {
                        free(p);
                        return refuse(conn, 400, API_ERR_INVALID_REQUEST,
                                      PROXY_ORIGIN_HEADER " is not one of the provider's api_url origins");
                }
        }
        if (scan.error || !proxy_host_ok(scan.host, origin)) {
                free(p);
                return refuse(conn, 400, API_ERR_INVALID_REQUEST,
                              "a Host header that names another host (the origin comes from api_url)");
        }
        if (prov->usage_query) {
                const char *q = strchr(t.path, '?');
                size_t n = strcspn(prov->usage_query, "=");

                if (q && query_has_param(q + 1, prov->usage_query, n)) {
                        free(p);
                        return refuse(conn, 400, API_ERR_INVALID_REQUEST, "the query sets the token's own parameter");
                }
        }
        (void) MHD_get_connection_values(conn, MHD_HEADER_KIND, scan_pass2, &scan);
        p->ctx = x;
        p->conn = conn;
        p->resp_length = -1;
        p->content_length = -1;
        snprintf(p->name, sizeof p->name, "%s", t.name);
        p->head = streq(method, "HEAD");
        p->method = strdup(method);
        p->origin = strdup(origin);
        if (!p->method || !p->origin || scan.error ||
            asprintf(&p->url, "%s%s%s", origin, t.path_len == 0 ? "/" : "", t.path) < 0) {
                proxy_free(p);
                return MHD_NO;
        }
        p->next = x->all;
        if (x->all)
                x->all->prev = p;
        x->all = p;

        if (scan.chunked)
                p->has_body = p->streamed = true;
        else if (scan.content_length) {
                char *end;
                errno = 0;
                unsigned long long cl = strtoull(scan.content_length, &end, 10);
                if (errno || end == scan.content_length || *end) {
                        proxy_free(p);
                        return refuse(conn, 400, API_ERR_INVALID_REQUEST, "bad Content-Length");
                }
                p->content_length = (curl_off_t) cl;
                p->has_body = cl > 0 || !streq(method, "GET");
                p->streamed = cl > PROXY_REPLAY_MAX;
        }
        /* proxied requests to one provider at once */
        for (pc = x->counts; pc && !streq(pc->name, prov->name); pc = pc->next)
                ;
        if (!pc) {
                pc = new0(ProviderCount, 1);
                if (!pc || !(pc->name = strdup(prov->name))) {
                        free(pc);
                        proxy_free(p);
                        return MHD_NO;
                }
                pc->next = x->counts;
                x->counts = pc;
        }
        if (prov->api_max_connections > 0 && pc->n >= prov->api_max_connections) {
                proxy_free(p);
                return refuse(conn, 503, API_ERR_UNAVAILABLE, "too many proxied requests to this provider at once");
        }
        pc->n++;
        p->count = pc;

        if (c->state == CONN_NEEDS_REAUTH) {
                proxy_free(p);
                return refuse(conn, 409, API_ERR_NEEDS_REAUTH, "connection needs re-authorization");
        }
        if (c->state != CONN_ACTIVE || !c->access_token) {
                proxy_free(p);
                return refuse(conn, 409, API_ERR_PENDING, "authorization not completed");
        }
        *ret = p;
        if (connection_ttl(c) == 0) {
                /* expired: a refresh first, as GET .../token would */
                if (connection_retry_at(c) > now(DEADLINE_CLOCK) || wait_refresh(p, c, false) < 0)
                        fail(p, 503, API_ERR_UNAVAILABLE, "no valid token; provider unreachable");
                return MHD_YES;
        }
        if (p->streamed && start_attempt(p) < 0)
                fail(p, 502, API_ERR_SERVER, "cannot start the request to the API");
        return MHD_YES;
}

static enum MHD_Result respond_error(Proxy *p) {
        char *body = TAKE_PTR(p->err_body);

        p->queued = true;
        snprintf(p->err_value, sizeof p->err_value, "%u", p->attempt > 0 ? 1u : 0u);
        return mhd_respond(p->conn, p->err_status, "application/json", body, PROXY_RETRIED_HEADER, p->err_value);
}

static ssize_t reader(void *cls, uint64_t pos _unused_, char *buf, size_t max) {
        Proxy *p = cls;
        size_t n = ring_read(&p->down, buf, max);

        if (n > 0) {
                /* curl goes on once a quarter is left: each pause costs
                 * curl and the loop a socket's removal and return */
                if (p->write_paused && p->down.len <= PROXY_RING / 4)
                        unpause(p);
                return (ssize_t) n;
        }
        if (p->upstream_done)
                return p->failed ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
        if (p->write_paused)
                unpause(p);   /* the ring is empty: room for anything */
        if (p->down.len > 0)
                return (ssize_t) ring_read(&p->down, buf, max);
        suspend(p);
        return 0;
}

static enum MHD_Result respond(Proxy *p) {
        struct MHD_Response *resp;
        enum MHD_Result ret;
        /* MHD 0.9.75 sends a chunked terminator after the headers of a HEAD
         * answer of unknown size: such an answer says Content-Length: 0 */
        bool no_body = p->status == 204 || p->status == 304 || (p->head && p->resp_length < 0);

        if (no_body)
                resp = MHD_create_response_from_buffer(0, (void *) "", MHD_RESPMEM_PERSISTENT);
        else if (p->upstream_done && !p->failed && !p->head) {
                /* the whole answer is in (most small ones): one buffer, sent
                 * with the headers, no reader round trip */
                size_t n = p->down.len;
                char *buf = malloc(MAX(n, (size_t) 1));

                if (!buf)
                        return MHD_NO;
                (void) ring_read(&p->down, buf, n);
                resp = MHD_create_response_from_buffer(n, buf, MHD_RESPMEM_MUST_FREE);
                if (!resp)
                        free(buf);
        } else
                resp = MHD_create_response_from_callback(p->resp_length >= 0 ? (uint64_t) p->resp_length
                                                                                : MHD_SIZE_UNKNOWN,
                                                         PROXY_BLOCK, reader, p, NULL);
        if (!resp)
                return MHD_NO;
        for (struct curl_slist *l = p->resp_headers; l; l = l->next) {
                char *colon = strchr(l->data, ':');

                if (!colon)
                        continue;
                *colon = 0;
                (void) MHD_add_response_header(resp, l->data, colon + 1);
                *colon = ':';
        }
        (void) MHD_add_response_header(resp, PROXY_RETRIED_HEADER, p->attempt > 0 ? "1" : "0");
        p->queued = true;
        ret = MHD_queue_response(p->conn, (unsigned) p->status, resp);
        MHD_destroy_response(resp);
        return ret;
}

enum MHD_Result proxy_handle(Proxy *p, const char *upload_data, size_t *upload_data_size) {
        if (p->queued) {
                *upload_data_size = 0;
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                size_t n = *upload_data_size;

                if (p->err_status || p->upstream_done || !p->has_body) {
                        *upload_data_size = 0;   /* nobody reads it */
                        return MHD_YES;
                }
                if (!p->streamed) {
                        char *b;

                        if (p->body_len + n > PROXY_REPLAY_MAX) {
                                fail(p, 413, API_ERR_INVALID_REQUEST, "request body larger than its Content-Length");
                                *upload_data_size = 0;
                                return MHD_YES;
                        }
                        b = realloc(p->body, p->body_len + n);
                        if (!b)
                                return MHD_NO;
                        memcpy(b + p->body_len, upload_data, n);
                        p->body = b;
                        p->body_len += n;
                        *upload_data_size = 0;
                        return MHD_YES;
                }
                n = ring_write(&p->up, upload_data, n);
                *upload_data_size -= n;
                if (n > 0 && p->read_paused)
                        unpause(p);
                if (*upload_data_size > 0)
                        suspend(p);   /* on_read() wakes it when there is room */
                return MHD_YES;
        }

        /* the whole request is in */
        if (!p->body_done) {
                p->body_done = true;
                if (p->streamed && p->read_paused)
                        unpause(p);   /* reads the end */
                if (!p->streamed && !p->err_status && !p->waiting && !p->req && start_attempt(p) < 0)
                        fail(p, 502, API_ERR_SERVER, "cannot start the request to the API");
        }
        if (p->err_status)
                return respond_error(p);
        if (p->headers_done)
                return respond(p);
        suspend(p);
        return MHD_YES;
}

void proxy_free(Proxy *p) {
        ProxyCtx *x;

        if (!p)
                return;
        x = p->ctx;
        if (x) {
                if (p->prev)
                        p->prev->next = p->next;
                else if (x->all == p)
                        x->all = p->next;
                if (p->next)
                        p->next->prev = p->prev;
        }
        if (p->waiting)
                refresher_detach_waiter(p->waiting, &p->waiter);
        http_request_free(p->req);
        provider_count_put(p);
        secret_free(p->sent_token);
        curl_slist_free_all(p->fwd);
        curl_slist_free_all(p->resp_headers);
        if (p->body)
                explicit_wipe(p->body, p->body_len);
        free(p->body);
        ring_free(&p->up);
        ring_free(&p->down);
        free(p->method);
        free(p->url);
        free(p->origin);
        free(p->err_body);
        free(p);
}

ProxyCtx *proxy_ctx_new(Manager *m, MhdLoop *loop) {
        ProxyCtx *x = new0(ProxyCtx, 1);

        if (!x)
                return NULL;
        x->manager = m;
        x->loop = loop;
        if (sd_event_add_defer(m->event, &x->kick, on_kick, x) < 0) {
                free(x);
                return NULL;
        }
        (void) sd_event_source_set_enabled(x->kick, SD_EVENT_OFF);
        (void) sd_event_source_set_description(x->kick, "proxy-kick");
        loop->after = pump;
        loop->after_userdata = x;
        http_set_after(m->http, pump, x);
        return x;
}

ProxyCtx *proxy_ctx_free(ProxyCtx *x) {
        if (!x)
                return NULL;
        /* MHD frees each Proxy (proxy_free(), from on_completed) as it
         * stops; here only what must happen before: no transfer left, no
         * connection suspended. */
        for (Proxy *p = x->all; p; p = p->next) {
                if (p->waiting)
                        refresher_detach_waiter(p->waiting, &p->waiter);
                p->waiting = NULL;
                p->req = http_request_free(p->req);
                p->upstream_done = p->failed = true;
                fail(p, 503, API_ERR_UNAVAILABLE, "shutting down");
                wake(p);
                p->ctx = NULL;
                provider_count_put(p);
        }
        x->all = NULL;
        if (x->loop->after_userdata == x)
                x->loop->after = NULL;
        http_set_after(x->manager->http, NULL, NULL);
        x->kick = sd_event_source_disable_unref(x->kick);
        while (x->counts) {
                ProviderCount *pc = x->counts;
                x->counts = pc->next;
                free(pc->name);
                free(pc);
        }
        free(x);
        return NULL;
}
