/* SPDX-License-Identifier: MIT */
/* libFuzzer target: text_escape(), text_escape_dup() (common/util.h), the
 * escaping every log line, event, last_error, identity and tokenctl output
 * goes through.
 *
 * Input: any bytes (a provider's or a client's text), byte 0 choosing the
 * output size.
 *
 * Invariants:
 *   - the output is valid UTF-8 (a reference decoder: no overlong forms,
 *     no surrogates, nothing beyond U+10FFFF) and holds no C0 control, no
 *     DEL and no C1 control: no CR, LF or ESC can reach a log or terminal;
 *   - it fits the buffer (at most size - 1 bytes, NUL-terminated);
 *   - a smaller buffer gives a prefix of a larger one's output (the cut is
 *     on a character or escape boundary, nothing else changes);
 *   - escaping the output again changes nothing;
 *   - valid UTF-8 input without controls comes out as it went in. */

#include "common/util.h"

/* Reference: the length of the valid UTF-8 sequence at s, 0 if none. */
static size_t ref_utf8(const unsigned char *s, size_t n, unsigned long *cp) {
        unsigned long c;
        size_t l;

        if (s[0] < 0x80) {
                *cp = s[0];
                return 1;
        }
        if ((s[0] & 0xe0) == 0xc0)
                l = 2, c = s[0] & 0x1f;
        else if ((s[0] & 0xf0) == 0xe0)
                l = 3, c = s[0] & 0x0f;
        else if ((s[0] & 0xf8) == 0xf0)
                l = 4, c = s[0] & 0x07;
        else
                return 0;
        if (n < l)
                return 0;
        for (size_t i = 1; i < l; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
                c = (c << 6) | (s[i] & 0x3f);
        }
        if ((l == 2 && c < 0x80) || (l == 3 && c < 0x800) || (l == 4 && c < 0x10000) || c > 0x10ffff ||
            (c >= 0xd800 && c <= 0xdfff))
                return 0;
        *cp = c;
        return l;
}

/* Valid UTF-8 without C0, DEL or C1 controls. */
static bool clean(const char *s, size_t n) {
        const unsigned char *p = (const unsigned char *) s;

        for (size_t i = 0; i < n;) {
                unsigned long c;
                size_t l = ref_utf8(p + i, n - i, &c);

                if (l == 0 || c < 0x20 || c == 0x7f || (c >= 0x80 && c < 0xa0))
                        return false;
                i += l;
        }
        return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *in;
        size_t n, cap, small_len, big_len;
        char *big, *small, *again;

        if (size < 1)
                return 0;
        cap = (size_t) data[0] + 1;   /* 1..256 */
        in = (const char *) data + 1;
        n = size - 1;

        big = malloc(n * 6 + 1);
        small = malloc(cap);
        again = malloc(n * 6 + 1);
        if (!big || !small || !again)
                abort();

        big_len = text_escape(big, n * 6 + 1, in, n);
        if (big_len > n * 6 || big[big_len] != 0 || strlen(big) != big_len)
                abort();
        if (!clean(big, big_len))
                abort();

        small_len = text_escape(small, cap, in, n);
        if (small_len > cap - 1 || small[small_len] != 0)
                abort();
        if (small_len > big_len || memcmp(small, big, small_len) != 0)
                abort();

        if (text_escape(again, n * 6 + 1, big, big_len) != big_len || memcmp(again, big, big_len) != 0)
                abort();

        if (memchr(in, 0, n) == NULL && clean(in, n) && (big_len != n || memcmp(big, in, n) != 0))
                abort();

        {
                char *z = strndup(in, n), *d;

                if (!z)
                        abort();
                d = text_escape_dup(z, cap);
                if (!d || strlen(d) > cap || !clean(d, strlen(d)))
                        abort();
                free(d);
                free(z);
        }
        free(again);
        free(small);
        free(big);
        return 0;
}
