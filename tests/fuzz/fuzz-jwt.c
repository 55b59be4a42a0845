/* SPDX-License-Identifier: MIT */
/* libFuzzer target: JWT claims (common/jwt.h) and the base64url decoder
 * under them (common/b64.h).
 *
 * Input: the token, as received (not NUL-terminated).
 *
 * Invariants:
 *   - jwt_decode_payloadn() on the bytes and jwt_decode_payload() on a
 *     NUL-terminated copy agree; an embedded NUL is never accepted; a
 *     decoded payload is an object and the token has exactly two dots.
 *   - jwt_get_exp() agrees with jwt_claims_exp() on the decoded claims; an
 *     exp is > 0 and before year 10000.
 *   - jwt_claims_identity() gives the first of email, preferred_username,
 *     sub that is a non-empty string of at most JWT_IDENTITY_MAX bytes
 *     without control characters.
 *   - base64url: decode, encode and decode again gives the same bytes. */

#include "common/b64.h"
#include "common/jwt.h"
#include "common/util.h"

static bool identity_qualifies(json_t *v) {
        const char *s;
        size_t l;

        if (!json_is_string(v))
                return false;
        s = json_string_value(v);
        l = json_string_length(v);
        if (l == 0 || l > JWT_IDENTITY_MAX)
                return false;
        for (size_t i = 0; i < l; i++)
                if ((unsigned char) s[i] < 0x20 || s[i] == 0x7f)
                        return false;
        return true;
}

static void check_claims(json_t *claims, const char *token) {
        static const char *const keys[] = { "email", "preferred_username", "sub" };
        const char *want = NULL;
        char *id = NULL;
        usec_t u1 = 0, u2 = 0;
        int r1, r2;

        if (!json_is_object(claims))
                abort();

        r1 = jwt_claims_exp(claims, &u1);
        if (r1 >= 0 && (u1 == 0 || u1 >= (usec_t) 253402300800LL * USEC_PER_SEC))
                abort();
        if (token) {
                r2 = jwt_get_exp(token, &u2);
                if (r1 != r2 || u1 != u2)
                        abort();
        }

        for (size_t i = 0; i < ELEMENTSOF(keys) && !want; i++) {
                json_t *v = json_object_get(claims, keys[i]);
                if (identity_qualifies(v))
                        want = json_string_value(v);
        }
        r1 = jwt_claims_identity(claims, &id);
        if (r1 == -ENOMEM)
                return;
        if (want) {
                /* the identity comes escaped, as every text the broker
                 * logs or shows (C1 controls too: U+0091 is \xc2\x91);
                 * text_escape() has a fuzz target of its own */
                char *esc = text_escape_dup(want, JWT_IDENTITY_MAX);

                if (!esc) {
                        free(id);
                        return;
                }
                if (r1 != 0 || !streq(id, esc))
                        abort();
                free(esc);
        } else if (r1 != -ENOENT)
                abort();
        free(id);
}

static void check_b64(const uint8_t *data, size_t size) {
        void *out = NULL, *again = NULL;
        char *enc = NULL;
        size_t l, l2;

        if (b64url_decode((const char *) data, size, &out, &l) < 0)
                return;
        if (((char *) out)[l] != 0)
                abort();   /* decoders NUL-terminate */
        if (b64url_encode(out, l, &enc) < 0)
                abort();
        if (strlen(enc) != (l * 4 + 2) / 3)
                abort();   /* unpadded length */
        if (b64url_decode(enc, strlen(enc), &again, &l2) < 0 || l2 != l || memcmp(again, out, l) != 0)
                abort();
        free(again);
        free(enc);
        free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *tok = (const char *) data;
        json_t *c1 = NULL, *c2 = NULL;
        char *z;
        int r1, r2;

        check_b64(data, size);

        r1 = jwt_decode_payloadn(tok, size, &c1);
        if (size > JWT_MAX_LEN && r1 != -E2BIG)
                abort();
        if (r1 >= 0) {
                const char *d1 = memchr(tok, '.', size);
                const char *d2 = d1 ? memchr(d1 + 1, '.', size - (size_t) (d1 + 1 - tok)) : NULL;

                if (!d2 || memchr(d2 + 1, '.', size - (size_t) (d2 + 1 - tok)))
                        abort();
        }

        if (memchr(data, 0, size)) {
                if (r1 >= 0)
                        abort();
        } else {
                z = strndup(tok, size);
                if (!z)
                        abort();
                r2 = jwt_decode_payload(z, &c2);
                if (r1 != r2 || (r1 >= 0 && !json_equal(c1, c2)))
                        abort();
                if (r1 >= 0)
                        check_claims(c2, z);
                else {
                        usec_t u;
                        if (jwt_get_exp(z, &u) != r1)
                                abort();
                }
                free(z);
        }
        if (r1 >= 0)
                check_claims(c1, NULL);

        json_decref(c1);
        json_decref(c2);
        return 0;
}
