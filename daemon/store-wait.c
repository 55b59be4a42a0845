/* SPDX-License-Identifier: MIT */
#include "common/log.h"
#include "common/util.h"
#include "daemon/manager.h"
#include "daemon/store-wait.h"

struct StoreWait {
        Manager *manager;
        unsigned refs;              /* the writer's, the waiter's */
        bool waiting;               /* the waiter has not released it */
        bool ready;
        int result;
        sd_event_source *timer;
        store_custom_fn run;
        void (*done)(Manager *m, int result, void *data, bool abandoned);
        void *data;
        void (*data_free)(void *data);
        void (*wake)(void *userdata);
        void *userdata;
};

static void unref(StoreWait *w) {
        if (--w->refs > 0)
                return;
        w->timer = sd_event_source_disable_unref(w->timer);
        if (w->data_free)
                w->data_free(w->data);
        free(w);
}

static void finish(StoreWait *w, int result) {
        if (w->ready)
                return;
        w->ready = true;
        w->result = result;
        (void) sd_event_source_set_enabled(w->timer, SD_EVENT_OFF);
        if (w->waiting && w->wake)
                w->wake(w->userdata);
}

static int on_timeout(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        finish(userdata, -ETIMEDOUT);
        return 0;
}

static int on_run(Store *s, void *data) {
        StoreWait *w = data;

        /* the loop's fields are not touched here: run, data only */
        return w->run(s, w->data);
}

static void on_written(int result, const char *error, void *userdata) {
        StoreWait *w = userdata;

        if (result < 0)
                log_debug("A read of the store for a waiting request failed: %s", error ?: "unknown error");
        if (w->done)
                w->done(w->manager, result, w->data, !w->waiting || w->ready);
        finish(w, result);
        unref(w);
}

int store_wait_start(Manager *m, usec_t timeout, store_custom_fn run,
                     void (*done)(Manager *m, int result, void *data, bool abandoned), void *data,
                     void (*data_free)(void *data), void (*wake)(void *userdata), void *userdata, StoreWait **ret) {
        StoreWait *w;
        int r;

        if (!m->writer) {
                if (data_free)
                        data_free(data);
                return -ESHUTDOWN;
        }
        w = new0(StoreWait, 1);
        if (!w) {
                if (data_free)
                        data_free(data);
                return -ENOMEM;
        }
        *w = (StoreWait) { .manager = m, .refs = 1, .waiting = true, .run = run, .done = done, .data = data,
                           .data_free = data_free, .wake = wake, .userdata = userdata };
        r = sd_event_add_time_relative(m->event, &w->timer, CLOCK_MONOTONIC, timeout, 0, on_timeout, w);
        if (r < 0) {
                unref(w);
                return r;
        }
        (void) sd_event_source_set_description(w->timer, "store-wait");
        r = store_writer_custom(m->writer, on_run, w, NULL, on_written, w);
        if (r < 0) {
                unref(w);
                return r;
        }
        w->refs++;
        *ret = w;
        return 0;
}

bool store_wait_ready(const StoreWait *w) {
        return w && w->ready;
}

int store_wait_result(const StoreWait *w) {
        return w->result;
}

void *store_wait_data(const StoreWait *w) {
        return w->data;
}

StoreWait *store_wait_release(StoreWait *w) {
        if (!w)
                return NULL;
        w->waiting = false;
        (void) sd_event_source_set_enabled(w->timer, SD_EVENT_OFF);
        unref(w);
        return NULL;
}
