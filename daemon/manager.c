/* SPDX-License-Identifier: MIT */
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <stdarg.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>

#include "common/api.h"
#include "common/log.h"
#include "common/util.h"
#include "daemon/acl.h"
#include "daemon/api.h"
#include "daemon/callback.h"
#include "daemon/heap.h"
#include "daemon/links.h"
#include "daemon/loader.h"
#include "daemon/manager.h"
#include "daemon/oauth.h"
#include "daemon/pg.h"

static int on_wheel(sd_event_source *s, uint64_t usec, void *userdata);

static const char *order_key(const OrdNode *n) {
        return container_of(n, Connection, by_order)->name;
}
static const char *connection_key(const HashmapNode *n) {
        return container_of(n, const Connection, by_name)->name;
}
static const char *pending_key(const HashmapNode *n);
static int on_status(sd_event_source *s, uint64_t usec, void *userdata);

#define DELETING_ID_MAX 21   /* "-9223372036854775808" and its NUL */

/* A delete of this node's in the writer's queue (manager_remove_then()),
 * in m->deleting until its completion runs. */
typedef struct Deleting {
        HashmapNode by_id;
        Manager *m;
        struct Deleting *next_done;   /* Manager.deleted_head's list */
        bool done;                 /* committed; kept while the follower may bring back an older row */
        uint64_t done_read;        /* follower_reads() when it was */
        store_done_fn fn;          /* the caller's completion */
        void *userdata;
        char id[DELETING_ID_MAX];
} Deleting;

static const char *deleting_key(const HashmapNode *n) {
        return container_of(n, const Deleting, by_id)->id;
}

/* Removes the API socket we bound, if the path still names that socket
 * (not one passed by systemd: its socket unit owns that). */
static void manager_unlink_api_socket(Manager *m) {
        struct stat st;

        if (!m->api_bound_path)
                return;
        if (lstat(m->api_bound_path, &st) >= 0 && S_ISSOCK(st.st_mode) && st.st_dev == m->api_bound_dev &&
            st.st_ino == m->api_bound_ino && unlink(m->api_bound_path) < 0)
                log_warning_errno(errno, "Failed to remove '%s', ignoring: %m", m->api_bound_path);
        m->api_bound_path = mfree(m->api_bound_path);
}

static int on_trace_sweep(sd_event_source *s, void *userdata) {
        Manager *m = userdata;

        if (!trace_sweep(m->trace, TRACE_SWEEP_PER_TURN))
                (void) sd_event_source_set_enabled(s, SD_EVENT_OFF);
        return 0;
}

void manager_trace_record(Manager *m, const Connection *c, const char *what, const HttpRequest *req) {
        trace_record(&m->trace, m->config, c, manager_provider(m, c), what, req);
        if (trace_pending(m->trace))
                (void) sd_event_source_set_enabled(m->trace_sweep, SD_EVENT_ON);
}

int manager_new(BrokerConfig *config, const char *config_path, Manager **ret) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        m = new0(Manager, 1);
        if (!m)
                return -ENOMEM;
        m->api_fd = m->callback_fd = m->lock_fd = -EBADF;
        m->config = config;
        m->config_path = strdup(config_path);
        if (!m->config_path)
                return -ENOMEM;
        /* not sd_event_default(): its thread check costs a gettid() on
         * every turn of the loop */
        r = sd_event_new(&m->event);
        if (r < 0)
                return r;
        (void) sd_event_set_watchdog(m->event, true);

        r = hashmap_new(&m->connections, connection_key);
        if (r < 0)
                return r;
        r = hashmap_new(&m->pending, pending_key);
        if (r < 0)
                return r;
        r = hashmap_new(&m->deleting, deleting_key);
        if (r < 0)
                return r;
        m->deleted_tail = &m->deleted_head;
        ordmap_init(&m->ordered, order_key);
        r = timerwheel_new(&m->wheel, WHEEL_TICK, now(DEADLINE_CLOCK));
        if (r < 0)
                return r;
        r = sd_event_add_time(m->event, &m->wheel_timer, DEADLINE_CLOCK, USEC_INFINITY, 1, on_wheel, m);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(m->wheel_timer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(m->wheel_timer, "timer-wheel");
        m->wheel_armed = USEC_INFINITY;

        r = http_new(m->event, &m->http);
        if (r < 0)
                return r;
        r = http_set_egress(m->http, config->ca_file, config->connect_to, config->n_connect_to);
        if (r < 0)
                return r;
        r = sd_event_add_time(m->event, &m->status_timer, CLOCK_MONOTONIC, USEC_INFINITY, USEC_PER_SEC / 4,
                              on_status, m);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(m->status_timer, SD_EVENT_OFF);

        /* idle priority: in a refresh storm entries mostly leave their ring
         * before the sweep gets to them, and are never redacted at all */
        r = sd_event_add_defer(m->event, &m->trace_sweep, on_trace_sweep, m);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(m->trace_sweep, SD_EVENT_OFF);
        (void) sd_event_source_set_priority(m->trace_sweep, SD_EVENT_PRIORITY_IDLE);
        (void) sd_event_source_set_description(m->trace_sweep, "trace-sweep");

        m->started_at = now(CLOCK_REALTIME);
        *ret = TAKE_PTR(m);
        return 0;
}

Manager *manager_free(Manager *m) {
        HashmapIter it = {};
        HashmapNode *n;

        if (!m)
                return NULL;
        m->follower = follower_free(m->follower);   /* other nodes' changes: no more */
        /* First, while everything its completions touch is alive: commit
         * what is queued (bounded: each batch is) and run the completions. */
        if (m->writer && store_writer_flush(m->writer) < 0)
                log_warning("Writes still queued after flushing the store writer; they are committed at exit.");
        api_free(m->api);
        callback_free(m->callback);
        refresher_drop_recommits(m);
        m->links = links_free(m->links);
        if (m->connections) {
                while ((n = hashmap_iter_next(m->connections, &it))) {
                        Connection *c = container_of(n, Connection, by_name);
                        refresher_cancel(m, c);
                        manager_pending_unlink(m, c);
                        hashmap_remove_node(m->connections, n);
                        connection_free(c);
                }
                hashmap_free(m->connections);
                m->connections = NULL;   /* a late completion (insert_done()) finds none */
        }
        /* every node is gone with its connection */
        ordmap_init(&m->ordered, order_key);
        hashmap_free(m->pending);
        free(m->expiry);
        rtend_done(m);
        for (size_t i = 0; i < m->n_stats; i++)
                free(m->stats[i].name);
        free(m->stats);
        sd_event_source_disable_unref(m->status_timer);
        sd_event_source_disable_unref(m->stop_timer);
        http_free(m->http);
        sd_event_source_disable_unref(m->trace_sweep);
        trace_store_free(m->trace);
        timerwheel_free(m->wheel);
        sd_event_source_disable_unref(m->wheel_timer);
        sd_event_source_disable_unref(m->sigterm);
        sd_event_source_disable_unref(m->sigint);
        sd_event_source_disable_unref(m->sighup);
        cluster_free(m->cluster);
        store_writer_free(m->writer);   /* may run delete completions: m->deleting still there */
        if (m->deleting) {
                /* deletes never done (the writer stopped first): no completion comes */
                it = (HashmapIter) {};
                while ((n = hashmap_iter_next(m->deleting, &it))) {
                        hashmap_remove_node(m->deleting, n);
                        free(container_of(n, Deleting, by_id));
                }
                hashmap_free(m->deleting);
                m->deleted_head = NULL;
                m->deleted_tail = &m->deleted_head;
                m->n_deleted = 0;
        }
        store_close(m->store);
        safe_close(m->api_fd);
        safe_close(m->callback_fd);
        manager_unlink_api_socket(m);
        /* Last: the store is closed, nothing of ours is left to race with. */
        safe_close(m->lock_fd);
        sd_event_unref(m->event);
        broker_config_free(m->config);
        free(m->config_path);
        free(m);
        return NULL;
}

/* A token handout reads most of the struct and the name behind it: their
 * cache lines are asked for together, once the node's hash matches
 * (issue 9, make bench: at thousands of connections each was a miss of
 * its own, one after the other). */
_Static_assert(offsetof(Connection, by_name) == 0, "the node starts the span");
#define CONNECTION_SPAN (sizeof(Connection) + 16)

void manager_prefetch(Manager *m, const char *name, size_t len) {
        hashmap_prefetch_entry(m->connections, name, len, CONNECTION_SPAN);
}

Connection *manager_get(Manager *m, const char *name) {
        HashmapNode *n = hashmap_get_prefetch(m->connections, name, CONNECTION_SPAN);

        return n ? container_of(n, Connection, by_name) : NULL;
}

const Provider *manager_provider(Manager *m, const Connection *c) {
        return broker_config_find_provider(m->config, c->names->provider);
}

ProviderStats *manager_stats(Manager *m, const char *provider) {
        ProviderStats *a;

        /* A handful of providers: a linear search beats hashing. */
        for (size_t i = 0; i < m->n_stats; i++)
                if (streq(m->stats[i].name, provider))
                        return &m->stats[i];
        a = realloc(m->stats, sizeof(ProviderStats) * (m->n_stats + 1));
        if (!a)
                return NULL;
        m->stats = a;
        a = &m->stats[m->n_stats];
        *a = (ProviderStats) { .name = strdup(provider) };
        if (!a->name)
                return NULL;
        m->n_stats++;
        return a;
}

static void count_state(Manager *m, const Connection *c, int delta) {
        ProviderStats *ps = manager_stats(m, c->names->provider);

        m->n_state[c->state] += (unsigned) delta;
        if (ps)
                ps->n_state[c->state] += (uint64_t) (int64_t) delta;
        manager_status_changed(m);
}

void manager_set_state(Manager *m, Connection *c, ConnState s) {
        if (c->state == s)
                return;
        count_state(m, c, -1);
        c->state = s;
        count_state(m, c, +1);
}

/* ---- expiry heap: the earliest expiry without a scan ----------------- */

static usec_t expiry_key(const Connection *c) {
        return c->expires_at;
}

static void heap_set(Manager *m, size_t i, Connection *c) {
        m->expiry[i] = c;
        c->expiry_idx = i;
}

static void heap_up(Manager *m, size_t i) {
        Connection *c = m->expiry[i];

        while (i > 0) {
                size_t parent = (i - 1) / 2;
                if (expiry_key(m->expiry[parent]) <= expiry_key(c))
                        break;
                heap_set(m, i, m->expiry[parent]);
                i = parent;
        }
        heap_set(m, i, c);
}

static void heap_down(Manager *m, size_t i) {
        Connection *c = m->expiry[i];

        for (;;) {
                size_t l = 2 * i + 1, r = l + 1, min = l;
                if (l >= m->n_expiry)
                        break;
                if (r < m->n_expiry && expiry_key(m->expiry[r]) < expiry_key(m->expiry[l]))
                        min = r;
                if (expiry_key(m->expiry[min]) >= expiry_key(c))
                        break;
                heap_set(m, i, m->expiry[min]);
                i = min;
        }
        heap_set(m, i, c);
}

static void heap_remove(Manager *m, Connection *c) {
        size_t i = c->expiry_idx;
        Connection *last;

        if (i == CONN_NO_IDX || i >= m->n_expiry || m->expiry[i] != c)
                return;
        c->expiry_idx = CONN_NO_IDX;
        last = m->expiry[--m->n_expiry];
        if (i == m->n_expiry)
                return;
        heap_set(m, i, last);
        heap_up(m, i);
        heap_down(m, last->expiry_idx);
}

void manager_expiry_update(Manager *m, Connection *c) {
        rtend_update(m, c);   /* the refresh token's end, beside */
        bool want = c->access_token && c->expires_at > 0;
        bool have = c->expiry_idx != CONN_NO_IDX && c->expiry_idx < m->n_expiry && m->expiry[c->expiry_idx] == c;

        if (!want) {
                if (have)
                        heap_remove(m, c);
                return;
        }
        if (have) {
                heap_up(m, c->expiry_idx);
                heap_down(m, c->expiry_idx);
                return;
        }
        if (m->n_expiry == m->expiry_cap) {
                size_t cap = MAX(m->expiry_cap * 2, (size_t) 64);
                Connection **a = realloc(m->expiry, sizeof(Connection *) * cap);
                if (!a)
                        return;   /* metrics only: degrade, don't fail */
                m->expiry = a;
                m->expiry_cap = cap;
        }
        m->expiry[m->n_expiry] = c;
        c->expiry_idx = m->n_expiry++;
        heap_up(m, c->expiry_idx);
}

/* Room for n in the expiry heap at once (the start's load): no copies
 * of a growing array. Best effort, as the heap's growth. */
static void manager_expiry_reserve(Manager *m, size_t n) {
        Connection **a;

        if (n <= m->expiry_cap)
                return;
        a = realloc(m->expiry, sizeof(Connection *) * n);
        if (!a)
                return;
        m->expiry = a;
        m->expiry_cap = n;
}

usec_t manager_earliest_expiry(Manager *m) {
        return m->n_expiry > 0 ? m->expiry[0]->expires_at : 0;
}

/* ---- sd_notify STATUS=, at most once a second ------------------------- */

static int on_status(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        Manager *m = userdata;
        usec_t next = timerwheel_next(m->wheel), t = now(DEADLINE_CLOCK);
        char when[64] = "none";

        if (next != USEC_INFINITY)
                snprintf(when, sizeof when, "in %" PRIu64 "s", usec_sub(next, t) / USEC_PER_SEC);
        bool reachable = !m->cluster || cluster_reachable(m->cluster);

        (void) sd_notifyf(false, "STATUS=%u active, %u pending, %u need re-authorization; next wake-up %s%s",
                          m->n_state[CONN_ACTIVE], m->n_state[CONN_PENDING], m->n_state[CONN_NEEDS_REAUTH],
                          when, reachable ? "" : "; the store's database is unreachable");
        return 0;
}

void manager_status_changed(Manager *m) {
        /* asked once: getenv() walks the environment, and this runs on
         * every state change (a million times at start) */
        static int notify = -1;
        int enabled = SD_EVENT_OFF;

        if (m->loading)
                return;   /* not the loop's thread: called once after the load */
        if (notify < 0)
                notify = getenv("NOTIFY_SOCKET") != NULL;
        if (!m->status_timer || !notify)
                return;
        if (sd_event_source_get_enabled(m->status_timer, &enabled) >= 0 && enabled != SD_EVENT_OFF)
                return;   /* already due */
        (void) sd_event_source_set_time(m->status_timer, usec_add(now(CLOCK_MONOTONIC), USEC_PER_SEC));
        (void) sd_event_source_set_enabled(m->status_timer, SD_EVENT_ONESHOT);
}

/* journalctl MESSAGE_ID=… finds every event of one kind. */
static const struct {
        const char *kind;
        const char *id;
} message_ids[] = {
        { "authorized", "a57a4b2153f547a8a43544b2ef5c816d" },
        { "refresh-failed", "ae4abddc67354c62b6d1b2c7d44fcdd6" },
        { "needs-reauth", "39f4619f01e445cf94817fd72466c228" },
        { "recovered", "c0a8ef0aeccc410dbb5e6817228e9666" },
        { "revoked", "0a8c1ce3453c48c78dd239e1269d4ef8" },
        { "authorization-started", "e8e1b5c1ebf14937aac7e15abc8a0a1e" },
        { "authorization-failed", "914c637577144fb08b5937c183a4660d" },
        { "admin", "014a32e19a2f4ea6a0f70163d99fbe89" },
        { "refresh-token-expiring", "fd94e4d883904e85879047ee7cc7e3b5" },
};

static void manager_event_va(Manager *m, const char *name, const char *provider, const char *kind,
                             const char *fmt, va_list ap) _printf_(5, 0);

void manager_event(Manager *m, const Connection *c, const char *kind, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        manager_event_va(m, c ? c->name : NULL, c ? c->names->provider : NULL, kind, fmt, ap);
        va_end(ap);
}

void manager_event_named(Manager *m, const char *name, const char *kind, const char *fmt, ...) {
        Connection *c = name ? manager_get(m, name) : NULL;
        va_list ap;

        va_start(ap, fmt);
        manager_event_va(m, name, c ? c->names->provider : NULL, kind, fmt, ap);
        va_end(ap);
}

static void manager_event_va(Manager *m, const char *name, const char *provider, const char *kind,
                             const char *fmt, va_list ap) {
        char raw[2048], msg[512], f_conn[CONNECTION_NAME_MAX + 16], f_prov[PROVIDER_NAME_MAX + 16], f_ev[64], f_id[64];
        const char *fields[5] = {};
        size_t n = 0;
        int r;

        (void) vsnprintf(raw, sizeof raw, fmt, ap);
        /* Events hold identities and provider text: escaped, valid UTF-8
         * (the events API answers JSON), cut between characters. */
        (void) text_escape(msg, sizeof msg, raw, strlen(raw));

        if (name) {
                snprintf(f_conn, sizeof f_conn, "CONNECTION=%s", name);
                fields[n++] = f_conn;
        }
        if (provider) {
                snprintf(f_prov, sizeof f_prov, "PROVIDER=%s", provider);
                fields[n++] = f_prov;
        }
        snprintf(f_ev, sizeof f_ev, "TOKENBROKER_EVENT=%s", kind);
        fields[n++] = f_ev;
        for (size_t i = 0; i < ELEMENTSOF(message_ids); i++)
                if (streq(message_ids[i].kind, kind)) {
                        snprintf(f_id, sizeof f_id, "MESSAGE_ID=%s", message_ids[i].id);
                        fields[n++] = f_id;
                }
        log_fields(streq(kind, "needs-reauth") || streq(kind, "refresh-failed") ? LOG_WARNING : LOG_INFO, fields,
                   "%s%s%s", name ?: "", name ? ": " : "", msg);

        /* Queued behind every write before it; recorded by the writer. */
        r = m->writer ? store_writer_event(m->writer, now(CLOCK_REALTIME), name, kind, msg) : -ESHUTDOWN;
        if (r < 0)
                log_warning_errno(r, "Failed to record event, ignoring: %m");
}

/* ---- notify_command ---------------------------------------------------- */

#define NOTIFY_RUNNING_MAX 16

extern char **environ;

static int on_notify_exit(sd_event_source *s, const siginfo_t *si, void *userdata) {
        Manager *m = userdata;

        if (si->si_code != CLD_EXITED || si->si_status != 0)
                log_warning("notify_command (pid %d) %s %d.", (int) si->si_pid,
                            si->si_code == CLD_EXITED ? "exited with status" : "was killed by signal",
                            si->si_status);
        m->notify_running--;
        sd_event_source_disable_unref(s);
        return 0;
}

/* Reasons come from providers: keep them printable and short. */
static void env_clean(char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        *s = '?';
}

void manager_notify(Manager *m, Connection *c, const char *event) {
        char e_conn[CONNECTION_NAME_MAX + 32], e_prov[PROVIDER_NAME_MAX + 32], e_event[64], e_reason[400],
                e_state[64];
        char *const argv[] = { m->config->notify_command, (char *) event, (char *) c->name, NULL };
        char *envp[9];
        _cleanup_secret_ char *e_link = NULL;
        posix_spawn_file_actions_t fa;
        sd_event_source *src = NULL;
        usec_t t = now(DEADLINE_CLOCK);
        bool recovery = streq(event, "recovered");
        pid_t pid;
        size_t n = 0;
        int r;

        if (!m->config->notify_command)
                return;
        /* A recovery is told only to whoever heard of the trouble. */
        if (recovery && c->notified_s == 0)
                return;
        if (!recovery && c->notified_s > 0 &&
            t < usec_add(deadline_units_usec(c->notified_s, NOTIFIED_UNIT), m->config->notify_interval))
                return;
        if (m->notify_running >= NOTIFY_RUNNING_MAX) {
                log_warning("%s: %u notify commands still running, not starting another.", c->name,
                            m->notify_running);
                return;
        }
        snprintf(e_conn, sizeof e_conn, "TOKENBROKER_CONNECTION=%s", c->name);
        snprintf(e_prov, sizeof e_prov, "TOKENBROKER_PROVIDER=%s", c->names->provider);
        snprintf(e_event, sizeof e_event, "TOKENBROKER_EVENT=%s", event);
        snprintf(e_state, sizeof e_state, "TOKENBROKER_STATE=%s", conn_state_to_string(c->state));
        {
                const char *e = connection_last_error(c);
                char reason[301];

                (void) text_escape(reason, sizeof reason, e, e ? strlen(e) : 0);
                snprintf(e_reason, sizeof e_reason, "TOKENBROKER_REASON=%s", reason);
        }
        env_clean(e_reason);
        envp[n++] = e_conn;
        envp[n++] = e_prov;
        envp[n++] = e_event;
        envp[n++] = e_state;
        envp[n++] = e_reason;
        if (streq(event, "needs-reauth")) {
                _cleanup_secret_ char *link = NULL;

                links_mint_automatic(m, c, &link);
                if (link && asprintf(&e_link, "TOKENBROKER_REAUTH_URL=%s", link) < 0)
                        e_link = NULL;
                if (e_link)
                        envp[n++] = e_link;
        }
        envp[n++] = (char *) "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        envp[n] = NULL;

        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        /* Every descriptor of ours is close-on-exec; those of libraries
         * we cannot ask (curl's wake-up socketpair) are closed here: the
         * command gets stdin, stdout and stderr and nothing else. */
        posix_spawn_file_actions_addclosefrom_np(&fa, 3);
        r = posix_spawn(&pid, m->config->notify_command, &fa, NULL, argv, envp);
        posix_spawn_file_actions_destroy(&fa);
        if (r != 0) {
                log_warning_errno(r, "%s: cannot run notify_command '%s': %m", c->name, m->config->notify_command);
                return;
        }
        r = sd_event_add_child(m->event, &src, pid, WEXITED, on_notify_exit, m);
        if (r < 0) {
                log_warning_errno(r, "Cannot watch notify_command (pid %d), it will linger: %m", (int) pid);
                return;
        }
        (void) sd_event_source_set_description(src, "notify-command");
        m->notify_running++;
        c->notified_s = recovery ? 0 : deadline_units(t, NOTIFIED_UNIT);
}

/* ---- the timer wheel as one sd-event source ------------------------- */

static void on_wheel_entry(TimerEntry *e, usec_t t _unused_, void *userdata) {
        Manager *m = userdata;
        Connection *c = container_of(e, Connection, timer);

        refresher_on_timer(m, c);
}

void manager_wheel_rearm(Manager *m) {
        usec_t next = timerwheel_next(m->wheel);

        if (next == m->wheel_armed)
                return;
        m->wheel_armed = next;
        if (next == USEC_INFINITY) {
                (void) sd_event_source_set_enabled(m->wheel_timer, SD_EVENT_OFF);
                return;
        }
        (void) sd_event_source_set_time(m->wheel_timer, next);
        (void) sd_event_source_set_enabled(m->wheel_timer, SD_EVENT_ONESHOT);
}

/* Deadlines fired a turn of the loop at most: a storm of due connections
 * (after an outage, or seeded together) is fired a slice at a time with
 * token handouts in between. The rest is due at once: the wheel's next
 * time is now or earlier, so the timer is re-armed to fire on a later turn. */
#define WHEEL_FIRE_MAX 1024

static int on_wheel(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        Manager *m = userdata;

        m->wheel_armed = USEC_INFINITY;
        (void) timerwheel_advance_max(m->wheel, now(DEADLINE_CLOCK), WHEEL_FIRE_MAX, on_wheel_entry, m);
        manager_wheel_rearm(m);
        return 0;
}

usec_t manager_next_refresh(Manager *m) {
        return timerwheel_next(m->wheel);
}

/* ---- connections ---------------------------------------------------- */

/* A pending authorization's node in Manager.pending, out of line: only the
 * few connections with an authorization under way pay for it (24 bytes of
 * every connection before). Its key is the connection's state_hash, which
 * stays unchanged while it is linked (unlink first, then change it). */
typedef struct PendingNode {
        HashmapNode node;
        Connection *conn;
} PendingNode;

static const char *pending_key(const HashmapNode *n) {
        return connection_state_hash(container_of(n, const PendingNode, node)->conn);
}

int manager_pending_link(Manager *m, Connection *c) {
        PendingNode *p;
        int r;

        if (c->pending_linked || !connection_state_hash(c))
                return 0;
        p = new(PendingNode, 1);
        if (!p)
                return -ENOMEM;
        p->conn = c;
        r = hashmap_put(m->pending, &p->node);
        if (r < 0) {
                free(p);
                return r;
        }
        c->pending_linked = true;
        return 0;
}

void manager_pending_unlink(Manager *m, Connection *c) {
        HashmapNode *n;

        if (!c->pending_linked)
                return;
        /* A state hash is linked once (hashmap_put() refuses a second):
         * the node of this key is this connection's. */
        n = hashmap_remove(m->pending, connection_state_hash(c));
        assert(n && container_of(n, PendingNode, node)->conn == c);
        free(n ? container_of(n, PendingNode, node) : NULL);
        c->pending_linked = false;
}

Connection *manager_get_pending(Manager *m, const char *state_hash) {
        HashmapNode *n = hashmap_get(m->pending, state_hash);

        return n ? container_of(n, PendingNode, node)->conn : NULL;
}

/* loaded_hash: from the store at start, whose names are unique (the
 * schema says so): put without looking for the name first, with the hash
 * the loader computed ahead (prefetch_loaded()). */
static int manager_link_as(Manager *m, Connection *c, const uint32_t *loaded_hash) {
        int r;

        r = loaded_hash ? hashmap_put_unique_hashed(m->connections, &c->by_name, *loaded_hash)
                        : hashmap_put(m->connections, &c->by_name);
        if (r < 0)
                return r;
        r = manager_pending_link(m, c);
        if (r < 0) {
                hashmap_remove_node(m->connections, &c->by_name);
                return r;
        }
        /* Cannot fail: the hash map has just taken the same name. */
        r = ordmap_put(&m->ordered, &c->by_order);
        assert(r == 0);
        c->expiry_idx = CONN_NO_IDX;
        c->rt_idx[0] = c->rt_idx[1] = CONN_NO_IDX;
        count_state(m, c, +1);
        manager_expiry_update(m, c);
        return 0;
}

static int manager_link(Manager *m, Connection *c) {
        return manager_link_as(m, c, NULL);
}

/* Undoes manager_link() of a connection that never reached the store. */
static void manager_unlink_fresh(Manager *m, Connection *c) {
        hashmap_remove_node(m->connections, &c->by_name);
        ordmap_remove(&m->ordered, &c->by_order);
        manager_pending_unlink(m, c);
        count_state(m, c, -1);
        heap_remove(m, c);
        rtend_remove(m, c);
}

static void write_done(int result, const char *error, void *userdata) {
        const char *what = userdata;

        if (result < 0)
                log_error_errno(result, "Failed to %s a connection in the store: %s", what, strempty(error));
}

/* Several nodes: the name may be taken on another node at the same
 * moment (the database's UNIQUE(name) lets one insert win). The loser
 * forgets its copy once its insert fails, so no ghost stays in its
 * memory (the winner's row arrives by the follower), and a client
 * waiting for the insert (Waiter.on_insert, the API's create) learns
 * which way it went. */
typedef struct InsertDone {
        Manager *m;
        int64_t id;
        char name[];
} InsertDone;

static void insert_done(int result, const char *error, void *userdata) {
        InsertDone *x = userdata;
        Connection *c = x->m->connections ? manager_get(x->m, x->name) : NULL;
        Waiter *wake = NULL;

        if (result == -EEXIST)
                log_notice("%s: made on another node at the same moment; that one stays.", x->name);
        else if (result < 0)
                log_error_errno(result, "Failed to insert a connection in the store: %s", strempty(error));
        if (c && c->id == x->id) {
                for (Waiter **p = c->refresh ? &c->refresh->waiters : NULL; p && *p;) {
                        Waiter *w = *p;

                        if (!w->on_insert) {
                                p = &w->next;
                                continue;
                        }
                        *p = w->next;
                        w->next = wake;
                        wake = w;
                }
                connection_refresh_trim(c);
                while (wake) {
                        Waiter *w = wake;

                        wake = w->next;
                        w->next = NULL;
                        w->fn(c, result, w->userdata);
                }
                /* never in the database: not in memory either */
                c = manager_get(x->m, x->name);
                if (result < 0 && c && c->id == x->id)
                        manager_forget(x->m, c);
        }
        free(x);
}

int manager_insert_clustered(Manager *m, Connection *c, StoreRow *row) {
        size_t n = strlen(c->name);
        InsertDone *x = malloc(sizeof(InsertDone) + n + 1);
        int r;

        if (!x) {
                store_row_free(row);
                return -ENOMEM;
        }
        x->m = m;
        x->id = c->id;
        memcpy(x->name, c->name, n + 1);
        r = store_writer_insert(m->writer, row, insert_done, x);
        if (r < 0)
                free(x);   /* not queued: no completion */
        return r;
}

int manager_save(Manager *m, Connection *c) {
        _cleanup_(store_row_freep) StoreRow *row = NULL;
        ConnImage img;
        int r;

        refresher_image(c, &img);
        r = store_image_row_new(m->store, &img, &row);
        if (r < 0)
                return r;
        /* On a cluster the tokens are the lease holder's to write. */
        if (m->cluster) {
                int64_t epoch;
                usec_t until;

                if (cluster_lease(m->cluster, c->id, &epoch, &until) <= 0)
                        store_row_keep_tokens(row);
        }
        return store_writer_save(m->writer, TAKE_PTR(row), write_done, (void *) "save");
}

int manager_remove(Manager *m, Connection *c) {
        return manager_remove_then(m, c, write_done, (void *) "delete");
}

static void deleting_id(int64_t id, char buf[static DELETING_ID_MAX]) {
        snprintf(buf, DELETING_ID_MAX, "%" PRIi64, id);
}

/* Committed deletes remembered at most (the oldest forgotten first):
 * each is forgotten anyway once the follower hands over a later read. */
#define DELETED_MAX 4096

static void deleted_pop(Manager *m) {
        Deleting *d = m->deleted_head;

        m->deleted_head = d->next_done;
        if (!m->deleted_head)
                m->deleted_tail = &m->deleted_head;
        m->n_deleted--;
        hashmap_remove_node(m->deleting, &d->by_id);
        free(d);
}

/* The delete is done, then the caller's completion. Failed: the follower
 * may take a row of the id again (it is still there). Committed, with a
 * follower: a row of a read begun before now is older than the delete,
 * and is not taken (manager_deleting()) until the follower has handed
 * over a later read (manager_deleted_prune()). */
static void on_deleted(int result, const char *error, void *userdata) {
        Deleting *d = userdata;
        Manager *m = d->m;
        store_done_fn fn = d->fn;
        void *u = d->userdata;

        if (result >= 0 && m->follower) {
                d->done = true;
                d->done_read = follower_reads(m->follower);
                *m->deleted_tail = d;
                m->deleted_tail = &d->next_done;
                if (++m->n_deleted > DELETED_MAX)
                        deleted_pop(m);
        } else {
                hashmap_remove_node(m->deleting, &d->by_id);
                free(d);
        }
        if (fn)
                fn(result, error, u);
}

void manager_deleted_prune(Manager *m, uint64_t flushed) {
        while (m->deleted_head && m->deleted_head->done_read <= flushed)
                deleted_pop(m);
}

bool manager_deleting(Manager *m, int64_t id, uint64_t read) {
        char buf[DELETING_ID_MAX];
        HashmapNode *n;
        Deleting *d;

        deleting_id(id, buf);
        n = hashmap_get(m->deleting, buf);
        if (!n)
                return false;
        d = container_of(n, Deleting, by_id);
        return !d->done || read <= d->done_read;
}

int manager_remove_then(Manager *m, Connection *c, store_done_fn fn, void *userdata) {
        Deleting *d;
        int r;

        d = new0(Deleting, 1);
        if (!d)
                return -ENOMEM;
        *d = (Deleting) { .m = m, .fn = fn, .userdata = userdata };
        deleting_id(c->id, d->id);
        /* -EEXIST cannot be (an id's delete is queued once: the connection
         * leaves memory with it, and the follower does not take it back
         * while it is in the map); the first entry stands for both */
        r = hashmap_put(m->deleting, &d->by_id);
        if (r < 0 && r != -EEXIST) {
                free(d);
                return r;
        }
        /* Gone from memory now; a row whose delete then fails comes back
         * at the next start, or with the follower's next read of it (fn
         * logs it). */
        r = store_writer_delete(m->writer, c->id, on_deleted, d);
        if (r < 0) {
                hashmap_remove_node(m->deleting, &d->by_id);
                free(d);
                return r;
        }
        manager_forget(m, c);
        return 0;
}

void manager_forget(Manager *m, Connection *c) {
        refresher_cancel(m, c);
        trace_forget(m->trace, c->name);
        hashmap_remove_node(m->connections, &c->by_name);
        ordmap_remove(&m->ordered, &c->by_order);
        manager_pending_unlink(m, c);
        count_state(m, c, -1);
        heap_remove(m, c);
        rtend_remove(m, c);
        connection_free(c);
        manager_wheel_rearm(m);
}

/* What a loaded connection takes of the heap, about (tests/unit/
 * test-conn-memory.c measures it), tokens included: for heap_prepare(). */
#define HEAP_PER_CONNECTION ((size_t) 640)

int manager_adopt(Manager *m, Connection *c) {
        int r;

        c->expires_deadline = c->expires_at ? deadline_from_realtime(c->expires_at) : 0;
        r = manager_link(m, c);
        if (r < 0)
                return r;
        refresher_schedule(m, c);
        manager_wheel_rearm(m);
        return 0;
}

/* The start's load (daemon/loader.c): rows are read and connections
 * built on the loop's thread (load_one()); the loader's linking thread
 * opens their tokens while it keeps up (with its own copy of the key:
 * the reader was the load's critical path, the linking thread had time
 * to spare) and puts
 * them into the maps, heaps and wheel (link_loaded()), with m->loading
 * set. A token that does not open ends the load: the linking thread
 * leaves the message in x->unseal_error, logged by the loop's thread. */
typedef struct LoadContext {
        Manager *m;
        Loader *loader;
        int link_error;            /* the linking side's, not the store's */
        CryptKey *key;             /* the linking thread's */
        char unseal_error[256];    /* the linking thread's, read after loader_finish() */
} LoadContext;

static void prefetch_loaded(void *item, void *userdata) {
        Connection *c = item;
        LoadContext *x = userdata;
        Manager *m = x->m;

        /* the struct's first 128 bytes (hash node, timer and state,
         * tokens, expiry, ordered-map node, heap positions), its name,
         * and the bucket it goes to */
        __builtin_prefetch(c, 1);
        __builtin_prefetch((char *) c + 64, 1);
        c->by_name.hash = hashmap_hash(m->connections, c->name);
        hashmap_prefetch(m->connections, c->by_name.hash);
}

static int link_loaded(void *item, void *side, void *userdata) {
        Connection *c = item;
        LoadContext *x = userdata;
        Manager *m = x->m;
        uint32_t hash = c->by_name.hash;
        int r;

        r = store_tokens_open(x->key, c, side, x->unseal_error, sizeof x->unseal_error);
        if (r < 0)
                return r;

        c->expires_deadline = c->expires_at ? deadline_from_realtime(c->expires_at) : 0;
        r = manager_link_as(m, c, &hash);
        if (r < 0)
                return r;
        refresher_schedule(m, c);
        return 0;
}

static void free_loaded(void *item) {
        connection_free(item);
}

static const LoaderOps load_ops = {
        .prefetch = prefetch_loaded,
        .link = link_loaded,
        .free = free_loaded,
        .side_size = sizeof(StoreSealedTokens),
};

/* The tokens are left to the linking thread while it keeps up; when it
 * falls behind (a busy machine, a slow link), the reader opens them: the
 * two threads' shares even out whatever the machine does. */
static bool load_defer(void *userdata) {
        LoadContext *x = userdata;

        return !loader_busy(x->loader);
}

static int load_one(Connection *c, const StoreSealedTokens *t, void *userdata) {
        LoadContext *x = userdata;
        int r = loader_push_side(x->loader, c, t);

        if (r < 0)
                x->link_error = r;
        return r;
}

bool manager_wants_device(const Provider *p, const AuthorizeRequest *req) {
        return !req->refresh_token && (p->grant == GRANT_DEVICE_CODE || (req->device && p->device_authorization_url));
}

int manager_authorize(Manager *m, const AuthorizeRequest *req, Connection **ret_conn, char **ret_url,
                      const char **ret_error) {
        _cleanup_(connection_freep) Connection *fresh = NULL;
        _cleanup_secret_ char *state = NULL, *verifier = NULL;
        _cleanup_free_ char *challenge = NULL, *url = NULL;
        const Provider *p;
        Connection *c;
        char hash[65];
        usec_t t = now(CLOCK_REALTIME);
        int r;

        *ret_error = NULL;
        p = broker_config_find_provider(m->config, req->provider);
        if (!p) {
                *ret_error = "unknown provider";
                return -ENOENT;
        }
        c = manager_get(m, req->name);
        if (c && !streq(c->names->provider, p->name)) {
                *ret_error = "connection exists with another provider";
                return -EEXIST;
        }
        if (!c && hashmap_size(m->connections) >= m->config->max_connections) {
                *ret_error = "too many connections";
                return -E2BIG;
        }
        if (req->device && !p->device_authorization_url) {
                *ret_error = "the provider has no device_authorization_url";
                return -EOPNOTSUPP;
        }
        if (p->grant == GRANT_PASSWORD && !req->refresh_token && !(req->username ?: p->username)) {
                *ret_error = "the password grant needs a username";
                return -EINVAL;
        }
        if (p->grant == GRANT_PASSWORD && !req->refresh_token && !req->password && !p->password) {
                *ret_error = "the password grant needs a password (on stdin, or the provider's password_file)";
                return -EINVAL;
        }
        if (c && (connection_busy(c) || connection_revoke_waiter(c))) {
                *ret_error = "a request for this connection is in flight; try again";
                return -EBUSY;
        }

        if (p->grant == GRANT_AUTHORIZATION_CODE && !req->refresh_token && !manager_wants_device(p, req)) {
                r = random_token(32, &state);
                if (r < 0)
                        return r;
                r = sha256_hex(state, strlen(state), hash);
                if (r < 0)
                        return r;
                r = pkce_new(p->pkce, &verifier, &challenge);
                if (r < 0)
                        return r;
                r = oauth_authorize_url_params(p, p->redirect_uri, state, challenge,
                                               req->scope ?: (c ? c->names->requested_scope : NULL),
                                               req->params ?: (c ? connection_params(c) : NULL), &url, NULL);
                if (r == -EINVAL) {
                        *ret_error = "a parameter value does not fit the provider's authorize URL";
                        return r;
                }
                if (r < 0)
                        return r;
        }

        if (!c) {
                fresh = connection_new_with(req->name, NULL, CONN_IDENTITY_ROOM);
                if (!fresh)
                        return -ENOMEM;
                if (connection_set_provider(fresh, p->name) < 0)
                        return -ENOMEM;
                fresh->state = CONN_PENDING;
                fresh->created_at = fresh->updated_at = t;
                c = fresh;
        }
        if (req->scope && connection_set_requested_scope(c, req->scope) < 0)
                return -ENOMEM;
        /* NULL: keep what the connection has (a re-authorization link) */
        if (req->params && req->params != connection_params(c)) {
                r = connection_set_params(c, json_incref(req->params));
                if (r < 0)
                        return r;
        }
        if (req->n_allow_users > 0 || req->n_allow_groups > 0 || fresh) {
                r = connection_set_acl(c, req->allow_users, req->n_allow_users, req->allow_groups,
                                       req->n_allow_groups);
                if (r < 0)
                        return r;
        }

        /* A re-authorization replaces any earlier pending one. */
        if (!fresh) {
                manager_pending_unlink(m, c);
                connection_clear_device(c);
        }
        /* state_hash, code_verifier, auth_state, pending_until (a fresh
         * connection has none) */
        connection_clear_pending_auth(c);
        if (url) {
                char *h = strdup(hash);

                if (!h)
                        return -ENOMEM;
                /* one part for all four: only the first can fail */
                r = connection_set_state_hash(c, h);
                if (r < 0)
                        return r;
                (void) connection_set_code_verifier(c, TAKE_PTR(verifier));
                (void) connection_set_auth_state(c, TAKE_PTR(state));
                (void) connection_set_pending_until(c, t + m->config->pending_ttl);
        }
        if (p->grant == GRANT_PASSWORD && !req->refresh_token) {
                char *u = strdup(req->username ?: p->username);
                if (!u)
                        return -ENOMEM;
                r = connection_set_username(c, u);
                if (r < 0)
                        return r;
                if (req->password) {
                        char *pw = strdup(req->password);
                        if (!pw)
                                return -ENOMEM;
                        (void) connection_set_code_verifier(c, pw);   /* the part is there: username */
                }
        }
        if (req->refresh_token) {
                char *rt = strdup(req->refresh_token);
                if (!rt)
                        return -ENOMEM;
                connection_set_refresh_token(c, rt);
        }
        c->updated_at = t;

        if (fresh) {
                _cleanup_(store_row_freep) StoreRow *row = NULL;

                /* The id from memory, the row queued: nothing waits for
                 * the disk. No token is in it yet, and the first grant's
                 * commit comes after it in the queue. */
                c->id = store_connection_id_new(m->store);
                if (c->id < 0) {
                        /* several nodes: the next block of ids is on its way */
                        *ret_error = "no connection id available yet (the store is busy); retry in a moment";
                        return (int) c->id;
                }
                r = store_row_new(m->store, c, &row);
                if (r < 0) {
                        *ret_error = "cannot store the connection";
                        return r;
                }
                r = manager_link(m, c);
                if (r < 0)
                        return r;
                r = m->cluster ? manager_insert_clustered(m, c, TAKE_PTR(row))
                               : store_writer_insert(m->writer, TAKE_PTR(row), write_done, (void *) "insert");
                if (r < 0) {
                        manager_unlink_fresh(m, c);
                        *ret_error = "cannot store the connection";
                        return r;
                }
                TAKE_PTR(fresh);
        } else {
                r = manager_save(m, c);
                if (r < 0) {
                        *ret_error = "cannot store the connection";
                        return r;
                }
                r = manager_pending_link(m, c);
                if (r < 0)
                        return r;
        }

        if (req->refresh_token) {
                manager_event(m, c, "imported", "refresh token imported; proving it with a refresh");
                (void) refresher_refresh(m, c, NULL);
        } else if (manager_wants_device(p, req))
                ;   /* the caller starts the device request and waits for it */
        else if (p->grant == GRANT_AUTHORIZATION_CODE) {
                manager_event(m, c, "authorization-started", "authorization started at provider %s", p->name);
                refresher_schedule(m, c);
        } else {
                manager_event(m, c, "grant-started", "%s grant started", grant_to_string(p->grant));
                (void) refresher_refresh(m, c, NULL);
        }
        manager_wheel_rearm(m);

        *ret_conn = c;
        *ret_url = TAKE_PTR(url);
        return 0;
}

/* ---- life cycle ----------------------------------------------------- */

/* Stops once no provider request is in flight, or after a bound: an
 * answer already on its way may carry a rotated refresh token. */
#define STOP_GRACE (10 * USEC_PER_SEC)

void manager_maybe_exit(Manager *m) {
        /* Commits in flight too: their waiters get answers. */
        if (m->stopping && m->refreshing == 0 && m->committing == 0)
                (void) sd_event_exit(m->event, 0);
}

static int on_stop_timeout(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        Manager *m = userdata;

        log_warning("%u provider requests still in flight after %" PRIu64 " s, abandoning them.",
                    m->refreshing, STOP_GRACE / USEC_PER_SEC);
        return sd_event_exit(m->event, 0);
}

int manager_reload(Manager *m) {
        BrokerConfig *fresh = NULL;
        ConfError err = {};
        int r;

        (void) sd_notifyf(false, "RELOADING=1\nMONOTONIC_USEC=%" PRIu64, now(CLOCK_MONOTONIC));
        r = broker_config_load(m->config_path, &fresh, &err);
        if (r < 0) {
                log_error("Reload failed, keeping the running configuration: %s", err.msg);
                (void) sd_notify(false, "READY=1\nSTATUS=Reload failed; running configuration kept.");
                manager_status_changed(m);
                return r;
        }
        if (!streq(fresh->socket, m->config->socket) || !streq(fresh->callback_listen, m->config->callback_listen) ||
            !streq(fresh->state_dir, m->config->state_dir))
                log_notice("socket, callback_listen and state_dir take effect at the next restart.");
        /* Everything that holds a provider looks it up by name when it
         * needs it, so the old configuration can go at once. */
        free(fresh->socket);
        fresh->socket = strdup(m->config->socket);
        free(fresh->callback_listen);
        fresh->callback_listen = strdup(m->config->callback_listen);
        free(fresh->state_dir);
        fresh->state_dir = strdup(m->config->state_dir);
        if (!fresh->socket || !fresh->callback_listen || !fresh->state_dir) {
                broker_config_free(fresh);
                (void) sd_notify(false, "READY=1");
                return log_oom();
        }
        if (http_set_egress(m->http, fresh->ca_file, fresh->connect_to, fresh->n_connect_to) < 0) {
                broker_config_free(fresh);
                (void) sd_notify(false, "READY=1");
                return log_oom();
        }
        broker_config_free(m->config);
        m->config = fresh;
        log_info("Reloaded %s: %zu providers.", m->config_path, fresh->n_providers);
        (void) sd_notify(false, "READY=1");
        manager_status_changed(m);
        return 0;
}

static int on_signal(sd_event_source *s _unused_, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        if (si->ssi_signo == SIGHUP) {
                (void) manager_reload(m);
                return 0;
        }
        if (m->stopping)
                return 0;
        log_info("Received %s, shutting down.", strsignal((int) si->ssi_signo));
        (void) sd_notify(false, "STOPPING=1");
        m->stopping = true;
        store_writer_unstall(m->writer);   /* the test hook never holds a stop */
        if (m->refreshing > 0 || m->committing > 0) {
                log_info("Waiting up to %" PRIu64 " s for %u provider requests in flight and %u commits.",
                         STOP_GRACE / USEC_PER_SEC, m->refreshing, m->committing);
                (void) sd_event_add_time_relative(m->event, &m->stop_timer, CLOCK_MONOTONIC, STOP_GRACE, 0,
                                                  on_stop_timeout, m);
        }
        manager_maybe_exit(m);
        return 0;
}

/* The key first (a credential, else the key file, created on first start),
 * then the database, which checks it before any row is read. */
/* Loads a key file (or credential), logging what is wrong with it. */
static int key_load_logged(const char *path, const char *what, bool create, CryptKey **ret, bool *ret_created) {
        int r = crypt_key_load(path, create, ret, ret_created);

        if (r == -EPERM)
                return log_error_errno(r, "Encryption key (%s %s) is accessible by group or others: "
                                       "refusing to use it (chmod 0600).", what, path);
        if (r == -EBADMSG)
                return log_error_errno(r, "Encryption key (%s %s) is not %d bytes long: refusing to use it.",
                                       what, path, CRYPT_KEY_SIZE);
        if (r == -EBADF)
                return log_error_errno(r, "Encryption key (%s %s) is not a regular file: refusing to use it.",
                                       what, path);
        if (r < 0)
                return log_error_errno(r, "Failed to %s encryption key (%s %s): %m",
                                       create ? "read or create" : "read", what, path);
        return 0;
}

/* The PostgreSQL role's password: the credential, else the file; NULL
 * when neither is set (libpq's own ways: PGPASSFILE, ~/.pgpass). */
static int manager_store_password(Manager *m, char **ret) {
        const BrokerConfig *c = m->config;
        _cleanup_free_ char *path = NULL;
        mode_t mode = 0;
        int r;

        *ret = NULL;
        if (c->store_password_credential) {
                const char *dir = getenv("CREDENTIALS_DIRECTORY");

                if (!dir)
                        return log_error_errno(ENOENT, "store_password_credential is set but $CREDENTIALS_DIRECTORY "
                                               "is not (LoadCredential= missing?).");
                if (asprintf(&path, "%s/%s", dir, c->store_password_credential) < 0)
                        return log_oom();
        } else if (c->store_password_file) {
                path = strdup(c->store_password_file);
                if (!path)
                        return log_oom();
        } else
                return 0;
        r = conf_read_secret_file(path, ret, &mode);
        if (r < 0)
                return log_error_errno(r, "Cannot read the store's password from '%s': %s", path,
                                       r == -EINVAL ? "empty or binary" : strerror(-r));
        if (!c->store_password_credential && (mode & 0077)) {
                if (c->strict) {
                        *ret = secret_free(*ret);
                        return log_error_errno(EPERM, "'%s' (store_password_file) is readable by group or others "
                                               "(mode %04o): refused under strict = true; chmod 0600 it.", path,
                                               (unsigned) (mode & 07777));
                }
                log_warning("'%s' (store_password_file) is readable by group or others (mode %04o) and holds the "
                            "store's password: chmod 0600 it.", path, (unsigned) (mode & 07777));
        }
        return 0;
}

/* Where the store is: the PostgreSQL URI of `store`, else the SQLite file
 * in state_dir; *ret_shown is what messages say (a URI's password, if it
 * holds one, replaced). */
static int manager_store_target(Manager *m, char **ret_where, char **ret_shown) {
        if (m->config->store) {
                *ret_where = strdup(m->config->store);
                *ret_shown = pg_uri_redact(m->config->store);
        } else {
                if (asprintf(ret_where, "%s/tokenbroker.db", m->config->state_dir) < 0)
                        *ret_where = NULL;
                *ret_shown = *ret_where ? strdup(*ret_where) : NULL;
        }
        if (!*ret_where || !*ret_shown) {
                *ret_where = mfree(*ret_where);
                *ret_shown = mfree(*ret_shown);
                return log_oom();
        }
        return 0;
}

/* The database went away or came back (daemon/cluster.c): tokens in
 * memory are served either way; writes (and so refreshes' results) fail
 * while it is away. */
static void on_cluster_change(bool reachable, const char *error, void *userdata) {
        Manager *m = userdata;

        if (reachable)
                log_notice("The store's database is reachable.");
        else
                log_warning("The store's database is unreachable (%s): tokens held are still served; refreshed "
                            "tokens are not handed out until they are committed.", error);
        manager_status_changed(m);
}

static int manager_open_store(Manager *m, const char *where, const char *db) {
        _cleanup_(crypt_key_freep) CryptKey *key = NULL;
        _cleanup_free_ char *path = NULL;
        _cleanup_secret_ char *password = NULL;
        bool credential = false, created = false;
        char error[512];
        const char *what;
        int r;

        r = crypt_key_find(m->config->key_credential, m->config->key_file, &path, &credential);
        if (r < 0)
                return log_error_errno(r, "Failed to find the encryption key: %m");
        what = credential ? "credential" : "key file";
        r = key_load_logged(path, what, !credential, &key, &created);
        if (r < 0)
                return r;

        r = manager_store_password(m, &password);
        if (r < 0)
                return r;
        r = store_open_with(where,
                            &(StoreOptions) { .password = password, .node = m->config->store ? m->config->node_name : NULL },
                            key, &m->store, error, sizeof error);
        if (r == -EKEYREJECTED) {
                /* A key made just now cannot be the right one: do not leave
                 * it behind to be mistaken for it. */
                if (created)
                        (void) unlink(path);
                return log_error_errno(r, "%s was sealed with another key (%s %s%s): refusing to start.", db,
                                       what, path, created ? ", which was missing" : "");
        }
        if (r < 0)
                return log_error_errno(r, "Failed to open database '%s': %s", db, error);
        /* Several nodes share a PostgreSQL database (leases, daemon/cluster.h),
         * but not a node_name. */
        if (m->config->store) {
                r = store_lock_node(m->store, m->config->node_name);
                if (r < 0)
                        return log_error_errno(r, "Cannot join the cluster on '%s' as node '%s': %s: not starting.",
                                               db, m->config->node_name, store_last_error(m->store));
        }
        if (m->config->store) {
                r = cluster_new(where, password, m->config->node_name, m->started_at, m->event, on_cluster_change, m,
                                &m->cluster);
                if (r < 0)
                        return log_error_errno(r, "Failed to start the node heartbeat: %m");
        }
        if (created)
                log_notice("Created encryption key file '%s'. Keep a copy: the tokens in '%s' cannot be read "
                           "without it.", path, db);
        else
                log_debug("Encryption key from %s '%s'.", what, path);
        if (r > 0)
                log_notice("Sealed the secrets of %d connection%s in '%s' (encryption at rest).", r,
                           r == 1 ? "" : "s", db);
        return 0;
}

/* One daemon per store: two would refresh the same rotating refresh
 * tokens, and the provider takes the second use of one for theft. An
 * exclusive flock(2) on state_dir/lock, taken before the key, the database
 * or a socket is touched; the kernel drops it when the process ends,
 * however it ends. The file holds the owner's PID for the message a
 * second daemon prints; it is never removed (removing a lock file races
 * with the next daemon opening it). */
static int manager_lock_store(Manager *m, bool rotating) {
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -EBADF;
        char buf[32], line[32];
        ssize_t n;
        long pid = 0;
        int len;

        if (asprintf(&path, "%s/lock", m->config->state_dir) < 0)
                return log_oom();
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
        if (fd < 0)
                return log_error_errno(errno, "Failed to open the lock file '%s': %m", path);
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                if (errno != EWOULDBLOCK)
                        return log_error_errno(errno, "Failed to lock '%s': %m", path);
                n = pread(fd, buf, sizeof buf - 1, 0);
                if (n > 0) {
                        buf[n] = 0;
                        pid = strtol(buf, NULL, 10);
                }
                if (rotating)
                        return log_error_errno(EBUSY, "The store in '%s' is in use (PID %ld holds '%s'): stop "
                                               "tokenbrokerd before rotating the key.", m->config->state_dir,
                                               pid, path);
                if (pid > 0)
                        return log_error_errno(EBUSY, "Another tokenbrokerd (PID %ld) is running on the store in "
                                               "'%s' (it holds '%s'): not starting a second one.", pid,
                                               m->config->state_dir, path);
                return log_error_errno(EBUSY, "Another process holds '%s', the lock of the store in '%s': "
                                       "not starting a second daemon on it.", path, m->config->state_dir);
        }
        len = snprintf(line, sizeof line, "%ld\n", (long) getpid());
        if (ftruncate(fd, 0) < 0 || pwrite(fd, line, (size_t) len, 0) != len)
                log_warning_errno(errno, "Failed to write our PID to '%s', ignoring: %m", path);
        m->lock_fd = TAKE_FD(fd);
        return 0;
}

/* The state directory holds the database, its -wal and -shm and (by
 * default) the key file: nobody but the daemon's user may look in. One the
 * daemon made is 0700; one made by someone else with group or other
 * access is refused rather than changed behind the admin's back. */
static int manager_check_state_dir(const char *dir) {
        struct stat st;

        if (stat(dir, &st) < 0)
                return log_error_errno(errno, "Failed to stat state directory '%s': %m", dir);
        if (!S_ISDIR(st.st_mode))
                return log_error_errno(ENOTDIR, "state_dir '%s' is not a directory.", dir);
        if (st.st_mode & 0077)
                return log_error_errno(EPERM, "State directory '%s' is accessible by group or others (mode %04o): "
                                       "refusing to start, its database would be readable by them. Fix it with "
                                       "'chmod 0700 %s'.", dir, (unsigned) (st.st_mode & 07777), dir);
        return 0;
}

/* The directory of the API socket: others may pass through it, but one
 * they can write to lets them swap the socket for their own (unless the
 * sticky bit keeps them to their own entries). */
static int manager_check_socket_dir(const char *dir) {
        struct stat st;

        if (stat(dir, &st) < 0)
                return log_error_errno(errno, "Failed to stat socket directory '%s': %m", dir);
        if ((st.st_mode & 0022) && !(st.st_mode & S_ISVTX))
                return log_error_errno(EPERM, "Socket directory '%s' is writable by group or others (mode %04o): "
                                       "refusing to start, they could replace the socket. Fix it with "
                                       "'chmod go-w %s'.", dir, (unsigned) (st.st_mode & 07777), dir);
        return 0;
}

/* PATH SUFFIX, when it exists, made 0600 (never through a symlink). */
static void manager_private_file(const char *path, const char *suffix) {
        _cleanup_free_ char *p = NULL;
        _cleanup_close_ int fd = -EBADF;
        struct stat st;

        if (asprintf(&p, "%s%s", path, suffix) < 0)
                return;
        fd = open(p, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (st.st_mode & 0077) == 0)
                return;
        /* fchmod() refuses an O_PATH descriptor: through /proc, which
         * names this very inode. */
        {
                char proc[64];

                snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
                if (chmod(proc, 0600) < 0)
                        log_warning_errno(errno, "Failed to make '%s' private (chmod 0600), ignoring: %m", p);
                else
                        log_notice("Made '%s' private: it was mode %04o.", p, (unsigned) (st.st_mode & 07777));
        }
}

int manager_rotate_key(Manager *m, const char *new_key_file, void (*before_commit)(void)) {
        _cleanup_(crypt_key_freep) CryptKey *old_key = NULL, *new_key = NULL;
        _cleanup_free_ char *path = NULL, *where = NULL, *db = NULL, *msg = NULL;
        _cleanup_secret_ char *password = NULL;
        _cleanup_(store_closep) Store *s = NULL;
        char error[512];
        bool credential = false;
        const char *what;
        int r, n = 0;

        r = manager_lock_store(m, true);
        if (r < 0)
                return r;
        r = crypt_key_find(m->config->key_credential, m->config->key_file, &path, &credential);
        if (r < 0)
                return log_error_errno(r, "Failed to find the current encryption key: %m");
        what = credential ? "credential" : "key file";
        r = key_load_logged(path, what, false, &old_key, NULL);
        if (r < 0)
                return r;
        r = key_load_logged(new_key_file, "new key file", false, &new_key, NULL);
        if (r < 0)
                return r;
        if (memcmp(old_key->bytes, new_key->bytes, CRYPT_KEY_SIZE) == 0)
                return log_error_errno(EINVAL, "The new key file '%s' holds the current key: nothing to rotate.",
                                       new_key_file);
        r = manager_store_target(m, &where, &db);
        if (r < 0)
                return r;
        if (!m->config->store && access(db, F_OK) < 0)
                return log_error_errno(errno, "No store at '%s': %m", db);
        r = manager_store_password(m, &password);
        if (r < 0)
                return r;
        r = store_open_with(where, &(StoreOptions) { .password = password }, old_key, &s, error, sizeof error);
        if (r == -EKEYREJECTED)
                return log_error_errno(r, "%s was sealed with another key than the current one (%s %s): "
                                       "refusing to rotate.", db, what, path);
        if (r < 0)
                return log_error_errno(r, "Failed to open database '%s': %s", db, error);
        if (store_lock_single_node(s) < 0)
                return log_error_errno(EBUSY, "A tokenbrokerd runs on '%s': stop it before rotating the key.", db);
        if (asprintf(&msg, "the store was re-sealed under a new key (by uid %u)", (unsigned) getuid()) < 0)
                return log_oom();
        r = store_rekey(s, new_key, msg, before_commit, &n);
        if (r < 0)
                return log_error_errno(r, "Failed to re-seal '%s' under the new key (nothing was changed): %s",
                                       db, store_last_error(s));
        log_notice("Re-sealed the secrets of %d connection%s in '%s' under the key in '%s'. Now put that key "
                   "in place of %s (%s) and start tokenbrokerd: the old key no longer opens the store.",
                   n, n == 1 ? "" : "s", db, new_key_file, path, what);
        return 0;
}

/* Opens one side of --copy-store: a SQLite file (FROM must exist) or a
 * PostgreSQL URI, under the daemon's key, with no daemon on it. */
static int copy_open(const char *where, const char *password, CryptKey *key, const char *what,
                     const char *key_path, bool must_exist, Store **ret) {
        _cleanup_free_ char *shown = NULL;
        char error[512];
        bool pg = store_is_postgresql(where);
        int r;

        shown = pg ? pg_uri_redact(where) : strdup(where);
        if (!shown)
                return log_oom();
        if (!pg && must_exist && access(where, F_OK) < 0)
                return log_error_errno(errno, "No store at '%s' (%s): %m", shown, what);
        r = store_open_with(where, &(StoreOptions) { .password = password }, key, ret, error, sizeof error);
        if (r == -EKEYREJECTED)
                return log_error_errno(r, "%s '%s' was sealed with another key than %s: nothing copied.", what, shown,
                                       key_path);
        if (r < 0)
                return log_error_errno(r, "Failed to open %s '%s': %s", what, shown, error);
        if (store_lock_single_node(*ret) < 0)
                return log_error_errno(EBUSY, "A tokenbrokerd runs on %s '%s': stop it first.", what, shown);
        return 0;
}

int manager_copy_store(Manager *m, const char *from, const char *to) {
        _cleanup_(crypt_key_freep) CryptKey *key = NULL;
        _cleanup_(store_closep) Store *src = NULL, *dst = NULL;
        _cleanup_free_ char *path = NULL, *from_shown = NULL, *to_shown = NULL;
        _cleanup_secret_ char *password = NULL;
        unsigned n = 0, k = 0;
        bool credential = false;
        int r;

        if (streq(from, to))
                return log_error_errno(EINVAL, "--copy-store: FROM and TO are the same store.");
        /* No daemon on this state_dir while the stores change hands. */
        r = mkdir_p(m->config->state_dir, 0700);
        if (r < 0)
                return log_error_errno(r, "Failed to create state directory '%s': %m", m->config->state_dir);
        r = manager_lock_store(m, true);
        if (r < 0)
                return r;
        r = crypt_key_find(m->config->key_credential, m->config->key_file, &path, &credential);
        if (r < 0)
                return log_error_errno(r, "Failed to find the encryption key: %m");
        r = key_load_logged(path, credential ? "credential" : "key file", false, &key, NULL);
        if (r < 0)
                return r;
        r = manager_store_password(m, &password);
        if (r < 0)
                return r;
        from_shown = store_is_postgresql(from) ? pg_uri_redact(from) : strdup(from);
        to_shown = store_is_postgresql(to) ? pg_uri_redact(to) : strdup(to);
        if (!from_shown || !to_shown)
                return log_oom();
        r = copy_open(from, password, key, "the source", path, true, &src);
        if (r < 0)
                return r;
        r = copy_open(to, password, key, "the target", path, false, &dst);
        if (r < 0)
                return r;
        r = store_copy(src, dst, &n, &k);
        if (r == -ENOTEMPTY)
                return log_error_errno(r, "The target '%s' is not empty (%s): refusing to copy over it.", to_shown,
                                       store_last_error(dst));
        if (r < 0)
                return log_error_errno(r, "Failed to copy '%s' to '%s' (nothing was copied): %s", from_shown,
                                       to_shown, store_last_error(dst));
        log_notice("Copied %u connection%s and %u event%s from '%s' (%s) to '%s' (%s).", n, n == 1 ? "" : "s", k,
                   k == 1 ? "" : "s", from_shown, store_engine_name(src), to_shown, store_engine_name(dst));
        return 0;
}

/* Whether a Unix socket path is in use: connects to it. Returns 1 if
 * nobody listens (a socket left by a daemon that was killed: safe to
 * replace), 0 if somebody does (*ret_pid: who, or 0), or -errno. */
static int socket_is_stale(const struct sockaddr_un *sa, pid_t *ret_pid) {
        _cleanup_close_ int fd = -EBADF;
        struct ucred cred = {};
        socklen_t l = sizeof cred;

        *ret_pid = 0;
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (const struct sockaddr *) sa, sizeof *sa) >= 0) {
                if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &l) >= 0)
                        *ret_pid = cred.pid;
                return 0;
        }
        if (errno == ECONNREFUSED)
                return 1;
        if (errno == EAGAIN || errno == EINPROGRESS)
                return 0;   /* a full backlog: alive, and busy */
        return -errno;
}

/* The API socket when systemd passed none. A path already there is
 * replaced only when it is a socket nobody listens on; a live socket
 * belongs to a running daemon (maybe on another store), and anything that
 * is not a socket is not ours to remove. */
static int manager_bind_api(Manager *m, int *ret) {
        const char *path = m->config->socket;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -EBADF, pfd = -EBADF;
        struct stat st;
        pid_t pid;
        mode_t old;
        int r;

        if (strlen(path) >= sizeof sa.sun_path)
                return log_error_errno(ENAMETOOLONG, "Socket path '%s' is too long (at most %zu bytes).", path,
                                       sizeof sa.sun_path - 1);
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return log_error_errno(errno, "Failed to create the API socket: %m");

        old = umask(0777 & ~m->config->socket_mode);
        r = bind(fd, (struct sockaddr *) &sa, sizeof sa) < 0 ? -errno : 0;
        if (r == -EADDRINUSE) {
                if (lstat(path, &st) < 0)
                        r = -errno;
                else if (!S_ISSOCK(st.st_mode))
                        r = -ENOTSOCK;
                else
                        r = socket_is_stale(&sa, &pid);
                if (r == 0) {
                        umask(old);
                        if (pid > 0)
                                return log_error_errno(EADDRINUSE, "'%s' is the socket of a running process (PID %d), "
                                                       "another tokenbrokerd on another state_dir? Not replacing "
                                                       "it: choose another socket.", path, (int) pid);
                        return log_error_errno(EADDRINUSE, "'%s' is the socket of a running process: not "
                                               "replacing it, choose another socket.", path);
                }
                if (r == -ENOTSOCK) {
                        umask(old);
                        return log_error_errno(r, "'%s' exists and is not a socket: not removing it, choose "
                                               "another socket path.", path);
                }
                if (r > 0) {
                        log_notice("Replacing '%s', a stale socket nobody listens on.", path);
                        if (unlink(path) < 0 && errno != ENOENT)
                                r = -errno;
                        else
                                r = bind(fd, (struct sockaddr *) &sa, sizeof sa) < 0 ? -errno : 0;
                }
        }
        umask(old);
        if (r < 0)
                return log_error_errno(r, "Failed to listen on '%s': %m", path);
        /* The socket's mode came from the umask it was bound under; its
         * group is set through a descriptor of the node itself (O_PATH,
         * O_NOFOLLOW): a symlink swapped in at the path after bind()
         * cannot redirect the chown to another file. */
        pfd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (pfd < 0 || fstat(pfd, &st) < 0)
                return log_error_errno(errno, "Failed to open '%s' after binding it: %m", path);
        if (!S_ISSOCK(st.st_mode))
                return log_error_errno(EEXIST, "'%s' was replaced right after we bound it: refusing to use it.", path);
        m->api_bound_path = strdup(path);
        if (!m->api_bound_path)
                return log_oom();
        m->api_bound_dev = st.st_dev;
        m->api_bound_ino = st.st_ino;

        if (m->config->socket_group) {
                gid_t gid;

                r = acl_parse_group(m->config->socket_group, &gid);
                if (r < 0)
                        return log_error_errno(r, "Unknown socket_group '%s'.", m->config->socket_group);
                if (fchownat(pfd, "", (uid_t) -1, gid, AT_EMPTY_PATH) < 0)
                        return log_error_errno(errno, "Failed to give '%s' to group '%s': %m", path,
                                               m->config->socket_group);
        }
        if (listen(fd, 4096) < 0)
                return log_error_errno(errno, "Failed to listen on '%s': %m", path);
        *ret = TAKE_FD(fd);
        return 0;
}

int manager_startup(Manager *m) {
        _cleanup_free_ char *where = NULL, *db = NULL, *sockdir = NULL;
        usec_t load_t0, load_cpu0, read_cpu0, read_cpu = 0, link_cpu = 0;
        LoadContext x = {};
        bool store_failed = false;
        HeapRegion heap;
        int64_t since = 0;
        size_t n_hint;
        sigset_t mask;
        char *slash;
        int r;

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGCHLD);   /* sd_event_add_child() for notify_command */
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_error_errno(errno, "Failed to block signals: %m");
        if ((r = sd_event_add_signal(m->event, &m->sigterm, SIGTERM, on_signal, m)) < 0 ||
            (r = sd_event_add_signal(m->event, &m->sigint, SIGINT, on_signal, m)) < 0 ||
            (r = sd_event_add_signal(m->event, &m->sighup, SIGHUP, on_signal, m)) < 0)
                return log_error_errno(r, "Failed to watch signals: %m");

        r = mkdir_p(m->config->state_dir, 0700);
        if (r < 0)
                return log_error_errno(r, "Failed to create state directory '%s': %m", m->config->state_dir);
        r = manager_check_state_dir(m->config->state_dir);
        if (r < 0)
                return r;
        r = manager_lock_store(m, false);
        if (r < 0)
                return r;
        r = manager_store_target(m, &where, &db);
        if (r < 0)
                return r;
        /* A database left group- or other-readable by an older version:
         * its own before it is opened, so the -wal and -shm SQLite makes
         * with the database's mode are private too. */
        if (!m->config->store) {
                manager_private_file(db, "");
                manager_private_file(db, "-wal");
                manager_private_file(db, "-shm");
        }
        r = manager_open_store(m, where, db);
        if (r < 0)
                return r;

        load_t0 = now(CLOCK_MONOTONIC);
        load_cpu0 = now(CLOCK_PROCESS_CPUTIME_ID);
        read_cpu0 = now(CLOCK_THREAD_CPUTIME_ID);
        /* One bucket array for them all: no resizes (and lookups in two
         * arrays) while a million are put. */
        n_hint = MIN(store_connection_count_hint(m->store), (size_t) m->config->max_connections);
        (void) hashmap_reserve(m->connections, n_hint);
        manager_expiry_reserve(m, n_hint);
        heap_prepare(n_hint * HEAP_PER_CONNECTION, &heap);
        /* Several nodes: other nodes' changes from here on are followed
         * (daemon/follower.h); read before the rows, none is missed. */
        r = store_max_version(m->store, &since);
        if (r >= 0) {
                /* Two threads for a store of any size: one way to load,
                 * always tested. */
                m->loading = true;
                x.m = m;
                r = store_key_dup(m->store, &x.key);
                if (r >= 0)
                        r = loader_new(&load_ops, &x, &heap, true, &x.loader);
                if (r >= 0) {
                        r = store_load_connections_deferred(m->store, load_one, load_defer, &x);
                        store_failed = r < 0 && x.link_error == 0;
                        read_cpu = now(CLOCK_THREAD_CPUTIME_ID);
                        r = loader_finish(TAKE_PTR(x.loader), r, &link_cpu);
                }
                m->loading = false;
                x.key = crypt_key_free(x.key);
        }
        heap_prepare_done();
        (void) hashmap_reserve(m->connections, 0);
        if (r < 0 && store_failed)
                return log_error_errno(r, "Failed to load connections from '%s': %s", db,
                                       store_last_error(m->store));
        if (r < 0 && x.unseal_error[0])
                return log_error_errno(r, "Failed to load connections from '%s': %s", db, x.unseal_error);
        if (r < 0)
                return log_error_errno(r, "Failed to load connections from '%s': %m", db);
        manager_status_changed(m);
        rtend_rearm(m);
        manager_wheel_rearm(m);

        /* Every write from here on goes through the writer thread (its
         * own SQLite handle); the loop's handle only reads. After the
         * signals are blocked: the thread inherits the mask. */
        r = store_writer_new(m->store, m->event, &m->writer);
        if (r < 0)
                return log_error_errno(r, "Failed to start the store writer for '%s': %m", db);
        if (m->cluster) {
                r = follower_new(m, since, &m->follower);
                if (r < 0)
                        return log_error_errno(r, "Failed to follow the other nodes' changes: %m");
        }
        if (getenv("TOKENBROKER_TEST_WRITER_STALL"))
                log_warning("TOKENBROKER_TEST_WRITER_STALL is set: the store writer holds each commit while '%s' "
                            "exists (a test hook).", getenv("TOKENBROKER_TEST_WRITER_STALL"));
        r = links_new(m, &m->links);
        if (r < 0)
                return log_error_errno(r, "Failed to load re-authorization links from '%s': %m", db);
        /* The two threads' CPU apart: on an idle machine the load takes
         * about the larger of them. */
        log_info("Loaded %zu connections (%u active, %u pending, %u need re-authorization) in %" PRIu64
                 " ms (%" PRIu64 " ms CPU: %" PRIu64 " ms reading, %" PRIu64 " ms linking).",
                 hashmap_size(m->connections), m->n_state[CONN_ACTIVE], m->n_state[CONN_PENDING],
                 m->n_state[CONN_NEEDS_REAUTH], usec_sub(now(CLOCK_MONOTONIC), load_t0) / USEC_PER_MSEC,
                 usec_sub(now(CLOCK_PROCESS_CPUTIME_ID), load_cpu0) / USEC_PER_MSEC,
                 usec_sub(read_cpu, read_cpu0) / USEC_PER_MSEC, link_cpu / USEC_PER_MSEC);

        /* Sockets passed by systemd are used as they are. */
        if (m->api_fd < 0) {
                sockdir = strdup(m->config->socket);
                if (!sockdir)
                        return log_oom();
                slash = strrchr(sockdir, '/');
                if (slash && slash != sockdir) {
                        mode_t old;

                        *slash = 0;
                        /* Clients of other users pass through it: 0755
                         * despite the daemon's umask 077. */
                        old = umask(0022);
                        r = mkdir_p(sockdir, 0755);
                        umask(old);
                        if (r < 0)
                                return log_error_errno(r, "Failed to create '%s': %m", sockdir);
                        r = manager_check_socket_dir(sockdir);
                        if (r < 0)
                                return r;
                }
        }
        m->api_passed = m->api_fd >= 0;
        m->callback_passed = m->callback_fd >= 0;
        if (!m->api_passed) {
                r = manager_bind_api(m, &m->api_fd);
                if (r < 0)
                        return r;
        }
        r = api_new(m, m->api_fd, &m->api);
        if (r < 0)
                return r;
        m->api_fd = -EBADF;   /* owned by the Api now */
        r = callback_new(m, m->callback_fd, &m->callback);
        if (r < 0)
                return r;
        m->callback_fd = -EBADF;
        return 0;
}

/* Failures in a row after which EINVAL is not a refused timer any more
 * but a loop that cannot run. */
#define TIMER_ERRORS_MAX 1000

/* sd_event_loop(), except that a timer the kernel refuses to arm does not
 * end the daemon. sd-event arms its timerfds with absolute deadlines; when
 * one is refused (EINVAL: libfaketime 0.9.10 moves absolute CLOCK_BOOTTIME
 * and CLOCK_MONOTONIC deadlines by its offset, before boot on a machine up
 * for less than that), sd_event_run() fails before waiting and that timer
 * stays unarmed. Every wait still checks each timer against the clocks, so
 * waking every WHEEL_TICK from then on keeps timers firing, late by at
 * most a tick. */
static int manager_loop(Manager *m) {
        unsigned in_a_row = 0;
        int r, code = 0;

        for (;;) {
                r = sd_event_get_state(m->event);
                if (r < 0)
                        return r;
                if (r == SD_EVENT_FINISHED)
                        break;
                r = sd_event_run(m->event, m->timer_errors > 0 ? WHEEL_TICK : UINT64_MAX);
                if (r == -EINVAL && ++in_a_row < TIMER_ERRORS_MAX) {
                        if (m->timer_errors++ == 0)
                                log_warning_errno(r, "The kernel refused to arm a timer (%m); the clocks may have "
                                                  "been tampered with (libfaketime?). Carrying on, waking every "
                                                  "%" PRIu64 " ms to run due timers.", WHEEL_TICK / USEC_PER_MSEC);
                        else
                                log_debug_errno(r, "A timer was refused again (%u times): %m", m->timer_errors);
                        continue;
                }
                if (r < 0)
                        return r;
                in_a_row = 0;
        }
        r = sd_event_get_exit_code(m->event, &code);
        return r < 0 ? r : code;
}

int manager_run(Manager *m) {
        (void) sd_notifyf(false, "READY=1\nSTATUS=Serving %u active connections.", m->n_state[CONN_ACTIVE]);
        log_info("tokenbrokerd ready: API on %s, callback on %s.",
                 m->api_passed ? "the socket passed by systemd" : m->config->socket,
                 m->callback_passed ? "the socket passed by systemd" : m->config->callback_listen);
        return manager_loop(m);
}
