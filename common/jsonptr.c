/* SPDX-License-Identifier: MIT */

#include <math.h>

#include "common/jsonptr.h"
#include "common/macro.h"

int jsonptr_validaten(const char *ptr, size_t n) {
        if (!ptr && n > 0)
                return -EINVAL;
        if (n == 0)
                return 0;
        if (ptr[0] != '/')
                return -EINVAL;

        for (size_t i = 1; i < n; i++)
                if (ptr[i] == '~') {
                        if (i + 1 >= n || (ptr[i + 1] != '0' && ptr[i + 1] != '1'))
                                return -EINVAL;
                        i++;
                }

        return 0;
}

int jsonptr_validate(const char *ptr) {
        if (!ptr)
                return -EINVAL;
        return jsonptr_validaten(ptr, strlen(ptr));
}

/* Array index per RFC 6901 §4: "0" or [1-9][0-9]*. Returns -ENOENT if the
 * token is not an index or is out of range for size. */
static int parse_index(const char *t, size_t l, size_t size, size_t *ret) {
        size_t v = 0;

        if (l == 0)
                return -ENOENT;
        if (l > 1 && t[0] == '0')
                return -ENOENT;

        for (size_t i = 0; i < l; i++) {
                if (t[i] < '0' || t[i] > '9')
                        return -ENOENT;
                if (v > (SIZE_MAX - 9) / 10)
                        return -ENOENT; /* overflow: certainly past the end */
                v = v * 10 + (size_t) (t[i] - '0');
        }

        if (v >= size)
                return -ENOENT;

        *ret = v;
        return 0;
}

int jsonptr_getn(json_t *root, const char *ptr, size_t n, json_t **ret) {
        _cleanup_free_ char *buf = NULL;
        json_t *cur = root;
        size_t i;
        int r;

        if (!root)
                return -EINVAL;

        r = jsonptr_validaten(ptr, n);
        if (r < 0)
                return r;

        if (n > 0) {
                /* One buffer for unescaped tokens; a token is never longer
                 * than the pointer. */
                buf = malloc(n);
                if (!buf)
                        return -ENOMEM;
        }

        i = 0;
        while (i < n) {
                size_t l = 0;

                assert(ptr[i] == '/');
                i++;

                for (; i < n && ptr[i] != '/'; i++) {
                        if (ptr[i] == '~') {
                                /* validated above: ~0 or ~1 */
                                buf[l++] = ptr[i + 1] == '0' ? '~' : '/';
                                i++;
                        } else
                                buf[l++] = ptr[i];
                }

                if (json_is_object(cur))
                        cur = json_object_getn(cur, buf, l);
                else if (json_is_array(cur)) {
                        size_t idx;

                        r = parse_index(buf, l, json_array_size(cur), &idx);
                        if (r < 0)
                                return r;
                        cur = json_array_get(cur, idx);
                } else
                        cur = NULL;

                if (!cur)
                        return -ENOENT;
        }

        if (ret)
                *ret = cur;
        return 0;
}

int jsonptr_get(json_t *root, const char *ptr, json_t **ret) {
        if (!ptr)
                return -EINVAL;
        return jsonptr_getn(root, ptr, strlen(ptr), ret);
}

int jsonptr_get_string(json_t *root, const char *ptr, const char **ret) {
        json_t *v;
        const char *s;
        int r;

        r = jsonptr_get(root, ptr, &v);
        if (r < 0)
                return r;

        if (!json_is_string(v))
                return -EMEDIUMTYPE;

        s = json_string_value(v);
        if (strlen(s) != json_string_length(v))
                return -EMEDIUMTYPE;

        if (ret)
                *ret = s;
        return 0;
}

#define NUMBER_STRING_MAX 256

static bool is_ws(char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool is_digit(char c) {
        return c >= '0' && c <= '9';
}

int jsonptr_parse_number_string(const char *s, size_t n, double *ret) {
        /* Normalised JSON number: '-', digits, '.', digits, 'e', sign,
         * digits, plus a leading '0' we may add: bounded by n + 2. */
        char norm[NUMBER_STRING_MAX + 8];
        size_t i = 0, o = 0, int_start, int_end, frac_start, frac_end;
        json_error_t err;
        json_t *j;
        double d;

        if (!s && n > 0)
                return -EINVAL;

        while (n > 0 && is_ws(s[0])) {
                s++;
                n--;
        }
        while (n > 0 && is_ws(s[n - 1]))
                n--;

        if (n == 0 || n > NUMBER_STRING_MAX)
                return -EINVAL;

        if (s[i] == '+' || s[i] == '-') {
                if (s[i] == '-')
                        norm[o++] = '-';
                i++;
        }

        int_start = i;
        while (i < n && is_digit(s[i]))
                i++;
        int_end = i;

        frac_start = frac_end = i;
        if (i < n && s[i] == '.') {
                i++;
                frac_start = i;
                while (i < n && is_digit(s[i]))
                        i++;
                frac_end = i;
        }

        if (int_start == int_end && frac_start == frac_end)
                return -EINVAL; /* no digits at all: "", "+", ".", "-.e1" */

        /* Integer part without leading zeros (JSON forbids them). */
        while (int_start + 1 < int_end && s[int_start] == '0')
                int_start++;
        if (int_start == int_end)
                norm[o++] = '0';
        else {
                memcpy(norm + o, s + int_start, int_end - int_start);
                o += int_end - int_start;
        }

        if (frac_start < frac_end) {
                norm[o++] = '.';
                memcpy(norm + o, s + frac_start, frac_end - frac_start);
                o += frac_end - frac_start;
        }

        if (i < n && (s[i] == 'e' || s[i] == 'E')) {
                size_t exp_start;

                norm[o++] = 'e';
                i++;
                if (i < n && (s[i] == '+' || s[i] == '-'))
                        norm[o++] = s[i++];
                exp_start = i;
                while (i < n && is_digit(s[i]))
                        norm[o++] = s[i++];
                if (i == exp_start)
                        return -EINVAL;
        }

        if (i != n)
                return -EINVAL;

        assert(o < sizeof(norm));

        /* Let jansson do the conversion: it is locale-independent and
         * rejects overflow. */
        j = json_loadb(norm, o, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, &err);
        if (!j)
                return -EINVAL;
        if (!json_is_number(j)) {
                json_decref(j);
                return -EINVAL;
        }
        d = json_number_value(j);
        json_decref(j);

        if (!isfinite(d))
                return -EINVAL;

        if (ret)
                *ret = d;
        return 0;
}

int jsonptr_get_number(json_t *root, const char *ptr, double *ret) {
        json_t *v;
        double d;
        int r;

        r = jsonptr_get(root, ptr, &v);
        if (r < 0)
                return r;

        if (json_is_integer(v)) {
                json_int_t i = json_integer_value(v);

                d = (double) i;
        } else if (json_is_real(v)) {
                d = json_real_value(v);
                if (!isfinite(d))
                        return -EINVAL;
        } else if (json_is_string(v)) {
                r = jsonptr_parse_number_string(json_string_value(v), json_string_length(v), &d);
                if (r < 0)
                        return r;
        } else
                return -EMEDIUMTYPE;

        if (ret)
                *ret = d;
        return 0;
}
