/* SPDX-License-Identifier: MIT */
#pragma once

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

/* Key/value pairs for a form body; values may be secrets. */
typedef struct Param {
        const char *key;
        const char *value;
} Param;

/* A POST to the token endpoint with the given grant parameters and the
 * provider's client authentication. */
int oauth_token_request(Http *h, const Provider *p, const Param *params, size_t n, HttpRequest **ret);
/* RFC 7009 revocation of one token. */
int oauth_revoke_request(Http *h, const Provider *p, const char *token, const char *hint,
                         HttpRequest **ret);

/* Parses a finished token request. On OAUTH_OK fills *ret; otherwise
 * *ret_error says why, safe to log (never a token). */
OAuthOutcome oauth_token_response(const Provider *p, const HttpRequest *req, TokenSet *ret,
                                  char **ret_error);
/* The same on a raw answer: for tests and fuzzing. */
OAuthOutcome oauth_parse_token_response(const Provider *p, long status, const char *body, size_t len,
                                        usec_t sent_at, TokenSet *ret, char **ret_error);

/* Who authorized: email, else preferred_username, else sub of the id_token. */
int oauth_identity_from_id_token(const char *id_token, char **ret);

/* Renders the usage rule: header lines (Name: value) and the query
 * parameter, with ${access_token} and ${token_type} filled in. */
int oauth_usage_headers(const Provider *p, const char *access_token, const char *token_type,
                        char ***ret_lines, size_t *ret_n, char **ret_query);
