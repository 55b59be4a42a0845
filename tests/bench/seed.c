/* SPDX-License-Identifier: MIT */
/*
 * seed: writes N sealed, valid, active connections into a broker's store,
 * so a benchmark with a million connections takes seconds to set up
 * instead of a million OAuth flows. Not installed.
 *
 * It goes through the daemon's own code: the same config parser finds
 * state_dir, key_file and key_credential exactly as tokenbrokerd does; the
 * key is found, loaded (or created) by daemon/crypt.c; the database is
 * opened, migrated and key-checked by store_open(), and every row is
 * sealed and written by store_connection_save(). The one thing done here
 * is the batching: store_connection_insert() commits each row on its own
 * (one fsync a row, ~1,300 rows/s), so the seeder inserts the bare row
 * itself and lets store_connection_save() fill and seal it, inside one
 * transaction per --batch rows.
 *
 * It holds the daemon's lock of the store (state_dir/lock) while it runs:
 * it refuses a store a daemon uses, and no daemon starts on a store being
 * seeded. The daemon reads the store once, at start.
 *
 * Run with --help for the options.
 */

#include <fcntl.h>
#include <getopt.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "common/api.h"
#include "common/conf.h"
#include "common/util.h"
#include "daemon/connection.h"
#include "daemon/crypt.h"
#include "daemon/store-engine.h"
#include "daemon/store.h"

#define TOKEN_LENGTH_MAX 4096U
#define COUNT_MAX 100000000U
#define RANDOM_POOL_SIZE (64U * 1024U)

static const char *arg_config = NULL;
static const char *arg_provider = NULL;
static unsigned arg_count = 1000;
static unsigned arg_start = 1;
static const char *arg_prefix = "c";
static unsigned arg_token_length = 40;
static usec_t arg_expires_min = 600 * USEC_PER_SEC;
static usec_t arg_expires_max = 3600 * USEC_PER_SEC;
static usec_t arg_due_within = 0;           /* > 0: --due-within */
static bool arg_due_set = false, arg_window_set = false;
static usec_t arg_lifetime = 3600 * USEC_PER_SEC;
static bool arg_lifetime_set = false;
static const char *arg_identity = "{n}@bench.example";
static const char *arg_scope = "openid offline_access";
static unsigned arg_batch = 20000;
static long arg_allow_user = -1, arg_allow_group = -1;
static bool arg_quiet = false;

static void help(void) {
        printf("Usage: seed -c CONFIG -p PROVIDER [OPTIONS]\n\n"
               "Writes N sealed, active connections into the store of the broker that\n"
               "CONFIG describes (state_dir and key as tokenbrokerd finds them), through\n"
               "the daemon's own store code. Run it while no daemon uses that store.\n\n"
               "  -c, --config FILE          tokenbroker.conf (required)\n"
               "  -p, --provider NAME        a provider configured there (required)\n"
               "  -n, --count N              connections to write (default 1000)\n"
               "      --start K              number of the first one (default 1)\n"
               "      --prefix TEXT          names are PREFIX + 7-digit number (default \"c\": c0000001)\n"
               "      --token-length N       characters of each access and refresh token (default 40)\n"
               "      --expires-in-min S     expiry spread uniformly over [now+MIN, now+MAX]\n"
               "      --expires-in-max S       seconds (default 600 and 3600)\n"
               "      --due-within S         instead: every refresh falls due within S seconds\n"
               "                             (expiry = now + the config's refresh margin + U(0,S))\n"
               "      --lifetime S           the tokens' lifetime at the provider: obtained_at =\n"
               "                             expires_at - S, at most now (default: 3600 with\n"
               "                             --due-within, else now)\n"
               "      --identity TEXT        identity; {n} is replaced by the name\n"
               "                             (default \"{n}@bench.example\")\n"
               "      --scope TEXT           granted scope (default \"openid offline_access\")\n"
               "      --allow-user UID       add UID to each connection's ACL\n"
               "      --allow-group GID      add GID to each connection's ACL\n"
               "      --batch N              rows per transaction (default 20000)\n"
               "  -q, --quiet                no progress on stderr\n"
               "  -h, --help                 this text\n\n"
               "Prints one summary line on stdout: count, seconds, rows/s, database size.\n"
               "Tokens are never printed.\n");
}

static int parse_uint(const char *s, unsigned long long max, unsigned long long *ret) {
        unsigned long long u;
        char *end;

        if (!s || !*s || *s == '-' || *s == '+')
                return -EINVAL;
        errno = 0;
        u = strtoull(s, &end, 10);
        if (errno != 0 || *end != 0 || u > max)
                return -ERANGE;
        *ret = u;
        return 0;
}

static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_START = 0x100,
                ARG_PREFIX,
                ARG_TOKEN_LENGTH,
                ARG_EXP_MIN,
                ARG_EXP_MAX,
                ARG_DUE,
                ARG_LIFETIME,
                ARG_IDENTITY,
                ARG_SCOPE,
                ARG_USER,
                ARG_GROUP,
                ARG_BATCH,
        };
        static const struct option options[] = {
                { "config", required_argument, NULL, 'c' },
                { "provider", required_argument, NULL, 'p' },
                { "count", required_argument, NULL, 'n' },
                { "start", required_argument, NULL, ARG_START },
                { "prefix", required_argument, NULL, ARG_PREFIX },
                { "token-length", required_argument, NULL, ARG_TOKEN_LENGTH },
                { "expires-in-min", required_argument, NULL, ARG_EXP_MIN },
                { "expires-in-max", required_argument, NULL, ARG_EXP_MAX },
                { "due-within", required_argument, NULL, ARG_DUE },
                { "lifetime", required_argument, NULL, ARG_LIFETIME },
                { "identity", required_argument, NULL, ARG_IDENTITY },
                { "scope", required_argument, NULL, ARG_SCOPE },
                { "allow-user", required_argument, NULL, ARG_USER },
                { "allow-group", required_argument, NULL, ARG_GROUP },
                { "batch", required_argument, NULL, ARG_BATCH },
                { "quiet", no_argument, NULL, 'q' },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        unsigned long long u;
        int c;

        while ((c = getopt_long(argc, argv, "c:p:n:qh", options, NULL)) >= 0) {
                const char *what = NULL;

                switch (c) {
                case 'c':
                        arg_config = optarg;
                        break;
                case 'p':
                        arg_provider = optarg;
                        break;
                case 'n':
                        if (parse_uint(optarg, COUNT_MAX, &u) < 0 || u == 0)
                                what = "--count wants 1.." "100000000";
                        else
                                arg_count = (unsigned) u;
                        break;
                case ARG_START:
                        if (parse_uint(optarg, COUNT_MAX, &u) < 0)
                                what = "--start wants 0..100000000";
                        else
                                arg_start = (unsigned) u;
                        break;
                case ARG_PREFIX:
                        arg_prefix = optarg;
                        break;
                case ARG_TOKEN_LENGTH:
                        if (parse_uint(optarg, TOKEN_LENGTH_MAX, &u) < 0 || u == 0)
                                what = "--token-length wants 1..4096";
                        else
                                arg_token_length = (unsigned) u;
                        break;
                case ARG_EXP_MIN:
                case ARG_EXP_MAX:
                case ARG_DUE:
                case ARG_LIFETIME:
                        /* Seconds, up to ten years. */
                        if (parse_uint(optarg, 10ULL * 366 * 86400, &u) < 0) {
                                what = "a duration in seconds (0..316224000)";
                                break;
                        }
                        if (c == ARG_EXP_MIN)
                                arg_expires_min = u * USEC_PER_SEC, arg_window_set = true;
                        else if (c == ARG_EXP_MAX)
                                arg_expires_max = u * USEC_PER_SEC, arg_window_set = true;
                        else if (c == ARG_DUE)
                                arg_due_within = u * USEC_PER_SEC, arg_due_set = true;
                        else
                                arg_lifetime = u * USEC_PER_SEC, arg_lifetime_set = true;
                        break;
                case ARG_IDENTITY:
                        arg_identity = optarg;
                        break;
                case ARG_SCOPE:
                        arg_scope = optarg;
                        break;
                case ARG_USER:
                case ARG_GROUP:
                        if (parse_uint(optarg, UINT32_MAX - 1, &u) < 0)
                                what = "a numeric uid or gid";
                        else if (c == ARG_USER)
                                arg_allow_user = (long) u;
                        else
                                arg_allow_group = (long) u;
                        break;
                case ARG_BATCH:
                        if (parse_uint(optarg, 1000000, &u) < 0 || u == 0)
                                what = "--batch wants 1..1000000";
                        else
                                arg_batch = (unsigned) u;
                        break;
                case 'q':
                        arg_quiet = true;
                        break;
                case 'h':
                        help();
                        return 0;
                default:
                        return -EINVAL;
                }
                if (what) {
                        fprintf(stderr, "seed: bad value '%s': %s\n", optarg, what);
                        return -EINVAL;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "seed: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        if (!arg_config || !arg_provider) {
                fprintf(stderr, "seed: --config and --provider are required (see --help)\n");
                return -EINVAL;
        }
        if (arg_due_set && arg_window_set) {
                fprintf(stderr, "seed: --due-within and --expires-in-min/max exclude each other\n");
                return -EINVAL;
        }
        if (!arg_due_set && arg_expires_min > arg_expires_max) {
                fprintf(stderr, "seed: --expires-in-min is above --expires-in-max\n");
                return -EINVAL;
        }
        if ((unsigned long long) arg_start + arg_count - 1 > COUNT_MAX) {
                fprintf(stderr, "seed: --start + --count is beyond 100000000\n");
                return -EINVAL;
        }
        return 1;
}

/* ---- randomness ------------------------------------------------------ */

/* Tokens come from the kernel's CSPRNG, read 64 KiB at a time: one
 * getrandom() per token would be two million syscalls at 1M. Each byte
 * picks one of 64 characters (base64url's alphabet), so there is no
 * modulo bias. */
static uint8_t random_pool[RANDOM_POOL_SIZE];
static size_t random_pool_left = 0;

static int random_chars(char *buf, size_t n) {
        static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        int r;

        for (size_t i = 0; i < n; i++) {
                if (random_pool_left == 0) {
                        r = random_bytes(random_pool, sizeof random_pool);
                        if (r < 0)
                                return r;
                        random_pool_left = sizeof random_pool;
                }
                buf[i] = alphabet[random_pool[--random_pool_left] & 63];
        }
        buf[n] = 0;
        return 0;
}

static int random_pooled_u64(uint64_t *ret) {
        int r;

        if (random_pool_left < sizeof *ret) {
                r = random_bytes(random_pool, sizeof random_pool);
                if (r < 0)
                        return r;
                random_pool_left = sizeof random_pool;
        }
        random_pool_left -= sizeof *ret;
        memcpy(ret, random_pool + random_pool_left, sizeof *ret);
        return 0;
}

/* Uniform in [0, n) (n > 0): Lemire's multiply-and-reject, no bias. */
static int random_below(uint64_t n, uint64_t *ret) {
        unsigned __int128 m;
        uint64_t u, low, t;
        int r;

        r = random_pooled_u64(&u);
        if (r < 0)
                return r;
        m = (unsigned __int128) u * n;
        low = (uint64_t) m;
        if (low < n) {
                t = -n % n;
                while (low < t) {
                        r = random_pooled_u64(&u);
                        if (r < 0)
                                return r;
                        m = (unsigned __int128) u * n;
                        low = (uint64_t) m;
                }
        }
        *ret = (uint64_t) (m >> 64);
        return 0;
}

/* ---- the store ------------------------------------------------------- */

/* The daemon's lock of the store (an exclusive flock(2) on state_dir/lock,
 * the file holding the owner's PID): held for the whole run, so the seeder
 * never writes under a running daemon and no daemon starts mid-seed. The
 * PID is left alone: the file is the daemon's. Returns the fd to keep. */
static int lock_store(const char *state_dir) {
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -EBADF;
        char buf[32];
        ssize_t n;

        if (asprintf(&path, "%s/lock", state_dir) < 0)
                return -ENOMEM;
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
        if (fd < 0) {
                fprintf(stderr, "seed: cannot open '%s': %s\n", path, strerror(errno));
                return -errno;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                int r = -errno;

                if (r != -EWOULDBLOCK) {
                        fprintf(stderr, "seed: cannot lock '%s': %s\n", path, strerror(-r));
                        return r;
                }
                n = pread(fd, buf, sizeof buf - 1, 0);
                buf[n > 0 ? n : 0] = 0;
                buf[strcspn(buf, "\n")] = 0;
                fprintf(stderr, "seed: a daemon (PID %s) uses the store in '%s': stop it first\n",
                        buf[0] ? buf : "unknown", state_dir);
                return -EBUSY;
        }
        return TAKE_FD(fd);
}

/* The key as tokenbrokerd finds it: the credential when
 * $CREDENTIALS_DIRECTORY holds it, else key_file, created if missing (so a
 * fresh state_dir seeded first gets the key the daemon then uses). */
static int load_key(const BrokerConfig *cfg, CryptKey **ret) {
        _cleanup_free_ char *path = NULL;
        bool credential = false, created = false;
        int r;

        r = crypt_key_find(cfg->key_credential, cfg->key_file, &path, &credential);
        if (r < 0) {
                fprintf(stderr, "seed: no encryption key configured: %s\n", strerror(-r));
                return r;
        }
        r = crypt_key_load(path, !credential, ret, &created);
        if (r < 0) {
                fprintf(stderr, "seed: cannot use the encryption key %s '%s': %s\n",
                        credential ? "credential" : "file", path,
                        r == -EPERM ? "group or others may access it (chmod 0600)" :
                        r == -EBADMSG ? "not 32 bytes long" : strerror(-r));
                return r;
        }
        if (created && !arg_quiet)
                fprintf(stderr, "seed: created the key file '%s'\n", path);
        return 0;
}

/* The SQLite store's own handle (store_sqlite()). Used only for
 * BEGIN/COMMIT and the bare INSERT that store_connection_save() then
 * fills in. */
static sqlite3 *store_db(Store *s) {
        return store_sqlite(s);
}

static char *identity_for(const char *name) {
        const char *p = strstr(arg_identity, "{n}");
        char *s;

        if (!p)
                return strdup(arg_identity);
        if (asprintf(&s, "%.*s%s%s", (int) (p - arg_identity), arg_identity, name, p + 3) < 0)
                return NULL;
        return s;
}

/* When the refresher would refresh a token with this lifetime: the margin
 * of daemon/refresher.c's refresh_due(), without its jitter. */
static usec_t refresh_margin(const BrokerConfig *cfg, usec_t lifetime) {
        usec_t margin = MAX(cfg->refresh_margin, (usec_t) (cfg->refresh_ratio * (double) lifetime));

        if (lifetime > 0 && margin > lifetime / 2)
                margin = lifetime / 2;
        return margin;
}

typedef struct Seeder {
        Store *store;
        sqlite3_stmt *insert;
        const BrokerConfig *cfg;
        const char *provider;
        ConnNames names;           /* borrowed by each connection seeded (not interned) */
        usec_t now;
        char *access, *refresh;    /* token buffers, wiped at the end */
} Seeder;

static int seed_one_as(Seeder *sd, unsigned number, Connection **ret) {
        _cleanup_free_ char *identity = NULL;
        char name[CONNECTION_NAME_MAX + 1];
        Connection *c = NULL;
        usec_t expires_at, lifetime;
        uint64_t spread;
        int k, rc, r;

        k = snprintf(name, sizeof name, "%s%07u", arg_prefix, number);
        if (k < 0 || (size_t) k >= sizeof name || !connection_name_valid(name)) {
                fprintf(stderr, "seed: '%s%07u' is not a valid connection name (--prefix)\n", arg_prefix,
                        number);
                return -EINVAL;
        }
        identity = identity_for(name);
        if (!identity)
                return -ENOMEM;
        r = random_chars(sd->access, arg_token_length);
        if (r >= 0)
                r = random_chars(sd->refresh, arg_token_length);
        if (r < 0)
                return r;

        if (arg_due_set) {
                lifetime = arg_lifetime;
                spread = 0;
                if (arg_due_within > 0)
                        r = random_below(arg_due_within, &spread);
                expires_at = sd->now + refresh_margin(sd->cfg, lifetime) + spread;
        } else {
                r = random_below(arg_expires_max - arg_expires_min + 1, &spread);
                expires_at = sd->now + arg_expires_min + spread;
                lifetime = arg_lifetime_set ? arg_lifetime : expires_at - sd->now;
        }
        if (r < 0)
                return r;

        /* The name lives in the struct's allocation; the rest is
         * borrowed, taken back before the free (seed_one()'s caller). */
        c = *ret = connection_new_with(name, identity, 0);
        if (!c)
                return -ENOMEM;
        sd->names = (ConnNames) { .provider = sd->provider, .token_type = "Bearer", .scope = arg_scope,
                                  .requested_scope = arg_scope };
        c->names = &sd->names;
        c->state = CONN_ACTIVE;
        c->access_token = sd->access;
        c->refresh_token = sd->refresh;
        c->expires_at = expires_at;
        c->obtained_at = MIN(usec_sub(expires_at, lifetime), sd->now);
        c->created_at = sd->now;
        c->updated_at = sd->now;
        uid_t user = (uid_t) arg_allow_user;
        gid_t group = (gid_t) arg_allow_group;
        uint32_t acl[2];

        /* The ACL lives out of line; here on the stack, as the row's image
         * only needs to read it. */
        if (arg_allow_user >= 0) {
                acl[0] = user;
                c->allow_users = acl;
                c->n_allow_users = 1;
        }
        if (arg_allow_group >= 0) {
                /* the groups follow the users in the same block */
                acl[1] = group;
                if (!c->allow_users)
                        c->allow_users = acl + 1;
                c->n_allow_groups = 1;
        }

        /* The bare row (as store_connection_insert() makes it), then the
         * store's own save fills it in and seals the tokens to its id. */
        (void) sqlite3_bind_text(sd->insert, 1, c->name, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(sd->insert, 2, c->names->provider, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(sd->insert, 3, conn_state_to_string(c->state), -1, SQLITE_STATIC);
        (void) sqlite3_bind_int64(sd->insert, 4, (sqlite3_int64) c->created_at);
        rc = sqlite3_step(sd->insert);
        (void) sqlite3_reset(sd->insert);
        if (rc != SQLITE_DONE) {
                if ((rc & 0xff) == SQLITE_CONSTRAINT)
                        fprintf(stderr, "seed: a connection named '%s' exists already (use --start, --prefix "
                                "or a fresh state_dir)\n", name);
                else
                        fprintf(stderr, "seed: insert of '%s' failed: %s\n", name,
                                sqlite3_errmsg(store_db(sd->store)));
                return -EIO;
        }
        c->id = sqlite3_last_insert_rowid(store_db(sd->store));
        r = store_connection_save(sd->store, c);
        if (r < 0) {
                fprintf(stderr, "seed: save of '%s' failed: %s\n", name, store_last_error(sd->store));
                return r;
        }
        return 0;
}

static int seed_one(Seeder *sd, unsigned number) {
        Connection *c = NULL;
        int r = seed_one_as(sd, number, &c);

        if (c) {
                c->names = &conn_names_none;
                c->access_token = c->refresh_token = NULL;
                c->allow_users = NULL;
                c->n_allow_users = c->n_allow_groups = 0;
                connection_free(c);
        }
        return r;
}

static int exec_sql(Store *s, const char *sql) {
        char *msg = NULL;
        int rc;

        rc = sqlite3_exec(store_db(s), sql, NULL, NULL, &msg);
        if (rc != SQLITE_OK) {
                fprintf(stderr, "seed: %s: %s\n", sql, msg ?: sqlite3_errstr(rc));
                sqlite3_free(msg);
                return -EIO;
        }
        return 0;
}

static off_t file_size(const char *path) {
        struct stat st;

        return stat(path, &st) < 0 ? 0 : st.st_size;
}

static int run(int argc, char *argv[]) {
        /* First: released last, after the store is closed. */
        _cleanup_close_ int lock_fd = -EBADF;
        _cleanup_(broker_config_freep) BrokerConfig *cfg = NULL;
        _cleanup_(crypt_key_freep) CryptKey *key = NULL;
        _cleanup_(store_closep) Store *store = NULL;
        _cleanup_free_ char *db = NULL;
        _cleanup_free_ char *access = NULL, *refresh = NULL;
        const Provider *p;
        ConfError err = {};
        Seeder sd;
        usec_t t0, t1;
        unsigned done = 0;
        int r, rc;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r;

        r = broker_config_load(arg_config, &cfg, &err);
        if (r < 0) {
                fprintf(stderr, "seed: %s\n", err.msg[0] ? err.msg : strerror(-r));
                return r;
        }
        p = broker_config_find_provider(cfg, arg_provider);
        if (!p) {
                fprintf(stderr, "seed: no provider '%s' in %s; configured:", arg_provider, cfg->providers_dir);
                for (size_t i = 0; i < cfg->n_providers; i++)
                        fprintf(stderr, " %s", cfg->providers[i]->name);
                fprintf(stderr, "%s\n", cfg->n_providers ? "" : " none");
                return -ENOENT;
        }
        if (arg_count > cfg->max_connections)
                fprintf(stderr, "seed: warning: %u connections is above max_connections (%u)\n", arg_count,
                        cfg->max_connections);

        r = mkdir_p(cfg->state_dir, 0700);
        if (r < 0) {
                fprintf(stderr, "seed: cannot create '%s': %s\n", cfg->state_dir, strerror(-r));
                return r;
        }
        lock_fd = lock_store(cfg->state_dir);
        if (lock_fd < 0)
                return lock_fd;
        if (asprintf(&db, "%s/tokenbroker.db", cfg->state_dir) < 0)
                return -ENOMEM;
        r = load_key(cfg, &key);
        if (r < 0)
                return r;
        r = store_open(db, key, &store);
        if (r < 0) {
                fprintf(stderr, "seed: cannot open '%s': %s\n", db,
                        r == -EKEYREJECTED ? "sealed with another key" :
                        store ? store_last_error(store) : strerror(-r));
                return r;
        }
        (void) chmod(db, 0600);

        access = malloc(arg_token_length + 1);
        refresh = malloc(arg_token_length + 1);
        if (!access || !refresh)
                return -ENOMEM;
        sd = (Seeder) {
                .store = store,
                .cfg = cfg,
                .provider = p->name,
                .now = now(CLOCK_REALTIME),
                .access = access,
                .refresh = refresh,
        };
        rc = sqlite3_prepare_v2(store_db(store),
                                "INSERT INTO connections (name, provider, state, created_at, updated_at) "
                                "VALUES (?1, ?2, ?3, ?4, ?4)",
                                -1, &sd.insert, NULL);
        if (rc != SQLITE_OK) {
                fprintf(stderr, "seed: %s\n", sqlite3_errmsg(store_db(store)));
                return -EIO;
        }

        /* A cache that holds the tree being built: no page is written
         * twice within a batch. Each COMMIT is still fsynced (the store's
         * synchronous=FULL). */
        r = exec_sql(store, "PRAGMA cache_size = -131072");
        if (r < 0)
                return r;

        t0 = now(CLOCK_MONOTONIC);
        while (done < arg_count) {
                unsigned n = MIN(arg_batch, arg_count - done);

                r = exec_sql(store, "BEGIN IMMEDIATE");
                if (r < 0)
                        break;
                for (unsigned i = 0; i < n && r >= 0; i++)
                        r = seed_one(&sd, arg_start + done + i);
                if (r < 0) {
                        (void) sqlite3_exec(store_db(store), "ROLLBACK", NULL, NULL, NULL);
                        break;
                }
                r = exec_sql(store, "COMMIT");
                if (r < 0)
                        break;
                done += n;
                if (!arg_quiet && (done % 100000 < n || done == arg_count))
                        fprintf(stderr, "seed: %u/%u\n", done, arg_count);
        }
        sqlite3_finalize(sd.insert);
        explicit_wipe(access, arg_token_length + 1);
        explicit_wipe(refresh, arg_token_length + 1);
        explicit_wipe(random_pool, sizeof random_pool);
        if (r < 0) {
                fprintf(stderr, "seed: stopped after %u connections (committed)\n", done);
                return r;
        }
        /* Fold the WAL into the file so the daemon starts on one file. */
        rc = sqlite3_wal_checkpoint_v2(store_db(store), NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        if (rc != SQLITE_OK)
                fprintf(stderr, "seed: checkpoint failed, ignoring: %s\n", sqlite3_errstr(rc));
        t1 = now(CLOCK_MONOTONIC);

        printf("seeded %u connections (%s%07u..%s%07u, provider %s) in %.2f s, %.0f rows/s; %s: %.1f MiB\n",
               done, arg_prefix, arg_start, arg_prefix, arg_start + done - 1, p->name,
               (double) (t1 - t0) / USEC_PER_SEC, done / ((double) (t1 - t0 + 1) / USEC_PER_SEC), db,
               (double) file_size(db) / (1024.0 * 1024.0));
        return 0;
}

int main(int argc, char *argv[]) {
        int r = run(argc, argv);

        if (r == -EINVAL)
                return 2;
        return r < 0 ? 1 : 0;
}
