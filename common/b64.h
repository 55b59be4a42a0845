/* SPDX-License-Identifier: MIT */
#pragma once

/* Base64 (RFC 4648). All functions return 0 on success or a negative errno:
 *   -EINVAL  malformed input (decoders)
 *   -E2BIG   input too large to encode without size_t overflow
 *   -ENOMEM  allocation failure
 * Returned buffers are malloc'd, always NUL-terminated (decoders too, the
 * NUL is not counted in *ret_len), and are only set on success. */

#include <stddef.h>

/* URL-safe alphabet ("-_"), no padding (RFC 4648 §5, as used by JWS and
 * PKCE). */
int b64url_encode(const void *p, size_t n, char **ret);

/* Decode exactly n bytes of s (which need not be NUL-terminated) in the
 * URL-safe alphabet. Padding is optional: input may be unpadded, or padded
 * with '=' to a multiple of 4. Characters outside the alphabet (including
 * '+', '/', whitespace and NUL), misplaced or excess padding, and impossible
 * lengths (4k+1 symbols) are rejected with -EINVAL. Unused low bits of the
 * final symbol are ignored (lenient, like most decoders). */
int b64url_decode(const char *s, size_t n, void **ret, size_t *ret_len);

/* Standard alphabet ("+/") with '=' padding (RFC 4648 §4), e.g. for HTTP
 * Basic authentication. */
int b64_encode(const void *p, size_t n, char **ret);
