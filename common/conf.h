/* SPDX-License-Identifier: MIT */
#pragma once

#include "common/macro.h"

/* Configuration: the broker's INI file and one provider file per
 * providers.d/NAME.conf. Parsing never logs: errors come back as
 * "file:line: message" in a ConfError for the caller to print. */

typedef struct ConfError {
        char msg[1024];
} ConfError;

typedef enum Grant {
        GRANT_AUTHORIZATION_CODE,
        GRANT_CLIENT_CREDENTIALS,
        GRANT_PASSWORD,
        GRANT_DEVICE_CODE,
        _GRANT_MAX,
        _GRANT_INVALID = -EINVAL,
} Grant;

typedef enum ClientAuth {
        CLIENT_AUTH_BASIC,   /* RFC 6749 section 2.3.1, preferred */
        CLIENT_AUTH_POST,    /* client_id and client_secret in the body */
        CLIENT_AUTH_NONE,    /* public client: client_id only */
        _CLIENT_AUTH_MAX,
        _CLIENT_AUTH_INVALID = -EINVAL,
} ClientAuth;

typedef enum Pkce {
        PKCE_S256,
        PKCE_PLAIN,
        PKCE_NONE,
        _PKCE_MAX,
        _PKCE_INVALID = -EINVAL,
} Pkce;

const char *grant_to_string(Grant g);
Grant grant_from_string(const char *s);
const char *client_auth_to_string(ClientAuth a);
const char *pkce_to_string(Pkce p);

#define PROVIDER_NAME_MAX 64
#define PROVIDER_USAGE_MAX 8

typedef struct Provider {
        char *name;               /* the file's base name */
        char *path;

        Grant grant;
        char *authorize_url;
        char *token_url;
        char *revoke_url;
        char *test_url;

        char *client_id;
        char *client_secret;      /* wiped on free */
        ClientAuth client_auth;
        Pkce pkce;

        char *scopes;             /* default scopes, separated by spaces */
        char *scope_separator;
        char *authorize_params;   /* "k=v k=v", appended to the authorize URL */
        char *code_param;         /* callback parameter carrying the code */

        /* Where each field sits in the token response (RFC 6901). */
        char *ptr_access_token;
        char *ptr_refresh_token;
        char *ptr_expires_in;
        char *ptr_token_type;
        char *ptr_scope;
        char *ptr_id_token;
        char *ptr_error;
        char *ptr_error_description;

        usec_t default_lifetime;  /* 0: none */
        usec_t refresh_at_least;  /* refresh at least this often (idle refresh tokens); 0: off */
        unsigned max_in_flight;   /* requests to this provider at once; 0: only the global cap */
        usec_t timeout;           /* per request */

        /* How clients present the token: header templates and/or a query
         * parameter, with ${access_token} and ${token_type}. */
        char *usage_header[PROVIDER_USAGE_MAX];
        size_t n_usage_header;
        char *usage_query;
} Provider;

Provider *provider_free(Provider *p);
DEFINE_TRIVIAL_CLEANUP_FUNC(Provider *, provider_free);

/* Parses providers.d/NAME.conf; the name comes from the file name. */
int provider_load(const char *path, Provider **ret, ConfError *err);

typedef struct BrokerConfig {
        char *path;
        char *state_dir;
        char *key_file;           /* default state_dir/tokenbroker.key */
        char *key_credential;     /* name in $CREDENTIALS_DIRECTORY, preferred */
        char *socket;
        unsigned socket_mode;
        char *callback_listen;    /* host:port */
        char *public_url;
        char *providers_dir;
        char *admin_group;
        char *socket_group;       /* group of the API socket; NULL: unchanged */
        char *notify_command;     /* run on needs_reauth and recovery */
        usec_t notify_interval;   /* at most one notification per connection per this */
        usec_t backoff_max;       /* cap of the retry backoff */

        usec_t refresh_margin;
        double refresh_ratio;
        usec_t refresh_jitter;
        unsigned max_parallel_refreshes;
        usec_t pending_ttl;       /* life of an authorization's state */
        unsigned max_connections;

        Provider **providers;
        size_t n_providers;
} BrokerConfig;

BrokerConfig *broker_config_free(BrokerConfig *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(BrokerConfig *, broker_config_free);

/* Loads the main file and every *.conf in its providers_dir. */
int broker_config_load(const char *path, BrokerConfig **ret, ConfError *err);
Provider *broker_config_find_provider(const BrokerConfig *c, const char *name);

/* The redirect URI the broker registers: public_url + /oauth/callback. */
int broker_config_redirect_uri(const BrokerConfig *c, char **ret);

/* An http:// URL is allowed only when its host is loopback. */
bool url_is_acceptable(const char *url);

/* Generic INI reader: calls fn for each key with its section and line. */
typedef int (*ini_fn)(const char *section, const char *key, const char *value,
                      unsigned line, void *userdata, ConfError *err);
int ini_parse_file(const char *path, ini_fn fn, void *userdata, ConfError *err);
int ini_parse_string(const char *path, const char *text, size_t len, ini_fn fn,
                     void *userdata, ConfError *err);

void conf_error(ConfError *err, const char *path, unsigned line, const char *fmt, ...)
        _printf_(4, 5);
