/* SPDX-License-Identifier: MIT */
#pragma once

/* A tiny unit-test harness: one TEST() per behaviour, registered by a
 * constructor, run in order by tests_main(). Each test binary prints one
 * line per test and closes with "N passed, N failed". */

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);

struct test_entry {
        const char *name;
        test_fn fn;
};

#define TESTS_MAX 512
extern struct test_entry tests_registry[TESTS_MAX];
extern unsigned tests_count;
extern unsigned tests_failed_checks;

#define TEST(n)                                                            \
        static void test_##n(void);                                        \
        __attribute__((constructor)) static void register_##n(void) {      \
                if (tests_count < TESTS_MAX)                               \
                        tests_registry[tests_count++] =                    \
                                (struct test_entry){ #n, test_##n };       \
        }                                                                  \
        static void test_##n(void)

#define CHECK(cond)                                                        \
        do {                                                               \
                if (!(cond)) {                                             \
                        fprintf(stderr, "  %s:%d: CHECK(%s) failed\n",     \
                                __FILE__, __LINE__, #cond);                \
                        tests_failed_checks++;                             \
                }                                                          \
        } while (0)

#define CHECK_EQ_INT(a, b)                                                 \
        do {                                                               \
                long long _a = (long long) (a), _b = (long long) (b);      \
                if (_a != _b) {                                            \
                        fprintf(stderr, "  %s:%d: %s == %s failed: %lld != %lld\n", \
                                __FILE__, __LINE__, #a, #b, _a, _b);       \
                        tests_failed_checks++;                             \
                }                                                          \
        } while (0)

#define CHECK_STREQ(a, b)                                                  \
        do {                                                               \
                const char *_a = (a), *_b = (b);                           \
                if (!_a || !_b || strcmp(_a, _b) != 0) {                   \
                        fprintf(stderr, "  %s:%d: %s == %s failed: \"%s\" != \"%s\"\n", \
                                __FILE__, __LINE__, #a, #b,                \
                                _a ? _a : "(null)", _b ? _b : "(null)");   \
                        tests_failed_checks++;                             \
                }                                                          \
        } while (0)

/* Writes text to dir/name (a fixture file); aborts the test binary on failure. */
static inline void tests_write_file(const char *dir, const char *name, const char *text) {
        char p[256];
        FILE *f;

        snprintf(p, sizeof p, "%s/%s", dir, name);
        f = fopen(p, "w");
        if (!f)
                abort();
        fputs(text, f);
        fclose(f);
}

static inline int tests_rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f) {
        (void) st;
        (void) flag;
        (void) f;
        return remove(p);
}

/* Removes a test's scratch directory and everything in it. */
static inline void tests_rm_tree(const char *dir) {
        (void) nftw(dir, tests_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* Defined once per binary by including tests.h with TESTS_MAIN defined. */
#ifdef TESTS_MAIN
struct test_entry tests_registry[TESTS_MAX];
unsigned tests_count;
unsigned tests_failed_checks;

int main(int argc, char **argv) {
        unsigned passed = 0, failed = 0;
        const char *only = argc > 1 ? argv[1] : NULL;

        for (unsigned i = 0; i < tests_count; i++) {
                unsigned before = tests_failed_checks;

                if (only && !strstr(tests_registry[i].name, only))
                        continue;
                tests_registry[i].fn();
                if (tests_failed_checks == before) {
                        passed++;
                        printf("ok %s\n", tests_registry[i].name);
                } else {
                        failed++;
                        printf("FAIL %s\n", tests_registry[i].name);
                }
                fflush(stdout);
        }
        printf("%u passed, %u failed\n", passed, failed);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
#endif
