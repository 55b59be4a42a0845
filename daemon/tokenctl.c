/* SPDX-License-Identifier: MIT */

/* tokenctl: the admin and scripting CLI. It speaks only the socket API.
 * A verb table; each verb builds a request, calls api_call() and prints a
 * table for people or JSON for scripts. */

#include <curl/curl.h>
#include <getopt.h>
#include <grp.h>
#include <jansson.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>

#include "common/egress.h"
#include "common/api.h"
#include "common/macro.h"
#include "common/util.h"
#include "daemon/link-token.h"
#include "daemon/tokenctl.h"

static const char *arg_socket = NULL;
static bool arg_json = false;

void reply_done(Reply *r) {
        if (r->body)
                explicit_wipe(r->body, r->len);
        free(r->body);
        json_decref(r->json);
        *r = (Reply) {};
}

static size_t write_cb(char *p, size_t size, size_t n, void *ud) {
        Reply *r = ud;
        size_t k = size * n;
        char *b;

        if (r->len + k > 64 * 1024 * 1024)
                return 0;
        b = realloc(r->body, r->len + k + 1);
        if (!b)
                return 0;
        memcpy(b + r->len, p, k);
        r->body = b;
        r->len += k;
        r->body[r->len] = 0;
        return k;
}

const char *socket_path(void) {
        return arg_socket ?: getenv(SOCKET_ENV) ?: DEFAULT_SOCKET_PATH;
}

/* curl says only "Couldn't connect to server": look at the socket path
 * ourselves and say which of the usual causes it is, and what to do. */
static void explain_unreachable(const char *path, CURLcode cc) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct stat st;
        int fd, e;

        if (stat(path, &st) < 0) {
                e = errno;
                if (e == ENOENT)
                        fprintf(stderr, "tokenctl: no socket at %s: tokenbrokerd is not running, or it listens "
                                        "elsewhere. Start it (systemctl start tokenbrokerd), or point tokenctl "
                                        "at its socket with --socket PATH or $" SOCKET_ENV ".\n", path);
                else if (e == EACCES)
                        fprintf(stderr, "tokenctl: permission denied reaching %s: a directory on the way is "
                                        "closed to you. Run tokenctl as root or as a member of the daemon's "
                                        "socket_group or admin_group.\n", path);
                else
                        fprintf(stderr, "tokenctl: cannot use the socket path %s: %s\n", path, strerror(e));
                return;
        }
        if (!S_ISSOCK(st.st_mode)) {
                fprintf(stderr, "tokenctl: %s is not a socket but a %s: check --socket, $" SOCKET_ENV
                                " and the socket setting in tokenbroker.conf.\n", path,
                        S_ISDIR(st.st_mode) ? "directory" : S_ISREG(st.st_mode) ? "regular file" : "special file");
                return;
        }
        e = 0;
        if (strlen(path) >= sizeof sa.sun_path)
                e = ENAMETOOLONG;
        else {
                strcpy(sa.sun_path, path);
                fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (fd < 0)
                        e = errno;
                else {
                        if (connect(fd, (struct sockaddr *) &sa, sizeof sa) < 0)
                                e = errno;
                        (void) close(fd);
                }
        }
        if (e == ECONNREFUSED)
                fprintf(stderr, "tokenctl: nothing listens on %s: a stale socket left by a tokenbrokerd that is "
                                "no longer running. Start the daemon (systemctl start tokenbrokerd); it replaces "
                                "the stale socket.\n", path);
        else if (e == EACCES || e == EPERM)
                fprintf(stderr, "tokenctl: permission denied on %s: run tokenctl as root or as a member of the "
                                "daemon's socket_group or admin_group (ls -l %s shows who may connect).\n", path,
                        path);
        else if (e != 0)
                fprintf(stderr, "tokenctl: cannot connect to tokenbrokerd at %s: %s\n", path, strerror(e));
        else
                fprintf(stderr, "tokenctl: tokenbrokerd at %s accepted the connection but the request failed: "
                                "%s\n", path, curl_easy_strerror(cc));
}

/* One request to the daemon. Returns an exit code: EXIT_OK, or
 * EXIT_UNREACHABLE when the socket does not answer. With parse, ret->json
 * is the answer parsed (NULL if it is no JSON). */
static int api_call_parse(const char *method, const char *path, json_t *body, bool parse, Reply *ret) {
        CURL *c = curl_easy_init();
        struct curl_slist *h = NULL;
        char url[1024], *data = NULL;
        CURLcode cc;

        *ret = (Reply) {};
        if (!c)
                return EXIT_FAILURE_GENERIC;
        snprintf(url, sizeof url, "http://localhost%s", path);
        curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, socket_path());
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_cb);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, ret);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 300L);
        if (body) {
                data = json_dumps(body, JSON_COMPACT);
                h = curl_slist_append(h, "Content-Type: application/json");
                curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, data);
        }
        cc = curl_easy_perform(c);
        if (cc == CURLE_OK)
                curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &ret->status);
        curl_slist_free_all(h);
        curl_easy_cleanup(c);
        free(data);
        if (cc != CURLE_OK) {
                explain_unreachable(socket_path(), cc);
                return EXIT_UNREACHABLE;
        }
        if (ret->body && parse)
                ret->json = json_loadb(ret->body, ret->len, 0, NULL);
        return EXIT_OK;
}

static int api_call(const char *method, const char *path, json_t *body, Reply *ret) {
        return api_call_parse(method, path, body, true, ret);
}

const char *jstr(json_t *o, const char *key) {
        json_t *v = json_object_get(o, key);
        return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Text from the daemon that came from a provider or a client (an
 * identity, an error, an event), made safe for the terminal: controls
 * as escapes, so an ESC sequence or a CR cannot rewrite what the admin
 * sees. A few rotating buffers: several may be used in one printf(). */
static const char *tty_safe(const char *s) {
        static char bufs[8][4096];
        static unsigned next = 0;
        char *b;

        if (!s)
                return NULL;
        b = bufs[next++ % ELEMENTSOF(bufs)];
        (void) text_escape(b, sizeof bufs[0], s, strlen(s));
        return b;
}

/* The connection or provider the verb names, for "no such ..." messages. */
static const char *target_name = NULL, *target_provider = NULL;

/* Optimal string alignment distance: Levenshtein plus swaps of adjacent
 * characters, the typos people make. Three rows; names are short. */
static size_t edit_distance(const char *a, const char *b) {
        size_t n = strlen(a), m = strlen(b), r0[257], r1[257], r2[257], *pp = r0, *p = r1, *cur = r2, *t;

        if (n > 256 || m > 256)
                return SIZE_MAX;
        for (size_t j = 0; j <= m; j++)
                p[j] = j;
        for (size_t i = 1; i <= n; i++) {
                cur[0] = i;
                for (size_t j = 1; j <= m; j++) {
                        size_t v = MIN(MIN(p[j] + 1, cur[j - 1] + 1), p[j - 1] + (a[i - 1] != b[j - 1]));
                        if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                                v = MIN(v, pp[j - 2] + 1);
                        cur[j] = v;
                }
                t = pp, pp = p, p = cur, cur = t;
        }
        return p[m];
}

/* The "name" in items closest to name, if it looks like a typo of it:
 * at most two edits, and fewer than the name is long. */
static const char *closest_name(const char *name, json_t *items) {
        const char *best = NULL;
        size_t best_d = SIZE_MAX, i;
        json_t *o;

        json_array_foreach(items, i, o) {
                const char *s = jstr(o, "name");
                size_t d;

                if (!s)
                        continue;
                d = edit_distance(name, s);
                if (d < best_d || (d == best_d && strcmp(s, best) < 0)) {
                        best = s;
                        best_d = d;
                }
        }
        if (!best || best_d == 0 || best_d > 2 || best_d >= strlen(name))
                return NULL;
        return best;
}

static int no_such_connection(const char *name) {
        const char *hint = NULL;
        Reply r;

        char path[64];

        /* Best effort: without the list, the plain message. One page of
         * the names that share the first character (typos rarely touch
         * it), not a walk over every connection. */
        snprintf(path, sizeof path, API_PREFIX "?limit=%d&prefix=%c", API_LIST_LIMIT_MAX, name[0]);
        if (api_call("GET", path, NULL, &r) == EXIT_OK && r.status == 200 && r.json)
                hint = closest_name(name, json_object_get(r.json, "connections"));
        if (hint)
                fprintf(stderr, "tokenctl: no connection named '%s' (did you mean '%s'?)\n", name, hint);
        else
                fprintf(stderr, "tokenctl: no connection named '%s' (tokenctl list shows them all)\n", name);
        reply_done(&r);
        return EXIT_NOT_FOUND;
}

static int no_such_provider(const char *name) {
        const char *hint = NULL;
        StrBuf list = {};
        json_t *a = NULL, *p;
        size_t i;
        Reply r;

        if (api_call("GET", "/v1/providers", NULL, &r) == EXIT_OK && r.status == 200 && r.json)
                a = json_object_get(r.json, "providers");
        hint = a ? closest_name(name, a) : NULL;
        json_array_foreach(a, i, p) {
                if (list.len)
                        strbuf_puts(&list, ", ");
                strbuf_puts(&list, jstr(p, "name") ?: "?");
        }
        fprintf(stderr, "tokenctl: no provider named '%s'%s%s%s; configured providers: %s\n", name,
                hint ? " (did you mean '" : "", strempty(hint), hint ? "'?)" : "",
                list.len ? list.s : "none (add a provider file to providers_dir)");
        strbuf_free(&list);
        reply_done(&r);
        return EXIT_NOT_FOUND;
}

/* Maps an error answer to a message on stderr and an exit code. */
static int api_error(const Reply *r) {
        const char *err = r->json ? tty_safe(jstr(r->json, "error")) : NULL;
        const char *desc = r->json ? tty_safe(jstr(r->json, "error_description")) : NULL;

        if (r->status == 404 && err && streq(err, API_ERR_NOT_FOUND) && desc) {
                if (target_provider && strncmp(desc, "unknown provider", 16) == 0)
                        return no_such_provider(target_provider);
                if (target_name && streq(desc, "unknown connection"))
                        return no_such_connection(target_name);
        }
        if (r->status == 422) {
                /* the provider's configuration cannot do what was asked */
                fprintf(stderr, "tokenctl: %s\n", desc ?: err ?: "not supported by the provider");
                return EXIT_UNSUPPORTED;
        }
        fprintf(stderr, "tokenctl: %s%s%s (HTTP %ld)\n", desc ?: err ?: "request failed",
                desc && err ? ": " : "", desc && err ? err : "", r->status);
        switch (r->status) {
        case 400:
                return EXIT_USAGE;
        case 403:
                return EXIT_DENIED;
        case 404:
                return EXIT_NOT_FOUND;
        case 409:
                if (err && streq(err, API_ERR_NEEDS_REAUTH))
                        return EXIT_NEEDS_REAUTH;
                if (err && streq(err, API_ERR_PENDING))
                        return EXIT_PENDING;
                return EXIT_FAILURE_GENERIC;
        case 503:
                return EXIT_UNAVAILABLE;
        default:
                return EXIT_FAILURE_GENERIC;
        }
}

/* GET/POST/DELETE and on success hand the JSON to the caller. */
int call_ok(const char *method, const char *path, json_t *body, Reply *r) {
        int k = api_call(method, path, body, r);

        if (k != EXIT_OK)
                return k;
        if (r->status < 200 || r->status >= 300) {
                k = api_error(r);
                reply_done(r);
                return k;
        }
        if (!r->json) {
                fprintf(stderr, "tokenctl: the daemon sent no JSON\n");
                reply_done(r);
                return EXIT_FAILURE_GENERIC;
        }
        return EXIT_OK;
}

/* API_PREFIX/NAME, in a static buffer. */
static const char *path_of(const char *name) {
        static char path[256];

        snprintf(path, sizeof path, API_PREFIX "/%s", name);
        return path;
}

static void print_json(json_t *j) {
        char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
        if (s)
                printf("%s\n", s);
        free(s);
}

bool name_ok(const char *name) {
        if (!connection_name_valid(name)) {
                fprintf(stderr, "tokenctl: invalid connection name '%s' (1-%d of A-Z a-z 0-9 . _ -)\n", name,
                        CONNECTION_NAME_MAX);
                return false;
        }
        return true;
}

/* METHOD /v1/connections/NAME[/SUFFIX] after checking NAME; like call_ok(). */
static int connection_call(const char *method, const char *name, const char *suffix, Reply *r) {
        char path[256];

        if (!name_ok(name))
                return EXIT_USAGE;
        target_name = name;
        snprintf(path, sizeof path, API_PREFIX "/%s%s%s", name, suffix ? "/" : "", strempty(suffix));
        return call_ok(method, path, NULL, r);
}


/* ---- verbs ------------------------------------------------------------ */

typedef struct Verb {
        const char *name;
        const char *args;
        const char *summary;
        int min_args, max_args;
        int (*fn)(int argc, char **argv);
} Verb;

/* The store line, and on PostgreSQL the nodes' table. */
static void print_store_status(json_t *status) {
        json_t *st = json_object_get(status, "store"), *nodes = json_object_get(status, "nodes"), *n;
        size_t i;

        if (!st)
                return;
        printf("store: %s, node %s", strempty(tty_safe(jstr(st, "engine"))), strempty(tty_safe(jstr(st, "node"))));
        if (json_is_false(json_object_get(st, "reachable")))
                printf(", UNREACHABLE since %s: %s", strempty(tty_safe(jstr(st, "last_reached"))),
                       strempty(tty_safe(jstr(st, "error"))));
        printf("\n");
        if (!json_is_array(nodes) || json_array_size(nodes) == 0)
                return;
        printf("%-24s %-6s %-22s %-10s %s\n", "NODE", "ALIVE", "HEARTBEAT", "VERSION", "HOLDS");
        json_array_foreach(nodes, i, n)
                printf("%-24s %-6s %-22s %-10s %lld%s\n", strempty(tty_safe(jstr(n, "name"))),
                       json_is_true(json_object_get(n, "alive")) ? "yes" : "no",
                       strempty(tty_safe(jstr(n, "heartbeat"))), strempty(tty_safe(jstr(n, "version"))),
                       (long long) json_integer_value(json_object_get(n, "holds")),
                       json_is_true(json_object_get(n, "self")) ? " (this node)" : "");
}

static int do_status(int argc _unused_, char **argv _unused_) {
        Reply r;
        json_t *c;
        int k = call_ok("GET", "/v1/status", NULL, &r);

        if (k)
                return k;
        if (arg_json)
                print_json(r.json);
        else {
                c = json_object_get(r.json, "connections");
                printf("tokenbrokerd %s, up %llds\n", jstr(r.json, "version") ?: "?",
                       (long long) json_integer_value(json_object_get(r.json, "uptime")));
                printf("connections: %lld active, %lld pending, %lld need re-authorization\n",
                       (long long) json_integer_value(json_object_get(c, "active")),
                       (long long) json_integer_value(json_object_get(c, "pending")),
                       (long long) json_integer_value(json_object_get(c, "needs_reauth")));
                printf("providers: %lld; refreshes: %lld ok, %lld failed; tokens served: %lld\n",
                       (long long) json_integer_value(json_object_get(r.json, "providers")),
                       (long long) json_integer_value(json_object_get(r.json, "refreshes_ok")),
                       (long long) json_integer_value(json_object_get(r.json, "refreshes_failed")),
                       (long long) json_integer_value(json_object_get(r.json, "tokens_served")));
                print_store_status(r.json);
        }
        reply_done(&r);
        return EXIT_OK;
}

static int do_providers(int argc _unused_, char **argv _unused_) {
        Reply r;
        size_t i;
        json_t *p, *a;
        int k = call_ok("GET", "/v1/providers", NULL, &r);

        if (k)
                return k;
        a = json_object_get(r.json, "providers");
        if (arg_json)
                print_json(a);
        else {
                printf("%-20s %-20s %-6s %s\n", "PROVIDER", "GRANT", "AUTH", "TOKEN URL");
                json_array_foreach(a, i, p)
                        printf("%-20s %-20s %-6s %s\n", jstr(p, "name"), jstr(p, "grant"),
                               jstr(p, "client_auth"), jstr(p, "token_url"));
        }
        reply_done(&r);
        return EXIT_OK;
}

static void print_connection_row(const char *name, const char *provider, const char *state,
                                 const char *expires, const char *rt_ends, const char *identity) {
        printf("%-24s %-16s %-13s %-9s %-8s %s\n", strempty(tty_safe(name)), strempty(tty_safe(provider)),
               strempty(tty_safe(state)), expires, rt_ends, tty_safe(identity) ?: "-");
}

/* ---- a listing page, read without building it ------------------------- */

/* A page of 1,000 connections is half a megabyte of JSON; building it as
 * jansson objects costs tokenctl more than the daemon spends writing it.
 * The daemon's JSON is only split into rows here (--json writes them as
 * they are) and the few members a table shows are picked out. A span is
 * [p, end) in the answer's body. */

static const char *json_skip_ws(const char *p, const char *end) {
        while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
                p++;
        return p;
}

/* p at '"': past the closing quote, or NULL. */
static const char *json_skip_string(const char *p, const char *end) {
        for (p++; p < end; p++) {
                if (*p == '\\')
                        p++;
                else if (*p == '"')
                        return p + 1;
        }
        return NULL;
}

/* Past the value at p (after blanks), or NULL if it is cut short. */
static const char *json_skip_value(const char *p, const char *end) {
        unsigned depth = 0;

        p = json_skip_ws(p, end);
        if (p >= end)
                return NULL;
        if (*p != '{' && *p != '[' && *p != '"') {
                while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' &&
                       *p != '\r' && *p != '\t')
                        p++;
                return p;
        }
        do {
                if (p >= end || depth > 64)
                        return NULL;
                if (*p == '"') {
                        p = json_skip_string(p, end);
                        if (!p)
                                return NULL;
                        continue;
                }
                if (*p == '{' || *p == '[')
                        depth++;
                else if (*p == '}' || *p == ']')
                        depth--;
                p++;
        } while (depth > 0);
        return p;
}

/* The value of member key of the object at p: its span, or NULL. */
static const char *json_member(const char *p, const char *end, const char *key, const char **ret_end) {
        size_t kl = strlen(key);

        p = json_skip_ws(p, end);
        if (p >= end || *p != '{')
                return NULL;
        for (p++;;) {
                const char *k, *v;
                bool match;

                p = json_skip_ws(p, end);
                if (p >= end || *p != '"')
                        return NULL;
                k = p + 1;
                p = json_skip_string(p, end);
                if (!p)
                        return NULL;
                match = (size_t) (p - 1 - k) == kl && memcmp(k, key, kl) == 0;
                p = json_skip_ws(p, end);
                if (p >= end || *p != ':')
                        return NULL;
                v = json_skip_ws(p + 1, end);
                p = json_skip_value(v, end);
                if (!p)
                        return NULL;
                if (match) {
                        *ret_end = p;
                        return v;
                }
                p = json_skip_ws(p, end);
                if (p >= end || *p != ',')
                        return NULL;
                p++;
        }
}

/* Member key of the object at p as a string (malloc'd; NULL when absent,
 * null or not a string). */
static char *json_member_string(const char *p, const char *end, const char *key) {
        const char *ve, *v = json_member(p, end, key, &ve);
        json_t *j;
        char *s;

        if (!v || ve - v < 2 || *v != '"')
                return NULL;
        if (!memchr(v, '\\', (size_t) (ve - v)))
                return strndup(v + 1, (size_t) (ve - v - 2));
        j = json_loadb(v, (size_t) (ve - v), JSON_DECODE_ANY, NULL);
        s = json_is_string(j) ? strdup(json_string_value(j)) : NULL;
        json_decref(j);
        return s;
}

/* One row of the table, from the row's JSON. */
static void print_row_json(const char *p, const char *end) {
        _cleanup_free_ char *name = json_member_string(p, end, "name"),
                            *provider = json_member_string(p, end, "provider"),
                            *state = json_member_string(p, end, "state"),
                            *type = json_member_string(p, end, "token_type"),
                            *identity = json_member_string(p, end, "identity");
        const char *ve, *v = json_member(p, end, "expires_in", &ve);
        const char *rve, *rv = json_member(p, end, "refresh_token_ends_in", &rve);
        const char *hve, *hv = json_member(p, end, "has_refresh_token", &hve);
        char exp[32] = "-", rt[32] = "-";

        if (v && *v != 'n')
                snprintf(exp, sizeof exp, "%llds", strtoll(v, NULL, 10));
        else if (type)
                snprintf(exp, sizeof exp, "never");
        /* the refresh token's end: days when far, seconds when near */
        if (rv && *rv != 'n') {
                long long s = strtoll(rv, NULL, 10);
                if (s >= 2 * 86400)
                        snprintf(rt, sizeof rt, "%lldd", s / 86400);
                else
                        snprintf(rt, sizeof rt, "%llds", s);
        } else if (hv && *hv == 't')
                snprintf(rt, sizeof rt, "unknown");
        print_connection_row(name, provider, state, exp, rt, identity);
}

/* "1,000,000" */
static const char *thousands(char buf[static 32], unsigned long long v) {
        char tmp[32];
        int n = snprintf(tmp, sizeof tmp, "%llu", v), o = 0;

        for (int i = 0; i < n; i++) {
                if (i > 0 && (n - i) % 3 == 0)
                        buf[o++] = ',';
                buf[o++] = tmp[i];
        }
        buf[o] = 0;
        return buf;
}

/* "1,000,000 connections: 999,998 active, 2 needs_reauth", from the
 * daemon's counters (GET /v1/status, O(1)), not from counting rows. */
static int print_list_summary(size_t shown, bool partial) {
        static const char *const states[] = { "active", "pending", "needs_reauth" };
        unsigned long long counts[ELEMENTSOF(states)], total = 0;
        char b[32];
        bool first = true;
        json_t *c;
        Reply r;
        int k = call_ok("GET", "/v1/status", NULL, &r);

        if (k)
                return k;
        c = json_object_get(r.json, "connections");
        for (size_t j = 0; j < ELEMENTSOF(states); j++) {
                json_int_t v = json_integer_value(json_object_get(c, states[j]));
                counts[j] = v > 0 ? (unsigned long long) v : 0;
                total += counts[j];
        }
        if (partial)
                printf("%s shown; ", thousands(b, shown));
        printf("%s connection%s", thousands(b, total), total == 1 ? "" : "s");
        for (size_t j = 0; j < ELEMENTSOF(states); j++)
                if (counts[j] > 0) {
                        printf("%s%s %s", first ? ": " : ", ", thousands(b, counts[j]), states[j]);
                        first = false;
                }
        printf("\n");
        reply_done(&r);
        return EXIT_OK;
}

/* Appends "&key=VALUE", URL-escaped, if value is set. */
static void query_add(StrBuf *q, const char *key, const char *value) {
        char *e;

        if (!value)
                return;
        e = curl_easy_escape(NULL, value, 0);
        strbuf_printf(q, "&%s=%s", key, e ?: "");
        curl_free(e);
}

/* Walks the daemon's pages (GET /v1/connections?after=NEXT) and prints
 * each as it comes: the table, or one JSON array written row by row. One
 * page is held at a time, so memory stays flat however many there are;
 * the daemon answers in byte order of name, so the output is sorted. */
static int do_list(int argc, char **argv) {
        static const struct option options[] = {
                { "state", required_argument, NULL, 's' },
                { "provider", required_argument, NULL, 'p' },
                { "prefix", required_argument, NULL, 'x' },
                { "limit", required_argument, NULL, 'l' },
                {}
        };
        const char *state = NULL, *provider = NULL, *prefix = NULL;
        unsigned long long limit = 0;   /* 0: all */
        _cleanup_free_ char *after = NULL;
        size_t shown = 0;
        int c, k = EXIT_OK;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 's':
                        state = optarg;
                        break;
                case 'p':
                        provider = optarg;
                        break;
                case 'x':
                        prefix = optarg;
                        break;
                case 'l': {
                        char *end;
                        errno = 0;
                        limit = strtoull(optarg, &end, 10);
                        if (!*optarg || *end || errno || limit == 0 || optarg[0] == '-') {
                                fprintf(stderr, "tokenctl: --limit takes a number of rows, 1 or more\n");
                                return EXIT_USAGE;
                        }
                        break;
                }
                default:
                        return EXIT_USAGE;
                }
        if (optind < argc) {
                fprintf(stderr, "tokenctl: usage: tokenctl list [--state S] [--provider P] [--prefix T] "
                                "[--limit N]\n");
                return EXIT_USAGE;
        }

        if (arg_json)
                printf("[");
        else
                printf("%-24s %-16s %-13s %-9s %-8s %s\n", "NAME", "PROVIDER", "STATE", "EXPIRES", "RT ENDS", "IDENTITY");
        for (unsigned pages = 0;; pages++) {
                unsigned long long want = API_LIST_LIMIT_DEFAULT;
                StrBuf q = {};
                const char *p, *ae, *end;
                Reply r;

                if (limit > 0 && limit - shown < want)
                        want = limit - shown;
                strbuf_printf(&q, API_PREFIX "?limit=%llu", want);
                query_add(&q, "after", after);
                query_add(&q, "state", state);
                query_add(&q, "provider", provider);
                query_add(&q, "prefix", prefix);
                if (q.oom) {
                        strbuf_free(&q);
                        fprintf(stderr, "tokenctl: out of memory\n");
                        return EXIT_FAILURE_GENERIC;
                }
                k = api_call_parse("GET", q.s, NULL, false, &r);
                strbuf_free(&q);
                if (k)
                        return k;
                if (r.status != 200) {
                        if (r.body)
                                r.json = json_loadb(r.body, r.len, 0, NULL);
                        k = api_error(&r);
                        reply_done(&r);
                        return k;
                }
                end = r.body ? r.body + r.len : NULL;
                p = r.body ? json_member(r.body, end, "connections", &ae) : NULL;
                if (!p || *p != '[') {
                        reply_done(&r);
                        fprintf(stderr, "tokenctl: the daemon's list is not the JSON expected\n");
                        return EXIT_FAILURE_GENERIC;
                }
                for (p = json_skip_ws(p + 1, ae); p < ae && *p != ']';) {
                        const char *e = json_skip_value(p, ae);

                        if (!e || (*p != '{')) {
                                reply_done(&r);
                                fprintf(stderr, "tokenctl: the daemon's list is not the JSON expected\n");
                                return EXIT_FAILURE_GENERIC;
                        }
                        if (arg_json)
                                printf("%s\n%.*s", shown > 0 ? "," : "", (int) (e - p), p);
                        else
                                print_row_json(p, e);
                        shown++;
                        p = json_skip_ws(e, ae);
                        if (p < ae && *p == ',')
                                p = json_skip_ws(p + 1, ae);
                }
                free(after);
                after = json_member_string(r.body, end, "next");
                reply_done(&r);
                if (!after || (limit > 0 && shown >= limit))
                        break;
        }
        if (arg_json)
                printf("%s]\n", shown > 0 ? "\n" : "");
        else
                k = print_list_summary(shown, limit > 0 || state || provider || prefix);
        if (fflush(stdout) != 0 || ferror(stdout)) {
                fprintf(stderr, "tokenctl: cannot write the list: %m\n");
                return EXIT_FAILURE_GENERIC;
        }
        return k;
}

static void print_kv(const char *k, const char *v) {
        if (v)
                printf("%-22s %s\n", k, tty_safe(v));
}

/* "alice (1000), 4242": names from this machine's passwd and group
 * databases, the number alone when it has no name here. */
static void print_ids(const char *key, json_t *ids, bool groups) {
        StrBuf b = {};
        json_t *v;
        size_t i;

        json_array_foreach(ids, i, v) {
                json_int_t id = json_integer_value(v);
                const char *name = NULL;

                if (groups) {
                        struct group *g = getgrgid((gid_t) id);
                        name = g ? g->gr_name : NULL;
                } else {
                        struct passwd *pw = getpwuid((uid_t) id);
                        name = pw ? pw->pw_name : NULL;
                }
                if (b.len)
                        strbuf_puts(&b, ", ");
                if (name)
                        strbuf_printf(&b, "%s (%lld)", name, (long long) id);
                else
                        strbuf_printf(&b, "%lld", (long long) id);
        }
        print_kv(key, b.len ? b.s : "none");
        strbuf_free(&b);
}

static void print_acl(json_t *c) {
        json_t *u = json_object_get(c, "allow_users"), *g = json_object_get(c, "allow_groups");

        if (json_array_size(u) == 0 && json_array_size(g) == 0) {
                print_kv("readable by:", "admins only");
                return;
        }
        print_ids("allowed users:", u, false);
        print_ids("allowed groups:", g, true);
}

/* "param tenant:  contoso", one line a member of the connection's object. */
static void print_object(json_t *c, const char *member_name, const char *label) {
        const char *key;
        json_t *v;

        json_object_foreach(json_object_get(c, member_name), key, v) {
                char k[96];

                snprintf(k, sizeof k, "%s %s:", label, key);
                print_kv(k, json_string_value(v));
        }
}

static void print_connection(json_t *c) {
        json_t *e = json_object_get(c, "expires_in");
        char buf[64];

        print_kv("name:", jstr(c, "name"));
        print_kv("provider:", jstr(c, "provider"));
        print_kv("state:", jstr(c, "state"));
        print_kv("identity:", jstr(c, "identity"));
        print_kv("username:", jstr(c, "username"));
        print_kv("scope:", jstr(c, "scope"));
        print_kv("requested scope:", jstr(c, "requested_scope"));
        print_acl(c);
        print_object(c, "params", "param");
        print_object(c, "metadata", "metadata");
        print_kv("token type:", jstr(c, "token_type"));
        if (json_is_integer(e)) {
                snprintf(buf, sizeof buf, "%s (in %llds)", jstr(c, "expires_at") ?: "?",
                         (long long) json_integer_value(e));
                print_kv("expires:", buf);
        }
        print_kv("refresh token:", json_is_true(json_object_get(c, "has_refresh_token")) ? "held" : "none");
        if (json_is_true(json_object_get(c, "has_refresh_token")))
                print_kv("refresh token ends:", jstr(c, "refresh_token_ends_at") ?: "unknown");
        snprintf(buf, sizeof buf, "%lld", (long long) json_integer_value(json_object_get(c, "refreshes")));
        print_kv("refreshes:", buf);
        print_kv("last refresh:", jstr(c, "last_refresh_at"));
        print_kv("last error:", jstr(c, "last_error"));
        print_kv("pending until:", jstr(c, "authorization_pending_until"));
        print_kv("created:", jstr(c, "created_at"));
}

static int do_show(int argc _unused_, char **argv) {
        Reply r;
        int k;

        k = connection_call("GET", argv[1], NULL, &r);
        if (k)
                return k;
        if (arg_json)
                print_json(r.json);
        else
                print_connection(r.json);
        reply_done(&r);
        return EXIT_OK;
}

/* Any string in a token answer (keys too) with a control character: a
 * CR LF in a token would print an injected header line. */
static bool json_has_ctl(json_t *j, unsigned depth) {
        const char *k;
        json_t *v;
        size_t i;

        if (depth > 8)
                return true;
        if (json_is_string(j))
                return memchr(json_string_value(j), 0, json_string_length(j)) || string_has_ctl(json_string_value(j));
        if (json_is_object(j))
                json_object_foreach(j, k, v)
                        if (string_has_ctl(k) || json_has_ctl(v, depth + 1))
                                return true;
        if (json_is_array(j))
                json_array_foreach(j, i, v)
                        if (json_has_ctl(v, depth + 1))
                                return true;
        return false;
}

int token_reply(const char *name, const char *min_ttl, Reply *r) {
        char path[256];
        int k;

        if (!name_ok(name))
                return EXIT_USAGE;
        target_name = name;
        if (min_ttl)
                snprintf(path, sizeof path, API_PREFIX "/%s/token?min_ttl=%s", name, min_ttl);
        else
                snprintf(path, sizeof path, API_PREFIX "/%s/token", name);
        k = call_ok("GET", path, NULL, r);
        if (k == 0 && json_has_ctl(r->json, 0)) {
                /* never printed, never sent: a daemon from before tokens were checked may hold one */
                fprintf(stderr, "tokenctl: the token of %s holds control characters; not printed (refresh it: "
                                "tokenctl refresh %s)\n", name, name);
                reply_done(r);
                return EXIT_FAILURE_GENERIC;
        }
        return k;
}

static int do_token(int argc, char **argv) {
        static const struct option options[] = { { "min-ttl", required_argument, NULL, 't' }, {} };
        const char *min_ttl = NULL;
        unsigned long want = 0;
        json_t *e;
        Reply r;
        int c, k;

        optind = 0;   /* 0: GNU getopt starts over */
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
                char *end;

                if (c != 't')
                        return EXIT_USAGE;
                errno = 0;
                want = strtoul(optarg, &end, 10);
                if (!*optarg || *optarg < '0' || *optarg > '9' || *end || errno || want > MIN_TTL_MAX_SEC) {
                        fprintf(stderr, "tokenctl: --min-ttl takes whole seconds from 0 to %lu (365 days); "
                                        "got '%s'\n", MIN_TTL_MAX_SEC, optarg);
                        return EXIT_USAGE;
                }
                min_ttl = optarg;
        }
        if (optind != argc - 1) {
                fprintf(stderr, "tokenctl: usage: tokenctl token NAME [--min-ttl SECONDS]\n");
                return EXIT_USAGE;
        }
        k = token_reply(argv[optind], min_ttl, &r);
        if (k)
                return k;
        /* The daemon refreshed for min_ttl and hands out what the provider
         * gave: a token that lives shorter than asked is still a token,
         * but the caller must know. */
        e = json_object_get(r.json, "expires_in");
        if (min_ttl && json_is_integer(e) && json_integer_value(e) < (json_int_t) want) {
                json_t *ra = json_object_get(r.json, "refresh_retry_after");
                char msg[256];

                if (json_is_integer(ra))
                        snprintf(msg, sizeof msg, "the token expires in %lld s, less than --min-ttl %lu: refreshes "
                                 "asked by clients are rate limited; the next is allowed in %lld s",
                                 (long long) json_integer_value(e), want, (long long) json_integer_value(ra));
                else
                        snprintf(msg, sizeof msg, "the token expires in %lld s, less than --min-ttl %lu: the provider "
                                 "issues shorter-lived tokens, or the refresh failed (see tokenctl show %s)",
                                 (long long) json_integer_value(e), want, argv[optind]);
                fprintf(stderr, "tokenctl: warning: %s\n", msg);
                json_object_set_new(r.json, "min_ttl_met", json_false());
                json_object_set_new(r.json, "warning", json_string(msg));
        } else if (min_ttl)
                json_object_set_new(r.json, "min_ttl_met", json_true());
        if (arg_json)
                print_json(r.json);
        else
                printf("%s\n", jstr(r.json, "access_token") ?: "");
        reply_done(&r);
        return EXIT_OK;
}

static int do_header(int argc _unused_, char **argv) {
        json_t *h, *q, *v;
        const char *key;
        Reply r;
        int k = token_reply(argv[1], NULL, &r);

        if (k)
                return k;
        h = json_object_get(r.json, "headers");
        q = json_object_get(r.json, "query");
        if (arg_json)
                print_json(json_pack("{s:O?, s:O?}", "headers", h, "query", q));
        else {
                json_object_foreach(h, key, v)
                        printf("%s: %s\n", key, json_string_value(v));
                json_object_foreach(q, key, v)
                        printf("?%s=%s\n", key, json_string_value(v));
        }
        reply_done(&r);
        return EXIT_OK;
}

static int do_refresh(int argc _unused_, char **argv) {
        Reply r;
        int k;

        k = connection_call("POST", argv[1], "refresh", &r);
        if (k)
                return k;
        if (arg_json)
                print_json(r.json);
        else
                printf("%s: refreshed, expires at %s\n", argv[1], jstr(r.json, "expires_at") ?: "never");
        reply_done(&r);
        return EXIT_OK;
}

static int do_revoke(int argc _unused_, char **argv) {
        Reply r;
        int k;

        k = connection_call("DELETE", argv[1], NULL, &r);
        if (k)
                return k;
        if (arg_json)
                print_json(r.json);
        else {
                const char *why = jstr(r.json, "revocation");

                if (json_is_true(json_object_get(r.json, "revoked_at_provider")))
                        printf("%s: revoked at the provider and deleted\n", argv[1]);
                else if (why && streq(why, "no_tokens"))
                        printf("%s: deleted (it held no tokens to revoke at the provider: the authorization "
                               "was never completed)\n", argv[1]);
                else
                        printf("%s: deleted (the provider has no revocation endpoint)\n", argv[1]);
        }
        reply_done(&r);
        return EXIT_OK;
}

static int do_events(int argc, char **argv) {
        static const struct option options[] = { { "limit", required_argument, NULL, 'l' }, {} };
        const char *limit = "50", *name = NULL;
        char path[256];
        json_t *a, *e;
        size_t i;
        Reply r;
        int c, k;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
                if (c != 'l')
                        return EXIT_USAGE;
                limit = optarg;
        }
        if (optind < argc - 1) {
                fprintf(stderr, "tokenctl: usage: tokenctl events [NAME] [--limit N]\n");
                return EXIT_USAGE;
        }
        if (optind == argc - 1) {
                name = argv[optind];
                if (!name_ok(name))
                        return EXIT_USAGE;
        }
        for (const char *p = limit; *p; p++)
                if (*p < '0' || *p > '9') {
                        fprintf(stderr, "tokenctl: --limit takes a number\n");
                        return EXIT_USAGE;
                }
        if (name)
                snprintf(path, sizeof path, "/v1/events?connection=%s&limit=%s", name, limit);
        else
                snprintf(path, sizeof path, "/v1/events?limit=%s", limit);
        k = call_ok("GET", path, NULL, &r);
        if (k)
                return k;
        a = json_object_get(r.json, "events");
        if (name) {
                /* Events outlive their connection (a revoke, a failed
                 * import): a name the daemon never heard of is unknown. */
                Reply cr;
                int q = api_call("GET", path_of(name), NULL, &cr);

                if (q == EXIT_OK && cr.status == 404 && json_array_size(a) == 0) {
                        reply_done(&cr);
                        reply_done(&r);
                        return no_such_connection(name);
                }
                if (q == EXIT_OK && cr.status == 404)
                        fprintf(stderr, "tokenctl: '%s' no longer exists; these are its past events\n", name);
                reply_done(&cr);
        }
        if (arg_json)
                print_json(a);
        else {
                /* oldest first, like a log */
                printf("%-20s %-24s %-22s %s\n", "TIME", "CONNECTION", "EVENT", "MESSAGE");
                for (i = json_array_size(a); i > 0; i--) {
                        e = json_array_get(a, i - 1);
                        printf("%-20s %-24s %-22s %s\n", tty_safe(jstr(e, "at")) ?: "",
                               tty_safe(jstr(e, "connection")) ?: "-", tty_safe(jstr(e, "kind")) ?: "",
                               tty_safe(jstr(e, "message")) ?: "");
                }
        }
        reply_done(&r);
        return EXIT_OK;
}

static volatile sig_atomic_t interrupted = 0;
static void on_sigint(int sig _unused_) {
        interrupted = 1;
}

/* The newest event of a connection that is gone: why it went. */
static int explain_removed(const char *name) {
        char path[256];
        json_t *e;
        Reply r;
        int k;

        snprintf(path, sizeof path, "/v1/events?connection=%s&limit=1", name);
        if (api_call("GET", path, NULL, &r) == EXIT_OK && r.status == 200 && r.json &&
            (e = json_array_get(json_object_get(r.json, "events"), 0)) && jstr(e, "kind") &&
            streq(jstr(e, "kind"), "authorization-failed")) {
                fprintf(stderr, "tokenctl: '%s': %s\n", name, tty_safe(jstr(e, "message")) ?: "authorization failed");
                k = EXIT_FAILURE_GENERIC;
        } else {
                fprintf(stderr, "tokenctl: authorization of '%s' expired before it was completed\n", name);
                k = EXIT_PENDING;
        }
        reply_done(&r);
        return k;
}

/* Polls the connection until the authorization completes or fails.
 * previous_identity: who had authorized it before, to warn of a change. */
static int wait_authorized(const char *name, unsigned timeout_sec, bool import, const char *previous_identity) {
        bool tty = isatty(STDERR_FILENO);
        usec_t start = now(CLOCK_MONOTONIC);
        int k = EXIT_TIMEOUT;

        signal(SIGINT, on_sigint);
        for (unsigned i = 0; !interrupted; i++) {
                usec_t elapsed = usec_sub(now(CLOCK_MONOTONIC), start);
                const char *state, *pending, *identity;
                Reply r;

                if (timeout_sec > 0 && elapsed >= (usec_t) timeout_sec * USEC_PER_SEC) {
                        k = EXIT_TIMEOUT;
                        break;
                }
                k = api_call("GET", path_of(name), NULL, &r);
                if (k)
                        break;
                if (r.status == 404) {
                        if (tty)
                                fputs("\r\033[K", stderr);
                        reply_done(&r);
                        k = explain_removed(name);
                        break;
                }
                if (r.status != 200 || !r.json) {
                        k = api_error(&r);
                        reply_done(&r);
                        break;
                }
                state = jstr(r.json, "state");
                pending = jstr(r.json, "authorization_pending_until");
                identity = jstr(r.json, "identity");
                /* still refreshing: the userinfo request after a grant, or an import's proof */
                if (state && streq(state, "active") && !pending &&
                    !json_is_true(json_object_get(r.json, "refreshing"))) {
                        if (tty)
                                fputs("\r\033[K", stderr);
                        if (previous_identity && identity && !streq(previous_identity, identity))
                                fprintf(stderr, "tokenctl: warning: '%s' is now authorized by %s, no longer by %s: "
                                                "the identity changed\n", name, identity, previous_identity);
                        if (arg_json)
                                print_json(r.json);
                        else
                                printf("%s: active, authorized by %s\n", name, tty_safe(identity) ?: "(unknown)");
                        reply_done(&r);
                        return EXIT_OK;
                }
                if (!pending && jstr(r.json, "last_error") && !json_is_true(json_object_get(r.json, "refreshing"))) {
                        if (tty)
                                fputs("\r\033[K", stderr);
                        fprintf(stderr, "tokenctl: %s of '%s' failed: %s\n", import ? "import" : "authorization",
                                name, tty_safe(jstr(r.json, "last_error")));
                        reply_done(&r);
                        return EXIT_FAILURE_GENERIC;
                }
                if (tty) {
                        static const char spin[] = "|/-\\";
                        fprintf(stderr, "\r\033[K%c waiting for the authorization of %s (%llus, %s)", spin[i % 4],
                                name, (unsigned long long) (elapsed / USEC_PER_SEC), state ?: "?");
                }
                reply_done(&r);
                (void) poll(NULL, 0, 250);
        }
        if (tty)
                fputs("\r\033[K", stderr);
        if (interrupted) {
                fprintf(stderr, "tokenctl: interrupted; the authorization stays pending until it expires\n");
                return EXIT_PENDING;
        }
        if (k == EXIT_TIMEOUT)
                fprintf(stderr, "tokenctl: gave up waiting for the authorization of '%s' after %u s; it stays "
                                "pending until it expires (tokenctl show %s)\n", name, timeout_sec, name);
        return k;
}

/* One line from stdin, never from argv: without echo on a terminal.
 * Returns NULL at end of input with nothing read. */
static char *read_secret_line(const char *prompt) {
        struct termios old, quiet;
        bool tty = isatty(STDIN_FILENO);
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;

        if (tty) {
                fprintf(stderr, "%s", prompt);
                fflush(stderr);
                if (tcgetattr(STDIN_FILENO, &old) == 0) {
                        quiet = old;
                        quiet.c_lflag &= ~(tcflag_t) ECHO;
                        (void) tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
                } else
                        tty = false;
        }
        n = getline(&line, &cap, stdin);
        if (tty) {
                (void) tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
                fputc('\n', stderr);
        }
        if (n <= 0) {
                if (line)
                        explicit_wipe(line, cap);
                free(line);
                return NULL;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
                line[--n] = 0;
        return line;
}

static void print_device(const char *name, const char *provider, json_t *j) {
        const char *uri = jstr(j, "verification_uri"), *complete = jstr(j, "verification_uri_complete");

        printf("To authorize '%s' at %s, open\n\n  %s\n\nand enter the code\n\n  %s\n\n", name, provider,
               tty_safe(uri) ?: "?", tty_safe(jstr(j, "user_code")) ?: "?");
        if (complete)
                printf("(or open %s directly)\n\n", tty_safe(complete));
        fflush(stdout);
}

/* ---- re-authorization links (daemon/links.c) --------------------------- */

/* tokenctl authorize NAME --link [--valid TIME] [--provider P] [--scope S] */
static int authorize_link(const char *name, const char *provider, const char *scope, const char *valid) {
        usec_t v = 0;
        json_t *body;
        struct passwd *pw;
        const char *url;
        Reply r;
        int k;

        if (!name_ok(name))
                return EXIT_USAGE;
        if (valid && (k = link_valid_parse(valid, &v)) < 0) {
                fprintf(stderr, "tokenctl: --valid takes a time from 1s to 30d: a number with s, m, h or d "
                                "(seconds without); got '%s'%s\n", valid, k == -ERANGE ? " (out of range)" : "");
                return EXIT_USAGE;
        }
        body = json_pack("{s:s}", "name", name);
        if (provider)
                json_object_set_new(body, "provider", json_string(provider));
        if (scope)
                json_object_set_new(body, "scope", json_string(scope));
        if (v)
                json_object_set_new(body, "valid", json_integer((json_int_t) (v / USEC_PER_SEC)));
        pw = getpwuid(getuid());
        if (pw && pw->pw_name)
                json_object_set_new(body, "requested_by", json_string(pw->pw_name));
        target_name = name;
        target_provider = provider;
        k = call_ok("POST", "/v1/links", body, &r);
        json_decref(body);
        if (k)
                return k;
        url = jstr(r.json, "url");
        if (arg_json)
                print_json(r.json);
        else if (url)
                printf("Re-authorization link %lld for '%s' at %s, valid once until %s:\n\n  %s\n\n"
                       "Whoever opens it sees what it is for and signs in at the provider; revoke it with "
                       "`tokenctl unlink %lld`.\n",
                       (long long) json_integer_value(json_object_get(r.json, "id")), name,
                       tty_safe(jstr(r.json, "provider")) ?: "", tty_safe(jstr(r.json, "expires_at")) ?: "", url,
                       (long long) json_integer_value(json_object_get(r.json, "id")));
        reply_done(&r);
        return url ? EXIT_OK : EXIT_FAILURE_GENERIC;
}

static int do_links(int argc _unused_, char **argv) {
        char path[256] = "/v1/links";
        json_t *a, *l;
        size_t i;
        Reply r;
        int k;

        if (argv[1]) {
                if (!name_ok(argv[1]))
                        return EXIT_USAGE;
                snprintf(path, sizeof path, "/v1/links?connection=%s", argv[1]);
        }
        k = call_ok("GET", path, NULL, &r);
        if (k)
                return k;
        a = json_object_get(r.json, "links");
        if (arg_json)
                print_json(a);
        else {
                printf("%-6s %-8s %-24s %-12s %-21s %s\n", "ID", "STATE", "CONNECTION", "PROVIDER", "EXPIRES",
                       "CREATED BY");
                json_array_foreach(a, i, l) {
                        json_t *by = json_object_get(l, "created_by");
                        char who[96];

                        if (json_is_integer(by))
                                snprintf(who, sizeof who, "uid %lld%s%s%s", (long long) json_integer_value(by),
                                         jstr(l, "created_by_name") ? " (" : "",
                                         tty_safe(jstr(l, "created_by_name")) ?: "",
                                         jstr(l, "created_by_name") ? ")" : "");
                        else
                                snprintf(who, sizeof who, "the broker (needs-reauth)");
                        printf("%-6lld %-8s %-24s %-12s %-21s %s\n", (long long) json_integer_value(json_object_get(l, "id")),
                               tty_safe(jstr(l, "state")) ?: "", tty_safe(jstr(l, "connection")) ?: "",
                               tty_safe(jstr(l, "provider")) ?: "", tty_safe(jstr(l, "expires_at")) ?: "", who);
                }
                if (json_array_size(a) == 0)
                        printf("(no links)\n");
        }
        reply_done(&r);
        return EXIT_OK;
}

static int do_unlink(int argc _unused_, char **argv) {
        const char *arg = argv[1];
        char path[256];
        json_t *ids, *id;
        size_t i;
        Reply r;
        int k;

        if (strspn(arg, "0123456789") != strlen(arg) && !name_ok(arg))
                return EXIT_USAGE;
        if (strlen(arg) > 128) {
                fprintf(stderr, "tokenctl: '%s' is neither a link id nor a connection name\n", arg);
                return EXIT_USAGE;
        }
        snprintf(path, sizeof path, "/v1/links/%s", arg);
        k = call_ok("DELETE", path, NULL, &r);
        if (k)
                return k;
        ids = json_object_get(r.json, "revoked");
        if (arg_json)
                print_json(r.json);
        else {
                printf("Revoked link");
                json_array_foreach(ids, i, id)
                        printf("%s %lld", i ? "," : (json_array_size(ids) > 1 ? "s" : ""), (long long) json_integer_value(id));
                printf(".\n");
        }
        reply_done(&r);
        return EXIT_OK;
}

static int do_authorize(int argc, char **argv) {
        enum { O_PROVIDER = 'p', O_SCOPE = 's', O_USER = 'u', O_GROUP = 'g', O_NOWAIT = 0x100, O_TIMEOUT, O_DEVICE,
               O_USERNAME, O_LINK, O_VALID, O_PARAM };
        static const struct option options[] = {
                { "username", required_argument, NULL, O_USERNAME },
                { "provider", required_argument, NULL, O_PROVIDER },
                { "scope", required_argument, NULL, O_SCOPE },
                { "allow-user", required_argument, NULL, O_USER },
                { "allow-group", required_argument, NULL, O_GROUP },
                { "no-wait", no_argument, NULL, O_NOWAIT },
                { "timeout", required_argument, NULL, O_TIMEOUT },
                { "device", no_argument, NULL, O_DEVICE },
                { "link", no_argument, NULL, O_LINK },
                { "valid", required_argument, NULL, O_VALID },
                { "param", required_argument, NULL, O_PARAM },
                {}
        };
        _cleanup_(json_decrefp) json_t *params = json_object();
        json_t *body, *users = json_array(), *groups = json_array();
        const char *provider = NULL, *name, *url, *username = NULL;
        bool import = streq(argv[0], "import"), device = false;
        _cleanup_secret_ char *secret = NULL;
        _cleanup_free_ char *previous_identity = NULL;
        StrBuf scope = {};
        bool nowait = false, link = false, other = false;
        const char *valid = NULL;
        unsigned timeout = 0;
        Reply r;
        int c, k;

        optind = 0;   /* 0: GNU getopt starts over */
        while ((c = getopt_long(argc, argv, "p:s:u:g:", options, NULL)) >= 0)
                switch (c) {
                case O_PROVIDER:
                        provider = optarg;
                        break;
                case O_SCOPE:
                        if (scope.len)
                                strbuf_puts(&scope, " ");
                        strbuf_puts(&scope, optarg);
                        break;
                case O_USER:
                        json_array_append_new(users, json_string(optarg));
                        break;
                case O_GROUP:
                        json_array_append_new(groups, json_string(optarg));
                        break;
                case O_NOWAIT:
                        nowait = true;
                        break;
                case O_TIMEOUT: {
                        char *end;
                        unsigned long u;

                        errno = 0;
                        u = strtoul(optarg, &end, 10);
                        if (*optarg < '0' || *optarg > '9' || *end || errno || u > 7UL * 24 * 3600) {
                                fprintf(stderr, "tokenctl: --timeout takes whole seconds from 0 (wait until the "
                                                "authorization expires) to 604800; got '%s'\n", optarg);
                                strbuf_free(&scope);
                                json_decref(users);
                                json_decref(groups);
                                return EXIT_USAGE;
                        }
                        timeout = (unsigned) u;
                        break;
                }
                case O_DEVICE:
                        device = true;
                        break;
                case O_USERNAME:
                        username = optarg;
                        break;
                case O_LINK:
                        link = true;
                        break;
                case O_VALID:
                        valid = optarg;
                        break;
                case O_PARAM: {
                        /* NAME=VALUE; the daemon checks the name and the value against the provider */
                        const char *eq = strchr(optarg, '=');
                        _cleanup_free_ char *pname = eq ? strndup(optarg, (size_t) (eq - optarg)) : NULL;

                        if (!eq || eq == optarg || !pname || json_object_get(params, pname)) {
                                fprintf(stderr, "tokenctl: --param takes NAME=VALUE, each NAME once; got '%s'\n",
                                        tty_safe(optarg) ?: "");
                                json_decref(users);
                                json_decref(groups);
                                strbuf_free(&scope);
                                return EXIT_USAGE;
                        }
                        json_object_set_new(params, pname, json_string(eq + 1));
                        break;
                }
                default:
                        json_decref(users);
                        json_decref(groups);
                        strbuf_free(&scope);
                        return EXIT_USAGE;
                }
        other = json_array_size(users) || json_array_size(groups) || nowait || timeout || device || username;
        other = other || json_object_size(params);
        if (!import && (link || valid)) {
                json_decref(users);
                json_decref(groups);
                if (optind != argc - 1 || !link || other) {
                        fprintf(stderr, "tokenctl: usage: tokenctl authorize NAME --link [--valid TIME] [--provider P] "
                                        "[--scope S]...\n(--valid needs --link; --link takes no --allow-*, --device, "
                                        "--username, --param, --no-wait or --timeout)\n");
                        strbuf_free(&scope);
                        return EXIT_USAGE;
                }
                k = authorize_link(argv[optind], provider, scope.len ? scope.s : NULL, valid);
                strbuf_free(&scope);
                return k;
        }
        if (optind != argc - 1 || !provider || (import && (device || username || link || valid))) {
                fprintf(stderr, "tokenctl: usage: tokenctl %s NAME --provider P [--param K=V]... [--scope S]... "
                                "[--allow-user U]... [--allow-group G]... [--no-wait]%s\n",
                        argv[0], import ? " < refresh-token" : " [--device] [--username U]");
                strbuf_free(&scope);
                json_decref(users);
                json_decref(groups);
                return EXIT_USAGE;
        }
        name = argv[optind];
        if (!name_ok(name)) {
                strbuf_free(&scope);
                json_decref(users);
                json_decref(groups);
                return EXIT_USAGE;
        }
        target_provider = provider;
        /* Who authorized it so far: a re-authorization as someone else is
         * worth a word. */
        if (!import) {
                Reply pr;

                if (api_call("GET", path_of(name), NULL, &pr) == EXIT_OK && pr.status == 200 && pr.json &&
                    jstr(pr.json, "identity"))
                        previous_identity = strdup(jstr(pr.json, "identity"));
                else if (pr.status == 0) {
                        /* the daemon is unreachable: api_call said so */
                        reply_done(&pr);
                        strbuf_free(&scope);
                        json_decref(users);
                        json_decref(groups);
                        return EXIT_UNREACHABLE;
                }
                reply_done(&pr);
        }
        body = json_pack("{s:s, s:s, s:o, s:o}", "name", name, "provider", provider, "allow_users", users,
                         "allow_groups", groups);
        if (scope.len)
                json_object_set_new(body, "scope", json_string(scope.s));
        strbuf_free(&scope);
        if (device)
                json_object_set_new(body, "device", json_true());
        if (json_object_size(params) > 0)
                json_object_set(body, "params", params);
        json_decref(params);
        params = NULL;
        if (import) {
                /* A refresh token is a secret: stdin only, never argv. */
                secret = read_secret_line("Refresh token: ");
                if (isempty(secret)) {
                        fprintf(stderr, "tokenctl: import reads the refresh token from stdin; got none\n");
                        json_decref(body);
                        return EXIT_USAGE;
                }
                json_object_set_new(body, "refresh_token", json_string(secret));
        } else if (username) {
                json_object_set_new(body, "username", json_string(username));
                /* the password from stdin; none: the provider's password_file */
                secret = read_secret_line("Password: ");
                if (!isempty(secret))
                        json_object_set_new(body, "password", json_string(secret));
        }
        k = call_ok("POST", API_PREFIX, body, &r);
        {
                /* the request tree held the secret too */
                json_t *v = json_object_get(body, import ? "refresh_token" : "password");
                if (json_is_string(v))
                        explicit_wipe((char *) json_string_value(v), json_string_length(v));
        }
        json_decref(body);
        if (k)
                return k;
        url = jstr(r.json, "authorize_url");
        if (arg_json && nowait)
                print_json(r.json);
        else if (jstr(r.json, "user_code"))
                print_device(name, provider, r.json);
        else if (url) {
                printf("Open this URL in a browser to authorize '%s' at %s:\n\n  %s\n\n", name, provider, url);
                fflush(stdout);
        }
        reply_done(&r);
        if (nowait)
                return EXIT_OK;
        return wait_authorized(name, timeout, import, previous_identity);
}

static size_t discard_cb(char *p _unused_, size_t size, size_t n, void *ud) {
        *(size_t *) ud += size * n;
        return size * n;
}

/* The daemon's [broker] ca_file and connect_to (from /v1/providers), so
 * the test request goes where the daemon's requests go. */
static int test_egress(CURL *c, json_t *provs, struct curl_slist **keep) {
        const char *ca = jstr(provs, "ca_file");
        json_t *a = json_object_get(provs, "connect_to"), *v;
        char *lines[EGRESS_CONNECT_TO_MAX];
        size_t n = 0, i;

        json_array_foreach(a, i, v)
                if (json_is_string(v) && n < EGRESS_CONNECT_TO_MAX)
                        lines[n++] = (char *) json_string_value(v);
        if (egress_apply(c, ca, lines, n, keep) < 0) {
                fprintf(stderr, "tokenctl: cannot set ca_file or connect_to on the test request\n");
                return EXIT_FAILURE_GENERIC;
        }
        return EXIT_OK;
}

/* GET the provider's test_url with the token as its usage rule says. */
static int do_test(int argc _unused_, char **argv) {
        const char *provider, *test_url = NULL, *test_method = "GET", *key;
        json_t *a, *p, *v;
        Reply conn, provs, tok;
        StrBuf url = {};
        struct curl_slist *h = NULL, *connect_to = NULL;
        CURL *c;
        CURLcode cc;
        long status = 0;
        size_t bytes = 0, i;
        double secs = 0;
        int k;

        k = connection_call("GET", argv[1], NULL, &conn);
        if (k)
                return k;
        provider = jstr(conn.json, "provider");
        k = call_ok("GET", "/v1/providers", NULL, &provs);
        if (k) {
                reply_done(&conn);
                return k;
        }
        a = json_object_get(provs.json, "providers");
        json_array_foreach(a, i, p)
                if (provider && jstr(p, "name") && streq(jstr(p, "name"), provider))
                {
                        test_url = jstr(p, "test_url");
                        test_method = jstr(p, "test_method") ?: "GET";
                }
        if (test_url && jstr(conn.json, "test_url_error")) {
                fprintf(stderr, "tokenctl: the test_url of %s cannot be expanded: %s\n", argv[1],
                        tty_safe(jstr(conn.json, "test_url_error")) ?: "?");
                reply_done(&conn);
                reply_done(&provs);
                return EXIT_FAILURE_GENERIC;
        }
        if (test_url && jstr(conn.json, "test_url"))
                test_url = jstr(conn.json, "test_url");   /* ${param.X} and ${metadata.X} filled in */
        if (!test_url) {
                fprintf(stderr, "tokenctl: provider %s has no test_url\n", provider ?: "?");
                reply_done(&conn);
                reply_done(&provs);
                return EXIT_FAILURE_GENERIC;
        }
        k = token_reply(argv[1], NULL, &tok);
        if (k) {
                reply_done(&conn);
                reply_done(&provs);
                return k;
        }
        strbuf_puts(&url, test_url);
        json_object_foreach(json_object_get(tok.json, "query"), key, v) {
                char *ek = curl_easy_escape(NULL, key, 0), *ev = curl_easy_escape(NULL, json_string_value(v) ?: "", 0);
                strbuf_puts(&url, strchr(url.s, '?') ? "&" : "?");
                strbuf_puts(&url, ek ?: "");
                strbuf_puts(&url, "=");
                strbuf_puts(&url, ev ?: "");
                curl_free(ek);
                if (ev)
                        explicit_wipe(ev, strlen(ev));
                curl_free(ev);
        }
        json_object_foreach(json_object_get(tok.json, "headers"), key, v) {
                StrBuf line = {};
                strbuf_printf(&line, "%s: %s", key, json_string_value(v) ?: "");
                if (line.s)
                        h = curl_slist_append(h, line.s);
                strbuf_free(&line);
        }
        c = curl_easy_init();
        if (!c || !url.s) {
                k = EXIT_FAILURE_GENERIC;
                goto out;
        }
        curl_easy_setopt(c, CURLOPT_URL, url.s);
        if (streq(test_method, "POST")) {
                /* an RPC endpoint (Dropbox): POST without a body, and
                 * without the form Content-Type curl would add (Dropbox
                 * refuses application/x-www-form-urlencoded) */
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
                curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
                h = curl_slist_append(h, "Content-Type:");
        } else if (!streq(test_method, "GET"))
                curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, test_method);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(c, CURLOPT_USERAGENT, "tokenctl/" TOKENBROKER_VERSION);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_cb);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &bytes);
        k = test_egress(c, provs.json, &connect_to);
        if (k) {
                curl_easy_cleanup(c);
                goto out;
        }
        cc = curl_easy_perform(c);
        if (cc == CURLE_OK) {
                curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
                curl_easy_getinfo(c, CURLINFO_TOTAL_TIME, &secs);
        }
        curl_easy_cleanup(c);
        if (cc != CURLE_OK) {
                fprintf(stderr, "tokenctl: %s %s failed: %s\n", test_method, test_url, curl_easy_strerror(cc));
                k = EXIT_FAILURE_GENERIC;
                goto out;
        }
        if (arg_json) {
                json_t *j = json_pack("{s:s, s:s, s:I, s:f, s:I}", "name", argv[1], "test_url", test_url,
                                      "status", (json_int_t) status, "seconds", secs, "bytes", (json_int_t) bytes);
                print_json(j);
                json_decref(j);
        } else
                printf("%s: GET %s -> HTTP %ld in %.0f ms (%zu bytes)\n", argv[1], test_url, status, secs * 1000.0,
                       bytes);
        k = status >= 200 && status < 300 ? EXIT_OK : EXIT_FAILURE_GENERIC;
out:
        curl_slist_free_all(h);
        curl_slist_free_all(connect_to);
        strbuf_free(&url);
        reply_done(&tok);
        reply_done(&conn);
        reply_done(&provs);
        return k;
}

/* ---- preview and trace ------------------------------------------------- */

/* Daemon text (already redacted and escaped there) escaped again for the
 * terminal, whatever its length. */
static void put_safe(const char *s) {
        char *e = text_escape_dup(strempty(s), strlen(strempty(s)) * 4 + 16);

        fputs(e ?: "", stdout);
        free(e);
}

/* Mermaid message text: no '#', ';', '<', '>' or line break of its own. */
static void put_mermaid(const char *s) {
        _cleanup_free_ char *e = text_escape_dup(strempty(s), strlen(strempty(s)) * 4 + 16);

        for (const char *p = e ?: ""; *p; p++)
                switch (*p) {
                case '#': fputs("#35;", stdout); break;
                case ';': fputs("#59;", stdout); break;
                case '<': fputs("#lt;", stdout); break;
                case '>': fputs("#gt;", stdout); break;
                default: putchar(*p);
                }
}

static const char *participant_title(const char *id, const char *provider) {
        return streq(id, "browser") ? "Browser" : streq(id, "broker") ? "tokenbroker" :
               streq(id, "client") ? "Client" : streq(id, "api") ? "API" : provider;
}

static void print_preview_mermaid(json_t *j) {
        static const char *const order[] = { "browser", "client", "broker", "provider", "api" };
        json_t *steps = json_object_get(j, "steps"), *s, *h;
        size_t i, k;

        printf("sequenceDiagram\n");
        for (size_t o = 0; o < ELEMENTSOF(order); o++) {
                bool used = false;
                json_array_foreach(steps, i, s)
                        used = used || streq(strempty(jstr(s, "from")), order[o]) || streq(strempty(jstr(s, "to")), order[o]);
                if (!used)
                        continue;
                printf("    participant %s as ", order[o]);
                put_mermaid(participant_title(order[o], jstr(j, "provider") ?: "provider"));
                printf("\n");
        }
        json_array_foreach(steps, i, s) {
                const char *from = jstr(s, "from") ?: "broker", *to = jstr(s, "to") ?: "provider";

                if (!connection_name_valid(from) || !connection_name_valid(to))
                        continue;
                printf("    %s->>%s: %zu. ", from, to, i + 1);
                put_mermaid(jstr(s, "step"));
                if (jstr(s, "method")) {
                        printf(" ");
                        put_mermaid(jstr(s, "method"));
                        printf(" ");
                        put_mermaid(jstr(s, "url"));
                }
                printf("\n");
                if (json_array_size(json_object_get(s, "headers")) == 0 && !jstr(s, "body") && !jstr(s, "query"))
                        continue;
                printf("    Note over %s,%s: ", from, to);
                json_array_foreach(json_object_get(s, "headers"), k, h) {
                        printf("%s", k > 0 ? "<br/>" : "");
                        put_mermaid(json_string_value(h));
                }
                if (jstr(s, "query")) {
                        printf("%squery: ", json_array_size(json_object_get(s, "headers")) > 0 ? "<br/>" : "");
                        put_mermaid(jstr(s, "query"));
                }
                if (jstr(s, "body")) {
                        printf("%s", json_array_size(json_object_get(s, "headers")) > 0 ? "<br/><br/>" : "");
                        put_mermaid(jstr(s, "body"));
                }
                printf("\n");
        }
}

static void print_preview(json_t *j) {
        json_t *steps = json_object_get(j, "steps"), *params = json_object_get(j, "params"), *s, *h, *v;
        const char *key;
        size_t i, k;

        printf("Requests for provider ");
        put_safe(jstr(j, "provider"));
        printf(" (grant ");
        put_safe(jstr(j, "grant"));
        printf("), in order; nothing is sent.\n"
               "Secrets and generated values are <placeholders>; the HTTP client adds Host, User-Agent\n"
               "and Content-Length.\n");
        if (json_object_size(params) > 0) {
                printf("Connection parameters:");
                json_object_foreach(params, key, v) {
                        printf(" ");
                        put_safe(key);
                        printf("=");
                        put_safe(json_string_value(v));
                }
                printf("\n");
        }
        json_array_foreach(steps, i, s) {
                printf("\n%zu. ", i + 1);
                put_safe(jstr(s, "step"));
                printf(": ");
                put_safe(jstr(s, "description"));
                printf(" (");
                put_safe(jstr(s, "from"));
                printf(" -> ");
                put_safe(jstr(s, "to"));
                printf(")\n");
                if (jstr(s, "method")) {
                        printf("   ");
                        put_safe(jstr(s, "method"));
                        printf(" ");
                        put_safe(jstr(s, "url"));
                        printf("\n");
                }
                json_array_foreach(json_object_get(s, "headers"), k, h) {
                        printf("   ");
                        put_safe(json_string_value(h));
                        printf("\n");
                }
                if (jstr(s, "query")) {
                        printf("   query: ");
                        put_safe(jstr(s, "query"));
                        printf("\n");
                }
                if (jstr(s, "body")) {
                        printf("\n   ");
                        put_safe(jstr(s, "body"));
                        printf("\n");
                }
        }
}

/* tokenctl preview PROVIDER [--param k=v]... [--mermaid] */
static int do_preview(int argc, char **argv) {
        static const struct option options[] = {
                { "param", required_argument, NULL, 'p' },
                { "mermaid", no_argument, NULL, 'm' },
                {}
        };
        _cleanup_free_ char *q = NULL, *pj = NULL, *path = NULL;
        json_t *params = json_object();
        bool mermaid = false;
        const char *provider;
        Reply r;
        int c, k;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
                const char *eq;
                _cleanup_free_ char *name = NULL;

                switch (c) {
                case 'm':
                        mermaid = true;
                        break;
                case 'p':
                        eq = strchr(optarg, '=');
                        if (eq)
                                name = strndup(optarg, (size_t) (eq - optarg));
                        if (!eq || !name || !connection_name_valid(name) || string_has_ctl(eq + 1)) {
                                fprintf(stderr, "tokenctl: --param takes NAME=VALUE (NAME of A-Z a-z 0-9 . _ -, "
                                                "VALUE without control characters): '%s'\n", tty_safe(optarg));
                                json_decref(params);
                                return EXIT_USAGE;
                        }
                        json_object_set_new(params, name, json_string(eq + 1));
                        break;
                default:
                        json_decref(params);
                        return EXIT_USAGE;
                }
        }
        if (optind != argc - 1) {
                fprintf(stderr, "tokenctl: usage: tokenctl preview PROVIDER [--param NAME=VALUE]... [--mermaid]\n");
                json_decref(params);
                return EXIT_USAGE;
        }
        provider = argv[optind];
        if (!connection_name_valid(provider)) {
                fprintf(stderr, "tokenctl: invalid provider name '%s'\n", tty_safe(provider));
                json_decref(params);
                return EXIT_USAGE;
        }
        target_provider = provider;
        if (json_object_size(params) > 0) {
                pj = json_dumps(params, JSON_COMPACT);
                q = pj ? url_escape(pj) : NULL;
        }
        json_decref(params);
        if (asprintf(&path, "/v1/preview?provider=%s%s%s", provider, q ? "&params=" : "", strempty(q)) < 0)
                return EXIT_FAILURE_GENERIC;
        k = call_ok("GET", path, NULL, &r);
        if (k)
                return k;
        if (arg_json)
                print_json(r.json);
        else if (mermaid)
                print_preview_mermaid(r.json);
        else
                print_preview(r.json);
        reply_done(&r);
        return EXIT_OK;
}

static void print_trace_entry(json_t *e) {
        json_t *rq = json_object_get(e, "request"), *rs = json_object_get(e, "response"), *h;
        json_t *status = json_object_get(rs, "status");
        size_t i;

        printf("#%" JSON_INTEGER_FORMAT " %s ", json_integer_value(json_object_get(e, "seq")), tty_safe(jstr(e, "at")) ?: "");
        put_safe(jstr(e, "what"));
        printf(" ");
        put_safe(jstr(rq, "method"));
        printf(" ");
        put_safe(jstr(rq, "url"));
        if (json_is_integer(status))
                printf(" -> HTTP %" JSON_INTEGER_FORMAT, json_integer_value(status));
        else {
                printf(" -> failed: ");
                put_safe(jstr(e, "error"));
        }
        printf(" in %.0f ms\n", json_number_value(json_object_get(e, "duration_ms")));
        json_array_foreach(json_object_get(rq, "headers"), i, h) {
                printf("  > ");
                put_safe(json_string_value(h));
                printf("\n");
        }
        if (jstr(rq, "body")) {
                printf("  >\n  > ");
                put_safe(jstr(rq, "body"));
                printf("\n");
        }
        json_array_foreach(json_object_get(rs, "headers"), i, h) {
                printf("  < ");
                put_safe(json_string_value(h));
                printf("\n");
        }
        if (jstr(rs, "body")) {
                printf("  <\n  < ");
                put_safe(jstr(rs, "body"));
                printf("\n");
        }
}

/* tokenctl trace NAME [--follow [--timeout S]] */
static int do_trace(int argc, char **argv) {
        static const struct option options[] = {
                { "follow", no_argument, NULL, 'f' },
                { "timeout", required_argument, NULL, 't' },
                {}
        };
        unsigned long timeout = 600;
        json_int_t last = 0;
        bool follow = false, any = false;
        const char *name;
        usec_t start = now(CLOCK_MONOTONIC);
        int c, k;

        optind = 0;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'f':
                        follow = true;
                        break;
                case 't': {
                        char *end = NULL;
                        errno = 0;
                        timeout = strtoul(optarg, &end, 10);
                        if (errno || !end || *end || optarg[0] < '0' || optarg[0] > '9' || timeout > 86400) {
                                fprintf(stderr, "tokenctl: --timeout takes whole seconds from 1 to 86400\n");
                                return EXIT_USAGE;
                        }
                        break;
                }
                default:
                        return EXIT_USAGE;
                }
        if (optind != argc - 1) {
                fprintf(stderr, "tokenctl: usage: tokenctl trace NAME [--follow [--timeout S]]\n");
                return EXIT_USAGE;
        }
        name = argv[optind];
        if (follow)
                (void) signal(SIGINT, on_sigint);
        /* --follow: polls once a second for what came after, until
         * --timeout seconds (default 600) or Ctrl-C */
        for (unsigned round = 0; round < 86400 + 1; round++) {
                char suffix[64];
                json_t *a, *e;
                size_t i;
                Reply r;

                snprintf(suffix, sizeof suffix, "trace?after=%" JSON_INTEGER_FORMAT, last);
                k = connection_call("GET", name, suffix, &r);
                if (k)
                        return k;
                a = json_object_get(r.json, "entries");
                if (arg_json && !follow)
                        print_json(r.json);
                else
                        json_array_foreach(a, i, e) {
                                if (arg_json) {
                                        char *s = json_dumps(e, JSON_COMPACT | JSON_SORT_KEYS);
                                        if (s)
                                                printf("%s\n", s);
                                        free(s);
                                } else
                                        print_trace_entry(e);
                                any = true;
                        }
                if (json_array_size(a) > 0)
                        last = json_integer_value(json_object_get(json_array_get(a, json_array_size(a) - 1), "seq"));
                reply_done(&r);
                fflush(stdout);
                if (!follow) {
                        if (!any && !arg_json)
                                printf("no exchanges with the provider recorded for '%s' (since the daemon started; "
                                       "trace_entries = 0 turns tracing off)\n", name);
                        return EXIT_OK;
                }
                if (interrupted || now(CLOCK_MONOTONIC) - start >= (usec_t) timeout * USEC_PER_SEC)
                        return EXIT_OK;
                (void) usleep(1000 * 1000);
                if (interrupted)
                        return EXIT_OK;
        }
        return EXIT_OK;
}

static const Verb verbs[] = {
        { "status", "", "show the daemon's state", 0, 0, do_status },
        { "providers", "", "list configured providers", 0, 0, do_providers },
        { "list", "[--state S] [--provider P] [--prefix T] [--limit N]",
          "list connections, sorted by name, page by page; a summary line", 0, 8, do_list },
        { "show", "NAME", "show one connection (never its tokens)", 1, 1, do_show },
        { "authorize", "NAME --provider P [--param K=V]... [--scope S]... [--allow-user U]... [--allow-group G]... [--device] "
                       "[--username U] [--no-wait] [--timeout S] | NAME --link [--valid TIME] [--provider P] [--scope S]...",
          "start (or redo) an authorization and wait for it; --username reads the password from stdin; --link "
          "prints a single-use re-authorization link to send on instead (valid 7d unless --valid, at most 30d)", 1, 64,
          do_authorize },
        { "import", "NAME --provider P [--param K=V]... [--scope S]... [--allow-user U]... [--allow-group G]... [--timeout S]",
          "adopt a refresh token obtained elsewhere (read from stdin), prove it with a refresh", 1, 64, do_authorize },
        { "test", "NAME", "GET the provider's test_url with the token; print the status and time", 1, 1, do_test },
        { "token", "NAME [--min-ttl S]", "print a valid access token", 1, 3, do_token },
        { "header", "NAME", "print the request header line(s) to send with the token", 1, 1, do_header },
        { "refresh", "NAME", "refresh the tokens now", 1, 1, do_refresh },
        { "revoke", "NAME", "revoke at the provider and delete", 1, 1, do_revoke },
        { "events", "[NAME] [--limit N]", "recent events, of one connection or all", 0, 3, do_events },
        { "links", "[NAME]", "list re-authorization links (never their secret)", 0, 1, do_links },
        { "unlink", "ID|NAME", "revoke a re-authorization link, or every unused one of a connection", 1, 1, do_unlink },
        { "exec", "NAME [--env VAR] [--min-ttl S] -- CMD [ARGS]...",
          "run CMD with a token (at least --min-ttl, default 300 s) in $VAR (default TOKENBROKER_ACCESS_TOKEN)",
          2, 1 << 24, do_exec },
        { "git-credential", "[--connection NAME] [--map HOST[/PATH]=NAME]... [--username U] [--allow-http] "
                            "get|store|erase",
          "git's credential helper: the token of the connection mapped to the host git asks about", 1, 200,
          do_git_credential },
        { "proxy", "NAME --listen ADDRESS:PORT",
          "forward HTTP on a loopback port to the connection's proxy route on the socket, as you", 2, 3, do_proxy },
        { "preview", "PROVIDER [--param NAME=VALUE]... [--mermaid]",
          "every request the broker would make for a provider, secrets as <placeholders>", 1, 64, do_preview },
        { "trace", "NAME [--follow [--timeout S]]",
          "the last exchanges of a connection with its provider, secrets replaced (admin only)", 1, 4, do_trace },
};

static void help(FILE *f) {
        fprintf(f, "Usage: tokenctl [--socket PATH] [--json] VERB [ARGS]\n\n"
                   "Talks to tokenbrokerd over its Unix socket (--socket, else $" SOCKET_ENV
                   ", else " DEFAULT_SOCKET_PATH ").\n--socket and --json may also follow the verb.\n\nVerbs:\n");
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                fprintf(f, "  %-10s %s\n  %-10s   %s\n", verbs[i].name, verbs[i].args, "", verbs[i].summary);
        fprintf(f, "\n`tokenctl VERB --help` shows one verb.\n\nExit status:\n"
                   "  0 success            1 other error          2 usage\n"
                   "  3 daemon unreachable 4 unknown connection   5 needs re-authorization\n"
                   "  6 authorization pending or expired          7 permission denied\n"
                   "  8 provider unavailable, no valid token      9 timed out\n"
                   " 10 the provider's configuration cannot do what was asked\n");
}

/* --json and --socket are global: accepted before and after the verb, as
 * people type them ("tokenctl list --json"). Takes them out of argv, up
 * to a "--". Returns 0, or EXIT_USAGE. */
static int take_global_options(int *argc, char **argv) {
        for (int i = 1; i < *argc; i++) {
                int drop = 0;

                if (streq(argv[i], "--"))
                        break;
                if (streq(argv[i], "--json")) {
                        arg_json = true;
                        drop = 1;
                } else if (streq(argv[i], "--socket")) {
                        if (i + 1 >= *argc) {
                                fprintf(stderr, "tokenctl: --socket needs a path\n");
                                return EXIT_USAGE;
                        }
                        arg_socket = argv[i + 1];
                        drop = 2;
                } else if (strncmp(argv[i], "--socket=", 9) == 0) {
                        arg_socket = argv[i] + 9;
                        drop = 1;
                }
                if (drop > 0) {
                        /* argv[*argc] is NULL and moves along */
                        memmove(&argv[i], &argv[i + drop], sizeof(char *) * (size_t) (*argc - i - drop + 1));
                        *argc -= drop;
                        i--;
                }
        }
        return 0;
}

int main(int argc, char *argv[]) {
        enum { O_HELP = 0x100, O_VERSION };
        static const struct option options[] = {
                { "help", no_argument, NULL, O_HELP },
                { "version", no_argument, NULL, O_VERSION },
                {}
        };
        const Verb *v = NULL;
        int c, k, n;

        if (take_global_options(&argc, argv))
                return EXIT_USAGE;
        while ((c = getopt_long(argc, argv, "+h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                case O_HELP:
                        help(stdout);
                        return EXIT_OK;
                case O_VERSION:
                        printf("tokenctl %s\n", TOKENBROKER_VERSION);
                        return EXIT_OK;
                default:
                        help(stderr);
                        return EXIT_USAGE;
                }
        if (optind >= argc) {
                help(stderr);
                return EXIT_USAGE;
        }
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (streq(verbs[i].name, argv[optind]))
                        v = &verbs[i];
        if (!v) {
                fprintf(stderr, "tokenctl: unknown verb '%s'; see tokenctl --help\n", argv[optind]);
                return EXIT_USAGE;
        }
        argc -= optind;
        argv += optind;
        for (int i = 1; i < argc && !streq(argv[i], "--"); i++)
                if (streq(argv[i], "--help") || streq(argv[i], "-h")) {
                        printf("Usage: tokenctl [--socket PATH] [--json] %s %s\n\n%s\n", v->name, v->args, v->summary);
                        return EXIT_OK;
                }
        n = argc - 1;
        if (n < v->min_args || n > v->max_args) {
                fprintf(stderr, "tokenctl: usage: tokenctl %s %s\n", v->name, v->args);
                return EXIT_USAGE;
        }
        curl_global_init(CURL_GLOBAL_DEFAULT);
        k = v->fn(argc, argv);
        curl_global_cleanup();
        return k;
}
