/* SPDX-License-Identifier: MIT */
#pragma once

#include <syslog.h>

#include "common/macro.h"

/* Logging: stderr when run in the foreground, the journal (with structured
 * fields) when started by systemd. Secrets never reach these functions. */

typedef enum LogTarget {
        LOG_TARGET_AUTO,
        LOG_TARGET_STDERR,
        LOG_TARGET_JOURNAL,
} LogTarget;

void log_setup(const char *ident, LogTarget target);
void log_set_max_level(int level);
int log_get_max_level(void);

/* Returns -abs(error) so callers can `return log_error_errno(r, ...)`.
 * %m in the format prints strerror(error). Extra structured fields are
 * passed as "KEY=value" strings in a NULL-terminated array (journal only;
 * appended to the line on stderr). */
int log_internal(int level, int error, const char *const *fields,
                 const char *file, int line, const char *func,
                 const char *format, ...) _printf_(7, 8);

#define log_full_errno(level, error, ...) \
        log_internal(level, error, NULL, __FILE__, __LINE__, __func__, __VA_ARGS__)
#define log_fields(level, fields, ...) \
        log_internal(level, 0, fields, __FILE__, __LINE__, __func__, __VA_ARGS__)

#define log_debug(...) log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...) log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...) log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...) log_full_errno(LOG_ERR, 0, __VA_ARGS__)

#define log_debug_errno(e, ...) log_full_errno(LOG_DEBUG, e, __VA_ARGS__)
#define log_info_errno(e, ...) log_full_errno(LOG_INFO, e, __VA_ARGS__)
#define log_warning_errno(e, ...) log_full_errno(LOG_WARNING, e, __VA_ARGS__)
#define log_error_errno(e, ...) log_full_errno(LOG_ERR, e, __VA_ARGS__)

static inline int log_oom(void) {
        return log_error_errno(ENOMEM, "Out of memory.");
}
