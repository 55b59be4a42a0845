/* SPDX-License-Identifier: MIT */

/* The callback's query string and the socket API's routes: the first code
 * to read what a browser, a provider or a local peer sends. */

#include "common/util.h"
#include "daemon/route.h"

/* ---- the callback's query string --------------------------------------- */

void callback_query_done(CallbackQuery *q) {
        if (!q)
                return;
        q->state = secret_free(q->state);
        q->code = secret_free(q->code);
        q->error = mfree(q->error);
        q->error_description = mfree(q->error_description);
        q->iss = mfree(q->iss);
}

/* Keeps value in *slot if key names it. */
static int query_keep(const char *key, const char *name, const char *value, char **slot) {
        if (!name || !streq(key, name))
                return 0;
        if (*slot)
                return -ENOTUNIQ;
        if (strlen(value) > CALLBACK_VALUE_MAX)
                return -EMSGSIZE;
        *slot = strdup(value);
        return *slot ? 0 : -ENOMEM;
}

int callback_query_parse(const char *query, size_t len, const char *code_param, CallbackQuery *ret) {
        _cleanup_(callback_query_done) CallbackQuery q = {};
        unsigned n = 0;
        size_t i = 0;
        int r;

        assert(query || len == 0);
        assert(ret);

        if (len > CALLBACK_QUERY_MAX)
                return -EMSGSIZE;

        /* Every byte but the separators is decoded as part of a key or a
         * value, so url_unescape() refuses a NUL byte wherever it is. */
        while (i < len) {
                const char *seg = query + i, *amp, *eq;
                _cleanup_free_ char *key = NULL;
                char *value = NULL;
                size_t seg_len;

                amp = memchr(seg, '&', len - i);
                seg_len = amp ? (size_t) (amp - seg) : len - i;
                i += seg_len + 1;
                if (seg_len == 0)
                        continue;   /* "a=1&&b=2", a trailing '&' */
                if (++n > CALLBACK_PARAMS_MAX)
                        return -E2BIG;

                eq = memchr(seg, '=', seg_len);
                r = url_unescape(seg, eq ? (size_t) (eq - seg) : seg_len, &key);
                if (r < 0)
                        return r;
                r = eq ? url_unescape(eq + 1, seg_len - (size_t) (eq + 1 - seg), &value)
                       : url_unescape("", 0, &value);
                if (r < 0)
                        return r;

                r = query_keep(key, "state", value, &q.state);
                if (r >= 0)
                        r = query_keep(key, code_param, value, &q.code);
                if (r >= 0)
                        r = query_keep(key, "error", value, &q.error);
                if (r >= 0)
                        r = query_keep(key, "error_description", value, &q.error_description);
                if (r >= 0)
                        r = query_keep(key, "iss", value, &q.iss);
                /* Unknown parameters may be secrets too (an id_token). */
                value = secret_free(value);
                if (r < 0)
                        return r;
        }

        *ret = q;
        q = (CallbackQuery) {};
        return 0;
}

/* ---- the socket API's routes ------------------------------------------ */

static const struct {
        bool sub;                  /* path: what follows /v1/connections/NAME */
        const char *path;
        const char *method;
} api_routes[_API_ROUTE_MAX] = {
        [API_ROUTE_LIST]       = { false, API_PREFIX,       "GET"    },
        [API_ROUTE_CREATE]     = { false, API_PREFIX,       "POST"   },
        [API_ROUTE_SHOW]       = { true,  "",               "GET"    },
        [API_ROUTE_REVOKE]     = { true,  "",               "DELETE" },
        [API_ROUTE_TOKEN]      = { true,  "/token",         "GET"    },
        [API_ROUTE_INVALIDATE] = { true,  "/invalidate",    "POST"   },
        [API_ROUTE_REFRESH]    = { true,  "/refresh",       "POST"   },
        [API_ROUTE_PROVIDERS]  = { false, "/v1/providers",  "GET"    },
        [API_ROUTE_STATUS]     = { false, "/v1/status",     "GET"    },
        [API_ROUTE_EVENTS]     = { false, "/v1/events",     "GET"    },
        [API_ROUTE_METRICS]    = { false, "/metrics",       "GET"    },
        [API_ROUTE_PREVIEW]    = { false, "/v1/preview",    "GET"    },
        [API_ROUTE_TRACE]      = { true,  "/trace",         "GET"    },
};

int api_route_match(const char *method, const char *path, ApiRoute *ret) {
        const char *rest, *sub = NULL;
        bool method_ok = false, name_ok = false;

        assert(method);
        assert(path);
        assert(ret);

        *ret = (ApiRoute) { .id = _API_ROUTE_INVALID };

        /* The list answers with a trailing slash too; nothing else does. */
        if (streq(path, API_PREFIX "/"))
                path = API_PREFIX;
        rest = startswith(path, API_PREFIX "/");
        if (rest) {
                size_t n = strcspn(rest, "/");

                ret->connection = true;
                if (n > CONNECTION_NAME_MAX)
                        return -ENAMETOOLONG;
                memcpy(ret->name, rest, n);
                ret->name[n] = 0;
                name_ok = connection_name_valid(ret->name);
                if (!name_ok)
                        ret->name[0] = 0;
                sub = rest + n;
        }

        for (ApiRouteId i = 0; i < _API_ROUTE_MAX; i++) {
                if (api_routes[i].sub != !!rest || !streq(api_routes[i].path, rest ? sub : path))
                        continue;
                if (ret->id < 0)
                        ret->id = i;
                if (streq(method, api_routes[i].method)) {
                        ret->id = i;
                        method_ok = true;
                        break;
                }
        }
        if (ret->id < 0)
                return -ENOENT;
        if (!method_ok)
                return -EOPNOTSUPP;
        if (rest && !name_ok)
                return -EINVAL;
        return ret->id;
}
