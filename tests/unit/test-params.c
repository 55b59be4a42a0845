/* SPDX-License-Identifier: MIT */
/* Connection parameters and response metadata: the value rules, URL
 * template places and expansion, params_resolve(), the metadata taken from
 * token responses, and the provider-file keys. */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/params.h"
#include "common/util.h"

#define TESTS_MAIN
#include "tests.h"

TEST(value_rules) {
        static const struct { const char *v; UrlPlace place; bool ok; } v[] = {
                { "contoso", URL_PLACE_HOST, true },
                { "dev-123.okta.com", URL_PLACE_HOST, true },
                { "a", URL_PLACE_HOST, true },
                { "", URL_PLACE_HOST, false },
                { "evil.com/x", URL_PLACE_HOST, false },
                { "evil.com#", URL_PLACE_HOST, false },
                { "evil.com?", URL_PLACE_HOST, false },
                { "user@evil.com", URL_PLACE_HOST, false },
                { "evil.com:444", URL_PLACE_HOST, false },
                { "a%2fb", URL_PLACE_HOST, false },
                { "a\\b", URL_PLACE_HOST, false },
                { ".", URL_PLACE_HOST, false },
                { "..", URL_PLACE_HOST, false },
                { "a..b", URL_PLACE_HOST, false },
                { ".a", URL_PLACE_HOST, false },
                { "a.", URL_PLACE_HOST, false },
                { "-a", URL_PLACE_HOST, false },
                { "a-", URL_PLACE_HOST, false },
                { "a-.b", URL_PLACE_HOST, false },
                { "a b", URL_PLACE_HOST, false },
                { "a\nb", URL_PLACE_HOST, false },
                { "caf\xc3\xa9", URL_PLACE_HOST, false },
                { "https://na1.salesforce.com", URL_PLACE_ORIGIN, true },
                { "https://na1.salesforce.com/", URL_PLACE_ORIGIN, true },
                { "https://h.example.com:8443", URL_PLACE_ORIGIN, true },
                { "http://127.0.0.1:8080", URL_PLACE_ORIGIN, true },
                { "http://evil.com", URL_PLACE_ORIGIN, false },
                { "https://a@evil.com", URL_PLACE_ORIGIN, false },
                { "https://h.example.com/path", URL_PLACE_ORIGIN, false },
                { "https://h.example.com?x", URL_PLACE_ORIGIN, false },
                { "https://h.example.com#x", URL_PLACE_ORIGIN, false },
                { "https://", URL_PLACE_ORIGIN, false },
                { "ftp://h.example.com", URL_PLACE_ORIGIN, false },
                { "na1.salesforce.com", URL_PLACE_ORIGIN, false },
                { "a/b c?d#e", URL_PLACE_REST, true },
                { ".", URL_PLACE_REST, false },
                { "..", URL_PLACE_REST, false },
                { "...", URL_PLACE_REST, true },
                { "a\rb", URL_PLACE_REST, false },
                { "a\x7f", URL_PLACE_REST, false },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                const char *problem = param_value_problem(v[i].v, v[i].place);
                if ((problem == NULL) != v[i].ok)
                        fprintf(stderr, "  value #%zu '%s': %s\n", i, v[i].v, problem ?: "accepted");
                CHECK((problem == NULL) == v[i].ok);
        }
}

TEST(name_rules) {
        CHECK(param_name_valid("tenant", 6));
        CHECK(param_name_valid("api_domain-2", 12));
        CHECK(!param_name_valid("", 0));
        CHECK(!param_name_valid("a.b", 3));
        CHECK(!param_name_valid("a b", 3));
        CHECK(!param_name_valid("a}", 2));
}

typedef struct Seen {
        char names[8][32];
        UrlPlace places[8];
        size_t n;
} Seen;

static void seen_fn(const char *name, size_t len, UrlPlace place, void *userdata) {
        Seen *s = userdata;

        if (s->n < 8) {
                snprintf(s->names[s->n], sizeof s->names[0], "%.*s", (int) len, name);
                s->places[s->n++] = place;
        }
}

TEST(url_template_places) {
        Seen s = {};
        const char *why = NULL;

        CHECK_EQ_INT(url_template_check("https://${param.t}.login.example.com:${param.port}/x/${param.t}?q=${code}#${y}",
                                        seen_fn, &s, &why), 0);
        CHECK_EQ_INT(s.n, 5);
        CHECK_STREQ(s.names[0], "param.t");
        CHECK_STREQ(s.names[1], "param.port");
        CHECK_EQ_INT(s.places[0], URL_PLACE_HOST);
        CHECK_EQ_INT(s.places[1], URL_PLACE_HOST);
        CHECK_EQ_INT(s.places[2], URL_PLACE_REST);
        CHECK_EQ_INT(s.places[3], URL_PLACE_REST);
        CHECK_EQ_INT(s.places[4], URL_PLACE_REST);

        s = (Seen) {};
        CHECK_EQ_INT(url_template_check("${metadata.instance_url}/services/${param.v}", seen_fn, &s, &why), 0);
        CHECK_EQ_INT(s.places[0], URL_PLACE_ORIGIN);
        CHECK_EQ_INT(s.places[1], URL_PLACE_REST);
        CHECK_EQ_INT(url_template_check("${metadata.api}", NULL, NULL, &why), 0);
        CHECK_EQ_INT(url_template_check("${metadata.api}?x=1", NULL, NULL, &why), 0);
        CHECK_EQ_INT(url_template_check("https://$$a.example.com/", NULL, NULL, &why), 0);

        /* refused */
        CHECK_EQ_INT(url_template_check("https://${client_id}.example.com/", NULL, NULL, &why), -EINVAL);
        CHECK(strstr(why, "before the path"));
        CHECK_EQ_INT(url_template_check("${metadata.a}.example.com/", NULL, NULL, &why), -EINVAL);
        CHECK(strstr(why, "whole origin"));
        CHECK_EQ_INT(url_template_check("${code}/x", NULL, NULL, &why), -EINVAL);
        CHECK_EQ_INT(url_template_check("https://a.example.com/${param.x", NULL, NULL, &why), -EINVAL);
        CHECK_EQ_INT(url_template_check("https://${param.a b}.example.com/", NULL, NULL, &why), -EINVAL);
        CHECK_EQ_INT(url_template_check("https://h/${param.t}${param.u}", NULL, NULL, &why), 0);
}

typedef struct Vals {
        const char *t, *api, *code;
} Vals;

static const char *vals_lookup(const char *name, size_t len, void *userdata) {
        Vals *v = userdata;

        if (len == 7 && memcmp(name, "param.t", 7) == 0)
                return v->t;
        if (len == 12 && memcmp(name, "metadata.api", 12) == 0)
                return v->api;
        if (len == 4 && memcmp(name, "code", 4) == 0)
                return v->code;
        return NULL;
}

static int expand(const char *tmpl, Vals v, char **ret, char **why) {
        *ret = NULL;
        return url_template_expand(tmpl, vals_lookup, &v, ret, why);
}

TEST(url_template_expansion) {
        _cleanup_free_ char *u = NULL, *why = NULL;

        CHECK_EQ_INT(expand("https://${param.t}.login.example.com/${param.t}/token?c=${code}",
                            (Vals) { .t = "contoso", .code = "a b/&" }, &u, &why), 0);
        CHECK_STREQ(u, "https://contoso.login.example.com/contoso/token?c=a%20b%2F%26");
        u = mfree(u);
        /* in the path, a '/' is encoded: no way out of the segment */
        CHECK_EQ_INT(expand("https://h.example.com/t/${param.t}/x", (Vals) { .t = "../../admin" }, &u, &why), 0);
        CHECK_STREQ(u, "https://h.example.com/t/..%2F..%2Fadmin/x");
        u = mfree(u);
        CHECK_EQ_INT(expand("https://h.example.com/t/${param.t}/x", (Vals) { .t = ".." }, &u, &why), -EINVAL);
        CHECK(why && strstr(why, "${param.t}") && strstr(why, "dot segment"));
        why = mfree(why);
        CHECK_EQ_INT(expand("https://${param.t}.example.com/", (Vals) { .t = "evil.com/x" }, &u, &why), -EINVAL);
        CHECK(why && strstr(why, "not a host name"));
        CHECK(!strstr(why, "evil"));   /* the value itself is never in the reason */
        why = mfree(why);
        CHECK_EQ_INT(expand("https://${param.t}.example.com/", (Vals) { .t = "a@b" }, &u, &why), -EINVAL);
        why = mfree(why);
        CHECK_EQ_INT(expand("https://${param.t}.example.com/", (Vals) { .t = "" }, &u, &why), -EINVAL);
        why = mfree(why);
        /* a whole origin */
        CHECK_EQ_INT(expand("${metadata.api}/v1/me", (Vals) { .api = "https://api.example.com/" }, &u, &why), 0);
        CHECK_STREQ(u, "https://api.example.com/v1/me");
        u = mfree(u);
        CHECK_EQ_INT(expand("${metadata.api}/v1/me", (Vals) { .api = "http://evil.com" }, &u, &why), -EINVAL);
        why = mfree(why);
        CHECK_EQ_INT(expand("${metadata.api}/v1/me", (Vals) { .api = "https://a.example.com/x?" }, &u, &why), -EINVAL);
        why = mfree(why);
        CHECK_EQ_INT(expand("${metadata.api}/v1/me", (Vals) { .api = "" }, &u, &why), -EINVAL);
        why = mfree(why);
        /* unknown name */
        CHECK_EQ_INT(expand("https://h.example.com/${param.zz}", (Vals) {}, &u, &why), -ENOKEY);
        why = mfree(why);
        /* "$$" and a lone '$' are literal */
        CHECK_EQ_INT(expand("https://h.example.com/a$$b$c", (Vals) {}, &u, &why), 0);
        CHECK_STREQ(u, "https://h.example.com/a$b$c");
}

TEST(lookup) {
        json_t *params = json_pack("{s:s}", "tenant", "contoso"), *md = json_pack("{s:s}", "realm", "42");

        CHECK_STREQ(params_lookup(params, md, "param.tenant", 12), "contoso");
        CHECK_STREQ(params_lookup(params, md, "metadata.realm", 14), "42");
        CHECK_STREQ(params_lookup(params, md, "metadata.none", 13), "");
        CHECK_STREQ(params_lookup(NULL, NULL, "param.tenant", 12), "");
        CHECK(params_lookup(params, md, "tenant", 6) == NULL);
        CHECK(params_lookup(params, md, "param.", 6) == NULL);
        json_decref(params);
        json_decref(md);
}

/* ---- provider files --------------------------------------------------- */

static int load(const char *text, Provider **ret, ConfError *err) {
        char dir[] = "/tmp/tb-test-params-XXXXXX", path[64];
        int fd, r;

        if (!mkdtemp(dir))
                return -errno;
        snprintf(path, sizeof path, "%s/p.conf", dir);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        if (write(fd, text, strlen(text)) != (ssize_t) strlen(text)) {
                close(fd);
                return -EIO;
        }
        close(fd);
        *err = (ConfError) {};
        r = provider_load(path, ret, err);
        (void) unlink(path);
        (void) rmdir(dir);
        return r;
}

#define HEAD "[provider]\nclient_id = c\nclient_secret = s3cret\n"

TEST(provider_keys) {
        _cleanup_(provider_freep) Provider *p = NULL;
        ConfError err;

        CHECK_EQ_INT(load(HEAD "authorize_url = https://${param.tenant}.example.com/auth\n"
                          "token_url = https://${param.tenant}.example.com/${param.v}/token\n"
                          "param = tenant : your tenant\n"
                          "param = v\n"
                          "metadata instance_url = /instance_url\n"
                          "metadata realm = query:realmId\n"
                          "test_url = ${metadata.instance_url}/x\n"
                          "usage_header = X-Realm: ${metadata.realm}\n",
                          &p, &err), 0);
        if (!p) {
                fprintf(stderr, "  %s\n", err.msg);
                return;
        }
        CHECK_EQ_INT(p->n_params, 2);
        CHECK_STREQ(p->params[0].name, "tenant");
        CHECK_STREQ(p->params[0].description, "your tenant");
        CHECK(p->params[0].in_host);
        CHECK(!p->params[1].in_host);
        CHECK(p->params[1].description == NULL);
        CHECK_EQ_INT(p->n_metadata, 2);
        CHECK_STREQ(p->metadata[0].pointer, "/instance_url");
        CHECK_STREQ(p->metadata[1].query, "realmId");
}

TEST(provider_errors) {
        static const struct { const char *text, *msg; } v[] = {
                { HEAD "token_url = https://a.example.com/${param.x}\n", ":4: Unknown placeholder '${param.x}' in token_url" },
                { HEAD "token_url = https://a.example.com/t\nmetadata a = /access_token\n", ":5: metadata a = /access_token points at a token" },
                { HEAD "token_url = https://a.example.com/t\nmetadata a = \n", ":5: metadata a =  points at a token" },
                { HEAD "token_url = https://a.example.com/t\nmetadata a = a~2\n", ":5: metadata a: expected a JSON pointer" },
                { HEAD "refresh_token_pointer = /rt/v\ntoken_url = https://a.example.com/t\nmetadata a = /rt\n", ":6: metadata a = /rt points at a token (/rt/v)" },
                { HEAD "token_url = https://a.example.com/t\nmetadata a = /x/id_token\n", ":5: metadata a = /x/id_token points at a secret" },
                { HEAD "token_url = https://a.example.com/t\nmetadata a = query:state\n", ":5: metadata a: query:state is refused" },
                { HEAD "code_param = c\ntoken_url = https://a.example.com/t\nmetadata a = query:c\n", ":6: metadata a: query:c is refused" },
                { HEAD "token_url = https://a.example.com/t\nmetadata a = query:c\ncode_param = c\n", ":5: metadata a: query:c is the authorization code" },
                { HEAD "token_url = https://a.example.com/t\nmetadata a.b = /x\n", ":5: metadata must be" },
                { HEAD "token_url = https://a.example.com/t\nmetadata a = /x\nmetadata a = /y\n", ":6: metadata 'a' is declared twice" },
                { HEAD "token_url = https://a.example.com/t\nparam = \n", ":5: param must be" },
                { HEAD "token_url = https://a.example.com/t\nparam = a b\n", ":5: param must be" },
                { HEAD "param = o\ntoken_url = https://${param.o}.example.com/t\ntest_url = ${param.o}/x\n", "stands for a whole origin in one URL and inside a host" },
                { HEAD "token_url = https://a.example.com/t\nauthorize_param = x=${metadata.m}\nmetadata m = /m\n", ":5: Unknown placeholder 'metadata.m' in authorize_param" },
                { HEAD "authorize_url = https://a.example.com/a\ntoken_url = https://a.example.com/t\nrevoke_url = http://${param.p}/r\nparam = p\n", ":6: revoke_url must be an https:// URL" },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_(provider_freep) Provider *p = NULL;
                ConfError err;
                int r = load(v[i].text, &p, &err);

                if (!v[i].msg)
                        continue;
                if (r >= 0 || !strstr(err.msg, v[i].msg))
                        fprintf(stderr, "  #%zu: r=%d '%s', want '%s'\n", i, r, err.msg, v[i].msg);
                CHECK(r < 0);
                CHECK(strstr(err.msg, v[i].msg) != NULL);
        }
}

TEST(resolve) {
        _cleanup_(provider_freep) Provider *p = NULL;
        ConfError err;
        json_t *given, *old, *out = NULL;
        char *e = NULL;

        CHECK_EQ_INT(load(HEAD "authorize_url = https://${param.tenant}.example.com/auth\n"
                          "token_url = https://a.example.com/${param.v}/t\nparam = tenant : the tenant\nparam = v\n",
                          &p, &err), 0);
        if (!p)
                return;
        given = json_pack("{s:s, s:s}", "tenant", "contoso", "v", "a/b");
        CHECK_EQ_INT(params_resolve(p, given, NULL, &out, &e), 0);
        CHECK_STREQ(json_string_value(json_object_get(out, "v")), "a/b");
        old = out;
        out = NULL;
        json_decref(given);

        /* a re-authorization keeps what it does not give */
        given = json_pack("{s:s}", "v", "2");
        CHECK_EQ_INT(params_resolve(p, given, old, &out, &e), 0);
        CHECK_STREQ(json_string_value(json_object_get(out, "tenant")), "contoso");
        CHECK_STREQ(json_string_value(json_object_get(out, "v")), "2");
        json_decref(out);
        out = NULL;
        json_decref(given);

        /* missing */
        given = json_pack("{s:s}", "v", "2");
        CHECK_EQ_INT(params_resolve(p, given, NULL, &out, &e), -EINVAL);
        CHECK(e && strstr(e, "missing parameter 'tenant' (the tenant)"));
        e = mfree(e);
        json_decref(given);
        /* unknown */
        given = json_pack("{s:s, s:s, s:s}", "tenant", "a", "v", "b", "x\ny", "c");
        CHECK_EQ_INT(params_resolve(p, given, NULL, &out, &e), -EINVAL);
        CHECK(e && strstr(e, "unknown parameter 'x\\ny'") && strstr(e, "it takes: tenant, v"));
        e = mfree(e);
        json_decref(given);
        /* host rule, control characters, type, length */
        given = json_pack("{s:s, s:s}", "tenant", "a/b", "v", "b");
        CHECK_EQ_INT(params_resolve(p, given, NULL, &out, &e), -EINVAL);
        CHECK(e && strstr(e, "not a host name") && strstr(e, "host name"));
        e = mfree(e);
        json_decref(given);
        given = json_pack("{s:s, s:s}", "tenant", "a", "v", "b\r\n");
        CHECK_EQ_INT(params_resolve(p, given, NULL, &out, &e), -EINVAL);
        CHECK(e && strstr(e, "control character"));
        e = mfree(e);
        json_decref(given);
        given = json_pack("{s:s, s:i}", "tenant", "a", "v", 1);
        CHECK_EQ_INT(params_resolve(p, given, NULL, &out, &e), -EINVAL);
        CHECK(e && strstr(e, "must be a string"));
        e = mfree(e);
        json_decref(given);
        {
                char big[PARAM_VALUE_MAX + 2];
                memset(big, 'a', sizeof big - 1);
                big[sizeof big - 1] = 0;
                given = json_pack("{s:s, s:s}", "tenant", "a", "v", big);
                CHECK_EQ_INT(params_resolve(p, given, NULL, &out, &e), -EINVAL);
                CHECK(e && strstr(e, "too long"));
                e = mfree(e);
                json_decref(given);
        }
        json_decref(old);
}

TEST(metadata_from_response) {
        _cleanup_(provider_freep) Provider *p = NULL;
        ConfError err;
        json_t *out = NULL, *old;
        const char *body = "{\"access_token\":\"AT\",\"instance_url\":\"https://na1.salesforce.com\","
                           "\"team\":{\"id\":\"T1\"},\"n\":42,\"b\":true,\"bad\":\"a\\nb\",\"o\":{}}";

        CHECK_EQ_INT(load(HEAD "grant = client_credentials\ntoken_url = https://a.example.com/t\nmetadata instance_url = /instance_url\n"
                          "metadata team = /team/id\nmetadata n = /n\nmetadata b = /b\nmetadata bad = /bad\n"
                          "metadata o = /o\nmetadata missing = /missing\nmetadata q = query:realmId\n",
                          &p, &err), 0);
        if (!p) {
                fprintf(stderr, "  %s\n", err.msg);
                return;
        }
        CHECK_EQ_INT(metadata_from_token_response(p, body, strlen(body), NULL, &out), 1);
        CHECK_STREQ(json_string_value(json_object_get(out, "instance_url")), "https://na1.salesforce.com");
        CHECK_STREQ(json_string_value(json_object_get(out, "team")), "T1");
        CHECK_STREQ(json_string_value(json_object_get(out, "n")), "42");
        CHECK_STREQ(json_string_value(json_object_get(out, "b")), "true");
        CHECK(!json_object_get(out, "bad"));
        CHECK(!json_object_get(out, "o"));
        CHECK(!json_object_get(out, "missing"));
        CHECK(!json_object_get(out, "access_token"));
        old = out;
        /* the same again: unchanged */
        CHECK_EQ_INT(metadata_from_token_response(p, body, strlen(body), old, &out), 0);
        CHECK(out == NULL);
        /* an answer without it keeps it; one with a new value changes it */
        CHECK_EQ_INT(metadata_from_token_response(p, "{\"n\":43}", 8, old, &out), 1);
        CHECK_STREQ(json_string_value(json_object_get(out, "n")), "43");
        CHECK_STREQ(json_string_value(json_object_get(out, "team")), "T1");
        CHECK_STREQ(json_string_value(json_object_get(old, "n")), "42");   /* old untouched */
        json_decref(out);
        /* not JSON, empty */
        CHECK_EQ_INT(metadata_from_token_response(p, "nope", 4, old, &out), 0);
        CHECK_EQ_INT(metadata_from_token_response(p, NULL, 0, old, &out), 0);
        /* from the callback */
        CHECK_EQ_INT(metadata_set(old, "q", "9130", &out), 1);
        CHECK_STREQ(json_string_value(json_object_get(out, "q")), "9130");
        json_decref(out);
        CHECK_EQ_INT(metadata_set(old, "q", "a\nb", &out), -EINVAL);
        CHECK_EQ_INT(metadata_set(old, "n", "42", &out), 0);
        json_decref(old);
}
