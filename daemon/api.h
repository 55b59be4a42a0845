/* SPDX-License-Identifier: MIT */
#pragma once

#include "daemon/manager.h"

/* The local API: HTTP/1.1 over the Unix socket, JSON in and out. fd is the
 * listening socket, already bound (manager_bind_api()) or passed by systemd;
 * the Api owns it from here on. */
int api_new(Manager *m, int fd, Api **ret);
Api *api_free(Api *a);

/* How long until a client may make c refresh again (0: now): the limit
 * POST .../invalidate has, shared by every client-driven refresh. */
usec_t api_client_refresh_wait(const Connection *c);
