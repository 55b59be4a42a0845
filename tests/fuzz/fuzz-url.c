/* SPDX-License-Identifier: MIT */
/* libFuzzer target: URL helpers: url_unescape(), url_escape()
 * (common/util.h) and url_is_acceptable() (common/conf.h).
 *
 * Input: any bytes: unescaped as they are (a callback's query string), and,
 * up to the first NUL, escaped and checked as a configured URL.
 *
 * Invariants:
 *   - url_unescape() accepts exactly what a reference decoder accepts and
 *     gives the same bytes; unescape(escape(s)) == s for every string s;
 *     escape() emits only unreserved characters and %XX (upper-case hex).
 *   - url_is_acceptable(): an accepted URL is https://, or http:// whose
 *     host, as libcurl (which makes the request) parses it, is loopback:
 *     127.0.0.0/8, ::1 or localhost. Plain http to any other host would
 *     send client secrets and tokens in clear text. */

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <strings.h>

#include "common/conf.h"
#include "common/util.h"

static int hexval(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        c = (char) (c | 0x20);
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

/* application/x-www-form-urlencoded; %00 and raw NUL are refused. */
static int ref_unescape(const char *s, size_t n, char *out, size_t *ret_len) {
        size_t o = 0;

        for (size_t i = 0; i < n; i++) {
                if (s[i] == '%') {
                        int a = i + 1 < n ? hexval(s[i + 1]) : -1, b = i + 2 < n ? hexval(s[i + 2]) : -1;
                        if (a < 0 || b < 0 || (a | b) == 0)
                                return -EINVAL;
                        out[o++] = (char) (a * 16 + b);
                        i += 2;
                } else if (s[i] == 0)
                        return -EINVAL;
                else
                        out[o++] = s[i] == '+' ? ' ' : s[i];
        }
        *ret_len = o;
        return 0;
}

static void check_escape(const char *s) {
        char *e = url_escape(s), *back = NULL;

        if (!e)
                abort();
        for (const char *c = e; *c; c++) {
                if (*c == '%') {
                        if (!strchr("0123456789ABCDEF", c[1]) || !c[1] || !strchr("0123456789ABCDEF", c[2]) || !c[2])
                                abort();
                        c += 2;
                } else if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
                             strchr("-._~", *c)))
                        abort();
        }
        if (url_unescape(e, strlen(e), &back) < 0 || !streq(back, s))
                abort();
        free(back);
        free(e);
}

static bool host_is_loopback(const char *h) {
        struct in_addr a;
        struct in6_addr a6;
        char buf[128];
        size_t l;

        if (strcasecmp(h, "localhost") == 0)
                return true;
        if (inet_pton(AF_INET, h, &a) == 1)
                return (ntohl(a.s_addr) >> 24) == 127;
        l = strlen(h);
        if (h[0] == '[' && l >= 2 && l - 2 < sizeof buf && h[l - 1] == ']') {
                memcpy(buf, h + 1, l - 2);
                buf[l - 2] = 0;
                buf[strcspn(buf, "%")] = 0;   /* zone id */
                if (inet_pton(AF_INET6, buf, &a6) == 1)
                        return IN6_IS_ADDR_LOOPBACK(&a6);
        }
        return false;
}

static void check_acceptable(const char *s) {
        CURLU *u;
        char *host = NULL;

        if (!url_is_acceptable(s))
                return;
        if (startswith(s, "https://"))
                return;
        if (!startswith(s, "http://"))
                abort();

        /* What would libcurl connect to? If it cannot parse the URL, it
         * makes no request at all. */
        u = curl_url();
        if (!u)
                abort();
        if (curl_url_set(u, CURLUPART_URL, s, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK && !host_is_loopback(host)) {
                fprintf(stderr, "url_is_acceptable(\"%s\") but libcurl's host is \"%s\"\n", s, host);
                abort();
        }
        curl_free(host);
        curl_url_cleanup(u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *s = (const char *) data;
        char *got = NULL, *want, *z;
        size_t want_len = 0;
        int r, rr;

        want = malloc(size + 1);
        if (!want)
                abort();
        r = url_unescape(s, size, &got);
        rr = ref_unescape(s, size, want, &want_len);
        if (r != rr)
                abort();
        if (r >= 0) {
                if (strlen(got) != want_len || memcmp(got, want, want_len) != 0)
                        abort();
                check_escape(got);
                free(got);
        }
        free(want);

        z = strndup(s, size);
        if (!z)
                abort();
        check_escape(z);
        check_acceptable(z);
        free(z);
        return 0;
}
