/* SPDX-License-Identifier: MIT */
#pragma once

/* Re-authorization links: PUBLIC_URL/oauth/start/TOKEN on the callback
 * listener, single use, valid for a while (7 days unless said, at most
 * 30). TOKEN is 32 random bytes, base64url; only its SHA-256 is kept, in
 * memory and in the links table (sql/0004-links.sql; on PostgreSQL
 * sql/pg/0004-links.sql, shared by every node: memory is then a cache the
 * API and the page refresh from the table first, and the click claims the
 * row in the database), written through the store writer. Opening the link shows a page (GET changes nothing); its
 * button POSTs to the same URL, which marks the link used and only then
 * starts the authorization (manager_authorize(): state, PKCE and the
 * pending_ttl window start at the click) with a 303 to the provider. */

#include <microhttpd.h>

#include "daemon/link-token.h"
#include "daemon/manager.h"

/* ---- the daemon ------------------------------------------------------- */

typedef struct Link Link;
typedef struct StoreWait StoreWait;

/* Loads the links table (at startup, before the loop serves anyone) and
 * queues the deletion of rows expired more than a day ago. */
int links_new(Manager *m, Links **ret);
Links *links_free(Links *l);

/* Mints a link for connection name (which must exist unless provider is
 * given: then the click may create it). by: the uid that asked, -1 for the
 * broker itself; by_name: its login name (may be NULL). *ret_url: the
 * link (a secret: for the asker only, never logged). fn runs once the row
 * is durable (0) or failed. On failure *ret_error says why; -ENOENT: no
 * such connection or provider, -EEXIST: the connection has another
 * provider, -EOPNOTSUPP: the provider has no browser flow, -E2BIG: too
 * many links. */
int links_mint(Manager *m, const char *name, const char *provider, const char *scope, int64_t by,
               const char *by_name, usec_t valid, char **ret_url, int64_t *ret_id, const char **ret_error,
               store_done_fn fn, void *userdata);

/* notify_command on needs-reauth: when public_url is set and the
 * connection's provider runs the code flow in a browser, mints a link (by
 * the broker, LINK_VALID_DEFAULT) in place of the broker's earlier unused
 * ones for that connection. *ret_url: NULL when none was minted. */
void links_mint_automatic(Manager *m, Connection *c, char **ret_url);

/* The socket API's /v1/links routes, for admins (the caller checks):
 *   GET    /v1/links[?connection=NAME]
 *   POST   /v1/links {"name", "provider"?, "scope"?, "valid"? (seconds),
 *                     "requested_by"?}
 *   DELETE /v1/links/ID or /v1/links/NAME (every live link of NAME)
 * Fills *ret_status and *ret_body (JSON). Returns 1 when a write was
 * queued: fn(result, error, userdata) runs once it is durable (answer
 * then); 0 when the answer is ready now. On PostgreSQL (other nodes share
 * the table) it first reads the table on the writer's thread and returns
 * 2 (no answer yet): answer(status, body, userdata) gives it later, then
 * fn (result 0, or the write's) runs once it may be sent. */
typedef void (*links_answer_fn)(unsigned status, char *body, void *userdata);
bool links_api_path(const char *url);
int links_api(Manager *m, const char *method, const char *url, const char *query_connection, const char *body,
              size_t body_len, uid_t uid, unsigned *ret_status, char **ret_body, store_done_fn fn,
              links_answer_fn answer, void *userdata);

/* GET, HEAD or POST /oauth/start/TOKEN on the callback listener (token:
 * what follows LINK_PATH, as sent). Queues the answer (a page, or a 303
 * to the provider) and returns 0 (*ret: MHD's result). On PostgreSQL it
 * first reads the link (and on POST claims it) on the writer's thread:
 * it returns 1 with *wait set, the caller suspends the request, wake
 * (userdata) runs once the answer is there (or LINK_DB_WAIT is up), and
 * the caller calls again with the same *wait. A request that goes while
 * suspended releases *wait (store_wait_release()). */
int links_serve(Manager *m, struct MHD_Connection *conn, const char *method, const char *token, StoreWait **wait,
                void (*wake)(void *userdata), void *userdata, enum MHD_Result *ret);
