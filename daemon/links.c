/* SPDX-License-Identifier: MIT */
#include <jansson.h>
#include <unistd.h>

#include "common/api.h"
#include "common/log.h"
#include "common/util.h"
#include "daemon/callback.h"
#include "daemon/links-db.h"
#include "daemon/links.h"
#include "daemon/store-wait.h"

/* Ids each node keeps reserved on PostgreSQL (links_id): a mint takes
 * one without a round trip, and two nodes never give the same. */
#define LINK_IDS_MAX 16

/* How long a page of the callback listener waits for the database (a link
 * another node made, the click's claim) before it says to try again. */
#define LINK_DB_WAIT (10 * USEC_PER_SEC)

struct Links {
        Manager *manager;
        Link *head, *tail;          /* oldest first (by id) */
        size_t n;
        int64_t next_id;            /* SQLite */
        /* PostgreSQL: the table is shared with other nodes; memory is a
         * cache that every listing, revocation and page refreshes first */
        bool shared;
        int64_t ids[LINK_IDS_MAX];
        size_t n_ids;
        bool refilling;
};

/* ---- rows ------------------------------------------------------------------ */

typedef enum LinkOp {
        LINK_OP_INSERT,
        LINK_OP_MARK,
} LinkOp;

typedef struct LinkWrite {
        LinkOp op;
        LinkMark mark;
        int64_t id;
        usec_t at;                  /* used, revoked; delete: expired before */
        Link row;                   /* insert: strings owned */
} LinkWrite;

static void link_write_free(void *data) {
        LinkWrite *w = data;

        if (!w)
                return;
        link_strings_free(&w->row);
        explicit_wipe(w->row.hash, sizeof w->row.hash);
        free(w);
}

/* On the writer thread, inside its transaction. */
static int link_write_run(Store *s, void *data) {
        LinkWrite *w = data;
        int r;

        if (w->op == LINK_OP_INSERT)
                return links_db_insert(s, &w->row);
        r = links_db_mark(s, w->mark, w->id, w->at);
        return r < 0 ? r : 0;
}

static void link_write_done(int result, const char *error, void *userdata _unused_) {
        if (result < 0)
                log_warning("Failed to store a re-authorization link change: %s", error ?: "unknown error");
}

static int link_queue(Manager *m, LinkWrite *w, store_done_fn fn, void *userdata) {
        if (!m->writer) {
                link_write_free(w);
                return -ESHUTDOWN;
        }
        return store_writer_custom(m->writer, link_write_run, w, link_write_free, fn ?: link_write_done,
                                   fn ? userdata : NULL);
}

static int link_queue_mark(Manager *m, LinkMark op, int64_t id, usec_t at, store_done_fn fn, void *userdata) {
        LinkWrite *w = new0(LinkWrite, 1);

        if (!w)
                return -ENOMEM;
        w->op = LINK_OP_MARK;
        w->mark = op;
        w->id = id;
        w->at = at;
        return link_queue(m, w, fn, userdata);
}

/* ---- the list ------------------------------------------------------------ */

static void links_remove(Links *L, Link *l) {
        if (l->prev)
                l->prev->next = l->next;
        else
                L->head = l->next;
        if (l->next)
                l->next->prev = l->prev;
        else
                L->tail = l->prev;
        L->n--;
        link_free(l);
}

/* Forgets links expired more than LINK_KEEP_AFTER_EXPIRY ago (at most
 * LINKS_MAX: the list is that long at most). */
static void links_purge(Manager *m) {
        Links *L = m->links;
        usec_t before = usec_sub(now(CLOCK_REALTIME), LINK_KEEP_AFTER_EXPIRY);
        bool any = false;

        for (Link *l = L->head, *next; l; l = next) {
                next = l->next;
                if (l->expires_at < before) {
                        links_remove(L, l);
                        any = true;
                }
        }
        if (any)
                (void) link_queue_mark(m, LINK_MARK_DELETE_OLD, 0, before, NULL, NULL);
}

static Link *links_find_hash(Links *L, const char *hash) {
        for (Link *l = L->head; l; l = l->next)
                if (streq(l->hash, hash))
                        return l;
        return NULL;
}

static Link *links_find_id(Links *L, int64_t id) {
        for (Link *l = L->head; l; l = l->next)
                if (l->id == id)
                        return l;
        return NULL;
}

static const char *link_state(const Link *l, usec_t t) {
        return l->used_at ? "used" : l->revoked_at ? "revoked" : t >= l->expires_at ? "expired" : "unused";
}

static bool link_live(const Link *l, usec_t t) {
        return !l->used_at && !l->revoked_at && t < l->expires_at;
}

/* Puts l (a row read from the table) into the list, in id order: a link
 * this node holds takes the row's use and revocation (another node's),
 * never losing its own (a change of its own may still be queued). */
static void links_merge(Links *L, Link *l) {
        Link *at;

        for (at = L->tail; at && at->id > l->id; at = at->prev)
                ;
        if (at && at->id == l->id) {
                at->used_at = at->used_at ?: l->used_at;
                at->revoked_at = at->revoked_at ?: l->revoked_at;
                link_free(l);
                return;
        }
        if (L->n >= LINKS_MAX) {
                link_free(l);
                return;
        }
        /* after at (NULL: first) */
        l->prev = at;
        l->next = at ? at->next : L->head;
        if (l->next)
                l->next->prev = l;
        else
                L->tail = l;
        if (at)
                at->next = l;
        else
                L->head = l;
        L->n++;
}

typedef struct LoadAll {
        Links *L;
        usec_t before;
        bool old;
        int64_t max_id;
} LoadAll;

static int load_one(Link *l, void *userdata) {
        LoadAll *a = userdata;

        a->max_id = MAX(a->max_id, l->id);
        if (l->expires_at < a->before) {
                a->old = true;
                link_free(l);
                return 0;
        }
        links_merge(a->L, l);
        return 0;
}

/* PostgreSQL: reserves LINK_IDS_MAX ids in the background when fewer than
 * half are left. */
typedef struct IdRefill {
        Links *L;
        int64_t ids[LINK_IDS_MAX];
} IdRefill;

static int id_refill_run(Store *s, void *data) {
        IdRefill *x = data;

        return links_db_reserve_ids(s, x->ids, LINK_IDS_MAX);
}

static void id_refill_done(int result, const char *error, void *userdata) {
        IdRefill *x = userdata;
        Links *L = x->L;

        L->refilling = false;
        if (result < 0)
                log_warning("Cannot reserve ids for re-authorization links: %s", error ?: "unknown error");
        else
                for (size_t i = 0; i < LINK_IDS_MAX && L->n_ids < LINK_IDS_MAX; i++)
                        L->ids[L->n_ids++] = x->ids[i];
        free(x);
}

static void ids_refill(Manager *m) {
        Links *L = m->links;
        IdRefill *x;

        if (!L || !L->shared || L->refilling || L->n_ids >= LINK_IDS_MAX / 2 || !m->writer)
                return;
        x = new0(IdRefill, 1);
        if (!x)
                return;
        x->L = L;
        if (store_writer_custom(m->writer, id_refill_run, x, NULL, id_refill_done, x) < 0) {
                free(x);
                return;
        }
        L->refilling = true;
}

int links_new(Manager *m, Links **ret) {
        _cleanup_free_ Links *L = NULL;
        LoadAll a = {};
        int r;

        L = new0(Links, 1);
        if (!L)
                return -ENOMEM;
        L->manager = m;
        L->next_id = 1;
        L->shared = !store_sqlite(m->store);
        a.L = L;
        a.before = usec_sub(now(CLOCK_REALTIME), LINK_KEEP_AFTER_EXPIRY);
        /* at the start, before the loop serves anyone: blocking is fine */
        r = links_db_load(m->store, NULL, load_one, &a);
        if (r >= 0 && L->shared) {
                r = links_db_reserve_ids(m->store, L->ids, LINK_IDS_MAX);
                if (r >= 0)
                        L->n_ids = LINK_IDS_MAX;
        }
        if (r < 0) {
                log_error("Failed to read re-authorization links: %s", store_last_error(m->store));
                while (L->head)
                        links_remove(L, L->head);
                return r == -ENOMEM ? r : -EIO;
        }
        L->next_id = a.max_id + 1;
        if (a.old)
                (void) link_queue_mark(m, LINK_MARK_DELETE_OLD, 0, a.before, NULL, NULL);
        *ret = TAKE_PTR(L);
        return 0;
}

Links *links_free(Links *L) {
        if (!L)
                return NULL;
        while (L->head)
                links_remove(L, L->head);
        free(L);
        return NULL;
}

/* ---- minting and revoking ------------------------------------------------ */

static void format_who(char *buf, size_t n, int64_t by, const char *by_name) {
        if (by < 0)
                snprintf(buf, n, "the broker");
        else
                snprintf(buf, n, "uid %lld%s%s%s", (long long) by, by_name ? " (" : "", by_name ?: "",
                         by_name ? ")" : "");
}

static bool by_name_valid(const char *s) {
        size_t n = strlen(s);

        return n > 0 && n <= LINK_BY_NAME_MAX &&
               strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._@-") == n;
}

int links_mint(Manager *m, const char *name, const char *provider, const char *scope, int64_t by,
               const char *by_name, usec_t valid, char **ret_url, int64_t *ret_id, const char **ret_error,
               store_done_fn fn, void *userdata) {
        Links *L = m->links;
        _cleanup_secret_ char *token = NULL;
        _cleanup_free_ char *url = NULL;
        AuthorizeRequest req = { .name = name };
        const Provider *p;
        Connection *c;
        LinkWrite *w;
        Link *l;
        char who[LINK_BY_NAME_MAX + 48], until[64];
        usec_t t = now(CLOCK_REALTIME);
        int r;

        *ret_error = NULL;
        if (!L)
                return -ESHUTDOWN;
        if (!connection_name_valid(name)) {
                *ret_error = "invalid connection name";
                return -EINVAL;
        }
        c = manager_get(m, name);
        if (!c && !provider) {
                *ret_error = "no such connection: give --provider to make a link that creates it";
                return -ENOENT;
        }
        if (c && provider && !streq(c->names->provider, provider)) {
                *ret_error = "the connection exists with another provider";
                return -EEXIST;
        }
        req.provider = provider ?: c->names->provider;
        p = broker_config_find_provider(m->config, req.provider);
        if (!p) {
                *ret_error = "unknown provider";
                return -ENOENT;
        }
        if (p->grant != GRANT_AUTHORIZATION_CODE || manager_wants_device(p, &req)) {
                *ret_error = "the provider's grant needs no browser: a link is for the authorization code flow";
                return -EOPNOTSUPP;
        }
        if (by_name && !by_name_valid(by_name))
                by_name = NULL;
        if (valid == 0)
                valid = LINK_VALID_DEFAULT;
        if (valid > LINK_VALID_MAX) {
                *ret_error = "a link is valid for 30 days at most";
                return -ERANGE;
        }
        links_purge(m);
        if (L->n >= LINKS_MAX) {
                *ret_error = "too many links: unlink some, or wait until they expire";
                return -E2BIG;
        }

        if (L->shared && L->n_ids == 0) {
                ids_refill(m);
                *ret_error = "no link id is reserved yet (the database is slow or away): try again";
                return -EAGAIN;
        }

        r = random_token(LINK_TOKEN_BYTES, &token);
        if (r < 0)
                return r;
        l = new0(Link, 1);
        w = new0(LinkWrite, 1);
        if (!l || !w || link_token_hash(token, l->hash) < 0 ||
            asprintf(&url, "%s" LINK_PATH "%s", m->config->public_url, token) < 0) {
                url = NULL;
                free(w);
                link_free(l);
                return -ENOMEM;
        }
        l->id = L->shared ? L->ids[0] : L->next_id;
        l->connection = strdup(name);
        l->provider = strdup(p->name);
        l->scope = scope ? strdup(scope) : NULL;
        l->by_name = by_name ? strdup(by_name) : NULL;
        l->creates = !c;
        l->by = by;
        l->created_at = t;
        l->expires_at = usec_add(t, valid);
        w->op = LINK_OP_INSERT;
        w->row = *l;
        w->row.next = w->row.prev = NULL;
        w->row.connection = strdup(name);
        w->row.provider = strdup(p->name);
        w->row.scope = scope ? strdup(scope) : NULL;
        w->row.by_name = by_name ? strdup(by_name) : NULL;
        if (!l->connection || !l->provider || (scope && !l->scope) || (by_name && !l->by_name) ||
            !w->row.connection || !w->row.provider || (scope && !w->row.scope) || (by_name && !w->row.by_name)) {
                link_write_free(w);
                link_free(l);
                return -ENOMEM;
        }
        r = link_queue(m, w, fn, userdata);
        if (r < 0) {
                link_free(l);
                *ret_error = "cannot store the link";
                return r;
        }
        if (L->shared) {
                memmove(L->ids, L->ids + 1, (L->n_ids - 1) * sizeof L->ids[0]);
                L->n_ids--;
                ids_refill(m);
        } else
                L->next_id++;
        links_merge(L, l);
        format_who(who, sizeof who, by, by_name);
        (void) format_timestamp(until, sizeof until, l->expires_at);
        manager_event_named(m, name, "link-created", "re-authorization link %lld made by %s, valid until %s",
                            (long long) l->id, who, until);
        *ret_url = TAKE_PTR(url);
        if (ret_id)
                *ret_id = l->id;
        return 0;
}

static int link_revoke(Manager *m, Link *l, const char *who, store_done_fn fn, void *userdata) {
        int r;

        l->revoked_at = now(CLOCK_REALTIME);
        r = link_queue_mark(m, LINK_MARK_REVOKED, l->id, l->revoked_at, fn, userdata);
        manager_event_named(m, l->connection, "link-revoked", "re-authorization link %lld revoked by %s",
                            (long long) l->id, who);
        return r;
}

void links_mint_automatic(Manager *m, Connection *c, char **ret_url) {
        const char *error = NULL;
        usec_t t = now(CLOCK_REALTIME);
        int64_t id;
        int r;

        *ret_url = NULL;
        if (!m->links || !m->config->public_url_set)
                return;
        {
                const Provider *p = manager_provider(m, c);
                AuthorizeRequest req = { .name = c->name, .provider = c->names->provider };

                if (!p || p->grant != GRANT_AUTHORIZATION_CODE || manager_wants_device(p, &req))
                        return;
        }
        /* One automatic link a connection: the newest. */
        for (Link *l = m->links->head; l; l = l->next)
                if (l->by < 0 && link_live(l, t) && streq(l->connection, c->name))
                        (void) link_revoke(m, l, "the broker (replaced by a newer link)", NULL, NULL);
        r = links_mint(m, c->name, NULL, NULL, -1, NULL, 0, ret_url, &id, &error, NULL, NULL);
        if (r < 0)
                log_warning("%s: cannot make a re-authorization link: %s", c->name, error ?: strerror(-r));
}

/* ---- the socket API ---------------------------------------------------- */

bool links_api_path(const char *url) {
        return streq(url, "/v1/links") || startswith(url, "/v1/links/");
}

static json_t *link_json(const Link *l, usec_t t) {
        char created[64], expires[64], at[64];
        json_t *j;

        (void) format_timestamp(created, sizeof created, l->created_at);
        (void) format_timestamp(expires, sizeof expires, l->expires_at);
        j = json_pack("{s:I, s:s, s:s, s:s?, s:s, s:s, s:s, s:b}", "id", (json_int_t) l->id, "connection",
                      l->connection, "provider", l->provider, "scope", l->scope, "state", link_state(l, t),
                      "created_at", created, "expires_at", expires, "creates", l->creates);
        if (!j)
                return NULL;
        if (l->by >= 0)
                json_object_set_new(j, "created_by", json_integer((json_int_t) l->by));
        else
                json_object_set_new(j, "created_by", json_null());
        if (l->by_name)
                json_object_set_new(j, "created_by_name", json_string(l->by_name));
        if (l->used_at)
                json_object_set_new(j, "used_at", json_string(format_timestamp(at, sizeof at, l->used_at)));
        if (l->revoked_at)
                json_object_set_new(j, "revoked_at", json_string(format_timestamp(at, sizeof at, l->revoked_at)));
        return j;
}

static char *error_json(const char *error, const char *desc) {
        json_t *j = json_pack("{s:s, s:s}", "error", error, "error_description", desc);
        char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;

        json_decref(j);
        return s;
}

static char *dump_json(json_t *j) {
        char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;

        json_decref(j);
        return s;
}

#define API_ANSWER(status, body) (*ret_status = (status), *ret_body = (body), 0)

static int api_list(Manager *m, const char *connection, unsigned *ret_status, char **ret_body) {
        usec_t t = now(CLOCK_REALTIME);
        json_t *a = json_array();

        if (connection && !connection_name_valid(connection))
                return API_ANSWER(400, error_json(API_ERR_INVALID_REQUEST, "invalid connection name"));
        links_purge(m);
        for (Link *l = m->links->head; a && l; l = l->next)
                if (!connection || streq(l->connection, connection))
                        json_array_append_new(a, link_json(l, t));
        return API_ANSWER(200, dump_json(json_pack("{s:o}", "links", a)));
}

static int api_mint(Manager *m, const char *body, size_t body_len, uid_t uid, unsigned *ret_status,
                    char **ret_body, store_done_fn fn, void *userdata) {
        json_t *root, *v;
        json_error_t jerr;
        const char *name = NULL, *provider = NULL, *scope = NULL, *by_name = NULL, *error = NULL;
        _cleanup_secret_ char *url = NULL;
        usec_t valid = 0;
        int64_t id = 0;
        int k;

        root = body ? json_loadb(body, body_len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
        if (!root || !json_is_object(root) || !json_is_string(json_object_get(root, "name"))) {
                json_decref(root);
                return API_ANSWER(400, error_json(API_ERR_INVALID_REQUEST, "body must be a JSON object with a name"));
        }
        name = json_string_value(json_object_get(root, "name"));
        v = json_object_get(root, "provider");
        if (v && !(provider = json_string_value(v)))
                goto bad;
        v = json_object_get(root, "scope");
        if (v && (!(scope = json_string_value(v)) || strlen(scope) > 2048 || strpbrk(scope, "\r\n\t\"\\")))
                goto bad;
        if (scope && !*scope)
                scope = NULL;
        v = json_object_get(root, "requested_by");
        if (v && !(by_name = json_string_value(v)))
                goto bad;
        v = json_object_get(root, "valid");
        if (v) {
                if (!json_is_integer(v) || json_integer_value(v) < 1 ||
                    (usec_t) json_integer_value(v) > LINK_VALID_MAX / USEC_PER_SEC) {
                        json_decref(root);
                        return API_ANSWER(400, error_json(API_ERR_INVALID_REQUEST,
                                                          "valid is a number of seconds from 1 to 2592000 (30 days)"));
                }
                valid = (usec_t) json_integer_value(v) * USEC_PER_SEC;
        }
        k = links_mint(m, name, provider, scope, (int64_t) uid, by_name, valid, &url, &id, &error, fn, userdata);
        json_decref(root);
        if (k < 0) {
                unsigned status = k == -ENOENT ? 404 : k == -EEXIST || k == -E2BIG ? 409 : k == -EOPNOTSUPP ? 422
                                : k == -EINVAL || k == -ERANGE ? 400 : k == -EAGAIN ? 503 : 500;
                const char *code = status == 404 ? API_ERR_NOT_FOUND : status == 409 ? API_ERR_CONFLICT
                                 : status == 422 ? API_ERR_UNSUPPORTED : status == 400 ? API_ERR_INVALID_REQUEST
                                 : status == 503 ? API_ERR_UNAVAILABLE : API_ERR_SERVER;
                return API_ANSWER(status, error_json(code, error ?: "cannot make the link"));
        }
        {
                Link *l = links_find_id(m->links, id);
                json_t *j = l ? link_json(l, now(CLOCK_REALTIME)) : NULL;

                if (j)
                        json_object_set_new(j, "url", json_string(url));
                *ret_status = 201;
                *ret_body = dump_json(j);
        }
        return 1;
bad:
        json_decref(root);
        return API_ANSWER(400, error_json(API_ERR_INVALID_REQUEST, "provider, scope and requested_by are strings"));
}

static int api_unlink(Manager *m, const char *arg, uid_t uid, unsigned *ret_status, char **ret_body,
                      store_done_fn fn, void *userdata) {
        usec_t t = now(CLOCK_REALTIME);
        json_t *ids = json_array();
        Link *last = NULL, *byid = NULL;
        char who[48];
        size_t n = strlen(arg);

        snprintf(who, sizeof who, "uid %u", (unsigned) uid);
        if (n > 0 && n <= 18 && strspn(arg, "0123456789") == n)
                byid = links_find_id(m->links, strtoll(arg, NULL, 10));
        if (byid) {
                if (byid->used_at) {
                        json_decref(ids);
                        return API_ANSWER(409, error_json(API_ERR_CONFLICT, "the link was used already"));
                }
                if (!byid->revoked_at)
                        last = byid;
                json_array_append_new(ids, json_integer((json_int_t) byid->id));
        } else if (connection_name_valid(arg)) {
                for (Link *l = m->links->head; l; l = l->next)
                        if (streq(l->connection, arg) && link_live(l, t)) {
                                json_array_append_new(ids, json_integer((json_int_t) l->id));
                                last = l;
                        }
                if (!last) {
                        json_decref(ids);
                        return API_ANSWER(404, error_json(API_ERR_NOT_FOUND,
                                                          "no such link, and no unused link of a connection by that name"));
                }
        } else {
                json_decref(ids);
                return API_ANSWER(404, error_json(API_ERR_NOT_FOUND, "no such link"));
        }
        *ret_status = 200;
        *ret_body = dump_json(json_pack("{s:o}", "revoked", ids));
        if (!last)
                return 0;   /* revoked already */
        if (byid)
                return link_revoke(m, byid, who, fn, userdata) < 0 ? API_ANSWER(500, error_json(API_ERR_SERVER, "cannot store the change")) : 1;
        for (Link *l = m->links->head; l; l = l->next)
                if (streq(l->connection, arg) && link_live(l, t) && link_revoke(m, l, who, l == last ? fn : NULL,
                                                                                 l == last ? userdata : NULL) < 0) {
                        free(*ret_body);
                        return API_ANSWER(500, error_json(API_ERR_SERVER, "cannot store the change"));
                }
        return 1;
}

static int links_api_now(Manager *m, const char *method, const char *url, const char *query_connection,
                         const char *body, size_t body_len, uid_t uid, unsigned *ret_status, char **ret_body,
                         store_done_fn fn, void *userdata) {
        const char *arg = startswith(url, "/v1/links/");

        if (!m->links)
                return API_ANSWER(503, error_json(API_ERR_UNAVAILABLE, "shutting down"));
        if (!arg || !*arg) {
                if (streq(method, "GET") || streq(method, "HEAD"))
                        return api_list(m, query_connection, ret_status, ret_body);
                if (streq(method, "POST"))
                        return api_mint(m, body, body_len, uid, ret_status, ret_body, fn, userdata);
                return API_ANSWER(405, error_json(API_ERR_METHOD, "method not allowed"));
        }
        if (strchr(arg, '/'))
                return API_ANSWER(404, error_json(API_ERR_NOT_FOUND, "no such route"));
        if (streq(method, "DELETE"))
                return api_unlink(m, arg, uid, ret_status, ret_body, fn, userdata);
        return API_ANSWER(405, error_json(API_ERR_METHOD, "method not allowed"));
}

/* PostgreSQL: other nodes mint, use and revoke links in the same table.
 * Every API call first reads it on the writer's thread (after this
 * node's own queued changes), merges it into memory, then runs as on
 * SQLite. At most LINKS_MAX rows: one round trip. */
typedef struct ApiCall {
        Manager *manager;
        char *method, *url, *query, *body;
        size_t body_len;
        uid_t uid;
        store_done_fn fn;
        links_answer_fn answer;
        void *userdata;
        Link *loaded;               /* the writer's, then the loop's: next-linked */
} ApiCall;

static void loaded_free(Link **list) {
        while (*list) {
                Link *l = *list;

                *list = l->next;
                link_free(l);
        }
}

static void api_call_free(ApiCall *c) {
        if (!c)
                return;
        free(c->method);
        free(c->url);
        free(c->query);
        if (c->body)
                explicit_wipe(c->body, c->body_len);
        free(c->body);
        loaded_free(&c->loaded);
        free(c);
}

static int collect(Link *l, void *userdata) {
        Link **list = userdata;

        l->next = *list;   /* newest first: merged from the back */
        *list = l;
        return 0;
}

static int api_call_run(Store *s, void *data) {
        ApiCall *c = data;

        loaded_free(&c->loaded);   /* a retried batch starts again */
        return links_db_load(s, NULL, collect, &c->loaded);
}

/* Merges a next-linked list of rows into memory (none left in it). */
static void merge_loaded(Manager *m, Link **list) {
        while (*list) {
                Link *l = *list;

                *list = l->next;
                l->next = NULL;
                if (m->links)
                        links_merge(m->links, l);
                else
                        link_free(l);
        }
}

static void api_call_done(int result, const char *error, void *userdata) {
        ApiCall *c = userdata;
        Manager *m = c->manager;
        unsigned status = 500;
        char *body = NULL;
        int k = 0;

        if (result < 0) {
                log_warning("Cannot read re-authorization links: %s", error ?: "unknown error");
                status = 503;
                body = error_json(API_ERR_UNAVAILABLE, "cannot read the links from the database");
        } else {
                merge_loaded(m, &c->loaded);
                k = links_api_now(m, c->method, c->url, c->query, c->body, c->body_len, c->uid, &status, &body,
                                  c->fn, c->userdata);
        }
        c->answer(status, body, c->userdata);
        if (k <= 0)
                c->fn(0, NULL, c->userdata);   /* the answer is ready: resume */
        api_call_free(c);
}

int links_api(Manager *m, const char *method, const char *url, const char *query_connection, const char *body,
              size_t body_len, uid_t uid, unsigned *ret_status, char **ret_body, store_done_fn fn,
              links_answer_fn answer, void *userdata) {
        ApiCall *c;
        int r;

        if (!m->links || !m->links->shared)
                return links_api_now(m, method, url, query_connection, body, body_len, uid, ret_status, ret_body, fn,
                                     userdata);
        c = new0(ApiCall, 1);
        if (!c || !(c->method = strdup(method)) || !(c->url = strdup(url)) ||
            (query_connection && !(c->query = strdup(query_connection))) ||
            (body && !(c->body = malloc(body_len + 1)))) {
                api_call_free(c);
                return API_ANSWER(500, error_json(API_ERR_SERVER, "out of memory"));
        }
        if (body) {
                memcpy(c->body, body, body_len);
                c->body[body_len] = 0;
        }
        c->manager = m;
        c->body_len = body_len;
        c->uid = uid;
        c->fn = fn;
        c->answer = answer;
        c->userdata = userdata;
        r = m->writer ? store_writer_custom(m->writer, api_call_run, c, NULL, api_call_done, c) : -ESHUTDOWN;
        if (r < 0) {
                api_call_free(c);
                return API_ANSWER(503, error_json(API_ERR_UNAVAILABLE, "shutting down"));
        }
        /* answered by api_call_done() */
        *ret_status = 500;
        *ret_body = NULL;
        return 2;
}

/* ---- the page ------------------------------------------------------------ */

static const char PAGE_STYLE[] =
        "body{font-family:system-ui,sans-serif;max-width:34em;margin:0 auto;padding:1em;line-height:1.4;"
        "color:#222;background:#fafafa}"
        "h1{font-size:1.4em}dl{display:grid;grid-template-columns:max-content 1fr;gap:.3em 1em}"
        "dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}"
        "button{font-size:1.1em;padding:.7em 1.4em;border:0;border-radius:.4em;background:#1a5fb4;color:#fff;"
        "width:100%}"
        ".note{color:#555;font-size:.9em}";

static void page_head(StrBuf *b, const char *title) {
        _cleanup_free_ char *t = html_escape(title);

        strbuf_printf(b,
                      "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                      "<meta name=\"referrer\" content=\"no-referrer\">"
                      "<title>%s</title><style>%s</style></head>\n<body><h1>%s</h1>\n",
                      t ?: "", PAGE_STYLE, t ?: "");
}

static void page_kv(StrBuf *b, const char *k, const char *v) {
        _cleanup_free_ char *ek = html_escape(k), *ev = html_escape(v ?: "");

        strbuf_printf(b, "<dt>%s</dt><dd>%s</dd>\n", ek ?: "", ev ?: "");
}

static char *message_page(const char *title, const char *message, const char *note) {
        _cleanup_free_ char *msg = html_escape(message);
        StrBuf b = {};

        page_head(&b, title);
        strbuf_printf(&b, "<p>%s</p>\n", msg ?: "");
        if (note)
                strbuf_printf(&b, "<p class=\"note\">%s</p>\n", note);
        strbuf_puts(&b, "</body></html>\n");
        return strbuf_steal(&b);
}

static char *error_page(const char *title, const char *message) {
        return message_page(title, message, "Nothing was changed. Ask whoever sent you this link for a new one.");
}

/* "2026-12-10 02:45 UTC": for people, on a phone. */
static const char *human_time(char buf[static 64], usec_t t) {
        char *p;

        (void) format_timestamp(buf, 64, t);
        if ((p = strchr(buf, 'T')))
                *p = ' ';
        if (strlen(buf) >= 20 && buf[16] == ':')
                strcpy(buf + 16, " UTC");
        return buf;
}

static const char *state_for_people(const Connection *c) {
        if (!c)
                return "new connection, not authorized yet";
        switch (c->state) {
        case CONN_ACTIVE: return "active";
        case CONN_PENDING: return "waiting for an authorization";
        case CONN_NEEDS_REAUTH: return "needs re-authorization";
        default: return conn_state_to_string(c->state);
        }
}

static char *link_page(Manager *m, const Link *l, const Connection *c, const Provider *p) {
        char host[256] = "", until[64], who[LINK_BY_NAME_MAX + 48], broker[600];
        const char *scope = l->scope ?: (c && c->names->requested_scope) ? c->names->requested_scope : p->scopes;
        _cleanup_free_ char *title = NULL;
        StrBuf b = {};

        if (gethostname(host, sizeof host - 1) < 0)
                host[0] = 0;
        snprintf(broker, sizeof broker, "tokenbroker%s%s at %s", host[0] ? " on " : "", host, m->config->public_url);
        (void) human_time(until, l->expires_at);
        format_who(who, sizeof who, l->by, l->by_name);
        if (l->by < 0)
                snprintf(who, sizeof who, "the broker, when the connection needed re-authorization");
        if (asprintf(&title, "Authorize %s at %s", l->connection, p->name) < 0)
                title = NULL;
        page_head(&b, title ?: "Authorize");
        strbuf_puts(&b, "<p>A token broker asks you to sign in at the provider below, so that it can act for the "
                        "connection named here again.</p>\n<dl>\n");
        page_kv(&b, "Broker", broker);
        page_kv(&b, "Connection", l->connection);
        page_kv(&b, "Provider", p->name);
        page_kv(&b, "Sign-in at", p->authorize_url);
        page_kv(&b, "Scopes", scope ?: "(the provider's default)");
        page_kv(&b, "State", state_for_people(c));
        page_kv(&b, "Requested by", who);
        page_kv(&b, "Link valid until", until);
        strbuf_puts(&b, "</dl>\n<form method=\"post\"><button type=\"submit\">Continue to ");
        {
                _cleanup_free_ char *pn = html_escape(p->name);
                strbuf_puts(&b, pn ?: "");
        }
        strbuf_puts(&b, "</button></form>\n<p class=\"note\">The link works once. After the button you have a "
                        "few minutes to sign in. If you did not expect this, close the page: nothing happens "
                        "until you press the button.</p>\n</body></html>\n");
        return strbuf_steal(&b);
}

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, char *body, const char *csp,
                               const char *location) {
        struct MHD_Response *resp;
        enum MHD_Result ret;

        if (!body)
                body = strdup("");
        if (!body)
                return MHD_NO;
        resp = MHD_create_response_from_buffer_with_free_callback(strlen(body), body, free);
        if (!resp) {
                free(body);
                return MHD_NO;
        }
        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
        (void) MHD_add_response_header(resp, "Content-Security-Policy", csp);
        (void) MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
        (void) MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
        if (location)
                (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, location);
        ret = MHD_queue_response(conn, status, resp);
        MHD_destroy_response(resp);
        return ret;
}

#define CSP_BASE "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"

static enum MHD_Result respond_error(struct MHD_Connection *conn, unsigned status, const char *title,
                                     const char *message) {
        return respond(conn, status, error_page(title, message), CSP_BASE "; form-action 'none'", NULL);
}

static void link_unclaim(Manager *m, Link *l, usec_t at) {
        if (l->used_at != at)
                return;
        l->used_at = 0;
        (void) link_queue_mark(m, LINK_MARK_UNUSED, l->id, at, NULL, NULL);
}

/* The page for link l (NULL: none) at t, or the click's answer. claimed:
 * the database marked it used at claimed_at for this click (PostgreSQL);
 * undone when the authorization cannot start. */
static enum MHD_Result links_page(Manager *m, struct MHD_Connection *conn, const char *method, Link *l,
                                  bool claimed, usec_t claimed_at, usec_t t) {
        _cleanup_free_ char *origin = NULL, *csp = NULL;
        _cleanup_secret_ char *url = NULL;
        const char *error = NULL;
        const Provider *p;
        Connection *c;
        char at[64];
        int k;

        if (!l) {
                log_debug("callback: a re-authorization link that does not exist was opened.");
                return respond_error(conn, 404, "Unknown link",
                                     "This re-authorization link does not exist (it may be mistyped, or forgotten "
                                     "a day after it expired).");
        }
        if (l->used_at && !claimed) {
                char msg[200];

                snprintf(msg, sizeof msg, "This re-authorization link was already used, at %s. Each link works once.",
                         format_timestamp(at, sizeof at, l->used_at));
                return respond_error(conn, 410, "Link already used", msg);
        }
        if (l->revoked_at)
                return respond_error(conn, 410, "Link revoked", "This re-authorization link was revoked.");
        if (t >= l->expires_at)
                return respond_error(conn, 410, "Link expired", "This re-authorization link has expired.");
        c = manager_get(m, l->connection);
        p = broker_config_find_provider(m->config, l->provider);
        /* A connection of that name made after the link is another one. */
        if (!l->creates && (!c || c->created_at > l->created_at)) {
                if (claimed)
                        link_unclaim(m, l, claimed_at);
                return respond_error(conn, 410, "Connection gone",
                                     "The connection this link was made for no longer exists.");
        }
        if (!p) {
                if (claimed)
                        link_unclaim(m, l, claimed_at);
                return respond_error(conn, 410, "Provider gone", "The provider of this link is no longer configured.");
        }

        if (!streq(method, "POST")) {
                /* The button's form posts here; the redirect that follows
                 * it goes to the provider, which form-action must allow. */
                if (link_url_origin(p->authorize_url, &origin) < 0)
                        origin = NULL;
                if (asprintf(&csp, CSP_BASE "; form-action 'self'%s%s", origin ? " " : "", origin ?: "") < 0)
                        return MHD_NO;
                return respond(conn, 200, link_page(m, l, c, p), csp, NULL);
        }

        /* On PostgreSQL the database's claim decides (another node may
         * have been clicked at the same instant). */
        if (m->links && m->links->shared && !claimed)
                return respond_error(conn, 410, "Link already used",
                                     "This re-authorization link was already used. Each link works once.");

        /* The click: only now are state and PKCE made. */
        {
                AuthorizeRequest req = { .name = l->connection, .provider = l->provider, .scope = l->scope };

                k = manager_authorize(m, &req, &c, &url, &error);
        }
        if (k < 0 || !url) {
                char msg[300];

                if (claimed)
                        link_unclaim(m, l, claimed_at);
                snprintf(msg, sizeof msg, "The authorization could not be started: %s. The link was not used; try "
                                          "again later.", error ?: k < 0 ? strerror(-k) : "the provider needs no browser");
                return respond_error(conn, k == -EBUSY || k == -EEXIST ? 409 : 500, "Cannot start", msg);
        }
        if (!claimed) {
                l->used_at = t;
                (void) link_queue_mark(m, LINK_MARK_USED, l->id, t, NULL, NULL);
        }
        manager_event_named(m, l->connection, "link-used",
                            "re-authorization link %lld used: authorization started at provider %s",
                            (long long) l->id, l->provider);
        return respond(conn, 303, message_page("Continue at the provider", "Continue at the provider's sign-in page.", NULL),
                       CSP_BASE "; form-action 'none'", url);
}

/* PostgreSQL: the link as the table has it now (another node may have
 * made, used or revoked it), and on the button the claim: one
 * conditional UPDATE, so of two nodes clicked at once one starts the
 * authorization and the other says "already used". */
typedef struct ServeOp {
        char hash[65];
        bool claim;
        usec_t at;                  /* the claim's time */
        bool claimed;
        Link *loaded;               /* the writer's, then the loop's */
} ServeOp;

static void serve_op_free(void *data) {
        ServeOp *op = data;

        if (!op)
                return;
        loaded_free(&op->loaded);
        explicit_wipe(op->hash, sizeof op->hash);
        free(op);
}

static int serve_op_run(Store *s, void *data) {
        ServeOp *op = data;
        int k;

        loaded_free(&op->loaded);
        op->claimed = false;
        k = links_db_load(s, op->hash, collect, &op->loaded);
        if (k < 0 || !op->claim || !op->loaded)
                return k;
        k = links_db_mark(s, LINK_MARK_USED, op->loaded->id, op->at);
        if (k < 0)
                return k;
        op->claimed = k > 0;
        if (op->claimed) {
                op->loaded->used_at = op->at;
                return 0;
        }
        /* Not ours: used, revoked or expired, maybe by another node's
         * click that this UPDATE waited for. Read it again as it is now. */
        loaded_free(&op->loaded);
        return links_db_load(s, op->hash, collect, &op->loaded);
}

static void serve_op_done(Manager *m, int result, void *data, bool abandoned) {
        ServeOp *op = data;

        if (result < 0)
                return;
        if (abandoned && op->claimed) {
                /* nobody waits for the claim any more: the link stays usable */
                op->claimed = false;
                op->loaded->used_at = 0;
                (void) link_queue_mark(m, LINK_MARK_UNUSED, op->loaded->id, op->at, NULL, NULL);
        }
        merge_loaded(m, &op->loaded);
}

int links_serve(Manager *m, struct MHD_Connection *conn, const char *method, const char *token, StoreWait **wait,
                void (*wake)(void *userdata), void *userdata, enum MHD_Result *ret) {
        Links *L = m->links;
        char hash[65] = "";
        usec_t t = now(CLOCK_REALTIME), claimed_at = 0;
        bool claimed = false;
        Link *l = NULL;
        int k;

        if (*wait) {
                ServeOp *op = store_wait_data(*wait);

                k = store_wait_result(*wait);
                claimed = k >= 0 && op->claimed;
                claimed_at = op->at;
                l = k >= 0 && L ? links_find_hash(L, op->hash) : NULL;
                *wait = store_wait_release(*wait);
                if (k < 0) {
                        log_warning("callback: a re-authorization link could not be read from the database: %s",
                                    k == -ETIMEDOUT ? "no answer in time" : strerror(-k));
                        *ret = respond_error(conn, 503, "Try again",
                                             "The broker cannot reach its database just now. Try again in a minute.");
                        return 0;
                }
                if (claimed && (!l || l->used_at != claimed_at))
                        claimed = false;   /* cannot be: memory full */
        } else if (L && L->shared && link_token_hash(token, hash) >= 0) {
                ServeOp *op = new0(ServeOp, 1);

                if (!op)
                        return *ret = MHD_NO, 0;
                memcpy(op->hash, hash, sizeof hash);
                explicit_wipe(hash, sizeof hash);
                op->claim = streq(method, "POST");
                op->at = t;
                k = store_wait_start(m, LINK_DB_WAIT, serve_op_run, serve_op_done, op, serve_op_free, wake, userdata,
                                     wait);
                if (k >= 0)
                        return 1;
                *ret = respond_error(conn, 503, "Try again", "The broker is busy or stopping. Try again in a minute.");
                return 0;
        } else if (L && link_token_hash(token, hash) >= 0)
                l = links_find_hash(L, hash);
        explicit_wipe(hash, sizeof hash);
        *ret = links_page(m, conn, method, l, claimed, claimed_at, t);
        return 0;
}

