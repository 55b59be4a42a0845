/* SPDX-License-Identifier: MIT */
#pragma once

#include <jansson.h>

#include "common/conf.h"
#include "daemon/http.h"

/* The OAuth 2.0 wire: authorize URLs, token requests and the parsing and
 * classification of token responses (RFC 6749 sections 4.1, 5.1, 5.2, 6;
 * RFC 7636; RFC 7009). No state lives here. */

typedef struct TokenSet {
        char *access_token;       /* secret */
        char *refresh_token;      /* secret; NULL when the answer had none */
        char *token_type;
        char *scope;              /* NULL when the answer had none */
        char *id_token;           /* secret-ish: holds personal data */
        usec_t expires_at;        /* realtime; 0 = never expires */
        usec_t refresh_expires_at;/* realtime, from refresh_token_expires_in_pointer; 0 = not said */
} TokenSet;

void token_set_done(TokenSet *t);

typedef enum OAuthOutcome {
        OAUTH_OK,
        OAUTH_TRANSIENT,          /* retry later: network, 5xx, 429, bad answer */
        OAUTH_PERMANENT,          /* the grant is dead: re-authorize */
} OAuthOutcome;

/* PKCE (RFC 7636): a 43-character verifier and its challenge. */
int pkce_new(Pkce method, char **ret_verifier, char **ret_challenge);
int pkce_challenge(Pkce method, const char *verifier, char **ret);

int oauth_authorize_url(const Provider *p, const char *redirect_uri, const char *state,
                        const char *challenge, const char *scope, char **ret);
/* The same for a connection with parameters (${param.X} in the URL and
 * its authorize_param lines); -EINVAL with *ret_why (may be NULL) when a
 * value cannot stand where the URL puts it. */
int oauth_authorize_url_params(const Provider *p, const char *redirect_uri, const char *state,
                               const char *challenge, const char *scope, const json_t *params, char **ret,
                               char **ret_why);

/* Key/value pairs for a form body; values may be secrets. */
typedef struct Param {
        const char *key;
        const char *value;
} Param;

/* A POST to the token endpoint with the given grant parameters and the
 * provider's client authentication. */
int oauth_token_request(Http *h, const Provider *p, const Param *params, size_t n, HttpRequest **ret);

typedef enum RequestKind {
        REQUEST_TOKEN,            /* token_url: code exchange, client_credentials, password, device polling */
        REQUEST_REFRESH,          /* refresh_url (else token_url) */
        REQUEST_DEVICE,           /* device_authorization_url (RFC 8628 section 3.1) */
        REQUEST_REVOKE,           /* revoke_url (RFC 7009) */
} RequestKind;

/* What the templates of a request may refer to; NULL expands to "". */
typedef struct RequestVars {
        const char *redirect_uri;
        const char *scope;
        const char *username;
        const char *password;     /* secret */
        const char *code;         /* secret */
        const char *code_verifier;/* secret */
        const char *state;        /* secret */
        const char *refresh_token;/* secret */
        const char *device_code;  /* secret */
        const json_t *params;     /* ${param.X}: the connection's parameters */
        const json_t *metadata;   /* ${metadata.X}: what the provider returned */
        bool preview;             /* generated values (${uuid}, ${timestamp_unix}...) as <name> */
        const char *access_token; /* secret: refresh and revoke templates */
        const char *token;        /* secret: the token a revocation revokes */
        const char *token_type_hint;
} RequestVars;

/* Builds a provider request from its templates: the URL (placeholders in
 * its path and query are percent-encoded), the method, the headers, and
 * the parameters (the provider's list for this kind when it has one, else
 * `defaults`) as a form, a JSON object or the query; then the client
 * authentication. Templates were validated at load; -EINVAL if an
 * expanded header value holds a line break. */
int oauth_provider_request(Http *h, const Provider *p, RequestKind kind, const Param *defaults, size_t n,
                           const RequestVars *v, HttpRequest **ret);
/* RFC 7009 revocation of one token, or the provider's revoke_* templates
 * (v gives ${access_token} and ${refresh_token}; may be NULL). */
int oauth_revoke_request(Http *h, const Provider *p, const char *token, const char *hint,
                         const RequestVars *v, HttpRequest **ret);
/* Whether a finished revocation succeeded: HTTP 200 and, when the provider
 * says so, no error in the answer (revoke_ok_pointer true,
 * revoke_error_pointer absent). *ret_error: why not, never a token. */
bool oauth_revoke_response(const Provider *p, const HttpRequest *req, char **ret_error);

/* Parses a finished token request. On OAUTH_OK fills *ret; otherwise
 * *ret_error says why, safe to log (never a token). */
OAuthOutcome oauth_token_response(const Provider *p, const HttpRequest *req, TokenSet *ret,
                                  char **ret_error);
/* The same on a raw answer: for tests and fuzzing. */
OAuthOutcome oauth_parse_token_response(const Provider *p, long status, const char *body, size_t len,
                                        usec_t sent_at, TokenSet *ret, char **ret_error);

/* Who authorized: email, else preferred_username, else sub of the id_token;
 * or what the provider's identity_pointer names in its claims. */
int oauth_identity_from_id_token(const char *id_token, char **ret);
int oauth_identity_from_claims(const Provider *p, const char *id_token, char **ret);
/* The same on a userinfo answer (a JSON object). */
int oauth_identity_from_userinfo(const Provider *p, const char *body, size_t len, char **ret);

/* The error code of an error answer ("authorization_pending"), or NULL. */
char *oauth_error_code(const Provider *p, const HttpRequest *req);

/* RFC 8628 section 3.2: the device authorization response. */
typedef struct DeviceAuth {
        char *device_code;        /* secret */
        char *user_code;
        char *verification_uri;
        char *verification_uri_complete;
        usec_t expires_in;
        usec_t interval;
} DeviceAuth;
void device_auth_done(DeviceAuth *d);
int oauth_parse_device_response(long status, const char *body, size_t len, DeviceAuth *ret, char **ret_error);
/* The same on a finished request: an error text is redacted of every value
 * the request sent. */
int oauth_device_response(const Provider *p, const HttpRequest *req, DeviceAuth *ret, char **ret_error);

/* Renders the usage rule: header lines (Name: value) and the query
 * parameter, with ${access_token} and ${token_type} filled in. */
/* The placeholders of a usage rule, ${access_token} and ${token_type}, for
 * template_expand()/template_render() with a UsageVars as userdata. */
typedef struct UsageVars {
        const char *access_token;
        const char *token_type;
        const json_t *params;     /* ${param.X}, may be NULL */
        const json_t *metadata;   /* ${metadata.X}, may be NULL */
} UsageVars;
const char *oauth_usage_lookup(const char *name, size_t len, void *userdata);

int oauth_usage_headers(const Provider *p, const char *access_token, const char *token_type,
                        char ***ret_lines, size_t *ret_n, char **ret_query);
int oauth_usage_headers_vars(const Provider *p, const UsageVars *v, char ***ret_lines, size_t *ret_n,
                             char **ret_query);

/* A URL key of the provider (userinfo_url, test_url...) expanded for a
 * connection: ${param.X} and ${metadata.X}. -EINVAL with *ret_why. */
int oauth_url_expand(const char *tmpl, const json_t *params, const json_t *metadata, char **ret, char **ret_why);

/* OIDC discovery (a provider_discover_fn): fills the endpoints the file
 * leaves out from ISSUER/.well-known/openid-configuration. Blocking,
 * bounded by the provider's timeout (at most 10 s). */
#define DISCOVERY_BODY_MAX (256 * 1024)
int oauth_discover(Provider *p, char **ret_reason);
