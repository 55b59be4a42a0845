/* SPDX-License-Identifier: MIT */
#include <jansson.h>
#include <math.h>
#include <strings.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "common/egress.h"
#include "common/b64.h"
#include "common/jsonptr.h"
#include "common/jwt.h"
#include "common/params.h"
#include "common/template.h"
#include "common/util.h"
#include "daemon/oauth.h"

/* Beyond this an expires_in is nonsense, not a long-lived token. */
#define EXPIRES_IN_MAX (10.0 * 365 * 24 * 3600)

void token_set_done(TokenSet *t) {
        t->access_token = secret_free(t->access_token);
        t->refresh_token = secret_free(t->refresh_token);
        t->id_token = secret_free(t->id_token);
        free(t->token_type);
        free(t->scope);
        *t = (TokenSet) {};
}

int pkce_challenge(Pkce method, const char *verifier, char **ret) {
        unsigned char md[SHA256_DIGEST_LENGTH];

        switch (method) {
        case PKCE_PLAIN:
                *ret = strdup(verifier);
                return *ret ? 0 : -ENOMEM;
        case PKCE_S256:
                if (!EVP_Digest(verifier, strlen(verifier), md, NULL, EVP_sha256(), NULL))
                        return -EIO;
                return b64url_encode(md, sizeof md, ret);
        default:
                return -EINVAL;
        }
}

int pkce_new(Pkce method, char **ret_verifier, char **ret_challenge) {
        _cleanup_secret_ char *verifier = NULL;
        char *challenge = NULL;
        int r;

        if (method == PKCE_NONE) {
                *ret_verifier = *ret_challenge = NULL;
                return 0;
        }
        /* 32 random bytes: 43 characters, RFC 7636 section 4.1's minimum
         * length and its recommended entropy. */
        r = random_token(32, &verifier);
        if (r < 0)
                return r;
        r = pkce_challenge(method, verifier, &challenge);
        if (r < 0)
                return r;
        *ret_verifier = TAKE_PTR(verifier);
        *ret_challenge = challenge;
        return 0;
}

static void append_param(StrBuf *b, const char *key, const char *value) {
        _cleanup_free_ char *k = url_escape(key), *v = url_escape(value);

        if (!k || !v) {
                b->oom = true;
                return;
        }
        if (b->len > 0 && b->s[b->len - 1] != '?' && b->s[b->len - 1] != '&')
                strbuf_puts(b, "&");
        strbuf_puts(b, k);
        strbuf_puts(b, "=");
        strbuf_puts(b, v);
        if (v)
                explicit_wipe(v, strlen(v));
}

/* Scopes are configured space-separated; some providers want commas. */
static char *join_scope(const Provider *p, const char *scope) {
        StrBuf b = {};
        const char *s = scope;
        bool first = true;

        while (s && *s) {
                size_t n;

                s += strspn(s, " ");
                n = strcspn(s, " ");
                if (n == 0)
                        break;
                if (!first)
                        strbuf_puts(&b, p->scope_separator);
                strbuf_append(&b, s, n);
                first = false;
                s += n;
        }
        return strbuf_steal(&b);
}

/* ---- templates ------------------------------------------------------ */

#define SCRATCH_MAX 64

typedef struct Expand {
        const Provider *p;
        const RequestVars *v;
        bool escape;              /* percent-encode placeholder values (URLs) */
        char *scratch[SCRATCH_MAX];
        size_t n_scratch;
        bool generated;           /* one set of random values per request */
        char uuid[37], rstr[13], rint[16], ts[24], utc[32];
        char *rb64;
} Expand;

static void expand_done(Expand *x) {
        for (size_t i = 0; i < x->n_scratch; i++)
                secret_free(x->scratch[i]);
        free(x->rb64);
        x->n_scratch = 0;
}

static int expand_generate(Expand *x) {
        uint8_t b[16];
        int r;

        if (x->generated)
                return 0;
        r = random_uuid(x->uuid);
        if (r >= 0)
                r = random_lower(x->rstr, 12);
        if (r >= 0)
                r = random_bytes(b, sizeof b);
        if (r >= 0)
                r = b64_encode(b, sizeof b, &x->rb64);
        if (r < 0)
                return r;
        snprintf(x->rint, sizeof x->rint, "%" PRIu32, (uint32_t) random_u64());
        snprintf(x->ts, sizeof x->ts, "%" PRIu64, now(CLOCK_REALTIME) / USEC_PER_SEC);
        format_timestamp(x->utc, sizeof x->utc, now(CLOCK_REALTIME));
        x->generated = true;
        return 0;
}

static const char *expand_raw(Expand *x, const char *name, size_t len) {
        const RequestVars *v = x->v;
        static const RequestVars none = {};
#define IS(s) (len == strlen(s) && memcmp(name, s, len) == 0)
        if (!v)
                v = &none;
        if (IS("client_id"))
                return x->p->client_id;
        if (IS("client_secret"))
                return x->p->client_secret;
        if (IS("redirect_uri"))
                return v->redirect_uri;
        if (IS("scope"))
                return v->scope;
        if (IS("username"))
                return v->username ?: x->p->username;
        if (IS("password"))
                return v->password ?: x->p->password;
        if (IS("code"))
                return v->code;
        if (IS("code_verifier"))
                return v->code_verifier;
        if (IS("state"))
                return v->state;
        if (IS("refresh_token"))
                return v->refresh_token;
        if (IS("device_code"))
                return v->device_code;
        if (IS("access_token"))
                return v->access_token;
        if (IS("token"))
                return v->token;
        if (IS("token_type_hint"))
                return v->token_type_hint;
        if (IS("token_url"))
                return x->p->token_url;
        {
                const char *pv = params_lookup(v->params, v->metadata, name, len);
                if (pv)
                        return pv;
        }
        if (v->preview) {
                /* `tokenctl preview`: named, so the output is stable */
                static const char *const generated[] = { "<uuid>", "<random_string>", "<random_base64>",
                                                         "<random_int>", "<timestamp_unix>", "<utc>" };
                for (size_t i = 0; i < ELEMENTSOF(generated); i++)
                        if (len == strlen(generated[i]) - 2 && memcmp(name, generated[i] + 1, len) == 0)
                                return generated[i];
        }
        if (expand_generate(x) < 0)
                return NULL;
        if (IS("uuid"))
                return x->uuid;
        if (IS("random_string"))
                return x->rstr;
        if (IS("random_base64"))
                return x->rb64;
        if (IS("random_int"))
                return x->rint;
        if (IS("timestamp_unix"))
                return x->ts;
        if (IS("utc"))
                return x->utc;
#undef IS
        return NULL;
}

/* Every known placeholder has a value ("" when unset); NULL only for an
 * unknown name or an allocation failure. */
static const char *expand_lookup(const char *name, size_t len, void *userdata) {
        Expand *x = userdata;
        const char *v;
        char *e;

        v = expand_raw(x, name, len);
        if (!v) {
                /* known but unset? */
                const char *const *lists[] = { placeholders_token, placeholders_refresh, placeholders_revoke };
                for (size_t k = 0; k < ELEMENTSOF(lists); k++) {
                        const char *const *known = lists[k];
                        for (size_t i = 0; known[i]; i++)
                                if (strlen(known[i]) == len && memcmp(known[i], name, len) == 0)
                                        return "";
                }
                return NULL;
        }
        if (!x->escape || x->n_scratch >= SCRATCH_MAX)
                return x->escape ? NULL : v;
        e = url_escape(v);
        if (!e)
                return NULL;
        x->scratch[x->n_scratch++] = e;
        return e;
}

static int expand(Expand *x, const char *tmpl, bool escape, char **ret) {
        x->escape = escape;
        return template_expand(tmpl, expand_lookup, x, ret, NULL, NULL);
}

/* ---- requests ------------------------------------------------------- */

typedef struct KV {
        char *key;
        char *value;              /* secret */
} KV;

typedef struct KVList {
        KV items[PROVIDER_TEMPLATES_MAX + 16];
        size_t n;
} KVList;

static void kvlist_done(KVList *l) {
        for (size_t i = 0; i < l->n; i++) {
                free(l->items[i].key);
                secret_free(l->items[i].value);
        }
        l->n = 0;
}

static bool kvlist_has(const KVList *l, const char *key) {
        for (size_t i = 0; i < l->n; i++)
                if (streq(l->items[i].key, key))
                        return true;
        return false;
}

/* Adds or (replace) overrides a pair; the strings are copied. */
static int kvlist_put(KVList *l, const char *key, size_t key_len, const char *value, bool replace) {
        char *k, *v;

        if (replace)
                for (size_t i = 0; i < l->n; i++)
                        if (strlen(l->items[i].key) == key_len && memcmp(l->items[i].key, key, key_len) == 0) {
                                v = strdup(value);
                                if (!v)
                                        return -ENOMEM;
                                secret_free(l->items[i].value);
                                l->items[i].value = v;
                                return 0;
                        }
        if (l->n >= ELEMENTSOF(l->items))
                return -E2BIG;
        k = strndup(key, key_len);
        v = strdup(value);
        if (!k || !v) {
                free(k);
                free(v);
                return -ENOMEM;
        }
        l->items[l->n++] = (KV) { k, v };
        return 0;
}

/* "name=template" lines, expanded, into l. */
static int kvlist_templates(KVList *l, const TemplateList *t, Expand *x, bool replace) {
        int r;

        for (size_t i = 0; i < t->n; i++) {
                const char *eq = strchr(t->items[i], '=');
                _cleanup_secret_ char *v = NULL;

                if (!eq)
                        return -EINVAL;
                r = expand(x, eq + 1, false, &v);
                if (r < 0)
                        return r;
                r = kvlist_put(l, t->items[i], (size_t) (eq - t->items[i]), v, replace);
                if (r < 0)
                        return r;
        }
        return 0;
}

static const char *url_lookup(const char *name, size_t len, void *userdata) {
        Expand *x = userdata;

        x->escape = false;   /* url_template_expand() encodes what it must */
        return expand_lookup(name, len, x);
}

int oauth_authorize_url(const Provider *p, const char *redirect_uri, const char *state,
                        const char *challenge, const char *scope, char **ret) {
        return oauth_authorize_url_params(p, redirect_uri, state, challenge, scope, NULL, ret, NULL);
}

int oauth_authorize_url_params(const Provider *p, const char *redirect_uri, const char *state,
                               const char *challenge, const char *scope, const json_t *params, char **ret,
                               char **ret_why) {
        _cleanup_free_ char *sc = NULL, *base = NULL;
        RequestVars vars = { .redirect_uri = redirect_uri, .state = state, .params = params };
        Expand x = { .p = p, .v = &vars };
        KVList kv = {};
        StrBuf b = {};
        char *url;
        int r = 0;

        if (!p->authorize_url)
                return -EINVAL;
        sc = join_scope(p, scope ?: p->scopes);
        if (!sc)
                return -ENOMEM;
        vars.scope = isempty(sc) ? NULL : sc;
#define PUT(k, v) if (r >= 0 && (v)) r = kvlist_put(&kv, k, strlen(k), v, true)
        PUT("response_type", "code");
        PUT("client_id", p->client_id);
        PUT("redirect_uri", redirect_uri);
        PUT("scope", vars.scope);
        PUT("state", state);
        PUT("code_challenge", challenge);
        PUT("code_challenge_method", challenge ? (p->pkce == PKCE_S256 ? "S256" : "plain") : NULL);
#undef PUT
        /* Extra parameters, "k=v k=v" (access_type=offline, prompt=consent). */
        for (const char *s = p->authorize_params; r >= 0 && s && *s;) {
                size_t n, klen;
                const char *eq;
                _cleanup_free_ char *val = NULL;

                s += strspn(s, " ");
                n = strcspn(s, " ");
                if (n == 0)
                        break;
                eq = memchr(s, '=', n);
                klen = eq ? (size_t) (eq - s) : n;
                val = eq ? strndup(eq + 1, n - klen - 1) : strdup("");
                if (!val)
                        r = -ENOMEM;
                else
                        r = kvlist_put(&kv, s, klen, val, false);
                s += n;
        }
        /* authorize_param templates override a default of the same name */
        if (r >= 0)
                r = kvlist_templates(&kv, &p->authorize_param, &x, true);
        if (r < 0)
                goto finish;
        r = url_template_expand(p->authorize_url, url_lookup, &x, &base, ret_why);
        if (r < 0)
                goto finish;
        strbuf_puts(&b, base);
        /* append_param() adds the '&' after an existing query. */
        if (!strchr(base, '?'))
                strbuf_puts(&b, "?");
        for (size_t i = 0; i < kv.n; i++)
                append_param(&b, kv.items[i].key, kv.items[i].value);
        url = strbuf_steal(&b);
        if (!url) {
                r = -ENOMEM;
                goto finish;
        }
        *ret = url;
finish:
        kvlist_done(&kv);
        expand_done(&x);
        return r;
}

static int basic_auth_header(const Provider *p, char **ret) {
        /* RFC 6749 section 2.3.1: both form-urlencoded, then Basic. */
        _cleanup_free_ char *id = url_escape(p->client_id);
        _cleanup_secret_ char *secret = url_escape(p->client_secret ?: "");
        _cleanup_secret_ char *pair = NULL, *b64 = NULL;
        int r;

        if (!id || !secret)
                return -ENOMEM;
        if (asprintf(&pair, "%s:%s", id, secret) < 0)
                return -ENOMEM;
        r = b64_encode(pair, strlen(pair), &b64);
        if (r < 0)
                return r;
        if (asprintf(ret, "Authorization: Basic %s", b64) < 0)
                return -ENOMEM;
        return 0;
}

static void append_query(StrBuf *b, const KVList *l) {
        for (size_t i = 0; i < l->n; i++)
                append_param(b, l->items[i].key, l->items[i].value);
}

int oauth_provider_request(Http *h, const Provider *p, RequestKind kind, const Param *defaults, size_t n,
                           const RequestVars *v, HttpRequest **ret) {
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        _cleanup_secret_ char *url = NULL, *body = NULL;
        _cleanup_free_ char *sc = NULL;
        const TemplateList *headers, *params;
        const char *url_tmpl, *method;
        bool literal_url = false;
        RequestVars vars = v ? *v : (RequestVars) {};
        Expand x = { .p = p, .v = &vars };
        KVList kv = {};
        BodyType bt;
        StrBuf b = {};
        int r;

        switch (kind) {
        case REQUEST_REFRESH:
                url_tmpl = p->refresh_url ?: p->token_url;
                method = p->refresh_method ?: p->token_method ?: "POST";
                bt = p->refresh_body;
                headers = p->refresh_header.n > 0 ? &p->refresh_header : &p->token_header;
                params = &p->refresh_param;
                break;
        case REQUEST_REVOKE:
                url_tmpl = p->revoke_url;
                /* a plain URL: discovery may fill it */
                literal_url = true;
                method = p->revoke_method ?: "POST";
                bt = p->revoke_body;
                headers = p->revoke_header.n > 0 ? &p->revoke_header : &p->token_header;
                params = &p->revoke_param;
                break;
        case REQUEST_DEVICE:
                url_tmpl = p->device_authorization_url;
                /* Plain URLs, not templates: neither key is checked as one
                 * at load, and discovery may fill them. */
                literal_url = true;
                method = "POST";
                bt = BODY_FORM;
                headers = &p->token_header;
                params = NULL;
                break;
        default:
                url_tmpl = p->token_url;
                method = p->token_method ?: "POST";
                bt = p->token_body;
                headers = &p->token_header;
                params = &p->token_param;
                break;
        }
        if (!url_tmpl)
                return -EOPNOTSUPP;
        if (vars.scope) {
                sc = join_scope(p, vars.scope);
                if (!sc)
                        return -ENOMEM;
                vars.scope = isempty(sc) ? NULL : sc;
        }

        /* the parameters: the provider's list replaces the RFC defaults */
        if (params && params->n > 0)
                r = kvlist_templates(&kv, params, &x, false);
        else {
                r = 0;
                for (size_t i = 0; i < n && r >= 0; i++)
                        if (defaults[i].value)
                                r = kvlist_put(&kv, defaults[i].key, strlen(defaults[i].key), defaults[i].value,
                                               false);
        }
        if (r >= 0 && (p->client_auth == CLIENT_AUTH_POST || p->client_auth == CLIENT_AUTH_NONE) &&
            !kvlist_has(&kv, "client_id"))
                r = kvlist_put(&kv, "client_id", 9, p->client_id, false);
        if (r >= 0 && p->client_auth == CLIENT_AUTH_POST && !kvlist_has(&kv, "client_secret"))
                r = kvlist_put(&kv, "client_secret", 13, p->client_secret ?: "", false);
        if (r < 0)
                goto finish;

        /* the URL, its placeholders in the path and query percent-encoded */
        if (literal_url) {
                /* ${param.X} and ${metadata.X} only, never a secret; a
                 * URL with anything else is used as it stands */
                r = oauth_url_expand(url_tmpl, vars.params, vars.metadata, &url, NULL);
                if (r == -ENOKEY)
                        r = (url = strdup(url_tmpl)) ? 0 : -ENOMEM;
        } else
                r = url_template_expand(url_tmpl, url_lookup, &x, &url, NULL);
        if (r < 0)
                goto finish;
        if (bt == BODY_QUERY || streq(method, "GET")) {
                strbuf_puts(&b, url);
                if (kv.n > 0 && !strchr(url, '?'))
                        strbuf_puts(&b, "?");
                append_query(&b, &kv);
                secret_free(url);
                url = strbuf_steal(&b);
                if (!url) {
                        r = -ENOMEM;
                        goto finish;
                }
        }
        r = http_request_new(h, method, url, &req);
        if (r < 0)
                goto finish;

        if (streq(method, "GET"))
                ;
        else if (bt == BODY_JSON) {
                json_t *o = json_object();
                for (size_t i = 0; o && i < kv.n; i++)
                        if (json_object_set_new(o, kv.items[i].key, json_string(kv.items[i].value)) < 0)
                                break;
                body = o ? json_dumps(o, JSON_COMPACT) : NULL;
                if (o) {
                        /* the tree holds copies of the secrets too */
                        const char *key;
                        json_t *val;
                        json_object_foreach(o, key, val)
                                if (json_is_string(val))
                                        explicit_wipe((char *) json_string_value(val), json_string_length(val));
                        json_decref(o);
                }
                if (!body) {
                        r = -ENOMEM;
                        goto finish;
                }
                {
                        size_t blen = strlen(body);
                        r = http_request_set_body(req, "application/json", TAKE_PTR(body), blen);
                }
        } else {
                if (bt == BODY_FORM)
                        append_query(&b, &kv);
                body = strbuf_steal(&b);
                if (!body && !(body = strdup(""))) {
                        r = -ENOMEM;
                        goto finish;
                }
                r = http_request_set_body(req, "application/x-www-form-urlencoded", body, strlen(body));
                body = NULL;
        }
        if (r < 0)
                goto finish;

        /* headers: the client authentication, then the provider's */
        if (p->client_auth == CLIENT_AUTH_BASIC) {
                _cleanup_secret_ char *hdr = NULL;

                r = basic_auth_header(p, &hdr);
                if (r >= 0)
                        r = http_request_add_header(req, hdr);
                if (r < 0)
                        goto finish;
        }
        for (size_t i = 0; i < headers->n; i++) {
                _cleanup_secret_ char *line = NULL;

                r = expand(&x, headers->items[i], false, &line);
                if (r < 0)
                        goto finish;
                if (strpbrk(line, "\r\n")) {
                        r = -EINVAL;   /* a value must not start another header */
                        goto finish;
                }
                r = http_request_add_header(req, line);
                if (r < 0)
                        goto finish;
        }
        *ret = TAKE_PTR(req);
        r = 0;
finish:
        strbuf_free(&b);
        kvlist_done(&kv);
        expand_done(&x);
        return r;
}

int oauth_token_request(Http *h, const Provider *p, const Param *params, size_t n, HttpRequest **ret) {
        return oauth_provider_request(h, p, REQUEST_TOKEN, params, n, NULL, ret);
}

int oauth_revoke_request(Http *h, const Provider *p, const char *token, const char *hint,
                         const RequestVars *v, HttpRequest **ret) {
        const Param params[] = {
                { "token", token },
                { "token_type_hint", hint },
        };
        RequestVars vars = v ? *v : (RequestVars) {};

        if (!p->revoke_url)
                return -EOPNOTSUPP;
        vars.token = token;
        vars.token_type_hint = hint;
        return oauth_provider_request(h, p, REQUEST_REVOKE, params, ELEMENTSOF(params), &vars, ret);
}

static int dup_string_at(json_t *root, const char *ptr, char **ret) {
        const char *s;
        int r;

        r = jsonptr_get_string(root, ptr, &s);
        if (r < 0)
                return r;
        *ret = strdup(s);
        return *ret ? 0 : -ENOMEM;
}

/* Printable, bounded copy of provider text for an error message. */
static char *sanitize(const char *s, size_t max) {
        size_t n = MIN(strlen(s), max);
        char *out = malloc(n + 1);

        if (!out)
                return NULL;
        for (size_t i = 0; i < n; i++)
                out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
        out[n] = 0;
        return out;
}

/* Values shorter than this are not worth hiding (and would blank out
 * ordinary words of an error text). */
#define REDACT_MIN 6
#define REDACT_MAX 96

/* Every value the broker sent in one request, longest first. */
typedef struct Secrets {
        char *v[REDACT_MAX];
        size_t n;
} Secrets;

static void secrets_redact(const Secrets *s, char **text);

/* Provider text, redacted of what was sent (before it is cut: a cut could
 * leave a prefix of a secret that no longer matches), then made printable
 * and bounded. */
static char *sanitize_redacted(const Secrets *s, const char *text, size_t max) {
        _cleanup_secret_ char *t = strdup(text);

        if (!t)
                return NULL;
        if (s)
                secrets_redact(s, &t);
        return t ? sanitize(t, max) : NULL;
}

/* An error answer: the error and its description at the provider's
 * pointers, classified by its error_map, else RFC 6749 section 5.2. */
static OAuthOutcome error_answer(const Provider *p, long status, json_t *root, const Secrets *s, char **ret_error) {
        const char *code = NULL, *desc = NULL, *hint = NULL;
        _cleanup_free_ char *c = NULL, *d = NULL;
        ErrorClass class;

        if (root && json_is_object(root)) {
                (void) jsonptr_get_string(root, p->ptr_error, &code);
                (void) jsonptr_get_string(root, p->ptr_error_description, &desc);
        }
        class = provider_classify_error(p, status, code, desc, &hint);
        c = code ? sanitize_redacted(s, code, 64) : NULL;
        d = desc ? sanitize_redacted(s, desc, 200) : NULL;
        if (asprintf(ret_error, "%sHTTP %ld%s%s%s%s%s%s%s", class == ERROR_CLASS_CONFIG ? "configuration error: " : "",
                     status, c ? ": " : "", c ?: "", d ? ": " : "", d ?: "", hint ? " (hint: " : "", hint ?: "",
                     hint ? ")" : "") < 0)
                *ret_error = NULL;
        return class == ERROR_CLASS_RETRY ? OAUTH_TRANSIENT : OAUTH_PERMANENT;
}

static bool looks_like_jwt(const char *s) {
        /* base64url of '{"' and at least one dot: a JWS compact serialization */
        return startswith(s, "eyJ") && strchr(s, '.');
}

static OAuthOutcome parse_token_response(const Provider *p, long status, const char *body, size_t len,
                                         usec_t sent_at, const Secrets *sent, TokenSet *ret, char **ret_error) {
        json_t *root = NULL;
        json_error_t jerr;
        TokenSet t = {};
        OAuthOutcome o = OAUTH_TRANSIENT;
        double expires_in;
        int r;

        *ret_error = NULL;
        if (body && len > 0)
                root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);

        if (status < 200 || status >= 300) {
                o = error_answer(p, status, root, sent, ret_error);
                goto out;
        }
        if (!root || !json_is_object(root)) {
                *ret_error = strdup(body && len > 0 && memchr(body, '<', MIN(len, (size_t) 256))
                                            ? "token response is not JSON (an HTML page?)"
                                            : "token response is not a JSON object");
                goto out;
        }
        r = dup_string_at(root, p->ptr_access_token, &t.access_token);
        if (r < 0 || isempty(t.access_token)) {
                /* Some providers (GitHub, Slack) answer errors with 200. */
                if (jsonptr_get(root, p->ptr_error, NULL) >= 0) {
                        o = error_answer(p, status, root, sent, ret_error);
                        goto out;
                }
                *ret_error = strdup("token response has no access_token");
                goto out;
        }
        (void) dup_string_at(root, p->ptr_refresh_token, &t.refresh_token);
        if (t.refresh_token && !*t.refresh_token)
                t.refresh_token = secret_free(t.refresh_token);
        (void) dup_string_at(root, p->ptr_scope, &t.scope);
        (void) dup_string_at(root, p->ptr_id_token, &t.id_token);
        if (dup_string_at(root, p->ptr_token_type, &t.token_type) < 0 || isempty(t.token_type)) {
                free(t.token_type);
                t.token_type = strdup("Bearer");
        } else if (strcasecmp(t.token_type, "bearer") == 0)
                /* RFC 6749 section 5.1: the type is case-insensitive. */
                memcpy(t.token_type, "Bearer", 6);
        /* What goes into a header line, a terminal or a form: RFC 6749
         * appendix A (VSCHAR for the tokens and the scope; a type is one
         * word). A CR LF in a token would inject a header line; refused like
         * any malformed answer (the old token is kept, the refresh retried). */
        if (!string_is_vschar(t.access_token, true) ||
            (t.refresh_token && !string_is_vschar(t.refresh_token, true)) ||
            (t.id_token && !string_is_vschar(t.id_token, false))) {
                *ret_error = strdup("token response has a token with control or non-ASCII characters");
                goto out;
        }
        if ((t.token_type && !string_is_vschar(t.token_type, false)) || (t.scope && !string_is_vschar(t.scope, true))) {
                *ret_error = strdup("token response has a token_type or scope with control or non-ASCII characters");
                goto out;
        }

        /* Expiry: expires_in, an absolute expiry, the JWT's exp, the
         * default lifetime; else never. */
        r = p->never_expires ? -ENOENT : jsonptr_get_number(root, p->ptr_expires_in, &expires_in);
        if (r >= 0) {
                if (!(expires_in > 0 && expires_in <= EXPIRES_IN_MAX)) {
                        *ret_error = strdup("token response has an invalid expires_in");
                        goto out;
                }
                /* Counted from when the request was sent: the safe side. */
                t.expires_at = sent_at + (usec_t) (expires_in * (double) USEC_PER_SEC);
        } else if (r != -ENOENT) {
                *ret_error = strdup("token response has an invalid expires_in");
                goto out;
        } else if (!p->never_expires) {
                json_t *v = NULL;
                usec_t exp;

                if (p->ptr_expires_at && jsonptr_get(root, p->ptr_expires_at, &v) >= 0) {
                        double d;

                        if (json_is_string(v) && parse_timestamp(json_string_value(v), &exp) >= 0)
                                ;
                        else if (jsonptr_get_number(root, p->ptr_expires_at, &d) >= 0 && d > 0 &&
                                 d < 253402300800.0)
                                /* epoch seconds; milliseconds when absurdly large */
                                exp = (usec_t) ((d > 1e11 ? d / 1000.0 : d) * (double) USEC_PER_SEC);
                        else {
                                *ret_error = strdup("token response has an invalid absolute expiry");
                                goto out;
                        }
                        if (exp <= sent_at || exp - sent_at > (usec_t) (EXPIRES_IN_MAX * (double) USEC_PER_SEC)) {
                                *ret_error = strdup("token response has an absolute expiry in the past or too far ahead");
                                goto out;
                        }
                        t.expires_at = exp;
                } else if (jwt_get_exp(t.access_token, &exp) >= 0)
                        t.expires_at = exp;
                else if (p->default_lifetime > 0)
                        t.expires_at = sent_at + p->default_lifetime;
                else if (looks_like_jwt(t.access_token)) {
                        /* Its expiry can only be in there: a JWT that does
                         * not decode was cut or mangled on the way. */
                        *ret_error = strdup("access token looks like a JWT but does not decode (truncated?)");
                        goto out;
                }
        }
        /* The refresh token's end, when the answer says (GitHub's
         * refresh_token_expires_in); a bad value is ignored: unknown. */
        if (p->ptr_refresh_token_expires_in && t.refresh_token) {
                double rin;

                if (jsonptr_get_number(root, p->ptr_refresh_token_expires_in, &rin) >= 0 && rin > 0 &&
                    rin <= EXPIRES_IN_MAX)
                        t.refresh_expires_at = sent_at + (usec_t) (rin * (double) USEC_PER_SEC);
        }
        if (!t.token_type) {
                *ret_error = strdup("out of memory");
                goto out;
        }
        *ret = t;
        t = (TokenSet) {};
        o = OAUTH_OK;
out:
        token_set_done(&t);
        json_decref(root);
        if (o != OAUTH_OK && !*ret_error)
                *ret_error = strdup("invalid token response");
        return o;
}

OAuthOutcome oauth_parse_token_response(const Provider *p, long status, const char *body, size_t len,
                                        usec_t sent_at, TokenSet *ret, char **ret_error) {
        return parse_token_response(p, status, body, len, sent_at, NULL, ret, ret_error);
}

/* Protocol words a request carries (grant_type, token_type_hint) are no
 * secrets: redacted, they would mangle the provider's error codes
 * ("invalid_refresh_token", Slack; "bad_refresh_token", GitHub). */
static bool protocol_word(const char *v, size_t len) {
        static const char *const words[] = {
                "authorization_code", "refresh_token", "client_credentials", "access_token",
                "urn:ietf:params:oauth:grant-type:device_code", "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code",
        };

        for (size_t i = 0; i < ELEMENTSOF(words); i++)
                if (strlen(words[i]) == len && memcmp(words[i], v, len) == 0)
                        return true;
        return false;
}

static void secrets_add(Secrets *s, const char *v, size_t len) {
        if (len < REDACT_MIN || s->n >= REDACT_MAX || protocol_word(v, len))
                return;
        for (size_t i = 0; i < s->n; i++)
                if (strlen(s->v[i]) == len && memcmp(s->v[i], v, len) == 0)
                        return;
        s->v[s->n] = strndup(v, len);
        if (s->v[s->n])
                s->n++;
}

/* A form body or a URL query: each value as sent (percent-encoded, as a
 * provider echoing the raw request quotes it) and decoded. */
static void secrets_add_form(Secrets *s, const char *body, size_t len) {
        const char *p = body, *end = body + len;

        while (p < end) {
                const char *amp = memchr(p, '&', (size_t) (end - p)), *stop = amp ?: end;
                const char *eq = memchr(p, '=', (size_t) (stop - p));
                char *v = NULL;

                if (eq) {
                        secrets_add(s, eq + 1, (size_t) (stop - eq - 1));
                        if (url_unescape(eq + 1, (size_t) (stop - eq - 1), &v) >= 0) {
                                secrets_add(s, v, strlen(v));
                                secret_free(v);
                        }
                }
                p = stop + 1;
        }
}

static int secrets_cmp(const void *a, const void *b) {
        size_t la = strlen(*(char *const *) a), lb = strlen(*(char *const *) b);

        return la < lb ? 1 : la > lb ? -1 : 0;
}

static void secrets_done(Secrets *s) {
        for (size_t i = 0; i < s->n; i++)
                s->v[i] = secret_free(s->v[i]);
        s->n = 0;
}

static void secrets_add_json(Secrets *s, json_t *j) {
        const char *k;
        json_t *v;
        size_t i;

        if (json_is_string(j))
                secrets_add(s, json_string_value(j), json_string_length(j));
        else if (json_is_object(j)) {
                json_object_foreach(j, k, v)
                        secrets_add_json(s, v);
        } else if (json_is_array(j))
                json_array_foreach(j, i, v)
                        secrets_add_json(s, v);
}

/* A provider may quote the request in its error text ("refresh token
 * rt-123 is not valid for client_secret=..."): every value the broker sent
 * (URL query parameters, body parameters, header values, the client
 * secret, both halves of a Basic header) is collected here, to be cut out
 * of the text before it reaches last_error, the log, an event or an API
 * answer. */
static void secrets_from_request(const Provider *p, const HttpRequest *req, Secrets *ret) {
        Secrets s = {};

        if (p->client_secret)
                secrets_add(&s, p->client_secret, strlen(p->client_secret));
        if (req->url) {
                const char *q = strchr(req->url, '?');

                if (q) {
                        const char *hash = strchr(q + 1, '#');
                        secrets_add_form(&s, q + 1, hash ? (size_t) (hash - q - 1) : strlen(q + 1));
                }
        }
        if (req->post_data && req->post_len > 0) {
                json_t *j = json_loadb(req->post_data, req->post_len, 0, NULL);
                if (j) {
                        secrets_add_json(&s, j);
                        json_decref(j);
                } else
                        secrets_add_form(&s, req->post_data, req->post_len);
        }
        for (const struct curl_slist *h = req->headers; h; h = h->next) {
                const char *colon = strchr(h->data, ':'), *v;
                void *dec = NULL;
                size_t dlen = 0;

                if (!colon)
                        continue;
                for (v = colon + 1; *v == ' '; v++)
                        ;
                secrets_add(&s, v, strlen(v));
                if (strncasecmp(v, "Basic ", 6) == 0) {
                        /* standard base64: map to the URL alphabet the decoder takes */
                        char *b = strdup(v + 6);

                        for (char *q = b; q && *q; q++)
                                *q = *q == '+' ? '-' : *q == '/' ? '_' : *q;
                        if (b && b64url_decode(b, strlen(b), &dec, &dlen) >= 0) {
                                const char *sep = memchr(dec, ':', dlen);
                                char *id = NULL, *sec = NULL;

                                if (sep && url_unescape(dec, (size_t) (sep - (char *) dec), &id) >= 0) {
                                        secrets_add(&s, id, strlen(id));
                                        secret_free(id);
                                }
                                if (sep && url_unescape(sep + 1, dlen - (size_t) (sep + 1 - (char *) dec), &sec) >= 0) {
                                        secrets_add(&s, sec, strlen(sec));
                                        secret_free(sec);
                                }
                                explicit_wipe(dec, dlen);
                                free(dec);
                        }
                        secret_free(b);
                }
        }
        /* longest first: a value that contains a shorter one goes whole */
        qsort(s.v, s.n, sizeof s.v[0], secrets_cmp);
        *ret = s;
}

static void secrets_redact(const Secrets *s, char **text) {
        for (size_t i = 0; *text && i < s->n; i++) {
                char *hit;

                /* bounded: every pass shortens or keeps the text, and a
                 * secret of at least REDACT_MIN bytes becomes 10 bytes of
                 * "[redacted]" that cannot contain it again */
                for (unsigned k = 0; k < 64 && (hit = strstr(*text, s->v[i])); k++) {
                        size_t before = (size_t) (hit - *text), len = strlen(s->v[i]);
                        char *t;

                        if (asprintf(&t, "%.*s[redacted]%s", (int) before, *text, hit + len) < 0) {
                                /* out of memory: nothing rather than a secret */
                                *text = secret_free(*text);
                                break;
                        }
                        secret_free(*text);
                        *text = t;
                }
        }
}

OAuthOutcome oauth_token_response(const Provider *p, const HttpRequest *req, TokenSet *ret,
                                  char **ret_error) {
        OAuthOutcome o;

        if (req->result != CURLE_OK || req->too_large) {
                *ret_error = strdup(http_request_strerror(req));
                return OAUTH_TRANSIENT;
        }
        {
                Secrets sent = {};

                secrets_from_request(p, req, &sent);
                o = parse_token_response(p, req->status, req->body, req->body_len, req->sent_at, &sent, ret,
                                         ret_error);
                if (o != OAUTH_OK)
                        secrets_redact(&sent, ret_error);
                secrets_done(&sent);
        }
        if (o != OAUTH_OK && !*ret_error)
                *ret_error = strdup("invalid token response");
        return o;
}

int oauth_identity_from_id_token(const char *id_token, char **ret) {
        json_t *claims = NULL;
        int r;

        r = jwt_decode_payload(id_token, &claims);
        if (r < 0)
                return r;
        r = jwt_claims_identity(claims, ret);
        json_decref(claims);
        return r;
}

/* A claim as text: strings as they are, integers in decimal (GitHub's id). */
static int identity_at(json_t *root, const char *ptr, char **ret) {
        json_t *v;
        int r;

        r = jsonptr_get(root, ptr, &v);
        if (r < 0)
                return r;
        if (json_is_string(v) && json_string_length(v) > 0)
                *ret = sanitize(json_string_value(v), 256);
        else if (json_is_integer(v))
                r = asprintf(ret, "%" JSON_INTEGER_FORMAT, json_integer_value(v)) < 0 ? -ENOMEM : 0;
        else
                return -EMEDIUMTYPE;
        if (r < 0)
                return r;
        return *ret ? 0 : -ENOMEM;
}

int oauth_identity_from_claims(const Provider *p, const char *id_token, char **ret) {
        json_t *claims = NULL;
        int r;

        if (!p->identity_pointer)
                return oauth_identity_from_id_token(id_token, ret);
        r = jwt_decode_payload(id_token, &claims);
        if (r < 0)
                return r;
        r = identity_at(claims, p->identity_pointer, ret);
        json_decref(claims);
        return r;
}

int oauth_identity_from_userinfo(const Provider *p, const char *body, size_t len, char **ret) {
        json_t *root;
        int r;

        root = body && len > 0 ? json_loadb(body, len, 0, NULL) : NULL;
        if (!root || !json_is_object(root)) {
                json_decref(root);
                return -EBADMSG;
        }
        if (p->identity_pointer)
                r = identity_at(root, p->identity_pointer, ret);
        else {
                r = identity_at(root, "/email", ret);
                if (r < 0)
                        r = identity_at(root, "/preferred_username", ret);
                if (r < 0)
                        r = identity_at(root, "/sub", ret);
        }
        json_decref(root);
        return r;
}

char *oauth_error_code(const Provider *p, const HttpRequest *req) {
        json_t *root;
        const char *code = NULL;
        char *s = NULL;

        if (req->result != CURLE_OK || !req->body || req->body_len == 0)
                return NULL;
        root = json_loadb(req->body, req->body_len, 0, NULL);
        if (root && json_is_object(root) && jsonptr_get_string(root, p->ptr_error, &code) >= 0)
                s = sanitize(code, 64);
        json_decref(root);
        return s;
}

void device_auth_done(DeviceAuth *d) {
        secret_free(d->device_code);
        free(d->user_code);
        free(d->verification_uri);
        free(d->verification_uri_complete);
        *d = (DeviceAuth) {};
}

static int parse_device_response(long status, const char *body, size_t len, const Secrets *sent, DeviceAuth *ret,
                                 char **ret_error) {
        DeviceAuth d = {};
        json_t *root;
        double num;
        int r = -EBADMSG;

        *ret_error = NULL;
        root = body && len > 0 ? json_loadb(body, len, 0, NULL) : NULL;
        if (status < 200 || status >= 300) {
                const char *code = NULL, *desc = NULL;
                _cleanup_free_ char *c = NULL, *dd = NULL;

                if (root && json_is_object(root)) {
                        (void) jsonptr_get_string(root, "/error", &code);
                        (void) jsonptr_get_string(root, "/error_description", &desc);
                }
                c = code ? sanitize_redacted(sent, code, 64) : NULL;
                dd = desc ? sanitize_redacted(sent, desc, 200) : NULL;
                if (asprintf(ret_error, "device authorization refused: HTTP %ld%s%s%s%s", status, c ? ": " : "",
                             c ?: "", dd ? ": " : "", dd ?: "") < 0)
                        *ret_error = NULL;
                r = -EPROTO;
                goto out;
        }
        if (!root || !json_is_object(root)) {
                *ret_error = strdup("device authorization response is not a JSON object");
                goto out;
        }
        if (dup_string_at(root, "/device_code", &d.device_code) < 0 || isempty(d.device_code) ||
            dup_string_at(root, "/user_code", &d.user_code) < 0 || isempty(d.user_code)) {
                *ret_error = strdup("device authorization response lacks device_code or user_code");
                goto out;
        }
        /* Google says verification_url. */
        if (dup_string_at(root, "/verification_uri", &d.verification_uri) < 0 &&
            dup_string_at(root, "/verification_url", &d.verification_uri) < 0) {
                *ret_error = strdup("device authorization response lacks verification_uri");
                goto out;
        }
        (void) dup_string_at(root, "/verification_uri_complete", &d.verification_uri_complete);
        if (jsonptr_get_number(root, "/expires_in", &num) < 0 || !(num > 0 && num <= 86400)) {
                *ret_error = strdup("device authorization response has no valid expires_in");
                goto out;
        }
        d.expires_in = (usec_t) (num * (double) USEC_PER_SEC);
        /* RFC 8628 section 3.2: 5 seconds when absent. */
        if (jsonptr_get_number(root, "/interval", &num) >= 0 && num >= 1 && num <= 600)
                d.interval = (usec_t) (num * (double) USEC_PER_SEC);
        else
                d.interval = 5 * USEC_PER_SEC;
        *ret = d;
        d = (DeviceAuth) {};
        r = 0;
out:
        device_auth_done(&d);
        json_decref(root);
        if (r < 0 && !*ret_error)
                *ret_error = strdup("invalid device authorization response");
        return r;
}

int oauth_parse_device_response(long status, const char *body, size_t len, DeviceAuth *ret, char **ret_error) {
        return parse_device_response(status, body, len, NULL, ret, ret_error);
}

int oauth_device_response(const Provider *p, const HttpRequest *req, DeviceAuth *ret, char **ret_error) {
        Secrets sent = {};
        int r;

        secrets_from_request(p, req, &sent);
        r = parse_device_response(req->status, req->body, req->body_len, &sent, ret, ret_error);
        if (r < 0) {
                secrets_redact(&sent, ret_error);
                if (!*ret_error)
                        *ret_error = strdup("invalid device authorization response");
        }
        secrets_done(&sent);
        return r;
}

const char *oauth_usage_lookup(const char *name, size_t len, void *userdata) {
        UsageVars *v = userdata;

        if (len == 12 && memcmp(name, "access_token", 12) == 0)
                return v->access_token;
        if (len == 10 && memcmp(name, "token_type", 10) == 0)
                return v->token_type;
        return params_lookup(v->params, v->metadata, name, len);
}

static const char *params_only_lookup(const char *name, size_t len, void *userdata) {
        const UsageVars *v = userdata;

        return params_lookup(v->params, v->metadata, name, len);
}

int oauth_url_expand(const char *tmpl, const json_t *params, const json_t *metadata, char **ret, char **ret_why) {
        UsageVars v = { .params = params, .metadata = metadata };

        return url_template_expand(tmpl, params_only_lookup, &v, ret, ret_why);
}

int oauth_usage_headers(const Provider *p, const char *access_token, const char *token_type,
                        char ***ret_lines, size_t *ret_n, char **ret_query) {
        UsageVars v = { access_token, token_type };

        return oauth_usage_headers_vars(p, &v, ret_lines, ret_n, ret_query);
}

int oauth_usage_headers_vars(const Provider *p, const UsageVars *vars, char ***ret_lines, size_t *ret_n,
                             char **ret_query) {
        UsageVars v = *vars;
        char **lines;

        if (!v.token_type)
                v.token_type = "Bearer";
        size_t n = 0;
        int r = 0;

        lines = new0(char *, p->n_usage_header + 1);
        if (!lines)
                return -ENOMEM;
        for (size_t i = 0; i < p->n_usage_header; i++) {
                r = template_expand(p->usage_header[i], oauth_usage_lookup, &v, &lines[n], NULL, NULL);
                if (r < 0)
                        goto fail;
                n++;
                /* a token stored before tokens were checked: no header injection */
                if (string_has_ctl(lines[n - 1])) {
                        r = -EBADMSG;
                        goto fail;
                }
        }
        *ret_query = NULL;
        if (p->usage_query) {
                r = template_expand(p->usage_query, oauth_usage_lookup, &v, ret_query, NULL, NULL);
                if (r < 0)
                        goto fail;
        }
        *ret_lines = lines;
        *ret_n = n;
        return 0;
fail:
        for (size_t i = 0; i < n; i++)
                secret_free(lines[i]);
        free(lines);
        return r;
}

/* ---- OIDC discovery ---------------------------------------------------- */

typedef struct Body {
        char *s;
        size_t len;
} Body;

static size_t discovery_write(char *ptr, size_t size, size_t nmemb, void *userdata) {
        Body *b = userdata;
        size_t n = size * nmemb;
        char *t;

        if (n > DISCOVERY_BODY_MAX - b->len)
                return 0;
        t = realloc(b->s, b->len + n + 1);
        if (!t)
                return 0;
        memcpy(t + b->len, ptr, n);
        b->s = t;
        b->len += n;
        b->s[b->len] = 0;
        return n;
}

static bool endpoint_literal(const char *s) {
        for (; *s; s++)
                if (*s == '$' || (unsigned char) *s < 0x20 || *s == 0x7f)
                        return false;
        return true;
}

/* Sets *field from the document's key unless the file set it. A
 * discovered endpoint passes the checks a configured one does, and is
 * never a template: token_url, revoke_url and device_authorization_url are
 * expanded before each request, so a '$' (a "${client_secret}" sent to
 * wherever the document points) is refused, as are control characters. */
static int discovered(json_t *doc, const char *key, char **field, char **ret_reason) {
        json_t *v = json_object_get(doc, key);
        const char *s;

        if (*field || !json_is_string(v))
                return 0;
        s = json_string_value(v);
        if (strlen(s) != json_string_length(v) || !endpoint_literal(s)) {
                if (asprintf(ret_reason, "the discovery document's %s holds '$' or a control character", key) < 0)
                        *ret_reason = NULL;
                return -EPROTO;
        }
        if (!url_is_acceptable(s)) {
                if (asprintf(ret_reason, "the discovery document's %s is a plain http:// endpoint off loopback",
                             key) < 0)
                        *ret_reason = NULL;
                return -EPROTO;
        }
        *field = strdup(s);
        return *field ? 1 : -ENOMEM;
}

int oauth_discover(Provider *p, char **ret_reason) {
        _cleanup_free_ char *url = NULL;
        char errbuf[CURL_ERROR_SIZE] = "";
        Body b = {};
        json_t *doc = NULL;
        const BrokerConfig *bc = conf_loading_broker();
        struct curl_slist *connect_to = NULL;
        CURL *c;
        CURLcode cc;
        long status = 0;
        int r;

        *ret_reason = NULL;
        /* OpenID Connect Discovery 1.0 section 4 */
        if (asprintf(&url, "%s/.well-known/openid-configuration", p->issuer) < 0)
                return -ENOMEM;
        c = curl_easy_init();
        if (!c)
                return -ENOMEM;
        /* Blocking, at load: bounded by the provider's timeout, at most 10 s. */
        (void) curl_easy_setopt(c, CURLOPT_URL, url);
        (void) curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        (void) curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, http_open_socket);
        (void) curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
        (void) curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
        (void) curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
        (void) curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
        (void) curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long) (MIN(p->timeout ?: 10 * USEC_PER_SEC, 10 * USEC_PER_SEC) / USEC_PER_MSEC));
        (void) curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
        (void) curl_easy_setopt(c, CURLOPT_USERAGENT, "tokenbroker/0.1");
        (void) curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discovery_write);
        (void) curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
        (void) curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
        if (bc && egress_apply(c, bc->ca_file, bc->connect_to, bc->n_connect_to, &connect_to) < 0) {
                curl_easy_cleanup(c);
                return -ENOMEM;
        }
        cc = curl_easy_perform(c);
        if (cc == CURLE_OK)
                (void) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(c);
        curl_slist_free_all(connect_to);
        if (cc != CURLE_OK) {
                *ret_reason = strdup(errbuf[0] ? errbuf : curl_easy_strerror(cc));
                r = -EHOSTUNREACH;
                goto out;
        }
        if (status != 200) {
                if (asprintf(ret_reason, "HTTP %ld from %s", status, url) < 0)
                        *ret_reason = NULL;
                r = -EPROTO;
                goto out;
        }
        doc = b.s ? json_loadb(b.s, b.len, 0, NULL) : NULL;
        if (!doc || !json_is_object(doc)) {
                *ret_reason = strdup("the discovery document is not a JSON object");
                r = -EBADMSG;
                goto out;
        }
        /* section 4.3: the issuer must be the one asked for */
        {
                const char *iss = json_string_value(json_object_get(doc, "issuer"));
                size_t n = iss ? strlen(iss) : 0;
                if (!iss || strncmp(iss, p->issuer, n - (n > 0 && iss[n - 1] == '/')) != 0 ||
                    strlen(p->issuer) != n - (n > 0 && iss[n - 1] == '/')) {
                        if (asprintf(ret_reason, "the discovery document names another issuer (%.128s)",
                                     iss ?: "none") < 0)
                                *ret_reason = NULL;
                        r = -EPROTO;
                        goto out;
                }
        }
        if ((r = discovered(doc, "authorization_endpoint", &p->authorize_url, ret_reason)) < 0 ||
            (r = discovered(doc, "token_endpoint", &p->token_url, ret_reason)) < 0 ||
            (r = discovered(doc, "revocation_endpoint", &p->revoke_url, ret_reason)) < 0 ||
            (r = discovered(doc, "device_authorization_endpoint", &p->device_authorization_url, ret_reason)) < 0 ||
            (r = discovered(doc, "userinfo_endpoint", &p->userinfo_url, ret_reason)) < 0)
                goto out;
        /* RFC 9207 section 3: then every callback must carry iss. */
        p->iss_supported = json_is_true(json_object_get(doc, "authorization_response_iss_parameter_supported"));
        r = 0;
out:
        json_decref(doc);
        free(b.s);
        return r;
}

/* ---- revocation answers --------------------------------------------- */

bool oauth_revoke_response(const Provider *p, const HttpRequest *req, char **ret_error) {
        _cleanup_free_ char *code = NULL;
        json_t *root = NULL, *v = NULL;
        bool ok = true;

        *ret_error = NULL;
        if (req->result != CURLE_OK || req->too_large) {
                *ret_error = strdup(http_request_strerror(req));
                return false;
        }
        if (req->status != 200) {
                /* RFC 7009 section 2.2: 200 for valid and invalid tokens alike */
                code = oauth_error_code(p, req);
                if (asprintf(ret_error, "revocation endpoint refused: HTTP %ld%s%s", req->status, code ? ": " : "",
                             code ?: "") < 0)
                        *ret_error = NULL;
                return false;
        }
        if (!p->revoke_ok_pointer && !p->revoke_error_pointer)
                return true;
        /* An error answered with HTTP 200 (Slack's {"ok": false, "error": …}). */
        if (req->body && req->body_len > 0)
                root = json_loadb(req->body, req->body_len, 0, NULL);
        if (p->revoke_ok_pointer) {
                if (!root || !json_is_object(root) || jsonptr_get(root, p->revoke_ok_pointer, &v) < 0)
                        v = NULL;
                ok = v && (json_is_true(v) || (json_is_string(v) && streq(json_string_value(v), "true")));
        }
        if (ok && p->revoke_error_pointer && root && json_is_object(root)) {
                if (jsonptr_get(root, p->revoke_error_pointer, &v) < 0)
                        v = NULL;
                ok = !v || json_is_null(v) || json_is_false(v) ||
                     (json_is_string(v) && json_string_length(v) == 0);
        }
        if (!ok) {
                const char *c = NULL;
                _cleanup_free_ char *s = NULL;

                if (root && json_is_object(root))
                        (void) jsonptr_get_string(root, p->ptr_error, &c);
                if (c) {
                        Secrets sent = {};

                        secrets_from_request(p, req, &sent);
                        s = sanitize_redacted(&sent, c, 64);
                        secrets_done(&sent);
                }
                if (asprintf(ret_error, "revocation refused with HTTP 200: %s", s ?: "no success in the answer") < 0)
                        *ret_error = NULL;
        }
        json_decref(root);
        return ok;
}
