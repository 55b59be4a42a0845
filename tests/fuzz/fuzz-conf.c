/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the configuration readers (common/conf.h).
 *
 * Input: the text of a configuration file. Each run:
 *   1. ini_parse_string() with a checking callback;
 *   2. provider_load() on the input written to DIR/x.conf;
 *   3. broker_config_load() on the same file.
 * DIR is a temporary folder made once per process; it also holds what the
 * files may refer to: a client secret ("secret"), an empty and a binary
 * file, a CA file ("ca.pem"), credentials ($CREDENTIALS_DIRECTORY=DIR/creds,
 * with "cred") and a
 * providers.d/ with one valid provider. Inputs that would make the loaders
 * read outside DIR (an absolute or ".." client_secret_file, providers_dir
 * or ca_file)
 * skip steps 2 and 3, so runs stay hermetic.
 *
 * Invariants:
 *   - The callback only sees a non-empty section and key, stripped key and
 *     value, and a line number within the text.
 *   - Every error message is "PATH:LINE: ..." with 1 <= LINE <= the lines of
 *     the input when it is about the input, or "PATH: ..." (line 0).
 *   - A loaded provider has what provider_load() promises (token_url,
 *     client_id, acceptable URLs, valid pointers, a usage rule, a secret
 *     unless client_auth = none), and its usage templates and authorize URL
 *     can be rendered (with a fitting value for each declared param; its
 *     params declared once with valid names, no metadata pointer at a
 *     token). A loaded broker config has its defaults filled and
 *     its providers sorted by name.
 *   - Everything is freed (LeakSanitizer). */

#include <fcntl.h>
#include <sys/stat.h>

#include "common/conf.h"
#include "common/params.h"
#include "common/jsonptr.h"
#include "daemon/oauth.h"

static char dir[4096];
static char file[4096 + 16];

static void write_file(const char *path, const void *p, size_t n) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        if (fd < 0 || write(fd, p, n) != (ssize_t) n || close(fd) < 0) {
                fprintf(stderr, "fuzz-conf: cannot write %s: %m\n", path);
                abort();
        }
}

static void remove_dir(void) {
        static const char *const files[] = {
                "x.conf", "secret", "empty", "binary", "creds/cred", "providers.d/good.conf",
                "creds", "providers.d", "",
        };
        char path[sizeof dir + 64];

        for (size_t i = 0; i < ELEMENTSOF(files); i++) {
                snprintf(path, sizeof path, "%s/%s", dir, files[i]);
                (void) remove(path);
        }
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
        const char *tmp = getenv("TMPDIR");
        char path[sizeof dir + 64];

        (void) argc;
        (void) argv;
        snprintf(dir, sizeof dir, "%s/fuzz-conf-XXXXXX", isempty(tmp) ? "/tmp" : tmp);
        if (!mkdtemp(dir)) {
                fprintf(stderr, "fuzz-conf: mkdtemp %s: %m\n", dir);
                abort();
        }
        atexit(remove_dir);
        snprintf(file, sizeof file, "%s/x.conf", dir);

        snprintf(path, sizeof path, "%s/secret", dir);
        write_file(path, "s3cr3t-value\n", 13);
        snprintf(path, sizeof path, "%s/empty", dir);
        write_file(path, "", 0);
        snprintf(path, sizeof path, "%s/binary", dir);
        write_file(path, "ab\0cd\n", 6);
        snprintf(path, sizeof path, "%s/ca.pem", dir);   /* [broker] ca_file */
        write_file(path, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", 59);
        snprintf(path, sizeof path, "%s/creds", dir);
        if (mkdir(path, 0700) < 0)
                abort();
        setenv("CREDENTIALS_DIRECTORY", path, 1);
        snprintf(path, sizeof path, "%s/creds/cred", dir);
        write_file(path, "from-a-credential", 17);
        snprintf(path, sizeof path, "%s/providers.d", dir);
        if (mkdir(path, 0700) < 0)
                abort();
        snprintf(path, sizeof path, "%s/providers.d/good.conf", dir);
        static const char good[] =
                "[provider]\n"
                "authorize_url = https://accounts.example.com/o/oauth2/v2/auth\n"
                "token_url = https://oauth2.example.com/token\n"
                "client_id = good-client\n"
                "client_secret = good-secret\n";
        write_file(path, good, sizeof good - 1);
        return 0;
}

static size_t count_lines(const uint8_t *data, size_t size) {
        size_t n = 1;

        for (size_t i = 0; i < size; i++)
                if (data[i] == '\n')
                        n++;
        return n;
}

/* "PATH:LINE: msg" or "PATH: msg". A message about another file under DIR
 * (a provider of the broker config) may have any line. */
static void check_error(const ConfError *err, int r, const char *path, size_t lines) {
        const char *m = err->msg, *q;
        bool ours;
        unsigned long line;
        char *end;

        if (r >= 0 || r == -ENOMEM)
                return;
        if (startswith(m, path) && m[strlen(path)] == ':')
                ours = true, q = m + strlen(path) + 1;
        else if (startswith(m, dir) && m[strlen(dir)] == '/') {
                ours = false;
                q = strchr(m + strlen(dir), ':');
                if (!q)
                        goto bad;
                q++;
        } else
                goto bad;
        if (*q == ' ')
                return;   /* line 0: about the file as a whole */
        if (*q < '1' || *q > '9')
                goto bad;
        errno = 0;
        line = strtoul(q, &end, 10);
        if (errno || !startswith(end, ": ") || (ours && line > lines))
                goto bad;
        return;
bad:
        fprintf(stderr, "fuzz-conf: bad error message for %s (r=%d): \"%s\"\n", path, r, m);
        abort();
}

typedef struct IniCheck {
        size_t lines;
        unsigned last_line;
        bool unsafe;
} IniCheck;

static bool is_blank(char c) {
        return c == ' ' || c == '\t';
}

static int ini_check(const char *section, const char *key, const char *value, unsigned line,
                     void *userdata, ConfError *err) {
        IniCheck *c = userdata;
        size_t kl = strlen(key), vl = strlen(value);

        (void) err;
        if (isempty(section) || strlen(section) >= 64 || kl == 0)
                abort();
        if (is_blank(key[0]) || is_blank(key[kl - 1]) || strchr(key, '=') || strchr(key, '\n'))
                abort();
        if (vl > 0 && (is_blank(value[0]) || is_blank(value[vl - 1]) || value[vl - 1] == '\r'))
                abort();
        if (strchr(value, '\n') || line == 0 || line > c->lines || line <= c->last_line)
                abort();
        c->last_line = line;

        /* Would a loader read a file outside DIR? */
        if ((streq(key, "client_secret_file") || streq(key, "providers_dir") || streq(key, "ca_file")) &&
            (value[0] == '/' || strstr(value, "..")))
                c->unsafe = true;
        return 0;
}

/* An acceptable URL, or a template standing for one (${param.X} or
 * ${metadata.X} as its origin or in its host). */
static bool url_ok(const char *u) {
        if (url_template_check(u, NULL, NULL, NULL) < 0)
                return false;
        return startswith(u, "${") || url_is_acceptable(u);
}

static void check_provider(const Provider *p) {
        char **lines = NULL, *query = NULL, *url = NULL;
        size_t n = 0;
        int r;

        if (!p->name || !p->path || !p->token_url || !p->client_id)
                abort();
        if (!url_ok(p->token_url) || (p->authorize_url && !url_ok(p->authorize_url)) ||
            (p->revoke_url && !url_ok(p->revoke_url)) || (p->test_url && !url_ok(p->test_url)))
                abort();
        /* declared once each, with valid names; metadata never at a token */
        for (size_t i = 0; i < p->n_params; i++)
                if (!param_name_valid(p->params[i].name, strlen(p->params[i].name)) ||
                    (p->params[i].in_host && p->params[i].in_origin))
                        abort();
        for (size_t i = 0; i < p->n_metadata; i++)
                if ((!p->metadata[i].pointer) == (!p->metadata[i].query) ||
                    (p->metadata[i].pointer && (streq(p->metadata[i].pointer, p->ptr_access_token) ||
                                                streq(p->metadata[i].pointer, p->ptr_refresh_token) ||
                                                streq(p->metadata[i].pointer, p->ptr_id_token))))
                        abort();
        if (p->grant == GRANT_AUTHORIZATION_CODE ? !p->authorize_url : p->grant != GRANT_CLIENT_CREDENTIALS)
                abort();
        if (p->client_auth != CLIENT_AUTH_NONE && isempty(p->client_secret))
                abort();
        if (!client_auth_to_string(p->client_auth) || !pkce_to_string(p->pkce))
                abort();
        if (!p->scope_separator || !p->code_param)
                abort();
        const char *ptrs[] = {
                p->ptr_access_token, p->ptr_refresh_token, p->ptr_expires_in, p->ptr_token_type,
                p->ptr_scope, p->ptr_id_token, p->ptr_error, p->ptr_error_description,
        };
        for (size_t i = 0; i < ELEMENTSOF(ptrs); i++)
                if (!ptrs[i] || jsonptr_validate(ptrs[i]) < 0)
                        abort();
        if (p->n_usage_header > PROVIDER_USAGE_MAX || (p->n_usage_header == 0 && !p->usage_query))
                abort();

        /* The templates were validated: rendering them cannot fail. */
        r = oauth_usage_headers(p, "tok", "Bearer", &lines, &n, &query);
        if (r == -ENOMEM)
                return;
        if (r < 0 || n != p->n_usage_header || (!query) != (!p->usage_query))
                abort();
        for (size_t i = 0; i < n; i++)
                if (!strchr(lines[i], ':'))
                        abort();
        for (size_t i = 0; i < n; i++)
                free(lines[i]);
        free(lines);
        free(query);

        if (p->authorize_url) {
                /* each parameter with a value fit for where it stands */
                json_t *params = json_object();

                for (size_t i = 0; params && i < p->n_params; i++)
                        (void) json_object_set_new(params, p->params[i].name,
                                                   json_string(p->params[i].in_origin ? "https://a.example.com" : "a"));
                r = oauth_authorize_url_params(p, "http://127.0.0.1:8421/oauth/callback", "st", "ch", NULL, params,
                                               &url, NULL);
                json_decref(params);
                if (r >= 0) {
                        if (!strstr(p->authorize_url, "${") && !startswith(url, p->authorize_url))
                                abort();
                        free(url);
                } else if (r != -ENOMEM)
                        abort();
        }
}

static void check_broker(const BrokerConfig *c) {
        char *uri = NULL;

        if (!c->state_dir || !c->socket || !c->callback_listen || !c->providers_dir || !c->public_url)
                abort();
        if (!strchr(c->callback_listen, ':'))
                abort();
        /* A configured public_url is checked; the default one derived from
         * callback_listen is not: "callback_listen = 0.0.0.0:8421" alone
         * gives http://0.0.0.0:8421. */
        if (!url_is_acceptable(c->public_url) &&
            !(startswith(c->public_url, "http://") && streq(c->public_url + 7, c->callback_listen)))
                abort();
        if (c->socket_mode > 0777 || !(c->refresh_ratio >= 0 && c->refresh_ratio < 1) ||
            c->max_parallel_refreshes == 0 || c->max_connections == 0)
                abort();
        for (size_t i = 0; i < c->n_providers; i++) {
                check_provider(c->providers[i]);
                if (i > 0 && strcmp(c->providers[i - 1]->name, c->providers[i]->name) >= 0)
                        abort();
                if (broker_config_find_provider(c, c->providers[i]->name) != c->providers[i])
                        abort();
        }
        if (broker_config_redirect_uri(c, NULL, &uri) >= 0)
                free(uri);
        /* each provider's own redirect URI, set at load */
        for (size_t i = 0; i < c->n_providers; i++)
                if (!c->providers[i]->redirect_uri || !strstr(c->providers[i]->redirect_uri, "/oauth/callback"))
                        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        IniCheck ic = { .lines = count_lines(data, size) };
        ConfError err = {};
        Provider *p = NULL;
        BrokerConfig *c = NULL;
        int r;

        r = ini_parse_string("x.conf", (const char *) data, size, ini_check, &ic, &err);
        check_error(&err, r, "x.conf", ic.lines);
        if (ic.unsafe)
                return 0;

        write_file(file, data, size);

        err = (ConfError) {};
        r = provider_load(file, &p, &err);
        check_error(&err, r, file, ic.lines);
        if (r >= 0) {
                if (!streq(p->name, "x") || !streq(p->path, file))
                        abort();
                check_provider(p);
                provider_free(p);
        }

        err = (ConfError) {};
        r = broker_config_load(file, &c, &err);
        check_error(&err, r, file, ic.lines);
        if (r >= 0) {
                check_broker(c);
                broker_config_free(c);
        }
        return 0;
}
