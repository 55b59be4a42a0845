/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "common/conf.h"
#include "common/util.h"
#include "daemon/proxy-path.h"

#define PROXY_SUB "/proxy"

bool proxy_target_is_proxy(const char *raw) {
        const char *rest = startswith(raw, PROXY_PREFIX), *sub;

        if (!rest)
                return false;
        sub = rest + strcspn(rest, "/?");
        return startswith(sub, PROXY_SUB) && strchr("/?", sub[strlen(PROXY_SUB)]);
}

static bool hexdigit(char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Bytes a path or query may hold: RFC 3986 unreserved, sub-delims, ':',
 * '/', '?', and '%' (checked apart). No '@' in the path (userinfo to a
 * parser that takes the path for an authority), no '\' (a slash to some). */
static bool plain_ok(char c, bool query) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
                return true;
        if (strchr("-._~!$&'()*+,;=:/", c))
                return c != 0;
        if (query && (c == '?' || c == '@'))
                return true;
        return false;
}

static int check_segment(const char *s, size_t n) {
        /* ".", "..", and their %2e spellings (already refused below) */
        if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
                return -EACCES;
        return 0;
}

int proxy_target_parse(const char *raw, ProxyTarget *ret) {
        const char *rest, *sub, *p, *seg;
        size_t n, len;
        bool query = false;

        *ret = (ProxyTarget) {};
        len = strnlen(raw, PROXY_TARGET_MAX + 1);
        if (len > PROXY_TARGET_MAX)
                return -EMSGSIZE;
        if (!proxy_target_is_proxy(raw))
                return -ENOENT;
        rest = raw + strlen(PROXY_PREFIX);
        n = strcspn(rest, "/?");
        if (n > CONNECTION_NAME_MAX)
                return -EINVAL;
        memcpy(ret->name, rest, n);
        ret->name[n] = 0;
        if (!connection_name_valid(ret->name)) {
                ret->name[0] = 0;
                return -EINVAL;
        }
        sub = rest + n + strlen(PROXY_SUB);
        if (*sub == '?' || *sub == 0) {
                /* no path: the origin's root, with the query */
                ret->path = sub;
                ret->path_len = 0;
        } else {
                ret->path = sub;   /* "/..." */
                ret->path_len = strcspn(sub, "?");
        }
        /* "//host/..." after the origin is a path to curl, a network-path
         * reference to others: refused, with every empty segment. */
        if (ret->path_len >= 2 && ret->path[1] == '/')
                return -EACCES;
        if (ret->path_len > 0 && strstr(ret->path, "://") && (size_t) (strstr(ret->path, "://") - ret->path) < ret->path_len)
                return -EACCES;
        seg = ret->path + (ret->path_len > 0 ? 1 : 0);
        for (p = ret->path; *p; p++) {
                char c = *p;

                if (!query && (size_t) (p - ret->path) >= ret->path_len) {
                        /* end of the path: its last segment, then the query */
                        if (check_segment(seg, (size_t) (p - seg)) < 0)
                                return -EACCES;
                        query = true;
                        continue;   /* the '?' */
                }
                if (c == '%') {
                        if (!hexdigit(p[1]) || !hexdigit(p[2]))
                                return -EACCES;
                        if (p[1] == '0' && p[2] == '0')
                                return -EACCES;   /* NUL */
                        if (!query && ((p[1] == '2' && strchr("eEfF", p[2])) || (p[1] == '5' && strchr("cC", p[2])) ||
                                       (p[1] == '4' && p[2] == '0')))
                                return -EACCES;   /* %2e %2f %5c %40: a dot, slash or '@' only a decoder sees */
                        p += 2;
                        continue;
                }
                if (!plain_ok(c, query))
                        return -EACCES;
                if (!query && c == '/') {
                        if (check_segment(seg, (size_t) (p - seg)) < 0)
                                return -EACCES;
                        if (p + 1 - ret->path < (ptrdiff_t) ret->path_len && p[1] == '/')
                                return -EACCES;   /* an empty segment */
                        seg = p + 1;
                }
        }
        if (!query && check_segment(seg, (size_t) (p - seg)) < 0)
                return -EACCES;
        return 0;
}

bool proxy_host_ok(const char *host, const char *origin) {
        char url[300];
        const char *auth;

        if (!host)
                return true;
        if (!*host || strlen(host) > 255 || strpbrk(host, "/?#@\\ \t%"))
                return false;
        auth = origin ? strstr(origin, "://") : NULL;
        if (auth && strcasecmp(auth + 3, host) == 0)
                return true;
        /* url_is_acceptable() takes http:// only on loopback */
        snprintf(url, sizeof url, "http://%s/", host);
        return url_is_acceptable(url);
}
