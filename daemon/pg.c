/* SPDX-License-Identifier: MIT */
#include <endian.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "daemon/pg.h"

/* Built-in type OIDs (pg_type.dat): stable since PostgreSQL 7. */
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_TEXT 25

/* The advisory lock key of the migrations: "tokenbro" as a bigint. */
#define PG_MIGRATE_LOCK INT64_C(0x746f6b656e62726f)

struct PgDb {
        PGconn *conn;
        char error[512];
};

_printf_(2, 3) static void pg_set_error(PgDb *db, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(db->error, sizeof db->error, fmt, ap);
        va_end(ap);
}

const char *pg_db_error(PgDb *db) {
        return db && db->error[0] ? db->error : "out of memory";
}

bool pg_db_broken(PgDb *db) {
        return !db || !db->conn || PQstatus(db->conn) != CONNECTION_OK;
}

int pg_sqlstate_to_errno(const char *s) {
        if (!s || strlen(s) != 5)
                return -EIO;
        if (streq(s, "23505"))
                return -EEXIST;
        if (streq(s, "40001") || streq(s, "40P01"))
                return -EAGAIN;
        if (startswith(s, "08") || startswith(s, "57P0"))
                return -ECONNRESET;
        if (startswith(s, "28"))
                return -EACCES;
        if (streq(s, "3D000"))
                return -ENOENT;
        if (startswith(s, "53"))
                return -ENOSPC;
        return -EIO;
}

/* libpq's messages end in a newline and may span lines: one line here. */
static void copy_message(char *to, size_t size, const char *msg) {
        size_t n = 0;

        for (const char *p = msg ? msg : ""; *p && n + 1 < size; p++)
                to[n++] = *p == '\n' || *p == '\r' || *p == '\t' ? ' ' : *p;
        while (n > 0 && to[n - 1] == ' ')
                n--;
        to[n] = 0;
}

/* ---- redaction ------------------------------------------------------------ */

/* Copies s into out with the value of every password=... (key=value
 * strings, URI query parameters) replaced by ***. */
static void redact_password_params(const char *s, char *out, size_t size) {
        const char *start = s;
        size_t o = 0;

        while (*s && o + 1 < size) {
                const char *rest = NULL;
                bool at_key = s == start || strchr("?& ", s[-1]);

                if (at_key && strncasecmp(s, "password", 8) == 0) {
                        const char *q = s + 8;
                        while (*q == ' ')
                                q++;
                        if (*q == '=')
                                rest = q + 1;
                }
                if (rest) {
                        const char *e = rest;
                        int n;

                        while (*e == ' ')
                                e++;
                        if (*e == '\'') {   /* quoted: up to the closing quote */
                                e++;
                                while (*e && *e != '\'')
                                        e += e[0] == '\\' && e[1] ? 2 : 1;
                                if (*e)
                                        e++;
                        } else
                                while (*e && *e != '&' && *e != ' ')
                                        e++;
                        n = snprintf(out + o, size - o, "password=***");
                        if (n < 0 || (size_t) n >= size - o)
                                break;
                        o += (size_t) n;
                        s = e;
                        continue;
                }
                out[o++] = *s++;
        }
        out[o] = 0;
}

char *pg_uri_redact(const char *uri) {
        _cleanup_free_ char *step = NULL;
        const char *scheme = NULL;
        size_t size;
        char *out;

        if (!uri)
                return NULL;
        size = strlen(uri) + 32;
        step = malloc(size);
        out = malloc(size);
        if (!step || !out) {
                free(out);
                return NULL;
        }
        snprintf(step, size, "%s", uri);
        if ((scheme = startswith(uri, "postgresql://")) || (scheme = startswith(uri, "postgres://"))) {
                /* [user[:password]@]host...: the last '@' before the path */
                const char *end = scheme + strcspn(scheme, "/?");
                const char *at = NULL;

                for (const char *p = scheme; p < end; p++)
                        if (*p == '@')
                                at = p;
                if (at) {
                        const char *colon = memchr(scheme, ':', (size_t) (at - scheme));
                        if (colon)
                                snprintf(step, size, "%.*s:***%s", (int) (colon - uri), uri, at);
                }
        }
        redact_password_params(step, out, size);
        return out;
}

/* ---- connecting --------------------------------------------------------- */

int pg_db_connect(const char *uri, const char *password, PgDb **ret, char *error, size_t error_size) {
        const char *keys[12], *values[12];
        _cleanup_(pg_db_closep) PgDb *db = NULL;
        int k = 0;

        *ret = NULL;
        db = new0(PgDb, 1);
        if (!db) {
                snprintf(error, error_size, "out of memory");
                return -ENOMEM;
        }
        /* Bounds on a network that goes silent, before dbname so that
         * the URI's own values win: a connect gives up after 10 s, a
         * dead peer is found by keepalives within about 11 s, unsent data
         * fails after 10 s (so a thread blocked here can always be
         * stopped). dbname carries the URI (expand_dbname); the password
         * comes after it so that it wins over one in the URI. */
        keys[k] = "connect_timeout", values[k++] = "10";
        keys[k] = "keepalives", values[k++] = "1";
        keys[k] = "keepalives_idle", values[k++] = "5";
        keys[k] = "keepalives_interval", values[k++] = "2";
        keys[k] = "keepalives_count", values[k++] = "3";
        keys[k] = "tcp_user_timeout", values[k++] = "10000";
        keys[k] = "dbname", values[k++] = uri;
        keys[k] = "application_name", values[k++] = "tokenbroker";
        if (password)
                keys[k] = "password", values[k++] = password;
        keys[k] = NULL, values[k] = NULL;
        db->conn = PQconnectdbParams(keys, values, 1);
        if (!db->conn) {
                snprintf(error, error_size, "out of memory");
                return -ENOMEM;
        }
        if (PQstatus(db->conn) != CONNECTION_OK) {
                _cleanup_free_ char *safe = pg_uri_redact(uri);
                char msg[400];
                const char *m = PQerrorMessage(db->conn);

                copy_message(msg, sizeof msg, m);
                snprintf(error, error_size, "cannot connect to %s: %s", safe ? safe : "the database", msg);
                if (strstr(m, "password authentication failed") || strstr(m, "no password supplied"))
                        return -EACCES;
                if (strstr(m, "does not exist"))
                        return -ENOENT;
                return -ECONNREFUSED;
        }
        *ret = TAKE_PTR(db);
        return 0;
}

static int drain_notifies(PgDb *db, int (*fn)(const char *payload, void *userdata), void *userdata) {
        PGnotify *n;
        int k = 0, r = 0;

        while ((n = PQnotifies(db->conn))) {
                if (r >= 0)
                        r = fn(n->extra ? n->extra : "", userdata);
                PQfreemem(n);
                k++;
        }
        return r < 0 ? r : k;
}

int pg_db_wait_notify(PgDb *db, usec_t timeout, int wake_fd, int (*fn)(const char *payload, void *userdata),
                      void *userdata) {
        struct pollfd p[2] = { { .fd = PQsocket(db->conn), .events = POLLIN }, { .fd = wake_fd, .events = POLLIN } };
        int r;

        if (p[0].fd < 0 || PQstatus(db->conn) != CONNECTION_OK) {
                pg_set_error(db, "the database connection was lost");
                return -ECONNRESET;
        }
        r = drain_notifies(db, fn, userdata);
        if (r != 0)
                return r;
        r = poll(p, wake_fd >= 0 ? 2 : 1, (int) MIN(timeout / USEC_PER_MSEC, (usec_t) INT_MAX));
        if (r < 0)
                return errno == EINTR ? 0 : -errno;
        if (r == 0)
                return 0;
        if (wake_fd >= 0 && (p[1].revents & POLLIN)) {
                eventfd_t x;

                (void) eventfd_read(wake_fd, &x);
                if (!(p[0].revents & POLLIN))
                        return 0;
        }
        if (!PQconsumeInput(db->conn) || PQstatus(db->conn) != CONNECTION_OK) {
                char line[256];

                copy_message(line, sizeof line, PQerrorMessage(db->conn));
                pg_set_error(db, "the database connection was lost: %s", line);
                return -ECONNRESET;
        }
        return drain_notifies(db, fn, userdata);
}

PgDb *pg_db_close(PgDb *db) {
        if (!db)
                return NULL;
        if (db->conn)
                PQfinish(db->conn);
        free(db);
        return NULL;
}

/* ---- statements --------------------------------------------------------- */

static void param_add(PgParams *p, Oid type, const char *value, int length, int format) {
        assert(p->n < PG_PARAMS_MAX);
        p->types[p->n] = type;
        p->values[p->n] = value;
        p->lengths[p->n] = length;
        p->formats[p->n] = format;
        p->n++;
}

void pg_param_text(PgParams *p, const char *s) {
        param_add(p, OID_TEXT, s, s ? (int) strlen(s) : 0, 1);
}

void pg_param_int64(PgParams *p, int64_t v) {
        assert(p->n < PG_PARAMS_MAX);
        p->ints[p->n] = htobe64((uint64_t) v);
        param_add(p, OID_INT8, (const char *) &p->ints[p->n], 8, 1);
}

void pg_param_bytea(PgParams *p, const void *b, size_t n) {
        param_add(p, OID_BYTEA, b, b ? (int) n : 0, 1);
}

static int result_error(PgDb *db, const PGresult *res) {
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        char line[400];

        if (!res && PQstatus(db->conn) != CONNECTION_OK) {
                copy_message(line, sizeof line, PQerrorMessage(db->conn));
                pg_set_error(db, "the database connection was lost: %s", line);
                return -ECONNRESET;
        }
        copy_message(line, sizeof line, msg ? msg : PQerrorMessage(db->conn));
        pg_set_error(db, "%s%s%s", line, state ? " (SQLSTATE " : "", state ? state : "");
        if (state)
                strncat(db->error, ")", sizeof db->error - strlen(db->error) - 1);
        if (PQstatus(db->conn) != CONNECTION_OK)
                return -ECONNRESET;
        return pg_sqlstate_to_errno(state);
}

int pg_db_query(PgDb *db, const char *sql, const PgParams *p, PGresult **ret) {
        PGresult *res;
        int r;

        if (ret)
                *ret = NULL;
        db->error[0] = 0;
        res = PQexecParams(db->conn, sql, p ? p->n : 0, p ? p->types : NULL, p ? p->values : NULL,
                           p ? p->lengths : NULL, p ? p->formats : NULL, 1);
        switch (res ? PQresultStatus(res) : PGRES_FATAL_ERROR) {
        case PGRES_TUPLES_OK:
                r = PQntuples(res);
                break;
        case PGRES_COMMAND_OK: {
                const char *n = PQcmdTuples(res);
                r = n && *n ? atoi(n) : 0;
                break;
        }
        default:
                r = result_error(db, res);
                PQclear(res);
                return r;
        }
        if (ret && r > 0 && PQresultStatus(res) == PGRES_TUPLES_OK)
                *ret = res;
        else
                PQclear(res);
        return r;
}

int pg_db_exec(PgDb *db, const char *sql) {
        PGresult *res;
        int r = 0;

        db->error[0] = 0;
        res = PQexec(db->conn, sql);
        switch (res ? PQresultStatus(res) : PGRES_FATAL_ERROR) {
        case PGRES_COMMAND_OK:
        case PGRES_TUPLES_OK:
        case PGRES_EMPTY_QUERY:
                break;
        default:
                r = result_error(db, res);
        }
        PQclear(res);
        return r;
}

int pg_db_query_each(PgDb *db, const char *sql, const PgParams *p, int (*fn)(const PGresult *res, void *userdata),
                     void *userdata) {
        PGresult *res;
        int r = 0;

        db->error[0] = 0;
        if (!PQsendQueryParams(db->conn, sql, p ? p->n : 0, p ? p->types : NULL, p ? p->values : NULL,
                               p ? p->lengths : NULL, p ? p->formats : NULL, 1))
                return result_error(db, NULL);
        (void) PQsetSingleRowMode(db->conn);
        /* Every result is read, even after fn stopped or a failure, so the
         * connection is ready for the next statement. */
        while ((res = PQgetResult(db->conn))) {
                switch (PQresultStatus(res)) {
                case PGRES_SINGLE_TUPLE:
                        if (r >= 0)
                                r = fn(res, userdata);
                        break;
                case PGRES_TUPLES_OK:
                case PGRES_COMMAND_OK:
                        break;
                default:
                        if (r >= 0)
                                r = result_error(db, res);
                }
                PQclear(res);
        }
        if (r >= 0 && PQstatus(db->conn) != CONNECTION_OK)
                r = result_error(db, NULL);
        return r;
}

int pg_db_reset(PgDb *db) {
        char line[400];

        PQreset(db->conn);
        if (PQstatus(db->conn) == CONNECTION_OK)
                return 0;
        copy_message(line, sizeof line, PQerrorMessage(db->conn));
        pg_set_error(db, "cannot reconnect to the database: %s", line);
        return -ECONNREFUSED;
}

bool pg_get_null(const PGresult *res, int row, int col) {
        return PQgetisnull(res, row, col);
}

int64_t pg_get_int64(const PGresult *res, int row, int col) {
        uint64_t v;

        if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8)
                return 0;
        memcpy(&v, PQgetvalue(res, row, col), 8);
        return (int64_t) be64toh(v);
}

int pg_get_dup(const PGresult *res, int row, int col, char **ret, size_t *ret_size) {
        int n;
        char *v;

        *ret = NULL;
        if (ret_size)
                *ret_size = 0;
        if (PQgetisnull(res, row, col))
                return 0;
        n = PQgetlength(res, row, col);
        v = malloc((size_t) n + 1);
        if (!v)
                return -ENOMEM;
        memcpy(v, PQgetvalue(res, row, col), (size_t) n);
        v[n] = 0;
        *ret = v;
        if (ret_size)
                *ret_size = (size_t) n;
        return 0;
}

/* ---- migrations --------------------------------------------------------- */

static int get_version(PgDb *db, unsigned *ret) {
        PGresult *res = NULL;
        int r;

        r = pg_db_query(db, "SELECT version::bigint FROM schema_version", NULL, &res);
        if (r < 0)
                return r;
        *ret = r > 0 ? (unsigned) pg_get_int64(res, 0, 0) : 0;
        PQclear(res);
        return 0;
}

static int migrate_locked(PgDb *db, unsigned *ret_version) {
        unsigned v;
        int r;

        r = pg_db_exec(db, "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)");
        if (r < 0)
                return r;
        r = get_version(db, &v);
        if (r < 0)
                return r;
        if (v > store_pg_migrations[store_pg_n_migrations - 1].version) {
                pg_set_error(db, "the database has schema version %u, newer than this tokenbroker knows (%u)", v,
                             store_pg_migrations[store_pg_n_migrations - 1].version);
                return -EPROTONOSUPPORT;
        }
        for (size_t i = 0; i < store_pg_n_migrations; i++) {
                const Migration *m = &store_pg_migrations[i];
                PgParams p = { 0 };

                if (m->version <= v)
                        continue;
                r = pg_db_exec(db, "BEGIN");
                if (r < 0)
                        return r;
                r = pg_db_exec(db, m->sql);
                if (r >= 0)
                        r = pg_db_exec(db, "DELETE FROM schema_version");
                if (r >= 0) {
                        pg_param_int64(&p, m->version);
                        r = pg_db_query(db, "INSERT INTO schema_version VALUES ($1)", &p, NULL);
                }
                if (r >= 0)
                        r = pg_db_exec(db, "COMMIT");
                if (r < 0) {
                        char why[sizeof db->error];

                        memcpy(why, db->error, sizeof why);
                        (void) pg_db_exec(db, "ROLLBACK");
                        pg_set_error(db, "migration %s: %s", m->name, why);
                        return r;
                }
                v = m->version;
        }
        *ret_version = v;
        return 0;
}

int pg_db_migrate(PgDb *db, unsigned *ret_version) {
        PgParams p = { 0 };
        int r, u;

        pg_param_int64(&p, PG_MIGRATE_LOCK);
        r = pg_db_query(db, "SELECT pg_advisory_lock($1)", &p, NULL);
        if (r < 0)
                return r;
        r = migrate_locked(db, ret_version);
        if (r < 0 && pg_db_broken(db))
                return r;   /* the lock went with the session */
        {
                char why[sizeof db->error];

                memcpy(why, db->error, sizeof why);
                u = pg_db_query(db, "SELECT pg_advisory_unlock($1)", &p, NULL);
                if (r < 0)
                        memcpy(db->error, why, sizeof why);
        }
        return r < 0 ? r : u < 0 ? u : 0;
}
