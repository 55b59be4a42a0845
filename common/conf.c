/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <sys/stat.h>

#include "common/conf.h"
#include "common/egress.h"
#include "common/jsonptr.h"
#include "common/params.h"
#include "common/template.h"

#define CONF_FILE_MAX (1024 * 1024)
#define CONF_LINE_MAX 8192

static const char *const grant_table[_GRANT_MAX] = {
        [GRANT_AUTHORIZATION_CODE] = "authorization_code",
        [GRANT_CLIENT_CREDENTIALS] = "client_credentials",
        [GRANT_PASSWORD] = "password",
        [GRANT_DEVICE_CODE] = "device_code",
};
static const char *const client_auth_table[_CLIENT_AUTH_MAX] = {
        [CLIENT_AUTH_BASIC] = "basic",
        [CLIENT_AUTH_POST] = "post",
        [CLIENT_AUTH_NONE] = "none",
        [CLIENT_AUTH_HEADERS] = "headers",
};
static const char *const body_table[_BODY_MAX] = {
        [BODY_FORM] = "form",
        [BODY_JSON] = "json",
        [BODY_QUERY] = "query",
};
static const char *const error_class_table[_ERROR_CLASS_MAX] = {
        [ERROR_CLASS_RETRY] = "retry",
        [ERROR_CLASS_REAUTH] = "reauth",
        [ERROR_CLASS_CONFIG] = "config",
};

/* Placeholders every provider request may use. The authorize URL goes to
 * a browser: no client secret, no password there. */
#define PLACEHOLDERS_COMMON                                                                            \
        "client_id", "redirect_uri", "scope", "username", "uuid", "random_string", "random_base64",   \
                "random_int", "timestamp_unix", "utc", "token_url"
const char *const placeholders_authorize[] = { PLACEHOLDERS_COMMON, "state", NULL };
const char *const placeholders_token[] = {
        PLACEHOLDERS_COMMON, "client_secret", "password", "code", "code_verifier", "state", "device_code", NULL,
};
const char *const placeholders_refresh[] = { PLACEHOLDERS_COMMON, "client_secret", "password", "refresh_token",
                                             "access_token", NULL };
/* ${token} and ${token_type_hint}: the token this request revokes (the
 * refresh token, then the access token), as RFC 7009's parameters. */
const char *const placeholders_revoke[] = { PLACEHOLDERS_COMMON, "client_secret", "token", "token_type_hint",
                                            "access_token", "refresh_token", NULL };
static const char *const pkce_table[_PKCE_MAX] = {
        [PKCE_S256] = "S256",
        [PKCE_PLAIN] = "plain",
        [PKCE_NONE] = "none",
};

static int table_lookup(const char *const *table, size_t n, const char *s) {
        for (size_t i = 0; i < n; i++)
                if (table[i] && streq(table[i], s))
                        return (int) i;
        return -EINVAL;
}

const char *grant_to_string(Grant g) {
        return g >= 0 && g < _GRANT_MAX ? grant_table[g] : NULL;
}
Grant grant_from_string(const char *s) {
        return (Grant) table_lookup(grant_table, _GRANT_MAX, s);
}
const char *client_auth_to_string(ClientAuth a) {
        return a >= 0 && a < _CLIENT_AUTH_MAX ? client_auth_table[a] : NULL;
}
const char *pkce_to_string(Pkce p) {
        return p >= 0 && p < _PKCE_MAX ? pkce_table[p] : NULL;
}
const char *body_type_to_string(BodyType b) {
        return b >= 0 && b < _BODY_MAX ? body_table[b] : NULL;
}
const char *error_class_to_string(ErrorClass c) {
        return c >= 0 && c < _ERROR_CLASS_MAX ? error_class_table[c] : NULL;
}

static provider_discover_fn discover_hook = NULL;

void conf_set_discovery(provider_discover_fn fn) {
        discover_hook = fn;
}

static conf_warning_fn warning_hook = NULL;

void conf_set_warning(conf_warning_fn fn) {
        warning_hook = fn;
}

/* A warning never fails a load: it is formatted as "file:line: warning:
 * text" and handed to the caller's hook (printed by --check-config, logged
 * at start and at reload), or dropped when no hook is set. */
_printf_(3, 4)
static void conf_warn(const char *path, unsigned line, const char *fmt, ...) {
        char msg[1024];
        va_list ap;
        int n;

        if (!warning_hook)
                return;
        if (line > 0)
                n = snprintf(msg, sizeof msg, "%s:%u: warning: ", path, line);
        else
                n = snprintf(msg, sizeof msg, "%s: warning: ", path);
        if (n < 0 || (size_t) n >= sizeof msg)
                return;
        va_start(ap, fmt);
        (void) vsnprintf(msg + n, sizeof msg - (size_t) n, fmt, ap);
        va_end(ap);
        warning_hook(msg);
}

int conf_path_join(const char *dir, const char *value, char **ret) {
        _cleanup_free_ char *s = NULL, *out = NULL;
        size_t *stack = NULL, depth = 0, len = 0;
        bool absolute;
        char *save = NULL;

        if (value[0] == '/' || isempty(dir))
                s = strdup(value);
        else if (asprintf(&s, "%s/%s", dir, value) < 0)
                s = NULL;
        if (!s)
                return -ENOMEM;
        absolute = s[0] == '/';
        out = malloc(strlen(s) + 2);
        /* one start offset per component kept: at most one per two bytes */
        stack = malloc(sizeof(size_t) * (strlen(s) / 2 + 2));
        if (!out || !stack) {
                free(stack);
                return -ENOMEM;
        }
        out[0] = 0;
        for (char *c = strtok_r(s, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
                if (streq(c, "."))
                        continue;
                if (streq(c, "..")) {
                        struct stat st;

                        if (depth == 0 && absolute)
                                continue;   /* "/.." is "/" */
                        /* Drop the component before only where the kernel
                         * would: not after another "..", not across a
                         * symlink (whose ".." is somewhere else). */
                        if (depth > 0 && !streq(out + stack[depth - 1], "..") &&
                            !(lstat(out, &st) >= 0 && S_ISLNK(st.st_mode))) {
                                len = stack[--depth];
                                if (len > 0)
                                        len--;   /* the '/' before it */
                                out[len] = 0;
                                continue;
                        }
                }
                if (absolute || depth > 0)
                        out[len++] = '/';
                stack[depth++] = len;
                len += (size_t) sprintf(out + len, "%s", c);
        }
        free(stack);
        if (len == 0) {
                out[0] = absolute ? '/' : '.';
                out[1] = 0;
        }
        *ret = TAKE_PTR(out);
        return 0;
}

void conf_error(ConfError *err, const char *path, unsigned line, const char *fmt, ...) {
        va_list ap;
        int n;

        if (!err)
                return;
        if (line > 0)
                n = snprintf(err->msg, sizeof err->msg, "%s:%u: ", path, line);
        else
                n = snprintf(err->msg, sizeof err->msg, "%s: ", path);
        if (n < 0 || (size_t) n >= sizeof err->msg)
                return;
        va_start(ap, fmt);
        (void) vsnprintf(err->msg + n, sizeof err->msg - (size_t) n, fmt, ap);
        va_end(ap);
}

static char *strip(char *s) {
        char *e;

        while (*s == ' ' || *s == '\t')
                s++;
        e = s + strlen(s);
        while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
                *--e = 0;
        return s;
}

int ini_parse_string(const char *path, const char *text, size_t len, ini_fn fn,
                     void *userdata, ConfError *err) {
        char section[64] = "";
        unsigned line = 0;
        const char *p = text, *end = text + len;
        int r;

        while (p < end) {
                const char *nl = memchr(p, '\n', (size_t) (end - p));
                size_t n = nl ? (size_t) (nl - p) : (size_t) (end - p);
                char buf[CONF_LINE_MAX], *s, *eq, *key, *value;

                line++;
                if (n >= sizeof buf) {
                        conf_error(err, path, line, "Line too long (more than %d bytes).",
                                   CONF_LINE_MAX - 1);
                        return -E2BIG;
                }
                if (memchr(p, 0, n)) {
                        conf_error(err, path, line, "NUL byte in configuration.");
                        return -EINVAL;
                }
                memcpy(buf, p, n);
                buf[n] = 0;
                p = nl ? nl + 1 : end;

                s = strip(buf);
                if (*s == 0 || *s == '#' || *s == ';')
                        continue;
                if (*s == '[') {
                        char *close = strchr(s, ']');
                        if (!close || *strip(close + 1) != 0 || close - s - 1 <= 0 ||
                            (size_t) (close - s - 1) >= sizeof section) {
                                conf_error(err, path, line, "Invalid section header: %s", s);
                                return -EINVAL;
                        }
                        *close = 0;
                        snprintf(section, sizeof section, "%s", s + 1);
                        continue;
                }
                eq = strchr(s, '=');
                if (!eq) {
                        conf_error(err, path, line, "Expected 'key = value', got: %.64s", s);
                        return -EINVAL;
                }
                *eq = 0;
                key = strip(s);
                value = eq + 1;
                /* An inline comment starts with whitespace then ';' or '#'. */
                for (char *c = value; *c; c++)
                        if ((*c == ';' || *c == '#') && c > value && (c[-1] == ' ' || c[-1] == '\t')) {
                                *c = 0;
                                break;
                        }
                value = strip(value);
                if (*key == 0) {
                        conf_error(err, path, line, "Empty key.");
                        return -EINVAL;
                }
                if (*section == 0) {
                        conf_error(err, path, line, "Key '%s' outside of a section.", key);
                        return -EINVAL;
                }
                r = fn(section, key, value, line, userdata, err);
                explicit_wipe(buf, sizeof buf);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int read_file_bounded(const char *path, size_t max, char **ret, size_t *ret_len, mode_t *ret_mode) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        struct stat st;
        size_t len = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EISDIR;
        if ((size_t) st.st_size > max)
                return -E2BIG;
        if (ret_mode)
                *ret_mode = st.st_mode;
        buf = malloc(max + 1);
        if (!buf)
                return -ENOMEM;
        for (;;) {
                ssize_t k = read(fd, buf + len, max + 1 - len);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                len += (size_t) k;
                if (len > max)
                        return -E2BIG;
        }
        buf[len] = 0;
        *ret = TAKE_PTR(buf);
        *ret_len = len;
        return 0;
}

int ini_parse_file(const char *path, ini_fn fn, void *userdata, ConfError *err) {
        _cleanup_free_ char *text = NULL;
        size_t len;
        int r;

        r = read_file_bounded(path, CONF_FILE_MAX, &text, &len, NULL);
        if (r < 0) {
                conf_error(err, path, 0, "Cannot read: %s", strerror(-r));
                return r;
        }
        r = ini_parse_string(path, text, len, fn, userdata, err);
        explicit_wipe(text, len);
        return r;
}

/* ---- typed values -------------------------------------------------- */

static int parse_seconds(const char *v, usec_t max, usec_t *ret) {
        char *end;
        double d;

        if (isempty(v))
                return -EINVAL;
        errno = 0;
        d = strtod(v, &end);
        if (errno != 0 || end == v || !isfinite(d) || d < 0)
                return -EINVAL;
        end = strip(end);
        if (*end == 0 || streq(end, "s"))
                ;
        else if (streq(end, "ms"))
                d /= 1000.0;
        else if (streq(end, "min") || streq(end, "m"))
                d *= 60.0;
        else if (streq(end, "h"))
                d *= 3600.0;
        else if (streq(end, "d"))
                d *= 86400.0;
        else
                return -EINVAL;
        if (d * (double) USEC_PER_SEC > (double) max)
                return -ERANGE;
        *ret = (usec_t) (d * (double) USEC_PER_SEC);
        return 0;
}

static int parse_uint(const char *v, unsigned long max, unsigned long *ret, int base) {
        char *end;
        unsigned long u;

        if (isempty(v) || *v == '-' || *v == '+')
                return -EINVAL;
        errno = 0;
        u = strtoul(v, &end, base);
        if (errno != 0 || *end != 0)
                return -EINVAL;
        if (u > max)
                return -ERANGE;
        *ret = u;
        return 0;
}

static bool host_is_loopback(const char *host, size_t len) {
        struct in_addr a;
        char h[256];

        if (len == 0 || len >= sizeof h)
                return false;
        memcpy(h, host, len);
        h[len] = 0;
        if (streq(h, "localhost") || streq(h, "[::1]"))
                return true;
        /* 127.0.0.0/8, as a dotted quad: "127.", "127.999.1.1" or
         * "127.0.0.1." are no addresses but names a resolver looks up. */
        if (inet_pton(AF_INET, h, &a) == 1)
                return (ntohl(a.s_addr) >> 24) == 127;
        return false;
}

bool url_is_acceptable(const char *url) {
        const char *rest, *end;

        if ((rest = startswith(url, "https://")))
                return *rest != 0 && *rest != '/';
        if (!(rest = startswith(url, "http://")))
                return false;
        /* RFC 6749 section 3.1 and 10.9: TLS everywhere but loopback. */
        end = rest + strcspn(rest, "/?#");
        /* Userinfo: in "http://127.0.0.1:80@evil.com/" the host is evil.com. */
        if (memchr(rest, '@', (size_t) (end - rest)))
                return false;
        if (*rest == '[') {
                const char *close = memchr(rest, ']', (size_t) (end - rest));
                if (!close)
                        return false;
                return host_is_loopback(rest, (size_t) (close - rest + 1));
        }
        return host_is_loopback(rest, strcspn(rest, ":/?#"));
}

static bool value_has_ctl(const char *v) {
        for (; *v; v++)
                if ((unsigned char) *v < 0x20 || *v == 0x7f)
                        return true;
        return false;
}

static int set_string(char **field, const char *value) {
        char *s = strdup(value);

        if (!s)
                return -ENOMEM;
        free(*field);
        *field = s;
        return 0;
}

/* ---- provider files ------------------------------------------------ */

typedef enum KeyType {
        KEY_STRING,
        KEY_URL,
        KEY_SECRET,
        KEY_SECRET_FILE,
        KEY_SECRET_CREDENTIAL,
        KEY_GRANT,
        KEY_CLIENT_AUTH,
        KEY_PKCE,
        KEY_SECONDS,
        KEY_UINT,
        KEY_TIMEOUT,
        KEY_JSONPTR,
        KEY_USAGE_HEADER,
        KEY_USAGE_QUERY,
        KEY_URL_TEMPLATE,         /* an endpoint that may hold placeholders in its path and query */
        KEY_METHOD,
        KEY_BODY,
        KEY_HEADER_TEMPLATE,      /* repeatable "Name: template" */
        KEY_PARAM_TEMPLATE,       /* repeatable "name=template" */
        KEY_BOOL,
        KEY_ERROR_MAP,
        KEY_ISSUER,
        KEY_API_URL,              /* repeatable origin */
} KeyType;

typedef struct ProviderKey {
        const char *name;
        KeyType type;
        size_t offset;
        const char *const *known; /* placeholders of a template key */
} ProviderKey;

#define PK(n, t, f) { n, t, offsetof(Provider, f), NULL }
#define PT(n, t, f, k) { n, t, offsetof(Provider, f), k }
static const ProviderKey provider_keys[] = {
        PK("grant", KEY_GRANT, grant),
        PK("authorize_url", KEY_URL, authorize_url),
        PT("token_url", KEY_URL_TEMPLATE, token_url, placeholders_token),
        PK("revoke_url", KEY_URL, revoke_url),
        PK("test_url", KEY_URL, test_url),
        PK("client_id", KEY_STRING, client_id),
        PK("client_secret", KEY_SECRET, client_secret),
        PK("client_secret_file", KEY_SECRET_FILE, client_secret),
        PK("client_secret_credential", KEY_SECRET_CREDENTIAL, client_secret),
        PK("client_auth", KEY_CLIENT_AUTH, client_auth),
        PK("pkce", KEY_PKCE, pkce),
        PK("scopes", KEY_STRING, scopes),
        PK("scope_separator", KEY_STRING, scope_separator),
        PK("authorize_params", KEY_STRING, authorize_params),
        PK("code_param", KEY_STRING, code_param),
        PK("access_token_pointer", KEY_JSONPTR, ptr_access_token),
        PK("refresh_token_pointer", KEY_JSONPTR, ptr_refresh_token),
        PK("expires_in_pointer", KEY_JSONPTR, ptr_expires_in),
        PK("token_type_pointer", KEY_JSONPTR, ptr_token_type),
        PK("scope_pointer", KEY_JSONPTR, ptr_scope),
        PK("id_token_pointer", KEY_JSONPTR, ptr_id_token),
        PK("error_pointer", KEY_JSONPTR, ptr_error),
        PK("error_description_pointer", KEY_JSONPTR, ptr_error_description),
        PK("default_lifetime", KEY_SECONDS, default_lifetime),
        PK("refresh_at_least", KEY_SECONDS, refresh_at_least),
        PK("max_in_flight", KEY_UINT, max_in_flight),
        PK("timeout", KEY_TIMEOUT, timeout),
        PK("usage_header", KEY_USAGE_HEADER, usage_header),
        PK("usage_query", KEY_USAGE_QUERY, usage_query),
        PT("refresh_url", KEY_URL_TEMPLATE, refresh_url, placeholders_refresh),
        PK("device_authorization_url", KEY_URL, device_authorization_url),
        PK("userinfo_url", KEY_URL, userinfo_url),
        PK("issuer", KEY_ISSUER, issuer),
        PK("token_method", KEY_METHOD, token_method),
        PK("token_body", KEY_BODY, token_body),
        PT("token_header", KEY_HEADER_TEMPLATE, token_header, placeholders_token),
        PT("token_param", KEY_PARAM_TEMPLATE, token_param, placeholders_token),
        PK("refresh_method", KEY_METHOD, refresh_method),
        PK("refresh_body", KEY_BODY, refresh_body),
        PT("refresh_header", KEY_HEADER_TEMPLATE, refresh_header, placeholders_refresh),
        PT("refresh_param", KEY_PARAM_TEMPLATE, refresh_param, placeholders_refresh),
        PT("authorize_param", KEY_PARAM_TEMPLATE, authorize_param, placeholders_authorize),
        PK("username", KEY_STRING, username),
        PK("password", KEY_SECRET, password),
        PK("password_file", KEY_SECRET_FILE, password),
        PK("password_credential", KEY_SECRET_CREDENTIAL, password),
        PK("identity_pointer", KEY_JSONPTR, identity_pointer),
        PK("expires_at_pointer", KEY_JSONPTR, ptr_expires_at),
        PK("never_expires", KEY_BOOL, never_expires),
        PK("shared_callback", KEY_BOOL, shared_callback),
        PK("error_map", KEY_ERROR_MAP, error_rules),
        PK("api_url", KEY_API_URL, api_url),
        PK("api_timeout", KEY_TIMEOUT, api_timeout),
        PK("api_max_connections", KEY_UINT, api_max_connections),
        PK("revoke_method", KEY_METHOD, revoke_method),
        PK("revoke_body", KEY_BODY, revoke_body),
        PT("revoke_header", KEY_HEADER_TEMPLATE, revoke_header, placeholders_revoke),
        PT("revoke_param", KEY_PARAM_TEMPLATE, revoke_param, placeholders_revoke),
        PK("revoke_ok_pointer", KEY_JSONPTR, revoke_ok_pointer),
        PK("revoke_error_pointer", KEY_JSONPTR, revoke_error_pointer),
        PK("refresh_token_expires_in_pointer", KEY_JSONPTR, ptr_refresh_token_expires_in),
        PK("refresh_token_lifetime", KEY_SECONDS, refresh_token_lifetime),
        PK("test_method", KEY_METHOD, test_method),
};

static int set_api_url(Provider *p, unsigned line, const char *key, const char *value, ConfError *err);

static const char *const usage_placeholders[] = { "access_token", "token_type", NULL };

static void template_list_done(TemplateList *l) {
        for (size_t i = 0; i < l->n; i++)
                secret_free(l->items[i]);   /* may hold a literal secret */
        free(l->items);
        *l = (TemplateList) {};
}

Provider *provider_free(Provider *p) {
        if (!p)
                return NULL;
        free(p->name);
        free(p->path);
        free(p->authorize_url);
        free(p->token_url);
        free(p->revoke_url);
        free(p->test_url);
        free(p->refresh_url);
        free(p->device_authorization_url);
        free(p->userinfo_url);
        free(p->issuer);
        free(p->redirect_uri);
        free(p->token_method);
        free(p->refresh_method);
        template_list_done(&p->token_header);
        template_list_done(&p->token_param);
        template_list_done(&p->refresh_header);
        template_list_done(&p->refresh_param);
        template_list_done(&p->authorize_param);
        free(p->username);
        secret_free(p->password);
        free(p->identity_pointer);
        free(p->ptr_expires_at);
        for (size_t i = 0; i < p->n_error_rules; i++) {
                free(p->error_rules[i].pattern);
                free(p->error_rules[i].hint);
                if (p->error_rules[i].regex) {
                        regfree(p->error_rules[i].regex);
                        free(p->error_rules[i].regex);
                }
        }
        free(p->client_id);
        secret_free(p->client_secret);
        free(p->scopes);
        free(p->scope_separator);
        free(p->authorize_params);
        free(p->code_param);
        free(p->ptr_access_token);
        free(p->ptr_refresh_token);
        free(p->ptr_expires_in);
        free(p->ptr_token_type);
        free(p->ptr_scope);
        free(p->ptr_id_token);
        free(p->ptr_error);
        free(p->ptr_error_description);
        for (size_t i = 0; i < p->n_usage_header; i++)
                free(p->usage_header[i]);
        for (size_t i = 0; i < p->n_api_url; i++)
                free(p->api_url[i]);
        free(p->usage_query);
        for (size_t i = 0; i < p->n_params; i++) {
                free(p->params[i].name);
                free(p->params[i].description);
        }
        for (size_t i = 0; i < p->n_metadata; i++) {
                free(p->metadata[i].name);
                free(p->metadata[i].pointer);
                free(p->metadata[i].query);
        }
        free(p->preset);
        free(p->test_method);
        free(p->revoke_method);
        template_list_done(&p->revoke_header);
        template_list_done(&p->revoke_param);
        free(p->revoke_ok_pointer);
        free(p->revoke_error_pointer);
        free(p->ptr_refresh_token_expires_in);
        for (size_t i = 0; i < p->n_client_secret_next; i++)
                secret_free(p->client_secret_next[i]);
        free(p);
        return NULL;
}

bool provider_next_client_secret(Provider *p) {
        char *cur;

        if (!p || p->n_client_secret_next == 0)
                return false;
        /* [cur, n0, n1] -> [n0, n1, cur]: each is tried once per round */
        cur = p->client_secret;
        p->client_secret = p->client_secret_next[0];
        memmove(p->client_secret_next, p->client_secret_next + 1,
                sizeof(char *) * (p->n_client_secret_next - 1));
        p->client_secret_next[p->n_client_secret_next - 1] = cur;
        return true;
}

/* [broker] strict = true while the providers of a main file load. */
static bool load_strict = false;
/* While a preset's keys are applied: the file that names the preset, for
 * relative secret files (p->path then names the preset, for errors). */
static const char *secret_base = NULL;

/* A secret that group or others can read where it is kept (a provider
 * file holding client_secret inline, a client_secret_file): a warning
 * naming the file, as the key file gets, or an error under strict. */
static int secret_exposed(Provider *p, unsigned line, const char *key, const char *file, mode_t mode,
                          ConfError *err) {
        if (load_strict) {
                conf_error(err, p->path, line, "%s: '%s' is readable by group or others (mode %04o) and holds a "
                           "secret (%s): refused under strict = true; chmod 0600 it.", key, file,
                           (unsigned) (mode & 07777), key);
                return -EPERM;
        }
        conf_warn(p->path, line, "'%s' is readable by group or others (mode %04o) and holds a secret (%s): "
                  "chmod 0600 it.", file, (unsigned) (mode & 07777), key);
        return 0;
}

int conf_read_secret_file(const char *path, char **ret, mode_t *ret_mode) {
        _cleanup_free_ char *text = NULL;
        size_t len;
        int r;

        r = read_file_bounded(path, 64 * 1024, &text, &len, ret_mode);
        if (r < 0)
                return r;
        /* One trailing newline is an editor's, not the secret's. */
        while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
                text[--len] = 0;
        if (len == 0 || strlen(text) != len) {
                explicit_wipe(text, len);
                return -EINVAL;
        }
        *ret = TAKE_PTR(text);
        return 0;
}

/* ${param.X} and ${metadata.X} may be declared after the line that uses
 * them: each use is remembered while a file loads and checked at its end
 * (provider_check_refs()), with the line to point at. */
#define LOAD_REFS_MAX 512
typedef struct LoadRef {
        char name[PARAM_NAME_MAX + 10];   /* "param.X" or "metadata.X" */
        char key[48];
        unsigned line;
        UrlPlace place;
} LoadRef;
static LoadRef load_refs[LOAD_REFS_MAX];
static size_t n_load_refs;
static bool load_refs_overflow;

static void load_ref_add(const char *name, size_t len, const char *key, unsigned line, UrlPlace place) {
        LoadRef *ref;

        if (n_load_refs >= LOAD_REFS_MAX) {
                load_refs_overflow = true;
                return;
        }
        ref = &load_refs[n_load_refs++];
        snprintf(ref->name, sizeof ref->name, "%.*s", (int) MIN(len, sizeof ref->name - 1), name);
        snprintf(ref->key, sizeof ref->key, "%s", key);
        ref->line = line;
        ref->place = place;
}

typedef struct TemplateCheck {
        const char *const *known;
        bool allow_metadata;
        const char *key;
        unsigned line;
} TemplateCheck;

static const char *template_check_lookup(const char *name, size_t len, void *userdata) {
        TemplateCheck *t = userdata;
        const char *dot = memchr(name, '.', len);

        for (size_t i = 0; t->known && t->known[i]; i++)
                if (strlen(t->known[i]) == len && memcmp(t->known[i], name, len) == 0)
                        return "";
        if (!dot || !param_name_valid(dot + 1, len - (size_t) (dot + 1 - name)))
                return NULL;
        if (!((dot - name == 5 && memcmp(name, "param", 5) == 0) ||
              (t->allow_metadata && dot - name == 8 && memcmp(name, "metadata", 8) == 0)))
                return NULL;
        load_ref_add(name, len, t->key, t->line, URL_PLACE_REST);
        return "";
}

/* The authorize URL and its parameters come before any metadata. */
static bool key_allows_metadata(const char *key) {
        return !streq(key, "authorize_url") && !streq(key, "authorize_param");
}

static int check_template(Provider *p, unsigned line, const char *key, const char *value,
                          const char *const *known, ConfError *err) {
        TemplateCheck t = { known, key_allows_metadata(key), key, line };
        _cleanup_free_ char *out = NULL;
        const char *bad = NULL;
        size_t bad_len = 0;
        int r;

        r = template_expand(value, template_check_lookup, &t, &out, &bad, &bad_len);
        if (r < 0 && r != -ENOMEM)
                conf_error(err, p->path, line, "%s placeholder '%.*s' in %s.",
                           r == -ENOKEY ? "Unknown" : "Unterminated", (int) MIN(bad_len, 64), bad, key);
        return r;
}

typedef struct UrlCheck {
        const char *key;
        unsigned line;
} UrlCheck;

static void url_check_place(const char *name, size_t len, UrlPlace place, void *userdata) {
        UrlCheck *u = userdata;

        if (place != URL_PLACE_REST)
                load_ref_add(name, len, u->key, u->line, place);
}

/* A URL key: acceptable as a URL, placeholders only where they may stand. */
static int check_url_template(Provider *p, unsigned line, const char *key, const char *value,
                              const char *const *known, ConfError *err) {
        UrlCheck u = { key, line };
        const char *why = NULL;

        if (!startswith(value, "${") && !url_is_acceptable(value)) {
                conf_error(err, p->path, line, "%s must be an https:// URL (http:// only on loopback): %.128s",
                           key, value);
                return -EINVAL;
        }
        if (url_template_check(value, url_check_place, &u, &why) < 0) {
                conf_error(err, p->path, line, "%s: %s: %.128s", key, why, value);
                return -EINVAL;
        }
        return check_template(p, line, key, value, known, err);
}

const ProviderParam *provider_find_param(const Provider *p, const char *name) {
        for (size_t i = 0; i < p->n_params; i++)
                if (streq(p->params[i].name, name))
                        return &p->params[i];
        return NULL;
}

static const ProviderMetadata *provider_find_metadata(const Provider *p, const char *name) {
        for (size_t i = 0; i < p->n_metadata; i++)
                if (streq(p->metadata[i].name, name))
                        return &p->metadata[i];
        return NULL;
}

/* "param = NAME [: description]" and "metadata NAME = /pointer|query:PARAM" */
static int provider_set_param_meta(Provider *p, const char *key, const char *value, unsigned line,
                                   ConfError *err) {
        if (streq(key, "param")) {
                size_t n = strcspn(value, ": \t");
                const char *rest = value + n;
                ProviderParam *pp;

                rest += strspn(rest, " \t");
                if (!param_name_valid(value, n) || (*rest && *rest != ':')) {
                        conf_error(err, p->path, line, "param must be 'NAME [: description]' with NAME of "
                                   "[A-Za-z0-9_-] (at most %d): %.128s", PARAM_NAME_MAX, value);
                        return -EINVAL;
                }
                for (size_t i = 0; i < p->n_params; i++)
                        if (strlen(p->params[i].name) == n && memcmp(p->params[i].name, value, n) == 0) {
                                conf_error(err, p->path, line, "param '%.*s' is declared twice (also at line %u).",
                                           (int) n, value, p->params[i].line);
                                return -EINVAL;
                        }
                if (p->n_params >= PROVIDER_PARAMS_MAX) {
                        conf_error(err, p->path, line, "Too many param lines (at most %d).", PROVIDER_PARAMS_MAX);
                        return -E2BIG;
                }
                pp = &p->params[p->n_params];
                *pp = (ProviderParam) { .line = line };
                if (!(pp->name = strndup(value, n)))
                        return -ENOMEM;
                p->n_params++;
                if (*rest == ':') {
                        rest += 1 + strspn(rest + 1, " \t");
                        if (*rest && !(pp->description = strdup(rest)))
                                return -ENOMEM;
                }
                return 0;
        } else {
                const char *name = key + strlen("metadata");
                const char *q = startswith(value, "query:");
                ProviderMetadata *md;

                name += strspn(name, " \t");
                if (!param_name_valid(name, strlen(name))) {
                        conf_error(err, p->path, line, "metadata must be 'metadata NAME = /json/pointer' or "
                                   "'metadata NAME = query:PARAM' with NAME of [A-Za-z0-9_-]: %.64s", key);
                        return -EINVAL;
                }
                if (provider_find_metadata(p, name)) {
                        conf_error(err, p->path, line, "metadata '%s' is declared twice (also at line %u).", name,
                                   provider_find_metadata(p, name)->line);
                        return -EINVAL;
                }
                if (q) {
                        if (!param_name_valid(q, strlen(q)) && !(strlen(q) > 0 && strlen(q) <= PARAM_NAME_MAX &&
                                                                 strspn(q, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn"
                                                                           "opqrstuvwxyz0123456789_-.") == strlen(q))) {
                                conf_error(err, p->path, line, "metadata %s: invalid callback parameter name: %.64s",
                                           name, q);
                                return -EINVAL;
                        }
                        /* the code is a secret; state and iss are the broker's */
                        if (streq(q, "code") || streq(q, "state") || streq(q, "iss") || streq(q, "error") ||
                            streq(q, "error_description") ||
                            (p->code_param && streq(q, p->code_param))) {
                                conf_error(err, p->path, line, "metadata %s: query:%s is refused: that callback "
                                           "parameter is a secret or the broker's own.", name, q);
                                return -EINVAL;
                        }
                } else if (jsonptr_validate(value) < 0) {
                        conf_error(err, p->path, line, "metadata %s: expected a JSON pointer (/a/b) or "
                                   "query:PARAM: %.128s", name, value);
                        return -EINVAL;
                }
                if (p->n_metadata >= PROVIDER_METADATA_MAX) {
                        conf_error(err, p->path, line, "Too many metadata lines (at most %d).",
                                   PROVIDER_METADATA_MAX);
                        return -E2BIG;
                }
                md = &p->metadata[p->n_metadata];
                *md = (ProviderMetadata) { .line = line };
                md->name = strdup(name);
                if (q)
                        md->query = strdup(q);
                else
                        md->pointer = strdup(value);
                p->n_metadata++;
                if (!md->name || (!md->query && !md->pointer))
                        return -ENOMEM;
                return 0;
        }
}

/* A JSON pointer at, inside or above another: "/a" and "/a/b". */
static bool pointer_overlaps(const char *a, const char *b) {
        size_t na = strlen(a), nb = strlen(b), n = MIN(na, nb);

        if (memcmp(a, b, n) != 0)
                return false;
        return na == nb || (na < nb ? b[na] == '/' : a[nb] == '/');
}

/* At the end of a file: every ${param.X} and ${metadata.X} declared, and
 * no metadata pointer at a token. */
static int provider_check_refs(Provider *p, ConfError *err) {
        static const char *const secret_names[] = { "access_token", "refresh_token", "id_token", "device_code",
                                                    "client_secret", "password" };

        if (load_refs_overflow) {
                conf_error(err, p->path, 0, "Too many ${param.X} and ${metadata.X} placeholders.");
                return -E2BIG;
        }
        for (size_t i = 0; i < n_load_refs; i++) {
                LoadRef *ref = &load_refs[i];
                const char *n;

                if ((n = startswith(ref->name, "param."))) {
                        ProviderParam *pp = (ProviderParam *) provider_find_param(p, n);
                        if (!pp) {
                                conf_error(err, p->path, ref->line, "Unknown placeholder '${%s}' in %s: no "
                                           "'param = %s' in this file.", ref->name, ref->key, n);
                                return -EINVAL;
                        }
                        if (ref->place == URL_PLACE_HOST)
                                pp->in_host = true;
                        else if (ref->place == URL_PLACE_ORIGIN)
                                pp->in_origin = true;
                        if (pp->in_host && pp->in_origin) {
                                conf_error(err, p->path, ref->line, "${%s} stands for a whole origin in one URL "
                                           "and inside a host in another.", ref->name);
                                return -EINVAL;
                        }
                } else if ((n = startswith(ref->name, "metadata.")) && !provider_find_metadata(p, n)) {
                        conf_error(err, p->path, ref->line, "Unknown placeholder '${%s}' in %s: no "
                                   "'metadata %s = ...' in this file.", ref->name, ref->key, n);
                        return -EINVAL;
                }
        }
        for (size_t i = 0; i < p->n_metadata; i++) {
                const ProviderMetadata *md = &p->metadata[i];
                const char *const tokens[] = { p->ptr_access_token, p->ptr_refresh_token, p->ptr_id_token,
                                               "/access_token", "/refresh_token", "/id_token" };
                const char *last;

                if (md->query && p->code_param && streq(md->query, p->code_param)) {
                        conf_error(err, p->path, md->line, "metadata %s: query:%s is the authorization code "
                                   "(code_param): metadata is never a secret.", md->name, md->query);
                        return -EINVAL;
                }
                if (!md->pointer)
                        continue;
                last = strrchr(md->pointer, '/');
                for (size_t j = 0; j < ELEMENTSOF(tokens); j++)
                        if (tokens[j] && pointer_overlaps(md->pointer, tokens[j])) {
                                conf_error(err, p->path, md->line, "metadata %s = %s points at a token (%s): "
                                           "metadata is never a secret.", md->name, md->pointer, tokens[j]);
                                return -EINVAL;
                        }
                for (size_t j = 0; last && j < ELEMENTSOF(secret_names); j++)
                        if (streq(last + 1, secret_names[j])) {
                                conf_error(err, p->path, md->line, "metadata %s = %s points at a secret (%s): "
                                           "metadata is never a secret.", md->name, md->pointer,
                                           secret_names[j]);
                                return -EINVAL;
                        }
        }
        return 0;
}

/* "pattern -> retry|reauth|config [: hint]" */
static int parse_error_rule(Provider *p, unsigned line, const char *value, ConfError *err) {
        const char *arrow = strstr(value, "->"), *cls, *colon;
        _cleanup_free_ char *pattern = NULL, *class_name = NULL, *hint = NULL;
        ErrorRule *rule;
        size_t n;
        int r;

        if (!arrow) {
                conf_error(err, p->path, line, "error_map must be 'pattern -> retry|reauth|config [: hint]': %.128s",
                           value);
                return -EINVAL;
        }
        n = (size_t) (arrow - value);
        while (n > 0 && (value[n - 1] == ' ' || value[n - 1] == '\t'))
                n--;
        if (n == 0) {
                conf_error(err, p->path, line, "error_map: empty pattern.");
                return -EINVAL;
        }
        pattern = strndup(value, n);
        cls = arrow + 2;
        cls += strspn(cls, " \t");
        colon = strchr(cls, ':');
        class_name = strndup(cls, colon ? (size_t) (colon - cls) : strlen(cls));
        if (!pattern || !class_name)
                return -ENOMEM;
        for (char *e = class_name + strlen(class_name); e > class_name && (e[-1] == ' ' || e[-1] == '\t');)
                *--e = 0;
        r = table_lookup(error_class_table, _ERROR_CLASS_MAX, class_name);
        if (r < 0) {
                conf_error(err, p->path, line, "error_map: invalid class '%.32s' (retry, reauth, config).", class_name);
                return -EINVAL;
        }
        if (colon) {
                const char *h = colon + 1 + strspn(colon + 1, " \t");
                if (*h && !(hint = strdup(h)))
                        return -ENOMEM;
        }
        if (p->n_error_rules >= PROVIDER_ERROR_RULES_MAX) {
                conf_error(err, p->path, line, "Too many error_map lines (at most %d).", PROVIDER_ERROR_RULES_MAX);
                return -E2BIG;
        }
        rule = &p->error_rules[p->n_error_rules];
        *rule = (ErrorRule) { .class = (ErrorClass) r };
        if (n >= 2 && pattern[0] == '/' && pattern[n - 1] == '/') {
                regex_t *re = new0(regex_t, 1);
                char *body;
                int k;

                if (!re)
                        return -ENOMEM;
                body = strndup(pattern + 1, n - 2);
                if (!body) {
                        free(re);
                        return -ENOMEM;
                }
                k = regcomp(re, body, REG_EXTENDED | REG_NOSUB);
                free(body);
                if (k != 0) {
                        char msg[128];
                        (void) regerror(k, re, msg, sizeof msg);
                        free(re);
                        conf_error(err, p->path, line, "error_map: invalid regular expression %.64s: %s", pattern, msg);
                        return -EINVAL;
                }
                rule->regex = re;
                rule->is_regex = true;
        }
        rule->pattern = TAKE_PTR(pattern);
        rule->hint = TAKE_PTR(hint);
        p->n_error_rules++;
        return 0;
}

ErrorClass provider_classify_error(const Provider *p, long status, const char *code, const char *desc,
                                   const char **ret_hint) {
        /* RFC 6749 section 5.2: the grant is no good, or the client is not. */
        static const char *const reauth[] = { "invalid_grant", "access_denied" };
        static const char *const config[] = { "invalid_client", "unauthorized_client", "unsupported_grant_type",
                                              "invalid_scope" };

        *ret_hint = NULL;
        for (size_t i = 0; p && i < p->n_error_rules; i++) {
                const ErrorRule *rule = &p->error_rules[i];
                bool match;

                if (rule->is_regex) {
                        _cleanup_free_ char *text = NULL;
                        if (asprintf(&text, "%s: %s", code ?: "", desc ?: "") < 0)
                                continue;
                        match = regexec(rule->regex, text, 0, NULL, 0) == 0;
                } else
                        match = (code && streq(code, rule->pattern)) || (desc && strstr(desc, rule->pattern));
                if (match) {
                        *ret_hint = rule->hint;
                        return rule->class;
                }
        }
        if (status == 429 || status == 408 || status >= 500)
                return ERROR_CLASS_RETRY;
        for (size_t i = 0; code && i < ELEMENTSOF(reauth); i++)
                if (streq(code, reauth[i]))
                        return ERROR_CLASS_REAUTH;
        for (size_t i = 0; code && i < ELEMENTSOF(config); i++)
                if (streq(code, config[i]))
                        return ERROR_CLASS_CONFIG;
        return ERROR_CLASS_RETRY;
}

static bool key_repeatable(KeyType t) {
        return t == KEY_HEADER_TEMPLATE || t == KEY_PARAM_TEMPLATE || t == KEY_USAGE_HEADER || t == KEY_ERROR_MAP ||
               t == KEY_API_URL;
}

static bool key_is_client_secret_file(const ProviderKey *k) {
        return k && k->type == KEY_SECRET_FILE && k->offset == offsetof(Provider, client_secret);
}

/* What one provider file's parse remembers: the line that last set each
 * key, to warn about a key set twice (the last one wins). */
typedef struct ProviderParse {
        Provider *p;
        unsigned seen[ELEMENTSOF(provider_keys)];
} ProviderParse;

static int provider_set_one(Provider *p, const ProviderKey *k, const char *section, const char *key,
                            const char *value, unsigned line, ConfError *err);

static int provider_set(const char *section, const char *key, const char *value,
                        unsigned line, void *userdata, ConfError *err) {
        ProviderParse *pp = userdata;
        Provider *p = pp->p;
        const ProviderKey *k = NULL;
        size_t idx = 0;
        int r;

        if (streq(section, "provider") && (streq(key, "param") || startswith(key, "metadata ") ||
                                            startswith(key, "metadata\t"))) {
                if (value_has_ctl(value)) {
                        conf_error(err, p->path, line, "Control character in value of '%s'.", key);
                        return -EINVAL;
                }
                if (p->first_line == 0)
                        p->first_line = line;
                return provider_set_param_meta(p, key, value, line, err);
        }
        for (size_t i = 0; i < ELEMENTSOF(provider_keys); i++)
                if (streq(provider_keys[i].name, key)) {
                        k = &provider_keys[i];
                        idx = i;
                        break;
                }
        r = provider_set_one(p, k, section, key, value, line, err);
        if (r < 0 || !k || key_repeatable(k->type))
                return r;
        if (key_is_client_secret_file(k) && p->n_client_secret_files > 1)
                return 0;   /* repeated: the next secret, not an override */
        /* The same key twice, or two keys for one field (client_secret and
         * client_secret_file): the earlier one is silently lost otherwise. */
        for (size_t i = 0; i < ELEMENTSOF(provider_keys); i++) {
                if (pp->seen[i] == 0 || provider_keys[i].offset != k->offset)
                        continue;
                if (i == idx)
                        conf_warn(p->path, line, "duplicate key '%s' (also set at line %u), the last one wins.",
                                  key, pp->seen[i]);
                else
                        conf_warn(p->path, line, "'%s' overrides '%s' at line %u, the last one wins.", key,
                                  provider_keys[i].name, pp->seen[i]);
                pp->seen[i] = 0;
        }
        pp->seen[idx] = line;
        return 0;
}

static int provider_set_one(Provider *p, const ProviderKey *k, const char *section, const char *key,
                            const char *value, unsigned line, ConfError *err) {
        void *field;
        int r;

        if (!streq(section, "provider")) {
                conf_error(err, p->path, line, "Unknown section [%s], expected [provider].", section);
                return -EINVAL;
        }
        if (!k) {
                conf_error(err, p->path, line, "Unknown key '%s'.", key);
                return -EINVAL;
        }
        if (value_has_ctl(value)) {
                conf_error(err, p->path, line, "Control character in value of '%s'.", key);
                return -EINVAL;
        }
        field = (uint8_t *) p + k->offset;
        if (p->first_line == 0)
                p->first_line = line;

        switch (k->type) {
        case KEY_URL_TEMPLATE:
                r = check_url_template(p, line, key, value, k->known, err);
                if (r < 0)
                        return r;
                return set_string(field, value);
        case KEY_ISSUER: {
                const char *host = strstr(value, "://"), *path;

                if (!url_is_acceptable(value)) {
                        conf_error(err, p->path, line,
                                   "%s must be an https:// URL (http:// only on loopback): %.128s",
                                   key, value);
                        return -EINVAL;
                }
                path = host ? host + 3 + strcspn(host + 3, "/?#") : value;
                if (memchr(value, '$', (size_t) (path - value))) {
                        conf_error(err, p->path, line, "%s: no placeholders before the path: %.128s", key, value);
                        return -EINVAL;
                }
                if (k->type == KEY_ISSUER) {
                        size_t n = strlen(value);
                        if (strpbrk(value, "?#$")) {
                                conf_error(err, p->path, line, "issuer must be a URL without query or placeholders: %.128s",
                                           value);
                                return -EINVAL;
                        }
                        r = set_string(field, value);
                        if (r >= 0 && n > 0 && p->issuer[n - 1] == '/')
                                p->issuer[n - 1] = 0;
                        p->issuer_line = line;
                        return r;
                }
                r = check_template(p, line, key, value, k->known, err);
                if (r < 0)
                        return r;
                return set_string(field, value);
        }
        case KEY_METHOD: {
                static const char *const methods[] = { "GET", "POST", "PUT", "PATCH" };
                char up[8] = "";

                for (size_t i = 0; i < sizeof up - 1 && value[i]; i++)
                        up[i] = (char) toupper((unsigned char) value[i]);
                if (strlen(value) >= sizeof up ||
                    table_lookup(methods, ELEMENTSOF(methods), up) < 0) {
                        conf_error(err, p->path, line, "Invalid %s '%.32s' (GET, POST, PUT, PATCH).", key, value);
                        return -EINVAL;
                }
                return set_string(field, up);
        }
        case KEY_BODY:
                r = table_lookup(body_table, _BODY_MAX, value);
                if (r < 0) {
                        conf_error(err, p->path, line, "Invalid %s '%.32s' (form, json, query).", key, value);
                        return r;
                }
                *(BodyType *) field = (BodyType) r;
                if (streq(key, "refresh_body"))
                        p->refresh_body_set = true;
                return 0;
        case KEY_BOOL:
                if (streq(value, "yes") || streq(value, "true") || streq(value, "on") || streq(value, "1"))
                        *(bool *) field = true;
                else if (streq(value, "no") || streq(value, "false") || streq(value, "off") || streq(value, "0"))
                        *(bool *) field = false;
                else {
                        conf_error(err, p->path, line, "Invalid boolean for %s: %.32s (yes or no)", key, value);
                        return -EINVAL;
                }
                return 0;
        case KEY_HEADER_TEMPLATE:
        case KEY_PARAM_TEMPLATE: {
                TemplateList *l = field;
                char **a;

                if (k->type == KEY_HEADER_TEMPLATE) {
                        size_t name_len = strcspn(value, ":");
                        if (value[name_len] != ':' || name_len == 0 ||
                            strcspn(value, " \t()<>@,;\\\"/[]?={}$") < name_len) {
                                conf_error(err, p->path, line, "%s must be 'Name: value': %.128s", key, value);
                                return -EINVAL;
                        }
                } else if (!strchr(value, '=') || *value == '=') {
                        conf_error(err, p->path, line, "%s must be 'name=value': %.128s", key, value);
                        return -EINVAL;
                }
                r = check_template(p, line, key, value, k->known, err);
                if (r < 0)
                        return r;
                if (l->n >= PROVIDER_TEMPLATES_MAX) {
                        conf_error(err, p->path, line, "Too many %s lines (at most %d).", key, PROVIDER_TEMPLATES_MAX);
                        return -E2BIG;
                }
                a = realloc(l->items, sizeof(char *) * (l->n + 1));
                if (!a)
                        return -ENOMEM;
                l->items = a;
                if (!(l->items[l->n] = strdup(value)))
                        return -ENOMEM;
                l->n++;
                return 0;
        }
        case KEY_ERROR_MAP:
                return parse_error_rule(p, line, value, err);
        case KEY_STRING:
                return set_string(field, value);
        case KEY_URL:
                /* ${param.X} and ${metadata.X} only, host included */
                r = check_url_template(p, line, key, value, NULL, err);
                if (r < 0)
                        return r;
                return set_string(field, value);
        case KEY_SECRET:
                if (isempty(value)) {
                        conf_error(err, p->path, line, "Empty %s.", key);
                        return -EINVAL;
                }
                if (p->file_mode & 0077) {
                        r = secret_exposed(p, line, key, p->path, p->file_mode, err);
                        if (r < 0)
                                return r;
                }
                secret_free(*(char **) field);
                *(char **) field = NULL;
                r = set_string(field, value);
                return r;
        case KEY_SECRET_FILE:
        case KEY_SECRET_CREDENTIAL: {
                _cleanup_free_ char *path = NULL;
                char *secret = NULL;
                mode_t mode = 0;

                if (k->type == KEY_SECRET_CREDENTIAL) {
                        const char *dir = getenv("CREDENTIALS_DIRECTORY");
                        if (!dir) {
                                conf_error(err, p->path, line,
                                           "%s set but $CREDENTIALS_DIRECTORY is not (LoadCredential= missing?).",
                                           key);
                                return -ENOENT;
                        }
                        if (strchr(value, '/') || isempty(value)) {
                                conf_error(err, p->path, line, "Invalid credential name.");
                                return -EINVAL;
                        }
                        if (asprintf(&path, "%s/%s", dir, value) < 0)
                                return -ENOMEM;
                } else {
                        /* relative to the provider file's folder (a preset's
                         * keys count as the file's own: secret_base) */
                        const char *base = secret_base ?: p->path;
                        const char *slash = strrchr(base, '/');
                        _cleanup_free_ char *folder = slash ? strndup(base, (size_t) (slash - base)) :
                                                              strdup("");

                        if (!folder)
                                return -ENOMEM;
                        r = conf_path_join(slash == base ? "/" : folder, value, &path);
                        if (r < 0)
                                return r;
                }
                r = conf_read_secret_file(path, &secret, &mode);
                if (r < 0) {
                        conf_error(err, p->path, line, "Cannot read %s from '%s': %s",
                                   startswith(key, "password") ? "password" : "client secret",
                                   path, r == -EINVAL ? "empty or binary" : strerror(-r));
                        return r;
                }
                if (k->type == KEY_SECRET_FILE && (mode & 0077)) {
                        r = secret_exposed(p, line, key, path, mode, err);
                        if (r < 0) {
                                secret_free(secret);
                                return r;
                        }
                }
                if (key_is_client_secret_file(k) && p->n_client_secret_files++ > 0 && p->client_secret) {
                        /* client_secret_file repeated: the next one, tried on invalid_client */
                        if (p->n_client_secret_next >= ELEMENTSOF(p->client_secret_next)) {
                                secret_free(secret);
                                conf_error(err, p->path, line, "Too many client_secret_file lines (at most %d).",
                                           PROVIDER_SECRETS_MAX);
                                return -E2BIG;
                        }
                        p->client_secret_next[p->n_client_secret_next++] = secret;
                        return 0;
                }
                secret_free(*(char **) field);
                *(char **) field = secret;
                return 0;
        }
        case KEY_GRANT:
                r = grant_from_string(value);
                if (r < 0) {
                        conf_error(err, p->path, line,
                                   "Invalid grant '%s' (authorization_code, client_credentials, password, device_code).",
                                   value);
                        return r;
                }
                p->grant = (Grant) r;
                p->grant_line = line;
                return 0;
        case KEY_CLIENT_AUTH:
                r = table_lookup(client_auth_table, _CLIENT_AUTH_MAX, value);
                if (r < 0) {
                        conf_error(err, p->path, line, "Invalid client_auth '%s' (basic, post, none, headers).",
                                   value);
                        return r;
                }
                p->client_auth = (ClientAuth) r;
                return 0;
        case KEY_PKCE:
                r = table_lookup(pkce_table, _PKCE_MAX, value);
                if (r < 0) {
                        conf_error(err, p->path, line, "Invalid pkce '%s' (S256, plain, none).", value);
                        return r;
                }
                p->pkce = (Pkce) r;
                return 0;
        case KEY_SECONDS:
                r = parse_seconds(value, 100 * 365 * USEC_PER_DAY, field);
                if (r < 0) {
                        conf_error(err, p->path, line, "Invalid duration for %s: %.64s", key, value);
                        return r;
                }
                return 0;
        case KEY_UINT: {
                unsigned long u;

                if (parse_uint(value, 100000, &u, 10) < 0) {
                        conf_error(err, p->path, line, "Invalid number for %s: %.64s", key, value);
                        return -EINVAL;
                }
                *(unsigned *) field = (unsigned) u;
                return 0;
        }
        case KEY_TIMEOUT:
                r = parse_seconds(value, 120 * USEC_PER_SEC, field);
                if (r < 0) {
                        conf_error(err, p->path, line, "Invalid %s '%.64s' (0 to 120 seconds).", key, value);
                        return r;
                }
                return 0;
        case KEY_JSONPTR:
                if (jsonptr_validate(value) < 0) {
                        conf_error(err, p->path, line, "Invalid JSON pointer for %s: %.128s", key, value);
                        return -EINVAL;
                }
                return set_string(field, value);
        case KEY_USAGE_HEADER:
        case KEY_USAGE_QUERY: {
                if (k->type == KEY_USAGE_HEADER) {
                        const char *colon = strchr(value, ':');
                        if (!colon || colon == value || strcspn(value, " \t") < (size_t) (colon - value)) {
                                conf_error(err, p->path, line, "usage_header must be 'Name: value': %.128s", value);
                                return -EINVAL;
                        }
                } else if (!strchr(value, '=') || *value == '=') {
                        conf_error(err, p->path, line, "usage_query must be 'name=value': %.128s", value);
                        return -EINVAL;
                }
                r = check_template(p, line, key, value, usage_placeholders, err);
                if (r < 0)
                        return r;
                if (k->type == KEY_USAGE_QUERY)
                        return set_string(&p->usage_query, value);
                if (p->n_usage_header >= PROVIDER_USAGE_MAX) {
                        conf_error(err, p->path, line, "Too many usage_header lines (at most %d).",
                                   PROVIDER_USAGE_MAX);
                        return -E2BIG;
                }
                if (!(p->usage_header[p->n_usage_header] = strdup(value)))
                        return -ENOMEM;
                p->n_usage_header++;
                return 0;
        }
        case KEY_API_URL:
                return set_api_url(p, line, key, value, err);
        }
        return -EINVAL;
}

/* An origin a proxied request may go to: scheme://host[:port], https (or
 * http on loopback, as every provider URL), nothing after the authority but
 * an optional "/", no userinfo. Kept without the "/". */
static int set_api_url(Provider *p, unsigned line, const char *key, const char *value, ConfError *err) {
        const char *auth = strstr(value, "://"), *end;
        size_t n;

        if (!url_is_acceptable(value) || !auth) {
                conf_error(err, p->path, line, "%s must be an https:// origin (http:// only on loopback): %.128s", key,
                           value);
                return -EINVAL;
        }
        auth += 3;
        end = auth + strcspn(auth, "/?#");
        if (end == auth || (*end && !streq(end, "/")) || memchr(auth, '@', (size_t) (end - auth)) ||
            strpbrk(value, "$\\%") || value_has_ctl(value) || strchr(value, ' ')) {
                conf_error(err, p->path, line, "%s must be an origin, scheme://host[:port] without a path: %.128s",
                           key, value);
                return -EINVAL;
        }
        if (p->n_api_url >= PROVIDER_API_URL_MAX) {
                conf_error(err, p->path, line, "Too many api_url lines (at most %d).", PROVIDER_API_URL_MAX);
                return -E2BIG;
        }
        n = (size_t) (end - value);
        for (size_t i = 0; i < p->n_api_url; i++)
                if (strlen(p->api_url[i]) == n && strncasecmp(p->api_url[i], value, n) == 0)
                        return 0;   /* the same origin twice: once is enough */
        if (!(p->api_url[p->n_api_url] = strndup(value, n)))
                return -ENOMEM;
        p->n_api_url++;
        return 0;
}

static bool provider_name_valid(const char *s, size_t n) {
        if (n == 0 || n > PROVIDER_NAME_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!isalnum((unsigned char) s[i]) && !strchr("-_.", s[i]))
                        return false;
        return s[0] != '.';
}

/* ---- presets ------------------------------------------------------- */

#ifndef PRESETS_DIR
#define PRESETS_DIR "/usr/local/share/tokenbroker/providers.d"
#endif

static const char *presets_dir_override = NULL;
static const BrokerConfig *loading_broker = NULL;

const BrokerConfig *conf_loading_broker(void) {
        return loading_broker;
}

void conf_set_presets_dir(const char *dir) {
        presets_dir_override = dir;
}

/* One key of a provider file, or of a preset it names. */
typedef struct ConfEntry {
        char *key;
        char *value;              /* may be a secret: wiped on free */
        unsigned line;
        size_t source;            /* index in EntryList.sources */
} ConfEntry;

typedef struct EntrySource {
        char *path;
        mode_t mode;
} EntrySource;

typedef struct EntryList {
        ConfEntry *e;
        size_t n;
        EntrySource sources[PRESET_DEPTH_MAX + 1];
        size_t n_sources;
        size_t cur_source;        /* while collecting */
} EntryList;

static void entry_list_done(EntryList *l) {
        for (size_t i = 0; i < l->n; i++) {
                free(l->e[i].key);
                secret_free(l->e[i].value);
        }
        free(l->e);
        for (size_t i = 0; i < l->n_sources; i++)
                free(l->sources[i].path);
        *l = (EntryList) {};
}

static int entry_collect(const char *section, const char *key, const char *value, unsigned line, void *userdata,
                         ConfError *err) {
        EntryList *l = userdata;
        ConfEntry *a;

        if (!streq(section, "provider")) {
                conf_error(err, l->sources[l->cur_source].path, line, "Unknown section [%s], expected [provider].",
                           section);
                return -EINVAL;
        }
        if (l->n >= 4096) {
                conf_error(err, l->sources[l->cur_source].path, line, "Too many keys.");
                return -E2BIG;
        }
        a = realloc(l->e, sizeof(ConfEntry) * (l->n + 1));
        if (!a)
                return -ENOMEM;
        l->e = a;
        a[l->n] = (ConfEntry) { .key = strdup(key), .value = strdup(value), .line = line, .source = l->cur_source };
        l->n++;
        if (!a[l->n - 1].key || !a[l->n - 1].value)
                return -ENOMEM;
        return 0;
}

static const ProviderKey *provider_key_find(const char *key) {
        for (size_t i = 0; i < ELEMENTSOF(provider_keys); i++)
                if (streq(provider_keys[i].name, key))
                        return &provider_keys[i];
        return NULL;
}

static bool provider_name_valid(const char *s, size_t n);

/* Reads path's keys into l: when its first key is "preset = NAME", the
 * preset's keys first (recursively, at most PRESET_DEPTH_MAX deep), less
 * every field the file sets itself: a key the file sets (once or
 * repeated) replaces all the preset's lines for it. */
static int entries_load(const char *path, EntryList *l, char **preset_name, ConfError *err) {
        _cleanup_(entry_list_done) EntryList own = {};
        size_t src = l->n_sources, first_own;
        struct stat st;
        int r;

        if (l->n_sources >= ELEMENTSOF(l->sources))
                return -ELOOP;   /* checked by the caller with a message */
        l->sources[src] = (EntrySource) { .path = strdup(path) };
        if (!l->sources[src].path)
                return -ENOMEM;
        l->n_sources++;
        if (stat(path, &st) >= 0)
                l->sources[src].mode = st.st_mode;

        own.n_sources = 1;
        own.sources[0].path = strdup(path);
        if (!own.sources[0].path)
                return -ENOMEM;
        r = ini_parse_file(path, entry_collect, &own, err);
        if (r < 0)
                return r;

        first_own = 0;
        for (size_t i = 0; i < own.n; i++) {
                _cleanup_free_ char *ppath = NULL, *real = NULL;
                const char *dir = presets_dir_override ?: PRESETS_DIR;
                const char *name = own.e[i].value;

                if (!streq(own.e[i].key, "preset"))
                        continue;
                if (i != 0) {
                        conf_error(err, path, own.e[i].line,
                                   "preset must be the first key (the file's keys then override the preset's).");
                        return -EINVAL;
                }
                if (!provider_name_valid(name, strlen(name))) {
                        conf_error(err, path, own.e[i].line, "Invalid preset name '%.64s' (NAME of [A-Za-z0-9._-]).",
                                   name);
                        return -EINVAL;
                }
                if (asprintf(&ppath, "%s/%s.conf", dir, name) < 0)
                        return -ENOMEM;
                real = realpath(ppath, NULL);
                if (!real) {
                        conf_error(err, path, own.e[i].line, "preset '%s' not found: no %s (presets_dir '%s').", name,
                                   ppath, dir);
                        return -ENOENT;
                }
                /* the files of the chain so far, this one included */
                for (size_t j = 0; j <= src; j++) {
                        _cleanup_free_ char *other = realpath(l->sources[j].path, NULL);

                        if (other && streq(other, real)) {
                                if (j == src)
                                        conf_error(err, path, own.e[i].line, "preset '%s' is this file itself.",
                                                   name);
                                else
                                        conf_error(err, path, own.e[i].line,
                                                   "preset '%s' makes a cycle: %s is already in the chain.", name,
                                                   l->sources[j].path);
                                return -ELOOP;
                        }
                }
                if (src + 1 >= PRESET_DEPTH_MAX + 1) {
                        conf_error(err, path, own.e[i].line, "Presets nest too deep (at most %d).", PRESET_DEPTH_MAX);
                        return -ELOOP;
                }
                if (preset_name && !*preset_name && !(*preset_name = strdup(name)))
                        return -ENOMEM;
                r = entries_load(ppath, l, NULL, err);
                if (r < 0)
                        return r;
                first_own = 1;
        }

        /* drop the preset's lines for every field this file sets */
        for (size_t i = 0; i < l->n;) {
                const ProviderKey *pk = provider_key_find(l->e[i].key);
                bool drop = false;

                for (size_t j = first_own; pk && j < own.n && !drop; j++) {
                        const ProviderKey *ok = provider_key_find(own.e[j].key);
                        drop = ok && ok->offset == pk->offset;
                }
                if (!drop) {
                        i++;
                        continue;
                }
                free(l->e[i].key);
                secret_free(l->e[i].value);
                memmove(l->e + i, l->e + i + 1, sizeof(ConfEntry) * (l->n - i - 1));
                l->n--;
        }
        /* then the file's own */
        for (size_t j = first_own; j < own.n; j++) {
                ConfEntry *a = realloc(l->e, sizeof(ConfEntry) * (l->n + 1));

                if (!a)
                        return -ENOMEM;
                l->e = a;
                a[l->n++] = (ConfEntry) { .key = TAKE_PTR(own.e[j].key), .value = TAKE_PTR(own.e[j].value),
                                          .line = own.e[j].line, .source = src };
        }
        return 0;
}

static bool list_mentions(const TemplateList *l, const char *needle) {
        for (size_t i = 0; i < l->n; i++)
                if (strstr(l->items[i], needle))
                        return true;
        return false;
}

static void provider_derive_flags(Provider *p) {
        p->refresh_uses_access_token = list_mentions(&p->refresh_param, "${access_token}") ||
                                       list_mentions(&p->refresh_header, "${access_token}") ||
                                       (p->refresh_url && strstr(p->refresh_url, "${access_token}"));
        p->revoke_per_token = (p->revoke_param.n == 0 && p->revoke_header.n == 0) ||
                              list_mentions(&p->revoke_param, "${token") ||
                              list_mentions(&p->revoke_header, "${token");
}

int provider_load(const char *path, Provider **ret, ConfError *err) {
        _cleanup_(provider_freep) Provider *p = NULL;
        const char *base = strrchr(path, '/'), *dot;
        unsigned line;
        int r;

        base = base ? base + 1 : path;
        dot = strrchr(base, '.');
        if (!dot || !streq(dot, ".conf") || !provider_name_valid(base, (size_t) (dot - base))) {
                conf_error(err, path, 0, "Provider file names must be NAME.conf with NAME of [A-Za-z0-9._-].");
                return -EINVAL;
        }
        p = new0(Provider, 1);
        if (!p)
                return -ENOMEM;
        p->grant = GRANT_AUTHORIZATION_CODE;
        p->client_auth = CLIENT_AUTH_BASIC;
        p->pkce = PKCE_S256;
        p->timeout = 20 * USEC_PER_SEC;
        p->api_timeout = 60 * USEC_PER_SEC;
        p->api_max_connections = 16;
        p->name = strndup(base, (size_t) (dot - base));
        p->path = strdup(path);
        if (!p->name || !p->path)
                return -ENOMEM;

        n_load_refs = 0;
        load_refs_overflow = false;
        {
                _cleanup_(entry_list_done) EntryList l = {};
                ProviderParse pp = { .p = p };
                char *own_path = TAKE_PTR(p->path);

                r = entries_load(path, &l, &p->preset, err);
                /* Each key is applied as if in its file: errors name it,
                 * relative secret files stay relative to this one. */
                secret_base = own_path;
                for (size_t i = 0; r >= 0 && i < l.n; i++) {
                        p->path = l.sources[l.e[i].source].path;
                        p->file_mode = l.sources[l.e[i].source].mode;
                        r = provider_set("provider", l.e[i].key, l.e[i].value, l.e[i].line, &pp, err);
                }
                secret_base = NULL;
                p->path = own_path;
                p->file_mode = l.n_sources > 0 ? l.sources[0].mode : 0;
                if (r < 0)
                        return r;
        }

#define DEFAULT_STR(f, v) \
        if (!p->f && !(p->f = strdup(v))) return -ENOMEM
        DEFAULT_STR(scope_separator, " ");
        DEFAULT_STR(code_param, "code");
        DEFAULT_STR(ptr_access_token, "/access_token");
        DEFAULT_STR(ptr_refresh_token, "/refresh_token");
        DEFAULT_STR(ptr_expires_in, "/expires_in");
        DEFAULT_STR(ptr_token_type, "/token_type");
        DEFAULT_STR(ptr_scope, "/scope");
        DEFAULT_STR(ptr_id_token, "/id_token");
        DEFAULT_STR(ptr_error, "/error");
        DEFAULT_STR(ptr_error_description, "/error_description");
#undef DEFAULT_STR
        if (p->n_usage_header == 0 && !p->usage_query) {
                if (!(p->usage_header[0] = strdup("Authorization: Bearer ${access_token}")))
                        return -ENOMEM;
                p->n_usage_header = 1;
        }

        if (!p->refresh_body_set)
                p->refresh_body = p->token_body;
        provider_derive_flags(p);

        r = provider_check_refs(p, err);
        if (r < 0)
                return r;

        /* Whole-file checks point at the grant line, else the first key. */
        line = p->grant_line ?: p->first_line ?: 1;
        if (!p->client_id) {
                conf_error(err, path, line, "Missing required key client_id.");
                return -EINVAL;
        }
        if (p->never_expires && p->default_lifetime > 0) {
                conf_error(err, path, line, "never_expires and default_lifetime exclude each other.");
                return -EINVAL;
        }
        if (p->client_auth == CLIENT_AUTH_BASIC || p->client_auth == CLIENT_AUTH_POST) {
                if (!p->client_secret) {
                        conf_error(err, path, line,
                                   "client_auth = %s needs client_secret, client_secret_file or client_secret_credential.",
                                   client_auth_to_string(p->client_auth));
                        return -EINVAL;
                }
        } else if (!p->client_secret) {
                const TemplateList *lists[] = { &p->token_header, &p->token_param, &p->refresh_header,
                                                &p->refresh_param };
                for (size_t i = 0; i < ELEMENTSOF(lists); i++)
                        for (size_t j = 0; j < lists[i]->n; j++)
                                if (strstr(lists[i]->items[j], "${client_secret}")) {
                                        conf_error(err, path, line,
                                                   "${client_secret} is used but no client_secret, client_secret_file "
                                                   "or client_secret_credential is set.");
                                        return -EINVAL;
                                }
        }
        if (p->client_auth == CLIENT_AUTH_HEADERS && p->token_header.n == 0) {
                conf_error(err, path, line, "client_auth = headers needs at least one token_header.");
                return -EINVAL;
        }

        /* OIDC discovery fills what the file leaves out; explicit keys win. */
        if (p->issuer && discover_hook &&
            (!p->token_url || (p->grant == GRANT_AUTHORIZATION_CODE && !p->authorize_url) ||
             !p->revoke_url || !p->userinfo_url || !p->device_authorization_url)) {
                _cleanup_free_ char *reason = NULL;

                r = discover_hook(p, &reason);
                if (r < 0 && (!p->token_url || (p->grant == GRANT_AUTHORIZATION_CODE && !p->authorize_url) ||
                              (p->grant == GRANT_DEVICE_CODE && !p->device_authorization_url))) {
                        conf_error(err, path, p->issuer_line, "Discovery at %s failed and required endpoints are missing: %s",
                                   p->issuer, strempty(reason));
                        return r;
                }
        }
        if (p->issuer)
                line = p->issuer_line;
        if (!p->token_url) {
                conf_error(err, path, line, "Missing required key token_url%s.", p->issuer ? " (not discovered)" : "");
                return -EINVAL;
        }
        if (p->grant == GRANT_AUTHORIZATION_CODE && !p->authorize_url) {
                conf_error(err, path, line, "grant = authorization_code needs authorize_url.");
                return -EINVAL;
        }
        if (p->grant == GRANT_DEVICE_CODE && !p->device_authorization_url) {
                conf_error(err, path, line, "grant = device_code needs device_authorization_url.");
                return -EINVAL;
        }
        *ret = TAKE_PTR(p);
        return 0;
}

/* ---- the broker file ----------------------------------------------- */

BrokerConfig *broker_config_free(BrokerConfig *c) {
        if (!c)
                return NULL;
        free(c->path);
        free(c->state_dir);
        free(c->key_file);
        free(c->key_credential);
        free(c->socket);
        free(c->callback_listen);
        free(c->public_url);
        free(c->providers_dir);
        free(c->presets_dir);
        free(c->admin_group);
        free(c->socket_group);
        free(c->notify_command);
        free(c->store);
        free(c->store_password_file);
        free(c->store_password_credential);
        free(c->node_name);
        free(c->ca_file);
        for (size_t i = 0; i < c->n_connect_to; i++)
                free(c->connect_to[i]);
        free(c->connect_to);
        for (size_t i = 0; i < c->n_providers; i++)
                provider_free(c->providers[i]);
        free(c->providers);
        free(c);
        return NULL;
}

/* Relative paths in the main file are relative to the file's folder, so a
 * config works wherever it is started from; "conf/dev/../../.run/state"
 * is kept (and logged) as ".run/state". */
static int make_path(const BrokerConfig *c, const char *value, char **field) {
        const char *slash = strrchr(c->path, '/');
        _cleanup_free_ char *folder = NULL;
        char *s;
        int r;

        folder = slash ? strndup(c->path, (size_t) (slash - c->path)) : strdup("");
        if (!folder)
                return -ENOMEM;
        r = conf_path_join(slash == c->path ? "/" : folder, value, &s);
        if (r < 0)
                return r;
        free(*field);
        *field = s;
        return 0;
}

/* The main file's keys, to warn about one set twice. */
static const char *const broker_keys[] = {
        "state_dir", "key_file", "key_credential", "socket", "providers_dir", "admin_group", "socket_group",
        "notify_command", "callback_listen", "public_url", "socket_mode", "refresh_margin", "refresh_jitter",
        "pending_ttl", "notify_interval", "backoff_max", "refresh_ratio", "max_parallel_refreshes",
        "max_connections", "strict", "store", "store_password_file", "store_password_credential", "node_name",
        "trace_entries", "trace_connections",
        "presets_dir", "refresh_token_warn", "ca_file",
};

typedef struct BrokerParse {
        BrokerConfig *c;
        unsigned seen[ELEMENTSOF(broker_keys)];
} BrokerParse;

static int broker_set_one(const char *section, const char *key, const char *value,
                          unsigned line, BrokerConfig *c, ConfError *err);

static int broker_set(const char *section, const char *key, const char *value,
                      unsigned line, void *userdata, ConfError *err) {
        BrokerParse *bp = userdata;
        int r, i;

        r = broker_set_one(section, key, value, line, bp->c, err);
        if (r < 0)
                return r;
        i = table_lookup(broker_keys, ELEMENTSOF(broker_keys), key);
        if (i < 0)
                return 0;
        if (bp->seen[i] > 0)
                conf_warn(bp->c->path, line, "duplicate key '%s' (also set at line %u), the last one wins.", key,
                          bp->seen[i]);
        bp->seen[i] = line;
        return 0;
}

static int broker_set_one(const char *section, const char *key, const char *value,
                          unsigned line, BrokerConfig *c, ConfError *err) {
        unsigned long u;
        int r;

        if (!streq(section, "broker")) {
                conf_error(err, c->path, line, "Unknown section [%s], expected [broker].", section);
                return -EINVAL;
        }
        if (value_has_ctl(value)) {
                conf_error(err, c->path, line, "Control character in value of '%s'.", key);
                return -EINVAL;
        }
        if (streq(key, "state_dir"))
                return make_path(c, value, &c->state_dir);
        if (streq(key, "key_file")) {
                if (isempty(value)) {
                        conf_error(err, c->path, line, "key_file must not be empty.");
                        return -EINVAL;
                }
                return make_path(c, value, &c->key_file);
        }
        if (streq(key, "key_credential")) {
                if (isempty(value) || strchr(value, '/') || streq(value, ".") || streq(value, "..")) {
                        conf_error(err, c->path, line, "Invalid credential name for key_credential: %.64s", value);
                        return -EINVAL;
                }
                return set_string(&c->key_credential, value);
        }
        if (streq(key, "socket"))
                return make_path(c, value, &c->socket);
        if (streq(key, "providers_dir"))
                return make_path(c, value, &c->providers_dir);
        if (streq(key, "presets_dir"))
                return make_path(c, value, &c->presets_dir);
        if (streq(key, "ca_file")) {
                _cleanup_free_ char *p = NULL;

                if (isempty(value)) {
                        conf_error(err, c->path, line, "ca_file must name a PEM file of CA certificates.");
                        return -EINVAL;
                }
                r = make_path(c, value, &p);
                if (r < 0)
                        return r;
                r = egress_check_ca_file(p);
                if (r < 0) {
                        conf_error(err, c->path, line, "ca_file %.256s: %s", p,
                                   r == -EBADMSG ? "no PEM certificate in it" : strerror(-r));
                        return -EINVAL;
                }
                free(c->ca_file);
                c->ca_file = TAKE_PTR(p);
                return 0;
        }
        if (streq(key, "connect_to")) {
                /* repeatable: one line per HOST:PORT */
                char **l;
                const char *why = egress_check_connect_to(value);

                if (why) {
                        conf_error(err, c->path, line, "connect_to must be HOST:PORT:CONNECT-HOST:CONNECT-PORT "
                                   "(%s): %.128s", why, value);
                        return -EINVAL;
                }
                if (c->n_connect_to >= EGRESS_CONNECT_TO_MAX) {
                        conf_error(err, c->path, line, "at most %u connect_to lines.", EGRESS_CONNECT_TO_MAX);
                        return -EINVAL;
                }
                l = reallocarray(c->connect_to, c->n_connect_to + 1, sizeof(char *));
                if (!l)
                        return -ENOMEM;
                c->connect_to = l;
                l[c->n_connect_to] = strdup(value);
                if (!l[c->n_connect_to])
                        return -ENOMEM;
                c->n_connect_to++;
                return 0;
        }
        if (streq(key, "refresh_token_warn")) {
                if (parse_seconds(value, 10 * 365 * USEC_PER_DAY, &c->refresh_token_warn) < 0) {
                        conf_error(err, c->path, line, "Invalid duration for %s: %.64s", key, value);
                        return -EINVAL;
                }
                return 0;
        }
        if (streq(key, "admin_group"))
                return set_string(&c->admin_group, value);
        if (streq(key, "socket_group"))
                return set_string(&c->socket_group, value);
        if (streq(key, "notify_command")) {
                if (value[0] != '/') {
                        conf_error(err, c->path, line, "notify_command must be an absolute path: %.128s", value);
                        return -EINVAL;
                }
                return set_string(&c->notify_command, value);
        }
        if (streq(key, "callback_listen")) {
                const char *colon = strrchr(value, ':');
                if (!colon || colon == value ||
                    parse_uint(colon + 1, 65535, &u, 10) < 0) {
                        conf_error(err, c->path, line, "callback_listen must be HOST:PORT: %.128s", value);
                        return -EINVAL;
                }
                return set_string(&c->callback_listen, value);
        }
        if (streq(key, "public_url")) {
                size_t n = strlen(value);
                if (!url_is_acceptable(value) || strchr(value, '?') || strchr(value, '#')) {
                        conf_error(err, c->path, line,
                                   "public_url must be an https:// URL (http:// only on loopback): %.128s", value);
                        return -EINVAL;
                }
                r = set_string(&c->public_url, value);
                if (r >= 0 && n > 0 && c->public_url[n - 1] == '/')
                        c->public_url[n - 1] = 0;
                if (r >= 0)
                        c->public_url_set = true;
                return r;
        }
        if (streq(key, "socket_mode")) {
                if (parse_uint(value, 0777, &u, 8) < 0) {
                        conf_error(err, c->path, line, "socket_mode must be an octal mode: %.32s", value);
                        return -EINVAL;
                }
                c->socket_mode = (unsigned) u;
                return 0;
        }
        if (streq(key, "refresh_margin") || streq(key, "refresh_jitter") || streq(key, "pending_ttl") ||
            streq(key, "notify_interval") || streq(key, "backoff_max")) {
                usec_t *f = streq(key, "refresh_margin") ? &c->refresh_margin :
                            streq(key, "refresh_jitter") ? &c->refresh_jitter :
                            streq(key, "notify_interval") ? &c->notify_interval :
                            streq(key, "backoff_max") ? &c->backoff_max : &c->pending_ttl;
                if (parse_seconds(value, 365 * USEC_PER_DAY, f) < 0) {
                        conf_error(err, c->path, line, "Invalid duration for %s: %.64s", key, value);
                        return -EINVAL;
                }
                return 0;
        }
        if (streq(key, "refresh_ratio")) {
                char *end;
                double d;

                errno = 0;
                d = strtod(value, &end);
                if (errno || end == value || *end || !(d >= 0.0 && d < 1.0)) {
                        conf_error(err, c->path, line, "refresh_ratio must be in [0, 1): %.64s", value);
                        return -EINVAL;
                }
                c->refresh_ratio = d;
                return 0;
        }
        if (streq(key, "max_parallel_refreshes") || streq(key, "max_connections")) {
                if (parse_uint(value, 10000000, &u, 10) < 0 || u == 0) {
                        conf_error(err, c->path, line, "%s must be a positive number: %.64s", key, value);
                        return -EINVAL;
                }
                if (streq(key, "max_connections"))
                        c->max_connections = (unsigned) u;
                else
                        c->max_parallel_refreshes = (unsigned) u;
                return 0;
        }
        if (streq(key, "trace_entries") || streq(key, "trace_connections")) {
                /* `tokenctl trace`: 0 turns tracing off */
                if (parse_uint(value, streq(key, "trace_entries") ? TRACE_ENTRIES_MAX : TRACE_CONNECTIONS_MAX, &u,
                               10) < 0) {
                        conf_error(err, c->path, line, "%s must be a number from 0 to %u: %.64s", key,
                                   streq(key, "trace_entries") ? TRACE_ENTRIES_MAX : TRACE_CONNECTIONS_MAX, value);
                        return -EINVAL;
                }
                *(streq(key, "trace_entries") ? &c->trace_entries : &c->trace_connections) = (unsigned) u;
                return 0;
        }
        if (streq(key, "strict")) {
                if (streq(value, "yes") || streq(value, "true") || streq(value, "on") || streq(value, "1"))
                        c->strict = true;
                else if (streq(value, "no") || streq(value, "false") || streq(value, "off") || streq(value, "0"))
                        c->strict = false;
                else {
                        conf_error(err, c->path, line, "Invalid boolean for strict: %.32s (yes or no)", value);
                        return -EINVAL;
                }
                return 0;
        }
        if (streq(key, "store")) {
                if (!startswith(value, "postgresql://") && !startswith(value, "postgres://")) {
                        conf_error(err, c->path, line, "store must be a postgresql:// URI (leave it out for SQLite "
                                   "in state_dir).");
                        return -EINVAL;
                }
                return set_string(&c->store, value);
        }
        if (streq(key, "store_password_file")) {
                if (isempty(value)) {
                        conf_error(err, c->path, line, "store_password_file must not be empty.");
                        return -EINVAL;
                }
                return make_path(c, value, &c->store_password_file);
        }
        if (streq(key, "store_password_credential")) {
                if (isempty(value) || strchr(value, '/') || streq(value, ".") || streq(value, "..")) {
                        conf_error(err, c->path, line, "Invalid credential name for store_password_credential: %.64s",
                                   value);
                        return -EINVAL;
                }
                return set_string(&c->store_password_credential, value);
        }
        if (streq(key, "node_name")) {
                size_t n = strlen(value);
                if (n == 0 || n > 64 || strspn(value, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_") != n) {
                        conf_error(err, c->path, line, "node_name must be 1 to 64 of A-Z a-z 0-9 . - _: %.64s", value);
                        return -EINVAL;
                }
                return set_string(&c->node_name, value);
        }
        conf_error(err, c->path, line, "Unknown key '%s'.", key);
        return -EINVAL;
}

static int provider_cmp(const void *a, const void *b) {
        return strcmp((*(Provider *const *) a)->name, (*(Provider *const *) b)->name);
}

static int load_providers(BrokerConfig *c, unsigned line, ConfError *err) {
        struct dirent **de = NULL;
        int n, r = 0;

        /* A missing folder is a typo or a missed install step, not "no
         * providers yet": say which path was looked at. */
        n = scandir(c->providers_dir, &de, NULL, alphasort);
        if (n < 0) {
                r = -errno;
                if (r == -ENOENT)
                        conf_error(err, c->path, line, "providers_dir '%s'%s does not exist.", c->providers_dir,
                                   line == 0 ? " (the default)" : "");
                else
                        conf_error(err, c->path, line, "Cannot open providers_dir '%s': %s", c->providers_dir,
                                   strerror(-r));
                return r;
        }
        for (int i = 0; i < n; i++) {
                _cleanup_free_ char *path = NULL;
                const char *name = de[i]->d_name, *dot = strrchr(name, '.');
                Provider *p, **a;

                if (r < 0 || name[0] == '.')
                        continue;   /* ".", "..", and hidden files (editors' swap files) */
                if (asprintf(&path, "%s/%s", c->providers_dir, name) < 0) {
                        r = -ENOMEM;
                        continue;
                }
                if (!dot || !streq(dot, ".conf")) {
                        conf_warn(path, 0, "ignored: provider files are named NAME.conf.");
                        continue;
                }
                if (c->n_providers >= 4096) {
                        conf_error(err, c->providers_dir, 0, "Too many provider files.");
                        r = -E2BIG;
                        continue;
                }
                r = provider_load(path, &p, err);
                if (r < 0)
                        continue;
                a = realloc(c->providers, sizeof(Provider *) * (c->n_providers + 1));
                if (!a) {
                        provider_free(p);
                        r = -ENOMEM;
                        continue;
                }
                c->providers = a;
                c->providers[c->n_providers++] = p;
        }
        for (int i = 0; i < n; i++)
                free(de[i]);
        free(de);
        if (r < 0)
                return r;
        if (c->n_providers == 0)
                conf_warn(c->path, line, "providers_dir '%s' holds no provider files (NAME.conf).", c->providers_dir);
        if (c->n_providers > 1)
                qsort(c->providers, c->n_providers, sizeof(Provider *), provider_cmp);
        return 0;
}

int broker_config_load(const char *path, BrokerConfig **ret, ConfError *err) {
        _cleanup_(broker_config_freep) BrokerConfig *c = NULL;
        BrokerParse bp = {};
        int r;

        c = new0(BrokerConfig, 1);
        if (!c)
                return -ENOMEM;
        c->path = strdup(path);
        if (!c->path)
                return -ENOMEM;
        c->socket_mode = 0666;   /* access is checked per request by SO_PEERCRED */
        c->refresh_margin = 60 * USEC_PER_SEC;
        c->refresh_ratio = 0.1;
        c->refresh_jitter = 5 * USEC_PER_SEC;
        c->max_parallel_refreshes = 64;
        c->notify_interval = USEC_PER_HOUR;
        c->backoff_max = 5 * USEC_PER_MINUTE;
        c->pending_ttl = 10 * USEC_PER_MINUTE;
        c->max_connections = 1000000;
        c->trace_entries = TRACE_ENTRIES_DEFAULT;
        c->trace_connections = TRACE_CONNECTIONS_DEFAULT;
        c->refresh_token_warn = 14 * USEC_PER_DAY;
        bp.c = c;

        r = ini_parse_file(path, broker_set, &bp, err);
        if (r < 0)
                return r;

#define DEFAULT_STR(f, v) \
        if (!c->f && !(c->f = strdup(v))) return -ENOMEM
        DEFAULT_STR(state_dir, "/var/lib/tokenbroker");
        DEFAULT_STR(socket, "/run/tokenbroker/tokenbroker.sock");
        DEFAULT_STR(callback_listen, "127.0.0.1:8421");
        DEFAULT_STR(providers_dir, "/etc/tokenbroker/providers.d");
        DEFAULT_STR(presets_dir, PRESETS_DIR);
        DEFAULT_STR(key_credential, "tokenbroker.key");
#undef DEFAULT_STR
        if (!c->key_file) {
                char *k;

                if (asprintf(&k, "%s/tokenbroker.key", c->state_dir) < 0)
                        return -ENOMEM;
                c->key_file = k;
        }
        if (!c->public_url) {
                if (asprintf(&c->public_url, "http://%s", c->callback_listen) < 0)
                        return -ENOMEM;
        }
        if (!c->store && (c->store_password_file || c->store_password_credential)) {
                const char *k = c->store_password_file ? "store_password_file" : "store_password_credential";

                conf_error(err, c->path, bp.seen[table_lookup(broker_keys, ELEMENTSOF(broker_keys), k)],
                           "%s needs store = postgresql://... (without store, SQLite in state_dir needs no password).",
                           k);
                return -EINVAL;
        }
        if (!c->node_name) {
                char host[256] = "";

                if (gethostname(host, sizeof host - 1) < 0 || !host[0])
                        snprintf(host, sizeof host, "localhost");
                host[64] = 0;
                c->node_name = strdup(host);
                if (!c->node_name)
                        return -ENOMEM;
        }
        load_strict = c->strict;
        {
                const char *saved = presets_dir_override;

                presets_dir_override = c->presets_dir;
                loading_broker = c;
                r = load_providers(c, bp.seen[table_lookup(broker_keys, ELEMENTSOF(broker_keys), "providers_dir")],
                                   err);
                presets_dir_override = saved;
                loading_broker = NULL;
        }
        load_strict = false;
        if (r < 0)
                return r;
        for (size_t i = 0; i < c->n_providers; i++)
                if (broker_config_redirect_uri(c, c->providers[i], &c->providers[i]->redirect_uri) < 0)
                        return -ENOMEM;
        *ret = TAKE_PTR(c);
        return 0;
}

Provider *broker_config_find_provider(const BrokerConfig *c, const char *name) {
        for (size_t i = 0; i < c->n_providers; i++)
                if (streq(c->providers[i]->name, name))
                        return c->providers[i];
        return NULL;
}

int broker_config_redirect_uri(const BrokerConfig *c, const Provider *p, char **ret) {
        if (!p || p->shared_callback)
                return asprintf(ret, "%s/oauth/callback", c->public_url) < 0 ? -ENOMEM : 0;
        return asprintf(ret, "%s/oauth/callback/%s", c->public_url, p->name) < 0 ? -ENOMEM : 0;
}
