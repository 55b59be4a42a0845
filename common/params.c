/* SPDX-License-Identifier: MIT */
#include "common/jsonptr.h"
#include "common/conf.h"
#include "common/params.h"
#include "common/util.h"

bool param_name_valid(const char *s, size_t n) {
        if (n == 0 || n > PARAM_NAME_MAX)
                return false;
        for (size_t i = 0; i < n; i++) {
                char c = s[i];
                if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
                      c == '-'))
                        return false;
        }
        return true;
}

static bool is_alnum(char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool dns_name_valid(const char *s) {
        size_t n = strlen(s), label = 0;

        if (n == 0 || n > 253)
                return false;
        for (size_t i = 0; i < n; i++) {
                if (s[i] == '.') {
                        if (label == 0 || s[i - 1] == '-')
                                return false;
                        label = 0;
                        continue;
                }
                if (!is_alnum(s[i]) && !(s[i] == '-' && label > 0))
                        return false;
                if (++label > 63)
                        return false;
        }
        return label > 0 && s[n - 1] != '-';
}

static bool origin_valid(const char *s) {
        const char *rest = startswith(s, "https://") ?: startswith(s, "http://");
        size_t n;

        if (!rest || !url_is_acceptable(s))
                return false;
        n = strlen(rest);
        if (n > 0 && rest[n - 1] == '/')
                n--;
        if (n == 0)
                return false;
        /* host[:port] or [v6][:port]: no userinfo, path, query, fragment,
         * percent or backslash */
        for (size_t i = 0; i < n; i++)
                if (!is_alnum(rest[i]) && !strchr(".-:[]", rest[i]))
                        return false;
        return true;
}

const char *param_value_problem(const char *v, UrlPlace place) {
        size_t n = strlen(v);

        if (n > METADATA_VALUE_MAX)
                return "too long";
        if (string_has_ctl(v))
                return "holds a control character or line break";
        switch (place) {
        case URL_PLACE_HOST:
                if (!dns_name_valid(v))
                        return "is not a host name (letters, digits, '-' and single dots only)";
                break;
        case URL_PLACE_ORIGIN:
                if (!origin_valid(v))
                        return "is not an https:// origin (scheme and host only; http:// only on loopback)";
                break;
        case URL_PLACE_REST:
                if (streq(v, ".") || streq(v, ".."))
                        return "is a dot segment";
                break;
        }
        return NULL;
}

static bool is_param_ref(const char *name, size_t len) {
        const char *dot = memchr(name, '.', len);

        if (!dot)
                return false;
        if (!((size_t) (dot - name) == 5 && memcmp(name, "param", 5) == 0) &&
            !((size_t) (dot - name) == 8 && memcmp(name, "metadata", 8) == 0))
                return false;
        return param_name_valid(dot + 1, len - (size_t) (dot + 1 - name));
}

/* Calls fn for each placeholder with its place, lit for literal text (the
 * "$$" escape already undone). Returns 0 or -EINVAL with *ret_why. */
typedef int (*walk_ph_fn)(const char *name, size_t len, UrlPlace place, void *ud);
typedef int (*walk_lit_fn)(const char *s, size_t n, void *ud);

static int url_walk(const char *tmpl, walk_ph_fn ph, walk_lit_fn lit, void *ud, const char **ret_why) {
        const char *p = tmpl, *sep = strstr(tmpl, "://"), *auth_end = NULL;
        bool origin = startswith(tmpl, "${") != NULL;
        int r;

        /* the authority: from "://" to the first '/', '?' or '#' (a value
         * there cannot hold one) */
        if (!origin && sep)
                auth_end = sep + 3 + strcspn(sep + 3, "/?#");
        while (*p) {
                const char *d = strchr(p, '$');

                if (!d) {
                        if (lit && (r = lit(p, strlen(p), ud)) < 0)
                                return r;
                        break;
                }
                if (lit && d > p && (r = lit(p, (size_t) (d - p), ud)) < 0)
                        return r;
                if (d[1] == '{') {
                        const char *name = d + 2, *end = strchr(name, '}');
                        UrlPlace place = URL_PLACE_REST;

                        if (!end) {
                                *ret_why = "unterminated placeholder";
                                return -EINVAL;
                        }
                        if (d == tmpl && origin) {
                                place = URL_PLACE_ORIGIN;
                                if (end[1] && end[1] != '/' && end[1] != '?') {
                                        *ret_why = "a placeholder at the start stands for the whole origin "
                                                   "(https://host): '/', '?' or the end must follow it";
                                        return -EINVAL;
                                }
                        } else if (auth_end && d < auth_end)
                                place = URL_PLACE_HOST;
                        else if (!auth_end && !origin) {
                                *ret_why = "no scheme://";
                                return -EINVAL;
                        }
                        if (place != URL_PLACE_REST && !is_param_ref(name, (size_t) (end - name))) {
                                *ret_why = "no placeholders before the path but ${param.NAME} and ${metadata.NAME}";
                                return -EINVAL;
                        }
                        if (ph && (r = ph(name, (size_t) (end - name), place, ud)) < 0)
                                return r;
                        p = end + 1;
                } else {
                        if (lit && (r = lit("$", 1, ud)) < 0)
                                return r;
                        p = d + (d[1] == '$' ? 2 : 1);
                }
        }
        return 0;
}

typedef struct CheckCtx {
        url_place_fn fn;
        void *userdata;
} CheckCtx;

static int check_ph(const char *name, size_t len, UrlPlace place, void *ud) {
        CheckCtx *x = ud;

        if (x->fn)
                x->fn(name, len, place, x->userdata);
        return 0;
}

int url_template_check(const char *tmpl, url_place_fn fn, void *userdata, const char **ret_why) {
        CheckCtx x = { fn, userdata };
        const char *why = NULL;
        int r;

        r = url_walk(tmpl, check_ph, NULL, &x, &why);
        if (r < 0 && ret_why)
                *ret_why = why;
        return r;
}

typedef struct ExpandCtx {
        StrBuf b;
        template_lookup_fn lookup;
        void *userdata;
        char *why;
} ExpandCtx;

static int expand_lit(const char *s, size_t n, void *ud) {
        ExpandCtx *x = ud;

        strbuf_append(&x->b, s, n);
        return x->b.oom ? -ENOMEM : 0;
}

static int expand_ph(const char *name, size_t len, UrlPlace place, void *ud) {
        ExpandCtx *x = ud;
        const char *v = x->lookup(name, len, x->userdata), *problem;

        if (!v)
                return -ENOKEY;
        problem = param_value_problem(v, place);
        if (problem) {
                if (asprintf(&x->why, "the value of ${%.*s} %s", (int) MIN(len, 80), name, problem) < 0)
                        x->why = NULL;
                return -EINVAL;
        }
        if (place == URL_PLACE_REST) {
                _cleanup_free_ char *e = url_escape(v);
                if (!e)
                        return -ENOMEM;
                strbuf_puts(&x->b, e);
                explicit_wipe(e, strlen(e));
        } else if (place == URL_PLACE_ORIGIN) {
                size_t n = strlen(v);
                strbuf_append(&x->b, v, n > 0 && v[n - 1] == '/' ? n - 1 : n);
        } else
                strbuf_puts(&x->b, v);
        return x->b.oom ? -ENOMEM : 0;
}

int url_template_expand(const char *tmpl, template_lookup_fn lookup, void *userdata, char **ret, char **ret_why) {
        ExpandCtx x = { .lookup = lookup, .userdata = userdata };
        const char *why = NULL;
        char *s;
        int r;

        if (ret_why)
                *ret_why = NULL;
        strbuf_puts(&x.b, "");
        r = url_walk(tmpl, expand_ph, expand_lit, &x, &why);
        if (r >= 0 && x.b.oom)
                r = -ENOMEM;
        if (r >= 0 && !url_is_acceptable(x.b.s ?: "")) {
                r = -EINVAL;
                why = "the expanded URL is not https:// (http:// only on loopback)";
        }
        if (r < 0) {
                if (ret_why)
                        *ret_why = x.why ?: (why ? strdup(why) : NULL);
                else
                        free(x.why);
                if (x.b.s)
                        explicit_wipe(x.b.s, x.b.len);
                strbuf_free(&x.b);
                return r;
        }
        s = strbuf_steal(&x.b);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

const char *params_lookup(const json_t *params, const json_t *metadata, const char *name, size_t len) {
        char key[PARAM_NAME_MAX + 1];
        const json_t *o, *v;
        size_t off;

        if (len > 6 && memcmp(name, "param.", 6) == 0) {
                o = params;
                off = 6;
        } else if (len > 9 && memcmp(name, "metadata.", 9) == 0) {
                o = metadata;
                off = 9;
        } else
                return NULL;
        if (len - off > PARAM_NAME_MAX)
                return "";
        memcpy(key, name + off, len - off);
        key[len - off] = 0;
        v = o ? json_object_get(o, key) : NULL;
        return json_is_string(v) ? json_string_value(v) : "";
}

static const char *param_problem_for(const ProviderParam *pp, const char *v) {
        if (strlen(v) == 0)
                return "is empty";
        if (strlen(v) > PARAM_VALUE_MAX)
                return "is too long";
        return param_value_problem(v, pp->in_origin ? URL_PLACE_ORIGIN : pp->in_host ? URL_PLACE_HOST
                                                                                      : URL_PLACE_REST);
}

int params_resolve(const Provider *p, const json_t *given, const json_t *old, json_t **ret, char **ret_error) {
        json_t *out = NULL, *v;
        const char *key;
        StrBuf b = {};

        *ret = NULL;
        *ret_error = NULL;
        if (given && !json_is_object(given)) {
                *ret_error = strdup("params must be an object of strings");
                return -EINVAL;
        }
        json_object_foreach((json_t *) given, key, v) {
                const ProviderParam *pp = provider_find_param(p, key);
                const char *problem;
                char esc[80];

                (void) text_escape(esc, sizeof esc, key, strlen(key));
                if (!pp) {
                        strbuf_printf(&b, "unknown parameter '%s' for provider '%s'", esc, p->name);
                        if (p->n_params == 0)
                                strbuf_puts(&b, ", which takes none");
                        for (size_t i = 0; i < p->n_params; i++)
                                strbuf_printf(&b, "%s%s", i ? ", " : "; it takes: ", p->params[i].name);
                        goto fail;
                }
                if (!json_is_string(v)) {
                        strbuf_printf(&b, "parameter '%s' must be a string", esc);
                        goto fail;
                }
                problem = json_string_length(v) != strlen(json_string_value(v)) ? "holds a NUL byte"
                                                                                 : param_problem_for(pp, json_string_value(v));
                if (problem) {
                        strbuf_printf(&b, "the value of parameter '%s' %s", esc, problem);
                        if (pp->in_host)
                                strbuf_puts(&b, " (it stands in a host name: letters, digits, '-' and dots only)");
                        goto fail;
                }
        }
        if (p->n_params == 0)
                return 0;
        out = json_object();
        if (!out)
                goto oom;
        for (size_t i = 0; i < p->n_params; i++) {
                const ProviderParam *pp = &p->params[i];
                json_t *g = given ? json_object_get(given, pp->name) : NULL;
                json_t *o = old ? json_object_get(old, pp->name) : NULL;

                v = g ?: o;
                if (!json_is_string(v)) {
                        strbuf_printf(&b, "missing parameter '%s'%s%s%s for provider '%s': give it with --param %s=VALUE",
                                      pp->name, pp->description ? " (" : "", strempty(pp->description),
                                      pp->description ? ")" : "", p->name, pp->name);
                        goto fail;
                }
                if (json_object_set_new(out, pp->name, json_string(json_string_value(v))) < 0)
                        goto oom;
        }
        *ret = out;
        return 0;
oom:
        json_decref(out);
        strbuf_free(&b);
        return -ENOMEM;
fail:
        json_decref(out);
        *ret_error = strbuf_steal(&b);
        return *ret_error ? -EINVAL : -ENOMEM;
}

static int metadata_put(json_t **out, const json_t *old, const char *name, const char *value) {
        json_t *cur = *out ? json_object_get(*out, name) : old ? json_object_get(old, name) : NULL;

        if (strlen(value) > METADATA_VALUE_MAX || string_has_ctl(value))
                return -EINVAL;
        if (json_is_string(cur) && streq(json_string_value(cur), value))
                return 0;
        if (!*out) {
                *out = old ? json_deep_copy(old) : json_object();
                if (!*out)
                        return -ENOMEM;
        }
        return json_object_set_new(*out, name, json_string(value)) < 0 ? -ENOMEM : 1;
}

int metadata_from_token_response(const Provider *p, const char *body, size_t len, const json_t *old,
                                 json_t **ret) {
        json_t *root, *out = NULL;
        bool any = false;
        int r = 0;

        *ret = NULL;
        if (!body || len == 0)
                return 0;
        for (size_t i = 0; i < p->n_metadata; i++)
                any = any || p->metadata[i].pointer;
        if (!any)
                return 0;
        root = json_loadb(body, len, 0, NULL);
        if (!root)
                return 0;
        for (size_t i = 0; i < p->n_metadata && r >= 0; i++) {
                const ProviderMetadata *md = &p->metadata[i];
                char num[64];
                const char *s = NULL;
                json_t *v = NULL;

                if (!md->pointer || jsonptr_get(root, md->pointer, &v) < 0)
                        continue;
                if (json_is_string(v) && json_string_length(v) == strlen(json_string_value(v)))
                        s = json_string_value(v);
                else if (json_is_integer(v)) {
                        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
                        s = num;
                } else if (json_is_real(v)) {
                        snprintf(num, sizeof num, "%.17g", json_real_value(v));
                        s = num;
                } else if (json_is_boolean(v))
                        s = json_is_true(v) ? "true" : "false";
                if (!s)
                        continue;
                r = metadata_put(&out, old, md->name, s);
                if (r == -EINVAL)
                        r = 0;   /* an unfit value is skipped */
        }
        json_decref(root);
        if (r < 0) {
                json_decref(out);
                return r;
        }
        if (!out)
                return 0;
        *ret = out;
        return 1;
}

int metadata_set(const json_t *old, const char *name, const char *value, json_t **ret) {
        json_t *out = NULL;
        int r;

        *ret = NULL;
        r = metadata_put(&out, old, name, value);
        if (r <= 0) {
                json_decref(out);
                return r;
        }
        *ret = out;
        return 1;
}
