/* SPDX-License-Identifier: MIT */
#include <getopt.h>
#include <curl/curl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include "common/api.h"
#include "common/log.h"
#include "daemon/manager.h"
#include "daemon/oauth.h"

static const char *arg_config = DEFAULT_CONFIG_FILE;
static bool arg_check_config = false;
static const char *arg_rotate_key = NULL;
static const char *arg_copy_from = NULL, *arg_copy_to = NULL;

static void help(void) {
        printf("Usage: tokenbrokerd [OPTIONS]\n\n"
               "Holds OAuth 2.0 authorizations for local services, keeps their access\n"
               "tokens fresh and hands them out over a Unix socket.\n\n"
               "  -c, --config FILE    main configuration file (default %s)\n"
               "      --check-config   check the configuration and provider files, then exit\n"
               "      --rotate-key NEW_KEY_FILE\n"
               "                       re-seal the store under the key in NEW_KEY_FILE, then exit\n"
               "                       (the daemon stopped; then put that key in place of the old)\n"
               "      --copy-store FROM TO\n"
               "                       copy every connection, event and sealed value from one\n"
               "                       store to an empty other, then exit (each a SQLite file or\n"
               "                       a postgresql:// URI; the key and store password from the\n"
               "                       configuration; the daemon stopped)\n"
               "  -h, --help           show this help\n"
               "      --version        show the version\n\n"
               "Signals: SIGTERM/SIGINT stop; SIGHUP reloads providers.\n"
               "See tokenctl(1) for the admin CLI and README.md for the configuration.\n",
               DEFAULT_CONFIG_FILE);
}

static int parse_argv(int argc, char *argv[]) {
        enum { ARG_CHECK = 0x100, ARG_VERSION, ARG_ROTATE_KEY, ARG_COPY_STORE };
        static const struct option options[] = {
                { "config", required_argument, NULL, 'c' },
                { "check-config", no_argument, NULL, ARG_CHECK },
                { "rotate-key", required_argument, NULL, ARG_ROTATE_KEY },
                { "copy-store", required_argument, NULL, ARG_COPY_STORE },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                {}
        };
        int c;

        while ((c = getopt_long(argc, argv, "c:h", options, NULL)) >= 0)
                switch (c) {
                case 'c':
                        arg_config = optarg;
                        break;
                case ARG_CHECK:
                        arg_check_config = true;
                        break;
                case ARG_ROTATE_KEY:
                        arg_rotate_key = optarg;
                        break;
                case ARG_COPY_STORE:
                        arg_copy_from = optarg;
                        break;
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("tokenbrokerd %s\n", TOKENBROKER_VERSION);
                        return 0;
                default:
                        return -EINVAL;
                }
        if (arg_copy_from) {
                /* --copy-store FROM TO: TO is the next argument */
                if (optind >= argc) {
                        fprintf(stderr, "tokenbrokerd: --copy-store needs FROM and TO\n");
                        return -EINVAL;
                }
                arg_copy_to = argv[optind++];
        }
        if ((arg_check_config ? 1 : 0) + (arg_rotate_key ? 1 : 0) + (arg_copy_from ? 1 : 0) > 1) {
                fprintf(stderr, "tokenbrokerd: --check-config, --rotate-key and --copy-store do not go together\n");
                return -EINVAL;
        }
        if (optind < argc) {
                fprintf(stderr, "tokenbrokerd: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        return 1;
}

/* Sockets passed by systemd, taken by name: "api" and "callback". An
 * unnamed (or otherwise named) socket is the API only when it is the one
 * socket passed; anything else is closed with a warning. */
static int take_listen_fds(Manager *m) {
        char **names = NULL;
        int n, other = -EBADF;

        n = sd_listen_fds_with_names(true, &names);
        if (n < 0)
                return log_error_errno(n, "Failed to read passed sockets: %m");
        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i;
                const char *name = names ? names[i] : NULL;

                if (name && streq(name, "api") && m->api_fd < 0)
                        m->api_fd = fd;
                else if (name && streq(name, "callback") && m->callback_fd < 0)
                        m->callback_fd = fd;
                else if (n == 1)
                        other = fd;
                else {
                        log_warning("Ignoring passed socket '%s': expected the names api and callback.",
                                    strempty(name));
                        safe_close(fd);
                }
        }
        if (m->api_fd < 0 && other >= 0)
                m->api_fd = other;
        if (names)
                for (int i = 0; names[i]; i++)
                        free(names[i]);
        free(names);
        return 0;
}

static int discover_logged(Provider *p, char **ret_reason) {
        int r = oauth_discover(p, ret_reason);

        if (r < 0)
                log_warning("%s:%u: discovery at %s failed: %s", p->path, p->issuer_line, p->issuer,
                            strempty(*ret_reason));
        else
                log_debug("%s: endpoints discovered at %s.", p->path, p->issuer);
        return r;
}

static unsigned n_config_warnings = 0;

/* Each configuration warning once: printed by --check-config, logged at start. */
static void config_warning(const char *msg) {
        n_config_warnings++;
        if (arg_check_config)
                fprintf(stderr, "%s\n", msg);
        else
                log_warning("%s", msg);
}

/* Every API and callback connection is a descriptor; systemd's default
 * soft limit (1,024) would let one local user's idle connections exhaust
 * them. Nothing here uses select(), so the soft limit goes up to the hard
 * one (at most 65,536); the API sizes its connection limit from it. */
static void raise_nofile(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return;
        if (rl.rlim_cur < MIN(rl.rlim_max, (rlim_t) 65536)) {
                rl.rlim_cur = MIN(rl.rlim_max, (rlim_t) 65536);
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }
}

/* A test hook: TOKENBROKER_TEST_ROTATE_STALL=PATH holds the rotation's
 * transaction open just before COMMIT while PATH exists (at most a
 * minute), so a test can kill the process there. */
static void rotate_before_commit(void) {
        const char *p = getenv("TOKENBROKER_TEST_ROTATE_STALL");

        if (isempty(p))
                return;
        log_warning("TOKENBROKER_TEST_ROTATE_STALL is set: holding the rotation before COMMIT while '%s' exists "
                    "(a test hook).", p);
        for (unsigned i = 0; i < 600 && access(p, F_OK) >= 0; i++)
                (void) usleep(100 * 1000);
}

static int run(int argc, char *argv[]) {
        _cleanup_(manager_freep) Manager *m = NULL;
        BrokerConfig *config = NULL;
        ConfError err = {};
        int r;

        /* Everything the daemon creates (the database and its -wal and -shm,
         * the key file, the lock) is its own alone, whatever umask it was
         * started with; the socket is bound under its own socket_mode. */
        umask(0077);
        log_setup("tokenbrokerd", LOG_TARGET_AUTO);
        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? 2 : 0;

        /* Discovery at load (and at SIGHUP): failures are warnings unless
         * a required endpoint stays missing. */
        conf_set_discovery(discover_logged);
        conf_set_warning(config_warning);
        r = broker_config_load(arg_config, &config, &err);
        if (r < 0) {
                if (!err.msg[0])
                        snprintf(err.msg, sizeof err.msg, "%s: %s", arg_config, strerror(-r));
                /* Once: --check-config prints the message as is, a start logs it. */
                if (arg_check_config) {
                        fprintf(stderr, "%s\n", err.msg);
                        return 1;
                }
                return log_error_errno(r, "%s", err.msg), 1;
        }
        if (arg_check_config) {
                printf("%s: OK (%zu provider%s", arg_config, config->n_providers, config->n_providers == 1 ? "" : "s");
                if (n_config_warnings > 0)
                        printf(", %u warning%s", n_config_warnings, n_config_warnings == 1 ? "" : "s");
                printf(")\n");
                for (size_t i = 0; i < config->n_providers; i++)
                        printf("  %s: %s, %s\n", config->providers[i]->path,
                               grant_to_string(config->providers[i]->grant), config->providers[i]->token_url);
                broker_config_free(config);
                return 0;
        }

        /* Tokens live in this process: no core dumps of it. */
        (void) prctl(PR_SET_DUMPABLE, 0);
        (void) setrlimit(RLIMIT_CORE, &(struct rlimit) { 0, 0 });
        raise_nofile();

        r = manager_new(config, arg_config, &m);
        if (r < 0) {
                broker_config_free(config);
                return log_error_errno(r, "Failed to set up: %m"), 1;
        }
        if (arg_rotate_key) {
                r = manager_rotate_key(m, arg_rotate_key, rotate_before_commit);
                return r < 0 ? 1 : 0;
        }
        if (arg_copy_from) {
                r = manager_copy_store(m, arg_copy_from, arg_copy_to);
                return r < 0 ? 1 : 0;
        }
        r = take_listen_fds(m);
        if (r < 0)
                return 1;
        r = manager_startup(m);
        if (r < 0) {
                (void) sd_notifyf(false, "STATUS=Failed to start: %s\nERRNO=%d", strerror(-r), -r);
                return 1;
        }
        r = manager_run(m);
        if (r < 0)
                return log_error_errno(r, "Event loop failed: %m"), 1;
        log_info("Stopped.");
        return 0;
}

int main(int argc, char *argv[]) {
        int r;

        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                fprintf(stderr, "tokenbrokerd: curl_global_init failed\n");
                return 1;
        }
        r = run(argc, argv);
        curl_global_cleanup();
        return r;
}
