/* SPDX-License-Identifier: MIT */
/* libFuzzer target: ${placeholder} templates (common/template.h).
 *
 * Input: the template (up to the first NUL byte).
 *
 * Invariants, against a reference expander written here from the header:
 *   - template_expand() gives the reference's text, or its error with the
 *     same offending name (*ret_bad, *ret_bad_len inside the template).
 *   - template_validate() against the names the lookup knows fails exactly
 *     when expansion fails, the same way.
 *   - Values are inserted literally (a value holding "${x}" or "$$" is not
 *     expanded again). */

#include "common/template.h"
#include "common/util.h"

static const char *const known[] = { "access_token", "token_type", "e", "x", NULL };

static const char *lookup(const char *name, size_t len, void *userdata) {
        static const char *const values[] = { "AT-${x}-$$", "Bearer", "", "}{$" };

        (void) userdata;
        for (size_t i = 0; known[i]; i++)
                if (strlen(known[i]) == len && memcmp(known[i], name, len) == 0)
                        return values[i];
        return NULL;
}

static int ref_expand(const char *t, char **ret, const char **bad, size_t *bad_len) {
        StrBuf b = {};
        size_t i = 0;

        while (t[i]) {
                if (t[i] != '$') {
                        strbuf_append(&b, t + i, 1);
                        i++;
                } else if (t[i + 1] == '$') {
                        strbuf_puts(&b, "$");
                        i += 2;
                } else if (t[i + 1] == '{') {
                        const char *close = strchr(t + i + 2, '}'), *v;

                        if (!close) {
                                *bad = t + i;
                                *bad_len = strlen(t + i);
                                strbuf_free(&b);
                                return -EINVAL;
                        }
                        v = lookup(t + i + 2, (size_t) (close - (t + i + 2)), NULL);
                        if (!v) {
                                *bad = t + i + 2;
                                *bad_len = (size_t) (close - (t + i + 2));
                                strbuf_free(&b);
                                return -ENOKEY;
                        }
                        strbuf_puts(&b, v);
                        i = (size_t) (close - t) + 1;
                } else {
                        strbuf_puts(&b, "$");
                        i++;
                }
        }
        *ret = strbuf_steal(&b);
        if (!*ret)
                abort();
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *t = strndup((const char *) data, size);
        char *out = NULL, *want = NULL;
        const char *bad = NULL, *want_bad = NULL, *vbad = NULL;
        size_t bad_len = 0, want_bad_len = 0, vbad_len = 0, tl;
        int r, rr, rv;

        if (!t)
                abort();
        tl = strlen(t);

        r = template_expand(t, lookup, NULL, &out, &bad, &bad_len);
        rr = ref_expand(t, &want, &want_bad, &want_bad_len);
        if (r != rr)
                abort();
        if (r >= 0 && !streq(out, want)) {
                fprintf(stderr, "template_expand: \"%s\", reference \"%s\"\n", out, want);
                abort();
        }
        if (r < 0 && (bad != want_bad || bad_len != want_bad_len))
                abort();
        if (r < 0 && (bad < t || bad + bad_len > t + tl))
                abort();

        rv = template_validate(t, known, &vbad, &vbad_len);
        if (rv != (r == -ENOMEM ? 0 : r) || (rv < 0 && (vbad != bad || vbad_len != bad_len)))
                abort();

        /* Without the out-parameters for the offending name. */
        if (template_validate(t, known, NULL, NULL) != rv)
                abort();

        free(out);
        free(want);
        free(t);
        return 0;
}
