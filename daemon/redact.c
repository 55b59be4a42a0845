/* SPDX-License-Identifier: MIT */
#include <jansson.h>
#include <strings.h>

#include "common/b64.h"
#include "common/util.h"
#include "daemon/redact.h"

#define PLACEHOLDER_NAME_MAX 40

void redactor_done(Redactor *r) {
        for (size_t i = 0; i < r->n; i++) {
                free(r->v[i].name);
                secret_free(r->v[i].value);
        }
        for (size_t i = 0; i < r->n_keys; i++)
                free(r->keys[i]);
        *r = (Redactor) {};
}

/* A name fit for <name>: letters, digits, '_', '.', '-'; else "redacted". */
static const char *placeholder_name(const char *name, size_t len) {
        if (len == 0 || len > PLACEHOLDER_NAME_MAX)
                return NULL;
        for (size_t i = 0; i < len; i++)
                if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", name[i]) || !name[i])
                        return NULL;
        return name;
}

static void add_one(Redactor *r, const char *name, const char *value, size_t len) {
        size_t at;

        if (len < REDACT_VALUE_MIN || r->n >= REDACT_SECRETS_MAX)
                return;
        for (size_t i = 0; i < r->n; i++)
                if (strlen(r->v[i].value) == len && memcmp(r->v[i].value, value, len) == 0)
                        return;
        /* longest first: a value holding a shorter one goes whole */
        for (at = 0; at < r->n && strlen(r->v[at].value) >= len; at++)
                ;
        {
                /* a name that holds the value would print it ("x_SECRET_token=SECRET") */
                char *n = strdup(memmem(name, strlen(name), value, len) ? "redacted" : name), *v = strndup(value, len);

                if (!n || !v) {
                        free(n);
                        free(v);
                        return;
                }
                memmove(&r->v[at + 1], &r->v[at], (r->n - at) * sizeof r->v[0]);
                r->v[at].name = n;
                r->v[at].value = v;
                r->n++;
        }
}

void redactor_add(Redactor *r, const char *name, const char *value) {
        _cleanup_secret_ char *e = NULL;

        if (!value || !placeholder_name(name, strlen(name)))
                return;
        add_one(r, name, value, strlen(value));
        e = url_escape(value);
        if (e && !streq(e, value))
                add_one(r, name, e, strlen(e));
        if (e && strstr(e, "%20")) {
                /* a form writes a space as '+' */
                StrBuf b = {};

                for (const char *p = e; *p;) {
                        const char *sp = strstr(p, "%20");
                        size_t n = sp ? (size_t) (sp - p) : strlen(p);

                        strbuf_append(&b, p, n);
                        if (!sp)
                                break;
                        strbuf_puts(&b, "+");
                        p = sp + 3;
                }
                if (!b.oom && b.s)
                        add_one(r, name, b.s, b.len);
                if (b.s)
                        explicit_wipe(b.s, b.len);
                strbuf_free(&b);
        }
}

void redactor_add_key(Redactor *r, const char *key) {
        const char *slash;
        char *k;

        if (!key || r->n_keys >= ELEMENTSOF(r->keys))
                return;
        slash = strrchr(key, '/');
        if (slash)
                key = slash + 1;
        if (!placeholder_name(key, strlen(key)) || redact_key_is_secret(r, key, strlen(key)))
                return;
        k = strdup(key);
        if (k)
                r->keys[r->n_keys++] = k;
}

static bool key_is(const char *key, size_t len, const char *s) {
        return strlen(s) == len && strncasecmp(key, s, len) == 0;
}

bool redact_key_is_secret(const Redactor *r, const char *key, size_t len) {
        static const char *const keys[] = {
                "access_token", "refresh_token", "id_token", "code", "code_verifier", "device_code",
                "client_secret", "password", "token", "state", "assertion", "client_assertion",
                "api_key", "apikey", "secret", "session", "cookie",
        };

        for (size_t i = 0; i < ELEMENTSOF(keys); i++)
                if (key_is(key, len, keys[i]))
                        return true;
        for (size_t i = 0; r && i < r->n_keys; i++)
                if (key_is(key, len, r->keys[i]))
                        return true;
        if (len >= 6 && strncasecmp(key + len - 6, "_token", 6) == 0)
                return true;
        for (size_t i = 0; i + 6 <= len; i++)
                if (strncasecmp(key + i, "secret", 6) == 0)
                        return true;
        return false;
}

/* ---- by value ------------------------------------------------------- */

/* A placeholder name is printed as it is: one that holds any secret (a key
 * learned from a request may) becomes "redacted". */
static const char *safe_name(const Redactor *r, const char *name) {
        for (size_t i = 0; i < r->n; i++)
                if (strstr(name, r->v[i].value))
                        return "redacted";
        return name;
}

/* One pass, left to right: at each byte the longest secret that starts
 * there is replaced by its placeholder; the output is never scanned again,
 * so the work is bounded by len times the number of secrets. */
static void put_values(const Redactor *r, StrBuf *b, const char *s, size_t len) {
        bool first[256] = {};

        for (size_t i = 0; i < r->n; i++)
                first[(unsigned char) r->v[i].value[0]] = true;
        for (size_t i = 0; i < len;) {
                size_t j = i, k;

                while (j < len && !first[(unsigned char) s[j]])
                        j++;
                strbuf_append(b, s + i, j - i);
                if (j >= len)
                        break;
                for (k = 0; k < r->n; k++) {
                        size_t l = strlen(r->v[k].value);
                        if (l <= len - j && memcmp(s + j, r->v[k].value, l) == 0)
                                break;
                }
                if (k < r->n) {
                        strbuf_printf(b, "<%s>", safe_name(r, r->v[k].name));
                        i = j + strlen(r->v[k].value);
                } else {
                        strbuf_append(b, s + j, 1);
                        i = j + 1;
                }
        }
}

/* The placeholder of a whole value, if it is exactly one named secret. */
static const char *named(const Redactor *r, const char *s, size_t len) {
        for (size_t i = 0; i < r->n; i++)
                if (strlen(r->v[i].value) == len && memcmp(r->v[i].value, s, len) == 0)
                        return r->v[i].name;
        return NULL;
}

/* Printable, cut at max bytes (0: not cut) on a character boundary. The
 * whole text goes by value once more, escaped: a secret may straddle the
 * pieces (query and path, name and value) the structured pass took apart,
 * and escaping may spell one. */
static char *finish(const Redactor *r, StrBuf *b, size_t max) {
        _cleanup_secret_ char *raw = NULL, *esc = NULL;
        StrBuf again = {};
        char *full, *cut;
        size_t n;

        if (b->oom) {
                strbuf_free(b);
                return NULL;
        }
        raw = strbuf_steal(b);
        if (!raw && !(raw = strdup("")))
                return NULL;
        esc = text_escape_dup(raw, strlen(raw) * 6 + 16);
        if (!esc)
                return NULL;
        put_values(r, &again, esc, strlen(esc));
        if (again.oom) {
                strbuf_free(&again);
                return NULL;
        }
        full = strbuf_steal(&again);
        if (!full)
                full = strdup("");
        if (!full || max == 0 || strlen(full) <= max)
                return full;
        cut = text_escape_dup(full, max);
        n = cut ? strlen(cut) : 0;
        if (cut) {
                char *t = NULL;
                if (asprintf(&t, "%s …[%zu bytes cut]", cut, strlen(full) - n) < 0)
                        t = NULL;
                free(cut);
                cut = t;
        }
        free(full);
        return cut;
}

char *redact_text(const Redactor *r, const char *s, size_t len, size_t max) {
        StrBuf b = {};

        put_values(r, &b, s ?: "", s ? len : 0);
        return finish(r, &b, max);
}

/* ---- forms and URLs ------------------------------------------------- */

static void put_form(const Redactor *r, StrBuf *b, const char *s, size_t len) {
        const char *p = s, *end = s + len;

        while (p < end) {
                const char *amp = memchr(p, '&', (size_t) (end - p)), *stop = amp ?: end;
                const char *eq = memchr(p, '=', (size_t) (stop - p));
                _cleanup_free_ char *key = NULL;

                if (eq && url_unescape(p, (size_t) (eq - p), &key) >= 0 && redact_key_is_secret(r, key, strlen(key))) {
                        const char *n = named(r, eq + 1, (size_t) (stop - eq - 1));
                        const char *pk = placeholder_name(key, strlen(key));

                        put_values(r, b, p, (size_t) (eq - p));
                        strbuf_puts(b, "=");
                        /* a value learned under another name keeps that name */
                        strbuf_printf(b, "<%s>", n ?: pk ?: "redacted");
                } else
                        put_values(r, b, p, (size_t) (stop - p));
                if (amp)
                        strbuf_puts(b, "&");
                p = stop + 1;
        }
}

static void put_url(const Redactor *r, StrBuf *b, const char *url) {
        const char *q = strchr(url, '?');

        if (!q) {
                put_values(r, b, url, strlen(url));
                return;
        }
        put_values(r, b, url, (size_t) (q - url) + 1);
        {
                const char *hash = strchr(q + 1, '#');
                size_t n = hash ? (size_t) (hash - q - 1) : strlen(q + 1);

                put_form(r, b, q + 1, n);
                if (hash)
                        put_values(r, b, hash, strlen(hash));
        }
}

char *redact_url(const Redactor *r, const char *url, size_t max) {
        StrBuf b = {};

        put_url(r, &b, url ?: "");
        return finish(r, &b, max);
}

/* ---- headers -------------------------------------------------------- */

static bool name_has(const char *name, size_t len, const char *word) {
        size_t w = strlen(word);

        for (size_t i = 0; i + w <= len; i++)
                if (strncasecmp(name + i, word, w) == 0)
                        return true;
        return false;
}

/* A Basic value: "Basic base64(ID:<client_secret>)", the id shown (it is
 * no secret) unless it is one; NULL if it does not decode to a pair. */
static bool put_basic(const Redactor *r, StrBuf *b, const char *v) {
        _cleanup_free_ char *alpha = strdup(v);
        _cleanup_free_ char *id = NULL;
        void *dec = NULL;
        size_t dlen = 0;
        const char *sep;
        bool ok = false;

        if (!alpha)
                return false;
        for (char *q = alpha; *q; q++)
                *q = *q == '+' ? '-' : *q == '/' ? '_' : *q;
        if (b64url_decode(alpha, strlen(alpha), &dec, &dlen) < 0)
                return false;
        sep = memchr(dec, ':', dlen);
        if (sep && url_unescape(dec, (size_t) (sep - (char *) dec), &id) >= 0) {
                _cleanup_secret_ char *sec = NULL;
                const char *n = NULL;

                if (url_unescape(sep + 1, dlen - (size_t) (sep + 1 - (char *) dec), &sec) >= 0)
                        n = named(r, sec, strlen(sec));
                strbuf_puts(b, "Basic base64(");
                put_values(r, b, id, strlen(id));
                strbuf_printf(b, ":<%s>)", n ?: "client_secret");
                ok = true;
        }
        explicit_wipe(dec, dlen);
        free(dec);
        return ok;
}

char *redact_header(const Redactor *r, const char *line, size_t max) {
        const char *colon = line ? strchr(line, ':') : NULL, *v, *n;
        size_t nlen;
        StrBuf b = {};

        if (!colon) {
                put_values(r, &b, line ?: "", line ? strlen(line) : 0);
                return finish(r, &b, max);
        }
        nlen = (size_t) (colon - line);
        for (v = colon + 1; *v == ' ' || *v == '\t'; v++)
                ;
        put_values(r, &b, line, nlen);
        strbuf_puts(&b, ": ");
        n = named(r, v, strlen(v));
        if (key_is(line, nlen, "Authorization") || key_is(line, nlen, "Proxy-Authorization")) {
                size_t scheme = strcspn(v, " ");

                if (scheme < strlen(v) && strncasecmp(v, "Basic ", 6) == 0 && put_basic(r, &b, v + 6))
                        ;
                else if (scheme < strlen(v) && scheme <= 20) {
                        const char *rest = v + scheme + 1;
                        const char *rn = named(r, rest, strlen(rest));

                        put_values(r, &b, v, scheme);
                        strbuf_printf(&b, " <%s>", rn ?: "redacted");
                } else
                        strbuf_printf(&b, "<%s>", n ?: "redacted");
        } else if (key_is(line, nlen, "Cookie") || key_is(line, nlen, "Set-Cookie"))
                strbuf_puts(&b, "<cookie>");
        else if (n)
                strbuf_printf(&b, "<%s>", n);
        else if (name_has(line, nlen, "token") || name_has(line, nlen, "secret") || name_has(line, nlen, "key") ||
                 name_has(line, nlen, "auth") || name_has(line, nlen, "session") || name_has(line, nlen, "password") ||
                 name_has(line, nlen, "signature"))
                strbuf_puts(&b, "<redacted>");
        else
                put_values(r, &b, v, strlen(v));
        return finish(r, &b, max);
}

/* ---- bodies --------------------------------------------------------- */

static json_t *redact_json(const Redactor *r, json_t *j, const char *key) {
        if (key && redact_key_is_secret(r, key, strlen(key)) && !json_is_null(j) && !json_is_boolean(j)) {
                const char *n = json_is_string(j) ? named(r, json_string_value(j), json_string_length(j)) : NULL;
                const char *pk = placeholder_name(key, strlen(key));
                char buf[PLACEHOLDER_NAME_MAX + 3];

                snprintf(buf, sizeof buf, "<%s>", n ?: pk ?: "redacted");
                return json_string(buf);
        }
        if (json_is_string(j)) {
                StrBuf b = {};
                json_t *s;

                put_values(r, &b, json_string_value(j), json_string_length(j));
                if (b.oom) {
                        strbuf_free(&b);
                        return NULL;
                }
                s = json_stringn(b.s ?: "", b.len);
                strbuf_free(&b);
                return s;
        }
        if (json_is_object(j)) {
                json_t *o = json_object(), *v;
                const char *k;

                json_object_foreach(j, k, v) {
                        json_t *c = redact_json(r, v, k);
                        StrBuf kb = {};
                        int q;

                        /* keys too: a provider may echo a secret as one */
                        put_values(r, &kb, k, strlen(k));
                        q = !o || !c || kb.oom ? -1 : json_object_set_new(o, kb.s ?: "", c);
                        if (q < 0 && o && c && !kb.oom)
                                c = NULL;   /* set_new took it */
                        strbuf_free(&kb);
                        if (q < 0) {
                                json_decref(c);
                                json_decref(o);
                                return NULL;
                        }
                }
                return o;
        }
        if (json_is_array(j)) {
                json_t *a = json_array(), *v;
                size_t i;

                json_array_foreach(j, i, v) {
                        json_t *c = redact_json(r, v, NULL);
                        if (!a || !c || json_array_append_new(a, c) < 0) {
                                json_decref(a);
                                return NULL;
                        }
                }
                return a;
        }
        return json_incref(j);
}

static bool looks_like_form(const char *s, size_t len) {
        /* "k=v&k=v": no spaces, no braces, an '=' */
        return len > 0 && memchr(s, '=', len) && !memchr(s, ' ', len) && !memchr(s, '{', len) &&
               !memchr(s, '<', len) && !memchr(s, '\n', len);
}

char *redact_body(const Redactor *r, const char *content_type, const char *body, size_t len, size_t max) {
        StrBuf b = {};
        json_t *j;

        if (!body)
                body = "", len = 0;
        j = len > 0 && (body[0] == '{' || body[0] == '[' || (content_type && strcasestr(content_type, "json")))
                    ? json_loadb(body, len, 0, NULL)
                    : NULL;
        if (j && (json_is_object(j) || json_is_array(j))) {
                json_t *red = redact_json(r, j, NULL);
                char *s = red ? json_dumps(red, JSON_COMPACT) : NULL;

                json_decref(red);
                json_decref(j);
                if (!s)
                        return NULL;
                strbuf_puts(&b, s);
                free(s);
                return finish(r, &b, max);
        }
        json_decref(j);
        if ((content_type && strcasestr(content_type, "x-www-form-urlencoded")) || looks_like_form(body, len))
                put_form(r, &b, body, len);
        else
                put_values(r, &b, body, len);
        return finish(r, &b, max);
}

/* ---- learning a request's secrets ------------------------------------ */

static void learn_form(Redactor *r, const char *s, size_t len) {
        const char *p = s, *end = s + len;

        while (p < end) {
                const char *amp = memchr(p, '&', (size_t) (end - p)), *stop = amp ?: end;
                const char *eq = memchr(p, '=', (size_t) (stop - p));
                _cleanup_free_ char *key = NULL;
                _cleanup_secret_ char *val = NULL;

                if (eq && url_unescape(p, (size_t) (eq - p), &key) >= 0 && redact_key_is_secret(r, key, strlen(key)) &&
                    url_unescape(eq + 1, (size_t) (stop - eq - 1), &val) >= 0 && placeholder_name(key, strlen(key)))
                        redactor_add(r, key, val);
                p = stop + 1;
        }
}

static void learn_json(Redactor *r, json_t *j, unsigned depth) {
        const char *k;
        json_t *v;
        size_t i;

        if (depth > 16)
                return;
        if (json_is_object(j)) {
                json_object_foreach(j, k, v) {
                        if (json_is_string(v) && redact_key_is_secret(r, k, strlen(k)) && placeholder_name(k, strlen(k)))
                                redactor_add(r, k, json_string_value(v));
                        else
                                learn_json(r, v, depth + 1);
                }
        } else if (json_is_array(j))
                json_array_foreach(j, i, v)
                        learn_json(r, v, depth + 1);
}

void redactor_learn_request(Redactor *r, const char *url, const char *const *headers, size_t n_headers,
                            const char *body, size_t body_len) {
        const char *q = url ? strchr(url, '?') : NULL;

        if (q) {
                const char *hash = strchr(q + 1, '#');
                learn_form(r, q + 1, hash ? (size_t) (hash - q - 1) : strlen(q + 1));
        }
        if (body && body_len > 0) {
                json_t *j = body[0] == '{' ? json_loadb(body, body_len, 0, NULL) : NULL;

                if (j)
                        learn_json(r, j, 0);
                else
                        learn_form(r, body, body_len);
                json_decref(j);
        }
        for (size_t i = 0; i < n_headers; i++) {
                const char *colon = strchr(headers[i], ':'), *v;
                _cleanup_free_ char *alpha = NULL;
                void *dec = NULL;
                size_t dlen = 0;

                if (!colon || !key_is(headers[i], (size_t) (colon - headers[i]), "Authorization"))
                        continue;
                for (v = colon + 1; *v == ' '; v++)
                        ;
                if (strncasecmp(v, "Basic ", 6) != 0) {
                        const char *sp = strchr(v, ' ');
                        if (sp)
                                redactor_add(r, "access_token", sp + 1);
                        continue;
                }
                alpha = strdup(v + 6);
                for (char *c = alpha; c && *c; c++)
                        *c = *c == '+' ? '-' : *c == '/' ? '_' : *c;
                if (alpha && b64url_decode(alpha, strlen(alpha), &dec, &dlen) >= 0) {
                        const char *sep = memchr(dec, ':', dlen);
                        _cleanup_secret_ char *sec = NULL;

                        if (sep && url_unescape(sep + 1, dlen - (size_t) (sep + 1 - (char *) dec), &sec) >= 0)
                                redactor_add(r, "client_secret", sec);
                        explicit_wipe(dec, dlen);
                        free(dec);
                }
        }
}
