/* SPDX-License-Identifier: MIT */
/* The pure helpers of re-authorization links (daemon/link-token.h): no
 * manager, no store, so tests/fuzz/fuzz-link.c links them alone. */
#include "common/util.h"
#include "daemon/link-token.h"

bool link_token_valid(const char *s) {
        static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

        return s && strnlen(s, LINK_TOKEN_LEN + 1) == LINK_TOKEN_LEN && strspn(s, alphabet) == LINK_TOKEN_LEN;
}

int link_token_hash(const char *token, char ret[static 65]) {
        if (!link_token_valid(token))
                return -EINVAL;
        return sha256_hex(token, LINK_TOKEN_LEN, ret);
}

int link_valid_parse(const char *s, usec_t *ret) {
        unsigned long long v = 0;
        usec_t unit = USEC_PER_SEC;
        size_t n, digits;

        if (!s)
                return -EINVAL;
        n = strlen(s);
        digits = strspn(s, "0123456789");
        if (digits == 0 || digits > 9 || n > digits + 1)
                return -EINVAL;
        if (n == digits + 1)
                switch (s[digits]) {
                case 's': unit = USEC_PER_SEC; break;
                case 'm': unit = USEC_PER_MINUTE; break;
                case 'h': unit = USEC_PER_HOUR; break;
                case 'd': unit = USEC_PER_DAY; break;
                default: return -EINVAL;
                }
        for (size_t i = 0; i < digits; i++)
                v = v * 10 + (unsigned long long) (s[i] - '0');
        if (v == 0 || v > LINK_VALID_MAX / unit || v * unit > LINK_VALID_MAX)
                return -ERANGE;
        *ret = v * unit;
        return 0;
}

int link_url_origin(const char *url, char **ret) {
        const char *rest, *end;
        size_t n;

        if (!url)
                return -EINVAL;
        if ((rest = startswith(url, "https://")) || (rest = startswith(url, "http://"))) {
                end = rest + strcspn(rest, "/?#");
                n = (size_t) (end - url);
                if (end == rest || strcspn(url, "@ ;,'\"\\") < n)
                        return -EINVAL;
                /* scheme, host (letters, digits, . - and an IPv6 literal), port */
                for (const char *p = rest; p < end; p++)
                        if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-:[]", *p))
                                return -EINVAL;
                *ret = strndup(url, n);
                return *ret ? 0 : -ENOMEM;
        }
        return -EINVAL;
}

