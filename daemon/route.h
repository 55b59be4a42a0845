/* SPDX-License-Identifier: MIT */
#pragma once

/* What the daemon reads from a request line before anything else looks at
 * it: the OAuth callback's query string and the socket API's method and
 * path. Pure functions, no libmicrohttpd: unit-tested and fuzzed
 * (tests/unit/test-route.c, tests/fuzz/fuzz-{callback-query,api-route}.c). */

#include "common/api.h"
#include "common/macro.h"

/* ---- the callback's query string --------------------------------------- */

/* A code or state longer than this is not one. */
#define CALLBACK_VALUE_MAX 4096
/* The whole query, as sent (a browser's address bar holds more, no
 * provider sends that much). */
#define CALLBACK_QUERY_MAX (16 * 1024)
/* Parameters in one query, known or not. */
#define CALLBACK_PARAMS_MAX 64

typedef struct CallbackQuery {
        /* URL-decoded, NUL-free, at most CALLBACK_VALUE_MAX bytes; NULL if
         * absent, "" if empty ("state=" and a bare "state" alike). */
        char *state;
        char *code;                /* the parameter named code_param */
        char *error;               /* RFC 6749 section 4.1.2.1 */
        char *error_description;
        char *iss;                 /* RFC 9207: the issuer that answered */
} CallbackQuery;

/* Parses a query string (what follows '?', len bytes, not necessarily
 * NUL-terminated) as application/x-www-form-urlencoded: '&'-separated
 * key=value pairs, keys and values decoded with url_unescape(). Keeps
 * state, error, error_description, iss and, if code_param is not NULL, the
 * parameter of that name; other parameters are decoded and dropped.
 * Returns 0 and fills ret, or:
 *   -EMSGSIZE    the query is longer than CALLBACK_QUERY_MAX, or a kept
 *                value longer than CALLBACK_VALUE_MAX
 *   -E2BIG       more than CALLBACK_PARAMS_MAX parameters
 *   -EINVAL      a NUL byte, %00 or a bad %-escape anywhere
 *   -ENOTUNIQ    a kept parameter appears twice (which one counts would
 *                depend on who reads the query)
 *   -ENOMEM */
int callback_query_parse(const char *query, size_t len, const char *code_param, CallbackQuery *ret);
/* Frees the values (wiping the code and state); leaves *q empty. */
void callback_query_done(CallbackQuery *q);

/* ---- the socket API's routes ------------------------------------------ */

typedef enum ApiRouteId {
        API_ROUTE_LIST,            /* GET    /v1/connections (or /v1/connections/) */
        API_ROUTE_CREATE,          /* POST   /v1/connections */
        API_ROUTE_SHOW,            /* GET    /v1/connections/NAME */
        API_ROUTE_REVOKE,          /* DELETE /v1/connections/NAME */
        API_ROUTE_TOKEN,           /* GET    /v1/connections/NAME/token */
        API_ROUTE_INVALIDATE,      /* POST   /v1/connections/NAME/invalidate */
        API_ROUTE_REFRESH,         /* POST   /v1/connections/NAME/refresh */
        API_ROUTE_PROVIDERS,       /* GET    /v1/providers */
        API_ROUTE_STATUS,          /* GET    /v1/status */
        API_ROUTE_EVENTS,          /* GET    /v1/events */
        API_ROUTE_METRICS,         /* GET    /metrics */
        API_ROUTE_PREVIEW,         /* GET    /v1/preview (?provider=NAME) */
        API_ROUTE_TRACE,           /* GET    /v1/connections/NAME/trace */
        _API_ROUTE_MAX,
        _API_ROUTE_INVALID = -EINVAL,
} ApiRouteId;

typedef struct ApiRoute {
        ApiRouteId id;             /* a route at this path (the first one if
                                    * the method is wrong), or _API_ROUTE_INVALID */
        bool connection;           /* the path is /v1/connections/NAME or below it */
        char name[CONNECTION_NAME_MAX + 1];   /* NAME if connection_name_valid(), else "" */
} ApiRoute;

/* Matches a request on the socket API (method, and the path as
 * libmicrohttpd decoded it, without the query) to its route. Returns the
 * route (>= 0) when the method is the route's and NAME, if any, valid;
 * otherwise, first match first:
 *   -ENAMETOOLONG  /v1/connections/NAME[/...] with NAME longer than
 *                  CONNECTION_NAME_MAX
 *   -ENOENT        no route has this path
 *   -EOPNOTSUPP    a route has this path, not with this method
 *   -EINVAL        a connection route whose NAME no connection can have
 * Unlike most functions here, ret is filled on every return: where a
 * refused request was aimed decides, in the caller, between 403, 404 and
 * 405, and access checks come before some of these. */
int api_route_match(const char *method, const char *path, ApiRoute *ret);
