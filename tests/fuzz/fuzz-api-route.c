/* SPDX-License-Identifier: MIT */
/* libFuzzer target: api_route_match() (daemon/route.h), the socket API's
 * router as dispatch() in daemon/api.c calls it.
 *
 * Input: "METHOD PATH" (split at the first space; without one, the whole
 * input is the path of a GET). Method and path are each copied into a
 * buffer of exactly their length plus the NUL, so ASan flags any read past
 * the end of the string.
 *
 * Invariants:
 *   - the result is a route (== ret->id) or one of the documented errors;
 *   - a returned name is one connection_name_valid() accepts, and the path
 *     is /v1/connections/NAME or /v1/connections/NAME/...: the name is
 *     copied out of the path, never made up or cut short;
 *   - a route (>= 0) is exactly the canonical path of (route, name), and
 *     the method is the route's;
 *   - it agrees with a reference router written as plain if-chains;
 *   - it is deterministic. */

#include "common/api.h"
#include "common/util.h"
#include "daemon/route.h"

static void fail(const char *what, const char *method, const char *path) {
        fprintf(stderr, "fuzz-api-route: %s: \"%s\" \"%.200s\"\n", what, method, path);
        abort();
}

static char *copy(const uint8_t *d, size_t n) {
        char *s = malloc(n + 1);

        if (!s)
                abort();
        memcpy(s, d, n);
        s[n] = 0;
        return s;
}

static bool ref_name_valid(const char *s, size_t n) {
        if (n == 0 || n > CONNECTION_NAME_MAX || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
                return false;
        for (size_t i = 0; i < n; i++)
                if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", s[i]))
                        return false;
        return true;
}

/* The reference router: the expected result and route. */
static int ref_route(const char *method, const char *path, ApiRouteId *ret_id) {
        bool get = streq(method, "GET"), post = streq(method, "POST"), del = streq(method, "DELETE");
        const char *p;
        size_t n;

        *ret_id = _API_ROUTE_INVALID;
        if (streq(path, "/v1/connections") || streq(path, "/v1/connections/")) {
                *ret_id = post ? API_ROUTE_CREATE : API_ROUTE_LIST;
                return get || post ? (int) *ret_id : -EOPNOTSUPP;
        }
        if (streq(path, "/v1/providers"))
                *ret_id = API_ROUTE_PROVIDERS;
        else if (streq(path, "/v1/status"))
                *ret_id = API_ROUTE_STATUS;
        else if (streq(path, "/v1/events"))
                *ret_id = API_ROUTE_EVENTS;
        else if (streq(path, "/metrics"))
                *ret_id = API_ROUTE_METRICS;
        else if (streq(path, "/v1/preview"))
                *ret_id = API_ROUTE_PREVIEW;
        if (*ret_id >= 0)
                return get ? (int) *ret_id : -EOPNOTSUPP;
        if (strncmp(path, "/v1/connections/", 16) != 0)
                return -ENOENT;

        p = path + 16;
        for (n = 0; p[n] && p[n] != '/'; n++)
                ;
        if (n > CONNECTION_NAME_MAX)
                return -ENAMETOOLONG;
        if (streq(p + n, "")) {
                *ret_id = del ? API_ROUTE_REVOKE : API_ROUTE_SHOW;
                if (!get && !del)
                        return -EOPNOTSUPP;
        } else if (streq(p + n, "/token")) {
                *ret_id = API_ROUTE_TOKEN;
                if (!get)
                        return -EOPNOTSUPP;
        } else if (streq(p + n, "/invalidate")) {
                *ret_id = API_ROUTE_INVALIDATE;
                if (!post)
                        return -EOPNOTSUPP;
        } else if (streq(p + n, "/refresh")) {
                *ret_id = API_ROUTE_REFRESH;
                if (!post)
                        return -EOPNOTSUPP;
        } else if (streq(p + n, "/trace")) {
                *ret_id = API_ROUTE_TRACE;
                if (!get)
                        return -EOPNOTSUPP;
        } else
                return -ENOENT;
        return ref_name_valid(p, n) ? (int) *ret_id : -EINVAL;
}

static const char *canonical_sub(ApiRouteId id) {
        switch (id) {
        case API_ROUTE_SHOW:
        case API_ROUTE_REVOKE:
                return "";
        case API_ROUTE_TOKEN:
                return "/token";
        case API_ROUTE_INVALIDATE:
                return "/invalidate";
        case API_ROUTE_REFRESH:
                return "/refresh";
        case API_ROUTE_TRACE:
                return "/trace";
        default:
                return NULL;
        }
}

static void check(const char *method, const char *path) {
        ApiRoute rt, rt2;
        ApiRouteId ref_id;
        int r, r2, rr;

        memset(&rt, 0xa5, sizeof rt);
        r = api_route_match(method, path, &rt);
        if (!((r >= 0 && r < _API_ROUTE_MAX) || r == -ENAMETOOLONG || r == -ENOENT || r == -EOPNOTSUPP ||
              r == -EINVAL))
                fail("undocumented result", method, path);
        if (r >= 0 && (ApiRouteId) r != rt.id)
                fail("the result is not ret->id", method, path);
        if (!(rt.id == _API_ROUTE_INVALID || (rt.id >= 0 && rt.id < _API_ROUTE_MAX)))
                fail("ret->id out of range", method, path);
        if (memchr(rt.name, 0, sizeof rt.name) == NULL)
                fail("ret->name is not NUL-terminated", method, path);

        if (rt.name[0]) {
                size_t n = strlen(rt.name);
                const char *p = startswith(path, API_PREFIX "/");

                if (!connection_name_valid(rt.name) || !ref_name_valid(rt.name, n))
                        fail("an invalid name came back", method, path);
                if (!p || strncmp(p, rt.name, n) != 0 || (p[n] != 0 && p[n] != '/'))
                        fail("the name is not the path's", method, path);
                if (!rt.connection)
                        fail("a name outside /v1/connections/NAME", method, path);
        }
        if (rt.connection != (startswith(path, API_PREFIX "/") && !streq(path, API_PREFIX "/")))
                fail("ret->connection is wrong", method, path);

        if (r >= 0) {
                const char *sub = canonical_sub(rt.id);
                char *want;

                if (sub) {
                        if (asprintf(&want, API_PREFIX "/%s%s", rt.name, sub) < 0)
                                abort();
                } else if (!(want = strdup(rt.id == API_ROUTE_LIST || rt.id == API_ROUTE_CREATE ? API_PREFIX :
                                           rt.id == API_ROUTE_PROVIDERS                        ? "/v1/providers" :
                                           rt.id == API_ROUTE_STATUS                           ? "/v1/status" :
                                           rt.id == API_ROUTE_EVENTS                           ? "/v1/events" :
                                           rt.id == API_ROUTE_PREVIEW                          ? "/v1/preview" :
                                                                                                 "/metrics")))
                        abort();
                if (!streq(path, want) && !(streq(path, API_PREFIX "/") && rt.id <= API_ROUTE_CREATE))
                        fail("a route matched a path that is not its own", method, path);
                free(want);
        }

        rr = ref_route(method, path, &ref_id);
        if (rr != r || ref_id != rt.id) {
                fprintf(stderr, "api_route_match() = %d (id %d), reference %d (id %d)\n", r, rt.id, rr, ref_id);
                fail("router and reference disagree", method, path);
        }

        r2 = api_route_match(method, path, &rt2);
        if (r2 != r || rt2.id != rt.id || rt2.connection != rt.connection || !streq(rt2.name, rt.name))
                fail("not deterministic", method, path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const uint8_t *sp = memchr(data, ' ', size);
        char *method, *path;

        if (sp) {
                method = copy(data, (size_t) (sp - data));
                path = copy(sp + 1, size - (size_t) (sp - data) - 1);
        } else {
                method = copy((const uint8_t *) "GET", 3);
                path = copy(data, size);
        }
        check(method, path);
        free(method);
        free(path);
        return 0;
}
