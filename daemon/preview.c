/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <curl/curl.h>
#include <strings.h>

#include "common/util.h"
#include "daemon/oauth.h"
#include "daemon/preview.h"
#include "daemon/redact.h"
#include "daemon/steps.h"

/* Bodies and URLs of a preview are the broker's own: no cut. */
#define PREVIEW_MAX 0

typedef struct Preview {
        Http *http;
        const Provider *p;        /* the provider with placeholders for its secrets */
        Redactor red;
        json_t *steps;
        int error;
} Preview;

static json_t *step_new(const char *step, const char *from, const char *to, const char *desc) {
        return json_pack("{s:s, s:s, s:s, s:s, s:[]}", "step", step, "from", from, "to", to, "description", desc,
                         "headers");
}

static void add_step(Preview *x, json_t *s) {
        if (!s || json_array_append_new(x->steps, s) < 0)
                x->error = -ENOMEM;
}

static void set_str(Preview *x, json_t *s, const char *key, char *v) {
        if (!s || !v || json_object_set_new(s, key, json_string(v)) < 0)
                x->error = -ENOMEM;
        free(v);
}

static void add_header(Preview *x, json_t *s, char *line) {
        if (!s || !line || json_array_append_new(json_object_get(s, "headers"), json_string(line)) < 0)
                x->error = -ENOMEM;
        free(line);
}

static const char *content_type_of(const HttpRequest *req) {
        for (const struct curl_slist *h = req->headers; h; h = h->next)
                if (strncasecmp(h->data, "Content-Type:", 13) == 0)
                        return h->data + 13;
        return NULL;
}

/* One built request, redacted, as a step. */
static void add_request(Preview *x, const char *step, const char *from, const char *desc, int r,
                        HttpRequest *req) {
        json_t *s;

        if (r == -EOPNOTSUPP || r == -ENOKEY)
                return;   /* the provider has no such request */
        if (r < 0) {
                x->error = r;
                return;
        }
        s = step_new(step, from, "provider", desc);
        set_str(x, s, "method", strdup(req->method));
        set_str(x, s, "url", redact_url(&x->red, req->url, PREVIEW_MAX));
        for (const struct curl_slist *h = req->headers; h; h = h->next)
                add_header(x, s, redact_header(&x->red, h->data, PREVIEW_MAX));
        if (req->post_data)
                set_str(x, s, "body", redact_body(&x->red, content_type_of(req), req->post_data, req->post_len,
                                                   PREVIEW_MAX));
        add_step(x, s);
        http_request_free(req);
}

static void add_authorize(Preview *x, const RequestVars *v) {
        const Provider *p = x->p;
        _cleanup_free_ char *url = NULL, *cb = NULL;
        json_t *s;
        int r;

        r = oauth_authorize_url_params(p, p->redirect_uri, v->state, p->pkce == PKCE_NONE ? NULL : "<code_challenge>",
                                       v->scope, v->params, &url, NULL);
        if (r < 0) {
                x->error = r;
                return;
        }
        s = step_new("authorize", "browser", "provider",
                     p->pkce == PKCE_NONE ? "the user's browser opens the authorization page"
                                          : "the user's browser opens the authorization page "
                                            "(<code_challenge> is the PKCE challenge of <code_verifier>)");
        set_str(x, s, "method", strdup("GET"));
        set_str(x, s, "url", redact_url(&x->red, url, PREVIEW_MAX));
        add_step(x, s);

        if (asprintf(&cb, "%s%c%s=<code>&state=<state>", strempty(p->redirect_uri),
                     p->redirect_uri && strchr(p->redirect_uri, '?') ? '&' : '?', p->code_param) < 0) {
                x->error = -ENOMEM;
                return;
        }
        s = step_new("callback", "browser", "broker", "the provider sends the browser back to the broker");
        set_str(x, s, "method", strdup("GET"));
        set_str(x, s, "url", strdup(cb));
        add_step(x, s);
}

static void add_use(Preview *x) {
        _cleanup_free_ char *query = NULL;
        char **lines = NULL;
        size_t n = 0;
        json_t *s;
        int r;

        r = oauth_usage_headers(x->p, "<access_token>", "Bearer", &lines, &n, &query);
        if (r < 0) {
                x->error = r;
                return;
        }
        s = step_new("use", "client", "api", "how a client presents the token (tokenctl header NAME)");
        for (size_t i = 0; i < n; i++) {
                add_header(x, s, redact_header(&x->red, lines[i], PREVIEW_MAX));
                free(lines[i]);
        }
        free(lines);
        if (query)
                set_str(x, s, "query", redact_text(&x->red, query, strlen(query), PREVIEW_MAX));
        add_step(x, s);
}

/* A GET with the token (userinfo, test). A URL that starts with response
 * metadata (${metadata.api_domain}/...) has no value before a grant: it
 * is shown as it stands in the file, with the usage headers. */
static void add_usage_request(Preview *x, const char *step, const char *from, const char *desc, const char *url,
                              const UsageVars *uv) {
        HttpRequest *req = NULL;
        char **lines = NULL;
        size_t n = 0;
        char *query = NULL;
        json_t *s;
        int r;

        r = step_usage_request(x->http, x->p, url, uv, &req);
        if (r != -EINVAL || !strstr(url, "${metadata.")) {
                add_request(x, step, from, desc, r, req);
                return;
        }
        r = oauth_usage_headers(x->p, "<access_token>", "Bearer", &lines, &n, &query);
        if (r < 0) {
                x->error = r;
                return;
        }
        s = step_new(step, from, "provider", desc);
        set_str(x, s, "method", strdup("GET"));
        set_str(x, s, "url", strdup(url));
        for (size_t i = 0; i < n; i++) {
                add_header(x, s, redact_header(&x->red, lines[i], PREVIEW_MAX));
                free(lines[i]);
        }
        free(lines);
        if (query)
                set_str(x, s, "query", redact_text(&x->red, query, strlen(query), PREVIEW_MAX));
        free(query);
        add_step(x, s);
}

/* The given parameters, and each declared one not given as its name in
 * capitals ("TENANT", '_' as '-': it may stand in a host name): the
 * preview names what it cannot resolve instead of leaving it empty. */
static json_t *named_params(const Provider *p, json_t *params) {
        json_t *all = params ? json_deep_copy(params) : json_object();

        for (size_t i = 0; all && i < p->n_params; i++)
                if (!json_object_get(all, p->params[i].name)) {
                        char ph[128];
                        size_t k;

                        for (k = 0; p->params[i].name[k] && k < sizeof ph - 1; k++)
                                ph[k] = p->params[i].name[k] == '_' ? '-' : (char) toupper(p->params[i].name[k]);
                        ph[k] = 0;
                        json_object_set_new(all, p->params[i].name, json_string(ph));
                }
        return all;
}

int preview_provider(Http *h, const Provider *p, json_t *given, json_t **ret) {
        json_t *params = named_params(p, given);
        static const char *const secrets[] = {
                "client_secret", "code", "code_verifier", "code_challenge", "state", "refresh_token",
                "access_token", "device_code", "password", "username",
        };
        Provider q = *p;
        Preview x = { .http = h, .p = &q };
        RequestVars v = {
                .redirect_uri = p->redirect_uri,
                .scope = p->scopes,
                .username = "<username>",
                .password = "<password>",
                .code = "<code>",
                .code_verifier = p->pkce == PKCE_NONE ? NULL : "<code_verifier>",
                .state = "<state>",
                .refresh_token = "<refresh_token>",
                .device_code = "<device_code>",
                .params = params,
                .preview = true,
        };
        const UsageVars uv = { .access_token = "<access_token>", .token_type = "Bearer", .params = params };
        HttpRequest *req = NULL;
        json_t *j;
        int r;

        /* the secrets of the file become their names */
        q.client_secret = p->client_secret ? (char *) "<client_secret>" : NULL;
        q.password = p->password ? (char *) "<password>" : NULL;
        for (size_t i = 0; i < ELEMENTSOF(secrets); i++) {
                char ph[64];

                snprintf(ph, sizeof ph, "<%s>", secrets[i]);
                redactor_add(&x.red, secrets[i], ph);
        }
        x.steps = json_array();
        if (!x.steps || !params) {
                json_decref(x.steps);
                json_decref(params);
                redactor_done(&x.red);
                return -ENOMEM;
        }

        switch (p->grant) {
        case GRANT_AUTHORIZATION_CODE:
                add_authorize(&x, &v);
                r = step_exchange_request(h, &q, &v, &req);
                add_request(&x, "exchange", "broker", "the broker exchanges the code for tokens", r, req);
                break;
        case GRANT_CLIENT_CREDENTIALS:
                r = step_client_credentials_request(h, &q, &v, &req);
                add_request(&x, "token", "broker", "the broker asks for a token (and again, to renew it)", r, req);
                break;
        case GRANT_PASSWORD:
                v.username = p->username ?: "<username>";
                r = step_password_request(h, &q, &v, &req);
                add_request(&x, "token", "broker", "the broker asks for tokens with the account's password", r, req);
                break;
        default:
                break;
        }
        if (p->device_authorization_url && (p->grant == GRANT_DEVICE_CODE || p->grant == GRANT_AUTHORIZATION_CODE)) {
                const char *how = p->grant == GRANT_DEVICE_CODE ? "" : " (tokenctl authorize --device)";
                char d1[128], d2[128];

                snprintf(d1, sizeof d1, "device authorization%s: the broker asks for a user code", how);
                snprintf(d2, sizeof d2, "device authorization%s: the broker polls until the user approves", how);
                r = step_device_request(h, &q, &v, &req);
                add_request(&x, "device", "broker", d1, r, req);
                r = step_device_poll_request(h, &q, &v, &req);
                add_request(&x, "device_poll", "broker", d2, r, req);
        }
        if (p->userinfo_url)
                add_usage_request(&x, "userinfo", "broker", "the broker asks who authorized", p->userinfo_url, &uv);
        if (p->grant != GRANT_CLIENT_CREDENTIALS) {
                r = step_refresh_request(h, &q, &v, &req);
                add_request(&x, "refresh", "broker", "the broker refreshes ahead of expiry (when a refresh token came)",
                            r, req);
        }
        add_use(&x);
        if (p->test_url)
                add_usage_request(&x, "test", "client", "tokenctl test NAME checks the token", p->test_url, &uv);
        if (p->revoke_url && !p->revoke_per_token) {
                /* templates that never name ${token}: one request for the grant */
                v.access_token = "<access_token>";
                r = oauth_revoke_request(h, &q, "<refresh_token>", "refresh_token", &v, &req);
                add_request(&x, "revoke", "broker", "tokenctl revoke NAME: one request for the grant", r, req);
        } else if (p->revoke_url) {
                r = oauth_revoke_request(h, &q, "<refresh_token>", "refresh_token", &v, &req);
                add_request(&x, "revoke", "broker", "tokenctl revoke NAME: the refresh token first (RFC 7009)", r, req);
                r = oauth_revoke_request(h, &q, "<access_token>", "access_token", &v, &req);
                add_request(&x, "revoke", "broker", "then the access token", r, req);
        }
        redactor_done(&x.red);
        if (x.error < 0) {
                json_decref(x.steps);
                json_decref(params);
                return x.error;
        }
        j = json_pack("{s:s, s:s, s:O?, s:o}", "provider", p->name, "grant", grant_to_string(p->grant), "params",
                      given, "steps", x.steps);
        json_decref(params);
        if (!j)
                return -ENOMEM;
        *ret = j;
        return 0;
}
