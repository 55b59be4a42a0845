/* SPDX-License-Identifier: MIT */
#pragma once

/* The links table (daemon/links.c) on either engine: SQLite's
 * (sql/0004-links.sql) and PostgreSQL's (sql/pg/0004-links.sql), the
 * same columns with the same meaning. Every call blocks: for the start
 * (the loop's handle, before anyone is served) and the store writer's
 * thread (inside a store_custom_fn), never for a client on the loop. On
 * failure store_custom_error() says why. */

#include "daemon/store.h"

typedef struct Link Link;
struct Link {
        Link *next, *prev;
        int64_t id;
        char hash[65];
        char *connection, *provider, *scope, *by_name;
        bool creates;
        int64_t by;                 /* uid, or -1: the broker */
        usec_t created_at, expires_at, used_at, revoked_at;   /* CLOCK_REALTIME */
};

Link *link_free(Link *l);
void link_strings_free(Link *l);

/* Every row (hash NULL) or the one with that hash, by id; fn takes each
 * link (its own allocation) or fails. */
int links_db_load(Store *s, const char *hash, int (*fn)(Link *l, void *userdata), void *userdata);
int links_db_insert(Store *s, const Link *l);

typedef enum LinkMark {
        LINK_MARK_USED,             /* only an unused, unrevoked link, not expired at `at`: the claim */
        LINK_MARK_UNUSED,           /* undoes a claim made at `at` (the authorization did not start) */
        LINK_MARK_REVOKED,          /* only one neither used nor revoked */
        LINK_MARK_DELETE_OLD,       /* every link expired before `at` */
} LinkMark;
/* The number of rows changed, or -errno. */
int links_db_mark(Store *s, LinkMark op, int64_t id, usec_t at);

/* PostgreSQL: n new ids from the links_id sequence (never given twice,
 * whichever node asks). -EOPNOTSUPP on SQLite. */
int links_db_reserve_ids(Store *s, int64_t *ids, size_t n);

/* PostgreSQL: the id of the connection waiting for the authorization
 * whose state has this hash (1), or 0 when there is none. */
int links_db_pending_id(Store *s, const char *state_hash, int64_t *ret_id);
