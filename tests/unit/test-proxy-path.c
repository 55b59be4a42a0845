/* SPDX-License-Identifier: MIT */

#include "common/macro.h"
#include "common/util.h"
#include "daemon/proxy-path.h"

#define TESTS_MAIN
#include "tests.h"

static const struct {
        const char *raw;
        int r;
        const char *name, *path;   /* path: what is forwarded after the origin */
} targets[] = {
        { "/v1/connections/gh/proxy/user/repos", 0, "gh", "/user/repos" },
        { "/v1/connections/gh/proxy/user/repos?per_page=5&q=a%20b", 0, "gh", "/user/repos?per_page=5&q=a%20b" },
        { "/v1/connections/gh/proxy", 0, "gh", "" },
        { "/v1/connections/gh/proxy/", 0, "gh", "/" },
        { "/v1/connections/gh/proxy?x=1", 0, "gh", "?x=1" },
        { "/v1/connections/gh/proxy/a/b.c/..d/.e/d..", 0, "gh", "/a/b.c/..d/.e/d.." },
        { "/v1/connections/gh/proxy/a?u=https://x.example/%2f..&at=@", 0, "gh", "/a?u=https://x.example/%2f..&at=@" },
        { "/v1/connections/gh/proxy/a%20b/%41", 0, "gh", "/a%20b/%41" },
        { "/v1/connections/gh/proxy/a:b", 0, "gh", "/a:b" },
        /* leaving the origin */
        { "/v1/connections/gh/proxy/http://evil/x", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy//evil/x", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a//b", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/..", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/../x", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a/..", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a/../b", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a/./b", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a/..?x", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/%2e%2e/x", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/.%2E/x", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a%2fb", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a%2Fb", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a%5cb", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a\\b", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/@evil/x", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/%40evil/x", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a%00b", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a%zz", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a%2", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a#b", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a b", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a\tb", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/\xc3\xa9", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a?x=%zz", -EACCES, "gh", NULL },
        { "/v1/connections/gh/proxy/a?x=1#f", -EACCES, "gh", NULL },
        /* not a proxy target, or no connection's name */
        { "/v1/connections/gh/token", -ENOENT, "", NULL },
        { "/v1/connections/gh/proxyx/a", -ENOENT, "", NULL },
        { "http://evil/v1/connections/gh/proxy/a", -ENOENT, "", NULL },
        { "/v1/connections/../proxy/a", -EINVAL, "", NULL },
        { "/v1/connections/a%2fb/proxy/a", -EINVAL, "", NULL },
};

TEST(proxy_target_table) {
        for (size_t i = 0; i < ELEMENTSOF(targets); i++) {
                ProxyTarget t;
                int r = proxy_target_parse(targets[i].raw, &t);

                if (r != targets[i].r || !streq(t.name, targets[i].name) ||
                    (targets[i].path && (!t.path || !streq(t.path, targets[i].path)))) {
                        fprintf(stderr, "  %s: %d name \"%s\" path \"%s\", expected %d \"%s\" \"%s\"\n",
                                targets[i].raw, r, t.name, strempty(t.path), targets[i].r, targets[i].name,
                                strempty(targets[i].path));
                        tests_failed_checks++;
                }
        }
}

TEST(proxy_target_long) {
        char buf[PROXY_TARGET_MAX + 64];
        ProxyTarget t;

        snprintf(buf, sizeof buf, "/v1/connections/gh/proxy/");
        memset(buf + strlen(buf), 'a', sizeof buf - strlen(buf) - 1);
        buf[sizeof buf - 1] = 0;
        CHECK_EQ_INT(proxy_target_parse(buf, &t), -EMSGSIZE);
}

TEST(proxy_host) {
        CHECK(proxy_host_ok(NULL, "https://api.github.com"));
        CHECK(proxy_host_ok("localhost", "https://api.github.com"));
        CHECK(proxy_host_ok("127.0.0.1:8080", "https://api.github.com"));
        CHECK(proxy_host_ok("[::1]:99", "https://api.github.com"));
        CHECK(proxy_host_ok("api.github.com", "https://api.github.com"));
        CHECK(proxy_host_ok("API.GitHub.com", "https://api.github.com"));
        CHECK(!proxy_host_ok("evil.example", "https://api.github.com"));
        CHECK(!proxy_host_ok("api.github.com.evil.example", "https://api.github.com"));
        CHECK(!proxy_host_ok("localhost@evil.example", "https://api.github.com"));
        CHECK(!proxy_host_ok("127.0.0.1.evil.example", "https://api.github.com"));
        CHECK(!proxy_host_ok("", "https://api.github.com"));
        CHECK(!proxy_host_ok("localhost/x", "https://api.github.com"));
        CHECK(!proxy_host_ok("api.gitlab.com", "https://api.github.com"));
}
