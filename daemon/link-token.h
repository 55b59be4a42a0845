/* SPDX-License-Identifier: MIT */
#pragma once

/* Re-authorization links (daemon/links.h): their constants, and what is
 * read from outside, as pure functions (tests/unit/test-links.c,
 * tests/fuzz/fuzz-link.c). */

#include "common/macro.h"

#define LINK_PATH "/oauth/start/"
#define LINK_TOKEN_BYTES 32
#define LINK_TOKEN_LEN 43              /* base64url of 32 bytes, no padding */
#define LINK_VALID_DEFAULT (7 * USEC_PER_DAY)
#define LINK_VALID_MAX (30 * USEC_PER_DAY)
/* Links in memory (and in the table) at once, whatever their state: a
 * link is forgotten a day after it expires. */
#define LINKS_MAX 4096
#define LINK_KEEP_AFTER_EXPIRY USEC_PER_DAY
#define LINK_BY_NAME_MAX 64

/* Whether s can be a link token: exactly LINK_TOKEN_LEN characters of the
 * base64url alphabet. Anything else is refused before it is hashed. */
bool link_token_valid(const char *s);
/* SHA-256 of a valid token as lowercase hex; -EINVAL for an invalid one. */
int link_token_hash(const char *token, char ret[static 65]);
/* A validity: whole seconds ("90"), or a number with one unit s, m, h or
 * d ("45s", "30m", "12h", "7d"); from 1 second to LINK_VALID_MAX. -EINVAL
 * for anything else, -ERANGE out of range. */
int link_valid_parse(const char *s, usec_t *ret);
/* The origin (scheme://host[:port]) of an absolute http(s) URL, for a
 * CSP source; -EINVAL if it has none or holds characters a CSP source may
 * not. */
int link_url_origin(const char *url, char **ret);

