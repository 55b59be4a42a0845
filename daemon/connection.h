/* SPDX-License-Identifier: MIT */
#pragma once

#include <jansson.h>
#include <sys/types.h>

#include "common/conf.h"
#include "common/hashmap.h"
#include "common/macro.h"
#include "common/ordmap.h"
#include "daemon/timerwheel.h"

/* One authorization of one account at one provider. Everything a token
 * handout needs is here, in memory: serving a token touches neither the
 * disk nor the network. */

typedef enum ConnState {
        CONN_PENDING,
        CONN_ACTIVE,
        CONN_NEEDS_REAUTH,
        _CONN_STATE_MAX,
        _CONN_STATE_INVALID = -EINVAL,
} ConnState;

const char *conn_state_to_string(ConnState s);
ConnState conn_state_from_string(const char *s);

typedef struct Waiter Waiter;
typedef struct Manager Manager;
typedef struct Staged Staged;
typedef struct ConnRefresh ConnRefresh;

/* A pending device authorization (RFC 8628). */
typedef struct ConnDevice {
        usec_t interval;           /* > 0 */
        usec_t next_poll;          /* DEADLINE_CLOCK; 0: one interval from now */
        char *user_code;           /* memory only: shown once */
        char *verification_uri;
        char *verification_uri_complete;
} ConnDevice;

/* A pending authorization (and a password grant's credentials), out of
 * line: allocated only while one of its fields is set, freed (the
 * secrets wiped) when all are empty again (issue 9: 40 bytes of every
 * connection before). Only a password-grant connection keeps one for
 * life (code_verifier = its password, and username). */
typedef struct ConnPending {
        char *state_hash;
        /* secret: the PKCE verifier of a pending code flow, the device_code
         * of a pending device flow, the password of a password grant */
        char *code_verifier;
        char *auth_state;          /* secret: the plain state, for ${state}; memory only */
        char *username;            /* password grant */
        usec_t pending_until;      /* realtime; 0 none */
        ConnDevice *device;        /* a pending device authorization (RFC 8628), NULL when none */
} ConnPending;

/* Fields most connections never set, out of line like ConnPending. */
typedef struct ConnRare {
        char *last_error;
        /* The identity when it does not fit the room after the name
         * (Connection.identity_room): read connection_identity(). */
        char *identity;
        char *previous_identity;   /* memory only: who had authorized it before a re-authorization */
        /* Connection parameters and response metadata (common/params.h):
         * JSON objects of strings, NULL when empty; never secrets. */
        json_t *params;
        json_t *metadata;
        usec_t rt_warned;          /* the refresh token's end already warned about (daemon/rtend.c); 0 none */
} ConnRare;

/* The refresh bookkeeping, out of line like ConnPending (issue 9: 56
 * bytes of every connection before): allocated when a refresh is queued
 * or started, a retry is due, an API request waits or a revocation runs
 * (connection_refresh()), freed by connection_refresh_trim() once all of
 * it is empty again. Trimmed at points where a flow settles
 * (refresher_schedule(), the waiters woken, a cancel), not when a field
 * is cleared: a failed refresh's inflight is cleared before its retry_at
 * is set, and setting that must not need an allocation then. Kept in
 * the struct, not here, in 32 bits: notified_s, which besides
 * notify_interval's limit marks an outstanding needs-reauth notification
 * (a "recovered" one follows only then) for as long as the connection
 * stays broken, so a part kept alive by it would not be short-lived; and
 * client_refresh_8 (a 5 s limit, set when a client's refresh starts: its
 * part goes after the commit, and the limit outlives it). */
typedef struct ConnRefresh {
        struct Connection *queue_next, *queue_prev;  /* its provider's refresh queue (Connection.queued) */
        struct HttpRequest *inflight;
        /* New tokens from the provider whose commit is not durable yet
         * (daemon/refresher.c): until it is, the connection's fields keep
         * what clients get. */
        Staged *staged;
        usec_t retry_at;           /* DEADLINE_CLOCK; 0 none */
        Waiter *waiters;           /* suspended API requests */
        Waiter *revoke_waiter;     /* the DELETE that revokes it */
} ConnRefresh;

/* The four names of a connection, interned as one tuple (issue 9: one
 * pointer in the struct instead of four): every connection of the same
 * provider, token type, scope and requested scope shares one read-only,
 * reference-counted ConnNames. Any field may be NULL. Never written
 * through: a change interns another tuple (connection_set_names()).
 * Like common/intern.h, one table per process, the event loop's thread
 * only. */
typedef struct ConnNames {
        const char *provider;      /* resolved per use (manager_provider()) */
        const char *token_type;
        const char *scope;         /* granted */
        const char *requested_scope;
} ConnNames;

/* All four NULL: a new connection's (never counted, never freed). */
extern const ConnNames conn_names_none;

/* A reference to the tuple with these values (made on first use). NULL
 * on -ENOMEM. */
const ConnNames *conn_names_intern(const ConnNames *n);
/* Another reference; gives one back (the last frees it). NULL passes. */
const ConnNames *conn_names_ref(const ConnNames *n);
const ConnNames *conn_names_unref(const ConnNames *n);
/* Distinct tuples now (tests). */
size_t conn_names_count(void);
/* The same four values (NULL equal only to NULL). */
bool conn_names_equal(const ConnNames *a, const ConnNames *b);

#define CONN_NO_IDX UINT32_MAX   /* not in a heap (Connection.expiry_idx, rt_idx) */

#define ACL_MAX 32   /* fits Connection's 8-bit counts */

/* The most bytes kept after a connection's name for its identity (NUL
 * included; Connection.identity_room): a longer one is out of line. */
#define CONN_IDENTITY_ROOM_MAX 255
/* What a new connection of the API keeps for the identity its grant
 * will bring (an identity of up to 47 characters stays inline). */
#define CONN_IDENTITY_ROOM 48

/* Where a loaded connection's bytes go (issue 9), 40-byte tokens, a
 * 9-byte name, a 23-byte identity, one provider, scope and token type for
 * all; malloc chunks with their headers, measured by
 * tests/unit/test-conn-memory.c (heap) and make bench-scale (RSS):
 *
 *                                     main 12-02  12-03 (557 B)  12-03 (477 B)  (397 B)  (349 B)  (317 B)  (285 B)  now
 *   struct (+ the name, same chunk)     480+32      480           432           352   304      272      240      256   208 B struct, + name + identity
 *   provider, scope x2, token type      4 x 32        0             0             0     0        0        0        0   one interned tuple (ConnNames), 1 pointer not 4
 *   identity                                32       32            32            32    32       32       32        0   inline after the name (no pointer)
 *   access + refresh token (82 B)       2 x 64   2 x 64            96            96    96       96       96       96   one chunk (connection_join_tokens())
 *   heap, per connection                   800      639           559           479   431      399      367      351   beyond tokens 718 -> 557 -> 477 -> 397 -> 349 -> 317 -> 285 -> 269
 *   hash bucket (load factor <= 1)        8-16     8-16          8-16          8-16   presized at start
 *   expiry heap slot                         8        8             8             8
 *   wheel, ordered map, hash node            0        0             0             0   intrusive (in the struct)
 *
 * Out of line, allocated only while used: the ACL; ConnPending (a pending
 * authorization, a password grant's credentials, the device part: 48 B,
 * a 64-byte chunk, 40 B of every connection before); ConnRare (last_error,
 * an identity too long for its room after the name, previous_identity,
 * params, metadata, rt_warned: 48 B, a 64-byte chunk, 48 B of every
 * connection before); ConnRefresh (queue links, inflight,
 * staged, retry_at, waiters, revoke_waiter: 56 B, a 64-byte chunk, only
 * while a refresh is queued, in flight or committing, a retry is due or
 * a request waits); a pending authorization's node in
 * Manager.pending (manager_pending_link()). The three heap positions,
 * refreshes and the two rate limits (seconds, eighths of a second) are
 * 32 bits; failures sits in the hash node's spare 32 bits
 * (HashmapNode.spare), the state, the two ACL counts and the five flags
 * (bit-fields) in the timer entry's 6 spare bytes (TimerEntry.spare):
 * no hole left (check with gdb -batch -ex 'ptype /o struct Connection'
 * build/tokenbrokerd). What a token handout reads (the hash node, the
 * state, access_token, names, expires_at, expires_deadline) is in the
 * first 80 bytes. What is left of the struct: the 16-byte hash node (no
 * key pointer: the map's key function finds the name), the 16-byte
 * ordered-map node, the 32-byte timer entry, pointers, 8-byte times, and
 * the name and the identity (a flexible array member, no pointers).
 * The identity changes on a re-authorization, when the struct cannot
 * move (pointers to it are held): identity_room bytes are kept after
 * the name (exactly the loaded identity's; CONN_IDENTITY_ROOM for a
 * connection the API makes), and an identity that does not fit goes out
 * of line into ConnRare. 208 B with a 9-byte name and a 23-byte identity
 * is a 256-byte chunk. Next: rt_end
 * (8 B) into ConnRare only if the providers that report a refresh
 * token's end are rare (they set it for every connection of theirs); a
 * slab for the structs (the malloc header and rounding: 8-24 B). */
typedef struct Connection {
        /* Ordered so that the small fields share words instead of each
         * padding one, and so that what a token handout reads (the hash
         * node, the state, the access token, the names, the expiry) is in
         * the struct's first 80 bytes. */
        union {
                HashmapNode by_name;       /* Manager.connections, key = name */
                struct {
                        uint8_t by_name_own_[offsetof(HashmapNode, spare)];
                        unsigned failures; /* refresh failures in a row; in by_name's spare bits */
                };
        };
        union {
                TimerEntry timer;          /* next refresh, or pending expiry */
                /* the state and the flags, in the timer entry's spare
                 * bytes (TimerEntry.spare) */
                struct {
                        uint8_t timer_own_[offsetof(TimerEntry, spare)];
                        ConnState state : 8;       /* -EINVAL..3 in 8 bits */
                        unsigned n_allow_users : 8, n_allow_groups : 8;   /* each at most ACL_MAX */
                        bool pending_linked : 1;
                        bool queued : 1;
                        bool importing : 1;        /* memory only: the next refresh proves an imported refresh token */
                        bool rt_unknown : 1;       /* counted in Manager.rt.n_unknown (daemon/rtend.c) */
                        bool tokens_joined : 1;    /* refresh_token is in access_token's chunk (connection_join_tokens()) */
                        /* The identity is inline, after the name's NUL in
                         * name[], where identity_room bytes are kept for
                         * it (its NUL included); else it is in ConnRare
                         * (or NULL). Read connection_identity(). */
                        bool identity_inline : 1;
                        unsigned identity_room : 8;
                };
        };
        char *access_token;        /* secret */
        /* provider, token_type, scope, requested_scope: an interned tuple,
         * never NULL (conn_names_none); set with connection_set_names() */
        const ConnNames *names;
        usec_t expires_at;         /* realtime; 0 = never */
        usec_t expires_deadline;   /* the same on DEADLINE_CLOCK, for decisions */

        OrdNode by_order;          /* Manager.ordered, key = name (16 bytes) */

        /* Positions in Manager.expiry and Manager.rt's two heaps, or
         * CONN_NO_IDX (max_connections is at most 10^7: 32 bits do). */
        uint32_t expiry_idx;
        uint32_t rt_idx[2];
        /* Rate limits in 32 bits on DEADLINE_CLOCK, rounded up
         * (deadline_units()), so that they hold at least as long as
         * asked (issue 9: 16 bytes as two usec_t). 0: never.
         * notify_interval's in whole seconds (136 years of uptime; up
         * to a second longer); the 5 s client-refresh limit's in eighths
         * of a second (17 years of uptime, after which the limit lapses;
         * up to 125 ms longer: a client that waits 5.2 s after a refresh
         * it made may make another). */
        uint32_t notified_s;       /* last notify_command run, NOTIFIED_UNIT */
        uint32_t client_refresh_8; /* the last refresh a client's min_ttl or invalidate started, CLIENT_REFRESH_UNIT; memory only */
        uint32_t refreshes;        /* saturates at UINT32_MAX (connection_count_refresh()) */
        /* The first 128 bytes end here: all that the start's linking
         * thread writes but rt_end and the timer's neighbours
         * (prefetch_loaded()) */
        char *refresh_token;       /* secret, never leaves the daemon; set with connection_set_refresh_token() */

        int64_t id;

        usec_t obtained_at;        /* realtime */
        usec_t created_at, updated_at, last_refresh_at;

        /* The refresh token's end (daemon/rtend.c): realtime, 0 unknown.
         * The end already warned about is in ConnRare. */
        usec_t rt_end;

        /* Rarely set fields, out of line (ConnPending, ConnRare): NULL
         * while all of a part's fields are empty. Read and written only
         * through the connection_*() accessors below. A pending device
         * authorization (ConnDevice) hangs off ConnPending. */
        ConnPending *pending;
        ConnRare *rare;

        /* The ACL: one allocation holding both lists (the groups follow
         * the n_allow_users users; connection_allow_groups()), NULL when
         * both are empty; set with connection_set_acl(). Out of line: most
         * connections have none or one entry, and two ACL_MAX arrays were
         * 256 bytes of each. */
        uid_t *allow_users;        /* NULL when both lists are empty */

        /* The refresh bookkeeping (ConnRefresh), NULL while idle. */
        ConnRefresh *refresh;

        /* Immutable; in the struct's own allocation (connection_new()), so
         * no pointer to it (issue 9). Only a connection_new() connection
         * has one: a copy of the struct (ConnImage) does not. After its
         * NUL: identity_room bytes for the identity (identity_inline). */
        char name[];
} Connection;

_Static_assert(offsetof(Connection, failures) == offsetof(Connection, by_name) + offsetof(HashmapNode, spare) &&
                       sizeof(HashmapNode) == offsetof(HashmapNode, spare) + sizeof(unsigned),
               "failures is in by_name's spare bits");
_Static_assert(offsetof(TimerEntry, spare) + sizeof(((TimerEntry *) 0)->spare) == sizeof(TimerEntry) &&
                       offsetof(Connection, access_token) == offsetof(Connection, timer) + sizeof(TimerEntry),
               "the state and the flags are in the timer entry's spare bytes, not past them");
_Static_assert(offsetof(Connection, refresh_token) + sizeof(char *) == 128 &&
                       offsetof(Connection, expires_deadline) < 80,
               "the handout's and the load's fields in the first 128 bytes (prefetch_loaded())");
_Static_assert(CONN_IDENTITY_ROOM_MAX <= 255 && ACL_MAX <= 255 && _CONN_STATE_MAX <= 127, "the counts and the state fit their 8 bits");

/* A refresh counted: refreshes + 1, saturated (32 bits: years of a refresh
 * a minute would not fill them; the store keeps 64). */
static inline uint32_t connection_count_refresh(uint32_t refreshes) {
        return refreshes < UINT32_MAX ? refreshes + 1 : UINT32_MAX;
}
/* A stored count, saturated to the struct's 32 bits. */
static inline uint32_t connection_refreshes_from_store(uint64_t refreshes) {
        return refreshes < UINT32_MAX ? (uint32_t) refreshes : UINT32_MAX;
}

/* A connection as it is to be written (refresher_image()): a shallow
 * copy with parts of its own, so that the image's fields can differ from
 * the connection's without touching them. Its strings are the
 * connection's: it lives on the loop for one store_image_row_new() (which
 * copies every value), never kept, never handed to another thread. The
 * name is not in the copy (conn.name is empty): name points at the
 * connection's; nor is an inline identity: the image's ConnRare holds
 * it (conn.identity_inline is false). */
typedef struct ConnImage {
        ConnPending pending;
        ConnRare rare;
        ConnNames names;           /* not interned: conn.names points here when they differ */
        const char *name;
        Connection conn;           /* last: its name[] is empty */
} ConnImage;

/* A zeroed connection with a copy of name in the same allocation (one
 * malloc chunk instead of two; a name never changes), and room bytes
 * after it for an identity (at most CONN_IDENTITY_ROOM_MAX). With an
 * identity (NULL: none), the room is made to fit it: it is copied there
 * (out of line when longer than the maximum). NULL on -ENOMEM. */
Connection *connection_new_with(const char *name, const char *identity, size_t room);
static inline Connection *connection_new(const char *name) {
        return connection_new_with(name, NULL, 0);
}
Connection *connection_free(Connection *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(Connection *, connection_free);

/* Replaces c's names with the tuple of these values (any NULL). 0, or
 * -ENOMEM (the old tuple is kept). */
int connection_set_names(Connection *c, const ConnNames *n);
/* The same for one of them; the other three are kept. */
int connection_set_provider(Connection *c, const char *provider);
int connection_set_requested_scope(Connection *c, const char *requested_scope);

/* Replaces the ACL with copies of these lists (each at most ACL_MAX; the
 * rest is dropped). 0, or -ENOMEM (the old ACL is kept). */
int connection_set_acl(Connection *c, const uid_t *users, unsigned n_users, const gid_t *groups, unsigned n_groups);

/* The ACL's groups (n_allow_groups of them), NULL when it has none. */
static inline const gid_t *connection_allow_groups(const Connection *c) {
        return c->n_allow_groups > 0 ? (const gid_t *) c->allow_users + c->n_allow_users : NULL;
}

/* Starts a pending device authorization polled every interval (> 0),
 * replacing any; the strings given are taken over. 0 or -ENOMEM (nothing
 * changed, nothing taken). */
int connection_set_device(Connection *c, usec_t interval, char **user_code, char **verification_uri,
                          char **verification_uri_complete);
/* Forgets a pending device authorization (not its device_code). */
void connection_clear_device(Connection *c);
/* The pending device authorization, NULL when none. */
static inline ConnDevice *connection_device(const Connection *c) {
        return c->pending ? c->pending->device : NULL;
}
static inline bool connection_device_pending(const Connection *c) {
        return connection_device(c) != NULL;
}
static inline usec_t connection_device_interval(const Connection *c) {
        return connection_device_pending(c) ? connection_device(c)->interval : 0;
}

/* The refresh bookkeeping's fields: NULL or 0 while there is no part. */
static inline struct HttpRequest *connection_inflight(const Connection *c) {
        return c->refresh ? c->refresh->inflight : NULL;
}
static inline Staged *connection_staged(const Connection *c) {
        return c->refresh ? c->refresh->staged : NULL;
}
static inline usec_t connection_retry_at(const Connection *c) {
        return c->refresh ? c->refresh->retry_at : 0;
}
static inline Waiter *connection_waiters(const Connection *c) {
        return c->refresh ? c->refresh->waiters : NULL;
}
static inline Waiter *connection_revoke_waiter(const Connection *c) {
        return c->refresh ? c->refresh->revoke_waiter : NULL;
}

/* The part, allocated when there is none; NULL on -ENOMEM. A caller
 * must not keep the pointer across anything that may trim it. */
ConnRefresh *connection_refresh(Connection *c);
/* Frees the part when all of its fields are empty. */
void connection_refresh_trim(Connection *c);
/* Sets retry_at (0 clears it, never fails). 0, or -ENOMEM when the part
 * had to be allocated and could not (retry_at unchanged). */
int connection_set_retry_at(Connection *c, usec_t t);

/* A provider request in flight, or its answer being committed. */
static inline bool connection_busy(const Connection *c) {
        return connection_inflight(c) || connection_staged(c);
}

/* The out-of-line fields (ConnPending, ConnRare): NULL or 0 when unset. */
static inline const char *connection_state_hash(const Connection *c) {
        return c->pending ? c->pending->state_hash : NULL;
}
static inline const char *connection_code_verifier(const Connection *c) {
        return c->pending ? c->pending->code_verifier : NULL;
}
static inline const char *connection_auth_state(const Connection *c) {
        return c->pending ? c->pending->auth_state : NULL;
}
static inline const char *connection_username(const Connection *c) {
        return c->pending ? c->pending->username : NULL;
}
static inline usec_t connection_pending_until(const Connection *c) {
        return c->pending ? c->pending->pending_until : 0;
}
static inline const char *connection_last_error(const Connection *c) {
        return c->rare ? c->rare->last_error : NULL;
}
/* Who authorized it (an email, a subject; no secret), NULL when unknown.
 * Not for a ConnImage's conn unless refresher_image() made it (it has no
 * name[]). */
const char *connection_identity(const Connection *c);
static inline const char *connection_previous_identity(const Connection *c) {
        return c->rare ? c->rare->previous_identity : NULL;
}
static inline json_t *connection_params(const Connection *c) {
        return c->rare ? c->rare->params : NULL;
}
static inline json_t *connection_metadata(const Connection *c) {
        return c->rare ? c->rare->metadata : NULL;
}
static inline usec_t connection_rt_warned(const Connection *c) {
        return c->rare ? c->rare->rt_warned : 0;
}

/* Each setter takes the value over (NULL or 0 clears the field; the old
 * value is freed, a secret wiped first). 0, or -ENOMEM when the part had
 * to be allocated and could not: then the field keeps its old value and
 * the one given is freed (wiped). Clearing never fails. A part whose
 * fields are all empty afterwards is freed. */
int connection_set_state_hash(Connection *c, char *s);
int connection_set_code_verifier(Connection *c, char *s);    /* secret */
int connection_set_auth_state(Connection *c, char *s);       /* secret */
int connection_set_username(Connection *c, char *s);
int connection_set_pending_until(Connection *c, usec_t t);
int connection_set_last_error(Connection *c, char *s);
int connection_set_previous_identity(Connection *c, char *s);
/* Takes s over like the setters: inline when it fits identity_room (s
 * is then freed), else out of line in ConnRare (-ENOMEM possible only
 * then, and only when c has no ConnRare: connection_give_rare() makes it
 * not fail). */
int connection_set_identity(Connection *c, char *s);
/* Whether s would be inline (connection_set_identity() cannot fail then). */
static inline bool connection_identity_fits(const Connection *c, const char *s) {
        return !s || strlen(s) < c->identity_room;
}
int connection_set_params(Connection *c, json_t *v);         /* takes the reference */
int connection_set_metadata(Connection *c, json_t *v);       /* takes the reference */
int connection_set_rt_warned(Connection *c, usec_t t);
/* Takes a field's value out (the caller owns it; NULL when unset). */
char *connection_take_previous_identity(Connection *c);
/* Ends a pending authorization: state_hash, code_verifier, auth_state,
 * pending_until (not username, not the device part). Never fails. */
void connection_clear_pending_auth(Connection *c);
/* For a later setter that must not fail (a durable commit's metadata):
 * an empty ConnRare allocated beforehand (new0()) is installed when c has
 * none then (*spare is taken, set to NULL); otherwise left to the caller
 * to free. Afterwards setting a ConnRare field cannot fail. */
void connection_give_rare(Connection *c, ConnRare **spare);

/* Drops the tokens from memory (wiped). */
void connection_clear_tokens(Connection *c);
/* The tokens in one allocation (issue 9: one malloc chunk instead of two,
 * 32 bytes less for 40-character tokens): refresh_token then points into
 * access_token's chunk and tokens_joined is set. Only these functions (and
 * connection_clear_tokens()) may replace or free a token of a connection:
 * never secret_free() c->refresh_token directly. 0, or -ENOMEM (left as
 * it was, still valid). */
int connection_join_tokens(Connection *c);
/* Replace one token (taken over; NULL drops it), the old one wiped.
 * Never fails; the tokens are separate afterwards (join again). */
void connection_set_access_token(Connection *c, char *access);
void connection_set_refresh_token(Connection *c, char *refresh);
/* Deadlines (refresh, retry, expiry) run on CLOCK_BOOTTIME: it neither
 * jumps with the wall clock nor stops during a suspend, so neither can make
 * the broker hand out an expired token or stampede the provider. */
#define DEADLINE_CLOCK CLOCK_BOOTTIME

/* An instant on DEADLINE_CLOCK in units (> 0) of unit usec, rounded up
 * (so a limit measured from it is never shorter), saturated at
 * UINT32_MAX; 0 only for t == 0. And back: the start of that unit. */
static inline uint32_t deadline_units(usec_t t, usec_t unit) {
        usec_t u = t / unit + (t % unit != 0);

        return u > UINT32_MAX ? UINT32_MAX : (uint32_t) u;
}
static inline usec_t deadline_units_usec(uint32_t u, usec_t unit) {
        return (usec_t) u * unit;
}
#define NOTIFIED_UNIT USEC_PER_SEC                  /* Connection.notified_s */
#define CLIENT_REFRESH_UNIT (USEC_PER_SEC / 8)      /* Connection.client_refresh_8 */

/* A realtime instant as seen on DEADLINE_CLOCK now. */
usec_t deadline_from_realtime(usec_t rt);

/* Life left now; USEC_INFINITY when it never expires, 0 when expired. */
usec_t connection_ttl(const Connection *c);
