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
        char *node;                /* StoreOptions.node; NULL: a tool */
        unsigned version;
        bool in_transaction;
        char error[512];
};

#define ROW_COLUMNS                                                                                            \
        "id, name, provider, state, requested_scope, scope, identity, token_type, access_token, refresh_token, " \
        "expires_at, obtained_at, state_hash, code_verifier, pending_until, allow_users, allow_groups, "        \
        "last_error, refreshes, created_at, updated_at, last_refresh_at, username, device_interval, params, metadata, " \
        "rt_end, rt_warned"

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
        free(d->node);
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
        if (options && options->node && !(d->node = strdup(options->node))) {
                snprintf(error, error_size, "out of memory");
                free(d);
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

/* The one bigint a query answers (0 for no row). */
static int pgs_scalar(StoreDb *d, const char *sql, int64_t *ret) {
        PGresult *res = NULL;
        int r;

        d->error[0] = 0;
        r = pg_db_query(d->pg, sql, NULL, &res);
        if (r < 0)
                return r;
        *ret = r > 0 ? pg_get_int64(res, 0, 0) : 0;
        PQclear(res);
        return 0;
}

static int pgs_max_id(StoreDb *d, int64_t *ret) {
        return pgs_scalar(d, "SELECT COALESCE(MAX(id), 0)::bigint FROM connections", ret);
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
        pg_param_text(p, row->text[ROW_PARAMS]);                      /* $23 */
        pg_param_text(p, row->text[ROW_METADATA]);                    /* $24 */
        pg_param_int64(p, (int64_t) row->rt_end);                     /* $25 */
        pg_param_int64(p, (int64_t) row->rt_warned);                  /* $26 */
        pg_param_text(p, row->text[ROW_NAME]);                        /* $27 */
        pg_param_int64(p, (int64_t) row->created_at);                 /* $28 */
}

/* Every change of a connection is announced to the other nodes in its own
 * transaction (NOTIFY is delivered at COMMIT, and never for a rollback):
 * "ID VERSION NODE" on PG_CHANGES_CHANNEL (NODE the writer, empty for a
 * tool), or "ID - NODE NAME" for a delete (NODE "-" for a tool). A data-modifying WITH and the notify in
 * one statement: one round trip, and its row count is the rows changed. */
#define NOTIFY_SELECT(node_param)                                                                              \
        " SELECT pg_notify('" PG_CHANGES_CHANNEL "', u.id::text || ' ' || u.version::text || ' ' || "            \
        "COALESCE(" node_param ", '')) FROM u"

static int pgs_row_insert(StoreDb *d, const StoreRow *row) {
        PgParams p = { 0 };
        int r;

        d->error[0] = 0;
        bind_row(&p, row);
        pg_param_text(&p, d->node);                                   /* $29 */
        r = pg_db_query(d->pg,
                        "WITH u AS (INSERT INTO connections (id, provider, state, requested_scope, scope, identity, "
                        "token_type, access_token, refresh_token, expires_at, obtained_at, state_hash, code_verifier, "
                        "pending_until, allow_users, allow_groups, last_error, refreshes, updated_at, "
                        "last_refresh_at, username, device_interval, params, metadata, rt_end, rt_warned, name, "
                        "created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, "
                        "$17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28) RETURNING id, version)"
                        NOTIFY_SELECT("$29::text"),
                        &p, NULL);
        return r < 0 ? r : 0;
}

/* The columns a refresh writes: the lease holder's (the tokens and what
 * comes with them). A save by a node without the lease writes the
 * others only, so that a node whose memory is a moment behind (a
 * notification on its way) never puts back a refresh token that was
 * spent. */
#define SET_TOKENS                                                                                             \
        "state = $3, scope = $5, token_type = $7, access_token = $8, refresh_token = $9, expires_at = $10, "   \
        "obtained_at = $11, last_error = $17, refreshes = $18, last_refresh_at = $20, metadata = $24, "        \
        "rt_end = $25, rt_warned = $26, "
#define SET_OTHERS                                                                                             \
        "provider = $2, requested_scope = $4, identity = $6, state_hash = $12, code_verifier = $13, "          \
        "pending_until = $14, allow_users = $15, allow_groups = $16, updated_at = $19, username = $21, "       \
        "device_interval = $22, params = $23, "

static int pgs_row_save(StoreDb *d, const StoreRow *row) {
        PgParams p = { 0 };
        int r;

        d->error[0] = 0;
        bind_row(&p, row);
        pg_param_text(&p, d->node);                                   /* $29 */
        if (row->fence_epoch > 0) {
                /* A refresh's answer: only under the lease it was sent
                 * under. 0 rows: taken over (or gone): nothing written. */
                pg_param_int64(&p, row->fence_epoch);                 /* $30 */
                r = pg_db_query(d->pg,
                                "WITH u AS (UPDATE connections SET " SET_TOKENS "updated_at = $19, identity = $6, "
                                "version = nextval('connections_version') WHERE id = $1 AND lease_node = $29 AND "
                                "lease_epoch = $30 RETURNING id, version)" NOTIFY_SELECT("$29::text"),
                                &p, NULL);
                if (r == 0) {
                        set_error(d, "connection %" PRId64 ": this node (%s) no longer holds its lease (epoch %" PRId64
                                  "): another node took it over", row->id, d->node ?: "?", row->fence_epoch);
                        return -ESTALE;
                }
        } else
                r = pg_db_query(d->pg,
                                row->keep_tokens
                                ? "WITH u AS (UPDATE connections SET " SET_OTHERS
                                  "version = nextval('connections_version') WHERE id = $1 RETURNING id, version)"
                                  NOTIFY_SELECT("$29::text")
                                : "WITH u AS (UPDATE connections SET " SET_TOKENS SET_OTHERS
                                  "version = nextval('connections_version') WHERE id = $1 RETURNING id, version)"
                                  NOTIFY_SELECT("$29::text"),
                                &p, NULL);
        if (r == 0) {
                set_error(d, "connection %" PRId64 " is not in the store", row->id);
                return -ENOENT;
        }
        return r < 0 ? r : 0;
}

/* The database's clock, in microseconds since the epoch. */
#define PGS_DB_NOW "(extract(epoch from clock_timestamp()) * 1000000)::bigint"

static int pgs_row_delete(StoreDb *d, int64_t id) {
        PgParams p = { 0 };
        int r;

        d->error[0] = 0;
        pg_param_int64(&p, id);
        pg_param_text(&p, d->node);
        /* The tombstone in the same statement (sql/pg/0005): a node that
         * misses the notification learns of the delete by version. */
        r = pg_db_query(d->pg,
                        "WITH u AS (DELETE FROM connections WHERE id = $1 RETURNING id, name), "
                        "t AS (INSERT INTO deleted_connections (id, name, version, deleted_at) "
                        "SELECT id, name, nextval('connections_version'), " PGS_DB_NOW " FROM u "
                        "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, version = EXCLUDED.version, "
                        "deleted_at = EXCLUDED.deleted_at RETURNING id, name) "
                        "SELECT pg_notify('" PG_CHANGES_CHANNEL "', t.id::text || ' - ' || "
                        "COALESCE(NULLIF($2::text, ''), '-') || ' ' || t.name) FROM t",
                        &p, NULL);
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
                .rt_end = (usec_t) pg_get_int64(res, 0, 26),
                .rt_warned = (usec_t) pg_get_int64(res, 0, 27),
                .version = PQnfields(res) > 28 ? pg_get_int64(res, 0, 28) : 0,
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
        row.text[ROW_PARAMS] = view_text(res, 24);
        row.text[ROW_METADATA] = view_text(res, 25);
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

static int pgs_max_version(StoreDb *d, int64_t *ret) {
        /* deletes count: a node that loaded every row has seen them too */
        return pgs_scalar(d,
                          "SELECT GREATEST((SELECT COALESCE(MAX(version), 0) FROM connections), "
                          "(SELECT COALESCE(MAX(version), 0) FROM deleted_connections), "
                          "(SELECT COALESCE(MAX(version), 0) FROM deleted_connections_pruned))::bigint",
                          ret);
}

static int pgs_changes_listen(StoreDb *d) {
        int r = pgs_exec(d, "LISTEN " PG_CHANGES_CHANNEL);

        return r < 0 ? r : pgs_exec(d, "LISTEN " PG_REQUESTS_CHANNEL);
}

/* "? NODE ID NAME": NODE asks the holder of ID's lease to refresh it. */
static int pgs_changes_request(StoreDb *d, int64_t id, const char *name) {
        PgParams p = { 0 };
        int r;

        d->error[0] = 0;
        pg_param_text(&p, d->node ?: "-");
        pg_param_int64(&p, id);
        pg_param_text(&p, name);
        r = pg_db_query(d->pg, "SELECT pg_notify('" PG_REQUESTS_CHANNEL "', '? ' || $1 || ' ' || $2::text || ' ' || $3)",
                        &p, NULL);
        return r < 0 ? r : 0;
}

typedef struct WaitContext {
        int (*fn)(int64_t id, int64_t version, const char *node, const char *name, void *userdata);
        void *userdata;
} WaitContext;

/* "ID VERSION NODE" or "ID - NODE NAME" (a delete): anything else is
 * not ours and is skipped. */
static int wait_one(const char *payload, void *userdata) {
        WaitContext *w = userdata;
        char node[128] = "";
        long long id, version = -1;
        int n = 0;

        if (sscanf(payload, "%lld %lld %127s", &id, &version, node) >= 2 && id > 0 && version > 0)
                return w->fn(id, version, node, NULL, w->userdata);
        if (sscanf(payload, "%lld - %127s %n", &id, node, &n) == 2 && id > 0 && n > 0)
                return w->fn(id, -1, node, payload + n, w->userdata);
        if (sscanf(payload, "? %127s %lld %n", node, &id, &n) == 2 && id > 0 && n > 0)
                return w->fn(id, -2, node, payload + n, w->userdata);
        return 0;
}

static int pgs_changes_wait(StoreDb *d, usec_t timeout, int wake_fd,
                            int (*fn)(int64_t id, int64_t version, const char *node, const char *name, void *userdata),
                            void *userdata) {
        WaitContext w = { .fn = fn, .userdata = userdata };

        d->error[0] = 0;
        return pg_db_wait_notify(d->pg, timeout, wake_fd, wait_one, &w);
}

static int pgs_rows_changed(StoreDb *d, const int64_t *ids, size_t n, int64_t after_version,
                            int (*fn)(const StoreRow *row, void *userdata), void *userdata) {
        LoadContext l = { .d = d, .fn = fn, .userdata = userdata };
        _cleanup_free_ char *list = NULL;
        PgParams p = { 0 };
        size_t size = 0;
        FILE *f;

        d->error[0] = 0;
        f = open_memstream(&list, &size);
        if (!f)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                fprintf(f, "%s%" PRId64, i > 0 ? "," : "", ids[i]);
        if (fclose(f) != 0 || !list)
                return -ENOMEM;
        pg_param_text(&p, list);
        pg_param_int64(&p, after_version);
        return pg_db_query_each(d->pg,
                                "SELECT " ROW_COLUMNS ", version FROM connections WHERE "
                                "($1 <> '' AND id = ANY(string_to_array($1, ',')::bigint[])) OR "
                                "($1 = '' AND version > $2) ORDER BY version",
                                &p, load_one, &l);
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

/* A node name's lock: 1953459054 ("tokn") and the name's hash. */


static int try_lock(StoreDb *d, const char *sql, const PgParams *p) {
        PGresult *res = NULL;
        bool got;
        int r;

        r = pg_db_query(d->pg, sql, p, &res);
        if (r < 0)
                return r;
        /* a binary bool: one byte */
        got = r > 0 && PQgetlength(res, 0, 0) == 1 && PQgetvalue(res, 0, 0)[0] == 1;
        PQclear(res);
        return got;
}

/* Tools that want the database alone (a key rotation, a copy) take the
 * lock exclusively; every running node holds it shared. */
static int pgs_lock_single_node(StoreDb *d) {
        PgParams p = { 0 };
        int r;

        d->error[0] = 0;
        pg_param_int64(&p, PG_SINGLE_NODE_LOCK);
        r = try_lock(d, "SELECT pg_try_advisory_lock($1)", &p);
        if (r == 0) {
                set_error(d, "another tokenbrokerd holds this database");
                return -EBUSY;
        }
        return r < 0 ? r : 0;
}

static int pgs_lock_node(StoreDb *d, const char *node) {
        PgParams p = { 0 };
        int r;

        d->error[0] = 0;
        pg_param_int64(&p, PG_SINGLE_NODE_LOCK);
        r = try_lock(d, "SELECT pg_try_advisory_lock_shared($1)", &p);
        if (r == 0) {
                set_error(d, "a tool (a key rotation, --copy-store) holds this database");
                return -EBUSY;
        }
        if (r < 0)
                return r;
        p = (PgParams) { 0 };
        pg_param_text(&p, node);
        r = try_lock(d, "SELECT pg_try_advisory_lock(1953459054, hashtext($1))", &p);
        if (r == 0) {
                set_error(d, "a running node already has node_name '%s' on this database", node);
                return -EADDRINUSE;
        }
        return r < 0 ? r : 0;
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

PgDb *store_pg_db(StoreDb *d) {
        return d->pg;
}

/* ---- ids in blocks, tombstones (issue 10) ------------------------------- */

/* "tokenids" as a bigint: reservations of id blocks, one at a time. */
#define PG_ID_BLOCK_LOCK INT64_C(0x746f6b656e696473)

/* The next STORE_ID_BLOCK ids of connections_id, above every id in the
 * table (rows copied in by --copy-store, or written by an older node),
 * under an advisory lock so that no two reservations interleave. setval()
 * is not transactional: a block once handed out is never handed out
 * again, whatever happens to this session. */
static int pgs_id_block(StoreDb *d, int64_t *ret_first, int64_t *ret_last) {
        PGresult *res = NULL;
        PgParams p = { 0 }, q = { 0 };
        int r, u;

        d->error[0] = 0;
        if (pg_db_broken(d->pg) && !d->in_transaction) {
                r = pg_db_reset(d->pg);
                if (r < 0)
                        return r;
        }
        pg_param_int64(&p, PG_ID_BLOCK_LOCK);
        r = pg_db_query(d->pg, "SELECT pg_advisory_lock($1)", &p, NULL);
        if (r < 0)
                return r;
        pg_param_int64(&q, STORE_ID_BLOCK);
        r = pg_db_query(d->pg,
                        "SELECT setval('connections_id', GREATEST((SELECT last_value FROM connections_id), "
                        "(SELECT COALESCE(MAX(id), 0) FROM connections)) + $1)::bigint",
                        &q, &res);
        if (r > 0) {
                *ret_last = pg_get_int64(res, 0, 0);
                *ret_first = *ret_last - STORE_ID_BLOCK + 1;
        } else if (r == 0)
                r = -EIO;
        PQclear(res);
        if (pg_db_broken(d->pg))
                return r < 0 ? r : -ECONNRESET;   /* the lock went with the session */
        u = pg_db_query(d->pg, "SELECT pg_advisory_unlock($1)", &p, NULL);
        return r < 0 ? r : u < 0 ? u : 0;
}

typedef struct DeletedContext {
        int (*fn)(int64_t id, int64_t version, const char *name, void *userdata);
        void *userdata;
} DeletedContext;

static int deleted_one(const PGresult *res, void *userdata) {
        DeletedContext *x = userdata;

        return x->fn(pg_get_int64(res, 0, 0), pg_get_int64(res, 0, 1), view_text(res, 2) ?: "", x->userdata);
}

static int pgs_deleted_since(StoreDb *d, int64_t after,
                             int (*fn)(int64_t id, int64_t version, const char *name, void *userdata),
                             void *userdata) {
        DeletedContext x = { .fn = fn, .userdata = userdata };
        PgParams p = { 0 };

        d->error[0] = 0;
        pg_param_int64(&p, after);
        return pg_db_query_each(d->pg,
                                "SELECT id, version, name FROM deleted_connections WHERE version > $1 "
                                "ORDER BY version",
                                &p, deleted_one, &x);
}

static int pgs_deleted_horizon(StoreDb *d, int64_t *ret) {
        return pgs_scalar(d, "SELECT COALESCE(MAX(version), 0)::bigint FROM deleted_connections_pruned", ret);
}

/* One statement: the tombstones go and the horizon moves together. */
static int pgs_deleted_prune(StoreDb *d, usec_t age) {
        PgParams p = { 0 };
        int r;

        d->error[0] = 0;
        pg_param_int64(&p, (int64_t) MIN(age, (usec_t) INT64_MAX));
        r = pg_db_query(d->pg,
                        "WITH g AS (DELETE FROM deleted_connections WHERE deleted_at < " PGS_DB_NOW " - $1 "
                        "RETURNING version) "
                        "UPDATE deleted_connections_pruned SET version = GREATEST(version, "
                        "(SELECT COALESCE(MAX(version), 0) FROM g)) WHERE id = 1 AND EXISTS (SELECT 1 FROM g)",
                        &p, NULL);
        return r < 0 ? r : 0;
}

typedef struct MissingContext {
        int (*fn)(int64_t id, void *userdata);
        void *userdata;
} MissingContext;

static int missing_one(const PGresult *res, void *userdata) {
        MissingContext *x = userdata;

        return x->fn(pg_get_int64(res, 0, 0), x->userdata);
}

static int pgs_ids_missing(StoreDb *d, const int64_t *ids, size_t n, int (*fn)(int64_t id, void *userdata),
                           void *userdata) {
        MissingContext x = { .fn = fn, .userdata = userdata };
        _cleanup_free_ char *list = NULL;
        PgParams p = { 0 };
        size_t size = 0;
        FILE *f;

        d->error[0] = 0;
        if (n == 0)
                return 0;
        f = open_memstream(&list, &size);
        if (!f)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                fprintf(f, "%s%" PRId64, i > 0 ? "," : "", ids[i]);
        if (fclose(f) != 0 || !list)
                return -ENOMEM;
        pg_param_text(&p, list);
        return pg_db_query_each(d->pg,
                                "SELECT x::bigint FROM unnest(string_to_array($1, ',')::bigint[]) AS x "
                                "WHERE NOT EXISTS (SELECT 1 FROM connections c WHERE c.id = x)",
                                &p, missing_one, &x);
}

static int pgs_count(StoreDb *d, int64_t *ret) {
        return pgs_scalar(d, "SELECT count(*)::bigint FROM connections", ret);
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
        .lock_node = pgs_lock_node,
        .changes_listen = pgs_changes_listen,
        .changes_request = pgs_changes_request,
        .max_version = pgs_max_version,
        .changes_wait = pgs_changes_wait,
        .rows_changed = pgs_rows_changed,
        .event_add = pgs_event_add,
        .events_list = pgs_events_list,
        .id_block = pgs_id_block,
        .deleted_since = pgs_deleted_since,
        .deleted_horizon = pgs_deleted_horizon,
        .deleted_prune = pgs_deleted_prune,
        .ids_missing = pgs_ids_missing,
        .count = pgs_count,
};
