/* SPDX-License-Identifier: MIT */
/*
 * A connection's out-of-line parts (issue 9): ConnPending (the pending
 * authorization, a password grant's credentials, the device part) and
 * ConnRare (last_error, previous_identity, params, metadata, rt_warned)
 * exist only while one of their fields is set, are freed when all are
 * empty again, and wipe their secrets. Linked with -Wl,--wrap=calloc
 * and --wrap=free (see the Makefile): calloc() can be made to fail (the
 * parts come from new0()), and free() checks that a watched secret is
 * all zeros when it is freed.
 */

#include <jansson.h>

#include "common/macro.h"
#include "daemon/connection.h"
#include "daemon/manager.h"

#define TESTS_MAIN
#include "tests.h"

void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);
void __real_free(void *p);
void __wrap_free(void *p);

static unsigned fail_callocs;      /* the next this many calloc() calls fail */
static const char *watched;        /* a secret expected wiped when freed */
static size_t watched_len;
static int watched_freed;          /* 0 not yet, 1 freed wiped, -1 freed with bytes left */

void *__wrap_calloc(size_t n, size_t size) {
        if (fail_callocs > 0) {
                fail_callocs--;
                return NULL;
        }
        return __real_calloc(n, size);
}

void __wrap_free(void *p) {
        if (p && p == watched) {
                bool zero = true;

                for (size_t i = 0; i < watched_len; i++)
                        zero = zero && ((const char *) p)[i] == 0;
                watched_freed = zero ? 1 : -1;
                watched = NULL;
        }
        __real_free(p);
}

static const char *conn_key(const HashmapNode *n) {
        return container_of(n, const Connection, by_name)->name;
}

static char *watch(const char *s) {
        char *copy = strdup(s);

        watched = copy;
        watched_len = copy ? strlen(copy) : 0;
        watched_freed = 0;
        return copy;
}

TEST(struct_stays_small) {
        /* 408 B before the parts (issue 9), 328 with them, 248 before the
         * names tuple, the flags in the timer entry and the identity
         * inline, 208 now; a guard, as test-conn-memory */
        printf("sizeof(Connection) %zu B, ConnPending %zu B, ConnRare %zu B\n", sizeof(Connection),
               sizeof(ConnPending), sizeof(ConnRare));
        CHECK(sizeof(Connection) <= 208);
}

/* notified_s and client_refresh_8: units rounded up, so that a rate
 * limit measured from them is never shorter than asked, and longer by
 * less than a unit. */
TEST(deadline_units_round_up_and_saturate) {
        CHECK_EQ_INT(deadline_units(0, NOTIFIED_UNIT), 0);
        CHECK_EQ_INT(deadline_units(1, NOTIFIED_UNIT), 1);
        CHECK_EQ_INT(deadline_units(USEC_PER_SEC, NOTIFIED_UNIT), 1);
        CHECK_EQ_INT(deadline_units(USEC_PER_SEC + 1, NOTIFIED_UNIT), 2);
        CHECK_EQ_INT(deadline_units(3 * USEC_PER_SEC - 1, NOTIFIED_UNIT), 3);
        CHECK_EQ_INT(deadline_units(USEC_PER_SEC, CLIENT_REFRESH_UNIT), 8);
        CHECK_EQ_INT(deadline_units(USEC_PER_SEC + 1, CLIENT_REFRESH_UNIT), 9);
        CHECK(deadline_units((usec_t) UINT32_MAX * USEC_PER_SEC, NOTIFIED_UNIT) == UINT32_MAX);
        CHECK(deadline_units((usec_t) UINT32_MAX * USEC_PER_SEC + 1, NOTIFIED_UNIT) == UINT32_MAX);
        CHECK(deadline_units(USEC_INFINITY, NOTIFIED_UNIT) == UINT32_MAX);
        CHECK(deadline_units(USEC_INFINITY, CLIENT_REFRESH_UNIT) == UINT32_MAX);
        for (usec_t t = 1; t < 10 * USEC_PER_SEC; t += 123457) {
                usec_t back = deadline_units_usec(deadline_units(t, NOTIFIED_UNIT), NOTIFIED_UNIT);
                usec_t back8 = deadline_units_usec(deadline_units(t, CLIENT_REFRESH_UNIT), CLIENT_REFRESH_UNIT);

                CHECK(back >= t && back < t + USEC_PER_SEC);
                CHECK(back8 >= t && back8 < t + CLIENT_REFRESH_UNIT);
        }
}

/* refreshes is 32 bits in the struct (64 in the store): it saturates. */
TEST(refresh_count_saturates) {
        CHECK_EQ_INT(connection_count_refresh(0), 1);
        CHECK(connection_count_refresh(UINT32_MAX - 1) == UINT32_MAX);
        CHECK(connection_count_refresh(UINT32_MAX) == UINT32_MAX);
        CHECK(connection_refreshes_from_store(7) == 7);
        CHECK(connection_refreshes_from_store(UINT32_MAX) == UINT32_MAX);
        CHECK(connection_refreshes_from_store(UINT64_C(123456789012)) == UINT32_MAX);
}

/* failures lives in the hash node's spare bits: the map must leave it be. */
TEST(failures_survive_the_hash_map) {
        _cleanup_hashmap_free_ Hashmap *h = NULL;
        Connection *c = connection_new("c-failures");

        CHECK(c);
        CHECK_EQ_INT(hashmap_new(&h, conn_key), 0);
        if (!c || !h) {
                connection_free(c);
                return;
        }
        c->failures = 0xdeadbeef;
        CHECK_EQ_INT(hashmap_put(h, &c->by_name), 0);
        CHECK(c->failures == 0xdeadbeef);
        CHECK(hashmap_get(h, "c-failures") == &c->by_name);
        c->failures = 3;
        CHECK(hashmap_get(h, "c-failures") == &c->by_name);
        hashmap_remove_node(h, &c->by_name);
        CHECK_EQ_INT(c->failures, 3);
        CHECK_EQ_INT(hashmap_put_unique_hashed(h, &c->by_name, hashmap_hash(h, c->name)), 0);
        CHECK_EQ_INT(c->failures, 3);
        CHECK(hashmap_remove(h, "c-failures") == &c->by_name);
        CHECK_EQ_INT(c->failures, 3);
        connection_free(c);
}

TEST(pending_part_only_while_a_field_is_set) {
        Connection *c = connection_new("c1");

        CHECK(c);
        if (!c)
                return;
        CHECK(!c->pending && !c->rare);
        CHECK(!connection_state_hash(c) && !connection_code_verifier(c) && !connection_auth_state(c));
        CHECK(!connection_username(c) && connection_pending_until(c) == 0 && !connection_device_pending(c));
        /* clearing what is not there allocates nothing */
        CHECK_EQ_INT(connection_set_state_hash(c, NULL), 0);
        CHECK_EQ_INT(connection_set_pending_until(c, 0), 0);
        connection_clear_pending_auth(c);
        connection_clear_device(c);
        CHECK(!c->pending);

        CHECK_EQ_INT(connection_set_state_hash(c, strdup("hash")), 0);
        CHECK(c->pending);
        CHECK_STREQ(connection_state_hash(c), "hash");
        CHECK_EQ_INT(connection_set_pending_until(c, 42), 0);
        CHECK_EQ_INT(connection_set_code_verifier(c, strdup("verifier")), 0);
        CHECK_EQ_INT(connection_set_auth_state(c, strdup("state")), 0);
        CHECK_EQ_INT(connection_set_username(c, strdup("bob")), 0);
        CHECK(connection_pending_until(c) == 42);
        CHECK_STREQ(connection_code_verifier(c), "verifier");
        CHECK_STREQ(connection_auth_state(c), "state");
        CHECK_STREQ(connection_username(c), "bob");
        CHECK(!c->rare);

        /* the end of the authorization keeps a password grant's username */
        connection_clear_pending_auth(c);
        CHECK(c->pending);
        CHECK(!connection_state_hash(c) && !connection_code_verifier(c) && !connection_auth_state(c));
        CHECK(connection_pending_until(c) == 0);
        CHECK_STREQ(connection_username(c), "bob");
        /* the last field gone: the part goes */
        CHECK_EQ_INT(connection_set_username(c, NULL), 0);
        CHECK(!c->pending);

        /* each field alone keeps it */
        CHECK_EQ_INT(connection_set_pending_until(c, 7), 0);
        CHECK(c->pending);
        CHECK_EQ_INT(connection_set_pending_until(c, 0), 0);
        CHECK(!c->pending);
        CHECK_EQ_INT(connection_set_auth_state(c, strdup("s")), 0);
        CHECK(c->pending);
        CHECK_EQ_INT(connection_set_auth_state(c, NULL), 0);
        CHECK(!c->pending);
        connection_free(c);
}

TEST(device_part_hangs_off_pending) {
        Connection *c = connection_new("c1");
        char *code = strdup("ABCD-EFGH"), *uri = strdup("https://example.com/device");

        CHECK(c && code && uri);
        if (!c || !code || !uri)
                goto out;
        CHECK_EQ_INT(connection_set_device(c, 5 * USEC_PER_SEC, &code, &uri, NULL), 0);
        CHECK(!code && !uri);   /* taken */
        CHECK(c->pending);
        CHECK(connection_device_pending(c));
        CHECK(connection_device_interval(c) == 5 * USEC_PER_SEC);
        CHECK_STREQ(connection_device(c)->user_code, "ABCD-EFGH");
        /* the device_code is the code_verifier: both go at the end */
        CHECK_EQ_INT(connection_set_code_verifier(c, strdup("device-code")), 0);
        connection_clear_pending_auth(c);
        CHECK(c->pending && connection_device_pending(c));
        connection_clear_device(c);
        CHECK(!c->pending);
        CHECK(connection_device_interval(c) == 0);
        /* a device part alone (a loaded row) is freed with the connection */
        CHECK_EQ_INT(connection_set_device(c, USEC_PER_SEC, NULL, NULL, NULL), 0);
        CHECK(c->pending && connection_device_pending(c));
out:
        free(code);
        free(uri);
        connection_free(c);
}

TEST(rare_part_only_while_a_field_is_set) {
        Connection *c = connection_new("c1");
        json_t *params = json_pack("{s:s}", "tenant", "contoso"), *md = json_pack("{s:s}", "realm", "1");
        char *prev;

        CHECK(c && params && md);
        if (!c || !params || !md)
                goto out;
        CHECK(!connection_last_error(c) && !connection_previous_identity(c) && !connection_params(c));
        CHECK(!connection_metadata(c) && connection_rt_warned(c) == 0);
        CHECK_EQ_INT(connection_set_last_error(c, strdup("HTTP 400")), 0);
        CHECK(c->rare && !c->pending);
        CHECK_STREQ(connection_last_error(c), "HTTP 400");
        CHECK_EQ_INT(connection_set_params(c, json_incref(params)), 0);
        CHECK_EQ_INT(connection_set_metadata(c, json_incref(md)), 0);
        CHECK_EQ_INT(connection_set_previous_identity(c, strdup("alice")), 0);
        CHECK_EQ_INT(connection_set_rt_warned(c, 99), 0);
        CHECK(connection_params(c) == params && connection_metadata(c) == md);
        CHECK(params->refcount == 2 && md->refcount == 2);
        CHECK(connection_rt_warned(c) == 99);
        CHECK_EQ_INT(connection_set_last_error(c, NULL), 0);
        CHECK_EQ_INT(connection_set_params(c, NULL), 0);
        CHECK(params->refcount == 1);
        CHECK_EQ_INT(connection_set_metadata(c, NULL), 0);
        CHECK(md->refcount == 1);
        CHECK_EQ_INT(connection_set_rt_warned(c, 0), 0);
        CHECK(c->rare);
        prev = connection_take_previous_identity(c);
        CHECK_STREQ(prev, "alice");
        free(prev);
        CHECK(!c->rare);
        CHECK(!connection_take_previous_identity(c));
        /* freed with the connection, references dropped */
        CHECK_EQ_INT(connection_set_params(c, json_incref(params)), 0);
        CHECK(params->refcount == 2);
        c = connection_free(c);
        CHECK(params->refcount == 1);
out:
        json_decref(params);
        json_decref(md);
        connection_free(c);
}

TEST(secrets_wiped_when_freed) {
        Connection *c = connection_new("c1");

        CHECK(c);
        if (!c)
                return;
        /* replaced */
        CHECK_EQ_INT(connection_set_code_verifier(c, watch("verifier-one")), 0);
        CHECK_EQ_INT(connection_set_code_verifier(c, strdup("verifier-two")), 0);
        CHECK_EQ_INT(watched_freed, 1);
        /* cleared, the part freed with it */
        CHECK_EQ_INT(connection_set_auth_state(c, watch("plain-state")), 0);
        CHECK_EQ_INT(connection_set_auth_state(c, NULL), 0);
        CHECK_EQ_INT(watched_freed, 1);
        /* the end of the authorization */
        CHECK_EQ_INT(connection_set_auth_state(c, watch("plain-state-2")), 0);
        connection_clear_pending_auth(c);
        CHECK_EQ_INT(watched_freed, 1);
        CHECK(!c->pending);
        /* the connection freed */
        CHECK_EQ_INT(connection_set_code_verifier(c, watch("password")), 0);
        connection_free(c);
        CHECK_EQ_INT(watched_freed, 1);
}

TEST(out_of_memory_changes_nothing) {
        Connection *c = connection_new("c1");
        json_t *params = json_pack("{s:s}", "tenant", "contoso");
        char *user_code;

        CHECK(c && params);
        if (!c || !params)
                goto out;
        /* no part yet: the value given is freed (a secret wiped), nothing set */
        fail_callocs = 1;
        CHECK_EQ_INT(connection_set_state_hash(c, strdup("hash")), -ENOMEM);
        CHECK(!c->pending && !connection_state_hash(c));
        fail_callocs = 1;
        CHECK_EQ_INT(connection_set_code_verifier(c, watch("secret-verifier")), -ENOMEM);
        CHECK_EQ_INT(watched_freed, 1);
        CHECK(!c->pending);
        fail_callocs = 1;
        CHECK_EQ_INT(connection_set_pending_until(c, 42), -ENOMEM);
        CHECK(connection_pending_until(c) == 0);
        fail_callocs = 1;
        CHECK_EQ_INT(connection_set_params(c, json_incref(params)), -ENOMEM);
        CHECK(params->refcount == 1 && !c->rare);
        fail_callocs = 1;
        CHECK_EQ_INT(connection_set_rt_warned(c, 5), -ENOMEM);
        CHECK(!c->rare);
        /* clearing needs no memory */
        fail_callocs = 1;
        CHECK_EQ_INT(connection_set_last_error(c, NULL), 0);
        fail_callocs = 0;
        /* the device part: nothing taken */
        user_code = strdup("WXYZ");
        fail_callocs = 1;
        CHECK_EQ_INT(connection_set_device(c, USEC_PER_SEC, &user_code, NULL, NULL), -ENOMEM);
        CHECK(user_code && !c->pending);
        fail_callocs = 0;
        free(user_code);
        /* a part that is there: setting cannot fail */
        CHECK_EQ_INT(connection_set_state_hash(c, strdup("hash")), 0);
        fail_callocs = 1;
        CHECK_EQ_INT(connection_set_code_verifier(c, strdup("v")), 0);
        CHECK_EQ_INT(connection_set_pending_until(c, 1), 0);
        fail_callocs = 0;
        CHECK_STREQ(connection_code_verifier(c), "v");
        /* a part set aside beforehand (a staged commit's metadata) */
        {
                ConnRare *spare = calloc(1, sizeof(ConnRare));

                CHECK(spare);
                connection_give_rare(c, &spare);
                CHECK(!spare && c->rare);
                fail_callocs = 1;
                CHECK_EQ_INT(connection_set_metadata(c, json_incref(params)), 0);
                fail_callocs = 0;
                CHECK(connection_metadata(c) == params);
                /* one there already: the spare stays the caller's */
                spare = calloc(1, sizeof(ConnRare));
                connection_give_rare(c, &spare);
                CHECK(spare);
                free(spare);
        }
out:
        fail_callocs = 0;
        json_decref(params);
        connection_free(c);
}

TEST(image_has_parts_of_its_own) {
        Connection *c = connection_new("c1");
        ConnImage img;

        CHECK(c);
        if (!c)
                return;
        CHECK_EQ_INT(connection_set_last_error(c, strdup("HTTP 503")), 0);
        CHECK_EQ_INT(connection_set_state_hash(c, strdup("hash")), 0);
        refresher_image(c, &img);
        CHECK(img.conn.pending == &img.pending && img.conn.rare == &img.rare);
        /* the name is not in the struct's copy: the image points at it */
        CHECK(img.name == c->name);
        CHECK_STREQ(img.name, "c1");
        CHECK_STREQ(connection_last_error(&img.conn), "HTTP 503");
        CHECK_STREQ(connection_state_hash(&img.conn), "hash");
        /* a field changed in the image stays there */
        img.rare.last_error = NULL;
        img.pending.state_hash = NULL;
        CHECK_STREQ(connection_last_error(c), "HTTP 503");
        CHECK_STREQ(connection_state_hash(c), "hash");
        /* no parts: empty ones in the image */
        CHECK_EQ_INT(connection_set_last_error(c, NULL), 0);
        CHECK_EQ_INT(connection_set_state_hash(c, NULL), 0);
        CHECK(!c->pending && !c->rare);
        refresher_image(c, &img);
        CHECK(!connection_last_error(&img.conn) && !connection_state_hash(&img.conn));
        connection_free(c);
}

/* The identity: inline after the name while it fits the room kept
 * there, else out of line in ConnRare; an image reads it from its own
 * ConnRare (the copy has no name[]). */
TEST(identity_inline_while_it_fits) {
        Connection *c = connection_new_with("c1", "alice@example.com", 0), *d = NULL;
        char *s;
        ConnImage img;

        CHECK(c);
        if (!c)
                return;
        CHECK(c->identity_inline && c->identity_room == sizeof "alice@example.com");
        CHECK_STREQ(connection_identity(c), "alice@example.com");
        CHECK_STREQ(c->name, "c1");
        CHECK(!c->rare);
        /* shorter: stays inline */
        CHECK_EQ_INT(connection_set_identity(c, strdup("bob@example.com")), 0);
        CHECK(c->identity_inline && !c->rare);
        CHECK_STREQ(connection_identity(c), "bob@example.com");
        CHECK_STREQ(c->name, "c1");
        /* longer: out of line, in ConnRare */
        CHECK_EQ_INT(connection_set_identity(c, strdup("someone.else@example.com")), 0);
        CHECK(!c->identity_inline && c->rare);
        CHECK_STREQ(connection_identity(c), "someone.else@example.com");
        /* the image has it in its own ConnRare */
        refresher_image(c, &img);
        CHECK(!img.conn.identity_inline);
        CHECK_STREQ(connection_identity(&img.conn), "someone.else@example.com");
        /* back inline: the ConnRare goes */
        CHECK_EQ_INT(connection_set_identity(c, strdup("carol@example.com")), 0);
        CHECK(c->identity_inline && !c->rare);
        refresher_image(c, &img);
        CHECK(!img.conn.identity_inline);
        CHECK_STREQ(connection_identity(&img.conn), "carol@example.com");
        /* out of memory for the ConnRare: the old one is kept */
        fail_callocs = 1;
        CHECK_EQ_INT(connection_set_identity(c, strdup("a.much.longer.identity@example.com")), -ENOMEM);
        fail_callocs = 0;
        CHECK_STREQ(connection_identity(c), "carol@example.com");
        /* not with a ConnRare set aside */
        {
                ConnRare *spare = calloc(1, sizeof(ConnRare));

                CHECK(spare && connection_identity_fits(c, "x") &&
                      !connection_identity_fits(c, "a.much.longer.identity@example.com"));
                connection_give_rare(c, &spare);
                CHECK(!spare && c->rare);
                fail_callocs = 1;
                CHECK_EQ_INT(connection_set_identity(c, strdup("a.much.longer.identity@example.com")), 0);
                fail_callocs = 0;
                CHECK_STREQ(connection_identity(c), "a.much.longer.identity@example.com");
        }
        /* cleared: neither */
        CHECK_EQ_INT(connection_set_identity(c, NULL), 0);
        CHECK(!connection_identity(c) && !c->identity_inline && !c->rare);

        /* no room kept: out of line from the start; a new API connection
         * keeps CONN_IDENTITY_ROOM */
        d = connection_new("d");
        CHECK(d && d->identity_room == 0);
        if (d) {
                s = strdup("x");
                CHECK_EQ_INT(connection_set_identity(d, s), 0);
                CHECK(!d->identity_inline && d->rare);
                CHECK_STREQ(connection_identity(d), "x");
        }
        connection_free(d);
        d = connection_new_with("d", NULL, CONN_IDENTITY_ROOM);
        CHECK(d && d->identity_room == CONN_IDENTITY_ROOM && !connection_identity(d));
        if (d) {
                CHECK_EQ_INT(connection_set_identity(d, strdup("dave@example.com")), 0);
                CHECK(d->identity_inline && !d->rare);
                CHECK_STREQ(connection_identity(d), "dave@example.com");
                CHECK_STREQ(d->name, "d");
        }
        connection_free(d);
        connection_free(c);
        /* longer than the most room there is: out of line */
        {
                char big[400];

                memset(big, 'i', sizeof big - 1);
                big[sizeof big - 1] = 0;
                c = connection_new_with("c2", big, 0);
                CHECK(c && !c->identity_inline && c->rare);
                if (c)
                        CHECK_STREQ(connection_identity(c), big);
                connection_free(c);
        }
}
