/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the request framing of `tokenctl proxy`
 * (common/httpfwd.c): httpfwd_head_end(), httpfwd_rewrite_head() and
 * httpfwd_body_feed(), as the forwarder calls them on what a loopback
 * client sends.
 *
 * Input: byte 0 seeds how the bytes after the head are split into
 * pieces; then the bytes a client sends (head, body, more).
 *
 * Invariants:
 *   - an accepted head becomes "METHOD /v1/connections/gh/proxy" + the
 *     client's target exactly, with a target that starts with '/' and has
 *     no '.' or '..' segment (also %2e-encoded) and no backslash: the
 *     broker sees a path under the connection's proxy route only;
 *   - the rewritten head is one head: lines end in CR LF, no bare CR or
 *     LF, no NUL, it ends at its first blank line; Host: localhost and
 *     Connection: close once each; no Authorization, Proxy-Authorization,
 *     Keep-Alive, Upgrade, TE or other Host or Connection line;
 *   - the body's end does not depend on how the bytes are split: fed in
 *     one go or piece by piece, the same bytes belong to the body, never
 *     more than were fed, and a broken framing is refused either way;
 *   - a chunked body's end is where a plain reference decoder, run over
 *     the whole input at once, puts it. */

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/httpfwd.h"
#include "common/macro.h"

#define PREFIX "/v1/connections/gh/proxy"

static int hexv(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        c = (char) (c | 0x20);
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

static void check_target(const char *t, size_t n) {
        size_t seg = 1;

        if (n == 0 || t[0] != '/')
                abort();
        for (size_t i = 0; i < n; i++)
                if (t[i] == '\\' || (unsigned char) t[i] <= 0x20 || t[i] == 0x7f)
                        abort();
        for (size_t i = 1; i <= n; i++) {
                if (i < n && t[i] != '/' && t[i] != '?')
                        continue;
                /* the segment t[seg..i) decoded must not be "." or ".." */
                {
                        char d[8];
                        size_t k = 0, j = seg;

                        while (j < i && k < sizeof d) {
                                if (t[j] == '%' && j + 2 < i && hexv(t[j + 1]) >= 0 && hexv(t[j + 2]) >= 0) {
                                        d[k++] = (char) (hexv(t[j + 1]) * 16 + hexv(t[j + 2]));
                                        j += 3;
                                } else
                                        d[k++] = t[j++];
                        }
                        if (j == i && ((k == 1 && d[0] == '.') || (k == 2 && d[0] == '.' && d[1] == '.')))
                                abort();
                        for (size_t q = 0; q < k; q++)
                                if (d[q] == '\\' && j == i)
                                        abort();
                }
                if (i == n || t[i] == '?')
                        break;
                seg = i + 1;
        }
}

static bool named(const char *line, size_t len, const char *name) {
        size_t n = strlen(name);

        return len > n && line[n] == ':' && strncasecmp(line, name, n) == 0;
}

static void check_head(const char *in, size_t in_len, const char *o, size_t n) {
        const char *sp1, *sp2, *eol, *in_sp1, *in_sp2;
        unsigned host = 0, conn = 0;
        size_t pos;

        if (n < 4 || memcmp(o + n - 4, "\r\n\r\n", 4) != 0 || memchr(o, 0, n))
                abort();
        for (size_t i = 0; i < n; i++) {
                if (o[i] == '\r' && (i + 1 >= n || o[i + 1] != '\n'))
                        abort();
                if (o[i] == '\n' && (i == 0 || o[i - 1] != '\r'))
                        abort();
        }
        /* the request line: the client's method and target, under the prefix */
        eol = memchr(o, '\r', n);
        sp1 = memchr(o, ' ', (size_t) (eol - o));
        if (!sp1)
                abort();
        sp2 = memchr(sp1 + 1, ' ', (size_t) (eol - sp1 - 1));
        if (!sp2 || (size_t) (eol - sp2) != 9 || memcmp(sp2, " HTTP/1.1", 9) != 0)
                abort();
        if ((size_t) (sp2 - sp1 - 1) < strlen(PREFIX) || memcmp(sp1 + 1, PREFIX, strlen(PREFIX)) != 0)
                abort();
        check_target(sp1 + 1 + strlen(PREFIX), (size_t) (sp2 - sp1 - 1 - strlen(PREFIX)));
        in_sp1 = memchr(in, ' ', in_len);
        in_sp2 = in_sp1 ? memchr(in_sp1 + 1, ' ', in_len - (size_t) (in_sp1 + 1 - in)) : NULL;
        if (!in_sp1 || !in_sp2 || in_sp1 - in != sp1 - o || memcmp(in, o, (size_t) (sp1 - o)) != 0 ||
            in_sp2 - in_sp1 - 1 != sp2 - sp1 - 1 - (ptrdiff_t) strlen(PREFIX) ||
            memcmp(in_sp1 + 1, sp1 + 1 + strlen(PREFIX), (size_t) (in_sp2 - in_sp1 - 1)) != 0)
                abort();
        /* the fields */
        for (pos = (size_t) (eol - o) + 2; pos < n;) {
                const char *l = o + pos, *e = memchr(l, '\r', n - pos);
                size_t len = (size_t) (e - l);

                if (len == 0) {
                        if (pos + 2 != n)
                                abort();   /* a second head smuggled in */
                        break;
                }
                if (named(l, len, "host")) {
                        if (len != strlen("Host: localhost") || memcmp(l, "Host: localhost", len) != 0)
                                abort();
                        host++;
                } else if (named(l, len, "connection")) {
                        if (len != strlen("Connection: close") || memcmp(l, "Connection: close", len) != 0)
                                abort();
                        conn++;
                } else if (named(l, len, "authorization") || named(l, len, "proxy-authorization") ||
                           named(l, len, "keep-alive") || named(l, len, "upgrade") || named(l, len, "te") ||
                           named(l, len, "proxy-connection"))
                        abort();
                pos += len + 2;
        }
        if (host != 1 || conn != 1)
                abort();
}

/* The reference: where a chunked body ending is, decoding all at once;
 * -1 when it is broken, -2 when it has not ended within n. */
static long ref_chunked(const char *p, size_t n) {
        size_t i = 0;

        for (;;) {
                uint64_t size = 0;
                unsigned digits = 0;

                while (i < n && hexv(p[i]) >= 0) {
                        if (++digits > 15)
                                return -1;
                        size = size * 16 + (uint64_t) hexv(p[i++]);
                }
                if (i == n)
                        return -2;
                if (digits == 0)
                        return -1;
                {
                        size_t ext = 0;

                        while (i < n && p[i] != '\r') {
                                if (p[i] == '\n' || ((unsigned char) p[i] < 0x20 && p[i] != '\t') || p[i] == 0x7f ||
                                    ++ext > HTTPFWD_CHUNK_LINE_MAX)
                                        return -1;
                                i++;
                        }
                }
                if (i + 1 >= n)
                        return -2;
                if (p[i + 1] != '\n')
                        return -1;
                i += 2;
                if (size == 0)
                        break;
                if (size > n - i)
                        return -2;
                i += size;
                if (i == n)
                        return -2;
                if (p[i] != '\r')
                        return -1;
                if (i + 1 == n)
                        return -2;
                if (p[i + 1] != '\n')
                        return -1;
                i += 2;
        }
        /* trailer lines, then CR LF */
        for (;;) {
                size_t len = 0;

                if (i == n)
                        return -2;
                if (p[i] == '\r') {
                        if (i + 1 == n)
                                return -2;
                        return p[i + 1] == '\n' ? (long) (i + 2) : -1;
                }
                if (p[i] == '\n' || (unsigned char) p[i] < 0x20 || p[i] == 0x7f)
                        return -1;
                while (i < n && p[i] != '\r') {
                        if (p[i] == '\n' || ((unsigned char) p[i] < 0x20 && p[i] != '\t') || p[i] == 0x7f ||
                            ++len > HTTPFWD_CHUNK_LINE_MAX)
                                return -1;
                        i++;
                }
                if (i + 1 >= n)
                        return -2;
                if (p[i + 1] != '\n')
                        return -1;
                i += 2;
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *in;
        size_t n, end;
        unsigned seed;
        StrBuf out = {};
        HttpFwdBody whole, pieces;
        const char *why = NULL;
        ssize_t a;
        size_t used = 0;
        bool broken = false;
        int r;

        if (size < 1 || size > 256 * 1024)
                return 0;
        seed = data[0];
        in = (const char *) data + 1;
        n = size - 1;
        end = httpfwd_head_end(in, n);
        if (end == 0 || end > HTTPFWD_HEAD_MAX)
                return 0;
        r = httpfwd_rewrite_head(in, end, "gh", &out, &whole, &why);
        if (r < 0) {
                if (!why || out.s || (r != -400 && r != -431 && r != -501 && r != -505))
                        abort();
                return 0;
        }
        check_head(in, end, out.s, out.len);
        strbuf_free(&out);

        pieces = whole;
        /* in one go */
        a = httpfwd_body_feed(&whole, in + end, n - end);
        if (a != -EBADMSG && (a < 0 || (size_t) a > n - end))
                abort();
        /* piece by piece, sizes from the seed */
        for (size_t i = end; i < n && !pieces.done;) {
                size_t k = MIN((size_t) (seed % 7) * (seed % 13) + 1, n - i);
                ssize_t b = httpfwd_body_feed(&pieces, in + i, k);

                seed = seed * 1103515245u + 12345u;
                if (b == -EBADMSG) {
                        broken = true;
                        break;
                }
                if (b < 0 || (size_t) b > k)
                        abort();
                used += (size_t) b;
                i += k;
                if ((size_t) b < k && !pieces.done)
                        abort();   /* stopped short without an end */
        }
        if (a == -EBADMSG) {
                if (!broken)
                        abort();
        } else if (broken || (size_t) a != used || whole.done != pieces.done)
                abort();
        if (whole.kind == HTTPFWD_BODY_CHUNKED) {
                long ref = ref_chunked(in + end, n - end);

                if (ref == -1 && a != -EBADMSG)
                        abort();
                if (ref == -2 && (a < 0 || whole.done || (size_t) a != n - end))
                        abort();
                if (ref >= 0 && (a != ref || !whole.done))
                        abort();
        }
        return 0;
}
