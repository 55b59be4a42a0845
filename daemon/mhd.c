/* SPDX-License-Identifier: MIT */
#include "daemon/event-round.h"
#include "daemon/mhd.h"

/* MHD's timeout moves with every request (idle connections time out
 * from their last activity); moving our timer each time costs more than
 * waking early now and then. So only ever move it earlier, and re-arm from
 * scratch when it fires. */
static void mhd_rearm(MhdLoop *l, MHD_UNSIGNED_LONG_LONG ms) {
        usec_t when;

        if (ms == 0 && l->asap && event_round_defer(sd_event_source_get_event(l->asap), &l->round)) {
                /* MHD has work now (a connection with data read ahead, one
                 * resumed): a defer, not a timerfd moved to now and back,
                 * which costs a hypervisor exit each time on a VM; after
                 * EVENT_ROUND_DEFERS turns of it in a row, the timer at now */
                (void) sd_event_source_set_enabled(l->asap, SD_EVENT_ONESHOT);
                return;
        }
        when = usec_add(now(CLOCK_MONOTONIC), ms * USEC_PER_MSEC);
        if (l->armed != USEC_INFINITY && l->armed <= when)
                return;
        l->armed = when;
        (void) sd_event_source_set_time(l->timer, when);
        (void) sd_event_source_set_enabled(l->timer, SD_EVENT_ONESHOT);
}

void mhd_loop_kick(MhdLoop *l) {
        MHD_UNSIGNED_LONG_LONG ms = 0;

        /* MHD moves a connection one step a run (a request answered, then
         * the next one read): a few runs while it says it has more to do
         * now, each an epoll_wait() on its own set, rather than a turn of
         * the loop each. No timeout at all (every connection suspended, or
         * none): the timer stays as it is, one early MHD_run() at most,
         * rather than a timerfd switched off and on around every suspended
         * request. */
        for (unsigned i = 0; i < 3; i++) {
                (void) MHD_run(l->daemon);
                if (MHD_get_timeout(l->daemon, &ms) != MHD_YES) {
                        ms = UINT64_MAX;
                        break;
                }
                if (ms > 0)
                        break;
        }
        if (ms != UINT64_MAX)
                mhd_rearm(l, ms);
        if (l->after)
                l->after(l->after_userdata);
}

static int on_asap(sd_event_source *s _unused_, void *userdata) {
        mhd_loop_kick(userdata);
        return 0;
}

static int on_io(sd_event_source *s _unused_, int fd _unused_, uint32_t revents _unused_, void *userdata) {
        mhd_loop_kick(userdata);
        return 0;
}

static int on_time(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        MhdLoop *l = userdata;

        l->armed = USEC_INFINITY;
        mhd_loop_kick(l);
        return 0;
}

int mhd_loop_attach(MhdLoop *l, sd_event *event, struct MHD_Daemon *d, const char *name) {
        const union MHD_DaemonInfo *info;
        MHD_UNSIGNED_LONG_LONG ms;
        int r;

        l->daemon = d;
        info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_EPOLL_FD);
        if (!info)
                return -EINVAL;
        r = sd_event_add_io(event, &l->io, info->epoll_fd, EPOLLIN, on_io, l);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(l->io, name);
        r = sd_event_add_time(event, &l->timer, CLOCK_MONOTONIC, USEC_INFINITY, 1, on_time, l);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(l->timer, SD_EVENT_OFF);
        l->armed = USEC_INFINITY;
        r = sd_event_add_defer(event, &l->asap, on_asap, l);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(l->asap, SD_EVENT_OFF);
        if (MHD_get_timeout(d, &ms) == MHD_YES)
                mhd_rearm(l, ms);
        return 0;
}

void mhd_loop_detach(MhdLoop *l) {
        l->io = sd_event_source_disable_unref(l->io);
        l->timer = sd_event_source_disable_unref(l->timer);
        l->asap = sd_event_source_disable_unref(l->asap);
        if (l->daemon)
                MHD_stop_daemon(l->daemon);
        l->daemon = NULL;
}

static void wipe_free(void *p) {
        secret_free(p);
}

struct MHD_Response *mhd_response_json(const char *buf, size_t len) {
        struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *) buf, MHD_RESPMEM_PERSISTENT);

        if (!resp)
                return NULL;
        /* kept and queued again: never without its no-store */
        if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json") != MHD_YES ||
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") != MHD_YES) {
                MHD_destroy_response(resp);
                return NULL;
        }
        return resp;
}

enum MHD_Result mhd_respond(struct MHD_Connection *c, unsigned status, const char *content_type,
                            char *body, const char *extra_header, const char *extra_value) {
        struct MHD_Response *resp;
        enum MHD_Result ret;

        if (!body)
                body = strdup("");
        if (!body)
                return MHD_NO;
        resp = MHD_create_response_from_buffer_with_free_callback(strlen(body), body, wipe_free);
        if (!resp) {
                secret_free(body);
                return MHD_NO;
        }
        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
        if (extra_header && extra_value)
                (void) MHD_add_response_header(resp, extra_header, extra_value);
        ret = MHD_queue_response(c, status, resp);
        MHD_destroy_response(resp);
        return ret;
}
