/* SPDX-License-Identifier: MIT */
/* The Manager's authorization state handling and refresh scheduling, on a
 * real Manager (sd-event, SQLite file, listeners on a temporary socket and
 * an ephemeral loopback port), without any provider traffic. */
#include <ftw.h>
#include <sys/stat.h>

#define TESTS_MAIN
#include "tests.h"

#include "common/util.h"
#include "daemon/manager.h"
#include "daemon/oauth.h"

static char dir[] = "/tmp/test-manager-XXXXXX";

static void write_file(const char *name, const char *text) {
        tests_write_file(dir, name, text);
}

static Manager *manager_setup(void) {
        BrokerConfig *cfg = NULL;
        ConfError err = {};
        char path[256];
        Manager *m = NULL;

        if (!mkdtemp(dir))
                abort();
        snprintf(path, sizeof path, "%s/providers.d", dir);
        mkdir(path, 0700);
        write_file("tb.conf", "[broker]\nstate_dir = state\nsocket = tb.sock\ncallback_listen = 127.0.0.1:0\n"
                              "public_url = http://127.0.0.1:8421\nproviders_dir = providers.d\n"
                              "refresh_margin = 60s\nrefresh_ratio = 0.1\nrefresh_jitter = 5s\n");
        write_file("providers.d/p.conf", "[provider]\nauthorize_url = https://id.example.com/authorize\n"
                                         "token_url = https://id.example.com/token\nclient_id = cid\n"
                                         "client_secret = s3cret\nscopes = openid email\n");
        snprintf(path, sizeof path, "%s/tb.conf", dir);
        if (broker_config_load(path, &cfg, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                abort();
        }
        if (manager_new(cfg, path, &m) < 0 || manager_startup(m) < 0)
                abort();
        return m;
}

static void manager_teardown(Manager *m) {
        manager_free(m);
        tests_rm_tree(dir);
        strcpy(dir, "/tmp/test-manager-XXXXXX");
}

static char *query_param(const char *url, const char *key) {
        char pat[64];
        const char *p, *e;
        char *v = NULL;

        snprintf(pat, sizeof pat, "%s=", key);
        for (p = strchr(url, '?'); p; p = strchr(p + 1, '&'))
                if (strncmp(p + 1, pat, strlen(pat)) == 0) {
                        p += 1 + strlen(pat);
                        e = p + strcspn(p, "&");
                        (void) url_unescape(p, (size_t) (e - p), &v);
                        return v;
                }
        return NULL;
}

static Connection *authorize(Manager *m, const char *name, char **ret_url) {
        AuthorizeRequest req = { .name = name, .provider = "p" };
        Connection *c = NULL;
        const char *error = NULL;
        int r;

        r = manager_authorize(m, &req, &c, ret_url, &error);
        CHECK_EQ_INT(r, 0);
        return c;
}

TEST(state_is_random_hashed_and_indexed) {
        Manager *m = manager_setup();
        _cleanup_free_ char *url = NULL, *state = NULL, *challenge = NULL, *expect = NULL;
        char hash[65];
        Connection *c = authorize(m, "alice", &url);

        CHECK(c && c->state == CONN_PENDING);
        state = query_param(url, "state");
        CHECK(state && strlen(state) == 43);   /* 32 random bytes */
        CHECK(sha256_hex(state, strlen(state), hash) == 0);
        CHECK_STREQ(connection_state_hash(c), hash);
        CHECK(manager_get_pending(m, hash) == c);
        /* the state itself is kept nowhere */
        CHECK(!strstr(connection_state_hash(c), state));
        challenge = query_param(url, "code_challenge");
        CHECK(pkce_challenge(PKCE_S256, connection_code_verifier(c), &expect) == 0);
        CHECK_STREQ(challenge, expect);
        CHECK(connection_pending_until(c) > now(CLOCK_REALTIME) + 9 * USEC_PER_MINUTE);
        CHECK(timerwheel_entry_armed(&c->timer));
        manager_teardown(m);
}

TEST(states_differ_and_reauthorize_replaces) {
        Manager *m = manager_setup();
        _cleanup_free_ char *u1 = NULL, *u2 = NULL, *u3 = NULL, *s1 = NULL, *s3 = NULL;
        _cleanup_free_ char *old_hash = NULL;
        Connection *a = authorize(m, "a", &u1), *b = authorize(m, "b", &u2), *a2;

        CHECK(a != b);
        CHECK(!streq(connection_state_hash(a), connection_state_hash(b)));
        old_hash = strdup(connection_state_hash(a));
        a2 = authorize(m, "a", &u3);
        CHECK(a2 == a);   /* in place */
        s1 = query_param(u1, "state");
        s3 = query_param(u3, "state");
        CHECK(!streq(s1, s3));
        CHECK(hashmap_get(m->pending, old_hash) == NULL);
        CHECK(manager_get_pending(m, connection_state_hash(a)) == a);
        CHECK_EQ_INT(hashmap_size(m->pending), 2);
        CHECK_EQ_INT(hashmap_size(m->connections), 2);
        manager_teardown(m);
}

TEST(state_is_single_use) {
        Manager *m = manager_setup();
        _cleanup_free_ char *url = NULL, *hash = NULL;
        Connection *c = authorize(m, "alice", &url);

        hash = strdup(connection_state_hash(c));
        /* the callback unlinks the state before the exchange runs */
        manager_pending_unlink(m, c);
        CHECK(hashmap_get(m->pending, hash) == NULL);
        manager_pending_unlink(m, c);   /* idempotent */
        CHECK_EQ_INT(hashmap_size(m->pending), 0);
        manager_teardown(m);
}

TEST(expired_pending_authorization_is_removed) {
        Manager *m = manager_setup();
        _cleanup_free_ char *url = NULL, *hash = NULL;
        Connection *c = authorize(m, "alice", &url);

        hash = strdup(connection_state_hash(c));
        (void) connection_set_pending_until(c, now(CLOCK_REALTIME) - USEC_PER_SEC);
        refresher_on_timer(m, c);   /* c is freed */
        CHECK(manager_get(m, "alice") == NULL);
        CHECK(hashmap_get(m->pending, hash) == NULL);
        CHECK_EQ_INT(m->n_state[CONN_PENDING], 0);
        manager_teardown(m);
}

TEST(refresh_is_scheduled_ahead_of_expiry) {
        Manager *m = manager_setup();
        _cleanup_free_ char *url = NULL;
        Connection *c = authorize(m, "alice", &url);
        usec_t rt = now(CLOCK_REALTIME), mono = now(DEADLINE_CLOCK), expected;

        manager_pending_unlink(m, c);
        (void) connection_set_state_hash(c, NULL);
        manager_set_state(m, c, CONN_ACTIVE);
        c->access_token = strdup("at");
        c->refresh_token = strdup("rt");
        c->obtained_at = rt;
        c->expires_at = rt + 3600 * USEC_PER_SEC;
        c->expires_deadline = deadline_from_realtime(c->expires_at);
        refresher_schedule(m, c);
        CHECK(timerwheel_entry_armed(&c->timer));
        /* max(60 s, 0.1 x 3600 s) = 360 s before expiry, minus up to 5 s jitter */
        expected = mono + (3600 - 360) * USEC_PER_SEC;
        CHECK(c->timer.deadline <= expected + USEC_PER_SEC);
        CHECK(c->timer.deadline >= expected - 6 * USEC_PER_SEC);

        /* a margin longer than half the lifetime is capped at half */
        c->expires_at = rt + 30 * USEC_PER_SEC;
        c->expires_deadline = deadline_from_realtime(c->expires_at);
        refresher_schedule(m, c);
        CHECK(c->timer.deadline <= mono + 16 * USEC_PER_SEC);
        CHECK(c->timer.deadline >= mono + 11 * USEC_PER_SEC);

        /* the deadline clock, not the wall clock, decides */
        CHECK(c->timer.deadline > now(DEADLINE_CLOCK));

        /* never expires: nothing scheduled */
        c->expires_at = 0;
        refresher_schedule(m, c);
        CHECK(!timerwheel_entry_armed(&c->timer));
        manager_teardown(m);
}

TEST(unknown_provider_and_capacity) {
        Manager *m = manager_setup();
        AuthorizeRequest req = { .name = "x", .provider = "nope" };
        Connection *c = NULL;
        char *url = NULL;
        const char *error = NULL;

        CHECK_EQ_INT(manager_authorize(m, &req, &c, &url, &error), -ENOENT);
        CHECK(error != NULL);
        m->config->max_connections = 1;
        free(url);
        url = NULL;
        req.provider = "p";
        CHECK_EQ_INT(manager_authorize(m, &req, &c, &url, &error), 0);
        free(url);
        url = NULL;
        req.name = "y";
        CHECK_EQ_INT(manager_authorize(m, &req, &c, &url, &error), -E2BIG);
        free(url);
        manager_teardown(m);
}
