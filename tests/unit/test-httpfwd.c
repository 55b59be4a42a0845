/* SPDX-License-Identifier: MIT */

#include <errno.h>

#include "common/httpfwd.h"
#include "common/macro.h"

#define TESTS_MAIN
#include "tests.h"

/* Rewrites head (which must be complete); returns the status (0 or -NNN). */
static int rewrite(const char *head, char **ret, HttpFwdBody *body) {
        StrBuf o = {};
        const char *why = NULL;
        size_t end = httpfwd_head_end(head, strlen(head));
        int r;

        CHECK(end == strlen(head));
        r = httpfwd_rewrite_head(head, end, "gh", &o, body, &why);
        if (r == 0)
                *ret = strbuf_steal(&o);
        else {
                CHECK(why != NULL);
                *ret = NULL;
        }
        strbuf_free(&o);
        return r;
}

TEST(head_end) {
        CHECK_EQ_INT(httpfwd_head_end("GET / HTTP/1.1\r\nHost: x\r\n", 25), 0);
        CHECK_EQ_INT(httpfwd_head_end("GET / HTTP/1.1\r\n\r\nbody", 22), 18);
        CHECK_EQ_INT(httpfwd_head_end("GET / HTTP/1.1\n\nbody", 20), 16);
        CHECK_EQ_INT(httpfwd_head_end("", 0), 0);
}

TEST(rewrite_get) {
        _cleanup_free_ char *o = NULL;
        HttpFwdBody b;

        CHECK_EQ_INT(rewrite("GET /user/repos?per_page=5&x=%2F HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n"
                             "Authorization: Bearer stolen\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n"
                             "Accept:  application/json \r\nX-Api-Origin: https://api.example\r\n\r\n", &o, &b), 0);
        CHECK_STREQ(o, "GET /v1/connections/gh/proxy/user/repos?per_page=5&x=%2F HTTP/1.1\r\nHost: localhost\r\n"
                       "Accept: application/json\r\nX-Api-Origin: https://api.example\r\n"
                       "Connection: close\r\n\r\n");
        CHECK_EQ_INT(b.kind, HTTPFWD_BODY_NONE);
        CHECK(b.done);
}

TEST(rewrite_root_and_10) {
        _cleanup_free_ char *o = NULL;
        HttpFwdBody b;

        CHECK_EQ_INT(rewrite("HEAD / HTTP/1.0\n\n", &o, &b), 0);
        CHECK_STREQ(o, "HEAD /v1/connections/gh/proxy/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
}

TEST(rewrite_bodies) {
        _cleanup_free_ char *o1 = NULL, *o2 = NULL, *o3 = NULL;
        HttpFwdBody b;

        CHECK_EQ_INT(rewrite("POST /x HTTP/1.1\r\nContent-Length: 12\r\ncontent-length: 12\r\n\r\n", &o1, &b), 0);
        CHECK_EQ_INT(b.kind, HTTPFWD_BODY_LENGTH);
        CHECK_EQ_INT(b.left, 12);
        CHECK(!b.done);
        CHECK_EQ_INT(rewrite("POST /x HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n", &o2, &b), 0);
        CHECK_EQ_INT(b.kind, HTTPFWD_BODY_CHUNKED);
        CHECK(strstr(o2, "Transfer-Encoding: Chunked\r\n") != NULL);
        CHECK_EQ_INT(rewrite("POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &o3, &b), 0);
        CHECK_EQ_INT(b.kind, HTTPFWD_BODY_NONE);
}

TEST(rewrite_refusals) {
        static const struct {
                const char *head;
                int status;
        } cases[] = {
                { "GET http://evil.example/x HTTP/1.1\r\n\r\n", -400 },
                { "GET * HTTP/1.1\r\n\r\n", -400 },
                { "GET evil.example:443 HTTP/1.1\r\n\r\n", -400 },
                { "GET /../status HTTP/1.1\r\n\r\n", -400 },
                { "GET /a/.. HTTP/1.1\r\n\r\n", -400 },
                { "GET /a/./b HTTP/1.1\r\n\r\n", -400 },
                { "GET /%2e%2E/status HTTP/1.1\r\n\r\n", -400 },
                { "GET /.%2e?x HTTP/1.1\r\n\r\n", -400 },
                { "GET /a\\..\\b HTTP/1.1\r\n\r\n", -400 },
                { "GET /a%5c..%5Cb HTTP/1.1\r\n\r\n", -400 },
                { "GET /a#frag HTTP/1.1\r\n\r\n", -400 },
                { "GET /a b HTTP/1.1\r\n\r\n", -400 },
                { "GET / HTTP/2.0\r\n\r\n", -505 },
                { "GET / FTP/1.1\r\n\r\n", -505 },
                { "GET /\r\n\r\n", -400 },
                { "G(T / HTTP/1.1\r\n\r\n", -400 },
                { "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", -400 },
                { "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", -400 },
                { "POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", -400 },
                { "POST / HTTP/1.1\r\nContent-Length: 1234567890123456789\r\n\r\n", -400 },
                { "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", -501 },
                { "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", -501 },
                { "GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", -400 },
                { "GET / HTTP/1.1\r\nX A: 1\r\n\r\n", -400 },
                { "GET / HTTP/1.1\r\n: 1\r\n\r\n", -400 },
                { "GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n", -400 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *o = NULL;
                HttpFwdBody b;
                int r = rewrite(cases[i].head, &o, &b);

                if (r != cases[i].status)
                        fprintf(stderr, "  case %zu: %s\n", i, cases[i].head);
                CHECK_EQ_INT(r, cases[i].status);
                CHECK(o == NULL);
        }
}

TEST(rewrite_too_many_headers) {
        StrBuf h = {};
        _cleanup_free_ char *o = NULL, *s = NULL;
        HttpFwdBody b;

        strbuf_puts(&h, "GET / HTTP/1.1\r\n");
        for (int i = 0; i <= HTTPFWD_HEADERS_MAX; i++)
                strbuf_printf(&h, "X-%d: %d\r\n", i, i);
        strbuf_puts(&h, "\r\n");
        s = strbuf_steal(&h);
        CHECK_EQ_INT(rewrite(s, &o, &b), -431);
}

/* Feeds body in pieces of step bytes; returns how many bytes belonged to
 * it, or the error. */
static ssize_t feed_all(HttpFwdBody *b, const char *body, size_t n, size_t step) {
        size_t used = 0;

        for (size_t i = 0; i < n && !b->done; i += step) {
                size_t k = MIN(step, n - i);
                ssize_t r = httpfwd_body_feed(b, body + i, k);

                if (r < 0)
                        return r;
                used += (size_t) r;
                if ((size_t) r < k)
                        break;
        }
        return (ssize_t) used;
}

TEST(chunked) {
        static const char body[] = "5\r\nhello\r\n1A;ext=\"x\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n"
                                   "GET /v1/status HTTP/1.1\r\n\r\n";
        size_t framed = strlen(body) - strlen("GET /v1/status HTTP/1.1\r\n\r\n");

        for (size_t step = 1; step <= sizeof body; step++) {
                HttpFwdBody b = { .kind = HTTPFWD_BODY_CHUNKED };

                CHECK_EQ_INT(feed_all(&b, body, strlen(body), step), framed);
                CHECK(b.done);
        }
        {
                HttpFwdBody b = { .kind = HTTPFWD_BODY_CHUNKED };

                CHECK_EQ_INT(feed_all(&b, "0\r\n\r\nrest", 9, 9), 5);
                CHECK(b.done);
        }
}

TEST(chunked_refusals) {
        static const char *const bad[] = {
                "x\r\n", "\r\n", "5\nhello\r\n", "5\r\nhelloX\r\n", "1234567890123456\r\n", "0\r\nX\n",
                "5;a\x01\r\n", "0\r\n\n",
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                HttpFwdBody b = { .kind = HTTPFWD_BODY_CHUNKED };

                CHECK_EQ_INT(feed_all(&b, bad[i], strlen(bad[i]), 1), -EBADMSG);
        }
}

TEST(length) {
        HttpFwdBody b = { .kind = HTTPFWD_BODY_LENGTH, .left = 10 };

        CHECK_EQ_INT(httpfwd_body_feed(&b, "abcd", 4), 4);
        CHECK(!b.done);
        CHECK_EQ_INT(httpfwd_body_feed(&b, "efghijGET /", 11), 6);
        CHECK(b.done);
        CHECK_EQ_INT(httpfwd_body_feed(&b, "more", 4), 0);
}
