/* SPDX-License-Identifier: MIT */
#pragma once

#include "common/macro.h"

/* Secrets out of what the broker sends and receives, for `tokenctl
 * preview` and `tokenctl trace`: every secret becomes a named placeholder
 * (<client_secret>, <code>, <refresh_token>, <access_token>, <cookie>,
 * else <redacted>). Pure functions, no daemon state: unit-tested
 * (tests/unit/test-redact.c) and fuzzed (tests/fuzz/fuzz-redact.c), as the
 * bodies come from providers.
 *
 * Two rules apply together:
 *   - by value: each named secret the caller knows (the client secret, the
 *     connection's tokens, the values the request sent under a secret key)
 *     is replaced wherever it appears, raw or percent-encoded;
 *   - by key: in a form, a URL query and a JSON body, the value of a
 *     secret-looking key (access_token, refresh_token, id_token, code,
 *     code_verifier, device_code, client_secret, password, token, state,
 *     assertion, anything ending in _token or holding "secret") becomes
 *     <key>, whatever it is; Authorization, Cookie and Set-Cookie headers
 *     never show their value (a Basic pair shows its client id only).
 * Redaction comes before any cut, so a cut cannot leave a secret's prefix
 * unmatched; the result is printable (text_escape()). */

#define REDACT_SECRETS_MAX 48
/* Values shorter than this are not matched by value (they would blank out
 * ordinary words); keys still hide them. */
#define REDACT_VALUE_MIN 6

typedef struct Redactor {
        struct {
                char *name;       /* placeholder name, without <> */
                char *value;      /* secret; wiped on free */
        } v[REDACT_SECRETS_MAX];
        size_t n;
        char *keys[8];            /* more secret keys (a provider's token pointers) */
        size_t n_keys;
} Redactor;

void redactor_done(Redactor *r);
/* Adds a named secret (and its percent-encoded form); NULL, short and
 * repeated values are ignored. */
void redactor_add(Redactor *r, const char *name, const char *value);
/* One more key whose value is secret (the last segment of a JSON pointer
 * is taken: "/authed_user/access_token" adds "access_token"). */
void redactor_add_key(Redactor *r, const char *key_or_pointer);
/* Learns the secrets of a request: the values under secret keys of its URL
 * query and its body (form or JSON), and both halves of a Basic header. */
void redactor_learn_request(Redactor *r, const char *url, const char *const *headers, size_t n_headers,
                            const char *body, size_t body_len);

bool redact_key_is_secret(const Redactor *r, const char *key, size_t len);

/* Each returns a new string (NULL only on OOM), printable, at most max
 * bytes of it kept (0: no limit) with " …[N bytes cut]" after a cut. */
char *redact_text(const Redactor *r, const char *s, size_t len, size_t max);
char *redact_url(const Redactor *r, const char *url, size_t max);
char *redact_header(const Redactor *r, const char *line, size_t max);
/* A body: JSON (when it parses), a form (content type or shape), else text. */
char *redact_body(const Redactor *r, const char *content_type, const char *body, size_t len, size_t max);
