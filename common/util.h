/* SPDX-License-Identifier: MIT */
#pragma once

#include "common/macro.h"
#include <string.h>

/* Cryptographic randomness from the kernel (getrandom). */
int random_bytes(void *p, size_t n);
uint64_t random_u64(void);
/* Not for secrets: spreading (jitter, backoff). splitmix64 per thread,
 * seeded once from random_u64(); no system call after the first. */
uint64_t random_fast_u64(void);
/* n random bytes, base64url without padding. */
int random_token(size_t n, char **ret);

/* RFC 3986 percent-encoding of everything but unreserved characters. */
char *url_escape(const char *s);
/* Decodes %XX and '+' (application/x-www-form-urlencoded); -EINVAL on bad
 * escapes or an embedded NUL. */
int url_unescape(const char *s, size_t n, char **ret);

/* SHA-256 of s as lowercase hex (65 bytes with NUL). */
int sha256_hex(const void *p, size_t n, char ret[static 65]);

/* RFC 3339 UTC timestamp "2026-11-26T19:02:11Z" of a realtime usec. */
char *format_timestamp(char *buf, size_t n, usec_t t);
/* Parses an RFC 3339 date-time ("2026-11-26T19:02:11Z", "…T19:02:11.5+01:00";
 * 't' and 'z' and a space for 'T' accepted); -EINVAL otherwise. */
int parse_timestamp(const char *s, usec_t *ret);

/* A random UUID, version 4 (RFC 9562), 36 characters plus NUL. */
int random_uuid(char ret[static 37]);
/* n random characters of [a-z0-9], NUL-terminated (buf holds n + 1). */
int random_lower(char *buf, size_t n);

/* Connection names: [A-Za-z0-9._-], 1..CONNECTION_NAME_MAX, not "." or "..". */
bool connection_name_valid(const char *s);

/* Only printable ASCII (%x20-7E, RFC 6749's VSCHAR): no control character
 * (CR, LF, NUL, ESC, DEL...) and no byte above 0x7E. With !space, no space
 * either (%x21-7E, VCHAR). The empty string passes. */
bool string_is_vschar(const char *s, bool space);
/* Any control character (below 0x20, or DEL): unfit for a header line or
 * a terminal. */
bool string_has_ctl(const char *s);

/* Text from outside (a provider, a client, a URL) made fit for a log
 * line, an event or a terminal: valid UTF-8 is kept; a byte that is not
 * part of a valid character becomes U+FFFD; C0 controls, DEL and C1
 * controls become escapes (\n \r \t \e \xNN, \u0085), so no CR, LF or
 * ESC ever comes through; the copy ends on a character boundary, never
 * inside a character or an escape. Escaping is idempotent: escaped text
 * holds no control characters. text_escape() writes at most size - 1 bytes
 * and a NUL (size > 0) and returns the length written; text_escape_dup()
 * at most max bytes, NULL only on OOM. */
size_t text_escape(char *buf, size_t size, const char *s, size_t len);
char *text_escape_dup(const char *s, size_t max);

/* mkdir -p: every missing folder of path, each with mode (before umask). */
int mkdir_p(const char *path, mode_t mode);

/* A small growable string buffer. Zeroed ({}), it starts empty on the
 * heap; strbuf_on() starts it on storage of the caller's instead. */
typedef struct StrBuf {
        char *s;
        size_t len, cap;
        bool oom;
        bool borrowed;             /* s is the caller's storage (strbuf_on()), not ours to free */
} StrBuf;
/* An empty buffer writing into buf (cap > 0 bytes, the caller's, kept
 * alive while b is used): no allocation until it would overflow, when
 * what it holds moves to the heap (strbuf_borrowed() false from then). */
static inline void strbuf_on(StrBuf *b, char *buf, size_t cap) {
        *b = (StrBuf) { .s = buf, .cap = cap, .borrowed = true };
        buf[0] = 0;
}
/* Whether b still writes into the storage strbuf_on() gave it. */
static inline bool strbuf_borrowed(const StrBuf *b) {
        return b->borrowed && !b->oom;
}
void strbuf_append_grow(StrBuf *b, const char *s, size_t n);
/* Inline: the hot path (the token answer) appends a dozen short pieces. */
static inline void strbuf_append(StrBuf *b, const char *s, size_t n) {
        if (__builtin_expect(!b->oom && b->len + n < b->cap, 1)) {
                memcpy(b->s + b->len, s, n);
                b->len += n;
                b->s[b->len] = 0;
        } else
                strbuf_append_grow(b, s, n);
}
static inline void strbuf_puts(StrBuf *b, const char *s) {
        strbuf_append(b, s, strlen(s));
}
void strbuf_printf(StrBuf *b, const char *fmt, ...) _printf_(2, 3);
/* Appends s as a JSON string literal, quotes included (RFC 8259 escapes). */
void strbuf_json_string(StrBuf *b, const char *s);
/* Appends n bytes of s JSON-escaped, without quotes. */
void strbuf_json_escape(StrBuf *b, const char *s, size_t n);
void strbuf_u64(StrBuf *b, uint64_t u);
/* Returns the string (owned by the caller) or NULL after an allocation failure. */
char *strbuf_steal(StrBuf *b);
void strbuf_free(StrBuf *b);
