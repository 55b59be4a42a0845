/* SPDX-License-Identifier: MIT */
#include "common/util.h"
#include "daemon/steps.h"

#define DEVICE_GRANT_TYPE "urn:ietf:params:oauth:grant-type:device_code"

static RequestVars vars_of(const RequestVars *v) {
        return v ? *v : (RequestVars) {};
}

int step_exchange_request(Http *h, const Provider *p, const RequestVars *v, HttpRequest **ret) {
        RequestVars x = vars_of(v);
        const Param params[] = {
                { "grant_type", "authorization_code" },
                { "code", x.code },
                { "redirect_uri", p->redirect_uri },
                { "code_verifier", x.code_verifier },
        };

        x.password = NULL;
        return oauth_provider_request(h, p, REQUEST_TOKEN, params, ELEMENTSOF(params), &x, ret);
}

int step_refresh_request(Http *h, const Provider *p, const RequestVars *v, HttpRequest **ret) {
        RequestVars x = vars_of(v);
        const Param params[] = {
                { "grant_type", "refresh_token" },
                { "refresh_token", x.refresh_token },
        };

        return oauth_provider_request(h, p, REQUEST_REFRESH, params, ELEMENTSOF(params), &x, ret);
}

int step_client_credentials_request(Http *h, const Provider *p, const RequestVars *v, HttpRequest **ret) {
        RequestVars x = vars_of(v);
        const Param params[] = {
                { "grant_type", "client_credentials" },
                { "scope", isempty(x.scope) ? NULL : x.scope },
        };

        return oauth_provider_request(h, p, REQUEST_TOKEN, params, ELEMENTSOF(params), &x, ret);
}

int step_password_request(Http *h, const Provider *p, const RequestVars *v, HttpRequest **ret) {
        RequestVars x = vars_of(v);
        const Param params[] = {
                { "grant_type", "password" },
                { "username", x.username ?: p->username },
                { "password", x.password ?: p->password },
                { "scope", isempty(x.scope) ? NULL : x.scope },
        };

        if (!params[1].value || !params[2].value)
                return -ENOKEY;
        return oauth_provider_request(h, p, REQUEST_TOKEN, params, ELEMENTSOF(params), &x, ret);
}

/* Sections 3.1 and 3.4: client_id unless the client authenticates; basic
 * and post say who it is, "none" adds it anyway. */
static Param device_client_id(const Provider *p) {
        return (Param) { "client_id", p->client_auth == CLIENT_AUTH_HEADERS ? p->client_id : NULL };
}

int step_device_request(Http *h, const Provider *p, const RequestVars *v, HttpRequest **ret) {
        RequestVars x = vars_of(v);
        const Param params[] = { device_client_id(p), { "scope", isempty(x.scope) ? NULL : x.scope } };

        if (!p->device_authorization_url)
                return -EOPNOTSUPP;
        return oauth_provider_request(h, p, REQUEST_DEVICE, params, ELEMENTSOF(params), &x, ret);
}

int step_device_poll_request(Http *h, const Provider *p, const RequestVars *v, HttpRequest **ret) {
        RequestVars x = vars_of(v);
        const Param params[] = {
                { "grant_type", DEVICE_GRANT_TYPE },
                { "device_code", x.device_code },
                device_client_id(p),
        };

        return oauth_provider_request(h, p, REQUEST_TOKEN, params, ELEMENTSOF(params), &x, ret);
}

int step_usage_request(Http *h, const Provider *p, const char *url, const UsageVars *uv, HttpRequest **ret) {
        _cleanup_(http_request_freep) HttpRequest *req = NULL;
        _cleanup_free_ char *query = NULL, *base = NULL;
        _cleanup_secret_ char *full = NULL;
        char **lines = NULL;
        size_t n = 0;
        int r;

        if (!url)
                return -EOPNOTSUPP;
        /* ${param.X} and ${metadata.X} in the URL, host included */
        r = oauth_url_expand(url, uv->params, uv->metadata, &base, NULL);
        if (r < 0)
                return r;
        r = oauth_usage_headers_vars(p, uv, &lines, &n, &query);
        if (r < 0)
                return r;
        if (query && asprintf(&full, "%s%c%s", base, strchr(base, '?') ? '&' : '?', query) < 0)
                r = -ENOMEM;
        if (r >= 0)
                r = http_request_new(h, "GET", full ?: base, &req);
        for (size_t i = 0; i < n; i++) {
                if (r >= 0)
                        r = http_request_add_header(req, lines[i]);
                secret_free(lines[i]);
        }
        free(lines);
        if (query)
                explicit_wipe(query, strlen(query));
        if (r < 0)
                return r;
        *ret = TAKE_PTR(req);
        return 0;
}
