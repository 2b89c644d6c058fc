/* tinyapp: the lightest possible app for measuring baton's own cost (bench/README.md, "baton's own share").
 *
 * Takes the listeners at fds 3 .. 3+LISTEN_FDS-1, puts them into one epoll instance (so `--ready listen` sees it),
 * writes "READY=1\n" to BATON_NOTIFY_FD at once (`--ready fd`), and answers every connection with a fixed
 * HTTP response and a close. SIGTERM keeps its default action: the process dies at once, so the drain costs
 * nothing. Its startup is an exec plus a few syscalls: what is left of a reload is baton's (and the kernel's).
 * TINYAPP_DELAY_MS=N sleeps N ms first, before it touches the listeners (a worker that is not ready yet). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int main(void) {
    const char *delay = getenv("TINYAPP_DELAY_MS"); /* the readiness scenario: not accepting yet for this long */
    if (delay) usleep((useconds_t)atoi(delay) * 1000);
    const char *n = getenv("LISTEN_FDS");
    int nfds = n ? atoi(n) : 0;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < nfds; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = 3 + i};
        epoll_ctl(ep, EPOLL_CTL_ADD, 3 + i, &ev);
        fcntl(3 + i, F_SETFL, fcntl(3 + i, F_GETFL) | O_NONBLOCK); /* shared with the other generation */
    }
    const char *nfd = getenv("BATON_NOTIFY_FD");
    if (nfd) {
        ssize_t w = write(atoi(nfd), "READY=1\n", 8);
        (void)w;
    }
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
    for (;;) {
        struct epoll_event evs[16];
        int k = epoll_wait(ep, evs, 16, -1);
        for (int i = 0; i < k; i++) {
            int c = accept4(evs[i].data.fd, NULL, NULL, SOCK_CLOEXEC); /* listeners are shared: may fail */
            if (c < 0) continue;
            struct timeval tv = {.tv_sec = 1};
            setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            char buf[4096];
            ssize_t r = read(c, buf, sizeof buf); /* best effort: a small request arrives in one segment */
            (void)r;
            ssize_t w = write(c, resp, sizeof resp - 1);
            (void)w;
            close(c);
        }
    }
}
