/* SPDX-License-Identifier: MIT */

/* tokenctl verbs for the tools people already use: exec (a command with a
 * fresh token in its environment), git-credential (git's credential helper
 * protocol) and proxy (a loopback HTTP port in front of one connection's
 * proxy route on the socket). */

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common/api.h"
#include "common/macro.h"
#include "common/util.h"
#include "daemon/tokenctl.h"

#define EXEC_ENV_DEFAULT "TOKENBROKER_ACCESS_TOKEN"
#define EXEC_MIN_TTL_DEFAULT "300"

/* --min-ttl: whole seconds 0..MIN_TTL_MAX_SEC, as the token verb takes them. */
static bool min_ttl_ok(const char *s) {
        unsigned long u;
        char *end;

        errno = 0;
        u = strtoul(s, &end, 10);
        if (!*s || *s < '0' || *s > '9' || *end || errno || u > MIN_TTL_MAX_SEC) {
                fprintf(stderr, "tokenctl: --min-ttl takes whole seconds from 0 to %lu (365 days); got '%s'\n",
                        MIN_TTL_MAX_SEC, s);
                return false;
        }
        return true;
}

static bool env_name_ok(const char *s) {
        if (!s || !(isalpha((unsigned char) *s) || *s == '_'))
                return false;
        for (const char *p = s; *p; p++)
                if (!(isalnum((unsigned char) *p) || *p == '_'))
                        return false;
        return strlen(s) <= 255;
}

/* The value of a long option at argv[*i] ("--opt V" or "--opt=V"), or NULL
 * when argv[*i] is not that option. Sets *missing when V is absent. */
static const char *option_value(int argc, char **argv, int *i, const char *opt, bool *missing) {
        size_t n = strlen(opt);

        if (strncmp(argv[*i], opt, n) != 0)
                return NULL;
        if (argv[*i][n] == '=')
                return argv[*i] + n + 1;
        if (argv[*i][n] != 0)
                return NULL;
        if (*i + 1 >= argc) {
                *missing = true;
                return NULL;
        }
        return argv[++*i];
}

/* ---- exec ------------------------------------------------------------- */

/* tokenctl exec NAME [--env VAR] [--min-ttl S] -- CMD [ARGS...]: the token
 * goes into VAR of CMD's environment (never its command line), and CMD
 * replaces tokenctl, so its exit status is the one the caller sees. */
int do_exec(int argc, char **argv) {
        const char *name = NULL, *var = EXEC_ENV_DEFAULT, *min_ttl = EXEC_MIN_TTL_DEFAULT, *tok, *v;
        char **cmd = NULL;
        json_t *e;
        Reply r;
        int k;

        for (int i = 1; i < argc && !cmd; i++) {
                bool missing = false;

                if (streq(argv[i], "--")) {
                        if (i + 1 < argc)
                                cmd = &argv[i + 1];
                        break;
                }
                if ((v = option_value(argc, argv, &i, "--env", &missing))) {
                        var = v;
                        continue;
                }
                if (!missing && (v = option_value(argc, argv, &i, "--min-ttl", &missing))) {
                        min_ttl = v;
                        continue;
                }
                if (missing || (argv[i][0] == '-' && argv[i][1])) {
                        fprintf(stderr, "tokenctl: exec: %s '%s'\n", missing ? "missing value of" : "unknown option",
                                argv[i]);
                        return EXIT_USAGE;
                }
                if (!name)
                        name = argv[i];
                else
                        cmd = &argv[i];   /* the command starts at the first word after NAME */
        }
        if (!name || !cmd) {
                fprintf(stderr, "tokenctl: usage: tokenctl exec NAME [--env VAR] [--min-ttl S] -- CMD [ARGS...]\n");
                return EXIT_USAGE;
        }
        if (!env_name_ok(var)) {
                fprintf(stderr, "tokenctl: --env takes an environment variable name (A-Z a-z 0-9 _, not "
                                "starting with a digit); got '%s'\n", var);
                return EXIT_USAGE;
        }
        if (!min_ttl_ok(min_ttl))
                return EXIT_USAGE;
        k = token_reply(name, min_ttl, &r);
        if (k)
                return k;
        tok = jstr(r.json, "access_token");
        if (isempty(tok)) {
                fprintf(stderr, "tokenctl: the daemon answered no access token for '%s'\n", name);
                reply_done(&r);
                return EXIT_FAILURE_GENERIC;
        }
        e = json_object_get(r.json, "expires_in");
        if (json_is_integer(e) && json_integer_value(e) < (json_int_t) strtoul(min_ttl, NULL, 10))
                fprintf(stderr, "tokenctl: warning: the token of '%s' expires in %lld s, less than --min-ttl %s "
                                "(tokenctl token %s --min-ttl %s says why)\n", name,
                        (long long) json_integer_value(e), min_ttl, name, min_ttl);
        if (setenv(var, tok, 1) < 0) {
                fprintf(stderr, "tokenctl: cannot set %s: %s\n", var, strerror(errno));
                reply_done(&r);
                return EXIT_FAILURE_GENERIC;
        }
        /* the token now lives in the environment only */
        explicit_wipe((char *) tok, strlen(tok));
        reply_done(&r);
        fflush(stdout);
        execvp(cmd[0], cmd);
        k = errno;
        /* not run: the token must not stay behind in this process either */
        v = getenv(var);
        if (v)
                explicit_wipe((char *) v, strlen(v));
        (void) unsetenv(var);
        fprintf(stderr, "tokenctl: cannot run '%s': %s\n", cmd[0], strerror(k));
        /* as a shell says it: 127 not found, 126 found but not runnable */
        return k == ENOENT ? 127 : 126;
}

/* ---- git-credential --------------------------------------------------- */

/* What git sends: key=value lines up to a blank line or the end. */
typedef struct GitCred {
        char *protocol, *host, *path, *username, *password;
} GitCred;

#define GIT_CRED_LINE_MAX 65536
#define GIT_CRED_LINES_MAX 1024

static void git_cred_done(GitCred *g) {
        free(g->protocol);
        free(g->host);
        free(g->path);
        free(g->username);
        if (g->password)
                explicit_wipe(g->password, strlen(g->password));
        free(g->password);
        *g = (GitCred) {};
}

static int git_cred_set(char **slot, const char *v) {
        char *d = strdup(v);

        if (!d)
                return -ENOMEM;
        if (*slot)
                explicit_wipe(*slot, strlen(*slot));
        free(*slot);
        *slot = d;
        return 0;
}

/* url=PROTO://[USER@]HOST[/PATH]: the form `git credential` itself takes. */
static int git_cred_url(GitCred *g, const char *url) {
        const char *p = strstr(url, "://"), *h, *slash, *at;
        _cleanup_free_ char *proto = NULL, *host = NULL;

        if (!p)
                return 0;
        proto = strndup(url, (size_t) (p - url));
        h = p + 3;
        slash = strchr(h, '/');
        at = memchr(h, '@', slash ? (size_t) (slash - h) : strlen(h));
        if (at)
                h = at + 1;
        host = slash ? strndup(h, (size_t) (slash - h)) : strdup(h);
        if (!proto || !host)
                return -ENOMEM;
        if (git_cred_set(&g->protocol, proto) < 0 || git_cred_set(&g->host, host) < 0)
                return -ENOMEM;
        if (slash && slash[1] && git_cred_set(&g->path, slash + 1) < 0)
                return -ENOMEM;
        return 0;
}

/* Reads git's description from f. Unknown keys (wwwauth[], capability[],
 * ...) are skipped, as git's own helpers do. */
static int git_cred_read(FILE *f, GitCred *g) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        int r = 0;

        for (unsigned lines = 0; (n = getline(&line, &cap, f)) >= 0; lines++) {
                char *eq;

                if (lines >= GIT_CRED_LINES_MAX || n > GIT_CRED_LINE_MAX) {
                        r = -E2BIG;
                        break;
                }
                while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
                        line[--n] = 0;
                if (n == 0)
                        break;
                if ((size_t) n != strlen(line)) {
                        r = -EINVAL;   /* a NUL byte inside a line */
                        break;
                }
                eq = strchr(line, '=');
                if (!eq)
                        continue;
                *eq++ = 0;
                if (streq(line, "protocol"))
                        r = git_cred_set(&g->protocol, eq);
                else if (streq(line, "host"))
                        r = git_cred_set(&g->host, eq);
                else if (streq(line, "path"))
                        r = git_cred_set(&g->path, eq);
                else if (streq(line, "username"))
                        r = git_cred_set(&g->username, eq);
                else if (streq(line, "password"))
                        r = git_cred_set(&g->password, eq);
                else if (streq(line, "url"))
                        r = git_cred_url(g, eq);
                if (r < 0)
                        break;
        }
        if (line)
                explicit_wipe(line, cap);
        free(line);
        return r;
}

/* --map HOST[/PATH]=NAME matches the host git names (case-insensitive,
 * with its :PORT if git sends one) and, with /PATH, a path that is PATH
 * or starts with PATH/ (git sends a path only with credential.useHttpPath). */
static size_t map_match(const char *key, size_t keylen, const GitCred *g) {
        const char *slash = memchr(key, '/', keylen);
        size_t hl = slash ? (size_t) (slash - key) : keylen, pl;
        const char *mp;

        if (!g->host || strlen(g->host) != hl || strncasecmp(key, g->host, hl) != 0)
                return 0;
        if (!slash)
                return keylen;
        mp = slash + 1;
        pl = keylen - hl - 1;
        while (pl > 0 && mp[pl - 1] == '/')
                pl--;
        if (pl == 0)
                return keylen;
        if (!g->path || strncmp(g->path, mp, pl) != 0 || (g->path[pl] != 0 && g->path[pl] != '/'))
                return 0;
        return keylen;
}

/* The username the forges expect with an OAuth token as the password. */
static const char *forge_username(const char *host) {
        static const struct {
                const char *host, *user;
        } forges[] = {
                { "github.com", "x-access-token" },
                { "gist.github.com", "x-access-token" },
                { "gitlab.com", "oauth2" },
                { "bitbucket.org", "x-token-auth" },
        };

        for (size_t i = 0; host && i < ELEMENTSOF(forges); i++)
                if (strcasecmp(host, forges[i].host) == 0)
                        return forges[i].user;
        return NULL;
}

static bool secret_eq(const char *a, const char *b) {
        size_t n = strlen(a), m = strlen(b);
        unsigned char d = n != m;

        for (size_t i = 0; i < n && i < m; i++)
                d |= (unsigned char) (a[i] ^ b[i]);
        return d == 0;
}

/* tokenctl git-credential [--connection NAME] [--map HOST[/PATH]=NAME]...
 * [--username U] [--allow-http] get|store|erase */
int do_git_credential(int argc, char **argv) {
        const char *conn = NULL, *user = NULL, *action = NULL, *map[64], *v;
        size_t nmap = 0, best = 0;
        bool allow_http = false;
        _cleanup_(git_cred_done) GitCred g = {};
        char name[CONNECTION_NAME_MAX + 1] = "";
        Reply r;
        int k;

        for (int i = 1; i < argc; i++) {
                bool missing = false;

                if ((v = option_value(argc, argv, &i, "--connection", &missing)))
                        conn = v;
                else if (!missing && (v = option_value(argc, argv, &i, "--username", &missing)))
                        user = v;
                else if (!missing && (v = option_value(argc, argv, &i, "--map", &missing))) {
                        const char *eq = strrchr(v, '=');

                        if (!eq || eq == v || !eq[1] || v[0] == '/') {
                                fprintf(stderr, "tokenctl: --map takes HOST[/PATH]=NAME; got '%s'\n", v);
                                return EXIT_USAGE;
                        }
                        if (nmap >= ELEMENTSOF(map)) {
                                fprintf(stderr, "tokenctl: at most %zu --map options\n", ELEMENTSOF(map));
                                return EXIT_USAGE;
                        }
                        if (!name_ok(eq + 1))
                                return EXIT_USAGE;
                        map[nmap++] = v;
                } else if (!missing && streq(argv[i], "--allow-http"))
                        allow_http = true;
                else if (missing || (argv[i][0] == '-' && argv[i][1])) {
                        fprintf(stderr, "tokenctl: git-credential: %s '%s'\n",
                                missing ? "missing value of" : "unknown option", argv[i]);
                        return EXIT_USAGE;
                } else if (!action)
                        action = argv[i];
                else {
                        fprintf(stderr, "tokenctl: git-credential takes one action (get, store or erase)\n");
                        return EXIT_USAGE;
                }
        }
        if (!action || !(streq(action, "get") || streq(action, "store") || streq(action, "erase"))) {
                fprintf(stderr, "tokenctl: usage: tokenctl git-credential [--connection NAME] "
                                "[--map HOST[/PATH]=NAME]... [--username U] [--allow-http] get|store|erase\n");
                return EXIT_USAGE;
        }
        if (conn && !name_ok(conn))
                return EXIT_USAGE;
        if (!conn && nmap == 0) {
                fprintf(stderr, "tokenctl: git-credential needs --connection NAME or --map HOST=NAME\n");
                return EXIT_USAGE;
        }
        k = git_cred_read(stdin, &g);
        if (k < 0) {
                fprintf(stderr, "tokenctl: git-credential: unreadable input from git: %s\n", strerror(-k));
                return EXIT_USAGE;
        }
        /* store: git keeps nothing with us (the broker holds the token) */
        if (streq(action, "store"))
                return EXIT_OK;
        /* a token goes over TLS only, unless asked otherwise */
        if (!g.protocol || !(streq(g.protocol, "https") || (allow_http && streq(g.protocol, "http"))))
                return EXIT_OK;
        for (size_t i = 0; i < nmap; i++) {
                const char *eq = strrchr(map[i], '=');
                size_t m = map_match(map[i], (size_t) (eq - map[i]), &g);

                if (m > best) {   /* the longest match wins */
                        best = m;
                        snprintf(name, sizeof name, "%s", eq + 1);
                }
        }
        if (best == 0 && conn)
                snprintf(name, sizeof name, "%s", conn);
        if (!name[0])
                return EXIT_OK;   /* not ours: git asks its next helper */

        if (streq(action, "erase")) {
                /* The server refused the password git got from us: when it
                 * is still the broker's token, ask for a new one (the
                 * daemon's limit on client-driven refreshes applies).
                 * Anything else is not ours to act on. */
                char path[256];
                bool current;

                if (isempty(g.password))
                        return EXIT_OK;
                k = token_reply(name, NULL, &r);
                if (k)
                        return k;
                current = jstr(r.json, "access_token") && secret_eq(jstr(r.json, "access_token"), g.password);
                reply_done(&r);
                if (!current)
                        return EXIT_OK;
                snprintf(path, sizeof path, API_PREFIX "/%s/invalidate", name);
                k = call_ok("POST", path, NULL, &r);
                if (k)
                        return k;
                reply_done(&r);
                return EXIT_OK;
        }

        k = token_reply(name, "60", &r);
        if (k)
                return k;
        {
                const char *tok = jstr(r.json, "access_token");
                json_t *e = json_object_get(r.json, "expires_in");

                if (isempty(tok) || strpbrk(tok, "\r\n")) {
                        fprintf(stderr, "tokenctl: the daemon answered no usable access token for '%s'\n", name);
                        reply_done(&r);
                        return EXIT_FAILURE_GENERIC;
                }
                printf("username=%s\npassword=%s\n", user ?: forge_username(g.host) ?: g.username ?: "oauth2", tok);
                /* git 2.41 and later forget the password then; older ones
                 * ignore the line */
                if (json_is_integer(e))
                        printf("password_expiry_utc=%lld\n", (long long) time(NULL) + json_integer_value(e));
        }
        reply_done(&r);
        if (fflush(stdout) != 0) {
                fprintf(stderr, "tokenctl: cannot write to git: %s\n", strerror(errno));
                return EXIT_FAILURE_GENERIC;
        }
        return EXIT_OK;
}
