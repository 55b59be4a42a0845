/* SPDX-License-Identifier: MIT */
#pragma once

#include "daemon/manager.h"

/* The local API: HTTP/1.1 over the Unix socket, JSON in and out. */
int api_new(Manager *m, int fd, Api **ret);
Api *api_free(Api *a);
