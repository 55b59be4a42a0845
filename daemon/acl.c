/* SPDX-License-Identifier: MIT */
#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>

#include "common/log.h"
#include "daemon/acl.h"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

static bool peer_in_group(const Peer *p, gid_t g) {
        if (p->gid == g)
                return true;
        for (int i = 0; i < p->n_groups; i++)
                if (p->groups[i] == g)
                        return true;
        return false;
}

/* The peer's supplementary groups as the kernel holds them for the peer
 * process (SO_PEERGROUPS, Linux >= 4.13), captured at connect() like its
 * uid and gid: membership is the process's, as for file permissions, so a
 * service given a group by systemd's SupplementaryGroups= is a member and
 * a process that dropped its groups is not. Returns the number of groups
 * kept (at most ELEMENTSOF(p->groups): beyond that they are left out,
 * which can only refuse, never grant), or -errno. */
static int peer_groups_from_kernel(int fd, Peer *p) {
        socklen_t len = sizeof p->groups;
        _cleanup_free_ gid_t *all = NULL;

        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, p->groups, &len) >= 0)
                return (int) (len / sizeof(gid_t));
        if (errno != ERANGE)
                return -errno;
        /* More groups than we keep: the kernel copies nothing then. */
        all = malloc(len);
        if (!all)
                return -ENOMEM;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, all, &len) < 0)
                return -errno;
        log_debug("Peer has %zu supplementary groups; only the first %zu are considered.",
                  (size_t) (len / sizeof(gid_t)), ELEMENTSOF(p->groups));
        memcpy(p->groups, all, sizeof p->groups);
        return (int) ELEMENTSOF(p->groups);
}

int peer_from_fd(int fd, gid_t admin_gid, bool have_admin_gid, Peer *ret) {
        struct ucred cred;
        socklen_t len = sizeof cred;
        Peer p = {};
        struct passwd pw, *pwp = NULL;
        char buf[4096];
        int n;

        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return -errno;
        p.pid = cred.pid;
        p.uid = cred.uid;
        p.gid = cred.gid;
        n = peer_groups_from_kernel(fd, &p);
        if (n >= 0)
                p.n_groups = n;
        else if (getpwuid_r(cred.uid, &pw, buf, sizeof buf, &pwp) == 0 && pwp) {
                /* Kernels without SO_PEERGROUPS: the user database. */
                n = (int) ELEMENTSOF(p.groups);
                if (getgrouplist(pw.pw_name, pw.pw_gid, p.groups, &n) >= 0)
                        p.n_groups = n;
                else
                        p.n_groups = (int) ELEMENTSOF(p.groups);
        }
        p.admin = p.uid == 0 || p.uid == geteuid() || (have_admin_gid && peer_in_group(&p, admin_gid));
        *ret = p;
        return 0;
}

bool peer_may_read(const Peer *p, const Connection *c) {
        if (p->admin)
                return true;
        for (unsigned i = 0; i < c->n_allow_users; i++)
                if (c->allow_users[i] == p->uid)
                        return true;
        for (unsigned i = 0; i < c->n_allow_groups; i++)
                if (peer_in_group(p, connection_allow_groups(c)[i]))
                        return true;
        return false;
}

static int parse_id(const char *s, unsigned *ret) {
        char *end;
        unsigned long u;

        if (!*s || *s == '-' || *s == '+')
                return -EINVAL;
        errno = 0;
        u = strtoul(s, &end, 10);
        if (errno || *end || u >= (unsigned long) UINT32_MAX)
                return -EINVAL;
        *ret = (unsigned) u;
        return 0;
}

int acl_parse_group(const char *s, gid_t *ret) {
        struct group gr, *grp = NULL;
        char buf[4096];
        unsigned u;

        if (parse_id(s, &u) >= 0) {
                *ret = u;
                return 0;
        }
        if (getgrnam_r(s, &gr, buf, sizeof buf, &grp) != 0 || !grp)
                return -ESRCH;
        *ret = grp->gr_gid;
        return 0;
}

int acl_parse_user(const char *s, uid_t *ret) {
        struct passwd pw, *pwp = NULL;
        char buf[4096];
        unsigned u;

        if (parse_id(s, &u) >= 0) {
                *ret = u;
                return 0;
        }
        if (getpwnam_r(s, &pw, buf, sizeof buf, &pwp) != 0 || !pwp)
                return -ESRCH;
        *ret = pwp->pw_uid;
        return 0;
}
