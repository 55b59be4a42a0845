/* SPDX-License-Identifier: MIT */
#pragma once

/* What the auth-injecting proxy reads from a request before it sends a
 * byte anywhere: the raw request target (as the client sent it, before any
 * %-decoding) and the Host header. Pure functions, unit-tested and fuzzed
 * (tests/unit/test-proxy-path.c, tests/fuzz/fuzz-proxy-path.c). */

#include <stdbool.h>
#include <stddef.h>

#include "common/api.h"

#define PROXY_PREFIX API_PREFIX "/"
/* The longest request target forwarded (MHD keeps 8 KiB for headers). */
#define PROXY_TARGET_MAX 4096

typedef struct ProxyTarget {
        char name[CONNECTION_NAME_MAX + 1];
        const char *path;          /* into the raw target: "/PATH[?QUERY]", never empty */
        size_t path_len;           /* of the path, without the query */
} ProxyTarget;

/* True if raw (a request target) is below /v1/connections/NAME/proxy:
 * cheap, to decide whether to keep the raw target at all. */
bool proxy_target_is_proxy(const char *raw);

/* Parses /v1/connections/NAME/proxy[/PATH][?QUERY] (raw, not decoded).
 * Returns 0 and fills ret (path "/" when none), or:
 *   -ENOENT       not a proxy target
 *   -EINVAL       NAME no connection can have
 *   -EACCES       a PATH or QUERY that could leave the origin or mean two
 *                 things to two parsers: a scheme ("://"), "." or ".."
 *                 segments (plain or %2e), "@" or %40, "\" or %5c, %2f, "//",
 *                 a bad or NUL %-escape, "#", a control, space or
 *                 non-ASCII byte
 *   -EMSGSIZE     longer than PROXY_TARGET_MAX */
int proxy_target_parse(const char *raw, ProxyTarget *ret);

/* A Host header the proxy accepts: absent (NULL), a loopback name or
 * address with an optional port (what clients of a Unix socket or of a
 * loopback forwarder send), or exactly the authority of origin. Any other
 * value names a host the request must not reach. */
bool proxy_host_ok(const char *host, const char *origin);
