/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "common/egress.h"
#include "common/macro.h"

#define CA_FILE_MAX (16U * 1024U * 1024U)

int egress_check_ca_file(const char *path) {
        static const char begin[] = "-----BEGIN CERTIFICATE-----";
        char buf[65536 + sizeof begin];
        size_t have = 0, total = 0;
        int fd;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return -errno;
        /* a window that keeps the last bytes of the previous read, so a
         * marker across two reads is found */
        for (;;) {
                ssize_t k = read(fd, buf + have, sizeof buf - 1 - have);

                if (k < 0) {
                        int e = errno;
                        close(fd);
                        return e == EISDIR ? -EISDIR : -e;
                }
                if (k == 0)
                        break;
                have += (size_t) k;
                total += (size_t) k;
                buf[have] = 0;
                if (memmem(buf, have, begin, sizeof begin - 1)) {
                        close(fd);
                        return 0;
                }
                if (total >= CA_FILE_MAX)
                        break;
                if (have >= sizeof begin) {
                        memmove(buf, buf + have - (sizeof begin - 1), sizeof begin - 1);
                        have = sizeof begin - 1;
                }
        }
        close(fd);
        return -EBADMSG;
}

/* One field of a CONNECT_TO line at *p, up to the next ':' (a bracketed
 * IPv6 address as one); *p moves past the ':'. */
static const char *take_host(const char **p, bool *empty) {
        const char *s = *p;

        if (*s == '[') {
                const char *e = strchr(s, ']');

                if (!e || e == s + 1)
                        return "an unterminated or empty [IPv6] address";
                for (const char *q = s + 1; q < e; q++)
                        if (!strchr("0123456789abcdefABCDEF:.", *q))
                                return "a bad character in an [IPv6] address";
                s = e + 1;
                *empty = false;
        } else {
                const char *q = s;

                for (; *q && *q != ':'; q++)
                        if (!(('a' <= *q && *q <= 'z') || ('A' <= *q && *q <= 'Z') || ('0' <= *q && *q <= '9') ||
                              *q == '-' || *q == '.' || *q == '_'))
                                return "a host may hold only letters, digits, '-', '.' and '_'";
                if (q - s > 253)
                        return "a host name longer than 253 characters";
                *empty = q == s;
                s = q;
        }
        *p = s;
        return NULL;
}

static const char *take_port(const char **p, bool last, bool *empty) {
        const char *s = *p;
        unsigned long v = 0;
        size_t n = 0;

        for (; '0' <= s[n] && s[n] <= '9'; n++) {
                v = v * 10 + (unsigned long) (s[n] - '0');
                if (v > 65535)
                        return "a port above 65535";
        }
        *empty = n == 0;
        if (n > 0 && v == 0)
                return "port 0";
        s += n;
        if (last ? *s != 0 : *s != ':')
                return "four fields separated by ':'";
        *p = last ? s : s + 1;
        return NULL;
}

const char *egress_check_connect_to(const char *value) {
        const char *p = value, *why;
        bool e1, e2, e3, e4;

        if (!value || !*value)
                return "empty";
        if ((why = take_host(&p, &e1)))
                return why;
        if (*p++ != ':')
                return "four fields separated by ':'";
        if ((why = take_port(&p, false, &e2)))
                return why;
        if ((why = take_host(&p, &e3)))
                return why;
        if (*p++ != ':')
                return "four fields separated by ':'";
        if ((why = take_port(&p, true, &e4)))
                return why;
        if (e3 && e4)
                return "no CONNECT-HOST and no CONNECT-PORT";
        return NULL;
}

int egress_apply(CURL *c, const char *ca_file, char *const *connect_to, size_t n, struct curl_slist **keep) {
        struct curl_slist *l = NULL;

        *keep = NULL;
        if (ca_file && curl_easy_setopt(c, CURLOPT_CAINFO, ca_file) != CURLE_OK)
                return -EINVAL;
        if (n == 0)
                return 0;
        for (size_t i = 0; i < n; i++) {
                struct curl_slist *t = curl_slist_append(l, connect_to[i]);

                if (!t) {
                        curl_slist_free_all(l);
                        return -ENOMEM;
                }
                l = t;
        }
        if (curl_easy_setopt(c, CURLOPT_CONNECT_TO, l) != CURLE_OK) {
                curl_slist_free_all(l);
                return -EINVAL;
        }
        *keep = l;
        return 0;
}
