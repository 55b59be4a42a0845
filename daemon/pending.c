/* SPDX-License-Identifier: MIT */
#include "common/log.h"
#include "common/util.h"
#include "daemon/follower.h"
#include "daemon/links-db.h"
#include "daemon/manager.h"
#include "daemon/pending.h"

typedef struct Lookup {
        char hash[65];
        StoreRow *row;              /* the writer's, then the loop's */
} Lookup;

static void lookup_free(void *data) {
        Lookup *x = data;

        if (!x)
                return;
        store_row_free(x->row);
        explicit_wipe(x->hash, sizeof x->hash);
        free(x);
}

static int take_row(StoreRow *row, void *userdata) {
        Lookup *x = userdata;

        store_row_free(x->row);
        x->row = row;
        return 0;
}

/* On the writer's thread. */
static int lookup_run(Store *s, void *data) {
        Lookup *x = data;
        int64_t id = 0;
        int r;

        x->row = store_row_free(x->row);
        r = links_db_pending_id(s, x->hash, &id);
        if (r <= 0)
                return r;
        return store_rows_changed(s, &id, 1, 0, take_row, x);
}

static void lookup_done(Manager *m, int result, void *data, bool abandoned _unused_) {
        Lookup *x = data;

        if (result < 0 || !x->row || !m->follower)
                return;
        log_debug("callback: a pending authorization started on another node was read from the database.");
        follower_apply(m->follower, x->row);   /* as if the follower had brought it */
}

int pending_lookup(Manager *m, const char *state_hash, StoreWait **wait, void (*wake)(void *userdata),
                   void *userdata) {
        Lookup *x;
        int r;

        if (!m->cluster || !m->follower || !store_pg(m->store))
                return 0;
        x = new0(Lookup, 1);
        if (!x)
                return -ENOMEM;
        snprintf(x->hash, sizeof x->hash, "%s", state_hash);
        r = store_wait_start(m, PENDING_LOOKUP_WAIT, lookup_run, lookup_done, x, lookup_free, wake, userdata, wait);
        return r < 0 ? r : 1;
}
