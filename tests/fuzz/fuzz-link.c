/* SPDX-License-Identifier: MIT */
/* libFuzzer target: what daemon/links.c reads from outside: the token of
 * a re-authorization link (the path of GET/POST /oauth/start/TOKEN, from
 * anyone who can reach the callback listener), tokenctl's --valid, and the
 * origin of a provider's authorize_url that goes into the page's CSP.
 *
 * Input: byte 0 picks the function, the rest is the string (copied into a
 * buffer of exactly its length plus the NUL, so ASan flags any read past
 * it; a NUL inside ends the string, as a C string would).
 *
 * Invariants, each against a reference written out plainly:
 *   - link_token_valid(): exactly 43 characters of A-Z a-z 0-9 - _;
 *     link_token_hash() succeeds exactly then, with 64 lowercase hex digits
 *     equal to sha256_hex() of the token;
 *   - link_valid_parse(): 1 to 9 digits and at most one unit of s m h d;
 *     -ERANGE when the value is 0 or beyond 30 days (computed without
 *     overflow), else the value in microseconds;
 *   - link_url_origin(): on success a prefix of the URL, http:// or
 *     https:// followed by a non-empty host of [A-Za-z0-9.:[]-] only, and
 *     the URL goes on with nothing, '/', '?' or '#': nothing that could end
 *     a CSP source (space, ';', ',', quotes) ever comes through;
 *   - every call is deterministic. */

#include "common/util.h"
#include "daemon/link-token.h"

static void fail(const char *what, const char *s) {
        fprintf(stderr, "fuzz-link: %s: \"%.200s\"\n", what, s);
        abort();
}

static bool ref_token(const char *s) {
        size_t n = 0;

        for (; s[n]; n++) {
                char c = s[n];
                if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                      c == '_'))
                        return false;
        }
        return n == 43;
}

static int ref_valid(const char *s, usec_t *ret) {
        unsigned __int128 v = 0, unit = 1000000;
        size_t i = 0;

        while (s[i] >= '0' && s[i] <= '9') {
                v = v * 10 + (unsigned) (s[i] - '0');
                i++;
        }
        if (i == 0 || i > 9)
                return -EINVAL;
        if (s[i]) {
                if (s[i + 1])
                        return -EINVAL;
                if (s[i] == 's')
                        unit = 1000000;
                else if (s[i] == 'm')
                        unit = 60ULL * 1000000;
                else if (s[i] == 'h')
                        unit = 3600ULL * 1000000;
                else if (s[i] == 'd')
                        unit = 86400ULL * 1000000;
                else
                        return -EINVAL;
        }
        if (v == 0 || v * unit > (unsigned __int128) 30 * 86400 * 1000000)
                return -ERANGE;
        *ret = (usec_t) (v * unit);
        return 0;
}

static void check_origin(const char *s) {
        char *o = NULL, *o2 = NULL;
        int r = link_url_origin(s, &o), r2 = link_url_origin(s, &o2);
        const char *host;
        size_t n;

        if (r != r2 || (r == 0) != !!o || (r == 0 && strcmp(o, o2) != 0))
                fail("link_url_origin is not deterministic", s);
        if (r < 0) {
                if (r != -EINVAL)
                        fail("link_url_origin: an error other than -EINVAL", s);
                return;
        }
        n = strlen(o);
        if (strncmp(s, o, n) != 0)
                fail("the origin is not a prefix of the URL", s);
        if (!(s[n] == 0 || s[n] == '/' || s[n] == '?' || s[n] == '#'))
                fail("the origin stops inside the authority", s);
        host = startswith(o, "https://") ?: startswith(o, "http://");
        if (!host || !*host)
                fail("the origin has no http(s) scheme or no host", s);
        for (const char *p = host; *p; p++)
                if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
                      *p == '.' || *p == '-' || *p == ':' || *p == '[' || *p == ']'))
                        fail("the origin holds a character a CSP source may not", s);
        free(o);
        free(o2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *s, h[65], want[65];
        usec_t v = 0, w = 0;
        int r, rr;

        if (size < 1 || size > 4096)
                return 0;
        s = malloc(size);
        if (!s)
                abort();
        memcpy(s, data + 1, size - 1);
        s[size - 1] = 0;

        switch (data[0] % 3) {
        case 0:
                if (link_token_valid(s) != ref_token(s))
                        fail("link_token_valid disagrees with the reference", s);
                r = link_token_hash(s, h);
                if (ref_token(s)) {
                        if (r != 0 || sha256_hex(s, strlen(s), want) < 0 || strcmp(h, want) != 0 ||
                            strspn(h, "0123456789abcdef") != 64 || h[64])
                                fail("link_token_hash of a valid token", s);
                } else if (r != -EINVAL)
                        fail("link_token_hash accepted an invalid token", s);
                break;
        case 1:
                r = link_valid_parse(s, &v);
                rr = ref_valid(s, &w);
                if (r != rr || (r == 0 && v != w))
                        fail("link_valid_parse disagrees with the reference", s);
                if (r == 0 && (v < 1000000 || v > LINK_VALID_MAX))
                        fail("link_valid_parse out of bounds", s);
                break;
        default:
                check_origin(s);
        }
        free(s);
        return 0;
}
