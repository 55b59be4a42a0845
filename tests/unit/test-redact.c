/* SPDX-License-Identifier: MIT */

#include "common/b64.h"
#include "common/macro.h"
#include "common/util.h"
#include "daemon/redact.h"

#define TESTS_MAIN
#include "tests.h"

#define SECRET "s3cr3t-client+secret/value"
#define RT "rt-0123456789abcdef"
#define AT "at-fedcba9876543210"

static void setup(Redactor *r) {
        *r = (Redactor) {};
        redactor_add(r, "client_secret", SECRET);
        redactor_add(r, "refresh_token", RT);
        redactor_add(r, "access_token", AT);
}

static void check_str(char *got, const char *want) {
        CHECK(got != NULL);
        if (got && !streq(got, want))
                fprintf(stderr, "  got:  %s\n  want: %s\n", got, want);
        CHECK_STREQ(got ?: "", want);
        free(got);
}

TEST(text_by_value) {
        Redactor r;

        setup(&r);
        /* raw and percent-encoded */
        check_str(redact_text(&r, "error: refresh token " RT " invalid", strlen("error: refresh token " RT " invalid"), 0),
                  "error: refresh token <refresh_token> invalid");
        check_str(redact_text(&r, "x=s3cr3t-client%2Bsecret%2Fvalue", 32, 0), "x=<client_secret>");
        /* a space as a form writes it */
        redactor_add(&r, "password", "pass word 12");
        check_str(redact_text(&r, "p=pass+word+12&q=pass%20word%2012", 33, 0), "p=<password>&q=<password>");
        /* short values are left alone */
        redactor_add(&r, "code", "abc");
        check_str(redact_text(&r, "abc", 3, 0), "abc");
        /* control characters escaped */
        check_str(redact_text(&r, "a\nb\x1b", 4, 0), "a\\nb\\e");
        redactor_done(&r);
}

TEST(form_by_key) {
        Redactor r;
        const char *form = "grant_type=refresh_token&refresh_token=" RT "&client_id=app&client_secret=zzzzzzzz"
                           "&code=short&redirect_uri=https%3A%2F%2Fb.example%2Fcb&custom=" AT;

        setup(&r);
        check_str(redact_body(&r, "application/x-www-form-urlencoded", form, strlen(form), 0),
                  "grant_type=refresh_token&refresh_token=<refresh_token>&client_id=app&client_secret=<client_secret>"
                  "&code=<code>&redirect_uri=https%3A%2F%2Fb.example%2Fcb&custom=<access_token>");
        redactor_done(&r);
}

TEST(url_query) {
        Redactor r;

        setup(&r);
        check_str(redact_url(&r, "https://p.example/token?code=abc&state=xyz12345&scope=read%20write&x=" RT "#frag", 0),
                  "https://p.example/token?code=<code>&state=<state>&scope=read%20write&x=<refresh_token>#frag");
        check_str(redact_url(&r, "https://p.example/" AT "/x", 0), "https://p.example/<access_token>/x");
        redactor_done(&r);
}

TEST(json_by_key_and_value) {
        Redactor r;
        const char *body = "{\"access_token\":\"new-access-token-1\",\"token_type\":\"Bearer\",\"expires_in\":3600,"
                           "\"refresh_token\":\"new-refresh-token-1\",\"authed_user\":{\"access_token\":\"xoxp-1\"},"
                           "\"error_description\":\"was " RT "\",\"ids\":[\"" AT "\"],\"my_tok\":\"zz\"}";

        setup(&r);
        redactor_add_key(&r, "/my_tok");
        check_str(redact_body(&r, "application/json", body, strlen(body), 0),
                  "{\"access_token\":\"<access_token>\",\"token_type\":\"Bearer\",\"expires_in\":3600,"
                  "\"refresh_token\":\"<refresh_token>\",\"authed_user\":{\"access_token\":\"<access_token>\"},"
                  "\"error_description\":\"was <refresh_token>\",\"ids\":[\"<access_token>\"],\"my_tok\":\"<my_tok>\"}");
        /* not JSON after all: text rules */
        check_str(redact_body(&r, "application/json", "{oops " RT, strlen("{oops " RT), 0), "{oops <refresh_token>");
        redactor_done(&r);
}

TEST(headers) {
        Redactor r;
        _cleanup_free_ char *b64 = NULL, *line = NULL;

        setup(&r);
        CHECK(b64_encode("my-client:s3cr3t-client%2Bsecret%2Fvalue", 40, &b64) >= 0);
        CHECK(asprintf(&line, "Authorization: Basic %s", b64) > 0);
        check_str(redact_header(&r, line, 0), "Authorization: Basic base64(my-client:<client_secret>)");
        check_str(redact_header(&r, "Authorization: Bearer " AT, 0), "Authorization: Bearer <access_token>");
        check_str(redact_header(&r, "Authorization: Bearer unknown-token-value", 0), "Authorization: Bearer <redacted>");
        check_str(redact_header(&r, "authorization: garbage", 0), "authorization: <redacted>");
        check_str(redact_header(&r, "Set-Cookie: sid=abcdef; HttpOnly", 0), "Set-Cookie: <cookie>");
        check_str(redact_header(&r, "Cookie: a=b", 0), "Cookie: <cookie>");
        check_str(redact_header(&r, "X-Shopify-Access-Token: whatever-value", 0), "X-Shopify-Access-Token: <redacted>");
        check_str(redact_header(&r, "X-Custom: " AT, 0), "X-Custom: <access_token>");
        check_str(redact_header(&r, "Content-Type: application/json", 0), "Content-Type: application/json");
        redactor_done(&r);
}

TEST(learn_request) {
        Redactor r = {};
        _cleanup_free_ char *b64 = NULL;
        char hdr[256];
        const char *headers[2];
        const char *body = "grant_type=authorization_code&code=the-one-time-code&code_verifier=verifier-0123456789";

        CHECK(b64_encode("id:learned-secret", 17, &b64) >= 0);
        snprintf(hdr, sizeof hdr, "Authorization: Basic %s", b64);
        headers[0] = hdr;
        headers[1] = "Accept: application/json";
        redactor_learn_request(&r, "https://p.example/token?state=state-value-1", headers, 2, body, strlen(body));
        check_str(redact_text(&r, "bad code the-one-time-code for learned-secret, state state-value-1, "
                                  "verifier-0123456789",
                              strlen("bad code the-one-time-code for learned-secret, state state-value-1, "
                                     "verifier-0123456789"),
                              0),
                  "bad code <code> for <client_secret>, state <state>, <code_verifier>");
        redactor_done(&r);

        r = (Redactor) {};
        body = "{\"refresh_token\":\"json-refresh-token\",\"nested\":{\"client_secret\":\"json-secret\"}}";
        redactor_learn_request(&r, NULL, NULL, 0, body, strlen(body));
        check_str(redact_text(&r, "json-refresh-token json-secret", 30, 0), "<refresh_token> <client_secret>");
        redactor_done(&r);
}

TEST(cut_after_redaction) {
        Redactor r;
        char big[3000];

        setup(&r);
        memset(big, 'a', sizeof big);
        memcpy(big + 1990, RT, strlen(RT));   /* straddles the cut */
        big[sizeof big - 1] = 0;
        {
                char *s = redact_text(&r, big, strlen(big), 2000);
                CHECK(s != NULL);
                CHECK(s && !strstr(s, "rt-0123"));
                CHECK(s && strstr(s, "bytes cut]"));
                free(s);
        }
        redactor_done(&r);
}

TEST(key_rules) {
        CHECK(redact_key_is_secret(NULL, "access_token", 12));
        CHECK(redact_key_is_secret(NULL, "fb_exchange_token", 17));
        CHECK(redact_key_is_secret(NULL, "Client_Secret", 13));
        CHECK(redact_key_is_secret(NULL, "code", 4));
        CHECK(!redact_key_is_secret(NULL, "token_type", 10));
        CHECK(!redact_key_is_secret(NULL, "token_type_hint", 15));
        CHECK(!redact_key_is_secret(NULL, "refresh_token_expires_in", 24));
        CHECK(!redact_key_is_secret(NULL, "grant_type", 10));
        CHECK(!redact_key_is_secret(NULL, "client_id", 9));
}
