/* SPDX-License-Identifier: MIT */
#pragma once

#include "common/macro.h"

/* ${placeholder} expansion for provider templates. A lookup returns the
 * value for a name (borrowed), or NULL when it has none; "$$" is a literal
 * dollar. Expansion of a name the lookup does not know fails with -ENOKEY
 * and names it in *ret_bad (borrowed pointer into the template, length
 * in *ret_bad_len), so config errors can say which. */

typedef const char *(*template_lookup_fn)(const char *name, size_t len, void *userdata);

int template_expand(const char *tmpl, template_lookup_fn lookup, void *userdata,
                    char **ret, const char **ret_bad, size_t *ret_bad_len);

/* The same without building a string: literal text and placeholder values
 * are handed to emit in order. For hot paths that write straight into an
 * output buffer. -ENOKEY as above. */
typedef void (*template_emit_fn)(const char *s, size_t n, void *userdata);
int template_render(const char *tmpl, template_lookup_fn lookup, void *lookup_data, template_emit_fn emit,
                    void *emit_data);

/* Checks every placeholder of tmpl against a NULL-terminated list of
 * known names. Returns 0, or -ENOKEY (unknown name), -EINVAL (unclosed
 * "${"), with the offending text in *ret_bad and *ret_bad_len. */
int template_validate(const char *tmpl, const char *const *known,
                      const char **ret_bad, size_t *ret_bad_len);
