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
#define CLUSTER_NAME_MAX 64

typedef struct ClusterNode {
        char name[CLUSTER_NAME_MAX + 1];
        char version[32];
        usec_t started_at, heartbeat_at;   /* the database's clock */
        usec_t age;                        /* of the heartbeat, at the last look */
        bool self, alive;
} ClusterNode;

typedef struct ClusterView {
        bool reachable;
        unsigned failures;                 /* heartbeats failed in a row */
        usec_t last_ok;                    /* CLOCK_REALTIME of the last good heartbeat; 0: none */
        char error[256];                   /* why not reachable */
        size_t n;
        ClusterNode nodes[CLUSTER_NODES_MAX];   /* by name */
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
