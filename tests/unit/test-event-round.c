/* SPDX-License-Identifier: MIT */
/* daemon/event-round.h: a defer source that re-arms itself must not keep
 * the loop from polling its descriptors (a token request starved behind
 * curl's "time out now" in a refresh storm). A real sd_event loop: a
 * source that wants to run again at once, every time, and a pipe with a
 * byte to read. */
#include <limits.h>
#include <unistd.h>

#include "daemon/event-round.h"

#define TESTS_MAIN
#include "tests.h"

typedef struct Chain {
        sd_event_source *defer, *timer;
        EventRound round;
        bool fair;            /* ask event_round_defer(); else always the defer */
        unsigned runs;
} Chain;

/* What http.c's timer_cb(0) and mhd.c's mhd_rearm(0) do. */
static void again(Chain *c) {
        if (!c->fair || event_round_defer(sd_event_source_get_event(c->defer), &c->round)) {
                (void) sd_event_source_set_enabled(c->defer, SD_EVENT_ONESHOT);
                return;
        }
        (void) sd_event_source_set_time(c->timer, 0);
        (void) sd_event_source_set_enabled(c->timer, SD_EVENT_ONESHOT);
}

static int on_defer(sd_event_source *s _unused_, void *userdata) {
        Chain *c = userdata;

        c->runs++;
        again(c);
        return 0;
}

static int on_timer(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        return on_defer(NULL, userdata);
}

static int on_readable(sd_event_source *s _unused_, int fd _unused_, uint32_t revents _unused_, void *userdata) {
        return sd_event_exit(userdata, 1);
}

/* How many runs of the chain the loop made before it read the pipe
 * (bounded: 10,000 turns at most). */
static unsigned runs_before_io(bool fair, bool *read) {
        sd_event *e = NULL;
        sd_event_source *io = NULL;
        Chain c = { .fair = fair };
        int p[2];
        unsigned turns = 0;

        *read = false;
        if (sd_event_new(&e) < 0 || pipe(p) < 0)
                return UINT_MAX;
        (void) sd_event_add_defer(e, &c.defer, on_defer, &c);
        (void) sd_event_add_time(e, &c.timer, CLOCK_MONOTONIC, USEC_INFINITY, 1, on_timer, &c);
        (void) sd_event_source_set_enabled(c.timer, SD_EVENT_OFF);
        (void) sd_event_add_io(e, &io, p[0], EPOLLIN, on_readable, e);
        /* one turn with nothing to read: the loop has polled once */
        (void) sd_event_run(e, 0);
        (void) sd_event_source_set_enabled(c.defer, SD_EVENT_ONESHOT);
        (void) !write(p[1], "x", 1);
        while (turns++ < 10000 && sd_event_get_state(e) != SD_EVENT_FINISHED)
                (void) sd_event_run(e, 100 * USEC_PER_MSEC);
        *read = sd_event_get_state(e) == SD_EVENT_FINISHED;
        sd_event_source_disable_unref(io);
        sd_event_source_disable_unref(c.defer);
        sd_event_source_disable_unref(c.timer);
        sd_event_unref(e);
        close(p[0]);
        close(p[1]);
        return c.runs;
}

TEST(self_rearming_defer_starves_io_without_the_round) {
        bool read;

        /* what the loop did before event-round.h: the pipe never read */
        (void) runs_before_io(false, &read);
        CHECK(!read);
}

TEST(the_round_lets_the_loop_poll) {
        bool read;
        unsigned runs = runs_before_io(true, &read);

        CHECK(read);
        /* EVENT_ROUND_DEFERS turns on the defer, then the timer after a
         * poll: the pipe is read within the first few */
        CHECK(runs <= 2 * (EVENT_ROUND_DEFERS + 1));
}

TEST(the_count_starts_again_after_a_yield) {
        sd_event *e = NULL;
        EventRound r = {};
        unsigned yes = 0, calls = 0;

        CHECK(sd_event_new(&e) >= 0);
        /* several asks in one turn count once */
        for (unsigned turn = 0; turn < EVENT_ROUND_DEFERS + 1; turn++) {
                for (unsigned i = 0; i < 3; i++, calls++)
                        yes += event_round_defer(e, &r);
                (void) sd_event_run(e, 0);
        }
        CHECK_EQ_INT(calls, 3 * (EVENT_ROUND_DEFERS + 1));
        CHECK_EQ_INT(yes, 3 * EVENT_ROUND_DEFERS);   /* the last turn yields, all of it */
        CHECK(event_round_defer(e, &r));                /* the turn after: the defer again */
        (void) sd_event_run(e, 0);
        (void) sd_event_run(e, 0);
        CHECK(event_round_defer(e, &r));                /* a gap: counting from 0 */
        sd_event_unref(e);
}
