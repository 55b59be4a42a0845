/* SPDX-License-Identifier: MIT */
#pragma once

/* Reading claims of JWTs (RFC 7519) in JWS compact serialisation.
 *
 * NO SIGNATURE VERIFICATION: only for tokens received directly from the
 * token endpoint over TLS, never for tokens presented by a third party.
 *
 * Errors: -EINVAL  not a JWT / malformed (see jwt_decode_payload())
 *         -E2BIG   token longer than JWT_MAX_LEN
 *         -ENOENT  claim absent
 *         -ERANGE  claim present but out of range (exp)
 *         -ENOMEM  allocation failure */

#include <jansson.h>
#include <stddef.h>

#include "common/macro.h"

#define JWT_MAX_LEN ((size_t) 65536)   /* bytes, inclusive */

/* A token is accepted if it is "H.P.S" (exactly two dots) where H and P are
 * non-empty base64url (padding tolerated) of a JSON object each, and S is
 * empty (unsecured JWT) or base64url. The payload is parsed with
 * JSON_REJECT_DUPLICATES (and without JSON_ALLOW_NUL). On success *ret is a
 * new reference to the claims object (json_decref() it). */
int jwt_decode_payload(const char *token, json_t **ret);
/* Same on exactly n bytes (not necessarily NUL-terminated; an embedded NUL
 * makes the token invalid). */
int jwt_decode_payloadn(const char *token, size_t n, json_t **ret);

/* The "exp" claim (NumericDate: integer or real seconds since the epoch) as
 * CLOCK_REALTIME usec. exp must be > 0 and before year 10000
 * (253402300800). Fractional seconds are truncated to usec.
 *   -EINVAL  not a JWT, or exp is not a number (e.g. a string)
 *   -ENOENT  a valid JWT without exp
 *   -ERANGE  exp <= 0, >= year 10000, or not finite */
int jwt_get_exp(const char *token, usec_t *ret);
/* Same, on an already decoded claims object. */
int jwt_claims_exp(json_t *claims, usec_t *ret);

/* A human-readable identity for the token's subject: the first of "email",
 * "preferred_username", "sub" that is a non-empty string of at most
 * JWT_IDENTITY_MAX bytes without control characters (< 0x20, 0x7f); claims
 * failing this are skipped. strdup'd into *ret. -ENOENT if none qualifies,
 * -EINVAL if claims is not an object. */
#define JWT_IDENTITY_MAX ((size_t) 1024)
int jwt_claims_identity(json_t *claims, char **ret);
