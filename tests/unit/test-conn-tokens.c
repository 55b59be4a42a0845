/* SPDX-License-Identifier: MIT */
/*
 * A connection's two tokens in one allocation (issue 9):
 * connection_join_tokens() and the setters that replace one token of a
 * joined pair. ASan (the sanitize build) checks that nothing is freed
 * twice or read after being freed; the tests check the values.
 */

#include <malloc.h>

#include "common/macro.h"
#include "daemon/connection.h"

#define TESTS_MAIN
#include "tests.h"

static Connection *joined(const char *at, const char *rt) {
        Connection *c = connection_new("c1");

        if (!c)
                return NULL;
        c->access_token = strdup(at);
        c->refresh_token = strdup(rt);
        if (!c->access_token || !c->refresh_token || connection_join_tokens(c) < 0)
                return connection_free(c);
        return c;
}

TEST(join_puts_both_in_one_chunk) {
        Connection *c = joined("access-1", "refresh-1");

        CHECK(c);
        if (!c)
                return;
        CHECK(c->tokens_joined);
        CHECK_STREQ(c->access_token, "access-1");
        CHECK_STREQ(c->refresh_token, "refresh-1");
        CHECK(c->refresh_token == c->access_token + strlen("access-1") + 1);
        /* one chunk, holding both */
        CHECK(malloc_usable_size(c->access_token) >= strlen("access-1") + strlen("refresh-1") + 2);
        /* idempotent */
        CHECK_EQ_INT(connection_join_tokens(c), 0);
        CHECK(c->refresh_token == c->access_token + strlen("access-1") + 1);
        connection_free(c);
}

TEST(join_needs_both) {
        Connection *c = connection_new("c1");

        CHECK(c);
        if (!c)
                return;
        c->access_token = strdup("only-access");
        CHECK_EQ_INT(connection_join_tokens(c), 0);
        CHECK(!c->tokens_joined);
        CHECK_STREQ(c->access_token, "only-access");
        connection_free(c);
}

TEST(new_access_keeps_the_refresh_token) {
        Connection *c = joined("access-1", "refresh-1");
        char *old;

        CHECK(c);
        if (!c)
                return;
        old = c->access_token;
        connection_set_access_token(c, strdup("access-2"));
        CHECK(!c->tokens_joined);
        CHECK_STREQ(c->access_token, "access-2");
        CHECK_STREQ(c->refresh_token, "refresh-1");
        /* the refresh token now owns the old chunk, moved to its front */
        CHECK(c->refresh_token == old);
        CHECK_EQ_INT(connection_join_tokens(c), 0);
        CHECK(c->tokens_joined);
        CHECK_STREQ(c->access_token, "access-2");
        CHECK_STREQ(c->refresh_token, "refresh-1");
        connection_free(c);
}

TEST(new_or_no_refresh_token) {
        Connection *c = joined("access-1", "refresh-1");

        CHECK(c);
        if (!c)
                return;
        connection_set_refresh_token(c, strdup("refresh-2"));
        CHECK(!c->tokens_joined);
        CHECK_STREQ(c->access_token, "access-1");
        CHECK_STREQ(c->refresh_token, "refresh-2");
        CHECK_EQ_INT(connection_join_tokens(c), 0);
        connection_set_refresh_token(c, NULL);
        CHECK(!c->refresh_token);
        CHECK_STREQ(c->access_token, "access-1");
        /* both replaced, as a rotating refresh does */
        connection_set_refresh_token(c, strdup("refresh-3"));
        CHECK_EQ_INT(connection_join_tokens(c), 0);
        connection_set_access_token(c, strdup("access-4"));
        connection_set_refresh_token(c, strdup("refresh-4"));
        CHECK_EQ_INT(connection_join_tokens(c), 0);
        CHECK_STREQ(c->access_token, "access-4");
        CHECK_STREQ(c->refresh_token, "refresh-4");
        connection_clear_tokens(c);
        CHECK(!c->access_token && !c->refresh_token && !c->tokens_joined);
        connection_free(c);
}
