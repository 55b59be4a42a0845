/* SPDX-License-Identifier: MIT */

#include "common/b64.h"
#include "common/macro.h"

static const char table_std[64] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char table_url[64] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64_encode_internal(const void *p, size_t n, const char table[static 64], bool pad, char **ret) {
        const uint8_t *x = p;
        size_t l, i;
        char *buf, *z;

        if (!ret || (!p && n > 0))
                return -EINVAL;

        /* 4 * ceil(n / 3) + 1 must not overflow. */
        if (n / 3 >= (SIZE_MAX - 1) / 4 - 1)
                return -E2BIG;
        l = (n / 3 + (n % 3 != 0)) * 4 + 1;

        buf = malloc(l);
        if (!buf)
                return -ENOMEM;

        z = buf;
        for (i = 0; i + 3 <= n; i += 3) {
                uint32_t v = (uint32_t) x[i] << 16 | (uint32_t) x[i + 1] << 8 | x[i + 2];

                *z++ = table[(v >> 18) & 63];
                *z++ = table[(v >> 12) & 63];
                *z++ = table[(v >> 6) & 63];
                *z++ = table[v & 63];
        }

        switch (n - i) {
        case 1: {
                uint32_t v = (uint32_t) x[i] << 16;

                *z++ = table[(v >> 18) & 63];
                *z++ = table[(v >> 12) & 63];
                if (pad) {
                        *z++ = '=';
                        *z++ = '=';
                }
                break;
        }
        case 2: {
                uint32_t v = (uint32_t) x[i] << 16 | (uint32_t) x[i + 1] << 8;

                *z++ = table[(v >> 18) & 63];
                *z++ = table[(v >> 12) & 63];
                *z++ = table[(v >> 6) & 63];
                if (pad)
                        *z++ = '=';
                break;
        }
        }
        *z = 0;

        *ret = buf;
        return 0;
}

int b64url_encode(const void *p, size_t n, char **ret) {
        return b64_encode_internal(p, n, table_url, /* pad= */ false, ret);
}

int b64_encode(const void *p, size_t n, char **ret) {
        return b64_encode_internal(p, n, table_std, /* pad= */ true, ret);
}

static int b64url_char(char c) {
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '-')
                return 62;
        if (c == '_')
                return 63;
        return -EINVAL;
}

int b64url_decode(const char *s, size_t n, void **ret, size_t *ret_len) {
        size_t pad = 0, l, i;
        uint8_t *buf, *z;
        uint32_t v = 0;
        unsigned bits = 0;

        if (!ret || (!s && n > 0))
                return -EINVAL;

        /* Strip at most two '=' and require the padded length to be a
         * multiple of 4 if any padding was present. */
        while (n > 0 && s[n - 1] == '=') {
                if (++pad > 2)
                        return -EINVAL;
                n--;
        }
        if (pad > 0 && (n + pad) % 4 != 0)
                return -EINVAL;
        if (n % 4 == 1)
                return -EINVAL;

        l = n / 4 * 3 + (n % 4 == 0 ? 0 : n % 4 - 1);

        buf = malloc(l + 1);
        if (!buf)
                return -ENOMEM;

        z = buf;
        for (i = 0; i < n; i++) {
                int d = b64url_char(s[i]);

                if (d < 0) {
                        explicit_wipe(buf, l + 1);
                        free(buf);
                        return -EINVAL;
                }

                v = (v << 6) | (uint32_t) d;
                bits += 6;
                if (bits >= 8) {
                        bits -= 8;
                        *z++ = (uint8_t) (v >> bits);
                        v &= (1U << bits) - 1;
                }
        }
        assert((size_t) (z - buf) == l);
        *z = 0;

        *ret = buf;
        if (ret_len)
                *ret_len = l;
        return 0;
}
