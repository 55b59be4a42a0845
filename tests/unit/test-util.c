/* SPDX-License-Identifier: MIT */

#include "common/api.h"
#include "common/macro.h"
#include "common/util.h"

#define TESTS_MAIN
#include "tests.h"

static bool is_b64url_char(char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
               c == '_';
}

TEST(url_escape_unreserved_kept) {
        _cleanup_free_ char *e = url_escape("AZaz09-._~");

        CHECK_STREQ(e, "AZaz09-._~");
}

TEST(url_escape_reserved_encoded) {
        static const struct { const char *in, *out; } v[] = {
                { "", "" },
                { " ", "%20" },
                { "a b", "a%20b" },
                { "a+b", "a%2Bb" },
                { "k=v&x=y", "k%3Dv%26x%3Dy" },
                { "http://127.0.0.1:8421/oauth/callback?x=1#f",
                  "http%3A%2F%2F127.0.0.1%3A8421%2Foauth%2Fcallback%3Fx%3D1%23f" },
                { "100%", "100%25" },
                { "\xc3\xa9", "%C3%A9" },            /* UTF-8 e-acute, upper-case hex */
                { "\x01\x7f\xff", "%01%7F%FF" },
                { "!*'();:@$,/?[]", "%21%2A%27%28%29%3B%3A%40%24%2C%2F%3F%5B%5D" },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *e = url_escape(v[i].in);
                CHECK_STREQ(e, v[i].out);
        }
}

TEST(url_unescape_basic) {
        static const struct { const char *in, *out; } v[] = {
                { "", "" },
                { "abc", "abc" },
                { "a+b", "a b" },              /* form encoding: '+' is a space */
                { "a%20b", "a b" },
                { "%2B", "+" },
                { "%2b%2F%2f", "+//" },        /* either hex case */
                { "%C3%A9", "\xc3\xa9" },
                { "100%25", "100%" },
                { "%25%32%30", "%20" },        /* decoded once, not twice */
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *u = NULL;
                CHECK_EQ_INT(url_unescape(v[i].in, strlen(v[i].in), &u), 0);
                CHECK_STREQ(u, v[i].out);
        }
}

TEST(url_unescape_length_bounded) {
        _cleanup_free_ char *u = NULL;

        /* Only n bytes are looked at: the rest of the string is ignored. */
        CHECK_EQ_INT(url_unescape("ab%41zzz", 5, &u), 0);
        CHECK_STREQ(u, "abA");
}

TEST(url_unescape_rejects_bad_escapes) {
        static const char *const bad[] = {
                "%", "%4", "a%", "a%4", "%G0", "%0G", "%%", "%-1", "% 1", "%zz",
                "%00", "a%00b",          /* an encoded NUL would truncate the value */
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                char *u = (char *) "untouched";
                int r = url_unescape(bad[i], strlen(bad[i]), &u);
                if (r != -EINVAL)
                        fprintf(stderr, "  url_unescape(\"%s\") = %d\n", bad[i], r);
                CHECK_EQ_INT(r, -EINVAL);
                CHECK_STREQ(u, "untouched");
        }
}

TEST(url_unescape_rejects_raw_nul) {
        static const char in[] = { 'a', 0, 'b' };
        char *u = NULL;

        CHECK_EQ_INT(url_unescape(in, sizeof in, &u), -EINVAL);
        CHECK(!u);
}

TEST(url_escape_round_trip) {
        char all[256];
        _cleanup_free_ char *e = NULL, *u = NULL;

        /* Every byte but NUL, in order. */
        for (int i = 1; i < 256; i++)
                all[i - 1] = (char) i;
        all[255] = 0;
        e = url_escape(all);
        CHECK(e);
        if (!e)
                return;
        /* only unreserved characters and escapes remain: no '+' to misread */
        for (const char *p = e; *p; p++)
                CHECK(is_b64url_char(*p) || *p == '.' || *p == '~' || *p == '%');
        CHECK_EQ_INT(url_unescape(e, strlen(e), &u), 0);
        CHECK_STREQ(u, all);

        {
                static const char *const v[] = { "a b+c", "k=v&k2=v 2", "ü/ö?#", "~-._" };
                for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                        _cleanup_free_ char *e2 = url_escape(v[i]), *u2 = NULL;
                        CHECK_EQ_INT(url_unescape(e2, strlen(e2), &u2), 0);
                        CHECK_STREQ(u2, v[i]);
                }
        }
}

TEST(sha256_known_vectors) {
        char h[65];

        /* FIPS 180-2 appendix B.1 and the empty string. */
        CHECK_EQ_INT(sha256_hex("abc", 3, h), 0);
        CHECK_STREQ(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        CHECK_EQ_INT(sha256_hex("", 0, h), 0);
        CHECK_STREQ(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        CHECK_EQ_INT(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, h), 0);
        CHECK_STREQ(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
        CHECK_EQ_INT(strlen(h), 64);
}

TEST(format_timestamp_values) {
        char buf[64];

        CHECK_STREQ(format_timestamp(buf, sizeof buf, 0), "1970-01-01T00:00:00Z");
        CHECK_STREQ(format_timestamp(buf, sizeof buf, UINT64_C(1700000000) * USEC_PER_SEC),
                    "2023-11-14T22:13:20Z");
        /* sub-second part is dropped, not rounded */
        CHECK_STREQ(format_timestamp(buf, sizeof buf, UINT64_C(1700000000) * USEC_PER_SEC + 999999),
                    "2023-11-14T22:13:20Z");
        CHECK_STREQ(format_timestamp(buf, sizeof buf, UINT64_C(951782400) * USEC_PER_SEC),
                    "2000-02-29T00:00:00Z");
        CHECK_STREQ(format_timestamp(buf, sizeof buf, UINT64_C(253402300799) * USEC_PER_SEC),
                    "9999-12-31T23:59:59Z");
}

TEST(format_timestamp_small_buffer) {
        char buf[21], tiny[8] = "garbage";

        /* exactly fits: 20 characters and the NUL */
        CHECK_STREQ(format_timestamp(buf, sizeof buf, 0), "1970-01-01T00:00:00Z");
        /* too small: an empty string, never a truncated time */
        CHECK(format_timestamp(tiny, sizeof tiny, 0) == tiny);
        CHECK_STREQ(tiny, "");
}

TEST(connection_name_table) {
        char max[CONNECTION_NAME_MAX + 2];
        static const struct { const char *name; bool ok; } v[] = {
                { "a", true },
                { "github", true },
                { "My-Conn_1.prod", true },
                { "...", true },
                { ".hidden", true },
                { "a..b", true },
                { "0", true },
                { "", false },
                { ".", false },
                { "..", false },
                { "a/b", false },
                { "/", false },
                { "a b", false },
                { "a%20b", false },
                { "a+b", false },
                { "a:b", false },
                { "a\\b", false },
                { "a\nb", false },
                { "\xc3\xa9", false },
                { "a?b", false },
                { "a#b", false },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                if (connection_name_valid(v[i].name) != v[i].ok)
                        fprintf(stderr, "  connection_name_valid(\"%s\") != %d\n", v[i].name, v[i].ok);
                CHECK(connection_name_valid(v[i].name) == v[i].ok);
        }

        memset(max, 'x', CONNECTION_NAME_MAX);
        max[CONNECTION_NAME_MAX] = 0;
        CHECK(connection_name_valid(max));
        max[CONNECTION_NAME_MAX] = 'x';
        max[CONNECTION_NAME_MAX + 1] = 0;
        CHECK(!connection_name_valid(max));
}

TEST(random_token_length_and_charset) {
        static const struct { size_t n, len; } v[] = {
                { 0, 0 }, { 1, 2 }, { 2, 3 }, { 3, 4 }, { 16, 22 }, { 32, 43 }, { 128, 171 },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                _cleanup_free_ char *t = NULL;

                CHECK_EQ_INT(random_token(v[i].n, &t), 0);
                CHECK(t);
                if (!t)
                        continue;
                CHECK_EQ_INT(strlen(t), v[i].len);
                for (const char *p = t; *p; p++)
                        CHECK(is_b64url_char(*p));
        }
}

TEST(random_token_too_big) {
        char *t = NULL;

        CHECK_EQ_INT(random_token(129, &t), -E2BIG);
        CHECK(!t);
}

TEST(random_token_unique) {
        enum { N = 256 };
        char *t[N] = {};

        for (size_t i = 0; i < N; i++)
                CHECK_EQ_INT(random_token(16, &t[i]), 0);
        for (size_t i = 0; i < N; i++)
                for (size_t j = i + 1; j < N; j++)
                        CHECK(t[i] && t[j] && !streq(t[i], t[j]));
        for (size_t i = 0; i < N; i++)
                free(t[i]);
}

TEST(random_bytes_fill) {
        uint8_t a[64] = {}, b[64] = {};

        CHECK_EQ_INT(random_bytes(a, sizeof a), 0);
        CHECK_EQ_INT(random_bytes(b, sizeof b), 0);
        CHECK(memcmp(a, b, sizeof a) != 0);
        CHECK(random_u64() != random_u64());
}

TEST(strbuf_basic) {
        StrBuf b = {};
        _cleanup_free_ char *s = NULL;

        strbuf_puts(&b, "hello");
        strbuf_append(&b, ", world!!!", 7);
        strbuf_printf(&b, " %d-%s", 42, "x");
        CHECK_EQ_INT(b.len, strlen("hello, world 42-x"));
        CHECK_STREQ(b.s, "hello, world 42-x");
        CHECK(!b.oom);
        s = strbuf_steal(&b);
        CHECK_STREQ(s, "hello, world 42-x");
        /* stolen: the buffer is empty and reusable */
        CHECK(!b.s);
        CHECK_EQ_INT(b.len, 0);
        CHECK_EQ_INT(b.cap, 0);
}

TEST(strbuf_empty_steal) {
        StrBuf b = {};
        _cleanup_free_ char *s = strbuf_steal(&b);

        CHECK_STREQ(s, "");
}

TEST(strbuf_grows) {
        StrBuf b = {};
        _cleanup_free_ char *s = NULL;
        char big[2000];

        /* many small appends */
        for (int i = 0; i < 1000; i++)
                strbuf_append(&b, "ab", 2);
        CHECK_EQ_INT(b.len, 2000);
        CHECK(b.cap > b.len);
        CHECK_EQ_INT(strlen(b.s), 2000);

        /* a printf larger than its stack buffer */
        memset(big, 'z', sizeof big - 1);
        big[sizeof big - 1] = 0;
        strbuf_printf(&b, "[%s]", big);
        CHECK_EQ_INT(b.len, 2000 + 2 + 1999);
        CHECK(b.s[2000] == '[');
        CHECK(b.s[b.len - 1] == ']');
        CHECK(b.s[b.len] == 0);
        s = strbuf_steal(&b);
        CHECK_EQ_INT(strlen(s), 4001);
}

TEST(strbuf_oom_sticky) {
        StrBuf b = {};

        strbuf_puts(&b, "abc");
        b.oom = true;          /* as after a failed allocation */
        strbuf_puts(&b, "def");
        CHECK_EQ_INT(b.len, 3);
        CHECK(!strbuf_steal(&b));
        /* steal after OOM freed the buffer */
        CHECK(!b.s);
        CHECK(!b.oom);
}

TEST(strbuf_free_resets) {
        StrBuf b = {};

        strbuf_puts(&b, "secret");
        strbuf_free(&b);
        CHECK(!b.s);
        CHECK_EQ_INT(b.len, 0);
        strbuf_free(&b);       /* twice is fine */
        strbuf_puts(&b, "x");
        CHECK_STREQ(b.s, "x");
        strbuf_free(&b);
}

/* The lock-free formatter against gmtime_r + strftime. */
TEST(format_timestamp_matches_gmtime) {
        uint64_t x = 88172645463325252ULL;
        unsigned bad = 0;

        for (unsigned i = 0; i < 200000; i++) {
                char mine[32], ref[32];
                struct tm tm;
                time_t s;

                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s = (time_t) (x % 253402300800ULL);   /* 1970 .. 9999 */
                if (i < 4)
                        s = (time_t[]) { 0, 951782400, 4107542399, 253402300799 }[i];
                gmtime_r(&s, &tm);
                strftime(ref, sizeof ref, "%Y-%m-%dT%H:%M:%SZ", &tm);
                format_timestamp(mine, sizeof mine, (usec_t) s * USEC_PER_SEC);
                if (strcmp(mine, ref) != 0 && bad++ < 5)
                        fprintf(stderr, "  %lld: %s != %s\n", (long long) s, mine, ref);
        }
        CHECK_EQ_INT(bad, 0);
}

TEST(strbuf_u64_and_json_escape) {
        StrBuf b = {};
        char *s;

        strbuf_u64(&b, 0);
        strbuf_puts(&b, " ");
        strbuf_u64(&b, UINT64_MAX);
        strbuf_puts(&b, " ");
        strbuf_json_escape(&b, "a\"b\\c\n\x01", 7);
        s = strbuf_steal(&b);
        CHECK_STREQ(s, "0 18446744073709551615 a\\\"b\\\\c\\n\\u0001");
        free(s);
}

/* The escape that skips 8 clean bytes a step against a byte-at-a-time
 * reference: every byte value at every offset of a clean run of every
 * length, so each of the word test's three terms is hit in each lane. */
static void json_escape_ref(StrBuf *b, const unsigned char *s, size_t n) {
        for (size_t i = 0; i < n; i++) {
                unsigned char ch = s[i];
                char u[8];

                if (ch == '"')
                        strbuf_puts(b, "\\\"");
                else if (ch == '\\')
                        strbuf_puts(b, "\\\\");
                else if (ch == '\n')
                        strbuf_puts(b, "\\n");
                else if (ch == '\r')
                        strbuf_puts(b, "\\r");
                else if (ch == '\t')
                        strbuf_puts(b, "\\t");
                else if (ch < 0x20) {
                        snprintf(u, sizeof u, "\\u%04x", ch);
                        strbuf_puts(b, u);
                } else
                        strbuf_append(b, (const char *) &ch, 1);
        }
}

TEST(json_escape_word_at_a_time_matches_bytes) {
        unsigned char in[48];
        unsigned bad = 0;

        for (unsigned len = 1; len <= sizeof in; len++)
                for (unsigned at = 0; at < len; at++)
                        for (unsigned v = 0; v < 256; v++) {
                                StrBuf got = {}, want = {};

                                /* a clean run with bytes near the edges: 0x21, 0x7f, 0x80, 0xff */
                                for (unsigned i = 0; i < len; i++)
                                        in[i] = (unsigned char[]) { 'a', 0x21, 0x7f, 0x80, 0xff, '~', '0', 0x5b }[i % 8];
                                /* a second one further on, past a 16-byte block: the scan resumes */
                                if (len > 24 && v % 3 == 0)
                                        in[(at + 17) % len] = (unsigned char[]) { '"', '\\', 0x1f }[v % 9 / 3];
                                in[at] = (unsigned char) v;
                                strbuf_json_escape(&got, (const char *) in, len);
                                json_escape_ref(&want, in, len);
                                if ((got.len != want.len || memcmp(got.s, want.s, got.len) != 0) && bad++ < 5)
                                        fprintf(stderr, "  len %u, byte 0x%02x at %u: %s != %s\n", len, v, at, got.s,
                                                want.s);
                                free(got.s);
                                free(want.s);
                        }
        CHECK_EQ_INT(bad, 0);
}

TEST(parse_timestamp_forms) {
        static const struct {
                const char *s;
                int r;
                usec_t t;
        } v[] = {
                { "1970-01-01T00:00:00Z", 0, 0 },
                { "2026-11-26T19:02:11Z", 0, 1795719731ULL * USEC_PER_SEC },
                { "2026-11-26t19:02:11z", 0, 1795719731ULL * USEC_PER_SEC },
                { "2026-11-26 19:02:11Z", 0, 1795719731ULL * USEC_PER_SEC },
                { "2026-11-26T20:02:11+01:00", 0, 1795719731ULL * USEC_PER_SEC },
                { "2026-11-26T18:02:11-01:00", 0, 1795719731ULL * USEC_PER_SEC },
                { "2026-11-26T19:02:11.5Z", 0, 1795719731ULL * USEC_PER_SEC + 500000 },
                { "2000-02-29T00:00:00Z", 0, 951782400ULL * USEC_PER_SEC },
                { "2026-11-26T19:02:11", -EINVAL, 0 },
                { "2026-11-26", -EINVAL, 0 },
                { "2026-13-01T00:00:00Z", -EINVAL, 0 },
                { "2026-11-26T19:02:11.Z", -EINVAL, 0 },
                { "2026-11-26T19:02:11Zjunk", -EINVAL, 0 },
                { "1969-12-31T23:59:59Z", -EINVAL, 0 },
                { "", -EINVAL, 0 },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                usec_t t = 0;
                int r = parse_timestamp(v[i].s, &t);
                if (r != v[i].r || (r == 0 && t != v[i].t))
                        fprintf(stderr, "  %s -> %d %" PRIu64 "\n", v[i].s, r, t);
                CHECK_EQ_INT(r, v[i].r);
                if (r == 0)
                        CHECK(t == v[i].t);
        }
}

TEST(random_uuid_v4) {
        char a[37], b[37], s[13];

        CHECK_EQ_INT(random_uuid(a), 0);
        CHECK_EQ_INT(random_uuid(b), 0);
        CHECK(strlen(a) == 36 && a[8] == '-' && a[13] == '-' && a[14] == '4' && a[18] == '-' && a[23] == '-');
        CHECK(strchr("89ab", a[19]));
        CHECK(!streq(a, b));
        CHECK_EQ_INT(random_lower(s, 12), 0);
        CHECK(strlen(s) == 12 && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789") == 12);
}

TEST(random_fast_spreads) {
        unsigned odd = 0, same = 0;
        uint64_t prev = random_fast_u64();

        for (unsigned i = 0; i < 10000; i++) {
                uint64_t v = random_fast_u64();

                odd += v & 1;
                same += v == prev;
                prev = v;
        }
        CHECK(odd > 4500 && odd < 5500);
        CHECK_EQ_INT(same, 0);
}

TEST(text_escape_controls_and_utf8) {
        char buf[64];
        _cleanup_free_ char *d = NULL, *e = NULL;

        /* CR, LF, ESC, other C0, DEL and C1 become escapes; UTF-8 stays. */
        text_escape(buf, sizeof buf, "a\r\nb\x1b[31m\x01\x7f\xc2\x85\xc3\xa9", 15);
        CHECK_STREQ(buf, "a\\r\\nb\\e[31m\\x01\\x7f\\u0085\xc3\xa9");
        /* Invalid bytes, an overlong form, a surrogate: U+FFFD each. */
        text_escape(buf, sizeof buf, "x\xff\xc0\xafy\xed\xa0\x80", 8);
        CHECK_STREQ(buf, "x\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdy\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
        /* A character cut off at the end of the input is replaced too. */
        text_escape(buf, sizeof buf, "\xc3\xa9\xc3", 3);
        CHECK_STREQ(buf, "\xc3\xa9\xef\xbf\xbd");
        /* Bounded on character and escape boundaries. */
        CHECK_EQ_INT(text_escape(buf, 4, "\xc3\xa9\xc3\xa9", 4), 2);
        CHECK_STREQ(buf, "\xc3\xa9");
        CHECK_EQ_INT(text_escape(buf, 4, "ab\n", 3), 2);
        CHECK_STREQ(buf, "ab");
        /* Idempotent. */
        d = text_escape_dup("l1\nl2\x1b", 100);
        e = text_escape_dup(d, 100);
        CHECK_STREQ(d, "l1\\nl2\\e");
        CHECK_STREQ(e, d);
        free(d);
        /* 300 'é' cut at 511 bytes: 255 whole characters. */
        {
                char in[601];
                for (int i = 0; i < 300; i++)
                        in[2 * i] = (char) 0xc3, in[2 * i + 1] = (char) 0xa9;
                in[600] = 0;
                d = text_escape_dup(in, 511);
                CHECK_EQ_INT(strlen(d), 510);
        }
}

/* The per-thread date cache: runs of times within a day (its hits),
 * day boundaries either way, and a time past 9999 between them (which
 * must neither be cached nor spoil the cached day). */
TEST(format_timestamp_day_cache) {
        static const time_t base[] = { 0, 951782400 - 1, 1700000000, 4107542399, 253402300799 - 5 };
        unsigned bad = 0;

        for (size_t b = 0; b < ELEMENTSOF(base); b++)
                for (int step = -3; step <= 6; step++) {
                        time_t s = base[b] + (time_t) step * 1;
                        char mine[32], ref[32], big[32];
                        struct tm tm;

                        if (s < 0 || s > 253402300799)
                                continue;
                        format_timestamp(mine, sizeof mine, (usec_t) s * USEC_PER_SEC);
                        gmtime_r(&s, &tm);
                        strftime(ref, sizeof ref, "%Y-%m-%dT%H:%M:%SZ", &tm);
                        if (strcmp(mine, ref) != 0 && bad++ < 5)
                                fprintf(stderr, "  %lld: %s != %s\n", (long long) s, mine, ref);
                        /* a day later and back: the cache follows */
                        s += 86400 * (step & 1);
                        if (s <= 253402300799) {
                                format_timestamp(mine, sizeof mine, (usec_t) s * USEC_PER_SEC);
                                gmtime_r(&s, &tm);
                                strftime(ref, sizeof ref, "%Y-%m-%dT%H:%M:%SZ", &tm);
                                if (strcmp(mine, ref) != 0 && bad++ < 5)
                                        fprintf(stderr, "  %lld: %s != %s\n", (long long) s, mine, ref);
                        }
                        CHECK_STREQ(format_timestamp(big, sizeof big, UINT64_C(253402300800) * USEC_PER_SEC), "");
                }
        CHECK_EQ_INT(bad, 0);
}
