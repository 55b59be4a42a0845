/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-event.h>

#include "common/macro.h"

/* Refresh-token ends (refresh_token_expires_in_pointer,
 * refresh_token_lifetime): two min-heaps by Connection.rt_end, kept in
 * step as connections change, so /metrics reads the earliest end in O(1)
 * and one timer gives the warning refresh_token_warn before each end,
 * once per end, without a scan. */

typedef struct Connection Connection;
typedef struct Manager Manager;

#define RT_HEAP_ALL 0     /* every connection with a refresh token and a known end */
#define RT_HEAP_WARN 1    /* those not warned about yet */

typedef struct RtEnds {
        Connection **h[2];
        size_t n[2], cap[2];
        uint64_t n_unknown;        /* with a refresh token, end unknown */
        sd_event_source *timer;    /* CLOCK_REALTIME: the next warning */
        uint64_t warnings;         /* refresh-token-expiring events given */
} RtEnds;

/* After c->rt_end, c->rt_warned or c->refresh_token changed (or c was
 * linked): heaps, counter and timer. */
void rtend_update(Manager *m, Connection *c);
/* Arms the warning timer for the heaps as they stand (after the start's
 * load, during which rtend_update() leaves it alone). */
void rtend_rearm(Manager *m);
/* c goes away. */
void rtend_remove(Manager *m, Connection *c);
/* Realtime end of the earliest refresh token, 0 when none is known. */
usec_t rtend_earliest(Manager *m);
void rtend_done(Manager *m);

/* The end a token answer gives: refresh_token_lifetime counts from the
 * authorization (grant) and is only ever lowered by the answer's
 * refresh_token_expires_in; without a lifetime the answer's end replaces
 * the old one. prev: the connection's end; answer_end: 0 if none. */
usec_t rtend_compute(usec_t prev, bool grant, usec_t lifetime, usec_t answer_end, usec_t now_rt);
