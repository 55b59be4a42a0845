/* SPDX-License-Identifier: MIT */

/* Unit tests for daemon/oauth.c: PKCE, authorize URLs, token request
 * bodies, and the parsing and classification of token responses. No
 * network: requests are built and inspected, never started. */

#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <sys/stat.h>

#include "common/b64.h"
#include "common/macro.h"
#include "common/util.h"
#include "daemon/oauth.h"

#define TESTS_MAIN
#include "tests.h"

/* 2023-11-14T22:13:20Z: when the token request was sent. */
#define SENT_AT (UINT64_C(1700000000) * USEC_PER_SEC)

/* Values no error message may ever contain. */
#define SECRET_AT "SECRET-AT-9f8e7d6c5b4a"
#define SECRET_RT "SECRET-RT-0a1b2c3d4e5f"

/* ---- helpers ---------------------------------------------------------- */

/* A provider as provider_load() would leave it with only the required
 * keys set: the default JSON pointers and usage rule. */
static Provider *provider_new(void) {
        Provider *p = new0(Provider, 1);

        if (!p)
                return NULL;
        p->grant = GRANT_AUTHORIZATION_CODE;
        p->client_auth = CLIENT_AUTH_BASIC;
        p->pkce = PKCE_S256;
        p->timeout = 20 * USEC_PER_SEC;
        p->name = strdup("test");
        p->path = strdup("/nonexistent/test.conf");
        p->authorize_url = strdup("https://auth.example.com/authorize");
        p->token_url = strdup("https://auth.example.com/token");
        p->client_id = strdup("tb-client");
        p->client_secret = strdup("tb-secret");
        p->scope_separator = strdup(" ");
        p->code_param = strdup("code");
        p->ptr_access_token = strdup("/access_token");
        p->ptr_refresh_token = strdup("/refresh_token");
        p->ptr_expires_in = strdup("/expires_in");
        p->ptr_token_type = strdup("/token_type");
        p->ptr_scope = strdup("/scope");
        p->ptr_id_token = strdup("/id_token");
        p->ptr_error = strdup("/error");
        p->ptr_error_description = strdup("/error_description");
        p->usage_header[0] = strdup("Authorization: Bearer ${access_token}");
        p->n_usage_header = 1;
        if (!p->name || !p->path || !p->authorize_url || !p->token_url || !p->client_id || !p->client_secret ||
            !p->scope_separator || !p->code_param || !p->ptr_access_token || !p->ptr_refresh_token ||
            !p->ptr_expires_in || !p->ptr_token_type || !p->ptr_scope || !p->ptr_id_token || !p->ptr_error ||
            !p->ptr_error_description || !p->usage_header[0])
                return provider_free(p);
        return p;
}

static void set_str(char **field, const char *value) {
        free(*field);
        *field = value ? strdup(value) : NULL;
        if (value && !*field)
                abort();
}

/* An unsecured JWT (alg "none", empty signature) with the given payload. */
static char *make_jwt(const char *payload) {
        static const char header[] = "{\"alg\":\"none\",\"typ\":\"JWT\"}";
        _cleanup_free_ char *h = NULL, *p = NULL;
        char *jwt = NULL;

        if (b64url_encode(header, strlen(header), &h) < 0 || b64url_encode(payload, strlen(payload), &p) < 0 ||
            asprintf(&jwt, "%s.%s.", h, p) < 0)
                return NULL;
        return jwt;
}

static OAuthOutcome parse(const Provider *p, long status, const char *body, TokenSet *t, char **err) {
        *t = (TokenSet) {};
        *err = NULL;
        return oauth_parse_token_response(p, status, body, body ? strlen(body) : 0, SENT_AT, t, err);
}

static bool token_set_empty(const TokenSet *t) {
        return !t->access_token && !t->refresh_token && !t->token_type && !t->scope && !t->id_token &&
               t->expires_at == 0;
}

/* ---- PKCE ------------------------------------------------------------- */

TEST(pkce_rfc7636_appendix_b) {
        _cleanup_free_ char *c = NULL, *plain = NULL;

        CHECK_EQ_INT(pkce_challenge(PKCE_S256, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", &c), 0);
        CHECK_STREQ(c, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        CHECK_EQ_INT(pkce_challenge(PKCE_PLAIN, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", &plain), 0);
        CHECK_STREQ(plain, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
}

TEST(pkce_challenge_none_refused) {
        char *c = NULL;

        CHECK_EQ_INT(pkce_challenge(PKCE_NONE, "verifier", &c), -EINVAL);
        CHECK(!c);
        CHECK_EQ_INT(pkce_challenge(_PKCE_INVALID, "verifier", &c), -EINVAL);
}

TEST(pkce_new_s256) {
        _cleanup_free_ char *v1 = NULL, *c1 = NULL, *v2 = NULL, *c2 = NULL, *again = NULL;

        CHECK_EQ_INT(pkce_new(PKCE_S256, &v1, &c1), 0);
        CHECK(v1 && c1);
        if (!v1 || !c1)
                return;
        /* RFC 7636 section 4.1: 43..128 characters of [A-Za-z0-9-._~] */
        CHECK_EQ_INT(strlen(v1), 43);
        CHECK_EQ_INT(strspn(v1, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"), 43);
        /* section 4.2: BASE64URL(SHA256(verifier)), no padding */
        CHECK_EQ_INT(strlen(c1), 43);
        CHECK(!strchr(c1, '='));
        CHECK_EQ_INT(pkce_challenge(PKCE_S256, v1, &again), 0);
        CHECK_STREQ(c1, again);
        CHECK(!streq(v1, c1));

        CHECK_EQ_INT(pkce_new(PKCE_S256, &v2, &c2), 0);
        CHECK(v2 && !streq(v1, v2));
        CHECK(c2 && !streq(c1, c2));
}

TEST(pkce_new_plain) {
        _cleanup_free_ char *v = NULL, *c = NULL;

        CHECK_EQ_INT(pkce_new(PKCE_PLAIN, &v, &c), 0);
        CHECK(v && strlen(v) == 43);
        CHECK_STREQ(c, v);
}

TEST(pkce_new_none) {
        char *v = (char *) "x", *c = (char *) "y";

        CHECK_EQ_INT(pkce_new(PKCE_NONE, &v, &c), 0);
        CHECK(!v);
        CHECK(!c);
}

/* ---- authorize URL ---------------------------------------------------- */

TEST(authorize_url_all_params) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *url = NULL;

        set_str(&p->client_id, "my client&id=1");
        set_str(&p->scopes, "openid email offline_access");
        set_str(&p->authorize_params, "access_type=offline prompt=consent");
        CHECK_EQ_INT(oauth_authorize_url(p, "http://127.0.0.1:8421/oauth/callback", "st@te/+1",
                                         "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", NULL, &url),
                     0);
        CHECK_STREQ(url,
                    "https://auth.example.com/authorize"
                    "?response_type=code"
                    "&client_id=my%20client%26id%3D1"
                    "&redirect_uri=http%3A%2F%2F127.0.0.1%3A8421%2Foauth%2Fcallback"
                    "&scope=openid%20email%20offline_access"
                    "&state=st%40te%2F%2B1"
                    "&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
                    "&code_challenge_method=S256"
                    "&access_type=offline"
                    "&prompt=consent");
}

TEST(authorize_url_round_trips) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *url = NULL;
        static const char state[] = "a b&c=d?e#f%g+h/i";
        const char *q;
        bool found = false;

        CHECK_EQ_INT(oauth_authorize_url(p, "https://tb.example.com/oauth/callback?x=1", state, NULL, NULL, &url),
                     0);
        q = url ? strchr(url, '?') : NULL;
        CHECK(q);
        if (!q)
                return;
        /* Split the query and decode each value: they come back exactly. */
        for (const char *s = q + 1; *s;) {
                size_t n = strcspn(s, "&");
                const char *eq = memchr(s, '=', n);
                _cleanup_free_ char *k = NULL, *v = NULL;

                CHECK(eq);
                if (!eq)
                        break;
                CHECK_EQ_INT(url_unescape(s, (size_t) (eq - s), &k), 0);
                CHECK_EQ_INT(url_unescape(eq + 1, n - (size_t) (eq - s) - 1, &v), 0);
                if (k && streq(k, "state")) {
                        CHECK_STREQ(v, state);
                        found = true;
                }
                if (k && streq(k, "redirect_uri"))
                        CHECK_STREQ(v, "https://tb.example.com/oauth/callback?x=1");
                CHECK(n > 0);          /* no empty "&&" items */
                s += n;
                if (*s == '&')
                        s++;
        }
        CHECK(found);
}

TEST(authorize_url_without_pkce_or_scope) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *url = NULL;

        CHECK_EQ_INT(oauth_authorize_url(p, "https://tb.example.com/cb", "s", NULL, NULL, &url), 0);
        CHECK_STREQ(url, "https://auth.example.com/authorize?response_type=code&client_id=tb-client"
                         "&redirect_uri=https%3A%2F%2Ftb.example.com%2Fcb&state=s");
        CHECK(!strstr(url, "code_challenge"));
        CHECK(!strstr(url, "scope="));
}

TEST(authorize_url_plain_challenge) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *url = NULL;

        p->pkce = PKCE_PLAIN;
        CHECK_EQ_INT(oauth_authorize_url(p, "https://tb.example.com/cb", "s", "verifier-as-is", NULL, &url), 0);
        CHECK(url && strstr(url, "&code_challenge=verifier-as-is&code_challenge_method=plain"));
}

TEST(authorize_url_scope_separator) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *url = NULL, *url2 = NULL, *url3 = NULL;

        set_str(&p->scopes, "  user:email   repo read:org ");
        set_str(&p->scope_separator, ",");
        CHECK_EQ_INT(oauth_authorize_url(p, "https://tb.example.com/cb", "s", NULL, NULL, &url), 0);
        CHECK(url && strstr(url, "&scope=user%3Aemail%2Crepo%2Cread%3Aorg&state=s"));

        /* an explicit scope replaces the default one */
        CHECK_EQ_INT(oauth_authorize_url(p, "https://tb.example.com/cb", "s", NULL, "gist", &url2), 0);
        CHECK(url2 && strstr(url2, "&scope=gist&"));
        CHECK(url2 && !strstr(url2, "repo"));

        /* an empty or blank one means none */
        set_str(&p->scopes, NULL);
        CHECK_EQ_INT(oauth_authorize_url(p, "https://tb.example.com/cb", "s", NULL, "   ", &url3), 0);
        CHECK(url3 && !strstr(url3, "scope"));
}

TEST(authorize_url_extra_params_escaped) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *url = NULL;

        set_str(&p->authorize_params, " resource=https://api.example.com/  login_hint=a+b@example.com  flag ");
        CHECK_EQ_INT(oauth_authorize_url(p, "https://tb.example.com/cb", "s", NULL, NULL, &url), 0);
        CHECK(url && strstr(url, "&state=s&resource=https%3A%2F%2Fapi.example.com%2F"
                                 "&login_hint=a%2Bb%40example.com&flag="));
        CHECK(url && url[strlen(url) - 1] == '=');
}

TEST(authorize_url_existing_query) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *url = NULL, *url2 = NULL;

        /* Azure AD B2C style: the endpoint carries its own parameter */
        set_str(&p->authorize_url, "https://login.example.com/authorize?p=b2c_1_signin");
        CHECK_EQ_INT(oauth_authorize_url(p, "https://tb.example.com/cb", "s", NULL, NULL, &url), 0);
        CHECK_STREQ(url, "https://login.example.com/authorize?p=b2c_1_signin&response_type=code"
                         "&client_id=tb-client&redirect_uri=https%3A%2F%2Ftb.example.com%2Fcb&state=s");

        set_str(&p->authorize_url, "https://login.example.com/authorize?");
        CHECK_EQ_INT(oauth_authorize_url(p, "https://tb.example.com/cb", "s", NULL, NULL, &url2), 0);
        CHECK(url2 && startswith(url2, "https://login.example.com/authorize?response_type=code&client_id="));
}

TEST(authorize_url_needs_endpoint) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        char *url = NULL;

        set_str(&p->authorize_url, NULL);
        CHECK_EQ_INT(oauth_authorize_url(p, "https://tb.example.com/cb", "s", NULL, NULL, &url), -EINVAL);
        CHECK(!url);
}

/* ---- token requests (built, not sent) --------------------------------- */

static bool has_header(const HttpRequest *req, const char *line) {
        for (const struct curl_slist *l = req->headers; l; l = l->next)
                if (streq(l->data, line))
                        return true;
        return false;
}

static bool has_header_prefix(const HttpRequest *req, const char *prefix) {
        for (const struct curl_slist *l = req->headers; l; l = l->next)
                if (startswith(l->data, prefix))
                        return true;
        return false;
}

TEST(token_request_basic_auth) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        const Param params[] = {
                { "grant_type", "authorization_code" },
                { "code", "SplxlOBeZQQYbYS6WxSbIA" },
                { "redirect_uri", "https://client.example.com/cb" },
                { "code_verifier", NULL },            /* skipped */
        };

        /* RFC 6749 section 4.1.3's example client */
        set_str(&p->client_id, "s6BhdRkqt3");
        set_str(&p->client_secret, "7Fjfp0ZBr1KtDRbnfVdmIw");
        CHECK_EQ_INT(oauth_token_request(NULL, p, params, ELEMENTSOF(params), &req), 0);
        if (!req)
                return;
        CHECK_STREQ(req->post_data, "grant_type=authorization_code&code=SplxlOBeZQQYbYS6WxSbIA"
                                    "&redirect_uri=https%3A%2F%2Fclient.example.com%2Fcb");
        CHECK_EQ_INT(req->post_len, strlen(req->post_data));
        CHECK(has_header(req, "Authorization: Basic czZCaGRSa3F0Mzo3RmpmcDBaQnIxS3REUmJuZlZkbUl3"));
        CHECK(has_header(req, "Content-Type: application/x-www-form-urlencoded"));
        CHECK(has_header(req, "Accept: application/json"));
        CHECK(!strstr(req->post_data, "client_secret"));
}

TEST(token_request_basic_auth_escapes) {
        static const char pair[] = "id%3Awith%20colon:p%40ss%3Aw%2Frd";
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        const Param params[] = { { "grant_type", "client_credentials" } };
        _cleanup_free_ char *want = NULL, *b64 = NULL;

        /* section 2.3.1: id and secret are form-encoded before Basic */
        set_str(&p->client_id, "id:with colon");
        set_str(&p->client_secret, "p@ss:w/rd");
        CHECK_EQ_INT(b64_encode(pair, strlen(pair), &b64), 0);
        CHECK(asprintf(&want, "Authorization: Basic %s", b64) >= 0);
        CHECK_EQ_INT(oauth_token_request(NULL, p, params, ELEMENTSOF(params), &req), 0);
        CHECK(req && has_header(req, want));
}

TEST(token_request_post_auth) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        const Param params[] = {
                { "grant_type", "refresh_token" },
                { "refresh_token", "tGzv3JOkF0XG5Qx2TlKWIA" },
        };

        p->client_auth = CLIENT_AUTH_POST;
        set_str(&p->client_secret, "s&cret=1");
        CHECK_EQ_INT(oauth_token_request(NULL, p, params, ELEMENTSOF(params), &req), 0);
        if (!req)
                return;
        CHECK_STREQ(req->post_data, "grant_type=refresh_token&refresh_token=tGzv3JOkF0XG5Qx2TlKWIA"
                                    "&client_id=tb-client&client_secret=s%26cret%3D1");
        CHECK(!has_header_prefix(req, "Authorization:"));
}

TEST(token_request_public_client) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        const Param params[] = { { "grant_type", "authorization_code" }, { "code", "c" } };

        p->client_auth = CLIENT_AUTH_NONE;
        set_str(&p->client_secret, NULL);
        CHECK_EQ_INT(oauth_token_request(NULL, p, params, ELEMENTSOF(params), &req), 0);
        if (!req)
                return;
        CHECK_STREQ(req->post_data, "grant_type=authorization_code&code=c&client_id=tb-client");
        CHECK(!has_header_prefix(req, "Authorization:"));
}

TEST(revoke_request) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        HttpRequest *none = NULL;

        CHECK_EQ_INT(oauth_revoke_request(NULL, p, "tok", "refresh_token", NULL, &none), -EOPNOTSUPP);
        CHECK(!none);

        set_str(&p->revoke_url, "https://auth.example.com/revoke");
        CHECK_EQ_INT(oauth_revoke_request(NULL, p, "45ghiukldjahdnhzdauz/", "refresh_token", NULL, &req), 0);
        CHECK(req && streq(req->post_data, "token=45ghiukldjahdnhzdauz%2F&token_type_hint=refresh_token"));

        /* A plain URL, never a template (discovery may have filled it). */
        {
                _cleanup_(http_request_freep) HttpRequest *lit = NULL;

                set_str(&p->client_secret, "s3cret");
                set_str(&p->revoke_url, "https://auth.example.com/revoke?x=${client_secret}");
                CHECK_EQ_INT(oauth_revoke_request(NULL, p, "tok", "refresh_token", NULL, &lit), 0);
                char *u = NULL;
                CHECK(lit);
                if (lit)
                        (void) curl_easy_getinfo(lit->easy, CURLINFO_EFFECTIVE_URL, &u);
                CHECK_STREQ(u, "https://auth.example.com/revoke?x=${client_secret}");
        }
}

/* ---- token responses: success ----------------------------------------- */

TEST(response_normal) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *err = NULL;
        TokenSet t;

        CHECK_EQ_INT(parse(p, 200,
                           "{\"access_token\":\"2YotnFZFEjr1zCsicMWpAA\",\"token_type\":\"Bearer\","
                           "\"expires_in\":3600,\"refresh_token\":\"tGzv3JOkF0XG5Qx2TlKWIA\","
                           "\"scope\":\"openid email\",\"id_token\":\"x.y.z\",\"example_parameter\":\"v\"}",
                           &t, &err),
                     OAUTH_OK);
        CHECK(!err);
        CHECK_STREQ(t.access_token, "2YotnFZFEjr1zCsicMWpAA");
        CHECK_STREQ(t.refresh_token, "tGzv3JOkF0XG5Qx2TlKWIA");
        CHECK_STREQ(t.token_type, "Bearer");
        CHECK_STREQ(t.scope, "openid email");
        CHECK_STREQ(t.id_token, "x.y.z");
        /* counted from when the request was sent */
        CHECK(t.expires_at == SENT_AT + 3600 * USEC_PER_SEC);
        token_set_done(&t);
        CHECK(token_set_empty(&t));
}

TEST(response_status_2xx) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *err = NULL;
        TokenSet t;

        CHECK_EQ_INT(parse(p, 201, "{\"access_token\":\"a\",\"expires_in\":60}", &t, &err), OAUTH_OK);
        CHECK(t.expires_at == SENT_AT + 60 * USEC_PER_SEC);
        token_set_done(&t);
}

TEST(response_expires_in_forms) {
        static const struct { const char *v; usec_t u; } v[] = {
                { "\"3600\"", 3600 * USEC_PER_SEC },          /* a string, as some providers send */
                { "\" 3600 \"", 3600 * USEC_PER_SEC },
                { "\"3600.0\"", 3600 * USEC_PER_SEC },
                { "3599.5", 3599500 * USEC_PER_MSEC },
                { "1", USEC_PER_SEC },
                { "315360000", UINT64_C(315360000) * USEC_PER_SEC },   /* 10 years: the limit */
        };
        _cleanup_(provider_freep) Provider *p = provider_new();

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *body = NULL, *err = NULL;
                TokenSet t;

                CHECK(asprintf(&body, "{\"access_token\":\"a\",\"expires_in\":%s}", v[i].v) >= 0);
                CHECK_EQ_INT(parse(p, 200, body, &t, &err), OAUTH_OK);
                if (t.expires_at != SENT_AT + v[i].u)
                        fprintf(stderr, "  expires_in %s -> %" PRIu64 "\n", v[i].v, t.expires_at - SENT_AT);
                CHECK(t.expires_at == SENT_AT + v[i].u);
                token_set_done(&t);
        }
}

TEST(response_expiry_from_jwt) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *jwt = make_jwt("{\"sub\":\"u\",\"exp\":1700003600}");
        _cleanup_free_ char *body = NULL, *body2 = NULL, *err = NULL;
        TokenSet t;

        CHECK(jwt);
        /* no expires_in: the access token's own exp */
        CHECK(asprintf(&body, "{\"access_token\":\"%s\",\"token_type\":\"bearer\"}", jwt) >= 0);
        p->default_lifetime = 5 * USEC_PER_MINUTE;   /* the JWT wins over the default */
        CHECK_EQ_INT(parse(p, 200, body, &t, &err), OAUTH_OK);
        CHECK(t.expires_at == UINT64_C(1700003600) * USEC_PER_SEC);
        CHECK_STREQ(t.access_token, jwt);
        token_set_done(&t);

        /* expires_in, when present, wins over the JWT */
        CHECK(asprintf(&body2, "{\"access_token\":\"%s\",\"expires_in\":60}", jwt) >= 0);
        CHECK_EQ_INT(parse(p, 200, body2, &t, &err), OAUTH_OK);
        CHECK(t.expires_at == SENT_AT + 60 * USEC_PER_SEC);
        token_set_done(&t);
}

TEST(response_default_lifetime) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *jwt = make_jwt("{\"sub\":\"no-exp\"}"), *body = NULL, *err = NULL;
        TokenSet t;

        p->default_lifetime = 2 * USEC_PER_HOUR;
        CHECK_EQ_INT(parse(p, 200, "{\"access_token\":\"opaque\"}", &t, &err), OAUTH_OK);
        CHECK(t.expires_at == SENT_AT + 2 * USEC_PER_HOUR);
        token_set_done(&t);

        /* a JWT without exp: the default, too */
        CHECK(asprintf(&body, "{\"access_token\":\"%s\"}", jwt) >= 0);
        CHECK_EQ_INT(parse(p, 200, body, &t, &err), OAUTH_OK);
        CHECK(t.expires_at == SENT_AT + 2 * USEC_PER_HOUR);
        token_set_done(&t);
}

TEST(response_never_expires) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *err = NULL;
        TokenSet t;

        /* GitHub OAuth apps: no expires_in, opaque token, no default */
        CHECK_EQ_INT(parse(p, 200, "{\"access_token\":\"gho_16C7e42F292c6912E7710c838347Ae178B4a\","
                                   "\"scope\":\"repo,gist\",\"token_type\":\"bearer\"}",
                           &t, &err),
                     OAUTH_OK);
        CHECK(t.expires_at == 0);
        CHECK(!t.refresh_token);
        CHECK_STREQ(t.scope, "repo,gist");
        token_set_done(&t);
}

TEST(response_token_type) {
        static const struct { const char *json, *want; } v[] = {
                { ",\"token_type\":\"bearer\"", "Bearer" },
                { ",\"token_type\":\"BEARER\"", "Bearer" },
                { ",\"token_type\":\"Bearer\"", "Bearer" },
                { ",\"token_type\":\"bEaReR\"", "Bearer" },
                { ",\"token_type\":\"MAC\"", "MAC" },
                { ",\"token_type\":\"DPoP\"", "DPoP" },
                { ",\"token_type\":\"bearer2\"", "bearer2" },
                { ",\"token_type\":\"\"", "Bearer" },
                { ",\"token_type\":42", "Bearer" },
                { "", "Bearer" },
        };
        _cleanup_(provider_freep) Provider *p = provider_new();

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *body = NULL, *err = NULL;
                TokenSet t;

                CHECK(asprintf(&body, "{\"access_token\":\"a\"%s}", v[i].json) >= 0);
                CHECK_EQ_INT(parse(p, 200, body, &t, &err), OAUTH_OK);
                CHECK_STREQ(t.token_type, v[i].want);
                token_set_done(&t);
        }
}

TEST(response_optional_fields_absent) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *err = NULL;
        TokenSet t;

        CHECK_EQ_INT(parse(p, 200, "{\"access_token\":\"a\",\"expires_in\":10}", &t, &err), OAUTH_OK);
        CHECK(!t.refresh_token);
        CHECK(!t.scope);
        CHECK(!t.id_token);
        token_set_done(&t);

        /* an empty refresh_token is none; a non-string one is ignored */
        CHECK_EQ_INT(parse(p, 200, "{\"access_token\":\"a\",\"refresh_token\":\"\"}", &t, &err), OAUTH_OK);
        CHECK(!t.refresh_token);
        token_set_done(&t);
        CHECK_EQ_INT(parse(p, 200, "{\"access_token\":\"a\",\"refresh_token\":123,\"scope\":null}", &t, &err),
                     OAUTH_OK);
        CHECK(!t.refresh_token);
        CHECK(!t.scope);
        token_set_done(&t);
}

TEST(response_custom_pointers) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *err = NULL;
        TokenSet t;

        set_str(&p->ptr_access_token, "/data/token");
        set_str(&p->ptr_refresh_token, "/data/refresh");
        set_str(&p->ptr_expires_in, "/data/ttl");
        set_str(&p->ptr_token_type, "/data/kind");
        set_str(&p->ptr_scope, "/data/grants/0");
        set_str(&p->ptr_error, "/errors/0/code");
        set_str(&p->ptr_error_description, "/errors/0/message");

        CHECK_EQ_INT(parse(p, 200, "{\"data\":{\"token\":\"AT\",\"refresh\":\"RT\",\"ttl\":\"120\","
                                   "\"kind\":\"bearer\",\"grants\":[\"all\"]}}",
                           &t, &err),
                     OAUTH_OK);
        CHECK_STREQ(t.access_token, "AT");
        CHECK_STREQ(t.refresh_token, "RT");
        CHECK_STREQ(t.token_type, "Bearer");
        CHECK_STREQ(t.scope, "all");
        CHECK(t.expires_at == SENT_AT + 120 * USEC_PER_SEC);
        token_set_done(&t);

        /* the standard places are not looked at */
        CHECK_EQ_INT(parse(p, 200, "{\"access_token\":\"AT\",\"expires_in\":60}", &t, &err), OAUTH_TRANSIENT);
        CHECK_STREQ(err, "token response has no access_token");
        CHECK(token_set_empty(&t));
        err = mfree(err);

        CHECK_EQ_INT(parse(p, 400, "{\"errors\":[{\"code\":\"invalid_grant\",\"message\":\"expired\"}]}", &t, &err),
                     OAUTH_PERMANENT);
        CHECK_STREQ(err, "HTTP 400: invalid_grant: expired");
}

/* The same through provider_load(), as the daemon configures it. */
static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) st;
        (void) ftw;
        return flag == FTW_DP ? rmdir(path) : unlink(path);
}

TEST(response_custom_pointers_from_file) {
        static const char text[] =
                "[provider]\n"
                "grant = client_credentials\n"
                "token_url = https://api.example.com/oauth\n"
                "client_id = x\n"
                "client_secret = y\n"
                "access_token_pointer = /data/token\n"
                "expires_in_pointer = /data/expires~1in\n"
                "error_pointer = /status\n"
                "default_lifetime = 15min\n";
        char dir[] = "/tmp/tb-test-oauth-XXXXXX";
        _cleanup_free_ char *path = NULL, *err = NULL;
        _cleanup_(provider_freep) Provider *p = NULL;
        ConfError cerr = {};
        TokenSet t;
        FILE *f;

        CHECK(mkdtemp(dir));
        CHECK(asprintf(&path, "%s/custom.conf", dir) >= 0);
        f = fopen(path, "we");
        CHECK(f);
        if (!f)
                return;
        fputs(text, f);
        fclose(f);
        CHECK_EQ_INT(provider_load(path, &p, &cerr), 0);
        (void) nftw(dir, rm_one, 4, FTW_DEPTH | FTW_PHYS);
        if (!p) {
                fprintf(stderr, "  %s\n", cerr.msg);
                return;
        }

        CHECK_EQ_INT(parse(p, 200, "{\"data\":{\"token\":\"AT\",\"expires/in\":30}}", &t, &err), OAUTH_OK);
        CHECK_STREQ(t.access_token, "AT");
        CHECK_STREQ(t.token_type, "Bearer");
        CHECK(t.expires_at == SENT_AT + 30 * USEC_PER_SEC);
        token_set_done(&t);

        CHECK_EQ_INT(parse(p, 200, "{\"data\":{\"token\":\"AT\"}}", &t, &err), OAUTH_OK);
        CHECK(t.expires_at == SENT_AT + 15 * USEC_PER_MINUTE);
        token_set_done(&t);

        CHECK_EQ_INT(parse(p, 401, "{\"status\":\"invalid_client\"}", &t, &err), OAUTH_PERMANENT);
        CHECK_STREQ(err, "configuration error: HTTP 401: invalid_client");
}

/* ---- token responses: failures ---------------------------------------- */

TEST(response_error_classes) {
        static const struct {
                long status;
                const char *body;
                OAuthOutcome o;
                const char *err;
        } v[] = {
                { 400, "{\"error\":\"invalid_grant\",\"error_description\":\"Token has been expired or revoked.\"}",
                  OAUTH_PERMANENT, "HTTP 400: invalid_grant: Token has been expired or revoked." },
                { 401, "{\"error\":\"invalid_client\"}", OAUTH_PERMANENT, "configuration error: HTTP 401: invalid_client" },
                { 400, "{\"error\":\"invalid_client\"}", OAUTH_PERMANENT, "configuration error: HTTP 400: invalid_client" },
                { 400, "{\"error\":\"unauthorized_client\"}", OAUTH_PERMANENT, "configuration error: HTTP 400: unauthorized_client" },
                { 400, "{\"error\":\"unsupported_grant_type\"}", OAUTH_PERMANENT,
                  "configuration error: HTTP 400: unsupported_grant_type" },
                { 400, "{\"error\":\"invalid_scope\"}", OAUTH_PERMANENT, "configuration error: HTTP 400: invalid_scope" },
                { 403, "{\"error\":\"access_denied\"}", OAUTH_PERMANENT, "HTTP 403: access_denied" },
                /* not about the grant: try again later */
                { 400, "{\"error\":\"invalid_request\"}", OAUTH_TRANSIENT, "HTTP 400: invalid_request" },
                { 400, "{\"error\":\"something_new\",\"error_description\":\"?\"}", OAUTH_TRANSIENT,
                  "HTTP 400: something_new: ?" },
                { 400, "{\"error\":42}", OAUTH_TRANSIENT, "HTTP 400" },
                { 400, "{\"error_description\":\"only a description\"}", OAUTH_TRANSIENT,
                  "HTTP 400: only a description" },
                { 400, "", OAUTH_TRANSIENT, "HTTP 400" },
                { 400, "[\"invalid_grant\"]", OAUTH_TRANSIENT, "HTTP 400" },
                { 401, "<html>Unauthorized</html>", OAUTH_TRANSIENT, "HTTP 401" },
                /* server side and rate limits: transient whatever the body says */
                { 500, "{\"error\":\"server_error\"}", OAUTH_TRANSIENT, "HTTP 500: server_error" },
                { 503, "<html><body>Service Unavailable</body></html>", OAUTH_TRANSIENT, "HTTP 503" },
                { 503, "{\"error\":\"invalid_grant\"}", OAUTH_TRANSIENT, "HTTP 503: invalid_grant" },
                { 502, NULL, OAUTH_TRANSIENT, "HTTP 502" },
                { 429, "{\"error\":\"invalid_grant\"}", OAUTH_TRANSIENT, "HTTP 429: invalid_grant" },
                { 429, "Too Many Requests", OAUTH_TRANSIENT, "HTTP 429" },
                { 408, "", OAUTH_TRANSIENT, "HTTP 408" },
                /* not an answer at all */
                { 302, "", OAUTH_TRANSIENT, "HTTP 302" },
                { 0, NULL, OAUTH_TRANSIENT, "HTTP 0" },
        };
        _cleanup_(provider_freep) Provider *p = provider_new();

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *err = NULL;
                TokenSet t;
                OAuthOutcome o = parse(p, v[i].status, v[i].body, &t, &err);

                if (o != v[i].o)
                        fprintf(stderr, "  %ld %s -> %d\n", v[i].status, v[i].body ?: "(null)", o);
                CHECK_EQ_INT(o, v[i].o);
                CHECK_STREQ(err, v[i].err);
                CHECK(token_set_empty(&t));
        }
}

TEST(response_bad_success_bodies) {
        static const struct { const char *body, *err; } v[] = {
                { "<!DOCTYPE html><html><body>Login</body></html>", "token response is not JSON (an HTML page?)" },
                { "", "token response is not a JSON object" },
                { "[]", "token response is not a JSON object" },
                { "[{\"access_token\":\"a\"}]", "token response is not a JSON object" },
                { "\"access_token\"", "token response is not a JSON object" },
                { "{\"access_token\":\"a\"", "token response is not a JSON object" },          /* truncated */
                { "{\"access_token\":\"a\",\"access_token\":\"b\"}", "token response is not a JSON object" },
                { "access_token=a&token_type=bearer", "token response is not a JSON object" }, /* form */
                { "{}", "token response has no access_token" },
                { "{\"access_token\":\"\"}", "token response has no access_token" },
                { "{\"access_token\":null}", "token response has no access_token" },
                { "{\"access_token\":12345}", "token response has no access_token" },
                { "{\"access_token\":{\"value\":\"a\"}}", "token response has no access_token" },
                { "{\"access_token\":\"a\",\"expires_in\":0}", "token response has an invalid expires_in" },
                { "{\"access_token\":\"a\",\"expires_in\":-1}", "token response has an invalid expires_in" },
                { "{\"access_token\":\"a\",\"expires_in\":-3600}", "token response has an invalid expires_in" },
                { "{\"access_token\":\"a\",\"expires_in\":1e12}", "token response has an invalid expires_in" },
                { "{\"access_token\":\"a\",\"expires_in\":315360001}", "token response has an invalid expires_in" },
                { "{\"access_token\":\"a\",\"expires_in\":\"1e12\"}", "token response has an invalid expires_in" },
                { "{\"access_token\":\"a\",\"expires_in\":\"0\"}", "token response has an invalid expires_in" },
                { "{\"access_token\":\"a\",\"expires_in\":\"soon\"}", "token response has an invalid expires_in" },
                { "{\"access_token\":\"a\",\"expires_in\":\"\"}", "token response has an invalid expires_in" },
                { "{\"access_token\":\"a\",\"expires_in\":true}", "token response has an invalid expires_in" },
                { "{\"access_token\":\"a\",\"expires_in\":[3600]}", "token response has an invalid expires_in" },
        };
        _cleanup_(provider_freep) Provider *p = provider_new();

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *err = NULL;
                TokenSet t;
                OAuthOutcome o = parse(p, 200, v[i].body, &t, &err);

                if (o != OAUTH_TRANSIENT)
                        fprintf(stderr, "  200 %s -> %d\n", v[i].body, o);
                CHECK_EQ_INT(o, OAUTH_TRANSIENT);
                CHECK_STREQ(err, v[i].err);
                CHECK(token_set_empty(&t));
        }
}

TEST(response_errors_never_leak_tokens) {
        static const struct { long status; const char *body; } v[] = {
                { 200, "{\"access_token\":\"" SECRET_AT "\",\"refresh_token\":\"" SECRET_RT "\",\"expires_in\":-5}" },
                { 200, "{\"access_token\":\"" SECRET_AT "\",\"refresh_token\":\"" SECRET_RT "\",\"expires_in\":1e12}" },
                { 200, "{\"access_token\":\"" SECRET_AT "\",\"refresh_token\":\"" SECRET_RT
                       "\",\"expires_in\":\"" SECRET_AT "\"}" },
                { 200, "{\"access_token\":\"" SECRET_AT "\",\"access_token\":\"" SECRET_RT "\"}" },
                { 200, "<html>" SECRET_AT " " SECRET_RT "</html>" },
                { 200, "[\"" SECRET_AT "\",\"" SECRET_RT "\"]" },
                { 200, "{\"refresh_token\":\"" SECRET_RT "\",\"token\":\"" SECRET_AT "\"}" },
                { 200, "{\"access_token\":{\"v\":\"" SECRET_AT "\"},\"refresh_token\":\"" SECRET_RT "\"}" },
                { 400, "{\"error\":\"invalid_grant\",\"access_token\":\"" SECRET_AT "\",\"refresh_token\":\""
                       SECRET_RT "\"}" },
                { 401, "{\"access_token\":\"" SECRET_AT "\",\"refresh_token\":\"" SECRET_RT "\"}" },
                { 500, "<pre>refresh_token=" SECRET_RT "&access_token=" SECRET_AT "</pre>" },
                { 503, "{\"access_token\":\"" SECRET_AT "\",\"refresh_token\":\"" SECRET_RT "\",\"expires_in\":60}" },
        };
        _cleanup_(provider_freep) Provider *p = provider_new();

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *err = NULL;
                TokenSet t;

                CHECK(parse(p, v[i].status, v[i].body, &t, &err) != OAUTH_OK);
                CHECK(err);
                if (!err)
                        continue;
                if (strstr(err, "SECRET"))
                        fprintf(stderr, "  leaked: %s\n", err);
                CHECK(!strstr(err, SECRET_AT));
                CHECK(!strstr(err, SECRET_RT));
                CHECK(token_set_empty(&t));
        }
}

TEST(response_error_redacts_the_url_query_before_the_cut) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        char url[] = "https://p.example/token?grant_type=refresh_token&refresh_token=rt-Zq%2Bw9x8y7&client_secret=cs-abcdef";
        _cleanup_free_ char *body = NULL, *err = NULL, *err2 = NULL;
        HttpRequest req = { .status = 400, .url = url };
        TokenSet t = {};

        /* the decoded value, the encoded one, and a quote of the first straddling the cut at 200 */
        CHECK(asprintf(&body, "{\"error\":\"invalid_grant\",\"error_description\":\"%0194drt-Zq+w9x8y7 %s cs-abcdef\"}", 0,
                       url) >= 0);
        req.body = body;
        req.body_len = strlen(body);
        CHECK_EQ_INT(oauth_token_response(p, &req, &t, &err), OAUTH_PERMANENT);
        CHECK(err && strstr(err, "[redac"));   /* cut after redaction */
        CHECK(err && !strstr(err, "rt-Zq"));
        CHECK(err && !strstr(err, "cs-abcdef"));
        CHECK(token_set_empty(&t));
        /* the same for a device authorization */
        {
                DeviceAuth d = {};

                CHECK(oauth_device_response(p, &req, &d, &err2) < 0);
                CHECK(err2 && !strstr(err2, "rt-Zq") && !strstr(err2, "cs-abcdef"));
        }
}

TEST(response_error_text_sanitized) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *err = NULL, *body = NULL;
        char code[201], desc[401];
        TokenSet t;

        /* control characters become '?' so a log line stays one line */
        CHECK_EQ_INT(parse(p, 400, "{\"error\":\"bad\\u0007\",\"error_description\":\"line1\\nline2\\u001b[31m\"}",
                           &t, &err),
                     OAUTH_TRANSIENT);
        CHECK_STREQ(err, "HTTP 400: bad?: line1?line2?[31m");
        err = mfree(err);

        /* and both parts are bounded */
        memset(code, 'c', sizeof code - 1);
        code[sizeof code - 1] = 0;
        memset(desc, 'd', sizeof desc - 1);
        desc[sizeof desc - 1] = 0;
        CHECK(asprintf(&body, "{\"error\":\"%s\",\"error_description\":\"%s\"}", code, desc) >= 0);
        CHECK_EQ_INT(parse(p, 400, body, &t, &err), OAUTH_TRANSIENT);
        CHECK(err && strlen(err) == strlen("HTTP 400: ") + 64 + 2 + 200);
}

TEST(response_transfer_failure) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *err = NULL, *err2 = NULL, *err3 = NULL;
        HttpRequest req = { .status = 200, .result = CURLE_COULDNT_CONNECT };
        char body[] = "{\"access_token\":\"" SECRET_AT "\",\"expires_in\":60}";
        TokenSet t = {};

        CHECK_EQ_INT(oauth_token_response(p, &req, &t, &err), OAUTH_TRANSIENT);
        CHECK_STREQ(err, curl_easy_strerror(CURLE_COULDNT_CONNECT));
        CHECK(token_set_empty(&t));

        req = (HttpRequest) { .status = 200, .too_large = true, .body = body, .body_len = strlen(body) };
        CHECK_EQ_INT(oauth_token_response(p, &req, &t, &err2), OAUTH_TRANSIENT);
        CHECK_STREQ(err2, "response larger than 1 MiB");

        req = (HttpRequest) { .status = 200, .body = body, .body_len = strlen(body), .sent_at = SENT_AT };
        CHECK_EQ_INT(oauth_token_response(p, &req, &t, &err3), OAUTH_OK);
        CHECK(!err3);
        CHECK_STREQ(t.access_token, SECRET_AT);
        CHECK(t.expires_at == SENT_AT + 60 * USEC_PER_SEC);
        token_set_done(&t);
}

TEST(response_length_not_nul) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        static const char body[] = "{\"access_token\":\"a\",\"expires_in\":60}GARBAGE";
        _cleanup_free_ char *err = NULL;
        TokenSet t = {};

        /* only len bytes are the answer */
        CHECK_EQ_INT(oauth_parse_token_response(p, 200, body, strlen(body) - 7, SENT_AT, &t, &err), OAUTH_OK);
        CHECK_STREQ(t.access_token, "a");
        token_set_done(&t);
}

/* ---- identity and usage ----------------------------------------------- */

TEST(identity_from_id_token) {
        static const struct { const char *payload; int r; const char *id; } v[] = {
                { "{\"sub\":\"248289761001\",\"email\":\"janedoe@example.com\",\"preferred_username\":\"j.doe\"}", 0,
                  "janedoe@example.com" },
                { "{\"sub\":\"248289761001\",\"preferred_username\":\"j.doe\"}", 0, "j.doe" },
                { "{\"sub\":\"248289761001\"}", 0, "248289761001" },
                { "{\"sub\":\"248289761001\",\"email\":\"\"}", 0, "248289761001" },
                { "{\"iss\":\"https://server.example.com\"}", -ENOENT, NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *jwt = make_jwt(v[i].payload), *id = NULL;

                CHECK(jwt);
                CHECK_EQ_INT(oauth_identity_from_id_token(jwt, &id), v[i].r);
                if (v[i].id)
                        CHECK_STREQ(id, v[i].id);
                else
                        CHECK(!id);
        }
}

TEST(identity_from_bad_id_token) {
        char *id = NULL;

        CHECK_EQ_INT(oauth_identity_from_id_token("not-a-jwt", &id), -EINVAL);
        CHECK_EQ_INT(oauth_identity_from_id_token("", &id), -EINVAL);
        CHECK_EQ_INT(oauth_identity_from_id_token("a.b.c", &id), -EINVAL);
        CHECK(!id);
}

static void free_lines(char **lines, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(lines[i]);
        free(lines);
}

TEST(usage_default_header) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        char **lines = NULL, *query = (char *) "x";
        size_t n = 0;

        CHECK_EQ_INT(oauth_usage_headers(p, "2YotnFZFEjr1zCsicMWpAA", "Bearer", &lines, &n, &query), 0);
        CHECK_EQ_INT(n, 1);
        if (n == 1)
                CHECK_STREQ(lines[0], "Authorization: Bearer 2YotnFZFEjr1zCsicMWpAA");
        CHECK(lines && !lines[n]);   /* NULL-terminated */
        CHECK(!query);
        free_lines(lines, n);
}

TEST(usage_headers_and_query) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        char **lines = NULL, *query = NULL;
        size_t n = 0;

        set_str(&p->usage_header[0], "Authorization: ${token_type} ${access_token}");
        p->usage_header[1] = strdup("X-Token-Type: ${token_type}");
        p->usage_header[2] = strdup("X-Price: $$1");
        p->n_usage_header = 3;
        set_str(&p->usage_query, "access_token=${access_token}");

        /* a token that looks like a placeholder is not expanded again */
        CHECK_EQ_INT(oauth_usage_headers(p, "tok${token_type}$$", "MAC", &lines, &n, &query), 0);
        CHECK_EQ_INT(n, 3);
        if (n == 3) {
                CHECK_STREQ(lines[0], "Authorization: MAC tok${token_type}$$");
                CHECK_STREQ(lines[1], "X-Token-Type: MAC");
                CHECK_STREQ(lines[2], "X-Price: $1");
        }
        CHECK_STREQ(query, "access_token=tok${token_type}$$");
        free_lines(lines, n);
        free(query);

        /* no token type given: Bearer */
        CHECK_EQ_INT(oauth_usage_headers(p, "t", NULL, &lines, &n, &query), 0);
        if (n == 3)
                CHECK_STREQ(lines[0], "Authorization: Bearer t");
        free_lines(lines, n);
        free(query);
}

TEST(usage_query_only) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        char **lines = NULL, *query = NULL;
        size_t n = 99;

        p->usage_header[0] = mfree(p->usage_header[0]);
        p->n_usage_header = 0;
        set_str(&p->usage_query, "key=${access_token}");
        CHECK_EQ_INT(oauth_usage_headers(p, "AIzaSy", "Bearer", &lines, &n, &query), 0);
        CHECK_EQ_INT(n, 0);
        CHECK(lines && !lines[0]);
        CHECK_STREQ(query, "key=AIzaSy");
        free_lines(lines, n);
        free(query);
}

TEST(usage_unknown_placeholder) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        char **lines = NULL, *query = NULL;
        size_t n = 0;

        /* provider_load() refuses these; a hand-made Provider fails cleanly */
        p->usage_header[1] = strdup("X-Bad: ${refresh_token}");
        p->n_usage_header = 2;
        CHECK_EQ_INT(oauth_usage_headers(p, "t", "Bearer", &lines, &n, &query), -ENOKEY);
        CHECK(!lines);
}

/* ---- request templates -------------------------------------------------- */

static int add_template(TemplateList *l, const char *s) {
        char **a = realloc(l->items, sizeof(char *) * (l->n + 1));

        if (!a)
                return -ENOMEM;
        l->items = a;
        l->items[l->n] = strdup(s);
        return l->items[l->n++] ? 0 : -ENOMEM;
}

TEST(provider_request_json_custom) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        const Param defaults[] = { { "grant_type", "authorization_code" }, { "code", "c0de" } };
        const RequestVars v = { .code = "c0de", .redirect_uri = "https://tb.example.com/cb", .code_verifier = "vv" };

        p->client_auth = CLIENT_AUTH_HEADERS;
        p->token_body = BODY_JSON;
        CHECK_EQ_INT(add_template(&p->token_header, "X-Key: ${client_id}:${client_secret}"), 0);
        CHECK_EQ_INT(add_template(&p->token_param, "type=authorization_code"), 0);
        CHECK_EQ_INT(add_template(&p->token_param, "auth_code=${code}"), 0);
        CHECK_EQ_INT(add_template(&p->token_param, "cb=${redirect_uri}"), 0);
        CHECK_EQ_INT(add_template(&p->token_param, "unset=${refresh_token}"), 0);
        CHECK_EQ_INT(oauth_provider_request(NULL, p, REQUEST_TOKEN, defaults, ELEMENTSOF(defaults), &v, &req), 0);
        if (!req)
                return;
        /* the list replaces the defaults; no client auth beyond the header */
        CHECK_STREQ(req->post_data,
                    "{\"type\":\"authorization_code\",\"auth_code\":\"c0de\",\"cb\":\"https://tb.example.com/cb\",\"unset\":\"\"}");
        CHECK(has_header(req, "Content-Type: application/json"));
        CHECK(has_header(req, "X-Key: tb-client:tb-secret"));
        CHECK(!has_header_prefix(req, "Authorization:"));
}

TEST(provider_request_refresh_query_put) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        const Param defaults[] = { { "grant_type", "refresh_token" }, { "refresh_token", "r t/1" } };
        char *url = NULL;

        set_str(&p->refresh_url, "https://auth.example.com/refresh/${client_id}?x=1");
        set_str(&p->refresh_method, "PUT");
        p->refresh_body = BODY_QUERY;
        p->client_auth = CLIENT_AUTH_POST;
        CHECK_EQ_INT(oauth_provider_request(NULL, p, REQUEST_REFRESH, defaults, ELEMENTSOF(defaults), NULL, &req), 0);
        if (!req)
                return;
        CHECK(curl_easy_getinfo(req->easy, CURLINFO_EFFECTIVE_URL, &url) == CURLE_OK);
        CHECK_STREQ(url, "https://auth.example.com/refresh/tb-client?x=1&grant_type=refresh_token"
                         "&refresh_token=r%20t%2F1&client_id=tb-client&client_secret=tb-secret");
        CHECK_STREQ(req->post_data, "");
}

TEST(provider_request_header_injection_refused) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        HttpRequest *req = NULL;
        const RequestVars v = { .username = "bob\r\nX-Evil: 1" };

        CHECK_EQ_INT(add_template(&p->token_header, "X-User: ${username}"), 0);
        CHECK_EQ_INT(oauth_provider_request(NULL, p, REQUEST_TOKEN, NULL, 0, &v, &req), -EINVAL);
        CHECK(!req);
}

TEST(authorize_param_templates_override) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *url = NULL;

        CHECK_EQ_INT(add_template(&p->authorize_param, "response_type=code id_token"), 0);
        CHECK_EQ_INT(add_template(&p->authorize_param, "app=${client_id}"), 0);
        CHECK_EQ_INT(oauth_authorize_url(p, "https://tb.example.com/cb", "st", NULL, NULL, &url), 0);
        CHECK_STREQ(url, "https://auth.example.com/authorize?response_type=code%20id_token&client_id=tb-client"
                         "&redirect_uri=https%3A%2F%2Ftb.example.com%2Fcb&state=st&app=tb-client");
}

TEST(response_expires_at_and_never) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *err = NULL, *err2 = NULL, *err3 = NULL, *err4 = NULL;
        TokenSet t;

        set_str(&p->ptr_expires_at, "/exp");
        CHECK_EQ_INT(parse(p, 200, "{\"access_token\":\"a\",\"exp\":\"2026-11-26T19:02:11Z\"}", &t, &err), OAUTH_OK);
        CHECK(t.expires_at == 1795719731ULL * USEC_PER_SEC);
        token_set_done(&t);
        CHECK_EQ_INT(parse(p, 200, "{\"access_token\":\"a\",\"exp\":\"1795719731\"}", &t, &err2), OAUTH_OK);
        CHECK(t.expires_at == 1795719731ULL * USEC_PER_SEC);
        token_set_done(&t);
        CHECK_EQ_INT(parse(p, 200, "{\"access_token\":\"a\",\"exp\":\"yesterday\"}", &t, &err3), OAUTH_TRANSIENT);
        CHECK_STREQ(err3, "token response has an invalid absolute expiry");
        p->never_expires = true;
        CHECK_EQ_INT(parse(p, 200, "{\"access_token\":\"a\",\"expires_in\":60}", &t, &err4), OAUTH_OK);
        CHECK(t.expires_at == 0);
        token_set_done(&t);
}

TEST(response_truncated_jwt) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *err = NULL, *err2 = NULL;
        TokenSet t;

        CHECK_EQ_INT(parse(p, 200, "{\"access_token\":\"eyJhbGciOiJub25lIn0.eyJleHAiOjE3\"}", &t, &err), OAUTH_TRANSIENT);
        CHECK_STREQ(err, "access token looks like a JWT but does not decode (truncated?)");
        /* with a default lifetime the expiry does not depend on it */
        p->default_lifetime = USEC_PER_HOUR;
        CHECK_EQ_INT(parse(p, 200, "{\"access_token\":\"eyJhbGciOiJub25lIn0.eyJleHAiOjE3\"}", &t, &err2), OAUTH_OK);
        token_set_done(&t);
}

TEST(response_control_characters_refused) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        static const char *const bad[] = {
                "{\"access_token\":\"at\\r\\nX-Injected: 1\",\"expires_in\":60}",
                "{\"access_token\":\"at\\u001b[2J\",\"expires_in\":60}",
                "{\"access_token\":\"at\\u007f\",\"expires_in\":60}",
                "{\"access_token\":\"at\\u00e9\",\"expires_in\":60}",
                "{\"access_token\":\"at\",\"refresh_token\":\"rt\\nX: 1\",\"expires_in\":60}",
                "{\"access_token\":\"at\",\"token_type\":\"Bearer\\r\\nX: 1\",\"expires_in\":60}",
                "{\"access_token\":\"at\",\"token_type\":\"Bearer X\",\"expires_in\":60}",
                "{\"access_token\":\"at\",\"scope\":\"a\\tb\",\"expires_in\":60}",
        };
        TokenSet t;

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                _cleanup_free_ char *err = NULL;

                CHECK_EQ_INT(parse(p, 200, bad[i], &t, &err), OAUTH_TRANSIENT);
                CHECK(err && strstr(err, "control or non-ASCII characters"));
                CHECK(!strstr(err, "Injected"));
        }
        /* RFC 6749 VSCHAR: a space and any printable ASCII in a token pass */
        {
                _cleanup_free_ char *err = NULL;

                CHECK_EQ_INT(parse(p, 200, "{\"access_token\":\"a b~!{}|\",\"token_type\":\"mac\",\"expires_in\":60}", &t, &err),
                             OAUTH_OK);
                CHECK_STREQ(t.access_token, "a b~!{}|");
                token_set_done(&t);
        }
}

TEST(usage_headers_refuse_control_characters) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        char **lines = NULL, *query = NULL;
        size_t n = 0;

        /* a token stored before tokens were checked; the default usage header */
        CHECK_EQ_INT(oauth_usage_headers(p, "at\r\nX-Injected: 1", "Bearer", &lines, &n, &query), -EBADMSG);
}

TEST(response_error_in_200) {
        _cleanup_(provider_freep) Provider *p = provider_new();
        _cleanup_free_ char *err = NULL;
        TokenSet t;

        CHECK_EQ_INT(parse(p, 200, "{\"error\":\"bad_verification_code\",\"error_description\":\"gone\"}", &t, &err),
                     OAUTH_TRANSIENT);
        CHECK_STREQ(err, "HTTP 200: bad_verification_code: gone");
}

TEST(device_response) {
        DeviceAuth d = {};
        _cleanup_free_ char *err = NULL, *err2 = NULL, *err3 = NULL;
        static const char ok[] = "{\"device_code\":\"dc\",\"user_code\":\"AB-CD\",\"verification_url\":"
                                 "\"https://x.example/d\",\"expires_in\":\"1800\"}";

        CHECK_EQ_INT(oauth_parse_device_response(200, ok, strlen(ok), &d, &err), 0);
        CHECK_STREQ(d.device_code, "dc");
        CHECK_STREQ(d.verification_uri, "https://x.example/d");
        CHECK(d.expires_in == 1800 * USEC_PER_SEC && d.interval == 5 * USEC_PER_SEC);
        device_auth_done(&d);
        CHECK_EQ_INT(oauth_parse_device_response(200, "{}", 2, &d, &err2), -EBADMSG);
        CHECK_EQ_INT(oauth_parse_device_response(400, "{\"error\":\"invalid_client\"}", 26, &d, &err3), -EPROTO);
        CHECK_STREQ(err3, "device authorization refused: HTTP 400: invalid_client");
}
