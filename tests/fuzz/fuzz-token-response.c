/* SPDX-License-Identifier: MIT */
/* libFuzzer target: oauth_parse_token_response().
 *
 * Input: byte 0 picks the HTTP status (byte % 16: '0' = 200, '1' = 400, see
 * statuses[]), byte 1 the provider's shape (byte % 16, a bit set: see
 * make_provider()), the rest is the response body. So "00{...}" is a 200
 * answer read with the default JSON pointers, as provider_load() sets them.
 *
 * Invariants:
 *   - OAUTH_OK comes with a non-empty access token and token type and no
 *     error text; anything else with an error text.
 *   - The error text never carries the access token: when the body parses
 *     and holds a token at the provider's pointer, the same body with only
 *     that token replaced (same length) must give the same outcome and the
 *     same error text (the replacement keeps the token's spaces, control
 *     and non-ASCII bytes where they are: those decide whether a token is
 *     refused). (A plain "does the error contain the token" test
 *     would trip on tokens like "response" or "400" that happen to occur in
 *     the fixed messages; this one cannot, and still catches any path that
 *     copies the token, or text around it, into the error.) A token shaped
 *     like a JWT ("eyJ…" with a dot) is exempt: whether it decodes decides
 *     the outcome when the expiry can only come from it.
 *   - Everything is freed (LeakSanitizer). */

#include <jansson.h>
#include <strings.h>

#include "common/conf.h"
#include "common/jsonptr.h"
#include "daemon/oauth.h"

#define SENT_AT ((usec_t) 1700000000 * USEC_PER_SEC)

static const long statuses[16] = {
        200, 400, 401, 403, 429, 500, 503, 201, 302, 100, 408, 199, 300, 502, 299, 204,
};

/* bit 0: Slack-like nested answer (/authed_user/...)
 * bit 1: error object ({"error": {"code": ..., "message": ...}})
 * bit 2: default_lifetime = 1 h, a usage_query, and the refresh token's
 *        end at /refresh_token_expires_in (issue 12)
 * bit 3: answer inside an array (/data/0/...), expires_in via ~1 escape */
static Provider *make_provider(unsigned bits) {
        Provider *p = calloc(1, sizeof *p);
        bool ok = p;

#define SET(f, v) (ok = ok && (p->f = strdup(v)))
        if (!p)
                abort();
        SET(name, "fuzz");
        SET(path, "/fuzz/fuzz.conf");
        SET(token_url, "https://auth.example.com/token");
        SET(authorize_url, "https://auth.example.com/authorize");
        SET(client_id, "client");
        SET(client_secret, "secret");
        p->grant = GRANT_AUTHORIZATION_CODE;
        p->client_auth = CLIENT_AUTH_BASIC;
        p->pkce = PKCE_S256;
        p->timeout = 20 * USEC_PER_SEC;
        SET(scope_separator, " ");
        SET(code_param, "code");
        if (bits & 1) {
                SET(ptr_access_token, "/authed_user/access_token");
                SET(ptr_refresh_token, "/authed_user/refresh_token");
                SET(ptr_expires_in, "/authed_user/expires_in");
                SET(ptr_token_type, "/authed_user/token_type");
                SET(ptr_scope, "/authed_user/scope");
        } else if (bits & 8) {
                SET(ptr_access_token, "/data/0/access_token");
                SET(ptr_refresh_token, "/data/0/refresh_token");
                SET(ptr_expires_in, "/data/0/expires~1in");
                SET(ptr_token_type, "/data/0/token_type");
                SET(ptr_scope, "/data/0/scope");
        } else {
                SET(ptr_access_token, "/access_token");
                SET(ptr_refresh_token, "/refresh_token");
                SET(ptr_expires_in, "/expires_in");
                SET(ptr_token_type, "/token_type");
                SET(ptr_scope, "/scope");
        }
        SET(ptr_id_token, "/id_token");
        if (bits & 2) {
                SET(ptr_error, "/error/code");
                SET(ptr_error_description, "/error/message");
        } else {
                SET(ptr_error, "/error");
                SET(ptr_error_description, "/error_description");
        }
        if (bits & 4) {
                p->default_lifetime = 3600 * USEC_PER_SEC;
                SET(usage_query, "access_token=${access_token}");
                SET(ptr_refresh_token_expires_in, "/refresh_token_expires_in");
        }
        SET(usage_header[0], "Authorization: ${token_type} ${access_token}");
        p->n_usage_header = ok ? 1 : 0;
#undef SET
        if (!ok)
                abort();
        return p;
}

static Provider *providers[16];

static void check_ok(const Provider *p, const TokenSet *t) {
        char **lines = NULL, *query = NULL, *who = NULL;
        size_t n = 0;
        int r;

        if (isempty(t->access_token) || isempty(t->token_type))
                abort();
        if (t->refresh_token && !*t->refresh_token)
                abort();   /* an empty refresh token is dropped */
        if (strcasecmp(t->token_type, "bearer") == 0 && !streq(t->token_type, "Bearer"))
                abort();   /* normalised */
        /* A refresh-token end only with a refresh token and a pointer, after
         * the request was sent and at most ten years later. */
        if (t->refresh_expires_at &&
            (!t->refresh_token || !p->ptr_refresh_token_expires_in || t->refresh_expires_at <= SENT_AT ||
             t->refresh_expires_at > SENT_AT + (usec_t) 10 * 366 * USEC_PER_DAY))
                abort();

        /* What the daemon does next with a fresh token set. */
        r = oauth_usage_headers(p, t->access_token, t->token_type, &lines, &n, &query);
        if (r < 0 && r != -ENOMEM)
                abort();
        if (r >= 0) {
                for (size_t i = 0; i < n; i++)
                        secret_free(lines[i]);
                free(lines);
                secret_free(query);
        }
        if (t->id_token && oauth_identity_from_id_token(t->id_token, &who) >= 0) {
                if (isempty(who))
                        abort();
                free(who);
        }
}

/* The body with the token at p->ptr_access_token replaced by another string
 * of the same length, or NULL if there is none. */
static char *body_with_other_token(const Provider *p, const char *body, size_t len) {
        json_t *root, *v;
        char *other, *out = NULL;
        size_t l;

        if (len == 0)
                return NULL;
        root = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
        if (!root)
                return NULL;
        if (json_is_object(root) && jsonptr_get(root, p->ptr_access_token, &v) >= 0 &&
            json_is_string(v) && (l = json_string_length(v)) > 0 &&
            !(startswith(json_string_value(v), "eyJ") && strchr(json_string_value(v), '.'))) {
                const char *s = json_string_value(v);

                other = malloc(l);
                if (!other)
                        abort();
                /* Visible characters change; anything else (a space, a
                 * control or non-ASCII byte, which make the token refused)
                 * stays, so both bodies fall on the same side of that check. */
                for (size_t i = 0; i < l; i++)
                        other[i] = (unsigned char) s[i] < 0x21 || (unsigned char) s[i] > 0x7e ? s[i]
                                   : s[i] == 'x'                                          ? 'y'
                                                                                          : 'x';
                if (json_string_setn(v, other, l) < 0)
                        abort();
                free(other);
                out = json_dumps(root, JSON_COMPACT);
        }
        json_decref(root);
        return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const Provider *p;
        const char *body;
        TokenSet t = {}, t2 = {};
        char *err = NULL, *err2 = NULL, *other;
        OAuthOutcome o, o2;
        long status;
        size_t len;

        if (size < 2)
                return 0;
        status = statuses[data[0] % 16];
        if (!providers[data[1] % 16])
                providers[data[1] % 16] = make_provider(data[1] % 16);
        p = providers[data[1] % 16];
        body = (const char *) data + 2;   /* exactly len bytes, no NUL after */
        len = size - 2;

        o = oauth_parse_token_response(p, status, len > 0 ? body : NULL, len, SENT_AT, &t, &err);
        if (o == OAUTH_OK) {
                if (err)
                        abort();
                if (status < 200 || status >= 300)
                        abort();
                check_ok(p, &t);
        } else {
                if (o != OAUTH_TRANSIENT && o != OAUTH_PERMANENT)
                        abort();
                if (!err || t.access_token)
                        abort();
        }

        other = body_with_other_token(p, body, len);
        if (other) {
                o2 = oauth_parse_token_response(p, status, other, strlen(other), SENT_AT, &t2, &err2);
                if (o2 != o || !streq_ptr(err, err2)) {
                        fprintf(stderr, "error text depends on the access token: \"%s\" (%d) vs \"%s\" (%d)\n",
                                strempty(err), (int) o, strempty(err2), (int) o2);
                        abort();
                }
                token_set_done(&t2);
                free(err2);
                free(other);
        }

        token_set_done(&t);
        free(err);
        return 0;
}
