/* SPDX-License-Identifier: MIT */

/* The local API over the Unix socket: a route table, one small handler per
 * route. Handing out a held token is answered from memory; requests that
 * need the provider (min_ttl, invalidate, refresh, revoke) suspend their
 * HTTP connection and resume when the single-flight refresh ends. */

#include <grp.h>
#include <jansson.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <strings.h>

#include "common/api.h"
#include "common/hashmap.h"
#include "common/log.h"
#include "common/params.h"
#include "common/util.h"
#include "daemon/acl.h"
#include "daemon/api.h"
#include "daemon/links.h"
#include "daemon/mhd.h"
#include "common/template.h"
#include "daemon/oauth.h"
#include "daemon/proxy-path.h"
#include "daemon/proxy.h"
#include "daemon/route.h"
#include "daemon/preview.h"

#define API_BODY_MAX (64 * 1024)
/* Connections on the socket, at most (fewer when RLIMIT_NOFILE is low:
 * see api_connection_limit()). Of these, API_ADMIN_RESERVE are kept for
 * root and admin_group members (and the daemon's own uid): other users,
 * together, never hold more than the rest, and one uid never more than
 * API_PER_UID_MAX. A connection over a cap is shut down as it is accepted. */
#define API_CONNECTIONS_MAX 4096
#define API_ADMIN_RESERVE 64
#define API_PER_UID_MAX 128
/* MHD's timeout is one of inactivity, reset by every byte: a request (its
 * headers and body) must also arrive whole within this of the connection
 * or of the previous answer on a kept-alive one, else the connection is
 * shut down. Waiting for the provider and sending the answer do not count. */
#define API_REQUEST_TIMEOUT_SEC 30
/* Finished ApiRequests kept for reuse (Api.spare). */
#define API_SPARE_REQUESTS 32
/* A token answer is written into its request's own bytes (ApiRequest.slot)
 * when it fits: most are a few hundred bytes. */
#define API_SLOT_SIZE 1536
/* MHD clears a connection's memory pool on every request: keep it small
 * (headers only; bodies are copied out as they arrive). */
#define API_CONNECTION_MEMORY (8 * 1024)
/* A client that got 401 may ask again, or ask for more life than the
 * provider gives (min_ttl); more often than this per connection it is a bug
 * in the client (or a hostile one rotating the refresh token), not a stale
 * token, and the provider is spared: one limit for every client-driven
 * refresh. */
#define CLIENT_REFRESH_MIN_INTERVAL (5 * USEC_PER_SEC)
#define RETRY_AFTER_DEFAULT "5"

typedef struct ApiRequest ApiRequest;
typedef struct ListStream ListStream;
typedef struct ApiConn ApiConn;
typedef struct UidCount UidCount;

struct Api {
        Manager *manager;
        MhdLoop loop;
        int fd;
        gid_t admin_gid;
        bool have_admin_gid;
        ApiRequest *suspended;     /* list, to resume them all at exit */

        /* connections waiting for (the rest of) a request, earliest
         * deadline first: every deadline is now + API_REQUEST_TIMEOUT_SEC,
         * so appending keeps the order */
        ApiConn *waiting_head, *waiting_tail;
        sd_event_source *reaper;
        usec_t reaper_at;          /* when it fires; USEC_INFINITY: off */
        /* finished requests kept for the next ones (request_new()): calloc
         * has no per-thread cache, and this is every request */
        ApiRequest *spare[API_SPARE_REQUESTS];
        unsigned n_spare;
        unsigned conn_limit;       /* MHD's limit */
        unsigned n_unprivileged;   /* connections of non-admin peers */
        Hashmap *uids;             /* UidCount by uid, non-admin peers */
        usec_t cap_logged;         /* last "over the cap" warning */
        ProxyCtx *proxy;
};

/* A socket connection: its peer (socket_context; NULL peer if SO_PEERCRED
 * failed), its request deadline and what it counts against. */
struct ApiConn {
        Peer peer;                 /* first: ci->socket_context is a Peer * */
        bool have_peer;
        Api *api;
        int fd;
        usec_t deadline;           /* USEC_INFINITY: not waiting for a request */
        ApiConn *wnext, *wprev;
        bool counted;              /* in n_unprivileged */
        UidCount *uc;
};

struct UidCount {
        HashmapNode node;
        char key[24];
        unsigned n;
};

typedef enum Route {
        ROUTE_TOKEN,
        ROUTE_INVALIDATE,
        ROUTE_REFRESH,
        ROUTE_REVOKE,
        ROUTE_CREATE,              /* a device authorization: waits for the user code */
} Route;

struct ApiRequest {
        Api *api;
        struct MHD_Connection *conn;
        const Peer *peer;
        ApiConn *aconn;            /* its socket connection (MHD's socket context), NULL if none */
        char *body;
        size_t body_len;
        bool too_large;
        bool discard_body;         /* a non-admin's body: not kept (no route of theirs reads one) */

        /* while suspended */
        bool suspended;
        ApiRequest *next, *prev;
        Waiter waiter;
        Connection *target;
        sd_event_source *wait_timer;   /* ?wait=: the longest we hold the answer */
        Route route;

        /* the answer, once known */
        bool answered;
        unsigned status;
        char *response;
        const char *extra_header;
        char extra_value[32];
        const char *content_type;   /* default application/json */
        ListStream *stream;         /* a listing, written as MHD sends it */
        bool status_created;        /* ROUTE_CREATE: 201, not 200 */
        bool audit_on_answer;       /* a create on several nodes: audited once on_inserted() answered */
        char *revoke_answer;        /* ROUTE_REVOKE: the 200 body, sent once the delete is durable; a
                                     * create on several nodes: the 201 body, once the insert is */

        /* the audit trail: a mutating admin route, recorded once its
         * handler has decided (audit_record()) */
        const char *audit_action;
        char audit_name[CONNECTION_NAME_MAX + 1];   /* "" until known valid */
        char audit_detail[160];

        /* .../proxy/...: the raw target (kept by on_uri()) and the proxy's state */
        char *proxy_raw;
        Proxy *proxy;

        /* The answer is slot_len bytes of slot[] (answer_buf()), not
         * response; 0: it is not. */
        size_t slot_len;

        /* Kept when the request is reused (request_new() clears only the
         * fields above): the hot path's answer, written into slot[], and
         * an MHD response over it, queued again while the length stays the
         * same (a connection's answers mostly do), created anew when it
         * changes. slot[] holds a token between dispatch and completion
         * only: on_completed() wipes it. */
        struct MHD_Response *slot_resp;
        size_t slot_resp_len;
        char slot[API_SLOT_SIZE];
};

/* ---- JSON helpers ---------------------------------------------------- */

static char *dump(json_t *j) {
        char *s;

        if (!j)
                return NULL;
        s = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        return s;
}

static void answer(ApiRequest *r, unsigned status, char *body) {
        r->answered = true;
        r->status = status;
        free(r->response);
        r->response = body;
        r->slot_len = 0;
}

/* Answers with what b holds: in place when it is still r->slot's
 * (strbuf_on()), else as a heap string. */
static void answer_buf(ApiRequest *r, unsigned status, StrBuf *b) {
        if (strbuf_borrowed(b) && b->len > 0 && b->s == r->slot) {
                answer(r, status, NULL);
                r->slot_len = b->len;
                *b = (StrBuf) {};
                return;
        }
        answer(r, status, strbuf_steal(b));
}

static void answer_error(ApiRequest *r, unsigned status, const char *error, const char *desc) {
        answer(r, status, dump(json_pack("{s:s, s:s}", "error", error, "error_description", desc)));
}

static void answer_unavailable(ApiRequest *r, const char *desc, usec_t retry) {
        answer_error(r, 503, API_ERR_UNAVAILABLE, desc);
        r->extra_header = "Retry-After";
        snprintf(r->extra_value, sizeof r->extra_value, "%" PRIu64,
                 retry > 0 ? MAX(retry / USEC_PER_SEC, (usec_t) 1) : 5);
}

static char *iso(char buf[static 32], usec_t t) {
        if (t == 0)
                return NULL;
        return format_timestamp(buf, 32, t);
}

/* Members of a connection's JSON, written straight into a buffer: a
 * listing page writes a thousand of these on the loop, several times
 * faster than building jansson objects and dumping them. */
static void member(StrBuf *b, bool *first, const char *key) {
        strbuf_puts(b, *first ? "{\"" : ",\"");
        strbuf_puts(b, key);
        strbuf_puts(b, "\":");
        *first = false;
}

static void member_str(StrBuf *b, bool *first, const char *key, const char *v) {
        member(b, first, key);
        if (v)
                strbuf_json_string(b, v);
        else
                strbuf_puts(b, "null");
}

static void member_time(StrBuf *b, bool *first, const char *key, usec_t t) {
        char buf[32];

        member_str(b, first, key, iso(buf, t));
}

static void member_int(StrBuf *b, bool *first, const char *key, int64_t v) {
        member(b, first, key);
        if (v < 0) {
                strbuf_puts(b, "-");
                strbuf_u64(b, (uint64_t) -(v + 1) + 1);
        } else
                strbuf_u64(b, (uint64_t) v);
}

static void member_ids(StrBuf *b, bool *first, const char *key, const unsigned *ids, unsigned n) {
        member(b, first, key);
        strbuf_puts(b, "[");
        for (unsigned i = 0; i < n; i++) {
                if (i > 0)
                        strbuf_puts(b, ",");
                strbuf_u64(b, ids[i]);
        }
        strbuf_puts(b, "]");
}

/* A JSON object of strings (params, metadata), written as it is. */
static void object_write(StrBuf *b, const json_t *o) {
        const char *key;
        json_t *v;
        bool first = true;

        strbuf_puts(b, "{");
        json_object_foreach((json_t *) o, key, v) {
                if (!first)
                        strbuf_puts(b, ",");
                first = false;
                strbuf_json_string(b, key);
                strbuf_puts(b, ":");
                strbuf_json_string(b, json_string_value(v) ?: "");
        }
        strbuf_puts(b, "}");
}

static void member_object(StrBuf *b, bool *first, const char *key, const json_t *o) {
        if (!o || json_object_size(o) == 0)
                return;
        member(b, first, key);
        object_write(b, o);
}

/* Refresh-token ends (daemon/rtend.c): read off the heap top and a
 * counter, never a walk of the connections. */
static void metrics_rt_ends(Manager *m, StrBuf *b) {
        usec_t end = rtend_earliest(m);

        strbuf_puts(b, "# HELP tokenbroker_earliest_refresh_token_end_seconds Seconds until the earliest known "
                       "refresh-token end.\n"
                       "# TYPE tokenbroker_earliest_refresh_token_end_seconds gauge\n");
        if (end > 0)
                strbuf_printf(b, "tokenbroker_earliest_refresh_token_end_seconds %.3f\n",
                              ((double) end - (double) now(CLOCK_REALTIME)) / (double) USEC_PER_SEC);
        strbuf_printf(b, "# HELP tokenbroker_refresh_token_end_unknown Connections holding a refresh token whose "
                         "end is unknown.\n"
                         "# TYPE tokenbroker_refresh_token_end_unknown gauge\n"
                         "tokenbroker_refresh_token_end_unknown %" PRIu64 "\n"
                         "# HELP tokenbroker_refresh_token_warnings_total Refresh-token end warnings given.\n"
                         "# TYPE tokenbroker_refresh_token_warnings_total counter\n"
                         "tokenbroker_refresh_token_warnings_total %" PRIu64 "\n",
                      m->rt.n_unknown, m->rt.warnings);
}

/* The JSON of a connection (never a token). */
static void connection_write(StrBuf *b, const Connection *c) {
        bool first = true;

        member_str(b, &first, "name", c->name);
        member_str(b, &first, "provider", c->names->provider);
        member_str(b, &first, "state", conn_state_to_string(c->state));
        member_str(b, &first, "identity", connection_identity(c));
        member_str(b, &first, "scope", c->names->scope);
        member_str(b, &first, "requested_scope", c->names->requested_scope);
        member_str(b, &first, "token_type", c->access_token ? c->names->token_type : NULL);
        member(b, &first, "has_refresh_token");
        strbuf_puts(b, c->refresh_token ? "true" : "false");
        member_time(b, &first, "expires_at", c->access_token ? c->expires_at : 0);
        member_time(b, &first, "refresh_token_ends_at", c->refresh_token ? c->rt_end : 0);
        member_time(b, &first, "created_at", c->created_at);
        member_time(b, &first, "updated_at", c->updated_at);
        member_time(b, &first, "last_refresh_at", c->last_refresh_at);
        member_int(b, &first, "refreshes", (int64_t) c->refreshes);
        member_str(b, &first, "last_error", connection_last_error(c));
        member_ids(b, &first, "allow_users", (const unsigned *) c->allow_users, c->n_allow_users);
        member_ids(b, &first, "allow_groups", (const unsigned *) connection_allow_groups(c), c->n_allow_groups);
        member_time(b, &first, "authorization_pending_until",
                    connection_state_hash(c) || connection_device_pending(c) ? connection_pending_until(c) : 0);
        if (connection_device_pending(c) && connection_device(c)->user_code) {
                member_str(b, &first, "user_code", connection_device(c)->user_code);
                member_str(b, &first, "verification_uri", connection_device(c)->verification_uri);
                if (connection_device(c)->verification_uri_complete)
                        member_str(b, &first, "verification_uri_complete", connection_device(c)->verification_uri_complete);
                member_int(b, &first, "device_interval", (int64_t) (connection_device(c)->interval / USEC_PER_SEC));
        }
        if (connection_username(c))
                member_str(b, &first, "username", connection_username(c));
        member_object(b, &first, "params", connection_params(c));
        member_object(b, &first, "metadata", connection_metadata(c));
        if (c->access_token && c->expires_at > 0)
                member_int(b, &first, "expires_in", (int64_t) (connection_ttl(c) / USEC_PER_SEC));
        if (c->refresh_token && c->rt_end > 0)
                member_int(b, &first, "refresh_token_ends_in",
                           (int64_t) (usec_sub(c->rt_end, now(CLOCK_REALTIME)) / USEC_PER_SEC));
        if (connection_busy(c)) {
                member(b, &first, "refreshing");
                strbuf_puts(b, "true");
        }
        strbuf_puts(b, "}");
}

/* The same as a jansson object, for answers that add to it. */
static json_t *connection_json(Manager *m, const Connection *c) {
        const Provider *p = manager_provider(m, c);
        StrBuf b = {};
        json_t *j;

        connection_write(&b, c);
        if (b.oom) {
                strbuf_free(&b);
                return NULL;
        }
        j = json_loadb(b.s, b.len, 0, NULL);
        strbuf_free(&b);
        /* the provider's test_url with this connection's ${param.X} and
         * ${metadata.X} filled in, for tokenctl test */
        if (j && p && p->test_url) {
                _cleanup_free_ char *url = NULL, *why = NULL;

                if (oauth_url_expand(p->test_url, connection_params(c), connection_metadata(c), &url, &why) >= 0)
                        json_object_set_new(j, "test_url", json_string(url));
                else if (why)
                        json_object_set_new(j, "test_url_error", json_string(why));
        }
        return j;
}

static void emit_json_escaped(const char *s, size_t n, void *userdata) {
        strbuf_json_escape(userdata, s, n);
}

/* "Name: value template" as "Name":"value", rendered straight into b. */
static void usage_pair(StrBuf *b, const char *tmpl, char sep, UsageVars *v) {
        const char *colon = strchr(tmpl, sep), *val;

        if (!colon)
                return;
        strbuf_puts(b, "\"");
        strbuf_json_escape(b, tmpl, (size_t) (colon - tmpl));
        strbuf_puts(b, "\":\"");
        for (val = colon + 1; sep == ':' && *val == ' '; val++)
                ;
        (void) template_render(val, oauth_usage_lookup, v, emit_json_escaped, b);
        strbuf_puts(b, "\"");
}

/* The token answer, shaped like an RFC 6749 section 5.1 response plus the
 * usage rule. This is the hot path: rendered straight into one buffer from
 * memory; no disk, no network, no JSON tree, no per-field allocation. */
static int token_json(StrBuf *_b, Manager *m, const Connection *c, usec_t ttl, usec_t refresh_retry_after) {
        const Provider *p = manager_provider(m, c);
        UsageVars v = { c->access_token, c->names->token_type ?: "Bearer", connection_params(c), connection_metadata(c) };
        StrBuf b = *_b;
        char ts[32];

        if (!p)
                return -ENOENT;
        strbuf_puts(&b, "{\"access_token\":");
        strbuf_json_string(&b, c->access_token);
        strbuf_puts(&b, ",\"token_type\":");
        strbuf_json_string(&b, c->names->token_type ?: "Bearer");
        if (c->expires_at > 0) {
                strbuf_puts(&b, ",\"expires_in\":");
                strbuf_u64(&b, ttl / USEC_PER_SEC);
                strbuf_puts(&b, ",\"expires_at\":\"");
                strbuf_puts(&b, format_timestamp(ts, sizeof ts, c->expires_at));
                strbuf_puts(&b, "\"");
        }
        if (c->names->scope) {
                strbuf_puts(&b, ",\"scope\":");
                strbuf_json_string(&b, c->names->scope);
        }
        if (p->n_usage_header > 0) {
                strbuf_puts(&b, ",\"headers\":{");
                for (size_t i = 0; i < p->n_usage_header; i++) {
                        if (i > 0)
                                strbuf_puts(&b, ",");
                        usage_pair(&b, p->usage_header[i], ':', &v);
                }
                strbuf_puts(&b, "}");
        }
        if (p->usage_query) {
                strbuf_puts(&b, ",\"query\":{");
                usage_pair(&b, p->usage_query, '=', &v);
                strbuf_puts(&b, "}");
        }
        if (connection_metadata(c) && json_object_size(connection_metadata(c)) > 0) {
                /* what the provider returned besides the token (never a secret) */
                strbuf_puts(&b, ",\"metadata\":");
                object_write(&b, connection_metadata(c));
        }
        if (refresh_retry_after > 0) {
                /* rate limited: the token there is, and when a client-driven refresh is allowed again */
                strbuf_puts(&b, ",\"refresh_retry_after\":");
                strbuf_u64(&b, (refresh_retry_after + USEC_PER_SEC - 1) / USEC_PER_SEC);
        }
        strbuf_puts(&b, "}");
        /* written into a copy of the caller's buffer: hand back where it ended */
        *_b = b;
        return b.oom ? -ENOMEM : 0;
}

/* ---- routes ---------------------------------------------------------- */

static int parse_seconds_arg(const char *s, usec_t *ret) {
        char *end;
        unsigned long u;

        if (!s || !*s || *s == '-' || *s == '+')
                return -EINVAL;
        errno = 0;
        u = strtoul(s, &end, 10);
        if (errno || *end || u > MIN_TTL_MAX_SEC)
                return -EINVAL;
        *ret = (usec_t) u * USEC_PER_SEC;
        return 0;
}

static void suspend(ApiRequest *r, Connection *c) {
        Api *a = r->api;

        r->target = c;
        MHD_suspend_connection(r->conn);
        r->suspended = true;
        r->next = a->suspended;
        if (a->suspended)
                a->suspended->prev = r;
        a->suspended = r;
}

static void resume(ApiRequest *r) {
        Api *a = r->api;

        if (!r->suspended)
                return;
        if (r->prev)
                r->prev->next = r->next;
        else
                a->suspended = r->next;
        if (r->next)
                r->next->prev = r->prev;
        r->next = r->prev = NULL;
        r->suspended = false;
        MHD_resume_connection(r->conn);
}

/* The longest a client may ask to wait for a usable token. */
#define WAIT_MAX (5 * USEC_PER_MINUTE)

/* The last error as a client on the ACL (not an admin) may see it: the
 * provider's words reduced to its error code. "HTTP 400: invalid_grant:
 * refresh token rt-... is invalid (hint: ...)" becomes "HTTP 400:
 * invalid_grant"; the broker's own texts (no "HTTP ") pass whole. Admins
 * see the whole (redacted) text in tokenctl show. */
static const char *error_for_peer(const Peer *peer, const char *e, char buf[static 160]) {
        const char *h, *q, *cut;

        if (!e || peer->admin || !(h = strstr(e, "HTTP ")))
                return e;
        q = h + 5;
        while (*q >= '0' && *q <= '9')
                q++;
        cut = q;
        if (startswith(q, ": ")) {
                const char *colon = strstr(q + 2, ": "), *hint = strstr(q + 2, " (hint: ");

                cut = colon ?: q + strlen(q);
                if (hint && hint < cut)
                        cut = hint;
        }
        snprintf(buf, 160, "%.*s", (int) MIN((size_t) (cut - e), (size_t) 159), e);
        return buf;
}

/* Answers a token request from what the connection holds now; with
 * refresh_retry_after > 0 a valid token's answer says (Retry-After and
 * "refresh_retry_after") when a client-driven refresh is allowed again. */
static void answer_token_limited(ApiRequest *r, Connection *c, int refresh_result, usec_t refresh_retry_after) {
        Manager *m = r->api->manager;
        usec_t ttl = connection_ttl(c);
        const char *last_error;
        char buf[160];
        StrBuf b;

        last_error = error_for_peer(r->peer, connection_last_error(c), buf);
        if (c->state == CONN_NEEDS_REAUTH || refresh_result == -EKEYREJECTED) {
                answer_error(r, 409, API_ERR_NEEDS_REAUTH, last_error ?: "connection needs re-authorization");
                return;
        }
        if (c->state == CONN_PENDING || !c->access_token) {
                answer_error(r, 409, API_ERR_PENDING, "authorization not completed");
                return;
        }
        /* A still-valid token is served even when a refresh for min_ttl
         * failed: the client asked for more life, not for an outage. */
        if (ttl == 0) {
                usec_t retry = connection_retry_at(c) ? usec_sub(connection_retry_at(c), now(DEADLINE_CLOCK)) : 0;
                answer_unavailable(r, last_error ?: "no valid token; provider unreachable", retry);
                return;
        }
        strbuf_on(&b, r->slot, sizeof r->slot);
        if (token_json(&b, m, c, ttl, refresh_retry_after) < 0) {
                strbuf_free(&b);
                answer_error(r, 500, API_ERR_SERVER, "out of memory");
                return;
        }
        m->tokens_served++;
        answer_buf(r, 200, &b);
        if (refresh_retry_after > 0) {
                r->extra_header = "Retry-After";
                snprintf(r->extra_value, sizeof r->extra_value, "%" PRIu64,
                         (refresh_retry_after + USEC_PER_SEC - 1) / USEC_PER_SEC);
        }
}

static void answer_token(ApiRequest *r, Connection *c, int refresh_result) {
        answer_token_limited(r, c, refresh_result, 0);
}

/* How long until a client may make this connection refresh again (0: now).
 * Every client-driven refresh (min_ttl beyond the token's life, invalidate)
 * counts; invalidate also waits out any refresh just made, since the token
 * it would replace is that new. */
static usec_t client_refresh_wait(const Connection *c, Route route) {
        usec_t n = now(DEADLINE_CLOCK), w = 0;
        usec_t at = deadline_units_usec(c->client_refresh_8, CLIENT_REFRESH_UNIT);

        /* at is the start time rounded up to an eighth of a second: the
         * limit holds 5 to 5.125 s; the wait told is at most the 5 s a
         * client is promised (it may find the limit still on for less than
         * 125 ms after it). */
        if (c->client_refresh_8 > 0 && usec_add(at, CLIENT_REFRESH_MIN_INTERVAL) > n)
                w = MIN(usec_add(at, CLIENT_REFRESH_MIN_INTERVAL) - n, CLIENT_REFRESH_MIN_INTERVAL);
        if (route == ROUTE_INVALIDATE) {
                usec_t rt = now(CLOCK_REALTIME), last = usec_add(c->last_refresh_at, CLIENT_REFRESH_MIN_INTERVAL);

                if (c->last_refresh_at > 0 && last > rt)
                        w = MAX(w, MIN(last - rt, CLIENT_REFRESH_MIN_INTERVAL));
        }
        return w;
}

usec_t api_client_refresh_wait(const Connection *c) {
        return client_refresh_wait(c, ROUTE_INVALIDATE);
}

/* A revoke's delete is durable (or failed): now the answer. Runs on the
 * loop; at shutdown manager_free() flushes the writer before api_free(),
 * so r is still suspended here. */
static void on_revoke_deleted(int result, const char *error, void *userdata) {
        ApiRequest *r = userdata;

        if (!r->suspended)
                return;
        if (result < 0) {
                log_error_errno(result, "Failed to delete a revoked connection from the store: %s", strempty(error));
                r->revoke_answer = mfree(r->revoke_answer);
                answer_error(r, 500, API_ERR_SERVER, "cannot delete the connection");
        } else
                answer(r, 200, TAKE_PTR(r->revoke_answer));
        resume(r);
        mhd_loop_kick(&r->api->loop);
}

static void on_refreshed(Connection *c, int result, void *userdata) {
        ApiRequest *r = userdata;
        bool was_suspended = r->suspended;

        r->target = NULL;
        r->wait_timer = sd_event_source_disable_unref(r->wait_timer);
        switch (r->route) {
        case ROUTE_TOKEN:
        case ROUTE_INVALIDATE:
                if (result == -ECANCELED)
                        answer_error(r, 404, API_ERR_NOT_FOUND, "connection was removed");
                else
                        answer_token(r, c, result);
                break;
        case ROUTE_REFRESH:
                if (result == 0)
                        answer(r, 200, dump(connection_json(r->api->manager, c)));
                else if (result == -EKEYREJECTED)
                        answer_error(r, 409, API_ERR_NEEDS_REAUTH, connection_last_error(c) ?: "refresh refused");
                else if (result == -ECANCELED)
                        answer_error(r, 404, API_ERR_NOT_FOUND, "connection was removed");
                else
                        answer_unavailable(r, connection_last_error(c) ?: "refresh failed",
                                           connection_retry_at(c) ? usec_sub(connection_retry_at(c), now(DEADLINE_CLOCK)) : 0);
                break;
        case ROUTE_CREATE:
                if (result == 0)
                        answer(r, r->status_created ? 201 : 200, dump(connection_json(r->api->manager, c)));
                else {
                        /* the description is ours or the provider's, sanitized; never a secret */
                        answer_error(r, 502, API_ERR_SERVER, connection_last_error(c) ?: "device authorization failed");
                }
                break;
        case ROUTE_REVOKE: {
                Manager *m = r->api->manager;
                bool at_provider = result == 0;
                int k;

                if (result < 0 && result != -EOPNOTSUPP) {
                        answer_error(r, 502, API_ERR_SERVER, connection_last_error(c) ?: "revocation at the provider failed");
                        refresher_schedule(m, c);
                        manager_wheel_rearm(m);
                        break;
                }
                /* Say what really happened: revoked there, nothing to
                 * revoke (a pending authorization holds no tokens), or no
                 * endpoint to revoke them at. */
                bool has_endpoint = manager_provider(m, c) && manager_provider(m, c)->revoke_url;
                bool has_tokens = c->access_token || c->refresh_token;
                const char *how = !has_tokens ? "no_tokens" : !has_endpoint ? "no_endpoint" : "provider";

                at_provider = at_provider && has_endpoint && has_tokens;
                manager_event(m, c, "revoked", "connection %s",
                              at_provider ? "revoked at the provider and deleted"
                              : !has_tokens ? "deleted; it held no tokens to revoke at the provider"
                                            : "deleted; the provider has no revocation endpoint");
                {
                        json_t *j = json_pack("{s:s, s:b, s:s}", "name", c->name, "revoked_at_provider", at_provider,
                                              "revocation", how);
                        char *body = dump(j);

                        if (!body) {
                                answer_error(r, 500, API_ERR_SERVER, "out of memory");
                                break;
                        }
                        /* The answer says "deleted": only once the delete
                         * is durable (on_revoke_deleted). */
                        free(r->revoke_answer);
                        r->revoke_answer = body;
                        k = manager_remove_then(m, c, on_revoke_deleted, r);
                        if (k < 0) {
                                r->revoke_answer = mfree(r->revoke_answer);
                                answer_error(r, 500, API_ERR_SERVER, "cannot delete the connection");
                                break;
                        }
                        if (!r->suspended)
                                suspend(r, NULL);   /* c is gone: no target */
                        return;
                }
        }
        }
        if (was_suspended) {
                resume(r);
                mhd_loop_kick(&r->api->loop);
        }
}

static void audit_record(ApiRequest *r);

/* A create on several nodes: its insert is durable, or failed. */
static void on_inserted(Connection *c _unused_, int result, void *userdata) {
        ApiRequest *r = userdata;
        bool was_suspended = r->suspended;

        r->target = NULL;
        if (result == 0 && r->revoke_answer)
                answer(r, 201, TAKE_PTR(r->revoke_answer));
        else if (result == 0)
                answer_error(r, 500, API_ERR_SERVER, "out of memory");
        else if (result == -EEXIST || result == -ECANCELED)
                answer_error(r, 409, API_ERR_CONFLICT,
                             "a connection of this name was made on another node at the same moment; that one "
                             "exists, this one was not made");
        else
                answer_unavailable(r, "cannot store the connection (the store's database is out of reach); retry",
                                   0);
        audit_record(r);
        if (was_suspended) {
                resume(r);
                mhd_loop_kick(&r->api->loop);
        }
}

static int on_wait_timeout(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        ApiRequest *r = userdata;
        Connection *c = r->target;

        r->wait_timer = sd_event_source_disable_unref(r->wait_timer);
        if (!c)
                return 0;
        refresher_detach_waiter(c, &r->waiter);
        r->target = NULL;
        answer_token(r, c, 0);   /* what there is now: 409 pending, 503, or a token */
        resume(r);
        mhd_loop_kick(&r->api->loop);
        return 0;
}

/* A token route's arguments, found in one walk of the query (most
 * requests have none: two lookups were two walks for nothing). */
typedef struct TokenArgs {
        const char *min_ttl, *wait;
        bool have_min_ttl, have_wait;
} TokenArgs;

static enum MHD_Result token_arg(void *cls, enum MHD_ValueKind kind _unused_, const char *key, const char *value) {
        TokenArgs *t = cls;

        /* What MHD_lookup_connection_value() would find: the first of
         * each key, any case; a key without "=" has a NULL value. */
        if (!t->have_min_ttl && strcasecmp(key, "min_ttl") == 0) {
                t->min_ttl = value;
                t->have_min_ttl = true;
        } else if (!t->have_wait && strcasecmp(key, "wait") == 0) {
                t->wait = value;
                t->have_wait = true;
        }
        return MHD_YES;
}

static void route_token(ApiRequest *r, Connection *c, Route route) {
        Manager *m = r->api->manager;
        usec_t min_ttl = 0, wait = 0, ttl;
        const char *min_ttl_arg, *wait_arg;
        TokenArgs ta = {};
        int k;

        if (!peer_may_read(r->peer, c)) {
                /* the same answer as for an unknown name: no probing */
                answer_error(r, 403, API_ERR_FORBIDDEN, "peer not allowed");
                return;
        }
        (void) MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, token_arg, &ta);
        min_ttl_arg = ta.min_ttl;
        wait_arg = ta.wait;
        if (min_ttl_arg && parse_seconds_arg(min_ttl_arg, &min_ttl) < 0) {
                answer_error(r, 400, API_ERR_INVALID_REQUEST,
                             "min_ttl must be whole seconds from 0 to 31536000 (365 days)");
                return;
        }
        if (wait_arg && (parse_seconds_arg(wait_arg, &wait) < 0 || wait > WAIT_MAX)) {
                answer_error(r, 400, API_ERR_INVALID_REQUEST, "wait must be 0 to 300 seconds");
                return;
        }
        /* ?wait= on a pending connection, or one with no valid token while
         * a refresh is in flight: hold the answer until it changes. */
        if (wait > 0 && route == ROUTE_TOKEN &&
            (c->state == CONN_PENDING || (connection_ttl(c) == 0 && (connection_busy(c) || c->queued)))) {
                r->route = route;
                r->waiter = (Waiter) { .fn = on_refreshed, .userdata = r };
                if (sd_event_add_time_relative(m->event, &r->wait_timer, DEADLINE_CLOCK, wait, 0, on_wait_timeout,
                                               r) < 0) {
                        answer_error(r, 500, API_ERR_SERVER, "out of resources");
                        return;
                }
                if (refresher_add_waiter(c, &r->waiter) < 0) {
                        r->wait_timer = sd_event_source_disable_unref(r->wait_timer);
                        answer_error(r, 500, API_ERR_SERVER, "out of memory");
                        return;
                }
                suspend(r, c);
                return;
        }
        if (c->state != CONN_ACTIVE) {
                answer_token(r, c, 0);
                return;
        }
        ttl = connection_ttl(c);
        if (route == ROUTE_TOKEN && c->access_token && ttl > 0 && ttl >= min_ttl) {
                answer_token(r, c, 0);   /* the hot path: from memory */
                return;
        }
        /* Past here a valid token means the client drives the refresh
         * (min_ttl beyond its life, or invalidate): one per-connection rate
         * limit for both. It answers with the token there is, so only while
         * it is valid: an expired one (a late refresh timer, a restart, one
         * queued for a refresh slot) is refreshed, as a GET would. Joining
         * a refresh in flight or queued costs the provider nothing. */
        bool client_driven = c->access_token && ttl > 0;
        /* connection_waiters(c): on a cluster, a refresh asked of the lease holder
         * (daemon/follower.c) is one in flight too: joined, not limited */
        bool awaited = connection_busy(c) || c->queued || connection_waiters(c);
        if (client_driven && !awaited) {
                usec_t w = client_refresh_wait(c, route);

                if (w > 0) {
                        answer_token_limited(r, c, 0, w);
                        return;
                }
        }
        /* During a transient outage, don't pile more requests onto the
         * provider: serve what is still valid until the retry is due. */
        if (route == ROUTE_TOKEN && connection_retry_at(c) > now(DEADLINE_CLOCK) && c->access_token && ttl > 0) {
                answer_token(r, c, 0);
                return;
        }
        if (route == ROUTE_TOKEN && connection_retry_at(c) > now(DEADLINE_CLOCK)) {
                answer_token(r, c, 0);   /* expired: 503 with Retry-After */
                return;
        }
        r->route = route;
        r->waiter = (Waiter) { .fn = on_refreshed, .userdata = r };
        bool starts = client_driven && !awaited;
        k = refresher_refresh(m, c, &r->waiter);
        if (k == -ENOMEM) {   /* cannot wait (no ConnRefresh for the waiter, or for the refresh) */
                answer_error(r, 500, API_ERR_SERVER, "out of memory");
                return;
        }
        if (k < 0) {
                answer_token(r, c, k);
                return;
        }
        if (starts)
                c->client_refresh_8 = deadline_units(now(DEADLINE_CLOCK), CLIENT_REFRESH_UNIT);
        manager_wheel_rearm(m);
        suspend(r, c);
}

static void route_refresh(ApiRequest *r, Connection *c) {
        Manager *m = r->api->manager;
        int k;

        if (c->state == CONN_PENDING) {
                answer_error(r, 409, API_ERR_PENDING, "authorization not completed");
                return;
        }
        r->route = ROUTE_REFRESH;
        r->waiter = (Waiter) { .fn = on_refreshed, .userdata = r };
        k = refresher_refresh(m, c, &r->waiter);
        if (k == -ENOMEM) {   /* cannot wait (no ConnRefresh for the waiter, or for the refresh) */
                answer_error(r, 500, API_ERR_SERVER, "out of memory");
                return;
        }
        if (k == -ENOLINK) {   /* the store's database is away: nothing is sent */
                answer_unavailable(r, "the store's database is unreachable", CLUSTER_HEARTBEAT);
                return;
        }
        if (k < 0) {
                answer_error(r, 409, k == -EBUSY ? API_ERR_CONFLICT : API_ERR_NEEDS_REAUTH,
                             connection_last_error(c) ?: "cannot refresh this connection");
                return;
        }
        manager_wheel_rearm(m);
        suspend(r, c);
}

static void route_revoke(ApiRequest *r, Connection *c) {
        Manager *m = r->api->manager;
        int k;

        r->route = ROUTE_REVOKE;
        r->waiter = (Waiter) { .fn = on_refreshed, .userdata = r };
        if (connection_busy(c)) {
                /* Let the refresh in flight land (and commit) first; its tokens are then revoked too. */
                answer_error(r, 409, API_ERR_CONFLICT, "a refresh is in flight; try again");
                return;
        }
        k = refresher_revoke(m, c, &r->waiter);
        if (k > 0) {
                suspend(r, c);
                return;
        }
        if (k < 0 && k != -EOPNOTSUPP) {
                answer_error(r, 500, API_ERR_SERVER, "cannot start revocation");
                return;
        }
        /* No revocation endpoint (or nothing to revoke): delete here. */
        r->waiter.fn(c, -EOPNOTSUPP, r);
}

static int json_ids(json_t *a, bool groups, unsigned *ids, unsigned *n, const char **ret_error) {
        size_t i;
        json_t *v;

        *n = 0;
        if (!a)
                return 0;
        if (!json_is_array(a) || json_array_size(a) > ACL_MAX) {
                *ret_error = "allow_users and allow_groups must be arrays (at most 32 entries)";
                return -EINVAL;
        }
        json_array_foreach(a, i, v) {
                if (json_is_integer(v) && json_integer_value(v) >= 0 &&
                    json_integer_value(v) < (json_int_t) UINT32_MAX)
                        ids[(*n)++] = (unsigned) json_integer_value(v);
                else if (json_is_string(v)) {
                        int k = groups ? acl_parse_group(json_string_value(v), (gid_t *) &ids[*n])
                                       : acl_parse_user(json_string_value(v), (uid_t *) &ids[*n]);
                        if (k < 0) {
                                *ret_error = groups ? "unknown group" : "unknown user";
                                return -EINVAL;
                        }
                        (*n)++;
                } else {
                        *ret_error = "allow_users and allow_groups take names or numbers";
                        return -EINVAL;
                }
        }
        return 0;
}

/* The request tree holds copies of a password or refresh token. */
static void wipe_json_secrets(json_t *root) {
        static const char *const keys[] = { "password", "refresh_token" };

        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                json_t *v = json_object_get(root, keys[i]);
                if (json_is_string(v))
                        explicit_wipe((char *) json_string_value(v), json_string_length(v));
        }
}

/* What the named provider cannot do, answered before anything is
 * created: an unknown provider (404, naming the configured ones), or a
 * request its configuration does not allow (422). Returns true when it
 * answered. */
static bool provider_refused(ApiRequest *r, json_t *root, const char *name) {
        const BrokerConfig *cfg = r->api->manager->config;
        const Provider *p = broker_config_find_provider(cfg, name);
        bool import = json_is_string(json_object_get(root, "refresh_token"));
        StrBuf b = {};

        if (!p) {
                strbuf_printf(&b, "unknown provider '%s'; configured providers: ", name);
                for (size_t i = 0; i < cfg->n_providers && b.len < 1024; i++)
                        strbuf_printf(&b, "%s%s", i ? ", " : "", cfg->providers[i]->name);
                if (cfg->n_providers == 0)
                        strbuf_puts(&b, "none");
        } else if (!import && json_is_true(json_object_get(root, "device")) && !p->device_authorization_url)
                strbuf_printf(&b, "provider '%s' has no device_authorization_url: set one in its provider file "
                                  "to use the device flow, or authorize in a browser without --device", p->name);
        else if (!import && json_is_string(json_object_get(root, "username")) && p->grant != GRANT_PASSWORD)
                strbuf_printf(&b, "provider '%s' uses the %s grant, which takes no username: --username is for "
                                  "providers with grant = password", p->name, grant_to_string(p->grant));
        else
                return false;
        wipe_json_secrets(root);
        json_decref(root);
        if (!b.s)
                answer_error(r, 500, API_ERR_SERVER, "out of memory");
        else
                answer_error(r, p ? 422 : 404, p ? API_ERR_UNSUPPORTED : API_ERR_NOT_FOUND, b.s);
        strbuf_free(&b);
        return true;
}

static void audit_begin(ApiRequest *r, const char *action, const char *name);
static void audit_acl(ApiRequest *r, const Connection *old, const uid_t *users, unsigned nu, const gid_t *groups,
                      unsigned ng);

static void route_create(ApiRequest *r) {
        Manager *m = r->api->manager;
        json_t *root, *scope_j;
        json_error_t jerr;
        const char *name = NULL, *provider = NULL, *error = NULL;
        _cleanup_free_ char *scope = NULL, *url = NULL;
        uid_t users[ACL_MAX];
        gid_t groups[ACL_MAX];
        unsigned nu = 0, ng = 0;
        Connection *c = NULL;
        _cleanup_(json_decrefp) json_t *params = NULL;
        bool existed;
        int k;

        root = r->body ? json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
        if (!root || !json_is_object(root)) {
                json_decref(root);
                answer_error(r, 400, API_ERR_INVALID_REQUEST, "body must be a JSON object");
                return;
        }
        if (json_unpack(root, "{s:s, s:s}", "name", &name, "provider", &provider) < 0) {
                json_decref(root);
                answer_error(r, 400, API_ERR_INVALID_REQUEST, "name and provider are required strings");
                return;
        }
        if (!connection_name_valid(name)) {
                json_decref(root);
                answer_error(r, 400, API_ERR_INVALID_REQUEST,
                             "invalid connection name: 1-128 characters of A-Z a-z 0-9 . _ -");
                return;
        }
        audit_begin(r, json_is_string(json_object_get(root, "refresh_token")) ? "import"
                       : json_is_true(json_object_get(root, "device")) ? "authorize-device"
                                                                      : "authorize", name);
        scope_j = json_object_get(root, "scope");
        if (json_is_string(scope_j))
                scope = strdup(json_string_value(scope_j));
        else if (json_is_array(scope_j)) {
                StrBuf b = {};
                size_t i;
                json_t *v;
                json_array_foreach(scope_j, i, v) {
                        if (!json_is_string(v))
                                continue;
                        if (b.len)
                                strbuf_puts(&b, " ");
                        strbuf_puts(&b, json_string_value(v));
                }
                scope = strbuf_steal(&b);
        }
        if (scope && (strlen(scope) > 2048 || strpbrk(scope, "\r\n\t\"\\"))) {
                json_decref(root);
                answer_error(r, 400, API_ERR_INVALID_REQUEST, "invalid scope");
                return;
        }
        if (json_ids(json_object_get(root, "allow_users"), false, (unsigned *) users, &nu, &error) < 0 ||
            json_ids(json_object_get(root, "allow_groups"), true, (unsigned *) groups, &ng, &error) < 0) {
                json_decref(root);
                answer_error(r, 400, API_ERR_INVALID_REQUEST, error);
                return;
        }
        existed = manager_get(m, name) != NULL;
        audit_acl(r, manager_get(m, name), users, nu, groups, ng);
        if (provider_refused(r, root, provider))
                return;
        {
                /* ${param.X}: checked before anything is stored or sent */
                const Provider *pp = broker_config_find_provider(m->config, provider);
                const Connection *old = manager_get(m, name);
                _cleanup_free_ char *perr = NULL;

                k = params_resolve(pp, json_object_get(root, "params"),
                                   old && streq(old->names->provider, provider) ? connection_params(old) : NULL, &params, &perr);
                if (k < 0) {
                        wipe_json_secrets(root);
                        json_decref(root);
                        if (k == -EINVAL)
                                answer_error(r, 400, API_ERR_INVALID_REQUEST, perr ?: "invalid params");
                        else
                                answer_error(r, 500, API_ERR_SERVER, "out of memory");
                        return;
                }
        }
        {
                const char *username = NULL, *password = NULL, *refresh_token = NULL;
                json_t *dev = json_object_get(root, "device");
                AuthorizeRequest req = {
                        .name = name, .provider = provider, .scope = isempty(scope) ? NULL : scope,
                        .allow_users = users, .n_allow_users = nu,
                        .allow_groups = groups, .n_allow_groups = ng,
                        .params = params,
                };

                if ((json_object_get(root, "username") && !json_is_string(json_object_get(root, "username"))) ||
                    (json_object_get(root, "password") && !json_is_string(json_object_get(root, "password"))) ||
                    (json_object_get(root, "refresh_token") && !json_is_string(json_object_get(root, "refresh_token"))) ||
                    (dev && !json_is_boolean(dev))) {
                        wipe_json_secrets(root);
                        json_decref(root);
                        answer_error(r, 400, API_ERR_INVALID_REQUEST,
                                     "username, password and refresh_token are strings, device a boolean");
                        return;
                }
                username = json_string_value(json_object_get(root, "username"));
                password = json_string_value(json_object_get(root, "password"));
                refresh_token = json_string_value(json_object_get(root, "refresh_token"));
                if ((username && (strlen(username) > 512 || strpbrk(username, "\r\n"))) ||
                    (password && strlen(password) > 4096) || (refresh_token && (strlen(refresh_token) > 16384 ||
                                                                                isempty(refresh_token)))) {
                        wipe_json_secrets(root);
                        json_decref(root);
                        answer_error(r, 400, API_ERR_INVALID_REQUEST, "invalid username, password or refresh_token");
                        return;
                }
                req.username = username;
                req.password = password;
                req.refresh_token = refresh_token;
                req.device = json_is_true(dev);
                k = manager_authorize(m, &req, &c, &url, &error);
                if (k >= 0 && req.refresh_token)
                        c->importing = true;   /* its proof refresh is in flight or queued */
                if (k >= 0) {
                        const Provider *p = broker_config_find_provider(m->config, provider);
                        if (p && manager_wants_device(p, &req)) {
                                r->route = ROUTE_CREATE;
                                r->status_created = !existed;
                                r->waiter = (Waiter) { .fn = on_refreshed, .userdata = r };
                                k = refresher_device_start(m, c, &r->waiter);
                                if (k < 0) {
                                        error = "cannot start the device authorization";
                                        if (!existed)
                                                (void) manager_remove(m, c);
                                } else {
                                        wipe_json_secrets(root);
                                        json_decref(root);
                                        manager_wheel_rearm(m);
                                        suspend(r, c);
                                        return;
                                }
                        }
                }
        }
        wipe_json_secrets(root);
        json_decref(root);
        if (k < 0) {
                if (k == -ENOENT)
                        answer_error(r, 404, API_ERR_NOT_FOUND, error ?: "unknown provider");
                else if (k == -EEXIST || k == -EBUSY)
                        answer_error(r, 409, API_ERR_CONFLICT, error ?: "conflict");
                else if (k == -EOPNOTSUPP)
                        answer_error(r, 422, API_ERR_UNSUPPORTED, error ?: "not supported by the provider");
                else if (k == -EINVAL)
                        answer_error(r, 400, API_ERR_INVALID_REQUEST, error ?: "invalid request");
                else if (k == -EAGAIN)
                        answer_unavailable(r, error ?: "busy; retry in a moment", USEC_PER_SEC);
                else
                        answer_error(r, k == -E2BIG ? 409 : 500, k == -E2BIG ? API_ERR_CONFLICT : API_ERR_SERVER,
                                     error ?: "cannot start the authorization");
                return;
        }
        {
                json_t *j = connection_json(m, c);
                if (j && url)
                        json_object_set_new(j, "authorize_url", json_string(url));
                if (!existed && m->cluster) {
                        /* Several nodes: 201 once the insert is durable; a
                         * 409 if the name was taken on another node at the
                         * same moment (manager_insert_clustered()). */
                        free(r->revoke_answer);
                        r->revoke_answer = dump(j);
                        r->route = ROUTE_CREATE;
                        r->waiter = (Waiter) { .fn = on_inserted, .userdata = r, .on_insert = true };
                        r->audit_on_answer = true;
                        if (refresher_add_waiter(c, &r->waiter) < 0) {
                                answer_error(r, 500, API_ERR_SERVER, "out of memory");
                                return;
                        }
                        suspend(r, c);
                        return;
                }
                answer(r, existed ? 200 : 201, dump(j));
        }
}

/* A query parameter as sent, or NULL; -EINVAL (in *ret_bad) if it holds a
 * NUL byte (%00), which a C string would silently cut short. */
static const char *arg_checked(ApiRequest *r, const char *key, bool *ret_bad) {
        const char *v = NULL;
        size_t n = 0;

        if (MHD_lookup_connection_value_n(r->conn, MHD_GET_ARGUMENT_KIND, key, strlen(key), &v, &n) != MHD_YES ||
            !v)
                return NULL;
        if (strlen(v) != n)
                *ret_bad = true;
        return v;
}

/* A page size: decimal digits only, 1..max. */
static int parse_limit(const char *s, unsigned max, unsigned *ret) {
        unsigned long v = 0;
        size_t n = strlen(s);

        if (n == 0 || n > 9 || strspn(s, "0123456789") != n)
                return -EINVAL;
        v = strtoul(s, NULL, 10);
        if (v == 0 || v > max)
                return -ERANGE;
        *ret = (unsigned) v;
        return 0;
}

/* What a connection name may hold (any length up to the maximum, "" too):
 * a prefix or a cursor. Anything else matches no connection. */
static bool name_chars_valid(const char *s) {
        return strlen(s) <= CONNECTION_NAME_MAX &&
               strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == strlen(s);
}

/* Connections serialized per call from MHD: however long the page, the
 * loop does this much for it and then serves everything else (a token
 * handout waits for one chunk, not for a page). */
#define LIST_CHUNK 64
#define LIST_BLOCK (32 * 1024)

/* One page of GET /v1/connections, produced chunk by chunk as MHD sends
 * it. No pointer into a connection is kept between chunks: each chunk
 * seeks again after the last name examined, so connections added or
 * removed meanwhile behave as they do between pages. */
struct ListStream {
        Manager *manager;
        char cursor[CONNECTION_NAME_MAX + 1];   /* the last name examined; "" none */
        char prefix[CONNECTION_NAME_MAX + 1];   /* "" any */
        char provider[PROVIDER_NAME_MAX + 1];   /* "" any */
        ConnState state;                        /* _CONN_STATE_INVALID: any */
        unsigned limit, emitted, examined;
        bool started, done;
        StrBuf out;
        size_t pos;                             /* sent of out */
};

/* dst holds size bytes; src was checked to fit. */
static void copy_str(char *dst, size_t size, const char *src) {
        (void) snprintf(dst, size, "%s", src);
}

static void list_stream_free(void *p) {
        ListStream *s = p;

        if (!s)
                return;
        strbuf_free(&s->out);
        free(s);
}

static void list_finish(ListStream *s, bool more) {
        /* names hold only A-Z a-z 0-9 . _ -: nothing to escape */
        strbuf_puts(&s->out, "]");
        if (more)
                strbuf_printf(&s->out, ",\"next\":\"%s\"", s->cursor);
        strbuf_puts(&s->out, "}");
        s->done = true;
}

/* Appends up to LIST_CHUNK examined connections to s->out. */
static int list_fill(ListStream *s) {
        Manager *m = s->manager;
        size_t prefix_len = strlen(s->prefix);
        OrdIter it;

        if (!s->started) {
                strbuf_puts(&s->out, "{\"connections\":[");
                s->started = true;
        }
        /* Names with a prefix sit together: start at the later of the
         * cursor and the prefix, stop at the first name without it. */
        if (prefix_len > 0 && strcmp(s->cursor, s->prefix) < 0)
                ordmap_seek(&m->ordered, &it, s->prefix, true);
        else
                ordmap_seek(&m->ordered, &it, s->cursor, false);
        for (unsigned k = 0; k < LIST_CHUNK; k++) {
                OrdNode *n = ordmap_iter_next(&it);
                Connection *c = n ? container_of(n, Connection, by_order) : NULL;

                if (!c || (prefix_len > 0 && strncmp(c->name, s->prefix, prefix_len) != 0)) {
                        list_finish(s, false);
                        return 0;
                }
                if (s->emitted >= s->limit || s->examined >= API_LIST_SCAN_MAX) {
                        list_finish(s, true);
                        return 0;
                }
                s->examined++;
                copy_str(s->cursor, sizeof s->cursor, c->name);
                if (s->state >= 0 && c->state != s->state)
                        continue;
                if (s->provider[0] && !streq(c->names->provider, s->provider))
                        continue;
                if (s->emitted++ > 0)
                        strbuf_puts(&s->out, ",");
                connection_write(&s->out, c);
        }
        return 0;
}

static ssize_t list_read(void *cls, uint64_t pos _unused_, char *buf, size_t max) {
        ListStream *s = cls;
        size_t n;

        /* A chunk that matched no filter adds nothing: go on, within the
         * page's bound of API_LIST_SCAN_MAX examined connections. */
        while (s->pos >= s->out.len) {
                if (s->done)
                        return MHD_CONTENT_READER_END_OF_STREAM;
                s->out.len = 0;
                s->pos = 0;
                if (list_fill(s) < 0 || s->out.oom)
                        return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        n = MIN(max, s->out.len - s->pos);
        memcpy(buf, s->out.s + s->pos, n);
        s->pos += n;
        return (ssize_t) n;
}

static enum MHD_Result list_respond(struct MHD_Connection *conn, ListStream *s) {
        struct MHD_Response *resp;
        enum MHD_Result ret;

        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, LIST_BLOCK, list_read, s, list_stream_free);
        if (!resp) {
                list_stream_free(s);
                return MHD_NO;
        }
        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
        ret = MHD_queue_response(conn, 200, resp);
        MHD_destroy_response(resp);
        return ret;
}

/* GET /v1/connections?limit=N&after=NAME&state=S&provider=P&prefix=T: one
 * page in byte order of name, from the ordered index. Its work is bounded
 * by the page, never by the number of connections: at most
 * API_LIST_SCAN_MAX connections are examined, then the page ends with
 * "next" even if it is short; and it is done LIST_CHUNK connections at a
 * time, as MHD sends it. A cursor need not name a connection that still
 * exists: the page starts after it in byte order. */
static void route_list(ApiRequest *r) {
        bool bad = false;
        const char *lim = arg_checked(r, "limit", &bad), *after = arg_checked(r, "after", &bad),
                   *st = arg_checked(r, "state", &bad), *prov = arg_checked(r, "provider", &bad),
                   *prefix = arg_checked(r, "prefix", &bad);
        unsigned limit = API_LIST_LIMIT_DEFAULT;
        ConnState state = _CONN_STATE_INVALID;
        ListStream *s;

        if (bad)
                return answer_error(r, 400, API_ERR_INVALID_REQUEST, "a query parameter holds a NUL byte");
        if (lim && parse_limit(lim, API_LIST_LIMIT_MAX, &limit) < 0)
                return answer_error(r, 400, API_ERR_INVALID_REQUEST, "limit must be 1..10000");
        if (after && !name_chars_valid(after))
                return answer_error(r, 400, API_ERR_INVALID_REQUEST,
                                    "after must be a connection name (the next of the page before)");
        if (prefix && !name_chars_valid(prefix))
                return answer_error(r, 400, API_ERR_INVALID_REQUEST,
                                    "prefix must be made of connection name characters (A-Z a-z 0-9 . _ -)");
        if (st) {
                state = conn_state_from_string(st);
                if (state < 0)
                        return answer_error(r, 400, API_ERR_INVALID_REQUEST,
                                            "state must be pending, active or needs_reauth");
        }
        if (prov && (!*prov || strlen(prov) > PROVIDER_NAME_MAX))
                return answer_error(r, 400, API_ERR_INVALID_REQUEST, "invalid provider name");

        s = new0(ListStream, 1);
        if (!s)
                return answer_error(r, 500, API_ERR_SERVER, "out of memory");
        *s = (ListStream) { .manager = r->api->manager, .state = state, .limit = limit };
        copy_str(s->cursor, sizeof s->cursor, strempty(after));
        copy_str(s->prefix, sizeof s->prefix, strempty(prefix));
        copy_str(s->provider, sizeof s->provider, strempty(prov));
        r->stream = s;
        r->answered = true;
        r->status = 200;
}

static void route_providers(ApiRequest *r) {
        BrokerConfig *cfg = r->api->manager->config;
        json_t *a = json_array();

        for (size_t i = 0; a && i < cfg->n_providers; i++) {
                const Provider *p = cfg->providers[i];
                json_array_append_new(a, json_pack("{s:s, s:s, s:s?, s:s, s:s?, s:s, s:s, s:s?, s:b, s:s?, s:s?, "
                                                   "s:s?, s:s?, s:s?, s:s?, s:s}",
                                                   "name", p->name,
                                                   "grant", grant_to_string(p->grant),
                                                   "authorize_url", p->authorize_url,
                                                   "token_url", p->token_url,
                                                   "revoke_url", p->revoke_url,
                                                   "client_auth", client_auth_to_string(p->client_auth),
                                                   "pkce", pkce_to_string(p->pkce),
                                                   "scopes", p->scopes,
                                                   "has_client_secret", p->client_secret != NULL,
                                                   "refresh_url", p->refresh_url,
                                                   "device_authorization_url", p->device_authorization_url,
                                                   "userinfo_url", p->userinfo_url,
                                                   "test_url", p->test_url,
                                                   "issuer", p->issuer,
                                                   "redirect_uri", p->redirect_uri,
                                                   "test_method", p->test_method ?: "GET"));
        }
        {
                /* [broker] ca_file and connect_to: tokenctl test reaches test_url the same way */
                json_t *ct = json_array(), *o;

                for (size_t i = 0; ct && i < cfg->n_connect_to; i++)
                        json_array_append_new(ct, json_string(cfg->connect_to[i]));
                o = json_pack("{s:o}", "providers", a);
                if (o && cfg->ca_file)
                        json_object_set_new(o, "ca_file", json_string(cfg->ca_file));
                if (o && cfg->n_connect_to > 0)
                        json_object_set(o, "connect_to", ct);
                json_decref(ct);
                answer(r, 200, dump(o));
        }
}

/* The store: its engine, and on PostgreSQL whether the last heartbeat
 * reached it (from memory: daemon/cluster.c). */
static json_t *store_json(Manager *m, const ClusterView *cv) {
        static const ClusterView sqlite = { .reachable = true };
        const ClusterView *v = cv ?: &sqlite;
        char b[32];
        json_t *j;

        j = json_pack("{s:s, s:s, s:b}", "engine", store_engine_name(m->store), "node", m->config->node_name,
                      "reachable", v->reachable);
        if (j && cv && v->last_ok)
                json_object_set_new(j, "last_reached", json_string(format_timestamp(b, sizeof b, v->last_ok)));
        if (j && !v->reachable && v->error[0])
                json_object_set_new(j, "error", json_string(v->error));
        return j;
}

/* The nodes of the database, as the last heartbeat saw them, with the
 * leases each holds: the connections it refreshes (daemon/cluster.h). */
static json_t *nodes_json(Manager *m _unused_, const ClusterView *v) {
        json_t *a = json_array();
        char b[32];

        for (size_t i = 0; a && i < v->n; i++) {
                const ClusterNode *n = &v->nodes[i];

                json_array_append_new(a, json_pack("{s:s, s:s, s:s, s:I, s:b, s:b, s:I}", "name", n->name,
                                                   "version", n->version, "heartbeat",
                                                   format_timestamp(b, sizeof b, n->heartbeat_at), "heartbeat_age",
                                                   (json_int_t) (n->age / USEC_PER_SEC), "alive", n->alive, "self",
                                                   n->self, "holds",
                                                   (json_int_t) n->holds));
        }
        return a;
}

static void route_status(ApiRequest *r) {
        Manager *m = r->api->manager;
        ClusterView view;
        usec_t next = manager_next_refresh(m), t = now(DEADLINE_CLOCK);
        char b[32];
        json_t *j;

        j = json_pack("{s:s, s:s, s:I, s:{s:I, s:I, s:I}, s:I, s:I, s:I, s:I, s:I}",
                      "version", TOKENBROKER_VERSION,
                      "started_at", format_timestamp(b, sizeof b, m->started_at),
                      "uptime", (json_int_t) (usec_sub(now(CLOCK_REALTIME), m->started_at) / USEC_PER_SEC),
                      "connections",
                      "active", (json_int_t) m->n_state[CONN_ACTIVE],
                      "pending", (json_int_t) m->n_state[CONN_PENDING],
                      "needs_reauth", (json_int_t) m->n_state[CONN_NEEDS_REAUTH],
                      "providers", (json_int_t) m->config->n_providers,
                      "refreshing", (json_int_t) m->refreshing,
                      "refreshes_ok", (json_int_t) m->refresh_ok,
                      "refreshes_failed", (json_int_t) m->refresh_failed,
                      "tokens_served", (json_int_t) m->tokens_served);
        if (j && next != USEC_INFINITY)
                json_object_set_new(j, "next_wakeup_in", json_integer((json_int_t) (usec_sub(next, t) / USEC_PER_SEC)));
        if (m->cluster)
                cluster_view(m->cluster, &view);   /* once: the store line and the nodes agree */
        if (j)
                json_object_set_new(j, "store", store_json(m, m->cluster ? &view : NULL));
        if (j && m->cluster)
                json_object_set_new(j, "nodes", nodes_json(m, &view));
        answer(r, 200, dump(j));
}

/* A page of events, read on the store writer's thread (never on the
 * loop: on PostgreSQL a read is a network round trip) after the writes
 * queued before the request are committed, then answered on the loop.
 * manager_free() flushes the writer before api_free(), so the request is
 * still suspended when the read comes back. */
typedef struct EventPage {
        ApiRequest *r;
        char *connection;          /* NULL: every connection */
        long long before_id;
        unsigned limit;
        json_t *events;
        bool more;                 /* a row beyond the limit came back */
} EventPage;

static EventPage *event_page_free(EventPage *p) {
        if (!p)
                return NULL;
        free(p->connection);
        json_decref(p->events);
        free(p);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(EventPage *, event_page_free);

static int event_json(const StoreEvent *e, void *userdata) {
        EventPage *p = userdata;
        _cleanup_free_ char *msg = NULL;
        char b[32];

        if (json_array_size(p->events) >= p->limit) {
                p->more = true;
                return 0;
        }
        /* Written escaped and whole since; a row an older version cut
         * inside a character must not make the whole listing fail. */
        msg = text_escape_dup(e->message ?: "", 4096);
        if (!msg)
                return -ENOMEM;
        return json_array_append_new(p->events, json_pack("{s:I, s:s, s:s?, s:s, s:s}", "id", (json_int_t) e->id,
                                                          "at", format_timestamp(b, sizeof b, e->at),
                                                          "connection", e->connection, "kind", e->kind ?: "",
                                                          "message", msg)) < 0
                       ? -ENOMEM
                       : 0;
}

/* On the writer's thread: touches the page only. Runs again from the
 * start if its batch is retried. */
static int events_read(Store *s, void *userdata) {
        EventPage *p = userdata;

        json_array_clear(p->events);
        p->more = false;
        /* one more than the page: whether there is a next one */
        return store_events_list(s, p->connection, p->before_id, p->limit + 1, event_json, p);
}

static void on_events_read(int result, const char *error _unused_, void *userdata) {
        _cleanup_(event_page_freep) EventPage *p = userdata;
        ApiRequest *r = p->r;
        json_t *last;

        if (!r->suspended)
                return;
        if (result < 0)
                answer_error(r, 500, API_ERR_SERVER, "cannot read events");
        else {
                last = json_array_get(p->events, json_array_size(p->events) - 1);
                if (p->more && last)
                        answer(r, 200, dump(json_pack("{s:O, s:O}", "events", p->events, "next",
                                                      json_object_get(last, "id"))));
                else
                        answer(r, 200, dump(json_pack("{s:O}", "events", p->events)));
        }
        resume(r);
        mhd_loop_kick(&r->api->loop);
}

/* GET /v1/events?connection=NAME&limit=N&before=ID: newest first; "next"
 * (an id, for before=) when older events are left. */
static void route_events(ApiRequest *r) {
        bool bad = false;
        const char *conn = arg_checked(r, "connection", &bad), *lim = arg_checked(r, "limit", &bad),
                   *before = arg_checked(r, "before", &bad);
        unsigned limit = API_EVENTS_LIMIT_DEFAULT;
        long long before_id = 0;
        _cleanup_(event_page_freep) EventPage *p = NULL;
        int k;

        if (bad)
                return answer_error(r, 400, API_ERR_INVALID_REQUEST, "a query parameter holds a NUL byte");
        if (conn && !connection_name_valid(conn))
                return answer_error(r, 400, API_ERR_INVALID_REQUEST, "invalid connection name");
        if (lim && parse_limit(lim, API_EVENTS_LIMIT_MAX, &limit) < 0)
                return answer_error(r, 400, API_ERR_INVALID_REQUEST, "limit must be 1..10000");
        if (before) {
                char *end;
                errno = 0;
                before_id = strtoll(before, &end, 10);
                if (!*before || *end || errno || before_id < 0)
                        return answer_error(r, 400, API_ERR_INVALID_REQUEST, "before must be an event id");
        }
        p = new0(EventPage, 1);
        if (!p || !(p->events = json_array()) || (conn && !(p->connection = strdup(conn))))
                return answer_error(r, 500, API_ERR_SERVER, "out of memory");
        p->r = r;
        p->before_id = before_id;
        p->limit = limit;
        k = store_writer_custom(r->api->manager->writer, events_read, p, NULL, on_events_read, p);
        if (k < 0)
                return answer_error(r, k == -ESHUTDOWN ? 503 : 500, API_ERR_SERVER, "cannot read events");
        TAKE_PTR(p);
        suspend(r, NULL);
}

/* Prometheus text format 0.0.4. Every figure is a counter kept as things
 * happen: a scrape never walks the connections. */
/* GET /v1/preview?provider=NAME[&params={JSON object of strings}] */
static void route_preview(ApiRequest *r) {
        Manager *m = r->api->manager;
        bool bad = false;
        const char *name = arg_checked(r, "provider", &bad), *params = arg_checked(r, "params", &bad);
        const Provider *p;
        json_t *pj = NULL, *j = NULL, *v;
        const char *k;
        int q;

        if (bad || !name)
                return answer_error(r, 400, API_ERR_INVALID_REQUEST, "provider=NAME is required");
        p = broker_config_find_provider(m->config, name);
        if (!p)
                return answer_error(r, 404, API_ERR_NOT_FOUND, "unknown provider");
        if (params) {
                pj = json_loads(params, JSON_REJECT_DUPLICATES, NULL);
                if (!json_is_object(pj)) {
                        json_decref(pj);
                        return answer_error(r, 400, API_ERR_INVALID_REQUEST, "params must be a JSON object of strings");
                }
                json_object_foreach(pj, k, v)
                        if (!json_is_string(v) || !connection_name_valid(k)) {
                                json_decref(pj);
                                return answer_error(r, 400, API_ERR_INVALID_REQUEST,
                                                    "params must be a JSON object of strings");
                        }
        }
        q = preview_provider(m->http, p, pj, &j);
        json_decref(pj);
        if (q < 0)
                return answer_error(r, 500, API_ERR_SERVER, "cannot build the preview");
        answer(r, 200, dump(j));
}

/* GET /v1/connections/NAME/trace[?after=SEQ] */
static void route_trace(ApiRequest *r, Connection *c) {
        bool bad = false;
        const char *after = arg_checked(r, "after", &bad);
        unsigned long long a = 0;

        if (after) {
                char *end = NULL;

                errno = 0;
                a = strtoull(after, &end, 10);
                if (errno != 0 || end == after || *end || after[0] < '0' || after[0] > '9')
                        bad = true;
        }
        if (bad)
                return answer_error(r, 400, API_ERR_INVALID_REQUEST, "after must be a number");
        answer(r, 200, dump(trace_json(r->api->manager->trace, c->name, (uint64_t) a)));
}

static void route_metrics(ApiRequest *r) {
        static const double bounds[] = LATENCY_BOUNDS;
        Manager *m = r->api->manager;
        StrBuf b = {};
        usec_t earliest = manager_earliest_expiry(m);

        strbuf_puts(&b, "# HELP tokenbroker_connections Connections by provider and state.\n"
                        "# TYPE tokenbroker_connections gauge\n");
        for (size_t i = 0; i < m->n_stats; i++)
                for (int s = 0; s < _CONN_STATE_MAX; s++)
                        strbuf_printf(&b, "tokenbroker_connections{provider=\"%s\",state=\"%s\"} %" PRIu64 "\n",
                                      m->stats[i].name, conn_state_to_string(s), m->stats[i].n_state[s]);
        strbuf_puts(&b, "# HELP tokenbroker_refreshes_total Refreshes by provider and outcome.\n"
                        "# TYPE tokenbroker_refreshes_total counter\n");
        for (size_t i = 0; i < m->n_stats; i++) {
                const ProviderStats *ps = &m->stats[i];
                strbuf_printf(&b, "tokenbroker_refreshes_total{provider=\"%s\",outcome=\"ok\"} %" PRIu64 "\n",
                              ps->name, ps->refresh_ok);
                strbuf_printf(&b, "tokenbroker_refreshes_total{provider=\"%s\",outcome=\"transient_error\"} %" PRIu64 "\n",
                              ps->name, ps->refresh_transient);
                strbuf_printf(&b, "tokenbroker_refreshes_total{provider=\"%s\",outcome=\"permanent_error\"} %" PRIu64 "\n",
                              ps->name, ps->refresh_permanent);
        }
        strbuf_puts(&b, "# HELP tokenbroker_provider_request_duration_seconds Provider request latency.\n"
                        "# TYPE tokenbroker_provider_request_duration_seconds histogram\n");
        for (size_t i = 0; i < m->n_stats; i++) {
                const ProviderStats *ps = &m->stats[i];
                uint64_t cum = 0;
                for (size_t k = 0; k < N_LATENCY_BOUNDS; k++) {
                        cum += ps->latency_buckets[k];
                        strbuf_printf(&b, "tokenbroker_provider_request_duration_seconds_bucket{provider=\"%s\",le=\"%g\"} %" PRIu64 "\n",
                                      ps->name, bounds[k], cum);
                }
                cum += ps->latency_buckets[N_LATENCY_BOUNDS];
                strbuf_printf(&b, "tokenbroker_provider_request_duration_seconds_bucket{provider=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
                              ps->name, cum);
                strbuf_printf(&b, "tokenbroker_provider_request_duration_seconds_sum{provider=\"%s\"} %.6f\n",
                              ps->name, ps->latency_sum);
                strbuf_printf(&b, "tokenbroker_provider_request_duration_seconds_count{provider=\"%s\"} %" PRIu64 "\n",
                              ps->name, ps->latency_count);
        }
        strbuf_puts(&b, "# HELP tokenbroker_provider_requests_in_flight Provider requests in flight.\n"
                        "# TYPE tokenbroker_provider_requests_in_flight gauge\n");
        for (size_t i = 0; i < m->n_stats; i++)
                strbuf_printf(&b, "tokenbroker_provider_requests_in_flight{provider=\"%s\"} %u\n", m->stats[i].name,
                              m->stats[i].in_flight);
        strbuf_printf(&b, "# HELP tokenbroker_tokens_served_total Tokens handed out.\n"
                          "# TYPE tokenbroker_tokens_served_total counter\n"
                          "tokenbroker_tokens_served_total %" PRIu64 "\n", m->tokens_served);
        strbuf_puts(&b, "# HELP tokenbroker_earliest_expiry_seconds Seconds until the earliest access token expires.\n"
                        "# TYPE tokenbroker_earliest_expiry_seconds gauge\n");
        if (earliest > 0)
                strbuf_printf(&b, "tokenbroker_earliest_expiry_seconds %.3f\n",
                              ((double) earliest - (double) now(CLOCK_REALTIME)) / (double) USEC_PER_SEC);
        metrics_rt_ends(m, &b);
        strbuf_printf(&b, "# HELP tokenbroker_start_time_seconds Start time of the daemon since the epoch.\n"
                          "# TYPE tokenbroker_start_time_seconds gauge\n"
                          "tokenbroker_start_time_seconds %" PRIu64 "\n", m->started_at / USEC_PER_SEC);
        if (m->cluster) {
                ClusterView v;
                unsigned alive = 0;

                cluster_view(m->cluster, &v);
                for (size_t i = 0; i < v.n; i++)
                        alive += v.nodes[i].alive;
                strbuf_printf(&b, "# HELP tokenbroker_store_reachable Whether the last heartbeat reached the store's "
                                  "database.\n# TYPE tokenbroker_store_reachable gauge\n"
                                  "tokenbroker_store_reachable %d\n", v.reachable ? 1 : 0);
                strbuf_printf(&b, "# HELP tokenbroker_nodes Nodes of the store's database by liveness.\n"
                                  "# TYPE tokenbroker_nodes gauge\n"
                                  "tokenbroker_nodes{state=\"alive\"} %u\ntokenbroker_nodes{state=\"dead\"} %zu\n",
                              alive, v.n - alive);
                strbuf_puts(&b, "# HELP tokenbroker_node_heartbeat_age_seconds Age of each node's heartbeat.\n"
                                "# TYPE tokenbroker_node_heartbeat_age_seconds gauge\n");
                for (size_t i = 0; i < v.n; i++)
                        strbuf_printf(&b, "tokenbroker_node_heartbeat_age_seconds{node=\"%s\"} %.3f\n", v.nodes[i].name,
                                      (double) v.nodes[i].age / (double) USEC_PER_SEC);
                strbuf_puts(&b, "# HELP tokenbroker_node_leases Connections whose lease each node holds (it refreshes "
                                "them).\n# TYPE tokenbroker_node_leases gauge\n");
                for (size_t i = 0; i < v.n; i++)
                        strbuf_printf(&b, "tokenbroker_node_leases{node=\"%s\"} %zu\n", v.nodes[i].name,
                                      v.nodes[i].holds);
        }
        r->content_type = "text/plain; version=0.0.4; charset=utf-8";
        answer(r, 200, strbuf_steal(&b));
}

static bool has_body(struct MHD_Connection *conn) {
        const char *len = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);

        if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))
                return true;
        return len && strspn(len, "0") != strlen(len);
}

static bool body_too_large(struct MHD_Connection *conn) {
        const char *len = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        char *end;
        unsigned long long n;

        if (!len)
                return false;   /* chunked: counted as it arrives */
        errno = 0;
        n = strtoull(len, &end, 10);
        return errno != 0 || end == len || n > API_BODY_MAX;
}

/* What a peer that is not an admin may not do, decided from the method,
 * the path and the peer alone (no body, no query): answers the refusal and
 * returns true, or returns false if the request may go on. */
static bool refuse_unprivileged(ApiRequest *r, const char *method, const char *url) {
        Manager *m = r->api->manager;
        Connection *c;
        ApiRoute rt;
        int k;

        assert(r->peer && !r->peer->admin);
        if (links_api_path(url))
                return answer_error(r, 403, API_ERR_FORBIDDEN, "admin route: peer not allowed"), true;
        k = api_route_match(method, url, &rt);
        if (k == -ENAMETOOLONG)
                return answer_error(r, 404, API_ERR_NOT_FOUND, "unknown connection"), true;
        if (k == -ENOENT && !rt.connection)
                return answer_error(r, 404, API_ERR_NOT_FOUND, "no such route"), true;
        if (rt.id != API_ROUTE_TOKEN && rt.id != API_ROUTE_INVALIDATE)
                return answer_error(r, 403, API_ERR_FORBIDDEN, "admin route: peer not allowed"), true;
        if (k == -EOPNOTSUPP)
                return answer_error(r, 405, API_ERR_METHOD, "method not allowed"), true;
        c = rt.name[0] ? manager_get(m, rt.name) : NULL;
        /* Unknown and forbidden look the same. */
        if (!c || !peer_may_read(r->peer, c))
                return answer_error(r, 403, API_ERR_FORBIDDEN, "peer not allowed"), true;
        return false;
}

/* ---- audit trail ------------------------------------------------------ */

static void audit_ids(StrBuf *b, const char *what, const unsigned *ids, unsigned n) {
        strbuf_printf(b, "%s ", what);
        if (n == 0)
                strbuf_puts(b, "none");
        for (unsigned i = 0; i < n; i++)
                strbuf_printf(b, "%s%u", i ? "," : "", ids[i]);
}

/* One event per mutating admin request, from an admin peer (refused
 * peers change nothing and are not recorded: any local user could fill
 * the table): who (uid and pid from SO_PEERCRED), what, and how it was
 * answered, or that it is under way. Only values the broker checked or
 * built go in: a valid connection name, numbers, fixed words. */
static void audit_record(ApiRequest *r) {
        char how[64];

        if (!r->audit_action)
                return;
        if (!r->answered)
                snprintf(how, sizeof how, "under way");
        else
                snprintf(how, sizeof how, "%s (%u)", r->status < 300 ? "done" : "refused", r->status);
        manager_event_named(r->api->manager, r->audit_name[0] ? r->audit_name : NULL, "admin",
                            "admin action %s by uid %u pid %d%s%s: %s", r->audit_action, (unsigned) r->peer->uid,
                            (int) r->peer->pid, r->audit_detail[0] ? ", " : "", r->audit_detail, how);
        r->audit_action = NULL;
}

static void audit_begin(ApiRequest *r, const char *action, const char *name) {
        r->audit_action = action;
        r->audit_name[0] = 0;
        r->audit_detail[0] = 0;
        if (name && connection_name_valid(name))
                snprintf(r->audit_name, sizeof r->audit_name, "%s", name);
}

/* The ACL a create sets (a re-authorization with allow lists replaces
 * the old one: an ACL change, said so when it differs). */
static void audit_acl(ApiRequest *r, const Connection *old, const uid_t *users, unsigned nu, const gid_t *groups,
                      unsigned ng) {
        StrBuf b = {};
        bool changed;

        if (nu == 0 && ng == 0)
                return;
        changed = old && (old->n_allow_users != nu || old->n_allow_groups != ng ||
                          (nu && memcmp(old->allow_users, users, sizeof(uid_t) * nu) != 0) ||
                          (ng && memcmp(connection_allow_groups(old), groups, sizeof(gid_t) * ng) != 0));
        strbuf_puts(&b, changed ? "ACL changed to " : old ? "ACL unchanged, " : "ACL ");
        audit_ids(&b, "users", (const unsigned *) users, nu);
        audit_ids(&b, " groups", (const unsigned *) groups, ng);
        if (b.s) {
                if (b.len >= sizeof r->audit_detail)
                        memcpy(b.s + sizeof r->audit_detail - 4, "...", 4);   /* digits and commas: no character to cut */
                snprintf(r->audit_detail, sizeof r->audit_detail, "%s", b.s);
        }
        strbuf_free(&b);
}

/* /v1/links (daemon/links.c): an answer now, or once its write is durable. */
static void on_links_written(int result, const char *error _unused_, void *userdata) {
        ApiRequest *r = userdata;

        if (!r->suspended)
                return;
        if (result < 0)
                answer_error(r, 500, API_ERR_SERVER, "cannot store the link change");
        resume(r);
        mhd_loop_kick(&r->api->loop);
}

/* On PostgreSQL the answer comes after the links were read. */
static void on_links_answer(unsigned status, char *body, void *userdata) {
        ApiRequest *r = userdata;

        if (!r->suspended) {
                free(body);
                return;
        }
        answer(r, status, body);
        audit_record(r);
}

static void route_links(ApiRequest *r, const char *method, const char *url) {
        bool bad = false;
        const char *conn = arg_checked(r, "connection", &bad);
        unsigned status = 500;
        char *body = NULL;
        int k;

        if (bad)
                return answer_error(r, 400, API_ERR_INVALID_REQUEST, "a query parameter holds a NUL byte");
        if (streq(method, "POST") || streq(method, "DELETE"))
                audit_begin(r, streq(method, "POST") ? "link" : "unlink", NULL);
        k = links_api(r->api->manager, method, url, conn, r->body, r->body_len, r->peer->uid, &status, &body,
                      on_links_written, on_links_answer, r);
        if (k == 2) {
                free(body);
                return suspend(r, NULL);   /* answered and recorded by on_links_answer() */
        }
        answer(r, status, body);
        audit_record(r);
        if (k > 0)
                suspend(r, NULL);
}

static void dispatch(ApiRequest *r, const char *method, const char *url) {
        Manager *m = r->api->manager;
        Connection *c;
        ApiRoute rt;
        int k;

        if (r->too_large) {
                answer_error(r, 413, API_ERR_INVALID_REQUEST, "request body too large");
                return;
        }
        if (links_api_path(url)) {
                if (!r->peer->admin)
                        return answer_error(r, 403, API_ERR_FORBIDDEN, "admin route: peer not allowed");
                return route_links(r, method, url);
        }
        k = api_route_match(method, url, &rt);
        if (k == -ENAMETOOLONG)
                return answer_error(r, 404, API_ERR_NOT_FOUND, "unknown connection");
        if (k == -ENOENT && !rt.connection)
                return answer_error(r, 404, API_ERR_NOT_FOUND, "no such route");
        /* A name no connection can have comes back empty. */
        c = rt.name[0] ? manager_get(m, rt.name) : NULL;

        if (rt.id == API_ROUTE_TOKEN || rt.id == API_ROUTE_INVALIDATE) {
                if (k == -EOPNOTSUPP)
                        return answer_error(r, 405, API_ERR_METHOD, "method not allowed");
                /* Unknown and forbidden look the same to a peer that may not
                 * know which connections exist. */
                if (!c)
                        return answer_error(r, r->peer->admin ? 404 : 403,
                                            r->peer->admin ? API_ERR_NOT_FOUND : API_ERR_FORBIDDEN,
                                            r->peer->admin ? "unknown connection" : "peer not allowed");
                if (c->access_token)
                        __builtin_prefetch(c->access_token);   /* read last, asked for now */
                return route_token(r, c, rt.id == API_ROUTE_TOKEN ? ROUTE_TOKEN : ROUTE_INVALIDATE);
        }
        if (!r->peer->admin)
                return answer_error(r, 403, API_ERR_FORBIDDEN, "admin route: peer not allowed");
        if (rt.connection && !c)
                return answer_error(r, 404, API_ERR_NOT_FOUND, "unknown connection");
        if (k == -EOPNOTSUPP)
                return answer_error(r, 405, API_ERR_METHOD, "method not allowed");
        switch (k) {
        case API_ROUTE_LIST:
                return route_list(r);
        case API_ROUTE_CREATE:
                audit_begin(r, "authorize", NULL);   /* route_create() says which */
                route_create(r);
                if (!r->audit_on_answer)   /* else on_inserted() records it with its answer */
                        audit_record(r);
                return;
        case API_ROUTE_SHOW:
                return answer(r, 200, dump(connection_json(m, c)));
        case API_ROUTE_REVOKE:
                audit_begin(r, "revoke", rt.name);   /* before: c may be gone after */
                route_revoke(r, c);
                return audit_record(r);
        case API_ROUTE_REFRESH:
                audit_begin(r, "refresh", rt.name);
                route_refresh(r, c);
                return audit_record(r);
        case API_ROUTE_PROVIDERS:
                return route_providers(r);
        case API_ROUTE_STATUS:
                return route_status(r);
        case API_ROUTE_EVENTS:
                return route_events(r);
        case API_ROUTE_METRICS:
                return route_metrics(r);
        case API_ROUTE_PREVIEW:
                return route_preview(r);
        case API_ROUTE_TRACE:
                return route_trace(r, c);
        default:   /* below a connection, but no such route */
                return answer_error(r, 404, API_ERR_NOT_FOUND, "no such route");
        }
}

/* ---- libmicrohttpd plumbing ------------------------------------------ */

/* ---- connection caps and request deadlines ---------------------------- */

static void waiting_unlink(ApiConn *c) {
        Api *a = c->api;

        if (c->deadline == USEC_INFINITY)
                return;
        if (c->wprev)
                c->wprev->wnext = c->wnext;
        else
                a->waiting_head = c->wnext;
        if (c->wnext)
                c->wnext->wprev = c->wprev;
        else
                a->waiting_tail = c->wprev;
        c->wnext = c->wprev = NULL;
        c->deadline = USEC_INFINITY;
}

/* The reaper's timer only ever moves earlier between firings. Every new
 * deadline is later than the head's, and under load nearly every request
 * arrives on the connection that has waited longest, the head: following
 * the head each time moved the timer on every request. A timer that
 * fires before the head is due costs one look at the head. */
static void reaper_rearm(Api *a) {
        usec_t when;

        if (!a->reaper || !a->waiting_head)
                return;
        when = a->waiting_head->deadline;
        if (a->reaper_at != USEC_INFINITY && a->reaper_at <= when)
                return;
        a->reaper_at = when;
        (void) sd_event_source_set_time(a->reaper, when);
        (void) sd_event_source_set_enabled(a->reaper, SD_EVENT_ONESHOT);
}

/* Starts (wait) or stops (!wait) the wait for a complete request. O(1):
 * this runs for every request. */
static void conn_deadline(ApiConn *c, bool wait) {
        ApiConn *head;
        Api *a;

        if (!c)
                return;
        a = c->api;
        head = a->waiting_head;
        waiting_unlink(c);
        if (wait) {
                usec_t t;

                /* The loop's time (this turn's start, a clock read saved
                 * per request): never later than now, never earlier than
                 * a deadline set before, so appending keeps the order. */
                if (sd_event_now(a->manager->event, CLOCK_MONOTONIC, &t) < 0)
                        t = now(CLOCK_MONOTONIC);
                c->deadline = usec_add(t, API_REQUEST_TIMEOUT_SEC * USEC_PER_SEC);
                c->wprev = a->waiting_tail;
                if (a->waiting_tail)
                        a->waiting_tail->wnext = c;
                else
                        a->waiting_head = c;
                a->waiting_tail = c;
        }
        /* The timer follows the head, which only changes when c was or is
         * the head. */
        if (a->waiting_head != head)
                reaper_rearm(a);
}

static ApiConn *request_conn(struct MHD_Connection *conn) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

        return ci ? ci->socket_context : NULL;
}

static int on_reap(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        Api *a = userdata;
        usec_t t = now(CLOCK_MONOTONIC);
        unsigned n = 0;

        a->reaper_at = USEC_INFINITY;

        while (a->waiting_head && a->waiting_head->deadline <= t) {
                ApiConn *c = a->waiting_head;
                /* MHD sees end of file and closes the connection itself. */
                (void) shutdown(c->fd, SHUT_RDWR);
                waiting_unlink(c);
                n++;
        }
        if (n > 0) {
                log_debug("api: closed %u connection(s) that sent no complete request within %us.", n,
                          (unsigned) API_REQUEST_TIMEOUT_SEC);
                mhd_loop_kick(&a->loop);
        }
        reaper_rearm(a);
        return 0;
}

static const char *uid_count_key(const HashmapNode *n) {
        return container_of(n, const UidCount, node)->key;
}

/* Counts a new non-admin connection against the caps; false if over one. */
static bool conn_admit(Api *a, ApiConn *c) {
        const char *why = NULL;
        UidCount *u = NULL;
        HashmapNode *n;
        char key[24];

        if (c->have_peer && c->peer.admin)
                return true;
        if (a->n_unprivileged >= a->conn_limit - MIN(a->conn_limit / 4, (unsigned) API_ADMIN_RESERVE))
                why = "the connections left to non-admin users are all taken";
        else if (c->have_peer) {
                snprintf(key, sizeof key, "%u", (unsigned) c->peer.uid);
                n = hashmap_get(a->uids, key);
                u = n ? container_of(n, UidCount, node) : NULL;
                if (u && u->n >= API_PER_UID_MAX)
                        why = "its uid holds the most connections one user may";
                else if (!u) {
                        u = new0(UidCount, 1);
                        if (!u || (strcpy(u->key, key), hashmap_put(a->uids, &u->node)) < 0) {
                                u = mfree(u);
                                why = "out of memory";
                        }
                }
        }
        if (why) {
                usec_t t = now(CLOCK_MONOTONIC);
                /* At most one line a minute: the log is not the attacker's. */
                if (a->cap_logged == 0 || t >= usec_add(a->cap_logged, 60 * USEC_PER_SEC)) {
                        a->cap_logged = t;
                        log_warning("api: refused a connection of uid %u: %s (%u per uid, %u for admins).",
                                    c->have_peer ? (unsigned) c->peer.uid : 0u, why, (unsigned) API_PER_UID_MAX,
                                    MIN(a->conn_limit / 4, (unsigned) API_ADMIN_RESERVE));
                }
                return false;
        }
        if (u) {
                u->n++;
                c->uc = u;
        }
        c->counted = true;
        a->n_unprivileged++;
        return true;
}

static void conn_release(Api *a, ApiConn *c) {
        if (c->uc && --c->uc->n == 0) {
                hashmap_remove_node(a->uids, &c->uc->node);
                free(c->uc);
        }
        c->uc = NULL;
        if (c->counted)
                a->n_unprivileged--;
        c->counted = false;
}

static void on_notify_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                                 enum MHD_ConnectionNotificationCode toe) {
        Api *a = cls;
        ApiConn *c;

        if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
                const union MHD_ConnectionInfo *ci =
                        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);

                c = ci ? new0(ApiConn, 1) : NULL;
                *socket_context = c;
                if (!c) {
                        if (ci)
                                (void) shutdown(ci->connect_fd, SHUT_RDWR);
                        return;
                }
                c->api = a;
                c->fd = ci->connect_fd;
                c->deadline = USEC_INFINITY;
                c->have_peer = peer_from_fd(c->fd, a->admin_gid, a->have_admin_gid, &c->peer) >= 0;
                if (!conn_admit(a, c)) {
                        /* Refused before it can send a byte; MHD reads end
                         * of file and closes it (NOTIFY_CLOSED frees c). */
                        (void) shutdown(c->fd, SHUT_RDWR);
                        return;
                }
                conn_deadline(c, true);
        } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
                c = *socket_context;
                if (!c)
                        return;
                conn_deadline(c, false);
                conn_release(a, c);
                free(c);
                *socket_context = NULL;
        }
}

static ApiRequest *request_new(Api *a) {
        ApiRequest *r = a->n_spare > 0 ? a->spare[--a->n_spare] : NULL;

        if (r) {
                memset(r, 0, offsetof(ApiRequest, slot_resp));   /* the slot stays */
                return r;
        }
        /* slot[] needs no zeroing: strbuf_on() starts it */
        r = malloc(sizeof *r);
        if (r)
                memset(r, 0, offsetof(ApiRequest, slot));
        return r;
}

static void request_destroy(ApiRequest *r) {
        if (r->slot_resp)
                MHD_destroy_response(r->slot_resp);
        free(r);
}

static void request_free(Api *a, ApiRequest *r) {
        if (a->n_spare < API_SPARE_REQUESTS)
                a->spare[a->n_spare++] = r;
        else
                request_destroy(r);
}

/* Queues r's answer in slot[]: its kept response again when the length
 * is the same, else a new one over it. */
static enum MHD_Result respond_slot(struct MHD_Connection *conn, ApiRequest *r) {
        if (!r->slot_resp || r->slot_resp_len != r->slot_len) {
                if (r->slot_resp)
                        MHD_destroy_response(r->slot_resp);
                r->slot_resp = mhd_response_json(r->slot, r->slot_len);
                r->slot_resp_len = r->slot_resp ? r->slot_len : 0;
                if (!r->slot_resp)
                        return MHD_NO;
        }
        return MHD_queue_response(conn, r->status, r->slot_resp);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe _unused_) {
        ApiRequest *r = *req_cls;

        /* A kept-alive connection has as long again for its next request. */
        conn_deadline(r && r->aconn ? r->aconn : request_conn(conn), true);
        if (!r)
                return;
        proxy_free(r->proxy);
        free(r->proxy_raw);
        if (r->body)
                explicit_wipe(r->body, r->body_len);
        list_stream_free(r->stream);
        sd_event_source_disable_unref(r->wait_timer);
        free(r->body);
        free(r->response);
        free(r->revoke_answer);
        if (r->slot_len > 0)   /* sent: the token goes from our memory */
                explicit_wipe(r->slot, r->slot_len);
        request_free(cls, r);
        *req_cls = NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version _unused_,
                                  const char *upload_data, size_t *upload_data_size, void **req_cls) {
        Api *a = cls;
        ApiRequest *r = *req_cls;

        if (r && r->proxy_raw) {
                if (r->proxy)
                        return proxy_handle(r->proxy, upload_data, upload_data_size);
                if (r->conn) {   /* refused: nothing more to read */
                        *upload_data_size = 0;
                        return MHD_YES;
                }
                ApiConn *c = request_conn(conn);
                r->api = a;
                r->conn = conn;
                r->aconn = c;
                r->peer = c && c->have_peer ? &c->peer : NULL;
                /* the headers are in; the body may take its time (MHD's
                 * inactivity timeout still holds) */
                conn_deadline(c, false);
                return proxy_begin(a->proxy, conn, r->peer, method, r->proxy_raw, &r->proxy);
        }
        if (!r) {
                ApiConn *c = request_conn(conn);

                /* Answer on the second call, not the first: MHD 0.9.75
                 * closes the connection otherwise (keep-alive lost). */
                r = request_new(a);
                if (!r)
                        return MHD_NO;
                r->api = a;
                r->conn = conn;
                r->aconn = c;
                r->peer = c && c->have_peer ? &c->peer : NULL;
                *req_cls = r;
                /* Only admin routes read a body: whether this peer may use
                 * the route is decided from the headers, before a byte of
                 * the body is read or kept. A refused request is answered
                 * now (and its connection closed, the body unread). */
                if (has_body(conn) && (!r->peer || !r->peer->admin || body_too_large(conn))) {
                        if (!r->peer)
                                answer_error(r, 403, API_ERR_FORBIDDEN, "cannot identify the peer");
                        else if (body_too_large(conn))
                                answer_error(r, 413, API_ERR_INVALID_REQUEST, "request body too large");
                        else
                                (void) refuse_unprivileged(r, method, url);
                        if (r->answered) {
                                conn_deadline(c, false);
                                return mhd_respond(conn, r->status, "application/json", TAKE_PTR(r->response),
                                                   NULL, NULL);
                        }
                        r->discard_body = true;   /* a route that takes none */
                }
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                if (!r->too_large && !r->discard_body) {
                        if (r->body_len + *upload_data_size > API_BODY_MAX) {
                                r->too_large = true;
                        } else {
                                char *b = realloc(r->body, r->body_len + *upload_data_size + 1);
                                if (!b)
                                        return MHD_NO;
                                memcpy(b + r->body_len, upload_data, *upload_data_size);
                                r->body = b;
                                r->body_len += *upload_data_size;
                                r->body[r->body_len] = 0;
                        }
                }
                *upload_data_size = 0;
                return MHD_YES;
        }
        /* The whole request is in: from here on the time is ours. */
        conn_deadline(r->aconn ?: request_conn(conn), false);
        if (!r->answered && !r->suspended) {
                if (!r->peer)
                        answer_error(r, 403, API_ERR_FORBIDDEN, "cannot identify the peer");
                else
                        dispatch(r, method, url);
        }
        if (r->suspended)
                return MHD_YES;
        if (!r->answered)
                answer_error(r, 500, API_ERR_SERVER, "no answer");
        if (r->stream)
                return list_respond(conn, TAKE_PTR(r->stream));
        if (r->slot_len > 0 && !r->extra_header && r->status == 200 && !r->content_type)
                return respond_slot(conn, r);
        if (r->slot_len > 0) {   /* a rarer answer: its own copy, with its headers */
                r->response = strndup(r->slot, r->slot_len);
                explicit_wipe(r->slot, r->slot_len);
                r->slot_len = 0;
        }
        if (!r->response)
                return MHD_NO;
        {
                char *body = TAKE_PTR(r->response);
                return mhd_respond(conn, r->status, r->content_type ?: "application/json", body, r->extra_header,
                                   r->extra_header ? r->extra_value : NULL);
        }
}

/* The raw request target, before MHD decodes it: the proxy must see
 * %2f and %2e as sent. Kept for proxy targets only. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn _unused_) {
        ApiRequest *r;

        if (!proxy_target_is_proxy(uri)) {
                /* A token's route names its connection: ask for its cache
                 * lines now, while MHD reads the headers, rather than
                 * wait for each of them at the lookup (make bench). */
                const char *name = startswith(uri, PROXY_PREFIX);

                if (name) {
                        size_t n = strcspn(name, "/?%");

                        if (n > 0 && n <= CONNECTION_NAME_MAX && name[n] == '/')
                                manager_prefetch(((Api *) cls)->manager, name, n);
                }
                return NULL;
        }
        r = request_new(cls);
        if (!r)
                return NULL;
        r->api = cls;
        r->proxy_raw = strdup(uri);
        if (!r->proxy_raw) {
                request_free(cls, r);
                r = NULL;
        }
        return r;
}

/* Each connection is a descriptor: MHD must refuse connections before
 * accept() fails for want of one (EMFILE), with room left for the store,
 * curl's sockets and the callback listener. */
static unsigned api_connection_limit(void) {
        struct rlimit rl;
        rlim_t budget;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
                return API_CONNECTIONS_MAX;
        budget = rl.rlim_cur > 1024 ? rl.rlim_cur - 512 : rl.rlim_cur / 2;
        return (unsigned) MAX(MIN(budget, (rlim_t) API_CONNECTIONS_MAX), (rlim_t) 64);
}

int api_new(Manager *m, int fd, Api **ret) {
        Api *a;
        struct MHD_Daemon *d;
        int r;

        a = new0(Api, 1);
        if (!a)
                return log_oom();
        a->manager = m;
        a->reaper_at = USEC_INFINITY;
        if (m->config->admin_group) {
                r = acl_parse_group(m->config->admin_group, &a->admin_gid);
                if (r < 0) {
                        free(a);
                        return log_error_errno(r, "Unknown admin_group '%s'.", m->config->admin_group);
                }
                a->have_admin_gid = true;
        }
        assert(fd >= 0);   /* bound by manager_bind_api() or passed by systemd */
        a->fd = fd;
        a->conn_limit = api_connection_limit();
        r = hashmap_new(&a->uids, uid_count_key);
        if (r >= 0 && !(a->proxy = proxy_ctx_new(m, &a->loop)))
                r = -ENOMEM;
        if (r < 0) {
                hashmap_free(a->uids);
                safe_close(fd);
                free(a);
                return log_error_errno(r, "Failed to set up the API: %m");
        }
        d = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC, 0, NULL, NULL,
                             on_request, a,
                             MHD_OPTION_LISTEN_SOCKET, (MHD_socket) fd,
                             MHD_OPTION_CONNECTION_LIMIT, a->conn_limit,
                             MHD_OPTION_CONNECTION_TIMEOUT, (unsigned) 120,
                             MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) API_CONNECTION_MEMORY,
                             MHD_OPTION_NOTIFY_CONNECTION, on_notify_connection, a,
                             MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
                             MHD_OPTION_URI_LOG_CALLBACK, on_uri, a,
                             MHD_OPTION_END);
        if (!d) {
                safe_close(fd);
                proxy_ctx_free(a->proxy);
                hashmap_free(a->uids);
                free(a);
                return log_error_errno(EIO, "Failed to start the API server on '%s'.", m->config->socket);
        }
        r = mhd_loop_attach(&a->loop, m->event, d, "api");
        if (r >= 0)
                r = sd_event_add_time(m->event, &a->reaper, CLOCK_MONOTONIC, USEC_INFINITY,
                                      USEC_PER_SEC / 10, on_reap, a);
        if (r < 0) {
                mhd_loop_detach(&a->loop);
                a->reaper = sd_event_source_disable_unref(a->reaper);
                safe_close(fd);
                proxy_ctx_free(a->proxy);
                hashmap_free(a->uids);
                free(a);
                return log_error_errno(r, "Failed to watch the API server: %m");
        }
        (void) sd_event_source_set_description(a->reaper, "api-deadlines");
        reaper_rearm(a);
        *ret = a;
        return 0;
}

Api *api_free(Api *a) {
        if (!a)
                return NULL;
        /* Suspended connections must be resumed before MHD can stop. */
        while (a->suspended) {
                ApiRequest *r = a->suspended;
                if (r->target) {
                        if (connection_revoke_waiter(r->target) == &r->waiter)
                                r->target->refresh->revoke_waiter = NULL;
                        refresher_detach_waiter(r->target, &r->waiter);
                        connection_refresh_trim(r->target);
                }
                r->wait_timer = sd_event_source_disable_unref(r->wait_timer);
                answer_error(r, 503, API_ERR_UNAVAILABLE, "shutting down");
                resume(r);
        }
        a->proxy = proxy_ctx_free(a->proxy);
        /* Stopping MHD closes the connections (NOTIFY_CLOSED frees them
         * and their counts). */
        mhd_loop_detach(&a->loop);
        a->reaper = sd_event_source_disable_unref(a->reaper);
        while (a->n_spare > 0)
                request_destroy(a->spare[--a->n_spare]);
        hashmap_free(a->uids);
        safe_close(a->fd);
        free(a);
        return NULL;
}
