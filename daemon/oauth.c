/* SPDX-License-Identifier: MIT */
#include <jansson.h>
#include <math.h>
#include <strings.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "common/b64.h"
#include "common/jsonptr.h"
#include "common/jwt.h"
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

int oauth_authorize_url(const Provider *p, const char *redirect_uri, const char *state,
                        const char *challenge, const char *scope, char **ret) {
        _cleanup_free_ char *sc = NULL;
        StrBuf b = {};
        char *url;

        if (!p->authorize_url)
                return -EINVAL;
        strbuf_puts(&b, p->authorize_url);
        /* append_param() adds the '&' after an existing query. */
        if (!strchr(p->authorize_url, '?'))
                strbuf_puts(&b, "?");
        append_param(&b, "response_type", "code");
        append_param(&b, "client_id", p->client_id);
        append_param(&b, "redirect_uri", redirect_uri);
        sc = join_scope(p, scope ?: p->scopes);
        if (!isempty(sc))
                append_param(&b, "scope", sc);
        append_param(&b, "state", state);
        if (challenge) {
                append_param(&b, "code_challenge", challenge);
                append_param(&b, "code_challenge_method", p->pkce == PKCE_S256 ? "S256" : "plain");
        }
        /* Extra parameters, "k=v k=v" (access_type=offline, prompt=consent). */
        for (const char *s = p->authorize_params; s && *s;) {
                _cleanup_free_ char *item = NULL;
                size_t n;
                char *eq;

                s += strspn(s, " ");
                n = strcspn(s, " ");
                if (n == 0)
                        break;
                item = strndup(s, n);
                if (!item) {
                        strbuf_free(&b);
                        return -ENOMEM;
                }
                eq = strchr(item, '=');
                if (eq) {
                        *eq = 0;
                        append_param(&b, item, eq + 1);
                } else
                        append_param(&b, item, "");
                s += n;
        }
        url = strbuf_steal(&b);
        if (!url)
                return -ENOMEM;
        *ret = url;
        return 0;
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

static int post_form(Http *h, const Provider *p, const char *url, const Param *params, size_t n,
                     HttpRequest **ret) {
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        StrBuf b = {};
        char *body;
        int r;

        for (size_t i = 0; i < n; i++)
                if (params[i].value)
                        append_param(&b, params[i].key, params[i].value);
        switch (p->client_auth) {
        case CLIENT_AUTH_POST:
                append_param(&b, "client_id", p->client_id);
                append_param(&b, "client_secret", p->client_secret);
                break;
        case CLIENT_AUTH_NONE:
                append_param(&b, "client_id", p->client_id);
                break;
        default:
                break;
        }
        body = strbuf_steal(&b);
        if (!body)
                return -ENOMEM;

        r = http_request_new(h, "POST", url, &req);
        if (r < 0) {
                secret_free(body);
                return r;
        }
        r = http_request_set_body(req, "application/x-www-form-urlencoded", body, strlen(body));
        if (r < 0)
                return r;
        if (p->client_auth == CLIENT_AUTH_BASIC) {
                _cleanup_secret_ char *hdr = NULL;

                r = basic_auth_header(p, &hdr);
                if (r < 0)
                        return r;
                r = http_request_add_header(req, hdr);
                if (r < 0)
                        return r;
        }
        *ret = TAKE_PTR(req);
        return 0;
}

int oauth_token_request(Http *h, const Provider *p, const Param *params, size_t n, HttpRequest **ret) {
        return post_form(h, p, p->token_url, params, n, ret);
}

int oauth_revoke_request(Http *h, const Provider *p, const char *token, const char *hint,
                         HttpRequest **ret) {
        const Param params[] = {
                { "token", token },
                { "token_type_hint", hint },
        };

        if (!p->revoke_url)
                return -EOPNOTSUPP;
        return post_form(h, p, p->revoke_url, params, ELEMENTSOF(params), ret);
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

static OAuthOutcome classify_error(long status, const char *code) {
        /* RFC 6749 section 5.2: these mean the grant or the client is no
         * good, and retrying the same request cannot help. */
        static const char *const permanent[] = {
                "invalid_grant", "invalid_client", "unauthorized_client",
                "unsupported_grant_type", "invalid_scope", "access_denied",
        };

        if (status == 429 || status == 408 || status >= 500)
                return OAUTH_TRANSIENT;
        for (size_t i = 0; code && i < ELEMENTSOF(permanent); i++)
                if (streq(code, permanent[i]))
                        return OAUTH_PERMANENT;
        return OAUTH_TRANSIENT;
}

OAuthOutcome oauth_parse_token_response(const Provider *p, long status, const char *body, size_t len,
                                        usec_t sent_at, TokenSet *ret, char **ret_error) {
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
                const char *code = NULL, *desc = NULL;
                _cleanup_free_ char *c = NULL, *d = NULL;

                if (root && json_is_object(root)) {
                        (void) jsonptr_get_string(root, p->ptr_error, &code);
                        (void) jsonptr_get_string(root, p->ptr_error_description, &desc);
                }
                o = classify_error(status, code);
                c = code ? sanitize(code, 64) : NULL;
                d = desc ? sanitize(desc, 200) : NULL;
                if (asprintf(ret_error, "HTTP %ld%s%s%s%s", status, c ? ": " : "", c ?: "",
                             d ? ": " : "", d ?: "") < 0)
                        *ret_error = NULL;
                goto out;
        }
        if (!root || !json_is_object(root)) {
                *ret_error = strdup("token response is not a JSON object");
                goto out;
        }
        r = dup_string_at(root, p->ptr_access_token, &t.access_token);
        if (r < 0 || isempty(t.access_token)) {
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

        r = jsonptr_get_number(root, p->ptr_expires_in, &expires_in);
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
        } else {
                usec_t exp;

                if (jwt_get_exp(t.access_token, &exp) >= 0)
                        t.expires_at = exp;
                else if (p->default_lifetime > 0)
                        t.expires_at = sent_at + p->default_lifetime;
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

OAuthOutcome oauth_token_response(const Provider *p, const HttpRequest *req, TokenSet *ret,
                                  char **ret_error) {
        if (req->result != CURLE_OK || req->too_large) {
                *ret_error = strdup(http_request_strerror(req));
                return OAUTH_TRANSIENT;
        }
        return oauth_parse_token_response(p, req->status, req->body, req->body_len, req->sent_at, ret,
                                          ret_error);
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

typedef struct UsageVars {
        const char *access_token;
        const char *token_type;
} UsageVars;

static const char *usage_lookup(const char *name, size_t len, void *userdata) {
        UsageVars *v = userdata;

        if (len == 12 && memcmp(name, "access_token", 12) == 0)
                return v->access_token;
        if (len == 10 && memcmp(name, "token_type", 10) == 0)
                return v->token_type;
        return NULL;
}

int oauth_usage_headers(const Provider *p, const char *access_token, const char *token_type,
                        char ***ret_lines, size_t *ret_n, char **ret_query) {
        UsageVars v = { access_token, token_type ?: "Bearer" };
        char **lines;
        size_t n = 0;
        int r = 0;

        lines = new0(char *, p->n_usage_header + 1);
        if (!lines)
                return -ENOMEM;
        for (size_t i = 0; i < p->n_usage_header; i++) {
                r = template_expand(p->usage_header[i], usage_lookup, &v, &lines[n], NULL, NULL);
                if (r < 0)
                        goto fail;
                n++;
        }
        *ret_query = NULL;
        if (p->usage_query) {
                r = template_expand(p->usage_query, usage_lookup, &v, ret_query, NULL, NULL);
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
