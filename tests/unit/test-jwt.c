/* SPDX-License-Identifier: MIT */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* asprintf() */
#endif

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/b64.h"
#include "common/jwt.h"
#include "common/macro.h"

#define TESTS_MAIN
#include "tests.h"

/* https://jwt.io sample, HS256 with key "your-256-bit-secret":
 * {"alg":"HS256","typ":"JWT"}.{"sub":"1234567890","name":"John Doe","iat":1516239022} */
static const char jwtio[] =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
        "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

/* RFC 7519 §3.1 (HS256) and §6.1 (unsecured, alg "none"); payload
 * {"iss":"joe",\r\n "exp":1300819380,\r\n "http://example.com/is_root":true} */
static const char rfc7519_hs256[] =
        "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9."
        "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ."
        "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
static const char rfc7519_unsecured[] =
        "eyJhbGciOiJub25lIn0."
        "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ."
        "";

/* Build header.payload.HMAC-SHA256(key) from raw header/payload bytes. */
static char *make_jwt(const char *header, const char *payload, const char *key) {
        _cleanup_free_ char *h = NULL, *p = NULL, *s = NULL, *input = NULL;
        uint8_t mac[EVP_MAX_MD_SIZE];
        unsigned mac_len = 0;
        char *jwt = NULL;

        if (b64url_encode(header, strlen(header), &h) < 0 ||
            b64url_encode(payload, strlen(payload), &p) < 0 ||
            asprintf(&input, "%s.%s", h, p) < 0)
                return NULL;
        if (!HMAC(EVP_sha256(), key, (int) strlen(key), (const uint8_t *) input, strlen(input), mac, &mac_len))
                return NULL;
        if (b64url_encode(mac, mac_len, &s) < 0)
                return NULL;
        if (asprintf(&jwt, "%s.%s", input, s) < 0)
                return NULL;
        return jwt;
}

static char *make_jwt_payload(const char *payload) {
        return make_jwt("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload, "secret");
}

TEST(jwtio_sample) {
        json_t *c = NULL;
        _cleanup_free_ char *id = NULL, *again = NULL;
        usec_t u = 4711;

        CHECK_EQ_INT(jwt_decode_payload(jwtio, &c), 0);
        CHECK(json_is_object(c));
        CHECK_STREQ(json_string_value(json_object_get(c, "sub")), "1234567890");
        CHECK_STREQ(json_string_value(json_object_get(c, "name")), "John Doe");
        CHECK_EQ_INT(json_integer_value(json_object_get(c, "iat")), 1516239022);
        CHECK_EQ_INT(json_object_size(c), 3);
        CHECK_EQ_INT(jwt_claims_identity(c, &id), 0);
        CHECK_STREQ(id, "1234567890");
        CHECK_EQ_INT(jwt_claims_exp(c, &u), -ENOENT);
        json_decref(c);

        CHECK_EQ_INT(jwt_get_exp(jwtio, &u), -ENOENT);
        CHECK_EQ_INT(u, 4711);

        /* our test helper reproduces the sample bit for bit */
        again = make_jwt("{\"alg\":\"HS256\",\"typ\":\"JWT\"}",
                         "{\"sub\":\"1234567890\",\"name\":\"John Doe\",\"iat\":1516239022}",
                         "your-256-bit-secret");
        CHECK_STREQ(again, jwtio);
}

TEST(rfc7519_examples) {
        json_t *c = NULL;
        usec_t u = 0;

        CHECK_EQ_INT(jwt_get_exp(rfc7519_hs256, &u), 0);
        CHECK(u == UINT64_C(1300819380) * USEC_PER_SEC);

        u = 0;
        CHECK_EQ_INT(jwt_get_exp(rfc7519_unsecured, &u), 0);
        CHECK(u == UINT64_C(1300819380) * USEC_PER_SEC);

        CHECK_EQ_INT(jwt_decode_payload(rfc7519_unsecured, &c), 0);
        CHECK_STREQ(json_string_value(json_object_get(c, "iss")), "joe");
        CHECK(json_is_true(json_object_get(c, "http://example.com/is_root")));
        json_decref(c);
}

TEST(constructed_with_exp) {
        _cleanup_free_ char *t = make_jwt_payload(
                "{\"sub\":\"u-1\",\"preferred_username\":\"alice\",\"email\":\"alice@example.com\","
                "\"iat\":1700000000,\"exp\":1893456000}");
        _cleanup_free_ char *t2 = make_jwt_payload("{\"exp\":1893456000.25}");
        _cleanup_free_ char *id = NULL;
        json_t *c = NULL;
        usec_t u = 0;

        CHECK(t && t2);
        CHECK_EQ_INT(jwt_get_exp(t, &u), 0);
        CHECK(u == UINT64_C(1893456000) * USEC_PER_SEC);
        CHECK_EQ_INT(jwt_get_exp(t2, &u), 0);
        CHECK(u == UINT64_C(1893456000) * USEC_PER_SEC + 250000);

        CHECK_EQ_INT(jwt_decode_payload(t, &c), 0);
        CHECK_EQ_INT(jwt_claims_identity(c, &id), 0);
        CHECK_STREQ(id, "alice@example.com");
        json_decref(c);
}

TEST(exp_bounds) {
        static const struct { const char *payload; int r; uint64_t sec; } v[] = {
                { "{\"exp\":1}", 0, 1 },
                { "{\"exp\":253402300799}", 0, UINT64_C(253402300799) },  /* 9999-12-31T23:59:59Z */
                { "{\"exp\":253402300800}", -ERANGE, 0 },                 /* year 10000 */
                { "{\"exp\":253402300800.0}", -ERANGE, 0 },
                { "{\"exp\":9223372036854775807}", -ERANGE, 0 },         /* INT64_MAX */
                { "{\"exp\":1e300}", -ERANGE, 0 },
                { "{\"exp\":0}", -ERANGE, 0 },
                { "{\"exp\":0.0}", -ERANGE, 0 },
                { "{\"exp\":1e-9}", -ERANGE, 0 },                         /* rounds to 0 usec */
                { "{\"exp\":-1}", -ERANGE, 0 },
                { "{\"exp\":-9223372036854775808}", -ERANGE, 0 },
                { "{\"exp\":\"1893456000\"}", -EINVAL, 0 },               /* string: reject */
                { "{\"exp\":true}", -EINVAL, 0 },
                { "{\"exp\":null}", -EINVAL, 0 },
                { "{\"exp\":[1893456000]}", -EINVAL, 0 },
                { "{\"exp\":{}}", -EINVAL, 0 },
                { "{\"exp\":99999999999999999999999}", -EINVAL, 0 },      /* jansson: too big */
                { "{\"exp\":1e999}", -EINVAL, 0 },                        /* jansson: overflow */
                { "{\"EXP\":1893456000}", -ENOENT, 0 },
                { "{}", -ENOENT, 0 },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *t = make_jwt_payload(v[i].payload);
                usec_t u = 4711;
                int r;

                CHECK(t);
                r = jwt_get_exp(t, &u);
                if (r != v[i].r)
                        fprintf(stderr, "  %s -> %d\n", v[i].payload, r);
                CHECK_EQ_INT(r, v[i].r);
                if (v[i].r == 0)
                        CHECK(u == v[i].sec * USEC_PER_SEC);
                else
                        CHECK_EQ_INT(u, 4711);
        }

        CHECK_EQ_INT(jwt_claims_exp(NULL, NULL), -EINVAL);
        json_t *a = json_array();
        CHECK_EQ_INT(jwt_claims_exp(a, NULL), -EINVAL);
        json_decref(a);
}

TEST(every_prefix) {
        const char *const tokens[] = { jwtio, rfc7519_hs256, rfc7519_unsecured };

        for (size_t k = 0; k < ELEMENTSOF(tokens); k++) {
                size_t n = strlen(tokens[k]);
                size_t ok = 0;

                for (size_t l = 0; l <= n; l++) {
                        _cleanup_free_ char *p = strndup(tokens[k], l);
                        json_t *c = NULL, *c2 = NULL;
                        usec_t u;
                        int r, r2, r3;

                        CHECK(p);
                        if (!p)
                                continue;
                        r = jwt_decode_payload(p, &c);
                        r2 = jwt_decode_payloadn(tokens[k], l, &c2); /* not NUL-terminated at l */
                        r3 = jwt_get_exp(p, &u);
                        CHECK(r == 0 || r == -EINVAL);
                        CHECK_EQ_INT(r, r2);
                        CHECK(r3 == 0 || r3 == -EINVAL || r3 == -ENOENT);
                        CHECK((r == 0) == (c != NULL));
                        CHECK((r == 0) == json_is_object(c));
                        if (r == 0)
                                ok++;
                        json_decref(c);
                        json_decref(c2);
                }

                /* Valid: the whole token and every truncation of the
                 * signature whose length is possible base64url (incl. empty). */
                size_t sig = strlen(strrchr(tokens[k], '.') + 1);
                CHECK(ok >= 1);
                CHECK(ok <= sig + 1);
        }
}

TEST(wrong_part_count) {
        static const char *const bad[] = {
                "",
                ".",
                "..",
                "...",
                "eyJhbGciOiJub25lIn0",                                        /* 1 part */
                "eyJhbGciOiJub25lIn0.e30",                                    /* 2 parts */
                "eyJhbGciOiJub25lIn0.e30.",                                   /* fine, see below */
                "eyJhbGciOiJub25lIn0.e30..",                                  /* 4 parts */
                "eyJhbGciOiJub25lIn0.e30.c2ln.c2ln",
                "eyJhbGciOiJub25lIn0.e30.c2ln.c2ln.c2ln",                     /* JWE-like */
                ".e30.",                                                      /* empty header */
                "eyJhbGciOiJub25lIn0..",                                      /* empty payload */
                "eyJhbGciOiJub25lIn0..c2ln",
        };
        json_t *c = NULL;

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                int expected = i == 6 ? 0 : -EINVAL;
                int r = jwt_decode_payload(bad[i], &c);

                if (r != expected)
                        fprintf(stderr, "  \"%s\" -> %d\n", bad[i], r);
                CHECK_EQ_INT(r, expected);
                if (r == 0) {
                        CHECK(json_is_object(c) && json_object_size(c) == 0);
                        json_decref(c);
                        c = NULL;
                }
                CHECK(!c);
        }
        CHECK_EQ_INT(jwt_get_exp("a.b", NULL), -EINVAL);
        CHECK_EQ_INT(jwt_get_exp("opaque-access-token", NULL), -EINVAL);
        CHECK_EQ_INT(jwt_get_exp("ya29.a0AfH6SMB", NULL), -EINVAL);
        CHECK_EQ_INT(jwt_get_exp("e30.e30.e30.e30", NULL), -EINVAL);
}

TEST(bad_payloads) {
        static const char *const payloads[] = {
                "[]", "[1,2]", "\"str\"", "42", "null", "true",    /* not objects */
                "", " ", "{", "{\"a\":}", "{\"a\":1,}", "not json", "{}x",
                "{\"a\":1,\"a\":2}",                               /* duplicate keys */
                "{\"a\":\"\\u0000\"}",                             /* NUL in string */
                "{\"a\":\"\xff\"}",                                /* invalid UTF-8 */
        };
        json_t *c = NULL;

        for (size_t i = 0; i < ELEMENTSOF(payloads); i++) {
                _cleanup_free_ char *t = make_jwt_payload(payloads[i]);
                usec_t u;

                CHECK(t);
                CHECK_EQ_INT(jwt_decode_payload(t, &c), -EINVAL);
                CHECK_EQ_INT(jwt_get_exp(t, &u), -EINVAL);
        }

        /* header must be a JSON object too */
        _cleanup_free_ char *t1 = make_jwt("[]", "{}", "k"), *t2 = make_jwt("x", "{}", "k");
        CHECK_EQ_INT(jwt_decode_payload(t1, &c), -EINVAL);
        CHECK_EQ_INT(jwt_decode_payload(t2, &c), -EINVAL);
        CHECK(!c);
}

TEST(bad_base64) {
        static const char *const bad[] = {
                "eyJhbGciOiJub25lIn0.e30!.",             /* bad char in payload */
                "eyJhbGciOiJub25lIn0.e+0.",              /* std alphabet */
                "eyJhbGciOiJub25lIn0.e3.",               /* "{" then junk bits: not JSON */
                "eyJhbGciOiJub25lIn0.e.",                /* 4k+1 length */
                "eyJhbGciOiJub25lIn0.e30 .",
                "eyJhbGciOiJub25lIn0 .e30.",
                "eyJhbGciOiJub25lIn0.e30.c2l+",          /* bad char in signature */
                "eyJhbGciOiJub25lIn0.e30.c2l/",
                "eyJhbGciOiJub25lIn0.e30.sig nature",
                "eyJhbGciOiJub25lIn0.e30.sig\n",
                "eyJhbGciOiJub25lIn0.e30==.",            /* 3 symbols + 2 pad: wrong */
                "eyJhbGciOiJub25lIn0.e30====.",
                "eyJhbGciOiJub25lIn0.e3=0.",
        };
        json_t *c = NULL;

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                int r = jwt_decode_payload(bad[i], &c);
                if (r != -EINVAL)
                        fprintf(stderr, "  \"%s\" -> %d\n", bad[i], r);
                CHECK_EQ_INT(r, -EINVAL);
        }
        CHECK(!c);

        /* Padded base64url is tolerated. */
        CHECK_EQ_INT(jwt_decode_payload("eyJhbGciOiJub25lIn0.e30=.", &c), 0);
        CHECK_EQ_INT(json_object_size(c), 0);
        json_decref(c);
        c = NULL;
        CHECK_EQ_INT(jwt_decode_payload("eyJhbGciOiJub25lIn0.eyJhIjoxfQ==.", &c), 0);
        CHECK_EQ_INT(json_integer_value(json_object_get(c, "a")), 1);
        json_decref(c);

        /* Embedded NUL: only via the (ptr, len) variant. */
        c = NULL;
        CHECK_EQ_INT(jwt_decode_payloadn("eyJhbGciOiJub25lIn0.e30.\0", 25, &c), -EINVAL);
        CHECK_EQ_INT(jwt_decode_payloadn("eyJhbGciOiJub25lIn0\0e30.", 24, &c), -EINVAL);
        CHECK_EQ_INT(jwt_decode_payloadn("eyJhbGciOiJub25lIn0.e30.", 24, &c), 0);
        json_decref(c);
        CHECK_EQ_INT(jwt_decode_payloadn(NULL, 0, &c), -EINVAL);
        CHECK_EQ_INT(jwt_decode_payload(NULL, &c), -EINVAL);
        CHECK_EQ_INT(jwt_decode_payload(jwtio, NULL), -EINVAL);
}

TEST(size_limit) {
        /* Build a payload so that the whole token is exactly JWT_MAX_LEN. */
        static const char header[] = "{\"alg\":\"none\"}";
        _cleanup_free_ char *h = NULL, *filler = NULL, *payload = NULL, *tok = NULL, *big = NULL;
        json_t *c = NULL;
        size_t hl, target_pl, fl;

        CHECK_EQ_INT(b64url_encode(header, strlen(header), &h), 0);
        if (!h)
                return;
        hl = strlen(h);
        /* The payload's unpadded base64url must be JWT_MAX_LEN - hl - 2
         * long; for a length L (L % 4 != 1) that is floor(L * 3 / 4) raw
         * bytes. */
        target_pl = JWT_MAX_LEN - hl - 2;
        CHECK(target_pl % 4 != 1);
        fl = target_pl * 3 / 4 - strlen("{\"x\":\"\"}");
        filler = malloc(fl + 1);
        CHECK(filler);
        if (!filler)
                return;
        memset(filler, 'a', fl);
        filler[fl] = 0;
        CHECK(asprintf(&payload, "{\"x\":\"%s\"}", filler) > 0);
        _cleanup_free_ char *p64 = NULL;
        CHECK_EQ_INT(b64url_encode(payload, strlen(payload), &p64), 0);
        CHECK(asprintf(&tok, "%s.%s.", h, p64) > 0);
        CHECK_EQ_INT(strlen(tok), JWT_MAX_LEN);

        CHECK_EQ_INT(jwt_decode_payload(tok, &c), 0);
        CHECK_EQ_INT(json_string_length(json_object_get(c, "x")), fl);
        json_decref(c);
        c = NULL;

        /* One more byte (a signature character) is too much. */
        CHECK(asprintf(&big, "%sA", tok) > 0);
        CHECK_EQ_INT(jwt_decode_payload(big, &c), -E2BIG);
        CHECK_EQ_INT(jwt_decode_payloadn(big, strlen(big), &c), -E2BIG);
        CHECK_EQ_INT(jwt_get_exp(big, NULL), -E2BIG);
        CHECK(!c);

        /* A huge non-JWT string is rejected without scanning it all. */
        size_t hn = 16 * 1024 * 1024;
        char *huge = malloc(hn + 1);
        CHECK(huge);
        if (huge) {
                memset(huge, '.', hn);
                huge[hn] = 0;
                CHECK_EQ_INT(jwt_decode_payload(huge, &c), -E2BIG);
                free(huge);
        }
}

TEST(identity) {
        static const struct { const char *claims; int r; const char *id; } v[] = {
                { "{\"email\":\"a@b\",\"preferred_username\":\"u\",\"sub\":\"s\"}", 0, "a@b" },
                { "{\"preferred_username\":\"u\",\"sub\":\"s\"}", 0, "u" },
                { "{\"sub\":\"s\"}", 0, "s" },
                { "{\"email\":\"\",\"preferred_username\":\"\",\"sub\":\"s\"}", 0, "s" },
                { "{\"email\":42,\"preferred_username\":null,\"sub\":\"s\"}", 0, "s" },
                { "{\"email\":[\"a@b\"],\"sub\":\"s\"}", 0, "s" },
                { "{\"email\":\"evil\\n@b\",\"sub\":\"s\"}", 0, "s" },   /* control char */
                { "{\"email\":\"\\u001b[31m\",\"sub\":\"s\"}", 0, "s" },
                { "{\"email\":\"caf\\u00e9@b\"}", 0, "caf\xc3\xa9@b" },  /* UTF-8 fine */
                { "{\"sub\":1234}", -ENOENT, NULL },
                { "{\"sub\":\"\"}", -ENOENT, NULL },
                { "{\"name\":\"John\"}", -ENOENT, NULL },
                { "{}", -ENOENT, NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                json_error_t err;
                json_t *c = json_loads(v[i].claims, 0, &err);
                char *id = (char *) "untouched";

                CHECK(c);
                CHECK_EQ_INT(jwt_claims_identity(c, &id), v[i].r);
                if (v[i].r == 0) {
                        CHECK_STREQ(id, v[i].id);
                        free(id);
                } else
                        CHECK_STREQ(id, "untouched");
                json_decref(c);
        }

        /* length bound */
        char *long_sub = malloc(JWT_IDENTITY_MAX + 2), *id = NULL;
        CHECK(long_sub);
        if (long_sub) {
                memset(long_sub, 'x', JWT_IDENTITY_MAX + 1);
                long_sub[JWT_IDENTITY_MAX + 1] = 0;
                json_t *c = json_pack("{s:s}", "sub", long_sub);
                CHECK_EQ_INT(jwt_claims_identity(c, &id), -ENOENT);
                long_sub[JWT_IDENTITY_MAX] = 0;
                json_object_set_new(c, "sub", json_string(long_sub));
                CHECK_EQ_INT(jwt_claims_identity(c, &id), 0);
                CHECK_EQ_INT(id ? strlen(id) : 0, JWT_IDENTITY_MAX);
                free(id);
                json_decref(c);
                free(long_sub);
        }

        char *x = NULL;
        CHECK_EQ_INT(jwt_claims_identity(NULL, &x), -EINVAL);
        json_t *a = json_array();
        CHECK_EQ_INT(jwt_claims_identity(a, &x), -EINVAL);
        json_decref(a);
        json_t *s = json_string("a@b");
        CHECK_EQ_INT(jwt_claims_identity(s, &x), -EINVAL);
        json_decref(s);
        /* embedded NUL (only constructible in-process) is skipped */
        json_t *c = json_object();
        json_object_set_new(c, "email", json_stringn("a\0b", 3));
        CHECK_EQ_INT(jwt_claims_identity(c, &x), -ENOENT);
        json_decref(c);
        CHECK(!x);
}

TEST(random_mutations) {
        /* Cheap in-tree fuzzing: flip, insert and delete bytes of valid
         * tokens. Must never crash (run under ASan/UBSan). */
        const char *const tokens[] = { jwtio, rfc7519_hs256, rfc7519_unsecured };
        static const char alphabet[] = "AQgw.e=_-+/ \x00\xff{}\"";
        unsigned seed = 12345;

        for (unsigned iter = 0; iter < 20000; iter++) {
                const char *t = tokens[iter % ELEMENTSOF(tokens)];
                size_t n = strlen(t);
                char buf[512];
                json_t *c = NULL;
                int r;

                memcpy(buf, t, n);
                for (unsigned m = 0; m < 1 + iter % 4; m++) {
                        seed = seed * 1103515245 + 12345;
                        size_t pos = (seed >> 8) % (n + 1);
                        char ch = alphabet[(seed >> 20) % (sizeof(alphabet) - 1)];

                        switch ((seed >> 28) % 3) {
                        case 0:
                                if (pos < n)
                                        buf[pos] = ch;
                                break;
                        case 1:
                                if (n + 1 < sizeof(buf)) {
                                        memmove(buf + pos + 1, buf + pos, n - pos);
                                        buf[pos] = ch;
                                        n++;
                                }
                                break;
                        case 2:
                                if (pos < n) {
                                        memmove(buf + pos, buf + pos + 1, n - pos - 1);
                                        n--;
                                }
                                break;
                        }
                }

                r = jwt_decode_payloadn(buf, n, &c);
                CHECK(r == 0 || r == -EINVAL);
                if (r == 0) {
                        usec_t u;
                        char *id = NULL;
                        CHECK(json_is_object(c));
                        r = jwt_claims_exp(c, &u);
                        CHECK(r == 0 || r == -ENOENT || r == -EINVAL || r == -ERANGE);
                        r = jwt_claims_identity(c, &id);
                        CHECK(r == 0 || r == -ENOENT);
                        free(id);
                        json_decref(c);
                }
        }
}
