/* SPDX-License-Identifier: MIT */
#pragma once

/* The local API shared by tokenbrokerd and tokenctl: defaults, routes,
 * error codes and exit codes are defined here once. */

#define TOKENBROKER_VERSION "0.1.0"

#define DEFAULT_CONFIG_FILE "/etc/tokenbroker/tokenbroker.conf"
#define DEFAULT_SOCKET_PATH "/run/tokenbroker/tokenbroker.sock"
#define DEFAULT_STATE_DIR "/var/lib/tokenbroker"
#define DEFAULT_PROVIDERS_DIR "/etc/tokenbroker/providers.d"
#define DEFAULT_CALLBACK_LISTEN "127.0.0.1:8421"
#define SOCKET_ENV "TOKENBROKER_SOCKET"

#define CALLBACK_PATH "/oauth/callback"
#define HEALTHZ_PATH "/healthz"

#define API_PREFIX "/v1/connections"

/* Connection names: what may appear in a URL path segment unescaped and in
 * a file name; bounded so a name can never blow up a log line. */
#define CONNECTION_NAME_MAX 128

/* Error codes in {"error": ..., "error_description": ...}. The OAuth ones
 * reuse RFC 6749 section 5.2 where they mean the same thing. */
#define API_ERR_INVALID_REQUEST "invalid_request"
#define API_ERR_NOT_FOUND "not_found"
#define API_ERR_FORBIDDEN "forbidden"
#define API_ERR_CONFLICT "conflict"
#define API_ERR_PENDING "authorization_pending"
#define API_ERR_NEEDS_REAUTH "needs_reauth"
#define API_ERR_UNAVAILABLE "temporarily_unavailable"
#define API_ERR_SERVER "server_error"
#define API_ERR_METHOD "method_not_allowed"
/* HTTP 422: the request is well-formed, but the provider's configuration
 * cannot do it (--device without a device_authorization_url, a username
 * for a grant that takes none). */
#define API_ERR_UNSUPPORTED "unsupported_by_provider"

/* GET /v1/connections is paged in byte order of name: ?limit=N (default
 * and maximum below) &after=NAME (the "next" of the page before). A page
 * examines at most API_LIST_SCAN_MAX connections, so a filter that matches
 * little answers a short (even empty) page with "next" rather than walking
 * them all on the daemon's loop in one go. */
#define API_LIST_LIMIT_DEFAULT 1000
#define API_LIST_LIMIT_MAX 10000
#define API_LIST_SCAN_MAX 10000
/* GET /v1/events: newest first, ?limit=N&before=ID ("next" of the page
 * before); the daemon keeps the last API_EVENTS_LIMIT_MAX events. */
#define API_EVENTS_LIMIT_DEFAULT 100
#define API_EVENTS_LIMIT_MAX 10000

/* The longest min_ttl a token request may ask for: 365 days. */
#define MIN_TTL_MAX_SEC (365UL * 24 * 3600)

/* tokenctl exit codes (documented in the README and `tokenctl --help`). */
enum {
        EXIT_OK = 0,
        EXIT_FAILURE_GENERIC = 1,  /* any other error */
        EXIT_USAGE = 2,            /* bad command line */
        EXIT_UNREACHABLE = 3,      /* daemon not reachable on the socket */
        EXIT_NOT_FOUND = 4,        /* unknown connection or provider */
        EXIT_NEEDS_REAUTH = 5,     /* connection must be authorized again */
        EXIT_PENDING = 6,          /* authorization not completed (yet) */
        EXIT_DENIED = 7,           /* the daemon refused: peer not allowed */
        EXIT_UNAVAILABLE = 8,      /* provider unreachable, no valid token */
        EXIT_TIMEOUT = 9,          /* gave up waiting */
        EXIT_UNSUPPORTED = 10,     /* the provider's configuration cannot do what was asked */
};
