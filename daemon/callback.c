/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include "common/api.h"
#include "common/log.h"
#include "common/util.h"
#include "daemon/callback.h"
#include "daemon/mhd.h"

#define CALLBACK_CONNECTIONS_MAX 256
#define CALLBACK_PER_IP_MAX 32
#define CALLBACK_TIMEOUT_SEC 15
#define CALLBACK_MEMORY_LIMIT (32 * 1024)
/* A code or state longer than this is not one. */
#define CALLBACK_VALUE_MAX 4096

typedef struct CbRequest CbRequest;

struct Callback {
        Manager *manager;
        MhdLoop loop;
        CbRequest *suspended;
};

struct CbRequest {
        Callback *cb;
        struct MHD_Connection *conn;
        Waiter waiter;
        Connection *target;
        bool suspended, answered;
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

static void on_exchanged(Connection *c, int result, void *userdata) {
        CbRequest *r = userdata;
        char msg[512];

        r->target = NULL;
        if (result == 0) {
                snprintf(msg, sizeof msg, "Connection '%s' is active%s%s.", c->name,
                         c->identity ? ", authorized by " : "", c->identity ?: "");
                answer(r, 200, "Authorized", msg);
        } else {
                snprintf(msg, sizeof msg, "Connection '%s' was not authorized: %s", c->name,
                         c->last_error ?: "the provider refused the code");
                answer(r, 502, "Authorization failed", msg);
        }
        cb_resume(r);
        mhd_loop_kick(&r->cb->loop);
}

static void handle_callback(CbRequest *r) {
        Manager *m = r->cb->manager;
        const char *state, *code, *error, *desc;
        const Provider *p;
        HashmapNode *n;
        Connection *c;
        char hash[65];
        int k;

        state = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "state");
        if (isempty(state) || strlen(state) > CALLBACK_VALUE_MAX)
                return answer(r, 400, "Authorization failed", "The request has no valid state parameter.");
        if (sha256_hex(state, strlen(state), hash) < 0)
                return answer(r, 500, "Authorization failed", "Internal error.");
        n = hashmap_get(m->pending, hash);
        c = n ? container_of(n, Connection, by_state) : NULL;
        if (!c || c->pending_until < now(CLOCK_REALTIME))
                return answer(r, 400, "Authorization failed",
                              "Unknown or expired authorization request. Start it again with tokenctl authorize.");

        /* RFC 6749 section 4.1.2.1: the provider reports refusals here. */
        error = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "error");
        if (error) {
                char msg[700];
                desc = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "error_description");
                snprintf(msg, sizeof msg, "The provider answered: %.100s%s%.300s", error, desc ? ": " : "",
                         desc ?: "");
                log_warning("%s: provider refused the authorization: %.100s", c->name, error);
                return answer(r, 400, "Authorization failed", msg);
        }
        p = manager_provider(m, c);
        code = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, p ? p->code_param : "code");
        if (isempty(code) || strlen(code) > CALLBACK_VALUE_MAX)
                return answer(r, 400, "Authorization failed", "The request has no authorization code.");

        /* The state is spent from here on, whatever the exchange says. */
        r->waiter = (Waiter) { .fn = on_exchanged, .userdata = r };
        k = refresher_exchange_code(m, c, code, &r->waiter);
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

        MHD_suspend_connection(r->conn);
        r->suspended = true;
        r->next = r->cb->suspended;
        if (r->cb->suspended)
                r->cb->suspended->prev = r;
        r->cb->suspended = r;
}

static void on_completed(void *cls _unused_, struct MHD_Connection *conn _unused_, void **req_cls,
                         enum MHD_RequestTerminationCode toe _unused_) {
        CbRequest *r = *req_cls;

        if (!r)
                return;
        free(r->page);
        free(r);
        *req_cls = NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version _unused_,
                                  const char *upload_data _unused_, size_t *upload_data_size,
                                  void **req_cls) {
        Callback *cb = cls;
        CbRequest *r = *req_cls;

        if (!r) {
                r = new0(CbRequest, 1);
                if (!r)
                        return MHD_NO;
                r->cb = cb;
                r->conn = conn;
                *req_cls = r;
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                *upload_data_size = 0;   /* no route takes a body */
                return MHD_YES;
        }
        if (!r->answered && !r->suspended) {
                if (!streq(method, "GET") && !streq(method, "HEAD"))
                        answer(r, 405, "Method not allowed", "Only GET is served here.");
                else if (streq(url, HEALTHZ_PATH)) {
                        r->answered = true;
                        r->status = 200;
                        r->page = strdup("ok\n");
                        return mhd_respond(conn, 200, "text/plain", TAKE_PTR(r->page), NULL, NULL);
                } else if (streq(url, CALLBACK_PATH))
                        handle_callback(r);
                else
                        answer(r, 404, "Not found", "Nothing is served at this address.");
        }
        if (r->suspended)
                return MHD_YES;
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
                             MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned) CALLBACK_PER_IP_MAX,
                             MHD_OPTION_CONNECTION_TIMEOUT, (unsigned) CALLBACK_TIMEOUT_SEC,
                             MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) CALLBACK_MEMORY_LIMIT,
                             MHD_OPTION_NOTIFY_COMPLETED, on_completed, cb,
                             MHD_OPTION_END);
        if (!d) {
                safe_close(fd);
                free(cb);
                return log_error_errno(EIO, "Failed to start the callback listener.");
        }
        r = mhd_loop_attach(&cb->loop, m->event, d, "callback");
        if (r < 0) {
                mhd_loop_detach(&cb->loop);
                free(cb);
                return log_error_errno(r, "Failed to watch the callback listener: %m");
        }
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
        mhd_loop_detach(&cb->loop);
        free(cb);
        return NULL;
}
