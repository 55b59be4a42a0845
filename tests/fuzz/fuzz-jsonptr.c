/* SPDX-License-Identifier: MIT */
/* libFuzzer target: JSON Pointer evaluation (common/jsonptr.h).
 *
 * Input: "POINTER\nDOCUMENT": the pointer is everything before the first
 * newline (it may hold NUL bytes), the document (any JSON value, NULs in
 * strings allowed) everything after. Without a newline the whole input is
 * a pointer, tried on a fixed document.
 *
 * Invariants, against a straightforward reference evaluator written here
 * from RFC 6901 and the header's grammar:
 *   - jsonptr_validaten() and jsonptr_getn() agree with the reference
 *     (same node, or the same error); the NUL-terminated variants agree
 *     with the sized ones when the pointer has no NUL.
 *   - jsonptr_get_string() gives the node's string exactly when it is a
 *     string without NUL, else -EMEDIUMTYPE.
 *   - jsonptr_get_number() gives the node's value for numbers, and for
 *     strings exactly what the grammar and strtod() say;
 *     jsonptr_parse_number_string() on the raw pointer bytes likewise. */

#include <math.h>

#include "common/jsonptr.h"
#include "common/macro.h"

static const char fixed_doc[] =
        "{\"access_token\":\"at\",\"expires_in\":\" 3600 \",\"a/b\":{\"m~n\":[1,\"2.5\",{\"\":true}]},"
        "\"\":{\"\":\"-1e3\"},\"data\":[{\"expires_in\":3599.5}]}";

/* RFC 6901, written independently of the implementation: split into
 * tokens first, then unescape each, then walk. */
static int ref_validate(const char *p, size_t n) {
        if (n == 0)
                return 0;
        if (p[0] != '/')
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (p[i] == '~' && (i + 1 == n || (p[i + 1] != '0' && p[i + 1] != '1')))
                        return -EINVAL;
                else if (p[i] == '~')
                        i++;
        return 0;
}

static bool ref_index(const char *t, size_t l, size_t size, size_t *ret) {
        size_t v = 0;

        if (l == 0 || l > 19 || (l > 1 && t[0] == '0'))
                return false;
        for (size_t i = 0; i < l; i++) {
                if (t[i] < '0' || t[i] > '9')
                        return false;
                v = v * 10 + (size_t) (t[i] - '0');
        }
        if (v >= size)
                return false;
        *ret = v;
        return true;
}

static int ref_get(json_t *root, const char *p, size_t n, json_t **ret) {
        json_t *cur = root;
        char *tok;
        size_t start = 1;

        if (ref_validate(p, n) < 0)
                return -EINVAL;
        tok = malloc(n + 1);
        if (!tok)
                abort();
        while (n > 0 && start <= n) {
                size_t end = start, l = 0, idx;

                while (end < n && p[end] != '/')
                        end++;
                for (size_t i = start; i < end; i++)
                        if (p[i] == '~') {
                                tok[l++] = p[i + 1] == '1' ? '/' : '~';
                                i++;
                        } else
                                tok[l++] = p[i];
                if (json_is_object(cur))
                        cur = json_object_getn(cur, tok, l);
                else if (json_is_array(cur))
                        cur = ref_index(tok, l, json_array_size(cur), &idx) ? json_array_get(cur, idx) : NULL;
                else
                        cur = NULL;
                if (!cur) {
                        free(tok);
                        return -ENOENT;
                }
                start = end + 1;
        }
        free(tok);
        *ret = cur;
        return 0;
}

/* [+-]? (D+ ('.' D*)? | '.' D+) ([eE] [+-]? D+)? within ASCII whitespace,
 * at most 256 bytes after trimming, finite. */
static int ref_number(const char *s, size_t n, double *ret) {
        size_t i = 0, d1 = 0, d2 = 0;
        char buf[300], *end;
        double d;

        while (n > 0 && strchr(" \t\n\r", s[0]) && s[0])
                s++, n--;
        while (n > 0 && strchr(" \t\n\r", s[n - 1]) && s[n - 1])
                n--;
        if (n == 0 || n > 256)
                return -EINVAL;
        if (s[i] == '+' || s[i] == '-')
                i++;
        while (i < n && s[i] >= '0' && s[i] <= '9')
                i++, d1++;
        if (i < n && s[i] == '.') {
                i++;
                while (i < n && s[i] >= '0' && s[i] <= '9')
                        i++, d2++;
        }
        if (d1 + d2 == 0)
                return -EINVAL;
        if (i < n && (s[i] == 'e' || s[i] == 'E')) {
                size_t e = 0;
                i++;
                if (i < n && (s[i] == '+' || s[i] == '-'))
                        i++;
                while (i < n && s[i] >= '0' && s[i] <= '9')
                        i++, e++;
                if (e == 0)
                        return -EINVAL;
        }
        if (i != n)
                return -EINVAL;
        memcpy(buf, s, n);
        buf[n] = 0;
        d = strtod(buf, &end);   /* the fuzzer runs in the C locale */
        if (*end || !isfinite(d))
                return -EINVAL;
        *ret = d;
        return 0;
}

static void check_number_string(const char *s, size_t n) {
        double a = 0, b = 0;
        int ra = jsonptr_parse_number_string(s, n, &a), rb = ref_number(s, n, &b);

        if (ra != rb || (ra >= 0 && a != b)) {
                fprintf(stderr, "number \"%.*s\": %d %.17g, reference %d %.17g\n", (int) n, s, ra, a, rb, b);
                abort();
        }
}

static void check(json_t *root, const char *ptr, size_t n) {
        json_t *got = NULL, *want = NULL;
        const char *str = NULL;
        double d = 0, want_d = 0;
        bool has_nul = memchr(ptr, 0, n);
        char *z;
        int r, rr;

        r = jsonptr_validaten(ptr, n);
        if (r != ref_validate(ptr, n))
                abort();
        r = jsonptr_getn(root, ptr, n, &got);
        rr = ref_get(root, ptr, n, &want);
        if (r != rr || (r >= 0 && got != want)) {
                fprintf(stderr, "jsonptr_getn: %d %p, reference %d %p\n", r, (void *) got, rr, (void *) want);
                abort();
        }
        if (jsonptr_getn(root, ptr, n, NULL) != r)
                abort();
        if (has_nul)
                return;

        z = strndup(ptr, n);
        if (!z)
                abort();
        if (jsonptr_validate(z) != ref_validate(ptr, n))
                abort();
        got = NULL;
        if (jsonptr_get(root, z, &got) != r || got != (r >= 0 ? want : NULL))
                abort();

        r = jsonptr_get_string(root, z, &str);
        if (rr < 0 ? r != rr
                   : !json_is_string(want) || strlen(json_string_value(want)) != json_string_length(want)
                           ? r != -EMEDIUMTYPE
                           : r != 0 || str != json_string_value(want))
                abort();

        r = jsonptr_get_number(root, z, &d);
        if (rr < 0) {
                if (r != rr)
                        abort();
        } else if (json_is_integer(want)) {
                if (r != 0 || d != (double) json_integer_value(want))
                        abort();
        } else if (json_is_real(want)) {
                if (r != 0 || d != json_real_value(want))
                        abort();
        } else if (json_is_string(want)) {
                int ref = ref_number(json_string_value(want), json_string_length(want), &want_d);
                if (r != ref || (r >= 0 && d != want_d))
                        abort();
        } else if (r != -EMEDIUMTYPE)
                abort();
        free(z);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *s = (const char *) data, *nl = memchr(s, '\n', size);
        json_t *root;

        check_number_string(s, nl ? (size_t) (nl - s) : size);
        if (nl)
                root = json_loadb(nl + 1, size - (size_t) (nl + 1 - s), JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        else
                root = json_loads(fixed_doc, 0, NULL);
        if (!root)
                return 0;
        check(root, s, nl ? (size_t) (nl - s) : size);
        json_decref(root);
        return 0;
}
