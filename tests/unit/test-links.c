/* SPDX-License-Identifier: MIT */
/* Re-authorization links: the token's form, its hash, --valid, and the
 * CSP origin of a provider's authorization URL (daemon/links.c). */

#include "common/macro.h"
#include "common/util.h"
#include "daemon/link-token.h"

#define TESTS_MAIN
#include "tests.h"

TEST(link_token_valid_form) {
        char *t = NULL;

        CHECK(random_token(LINK_TOKEN_BYTES, &t) >= 0);
        CHECK_EQ_INT(strlen(t), LINK_TOKEN_LEN);
        CHECK(link_token_valid(t));
        free(t);
        CHECK(link_token_valid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-"));
        CHECK(link_token_valid("abcdefghijklmnopqrstuvwxyz_0123456789ABCDEF"));
        CHECK(!link_token_valid(NULL));
        CHECK(!link_token_valid(""));
        CHECK(!link_token_valid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));     /* 42 */
        CHECK(!link_token_valid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));   /* 44 */
        CHECK(!link_token_valid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));    /* padding */
        CHECK(!link_token_valid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/"));    /* base64, not url */
        CHECK(!link_token_valid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+"));
        CHECK(!link_token_valid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%"));
        CHECK(!link_token_valid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\xc3\xa9"));
}

TEST(link_token_hash_is_sha256_of_the_token) {
        const char *t = "abcdefghijklmnopqrstuvwxyz_0123456789ABCDEF";
        char h[65], want[65];

        CHECK_EQ_INT(link_token_hash(t, h), 0);
        CHECK(sha256_hex(t, strlen(t), want) >= 0);
        CHECK_STREQ(h, want);
        CHECK_EQ_INT(strlen(h), 64);
        CHECK_EQ_INT(link_token_hash("short", h), -EINVAL);
        CHECK_EQ_INT(link_token_hash("abcdefghijklmnopqrstuvwxyz_0123456789ABCDEF/x", h), -EINVAL);
}

TEST(link_valid_parse_units_and_bounds) {
        usec_t v = 0;

        CHECK_EQ_INT(link_valid_parse("7d", &v), 0);
        CHECK_EQ_INT(v, 7 * USEC_PER_DAY);
        CHECK_EQ_INT(link_valid_parse("30d", &v), 0);
        CHECK_EQ_INT(v, 30 * USEC_PER_DAY);
        CHECK_EQ_INT(link_valid_parse("12h", &v), 0);
        CHECK_EQ_INT(v, 12 * USEC_PER_HOUR);
        CHECK_EQ_INT(link_valid_parse("30m", &v), 0);
        CHECK_EQ_INT(v, 30 * USEC_PER_MINUTE);
        CHECK_EQ_INT(link_valid_parse("45s", &v), 0);
        CHECK_EQ_INT(v, 45 * USEC_PER_SEC);
        CHECK_EQ_INT(link_valid_parse("90", &v), 0);
        CHECK_EQ_INT(v, 90 * USEC_PER_SEC);
        CHECK_EQ_INT(link_valid_parse("2592000", &v), 0);
        CHECK_EQ_INT(link_valid_parse("720h", &v), 0);

        CHECK_EQ_INT(link_valid_parse("31d", &v), -ERANGE);
        CHECK_EQ_INT(link_valid_parse("721h", &v), -ERANGE);
        CHECK_EQ_INT(link_valid_parse("2592001", &v), -ERANGE);
        CHECK_EQ_INT(link_valid_parse("0", &v), -ERANGE);
        CHECK_EQ_INT(link_valid_parse("0d", &v), -ERANGE);
        CHECK_EQ_INT(link_valid_parse("999999999d", &v), -ERANGE);

        CHECK_EQ_INT(link_valid_parse(NULL, &v), -EINVAL);
        CHECK_EQ_INT(link_valid_parse("", &v), -EINVAL);
        CHECK_EQ_INT(link_valid_parse("d", &v), -EINVAL);
        CHECK_EQ_INT(link_valid_parse("7w", &v), -EINVAL);
        CHECK_EQ_INT(link_valid_parse("7dd", &v), -EINVAL);
        CHECK_EQ_INT(link_valid_parse("-7d", &v), -EINVAL);
        CHECK_EQ_INT(link_valid_parse(" 7d", &v), -EINVAL);
        CHECK_EQ_INT(link_valid_parse("7 d", &v), -EINVAL);
        CHECK_EQ_INT(link_valid_parse("1.5d", &v), -EINVAL);
        CHECK_EQ_INT(link_valid_parse("1234567890", &v), -EINVAL);   /* more than 9 digits */
}

TEST(link_url_origin_for_csp) {
        char *o = NULL;

        CHECK_EQ_INT(link_url_origin("https://login.example.com/oauth2/authorize?x=1", &o), 0);
        CHECK_STREQ(o, "https://login.example.com");
        free(o);
        CHECK_EQ_INT(link_url_origin("http://127.0.0.1:9000/auth", &o), 0);
        CHECK_STREQ(o, "http://127.0.0.1:9000");
        free(o);
        CHECK_EQ_INT(link_url_origin("http://[::1]:9000", &o), 0);
        CHECK_STREQ(o, "http://[::1]:9000");
        free(o);
        o = NULL;
        CHECK_EQ_INT(link_url_origin("https://a.example; script-src *", &o), -EINVAL);
        CHECK_EQ_INT(link_url_origin("https://user@a.example/", &o), -EINVAL);
        CHECK_EQ_INT(link_url_origin("https://a'b.example/", &o), -EINVAL);
        CHECK_EQ_INT(link_url_origin("https:///path", &o), -EINVAL);
        CHECK_EQ_INT(link_url_origin("ftp://a.example/", &o), -EINVAL);
        CHECK_EQ_INT(link_url_origin(NULL, &o), -EINVAL);
        CHECK(o == NULL);
}
