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
        CLIENT_AUTH_HEADERS, /* only where token_header / refresh_header put them */
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

typedef enum BodyType {
        BODY_FORM,           /* application/x-www-form-urlencoded */
        BODY_JSON,           /* a JSON object of strings */
        BODY_QUERY,          /* no body: the parameters go in the URL's query */
        _BODY_MAX,
        _BODY_INVALID = -EINVAL,
} BodyType;

/* What a provider's error_map line makes of an error answer. */
typedef enum ErrorClass {
        ERROR_CLASS_RETRY,   /* transient: back off and try again */
        ERROR_CLASS_REAUTH,  /* the grant is dead: needs_reauth */
        ERROR_CLASS_CONFIG,  /* the client or its configuration is wrong: needs_reauth, said so */
        _ERROR_CLASS_MAX,
        _ERROR_CLASS_INVALID = -EINVAL,
} ErrorClass;

const char *grant_to_string(Grant g);
Grant grant_from_string(const char *s);
const char *client_auth_to_string(ClientAuth a);
const char *pkce_to_string(Pkce p);
const char *body_type_to_string(BodyType b);
const char *error_class_to_string(ErrorClass c);

/* One error_map line: "pattern -> class [: hint]". A pattern in slashes is
 * an extended regular expression matched against "error: description";
 * otherwise it matches the error code exactly or a substring of the
 * description. */
typedef struct ErrorRule {
        char *pattern;
        bool is_regex;
        void *regex;              /* regex_t, compiled at load */
        ErrorClass class;
        char *hint;               /* NULL or text appended to the error */
} ErrorRule;

/* A list of templates ("Name: value" headers or "name=value" params). */
typedef struct TemplateList {
        char **items;
        size_t n;
} TemplateList;

/* The placeholders allowed in each kind of template (NULL-terminated). */
extern const char *const placeholders_authorize[];
extern const char *const placeholders_token[];
extern const char *const placeholders_refresh[];

#define PROVIDER_NAME_MAX 64
#define PROVIDER_USAGE_MAX 8
#define PROVIDER_API_URL_MAX 8
#define PROVIDER_TEMPLATES_MAX 32
#define PROVIDER_ERROR_RULES_MAX 64
#define PROVIDER_PARAMS_MAX 16
#define PROVIDER_METADATA_MAX 16

/* `param = NAME [: description]`: a value each connection supplies, for
 * ${param.NAME} (common/params.h). */
typedef struct ProviderParam {
        char *name;
        char *description;        /* NULL: none */
        bool in_host, in_origin;  /* where a URL template puts it: its value follows that rule */
        unsigned line;
} ProviderParam;

/* `metadata NAME = /pointer` (from each token response) or
 * `metadata NAME = query:PARAM` (from the authorization callback). */
typedef struct ProviderMetadata {
        char *name;
        char *pointer;            /* NULL: from the callback */
        char *query;              /* NULL: from the token response */
        unsigned line;
} ProviderMetadata;
#define PROVIDER_SECRETS_MAX 4
#define PRESET_DEPTH_MAX 4

typedef struct Provider {
        char *name;               /* the file's base name */
        char *path;
        mode_t file_mode;         /* of the file, when it was read */

        Grant grant;
        char *authorize_url;
        char *token_url;
        char *revoke_url;
        char *test_url;
        char *test_method;        /* NULL: GET (Dropbox's RPC endpoints want POST) */
        char *refresh_url;        /* NULL: token_url; may hold placeholders, as token_url */
        char *device_authorization_url;  /* RFC 8628 */
        char *userinfo_url;
        char *issuer;             /* OIDC discovery fills the endpoints not given */
        unsigned issuer_line;
        /* RFC 9207: discovery said authorization_response_iss_parameter_supported,
         * so a callback without iss is refused. */
        bool iss_supported;
        /* Redirect to the shared public_url + /oauth/callback rather than
         * public_url + /oauth/callback/NAME: weaker (no mix-up defence by
         * the path), kept for clients registered before. */
        bool shared_callback;
        char *redirect_uri;       /* set by broker_config_load(): see broker_config_redirect_uri() */

        /* The token request (code exchange, client_credentials, password,
         * device polling) and the refresh request. A given param list
         * replaces the RFC defaults; refresh headers default to the token
         * headers; refresh method and body to the token ones. */
        char *token_method;       /* NULL: POST */
        BodyType token_body;
        TemplateList token_header, token_param;
        char *refresh_method;     /* NULL: token_method */
        BodyType refresh_body;
        bool refresh_body_set;
        TemplateList refresh_header, refresh_param;
        TemplateList authorize_param; /* name=template, on top of (or replacing) the defaults */

        /* password grant: provider-wide account (a connection may bring its own) */
        char *username;
        char *password;           /* secret */

        char *identity_pointer;   /* on the userinfo JSON or the id_token claims */
        char *ptr_expires_at;     /* absolute expiry: epoch seconds or RFC 3339 */
        bool never_expires;

        ErrorRule error_rules[PROVIDER_ERROR_RULES_MAX];
        size_t n_error_rules;

        unsigned first_line;      /* of the first key: where whole-file errors point */
        unsigned grant_line;

        char *client_id;
        char *client_secret;      /* wiped on free; the one in use */
        /* client_secret_file repeated: the next ones, tried in order on
         * invalid_client (provider_next_client_secret()); wiped on free. */
        char *client_secret_next[PROVIDER_SECRETS_MAX - 1];
        size_t n_client_secret_next;
        unsigned n_client_secret_files;
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

        ProviderParam params[PROVIDER_PARAMS_MAX];
        size_t n_params;
        ProviderMetadata metadata[PROVIDER_METADATA_MAX];
        size_t n_metadata;
        /* The auth-injecting proxy (daemon/proxy.c): the API origins
         * ("https://host[:port]", no path) this provider's tokens may be
         * sent to; the first is the default. None: no proxy. */
        char *api_url[PROVIDER_API_URL_MAX];
        size_t n_api_url;
        usec_t api_timeout;       /* a proxied request fails after this long without a byte either way */
        unsigned api_max_connections;   /* proxied requests to this provider at once */

        /* preset = NAME: the installed preset this file builds on */
        char *preset;

        /* ${access_token} in a refresh template: a refresh needs no refresh
         * token (Meta's fb_exchange_token, Instagram's refresh_access_token) */
        bool refresh_uses_access_token;

        /* Revocation templates for providers that are not RFC 7009: any
         * revoke_param replaces token/token_type_hint; without ${token} in
         * them, one request revokes the grant. */
        char *revoke_method;      /* NULL: POST */
        BodyType revoke_body;
        TemplateList revoke_header, revoke_param;
        bool revoke_per_token;    /* the templates name ${token}: one request per token */
        char *revoke_ok_pointer;  /* a 200 answer must hold true there (Slack's /ok) */
        char *revoke_error_pointer; /* a 200 answer with a value there failed */

        /* The refresh token's end: from the answer (seconds) and/or an
         * absolute lifetime counted from the authorization (0: none). */
        char *ptr_refresh_token_expires_in;
        usec_t refresh_token_lifetime;
} Provider;

const ProviderParam *provider_find_param(const Provider *p, const char *name);

extern const char *const placeholders_revoke[];

/* Makes the next client secret of a repeated client_secret_file the one in
 * use (the one in use goes last); false when there is only one. */
bool provider_next_client_secret(Provider *p);

/* Where `preset = NAME` looks for NAME.conf while provider_load() runs
 * outside broker_config_load() (tests, tools); NULL: PRESETS_DIR. */
void conf_set_presets_dir(const char *dir);

/* The broker configuration broker_config_load() is loading (its [broker]
 * section parsed), for the discovery hook's outgoing request; NULL
 * outside a load. */
const struct BrokerConfig *conf_loading_broker(void);

Provider *provider_free(Provider *p);
DEFINE_TRIVIAL_CLEANUP_FUNC(Provider *, provider_free);

/* Parses providers.d/NAME.conf; the name comes from the file name. */
int provider_load(const char *path, Provider **ret, ConfError *err);

/* OIDC discovery, done by the daemon (common/ never touches the network):
 * fills the endpoints the file does not set from ISSUER/.well-known/
 * openid-configuration. Returns 0, or a negative errno with a reason in
 * *ret_reason (owned by the caller). When unset, no discovery happens. */
typedef int (*provider_discover_fn)(Provider *p, char **ret_reason);
void conf_set_discovery(provider_discover_fn fn);

/* Warnings (a key set twice, a file in providers_dir that is not
 * NAME.conf, an empty providers_dir) never fail a load: each comes as one
 * "file:line: warning: text" (or "file: warning: text") to this hook, for
 * the caller to print or log. When unset, warnings are dropped. */
typedef void (*conf_warning_fn)(const char *msg);
void conf_set_warning(conf_warning_fn fn);

/* DIR/VALUE (VALUE alone when absolute or DIR empty) with "//", "." and
 * ".." collapsed lexically; a ".." after a symlink is kept, as the kernel
 * would follow the link. "conf/dev" + "../../.run/state" is ".run/state". */
int conf_path_join(const char *dir, const char *value, char **ret);

/* A secret from a file (at most 64 KiB, one trailing newline dropped):
 * -EINVAL when empty or binary; *ret_mode the file's mode, for the
 * caller's group/other check. */
int conf_read_secret_file(const char *path, char **ret, mode_t *ret_mode);

/* The error class and hint an error answer gets from the provider's
 * error_map, else RFC 6749 section 5.2's defaults; *ret_hint is borrowed. */
ErrorClass provider_classify_error(const Provider *p, long status, const char *code, const char *desc,
                                   const char **ret_hint);

/* `tokenctl trace`, in memory only: at most 20 exchanges for each of the
 * 64 connections that talked to a provider last (each exchange a few KiB:
 * bodies and headers are cut), so about 10 MiB at worst. */
#define TRACE_ENTRIES_DEFAULT 20
#define TRACE_ENTRIES_MAX 1000
#define TRACE_CONNECTIONS_DEFAULT 64
#define TRACE_CONNECTIONS_MAX 100000

typedef struct BrokerConfig {
        char *path;
        char *state_dir;
        char *key_file;           /* default state_dir/tokenbroker.key */
        char *key_credential;     /* name in $CREDENTIALS_DIRECTORY, preferred */
        char *socket;
        unsigned socket_mode;
        char *callback_listen;    /* host:port */
        char *public_url;
        bool public_url_set;      /* public_url given (not the callback_listen default) */
        char *providers_dir;
        char *presets_dir;        /* where preset = NAME looks; default PRESETS_DIR */
        usec_t refresh_token_warn;/* warn this long before a refresh token's end */
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
        bool strict;              /* secrets in files others can read: an error, not a warning */
        unsigned trace_entries;   /* `tokenctl trace`: exchanges kept per connection; 0: off */
        unsigned trace_connections; /* ... for this many connections, the most recently traced */

        /* The store: NULL for SQLite in state_dir, else a PostgreSQL URI,
         * its password from a file or a systemd credential (read by the
         * daemon when it opens the store; NULL both: libpq's own ways). */
        char *store;
        char *store_password_file;
        char *store_password_credential;
        char *node_name;          /* default: the host name */

        /* Outgoing requests (common/egress.h): a CA bundle instead of the
         * system's, and curl CONNECT_TO lines HOST:PORT:CHOST:CPORT. */
        char *ca_file;
        char **connect_to;
        size_t n_connect_to;

        Provider **providers;
        size_t n_providers;
} BrokerConfig;

BrokerConfig *broker_config_free(BrokerConfig *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(BrokerConfig *, broker_config_free);

/* Loads the main file and every NAME.conf in its providers_dir; a missing
 * providers_dir is an error (-ENOENT), an empty one a warning. */
int broker_config_load(const char *path, BrokerConfig **ret, ConfError *err);
Provider *broker_config_find_provider(const BrokerConfig *c, const char *name);

/* The redirect URI the broker registers for provider p: public_url +
 * /oauth/callback/NAME, or the shared public_url + /oauth/callback when p
 * is NULL or has shared_callback set. */
int broker_config_redirect_uri(const BrokerConfig *c, const Provider *p, char **ret);

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
