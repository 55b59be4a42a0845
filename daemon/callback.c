/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include "common/api.h"
#include "common/log.h"
#include "common/params.h"
#include "common/util.h"
#include "daemon/callback.h"
#include "daemon/links.h"
#include "daemon/mhd.h"
#include "daemon/pending.h"
#include "daemon/route.h"

#define CALLBACK_CONNECTIONS_MAX 256
/* Every local user connects from 127.0.0.1: a per-address limit would let
 * one of them lock everyone else out. Instead, at most this many
 * connections may wait for a request; when another is accepted, the one
 * that has waited longest is shut down. A browser's connection, the
 * newest, sends its request long before CALLBACK_WAITING_MAX others
 * arrive behind it. */
#define CALLBACK_WAITING_MAX 64
/* MHD's timeout is one of inactivity: a client sending a byte now and
 * then would hold its connection for ever (slowloris). The whole request
 * must therefore also arrive within CALLBACK_TIMEOUT_SEC of the connection
 * (or of the previous answer on a kept-alive one), else the connection is
 * shut down. A browser sends it at once. */
#define CALLBACK_TIMEOUT_SEC 10
#define CALLBACK_MEMORY_LIMIT (32 * 1024)

typedef struct CbRequest CbRequest;
typedef struct CbConn CbConn;

struct Callback {
        Manager *manager;
        MhdLoop loop;
        CbRequest *suspended;
        /* connections waiting for a request, earliest deadline first
         * (every deadline is now + CALLBACK_TIMEOUT_SEC: appending keeps
         * the order) */
        CbConn *waiting_head, *waiting_tail;
        unsigned n_waiting;
        sd_event_source *reaper;   /* fires at the head's deadline */
};

/* One TCP connection, for its request deadline. */
struct CbConn {
        Callback *cb;
        int fd;
        usec_t deadline;           /* CLOCK_MONOTONIC; USEC_INFINITY: not waiting */
        CbConn *next, *prev;
};

struct CbRequest {
        Callback *cb;
        struct MHD_Connection *conn;
        /* The query string as sent, at most CALLBACK_QUERY_MAX + 1 bytes
         * (enough for the parser to refuse it); NULL if there is none. */
        char *query;
        size_t query_len;
        Waiter waiter;
        Connection *target;
        bool started;              /* on_request() has seen it */
        bool suspended, answered;
        StoreWait *wait;           /* the store read it is suspended for (links, pending.h) */
        bool looked_up;            /* the state was looked up in the database */
        CbRequest *next, *prev;
        unsigned status;
        char *page;
};

char *html_escape(const char *s) {
        StrBuf b = {};

        for (; s && *s; s++) {
                switch (*s) {
                case '<': strbuf_puts(&b, "&lt;"); break;
                case '>': strbuf_puts(&b, "&gt;"); break;
                case '&': strbuf_puts(&b, "&amp;"); break;
                case '"': strbuf_puts(&b, "&quot;"); break;
                case '\'': strbuf_puts(&b, "&#39;"); break;
                default:
                        if ((unsigned char) *s < 0x20 || *s == 0x7f)
                                strbuf_puts(&b, "?");
                        else
                                strbuf_append(&b, s, 1);
                }
        }
        return strbuf_steal(&b);
}

/* ---- request deadlines ------------------------------------------------ */

static void reaper_rearm(Callback *cb) {
        if (!cb->reaper)
                return;
        if (!cb->waiting_head) {
                (void) sd_event_source_set_enabled(cb->reaper, SD_EVENT_OFF);
                return;
        }
        (void) sd_event_source_set_time(cb->reaper, cb->waiting_head->deadline);
        (void) sd_event_source_set_enabled(cb->reaper, SD_EVENT_ONESHOT);
}

static void waiting_unlink(CbConn *c) {
        Callback *cb = c->cb;

        if (c->deadline == USEC_INFINITY)
                return;
        if (c->prev)
                c->prev->next = c->next;
        else
                cb->waiting_head = c->next;
        if (c->next)
                c->next->prev = c->prev;
        else
                cb->waiting_tail = c->prev;
        c->next = c->prev = NULL;
        c->deadline = USEC_INFINITY;
        cb->n_waiting--;
}

/* Starts (wait) or stops (!wait) the wait for a complete request. O(1). */
static void conn_wait(CbConn *c, bool wait) {
        Callback *cb = c->cb;
        CbConn *head = cb->waiting_head;

        waiting_unlink(c);
        if (wait) {
                c->deadline = usec_add(now(CLOCK_MONOTONIC), CALLBACK_TIMEOUT_SEC * USEC_PER_SEC);
                c->prev = cb->waiting_tail;
                if (cb->waiting_tail)
                        cb->waiting_tail->next = c;
                else
                        cb->waiting_head = c;
                cb->waiting_tail = c;
                cb->n_waiting++;
        }
        if (cb->waiting_head != head)
                reaper_rearm(cb);
}

/* MHD sees end of file and closes the connection itself; the fd stays
 * MHD's until then. */
static void conn_shut(CbConn *c) {
        (void) shutdown(c->fd, SHUT_RDWR);
        waiting_unlink(c);
}

static int on_reap(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        Callback *cb = userdata;
        usec_t t = now(CLOCK_MONOTONIC);
        unsigned n = 0;

        while (cb->waiting_head && cb->waiting_head->deadline <= t) {
                conn_shut(cb->waiting_head);
                n++;
        }
        if (n > 0) {
                log_debug("callback: closed %u connection(s) that sent no complete request within %us.", n,
                          (unsigned) CALLBACK_TIMEOUT_SEC);
                mhd_loop_kick(&cb->loop);
        }
        reaper_rearm(cb);
        return 0;
}

static CbConn *cb_conn(struct MHD_Connection *conn) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

        return ci ? ci->socket_context : NULL;
}

/* Starts (timeout > 0) or stops (0) the wait for a complete request. */
static void cb_conn_deadline(struct MHD_Connection *conn, usec_t timeout) {
        CbConn *c = cb_conn(conn);

        if (c)
                conn_wait(c, timeout > 0);
}

static void on_notify_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                                 enum MHD_ConnectionNotificationCode toe) {
        Callback *cb = cls;
        CbConn *c;

        if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
                const union MHD_ConnectionInfo *ci =
                        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);

                c = ci ? new0(CbConn, 1) : NULL;
                *socket_context = c;
                if (!c) {
                        if (ci)
                                (void) shutdown(ci->connect_fd, SHUT_RDWR);
                        return;
                }
                c->cb = cb;
                c->fd = ci->connect_fd;
                c->deadline = USEC_INFINITY;
                /* Full: the longest-waiting connection makes room. */
                if (cb->n_waiting >= CALLBACK_WAITING_MAX) {
                        log_debug("callback: %u connections wait for a request; closing the oldest.",
                                  cb->n_waiting);
                        conn_shut(cb->waiting_head);
                }
                conn_wait(c, true);
        } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
                c = *socket_context;
                if (!c)
                        return;
                conn_wait(c, false);
                free(c);
                *socket_context = NULL;
        }
}

/* ---- pages ------------------------------------------------------------- */

static char *page(const char *title, const char *message) {
        _cleanup_free_ char *t = html_escape(title), *msg = html_escape(message);
        char *s;

        if (!t || !msg)
                return NULL;
        if (asprintf(&s,
                     "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>%s</title></head>\n"
                     "<body><h1>%s</h1>\n<p>%s</p>\n<p>You can close this window.</p></body></html>\n",
                     t, t, msg) < 0)
                return NULL;
        return s;
}

static void answer(CbRequest *r, unsigned status, const char *title, const char *msg) {
        r->answered = true;
        r->status = status;
        free(r->page);
        r->page = page(title, msg);
}

static void cb_resume(CbRequest *r) {
        Callback *cb = r->cb;

        if (!r->suspended)
                return;
        if (r->prev)
                r->prev->next = r->next;
        else
                cb->suspended = r->next;
        if (r->next)
                r->next->prev = r->prev;
        r->next = r->prev = NULL;
        r->suspended = false;
        MHD_resume_connection(r->conn);
}

static void cb_suspend(CbRequest *r) {
        /* Waiting for the provider or the database is not the client's
         * slowness. */
        cb_conn_deadline(r->conn, 0);
        MHD_suspend_connection(r->conn);
        r->suspended = true;
        r->next = r->cb->suspended;
        if (r->cb->suspended)
                r->cb->suspended->prev = r;
        r->cb->suspended = r;
}

/* A store read it waited for is there (or its time is up). */
static void cb_wake(void *userdata) {
        CbRequest *r = userdata;

        cb_resume(r);
        mhd_loop_kick(&r->cb->loop);
}

static void on_exchanged(Connection *c, int result, void *userdata) {
        CbRequest *r = userdata;
        char msg[512];

        r->target = NULL;
        if (result == 0) {
                snprintf(msg, sizeof msg, "Connection '%s' is active%s%s.", c->name,
                         connection_identity(c) ? ", authorized by " : "",
                         connection_identity(c) ?: "");
                answer(r, 200, "Authorized", msg);
        } else {
                snprintf(msg, sizeof msg, "Connection '%s' was not authorized: %s", c->name,
                         connection_last_error(c) ?: "the provider refused the code");
                answer(r, 502, "Authorization failed", msg);
        }
        cb_resume(r);
        mhd_loop_kick(&r->cb->loop);
}

/* RFC 9207 section 2.4: the iss a callback carries must be the issuer of
 * the provider the authorization was started at; a provider whose
 * discovery says it always sends iss must send it. NULL: acceptable. */
static const char *iss_refusal(const Provider *p, const char *iss) {
        size_t n;

        if (!iss)
                return p->iss_supported ? "the provider always sends iss, the callback has none" : NULL;
        if (!p->issuer)
                return NULL;   /* nothing to compare with */
        n = strlen(iss);
        if (n > 0 && iss[n - 1] == '/')
                n--;           /* the issuer is kept without its trailing slash */
        if (n != strlen(p->issuer) || strncmp(iss, p->issuer, n) != 0)
                return "the callback's iss is not the provider's issuer";
        return NULL;
}

/* via: the provider named by the callback's path (/oauth/callback/NAME),
 * NULL on the shared /oauth/callback. */
static void handle_callback(CbRequest *r, const char *via) {
        _cleanup_(callback_query_done) CallbackQuery q = {}, qc = {};
        Manager *m = r->cb->manager;
        const Provider *p;
        Connection *c;
        char hash[65];
        int k;

        /* Parsed for the state first: it names the connection, whose
         * provider names the parameter that carries the code. An empty
         * value is as good as none; %00 is refused, so "state%00junk"
         * cannot pass for state. */
        if (callback_query_parse(r->query, r->query_len, NULL, &q) < 0 || isempty(q.state))
                return answer(r, 400, "Authorization failed", "The request has no valid state parameter.");
        if (sha256_hex(q.state, strlen(q.state), hash) < 0)
                return answer(r, 500, "Authorization failed", "Internal error.");
        c = manager_get_pending(m, hash);
        /* Started on another node, not brought by the follower yet: the
         * database has it. */
        if (!c && !r->looked_up) {
                r->looked_up = true;
                if (pending_lookup(m, hash, &r->wait, cb_wake, r) > 0)
                        return cb_suspend(r);
        }
        r->wait = store_wait_release(r->wait);
        if (!c || connection_pending_until(c) < now(CLOCK_REALTIME))
                return answer(r, 400, "Authorization failed",
                              "Unknown or expired authorization request. Start it again with tokenctl authorize.");

        /* Mix-up defence (RFC 9700 section 4.4): the answer must come back
         * on the redirect URI this authorization was started with, which
         * names its provider, and from that provider's issuer. The state
         * stays pending: whoever sent this may know it, but not the code
         * for it from the right provider. */
        p = manager_provider(m, c);
        {
                const char *expected = p && !p->shared_callback ? p->name : NULL;
                const char *why = NULL;

                if (!p)
                        why = "its provider is no longer configured";
                else if (!streq_ptr(via, expected))
                        why = via ? "it came on another provider's redirect URI"
                                  : "it came on the shared redirect URI, the provider uses its own";
                else
                        why = iss_refusal(p, q.iss);
                if (why) {
                        log_warning("%s: callback refused (possible mix-up attack): %s.", c->name, why);
                        manager_event(m, c, "authorization-failed", "callback refused (possible mix-up attack): %s", why);
                        return answer(r, 400, "Authorization failed",
                                      "This answer does not belong to the provider the authorization was started at.");
                }
        }

        /* RFC 6749 section 4.1.2.1: the provider reports refusals here. */
        if (q.error) {
                char msg[700], err[101], desc[301];

                /* From the URL: any bytes. Escaped and cut between characters. */
                (void) text_escape(err, sizeof err, q.error, strlen(q.error));
                (void) text_escape(desc, sizeof desc, q.error_description,
                                   q.error_description ? strlen(q.error_description) : 0);
                snprintf(msg, sizeof msg, "The provider answered: %s%s%s", err, q.error_description ? ": " : "",
                         desc);
                log_warning("%s: provider refused the authorization: %s", c->name, err);
                return answer(r, 400, "Authorization failed", msg);
        }
        if (callback_query_parse(r->query, r->query_len, p->code_param, &qc) < 0 ||
            isempty(qc.code))
                return answer(r, 400, "Authorization failed", "The request has no authorization code.");

        /* "metadata NAME = query:PARAM" (Intuit's realmId): kept with the
         * connection, so the exchange and later requests can use it. */
        for (size_t i = 0; i < p->n_metadata; i++) {
                _cleanup_(callback_query_done) CallbackQuery qm = {};
                json_t *md = NULL;

                if (!p->metadata[i].query ||
                    callback_query_parse(r->query, r->query_len, p->metadata[i].query, &qm) < 0 || !qm.code)
                        continue;
                if (metadata_set(connection_metadata(c), p->metadata[i].name, qm.code, &md) > 0 &&
                    connection_set_metadata(c, md) < 0)
                        return answer(r, 500, "Authorization failed", "Internal error.");
        }

        /* The state is spent from here on, whatever the exchange says. */
        r->waiter = (Waiter) { .fn = on_exchanged, .userdata = r };
        k = refresher_exchange_code(m, c, qc.code, &r->waiter);
        if (k == -EBUSY)
                return answer(r, 409, "Authorization in progress",
                              "This authorization is already being completed.");
        if (k < 0)
                return answer(r, 500, "Authorization failed", "Cannot reach the provider's token endpoint.");
        /* Single use: unlinked now, cleared in the store when the
         * exchange commits or fails. */
        manager_pending_unlink(m, c);
        r->target = c;
        manager_wheel_rearm(m);

        cb_suspend(r);
}

static void on_completed(void *cls _unused_, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe _unused_) {
        CbRequest *r = *req_cls;

        /* A kept-alive connection has as long again for its next request. */
        cb_conn_deadline(conn, CALLBACK_TIMEOUT_SEC * USEC_PER_SEC);
        if (!r)
                return;
        r->wait = store_wait_release(r->wait);
        explicit_wipe(r->query, r->query_len);   /* it holds the code */
        free(r->query);
        free(r->page);
        free(r);
        *req_cls = NULL;
}

/* MHD's URI log callback: called with the request-target as sent, before
 * MHD splits off and decodes the query its own way (callback_query_parse()
 * does it here). What it returns is the request's *req_cls; MHD then calls
 * on_completed() for it whatever happens to the request. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
        CbRequest *r;
        const char *q;

        r = new0(CbRequest, 1);
        if (!r)
                return NULL;
        r->cb = cls;
        r->conn = conn;
        q = strchr(uri, '?');
        if (q) {
                r->query_len = strnlen(q + 1, CALLBACK_QUERY_MAX + 1);
                r->query = strndup(q + 1, r->query_len);
                if (!r->query)
                        return mfree(r);
        }
        return r;
}

static bool has_body(struct MHD_Connection *conn) {
        const char *len = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);

        if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))
                return true;
        return len && strspn(len, "0") != strlen(len);
}

/* A link's form posts nothing (a browser may send a few bytes): the
 * body is read and dropped, up to this much. */
#define LINK_BODY_MAX 1024

static bool body_too_large(struct MHD_Connection *conn) {
        const char *len = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);

        if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))
                return true;
        return len && (strspn(len, "0123456789") != strlen(len) || strlen(len) > 4 || atoi(len) > LINK_BODY_MAX);
}

static enum MHD_Result on_request(void *cls _unused_, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version _unused_,
                                  const char *upload_data _unused_, size_t *upload_data_size,
                                  void **req_cls) {
        CbRequest *r = *req_cls;
        const char *tail;

        if (!r)
                return MHD_NO;   /* on_uri() found no memory */
        if (!r->started) {
                r->started = true;
                /* No route takes a body: refuse at once rather than read
                 * it (MHD then closes the connection after the answer). */
                /* A re-authorization link's button POSTs (an empty form). */
                bool link = streq(method, "POST") && startswith(url, LINK_PATH);
                if (!streq(method, "GET") && !streq(method, "HEAD") && !link)
                        answer(r, 405, "Method not allowed", "Only GET is served here.");
                else if (link ? body_too_large(conn) : has_body(conn))
                        answer(r, 413, "Request too large", "A request here has no body.");
                else
                        return MHD_YES;
                cb_conn_deadline(conn, 0);
                return mhd_respond(conn, r->status, "text/html; charset=utf-8", TAKE_PTR(r->page),
                                   "Content-Security-Policy", "default-src 'none'");
        }
        if (*upload_data_size > 0) {
                *upload_data_size = 0;   /* no route takes a body (see above) */
                return MHD_YES;
        }
        if (!r->answered && !r->suspended && (tail = startswith(url, LINK_PATH))) {
                enum MHD_Result ret = MHD_NO;

                if (links_serve(r->cb->manager, conn, method, tail, &r->wait, cb_wake, r, &ret) > 0) {
                        cb_suspend(r);
                        return MHD_YES;
                }
                r->answered = true;
                cb_conn_deadline(conn, 0);
                return ret;
        }
        if (!r->answered && !r->suspended) {
                if (!streq(method, "GET") && !streq(method, "HEAD"))
                        answer(r, 405, "Method not allowed", "Only GET is served here.");
                else if (streq(url, HEALTHZ_PATH)) {
                        r->answered = true;
                        r->status = 200;
                        r->page = strdup("ok\n");
                        cb_conn_deadline(conn, 0);
                        return mhd_respond(conn, 200, "text/plain", TAKE_PTR(r->page), NULL, NULL);
                } else if (streq(url, CALLBACK_PATH))
                        handle_callback(r, NULL);
                else if ((tail = startswith(url, CALLBACK_PATH "/")) &&
                         broker_config_find_provider(r->cb->manager->config, tail))
                        handle_callback(r, tail);   /* /oauth/callback/PROVIDER */
                else
                        answer(r, 404, "Not found", "Nothing is served at this address.");
        }
        if (r->suspended)
                return MHD_YES;
        cb_conn_deadline(conn, 0);
        return mhd_respond(conn, r->status, "text/html; charset=utf-8", TAKE_PTR(r->page),
                           "Content-Security-Policy", "default-src 'none'");
}

static int listen_tcp(const char *listen_addr, int *ret) {
        _cleanup_free_ char *host = strdup(listen_addr);
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST | AI_PASSIVE };
        struct addrinfo *res = NULL;
        char *colon, *h;
        int fd, one = 1, r;

        if (!host)
                return -ENOMEM;
        colon = strrchr(host, ':');
        if (!colon)
                return -EINVAL;
        *colon = 0;
        h = host;
        if (*h == '[') {
                h++;
                if (colon[-1] == ']')
                        colon[-1] = 0;
        }
        r = getaddrinfo(h, colon + 1, &hints, &res);
        if (r != 0)
                return -EINVAL;
        fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
                r = -errno;
                freeaddrinfo(res);
                return r;
        }
        (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 128) < 0) {
                r = -errno;
                freeaddrinfo(res);
                safe_close(fd);
                return r;
        }
        freeaddrinfo(res);
        *ret = fd;
        return 0;
}

int callback_new(Manager *m, int fd, Callback **ret) {
        Callback *cb;
        struct MHD_Daemon *d;
        int r;

        cb = new0(Callback, 1);
        if (!cb)
                return log_oom();
        cb->manager = m;
        if (fd < 0) {
                r = listen_tcp(m->config->callback_listen, &fd);
                if (r < 0) {
                        free(cb);
                        return log_error_errno(r, "Failed to listen on %s: %m", m->config->callback_listen);
                }
        }
        d = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC, 0, NULL, NULL,
                             on_request, cb,
                             MHD_OPTION_LISTEN_SOCKET, (MHD_socket) fd,
                             MHD_OPTION_CONNECTION_LIMIT, (unsigned) CALLBACK_CONNECTIONS_MAX,
                             MHD_OPTION_CONNECTION_TIMEOUT, (unsigned) CALLBACK_TIMEOUT_SEC,
                             MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) CALLBACK_MEMORY_LIMIT,
                             MHD_OPTION_URI_LOG_CALLBACK, on_uri, cb,
                             MHD_OPTION_NOTIFY_COMPLETED, on_completed, cb,
                             MHD_OPTION_NOTIFY_CONNECTION, on_notify_connection, cb,
                             MHD_OPTION_END);
        if (!d) {
                safe_close(fd);
                free(cb);
                return log_error_errno(EIO, "Failed to start the callback listener.");
        }
        r = mhd_loop_attach(&cb->loop, m->event, d, "callback");
        if (r >= 0)
                r = sd_event_add_time(m->event, &cb->reaper, CLOCK_MONOTONIC, USEC_INFINITY,
                                      USEC_PER_SEC / 10, on_reap, cb);
        if (r < 0) {
                mhd_loop_detach(&cb->loop);
                cb->reaper = sd_event_source_disable_unref(cb->reaper);
                free(cb);
                return log_error_errno(r, "Failed to watch the callback listener: %m");
        }
        (void) sd_event_source_set_description(cb->reaper, "callback-deadlines");
        reaper_rearm(cb);
        *ret = cb;
        return 0;
}

Callback *callback_free(Callback *cb) {
        if (!cb)
                return NULL;
        while (cb->suspended) {
                CbRequest *r = cb->suspended;
                if (r->target)
                        refresher_detach_waiter(r->target, &r->waiter);
                answer(r, 503, "Shutting down", "The broker is shutting down; authorize again.");
                cb_resume(r);
        }
        /* Stopping MHD closes the connections (NOTIFY_CLOSED frees them). */
        mhd_loop_detach(&cb->loop);
        cb->reaper = sd_event_source_disable_unref(cb->reaper);
        free(cb);
        return NULL;
}
