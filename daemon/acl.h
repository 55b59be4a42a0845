/* SPDX-License-Identifier: MIT */
#pragma once

#include <sys/types.h>

#include "daemon/connection.h"

/* Who is on the other end of the Unix socket, from SO_PEERCRED, looked up
 * once per socket connection (not per request). */
typedef struct Peer {
        pid_t pid;
        uid_t uid;
        gid_t gid;
        gid_t groups[64];         /* supplementary groups of uid */
        int n_groups;
        bool admin;
} Peer;

int peer_from_fd(int fd, gid_t admin_gid, bool have_admin_gid, Peer *ret);
bool peer_may_read(const Peer *p, const Connection *c);

/* Resolves a group name (or number) to a gid. */
int acl_parse_group(const char *s, gid_t *ret);
int acl_parse_user(const char *s, uid_t *ret);
