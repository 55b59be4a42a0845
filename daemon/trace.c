/* SPDX-License-Identifier: MIT */
#include <curl/curl.h>
#include <strings.h>

#include "common/util.h"
#include "daemon/redact.h"
#include "daemon/trace.h"

typedef struct Trace Trace;
struct Trace {
        char *name;
        json_t **ring;            /* cap entries, oldest at head */
        unsigned cap, head, count;
        Trace *prev, *next;       /* most recently used first */
};

struct TraceStore {
        Trace *first, *last;
        unsigned n;
        uint64_t seq;
};

static Trace *trace_free(Trace *tr) {
        if (!tr)
                return NULL;
        for (unsigned i = 0; i < tr->count; i++)
                json_decref(tr->ring[(tr->head + i) % tr->cap]);
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
                trace_free(tr);
        }
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
                trace_free(tr);
        }
}

/* The secrets of one exchange: the provider's, the connection's, and what
 * the request sent under secret keys. */
static void redactor_for(Redactor *red, const Connection *c, const Provider *p, const HttpRequest *req) {
        const char *headers[32];
        size_t n = 0;

        if (p) {
                redactor_add(red, "client_secret", p->client_secret);
                redactor_add(red, "password", p->password);
                redactor_add_key(red, p->ptr_access_token);
                redactor_add_key(red, p->ptr_refresh_token);
                redactor_add_key(red, p->ptr_id_token);
        }
        redactor_add(red, "refresh_token", c->refresh_token);
        redactor_add(red, "access_token", c->access_token);
        /* a device code or a password grant's password lives there too */
        redactor_add(red, "code_verifier", connection_code_verifier(c));
        redactor_add(red, "state", connection_auth_state(c));
        for (const struct curl_slist *h = req->headers; h && n < ELEMENTSOF(headers); h = h->next)
                headers[n++] = h->data;
        redactor_learn_request(red, req->url, headers, n, req->post_data, req->post_len);
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

static json_t *entry_new(uint64_t seq, const Connection *c, const Provider *p, const char *what,
                         const HttpRequest *req) {
        Redactor red = {};
        json_t *e, *rq, *rs, *a;
        char at[32];
        int r = 0;

        redactor_for(&red, c, p, req);
        e = json_pack("{s:I, s:s, s:s, s:f}", "seq", (json_int_t) seq, "at",
                      format_timestamp(at, sizeof at, req->sent_at), "what", what, "duration_ms",
                      (double) req->duration / (double) USEC_PER_MSEC);
        rq = json_pack("{s:s, s:[]}", "method", req->method, "headers");
        rs = json_pack("{s:[]}", "headers");
        if (!e || !rq || !rs) {
                r = -1;
                goto finish;
        }
        r |= put_string(rq, "url", redact_url(&red, req->url ?: "", TRACE_URL_MAX));
        a = json_object_get(rq, "headers");
        for (const struct curl_slist *h = req->headers; h; h = h->next)
                r |= append_string(a, redact_header(&red, h->data, TRACE_BODY_MAX));
        if (req->post_data)
                r |= put_string(rq, "body", redact_body(&red, NULL, req->post_data, req->post_len, TRACE_BODY_MAX));

        if (req->result != CURLE_OK || req->too_large)
                r |= put_string(e, "error", strdup(http_request_strerror(req)));
        else
                r |= json_object_set_new(rs, "status", json_integer(req->status));
        a = json_object_get(rs, "headers");
        for (const char *l = req->resp_headers, *end = l ? l + req->resp_headers_len : NULL; l && l < end;) {
                const char *nl = memchr(l, '\n', (size_t) (end - l)), *stop = nl ?: end;
                size_t len = (size_t) (stop - l);
                char *line;

                while (len > 0 && (l[len - 1] == '\r' || l[len - 1] == '\n'))
                        len--;
                if (len > 0 && (line = strndup(l, len))) {
                        /* the status line is not a header: said by "status" */
                        if (strncmp(line, "HTTP/", 5) != 0)
                                r |= append_string(a, redact_header(&red, line, TRACE_BODY_MAX));
                        secret_free(line);
                }
                l = stop + 1;
        }
        if (req->body)
                r |= put_string(rs, "body", redact_body(&red, req->content_type, req->body, req->body_len,
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

void trace_record(TraceStore **tp, const BrokerConfig *cfg, const Connection *c, const Provider *p, const char *what,
                  const HttpRequest *req) {
        TraceStore *t = *tp;
        Trace *tr;
        json_t *e;

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
                tr = trace_free(tr);
        }
        if (tr)
                unlink_trace(t, tr);
        else {
                tr = new0(Trace, 1);
                if (!tr)
                        return;
                tr->name = strdup(c->name);
                tr->cap = cfg->trace_entries;
                tr->ring = new0(json_t *, tr->cap);
                if (!tr->name || !tr->ring) {
                        trace_free(tr);
                        return;
                }
        }
        push_front(t, tr);
        while (t->n > cfg->trace_connections && t->last != tr) {
                Trace *old = t->last;
                unlink_trace(t, old);
                trace_free(old);
        }

        e = entry_new(++t->seq, c, p, what, req);
        if (!e)
                return;
        if (tr->count == tr->cap) {
                json_decref(tr->ring[tr->head]);
                tr->ring[tr->head] = e;
                tr->head = (tr->head + 1) % tr->cap;
        } else
                tr->ring[(tr->head + tr->count++) % tr->cap] = e;
}

json_t *trace_json(TraceStore *t, const char *name, uint64_t after) {
        Trace *tr = find(t, name);
        json_t *a = json_array();

        for (unsigned i = 0; a && tr && i < tr->count; i++) {
                json_t *e = tr->ring[(tr->head + i) % tr->cap];
                if ((uint64_t) json_integer_value(json_object_get(e, "seq")) > after)
                        json_array_append(a, e);
        }
        return a ? json_pack("{s:s, s:o, s:I}", "connection", name, "entries", a, "last_seq",
                             (json_int_t) (t ? t->seq : 0))
                 : NULL;
}
