/* SPDX-License-Identifier: MIT */

#include "common/api.h"
#include "common/macro.h"
#include "common/util.h"
#include "daemon/route.h"

#define TESTS_MAIN
#include "tests.h"

/* A string of n copies of c (owned by the caller). */
static char *repeat(char c, size_t n) {
        char *s = malloc(n + 1);

        if (!s)
                abort();
        memset(s, c, n);
        s[n] = 0;
        return s;
}

/* ---- callback_query_parse() ------------------------------------------ */

/* NULL: absent; the parse is expected to succeed unless r < 0. */
static const struct {
        const char *query, *code_param;
        int r;
        const char *state, *code, *error, *desc;
} queries[] = {
        { "", "code", 0, NULL, NULL, NULL, NULL },
        { "state=abc&code=xyz", "code", 0, "abc", "xyz", NULL, NULL },
        { "code=xyz&state=abc", "code", 0, "abc", "xyz", NULL, NULL },
        /* Google: the code holds a '/', scope and friends are ignored. */
        { "state=Zm9vYmFy-_&code=4%2F0AeaYSHB-c1XkP_wlO&scope=email%20openid%20"
          "https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fuserinfo.email&authuser=0&prompt=consent",
          "code", 0, "Zm9vYmFy-_", "4/0AeaYSHB-c1XkP_wlO", NULL, NULL },
        /* Microsoft: session_state and iss ignored. */
        { "code=M.C507_BAY.2.U.a1b2c3d4-0000-1111-2222-333344445555&state=s1&session_state=0a1b2c3d-"
          "aaaa-bbbb-cccc-ddddeeeeffff&iss=https%3A%2F%2Flogin.microsoftonline.com%2F9188040d%2Fv2.0",
          "code", 0, "s1", "M.C507_BAY.2.U.a1b2c3d4-0000-1111-2222-333344445555", NULL, NULL },
        /* GitHub */
        { "code=0f1e2d3c4b5a69788796&state=st", "code", 0, "st", "0f1e2d3c4b5a69788796", NULL, NULL },
        /* Errors: '+' is a space, %XX decoded. */
        { "error=access_denied&error_description=The+user+denied+access%21&state=s", "code", 0, "s", NULL,
          "access_denied", "The user denied access!" },
        { "error=consent_required&error_description=AADSTS65001%3A%20The%20user%20or%20administrator&"
          "error_uri=https%3A%2F%2Flogin.microsoftonline.com%2Ferror%3Fcode%3D65001&state=s",
          "code", 0, "s", NULL, "consent_required", "AADSTS65001: The user or administrator" },
        /* A configured code parameter; "code" itself is then unknown. */
        { "state=s&auth_code=A1&code=ignored&code=twice", "auth_code", 0, "s", "A1", NULL, NULL },
        { "state=s&code=c", "auth_code", 0, "s", NULL, NULL, NULL },
        /* No code parameter asked for: codes are not looked at. */
        { "state=s&code=c&code=d", NULL, 0, "s", NULL, NULL, NULL },
        /* Empty and bare keys are present and empty. */
        { "state=&code", "code", 0, "", "", NULL, NULL },
        { "error&state=s", "code", 0, "s", NULL, "", NULL },
        /* Empty segments and empty keys are skipped or ignored. */
        { "&&state=s&&code=c&", "code", 0, "s", "c", NULL, NULL },
        { "=x&state=s", "code", 0, "s", NULL, NULL, NULL },
        /* Only the first '=' separates. */
        { "state=a=b&code=c==", "code", 0, "a=b", "c==", NULL, NULL },
        /* Keys are decoded too. */
        { "st%61te=s&%63ode=c", "code", 0, "s", "c", NULL, NULL },
        { "state=s&st%61te=t", "code", -ENOTUNIQ, NULL, NULL, NULL, NULL },
        /* Case matters. */
        { "STATE=s&Code=c", "code", 0, NULL, NULL, NULL, NULL },
        /* Decoded once, not twice; %26 and %3D are data. */
        { "state=%2541&code=a%26b%3Dc", "code", 0, "%41", "a&b=c", NULL, NULL },
        /* Refused. */
        { "state=a&state=b", "code", -ENOTUNIQ, NULL, NULL, NULL, NULL },
        { "state=a&code=1&code=2", "code", -ENOTUNIQ, NULL, NULL, NULL, NULL },
        { "state=a&error=x&error=y", "code", -ENOTUNIQ, NULL, NULL, NULL, NULL },
        { "state=a&error_description=x&error_description", "code", -ENOTUNIQ, NULL, NULL, NULL, NULL },
        { "state=abc%00x&code=1", "code", -EINVAL, NULL, NULL, NULL, NULL },
        { "state=abc&code=ab%00cd", "code", -EINVAL, NULL, NULL, NULL, NULL },
        { "state=abc%00&code=1", "code", -EINVAL, NULL, NULL, NULL, NULL },
        { "state=%zz", "code", -EINVAL, NULL, NULL, NULL, NULL },
        { "state=s&x=%4", "code", -EINVAL, NULL, NULL, NULL, NULL },   /* in an unknown value too */
        { "state=s&%=x", "code", -EINVAL, NULL, NULL, NULL, NULL },    /* in a key */
        { "state=s&code=%", "code", -EINVAL, NULL, NULL, NULL, NULL },
        { "state=s&code=%ff%fe", "code", 0, "s", "\xff\xfe", NULL, NULL },
};

static void check_value(const char *what, const char *got, const char *want, size_t i) {
        if (!want && !got)
                return;
        if (!want || !got || !streq(got, want)) {
                fprintf(stderr, "  query %zu: %s is \"%s\", expected \"%s\"\n", i, what, strempty(got),
                        want ?: "(absent)");
                tests_failed_checks++;
        }
}

TEST(callback_query_table) {
        for (size_t i = 0; i < ELEMENTSOF(queries); i++) {
                CallbackQuery q = {};
                int r = callback_query_parse(queries[i].query, strlen(queries[i].query), queries[i].code_param, &q);

                if (r != queries[i].r) {
                        fprintf(stderr, "  query %zu \"%s\": %d, expected %d\n", i, queries[i].query, r,
                                queries[i].r);
                        tests_failed_checks++;
                }
                if (r < 0) {
                        CHECK(!q.state && !q.code && !q.error && !q.error_description);   /* untouched */
                        continue;
                }
                check_value("state", q.state, queries[i].state, i);
                check_value("code", q.code, queries[i].code, i);
                check_value("error", q.error, queries[i].error, i);
                check_value("error_description", q.error_description, queries[i].desc, i);
                callback_query_done(&q);
                CHECK(!q.state && !q.code && !q.error && !q.error_description);
        }
}

TEST(callback_query_iss) {
        /* RFC 9207: iss is kept (decoded), once only. */
        const char *s = "code=c&state=s&iss=https%3A%2F%2Fidp.example.com%2F";
        CallbackQuery q = {};

        CHECK_EQ_INT(callback_query_parse(s, strlen(s), "code", &q), 0);
        CHECK_STREQ(q.iss, "https://idp.example.com/");
        callback_query_done(&q);
        CHECK(!q.iss);
        s = "state=s&iss=a&iss=b";
        CHECK_EQ_INT(callback_query_parse(s, strlen(s), "code", &q), -ENOTUNIQ);
        CHECK(!q.iss);
}

TEST(callback_query_length_bounded) {
        /* Only len bytes are read: the rest of the buffer is not the query. */
        const char *s = "state=abc&code=xyz&state=again";
        CallbackQuery q = {};

        CHECK_EQ_INT(callback_query_parse(s, strlen("state=abc&code=xyz"), "code", &q), 0);
        CHECK_STREQ(q.state, "abc");
        CHECK_STREQ(q.code, "xyz");
        callback_query_done(&q);

        /* Cut in the middle of an escape. */
        CHECK_EQ_INT(callback_query_parse("state=a%41", strlen("state=a%4"), "code", &q), -EINVAL);
        CHECK_EQ_INT(callback_query_parse(NULL, 0, "code", &q), 0);
        CHECK(!q.state);
        callback_query_done(&q);
}

TEST(callback_query_raw_nul) {
        static const char s[] = "state=ab\0cd&code=x";
        CallbackQuery q = {};

        CHECK_EQ_INT(callback_query_parse(s, sizeof s - 1, "code", &q), -EINVAL);
        CHECK_EQ_INT(callback_query_parse(s, 8, "code", &q), 0);   /* "state=ab" */
        CHECK_STREQ(q.state, "ab");
        callback_query_done(&q);
}

TEST(callback_query_value_limit) {
        _cleanup_free_ char *v = repeat('v', CALLBACK_VALUE_MAX + 1), *query = NULL;
        CallbackQuery q = {};

        /* Exactly the limit passes, one more byte does not; the limit is on
         * the decoded value. */
        CHECK(asprintf(&query, "state=%.*s&code=c", CALLBACK_VALUE_MAX, v) > 0);
        CHECK_EQ_INT(callback_query_parse(query, strlen(query), "code", &q), 0);
        CHECK_EQ_INT(strlen(q.state), CALLBACK_VALUE_MAX);
        callback_query_done(&q);
        query = mfree(query);

        CHECK(asprintf(&query, "state=s&code=%s", v) > 0);
        CHECK_EQ_INT(callback_query_parse(query, strlen(query), "code", &q), -EMSGSIZE);
        query = mfree(query);

        CHECK(asprintf(&query, "state=%s", v) > 0);
        CHECK_EQ_INT(callback_query_parse(query, strlen(query), NULL, &q), -EMSGSIZE);
        query = mfree(query);

        /* 4096 decoded bytes written as 4096 escapes (12 KiB) pass. */
        {
                StrBuf b = {};
                strbuf_puts(&b, "state=s&error=");
                for (size_t i = 0; i < CALLBACK_VALUE_MAX; i++)
                        strbuf_puts(&b, "%41");
                query = strbuf_steal(&b);
        }
        CHECK_EQ_INT(callback_query_parse(query, strlen(query), "code", &q), 0);
        CHECK_EQ_INT(strlen(q.error), CALLBACK_VALUE_MAX);
        callback_query_done(&q);
        query = mfree(query);

        /* Unknown parameters are bounded by the whole query only. */
        CHECK(asprintf(&query, "state=s&id_token=%s%s", v, v) > 0);
        CHECK_EQ_INT(callback_query_parse(query, strlen(query), "code", &q), 0);
        CHECK_STREQ(q.state, "s");
        callback_query_done(&q);
}

TEST(callback_query_total_limit) {
        _cleanup_free_ char *query = repeat('x', CALLBACK_QUERY_MAX + 1);
        CallbackQuery q = {};

        memcpy(query, "state=s&pad=", 12);
        CHECK_EQ_INT(callback_query_parse(query, CALLBACK_QUERY_MAX, "code", &q), 0);
        CHECK_STREQ(q.state, "s");
        callback_query_done(&q);
        CHECK_EQ_INT(callback_query_parse(query, CALLBACK_QUERY_MAX + 1, "code", &q), -EMSGSIZE);
}

TEST(callback_query_param_limit) {
        StrBuf b = {};
        _cleanup_free_ char *query = NULL;
        CallbackQuery q = {};

        strbuf_puts(&b, "state=s");
        for (unsigned i = 1; i < CALLBACK_PARAMS_MAX; i++)
                strbuf_printf(&b, "&p%u=%u", i, i);
        query = strbuf_steal(&b);
        CHECK_EQ_INT(callback_query_parse(query, strlen(query), "code", &q), 0);   /* 64 */
        callback_query_done(&q);

        /* Empty segments are not parameters. */
        {
                _cleanup_free_ char *more = NULL;
                CHECK(asprintf(&more, "%s&&&", query) > 0);
                CHECK_EQ_INT(callback_query_parse(more, strlen(more), "code", &q), 0);
                callback_query_done(&q);
                more = mfree(more);
                CHECK(asprintf(&more, "%s&x", query) > 0);
                CHECK_EQ_INT(callback_query_parse(more, strlen(more), "code", &q), -E2BIG);   /* 65 */
        }
}

TEST(callback_query_code_param_is_state) {
        /* A provider file naming "state" as its code parameter: the one
         * parameter fills both, and is not a duplicate of itself. */
        CallbackQuery q = {};

        CHECK_EQ_INT(callback_query_parse("state=s", 7, "state", &q), 0);
        CHECK_STREQ(q.state, "s");
        CHECK_STREQ(q.code, "s");
        callback_query_done(&q);
}

/* ---- api_route_match() -------------------------------------------------- */

#define NAME128 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

static const struct {
        const char *method, *path;
        int r;
        ApiRouteId id;
        bool connection;
        const char *name;
} paths[] = {
        { "GET", "/v1/connections", API_ROUTE_LIST, API_ROUTE_LIST, false, "" },
        { "GET", "/v1/connections/", API_ROUTE_LIST, API_ROUTE_LIST, false, "" },
        { "POST", "/v1/connections", API_ROUTE_CREATE, API_ROUTE_CREATE, false, "" },
        { "POST", "/v1/connections/", API_ROUTE_CREATE, API_ROUTE_CREATE, false, "" },
        { "PUT", "/v1/connections", -EOPNOTSUPP, API_ROUTE_LIST, false, "" },
        { "DELETE", "/v1/connections", -EOPNOTSUPP, API_ROUTE_LIST, false, "" },
        { "GET", "/v1/connections/alice", API_ROUTE_SHOW, API_ROUTE_SHOW, true, "alice" },
        { "DELETE", "/v1/connections/alice", API_ROUTE_REVOKE, API_ROUTE_REVOKE, true, "alice" },
        { "POST", "/v1/connections/alice", -EOPNOTSUPP, API_ROUTE_SHOW, true, "alice" },
        { "GET", "/v1/connections/alice/token", API_ROUTE_TOKEN, API_ROUTE_TOKEN, true, "alice" },
        { "POST", "/v1/connections/alice/token", -EOPNOTSUPP, API_ROUTE_TOKEN, true, "alice" },
        { "HEAD", "/v1/connections/alice/token", -EOPNOTSUPP, API_ROUTE_TOKEN, true, "alice" },
        { "get", "/v1/connections/alice/token", -EOPNOTSUPP, API_ROUTE_TOKEN, true, "alice" },
        { "POST", "/v1/connections/alice/invalidate", API_ROUTE_INVALIDATE, API_ROUTE_INVALIDATE, true, "alice" },
        { "GET", "/v1/connections/alice/invalidate", -EOPNOTSUPP, API_ROUTE_INVALIDATE, true, "alice" },
        { "POST", "/v1/connections/alice/refresh", API_ROUTE_REFRESH, API_ROUTE_REFRESH, true, "alice" },
        { "GET", "/v1/connections/alice/refresh", -EOPNOTSUPP, API_ROUTE_REFRESH, true, "alice" },
        { "GET", "/v1/connections/github.work_2-b/token", API_ROUTE_TOKEN, API_ROUTE_TOKEN, true, "github.work_2-b" },
        { "GET", "/v1/connections/" NAME128 "/token", API_ROUTE_TOKEN, API_ROUTE_TOKEN, true, NAME128 },
        { "GET", "/v1/providers", API_ROUTE_PROVIDERS, API_ROUTE_PROVIDERS, false, "" },
        { "GET", "/v1/status", API_ROUTE_STATUS, API_ROUTE_STATUS, false, "" },
        { "POST", "/v1/status", -EOPNOTSUPP, API_ROUTE_STATUS, false, "" },
        { "GET", "/v1/events", API_ROUTE_EVENTS, API_ROUTE_EVENTS, false, "" },
        { "GET", "/metrics", API_ROUTE_METRICS, API_ROUTE_METRICS, false, "" },
        { "DELETE", "/metrics", -EOPNOTSUPP, API_ROUTE_METRICS, false, "" },
        /* Nothing there. */
        { "GET", "/", -ENOENT, _API_ROUTE_INVALID, false, "" },
        { "GET", "", -ENOENT, _API_ROUTE_INVALID, false, "" },
        { "GET", "/v1", -ENOENT, _API_ROUTE_INVALID, false, "" },
        { "GET", "/v1/", -ENOENT, _API_ROUTE_INVALID, false, "" },
        { "GET", "/v1/status/", -ENOENT, _API_ROUTE_INVALID, false, "" },
        { "GET", "/metrics/", -ENOENT, _API_ROUTE_INVALID, false, "" },
        { "GET", "/v1/connectionsx", -ENOENT, _API_ROUTE_INVALID, false, "" },
        { "GET", "/V1/connections", -ENOENT, _API_ROUTE_INVALID, false, "" },
        { "GET", "//v1/connections", -ENOENT, _API_ROUTE_INVALID, false, "" },
        { "GET", "/v1/connections//", -ENOENT, _API_ROUTE_INVALID, true, "" },
        /* Below a connection, but no such route: the name still comes back. */
        { "GET", "/v1/connections/alice/", -ENOENT, _API_ROUTE_INVALID, true, "alice" },
        { "GET", "/v1/connections/alice/tokens", -ENOENT, _API_ROUTE_INVALID, true, "alice" },
        { "GET", "/v1/connections/alice/token/", -ENOENT, _API_ROUTE_INVALID, true, "alice" },
        { "GET", "/v1/connections/alice/token/x", -ENOENT, _API_ROUTE_INVALID, true, "alice" },
        { "POST", "/v1/connections/alice/frob", -ENOENT, _API_ROUTE_INVALID, true, "alice" },
        { "GET", "/v1/connections/bad!/frob", -ENOENT, _API_ROUTE_INVALID, true, "" },
        /* Names no connection can have: the wrong method is said first. */
        { "GET", "/v1/connections//token", -EINVAL, API_ROUTE_TOKEN, true, "" },
        { "GET", "/v1/connections/./token", -EINVAL, API_ROUTE_TOKEN, true, "" },
        { "GET", "/v1/connections/../token", -EINVAL, API_ROUTE_TOKEN, true, "" },
        { "GET", "/v1/connections/...", API_ROUTE_SHOW, API_ROUTE_SHOW, true, "..." },
        { "GET", "/v1/connections/a b/token", -EINVAL, API_ROUTE_TOKEN, true, "" },
        { "GET", "/v1/connections/a%2Fb/token", -EINVAL, API_ROUTE_TOKEN, true, "" },
        { "GET", "/v1/connections/\xc3\xa9/token", -EINVAL, API_ROUTE_TOKEN, true, "" },
        { "DELETE", "/v1/connections/bad!", -EINVAL, API_ROUTE_REVOKE, true, "" },
        { "POST", "/v1/connections/bad!/token", -EOPNOTSUPP, API_ROUTE_TOKEN, true, "" },
        { "PUT", "/v1/connections/bad!", -EOPNOTSUPP, API_ROUTE_SHOW, true, "" },
        /* Too long, whatever follows. */
        { "GET", "/v1/connections/a" NAME128 "/token", -ENAMETOOLONG, _API_ROUTE_INVALID, true, "" },
        { "PUT", "/v1/connections/a" NAME128, -ENAMETOOLONG, _API_ROUTE_INVALID, true, "" },
        { "GET", "/v1/connections/a" NAME128 "/frob", -ENAMETOOLONG, _API_ROUTE_INVALID, true, "" },
};

TEST(api_route_table) {
        for (size_t i = 0; i < ELEMENTSOF(paths); i++) {
                ApiRoute rt;
                int r = api_route_match(paths[i].method, paths[i].path, &rt);

                if (r != paths[i].r || rt.id != paths[i].id || rt.connection != paths[i].connection ||
                    !streq(rt.name, paths[i].name)) {
                        fprintf(stderr, "  %s %.60s: %d id %d connection %d name \"%s\", expected %d id %d "
                                "connection %d name \"%s\"\n", paths[i].method, paths[i].path, r, rt.id,
                                rt.connection, rt.name, paths[i].r, paths[i].id, paths[i].connection,
                                paths[i].name);
                        tests_failed_checks++;
                }
        }
}

TEST(api_route_names_valid) {
        /* Whatever comes back as a name is one a connection can have. */
        static const char *const names[] = { "a", "A-Z.a_z-0.9", "..a", "a..", NAME128 };

        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                _cleanup_free_ char *p = NULL;
                ApiRoute rt;

                CHECK(asprintf(&p, API_PREFIX "/%s/token", names[i]) > 0);
                CHECK_EQ_INT(api_route_match("GET", p, &rt), API_ROUTE_TOKEN);
                CHECK_STREQ(rt.name, names[i]);
                CHECK(connection_name_valid(rt.name));
        }
}
