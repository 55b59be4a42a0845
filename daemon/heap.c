/* SPDX-License-Identifier: MIT */
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/log.h"
#include "common/macro.h"
#include "daemon/heap.h"

#define HUGE_PAGE ((uintptr_t) 2 << 20)
/* glibc's default M_TOP_PAD */
#define TOP_PAD_DEFAULT ((int) (128 << 10))
/* Below this a load is fast anyway. */
#define PREPARE_MIN ((size_t) 16 << 20)
#define PREPARE_MAX ((size_t) 16 << 30)
/* below glibc's smallest mmap threshold (128 KiB) */
#define PROBE_SIZE ((size_t) 64 << 10)

void heap_prepare(size_t bytes, HeapRegion *ret) {
        uintptr_t lo, hi;
        void *probe[64];
        size_t n;

        *ret = (HeapRegion) {};
        if (bytes < PREPARE_MIN)
                return;
        bytes = bytes > PREPARE_MAX ? PREPARE_MAX : bytes;
        lo = (uintptr_t) sbrk(0);
        if (lo == (uintptr_t) -1)
                return;
        /* The next growth of the heap takes `bytes` more than it needs:
         * force it now with an allocation the top chunk cannot hold. */
        if (mallopt(M_TOP_PAD, (int) (bytes > INT32_MAX ? INT32_MAX : bytes)) != 1)
                return;
        /* Blocks below the mmap threshold, until the heap has grown (the
         * top chunk holds at most a few of them before). */
        for (n = 0, hi = lo; n < ELEMENTSOF(probe) && hi == lo; n++) {
                probe[n] = malloc(PROBE_SIZE);
                if (!probe[n])
                        break;
                hi = (uintptr_t) sbrk(0);
        }
        while (n > 0)
                free(probe[--n]);
        if (hi == (uintptr_t) -1 || hi <= lo + HUGE_PAGE)
                return;   /* not glibc's heap (or it did not grow) */
        /* From the first huge-page boundary to the break, not a byte
         * beyond: past it nothing is mapped and madvise() fails with
         * ENOMEM (the length was once taken before rounding lo up). */
        lo = (lo + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
        if (hi <= lo)
                return;
        if (madvise((void *) lo, hi - lo, MADV_HUGEPAGE) < 0)
                log_debug_errno(errno, "madvise(MADV_HUGEPAGE) of the heap failed, ignoring: %m");
        *ret = (HeapRegion) { .start = lo, .end = hi };
}

void heap_prepare_done(void) {
        (void) mallopt(M_TOP_PAD, TOP_PAD_DEFAULT);
}
