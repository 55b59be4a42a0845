/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "common/api.h"
#include "common/b64.h"
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "common/util.h"

int random_bytes(void *p, size_t n) {
        uint8_t *q = p;

        while (n > 0) {
                ssize_t k = getrandom(q, n, 0);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                q += k;
                n -= (size_t) k;
        }
        return 0;
}

uint64_t random_u64(void) {
        uint64_t u = 0;

        assert(random_bytes(&u, sizeof u) == 0);
        return u;
}

uint64_t random_fast_u64(void) {
        static __thread uint64_t state;
        static __thread bool seeded;
        uint64_t z;

        if (!seeded) {
                state = random_u64();
                seeded = true;
        }
        z = (state += UINT64_C(0x9e3779b97f4a7c15));
        z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
        return z ^ (z >> 31);
}

int random_token(size_t n, char **ret) {
        uint8_t buf[128];
        int r;

        if (n > sizeof buf)
                return -E2BIG;
        r = random_bytes(buf, n);
        if (r < 0)
                return r;
        r = b64url_encode(buf, n, ret);
        explicit_wipe(buf, sizeof buf);
        return r;
}

char *url_escape(const char *s) {
        static const char hex[] = "0123456789ABCDEF";
        size_t n = strlen(s);
        char *out = malloc(n * 3 + 1), *o = out;

        if (!out)
                return NULL;
        for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
                if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
                    *p == '-' || *p == '.' || *p == '_' || *p == '~')
                        *o++ = (char) *p;
                else {
                        *o++ = '%';
                        *o++ = hex[*p >> 4];
                        *o++ = hex[*p & 15];
                }
        }
        *o = 0;
        return out;
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

int url_unescape(const char *s, size_t n, char **ret) {
        char *out = malloc(n + 1), *o = out;

        if (!out)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                if (s[i] == '%') {
                        int a, b;
                        if (i + 2 >= n || (a = unhex(s[i + 1])) < 0 || (b = unhex(s[i + 2])) < 0 ||
                            (a == 0 && b == 0)) {
                                free(out);
                                return -EINVAL;
                        }
                        *o++ = (char) (a << 4 | b);
                        i += 2;
                } else if (s[i] == '+')
                        *o++ = ' ';
                else if (s[i] == 0) {
                        free(out);
                        return -EINVAL;
                } else
                        *o++ = s[i];
        }
        *o = 0;
        *ret = out;
        return 0;
}

int sha256_hex(const void *p, size_t n, char ret[static 65]) {
        static const char hex[] = "0123456789abcdef";
        unsigned char md[SHA256_DIGEST_LENGTH];

        if (!EVP_Digest(p, n, md, NULL, EVP_sha256(), NULL))
                return -EIO;
        for (size_t i = 0; i < sizeof md; i++) {
                ret[2 * i] = hex[md[i] >> 4];
                ret[2 * i + 1] = hex[md[i] & 15];
        }
        ret[64] = 0;
        return 0;
}

static int digits(const char *s, size_t n, int *ret) {
        int v = 0;

        for (size_t i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return -EINVAL;
                v = v * 10 + (s[i] - '0');
        }
        *ret = v;
        return 0;
}

int parse_timestamp(const char *s, usec_t *ret) {
        int y, mo, d, h, mi, sec, oh = 0, om = 0, sign = 0;
        int64_t days, t;
        usec_t frac = 0;
        const char *p;

        if (strlen(s) < 20 || digits(s, 4, &y) < 0 || s[4] != '-' || digits(s + 5, 2, &mo) < 0 || s[7] != '-' ||
            digits(s + 8, 2, &d) < 0 || !strchr("Tt ", s[10]) || s[10] == 0 || digits(s + 11, 2, &h) < 0 ||
            s[13] != ':' || digits(s + 14, 2, &mi) < 0 || s[16] != ':' || digits(s + 17, 2, &sec) < 0)
                return -EINVAL;
        if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
                return -EINVAL;
        p = s + 19;
        if (*p == '.') {
                usec_t scale = USEC_PER_SEC / 10;
                p++;
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                for (; *p >= '0' && *p <= '9'; p++) {
                        frac += (usec_t) (*p - '0') * scale;
                        scale /= 10;
                }
        }
        if (*p == 'Z' || *p == 'z')
                p++;
        else if (*p == '+' || *p == '-') {
                sign = *p == '-' ? -1 : 1;
                if (digits(p + 1, 2, &oh) < 0 || p[3] != ':' || digits(p + 4, 2, &om) < 0 || oh > 23 || om > 59)
                        return -EINVAL;
                p += 6;
        } else
                return -EINVAL;
        if (*p)
                return -EINVAL;
        /* civil date to days, after Howard Hinnant */
        {
                int64_t yy = mo <= 2 ? y - 1 : y, era = yy / 400, yoe = yy - era * 400;
                int64_t doy = (153 * (mo > 2 ? mo - 3 : mo + 9) + 2) / 5 + d - 1;
                int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
                days = era * 146097 + doe - 719468;
        }
        t = days * 86400 + h * 3600 + mi * 60 + sec - sign * (oh * 3600 + om * 60);
        if (t < 0)
                return -EINVAL;
        *ret = (usec_t) t * USEC_PER_SEC + frac;
        return 0;
}

int random_uuid(char ret[static 37]) {
        static const char hex[] = "0123456789abcdef";
        uint8_t b[16];
        size_t o = 0;
        int r;

        r = random_bytes(b, sizeof b);
        if (r < 0)
                return r;
        b[6] = (uint8_t) ((b[6] & 0x0f) | 0x40);   /* version 4 */
        b[8] = (uint8_t) ((b[8] & 0x3f) | 0x80);   /* variant 10 */
        for (size_t i = 0; i < 16; i++) {
                if (i == 4 || i == 6 || i == 8 || i == 10)
                        ret[o++] = '-';
                ret[o++] = hex[b[i] >> 4];
                ret[o++] = hex[b[i] & 15];
        }
        ret[o] = 0;
        return 0;
}

int random_lower(char *buf, size_t n) {
        static const char chars[] = "abcdefghijklmnopqrstuvwxyz0123456789";

        for (size_t i = 0; i < n; i++)
                buf[i] = chars[random_u64() % (sizeof chars - 1)];
        buf[n] = 0;
        return 0;
}

/* UTC only, so no gmtime_r: its time zone lock showed in the token path's
 * profile. Days to civil date after Howard Hinnant's algorithm. */
/* "YYYY-MM-DDT" of a day since the epoch; false past year 9999. */
static bool format_date(char buf[static 11], int64_t days) {
        int64_t z = days + 719468, era = z / 146097, doe = z - era * 146097;
        int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        int64_t y = yoe + era * 400, doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
        int64_t d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;

        if (m <= 2)
                y++;
        if (y > 9999)
                return false;
        buf[0] = (char) ('0' + y / 1000);
        buf[1] = (char) ('0' + y / 100 % 10);
        buf[2] = (char) ('0' + y / 10 % 10);
        buf[3] = (char) ('0' + y % 10);
        buf[4] = '-';
        buf[5] = (char) ('0' + m / 10);
        buf[6] = (char) ('0' + m % 10);
        buf[7] = '-';
        buf[8] = (char) ('0' + d / 10);
        buf[9] = (char) ('0' + d % 10);
        buf[10] = 'T';
        return true;
}

char *format_timestamp(char *buf, size_t n, usec_t t) {
        /* The date of the last call, per thread: a token's expiry is
         * mostly today's or tomorrow's, and the division chain of
         * format_date() was a third of this function in the handout's
         * profile. */
        static _Thread_local int64_t cached_days = -1;
        static _Thread_local char cached[11];
        int64_t secs = (int64_t) (t / USEC_PER_SEC), days = secs / 86400, sod = secs % 86400;

        if (n < 21) {
                if (n > 0)
                        buf[0] = 0;
                return buf;
        }
        if (days != cached_days) {
                if (!format_date(cached, days)) {
                        buf[0] = 0;
                        return buf;
                }
                cached_days = days;
        }
        memcpy(buf, cached, sizeof cached);
        buf[11] = (char) ('0' + sod / 36000);
        buf[12] = (char) ('0' + sod / 3600 % 10);
        buf[13] = ':';
        buf[14] = (char) ('0' + sod % 3600 / 600);
        buf[15] = (char) ('0' + sod % 3600 / 60 % 10);
        buf[16] = ':';
        buf[17] = (char) ('0' + sod % 60 / 10);
        buf[18] = (char) ('0' + sod % 10);
        buf[19] = 'Z';
        buf[20] = 0;
        return buf;
}

bool string_is_vschar(const char *s, bool space) {
        for (; *s; s++) {
                unsigned char c = (unsigned char) *s;

                if (c < (space ? 0x20 : 0x21) || c > 0x7e)
                        return false;
        }
        return true;
}

bool string_has_ctl(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || (unsigned char) *s == 0x7f)
                        return true;
        return false;
}

/* A-Z a-z 0-9 . _ -: a table, one load a byte (every token request
 * checks its name). */
#define NAME_RANGE(a, b) [a ... b] = true
static const bool name_char[256] = {
        NAME_RANGE('A', 'Z'), NAME_RANGE('a', 'z'), NAME_RANGE('0', '9'), ['.'] = true, ['_'] = true, ['-'] = true,
};
#undef NAME_RANGE

bool connection_name_valid(const char *s) {
        size_t n = 0;

        for (; s[n]; n++)
                if (!name_char[(unsigned char) s[n]] || n >= CONNECTION_NAME_MAX)
                        return false;
        return n > 0 && !streq(s, ".") && !streq(s, "..");
}

void strbuf_append_grow(StrBuf *b, const char *s, size_t n) {
        if (b->oom)
                return;
        if (b->len + n + 1 > b->cap) {
                size_t cap = MAX(b->cap * 2, b->len + n + 256);
                char *t;

                if (b->borrowed) {
                        /* off the caller's storage: a heap copy from here on */
                        t = malloc(cap);
                        if (t) {
                                memcpy(t, b->s, b->len);
                                explicit_wipe(b->s, b->len);
                        }
                } else
                        t = realloc(b->s, cap);
                if (!t) {
                        b->oom = true;
                        return;
                }
                b->s = t;
                b->cap = cap;
                b->borrowed = false;
        }
        memcpy(b->s + b->len, s, n);
        b->len += n;
        b->s[b->len] = 0;
}

void strbuf_printf(StrBuf *b, const char *fmt, ...) {
        va_list ap;
        char tmp[512];
        int k;

        va_start(ap, fmt);
        k = vsnprintf(tmp, sizeof tmp, fmt, ap);
        va_end(ap);
        if (k < 0) {
                b->oom = true;
                return;
        }
        if ((size_t) k < sizeof tmp) {
                strbuf_append(b, tmp, (size_t) k);
                return;
        }
        {
                char *big = malloc((size_t) k + 1);
                if (!big) {
                        b->oom = true;
                        return;
                }
                va_start(ap, fmt);
                (void) vsnprintf(big, (size_t) k + 1, fmt, ap);
                va_end(ap);
                strbuf_append(b, big, (size_t) k);
                free(big);
        }
}

/* Whether any of the 8 bytes of w must be escaped in a JSON string:
 * below 0x20, '"' or '\\'. The "has a zero byte" and "has a byte less
 * than n" word tricks (Hacker's Delight 6-1): each term is nonzero in a
 * byte's top bit only if some byte matches; a borrow can mark a byte above
 * a match, never a word without one. */
static inline bool word_needs_escape(uint64_t w) {
        const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
        uint64_t q = w ^ (ones * (uint8_t) '"'), bs = w ^ (ones * (uint8_t) '\\');

        return ((((q - ones) & ~q) | ((bs - ones) & ~bs) | ((w - ones * 0x20) & ~w)) & high) != 0;
}

/* How many bytes at s (of n) JSON takes as they are: none of '"', '\\'
 * or a control character. Tokens are long runs of such bytes: 16 a step
 * with SSE2 (every x86-64 has it), then 8 a step, then one. */
static size_t json_plain_prefix(const char *s, size_t n) {
        size_t i = 0;

#ifdef __SSE2__
        const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), ctl = _mm_set1_epi8(0x1f);

        for (; n - i >= 16; i += 16) {
                __m128i x = _mm_loadu_si128((const __m128i *) (s + i));
                /* x <= 0x1f unsigned: max(x, 0x1f) == 0x1f */
                __m128i bad = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
                                           _mm_cmpeq_epi8(_mm_max_epu8(x, ctl), ctl));
                unsigned mask = (unsigned) _mm_movemask_epi8(bad);

                if (mask != 0)
                        return i + (size_t) __builtin_ctz(mask);
        }
#endif
        for (; n - i >= 8; i += 8) {
                uint64_t w;

                memcpy(&w, s + i, sizeof w);
                if (word_needs_escape(w))
                        break;
        }
        for (; i < n; i++) {
                unsigned char ch = (unsigned char) s[i];

                if (ch < 0x20 || ch == '"' || ch == '\\')
                        break;
        }
        return i;
}

void strbuf_json_escape(StrBuf *b, const char *s, size_t n) {
        static const char hex[] = "0123456789abcdef";
        const char *end = s + n;

        for (;;) {
                size_t k = json_plain_prefix(s, (size_t) (end - s));
                unsigned char ch;
                const char *esc;
                char u[7];

                strbuf_append(b, s, k);
                s += k;
                if (s >= end)
                        return;
                ch = (unsigned char) *s++;
                switch (ch) {
                case '"': esc = "\\\""; break;
                case '\\': esc = "\\\\"; break;
                case '\n': esc = "\\n"; break;
                case '\r': esc = "\\r"; break;
                case '\t': esc = "\\t"; break;
                default:
                        u[0] = '\\'; u[1] = 'u'; u[2] = '0'; u[3] = '0';
                        u[4] = hex[ch >> 4]; u[5] = hex[ch & 15]; u[6] = 0;
                        esc = u;
                }
                strbuf_puts(b, esc);
        }
}

void strbuf_json_string(StrBuf *b, const char *s) {
        strbuf_append(b, "\"", 1);
        strbuf_json_escape(b, s, strlen(s));
        strbuf_append(b, "\"", 1);
}

void strbuf_u64(StrBuf *b, uint64_t u) {
        char buf[24], *p = buf + sizeof buf;

        do {
                *--p = (char) ('0' + u % 10);
                u /= 10;
        } while (u > 0);
        strbuf_append(b, p, (size_t) (buf + sizeof buf - p));
}

char *strbuf_steal(StrBuf *b) {
        char *s;

        if (b->oom) {
                strbuf_free(b);
                return NULL;
        }
        if (!b->s)
                return strdup("");
        if (b->borrowed) {
                s = strndup(b->s, b->len);
                strbuf_free(b);
                return s;
        }
        s = b->s;
        *b = (StrBuf) {};
        return s;
}

void strbuf_free(StrBuf *b) {
        if (b->s)
                explicit_wipe(b->s, b->borrowed ? b->len : b->cap);
        if (!b->borrowed)
                free(b->s);
        *b = (StrBuf) {};
}

int mkdir_p(const char *path, mode_t mode) {
        _cleanup_free_ char *p = strdup(path);

        if (!p)
                return -ENOMEM;
        for (char *s = p + 1; *s; s++) {
                if (*s != '/')
                        continue;
                *s = 0;
                if (mkdir(p, mode) < 0 && errno != EEXIST)
                        return -errno;
                *s = '/';
        }
        if (mkdir(p, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

/* The length of the valid UTF-8 character at s (at most n bytes) and its
 * code point, or 0 when the bytes there are not one (overlong forms,
 * surrogates and values beyond U+10FFFF included). */
static size_t utf8_char(const unsigned char *s, size_t n, uint32_t *ret) {
        uint32_t c;
        size_t l;

        if (s[0] < 0x80) {
                *ret = s[0];
                return 1;
        }
        if (s[0] >= 0xc2 && s[0] <= 0xdf)
                l = 2, c = s[0] & 0x1f;
        else if (s[0] >= 0xe0 && s[0] <= 0xef)
                l = 3, c = s[0] & 0x0f;
        else if (s[0] >= 0xf0 && s[0] <= 0xf4)
                l = 4, c = s[0] & 0x07;
        else
                return 0;
        if (n < l)
                return 0;
        for (size_t i = 1; i < l; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
                c = (c << 6) | (s[i] & 0x3f);
        }
        if ((l == 3 && c < 0x800) || (l == 4 && (c < 0x10000 || c > 0x10ffff)) || (c >= 0xd800 && c <= 0xdfff))
                return 0;
        *ret = c;
        return l;
}

size_t text_escape(char *buf, size_t size, const char *s, size_t len) {
        const unsigned char *p = (const unsigned char *) s;
        size_t o = 0;

        if (size == 0)
                return 0;
        for (size_t i = 0; s && i < len;) {
                char piece[8];
                size_t pl, cl;
                uint32_t c;

                cl = utf8_char(p + i, len - i, &c);
                if (cl == 0) {
                        piece[0] = (char) 0xef, piece[1] = (char) 0xbf, piece[2] = (char) 0xbd;
                        pl = 3;
                        cl = 1;
                } else if (c == '\n' || c == '\r' || c == '\t' || c == 0x1b) {
                        piece[0] = '\\';
                        piece[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : 'e';
                        pl = 2;
                } else if (c < 0x20 || c == 0x7f) {
                        pl = (size_t) snprintf(piece, sizeof piece, "\\x%02x", (unsigned) c);
                } else if (c >= 0x80 && c < 0xa0) {
                        pl = (size_t) snprintf(piece, sizeof piece, "\\u%04x", (unsigned) c);
                } else {
                        memcpy(piece, p + i, cl);
                        pl = cl;
                }
                if (o + pl > size - 1)
                        break;
                memcpy(buf + o, piece, pl);
                o += pl;
                i += cl;
        }
        buf[o] = 0;
        return o;
}

char *text_escape_dup(const char *s, size_t max) {
        size_t len = s ? strlen(s) : 0;
        /* Each input byte grows to at most 6 bytes (\u0085 from 2, U+FFFD from 1). */
        size_t size = MIN(max, len * 6) + 1;
        char *buf = malloc(size);

        if (!buf)
                return NULL;
        (void) text_escape(buf, size, s, len);
        return buf;
}
