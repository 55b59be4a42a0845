/* SPDX-License-Identifier: MIT */

/* Unit tests for common/conf.c. Every test writes its files into its own
 * mkdtemp() folder and removes it again, so tests are independent of the
 * working directory and of each other. */

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>

#include "common/conf.h"
#include "common/macro.h"

#define TESTS_MAIN
#include "tests.h"

static const char good_provider[] =
        "[provider]\n"
        "authorize_url = https://auth.example.com/authorize\n"
        "token_url = https://auth.example.com/token\n"
        "client_id = abc\n"
        "client_secret = s3cret\n";

/* ---- helpers ---------------------------------------------------------- */

static char *tmpdir_new(void) {
        const char *base = getenv("TMPDIR");
        char *d = NULL;

        if (asprintf(&d, "%s/tb-test-conf-XXXXXX", isempty(base) ? "/tmp" : base) < 0)
                return NULL;
        if (!mkdtemp(d)) {
                free(d);
                return NULL;
        }
        return d;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) st;
        (void) ftw;
        return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void tmpdir_free(char **d) {
        if (*d) {
                (void) nftw(*d, rm_one, 16, FTW_DEPTH | FTW_PHYS);
                free(*d);
                *d = NULL;
        }
}
#define _cleanup_tmpdir_ _cleanup_(tmpdir_free)

/* Writes len bytes to dir/name; returns the full path (owned by caller). */
static char *write_filen(const char *dir, const char *name, const char *data, size_t len) {
        char *path = NULL;
        int fd;

        if (asprintf(&path, "%s/%s", dir, name) < 0)
                return NULL;
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, data, len) != (ssize_t) len) {
                fprintf(stderr, "  cannot write %s\n", path);
                safe_close(fd);
                free(path);
                return NULL;
        }
        safe_close(fd);
        return path;
}

static char *write_file(const char *dir, const char *name, const char *data) {
        return write_filen(dir, name, data, strlen(data));
}

static char *subdir(const char *dir, const char *name) {
        char *path = NULL;

        if (asprintf(&path, "%s/%s", dir, name) < 0)
                return NULL;
        if (mkdir(path, 0700) < 0 && errno != EEXIST) {
                free(path);
                return NULL;
        }
        return path;
}

/* Loads text as dir/test.conf; returns provider_load()'s result. */
static int load_provider_text(const char *dir, const char *text, size_t len, Provider **ret,
                              ConfError *err, char **ret_path) {
        _cleanup_free_ char *path = write_filen(dir, "test.conf", text, len);
        int r;

        if (!path)
                return -EIO;
        *err = (ConfError) {};
        *ret = NULL;
        r = provider_load(path, ret, err);
        if (ret_path)
                *ret_path = TAKE_PTR(path);
        return r;
}

/* Checks that text fails to load with r and exactly "path:line: msg"
 * (or "path: msg" for line 0). */
static void check_provider_error(const char *dir, const char *text, int r_expected, unsigned line,
                                 const char *msg) {
        _cleanup_free_ char *path = NULL, *want = NULL;
        Provider *p = NULL;
        ConfError err;
        int r;

        r = load_provider_text(dir, text, strlen(text), &p, &err, &path);
        CHECK_EQ_INT(r, r_expected);
        CHECK(!p);
        provider_free(p);
        if (line > 0)
                CHECK(asprintf(&want, "%s:%u: %s", path, line, msg) >= 0);
        else
                CHECK(asprintf(&want, "%s: %s", path, msg) >= 0);
        CHECK_STREQ(err.msg, want);
}

/* ---- url_is_acceptable ------------------------------------------------ */

TEST(url_acceptable_table) {
        static const struct { const char *url; bool ok; } v[] = {
                /* TLS: anything with a host */
                { "https://auth.example.com/token", true },
                { "https://auth.example.com", true },
                { "https://auth.example.com:8443/oauth/token?x=1", true },
                { "https://10.0.0.1/token", true },
                { "https://[2001:db8::1]/token", true },
                { "https://", false },
                { "https:///token", false },
                /* plain http: loopback only */
                { "http://127.0.0.1", true },
                { "http://127.0.0.1/", true },
                { "http://127.0.0.1:9000/token", true },
                { "http://127.0.0.1:9000?x=1", true },
                { "http://127.1.2.3/token", true },
                { "http://localhost", true },
                { "http://localhost:8421/oauth/callback", true },
                { "http://localhost#frag", true },
                { "http://[::1]", true },
                { "http://[::1]/", true },
                { "http://[::1]:9000/token", true },
                { "http://example.com/token", false },
                { "http://10.0.0.1/token", false },
                { "http://128.0.0.1/", false },
                { "http://0.0.0.0/", false },
                { "http://[::2]/", false },
                { "http://[::ffff:127.0.0.1]/", false },
                { "http://[::1", false },
                { "http://", false },
                { "http:///token", false },
                { "http://:9000/", false },
                /* look-alikes that are not loopback */
                { "http://127.0.0.1.evil.com/", false },
                { "http://127.0.0.1.nip.io/", false },
                { "http://localhost.evil.com/", false },
                { "http://localhostx/", false },
                { "http://evil.com/127.0.0.1", false },
                { "http://evil.com/?localhost", false },
                { "http://evil.com#@127.0.0.1", false },
                /* userinfo: the host is what follows the '@' */
                { "http://127.0.0.1@evil.com/", false },
                { "http://127.0.0.1:80@evil.com/", false },
                { "http://localhost:pw@evil.com/", false },
                { "http://[::1]@evil.com/", false },
                { "http://127.0.0.1\\@evil.com/", false },
                { "http://user@evil.com/", false },
                /* other schemes, and none */
                { "ftp://127.0.0.1/", false },
                { "file:///etc/passwd", false },
                { "127.0.0.1", false },
                { "//127.0.0.1/", false },
                { "", false },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                if (url_is_acceptable(v[i].url) != v[i].ok)
                        fprintf(stderr, "  url_is_acceptable(\"%s\") != %d\n", v[i].url, v[i].ok);
                CHECK(url_is_acceptable(v[i].url) == v[i].ok);
        }
}

TEST(enum_strings) {
        CHECK_STREQ(grant_to_string(GRANT_AUTHORIZATION_CODE), "authorization_code");
        CHECK_STREQ(grant_to_string(GRANT_CLIENT_CREDENTIALS), "client_credentials");
        CHECK(!grant_to_string(_GRANT_MAX));
        CHECK(!grant_to_string(_GRANT_INVALID));
        CHECK_EQ_INT(grant_from_string("device_code"), GRANT_DEVICE_CODE);
        CHECK_EQ_INT(grant_from_string("implicit"), -EINVAL);
        CHECK_EQ_INT(grant_from_string(""), -EINVAL);
        CHECK_STREQ(client_auth_to_string(CLIENT_AUTH_POST), "post");
        CHECK(!client_auth_to_string(_CLIENT_AUTH_MAX));
        CHECK_STREQ(pkce_to_string(PKCE_S256), "S256");
        CHECK_STREQ(pkce_to_string(PKCE_NONE), "none");
        CHECK(!pkce_to_string(_PKCE_INVALID));
}

/* ---- provider files --------------------------------------------------- */

TEST(provider_defaults) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_(provider_freep) Provider *p = NULL;
        _cleanup_free_ char *path = NULL;
        ConfError err;

        CHECK(dir);
        CHECK_EQ_INT(load_provider_text(dir, good_provider, strlen(good_provider), &p, &err, &path), 0);
        CHECK(p);
        if (!p)
                return;
        CHECK_STREQ(p->name, "test");
        CHECK_STREQ(p->path, path);
        CHECK_EQ_INT(p->grant, GRANT_AUTHORIZATION_CODE);
        CHECK_EQ_INT(p->client_auth, CLIENT_AUTH_BASIC);
        CHECK_EQ_INT(p->pkce, PKCE_S256);
        CHECK_STREQ(p->authorize_url, "https://auth.example.com/authorize");
        CHECK_STREQ(p->token_url, "https://auth.example.com/token");
        CHECK(!p->revoke_url);
        CHECK(!p->test_url);
        CHECK_STREQ(p->client_id, "abc");
        CHECK_STREQ(p->client_secret, "s3cret");
        CHECK(!p->scopes);
        CHECK_STREQ(p->scope_separator, " ");
        CHECK_STREQ(p->code_param, "code");
        CHECK_STREQ(p->ptr_access_token, "/access_token");
        CHECK_STREQ(p->ptr_refresh_token, "/refresh_token");
        CHECK_STREQ(p->ptr_expires_in, "/expires_in");
        CHECK_STREQ(p->ptr_token_type, "/token_type");
        CHECK_STREQ(p->ptr_scope, "/scope");
        CHECK_STREQ(p->ptr_id_token, "/id_token");
        CHECK_STREQ(p->ptr_error, "/error");
        CHECK_STREQ(p->ptr_error_description, "/error_description");
        CHECK_EQ_INT(p->default_lifetime, 0);
        CHECK_EQ_INT(p->timeout, 20 * USEC_PER_SEC);
        CHECK_EQ_INT(p->n_usage_header, 1);
        CHECK_STREQ(p->usage_header[0], "Authorization: Bearer ${access_token}");
        CHECK(!p->usage_query);
}

TEST(provider_all_keys) {
        static const char text[] =
                "# a comment\n"
                "; another comment\n"
                "\n"
                "  [provider]  \n"
                "grant = client_credentials\n"
                "token_url = https://auth.example.com/token\n"
                "revoke_url = http://127.0.0.1:9000/revoke\n"
                "test_url = https://api.example.com/me\n"
                "client_id = my client # inline comment\n"
                "client_secret = a#b;c\n"          /* no whitespace before: not a comment */
                "client_auth = post\n"
                "pkce = plain\n"
                "scopes = read write\n"
                "scope_separator = ,\n"
                "authorize_params = access_type=offline prompt=consent\n"
                "code_param = auth_code\n"
                "access_token_pointer = /data/token\n"
                "refresh_token_pointer = /data/refresh\n"
                "expires_in_pointer = /data/ttl\n"
                "token_type_pointer = /data/type\n"
                "scope_pointer = /data/scope\n"
                "id_token_pointer = /data/id~1token\n"
                "error_pointer = /err/code\n"
                "error_description_pointer = /err/message\n"
                "default_lifetime = 1h\n"
                "timeout = 2.5s\r\n"                 /* CRLF is fine */
                "usage_header = X-Api-Key: ${access_token}\n"
                "usage_header = X-Type: ${token_type}\n"
                "usage_query = key=${access_token}\n"
                "api_url = https://api.example.com/\n"
                "api_url = http://127.0.0.1:8080\n"
                "api_url = https://API.example.com\n"   /* the same origin: once */
                "api_timeout = 30s\n";
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_(provider_freep) Provider *p = NULL;
        ConfError err;

        CHECK(dir);
        CHECK_EQ_INT(load_provider_text(dir, text, strlen(text), &p, &err, NULL), 0);
        if (!p) {
                fprintf(stderr, "  %s\n", err.msg);
                return;
        }
        CHECK_EQ_INT(p->grant, GRANT_CLIENT_CREDENTIALS);
        CHECK(!p->authorize_url);
        CHECK_STREQ(p->revoke_url, "http://127.0.0.1:9000/revoke");
        CHECK_EQ_INT(p->n_api_url, 2);
        CHECK_STREQ(p->api_url[0], "https://api.example.com");
        CHECK_STREQ(p->api_url[1], "http://127.0.0.1:8080");
        CHECK(p->api_timeout == 30 * USEC_PER_SEC);
        CHECK_EQ_INT(p->api_max_connections, 16);
        CHECK_STREQ(p->test_url, "https://api.example.com/me");
        CHECK_STREQ(p->client_id, "my client");
        CHECK_STREQ(p->client_secret, "a#b;c");
        CHECK_EQ_INT(p->client_auth, CLIENT_AUTH_POST);
        CHECK_EQ_INT(p->pkce, PKCE_PLAIN);
        CHECK_STREQ(p->scopes, "read write");
        CHECK_STREQ(p->scope_separator, ",");
        CHECK_STREQ(p->authorize_params, "access_type=offline prompt=consent");
        CHECK_STREQ(p->code_param, "auth_code");
        CHECK_STREQ(p->ptr_access_token, "/data/token");
        CHECK_STREQ(p->ptr_refresh_token, "/data/refresh");
        CHECK_STREQ(p->ptr_expires_in, "/data/ttl");
        CHECK_STREQ(p->ptr_token_type, "/data/type");
        CHECK_STREQ(p->ptr_scope, "/data/scope");
        CHECK_STREQ(p->ptr_id_token, "/data/id~1token");
        CHECK_STREQ(p->ptr_error, "/err/code");
        CHECK_STREQ(p->ptr_error_description, "/err/message");
        CHECK_EQ_INT(p->default_lifetime, USEC_PER_HOUR);
        CHECK_EQ_INT(p->timeout, 2500 * USEC_PER_MSEC);
        CHECK_EQ_INT(p->n_usage_header, 2);
        CHECK_STREQ(p->usage_header[0], "X-Api-Key: ${access_token}");
        CHECK_STREQ(p->usage_header[1], "X-Type: ${token_type}");
        CHECK_STREQ(p->usage_query, "key=${access_token}");
}

TEST(provider_usage_query_only_no_default_header) {
        static const char text[] =
                "[provider]\n"
                "grant = client_credentials\n"
                "token_url = https://auth.example.com/token\n"
                "client_id = abc\n"
                "client_auth = none\n"
                "usage_query = access_token=${access_token}\n";
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_(provider_freep) Provider *p = NULL;
        ConfError err;

        CHECK_EQ_INT(load_provider_text(dir, text, strlen(text), &p, &err, NULL), 0);
        if (!p)
                return;
        CHECK_EQ_INT(p->client_auth, CLIENT_AUTH_NONE);
        CHECK(!p->client_secret);          /* a public client needs none */
        CHECK_EQ_INT(p->n_usage_header, 0);
        CHECK_STREQ(p->usage_query, "access_token=${access_token}");
}

TEST(provider_durations) {
        static const struct { const char *v; usec_t u; } ok[] = {
                { "0", 0 },
                { "90", 90 * USEC_PER_SEC },
                { "90s", 90 * USEC_PER_SEC },
                { "90 s", 90 * USEC_PER_SEC },
                { "500ms", 500 * USEC_PER_MSEC },
                { "1.5min", 90 * USEC_PER_SEC },
                { "2m", 2 * USEC_PER_MINUTE },
                { "2h", 2 * USEC_PER_HOUR },
                { "7d", 7 * USEC_PER_DAY },
        };
        _cleanup_tmpdir_ char *dir = tmpdir_new();

        for (size_t i = 0; i < ELEMENTSOF(ok); i++) {
                _cleanup_free_ char *text = NULL;
                _cleanup_(provider_freep) Provider *p = NULL;
                ConfError err;

                CHECK(asprintf(&text, "%sdefault_lifetime = %s\n", good_provider, ok[i].v) >= 0);
                CHECK_EQ_INT(load_provider_text(dir, text, strlen(text), &p, &err, NULL), 0);
                if (!p) {
                        fprintf(stderr, "  %s: %s\n", ok[i].v, err.msg);
                        continue;
                }
                CHECK_EQ_INT(p->default_lifetime, ok[i].u);
        }
}

TEST(provider_timeouts) {
        static const struct { const char *v; usec_t u; } ok[] = {
                { "0", 0 },
                { "1", USEC_PER_SEC },
                { "120", 120 * USEC_PER_SEC },
                { "2min", 120 * USEC_PER_SEC },
                { "1500ms", 1500 * USEC_PER_MSEC },
        };
        static const struct { const char *v; int r; } bad[] = {
                { "121", -ERANGE }, { "120.5", -ERANGE }, { "2.5min", -ERANGE }, { "1h", -ERANGE },
                { "1d", -ERANGE },  { "-1", -EINVAL },    { "abc", -EINVAL },    { "5 weeks", -EINVAL },
        };
        _cleanup_tmpdir_ char *dir = tmpdir_new();

        for (size_t i = 0; i < ELEMENTSOF(ok); i++) {
                _cleanup_free_ char *text = NULL;
                _cleanup_(provider_freep) Provider *p = NULL;
                ConfError err;

                CHECK(asprintf(&text, "%stimeout = %s\n", good_provider, ok[i].v) >= 0);
                CHECK_EQ_INT(load_provider_text(dir, text, strlen(text), &p, &err, NULL), 0);
                if (p)
                        CHECK_EQ_INT(p->timeout, ok[i].u);
        }
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                _cleanup_free_ char *text = NULL, *msg = NULL;

                CHECK(asprintf(&text, "%stimeout = %s\n", good_provider, bad[i].v) >= 0);
                CHECK(asprintf(&msg, "Invalid timeout '%s' (0 to 120 seconds).", bad[i].v) >= 0);
                check_provider_error(dir, text, bad[i].r, 6, msg);
        }
}

TEST(provider_errors) {
        static const struct {
                const char *text;
                int r;
                unsigned line;
                const char *msg;
        } v[] = {
                { "[provider]\nclient_idd = abc\n", -EINVAL, 2, "Unknown key 'client_idd'." },
                { "[provider]\ntoken_url = https://a.example/t\n[oauth]\nclient_id = x\n", -EINVAL, 4,
                  "Unknown section [oauth], expected [provider]." },
                { "[provider]\ntoken_url https://a.example/t\n", -EINVAL, 2,
                  "Expected 'key = value', got: token_url https://a.example/t" },
                { "token_url = https://a.example/t\n[provider]\n", -EINVAL, 1,
                  "Key 'token_url' outside of a section." },
                { "[provider]\n= value\n", -EINVAL, 2, "Empty key." },
                { "[provider\n", -EINVAL, 1, "Invalid section header: [provider" },
                { "[]\n", -EINVAL, 1, "Invalid section header: []" },
                { "[provider] x\n", -EINVAL, 1, "Invalid section header: [provider] x" },
                { "[provider]\ntoken_url = http://auth.example.com/token\n", -EINVAL, 2,
                  "token_url must be an https:// URL (http:// only on loopback): http://auth.example.com/token" },
                { "[provider]\nauthorize_url = http://10.1.2.3/authorize\n", -EINVAL, 2,
                  "authorize_url must be an https:// URL (http:// only on loopback): http://10.1.2.3/authorize" },
                { "[provider]\nrevoke_url = ftp://127.0.0.1/revoke\n", -EINVAL, 2,
                  "revoke_url must be an https:// URL (http:// only on loopback): ftp://127.0.0.1/revoke" },
                { "[provider]\ntoken_url = http://127.0.0.1:80@evil.com/token\n", -EINVAL, 2,
                  "token_url must be an https:// URL (http:// only on loopback): http://127.0.0.1:80@evil.com/token" },
                { "[provider]\n\ngrant = implicit\n", -EINVAL, 3,
                  "Invalid grant 'implicit' (authorization_code, client_credentials, password, device_code)." },
                { "[provider]\nclient_auth = private_key_jwt\n", -EINVAL, 2,
                  "Invalid client_auth 'private_key_jwt' (basic, post, none, headers)." },
                { "[provider]\npkce = s256\n", -EINVAL, 2, "Invalid pkce 's256' (S256, plain, none)." },
                { "[provider]\ndefault_lifetime = 5 weeks\n", -EINVAL, 2,
                  "Invalid duration for default_lifetime: 5 weeks" },
                { "[provider]\ndefault_lifetime = -5\n", -EINVAL, 2, "Invalid duration for default_lifetime: -5" },
                { "[provider]\ndefault_lifetime = inf\n", -EINVAL, 2,
                  "Invalid duration for default_lifetime: inf" },
                { "[provider]\ndefault_lifetime = 101y\n", -EINVAL, 2,
                  "Invalid duration for default_lifetime: 101y" },
                { "[provider]\ndefault_lifetime = 40000d\n", -ERANGE, 2,
                  "Invalid duration for default_lifetime: 40000d" },
                { "[provider]\ntimeout = 121\n", -ERANGE, 2, "Invalid timeout '121' (0 to 120 seconds)." },
                { "[provider]\naccess_token_pointer = a/b\n", -EINVAL, 2,
                  "Invalid JSON pointer for access_token_pointer: a/b" },
                { "[provider]\nexpires_in_pointer = /a~2b\n", -EINVAL, 2,
                  "Invalid JSON pointer for expires_in_pointer: /a~2b" },
                { "[provider]\nusage_header = Authorization: Bearer ${nope}\n", -ENOKEY, 2,
                  "Unknown placeholder 'nope' in usage_header." },
                { "[provider]\nusage_header = Authorization: Bearer ${access_token\n", -EINVAL, 2,
                  "Unterminated placeholder '${access_token' in usage_header." },
                { "[provider]\nusage_query = key=${refresh_token}\n", -ENOKEY, 2,
                  "Unknown placeholder 'refresh_token' in usage_query." },
                { "[provider]\nusage_header = Authorization Bearer ${access_token}\n", -EINVAL, 2,
                  "usage_header must be 'Name: value': Authorization Bearer ${access_token}" },
                { "[provider]\nusage_header = : x\n", -EINVAL, 2, "usage_header must be 'Name: value': : x" },
                { "[provider]\nusage_query = ${access_token}\n", -EINVAL, 2,
                  "usage_query must be 'name=value': ${access_token}" },
                { "[provider]\napi_url = http://api.example.com\n", -EINVAL, 2,
                  "api_url must be an https:// origin (http:// only on loopback): http://api.example.com" },
                { "[provider]\napi_url = https://api.example.com/v3\n", -EINVAL, 2,
                  "api_url must be an origin, scheme://host[:port] without a path: https://api.example.com/v3" },
                { "[provider]\napi_url = https://u@api.example.com\n", -EINVAL, 2,
                  "api_url must be an origin, scheme://host[:port] without a path: https://u@api.example.com" },
                { "[provider]\napi_url = https://api.example.com?x=1\n", -EINVAL, 2,
                  "api_url must be an origin, scheme://host[:port] without a path: https://api.example.com?x=1" },
                { "[provider]\napi_timeout = 121\n", -ERANGE, 2, "Invalid api_timeout '121' (0 to 120 seconds)." },
                { "[provider]\napi_max_connections = lots\n", -EINVAL, 2,
                  "Invalid number for api_max_connections: lots" },
                { "[provider]\nclient_secret =\n", -EINVAL, 2, "Empty client_secret." },
                { "[provider]\nclient_id = a\tb\n", -EINVAL, 2, "Control character in value of 'client_id'." },
                /* whole-file checks: at the grant line, else the first key */
                { "[provider]\nauthorize_url = https://a.example/a\nclient_id = x\nclient_secret = y\n", -EINVAL,
                  2, "Missing required key token_url." },
                { "[provider]\nauthorize_url = https://a.example/a\ntoken_url = https://a.example/t\n"
                  "client_secret = y\n",
                  -EINVAL, 2, "Missing required key client_id." },
                { "[provider]\ntoken_url = https://a.example/t\nclient_id = x\nclient_secret = y\n", -EINVAL, 2,
                  "grant = authorization_code needs authorize_url." },
                { "[provider]\nauthorize_url = https://a.example/a\ntoken_url = https://a.example/t\n"
                  "client_id = x\n",
                  -EINVAL, 2,
                  "client_auth = basic needs client_secret, client_secret_file or client_secret_credential." },
                { "[provider]\ngrant = client_credentials\ntoken_url = https://a.example/t\nclient_id = x\n"
                  "client_auth = post\n",
                  -EINVAL, 2,
                  "client_auth = post needs client_secret, client_secret_file or client_secret_credential." },
                { "[provider]\n# device\ngrant = device_code\ntoken_url = https://a.example/t\nclient_id = x\n"
                  "client_secret = y\n",
                  -EINVAL, 3, "grant = device_code needs device_authorization_url." },
        };
        _cleanup_tmpdir_ char *dir = tmpdir_new();

        CHECK(dir);
        for (size_t i = 0; i < ELEMENTSOF(v); i++)
                check_provider_error(dir, v[i].text, v[i].r, v[i].line, v[i].msg);
}

TEST(provider_too_many_usage_headers) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        char text[2048];
        size_t o = 0;

        o += (size_t) snprintf(text + o, sizeof text - o, "%s", good_provider);
        for (int i = 0; i <= PROVIDER_USAGE_MAX; i++)
                o += (size_t) snprintf(text + o, sizeof text - o, "usage_header = X-H%d: ${access_token}\n", i);
        /* good_provider is 5 lines; the 9th header is on line 5 + 9 */
        check_provider_error(dir, text, -E2BIG, 5 + PROVIDER_USAGE_MAX + 1, "Too many usage_header lines (at most 8).");
}

TEST(provider_long_line) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *text = NULL;
        size_t hdr = strlen(good_provider), pre = strlen("scopes = ");
        Provider *p = NULL;
        ConfError err;

        /* A line of exactly 8191 bytes (without its newline) is accepted... */
        text = malloc(hdr + 8192 + 2);
        CHECK(text);
        if (!text)
                return;
        memcpy(text, good_provider, hdr);
        memcpy(text + hdr, "scopes = ", pre);
        memset(text + hdr + pre, 'a', 8191 - pre);
        text[hdr + 8191] = '\n';
        text[hdr + 8192] = 0;
        CHECK_EQ_INT(load_provider_text(dir, text, strlen(text), &p, &err, NULL), 0);
        CHECK(p && p->scopes && strlen(p->scopes) == 8191 - pre);
        p = provider_free(p);

        /* ...one of 8192 (more than 8 KiB - 1) is not. */
        text[hdr + 8191] = 'a';
        text[hdr + 8192] = '\n';
        text[hdr + 8193] = 0;
        check_provider_error(dir, text, -E2BIG, 6, "Line too long (more than 8191 bytes).");

        /* also without a final newline */
        text[hdr + 8192] = 0;
        check_provider_error(dir, text, -E2BIG, 6, "Line too long (more than 8191 bytes).");
}

TEST(provider_nul_byte) {
        static const char text[] = "[provider]\nclient_id = a\0b\ntoken_url = https://a.example/t\n";
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = NULL, *want = NULL;
        Provider *p = NULL;
        ConfError err;

        CHECK_EQ_INT(load_provider_text(dir, text, sizeof text - 1, &p, &err, &path), -EINVAL);
        CHECK(!p);
        CHECK(asprintf(&want, "%s:2: NUL byte in configuration.", path) >= 0);
        CHECK_STREQ(err.msg, want);
}

TEST(provider_file_name) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        static const char *const bad[] = { "noext", "bad name.conf", ".hidden.conf", ".conf", "x.ini" };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                _cleanup_free_ char *path = write_file(dir, bad[i], good_provider), *want = NULL;
                Provider *p = NULL;
                ConfError err = {};

                CHECK_EQ_INT(provider_load(path, &p, &err), -EINVAL);
                CHECK(!p);
                CHECK(asprintf(&want, "%s: Provider file names must be NAME.conf with NAME of [A-Za-z0-9._-].",
                               path) >= 0);
                CHECK_STREQ(err.msg, want);
        }
}

TEST(provider_missing_file) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = NULL, *want = NULL;
        Provider *p = NULL;
        ConfError err = {};

        CHECK(asprintf(&path, "%s/absent.conf", dir) >= 0);
        CHECK_EQ_INT(provider_load(path, &p, &err), -ENOENT);
        CHECK(asprintf(&want, "%s: Cannot read: %s", path, strerror(ENOENT)) >= 0);
        CHECK_STREQ(err.msg, want);
}

TEST(provider_secret_file_relative) {
        static const char text[] =
                "[provider]\n"
                "authorize_url = https://auth.example.com/authorize\n"
                "token_url = https://auth.example.com/token\n"
                "client_id = abc\n"
                "client_secret_file = secrets/client\n";
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *sec = subdir(dir, "secrets"), *f = NULL;
        _cleanup_(provider_freep) Provider *p = NULL;
        ConfError err;

        CHECK(sec);
        /* an editor's trailing newline is not part of the secret */
        f = write_file(sec, "client", "t0p-s3cret\n");
        CHECK(f);
        CHECK_EQ_INT(load_provider_text(dir, text, strlen(text), &p, &err, NULL), 0);
        if (!p) {
                fprintf(stderr, "  %s\n", err.msg);
                return;
        }
        CHECK_STREQ(p->client_secret, "t0p-s3cret");
        p = provider_free(p);

        /* CRLF, too */
        free(write_file(sec, "client", "crlf-secret\r\n"));
        CHECK_EQ_INT(load_provider_text(dir, text, strlen(text), &p, &err, NULL), 0);
        CHECK(p && streq(p->client_secret, "crlf-secret"));
        p = provider_free(p);

        /* no newline at all */
        free(write_file(sec, "client", "bare"));
        CHECK_EQ_INT(load_provider_text(dir, text, strlen(text), &p, &err, NULL), 0);
        CHECK(p && streq(p->client_secret, "bare"));
}

TEST(provider_secret_file_absolute) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *f = write_file(dir, "abs-secret", "absolute\n"), *text = NULL;
        _cleanup_(provider_freep) Provider *p = NULL;
        ConfError err;

        CHECK(asprintf(&text,
                       "[provider]\nauthorize_url = https://a.example/a\ntoken_url = https://a.example/t\n"
                       "client_id = x\nclient_secret_file = %s\n",
                       f) >= 0);
        CHECK_EQ_INT(load_provider_text(dir, text, strlen(text), &p, &err, NULL), 0);
        CHECK(p && streq(p->client_secret, "absolute"));
}

TEST(provider_secret_file_errors) {
        static const char text[] =
                "[provider]\n"
                "authorize_url = https://auth.example.com/authorize\n"
                "token_url = https://auth.example.com/token\n"
                "client_id = abc\n"
                "client_secret_file = client.secret\n";
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *secret_path = NULL, *msg = NULL;

        CHECK(asprintf(&secret_path, "%s/client.secret", dir) >= 0);

        /* missing */
        CHECK(asprintf(&msg, "Cannot read client secret from '%s': %s", secret_path, strerror(ENOENT)) >= 0);
        check_provider_error(dir, text, -ENOENT, 5, msg);
        msg = mfree(msg);

        /* empty, or nothing but a newline */
        CHECK(asprintf(&msg, "Cannot read client secret from '%s': empty or binary", secret_path) >= 0);
        free(write_file(dir, "client.secret", ""));
        check_provider_error(dir, text, -EINVAL, 5, msg);
        free(write_file(dir, "client.secret", "\n"));
        check_provider_error(dir, text, -EINVAL, 5, msg);
        /* binary: an embedded NUL */
        free(write_filen(dir, "client.secret", "ab\0cd\n", 6));
        check_provider_error(dir, text, -EINVAL, 5, msg);
        msg = mfree(msg);

        /* a folder */
        CHECK_EQ_INT(unlink(secret_path), 0);
        CHECK_EQ_INT(mkdir(secret_path, 0700), 0);
        CHECK(asprintf(&msg, "Cannot read client secret from '%s': %s", secret_path, strerror(EISDIR)) >= 0);
        check_provider_error(dir, text, -EISDIR, 5, msg);
}

TEST(provider_secret_credential) {
        static const char text[] =
                "[provider]\n"
                "authorize_url = https://auth.example.com/authorize\n"
                "token_url = https://auth.example.com/token\n"
                "client_id = abc\n"
                "client_secret_credential = tb-client\n";
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *creds = subdir(dir, "creds"), *f = NULL, *old = NULL;
        _cleanup_(provider_freep) Provider *p = NULL;
        ConfError err;

        if (getenv("CREDENTIALS_DIRECTORY"))
                old = strdup(getenv("CREDENTIALS_DIRECTORY"));
        CHECK(creds);
        f = write_file(creds, "tb-client", "from-credential\n");

        CHECK_EQ_INT(setenv("CREDENTIALS_DIRECTORY", creds, 1), 0);
        CHECK_EQ_INT(load_provider_text(dir, text, strlen(text), &p, &err, NULL), 0);
        CHECK(p && streq(p->client_secret, "from-credential"));
        p = provider_free(p);

        /* a name, not a path */
        check_provider_error(dir,
                             "[provider]\nauthorize_url = https://a.example/a\ntoken_url = https://a.example/t\n"
                             "client_id = abc\nclient_secret_credential = ../tb-client\n",
                             -EINVAL, 5, "Invalid credential name.");

        /* not run with LoadCredential= */
        CHECK_EQ_INT(unsetenv("CREDENTIALS_DIRECTORY"), 0);
        check_provider_error(dir, text, -ENOENT, 5,
                             "client_secret_credential set but $CREDENTIALS_DIRECTORY is not "
                             "(LoadCredential= missing?).");

        if (old)
                (void) setenv("CREDENTIALS_DIRECTORY", old, 1);
}


/* ---- the INI reader itself -------------------------------------------- */

typedef struct IniLog {
        char text[512];
        size_t len;
        unsigned fail_at;
} IniLog;

static int ini_log(const char *section, const char *key, const char *value, unsigned line, void *userdata,
                   ConfError *err) {
        IniLog *l = userdata;
        int k;

        if (line == l->fail_at) {
                conf_error(err, "cb", line, "refused %s", key);
                return -EEXIST;
        }
        k = snprintf(l->text + l->len, sizeof l->text - l->len, "%s.%s=%s@%u;", section, key, value, line);
        if (k > 0)
                l->len += (size_t) k;
        return 0;
}

TEST(ini_parse_string_values) {
        static const char text[] =
                "# top comment\n"
                "[a]\n"
                "k1 = v1\n"
                "\tk2\t=\tv 2\t\n"
                "k3 =\n"
                "k4 = x ; comment\n"
                "k5 = x;y\n"
                "k6 = x #y\n"
                "k7 = = =\n"
                "[b]\r\n"
                "k8=v8\r\n"
                "k9 = last";           /* no final newline */
        IniLog l = {};
        ConfError err = {};

        CHECK_EQ_INT(ini_parse_string("mem", text, strlen(text), ini_log, &l, &err), 0);
        CHECK_STREQ(l.text, "a.k1=v1@3;a.k2=v 2@4;a.k3=@5;a.k4=x@6;a.k5=x;y@7;a.k6=x@8;a.k7== =@9;"
                            "b.k8=v8@11;b.k9=last@12;");
        CHECK_STREQ(err.msg, "");
}

TEST(ini_parse_string_callback_error) {
        static const char text[] = "[s]\na = 1\nb = 2\nc = 3\n";
        IniLog l = { .fail_at = 3 };
        ConfError err = {};

        CHECK_EQ_INT(ini_parse_string("mem", text, strlen(text), ini_log, &l, &err), -EEXIST);
        CHECK_STREQ(l.text, "s.a=1@2;");   /* stopped at the failing line */
        CHECK_STREQ(err.msg, "cb:3: refused b");
}

TEST(ini_parse_string_length_bounded) {
        static const char text[] = "[s]\na = 1\nthis is not parsed";
        IniLog l = {};
        ConfError err = {};

        CHECK_EQ_INT(ini_parse_string("mem", text, strlen("[s]\na = 1\n"), ini_log, &l, &err), 0);
        CHECK_STREQ(l.text, "s.a=1@2;");
        CHECK_EQ_INT(ini_parse_string("mem", text, 0, ini_log, &l, &err), 0);
}

TEST(conf_error_format) {
        ConfError err = {};
        char longpath[2048];

        conf_error(&err, "/etc/x.conf", 7, "bad %s %d", "thing", 42);
        CHECK_STREQ(err.msg, "/etc/x.conf:7: bad thing 42");
        conf_error(&err, "/etc/x.conf", 0, "whole file");
        CHECK_STREQ(err.msg, "/etc/x.conf: whole file");
        conf_error(NULL, "/etc/x.conf", 1, "no crash");

        /* never overflows, always terminated */
        memset(longpath, 'p', sizeof longpath - 1);
        longpath[sizeof longpath - 1] = 0;
        conf_error(&err, longpath, 1, "x");
        CHECK(strlen(err.msg) < sizeof err.msg);
}

/* ---- the broker file -------------------------------------------------- */

static const char provider_template[] =
        "[provider]\n"
        "authorize_url = https://%s.example.com/authorize\n"
        "token_url = https://%s.example.com/token\n"
        "client_id = id-%s\n"
        "client_secret = secret-%s\n";

static char *write_provider(const char *dir, const char *name) {
        _cleanup_free_ char *text = NULL, *file = NULL;

        if (asprintf(&text, provider_template, name, name, name, name) < 0 ||
            asprintf(&file, "%s.conf", name) < 0)
                return NULL;
        return write_file(dir, file, text);
}

TEST(broker_good) {
        static const char text[] =
                "[broker]\n"
                "state_dir = state\n"
                "socket = run/tb.sock\n"
                "providers_dir = providers.d\n"
                "admin_group = tbadmin\n"
                "callback_listen = 127.0.0.1:9999\n"
                "public_url = https://broker.example.com/\n"
                "socket_mode = 0660\n"
                "refresh_margin = 2min\n"
                "refresh_ratio = 0.25\n"
                "refresh_jitter = 500ms\n"
                "max_parallel_refreshes = 8\n"
                "pending_ttl = 5min\n"
                "max_connections = 100\n";
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = NULL, *pd = NULL, *want = NULL, *redirect = NULL;
        _cleanup_(broker_config_freep) BrokerConfig *c = NULL;
        ConfError err = {};

        CHECK(dir);
        path = write_file(dir, "tokenbroker.conf", text);
        pd = subdir(dir, "providers.d");
        free(write_provider(pd, "zeta"));
        free(write_provider(pd, "alpha"));
        free(write_provider(pd, "mid-1.x"));
        /* not provider files: skipped */
        free(write_file(pd, "README", "not a config"));
        free(write_file(pd, ".hidden.conf", "[garbage"));
        free(write_file(pd, "old.conf.bak", "[garbage"));

        CHECK_EQ_INT(broker_config_load(path, &c, &err), 0);
        if (!c) {
                fprintf(stderr, "  %s\n", err.msg);
                return;
        }
        CHECK_STREQ(c->path, path);
        /* relative paths are relative to the file's folder */
        CHECK(asprintf(&want, "%s/state", dir) >= 0);
        CHECK_STREQ(c->state_dir, want);
        want = mfree(want);
        CHECK(asprintf(&want, "%s/run/tb.sock", dir) >= 0);
        CHECK_STREQ(c->socket, want);
        CHECK_STREQ(c->providers_dir, pd);
        CHECK_STREQ(c->admin_group, "tbadmin");
        CHECK_STREQ(c->callback_listen, "127.0.0.1:9999");
        CHECK_STREQ(c->public_url, "https://broker.example.com");   /* trailing slash dropped */
        CHECK_EQ_INT(c->socket_mode, 0660);
        CHECK_EQ_INT(c->refresh_margin, 2 * USEC_PER_MINUTE);
        CHECK(c->refresh_ratio == 0.25);
        CHECK_EQ_INT(c->refresh_jitter, 500 * USEC_PER_MSEC);
        CHECK_EQ_INT(c->max_parallel_refreshes, 8);
        CHECK_EQ_INT(c->pending_ttl, 5 * USEC_PER_MINUTE);
        CHECK_EQ_INT(c->max_connections, 100);

        /* sorted by name */
        CHECK_EQ_INT(c->n_providers, 3);
        if (c->n_providers == 3) {
                CHECK_STREQ(c->providers[0]->name, "alpha");
                CHECK_STREQ(c->providers[1]->name, "mid-1.x");
                CHECK_STREQ(c->providers[2]->name, "zeta");
        }
        CHECK(broker_config_find_provider(c, "zeta") == (c->n_providers == 3 ? c->providers[2] : NULL));
        CHECK_STREQ(broker_config_find_provider(c, "alpha")->client_id, "id-alpha");
        CHECK_STREQ(broker_config_find_provider(c, "alpha")->client_secret, "secret-alpha");
        CHECK(!broker_config_find_provider(c, "README"));
        CHECK(!broker_config_find_provider(c, "hidden"));
        CHECK(!broker_config_find_provider(c, "old"));
        CHECK(!broker_config_find_provider(c, ""));

        CHECK_EQ_INT(broker_config_redirect_uri(c, NULL, &redirect), 0);
        CHECK_STREQ(redirect, "https://broker.example.com/oauth/callback");
        /* one redirect URI per provider (mix-up defence), unless shared_callback */
        CHECK_STREQ(broker_config_find_provider(c, "mid-1.x")->redirect_uri,
                    "https://broker.example.com/oauth/callback/mid-1.x");
        {
                Provider *p = broker_config_find_provider(c, "zeta");
                _cleanup_free_ char *shared = NULL;

                p->shared_callback = true;
                CHECK_EQ_INT(broker_config_redirect_uri(c, p, &shared), 0);
                CHECK_STREQ(shared, "https://broker.example.com/oauth/callback");
        }
}

TEST(broker_defaults) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = NULL, *redirect = NULL, *pd = NULL, *text = NULL;
        _cleanup_(broker_config_freep) BrokerConfig *c = NULL;
        ConfError err = {};

        /* an empty providers_dir is no error (a warning): no providers yet */
        pd = subdir(dir, "providers.d");
        CHECK(asprintf(&text, "[broker]\nproviders_dir = %s\n", pd) >= 0);
        path = write_file(dir, "tb.conf", text);
        CHECK_EQ_INT(broker_config_load(path, &c, &err), 0);
        if (!c)
                return;
        CHECK_STREQ(c->state_dir, "/var/lib/tokenbroker");
        CHECK_STREQ(c->socket, "/run/tokenbroker/tokenbroker.sock");
        CHECK_STREQ(c->callback_listen, "127.0.0.1:8421");
        CHECK_STREQ(c->providers_dir, pd);
        CHECK(!c->admin_group);
        CHECK_EQ_INT(c->socket_mode, 0666);
        CHECK_EQ_INT(c->refresh_margin, 60 * USEC_PER_SEC);
        CHECK(c->refresh_ratio == 0.1);
        CHECK_EQ_INT(c->refresh_jitter, 5 * USEC_PER_SEC);
        CHECK_EQ_INT(c->max_parallel_refreshes, 64);
        CHECK_EQ_INT(c->pending_ttl, 10 * USEC_PER_MINUTE);
        CHECK_EQ_INT(c->n_providers, 0);
        /* no public_url: the callback listener itself */
        CHECK_STREQ(c->public_url, "http://127.0.0.1:8421");
        CHECK_EQ_INT(broker_config_redirect_uri(c, NULL, &redirect), 0);
        CHECK_STREQ(redirect, "http://127.0.0.1:8421/oauth/callback");
        CHECK(!broker_config_find_provider(c, "x"));
}

TEST(broker_absolute_paths_and_listen) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = NULL, *redirect = NULL;
        _cleanup_(broker_config_freep) BrokerConfig *c = NULL;
        ConfError err = {};

        free(subdir(dir, "empty.d"));
        path = write_file(dir, "tb.conf",
                          "[broker]\n"
                          "state_dir = /var/lib/tb-test\n"
                          "socket = /run/tb-test.sock\n"
                          "providers_dir = empty.d\n"
                          "callback_listen = [::1]:8080\n");
        CHECK_EQ_INT(broker_config_load(path, &c, &err), 0);
        if (!c)
                return;
        CHECK_STREQ(c->state_dir, "/var/lib/tb-test");
        CHECK_STREQ(c->socket, "/run/tb-test.sock");
        CHECK_STREQ(c->callback_listen, "[::1]:8080");
        CHECK_STREQ(c->public_url, "http://[::1]:8080");
        CHECK_EQ_INT(broker_config_redirect_uri(c, NULL, &redirect), 0);
        CHECK_STREQ(redirect, "http://[::1]:8080/oauth/callback");
}

TEST(broker_public_url_loopback) {
        static const char *const ok[] = { "http://127.0.0.1:8421", "http://localhost:8421/", "http://[::1]:8421",
                                          "https://tb.example.com/base/" };
        static const char *const want[] = { "http://127.0.0.1:8421/oauth/callback",
                                            "http://localhost:8421/oauth/callback",
                                            "http://[::1]:8421/oauth/callback",
                                            "https://tb.example.com/base/oauth/callback" };
        _cleanup_tmpdir_ char *dir = tmpdir_new();

        for (size_t i = 0; i < ELEMENTSOF(ok); i++) {
                _cleanup_free_ char *text = NULL, *path = NULL, *redirect = NULL;
                _cleanup_(broker_config_freep) BrokerConfig *c = NULL;
                ConfError err = {};

                free(subdir(dir, "empty.d"));
                CHECK(asprintf(&text, "[broker]\nproviders_dir = empty.d\npublic_url = %s\n", ok[i]) >= 0);
                path = write_file(dir, "tb.conf", text);
                CHECK_EQ_INT(broker_config_load(path, &c, &err), 0);
                if (!c)
                        continue;
                CHECK_EQ_INT(broker_config_redirect_uri(c, NULL, &redirect), 0);
                CHECK_STREQ(redirect, want[i]);
        }
}

TEST(broker_errors) {
        static const struct {
                const char *text;
                unsigned line;
                const char *msg;
        } v[] = {
                { "[broker]\nstate_dirr = /x\n", 2, "Unknown key 'state_dirr'." },
                { "[provider]\ntoken_url = https://a.example/t\n", 2,
                  "Unknown section [provider], expected [broker]." },
                { "state_dir = /x\n[broker]\n", 1, "Key 'state_dir' outside of a section." },
                { "[broker]\n\nstate_dir /x\n", 3, "Expected 'key = value', got: state_dir /x" },
                { "[broker]\npublic_url = http://broker.example.com\n", 2,
                  "public_url must be an https:// URL (http:// only on loopback): http://broker.example.com" },
                { "[broker]\npublic_url = https://broker.example.com/?x=1\n", 2,
                  "public_url must be an https:// URL (http:// only on loopback): https://broker.example.com/?x=1" },
                { "[broker]\npublic_url = https://broker.example.com/#f\n", 2,
                  "public_url must be an https:// URL (http:// only on loopback): https://broker.example.com/#f" },
                { "[broker]\ncallback_listen = 8421\n", 2, "callback_listen must be HOST:PORT: 8421" },
                { "[broker]\ncallback_listen = :8421\n", 2, "callback_listen must be HOST:PORT: :8421" },
                { "[broker]\ncallback_listen = localhost:65536\n", 2,
                  "callback_listen must be HOST:PORT: localhost:65536" },
                { "[broker]\ncallback_listen = localhost:http\n", 2,
                  "callback_listen must be HOST:PORT: localhost:http" },
                { "[broker]\nsocket_mode = 0999\n", 2, "socket_mode must be an octal mode: 0999" },
                { "[broker]\nsocket_mode = 01777\n", 2, "socket_mode must be an octal mode: 01777" },
                { "[broker]\nrefresh_ratio = 1\n", 2, "refresh_ratio must be in [0, 1): 1" },
                { "[broker]\nrefresh_ratio = -0.1\n", 2, "refresh_ratio must be in [0, 1): -0.1" },
                { "[broker]\nrefresh_ratio = 0.5x\n", 2, "refresh_ratio must be in [0, 1): 0.5x" },
                { "[broker]\nrefresh_margin = soon\n", 2, "Invalid duration for refresh_margin: soon" },
                { "[broker]\npending_ttl = 400d\n", 2, "Invalid duration for pending_ttl: 400d" },
                { "[broker]\nmax_connections = 0\n", 2, "max_connections must be a positive number: 0" },
                { "[broker]\nmax_parallel_refreshes = -1\n", 2,
                  "max_parallel_refreshes must be a positive number: -1" },
                { "[broker]\nadmin_group = a\x01" "b\n", 2, "Control character in value of 'admin_group'." },
        };
        _cleanup_tmpdir_ char *dir = tmpdir_new();

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *path = write_file(dir, "tb.conf", v[i].text), *want = NULL;
                BrokerConfig *c = NULL;
                ConfError err = {};

                CHECK(path);
                CHECK_EQ_INT(broker_config_load(path, &c, &err), -EINVAL);
                CHECK(!c);
                broker_config_free(c);
                CHECK(asprintf(&want, "%s:%u: %s", path, v[i].line, v[i].msg) >= 0);
                CHECK_STREQ(err.msg, want);
        }
}

TEST(broker_missing_file) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = NULL, *want = NULL;
        BrokerConfig *c = NULL;
        ConfError err = {};

        CHECK(asprintf(&path, "%s/absent.conf", dir) >= 0);
        CHECK_EQ_INT(broker_config_load(path, &c, &err), -ENOENT);
        CHECK(!c);
        CHECK(asprintf(&want, "%s: Cannot read: %s", path, strerror(ENOENT)) >= 0);
        CHECK_STREQ(err.msg, want);

        /* a folder is not a config file */
        CHECK_EQ_INT(broker_config_load(dir, &c, &err), -EISDIR);
        CHECK(!c);
}

TEST(broker_bad_provider_fails_load) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = NULL, *pd = subdir(dir, "providers.d"), *bad = NULL, *want = NULL;
        BrokerConfig *c = NULL;
        ConfError err = {};

        path = write_file(dir, "tb.conf", "[broker]\nproviders_dir = providers.d\n");
        free(write_provider(pd, "good"));
        bad = write_file(pd, "bad.conf", "[provider]\ntoken_url = http://evil.example.com/token\n");
        CHECK_EQ_INT(broker_config_load(path, &c, &err), -EINVAL);
        CHECK(!c);
        /* the message names the provider file and its line */
        CHECK(asprintf(&want, "%s:2: token_url must be an https:// URL (http:// only on loopback): "
                              "http://evil.example.com/token", bad) >= 0);
        CHECK_STREQ(err.msg, want);
}

TEST(provider_error_map) {
        static const char text[] =
                "[provider]\n"
                "grant = client_credentials\n"
                "token_url = https://a.example/t\n"
                "client_id = x\n"
                "client_secret = y\n"
                "error_map = AADSTS70000 -> retry\n"
                "error_map = AADSTS700082 -> reauth : expired after 90 days\n"
                "error_map = /has been expired or revoked/ -> reauth : testing mode\n"
                "error_map = invalid_client -> retry\n";
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_(provider_freep) Provider *p = NULL;
        const char *hint = NULL;
        ConfError err;

        CHECK(dir);
        CHECK_EQ_INT(load_provider_text(dir, text, strlen(text), &p, &err, NULL), 0);
        if (!p)
                return;
        CHECK_EQ_INT(p->n_error_rules, 4);
        CHECK_EQ_INT(provider_classify_error(p, 400, "invalid_grant", "AADSTS70000: burst", &hint), ERROR_CLASS_RETRY);
        CHECK(!hint);
        CHECK_EQ_INT(provider_classify_error(p, 400, "invalid_grant", "AADSTS700082: gone", &hint), ERROR_CLASS_REAUTH);
        CHECK_STREQ(hint, "expired after 90 days");
        CHECK_EQ_INT(provider_classify_error(p, 400, "invalid_grant", "Token has been expired or revoked.", &hint),
                     ERROR_CLASS_REAUTH);
        CHECK_STREQ(hint, "testing mode");
        CHECK_EQ_INT(provider_classify_error(p, 401, "invalid_client", NULL, &hint), ERROR_CLASS_RETRY);
        /* the defaults of RFC 6749 section 5.2 */
        CHECK_EQ_INT(provider_classify_error(NULL, 400, "invalid_grant", NULL, &hint), ERROR_CLASS_REAUTH);
        CHECK_EQ_INT(provider_classify_error(NULL, 400, "invalid_scope", NULL, &hint), ERROR_CLASS_CONFIG);
        CHECK_EQ_INT(provider_classify_error(NULL, 503, "invalid_grant", NULL, &hint), ERROR_CLASS_RETRY);
        CHECK_EQ_INT(provider_classify_error(NULL, 400, "invalid_request", NULL, &hint), ERROR_CLASS_RETRY);
}

TEST(provider_request_keys) {
        static const char text[] =
                "[provider]\n"
                "grant = password\n"
                "token_url = https://a.example/t?c=${client_id}\n"
                "refresh_url = https://a.example/r\n"
                "client_id = x\n"
                "client_auth = headers\n"
                "client_secret = y\n"
                "token_method = put\n"
                "token_body = json\n"
                "token_header = X-Auth: ${client_id}:${client_secret}\n"
                "token_param = u=${username}\n"
                "token_param = p=${password}\n"
                "refresh_param = rt=${refresh_token}\n"
                "username = svc\n"
                "password = pw\n"
                "never_expires = yes\n"
                "expires_at_pointer = /exp\n";
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_(provider_freep) Provider *p = NULL;
        ConfError err;

        CHECK(dir);
        CHECK_EQ_INT(load_provider_text(dir, text, strlen(text), &p, &err, NULL), 0);
        if (!p)
                return;
        CHECK_EQ_INT(p->grant, GRANT_PASSWORD);
        CHECK_STREQ(p->token_method, "PUT");
        CHECK_EQ_INT(p->token_body, BODY_JSON);
        CHECK_EQ_INT(p->refresh_body, BODY_JSON);   /* defaults to the token body */
        CHECK_EQ_INT(p->token_header.n, 1);
        CHECK_EQ_INT(p->token_param.n, 2);
        CHECK_EQ_INT(p->refresh_param.n, 1);
        CHECK_STREQ(p->password, "pw");
        CHECK(p->never_expires);
        CHECK_STREQ(p->ptr_expires_at, "/exp");
}

/* ---- paths and warnings ------------------------------------------------ */

TEST(path_join_normalizes) {
        static const struct {
                const char *dir, *value, *want;
        } v[] = {
                { "conf/dev", "../../.run/state", ".run/state" },
                { "conf/dev", "./providers.d/", "conf/dev/providers.d" },
                { "conf//dev/", "a//b/./c", "conf/dev/a/b/c" },
                { "/etc/tokenbroker", "../../var/lib/tb", "/var/lib/tb" },
                { "/etc", "../../../x", "/x" },
                { "conf", "../../up", "../up" },
                { "..", "../x", "../../x" },
                { "conf", "/abs//./y/../z", "/abs/z" },
                { "", "rel/./x", "rel/x" },
                { "a", "..", "." },
                { "/", "state", "/state" },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *s = NULL;

                CHECK_EQ_INT(conf_path_join(v[i].dir, v[i].value, &s), 0);
                if (s)
                        CHECK_STREQ(s, v[i].want);
        }
}

TEST(path_join_keeps_dotdot_after_symlink) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *link = NULL, *s = NULL, *want = NULL, *target = NULL;

        CHECK(dir);
        target = subdir(dir, "real");
        CHECK(asprintf(&link, "%s/link", dir) >= 0);
        CHECK(symlink("/", link) == 0);
        /* link/.. is "/"'s parent for the kernel, not dir: keep it */
        CHECK_EQ_INT(conf_path_join(link, "../x", &s), 0);
        CHECK(asprintf(&want, "%s/../x", link) >= 0);
        CHECK_STREQ(s, want);
}

static char warnings[4096];
static unsigned n_warnings;

static void collect_warning(const char *msg) {
        size_t n = strlen(warnings);

        n_warnings++;
        snprintf(warnings + n, sizeof warnings - n, "%s\n", msg);
}

TEST(broker_warnings) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = NULL, *pd = NULL, *want = NULL, *p1 = NULL;
        _cleanup_(broker_config_freep) BrokerConfig *c = NULL;
        ConfError err = {};

        CHECK(dir);
        pd = subdir(dir, "providers.d");
        path = write_file(dir, "tb.conf",
                          "[broker]\nproviders_dir = providers.d\nstate_dir = a\n\nstate_dir = b\nrefresh_margin = 1s\n");
        p1 = write_file(pd, "one.conf", "[provider]\nauthorize_url = https://a.example/a\n"
                                        "token_url = https://a.example/t\nclient_id = x\nclient_secret = s\n"
                                        "scopes = a\nscopes = b\nclient_secret_file = ../secret\n"
                                        "token_param = a=b\ntoken_param = c=d\nclient_secret = s2\n");
        free(write_file(pd, "one.conf.bak", "[garbage"));
        free(write_file(pd, "two.ini", "[garbage"));
        free(write_file(pd, ".one.conf.swp", "[garbage"));
        free(write_file(pd, "two.conf", good_provider));
        free(write_file(dir, "secret", "from-file\n"));

        warnings[0] = 0;
        n_warnings = 0;
        conf_set_warning(collect_warning);
        CHECK_EQ_INT(broker_config_load(path, &c, &err), 0);
        conf_set_warning(NULL);
        CHECK(c && c->n_providers == 2);
        /* in file order, provider files sorted by name; hidden files and
         * repeatable keys (token_param) are no warning */
        CHECK(asprintf(&want,
                       "%1$s:5: warning: duplicate key 'state_dir' (also set at line 3), the last one wins.\n"
                       "%2$s:7: warning: duplicate key 'scopes' (also set at line 6), the last one wins.\n"
                       "%2$s:8: warning: 'client_secret_file' overrides 'client_secret' at line 5, the last one wins.\n"
                       "%2$s:11: warning: 'client_secret' overrides 'client_secret_file' at line 8, the last one wins.\n"
                       "%3$s/one.conf.bak: warning: ignored: provider files are named NAME.conf.\n"
                       "%3$s/two.ini: warning: ignored: provider files are named NAME.conf.\n",
                       path, p1, pd) >= 0);
        CHECK_EQ_INT(n_warnings, 6);
        CHECK_STREQ(warnings, want);
        if (c && c->n_providers == 2) {
                CHECK_STREQ(c->providers[0]->scopes, "b");
                CHECK_STREQ(c->providers[0]->client_secret, "s2");
        }
}

TEST(broker_providers_dir_missing_or_empty) {
        _cleanup_tmpdir_ char *dir = tmpdir_new();
        _cleanup_free_ char *path = NULL, *want = NULL, *pd = NULL;
        BrokerConfig *c = NULL;
        ConfError err = {};

        CHECK(dir);
        /* missing: an error naming the (normalized) path and the line */
        path = write_file(dir, "tb.conf", "[broker]\nstate_dir = s\nproviders_dir = ./sub/../providers.d/\n");
        warnings[0] = 0;
        n_warnings = 0;
        conf_set_warning(collect_warning);
        CHECK_EQ_INT(broker_config_load(path, &c, &err), -ENOENT);
        CHECK(!c);
        CHECK(asprintf(&want, "%s:3: providers_dir '%s/providers.d' does not exist.", path, dir) >= 0);
        CHECK_STREQ(err.msg, want);
        CHECK_EQ_INT(n_warnings, 0);

        /* the default, unset: said so */
        want = mfree(want);
        free(path);
        path = write_file(dir, "tb.conf", "[broker]\nstate_dir = s\n");
        if (access("/etc/tokenbroker/providers.d", F_OK) < 0) {
                CHECK_EQ_INT(broker_config_load(path, &c, &err), -ENOENT);
                CHECK(asprintf(&want, "%s: providers_dir '/etc/tokenbroker/providers.d' (the default) does not exist.",
                               path) >= 0);
                CHECK_STREQ(err.msg, want);
        }

        /* empty: a warning at the providers_dir line */
        want = mfree(want);
        free(path);
        path = write_file(dir, "tb.conf", "[broker]\nstate_dir = s\nproviders_dir = ./sub/../providers.d/\n");
        pd = subdir(dir, "providers.d");
        err = (ConfError) {};
        CHECK_EQ_INT(broker_config_load(path, &c, &err), 0);
        conf_set_warning(NULL);
        CHECK(c && c->n_providers == 0);
        CHECK(asprintf(&want, "%s:3: warning: providers_dir '%s' holds no provider files (NAME.conf).\n", path, pd) >= 0);
        CHECK_STREQ(warnings, want);
        broker_config_free(c);
}
