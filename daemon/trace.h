/* SPDX-License-Identifier: MIT */
#pragma once

#include <jansson.h>

#include "common/conf.h"
#include "daemon/connection.h"
#include "daemon/http.h"

/* `tokenctl trace NAME`: the last exchanges of each connection with its
 * provider, in memory only, secrets replaced by named placeholders
 * (daemon/redact.h). Nothing is kept for a connection until it has a
 * trace, and traces are kept for the trace_connections connections that
 * talked to a provider last (least recently used goes first), each a ring
 * of trace_entries exchanges; bodies and header blocks are cut to
 * TRACE_BODY_MAX bytes. Lookups walk the list: O(trace_connections) per
 * finished request, on the loop, far below a request's own cost.
 *
 * An exchange is recorded raw (copied, secrets and all, in memory only,
 * wiped when freed) and redacted later: by trace_json() before it shows
 * an entry, or by trace_sweep(), a few a turn of the loop when it has
 * nothing better to do (one larger than TRACE_RAW_MAX at once). No entry
 * leaves this module unredacted. */

#define TRACE_BODY_MAX 2048
#define TRACE_URL_MAX 2048
/* An exchange larger than this (request and answer, headers and bodies)
 * is redacted as it is recorded, not kept raw: bounds what waits for
 * redaction (with the defaults, 64 x 20 x 8 KiB at most). */
#define TRACE_RAW_MAX (8 * 1024)

typedef struct TraceStore TraceStore;

TraceStore *trace_store_free(TraceStore *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(TraceStore *, trace_store_free);

/* Whether the next request should keep its answer's headers. */
bool trace_enabled(const BrokerConfig *cfg);

/* Records one finished exchange of c ("refresh", "exchange", ...) with p
 * (NULL: gone), creating *t on first use; limits from cfg (a reload that
 * lowers them trims at the next record). Failures drop the entry. */
void trace_record(TraceStore **t, const BrokerConfig *cfg, const Connection *c, const Provider *p, const char *what,
                  const HttpRequest *req);
/* Redacts up to max raw entries, oldest first; true if some are left. */
bool trace_sweep(TraceStore *t, unsigned max);
/* Whether an entry waits to be redacted. */
bool trace_pending(const TraceStore *t);
#define TRACE_SWEEP_PER_TURN 16
/* Drops the trace of a connection that is gone. */
void trace_forget(TraceStore *t, const char *name);
/* {"connection", "entries": [...] (oldest first, seq > after), "last_seq"};
 * a connection without a trace has none. Redacts what it shows first
 * (at most trace_entries entries). */
json_t *trace_json(TraceStore *t, const char *name, uint64_t after);
