/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <systemd/sd-event.h>

#include "common/util.h"

/* A defer source that re-arms itself (curl's "time out now", MHD's "more
 * to do now", finished transfers left for the next turn) can keep the
 * loop from dispatching its io sources: in a refresh storm curl's defer
 * ran 145 turns in a row (each new request asks for it) and a token
 * request waited 29 ms for the loop to read its socket
 * (tests/unit/test-event-round.c shows a pipe never read).
 *
 * So a source takes its defer in at most EVENT_ROUND_DEFERS turns of the
 * loop in a row (sd_event_get_iteration()); then, for the rest of that
 * turn, it asks for its timer at "now" instead: with no defer pending the
 * loop polls, and every io source that is ready is dispatched with the
 * timer. The defer stays the common case: a timerfd set per request
 * costs a syscall, on a VM a hypervisor exit. */
#define EVENT_ROUND_DEFERS 4

typedef struct EventRound {
        uint64_t iteration;   /* the loop's turn of the last call */
        unsigned n;           /* turns in a row that took the defer */
        bool yielded;         /* that turn uses the timer */
} EventRound;

/* Whether the caller may take its defer; false: use the timer at now. */
static inline bool event_round_defer(sd_event *e, EventRound *r) {
        uint64_t it = 0;

        if (sd_event_get_iteration(e, &it) < 0)
                return true;
        if (it != r->iteration) {
                r->n = it == r->iteration + 1 && !r->yielded ? r->n + 1 : 0;
                r->iteration = it;
                r->yielded = r->n >= EVENT_ROUND_DEFERS;
        }
        return !r->yielded;
}
