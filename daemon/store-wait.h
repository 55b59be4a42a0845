/* SPDX-License-Identifier: MIT */
#pragma once

/* Work on the store writer's thread that a suspended HTTP request waits
 * for, at most a given time (daemon/links.c on PostgreSQL: a link another
 * node made, the click's claim; daemon/callback.c: a pending
 * authorization another node started). The loop never blocks: the
 * request is suspended, and woken when the writer answers or the time is
 * up, whichever comes first.
 *
 *   run(s, data)    on the writer's thread (a store_custom_fn)
 *   done(m, result, data, abandoned)
 *                   on the loop once the writer is done, whether or not
 *                   anyone still waits (abandoned: the time was up, or
 *                   the request went): to bring the answer into memory,
 *                   or to undo a claim nobody will use
 *   wake(userdata)  on the loop, once: the waiter can look (ready)
 *
 * The waiter calls store_wait_release() when it is done looking or its
 * request goes; data is freed (data_free) when both sides are done. */

#include <stdbool.h>

#include "daemon/store.h"

typedef struct Manager Manager;
typedef struct StoreWait StoreWait;

int store_wait_start(Manager *m, usec_t timeout, store_custom_fn run,
                     void (*done)(Manager *m, int result, void *data, bool abandoned), void *data,
                     void (*data_free)(void *data), void (*wake)(void *userdata), void *userdata, StoreWait **ret);
/* The writer answered, or the time is up. */
bool store_wait_ready(const StoreWait *w);
/* The writer's result, or -ETIMEDOUT. */
int store_wait_result(const StoreWait *w);
void *store_wait_data(const StoreWait *w);
StoreWait *store_wait_release(StoreWait *w);
