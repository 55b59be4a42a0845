/* SPDX-License-Identifier: MIT */
#pragma once

/* Followers (issue 10): every node serves every connection from its own
 * memory, and learns what the other nodes commit within a moment.
 *
 * Each commit of a connection on PostgreSQL announces "id version node"
 * in its own transaction (daemon/store-pg.c). A thread of its own, with
 * its own session, LISTENs, reads the rows that changed by id, and hands
 * copies to the loop (an eventfd); the loop turns them into connections
 * and merges them (follower_apply(): nothing waits on the network, a
 * handout never waits on this). After every (re)connect, and every
 * FOLLOWER_SCAN as a safety net, it reads every row whose version is above
 * the highest it has seen: no lost notification leaves a node serving an
 * old token for longer than that.
 *
 * Merging: a node that is refreshing the connection itself (busy) keeps
 * its tokens; the lease holder takes tokens only when they are newer than
 * its own (a grant on another node); every other node takes the row's.
 * Fields beyond the tokens (the ACL, parameters, identity) are the row's.
 * A connection another node made joins; one it deleted goes: by its
 * notification, or by its tombstone when the catch-up reads it (a node
 * whose database link was cut), or, when the tombstones it needed were
 * pruned already, by comparing every id held with the table. */

#include <systemd/sd-event.h>

#include "common/macro.h"

#define FOLLOWER_SCAN (30 * USEC_PER_SEC)
#define FOLLOWER_WAIT (500 * USEC_PER_MSEC)
/* How often a node prunes tombstones older than STORE_TOMBSTONE_AGE. */
#define FOLLOWER_PRUNE (10 * 60 * USEC_PER_SEC)

typedef struct Follower Follower;
typedef struct Manager Manager;

/* Starts the thread (it connects by itself, with a handle like the
 * manager's store, and again after every failure) from version since
 * (read before the loop loaded the rows). */
int follower_new(Manager *m, int64_t since, Follower **ret);
Follower *follower_free(Follower *f);
DEFINE_TRIVIAL_CLEANUP_FUNC(Follower *, follower_free);
/* On a node without c's lease: asks the node holding it to refresh c;
 * w is woken (0) when the refreshed tokens arrive from the database, or
 * with -ETIMEDOUT after FOLLOWER_REQUEST_WAIT (no node holds the lease
 * yet: its holder died and the lease has not lapsed). Every heartbeat
 * after the ask the lease is looked at again: once it came to this node
 * (the holder died, its lease lapsed and this node's heartbeat took it)
 * the refresh is done here; from FOLLOWER_RESEND_AFTER on, the request
 * is sent again each heartbeat, so a new holder elsewhere gets it. A
 * killed holder's demand is thus answered once its lease lapses (15 s
 * plus a heartbeat), not after FOLLOWER_REQUEST_WAIT. */
#define FOLLOWER_REQUEST_WAIT (30 * USEC_PER_SEC)
#define FOLLOWER_RESEND_AFTER (6 * USEC_PER_SEC)
typedef struct Connection Connection;
typedef struct Waiter Waiter;
int follower_request_refresh(Follower *f, Connection *c, Waiter *w);

/* Reads of rows the thread has begun (manager_deleting()). */
uint64_t follower_reads(Follower *f);

/* Changes applied since the start (for tests and metrics). */
uint64_t follower_applied(Follower *f);

/* A row read outside the thread (daemon/pending.c: a callback for an
 * authorization another node started, before the thread brought it):
 * merged as if the thread had. */
typedef struct StoreRow StoreRow;
void follower_apply(Follower *f, const StoreRow *row);
