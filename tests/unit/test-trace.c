/* SPDX-License-Identifier: MIT */

#include "common/util.h"
#include "daemon/trace.h"

#define TESTS_MAIN
#include "tests.h"

/* A connection (the name lives in its allocation) with borrowed tokens,
 * taken back by give_back() before the free wipes them. */
static Connection *with_tokens(const char *name, const char *refresh, const char *access) {
        Connection *c = connection_new(name);

        if (c) {
                c->refresh_token = (char *) refresh;
                c->access_token = (char *) access;
        }
        return c;
}

static void give_back(Connection *c) {
        if (!c)
                return;
        c->refresh_token = c->access_token = NULL;
        connection_free(c);
}

static void record(TraceStore **t, const BrokerConfig *cfg, const char *name, long status) {
        Connection *c = with_tokens(name, "rt-unit-test-123456", "at-unit-test-654321");
        Provider p = { .client_secret = (char *) "unit-client-secret" };
        char body[] = "grant_type=refresh_token&refresh_token=rt-unit-test-123456&client_secret=unit-client-secret";
        char answer[] = "{\"access_token\":\"new-access-token-000\",\"error_description\":\"at-unit-test-654321\"}";
        char headers[] = "HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nContent-Type: application/json\r\n\r\n";
        HttpRequest req = {
                .url = (char *) "https://p.example/token",
                .post_data = body,
                .post_len = strlen(body),
                .body = answer,
                .body_len = strlen(answer),
                .status = status,
                .resp_headers = headers,
                .resp_headers_len = strlen(headers),
                .content_type = (char *) "application/json",
        };

        snprintf(req.method, sizeof req.method, "POST");
        CHECK(c);
        if (c)
                trace_record(t, cfg, c, &p, "refresh", &req);
        give_back(c);
}

static size_t entries_of(TraceStore *t, const char *name, uint64_t after) {
        json_t *j = trace_json(t, name, after);
        size_t n = json_array_size(json_object_get(j, "entries"));

        json_decref(j);
        return n;
}

TEST(ring_and_lru_bounds) {
        BrokerConfig cfg = { .trace_entries = 3, .trace_connections = 2 };
        TraceStore *t = NULL;

        for (int i = 0; i < 5; i++)
                record(&t, &cfg, "a", 200 + i);
        CHECK(t != NULL);
        CHECK_EQ_INT(entries_of(t, "a", 0), 3);   /* the ring keeps the last 3 */
        CHECK_EQ_INT(entries_of(t, "a", 4), 1);   /* after=4: only #5 */
        record(&t, &cfg, "b", 200);
        record(&t, &cfg, "a", 200);               /* a is used last now */
        record(&t, &cfg, "c", 200);               /* evicts b, the least recently used */
        CHECK_EQ_INT(entries_of(t, "b", 0), 0);
        CHECK_EQ_INT(entries_of(t, "a", 0), 3);
        CHECK_EQ_INT(entries_of(t, "c", 0), 1);
        trace_forget(t, "a");
        CHECK_EQ_INT(entries_of(t, "a", 0), 0);
        /* tracing off: everything goes */
        cfg.trace_entries = 0;
        record(&t, &cfg, "c", 200);
        CHECK(t == NULL);
        trace_store_free(t);
}

TEST(entries_are_redacted) {
        BrokerConfig cfg = { .trace_entries = 20, .trace_connections = 64 };
        TraceStore *t = NULL;
        json_t *j;
        char *s;

        record(&t, &cfg, "x", 400);
        j = trace_json(t, "x", 0);
        s = json_dumps(j, JSON_COMPACT);
        CHECK(s != NULL);
        if (s) {
                CHECK(!strstr(s, "rt-unit-test-123456"));
                CHECK(!strstr(s, "at-unit-test-654321"));
                CHECK(!strstr(s, "unit-client-secret"));
                CHECK(!strstr(s, "new-access-token-000"));
                CHECK(!strstr(s, "a=b"));
                CHECK(strstr(s, "refresh_token=<refresh_token>"));
                CHECK(strstr(s, "client_secret=<client_secret>"));
                CHECK(strstr(s, "Set-Cookie: <cookie>"));
                CHECK(strstr(s, "\"status\":400"));
                CHECK(strstr(s, "\\\"error_description\\\":\\\"<access_token>\\\""));
        }
        free(s);
        json_decref(j);
        trace_store_free(t);
}

/* Recorded raw, redacted later: by the sweep (a few at a time, oldest
 * first) or by a reader; entries pushed out before either never are. */
TEST(redacted_later_by_sweep_or_reader) {
        BrokerConfig cfg = { .trace_entries = 4, .trace_connections = 8 };
        TraceStore *t = NULL;
        char name[16];
        uint64_t last;
        json_t *j;
        char *s;

        CHECK(!trace_pending(t));
        CHECK(!trace_sweep(t, 16));
        for (int i = 0; i < 10; i++) {
                snprintf(name, sizeof name, "n%d", i);
                record(&t, &cfg, name, 200);
        }
        /* 10 connections, 8 kept: 8 raw entries wait */
        CHECK(trace_pending(t));
        CHECK(trace_sweep(t, 3));
        CHECK(trace_sweep(t, 4));
        CHECK(!trace_sweep(t, 1));           /* the 8th */
        CHECK(!trace_pending(t));
        CHECK_EQ_INT(entries_of(t, "n9", 0), 1);
        CHECK_EQ_INT(entries_of(t, "n1", 0), 0);

        /* the ring overwrites raw entries: they leave the queue with it */
        for (int i = 0; i < 6; i++)
                record(&t, &cfg, "n9", 200);
        CHECK(trace_pending(t));
        /* a reader redacts what it shows, and the sweep has nothing left */
        j = trace_json(t, "n9", 0);
        CHECK(!trace_pending(t));
        CHECK_EQ_INT(json_array_size(json_object_get(j, "entries")), 4);
        s = json_dumps(j, JSON_COMPACT);
        CHECK(s && !strstr(s, "rt-unit-test-123456") && !strstr(s, "unit-client-secret") &&
              strstr(s, "refresh_token=<refresh_token>"));
        free(s);
        json_decref(j);

        /* a reader asking only for the newest leaves older ones raw */
        record(&t, &cfg, "n8", 200);
        record(&t, &cfg, "n8", 200);
        j = trace_json(t, "none", 0);
        last = (uint64_t) json_integer_value(json_object_get(j, "last_seq"));
        json_decref(j);
        j = trace_json(t, "n8", last - 1);
        CHECK_EQ_INT(json_array_size(json_object_get(j, "entries")), 1);
        json_decref(j);
        CHECK(trace_pending(t));
        trace_forget(t, "n8");
        CHECK(!trace_pending(t));
        trace_store_free(t);
}

/* A large answer (an error page) is redacted and cut as it is recorded:
 * nothing that large waits raw. */
TEST(large_exchange_redacted_at_once) {
        BrokerConfig cfg = { .trace_entries = 4, .trace_connections = 4 };
        Connection *c = with_tokens("big", "rt-unit-test-123456", NULL);
        char body[] = "grant_type=refresh_token&refresh_token=rt-unit-test-123456";
        _cleanup_free_ char *page = malloc(64 * 1024 + 1);
        TraceStore *t = NULL;
        HttpRequest req = {
                .url = (char *) "https://p.example/token",
                .post_data = body,
                .post_len = strlen(body),
                .status = 502,
        };
        json_t *j;
        char *s;

        CHECK(page != NULL && c != NULL);
        if (!page || !c) {
                give_back(c);
                return;
        }
        memset(page, 'x', 64 * 1024);
        memcpy(page + 100, "rt-unit-test-123456", 19);
        page[64 * 1024] = 0;
        req.body = page;
        req.body_len = 64 * 1024;
        snprintf(req.method, sizeof req.method, "POST");
        trace_record(&t, &cfg, c, NULL, "refresh", &req);
        give_back(c);
        CHECK(!trace_pending(t));
        j = trace_json(t, "big", 0);
        s = json_dumps(j, JSON_COMPACT);
        CHECK(s && !strstr(s, "rt-unit-test-123456") && strstr(s, "bytes cut"));
        CHECK(s && strlen(s) < 8 * 1024);
        free(s);
        json_decref(j);
        trace_store_free(t);
}
