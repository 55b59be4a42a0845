/* SPDX-License-Identifier: MIT */
/* libFuzzer target: proxy_target_parse() and proxy_host_ok()
 * (daemon/proxy-path.h), what the auth-injecting proxy checks before it
 * sends a byte to an API origin.
 *
 * Input: a raw request target; after a first NUL byte, a Host value.
 * Each is copied into a buffer of exactly its length plus the NUL, so
 * ASan flags any read past the end.
 *
 * Invariants of an accepted target (0):
 *   - the name is one connection_name_valid() accepts and the target is
 *     PROXY_PREFIX NAME "/proxy" + path, path pointing into the input;
 *   - the forwarded path, as sent and once %-decoded (as any server may),
 *     has no empty, "." or ".." segment, no '\', '@', '#', control, space,
 *     non-ASCII byte or "://"; its first byte is '/' or it is empty;
 *   - the query holds no '#', control, space or non-ASCII byte and no bad
 *     %-escape;
 *   - deterministic.
 * An accepted Host value is a loopback name or the origin's authority. */

#include <ctype.h>
#include <strings.h>

#include "common/conf.h"
#include "common/util.h"
#include "daemon/proxy-path.h"

static void fail(const char *what, const char *raw) {
        fprintf(stderr, "fuzz-proxy-path: %s: \"%.300s\"\n", what, raw);
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

static bool bad_byte(unsigned char c) {
        return c <= 0x20 || c >= 0x7f || c == '#';
}

static void check_path(const char *raw, const char *p, size_t n, bool decoded) {
        const char *seg;

        if (n == 0)
                return;
        if (p[0] != '/')
                fail(decoded ? "decoded path without a leading /" : "path without a leading /", raw);
        if (memmem(p, n, "://", 3))
                fail("a scheme in the path", raw);
        seg = p + 1;
        for (size_t i = 1; i <= n; i++) {
                if (i == n || p[i] == '/') {
                        size_t k = (size_t) (p + i - seg);
                        if (k == 0 && i < n)
                                fail("an empty segment", raw);
                        if ((k == 1 && seg[0] == '.') || (k == 2 && seg[0] == '.' && seg[1] == '.'))
                                fail(decoded ? "a dot segment once decoded" : "a dot segment", raw);
                        seg = p + i + 1;
                        continue;
                }
                if (p[i] == '\\' || p[i] == '@' || (!decoded && bad_byte((unsigned char) p[i])))
                        fail("a forbidden byte in the path", raw);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const uint8_t *nul = memchr(data, 0, size);
        size_t n = nul ? (size_t) (nul - data) : size;
        char *raw = copy(data, n), *host = nul ? copy(nul + 1, size - n - 1) : NULL;
        ProxyTarget t, t2;
        int r, r2;

        r = proxy_target_parse(raw, &t);
        r2 = proxy_target_parse(raw, &t2);
        if (r != r2 || !streq(t.name, t2.name))
                fail("not deterministic", raw);
        if (r != 0 && r != -ENOENT && r != -EINVAL && r != -EACCES && r != -EMSGSIZE)
                fail("an undocumented error", raw);
        if (r == 0) {
                char prefix[256];
                const char *q;
                _cleanup_free_ char *dec = NULL;

                if (!connection_name_valid(t.name))
                        fail("an invalid name", raw);
                snprintf(prefix, sizeof prefix, PROXY_PREFIX "%s/proxy", t.name);
                if (!startswith(raw, prefix) || t.path != raw + strlen(prefix))
                        fail("the path is not what follows the prefix", raw);
                q = t.path + t.path_len;
                if (*q && *q != '?')
                        fail("the path does not end at the query", raw);
                check_path(raw, t.path, t.path_len, false);
                if (url_unescape(t.path, t.path_len, &dec) < 0)
                        fail("an accepted path that does not decode", raw);
                check_path(raw, dec, strlen(dec), true);
                for (const char *c = q; *c; c++) {
                        if (bad_byte((unsigned char) *c))
                                fail("a forbidden byte in the query", raw);
                        if (*c == '%' && (!isxdigit((unsigned char) c[1]) || !isxdigit((unsigned char) c[2])))
                                fail("a bad escape in the query", raw);
                }
        }
        if (host && proxy_host_ok(host, "https://api.example.com")) {
                char url[300];
                if (strcasecmp(host, "api.example.com") != 0) {
                        snprintf(url, sizeof url, "http://%s/", host);
                        if (!url_is_acceptable(url) || strpbrk(host, "@/?#\\ "))
                                fail("a Host that names another host was accepted", host);
                }
        }
        free(raw);
        free(host);
        return 0;
}
