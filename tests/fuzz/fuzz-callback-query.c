/* SPDX-License-Identifier: MIT */
/* libFuzzer target: callback_query_parse() (daemon/route.h), the OAuth
 * callback's query string as daemon/callback.c gets it from the request
 * line.
 *
 * Input: the query string (what follows '?'), handed over in a buffer of
 * exactly its size, without a NUL after it.
 *
 * Invariants, for code_param "code" and "auth_code":
 *   - the result is 0 or one of the documented errors; a query over
 *     CALLBACK_QUERY_MAX is -EMSGSIZE; on an error ret is untouched;
 *   - it agrees with a small reference parser (split on '&', first '=',
 *     decode, keep four names, refuse duplicates and long values): the
 *     same inputs are accepted, and every kept value has the reference's
 *     bytes and length, so it holds no NUL and is at most
 *     CALLBACK_VALUE_MAX bytes;
 *   - it is deterministic: the same input parses to the same values;
 *   - re-encoding the kept values with url_escape() into a new query and
 *     parsing that gives the same values again (or -EMSGSIZE when the
 *     escaped query outgrows CALLBACK_QUERY_MAX);
 *   - state, error, error_description and iss do not depend on code_param. */

#include "common/util.h"
#include "daemon/route.h"

#define N_KEPT 5

typedef struct RefValue {
        bool set;
        size_t len;
        char *bytes;
} RefValue;

static int hexval(uint8_t c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        c |= 0x20;
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

/* Form decoding into out (n bytes at most); -1 on a bad escape or NUL. */
static ssize_t ref_decode(const uint8_t *s, size_t n, char *out) {
        size_t o = 0;

        for (size_t i = 0; i < n; i++) {
                if (s[i] == 0)
                        return -1;
                if (s[i] == '%') {
                        int hi = i + 1 < n ? hexval(s[i + 1]) : -1, lo = i + 2 < n ? hexval(s[i + 2]) : -1;
                        if (hi < 0 || lo < 0 || hi + lo == 0)
                                return -1;
                        out[o++] = (char) (hi << 4 | lo);
                        i += 2;
                } else
                        out[o++] = s[i] == '+' ? ' ' : (char) s[i];
        }
        return (ssize_t) o;
}

static void ref_free(RefValue v[N_KEPT]) {
        for (size_t j = 0; j < N_KEPT; j++)
                free(v[j].bytes);
}

/* 0 and the kept values, or -1. */
static int ref_parse(const uint8_t *d, size_t len, const char *code_param, RefValue v[N_KEPT]) {
        const char *names[N_KEPT] = { "state", code_param, "error", "error_description", "iss" };
        size_t start = 0, params = 0;
        char *key, *val;

        memset(v, 0, sizeof(RefValue) * N_KEPT);
        if (len > CALLBACK_QUERY_MAX)
                return -1;
        key = malloc(len + 1);
        val = malloc(len + 1);
        if (!key || !val)
                abort();
        while (start <= len) {
                size_t end = start, eq;
                ssize_t kn, vn;

                while (end < len && d[end] != '&')
                        end++;
                if (end > start) {
                        if (++params > CALLBACK_PARAMS_MAX)
                                goto fail;
                        for (eq = start; eq < end && d[eq] != '='; eq++)
                                ;
                        kn = ref_decode(d + start, eq - start, key);
                        vn = eq < end ? ref_decode(d + eq + 1, end - eq - 1, val) : 0;
                        if (kn < 0 || vn < 0)
                                goto fail;
                        for (size_t j = 0; j < N_KEPT; j++) {
                                if (!names[j] || strlen(names[j]) != (size_t) kn || memcmp(names[j], key, kn) != 0)
                                        continue;
                                if (v[j].set || vn > CALLBACK_VALUE_MAX)
                                        goto fail;
                                v[j].set = true;
                                v[j].len = (size_t) vn;
                                v[j].bytes = malloc((size_t) vn + 1);
                                if (!v[j].bytes)
                                        abort();
                                memcpy(v[j].bytes, val, (size_t) vn);
                        }
                }
                start = end + 1;
        }
        free(key);
        free(val);
        return 0;
fail:
        free(key);
        free(val);
        ref_free(v);
        memset(v, 0, sizeof(RefValue) * N_KEPT);
        return -1;
}

static char **slot(CallbackQuery *q, size_t j) {
        char **s[N_KEPT] = { &q->state, &q->code, &q->error, &q->error_description, &q->iss };
        return s[j];
}

static bool same_values(CallbackQuery *a, CallbackQuery *b) {
        for (size_t j = 0; j < N_KEPT; j++)
                if (!streq_ptr(*slot(a, j), *slot(b, j)))
                        return false;
        return true;
}

static void fail(const char *what, const char *code_param) {
        fprintf(stderr, "fuzz-callback-query: %s (code_param %s)\n", what, code_param);
        abort();
}

/* Writes the kept values back as a query string and parses it again. */
static void check_reencode(CallbackQuery *q, const char *code_param) {
        const char *names[N_KEPT] = { "state", code_param, "error", "error_description", "iss" };
        CallbackQuery again = {};
        StrBuf b = {};
        char *s;
        int r;

        for (size_t j = 0; j < N_KEPT; j++) {
                char *e;

                if (!*slot(q, j))
                        continue;
                e = url_escape(*slot(q, j));
                if (!e)
                        abort();
                strbuf_printf(&b, "%s%s=", b.len > 0 ? "&" : "", names[j]);
                strbuf_puts(&b, e);
                free(e);
        }
        s = strbuf_steal(&b);
        if (!s) {
                if (b.oom)
                        abort();
                s = strdup("");   /* nothing was kept */
                if (!s)
                        abort();
        }
        r = callback_query_parse(s, strlen(s), code_param, &again);
        if (strlen(s) > CALLBACK_QUERY_MAX) {
                if (r != -EMSGSIZE)
                        fail("an escaped query over the limit was not refused", code_param);
        } else if (r < 0)
                fail("the re-encoded values do not parse", code_param);
        else if (!same_values(q, &again))
                fail("the re-encoded values parse differently", code_param);
        callback_query_done(&again);
        free(s);
}

static int check(const char *query, size_t size, const char *code_param, CallbackQuery *ret) {
        static char sentinel;
        CallbackQuery q, q2 = {};
        RefValue ref[N_KEPT];
        int r, r2, rr;

        q = (CallbackQuery) { .state = &sentinel, .code = &sentinel, .error = &sentinel,
                              .error_description = &sentinel, .iss = &sentinel };
        r = callback_query_parse(query, size, code_param, &q);
        if (r != 0 && r != -EMSGSIZE && r != -E2BIG && r != -EINVAL && r != -ENOTUNIQ)
                fail("undocumented result", code_param);
        if (size > CALLBACK_QUERY_MAX && r != -EMSGSIZE)
                fail("an oversized query was not refused with -EMSGSIZE", code_param);

        rr = ref_parse((const uint8_t *) query, size, code_param, ref);
        if ((r == 0) != (rr == 0)) {
                fprintf(stderr, "callback_query_parse() = %d, reference %d\n", r, rr);
                fail("parser and reference disagree", code_param);
        }
        if (r < 0) {
                for (size_t j = 0; j < N_KEPT; j++)
                        if (*slot(&q, j) != &sentinel)
                                fail("ret changed on an error", code_param);
                *ret = (CallbackQuery) {};
                return r;
        }
        for (size_t j = 0; j < N_KEPT; j++) {
                const char *got = *slot(&q, j);

                if (!got != !ref[j].set)
                        fail("a value is kept by only one of parser and reference", code_param);
                if (!got)
                        continue;
                /* strlen() stops at a NUL: equal lengths mean there is none. */
                if (strlen(got) != ref[j].len || memcmp(got, ref[j].bytes, ref[j].len) != 0)
                        fail("a value differs from the reference", code_param);
                if (strlen(got) > CALLBACK_VALUE_MAX)
                        fail("a value is over CALLBACK_VALUE_MAX", code_param);
        }
        ref_free(ref);
        if (!code_param && q.code)
                fail("a code without code_param", "(null)");

        r2 = callback_query_parse(query, size, code_param, &q2);
        if (r2 != r || !same_values(&q, &q2))
                fail("not deterministic", code_param);
        callback_query_done(&q2);

        check_reencode(&q, code_param);
        *ret = q;
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        /* Exactly size bytes: ASan flags any read past them. */
        char *query = malloc(size ?: 1);
        CallbackQuery a, b, none;
        int ra, rb, rn;

        if (!query)
                abort();
        memcpy(query, data, size);
        ra = check(query, size, "code", &a);
        rb = check(query, size, "auth_code", &b);
        rn = check(query, size, NULL, &none);
        /* A duplicate code is refused with one code_param and not with
         * another; what both accept, they read alike. */
        if (ra == 0 && rb == 0 &&
            (!streq_ptr(a.state, b.state) || !streq_ptr(a.error, b.error) ||
             !streq_ptr(a.error_description, b.error_description)))
                fail("state or error depend on code_param", "code/auth_code");
        if (ra == 0 && rn == 0 &&
            (!streq_ptr(a.state, none.state) || !streq_ptr(a.error, none.error) ||
             !streq_ptr(a.error_description, none.error_description)))
                fail("state or error depend on code_param", "code/NULL");
        if (ra == 0 && rn != 0)
                fail("refused without a code_param, accepted with one", "code/NULL");
        callback_query_done(&a);
        callback_query_done(&b);
        callback_query_done(&none);
        free(query);
        return 0;
}
