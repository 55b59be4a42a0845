/* SPDX-License-Identifier: MIT */

/* Unit tests for daemon/timerwheel.c. Time is simulated: every test passes
 * its own usec_t values, random data comes from a fixed-seed xorshift, and
 * every loop has a hard bound, so runs are deterministic and terminate. */

#define TESTS_MAIN
#include "tests.h"

#include "daemon/timerwheel.h"

#define USEC_PER_YEAR (365ULL * USEC_PER_DAY)

/* xorshift64*: tiny, good enough, and repeatable across runs. */
static uint64_t rng_state;

static void rng_seed(uint64_t seed) {
        rng_state = seed ? seed : 0x9e3779b97f4a7c15ULL;
}

static uint64_t rng_next(void) {
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * 0x2545f4914f6cdd1dULL;
}

/* Uniform-ish in [0, n); n > 0. The modulo bias is irrelevant here. */
static uint64_t rng_below(uint64_t n) {
        return rng_next() % n;
}

/* First tick boundary >= d, the time an entry is supposed to fire at. */
static usec_t boundary(usec_t d, usec_t tick) {
        return (d / tick + (d % tick != 0)) * tick;
}

/* The owner of an entry, as a connection would be in the daemon. */
typedef struct Item {
        TimerEntry timer;
        unsigned id;
        usec_t deadline;   /* what we armed, kept outside the wheel */
        unsigned fired;
        usec_t fired_at;
        unsigned rearm;    /* how many more times to re-arm from the handler */
        usec_t period;
        struct Item *victim; /* cancelled from this item's handler */
} Item;

/* Records the firing order of a test. */
typedef struct Log {
        unsigned ids[64];
        usec_t at[64];
        unsigned n;
        TimerWheel *w;
} Log;

static void log_handler(TimerEntry *e, usec_t now, void *userdata) {
        Item *it = container_of(e, Item, timer);
        Log *log = userdata;

        it->fired++;
        it->fired_at = now;
        if (log->n < ELEMENTSOF(log->ids)) {
                log->ids[log->n] = it->id;
                log->at[log->n] = now;
        }
        log->n++;

        CHECK(!timerwheel_entry_armed(e));

        if (it->victim)
                timerwheel_cancel(log->w, &it->victim->timer);

        if (it->rearm > 0) {
                it->rearm--;
                it->deadline += it->period;
                timerwheel_add(log->w, e, it->deadline);
        }
}

/* Drive the wheel the way the daemon does: advance exactly at the times
 * timerwheel_next() asks for, up to 'until'. Returns the number of advance
 * calls, or max_calls + 1 if the bound was hit. */
static unsigned drive(TimerWheel *w, usec_t until, timerwheel_handler_t fn, void *userdata,
                      unsigned max_calls) {
        unsigned calls = 0;

        for (;;) {
                usec_t t = timerwheel_next(w);

                if (t == USEC_INFINITY || t > until)
                        return calls;
                if (calls >= max_calls)
                        return max_calls + 1;
                (void) timerwheel_advance(w, t, fn, userdata);
                calls++;
        }
}

static TimerWheel *wheel(usec_t tick, usec_t now) {
        TimerWheel *w = NULL;

        CHECK_EQ_INT(timerwheel_new(&w, tick, now), 0);
        assert(w);
        return w;
}

TEST(new_rejects_zero_tick) {
        TimerWheel *w = NULL;

        CHECK_EQ_INT(timerwheel_new(&w, 0, 0), -EINVAL);
        CHECK(!w);
        CHECK(!timerwheel_free(NULL));
}

TEST(next_on_empty_is_infinity) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_MSEC, 5 * USEC_PER_SEC);
        Log log = { .w = w };

        CHECK(timerwheel_next(w) == USEC_INFINITY);
        CHECK_EQ_INT(timerwheel_advance(w, 10 * USEC_PER_SEC, log_handler, &log), 0);
        CHECK(timerwheel_next(w) == USEC_INFINITY);

        /* And again once the last entry is gone. */
        Item a = { .id = 1 };
        timerwheel_add(w, &a.timer, 11 * USEC_PER_SEC);
        CHECK(timerwheel_next(w) != USEC_INFINITY);
        timerwheel_cancel(w, &a.timer);
        CHECK(timerwheel_next(w) == USEC_INFINITY);
}

TEST(zero_initialised_entry_is_not_armed) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_MSEC, 0);
        Item a = {};

        CHECK(!timerwheel_entry_armed(&a.timer));
        timerwheel_cancel(w, &a.timer); /* no-op */
        CHECK_EQ_INT(timerwheel_size(w), 0);
        timerwheel_add(w, &a.timer, USEC_PER_SEC);
        CHECK(timerwheel_entry_armed(&a.timer));
        CHECK(a.timer.deadline == USEC_PER_SEC);
        timerwheel_cancel(w, &a.timer);
        CHECK(!timerwheel_entry_armed(&a.timer));
}

TEST(size_accounting) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_MSEC, 0);
        Item it[5] = {};
        Log log = { .w = w };

        for (unsigned i = 0; i < ELEMENTSOF(it); i++) {
                it[i].id = i;
                timerwheel_add(w, &it[i].timer, (i + 1) * 10 * USEC_PER_MSEC);
                CHECK_EQ_INT(timerwheel_size(w), i + 1);
        }

        /* Moving an armed entry does not count it twice. */
        timerwheel_add(w, &it[0].timer, 3 * USEC_PER_DAY);
        CHECK_EQ_INT(timerwheel_size(w), 5);

        timerwheel_cancel(w, &it[1].timer);
        CHECK_EQ_INT(timerwheel_size(w), 4);
        timerwheel_cancel(w, &it[1].timer); /* double cancel is a no-op */
        CHECK_EQ_INT(timerwheel_size(w), 4);

        /* 30, 40, 50 ms fire; it[0] was moved out to 3 days. */
        CHECK_EQ_INT(timerwheel_advance(w, 50 * USEC_PER_MSEC, log_handler, &log), 3);
        CHECK_EQ_INT(timerwheel_size(w), 1);

        /* Already due entries are counted too. */
        timerwheel_add(w, &it[1].timer, 0);
        CHECK_EQ_INT(timerwheel_size(w), 2);
        CHECK_EQ_INT(timerwheel_advance(w, 50 * USEC_PER_MSEC, log_handler, &log), 1);
        CHECK_EQ_INT(timerwheel_size(w), 1);
}

TEST(ordering_across_ticks) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_MSEC, 0);
        /* Added out of order, spread over level 0 and level 1/2 slots. */
        static const usec_t ms[] = { 700, 3, 130, 64, 1, 65, 4095, 4096, 63, 2, 999, 128 };
        Item it[ELEMENTSOF(ms)] = {};
        Log log = { .w = w };
        unsigned calls;

        for (unsigned i = 0; i < ELEMENTSOF(ms); i++) {
                it[i].id = i;
                timerwheel_add(w, &it[i].timer, ms[i] * USEC_PER_MSEC);
        }

        calls = drive(w, USEC_INFINITY - 1, log_handler, &log, 1000);
        CHECK(calls <= 1000);
        CHECK_EQ_INT(log.n, ELEMENTSOF(ms));
        for (unsigned i = 1; i < log.n; i++)
                CHECK(ms[log.ids[i - 1]] < ms[log.ids[i]]);
        for (unsigned i = 0; i < log.n; i++)
                CHECK(log.at[i] == ms[log.ids[i]] * USEC_PER_MSEC);
        CHECK_EQ_INT(timerwheel_size(w), 0);
}

TEST(ordering_within_one_big_advance) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(10 * USEC_PER_MSEC, 0);
        Item it[40] = {};
        Log log = { .w = w };

        /* Deadlines 1 s .. 40 s in a scrambled order; one advance covers all
         * of them and must still fire them tick by tick. */
        for (unsigned i = 0; i < ELEMENTSOF(it); i++) {
                unsigned k = (i * 17) % ELEMENTSOF(it);

                it[i].id = k;
                timerwheel_add(w, &it[i].timer, (k + 1) * USEC_PER_SEC);
        }

        CHECK_EQ_INT(timerwheel_advance(w, 100 * USEC_PER_SEC, log_handler, &log), 40);
        CHECK_EQ_INT(log.n, 40);
        for (unsigned i = 0; i < 40 && i < log.n; i++)
                CHECK_EQ_INT(log.ids[i], i);
}

TEST(same_tick_all_fire) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(10 * USEC_PER_MSEC, 0);
        Item it[20] = {};
        Log log = { .w = w };

        /* All round up to the 2 s boundary, including ones added with
         * deadlines inside the tick. */
        for (unsigned i = 0; i < ELEMENTSOF(it); i++) {
                it[i].id = i;
                timerwheel_add(w, &it[i].timer, 2 * USEC_PER_SEC - i * 100);
        }

        CHECK(timerwheel_next(w) <= 2 * USEC_PER_SEC);
        CHECK_EQ_INT(timerwheel_advance(w, 1990 * USEC_PER_MSEC, log_handler, &log), 0);
        CHECK(drive(w, USEC_INFINITY - 1, log_handler, &log, 100) <= 100);
        CHECK_EQ_INT(log.n, ELEMENTSOF(it));
        for (unsigned i = 0; i < ELEMENTSOF(it); i++) {
                CHECK_EQ_INT(it[i].fired, 1);
                CHECK(it[i].fired_at == 2 * USEC_PER_SEC);
        }
}

TEST(rounds_up_to_tick_never_early) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(10 * USEC_PER_MSEC, 0);
        Item a = { .id = 1 };
        Log log = { .w = w };

        timerwheel_add(w, &a.timer, 15 * USEC_PER_MSEC);
        /* Level 0: next() is the exact boundary, not the deadline itself. */
        CHECK(timerwheel_next(w) == 20 * USEC_PER_MSEC);

        CHECK_EQ_INT(timerwheel_advance(w, 10 * USEC_PER_MSEC, log_handler, &log), 0);
        CHECK_EQ_INT(timerwheel_advance(w, 15 * USEC_PER_MSEC, log_handler, &log), 0);
        CHECK_EQ_INT(timerwheel_advance(w, 19999, log_handler, &log), 0);
        CHECK_EQ_INT(a.fired, 0);
        CHECK_EQ_INT(timerwheel_advance(w, 20 * USEC_PER_MSEC, log_handler, &log), 1);
        CHECK_EQ_INT(a.fired, 1);
}

TEST(unaligned_start_time) {
        /* A real monotonic clock does not start on a tick boundary. */
        const usec_t start = 123456789;
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_MSEC, start);
        Item a = { .id = 1 }, b = { .id = 2 };
        Log log = { .w = w };

        timerwheel_add(w, &a.timer, start + 1);    /* rounds to 123457000 */
        timerwheel_add(w, &b.timer, start + 5 * USEC_PER_SEC);
        CHECK(timerwheel_next(w) == 123457000);
        CHECK_EQ_INT(timerwheel_advance(w, 123456999, log_handler, &log), 0);
        CHECK_EQ_INT(timerwheel_advance(w, 123457000, log_handler, &log), 1);
        CHECK(drive(w, USEC_INFINITY - 1, log_handler, &log, 100) <= 100);
        CHECK_EQ_INT(b.fired, 1);
        CHECK(b.fired_at == boundary(start + 5 * USEC_PER_SEC, USEC_PER_MSEC));
}

TEST(cancel_before_fire) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_MSEC, 0);
        Item a = { .id = 1 }, b = { .id = 2 }, c = { .id = 3 };
        Log log = { .w = w };

        timerwheel_add(w, &a.timer, 5 * USEC_PER_MSEC);          /* level 0 */
        timerwheel_add(w, &b.timer, 5 * USEC_PER_SEC);           /* higher level */
        timerwheel_add(w, &c.timer, 5 * USEC_PER_SEC);
        timerwheel_cancel(w, &a.timer);
        timerwheel_cancel(w, &b.timer);

        CHECK(drive(w, USEC_INFINITY - 1, log_handler, &log, 100) <= 100);
        CHECK_EQ_INT(a.fired, 0);
        CHECK_EQ_INT(b.fired, 0);
        CHECK_EQ_INT(c.fired, 1);
        CHECK_EQ_INT(log.n, 1);
        CHECK(timerwheel_next(w) == USEC_INFINITY);
}

TEST(cancel_due_entry_from_other_callback) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_MSEC, 0);
        Item a = { .id = 1 }, b = { .id = 2 }, c = { .id = 3 };
        Log log = { .w = w };

        /* Same tick, order within a tick unspecified: each cancels the
         * other, so exactly one of them must fire. */
        a.victim = &b;
        b.victim = &a;
        timerwheel_add(w, &a.timer, 7 * USEC_PER_MSEC);
        timerwheel_add(w, &b.timer, 7 * USEC_PER_MSEC);
        timerwheel_add(w, &c.timer, 7 * USEC_PER_MSEC);

        CHECK_EQ_INT(timerwheel_advance(w, 7 * USEC_PER_MSEC, log_handler, &log), 2);
        CHECK_EQ_INT(a.fired + b.fired, 1);
        CHECK_EQ_INT(c.fired, 1);
        CHECK_EQ_INT(timerwheel_size(w), 0);

        /* The same on the list of entries that were already due when armed. */
        a.fired = b.fired = c.fired = 0;
        timerwheel_add(w, &a.timer, 0);
        timerwheel_add(w, &b.timer, 1);
        timerwheel_add(w, &c.timer, 2);
        CHECK_EQ_INT(timerwheel_advance(w, 8 * USEC_PER_MSEC, log_handler, &log), 2);
        CHECK_EQ_INT(a.fired + b.fired, 1);
        CHECK_EQ_INT(c.fired, 1);

        /* And a due entry at a later tick of the same advance. */
        Item d = { .id = 4 }, e = { .id = 5 };
        d.victim = &e;
        timerwheel_add(w, &d.timer, 10 * USEC_PER_MSEC);
        timerwheel_add(w, &e.timer, 20 * USEC_PER_MSEC);
        CHECK_EQ_INT(timerwheel_advance(w, 30 * USEC_PER_MSEC, log_handler, &log), 1);
        CHECK_EQ_INT(d.fired, 1);
        CHECK_EQ_INT(e.fired, 0);
        CHECK_EQ_INT(timerwheel_size(w), 0);
}

TEST(readd_from_own_callback) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_MSEC, 0);
        Item a = { .id = 1, .rearm = 9, .period = 250 * USEC_PER_MSEC };
        Log log = { .w = w };

        a.deadline = 250 * USEC_PER_MSEC;
        timerwheel_add(w, &a.timer, a.deadline);

        CHECK(drive(w, USEC_INFINITY - 1, log_handler, &log, 1000) <= 1000);
        CHECK_EQ_INT(a.fired, 10);
        for (unsigned i = 0; i < 10 && i < log.n; i++)
                CHECK(log.at[i] == (i + 1) * 250 * USEC_PER_MSEC);
        CHECK(!timerwheel_entry_armed(&a.timer));

        /* Re-armed inside one big advance: later periods still fire in it. */
        a.rearm = 3;
        a.fired = 0;
        a.deadline = 3 * USEC_PER_SEC;
        timerwheel_add(w, &a.timer, a.deadline);
        CHECK_EQ_INT(timerwheel_advance(w, 10 * USEC_PER_SEC, log_handler, &log), 4);
        CHECK_EQ_INT(a.fired, 4);
}

static void rearm_now_handler(TimerEntry *e, usec_t now, void *userdata) {
        Log *log = userdata;

        log->n++;
        /* Already due: must wait for the next advance, not loop here. */
        timerwheel_add(log->w, e, now);
}

TEST(readd_due_from_callback_does_not_livelock) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_MSEC, 0);
        Item a = { .id = 1 };
        Log log = { .w = w };

        timerwheel_add(w, &a.timer, 5 * USEC_PER_MSEC);
        CHECK_EQ_INT(timerwheel_advance(w, 5 * USEC_PER_MSEC, rearm_now_handler, &log), 1);
        CHECK(timerwheel_entry_armed(&a.timer));
        /* Due now: next() says "immediately". */
        CHECK(timerwheel_next(w) <= 5 * USEC_PER_MSEC);
        CHECK_EQ_INT(timerwheel_advance(w, 5 * USEC_PER_MSEC, rearm_now_handler, &log), 1);
        /* The clock moves: fired from the due list at the old time (5 ms),
         * re-armed at 6 ms which is a tick this advance still processes, so
         * it fires once more, re-arms at 6 ms again and that one waits. */
        CHECK_EQ_INT(timerwheel_advance(w, 6 * USEC_PER_MSEC, rearm_now_handler, &log), 2);
        CHECK_EQ_INT(log.n, 4);
        /* However long it goes on, one call fires it a bounded number of times. */
        for (unsigned i = 0; i < 100; i++)
                CHECK(timerwheel_advance(w, (7 + i) * USEC_PER_MSEC, rearm_now_handler, &log) <= 2);
        timerwheel_cancel(w, &a.timer);
        CHECK_EQ_INT(timerwheel_size(w), 0);
}

static void add_other_handler(TimerEntry *e, usec_t now, void *userdata) {
        Item *it = container_of(e, Item, timer), *other = it->victim;
        Log *log = userdata;

        it->victim = NULL; /* here it means "arm", not "cancel" */
        log_handler(e, now, userdata);
        /* Arm a later entry that is still within this advance. */
        if (other) {
                other->deadline = it->deadline + 3 * USEC_PER_MSEC;
                timerwheel_add(log->w, &other->timer, other->deadline);
        }
}

TEST(callback_adds_entry_due_later_in_same_advance) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_MSEC, 0);
        Item a = { .id = 1 }, b = { .id = 2 }, c = { .id = 3 };
        Log log = { .w = w };

        a.deadline = 10 * USEC_PER_MSEC;
        a.victim = &b;
        timerwheel_add(w, &a.timer, a.deadline);
        timerwheel_add(w, &c.timer, 20 * USEC_PER_MSEC);

        /* a at 10 ms arms b at 13 ms, which must fire before c at 20 ms. */
        CHECK_EQ_INT(timerwheel_advance(w, 50 * USEC_PER_MSEC, add_other_handler, &log), 3);
        CHECK_EQ_INT(log.n, 3);
        CHECK_EQ_INT(log.ids[0], 1);
        CHECK_EQ_INT(log.ids[1], 2);
        CHECK_EQ_INT(log.ids[2], 3);
}

static void free_handler(TimerEntry *e, usec_t now, void *userdata) {
        Item *it = container_of(e, Item, timer);
        unsigned *n = userdata;

        (void) now;
        (*n)++;
        free(it);
}

TEST(callback_may_free_owner) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_MSEC, 0);
        unsigned n = 0;

        /* ASan catches any touch of the entry after its handler. */
        for (unsigned i = 0; i < 100; i++) {
                Item *it = new0(Item, 1);

                assert(it);
                timerwheel_add(w, &it->timer, i < 50 ? 0 : (i % 7) * USEC_PER_MSEC);
        }
        CHECK_EQ_INT(timerwheel_advance(w, USEC_PER_SEC, free_handler, &n), 100);
        CHECK_EQ_INT(n, 100);
        CHECK_EQ_INT(timerwheel_size(w), 0);
}

TEST(past_deadline_fires_on_next_advance) {
        const usec_t t0 = 100 * USEC_PER_SEC, ms = USEC_PER_MSEC;
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_SEC, t0 + 500 * ms);
        Item a = { .id = 1 }, b = { .id = 2 }, c = { .id = 3 }, d = { .id = 4 };
        Log log = { .w = w };

        timerwheel_add(w, &a.timer, 0);              /* long ago */
        timerwheel_add(w, &b.timer, t0 + 200 * ms);  /* < now, same tick */
        timerwheel_add(w, &c.timer, t0 + 500 * ms);  /* == now */
        timerwheel_add(w, &d.timer, t0 + 600 * ms);  /* future */
        CHECK(timerwheel_next(w) <= t0 + 500 * ms);

        /* Even an advance that does not move the clock fires them. */
        CHECK_EQ_INT(timerwheel_advance(w, t0 + 500 * ms, log_handler, &log), 3);
        CHECK_EQ_INT(a.fired + b.fired + c.fired, 3);
        CHECK_EQ_INT(d.fired, 0);
        CHECK(timerwheel_next(w) == 101 * USEC_PER_SEC);
        CHECK_EQ_INT(timerwheel_advance(w, 101 * USEC_PER_SEC, log_handler, &log), 1);
        CHECK_EQ_INT(d.fired, 1);
}

TEST(time_going_backwards_never_fires_early) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_MSEC, 10 * USEC_PER_SEC);
        Item a = { .id = 1 };
        Log log = { .w = w };

        timerwheel_add(w, &a.timer, 11 * USEC_PER_SEC);
        CHECK_EQ_INT(timerwheel_advance(w, 5 * USEC_PER_SEC, log_handler, &log), 0);
        CHECK_EQ_INT(timerwheel_advance(w, 0, log_handler, &log), 0);
        CHECK_EQ_INT(timerwheel_advance(w, 11 * USEC_PER_SEC - 1, log_handler, &log), 0);
        CHECK_EQ_INT(timerwheel_advance(w, 11 * USEC_PER_SEC, log_handler, &log), 1);
}

TEST(move_armed_entry) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_MSEC, 0);
        Item a = { .id = 1 };
        Log log = { .w = w };

        timerwheel_add(w, &a.timer, 10 * USEC_PER_MSEC);
        timerwheel_add(w, &a.timer, 2 * USEC_PER_HOUR);  /* later */
        CHECK_EQ_INT(timerwheel_advance(w, USEC_PER_HOUR, log_handler, &log), 0);
        timerwheel_add(w, &a.timer, USEC_PER_HOUR + 5);   /* earlier again */
        CHECK(timerwheel_next(w) == USEC_PER_HOUR + USEC_PER_MSEC);
        CHECK_EQ_INT(timerwheel_advance(w, USEC_PER_HOUR + USEC_PER_MSEC, log_handler, &log), 1);
        CHECK_EQ_INT(a.fired, 1);
        CHECK_EQ_INT(timerwheel_size(w), 0);
}

/* Arm one entry per delay at once, drive by next() and check each fires
 * exactly at its tick boundary, with few wake-ups. */
static void check_long_delays(usec_t tick, usec_t start) {
        static const usec_t delays[] = {
                1, USEC_PER_SEC, 59 * USEC_PER_SEC, USEC_PER_MINUTE, USEC_PER_HOUR,
                USEC_PER_HOUR + 1, USEC_PER_DAY, 7 * USEC_PER_DAY + 3, 30 * USEC_PER_DAY,
                USEC_PER_YEAR, 10 * USEC_PER_YEAR, 10 * USEC_PER_YEAR + 1,
                100 * USEC_PER_YEAR,
        };
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(tick, start);
        Item it[ELEMENTSOF(delays)] = {};
        Log log = { .w = w };
        unsigned calls;

        for (unsigned i = 0; i < ELEMENTSOF(delays); i++) {
                it[i].id = i;
                it[i].deadline = start + delays[i];
                timerwheel_add(w, &it[i].timer, it[i].deadline);
        }

        /* 9 levels, so at most a handful of cascade wake-ups per entry. */
        calls = drive(w, USEC_INFINITY - 1, log_handler, &log, 10 * ELEMENTSOF(delays));
        CHECK(calls <= 10 * ELEMENTSOF(delays));
        for (unsigned i = 0; i < ELEMENTSOF(delays); i++) {
                CHECK_EQ_INT(it[i].fired, 1);
                CHECK(it[i].fired_at == boundary(it[i].deadline, tick));
        }
        for (unsigned i = 1; i < log.n && i < ELEMENTSOF(log.ids); i++)
                CHECK(log.at[i - 1] <= log.at[i]);
}

TEST(long_delays_1s_tick) {
        check_long_delays(USEC_PER_SEC, 0);
        check_long_delays(USEC_PER_SEC, 3 * USEC_PER_DAY + 12345);
}

TEST(long_delays_1ms_tick) {
        check_long_delays(USEC_PER_MSEC, 0);
        check_long_delays(USEC_PER_MSEC, 987654321);
}

TEST(long_delays_100ms_and_1us_tick) {
        check_long_delays(100 * USEC_PER_MSEC, 42 * USEC_PER_SEC);
        check_long_delays(1, 1);
}

TEST(far_deadline_next_is_cascade_point_not_later) {
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_SEC, 0);
        Item a = { .id = 1 };
        Log log = { .w = w };
        usec_t d = 3 * USEC_PER_DAY + 17 * USEC_PER_SEC, t;

        timerwheel_add(w, &a.timer, d);
        t = timerwheel_next(w);
        CHECK(t <= d);
        CHECK(t > 0);
        /* Advancing to the cascade point fires nothing. */
        CHECK_EQ_INT(timerwheel_advance(w, t, log_handler, &log), 0);
        CHECK(timerwheel_next(w) <= d);
        CHECK(timerwheel_next(w) >= t);
}

TEST(overflow_beyond_top_level) {
        /* 9 levels of 64 slots cover 2^54 ticks: 570 years at 1 us. */
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(1, 0);
        Item a = { .id = 1 }, b = { .id = 2 }, c = { .id = 3 };
        Log log = { .w = w };
        const usec_t top = UINT64_C(1) << 54;
        unsigned calls;

        a.deadline = 1000 * USEC_PER_YEAR;  /* > 2^54 us: overflow list */
        b.deadline = 3 * top + 12345;       /* a later epoch */
        c.deadline = top - 1;               /* the last tick the wheel holds */
        timerwheel_add(w, &a.timer, a.deadline);
        timerwheel_add(w, &b.timer, b.deadline);
        timerwheel_add(w, &c.timer, c.deadline);
        CHECK(timerwheel_next(w) <= c.deadline);

        calls = drive(w, USEC_INFINITY - 1, log_handler, &log, 100);
        CHECK(calls <= 100);
        CHECK_EQ_INT(log.n, 3);
        CHECK(c.fired == 1 && c.fired_at == c.deadline);
        CHECK(a.fired == 1 && a.fired_at == a.deadline);
        CHECK(b.fired == 1 && b.fired_at == b.deadline);
        CHECK_EQ_INT(log.ids[0], 3);
        CHECK_EQ_INT(log.ids[1], 1);
        CHECK_EQ_INT(log.ids[2], 2);

        /* Cancel from the overflow list. */
        timerwheel_add(w, &a.timer, 10 * top);
        CHECK_EQ_INT(timerwheel_size(w), 1);
        timerwheel_cancel(w, &a.timer);
        CHECK_EQ_INT(timerwheel_size(w), 0);
        CHECK(timerwheel_next(w) == USEC_INFINITY);
}

TEST(overflow_epoch_crossing) {
        /* One tick away, but across the 2^54-tick boundary of the wheel. */
        const usec_t top = UINT64_C(1) << 54;
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(1, top - 5);
        Item a = { .id = 1 }, b = { .id = 2 };
        Log log = { .w = w };

        timerwheel_add(w, &a.timer, top + 3);
        timerwheel_add(w, &b.timer, top - 2);
        CHECK(timerwheel_next(w) == top - 2);
        CHECK_EQ_INT(timerwheel_advance(w, top - 2, log_handler, &log), 1);
        CHECK(timerwheel_next(w) <= top + 3);
        CHECK(drive(w, USEC_INFINITY - 1, log_handler, &log, 20) <= 20);
        CHECK(a.fired == 1 && a.fired_at == top + 3);
}

TEST(overflow_at_1ms_tick) {
        /* At 1 ms the wheel spans 2^54 ms; only deadlines near the end of
         * the usec_t range overflow it. */
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(USEC_PER_MSEC, 0);
        Item a = { .id = 1 }, b = { .id = 2 };
        Log log = { .w = w };

        a.deadline = UINT64_C(18300000000000000000);
        b.deadline = USEC_INFINITY;  /* boundary not representable: never */
        timerwheel_add(w, &a.timer, a.deadline);
        timerwheel_add(w, &b.timer, b.deadline);
        CHECK(drive(w, USEC_INFINITY - 1, log_handler, &log, 100) <= 100);
        CHECK(a.fired == 1 && a.fired_at == a.deadline);
        CHECK_EQ_INT(b.fired, 0);
        CHECK(timerwheel_entry_armed(&b.timer));
        CHECK(timerwheel_next(w) == USEC_INFINITY);
        CHECK_EQ_INT(timerwheel_size(w), 1);
}

/* Random deadlines over many scales, handlers re-arming and cancelling;
 * every firing is checked against its deadline. */
typedef struct RandomCtx {
        TimerWheel *w;
        usec_t tick;
        Item *items;
        unsigned n_items;
        unsigned fires, early, late;
} RandomCtx;

static usec_t random_delay(void) {
        /* Log-uniform: 1 us .. ~2^49 us (~17 years). */
        unsigned bits = (unsigned) rng_below(50);

        return rng_below(UINT64_C(1) << bits) + (rng_below(8) == 0 ? 0 : 1);
}

static void random_handler(TimerEntry *e, usec_t now, void *userdata) {
        Item *it = container_of(e, Item, timer);
        RandomCtx *ctx = userdata;

        ctx->fires++;
        it->fired++;
        if (now < it->deadline)
                ctx->early++;
        else if (now - it->deadline >= ctx->tick)
                ctx->late++;

        if (it->rearm > 0) {
                it->rearm--;
                it->deadline = now + random_delay();
                timerwheel_add(ctx->w, e, it->deadline);
        }

        /* Now and then cancel or move a random other entry. */
        if (rng_below(4) == 0) {
                Item *o = &ctx->items[rng_below(ctx->n_items)];

                if (o != it && timerwheel_entry_armed(&o->timer)) {
                        if (rng_below(2)) {
                                timerwheel_cancel(ctx->w, &o->timer);
                        } else {
                                o->deadline = now + random_delay();
                                timerwheel_add(ctx->w, &o->timer, o->deadline);
                        }
                }
        }
}

TEST(random_never_early_at_most_one_tick_late) {
        static const usec_t ticks[] = { 1, 7, USEC_PER_MSEC, 10 * USEC_PER_MSEC,
                                        100 * USEC_PER_MSEC, USEC_PER_SEC };

        rng_seed(0x7431);
        for (unsigned k = 0; k < ELEMENTSOF(ticks); k++) {
                const unsigned n = 3000;
                usec_t start = rng_below(UINT64_C(1) << 40);
                _cleanup_(timerwheel_freep) TimerWheel *w = wheel(ticks[k], start);
                _cleanup_free_ Item *items = new0(Item, n);
                RandomCtx ctx = { .w = w, .tick = ticks[k], .items = items, .n_items = n };
                unsigned calls;

                assert(items);
                for (unsigned i = 0; i < n; i++) {
                        items[i].id = i;
                        items[i].rearm = (unsigned) rng_below(4);
                        items[i].deadline = start + random_delay();
                        timerwheel_add(w, &items[i].timer, items[i].deadline);
                }

                calls = drive(w, USEC_INFINITY - 1, random_handler, &ctx, 1000000);
                CHECK(calls <= 1000000);
                CHECK(ctx.fires >= n / 2);
                CHECK_EQ_INT(ctx.early, 0);
                CHECK_EQ_INT(ctx.late, 0);
                CHECK_EQ_INT(timerwheel_size(w), 0);
                for (unsigned i = 0; i < n; i++)
                        CHECK(!timerwheel_entry_armed(&items[i].timer));
        }
}

/* Random adds, moves, cancels and advances to arbitrary times (not only
 * those next() asks for) against a brute-force model: after each advance
 * exactly the entries whose tick boundary was reached, or that were due
 * when armed, have fired, in tick order. */
typedef struct ModelCtx {
        usec_t tick;
        unsigned fires;
        usec_t last_boundary;
        bool in_due_phase; /* still firing entries that were due when armed */
        bool order_ok;
        bool due_ok;
} ModelCtx;

typedef struct ModelState {
        bool armed;
        bool due_when_armed;
        usec_t deadline;
} ModelState;

static ModelState *model_state;

static void model_handler(TimerEntry *e, usec_t now, void *userdata) {
        Item *it = container_of(e, Item, timer);
        ModelCtx *ctx = userdata;
        ModelState *m = &model_state[it->id];
        usec_t b;

        (void) now;
        ctx->fires++;
        it->fired++;

        /* The already-due entries come first, then tick order. */
        if (m->due_when_armed) {
                if (!ctx->in_due_phase)
                        ctx->due_ok = false;
                return;
        }
        ctx->in_due_phase = false;
        b = boundary(m->deadline, ctx->tick);
        if (b < ctx->last_boundary)
                ctx->order_ok = false;
        ctx->last_boundary = b;
}

TEST(model_random_operations) {
        static const usec_t ticks[] = { 1, 3, USEC_PER_MSEC, 100 * USEC_PER_MSEC, USEC_PER_SEC };

        rng_seed(0xbeef);
        for (unsigned k = 0; k < ELEMENTSOF(ticks); k++) {
                const unsigned n = 500;
                const usec_t tick = ticks[k];
                usec_t now = rng_below(UINT64_C(1) << 36);
                _cleanup_(timerwheel_freep) TimerWheel *w = wheel(tick, now);
                _cleanup_free_ Item *items = new0(Item, n);
                _cleanup_free_ ModelState *ms = new0(ModelState, n);
                size_t armed = 0;

                assert(items && ms);
                model_state = ms;
                for (unsigned i = 0; i < n; i++)
                        items[i].id = i;

                for (unsigned step = 0; step < 20000; step++) {
                        unsigned op = (unsigned) rng_below(10);
                        unsigned i = (unsigned) rng_below(n);

                        if (op < 5) {
                                /* Mostly near now, in both directions. */
                                usec_t span = tick * (UINT64_C(1) << rng_below(20));
                                usec_t d = usec_sub(now + rng_below(span), span / 8);

                                if (!ms[i].armed)
                                        armed++;
                                ms[i] = (ModelState) { true, d <= now, d };
                                timerwheel_add(w, &items[i].timer, d);
                        } else if (op < 7) {
                                if (ms[i].armed)
                                        armed--;
                                ms[i].armed = false;
                                timerwheel_cancel(w, &items[i].timer);
                        } else {
                                usec_t to;
                                ModelCtx ctx = { .tick = tick, .in_due_phase = true,
                                                 .order_ok = true, .due_ok = true };
                                unsigned expect = 0;
                                bool ok = true;

                                switch (rng_below(4)) {
                                case 0:
                                        to = usec_sub(now, rng_below(10 * tick)); /* backwards */
                                        break;
                                case 1:
                                        to = timerwheel_next(w);
                                        to = to == USEC_INFINITY ? now : MAX(now, to);
                                        break;
                                default:
                                        to = now + rng_below(tick * (UINT64_C(1) << rng_below(16)));
                                        break;
                                }

                                for (unsigned j = 0; j < n; j++)
                                        items[j].fired = 0;
                                size_t r = timerwheel_advance(w, to, model_handler, &ctx);
                                CHECK_EQ_INT(r, ctx.fires);
                                now = MAX(now, to);

                                for (unsigned j = 0; j < n; j++) {
                                        bool due = ms[j].armed &&
                                                (ms[j].due_when_armed ||
                                                 boundary(ms[j].deadline, tick) <= to);

                                        if (items[j].fired != (due ? 1U : 0U))
                                                ok = false;
                                        if (due) {
                                                ms[j].armed = false;
                                                armed--;
                                                expect++;
                                        }
                                        if (timerwheel_entry_armed(&items[j].timer) != ms[j].armed)
                                                ok = false;
                                }
                                CHECK(ok);
                                CHECK_EQ_INT(ctx.fires, expect);
                                CHECK(ctx.order_ok);
                                CHECK(ctx.due_ok);
                                if (!ok)
                                        break;
                        }
                        CHECK_EQ_INT(timerwheel_size(w), armed);

                        /* next() may be early but never later than the model's earliest. */
                        usec_t earliest = USEC_INFINITY;
                        for (unsigned j = 0; j < n; j++)
                                if (ms[j].armed)
                                        earliest = MIN(earliest, ms[j].due_when_armed ?
                                                       now : boundary(ms[j].deadline, tick));
                        CHECK(timerwheel_next(w) <= earliest);
                }
                model_state = NULL;
        }
}

typedef struct ManyCtx {
        usec_t tick;
        usec_t last;
        unsigned fires;
        unsigned wrong_time;
        unsigned out_of_order;
        unsigned twice;
} ManyCtx;

static void many_handler(TimerEntry *e, usec_t now, void *userdata) {
        Item *it = container_of(e, Item, timer);
        ManyCtx *ctx = userdata;

        ctx->fires++;
        if (it->fired++ > 0)
                ctx->twice++;
        if (now != boundary(it->deadline, ctx->tick))
                ctx->wrong_time++;
        if (now < ctx->last)
                ctx->out_of_order++;
        ctx->last = now;
}

TEST(many_timers) {
        const unsigned n = 1000000;
        const usec_t tick = USEC_PER_MSEC, start = 5 * USEC_PER_SEC + 321;
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(tick, start);
        _cleanup_free_ Item *items = new0(Item, n);
        ManyCtx ctx = { .tick = tick };
        unsigned calls;

        assert(items);
        rng_seed(0x1000000);
        for (unsigned i = 0; i < n; i++) {
                /* Mostly within an hour, some out to a month. */
                usec_t span = rng_below(16) == 0 ? 30 * USEC_PER_DAY : USEC_PER_HOUR;

                items[i].id = i;
                items[i].deadline = start + 1 + rng_below(span);
                timerwheel_add(w, &items[i].timer, items[i].deadline);
        }
        CHECK_EQ_INT(timerwheel_size(w), n);

        /* Cancel every 10th, then put half of those back somewhere else. */
        for (unsigned i = 0; i < n; i += 10)
                timerwheel_cancel(w, &items[i].timer);
        for (unsigned i = 0; i < n; i += 20) {
                items[i].deadline = start + 1 + rng_below(2 * USEC_PER_HOUR);
                timerwheel_add(w, &items[i].timer, items[i].deadline);
        }
        CHECK_EQ_INT(timerwheel_size(w), n - n / 20);

        calls = drive(w, USEC_INFINITY - 1, many_handler, &ctx, 10 * n);
        CHECK(calls <= 10 * n);
        CHECK_EQ_INT(ctx.fires, n - n / 20);
        CHECK_EQ_INT(ctx.twice, 0);
        CHECK_EQ_INT(ctx.wrong_time, 0);
        CHECK_EQ_INT(ctx.out_of_order, 0);
        CHECK_EQ_INT(timerwheel_size(w), 0);
        CHECK(timerwheel_next(w) == USEC_INFINITY);
        for (unsigned i = 0; i < n; i++)
                if (items[i].fired != ((i % 20 != 0 && i % 10 == 0) ? 0U : 1U)) {
                        CHECK(false);
                        break;
                }
}

TEST(free_does_not_touch_entries) {
        TimerWheel *w = wheel(USEC_PER_MSEC, 0);
        Item *it[3];

        for (unsigned i = 0; i < ELEMENTSOF(it); i++) {
                it[i] = new0(Item, 1);
                assert(it[i]);
        }
        timerwheel_add(w, &it[0]->timer, 0);                 /* due list */
        timerwheel_add(w, &it[1]->timer, 5 * USEC_PER_MSEC); /* level 0 */
        timerwheel_add(w, &it[2]->timer, USEC_PER_YEAR);     /* high level */

        /* Owners gone first, wheel after: ASan flags any access. */
        for (unsigned i = 0; i < ELEMENTSOF(it); i++)
                free(it[i]);
        CHECK(!timerwheel_free(w));
}

/* ---- timerwheel_advance_max(): a storm a slice at a time ---- */

typedef struct SeqCtx {
        unsigned *ids;
        unsigned n, cap;
        TimerWheel *w;
        unsigned rearm_due;     /* handlers re-arm their entry as due this many times */
        unsigned *calls_of;     /* per id: the call it last fired in */
        unsigned call;
        unsigned twice_in_call;
} SeqCtx;

static void seq_handler(TimerEntry *e, usec_t now, void *userdata) {
        Item *it = container_of(e, Item, timer);
        SeqCtx *ctx = userdata;

        if (ctx->n < ctx->cap)
                ctx->ids[ctx->n] = it->id;
        ctx->n++;
        it->fired++;
        if (now < it->deadline)
                it->fired_at = 1;   /* early: flagged, checked below */
        if (ctx->calls_of) {
                if (it->fired > 1 && ctx->calls_of[it->id] == ctx->call)
                        ctx->twice_in_call++;
                ctx->calls_of[it->id] = ctx->call;
        }
        if (it->rearm > 0) {
                it->rearm--;
                /* long due: pending, it waits for the next call */
                it->deadline = 1;
                timerwheel_add(ctx->w, e, it->deadline);
        }
}

/* The same entries fired in one advance and in slices of 7, 64 and 1,024:
 * the same order, each slice within its budget, and while anything due is
 * left timerwheel_next() says "now". */
TEST(advance_max_slices_fire_what_advance_fires_in_the_same_order) {
        const unsigned n = 5000;
        const usec_t tick = USEC_PER_MSEC, start = 7 * USEC_PER_SEC + 3;
        const size_t budgets[] = { 7, 64, 1024 };
        _cleanup_free_ unsigned *ref = new0(unsigned, n), *got = new0(unsigned, n);
        _cleanup_free_ Item *items = new0(Item, n);
        usec_t at = start + 10 * USEC_PER_SEC;
        SeqCtx rc = { .ids = ref, .cap = n };

        assert(ref && got && items);
        for (size_t b = 0; b <= ELEMENTSOF(budgets); b++) {
                _cleanup_(timerwheel_freep) TimerWheel *w = wheel(tick, start);
                SeqCtx c = { .ids = b == 0 ? ref : got, .cap = n, .w = w };
                unsigned calls = 0;

                memset(items, 0, n * sizeof *items);
                rng_seed(0x5707);
                for (unsigned i = 0; i < n; i++) {
                        items[i].id = i;
                        /* a third due at once (one tick), a third already
                         * due when armed, the rest over 20 s */
                        items[i].deadline = i % 3 == 0 ? start + 5 * USEC_PER_SEC
                                          : i % 3 == 1 ? start - rng_below(USEC_PER_SEC)
                                                       : start + 1 + rng_below(20 * USEC_PER_SEC);
                        timerwheel_add(w, &items[i].timer, items[i].deadline);
                }
                if (b == 0) {
                        (void) timerwheel_advance(w, at, seq_handler, &c);
                        rc = c;
                } else {
                        while (timerwheel_next(w) <= at && calls < 10 * n) {
                                size_t k = timerwheel_advance_max(w, at, budgets[b - 1], seq_handler, &c);

                                CHECK(k <= budgets[b - 1]);
                                calls++;
                        }
                        CHECK(calls >= rc.n / budgets[b - 1]);
                        CHECK_EQ_INT(c.n, rc.n);
                        CHECK(memcmp(ref, got, MIN(c.n, n) * sizeof *got) == 0);
                }
                /* everything due by then fired once, never early; the rest waits */
                for (unsigned i = 0; i < n; i++)
                        if (items[i].fired != (items[i].deadline <= at) || items[i].fired_at) {
                                CHECK(false);
                                break;
                        }
                CHECK(timerwheel_next(w) > at);
        }
}

/* Out of budget mid-slot and mid-pending, with handlers re-arming as due:
 * no entry fires twice in one call, nothing is starved, and an advance
 * later in time picks the rest up first. */
TEST(advance_max_rearm_as_due_and_nothing_starves) {
        const unsigned n = 3000;
        const usec_t tick = USEC_PER_MSEC, start = USEC_PER_SEC;
        _cleanup_(timerwheel_freep) TimerWheel *w = wheel(tick, start);
        _cleanup_free_ Item *items = new0(Item, n);
        _cleanup_free_ unsigned *calls_of = new0(unsigned, n);
        SeqCtx c = { .w = w, .calls_of = calls_of };
        unsigned total = 0;
        usec_t t = start;

        assert(items && calls_of);
        for (unsigned i = 0; i < n; i++) {
                items[i].id = i;
                items[i].rearm = i % 2;   /* half fire twice */
                items[i].deadline = i < n / 2 ? start : start + 2 * tick;
                timerwheel_add(w, &items[i].timer, items[i].deadline);
        }
        /* time moves on while the storm is worked off */
        for (unsigned k = 0; k < 100 && timerwheel_next(w) != USEC_INFINITY; k++) {
                size_t f;

                t += tick / 4;
                c.call = k + 1;
                f = timerwheel_advance_max(w, t, 256, seq_handler, &c);
                CHECK(f <= 256);
                total += (unsigned) f;
                if (timerwheel_next(w) != USEC_INFINITY)
                        CHECK(timerwheel_next(w) <= t + tick);
        }
        CHECK_EQ_INT(c.twice_in_call, 0);
        CHECK_EQ_INT(total, n + n / 2);
        CHECK_EQ_INT(timerwheel_size(w), 0);
        for (unsigned i = 0; i < n; i++)
                if (items[i].fired != 1 + i % 2 || items[i].fired_at) {
                        CHECK(false);
                        break;
                }
}
