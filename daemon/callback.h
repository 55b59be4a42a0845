/* SPDX-License-Identifier: MIT */
#pragma once

#include "daemon/manager.h"

/* The OAuth callback listener (TCP): GET /oauth/callback and GET /healthz,
 * nothing else; small limits on everything a browser or attacker sends. */
int callback_new(Manager *m, int fd, Callback **ret);
Callback *callback_free(Callback *c);

/* HTML-escapes s into a new string: for anything echoed into a page. */
char *html_escape(const char *s);
