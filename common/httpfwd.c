/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <string.h>
#include <strings.h>

#include "common/api.h"
#include "common/httpfwd.h"
#include "common/macro.h"

size_t httpfwd_head_end(const char *p, size_t n) {
        for (size_t i = 0; i + 1 < n; i++) {
                if (p[i] != '\n')
                        continue;
                if (p[i + 1] == '\n')
                        return i + 2;
                if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n')
                        return i + 3;
        }
        return 0;
}

/* RFC 9110 tchar */
static bool is_tchar(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int hexval(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* An origin-form target (RFC 9112 3.2.1) whose path has no "." or ".."
 * segment, also not percent-encoded, and no backslash: rewritten under
 * the connection's proxy prefix, it cannot leave it. */
static bool target_ok(const char *t, size_t n, const char **why) {
        size_t seg = 1, i;

        if (n == 0 || t[0] != '/') {
                *why = "the request target must be a path (origin-form), not an absolute URL or '*'";
                return false;
        }
        for (i = 0; i < n; i++)
                if ((unsigned char) t[i] <= 0x20 || (unsigned char) t[i] >= 0x7f || t[i] == '#' || t[i] == '\\') {
                        *why = "the request target holds a byte it may not";
                        return false;
                }
        /* the path: up to '?' */
        for (i = 1; i <= n; i++) {
                if (i < n && t[i] != '/' && t[i] != '?')
                        continue;
                {
                        /* segment t[seg..i): count its dots, decoding %2e */
                        size_t j = seg, dots = 0, other = 0;

                        while (j < i) {
                                if (t[j] == '.') {
                                        dots++;
                                        j++;
                                } else if (t[j] == '%' && j + 2 < i && t[j + 1] == '2' &&
                                           (t[j + 2] == 'e' || t[j + 2] == 'E')) {
                                        dots++;
                                        j += 3;
                                } else if (t[j] == '%' && j + 2 < i && hexval(t[j + 1]) == 5 &&
                                           (t[j + 2] == 'c' || t[j + 2] == 'C')) {
                                        *why = "an encoded backslash in the path";
                                        return false;
                                } else {
                                        other++;
                                        j++;
                                }
                        }
                        if (other == 0 && (dots == 1 || dots == 2)) {
                                *why = "a '.' or '..' segment in the path";
                                return false;
                        }
                }
                if (i == n || t[i] == '?')
                        break;
                seg = i + 1;
        }
        return true;
}

/* Hop-by-hop and client credentials: never passed on. */
static bool header_dropped(const char *name, size_t n) {
        static const char *const drop[] = {
                "host", "connection", "keep-alive", "proxy-connection", "upgrade", "te", "trailer",
                "proxy-authorization", "proxy-authenticate", "authorization", "http2-settings",
        };

        for (size_t i = 0; i < ELEMENTSOF(drop); i++)
                if (strlen(drop[i]) == n && strncasecmp(drop[i], name, n) == 0)
                        return true;
        return false;
}

static bool header_is(const char *name, size_t n, const char *want) {
        return strlen(want) == n && strncasecmp(want, name, n) == 0;
}

int httpfwd_rewrite_head(const char *p, size_t n, const char *name, StrBuf *out, HttpFwdBody *ret_body,
                         const char **ret_why) {
        const char *end = p + n, *line, *eol, *sp1, *sp2;
        HttpFwdBody body = { .kind = HTTPFWD_BODY_NONE, .done = true };
        bool have_length = false, chunked = false;
        uint64_t length = 0;
        unsigned headers = 0;
        const char *why = "malformed request";
        StrBuf o = {};
        int r = -400;

        /* the request line */
        eol = memchr(p, '\n', n);
        if (!eol)
                goto fail;
        line = p;
        {
                const char *le = eol > line && eol[-1] == '\r' ? eol - 1 : eol;

                sp1 = memchr(line, ' ', (size_t) (le - line));
                sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t) (le - sp1 - 1)) : NULL;
                if (!sp1 || !sp2 || sp1 == line || sp1 - line > 32 || memchr(sp2 + 1, ' ', (size_t) (le - sp2 - 1))) {
                        why = "malformed request line";
                        goto fail;
                }
                for (const char *q = line; q < sp1; q++)
                        if (!is_tchar(*q)) {
                                why = "malformed method";
                                goto fail;
                        }
                if (!target_ok(sp1 + 1, (size_t) (sp2 - sp1 - 1), &why))
                        goto fail;
                if (le - sp2 - 1 != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0 || (sp2[8] != '0' && sp2[8] != '1')) {
                        why = "only HTTP/1.0 and HTTP/1.1 are spoken";
                        r = -505;
                        goto fail;
                }
        }
        strbuf_append(&o, line, (size_t) (sp1 - line));
        strbuf_puts(&o, " " API_PREFIX "/");
        strbuf_puts(&o, name);
        strbuf_puts(&o, "/proxy");
        strbuf_append(&o, sp1 + 1, (size_t) (sp2 - sp1 - 1));
        strbuf_puts(&o, " HTTP/1.1\r\nHost: localhost\r\n");

        /* the header fields */
        for (line = eol + 1; line < end; line = eol + 1) {
                const char *le, *colon, *v, *ve;

                eol = memchr(line, '\n', (size_t) (end - line));
                if (!eol)
                        goto fail;
                le = eol > line && eol[-1] == '\r' ? eol - 1 : eol;
                if (le == line)
                        break;   /* the blank line: end of the head */
                if (++headers > HTTPFWD_HEADERS_MAX) {
                        why = "too many header fields";
                        r = -431;
                        goto fail;
                }
                if (*line == ' ' || *line == '\t') {
                        why = "folded header lines are not accepted";
                        goto fail;
                }
                colon = memchr(line, ':', (size_t) (le - line));
                if (!colon || colon == line) {
                        why = "malformed header field";
                        goto fail;
                }
                for (const char *q = line; q < colon; q++)
                        if (!is_tchar(*q)) {
                                why = "malformed header field name";
                                goto fail;
                        }
                for (const char *q = colon + 1; q < le; q++)
                        if ((*q != '\t' && (unsigned char) *q < 0x20) || *q == 0x7f) {
                                why = "a control character in a header field";
                                goto fail;
                        }
                v = colon + 1;
                while (v < le && (*v == ' ' || *v == '\t'))
                        v++;
                ve = le;
                while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                        ve--;
                if (header_is(line, (size_t) (colon - line), "content-length")) {
                        uint64_t l = 0;

                        if (v == ve || ve - v > 18) {
                                why = "malformed Content-Length";
                                goto fail;
                        }
                        for (const char *q = v; q < ve; q++) {
                                if (*q < '0' || *q > '9') {
                                        why = "malformed Content-Length";
                                        goto fail;
                                }
                                l = l * 10 + (uint64_t) (*q - '0');
                        }
                        if (have_length && l != length) {
                                why = "conflicting Content-Length fields";
                                goto fail;
                        }
                        have_length = true;
                        length = l;
                } else if (header_is(line, (size_t) (colon - line), "transfer-encoding")) {
                        if (chunked || (size_t) (ve - v) != 7 || strncasecmp(v, "chunked", 7) != 0) {
                                why = "only the chunked transfer coding is forwarded";
                                r = -501;
                                goto fail;
                        }
                        chunked = true;
                }
                if (header_dropped(line, (size_t) (colon - line)))
                        continue;
                strbuf_append(&o, line, (size_t) (colon - line));
                strbuf_puts(&o, ": ");
                strbuf_append(&o, v, (size_t) (ve - v));
                strbuf_puts(&o, "\r\n");
        }
        if (chunked && have_length) {
                why = "both Content-Length and Transfer-Encoding";
                goto fail;
        }
        if (chunked)
                body = (HttpFwdBody) { .kind = HTTPFWD_BODY_CHUNKED };
        else if (have_length && length > 0)
                body = (HttpFwdBody) { .kind = HTTPFWD_BODY_LENGTH, .left = length };
        strbuf_puts(&o, "Connection: close\r\n\r\n");
        if (o.oom) {
                strbuf_free(&o);
                *ret_why = "out of memory";
                return -503;
        }
        strbuf_free(out);
        *out = o;
        *ret_body = body;
        return 0;
fail:
        strbuf_free(&o);
        *ret_why = why;
        return r;
}

enum {
        CH_SIZE,        /* hex digits of the chunk size */
        CH_EXT,         /* after the size: whitespace, ;extensions, up to CR LF */
        CH_SIZE_LF,
        CH_DATA,
        CH_DATA_CR,
        CH_DATA_LF,
        CH_TRAILER,     /* at the start of a trailer line (or the final CR LF) */
        CH_TRAILER_LINE,
        CH_TRAILER_LF,
        CH_FINAL_LF,
};

ssize_t httpfwd_body_feed(HttpFwdBody *b, const char *p, size_t n) {
        size_t i = 0;

        if (b->done || b->kind == HTTPFWD_BODY_NONE) {
                b->done = true;
                return 0;
        }
        if (b->kind == HTTPFWD_BODY_LENGTH) {
                size_t k = b->left < n ? (size_t) b->left : n;

                b->left -= k;
                b->done = b->left == 0;
                return (ssize_t) k;
        }
        while (i < n && !b->done) {
                char c = p[i];

                switch (b->state) {
                case CH_SIZE: {
                        int h = hexval(c);

                        if (h >= 0) {
                                if (++b->digits > 15)
                                        return -EBADMSG;
                                b->left = b->left * 16 + (uint64_t) h;
                                i++;
                                break;
                        }
                        if (b->digits == 0)
                                return -EBADMSG;
                        b->state = CH_EXT;
                        b->line = 0;
                        break;
                }
                case CH_EXT:
                        if (c == '\r')
                                b->state = CH_SIZE_LF;
                        else if (c == '\n' || ((unsigned char) c < 0x20 && c != '\t') || c == 0x7f ||
                                 ++b->line > HTTPFWD_CHUNK_LINE_MAX)
                                return -EBADMSG;
                        i++;
                        break;
                case CH_SIZE_LF:
                        if (c != '\n')
                                return -EBADMSG;
                        i++;
                        b->digits = 0;
                        if (b->left == 0) {
                                b->last = true;
                                b->state = CH_TRAILER;
                        } else
                                b->state = CH_DATA;
                        break;
                case CH_DATA: {
                        size_t k = b->left < n - i ? (size_t) b->left : n - i;

                        i += k;
                        b->left -= k;
                        if (b->left == 0)
                                b->state = CH_DATA_CR;
                        break;
                }
                case CH_DATA_CR:
                        if (c != '\r')
                                return -EBADMSG;
                        i++;
                        b->state = CH_DATA_LF;
                        break;
                case CH_DATA_LF:
                        if (c != '\n')
                                return -EBADMSG;
                        i++;
                        b->state = CH_SIZE;
                        break;
                case CH_TRAILER:
                        i++;
                        if (c == '\r')
                                b->state = CH_FINAL_LF;
                        else if (c == '\n' || (unsigned char) c < 0x20 || c == 0x7f)
                                return -EBADMSG;
                        else {
                                b->line = 1;
                                b->state = CH_TRAILER_LINE;
                        }
                        break;
                case CH_TRAILER_LINE:
                        i++;
                        if (c == '\r')
                                b->state = CH_TRAILER_LF;
                        else if (c == '\n' || ((unsigned char) c < 0x20 && c != '\t') || c == 0x7f ||
                                 ++b->line > HTTPFWD_CHUNK_LINE_MAX)
                                return -EBADMSG;
                        break;
                case CH_TRAILER_LF:
                        if (c != '\n')
                                return -EBADMSG;
                        i++;
                        b->state = CH_TRAILER;
                        break;
                case CH_FINAL_LF:
                        if (c != '\n')
                                return -EBADMSG;
                        i++;
                        b->done = true;
                        break;
                default:
                        return -EBADMSG;
                }
        }
        return (ssize_t) i;
}
