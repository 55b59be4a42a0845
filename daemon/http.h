/* SPDX-License-Identifier: MIT */
#pragma once

#include <curl/curl.h>
#include <systemd/sd-event.h>

#include "common/macro.h"

/* Outgoing HTTP: one libcurl multi handle driven by the sd-event loop.
 * Its sockets go into an epoll set of its own, one io source on the loop,
 * and its timeout one time source, so any number of requests run in
 * parallel without a thread, reusing connections to the same provider.
 * A turn of the loop serves 16 ready sockets and hands 16 finished
 * transfers to their callers at most (the rest on the next turns), so
 * token handouts interleave with a refresh storm. */

typedef struct Http Http;
typedef struct HttpRequest HttpRequest;
typedef void (*http_done_fn)(HttpRequest *req, void *userdata);

/* Provider answers larger than this are cut off and fail: a token
 * response is a few KiB at most. */
#define HTTP_BODY_MAX (1024 * 1024)
#define HTTP_HEADERS_KEPT (8 * 1024)

struct HttpRequest {
        Http *http;
        CURL *easy;
        struct curl_slist *headers;
        char method[16];
        char *url;                /* secret: its query may carry parameters; wiped on free */
        char *post_data;          /* secret; wiped on free */
        size_t post_len;

        char *body;               /* response, NUL-terminated */
        size_t body_len;
        bool too_large;
        long status;
        CURLcode result;
        char errbuf[CURL_ERROR_SIZE];
        char *retry_after;        /* Retry-After header, if any */
        /* `tokenctl trace`: with keep_headers, the answer's header lines
         * (of its last status line on), at most HTTP_HEADERS_KEPT bytes */
        bool keep_headers;
        char *resp_headers;
        size_t resp_headers_len;
        char *content_type;
        usec_t sent_at;           /* realtime, when the request started */
        usec_t duration;

        struct curl_slist *connect_to;   /* [broker] connect_to, read by curl during the transfer */

        http_done_fn done;
        void *userdata;
        bool running;
};

int http_new(sd_event *event, Http **ret);
Http *http_free(Http *h);
DEFINE_TRIVIAL_CLEANUP_FUNC(Http *, http_free);
unsigned http_in_flight(const Http *h);
/* Runs what curl asked to run at once (new requests) now rather than on
 * the loop's next turn; true if there was something. From the loop only,
 * never from a curl callback. */
bool http_run_pending(Http *h);
/* fn runs after each time curl was driven from the loop (its io, its
 * timer), outside any curl callback: the proxy answers from there what
 * curl's callbacks made ready, without another turn of the loop. */
void http_set_after(Http *h, void (*fn)(void *userdata), void *userdata);
/* [broker] ca_file and connect_to for the requests made from now on
 * (copied); at start and at each reload. */
int http_set_egress(Http *h, const char *ca_file, char *const *connect_to, size_t n);
curl_socket_t http_open_socket(void *userdata, curlsocktype purpose, struct curl_sockaddr *a);

int http_request_new(Http *h, const char *method, const char *url, HttpRequest **ret);
int http_request_add_header(HttpRequest *r, const char *line);
/* Takes ownership of data (a secret: wiped on free). */
int http_request_set_body(HttpRequest *r, const char *content_type, char *data, size_t len);
/* timeout: the whole transfer's; USEC_INFINITY: none set here (the caller's own). */
int http_request_start(HttpRequest *r, usec_t timeout, http_done_fn done, void *userdata);
/* Aborts if running; never calls done. Accepts NULL. */
HttpRequest *http_request_free(HttpRequest *r);
DEFINE_TRIVIAL_CLEANUP_FUNC(HttpRequest *, http_request_free);

/* A one-line description of a failed transfer (no URL parameters, no
 * secrets), for logs and last_error. */
const char *http_request_strerror(const HttpRequest *r);
