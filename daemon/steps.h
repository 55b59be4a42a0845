/* SPDX-License-Identifier: MIT */
#pragma once

#include "daemon/oauth.h"

/* The request of each step of a grant, with the parameters RFC 6749, RFC
 * 7636 and RFC 8628 give it: built here once, for the real requests
 * (daemon/refresher.c) and for `tokenctl preview` (daemon/preview.c), so
 * the preview shows exactly what is sent. Each takes the request's values
 * in v (NULL members expand to "") and returns what
 * oauth_provider_request() returns. */

/* RFC 6749 section 4.1.3 (+ RFC 7636 section 4.5): v->code, v->code_verifier. */
int step_exchange_request(Http *h, const Provider *p, const RequestVars *v, HttpRequest **ret);
/* Section 6: v->refresh_token. */
int step_refresh_request(Http *h, const Provider *p, const RequestVars *v, HttpRequest **ret);
/* Section 4.4: v->scope. */
int step_client_credentials_request(Http *h, const Provider *p, const RequestVars *v, HttpRequest **ret);
/* Section 4.3: v->username and v->password, else the provider's;
 * -ENOKEY without either. */
int step_password_request(Http *h, const Provider *p, const RequestVars *v, HttpRequest **ret);
/* RFC 8628 sections 3.1 and 3.4: v->scope; v->device_code. */
int step_device_request(Http *h, const Provider *p, const RequestVars *v, HttpRequest **ret);
int step_device_poll_request(Http *h, const Provider *p, const RequestVars *v, HttpRequest **ret);
/* A GET of url with the token as the provider's usage rule presents it
 * (userinfo_url; test_url); uv: the access token and token type (and
 * whatever else the usage rule may refer to). */
int step_usage_request(Http *h, const Provider *p, const char *url, const UsageVars *uv, HttpRequest **ret);
