/* SPDX-License-Identifier: MIT */

/* The store on PostgreSQL (daemon/store-engine.h), through daemon/pg.h:
 * the schema of sql/pg/, every value a bound parameter, binary both ways.
 * A COMMIT returns once the server has made it durable (synchronous_commit
 * on, the server's default; with a synchronous standby, once the standby
 * has it too).
 *
 * Every write of a connection takes the next connections_version, so
 * another node can catch up on what it missed by version (issue 10). */

#include <stdarg.h>

#include "common/util.h"
#include "daemon/pg.h"
#include "daemon/store-engine.h"

struct StoreDb {
        PgDb *pg;
        unsigned version;
        bool in_transaction;
        char error[512];
};

#define ROW_COLUMNS                                                                                            \
        "id, name, provider, state, requested_scope, scope, identity, token_type, access_token, refresh_token, " \
        "expires_at, obtained_at, state_hash, code_verifier, pending_until, allow_users, allow_groups, "        \
        "last_error, refreshes, created_at, updated_at, last_refresh_at, username, device_interval"

_printf_(2, 3) static void set_error(StoreDb *d, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(d->error, sizeof d->error, fmt, ap);
        va_end(ap);
}

static const char *pgs_error(StoreDb *d) {
        if (!d)
                return "out of memory";
        return d->error[0] ? d->error : pg_db_error(d->pg);
}

static unsigned pgs_schema_version(StoreDb *d) {
        return d->version;
}

static void pgs_close(StoreDb *d) {
        if (!d)
                return;
        pg_db_close(d->pg);
        free(d);
}

static int pgs_open(const char *where, const StoreOptions *options, StoreDb **ret, char *error, size_t error_size) {
        StoreDb *d;
        int r;

        *ret = NULL;
        d = new0(StoreDb, 1);
        if (!d) {
                snprintf(error, error_size, "out of memory");
                return -ENOMEM;
        }
        r = pg_db_connect(where, options ? options->password : NULL, &d->pg, error, error_size);
        if (r >= 0)
                r = pg_db_migrate(d->pg, &d->version);
        if (r < 0) {
                if (d->pg)
                        snprintf(error, error_size, "%s", pg_db_error(d->pg));
                pgs_close(d);
                return r;
        }
        *ret = d;
        return 0;
}

static int pgs_exec(StoreDb *d, const char *sql) {
        d->error[0] = 0;
        return pg_db_exec(d->pg, sql);
}

/* A broken session (a server restart, a failover) is reconnected at the
 * start of the next transaction: what failed with it failed, what comes
 * next gets a fresh session. */
static int pgs_begin(StoreDb *d) {
        int r;

        d->error[0] = 0;
        if (pg_db_broken(d->pg)) {
                r = pg_db_reset(d->pg);
                if (r < 0)
                        return r;
        }
        r = pgs_exec(d, "BEGIN");
        d->in_transaction = r >= 0;
        return r;
}

static int pgs_commit(StoreDb *d) {
        int r = pgs_exec(d, "COMMIT");

        d->in_transaction = false;
        return r;
}

static void pgs_rollback(StoreDb *d) {
        if (!pg_db_broken(d->pg))
                (void) pg_db_exec(d->pg, "ROLLBACK");
        d->in_transaction = false;
}

static int pgs_key_check_get(StoreDb *d, uint8_t **ret, size_t *ret_size) {
        PGresult *res = NULL;
        int r;

        *ret = NULL;
        *ret_size = 0;
        d->error[0] = 0;
        r = pg_db_query(d->pg, "SELECT value FROM key_check WHERE id = 1", NULL, &res);
        if (r <= 0)
                return r;
        r = pg_get_dup(res, 0, 0, (char **) ret, ret_size);
        PQclear(res);
        return r < 0 ? r : 1;
}

static int pgs_key_check_set(StoreDb *d, const uint8_t *p, size_t n, bool replace) {
        PgParams q = { 0 };
        int r;

        d->error[0] = 0;
        pg_param_bytea(&q, p, n);
        r = pg_db_query(d->pg,
                        replace ? "INSERT INTO key_check (id, value) VALUES (1, $1) "
                                  "ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value"
                                : "INSERT INTO key_check (id, value) VALUES (1, $1)",
                        &q, NULL);
        return r < 0 ? r : 0;
}

static int pgs_max_id(StoreDb *d, int64_t *ret) {
        PGresult *res = NULL;
        int r;

        d->error[0] = 0;
        r = pg_db_query(d->pg, "SELECT COALESCE(MAX(id), 0)::bigint FROM connections", NULL, &res);
        if (r < 0)
                return r;
        *ret = pg_get_int64(res, 0, 0);
        PQclear(res);
        return 0;
}

static void bind_row(PgParams *p, const StoreRow *row) {
        pg_param_int64(p, row->id);                                   /* $1 */
        pg_param_text(p, row->text[ROW_PROVIDER]);                    /* $2 */
        pg_param_text(p, conn_state_to_string(row->state));           /* $3 */
        pg_param_text(p, row->text[ROW_REQUESTED_SCOPE]);             /* $4 */
        pg_param_text(p, row->text[ROW_SCOPE]);                       /* $5 */
        pg_param_text(p, row->text[ROW_IDENTITY]);                    /* $6 */
        pg_param_text(p, row->text[ROW_TOKEN_TYPE]);                  /* $7 */
        pg_param_bytea(p, row->sealed[0], row->sealed_size[0]);       /* $8 */
        pg_param_bytea(p, row->sealed[1], row->sealed_size[1]);       /* $9 */
        pg_param_int64(p, (int64_t) row->expires_at);                 /* $10 */
        pg_param_int64(p, (int64_t) row->obtained_at);                /* $11 */
        pg_param_text(p, row->text[ROW_STATE_HASH]);                  /* $12 */
        pg_param_bytea(p, row->sealed[2], row->sealed_size[2]);       /* $13 */
        pg_param_int64(p, (int64_t) row->pending_until);              /* $14 */
        pg_param_text(p, row->users);                                 /* $15 */
        pg_param_text(p, row->groups);                                /* $16 */
        pg_param_text(p, row->text[ROW_LAST_ERROR]);                  /* $17 */
        pg_param_int64(p, (int64_t) row->refreshes);                  /* $18 */
        pg_param_int64(p, (int64_t) row->updated_at);                 /* $19 */
        pg_param_int64(p, (int64_t) row->last_refresh_at);            /* $20 */
        pg_param_text(p, row->text[ROW_USERNAME]);                    /* $21 */
        pg_param_int64(p, (int64_t) row->device_interval);            /* $22 */
        pg_param_text(p, row->text[ROW_NAME]);                        /* $23 */
        pg_param_int64(p, (int64_t) row->created_at);                 /* $24 */
}

static int pgs_row_insert(StoreDb *d, const StoreRow *row) {
        PgParams p = { 0 };
        int r;

        d->error[0] = 0;
        bind_row(&p, row);
        r = pg_db_query(d->pg,
                        "INSERT INTO connections (id, provider, state, requested_scope, scope, identity, token_type, "
                        "access_token, refresh_token, expires_at, obtained_at, state_hash, code_verifier, "
                        "pending_until, allow_users, allow_groups, last_error, refreshes, updated_at, "
                        "last_refresh_at, username, device_interval, name, created_at) VALUES ($1, $2, $3, $4, $5, "
                        "$6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)",
                        &p, NULL);
        return r < 0 ? r : 0;
}

static int pgs_row_save(StoreDb *d, const StoreRow *row) {
        PgParams p = { 0 };
        int r;

        d->error[0] = 0;
        bind_row(&p, row);
        p.n -= 2;   /* name and created_at do not change */
        r = pg_db_query(d->pg,
                        "UPDATE connections SET provider = $2, state = $3, requested_scope = $4, scope = $5, "
                        "identity = $6, token_type = $7, access_token = $8, refresh_token = $9, expires_at = $10, "
                        "obtained_at = $11, state_hash = $12, code_verifier = $13, pending_until = $14, "
                        "allow_users = $15, allow_groups = $16, last_error = $17, refreshes = $18, "
                        "updated_at = $19, last_refresh_at = $20, username = $21, device_interval = $22, "
                        "version = nextval('connections_version') WHERE id = $1",
                        &p, NULL);
        if (r == 0) {
                set_error(d, "connection %" PRId64 " is not in the store", row->id);
                return -ENOENT;
        }
        return r < 0 ? r : 0;
}

static int pgs_row_delete(StoreDb *d, int64_t id) {
        PgParams p = { 0 };
        int r;

        d->error[0] = 0;
        pg_param_int64(&p, id);
        r = pg_db_query(d->pg, "DELETE FROM connections WHERE id = $1", &p, NULL);
        return r < 0 ? r : 0;
}

typedef struct LoadContext {
        StoreDb *d;
        int (*fn)(const StoreRow *row, void *userdata);
        void *userdata;
} LoadContext;

/* Borrowed views into the result: text and bytea values are NUL-free
 * where they must be (text has no NUL in PostgreSQL). */
static char *view_text(const PGresult *res, int col) {
        return pg_get_null(res, 0, col) ? NULL : PQgetvalue(res, 0, col);
}

static void view_sealed(const PGresult *res, int col, uint8_t **p, size_t *n) {
        if (pg_get_null(res, 0, col)) {
                *p = NULL;
                *n = 0;
                return;
        }
        *p = (uint8_t *) PQgetvalue(res, 0, col);
        *n = (size_t) PQgetlength(res, 0, col);
}

static int load_one(const PGresult *res, void *userdata) {
        LoadContext *l = userdata;
        StoreRow row = {
                .id = pg_get_int64(res, 0, 0),
                .expires_at = (usec_t) pg_get_int64(res, 0, 10),
                .obtained_at = (usec_t) pg_get_int64(res, 0, 11),
                .pending_until = (usec_t) pg_get_int64(res, 0, 14),
                .refreshes = (uint64_t) pg_get_int64(res, 0, 18),
                .created_at = (usec_t) pg_get_int64(res, 0, 19),
                .updated_at = (usec_t) pg_get_int64(res, 0, 20),
                .last_refresh_at = (usec_t) pg_get_int64(res, 0, 21),
                .device_interval = (usec_t) pg_get_int64(res, 0, 23),
        };

        row.state = conn_state_from_string(view_text(res, 3) ?: "");
        if (row.state < 0) {
                set_error(l->d, "connection %" PRId64 ": invalid state", row.id);
                return -EBADMSG;
        }
        row.text[ROW_NAME] = view_text(res, 1);
        row.text[ROW_PROVIDER] = view_text(res, 2);
        row.text[ROW_REQUESTED_SCOPE] = view_text(res, 4);
        row.text[ROW_SCOPE] = view_text(res, 5);
        row.text[ROW_IDENTITY] = view_text(res, 6);
        row.text[ROW_TOKEN_TYPE] = view_text(res, 7);
        row.text[ROW_STATE_HASH] = view_text(res, 12);
        row.text[ROW_LAST_ERROR] = view_text(res, 17);
        row.text[ROW_USERNAME] = view_text(res, 22);
        view_sealed(res, 8, &row.sealed[0], &row.sealed_size[0]);
        view_sealed(res, 9, &row.sealed[1], &row.sealed_size[1]);
        view_sealed(res, 13, &row.sealed[2], &row.sealed_size[2]);
        snprintf(row.users, sizeof row.users, "%s", view_text(res, 15) ?: "");
        snprintf(row.groups, sizeof row.groups, "%s", view_text(res, 16) ?: "");
        return l->fn(&row, l->userdata);
}

static int pgs_rows_load(StoreDb *d, int (*fn)(const StoreRow *row, void *userdata), void *userdata) {
        LoadContext l = { .d = d, .fn = fn, .userdata = userdata };

        d->error[0] = 0;
        return pg_db_query_each(d->pg, "SELECT " ROW_COLUMNS " FROM connections ORDER BY id", NULL, load_one, &l);
}

static int pgs_sealed_next(StoreDb *d, int64_t after, int64_t *ret_id, uint8_t *ret[STORE_SEALED_MAX],
                           size_t ret_size[STORE_SEALED_MAX]) {
        PGresult *res = NULL;
        PgParams p = { 0 };
        int r;

        for (size_t j = 0; j < STORE_SEALED_MAX; j++) {
                ret[j] = NULL;
                ret_size[j] = 0;
        }
        d->error[0] = 0;
        pg_param_int64(&p, after);
        r = pg_db_query(d->pg,
                        "SELECT id, access_token, refresh_token, code_verifier FROM connections WHERE id > $1 "
                        "ORDER BY id LIMIT 1",
                        &p, &res);
        if (r <= 0)
                return r;
        *ret_id = pg_get_int64(res, 0, 0);
        for (size_t j = 0; j < STORE_SEALED_MAX && r >= 0; j++)
                r = pg_get_dup(res, 0, (int) j + 1, (char **) &ret[j], &ret_size[j]);
        PQclear(res);
        if (r < 0) {
                for (size_t j = 0; j < STORE_SEALED_MAX; j++)
                        ret[j] = mfree(ret[j]);
                return r;
        }
        return 1;
}

static int pgs_sealed_update(StoreDb *d, int64_t id, uint8_t *const sealed[STORE_SEALED_MAX],
                             const size_t size[STORE_SEALED_MAX]) {
        PgParams p = { 0 };
        int r;

        d->error[0] = 0;
        pg_param_int64(&p, id);
        for (size_t j = 0; j < STORE_SEALED_MAX; j++)
                pg_param_bytea(&p, sealed[j], size[j]);
        r = pg_db_query(d->pg,
                        "UPDATE connections SET access_token = $2, refresh_token = $3, code_verifier = $4, "
                        "version = nextval('connections_version') WHERE id = $1",
                        &p, NULL);
        return r < 0 ? r : 0;
}

/* Old row versions are the server's (VACUUM): nothing to do from here. */
static void pgs_forget_old_values(StoreDb *d _unused_) {
}

/* "tokennod" as a bigint: the session lock of the one daemon. */
#define PG_SINGLE_NODE_LOCK INT64_C(0x746f6b656e6e6f64)

static int pgs_lock_single_node(StoreDb *d) {
        PGresult *res = NULL;
        PgParams p = { 0 };
        bool got;
        int r;

        d->error[0] = 0;
        pg_param_int64(&p, PG_SINGLE_NODE_LOCK);
        r = pg_db_query(d->pg, "SELECT pg_try_advisory_lock($1)", &p, &res);
        if (r < 0)
                return r;
        /* a binary bool: one byte */
        got = r > 0 && PQgetlength(res, 0, 0) == 1 && PQgetvalue(res, 0, 0)[0] == 1;
        PQclear(res);
        if (!got) {
                set_error(d, "another tokenbrokerd holds this database");
                return -EBUSY;
        }
        return 0;
}

static int pgs_event_add(StoreDb *d, usec_t at, const char *connection, const char *kind, const char *message) {
        PGresult *res = NULL;
        PgParams p = { 0 };
        int64_t id;
        int r;

        d->error[0] = 0;
        pg_param_int64(&p, (int64_t) at);
        pg_param_text(&p, connection);
        pg_param_text(&p, kind);
        pg_param_text(&p, message);
        r = pg_db_query(d->pg, "INSERT INTO events (at, connection, kind, message) VALUES ($1, $2, $3, $4) "
                               "RETURNING id",
                        &p, &res);
        if (r < 0)
                return r;
        id = pg_get_int64(res, 0, 0);
        PQclear(res);
        /* Keep the table bounded, as on SQLite. */
        if (id > STORE_EVENTS_MAX && id % 64 == 0) {
                p = (PgParams) { 0 };
                pg_param_int64(&p, id - STORE_EVENTS_MAX);
                r = pg_db_query(d->pg, "DELETE FROM events WHERE id <= $1", &p, NULL);
        }
        return r < 0 ? r : 0;
}

typedef struct EventsContext {
        int (*fn)(const StoreEvent *e, void *userdata);
        void *userdata;
} EventsContext;

static int event_one(const PGresult *res, void *userdata) {
        EventsContext *x = userdata;
        StoreEvent e = {
                .id = pg_get_int64(res, 0, 0),
                .at = (usec_t) pg_get_int64(res, 0, 1),
                .connection = view_text(res, 2),
                .kind = view_text(res, 3),
                .message = view_text(res, 4),
        };

        return x->fn(&e, x->userdata);
}

static int pgs_events_list(StoreDb *d, const char *connection, int64_t before_id, unsigned limit,
                           int (*fn)(const StoreEvent *e, void *userdata), void *userdata) {
        EventsContext x = { .fn = fn, .userdata = userdata };
        PgParams p = { 0 };

        d->error[0] = 0;
        pg_param_text(&p, connection);
        pg_param_int64(&p, before_id);
        pg_param_int64(&p, limit);
        return pg_db_query_each(d->pg,
                                "SELECT id, at, connection, kind, message FROM events "
                                "WHERE ($1::text IS NULL OR connection = $1) AND ($2 <= 0 OR id < $2) "
                                "ORDER BY id DESC LIMIT $3",
                                &p, event_one, &x);
}

const StoreEngine store_engine_pg = {
        .name = "postgresql",
        .open = pgs_open,
        .close = pgs_close,
        .error = pgs_error,
        .schema_version = pgs_schema_version,
        .begin = pgs_begin,
        .commit = pgs_commit,
        .rollback = pgs_rollback,
        .key_check_get = pgs_key_check_get,
        .key_check_set = pgs_key_check_set,
        .max_id = pgs_max_id,
        .row_insert = pgs_row_insert,
        .row_save = pgs_row_save,
        .row_delete = pgs_row_delete,
        .rows_load = pgs_rows_load,
        .sealed_next = pgs_sealed_next,
        .sealed_update = pgs_sealed_update,
        .forget_old_values = pgs_forget_old_values,
        .lock_single_node = pgs_lock_single_node,
        .event_add = pgs_event_add,
        .events_list = pgs_events_list,
};
