/* SPDX-License-Identifier: MIT */
#pragma once

/* A hierarchical timing wheel for per-connection refresh deadlines.
 *
 * The daemon may hold a million deadlines but sd-event gets exactly one
 * timer source: it is armed to timerwheel_next() and, when it fires, the
 * loop calls timerwheel_advance() with the current time. Entries are
 * intrusive (embedded in the owner, no allocation per entry) and insert and
 * cancel are O(1).
 *
 * Time is whatever monotonic usec_t the caller passes in; the wheel never
 * reads a clock. Deadlines are rounded up to the tick given at creation: an
 * entry fires at the first tick boundary (a multiple of the tick) that is
 * >= its deadline, i.e. in the first timerwheel_advance() whose now reaches
 * that boundary. It never fires early, and if advance is called at the times
 * timerwheel_next() returns it fires less than one tick late. A deadline that
 * is already due when armed (<= the latest now the wheel has seen) fires on
 * the next timerwheel_advance() call.
 *
 * Not thread-safe: one wheel belongs to one event loop. */

#include "common/macro.h"

#ifndef container_of
/* Get from an embedded member back to the struct containing it. */
#define container_of(ptr, type, member)                                     \
        ((type *) ((char *) (1 ? (ptr) : &((type *) 0)->member) -           \
                   offsetof(type, member)))
#endif

typedef struct TimerWheel TimerWheel;
typedef struct TimerEntry TimerEntry;

/* Embed one of these in the owner and zero-initialise it (new0() or "= {}"
 * does): all-zero means "not armed". Only 'deadline' may be read by the
 * owner, and only while the entry is armed; everything else is the wheel's. */
struct TimerEntry {
        TimerEntry *next, *prev;
        usec_t deadline;
        uint8_t where; /* which list: 0 = not armed */
        uint8_t slot;  /* slot index, for lists in the wheel proper */
        /* Not the wheel's: 6 bytes the owner may keep fields of its own in
         * (they would be padding otherwise; like HashmapNode.spare). The
         * wheel never reads or writes them. */
        uint8_t spare[6];
};

/* Called once per expired entry from timerwheel_advance(). The entry is
 * already disarmed when the handler runs, so the handler may re-arm it with
 * timerwheel_add(), free its owner, or add and cancel any other entry
 * (including one that was due in the same advance: it will then not fire).
 * 'now' is the time given to timerwheel_advance(). The handler must not call
 * timerwheel_advance() or timerwheel_free() on the same wheel. */
typedef void (*timerwheel_handler_t)(TimerEntry *e, usec_t now, void *userdata);

/* Create a wheel with the given tick (granularity, > 0) whose clock starts
 * at 'now'. Returns 0, -EINVAL for a zero tick, or -ENOMEM. */
int timerwheel_new(TimerWheel **ret, usec_t tick, usec_t now);

/* Free the wheel. Accepts NULL, returns NULL. Entries still armed are
 * forgotten without being touched, so their owners may already be gone
 * (and _cleanup_ order does not matter). An entry that is still alive
 * keeps stale list pointers: zero it before arming it on another wheel. */
TimerWheel *timerwheel_free(TimerWheel *w);
DEFINE_TRIVIAL_CLEANUP_FUNC(TimerWheel *, timerwheel_free)

/* Arm 'e' to fire at 'deadline'. If 'e' is already armed it is moved to the
 * new deadline. O(1). For "no deadline" cancel instead: a USEC_INFINITY
 * deadline stays armed and never fires before now reaches USEC_INFINITY. */
void timerwheel_add(TimerWheel *w, TimerEntry *e, usec_t deadline);

/* Disarm 'e'. No-op if it is not armed. O(1). */
void timerwheel_cancel(TimerWheel *w, TimerEntry *e);

static inline bool timerwheel_entry_armed(const TimerEntry *e) {
        return e->where != 0;
}

/* The earliest time at which timerwheel_advance() may have work to do:
 * the exact tick boundary of the earliest deadline if that lies in the
 * current 64-tick block, otherwise an earlier point where entries must be
 * cascaded into a finer level (advancing there may fire nothing; just ask
 * next() again). Never later than the earliest deadline's tick boundary.
 * If an entry is already due the result is the latest now the wheel has
 * seen, so an sd-event timer armed to it fires immediately. USEC_INFINITY
 * if nothing is armed (or only entries whose tick boundary is past the
 * end of usec_t, see timerwheel_add()). Cheap enough to call after every
 * advance and every add: O(levels), no scan of entries. */
usec_t timerwheel_next(TimerWheel *w);

/* Move the wheel's clock to 'now' and call 'fn' for every entry whose tick
 * boundary is <= now, in tick order (order within one tick is unspecified).
 * Entries that were already due when armed fire first.
 *
 * The wheel's clock moves through the due ticks one by one, so an entry a
 * handler arms for a later tick that is still <= now fires later in this
 * same call, after the current tick. One armed for the tick being fired or
 * earlier is due and fires on the next call, never in this one: a handler
 * re-arming itself at "now" cannot livelock the loop.
 *
 * A 'now' earlier than a previous one is treated as the previous one.
 * Returns the number of handler calls. */
size_t timerwheel_advance(TimerWheel *w, usec_t now, timerwheel_handler_t fn, void *userdata);

/* The same, firing at most max entries (max > 0): the loop's way to fire
 * a storm of deadlines a slice at a time with other work in between. What
 * is left is fired first by the next call, in the order this one would
 * have fired it, and timerwheel_next() returns a time <= now until it is
 * done, so a timer armed to it fires again at once. Entries handlers add
 * meanwhile keep the rules above (due ones wait for a later call). */
size_t timerwheel_advance_max(TimerWheel *w, usec_t now, size_t max, timerwheel_handler_t fn, void *userdata);

/* Number of armed entries. O(1). */
size_t timerwheel_size(const TimerWheel *w);
