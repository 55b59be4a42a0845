/* SPDX-License-Identifier: MIT */
#pragma once

#include <microhttpd.h>
#include <systemd/sd-event.h>

#include "common/macro.h"
#include "daemon/event-round.h"

/* A libmicrohttpd daemon run from the sd-event loop: MHD_USE_EPOLL
 * without an internal thread gives one epoll fd to watch, and
 * MHD_get_timeout() the time to wake for idle connections. */

typedef struct MhdLoop {
        struct MHD_Daemon *daemon;
        sd_event_source *io;
        sd_event_source *timer;
        sd_event_source *asap;    /* MHD_get_timeout() said 0: run on the loop's next turn */
        usec_t armed;             /* when the timer fires; USEC_INFINITY: off */
        EventRound round;         /* turns in a row that took asap (event-round.h) */
        /* runs after each MHD_run() from the loop, outside MHD's callbacks */
        void (*after)(void *userdata);
        void *after_userdata;
} MhdLoop;

int mhd_loop_attach(MhdLoop *l, sd_event *event, struct MHD_Daemon *d, const char *name);
void mhd_loop_detach(MhdLoop *l);   /* stops the daemon too */
/* Runs MHD once and re-arms the timer: after resuming a connection. */
void mhd_loop_kick(MhdLoop *l);

/* A response over len bytes of buf, the caller's (not copied, not
 * freed: buf must outlive every use of the response), with the headers
 * mhd_respond() gives a JSON answer. The caller keeps the reference: it
 * may queue the response again (buf rewritten, the same length) once the
 * connections it was queued on are done with it (their request
 * completed), and drops it with MHD_destroy_response(). NULL on ENOMEM. */
struct MHD_Response *mhd_response_json(const char *buf, size_t len);

/* Queue a response and drop our reference. */
enum MHD_Result mhd_respond(struct MHD_Connection *c, unsigned status, const char *content_type,
                            char *body /* freed, wiped */, const char *extra_header,
                            const char *extra_value);
