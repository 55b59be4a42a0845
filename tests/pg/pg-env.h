/* SPDX-License-Identifier: MIT */
#pragma once

/* The throwaway cluster tests/integration/store-pg.test.js starts for the
 * C tests of tests/pg/ (tests/lib/pg.js), named by
 *   TB_PG_URI            postgresql://tokenbroker@127.0.0.1:PORT/  (no database)
 *   TB_PG_PASSWORD_FILE  the role's password
 * Include after tests.h, in one file per test binary. */

#include "common/macro.h"
#include "daemon/pg.h"

static char pg_env_password[256];

/* The role's password (read once). */
static inline const char *pg_env_get_password(void) {
        const char *path = getenv("TB_PG_PASSWORD_FILE");
        FILE *f;

        if (pg_env_password[0])
                return pg_env_password;
        f = path ? fopen(path, "re") : NULL;
        if (!f) {
                fprintf(stderr, "TB_PG_URI and TB_PG_PASSWORD_FILE must name a running cluster\n");
                exit(2);
        }
        if (!fgets(pg_env_password, sizeof pg_env_password, f))
                pg_env_password[0] = 0;
        pg_env_password[strcspn(pg_env_password, "\n")] = 0;
        fclose(f);
        return pg_env_password;
}

/* The URI of database db on the cluster. */
static inline char *pg_env_uri(const char *db) {
        const char *base = getenv("TB_PG_URI");
        char *u = NULL;

        if (!base) {
                fprintf(stderr, "TB_PG_URI is not set\n");
                exit(2);
        }
        return asprintf(&u, "%s%s", base, db) < 0 ? NULL : u;
}

/* A session on database db, or NULL (the reason on stderr). */
static inline PgDb *pg_env_connect(const char *db) {
        _cleanup_free_ char *u = pg_env_uri(db);
        char err[512];
        PgDb *d = NULL;

        if (pg_db_connect(u, pg_env_get_password(), &d, err, sizeof err) < 0)
                fprintf(stderr, "  connect %s: %s\n", db, err);
        return d;
}

/* Drops and creates database name (as the role, on "postgres"); 0 or -1. */
static inline int pg_env_recreate(const char *name) {
        _cleanup_(pg_db_closep) PgDb *admin = pg_env_connect("postgres");
        char sql[256];

        if (!admin)
                return -1;
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
        (void) pg_db_exec(admin, sql);
        snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
        if (pg_db_exec(admin, sql) < 0) {
                fprintf(stderr, "  %s: %s\n", sql, pg_db_error(admin));
                return -1;
        }
        return 0;
}
