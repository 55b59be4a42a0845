/* SPDX-License-Identifier: MIT */
#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>

#include "daemon/acl.h"

static bool peer_in_group(const Peer *p, gid_t g) {
        if (p->gid == g)
                return true;
        for (int i = 0; i < p->n_groups; i++)
                if (p->groups[i] == g)
                        return true;
        return false;
}

int peer_from_fd(int fd, gid_t admin_gid, bool have_admin_gid, Peer *ret) {
        struct ucred cred;
        socklen_t len = sizeof cred;
        Peer p = {};
        struct passwd pw, *pwp = NULL;
        char buf[4096];

        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return -errno;
        p.pid = cred.pid;
        p.uid = cred.uid;
        p.gid = cred.gid;
        /* Supplementary groups come from the user database: the kernel
         * passes only the primary gid. */
        if (getpwuid_r(cred.uid, &pw, buf, sizeof buf, &pwp) == 0 && pwp) {
                int n = (int) ELEMENTSOF(p.groups);
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
                if (peer_in_group(p, c->allow_groups[i]))
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
