/* SPDX-License-Identifier: MIT */
#pragma once

#include <jansson.h>

#include "common/conf.h"
#include "daemon/http.h"

/* `tokenctl preview PROVIDER` (GET /v1/preview?provider=NAME): every
 * request the broker would make for a provider, in the order of a
 * connection's life, built by the same functions as the real requests
 * (daemon/steps.h) with named placeholders (<client_secret>, <code>,
 * <refresh_token>...) for every secret and every generated value, then
 * passed through the redactor; nothing is sent. params (a JSON object of
 * strings, may be NULL) are shown as given. Returns the JSON answer:
 * {"provider", "grant", "params", "steps": [{"step", "from", "to",
 * "description", "method", "url", "headers": [...], "body"}...]}. */
int preview_provider(Http *h, const Provider *p, json_t *params, json_t **ret);
