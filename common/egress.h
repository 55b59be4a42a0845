/* SPDX-License-Identifier: MIT */
#pragma once

/* Outgoing requests: [broker] ca_file (a PEM bundle trusted instead of the
 * system's) and connect_to (curl's CONNECT_TO lines: a request to
 * HOST:PORT goes to CONNECT-HOST:CONNECT-PORT, TLS still verifying HOST),
 * for private CAs, split-horizon DNS and egress gateways. Every curl handle
 * the daemon and tokenctl test make for a provider goes through
 * egress_apply(). */

#include <stdbool.h>
#include <stddef.h>
#include <curl/curl.h>

#define EGRESS_CONNECT_TO_MAX 256U

/* 0 when PATH is a readable file with at least one PEM certificate;
 * -EBADMSG when it has none, else -errno. Reads at most 16 MiB. */
int egress_check_ca_file(const char *path);

/* NULL when VALUE is HOST:PORT:CONNECT-HOST:CONNECT-PORT (HOST and PORT
 * may be empty: any; an IPv6 address in brackets; CONNECT-HOST may be
 * empty: the same host), else what is wrong. */
const char *egress_check_connect_to(const char *value);

/* Sets CURLOPT_CAINFO (when ca_file) and CURLOPT_CONNECT_TO (when n > 0)
 * on C. The list curl reads must outlive the transfer: it is returned in
 * *keep, for the caller to free (curl_slist_free_all) with the handle. */
int egress_apply(CURL *c, const char *ca_file, char *const *connect_to, size_t n, struct curl_slist **keep);
