/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the redactor (daemon/redact.h) that `tokenctl trace`
 * runs over provider answers (bodies, headers) and the requests sent.
 *
 * Input: byte 0 picks the function (text, URL, header, body as JSON, body
 * as a form) and a cut (0 or 1..255 bytes); byte 1 says whether the rest
 * is also learned as a request first; the rest is the text.
 *
 * Invariants:
 *   - no known secret (three fixed ones and whatever the input's own
 *     secret keys carried, when learned) appears in the output, raw
 *     (but for learned values holding '<' or '>': a placeholder beside
 *     the text around it may spell one);
 *   - the output holds no control character (it reaches terminals);
 *   - a cut output is at most the cut plus its " …[N bytes cut]" note
 *     (the note is left out of the secret check: text of ours that may
 *     complete a secret's prefix at the cut, but is no secret);
 *   - it is deterministic. */

#include "common/util.h"
#include "daemon/redact.h"

static const char *const secrets[] = { "SECRETVALUE1", "rt-ROTATING-42", "xoxb-ACCESS-77" };

static char *run(const Redactor *r, unsigned fn, size_t cut, const char *s, size_t n) {
        switch (fn) {
        case 0:
                return redact_text(r, s, n, cut);
        case 1:
                return redact_url(r, s, cut);
        case 2:
                return redact_header(r, s, cut);
        case 3:
                return redact_body(r, "application/json", s, n, cut);
        default:
                return redact_body(r, "application/x-www-form-urlencoded", s, n, cut);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        Redactor r = {};
        unsigned fn;
        size_t cut, n;
        char *s, *out, *out2;

        if (size < 2)
                return 0;
        fn = data[0] % 5;
        cut = data[0] / 5 % 2 ? (size_t) (data[0] % 200) + 24 : 0;
        n = size - 2;
        s = malloc(n + 1);
        if (!s)
                abort();
        memcpy(s, data + 2, n);
        s[n] = 0;
        n = strlen(s);   /* the daemon's strings are C strings */

        redactor_add(&r, "client_secret", secrets[0]);
        redactor_add(&r, "refresh_token", secrets[1]);
        redactor_add(&r, "access_token", secrets[2]);
        if (data[1] & 1) {
                const char *h[1] = { s };
                redactor_learn_request(&r, s, h, 1, s, n);
        }

        out = run(&r, fn, cut, s, n);
        out2 = run(&r, fn, cut, s, n);
        if (!out || !out2)
                abort();   /* only on OOM, which libFuzzer's limits make a crash */
        if (!streq(out, out2))
                abort();
        if (string_has_ctl(out))
                abort();
        if (cut > 0) {
                char *note = strstr(out, " …[");
                for (char *next; note && (next = strstr(note + 1, " …[")); note = next)
                        ;
                if (note && strstr(note, " bytes cut]") && streq(strstr(note, " bytes cut]"), " bytes cut]"))
                        *note = 0;
        }
        for (size_t i = 0; i < r.n; i++)
                if (!strpbrk(r.v[i].value, "<>") && strstr(out, r.v[i].value)) {
                        fprintf(stderr, "secret %zu left in output\n", i);
                        abort();
                }
        if (cut > 0 && strlen(out) > cut + 40)
                abort();
        free(out);
        free(out2);
        free(s);
        redactor_done(&r);
        return 0;
}
