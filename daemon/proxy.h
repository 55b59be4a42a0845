/* SPDX-License-Identifier: MIT */
#pragma once

#include <microhttpd.h>

#include "daemon/acl.h"
#include "daemon/manager.h"
#include "daemon/mhd.h"

/* The auth-injecting proxy on the API socket:
 * ANY /v1/connections/NAME/proxy/PATH?QUERY goes to the provider's first
 * api_url (or the one X-Tokenbroker-Origin names) + /PATH?QUERY with the
 * connection's token added by the provider's usage rule. Bodies stream
 * both ways through two small rings (PROXY_RING bytes each), with the
 * client's and curl's side paused in turn, so memory stays bounded
 * whatever the size. A 401 makes one refresh (single-flight, the
 * invalidate rate limit) and one retry when the request can be replayed. */

#define PROXY_RING (64 * 1024)
/* A request body of at most this many bytes (with a Content-Length) is
 * kept, so a 401 can be retried; a larger or chunked one streams. */
#define PROXY_REPLAY_MAX (1024 * 1024)
#define PROXY_ORIGIN_HEADER "X-Tokenbroker-Origin"
#define PROXY_RETRIED_HEADER "X-Tokenbroker-Retried"

typedef struct ProxyCtx ProxyCtx;
typedef struct Proxy Proxy;

ProxyCtx *proxy_ctx_new(Manager *m, MhdLoop *loop);
/* Aborts every proxied request and resumes its connection (before MHD stops). */
ProxyCtx *proxy_ctx_free(ProxyCtx *x);

/* The first call for a request whose raw target proxy_target_is_proxy():
 * checks it, then either sets *ret (the request is the proxy's from now on:
 * pass every later call to proxy_handle()) or queues the refusal. */
enum MHD_Result proxy_begin(ProxyCtx *x, struct MHD_Connection *conn, const Peer *peer, const char *method,
                            const char *raw, Proxy **ret);
enum MHD_Result proxy_handle(Proxy *p, const char *upload_data, size_t *upload_data_size);
/* When MHD is done with the request. Accepts NULL. */
void proxy_free(Proxy *p);
