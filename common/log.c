/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>

#include "common/log.h"
#include "common/util.h"

static const char *log_ident = "tokenbroker";
static LogTarget log_target = LOG_TARGET_STDERR;
static int log_max_level = LOG_INFO;

/* systemd sets $JOURNAL_STREAM to "dev:ino" of our stderr when it is
 * connected to the journal: then log natively, with fields. */
static bool stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return false;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

void log_setup(const char *ident, LogTarget target) {
        const char *e;

        if (ident)
                log_ident = ident;
        if (target == LOG_TARGET_AUTO)
                target = stderr_is_journal() ? LOG_TARGET_JOURNAL : LOG_TARGET_STDERR;
        log_target = target;

        e = getenv("TOKENBROKER_LOG_LEVEL");
        if (e) {
                if (streq(e, "debug"))
                        log_max_level = LOG_DEBUG;
                else if (streq(e, "info"))
                        log_max_level = LOG_INFO;
                else if (streq(e, "warning"))
                        log_max_level = LOG_WARNING;
                else if (streq(e, "error"))
                        log_max_level = LOG_ERR;
        }
}

void log_set_max_level(int level) {
        log_max_level = level;
}

int log_get_max_level(void) {
        return log_max_level;
}

static const char *level_name(int level) {
        static const char *const names[] = {
                [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert", [LOG_CRIT] = "crit",
                [LOG_ERR] = "error",   [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
                [LOG_INFO] = "info",   [LOG_DEBUG] = "debug",
        };
        return level >= 0 && level < (int) ELEMENTSOF(names) ? names[level] : "?";
}

int log_internal(int level, int error, const char *const *fields,
                 const char *file, int line, const char *func,
                 const char *format, ...) {
        char raw[4096], msg[2048];
        va_list ap;
        int saved = errno;

        if (error < 0)
                error = -error;
        if (level > log_max_level)
                return -error;

        errno = error;
        va_start(ap, format);
        (void) vsnprintf(raw, sizeof raw, format, ap);
        va_end(ap);
        errno = saved;
        /* Whatever a provider or a client put into the message, one log
         * line comes out: CR, LF, ESC and other controls as escapes,
         * invalid UTF-8 replaced, cut on a character boundary. */
        (void) text_escape(msg, sizeof msg, raw, strlen(raw));

        if (log_target == LOG_TARGET_JOURNAL) {
                struct iovec iov[32];
                char f_msg[sizeof msg + 16], f_prio[32], f_errno[32], f_file[256], f_line[32],
                        f_func[128], f_ident[64];
                size_t n = 0;

                snprintf(f_msg, sizeof f_msg, "MESSAGE=%s", msg);
                snprintf(f_prio, sizeof f_prio, "PRIORITY=%d", level);
                snprintf(f_file, sizeof f_file, "CODE_FILE=%s", file);
                snprintf(f_line, sizeof f_line, "CODE_LINE=%d", line);
                snprintf(f_func, sizeof f_func, "CODE_FUNC=%s", func);
                snprintf(f_ident, sizeof f_ident, "SYSLOG_IDENTIFIER=%s", log_ident);
                iov[n++] = (struct iovec) { f_msg, strlen(f_msg) };
                iov[n++] = (struct iovec) { f_prio, strlen(f_prio) };
                iov[n++] = (struct iovec) { f_file, strlen(f_file) };
                iov[n++] = (struct iovec) { f_line, strlen(f_line) };
                iov[n++] = (struct iovec) { f_func, strlen(f_func) };
                iov[n++] = (struct iovec) { f_ident, strlen(f_ident) };
                if (error > 0) {
                        snprintf(f_errno, sizeof f_errno, "ERRNO=%d", error);
                        iov[n++] = (struct iovec) { f_errno, strlen(f_errno) };
                }
                for (size_t i = 0; fields && fields[i] && n < ELEMENTSOF(iov); i++)
                        iov[n++] = (struct iovec) { (void *) fields[i], strlen(fields[i]) };
                if (sd_journal_sendv(iov, (int) n) >= 0)
                        return -error;
                /* fall through to stderr if the journal is gone */
        }

        {
                char extra[512] = "";
                size_t off = 0;

                for (size_t i = 0; fields && fields[i] && off < sizeof extra - 1; i++) {
                        int k = snprintf(extra + off, sizeof extra - off, " %s", fields[i]);
                        if (k < 0)
                                break;
                        off += (size_t) k;
                }
                fprintf(stderr, "%s[%d]: %s: %s%s%s%s\n", log_ident, (int) getpid(),
                        level_name(level), msg, *extra ? " [" : "", *extra ? extra + 1 : "",
                        *extra ? "]" : "");
        }
        errno = saved;
        return -error;
}
