/* SPDX-License-Identifier: MIT */
/* notify-listen PATH: binds an AF_UNIX datagram socket at PATH, the way
 * systemd's NOTIFY_SOCKET is, and prints every sd_notify() message it
 * receives as one line: "<monotonic ms> <fields separated by |>". For the
 * readiness, watchdog and reload tests. Stops on SIGTERM or after an hour. */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t done;
static void on_term(int sig) {
        (void) sig;
        done = 1;
}

int main(int argc, char **argv) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct timespec start, ts;
        int fd;

        if (argc != 2 || strlen(argv[1]) >= sizeof sa.sun_path) {
                fprintf(stderr, "usage: notify-listen PATH\n");
                return 2;
        }
        strcpy(sa.sun_path, argv[1]);
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return 1;
        (void) unlink(argv[1]);
        if (bind(fd, (struct sockaddr *) &sa, sizeof sa) < 0) {
                perror("bind");
                return 1;
        }
        signal(SIGTERM, on_term);
        signal(SIGINT, on_term);
        setvbuf(stdout, NULL, _IOLBF, 0);
        printf("listening\n");
        clock_gettime(CLOCK_MONOTONIC, &start);
        while (!done) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                char buf[4096];
                ssize_t n;

                clock_gettime(CLOCK_MONOTONIC, &ts);
                if (ts.tv_sec - start.tv_sec > 3600)
                        break;
                if (poll(&p, 1, 500) <= 0)
                        continue;
                n = recv(fd, buf, sizeof buf - 1, 0);
                if (n <= 0)
                        continue;
                buf[n] = 0;
                for (ssize_t i = 0; i < n; i++)
                        if (buf[i] == '\n')
                                buf[i] = '|';
                clock_gettime(CLOCK_MONOTONIC, &ts);
                printf("%lld %s\n", (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000, buf);
        }
        (void) unlink(argv[1]);
        return 0;
}
