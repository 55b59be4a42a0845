/* SPDX-License-Identifier: MIT */
#pragma once

/* The nodes of a store on PostgreSQL (issue 10): a thread of its own,
 * with its own session, writes this node's heartbeat into the nodes table
 * every CLUSTER_HEARTBEAT and reads every node's back, so that the loop
 * can answer "which nodes are there, and is the database reachable" from
 * memory, never waiting on the network. A change of reachability is
 * announced on the loop (an eventfd).
 *
 * Times are the database's clock (one clock for every node); ages are
 * measured there too. */

#include <stdbool.h>
#include <systemd/sd-event.h>

#include "common/macro.h"

#define CLUSTER_HEARTBEAT (2 * USEC_PER_SEC)
/* A node whose heartbeat is older than this is dead (and, once leases
 * exist, its connections go to the others). */
#define CLUSTER_NODE_TIMEOUT (15 * USEC_PER_SEC)
#define CLUSTER_NODES_MAX 64
/* Leases (issue 10): a node refreshes a connection only while it holds
 * the connection's lease in the database: lease_node its name,
 * lease_until ahead on the database's clock. The heartbeat renews the
 * leases a node holds (CLUSTER_LEASE_TIME from now each time), takes
 * unleased and lapsed ones up to its fair share, ceil(connections / live
 * nodes), and lets the ones beyond its share lapse when nodes join. A
 * takeover increments lease_epoch; a refresh's commit names the epoch it
 * was sent under and writes nothing if the lease moved meanwhile. A node
 * that dies (or loses the database) keeps its connections waiting at
 * most CLUSTER_LEASE_TIME plus a heartbeat before another node takes
 * them. */
#define CLUSTER_LEASE_TIME (15 * USEC_PER_SEC)
/* A refresh is sent only with at least this much of the lease left, and
 * its request gives up CLUSTER_LEASE_MARGIN before the lease ends, so
 * that its answer is committed while the lease is still this node's. */
#define CLUSTER_LEASE_MIN_LEFT (8 * USEC_PER_SEC)
#define CLUSTER_LEASE_MARGIN (3 * USEC_PER_SEC)
#define CLUSTER_NAME_MAX 64

typedef struct ClusterNode {
        char name[CLUSTER_NAME_MAX + 1];
        char version[32];
        usec_t started_at, heartbeat_at;   /* the database's clock */
        usec_t age;                        /* of the heartbeat, at the last look */
        size_t holds;                      /* leases it holds, at the last look */
        bool self, alive;
} ClusterNode;

typedef struct ClusterView {
        bool reachable;
        unsigned failures;                 /* heartbeats failed in a row */
        usec_t last_ok;                    /* CLOCK_REALTIME of the last good heartbeat; 0: none */
        char error[256];                   /* why not reachable */
        size_t n;
        ClusterNode nodes[CLUSTER_NODES_MAX];   /* by name */
        size_t leases;                     /* held by this node after the last heartbeat */
        size_t connections, live;          /* in the database, and live nodes, at the last look */
} ClusterView;

typedef struct Cluster Cluster;
typedef void (*cluster_change_fn)(bool reachable, const char *error, void *userdata);

/* Starts the heartbeat thread (it connects by itself, and again after
 * every failure). on_change runs on the loop when reachability changes. */
int cluster_new(const char *uri, const char *password, const char *node_name, usec_t started_at, sd_event *event,
                cluster_change_fn on_change, void *userdata, Cluster **ret);
/* Stops the thread, removes nothing from the table (a stopped node ages
 * out like a dead one). */
Cluster *cluster_free(Cluster *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(Cluster *, cluster_free);

/* A copy of what the last heartbeat saw. */
void cluster_view(Cluster *c, ClusterView *ret);
/* Whether the last heartbeat reached the database (true before the
 * first one: the store was just opened). */
bool cluster_reachable(Cluster *c);

/* 1 when this node holds connection id's lease, with its epoch and its
 * end on DEADLINE_CLOCK (a little before the database's, never after);
 * 0 when it does not. O(log leases), from memory. */
int cluster_lease(Cluster *c, int64_t id, int64_t *ret_epoch, usec_t *ret_until);

/* The lease work of one heartbeat on db's session (daemon/cluster.c, and
 * tests/pg/test-lease.c to race two nodes): renews node's leases up to
 * its share of live nodes, takes free and lapsed ones up to it. *ret_ids
 * and *ret_epochs (sorted by id, malloc'ed) are the leases held, each
 * until CLUSTER_LEASE_TIME after the database's clock read at the start
 * of the call. */
typedef struct PgDb PgDb;
int cluster_leases_renew(PgDb *db, const char *node, size_t live, int64_t **ret_ids, int64_t **ret_epochs,
                         size_t *ret_n, size_t *ret_connections);
