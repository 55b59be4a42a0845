/* SPDX-License-Identifier: MIT */
#pragma once

/* Pending authorizations on several nodes (PostgreSQL). A callback may
 * land on any node (behind a load balancer); the follower normally brings
 * another node's pending authorization within milliseconds, but a
 * browser can be faster. A node that does not know the callback's state
 * reads it from the database (one query by the state's hash, on the
 * store writer's thread, at most PENDING_LOOKUP_WAIT), merges the row as
 * the follower would, and carries on with the callback. */

#include "daemon/store-wait.h"

#define PENDING_LOOKUP_WAIT (2 * USEC_PER_SEC)

/* 1: the lookup started; the caller suspends the request until
 * wake(userdata), then looks again (the row is merged by then if there
 * was one) and releases *wait. 0: nothing to look up (SQLite: one node
 * knows everything). -errno: it could not start. */
int pending_lookup(Manager *m, const char *state_hash, StoreWait **wait, void (*wake)(void *userdata),
                   void *userdata);
