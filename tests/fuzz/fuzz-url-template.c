/* SPDX-License-Identifier: MIT */
/* libFuzzer target: URL templates with connection parameters and response
 * metadata (common/params.h): url_template_check(), url_template_expand(),
 * param_value_problem().
 *
 * Input: TEMPLATE '\n' VALUE (up to the first NUL). ${param.v} and
 * ${metadata.v} expand to VALUE (what a client or a provider sent),
 * ${param.s} to "safe", ${code} to "c d/e"; other names are unknown.
 *
 * Invariants:
 *   - An expansion that succeeds gives exactly what a reference expander
 *     written here gives: the placeholder's place (origin at the start,
 *     host inside the authority, else the rest) decided from the template,
 *     values in the rest percent-encoded, others as they are (an origin
 *     without its trailing '/').
 *   - A value accepted in the host is only letters, digits, '-' and single
 *     inner dots; one accepted as the origin is scheme://host[:port] with
 *     no '@', '/', '?', '#', '%', '\\' or space; one accepted in the rest
 *     is not "." or "..".
 *   - The result is an acceptable URL (url_is_acceptable()) with no
 *     control character the template did not have.
 *   - A value in the path or query never moves the request: libcurl sees
 *     the same scheme, host and port as for the template expanded with
 *     "x" for VALUE.
 *   - A value in the host never adds userinfo: libcurl sees a user only
 *     when the template itself has an '@' in its authority. */

#include <curl/curl.h>

#include "common/conf.h"
#include "common/params.h"
#include "common/util.h"

static const char *value;

static const char *lookup(const char *name, size_t len, void *userdata) {
        (void) userdata;
        if ((len == 7 && memcmp(name, "param.v", 7) == 0) || (len == 10 && memcmp(name, "metadata.v", 10) == 0))
                return value;
        if (len == 7 && memcmp(name, "param.s", 7) == 0)
                return "safe";
        if (len == 4 && memcmp(name, "code", 4) == 0)
                return "c d/e";
        return NULL;
}

static bool host_ok(const char *v) {
        size_t n = strlen(v);

        if (n == 0 || v[0] == '.' || v[n - 1] == '.' || strstr(v, ".."))
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z') || (v[i] >= '0' && v[i] <= '9') ||
                      v[i] == '-' || v[i] == '.'))
                        return false;
        return true;
}

static bool origin_ok(const char *v) {
        const char *rest = startswith(v, "https://") ?: startswith(v, "http://");
        size_t n;

        if (!rest)
                return false;
        n = strlen(rest);
        if (n > 0 && rest[n - 1] == '/')
                n--;
        return n > 0 && strcspn(rest, "@/?#%\\ ") >= n;
}

/* The reference: 0 and *ret, or -1 (unknown name, unterminated, or a
 * value the rules refuse; the result is not compared then). */
static int ref_expand(const char *t, char **ret, bool *ret_rest_only) {
        const char *sep = strstr(t, "://"), *auth_end = NULL;
        bool origin = t[0] == '$' && t[1] == '{';
        StrBuf b = {};
        size_t i = 0;

        *ret_rest_only = true;
        if (!origin && sep)
                auth_end = sep + 3 + strcspn(sep + 3, "/?#");
        while (t[i]) {
                if (t[i] != '$' || (t[i + 1] != '{' && t[i + 1] != '$')) {
                        strbuf_append(&b, t + i, 1);
                        i++;
                } else if (t[i + 1] == '$') {
                        strbuf_puts(&b, "$");
                        i += 2;
                } else {
                        const char *close = strchr(t + i + 2, '}'), *v;
                        size_t len;

                        if (!close)
                                goto fail;
                        len = (size_t) (close - (t + i + 2));
                        v = lookup(t + i + 2, len, NULL);
                        if (!v)
                                goto fail;
                        if (i == 0 && origin) {
                                size_t n = strlen(v);
                                if (!origin_ok(v) || string_has_ctl(v))
                                        goto fail;
                                strbuf_append(&b, v, n > 0 && v[n - 1] == '/' ? n - 1 : n);
                                *ret_rest_only = false;
                        } else if (auth_end && t + i < auth_end) {
                                if (!host_ok(v))
                                        goto fail;
                                strbuf_puts(&b, v);
                                *ret_rest_only = false;
                        } else {
                                _cleanup_free_ char *e = NULL;

                                if (streq(v, ".") || streq(v, "..") || string_has_ctl(v) ||
                                    strlen(v) > METADATA_VALUE_MAX)
                                        goto fail;
                                e = url_escape(v);
                                strbuf_puts(&b, e ?: "");
                        }
                        i = (size_t) (close - t) + 1;
                }
        }
        *ret = strbuf_steal(&b);
        return *ret ? 0 : -1;
fail:
        strbuf_free(&b);
        return -1;
}

/* scheme, host, port and user as libcurl parses them; false if it does not. */
static bool curl_parts(const char *url, char **scheme, char **host, char **port, char **user) {
        CURLU *u = curl_url();
        bool ok;

        *scheme = *host = *port = *user = NULL;
        if (!u)
                abort();
        ok = curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_SCHEME, scheme, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_HOST, host, 0) == CURLUE_OK;
        if (ok) {
                (void) curl_url_get(u, CURLUPART_PORT, port, CURLU_DEFAULT_PORT);
                (void) curl_url_get(u, CURLUPART_USER, user, 0);
        }
        curl_url_cleanup(u);
        return ok;
}

static void curl_parts_free(char *a, char *b, char *c, char *d) {
        curl_free(a);
        curl_free(b);
        curl_free(c);
        curl_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        _cleanup_free_ char *in = strndup((const char *) data, size), *out = NULL, *why = NULL, *ref = NULL;
        _cleanup_free_ char *plain = NULL;
        const char *saved;
        char *nl;
        bool rest_only;
        int r, k;

        if (!in)
                return 0;
        nl = strchr(in, '\n');
        if (!nl)
                return 0;
        *nl = 0;
        value = nl + 1;

        (void) url_template_check(in, NULL, NULL, NULL);
        (void) param_value_problem(value, URL_PLACE_HOST);
        (void) param_value_problem(value, URL_PLACE_ORIGIN);

        r = url_template_expand(in, lookup, NULL, &out, &why);
        k = ref_expand(in, &ref, &rest_only);
        if (r < 0) {
                if (r != -ENOKEY && r != -EINVAL && r != -ENOMEM)
                        abort();
                return 0;
        }
        /* accepted: the reference accepts too and agrees */
        if (k < 0 || !streq(out, ref))
                abort();
        /* (a control character in the template is the configuration's: refused at load) */
        if (!url_is_acceptable(out) || (string_has_ctl(out) && !string_has_ctl(in)))
                abort();

        {
                char *s1, *h1, *p1, *u1;

                if (!curl_parts(out, &s1, &h1, &p1, &u1)) {
                        /* libcurl refuses some URLs url_is_acceptable() lets
                         * through (a bad port in the template itself) */
                        return 0;
                }
                /* a value in the host adds no userinfo */
                if (u1) {
                        const char *sep = strstr(in, "://");
                        bool origin = in[0] == '$' && in[1] == '{';

                        if (origin || !sep || !memchr(sep + 3, '@', strcspn(sep + 3, "/?#")))
                                abort();
                }
                /* a value in the path or query does not move the request */
                if (rest_only) {
                        char *s2, *h2, *p2, *u2;

                        saved = value;
                        value = "x";
                        k = url_template_expand(in, lookup, NULL, &plain, NULL);
                        value = saved;
                        if (k >= 0 && curl_parts(plain, &s2, &h2, &p2, &u2)) {
                                if (!streq(s1, s2) || strcasecmp(h1, h2) != 0 || !streq_ptr(p1, p2))
                                        abort();
                                curl_parts_free(s2, h2, p2, u2);
                        }
                }
                curl_parts_free(s1, h1, p1, u1);
        }
        return 0;
}
