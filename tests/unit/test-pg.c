/* SPDX-License-Identifier: MIT */

/* Unit tests for daemon/pg.c's pure parts: redacting passwords out of
 * connection strings for messages, and SQLSTATE to errno. The parts that
 * talk to a server are in tests/pg/test-pg-db.c (run against a throwaway
 * cluster by tests/integration/store-pg.test.js). */

#include <errno.h>

#include "common/macro.h"
#include "daemon/pg.h"

#define TESTS_MAIN
#include "tests.h"

static void check_redact(const char *in, const char *want) {
        _cleanup_free_ char *got = pg_uri_redact(in);

        CHECK_STREQ(got, want);
}

TEST(redact_uri_userinfo) {
        check_redact("postgresql://tb:s3cret@db.example:5432/tb", "postgresql://tb:***@db.example:5432/tb");
        check_redact("postgres://tb:p%40ss@db/tb?sslmode=verify-full", "postgres://tb:***@db/tb?sslmode=verify-full");
        /* the last '@' before the path ends the user info */
        check_redact("postgresql://tb:a@b@db/tb", "postgresql://tb:***@db/tb");
        /* no password: unchanged */
        check_redact("postgresql://tb@127.0.0.1:5432/tb", "postgresql://tb@127.0.0.1:5432/tb");
        check_redact("postgresql://127.0.0.1/tb", "postgresql://127.0.0.1/tb");
        /* an '@' after the host part is not user info */
        check_redact("postgresql://db/tb?application_name=a@b", "postgresql://db/tb?application_name=a@b");
}

TEST(redact_password_parameters) {
        check_redact("postgresql://tb@db/tb?password=s3cret&sslmode=require",
                     "postgresql://tb@db/tb?password=***&sslmode=require");
        check_redact("host=db user=tb password=s3cret dbname=tb", "host=db user=tb password=*** dbname=tb");
        check_redact("host=db password = 'with space\\' quote' dbname=tb", "host=db password=*** dbname=tb");
        check_redact("password=x", "password=***");
        /* only a whole key: passwordless=1 or a value that says password */
        check_redact("host=db options=mypassword=1", "host=db options=mypassword=1");
        check_redact("postgresql://tb:pw@db/tb?password=again", "postgresql://tb:***@db/tb?password=***");
        CHECK(pg_uri_redact(NULL) == NULL);
}

TEST(sqlstate_errno) {
        CHECK_EQ_INT(pg_sqlstate_to_errno("23505"), -EEXIST);
        CHECK_EQ_INT(pg_sqlstate_to_errno("40001"), -EAGAIN);
        CHECK_EQ_INT(pg_sqlstate_to_errno("40P01"), -EAGAIN);
        CHECK_EQ_INT(pg_sqlstate_to_errno("08006"), -ECONNRESET);
        CHECK_EQ_INT(pg_sqlstate_to_errno("57P01"), -ECONNRESET);
        CHECK_EQ_INT(pg_sqlstate_to_errno("28P01"), -EACCES);
        CHECK_EQ_INT(pg_sqlstate_to_errno("3D000"), -ENOENT);
        CHECK_EQ_INT(pg_sqlstate_to_errno("53100"), -ENOSPC);
        CHECK_EQ_INT(pg_sqlstate_to_errno("42P01"), -EIO);
        CHECK_EQ_INT(pg_sqlstate_to_errno(NULL), -EIO);
        CHECK_EQ_INT(pg_sqlstate_to_errno("2350"), -EIO);
}
