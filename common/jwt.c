/* SPDX-License-Identifier: MIT */

#include <math.h>

#include "common/b64.h"
#include "common/jwt.h"
#include "common/util.h"

/* Decode one base64url segment holding a JSON object. */
static int decode_json_object(const char *s, size_t n, json_t **ret) {
        _cleanup_free_ void *buf = NULL;
        json_error_t err;
        size_t l;
        json_t *j;
        int r;

        if (n == 0)
                return -EINVAL;

        r = b64url_decode(s, n, &buf, &l);
        if (r < 0)
                return r;

        /* Without JSON_DECODE_ANY the top level must be an object or an
         * array; jansson bounds nesting depth itself. */
        j = json_loadb(buf, l, JSON_REJECT_DUPLICATES, &err);
        explicit_wipe(buf, l);
        if (!j)
                return -EINVAL;
        if (!json_is_object(j)) {
                json_decref(j);
                return -EINVAL;
        }

        *ret = j;
        return 0;
}

static bool is_b64url(const char *s, size_t n) {
        /* The signature is never decoded; just check its alphabet. */
        for (size_t i = 0; i < n; i++) {
                char c = s[i];

                if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                      (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '='))
                        return false;
        }
        return true;
}

int jwt_decode_payloadn(const char *token, size_t n, json_t **ret) {
        const char *dot1, *dot2, *payload, *sig;
        json_t *header = NULL, *claims = NULL;
        int r;

        if (!ret || !token)
                return -EINVAL;
        if (n > JWT_MAX_LEN)
                return -E2BIG;

        dot1 = memchr(token, '.', n);
        if (!dot1)
                return -EINVAL;
        payload = dot1 + 1;
        dot2 = memchr(payload, '.', n - (size_t) (payload - token));
        if (!dot2)
                return -EINVAL;
        sig = dot2 + 1;
        if (memchr(sig, '.', n - (size_t) (sig - token)))
                return -EINVAL; /* more than 3 parts (e.g. JWE) */

        if (!is_b64url(sig, n - (size_t) (sig - token)))
                return -EINVAL;

        r = decode_json_object(token, (size_t) (dot1 - token), &header);
        if (r < 0)
                return r;
        json_decref(header);

        r = decode_json_object(payload, (size_t) (dot2 - payload), &claims);
        if (r < 0)
                return r;

        *ret = claims;
        return 0;
}

int jwt_decode_payload(const char *token, json_t **ret) {
        if (!token)
                return -EINVAL;
        /* Don't scan past the bound on huge strings. */
        return jwt_decode_payloadn(token, strnlen(token, JWT_MAX_LEN + 1), ret);
}

/* 9999-12-31T23:59:59Z + 1s */
#define NUMERICDATE_MAX 253402300800LL

int jwt_claims_exp(json_t *claims, usec_t *ret) {
        json_t *exp;
        usec_t u;

        if (!json_is_object(claims))
                return -EINVAL;

        exp = json_object_get(claims, "exp");
        if (!exp)
                return -ENOENT;

        if (json_is_integer(exp)) {
                json_int_t v = json_integer_value(exp);

                if (v <= 0 || v >= NUMERICDATE_MAX)
                        return -ERANGE;
                u = (usec_t) v * USEC_PER_SEC;
        } else if (json_is_real(exp)) {
                double d = json_real_value(exp);

                if (!isfinite(d) || d <= 0 || d >= (double) NUMERICDATE_MAX)
                        return -ERANGE;
                u = (usec_t) (d * (double) USEC_PER_SEC);
                if (u == 0)
                        return -ERANGE; /* below 1 usec */
        } else
                return -EINVAL;

        if (ret)
                *ret = u;
        return 0;
}

int jwt_get_exp(const char *token, usec_t *ret) {
        json_t *claims = NULL;
        int r;

        r = jwt_decode_payload(token, &claims);
        if (r < 0)
                return r;

        r = jwt_claims_exp(claims, ret);
        json_decref(claims);
        return r;
}

static bool identity_ok(json_t *v) {
        const char *s;
        size_t l;

        if (!json_is_string(v))
                return false;

        s = json_string_value(v);
        l = json_string_length(v);
        if (l == 0 || l > JWT_IDENTITY_MAX)
                return false;

        for (size_t i = 0; i < l; i++) {
                unsigned char c = (unsigned char) s[i];

                if (c < 0x20 || c == 0x7f) /* includes embedded NUL */
                        return false;
        }
        return true;
}

int jwt_claims_identity(json_t *claims, char **ret) {
        static const char *const keys[] = { "email", "preferred_username", "sub" };

        if (!json_is_object(claims) || !ret)
                return -EINVAL;

        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                json_t *v = json_object_get(claims, keys[i]);
                char *s;

                if (!identity_ok(v))
                        continue;

                s = text_escape_dup(json_string_value(v), JWT_IDENTITY_MAX);
                if (!s)
                        return -ENOMEM;
                *ret = s;
                return 0;
        }

        return -ENOENT;
}
