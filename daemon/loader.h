/* SPDX-License-Identifier: MIT */
#pragma once

/* The start's bulk load on two threads (issue 9: a million connections to
 * READY in under 3 s on two cores). The calling thread (the start code)
 * reads rows and builds items; a linking thread puts them, in batches, into
 * whatever link() fills (the manager's maps, heaps and wheel). See
 * daemon/loader.c for the rule each side keeps. */

#include <stdbool.h>

#include "common/util.h"
#include "daemon/heap.h"

typedef struct Loader Loader;

typedef struct LoaderOps {
        /* On the linking thread, a few items before link(): start the
         * cache misses the link will take (optional). */
        void (*prefetch)(void *item, void *userdata);
        /* On the linking thread: 0 (the item is linked, no longer the
         * loader's), or -errno (nothing linked: the item is still the
         * loader's, and the load ends with that error). side: the item's
         * side_size bytes (loader_push_side()), NULL when side_size is 0. */
        int (*link)(void *item, void *side, void *userdata);
        /* On the calling thread: an item that was never linked. */
        void (*free)(void *item);
        /* Bytes carried beside each item (0: none). */
        size_t side_size;
} LoaderOps;

/* Starts the linking thread (threaded false, or a thread that cannot be
 * made: link() runs on the caller, batch by batch, the same way). While
 * it waits for items it faults in `heap` (heap_prepare()) just ahead of
 * the calling thread's allocations. 0 or -ENOMEM. */
int loader_new(const LoaderOps *ops, void *userdata, const HeapRegion *heap, bool threaded, Loader **ret);
/* Hands over one item (taken, whatever the result). 0, or the error that
 * ended the load (link()'s, or -ETIMEDOUT when the linking thread stops
 * making progress); then stop pushing and call loader_finish(). */
int loader_push(Loader *l, void *item);
/* The same with side_size bytes at side copied beside it (side NULL:
 * zeroes). */
int loader_push_side(Loader *l, void *item, const void *side);
/* Ends the load: r < 0 (the caller's error) stops it, items not linked yet
 * are freed; otherwise every item pushed is linked first. Waits for the
 * linking thread and frees the loader. Returns r if < 0, else the error
 * that ended the load, else 0. Every item is then linked or freed.
 * ret_link_cpu (optional): the linking thread's CPU time (0 without). */
int loader_finish(Loader *l, int r, usec_t *ret_link_cpu);

/* Whether l got its linking thread (for tests and the log). */
bool loader_threaded(const Loader *l);
/* The caller: whether the linking thread was behind at the last batch
 * handed over (more than a quarter of the ring waiting), so that work the
 * caller could leave to it is better done by the caller. Never without
 * the thread. */
bool loader_busy(const Loader *l);
/* Tests: link() is not called for the Nth item of a load (from 1), which
 * fails with -EIO instead; 0 never. */
extern unsigned loader_test_fail_at;
/* Tests: loader_new() starts no thread (the one-thread load to compare
 * with). */
extern bool loader_test_one_thread;
