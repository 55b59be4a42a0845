/* SPDX-License-Identifier: MIT */
#include "common/template.h"

/* Walks the template once; calls fn for every placeholder. */
static int template_walk(const char *tmpl,
                         int (*fn)(const char *name, size_t len, void *ud),
                         int (*lit)(const char *s, size_t len, void *ud),
                         void *ud, const char **ret_bad, size_t *ret_bad_len) {
        const char *p = tmpl;
        int r;

        while (*p) {
                const char *d = strchr(p, '$');

                if (!d) {
                        if (lit && (r = lit(p, strlen(p), ud)) < 0)
                                return r;
                        break;
                }
                if (lit && d > p && (r = lit(p, (size_t) (d - p), ud)) < 0)
                        return r;
                if (d[1] == '$') {
                        if (lit && (r = lit("$", 1, ud)) < 0)
                                return r;
                        p = d + 2;
                } else if (d[1] == '{') {
                        const char *name = d + 2, *end = strchr(name, '}');

                        if (!end) {
                                if (ret_bad) {
                                        *ret_bad = d;
                                        *ret_bad_len = strlen(d);
                                }
                                return -EINVAL;
                        }
                        r = fn(name, (size_t) (end - name), ud);
                        if (r < 0) {
                                if (ret_bad) {
                                        *ret_bad = name;
                                        *ret_bad_len = (size_t) (end - name);
                                }
                                return r;
                        }
                        p = end + 1;
                } else {
                        if (lit && (r = lit("$", 1, ud)) < 0)
                                return r;
                        p = d + 1;
                }
        }
        return 0;
}

typedef struct Buf {
        char *s;
        size_t len, cap;
        template_lookup_fn lookup;
        void *userdata;
} Buf;

static int buf_append(const char *s, size_t n, void *ud) {
        Buf *b = ud;

        if (b->len + n + 1 > b->cap) {
                size_t cap = MAX(b->cap * 2, b->len + n + 64);
                char *t = realloc(b->s, cap);
                if (!t)
                        return -ENOMEM;
                b->s = t;
                b->cap = cap;
        }
        memcpy(b->s + b->len, s, n);
        b->len += n;
        b->s[b->len] = 0;
        return 0;
}

static int buf_placeholder(const char *name, size_t len, void *ud) {
        Buf *b = ud;
        const char *v = b->lookup(name, len, b->userdata);

        if (!v)
                return -ENOKEY;
        return buf_append(v, strlen(v), b);
}

int template_expand(const char *tmpl, template_lookup_fn lookup, void *userdata,
                    char **ret, const char **ret_bad, size_t *ret_bad_len) {
        Buf b = { .lookup = lookup, .userdata = userdata };
        int r;

        r = buf_append("", 0, &b);
        if (r >= 0)
                r = template_walk(tmpl, buf_placeholder, buf_append, &b, ret_bad, ret_bad_len);
        if (r < 0) {
                if (b.s)
                        explicit_wipe(b.s, b.cap);
                free(b.s);
                return r;
        }
        *ret = b.s;
        return 0;
}

static int check_known(const char *name, size_t len, void *ud) {
        const char *const *known = ud;

        for (size_t i = 0; known[i]; i++)
                if (strlen(known[i]) == len && memcmp(known[i], name, len) == 0)
                        return 0;
        return -ENOKEY;
}

int template_validate(const char *tmpl, const char *const *known,
                      const char **ret_bad, size_t *ret_bad_len) {
        return template_walk(tmpl, check_known, NULL, (void *) known, ret_bad, ret_bad_len);
}

typedef struct Render {
        template_lookup_fn lookup;
        void *lookup_data;
        template_emit_fn emit;
        void *emit_data;
} Render;

static int render_literal(const char *s, size_t n, void *ud) {
        Render *x = ud;

        x->emit(s, n, x->emit_data);
        return 0;
}

static int render_placeholder(const char *name, size_t len, void *ud) {
        Render *x = ud;
        const char *v = x->lookup(name, len, x->lookup_data);

        if (!v)
                return -ENOKEY;
        x->emit(v, strlen(v), x->emit_data);
        return 0;
}

int template_render(const char *tmpl, template_lookup_fn lookup, void *lookup_data, template_emit_fn emit,
                    void *emit_data) {
        Render x = { lookup, lookup_data, emit, emit_data };

        return template_walk(tmpl, render_placeholder, render_literal, &x, NULL, NULL);
}
