/* SPDX-License-Identifier: MIT */

#include <openssl/evp.h>
#include <sys/random.h>

#include "common/b64.h"
#include "common/macro.h"

#define TESTS_MAIN
#include "tests.h"

static void check_url_decode(const char *in, const char *expected) {
        _cleanup_free_ void *out = NULL;
        size_t l = SIZE_MAX;

        CHECK_EQ_INT(b64url_decode(in, strlen(in), &out, &l), 0);
        CHECK_EQ_INT(l, strlen(expected));
        if (out)
                CHECK_STREQ(out, expected); /* NUL-terminated */
}

static void check_url_invalid(const char *in, size_t n) {
        void *out = (void *) 0x1;
        size_t l = 4711;

        CHECK_EQ_INT(b64url_decode(in, n, &out, &l), -EINVAL);
        CHECK(out == (void *) 0x1);
        CHECK_EQ_INT(l, 4711);
}

TEST(rfc4648_std_vectors) {
        static const struct { const char *in, *out; } v[] = {
                { "", "" },
                { "f", "Zg==" },
                { "fo", "Zm8=" },
                { "foo", "Zm9v" },
                { "foob", "Zm9vYg==" },
                { "fooba", "Zm9vYmE=" },
                { "foobar", "Zm9vYmFy" },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *s = NULL;

                CHECK_EQ_INT(b64_encode(v[i].in, strlen(v[i].in), &s), 0);
                CHECK_STREQ(s, v[i].out);
        }
}

TEST(rfc4648_url_vectors) {
        static const struct { const char *in, *out; } v[] = {
                { "", "" },
                { "f", "Zg" },
                { "fo", "Zm8" },
                { "foo", "Zm9v" },
                { "foob", "Zm9vYg" },
                { "fooba", "Zm9vYmE" },
                { "foobar", "Zm9vYmFy" },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *s = NULL;

                CHECK_EQ_INT(b64url_encode(v[i].in, strlen(v[i].in), &s), 0);
                CHECK_STREQ(s, v[i].out);
                check_url_decode(v[i].out, v[i].in);
        }
}

TEST(url_decode_accepts_padding) {
        check_url_decode("Zg==", "f");
        check_url_decode("Zm8=", "fo");
        check_url_decode("Zm9vYg==", "foob");
        check_url_decode("Zm9vYmE=", "fooba");
}

TEST(alphabets_differ) {
        static const uint8_t x[] = { 0xfb, 0xff, 0xbf };
        _cleanup_free_ char *std = NULL, *url = NULL;
        _cleanup_free_ void *d = NULL;
        size_t l;

        CHECK_EQ_INT(b64_encode(x, sizeof(x), &std), 0);
        CHECK_STREQ(std, "+/+/");
        CHECK_EQ_INT(b64url_encode(x, sizeof(x), &url), 0);
        CHECK_STREQ(url, "-_-_");
        CHECK_EQ_INT(b64url_decode(url, strlen(url), &d, &l), 0);
        CHECK_EQ_INT(l, sizeof(x));
        CHECK(d && memcmp(d, x, sizeof(x)) == 0);
        /* the standard alphabet is not accepted by the URL decoder */
        check_url_invalid(std, strlen(std));
}

TEST(url_decode_invalid) {
        check_url_invalid("Z", 1);            /* 4k+1 symbols */
        check_url_invalid("Zm9vY", 5);
        check_url_invalid("Zm9v!", 5);
        check_url_invalid("Zm 9v", 5);
        check_url_invalid("Zm9v\n", 5);
        check_url_invalid("Zm+v", 4);
        check_url_invalid("Zm/v", 4);
        check_url_invalid("Zm\0v", 4);        /* embedded NUL */
        check_url_invalid("Zg=", 3);          /* short padding */
        check_url_invalid("Zg===", 5);        /* excess padding */
        check_url_invalid("Zm9v=", 5);
        check_url_invalid("Zm9v==", 6);
        check_url_invalid("=", 1);
        check_url_invalid("==", 2);
        check_url_invalid("Z=g=", 4);         /* padding in the middle */
        check_url_invalid("Zm8=Zm8=", 8);     /* concatenated padded blocks */
        check_url_invalid("\xc3\xa9\xc3\xa9", 4);
        check_url_invalid("Zm9v\x80", 5);
}

TEST(url_decode_respects_length) {
        _cleanup_free_ void *d = NULL;
        size_t l;

        /* Only n bytes are read: "Zm9v" out of "Zm9v!!!!". */
        CHECK_EQ_INT(b64url_decode("Zm9v!!!!", 4, &d, &l), 0);
        CHECK_EQ_INT(l, 3);
        CHECK_STREQ(d, "foo");
}

TEST(empty) {
        _cleanup_free_ char *s = NULL, *t = NULL;
        _cleanup_free_ void *d = NULL;
        size_t l = 1;

        CHECK_EQ_INT(b64url_encode(NULL, 0, &s), 0);
        CHECK_STREQ(s, "");
        CHECK_EQ_INT(b64_encode("", 0, &t), 0);
        CHECK_STREQ(t, "");
        CHECK_EQ_INT(b64url_decode(NULL, 0, &d, &l), 0);
        CHECK_EQ_INT(l, 0);
        CHECK(d && ((char *) d)[0] == 0);
}

TEST(null_args) {
        char *s = NULL;
        void *d = NULL;

        CHECK_EQ_INT(b64url_encode(NULL, 1, &s), -EINVAL);
        CHECK_EQ_INT(b64url_encode("x", 1, NULL), -EINVAL);
        CHECK_EQ_INT(b64_encode(NULL, 1, &s), -EINVAL);
        CHECK_EQ_INT(b64url_decode(NULL, 1, &d, NULL), -EINVAL);
        CHECK_EQ_INT(b64url_decode("Zg", 2, NULL, NULL), -EINVAL);
        CHECK(!s && !d);
}

TEST(roundtrip_random_0_to_64) {
        for (unsigned round = 0; round < 32; round++)
                for (size_t n = 0; n <= 64; n++) {
                        uint8_t buf[64];
                        _cleanup_free_ char *s = NULL, *p = NULL;
                        _cleanup_free_ void *d = NULL, *d2 = NULL;
                        size_t l = SIZE_MAX, l2 = SIZE_MAX;

                        CHECK_EQ_INT(getrandom(buf, n, 0), (ssize_t) n);

                        CHECK_EQ_INT(b64url_encode(buf, n, &s), 0);
                        if (!s)
                                continue;
                        CHECK_EQ_INT(strlen(s), (n * 4 + 2) / 3);
                        CHECK(strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == strlen(s));
                        CHECK_EQ_INT(b64url_decode(s, strlen(s), &d, &l), 0);
                        CHECK_EQ_INT(l, n);
                        CHECK(d && memcmp(d, buf, n) == 0);
                        CHECK(d && ((uint8_t *) d)[n] == 0);

                        /* Padded standard encoding, translated to the URL
                         * alphabet, must decode too. */
                        CHECK_EQ_INT(b64_encode(buf, n, &p), 0);
                        if (!p)
                                continue;
                        CHECK_EQ_INT(strlen(p) % 4, 0);
                        for (char *c = p; *c; c++)
                                *c = *c == '+' ? '-' : *c == '/' ? '_' : *c;
                        CHECK_EQ_INT(b64url_decode(p, strlen(p), &d2, &l2), 0);
                        CHECK_EQ_INT(l2, n);
                        CHECK(d2 && memcmp(d2, buf, n) == 0);
                }
}

TEST(rfc7636_appendix_b_s256) {
        static const char verifier[] = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        static const uint8_t octets[32] = {
                116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173,
                187, 186, 22, 212, 37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83,
                132, 141, 121,
        };
        uint8_t md[EVP_MAX_MD_SIZE];
        unsigned md_len = 0;
        _cleanup_free_ char *challenge = NULL;
        _cleanup_free_ void *d = NULL;
        size_t l;

        /* The verifier is itself the base64url of the 32 octets above. */
        CHECK_EQ_INT(b64url_decode(verifier, strlen(verifier), &d, &l), 0);
        CHECK_EQ_INT(l, sizeof(octets));
        CHECK(d && memcmp(d, octets, sizeof(octets)) == 0);

        CHECK_EQ_INT(EVP_Digest(verifier, strlen(verifier), md, &md_len, EVP_sha256(), NULL), 1);
        CHECK_EQ_INT(md_len, 32);
        CHECK_EQ_INT(b64url_encode(md, md_len, &challenge), 0);
        CHECK_STREQ(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
}

TEST(http_basic) {
        _cleanup_free_ char *s = NULL;

        /* RFC 7617 §2 example */
        CHECK_EQ_INT(b64_encode("Aladdin:open sesame", 19, &s), 0);
        CHECK_STREQ(s, "QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
}

TEST(decode_every_string_up_to_3) {
        /* Every 1..3 byte input from a small alphabet including '=' and
         * junk: must either fail with -EINVAL or round-trip losslessly
         * modulo the ignored low bits. */
        static const char alpha[] = "AZaz09-_=+/. \0";
        size_t na = sizeof(alpha); /* includes final NUL twice: fine */
        char in[3];

        for (size_t len = 1; len <= 3; len++)
                for (size_t x = 0; x < na * na * na; x++) {
                        _cleanup_free_ void *d = NULL;
                        size_t l, y = x;
                        int r;

                        for (size_t i = 0; i < len; i++) {
                                in[i] = alpha[y % na];
                                y /= na;
                        }
                        r = b64url_decode(in, len, &d, &l);
                        CHECK(r == 0 || r == -EINVAL);
                        if (r == 0)
                                CHECK(l <= 2);
                }
}
