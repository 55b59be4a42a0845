/* SPDX-License-Identifier: MIT */
#pragma once

/* Small helpers in the spirit of systemd's: cleanup attributes, ownership
 * hand-off and time. Ours, since systemd's macro.h is internal. */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef EBADF
#define EBADF 9
#endif

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _noreturn_ __attribute__((noreturn))
#define _likely_(x) __builtin_expect(!!(x), 1)
#define _unlikely_(x) __builtin_expect(!!(x), 0)

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#define new(t, n) ((t *) malloc(sizeof(t) * (n)))
#define new0(t, n) ((t *) calloc((n), sizeof(t)))

/* Take ownership out of a _cleanup_ variable. */
#define TAKE_PTR(p)                               \
        ({                                        \
                __typeof__(p) _p_ = (p);          \
                (p) = NULL;                       \
                _p_;                              \
        })
#define TAKE_FD(fd)                               \
        ({                                        \
                int _fd_ = (fd);                  \
                (fd) = -EBADF;                    \
                _fd_;                             \
        })

static inline void *mfree(void *p) {
        free(p);
        return NULL;
}

static inline void freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(freep)

static inline int safe_close(int fd) {
        if (fd >= 0) {
                int saved = errno;
                (void) close(fd);
                errno = saved;
        }
        return -EBADF;
}
static inline void closep(int *fd) {
        safe_close(*fd);
}
#define _cleanup_close_ _cleanup_(closep)

static inline void fclosep(FILE **f) {
        if (*f)
                (void) fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)

#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func)    \
        static inline void func##p(type *p) {      \
                if (*p)                            \
                        func(*p);                  \
        }

static inline bool streq(const char *a, const char *b) {
        return strcmp(a, b) == 0;
}
static inline bool streq_ptr(const char *a, const char *b) {
        if (!a || !b)
                return a == b;
        return streq(a, b);
}
static inline bool isempty(const char *s) {
        return !s || !*s;
}
static inline const char *strempty(const char *s) {
        return s ?: "";
}
static inline const char *startswith(const char *s, const char *prefix) {
        size_t l = strlen(prefix);
        return strncmp(s, prefix, l) == 0 ? s + l : NULL;
}

/* Wipe memory that held a secret; the compiler may not elide it. */
static inline void explicit_wipe(void *p, size_t n) {
        if (p && n > 0)
                explicit_bzero(p, n);
}
/* Free a NUL-terminated secret string after wiping it. */
static inline char *secret_free(char *s) {
        if (s) {
                explicit_wipe(s, strlen(s));
                free(s);
        }
        return NULL;
}
static inline void secret_freep(char **s) {
        secret_free(*s);
}
#define _cleanup_secret_ _cleanup_(secret_freep)

/* One time type. */
typedef uint64_t usec_t;
#define USEC_INFINITY ((usec_t) UINT64_MAX)
#define USEC_PER_MSEC ((usec_t) 1000ULL)
#define USEC_PER_SEC ((usec_t) 1000000ULL)
#define USEC_PER_MINUTE (60ULL * USEC_PER_SEC)
#define USEC_PER_HOUR (60ULL * USEC_PER_MINUTE)
#define USEC_PER_DAY (24ULL * USEC_PER_HOUR)

static inline usec_t timespec_load(const struct timespec *ts) {
        return (usec_t) ts->tv_sec * USEC_PER_SEC + (usec_t) ts->tv_nsec / 1000;
}
static inline usec_t now(clockid_t clock) {
        struct timespec ts;

        /* Only fails for an invalid clock id: a programmer error. */
        if (clock_gettime(clock, &ts) < 0)
                abort();
        return timespec_load(&ts);
}

/* Saturating arithmetic on usec_t. */
static inline usec_t usec_add(usec_t a, usec_t b) {
        return a > USEC_INFINITY - b ? USEC_INFINITY : a + b;
}
static inline usec_t usec_sub(usec_t a, usec_t b) {
        return a > b ? a - b : 0;
}
