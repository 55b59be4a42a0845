/* SPDX-License-Identifier: MIT */
/* realtime-shift.so: an LD_PRELOAD shim that moves the wall clock of one
 * process, and nothing else. The offset is read from the file named by
 * $REALTIME_SHIFT_FILE ("+1h", "-3600", "+90s", "-2m", "0"; units s, m, h,
 * d, default s), looked at again at most every 20 ms, so a test moves the
 * clock by rewriting the file.
 *
 * Only CLOCK_REALTIME and CLOCK_REALTIME_COARSE (clock_gettime), plus
 * gettimeofday(), time() and timespec_get() are shifted. CLOCK_MONOTONIC,
 * CLOCK_BOOTTIME and timerfd/timer_settime are left to the kernel: unlike
 * libfaketime 0.9.10, which also shifts absolute timerfd deadlines on the
 * monotonic clocks, and so asks for deadlines before boot (EINVAL) on a
 * machine up for less than the offset.
 *
 * glibc's time() and gettimeofday() read the vDSO without going through
 * the clock_gettime symbol, so each is interposed on its own. Under ASan
 * run with ASAN_OPTIONS=verify_asan_link_order=0. Built without
 * sanitizers, by the Makefile, into $(BUILD)/tools/realtime-shift.so. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define NSEC_PER_SEC 1000000000LL
#define RECHECK_NS (20 * 1000000LL)

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static _Atomic(clock_gettime_fn) real_clock_gettime;
static _Atomic int64_t shift_ns;
static _Atomic int64_t checked_at = INT64_MIN;

static clock_gettime_fn real(void) {
        clock_gettime_fn f = atomic_load(&real_clock_gettime);

        if (!f) {
                f = (clock_gettime_fn) dlsym(RTLD_NEXT, "clock_gettime");
                atomic_store(&real_clock_gettime, f);
        }
        return f;
}

/* "+1h", "-3600", "1.5m": seconds with an optional sign, fraction and unit.
 * Returns false (offset unchanged) on anything else. */
static bool parse_shift(const char *s, int64_t *ret) {
        int64_t whole = 0, frac = 0, scale = 1, unit = 1;
        int sign = 1, digits = 0;

        while (*s == ' ' || *s == '\t')
                s++;
        if (*s == '+' || *s == '-')
                sign = *s++ == '-' ? -1 : 1;
        for (; *s >= '0' && *s <= '9'; s++, digits++) {
                if (whole > 100LL * 365 * 86400)
                        return false;
                whole = whole * 10 + (*s - '0');
        }
        if (*s == '.')
                for (s++; *s >= '0' && *s <= '9'; s++, digits++)
                        if (scale < NSEC_PER_SEC) {
                                frac = frac * 10 + (*s - '0');
                                scale *= 10;
                        }
        if (digits == 0)
                return false;
        switch (*s) {
        case 'd': unit = 86400; s++; break;
        case 'h': unit = 3600; s++; break;
        case 'm': unit = 60; s++; break;
        case 's': s++; break;
        default: break;
        }
        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
                s++;
        if (*s)
                return false;
        *ret = sign * (whole * unit * NSEC_PER_SEC + frac * (NSEC_PER_SEC / scale) * unit);
        return true;
}

static void reload(void) {
        const char *path = getenv("REALTIME_SHIFT_FILE");
        struct timespec ts;
        char buf[64];
        int64_t t, last, v;
        ssize_t n;
        int fd, saved = errno;

        if (!path || !real() || real()(CLOCK_MONOTONIC, &ts) < 0)
                return;
        t = ts.tv_sec * NSEC_PER_SEC + ts.tv_nsec;
        last = atomic_load(&checked_at);
        if (last != INT64_MIN && t - last < RECHECK_NS)
                return;
        atomic_store(&checked_at, t);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
                n = read(fd, buf, sizeof buf - 1);
                (void) close(fd);
                if (n > 0) {
                        buf[n] = 0;
                        if (parse_shift(buf, &v))
                                atomic_store(&shift_ns, v);
                }
        }
        errno = saved;
}

static void shift(struct timespec *ts) {
        int64_t v;

        reload();
        v = ts->tv_sec * NSEC_PER_SEC + ts->tv_nsec + atomic_load(&shift_ns);
        ts->tv_sec = v / NSEC_PER_SEC;
        ts->tv_nsec = v % NSEC_PER_SEC;
        if (ts->tv_nsec < 0) {
                ts->tv_nsec += NSEC_PER_SEC;
                ts->tv_sec--;
        }
}

int clock_gettime(clockid_t id, struct timespec *ts) {
        int r;

        if (!real()) {
                errno = ENOSYS;
                return -1;
        }
        r = real()(id, ts);
        if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE))
                shift(ts);
        return r;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
        struct timespec ts;

        if (tz)
                ((struct timezone *) tz)->tz_minuteswest = ((struct timezone *) tz)->tz_dsttime = 0;
        if (clock_gettime(CLOCK_REALTIME, &ts) < 0)
                return -1;
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
        return 0;
}

time_t time(time_t *ret) {
        struct timespec ts;

        if (clock_gettime(CLOCK_REALTIME, &ts) < 0)
                return (time_t) -1;
        if (ret)
                *ret = ts.tv_sec;
        return ts.tv_sec;
}

int timespec_get(struct timespec *ts, int base) {
        if (base != TIME_UTC || clock_gettime(CLOCK_REALTIME, ts) < 0)
                return 0;
        return base;
}
