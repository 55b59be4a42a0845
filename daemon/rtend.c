/* SPDX-License-Identifier: MIT */
#include "common/log.h"
#include "common/util.h"
#include "daemon/connection.h"
#include "daemon/manager.h"
#include "daemon/rtend.h"

static void set(RtEnds *rt, int k, size_t i, Connection *c) {
        rt->h[k][i] = c;
        c->rt_idx[k] = i;
}

static void up(RtEnds *rt, int k, size_t i) {
        Connection *c = rt->h[k][i];

        while (i > 0) {
                size_t parent = (i - 1) / 2;
                if (rt->h[k][parent]->rt_end <= c->rt_end)
                        break;
                set(rt, k, i, rt->h[k][parent]);
                i = parent;
        }
        set(rt, k, i, c);
}

static void down(RtEnds *rt, int k, size_t i) {
        Connection *c = rt->h[k][i];

        for (;;) {
                size_t l = 2 * i + 1, r = l + 1, min = l;
                if (l >= rt->n[k])
                        break;
                if (r < rt->n[k] && rt->h[k][r]->rt_end < rt->h[k][l]->rt_end)
                        min = r;
                if (rt->h[k][min]->rt_end >= c->rt_end)
                        break;
                set(rt, k, i, rt->h[k][min]);
                i = min;
        }
        set(rt, k, i, c);
}

static bool member(const RtEnds *rt, int k, const Connection *c) {
        size_t i = c->rt_idx[k];
        return i != CONN_NO_IDX && i < rt->n[k] && rt->h[k][i] == c;
}

static void heap_del(RtEnds *rt, int k, Connection *c) {
        size_t i = c->rt_idx[k];
        Connection *last;

        c->rt_idx[k] = CONN_NO_IDX;
        if (i == CONN_NO_IDX || i >= rt->n[k] || rt->h[k][i] != c)
                return;
        last = rt->h[k][--rt->n[k]];
        if (i == rt->n[k])
                return;
        set(rt, k, i, last);
        up(rt, k, i);
        down(rt, k, last->rt_idx[k]);
}

static int heap_put(RtEnds *rt, int k, Connection *c) {
        if (member(rt, k, c)) {
                up(rt, k, c->rt_idx[k]);
                down(rt, k, c->rt_idx[k]);
                return 0;
        }
        if (rt->n[k] == rt->cap[k]) {
                size_t cap = MAX(rt->cap[k] * 2, (size_t) 64);
                Connection **a = realloc(rt->h[k], sizeof(Connection *) * cap);
                if (!a)
                        return -ENOMEM;
                rt->h[k] = a;
                rt->cap[k] = cap;
        }
        rt->h[k][rt->n[k]] = c;
        c->rt_idx[k] = rt->n[k]++;
        up(rt, k, c->rt_idx[k]);
        return 0;
}

usec_t rtend_compute(usec_t prev, bool grant, usec_t lifetime, usec_t answer_end, usec_t now_rt) {
        usec_t end = grant ? 0 : prev;

        if (grant && lifetime > 0)
                end = usec_add(now_rt, lifetime);
        if (answer_end > 0) {
                if (lifetime > 0 && end > 0)
                        end = MIN(end, answer_end);
                else
                        end = answer_end;
        }
        return end;
}

static int on_warn_timer(sd_event_source *s, uint64_t usec, void *userdata);

static void rearm(Manager *m) {
        RtEnds *rt = &m->rt;
        usec_t when;
        int r;

        if (m->loading)
                return;   /* not the loop's thread: rtend_rearm() after the load */
        if (rt->n[RT_HEAP_WARN] == 0) {
                if (rt->timer)
                        (void) sd_event_source_set_enabled(rt->timer, SD_EVENT_OFF);
                return;
        }
        when = usec_sub(rt->h[RT_HEAP_WARN][0]->rt_end, m->config->refresh_token_warn);
        when = MAX(when, (usec_t) 1);
        if (!rt->timer) {
                if (!m->event)
                        return;   /* tools and unit tests: no loop */
                r = sd_event_add_time(m->event, &rt->timer, CLOCK_REALTIME, when, USEC_PER_SEC, on_warn_timer, m);
                if (r < 0) {
                        log_warning_errno(r, "Cannot arm the refresh-token warning timer: %m");
                        return;
                }
                (void) sd_event_source_set_description(rt->timer, "rt-warn");
                return;
        }
        (void) sd_event_source_set_time(rt->timer, when);
        (void) sd_event_source_set_enabled(rt->timer, SD_EVENT_ONESHOT);
}

/* At most this many warnings per wake-up: the loop stays responsive when
 * many ends fall due together (an import of many grants); the rest follow
 * at once on the next turn. */
#define WARN_BATCH 256

static int on_warn_timer(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        Manager *m = userdata;
        RtEnds *rt = &m->rt;
        usec_t t = now(CLOCK_REALTIME);

        for (unsigned i = 0; i < WARN_BATCH && rt->n[RT_HEAP_WARN] > 0; i++) {
                Connection *c = rt->h[RT_HEAP_WARN][0];
                usec_t left;
                char ts[64];

                if (usec_sub(c->rt_end, m->config->refresh_token_warn) > t)
                        break;
                heap_del(rt, RT_HEAP_WARN, c);
                if (connection_set_rt_warned(c, c->rt_end) < 0)
                        log_warning("%s: out of memory: the refresh-token warning may come again", c->name);
                left = usec_sub(c->rt_end, t);
                manager_event(m, c, "refresh-token-expiring",
                              "the refresh token ends at %s (in %" PRIu64 " s): re-authorize before then",
                              format_timestamp(ts, sizeof ts, c->rt_end), left / USEC_PER_SEC);
                log_notice("%s: the refresh token ends in %" PRIu64 " s: re-authorize before then.", c->name,
                           left / USEC_PER_SEC);
                manager_notify(m, c, "refresh-token-expiring");
                rt->warnings++;
                if (manager_save(m, c) < 0)
                        log_warning("%s: cannot record the refresh-token warning: out of memory", c->name);
        }
        rearm(m);
        return 0;
}

void rtend_update(Manager *m, Connection *c) {
        RtEnds *rt = &m->rt;
        bool known = c->refresh_token && c->rt_end > 0;
        bool unknown = c->refresh_token && c->rt_end == 0;

        if (unknown != c->rt_unknown) {
                if (unknown)
                        rt->n_unknown++;
                else
                        rt->n_unknown--;
                c->rt_unknown = unknown;
        }
        if (!known || heap_put(rt, RT_HEAP_ALL, c) < 0)
                heap_del(rt, RT_HEAP_ALL, c);
        if (!known || connection_rt_warned(c) == c->rt_end || heap_put(rt, RT_HEAP_WARN, c) < 0)
                heap_del(rt, RT_HEAP_WARN, c);
        rearm(m);
}

void rtend_remove(Manager *m, Connection *c) {
        RtEnds *rt = &m->rt;

        if (c->rt_unknown) {
                rt->n_unknown--;
                c->rt_unknown = false;
        }
        heap_del(rt, RT_HEAP_ALL, c);
        heap_del(rt, RT_HEAP_WARN, c);
        rearm(m);
}

void rtend_rearm(Manager *m) {
        rearm(m);
}

usec_t rtend_earliest(Manager *m) {
        return m->rt.n[RT_HEAP_ALL] > 0 ? m->rt.h[RT_HEAP_ALL][0]->rt_end : 0;
}

void rtend_done(Manager *m) {
        m->rt.timer = sd_event_source_disable_unref(m->rt.timer);
        for (int k = 0; k < 2; k++) {
                free(m->rt.h[k]);
                m->rt.h[k] = NULL;
                m->rt.n[k] = m->rt.cap[k] = 0;
        }
}
