/* SPDX-License-Identifier: MIT */
#pragma once

#include <jansson.h>

#include "common/macro.h"
#include "common/template.h"

/* Connection parameters (`param = NAME [: description]` in a provider
 * file, ${param.NAME} in its templates, one value per connection) and
 * response metadata (`metadata NAME = /pointer` or `= query:PARAM`,
 * ${metadata.NAME}): names, the rules their values follow, and the
 * expansion of URL templates that may hold them in the host. */

#define PARAM_NAME_MAX 64
#define PARAM_VALUE_MAX 256
#define METADATA_VALUE_MAX 2048

/* [A-Za-z0-9_-], 1 to PARAM_NAME_MAX bytes: a parameter or metadata name. */
bool param_name_valid(const char *s, size_t n);

/* Where a placeholder sits in a URL template. */
typedef enum UrlPlace {
        URL_PLACE_ORIGIN,  /* the template starts with it: the value is "https://host[:port]" */
        URL_PLACE_HOST,    /* inside the authority (host or port): a DNS name */
        URL_PLACE_REST,    /* path, query, fragment: percent-encoded on expansion */
} UrlPlace;

/* Why a value cannot stand where a placeholder is, or NULL when it can.
 * Every value: no control character, at most METADATA_VALUE_MAX bytes.
 * HOST: a DNS name (labels of [A-Za-z0-9-], not starting or ending with
 * '-', separated by single dots, no leading or trailing dot, at most 253
 * bytes): no '/', '@', ':', '?', '#' or '%' can move the request
 * elsewhere. ORIGIN: an https:// URL (http:// only on loopback) with no
 * userinfo, path, query or fragment (one trailing '/' is allowed).
 * REST: anything but "." and ".." (a path segment curl would collapse). */
const char *param_value_problem(const char *v, UrlPlace place);

/* Checks a URL template's placeholders: before the path only ${param.X}
 * and ${metadata.X}, and a template starting with a placeholder starts
 * with exactly one, followed by '/', '?' or the end. fn (may be NULL) is
 * called for each placeholder with its place. Returns 0, or -EINVAL with
 * a reason in *ret_why (static text). */
typedef void (*url_place_fn)(const char *name, size_t len, UrlPlace place, void *userdata);
int url_template_check(const char *tmpl, url_place_fn fn, void *userdata, const char **ret_why);

/* Expands a URL template: lookup returns raw values; values in the path
 * and query are percent-encoded, values before the path must pass
 * param_value_problem() for their place, and the result must be an
 * acceptable URL (url_is_acceptable()). -ENOKEY: unknown placeholder;
 * -EINVAL: a value that cannot stand there, with the reason and the
 * placeholder's name in *ret_why (owned by the caller, may be NULL). */
int url_template_expand(const char *tmpl, template_lookup_fn lookup, void *userdata, char **ret, char **ret_why);

/* The value of ${param.NAME} or ${metadata.NAME} (the name with its
 * prefix, not NUL-terminated) from the connection's objects, or NULL when
 * the name has neither prefix. A declared name without a value is "". */
const char *params_lookup(const json_t *params, const json_t *metadata, const char *name, size_t len);

typedef struct Provider Provider;

/* The parameters a connection of provider p gets from an authorization
 * request: the stored ones (old, may be NULL) overridden by the given ones
 * (given, may be NULL: a JSON object of strings). Unknown names, values
 * that break their rule (see param_value_problem(), PARAM_VALUE_MAX) and
 * declared parameters left without a value are refused: -EINVAL with a
 * message for the client in *ret_error (owned by the caller). *ret is a
 * new object, or NULL when the provider declares none. */
int params_resolve(const Provider *p, const json_t *given, const json_t *old, json_t **ret, char **ret_error);

/* The metadata in a token response (the provider's pointer lines): a new
 * object with old's values updated by those present in the body (strings,
 * numbers and booleans as text; values with control characters or longer
 * than METADATA_VALUE_MAX are skipped). Returns 1 and *ret when anything
 * changed, 0 when not (nothing declared, nothing there, the same values). */
int metadata_from_token_response(const Provider *p, const char *body, size_t len, const json_t *old,
                                 json_t **ret);

/* Sets one metadata value (a callback query parameter) on a copy of old:
 * 1 and *ret when it changed, 0 when not, -EINVAL for an unfit value. */
int metadata_set(const json_t *old, const char *name, const char *value, json_t **ret);
