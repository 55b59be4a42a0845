/* SPDX-License-Identifier: MIT */
/* The start's bulk load on two threads.
 *
 * The rule: every item belongs to exactly one side at a time, and each
 * side touches only what it owns.
 *   - The calling thread (the start code) reads the store, builds items
 *     and allocates them; it alone touches the store, the names table
 *     (conn_names_intern(), daemon/connection.c), the log and malloc's
 *     main heap growth. It frees every item that was never linked, at
 *     the end: the linking thread frees nothing (freeing a connection
 *     gives back its interned names).
 *   - The linking thread runs ops->link() on each item handed over, in
 *     order; from loader_new() to loader_finish() it alone touches what
 *     link() fills (for the manager: its maps, heaps, wheel and counters),
 *     and whatever the caller gave it for its own use (the manager: a copy
 *     of the key, its cipher context made ahead, to open the tokens with;
 *     a buffer for the message of a token that does not open, which the
 *     caller logs).
 *     The caller reads those only after loader_finish() (which joins the
 *     thread: everything it wrote is then visible).
 *   - Items go over in batches of BATCH through a ring of RING batches
 *     under one mutex, taken once a batch, not once an item. Each item
 *     may carry ops->side_size bytes beside it (copied into its batch's
 *     slot at the push, given to link()): what the caller leaves for the
 *     linking thread to finish (the manager: the nonces and tags of the
 *     tokens it is to open), with no allocation.
 *   - Every wait is bounded: the linking thread waits in slices and ends
 *     when told to stop, when the caller closes the load, or on its first
 *     error (which it posts, waking the caller); the caller waiting for
 *     room gives up with -ETIMEDOUT when the linking thread has made no
 *     progress for STALL_MAX (it does only memory work: that is a hang).
 *     The start then fails with the error; it never hangs.
 *   - While the ring is empty the linking thread faults in the part of
 *     malloc's heap just ahead of the caller's newest item
 *     (MADV_POPULATE_WRITE, which never changes what a page holds), so
 *     clearing new pages (a quarter of a one-thread load) is not on the
 *     caller's path. */

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/macro.h"
#include "common/util.h"
#include "daemon/loader.h"

#define BATCH 256
#define RING 16                                      /* batches in flight: 4,096 items */
#define PREFETCH_AHEAD 8                             /* items */
#define CHUNK ((uintptr_t) 2 << 20)                  /* one huge page a madvise() */
#define POPULATE_AHEAD ((uintptr_t) 32 << 20)        /* while idle: this far ahead of the caller */
#define POPULATE_MIN_AHEAD ((uintptr_t) 8 << 20)     /* between batches, when closer than this */
#define WAIT_SLICE (50 * USEC_PER_MSEC)
#define STALL_MAX (60 * USEC_PER_SEC)
#define JOIN_MAX (60 * USEC_PER_SEC)

unsigned loader_test_fail_at = 0;
bool loader_test_one_thread = false;

typedef struct Batch {
        unsigned n;                /* items in it */
        unsigned done;             /* linked: items[0..done) */
        void *items[BATCH];
        uint8_t *sides;            /* BATCH slots of ops->side_size bytes, or NULL */
} Batch;

struct Loader {
        const LoaderOps *ops;
        void *userdata;
        bool threaded;
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t wake_linker, wake_caller;

        /* Under lock: ring[head..tail) (mod RING) are handed over (the
         * linking thread's); the caller fills ring[tail % RING] while
         * open. Without a thread only ring[0] is used. */
        Batch ring[RING];
        uint64_t head, tail;
        bool open;
        bool closed;               /* the caller: no more batches */
        bool stop;                 /* the caller: stop at once */
        bool exited;               /* the linking thread is done */
        int error;                 /* the linking thread's error */
        int failed;                /* the caller's side: the error loader_push() returned */
        unsigned backlog;          /* the caller's: batches not linked yet, at its last hand-over */
        usec_t link_cpu;           /* the linking thread's CPU time, at its end */

        unsigned count;            /* items given to link(), for loader_test_fail_at */
        uint8_t *sides;            /* every batch's side slots, one allocation */

        /* The heap to fault in: the caller's newest item, and (the linking
         * thread's) how far it is populated. */
        _Atomic uintptr_t frontier;
        uintptr_t pop_next, pop_end;
};

static usec_t deadline_in(usec_t d) {
        return usec_add(now(CLOCK_REALTIME), d);
}

static void timed_wait(pthread_cond_t *cond, pthread_mutex_t *lock, usec_t d) {
        usec_t until = deadline_in(d);
        struct timespec ts = { .tv_sec = (time_t) (until / USEC_PER_SEC),
                               .tv_nsec = (long) (until % USEC_PER_SEC) * 1000 };

        (void) pthread_cond_timedwait(cond, lock, &ts);
}

static int link_batch(Loader *l, Batch *b) {
        unsigned n = b->n, i = b->done;
        int r;

        if (l->ops->prefetch)
                for (unsigned j = i; j < n && j < i + PREFETCH_AHEAD; j++)
                        l->ops->prefetch(b->items[j], l->userdata);
        for (; i < n; i++) {
                if (l->ops->prefetch && i + PREFETCH_AHEAD < n)
                        l->ops->prefetch(b->items[i + PREFETCH_AHEAD], l->userdata);
                if (loader_test_fail_at > 0 && ++l->count == loader_test_fail_at)
                        r = -EIO;
                else
                        r = l->ops->link(b->items[i], b->sides ? b->sides + (size_t) i * l->ops->side_size : NULL,
                                         l->userdata);
                if (r < 0) {
                        b->done = i;
                        return r;
                }
        }
        b->done = n;
        return 0;
}

/* One step of faulting in the heap ahead of the caller: true if it did
 * one. */
static bool populate_step(Loader *l, uintptr_t ahead) {
        uintptr_t f = atomic_load_explicit(&l->frontier, memory_order_relaxed), target, len;

        if (l->pop_next >= l->pop_end)
                return false;
        if (l->pop_next < f)
                l->pop_next = f & ~(CHUNK - 1);   /* the caller got there first */
        target = MIN(l->pop_end, f + ahead);
        if (l->pop_next >= target)
                return false;
        len = MIN(CHUNK, l->pop_end - l->pop_next);
        if (madvise((void *) l->pop_next, len, MADV_POPULATE_WRITE) < 0) {
                /* EINVAL: a kernel before 5.14; ENOMEM: the heap is not
                 * there any more. Either way, no more of it. */
                l->pop_end = l->pop_next;
                return false;
        }
        l->pop_next += len;
        return true;
}

static void *linker_main(void *userdata) {
        Loader *l = userdata;
        int r = 0;

        (void) pthread_setname_np(pthread_self(), "tb-loader");
        pthread_mutex_lock(&l->lock);
        for (;;) {
                Batch *b;
                bool did;

                while (l->head == l->tail && !l->closed && !l->stop) {
                        pthread_mutex_unlock(&l->lock);
                        did = populate_step(l, POPULATE_AHEAD);
                        pthread_mutex_lock(&l->lock);
                        if (!did && l->head == l->tail && !l->closed && !l->stop)
                                timed_wait(&l->wake_linker, &l->lock, WAIT_SLICE);
                }
                if (l->stop || l->head == l->tail)
                        break;
                b = &l->ring[l->head % RING];
                pthread_mutex_unlock(&l->lock);

                r = link_batch(l, b);
                if (r >= 0)
                        (void) populate_step(l, POPULATE_MIN_AHEAD);

                pthread_mutex_lock(&l->lock);
                if (r < 0) {
                        l->error = r;
                        break;
                }
                l->head++;
                pthread_cond_signal(&l->wake_caller);
        }
        l->exited = true;
        l->link_cpu = now(CLOCK_THREAD_CPUTIME_ID);
        pthread_cond_broadcast(&l->wake_caller);
        pthread_mutex_unlock(&l->lock);
        return NULL;
}

int loader_new(const LoaderOps *ops, void *userdata, const HeapRegion *heap, bool threaded, Loader **ret) {
        Loader *l;

        assert(ops && ops->link && ops->free && ret);
        l = new0(Loader, 1);
        if (!l)
                return -ENOMEM;
        l->ops = ops;
        l->userdata = userdata;
        l->open = true;
        if (ops->side_size > 0) {
                l->sides = malloc((size_t) RING * BATCH * ops->side_size);
                if (!l->sides) {
                        free(l);
                        return -ENOMEM;
                }
                for (unsigned k = 0; k < RING; k++)
                        l->ring[k].sides = l->sides + (size_t) k * BATCH * ops->side_size;
        }
        if (heap && heap->end > heap->start) {
                l->pop_next = heap->start;
                l->pop_end = heap->end;
                atomic_store_explicit(&l->frontier, heap->start, memory_order_relaxed);
        }
        if (threaded && !loader_test_one_thread) {
                pthread_condattr_t ca;

                (void) pthread_mutex_init(&l->lock, NULL);
                (void) pthread_condattr_init(&ca);
                (void) pthread_cond_init(&l->wake_linker, &ca);
                (void) pthread_cond_init(&l->wake_caller, &ca);
                (void) pthread_condattr_destroy(&ca);
                l->threaded = pthread_create(&l->thread, NULL, linker_main, l) == 0;
                if (!l->threaded) {
                        log_debug("Cannot start the loader's linking thread, loading on one.");
                        pthread_cond_destroy(&l->wake_linker);
                        pthread_cond_destroy(&l->wake_caller);
                        pthread_mutex_destroy(&l->lock);
                }
        }
        *ret = l;
        return 0;
}

bool loader_threaded(const Loader *l) {
        return l->threaded;
}

bool loader_busy(const Loader *l) {
        return l->backlog > RING / 4;
}

/* The caller: room for a batch (or the load's error). */
static int wait_room(Loader *l) {
        usec_t since = now(CLOCK_MONOTONIC);
        uint64_t head;
        int r = 0;

        pthread_mutex_lock(&l->lock);
        head = l->head;
        while (l->tail - l->head >= RING && l->error == 0 && !l->exited) {
                timed_wait(&l->wake_caller, &l->lock, WAIT_SLICE);
                if (l->head != head) {
                        head = l->head;
                        since = now(CLOCK_MONOTONIC);
                } else if (usec_sub(now(CLOCK_MONOTONIC), since) > STALL_MAX) {
                        r = -ETIMEDOUT;
                        break;
                }
        }
        if (r == 0 && l->error < 0)
                r = l->error;
        else if (r == 0 && l->exited)
                r = -EPIPE;   /* cannot happen: it ends only when told, or on an error */
        pthread_mutex_unlock(&l->lock);
        return r;
}

static int hand_over(Loader *l) {
        int r = 0;

        if (!l->threaded) {
                r = link_batch(l, &l->ring[0]);
                if (r < 0)
                        return r;   /* the rest of it is freed by loader_finish() */
                l->ring[0].n = l->ring[0].done = 0;
                return 0;
        }
        pthread_mutex_lock(&l->lock);
        if (l->error < 0)
                r = l->error;   /* kept open: freed by loader_finish() */
        else {
                l->tail++;
                l->open = false;
                l->backlog = (unsigned) (l->tail - l->head);
                pthread_cond_signal(&l->wake_linker);
        }
        pthread_mutex_unlock(&l->lock);
        return r;
}

int loader_push(Loader *l, void *item) {
        return loader_push_side(l, item, NULL);
}

int loader_push_side(Loader *l, void *item, const void *side) {
        Batch *b;
        int r;

        if (l->failed < 0) {
                l->ops->free(item);
                return l->failed;
        }
        if (!l->open) {
                r = wait_room(l);
                if (r < 0) {
                        l->ops->free(item);
                        return (l->failed = r);
                }
                b = &l->ring[l->tail % RING];
                b->n = b->done = 0;
                l->open = true;
        }
        b = &l->ring[l->threaded ? l->tail % RING : 0];
        if (b->sides) {
                uint8_t *slot = b->sides + (size_t) b->n * l->ops->side_size;

                if (side)
                        memcpy(slot, side, l->ops->side_size);
                else
                        memset(slot, 0, l->ops->side_size);
        }
        b->items[b->n++] = item;
        atomic_store_explicit(&l->frontier, (uintptr_t) item, memory_order_relaxed);
        if (b->n < BATCH)
                return 0;
        r = hand_over(l);
        return r < 0 ? (l->failed = r) : 0;
}

static void free_rest(Loader *l, Batch *b) {
        for (unsigned i = b->done; i < b->n; i++)
                l->ops->free(b->items[i]);
        b->n = b->done = 0;
}

int loader_finish(Loader *l, int r, usec_t *ret_link_cpu) {
        if (ret_link_cpu)
                *ret_link_cpu = 0;
        if (!l)
                return r;
        if (r >= 0 && l->failed < 0)
                r = l->failed;   /* a caller that went on after loader_push() failed */
        if (!l->threaded) {
                if (r >= 0 && l->ring[0].n > l->ring[0].done)
                        r = link_batch(l, &l->ring[0]);
                free_rest(l, &l->ring[0]);
                free(l->sides);
                free(l);
                return r;
        }

        pthread_mutex_lock(&l->lock);
        if (r < 0 || l->error < 0)
                l->stop = true;
        else {
                if (l->open && l->ring[l->tail % RING].n > 0) {
                        l->tail++;
                        l->open = false;
                }
                l->closed = true;
        }
        pthread_cond_broadcast(&l->wake_linker);
        pthread_mutex_unlock(&l->lock);

        {
                usec_t until = deadline_in(JOIN_MAX);
                struct timespec ts = { .tv_sec = (time_t) (until / USEC_PER_SEC),
                                       .tv_nsec = (long) (until % USEC_PER_SEC) * 1000 };
                int k = pthread_timedjoin_np(l->thread, NULL, &ts);

                if (k != 0) {
                        /* It still holds the maps it fills: nothing can be
                         * freed safely, nor can the start go on. */
                        log_error_errno(k, "The loader's linking thread did not end in %" PRIu64 " s (%m); exiting.",
                                        JOIN_MAX / USEC_PER_SEC);
                        _exit(EXIT_FAILURE);
                }
        }
        if (r >= 0 && l->error < 0)
                r = l->error;
        if (ret_link_cpu)
                *ret_link_cpu = l->link_cpu;
        for (uint64_t s = l->head; s < l->tail; s++)
                free_rest(l, &l->ring[s % RING]);
        if (l->open)
                free_rest(l, &l->ring[l->tail % RING]);
        pthread_cond_destroy(&l->wake_linker);
        pthread_cond_destroy(&l->wake_caller);
        pthread_mutex_destroy(&l->lock);
        free(l->sides);
        free(l);
        return r;
}
