/* SPDX-License-Identifier: MIT */
#pragma once

/* Request framing for `tokenctl proxy`: a request head from a loopback
 * client rewritten for the broker's proxy route, and where its body ends
 * (Content-Length or chunked), so nothing after the one request reaches
 * the broker. Pure functions over bytes: unit-tested and fuzzed. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/util.h"

#define HTTPFWD_HEAD_MAX (64 * 1024)
#define HTTPFWD_HEADERS_MAX 100
#define HTTPFWD_CHUNK_LINE_MAX 4096

typedef enum HttpFwdBodyKind {
        HTTPFWD_BODY_NONE,
        HTTPFWD_BODY_LENGTH,
        HTTPFWD_BODY_CHUNKED,
} HttpFwdBodyKind;

typedef struct HttpFwdBody {
        HttpFwdBodyKind kind;
        bool done;
        uint64_t left;            /* LENGTH: body bytes left; CHUNKED: bytes left of the chunk's data */
        int state;                /* CHUNKED: where in the framing */
        unsigned line;            /* CHUNKED: length of the size or trailer line so far */
        unsigned digits;
        bool last;                /* CHUNKED: the 0-size chunk was seen */
} HttpFwdBody;

/* The end of the head in p[0..n) (just past CRLF CRLF, or LF LF), or 0
 * when it has not arrived yet. */
size_t httpfwd_head_end(const char *p, size_t n);

/* Rewrites the head p[0..n) (as httpfwd_head_end() delimited it) for the
 * broker: METHOD /v1/connections/NAME/proxy<TARGET> HTTP/1.1, Host:
 * localhost, the client's Host, Authorization and hop-by-hop headers
 * dropped, Connection: close. Returns 0 and sets *ret_body, or a negative
 * HTTP status to answer: -400 (malformed, not origin-form, a dot segment,
 * conflicting lengths), -501 (a transfer coding other than chunked),
 * -505 (not HTTP/1.x), -431 (too many headers); *ret_why says why. */
int httpfwd_rewrite_head(const char *p, size_t n, const char *name, StrBuf *out, HttpFwdBody *ret_body,
                         const char **ret_why);

/* Feeds n bytes that follow the head; returns how many of them belong to
 * the body (the rest is not this request's), or -EBADMSG on a broken
 * chunked framing. b->done once the body is complete. */
ssize_t httpfwd_body_feed(HttpFwdBody *b, const char *p, size_t n);
