/* SPDX-License-Identifier: MIT */
#include <curl/curl.h>
#include <strings.h>

#include "common/util.h"
#include "daemon/redact.h"
#include "daemon/trace.h"

/* One exchange as it was, secrets and all, in one block: kept in memory
 * only (never logged, wiped on free) until it is redacted, by a reader
 * (trace_json()) or by the sweep (trace_sweep()). Redacting as it was
 * recorded cost a fifth of the loop in a refresh storm, where most entries
 * are pushed out of their ring or the LRU before anyone reads them. */
typedef struct Raw {
        char *what, *url, *post_data, *error, *resp_headers, *body, *content_type;
        size_t post_len, resp_headers_len, body_len;
        char *headers;            /* the request's header lines, each NUL-terminated */
        size_t n_headers;
        /* what the redactor learns by value, and the provider's token keys */
        char *client_secret, *password, *refresh_token, *access_token, *code_verifier, *auth_state;
        char *key_access, *key_refresh, *key_id;
        char method[16];
        long status;
        usec_t sent_at, duration;
        size_t size;              /* of the block, to wipe it */
        char data[];
} Raw;

typedef struct Entry Entry;
struct Entry {
        uint64_t seq;
        json_t *json;             /* redacted; NULL while raw, or if redacting it failed */
        Raw *raw;                 /* until redacted */
        Entry *prev, *next;       /* the store's raw entries, oldest first */
};

typedef struct Trace Trace;
struct Trace {
        char *name;
        Entry **ring;             /* cap entries, oldest at head */
        unsigned cap, head, count;
        Trace *prev, *next;       /* most recently used first */
};

struct TraceStore {
        Trace *first, *last;
        unsigned n;
        uint64_t seq;
        Entry *raw_first, *raw_last;   /* waiting for the sweep */
        size_t n_raw;
};

static Raw *raw_free(Raw *w) {
        if (w) {
                explicit_wipe(w, w->size);
                free(w);
        }
        return NULL;
}

static void unqueue(TraceStore *t, Entry *e) {
        if (e->prev)
                e->prev->next = e->next;
        else
                t->raw_first = e->next;
        if (e->next)
                e->next->prev = e->prev;
        else
                t->raw_last = e->prev;
        e->prev = e->next = NULL;
        t->n_raw--;
}

static Entry *entry_free(TraceStore *t, Entry *e) {
        if (!e)
                return NULL;
        if (e->raw) {
                unqueue(t, e);
                raw_free(e->raw);
        }
        json_decref(e->json);
        free(e);
        return NULL;
}

static Trace *trace_free(TraceStore *t, Trace *tr) {
        if (!tr)
                return NULL;
        for (unsigned i = 0; i < tr->count; i++)
                entry_free(t, tr->ring[(tr->head + i) % tr->cap]);
        free(tr->ring);
        free(tr->name);
        free(tr);
        return NULL;
}

static void unlink_trace(TraceStore *t, Trace *tr) {
        if (tr->prev)
                tr->prev->next = tr->next;
        else
                t->first = tr->next;
        if (tr->next)
                tr->next->prev = tr->prev;
        else
                t->last = tr->prev;
        tr->prev = tr->next = NULL;
        t->n--;
}

static void push_front(TraceStore *t, Trace *tr) {
        tr->prev = NULL;
        tr->next = t->first;
        if (t->first)
                t->first->prev = tr;
        else
                t->last = tr;
        t->first = tr;
        t->n++;
}

TraceStore *trace_store_free(TraceStore *t) {
        if (!t)
                return NULL;
        while (t->first) {
                Trace *tr = t->first;
                unlink_trace(t, tr);
                trace_free(t, tr);
        }
        assert(t->n_raw == 0);
        free(t);
        return NULL;
}

bool trace_enabled(const BrokerConfig *cfg) {
        return cfg->trace_entries > 0 && cfg->trace_connections > 0;
}

static Trace *find(TraceStore *t, const char *name) {
        for (Trace *tr = t ? t->first : NULL; tr; tr = tr->next)
                if (streq(tr->name, name))
                        return tr;
        return NULL;
}

void trace_forget(TraceStore *t, const char *name) {
        Trace *tr = find(t, name);

        if (tr) {
                unlink_trace(t, tr);
                trace_free(t, tr);
        }
}

/* Copies a string (len bytes, NULL: none) into the block; with no block,
 * counts the bytes it would take. */
typedef struct Packer {
        char *p;
        size_t need;
} Packer;

static char *pack(Packer *k, const char *s, size_t len) {
        char *d;

        if (!s)
                return NULL;
        k->need += len + 1;
        if (!k->p)
                return NULL;
        d = k->p;
        memcpy(d, s, len);
        d[len] = 0;
        k->p += len + 1;
        return d;
}

static char *pack_str(Packer *k, const char *s) {
        return s ? pack(k, s, strlen(s)) : NULL;
}

/* Run twice: to measure (w NULL), then to fill w. */
static void raw_fill(Packer *k, Raw *w, const Connection *c, const Provider *p, const char *what,
                     const HttpRequest *req) {
        Raw x = {};
        char *h = NULL;

        x.what = pack_str(k, what);
        x.url = pack_str(k, req->url);
        x.post_data = pack(k, req->post_data, req->post_len);
        x.post_len = req->post_len;
        if (req->result != CURLE_OK || req->too_large)
                x.error = pack_str(k, http_request_strerror(req));
        x.resp_headers = pack(k, req->resp_headers, req->resp_headers_len);
        x.resp_headers_len = req->resp_headers_len;
        x.body = pack(k, req->body, req->body_len);
        x.body_len = req->body_len;
        x.content_type = pack_str(k, req->content_type);
        for (const struct curl_slist *l = req->headers; l; l = l->next) {
                char *d = pack_str(k, l->data);

                if (!h)
                        h = d;
                x.n_headers++;
        }
        x.headers = h;
        if (p) {
                x.client_secret = pack_str(k, p->client_secret);
                x.password = pack_str(k, p->password);
                x.key_access = pack_str(k, p->ptr_access_token);
                x.key_refresh = pack_str(k, p->ptr_refresh_token);
                x.key_id = pack_str(k, p->ptr_id_token);
        }
        x.refresh_token = pack_str(k, c->refresh_token);
        x.access_token = pack_str(k, c->access_token);
        /* a device code or a password grant's password lives there too */
        x.code_verifier = pack_str(k, connection_code_verifier(c));
        x.auth_state = pack_str(k, connection_auth_state(c));
        if (!w)
                return;
        memcpy(x.method, req->method, sizeof x.method);
        x.method[sizeof x.method - 1] = 0;
        x.status = req->status;
        x.sent_at = req->sent_at;
        x.duration = req->duration;
        x.size = w->size;
        memcpy(w, &x, offsetof(Raw, data));
}

/* Copies: no redaction here, only memcpy, on the loop for each exchange. */
static Raw *raw_new(const Connection *c, const Provider *p, const char *what, const HttpRequest *req) {
        Packer k = {};
        Raw *w;

        raw_fill(&k, NULL, c, p, what, req);
        w = malloc(offsetof(Raw, data) + k.need);
        if (!w)
                return NULL;
        w->size = offsetof(Raw, data) + k.need;
        k = (Packer) { .p = w->data };
        raw_fill(&k, w, c, p, what, req);
        return w;
}

/* The secrets of one exchange: the provider's, the connection's, and what
 * the request sent under secret keys. */
static void redactor_for(Redactor *red, const Raw *w) {
        const char *headers[32];
        size_t n = 0;
        const char *l = w->headers;

        redactor_add(red, "client_secret", w->client_secret);
        redactor_add(red, "password", w->password);
        redactor_add_key(red, w->key_access);
        redactor_add_key(red, w->key_refresh);
        redactor_add_key(red, w->key_id);
        redactor_add(red, "refresh_token", w->refresh_token);
        redactor_add(red, "access_token", w->access_token);
        redactor_add(red, "code_verifier", w->code_verifier);
        redactor_add(red, "state", w->auth_state);
        for (size_t i = 0; i < w->n_headers && n < ELEMENTSOF(headers); i++, l += strlen(l) + 1)
                headers[n++] = l;
        redactor_learn_request(red, w->url, headers, n, w->post_data, w->post_len);
}

static int put_string(json_t *o, const char *key, char *v) {
        int r = v ? json_object_set_new(o, key, json_string(v)) : -1;

        free(v);
        return r;
}

static int append_string(json_t *a, char *v) {
        int r = v ? json_array_append_new(a, json_string(v)) : -1;

        free(v);
        return r;
}

static json_t *entry_json(uint64_t seq, const Raw *w) {
        Redactor red = {};
        json_t *e, *rq, *rs, *a;
        char at[32];
        int r = 0;
        const char *l = w->headers;

        redactor_for(&red, w);
        e = json_pack("{s:I, s:s, s:s, s:f}", "seq", (json_int_t) seq, "at",
                      format_timestamp(at, sizeof at, w->sent_at), "what", w->what ?: "", "duration_ms",
                      (double) w->duration / (double) USEC_PER_MSEC);
        rq = json_pack("{s:s, s:[]}", "method", w->method, "headers");
        rs = json_pack("{s:[]}", "headers");
        if (!e || !rq || !rs) {
                r = -1;
                goto finish;
        }
        r |= put_string(rq, "url", redact_url(&red, w->url ?: "", TRACE_URL_MAX));
        a = json_object_get(rq, "headers");
        for (size_t i = 0; i < w->n_headers; i++, l += strlen(l) + 1)
                r |= append_string(a, redact_header(&red, l, TRACE_BODY_MAX));
        if (w->post_data)
                r |= put_string(rq, "body", redact_body(&red, NULL, w->post_data, w->post_len, TRACE_BODY_MAX));

        if (w->error)
                r |= put_string(e, "error", strdup(w->error));
        else
                r |= json_object_set_new(rs, "status", json_integer(w->status));
        a = json_object_get(rs, "headers");
        for (const char *h = w->resp_headers, *end = h ? h + w->resp_headers_len : NULL; h && h < end;) {
                const char *nl = memchr(h, '\n', (size_t) (end - h)), *stop = nl ?: end;
                size_t len = (size_t) (stop - h);
                char *line;

                while (len > 0 && (h[len - 1] == '\r' || h[len - 1] == '\n'))
                        len--;
                if (len > 0 && (line = strndup(h, len))) {
                        /* the status line is not a header: said by "status" */
                        if (strncmp(line, "HTTP/", 5) != 0)
                                r |= append_string(a, redact_header(&red, line, TRACE_BODY_MAX));
                        secret_free(line);
                }
                h = stop + 1;
        }
        if (w->body)
                r |= put_string(rs, "body", redact_body(&red, w->content_type, w->body, w->body_len,
                                                        TRACE_BODY_MAX));
finish:
        redactor_done(&red);
        if (r == 0) {
                /* each takes its value, also when it fails */
                r = json_object_set_new(e, "request", TAKE_PTR(rq));
                r |= json_object_set_new(e, "response", TAKE_PTR(rs));
        }
        if (r != 0) {
                json_decref(rq);
                json_decref(rs);
                json_decref(e);
                return NULL;
        }
        return e;
}

/* Redacts e now and forgets its raw copy; a failure (OOM) leaves an entry
 * with nothing to show. */
static void redact_entry(TraceStore *t, Entry *e) {
        if (!e->raw)
                return;
        e->json = entry_json(e->seq, e->raw);
        unqueue(t, e);
        e->raw = raw_free(e->raw);
}

void trace_record(TraceStore **tp, const BrokerConfig *cfg, const Connection *c, const Provider *p, const char *what,
                  const HttpRequest *req) {
        TraceStore *t = *tp;
        Trace *tr;
        Entry *e;

        if (!trace_enabled(cfg)) {
                *tp = trace_store_free(t);
                return;
        }
        if (!t) {
                t = *tp = new0(TraceStore, 1);
                if (!t)
                        return;
        }
        tr = find(t, c->name);
        if (tr && tr->cap != cfg->trace_entries) {
                /* the limit changed: start again with the new ring */
                unlink_trace(t, tr);
                tr = trace_free(t, tr);
        }
        if (tr)
                unlink_trace(t, tr);
        else {
                tr = new0(Trace, 1);
                if (!tr)
                        return;
                tr->name = strdup(c->name);
                tr->cap = cfg->trace_entries;
                tr->ring = new0(Entry *, tr->cap);
                if (!tr->name || !tr->ring) {
                        trace_free(t, tr);
                        return;
                }
        }
        push_front(t, tr);
        while (t->n > cfg->trace_connections && t->last != tr) {
                Trace *old = t->last;
                unlink_trace(t, old);
                trace_free(t, old);
        }

        e = new0(Entry, 1);
        if (!e)
                return;
        e->seq = ++t->seq;
        e->raw = raw_new(c, p, what, req);
        if (!e->raw) {
                free(e);
                return;
        }
        /* queued last: the sweep redacts the oldest first */
        e->prev = t->raw_last;
        if (t->raw_last)
                t->raw_last->next = e;
        else
                t->raw_first = e;
        t->raw_last = e;
        t->n_raw++;
        /* A large exchange (a provider's error page, up to HTTP_BODY_MAX)
         * is redacted and cut now: raw entries stay small, and a body
         * cannot be cut before it is redacted. Token answers are far
         * below this. */
        if (e->raw->size > TRACE_RAW_MAX)
                redact_entry(t, e);

        if (tr->count == tr->cap) {
                entry_free(t, tr->ring[tr->head]);
                tr->ring[tr->head] = e;
                tr->head = (tr->head + 1) % tr->cap;
        } else
                tr->ring[(tr->head + tr->count++) % tr->cap] = e;
}

bool trace_sweep(TraceStore *t, unsigned max) {
        for (unsigned i = 0; t && t->raw_first && i < max; i++)
                redact_entry(t, t->raw_first);
        return trace_pending(t);
}

bool trace_pending(const TraceStore *t) {
        return t && t->raw_first;
}

json_t *trace_json(TraceStore *t, const char *name, uint64_t after) {
        Trace *tr = find(t, name);
        json_t *a = json_array();

        for (unsigned i = 0; a && tr && i < tr->count; i++) {
                Entry *e = tr->ring[(tr->head + i) % tr->cap];

                if (e->seq <= after)
                        continue;
                /* nothing leaves unredacted: at most trace_entries here */
                redact_entry(t, e);
                if (e->json)
                        json_array_append(a, e->json);
        }
        return a ? json_pack("{s:s, s:o, s:I}", "connection", name, "entries", a, "last_seq",
                             (json_int_t) (t ? t->seq : 0))
                 : NULL;
}
