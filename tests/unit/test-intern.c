/* SPDX-License-Identifier: MIT */

#include <stdlib.h>
#include <string.h>

#include "common/intern.h"
#include "common/macro.h"

#define TESTS_MAIN
#include "tests.h"

TEST(one_copy_per_value) {
        char a[] = "openid offline_access", b[] = "openid offline_access";
        const char *x, *y, *z;
        size_t n0 = intern_count();

        x = intern(a);
        y = intern(b);
        CHECK(x && y);
        CHECK(x == y);
        CHECK(x != a && x != b);
        CHECK_STREQ(x, "openid offline_access");
        CHECK_EQ_INT((int) intern_count(), (int) n0 + 1);
        z = intern("Bearer");
        CHECK(z && z != x);
        CHECK_EQ_INT((int) intern_count(), (int) n0 + 2);
        /* the copy lives while a reference does */
        CHECK(intern_unref(x) == NULL);
        CHECK_STREQ(y, "openid offline_access");
        CHECK_EQ_INT((int) intern_count(), (int) n0 + 2);
        CHECK(intern_ref(y) == y);
        intern_unref(y);
        intern_unref(y);
        CHECK_EQ_INT((int) intern_count(), (int) n0 + 1);
        intern_unref(z);
        CHECK_EQ_INT((int) intern_count(), (int) n0);
        CHECK_EQ_INT((int) intern_bytes(), 0);
}

TEST(null_and_empty) {
        const char *e;

        CHECK(intern(NULL) == NULL);
        CHECK(intern_ref(NULL) == NULL);
        CHECK(intern_unref(NULL) == NULL);
        e = intern("");
        CHECK(e && *e == 0);
        CHECK(intern_n("abc", 0) == e);
        intern_unref(e);
        intern_unref(e);
        CHECK_EQ_INT((int) intern_count(), 0);
}

TEST(length_bounded) {
        char buf[400];
        const char *a, *b, *c;

        memset(buf, 'x', sizeof buf);
        /* not NUL-terminated: the first n bytes, short and long */
        a = intern_n(buf, 3);
        CHECK(a && strcmp(a, "xxx") == 0);
        b = intern_n(buf, 300);
        CHECK(b && strlen(b) == 300);
        /* an embedded NUL ends it */
        buf[5] = 0;
        c = intern_n(buf, 300);
        CHECK(c && strcmp(c, "xxxxx") == 0);
        intern_unref(a);
        intern_unref(b);
        intern_unref(c);
        CHECK_EQ_INT((int) intern_count(), 0);
}

TEST(many_values) {
        const char **v = new0(const char *, 5000);
        char s[32];

        CHECK(v);
        if (!v)
                return;
        for (unsigned i = 0; i < 5000; i++) {
                snprintf(s, sizeof s, "scope-%u", i % 2500);
                v[i] = intern(s);
                CHECK(v[i]);
        }
        CHECK_EQ_INT((int) intern_count(), 2500);
        CHECK(v[7] == v[2507]);
        for (unsigned i = 0; i < 5000; i++)
                intern_unref(v[i]);
        CHECK_EQ_INT((int) intern_count(), 0);
        free(v);
}
