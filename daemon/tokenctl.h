/* SPDX-License-Identifier: MIT */
#pragma once

/* What tokenctl.c shares with the verbs kept in their own files
 * (tokenctl-integrations.c): one request to the daemon, its answer, and
 * the token route. Each prints its own error and returns an exit code. */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct Reply {
        long status;
        char *body;
        size_t len;
        json_t *json;
} Reply;

void reply_done(Reply *r);
const char *socket_path(void);
const char *jstr(json_t *o, const char *key);
bool name_ok(const char *name);
/* METHOD PATH with an optional JSON body; EXIT_OK with r->json on a 2xx. */
int call_ok(const char *method, const char *path, json_t *body, Reply *r);
/* GET the token of NAME (min_ttl: whole seconds as text, or NULL). */
int token_reply(const char *name, const char *min_ttl, Reply *r);

/* tokenctl-integrations.c */
int do_exec(int argc, char **argv);
int do_git_credential(int argc, char **argv);
int do_proxy(int argc, char **argv);
