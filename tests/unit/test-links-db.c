/* SPDX-License-Identifier: MIT */
/* The links table on SQLite (daemon/links-db.c); the same cases run on
 * PostgreSQL in tests/pg/test-links-db.c. */

#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/macro.h"
#include "common/util.h"
#include "daemon/store.h"

#define TESTS_MAIN
#include "tests.h"
#include "links-db-cases.h"

static const CryptKey test_key = { .bytes = "0123456789abcdef0123456789abcdef" };

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) st;
        (void) ftw;
        return flag == FTW_DP ? rmdir(path) : unlink(path);
}

TEST(links_db_on_sqlite) {
        char dir[] = "/tmp/tb-test-links-XXXXXX", path[64];
        Store *s = NULL;
        int64_t ids[2], id = 0;

        CHECK(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/tokenbroker.db", dir);
        CHECK_EQ_INT(store_open(path, &test_key, &s), 0);
        if (s) {
                links_db_cases(s);
                /* PostgreSQL only */
                CHECK_EQ_INT(links_db_reserve_ids(s, ids, 2), -EOPNOTSUPP);
                CHECK_EQ_INT(links_db_pending_id(s, "x", &id), -EOPNOTSUPP);
        }
        store_close(s);
        (void) nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}
