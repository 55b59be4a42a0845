/* SPDX-License-Identifier: MIT */

/* Hierarchical timing wheel.
 *
 * Time is counted in ticks (usec / tick). 'cur' is the last tick that has
 * been processed. Level L has 64 slots of 64^L ticks each; 9 levels cover
 * 2^54 ticks (570 years at a 1 us tick, ~571000 years at 1 ms). An entry
 * due at tick dt sits at the level of the highest 6-bit group in which dt
 * and cur differ, in the slot given by dt's bits of that group. So every
 * entry on level L shares cur's bits above L, and its slot is strictly
 * greater than cur's slot on that level. When cur reaches the start of an
 * occupied slot, the slot is cascaded: its entries are re-placed against
 * the new cur and land on a finer level (or are due). Entries whose dt
 * differs from cur above bit 54 wait on an overflow list, re-placed when
 * cur enters the 2^54-tick epoch of the earliest of them.
 *
 * Because every occupied slot lies after cur, and a finer level's slots
 * all lie before the next slot of any coarser level, the next event is
 * simply the first set bit of the lowest non-empty level's occupancy
 * bitmap. Ticks without events are skipped, so advancing over a long idle
 * stretch costs nothing.
 *
 * Costs, n = armed entries, levels = 9:
 *   timerwheel_add()      O(1) (one 64-bit division to round the deadline)
 *   timerwheel_cancel()   O(1)
 *   timerwheel_next()     O(levels): find the lowest non-zero bitmap, ctz
 *   timerwheel_advance()  amortised O(1) per entry per level it cascades
 *                         through (at most levels, usually 1-3), plus
 *                         O(levels) per tick that has work; O(overflow
 *                         entries) per 2^54-tick epoch, i.e. never in
 *                         practice.
 *   memory                32 bytes per entry (embedded), ~4.7 KiB per wheel.
 *
 * Slot lists are NULL-terminated and doubly linked, with the head pointer
 * in the wheel; an entry records which list it is on ('where', 'slot') so
 * that unlinking can fix the head and clear the occupancy bit in O(1). */

#include "daemon/timerwheel.h"

#define TW_BITS 6U
#define TW_SLOTS (1U << TW_BITS)
#define TW_MASK ((uint64_t) TW_SLOTS - 1)
#define TW_LEVELS 9U
#define TW_WHEEL_BITS (TW_BITS * TW_LEVELS)

/* Values of TimerEntry.where. 0 must mean "not armed", so that a
 * zero-initialised entry is valid. */
enum {
        TW_NONE = 0,
        TW_LEVEL0 = 1,                      /* .. TW_LEVEL0 + TW_LEVELS - 1 */
        TW_OVERFLOW = TW_LEVEL0 + TW_LEVELS,
        TW_PENDING,                         /* due when armed; fire on next advance */
        TW_EXPIRED,                         /* pending entries being fired right now */
};

struct TimerWheel {
        usec_t tick;
        uint64_t cur;      /* last processed tick */
        usec_t now;        /* latest time seen; >= cur * tick */
        size_t n_entries;
        bool in_advance;

        uint64_t occupied[TW_LEVELS];
        TimerEntry *slots[TW_LEVELS][TW_SLOTS];

        TimerEntry *overflow;
        uint64_t overflow_min; /* <= every overflow entry's tick (may be stale low) */
        TimerEntry *pending;
        TimerEntry *expired;
};

/* First tick boundary >= usec. Written without adding tick - 1 so that
 * deadlines near USEC_INFINITY cannot wrap. */
static uint64_t timerwheel_usec_to_tick(const TimerWheel *w, usec_t usec) {
        return usec / w->tick + (usec % w->tick != 0);
}

/* Saturates: a tick whose start is not representable is "never". */
static usec_t timerwheel_tick_to_usec(const TimerWheel *w, uint64_t t) {
        if (t > USEC_INFINITY / w->tick)
                return USEC_INFINITY;
        return t * w->tick;
}

static TimerEntry **timerwheel_head(TimerWheel *w, uint8_t where, uint8_t slot) {
        switch (where) {
        case TW_OVERFLOW:
                return &w->overflow;
        case TW_PENDING:
                return &w->pending;
        case TW_EXPIRED:
                return &w->expired;
        default:
                assert(where >= TW_LEVEL0 && where < TW_LEVEL0 + TW_LEVELS);
                assert(slot < TW_SLOTS);
                return &w->slots[where - TW_LEVEL0][slot];
        }
}

static void timerwheel_link(TimerWheel *w, TimerEntry *e, uint8_t where, uint8_t slot) {
        TimerEntry **head = timerwheel_head(w, where, slot);

        e->where = where;
        e->slot = slot;
        e->prev = NULL;
        e->next = *head;
        if (*head)
                (*head)->prev = e;
        *head = e;

        if (where >= TW_LEVEL0 && where < TW_LEVEL0 + TW_LEVELS)
                w->occupied[where - TW_LEVEL0] |= UINT64_C(1) << slot;
}

/* Takes the entry off its list and leaves it zeroed, i.e. not armed. Does
 * not touch n_entries: moves relink right away. */
static void timerwheel_unlink(TimerWheel *w, TimerEntry *e) {
        TimerEntry **head = timerwheel_head(w, e->where, e->slot);

        if (e->prev)
                e->prev->next = e->next;
        else {
                assert(*head == e);
                *head = e->next;
        }
        if (e->next)
                e->next->prev = e->prev;

        if (!*head && e->where >= TW_LEVEL0 && e->where < TW_LEVEL0 + TW_LEVELS)
                w->occupied[e->where - TW_LEVEL0] &= ~(UINT64_C(1) << e->slot);

        e->next = e->prev = NULL;
        e->where = TW_NONE;
        e->slot = 0;
}

/* Put an entry into the wheel proper relative to w->cur. Its tick must be
 * >= cur; == cur only happens while cascading at tick cur, and then the
 * entry goes into cur's own level-0 slot, which advance drains right after
 * the cascade. */
static void timerwheel_place(TimerWheel *w, TimerEntry *e) {
        uint64_t t = timerwheel_usec_to_tick(w, e->deadline);
        uint64_t diff = t ^ w->cur;
        unsigned level;

        assert(t >= w->cur);

        if (diff >> TW_WHEEL_BITS) {
                timerwheel_link(w, e, TW_OVERFLOW, 0);
                w->overflow_min = MIN(w->overflow_min, t);
                return;
        }

        /* Highest differing 6-bit group; diff == 0 means "due at cur". */
        level = diff ? (unsigned) (63 - __builtin_clzll(diff)) / TW_BITS : 0;
        timerwheel_link(w, e, (uint8_t) (TW_LEVEL0 + level),
                        (uint8_t) ((t >> (level * TW_BITS)) & TW_MASK));
}

int timerwheel_new(TimerWheel **ret, usec_t tick, usec_t now) {
        TimerWheel *w;

        assert(ret);

        if (tick == 0)
                return -EINVAL;

        w = new0(TimerWheel, 1);
        if (!w)
                return -ENOMEM;

        w->tick = tick;
        w->cur = now / tick;
        w->now = now;
        w->overflow_min = UINT64_MAX;

        *ret = w;
        return 0;
}

TimerWheel *timerwheel_free(TimerWheel *w) {
        if (!w)
                return NULL;

        assert(!w->in_advance);

        /* Deliberately no walk over the remaining entries: at teardown the
         * owners (connections) are often freed before or after the wheel in
         * no particular order, and the wheel must not read their memory. */
        free(w);
        return NULL;
}

void timerwheel_add(TimerWheel *w, TimerEntry *e, usec_t deadline) {
        assert(w);
        assert(e);

        if (timerwheel_entry_armed(e))
                timerwheel_unlink(w, e);
        else
                w->n_entries++;

        e->deadline = deadline;

        /* Already due: comparing against the time rather than cur's tick
         * makes "deadline = now - 1 us" fire on the next advance instead of
         * waiting for the next tick boundary. It also guarantees that
         * anything placed in the wheel is strictly after cur. */
        if (deadline <= w->now)
                timerwheel_link(w, e, TW_PENDING, 0);
        else
                timerwheel_place(w, e);
}

void timerwheel_cancel(TimerWheel *w, TimerEntry *e) {
        assert(w);
        assert(e);

        if (!timerwheel_entry_armed(e))
                return;

        timerwheel_unlink(w, e);
        assert(w->n_entries > 0);
        w->n_entries--;
}

/* The next tick at which the wheel proper has something to do (a level-0
 * slot to fire or a higher slot to cascade). It is > cur, except while
 * advance is draining cur's own level-0 slot. False if the wheel and the
 * overflow list are empty. */
static bool timerwheel_next_tick(const TimerWheel *w, uint64_t *ret) {
        for (unsigned l = 0; l < TW_LEVELS; l++) {
                unsigned shift = l * TW_BITS;
                uint64_t upper;

                if (!w->occupied[l])
                        continue;

                /* cur's bits above this level, then the first occupied
                 * slot's start. The shift is at most 54, so it is defined. */
                upper = (w->cur >> (shift + TW_BITS)) << (shift + TW_BITS);
                *ret = upper | ((uint64_t) __builtin_ctzll(w->occupied[l]) << shift);
                return true;
        }

        if (w->overflow) {
                /* The start of the epoch the earliest overflow entry is in;
                 * it is after cur's epoch, so this cannot be cur. */
                *ret = (w->overflow_min >> TW_WHEEL_BITS) << TW_WHEEL_BITS;
                return true;
        }

        return false;
}

usec_t timerwheel_next(TimerWheel *w) {
        uint64_t t;

        assert(w);

        if (w->pending || w->expired)
                return w->now;

        if (!timerwheel_next_tick(w, &t))
                return USEC_INFINITY;

        return timerwheel_tick_to_usec(w, t);
}

static void timerwheel_cascade_list(TimerWheel *w, TimerEntry *list) {
        /* The list is detached already, so re-placing cannot feed entries
         * back into it even if they land in the same head. */
        while (list) {
                TimerEntry *e = list;

                list = e->next;
                e->next = e->prev = NULL;
                e->where = TW_NONE;
                timerwheel_place(w, e);
        }
}

/* cur has just been set to tick t: pull down every slot that starts at t. */
static void timerwheel_cascade(TimerWheel *w, uint64_t t) {
        if (w->overflow && (t & ((UINT64_C(1) << TW_WHEEL_BITS) - 1)) == 0) {
                TimerEntry *list = w->overflow;

                w->overflow = NULL;
                w->overflow_min = UINT64_MAX;
                timerwheel_cascade_list(w, list);
        }

        /* Coarsest first: entries cascaded from level L land on a level
         * below L, but never in a slot that starts at t (their group there
         * is > t's, which is 0), so no slot needs a second look. */
        for (unsigned l = TW_LEVELS - 1; l >= 1; l--) {
                unsigned shift = l * TW_BITS;
                unsigned slot;
                TimerEntry *list;

                /* Only a slot that starts exactly at t can need it; for
                 * an unaligned t the slot indexed below is cur's own, which
                 * is empty anyway, so this is just the cheap way out. */
                if (t & ((UINT64_C(1) << shift) - 1))
                        continue;

                slot = (unsigned) ((t >> shift) & TW_MASK);
                if (!(w->occupied[l] & (UINT64_C(1) << slot)))
                        continue;

                list = w->slots[l][slot];
                w->slots[l][slot] = NULL;
                w->occupied[l] &= ~(UINT64_C(1) << slot);
                timerwheel_cascade_list(w, list);
        }
}

/* Pop entries off *head one at a time, so that a handler cancelling or
 * moving another entry on the same list is safe; at most max of them. */
static size_t timerwheel_fire_list(TimerWheel *w, TimerEntry **head, usec_t now, size_t max,
                                   timerwheel_handler_t fn, void *userdata) {
        size_t n = 0;

        while (*head && n < max) {
                TimerEntry *e = *head;

                timerwheel_unlink(w, e);
                w->n_entries--;
                n++;
                /* Last touch of e: the handler may free it. */
                fn(e, now, userdata);
        }
        return n;
}

size_t timerwheel_advance(TimerWheel *w, usec_t now, timerwheel_handler_t fn, void *userdata) {
        return timerwheel_advance_max(w, now, SIZE_MAX, fn, userdata);
}

size_t timerwheel_advance_max(TimerWheel *w, usec_t now, size_t max, timerwheel_handler_t fn, void *userdata) {
        uint64_t target, t;
        size_t n = 0;

        assert(w);
        assert(fn);
        assert(max > 0);
        assert(!w->in_advance);

        w->in_advance = true;
        target = now / w->tick;

        if (w->expired || w->slots[0][w->cur & TW_MASK]) {
                /* What an earlier call left when it ran out of budget: the
                 * rest of the pending entries it was firing, then the rest
                 * of cur's own level-0 slot (nothing new lands there: an
                 * entry due at cur is pending). That is all this call
                 * does, so what handlers arm as due waits for the next. */
                n += timerwheel_fire_list(w, &w->expired, now, max, fn, userdata);
                if (!w->expired)
                        n += timerwheel_fire_list(w, &w->slots[0][w->cur & TW_MASK], now, max - n, fn, userdata);
                goto finish;
        }

        /* What was already due fires first. Move it aside so that entries
         * that handlers arm as already due wait for the next advance. */
        if (w->pending) {
                TimerEntry *list = w->pending;

                w->pending = NULL;
                for (TimerEntry *e = list; e; e = e->next)
                        e->where = TW_EXPIRED;
                w->expired = list;

                n += timerwheel_fire_list(w, &w->expired, now, max, fn, userdata);
        }

        /* One event (fire and/or cascade) at a time, firing before looking
         * for the next one, so entries handlers add at later ticks are seen
         * and ticks stay in order. */
        while (n < max && timerwheel_next_tick(w, &t) && t <= target) {
                assert(t > w->cur); /* progress, or this would spin */
                w->cur = t;
                /* t * tick <= now, so this cannot overflow. */
                w->now = MAX(w->now, t * w->tick);

                timerwheel_cascade(w, t);

                /* Handlers only add entries after cur, so this slot does
                 * not refill while it is being drained. */
                n += timerwheel_fire_list(w, &w->slots[0][t & TW_MASK], now, max - n, fn, userdata);
        }

finish:
        /* Nothing is due up to target, so skipping there keeps every
         * occupied slot after cur. Out of budget, cur stays where firing
         * stopped and timerwheel_next() says the rest is due (w->now, or
         * a tick <= now). */
        if (!w->expired && !w->slots[0][w->cur & TW_MASK] && !(timerwheel_next_tick(w, &t) && t <= target)) {
                w->cur = MAX(w->cur, target);
                w->now = MAX(w->now, now);
        }

        w->in_advance = false;
        return n;
}

size_t timerwheel_size(const TimerWheel *w) {
        assert(w);
        return w->n_entries;
}
