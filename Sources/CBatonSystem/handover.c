// What taking over a worker's connections needs that Glibc's module does not name: pidfd_getfd (no wrapper
// before glibc 2.36 in every header set), splice (needs _GNU_SOURCE), FIONREAD and TCP_INFO's layout.
#define _GNU_SOURCE
#include "CBatonSystem.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

int cbaton_pidfd_getfd(int pidfd, int fd) {
    return (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
}

ssize_t cbaton_splice(int from, int to, size_t length) {
    return splice(from, NULL, to, NULL, length, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
}

int cbaton_unread_bytes(int socket) {
    int count = 0;
    if (ioctl(socket, FIONREAD, &count) != 0) return -1;
    return count;
}

int cbaton_tcp_state(int socket, uint8_t *state, uint32_t *rtt_microseconds, uint32_t *since_sent_milliseconds,
                     uint32_t *since_received_milliseconds) {
    struct tcp_info info;
    socklen_t length = sizeof info;
    if (getsockopt(socket, IPPROTO_TCP, TCP_INFO, &info, &length) != 0) return -1;
    *state = info.tcpi_state;
    *rtt_microseconds = info.tcpi_rtt;
    *since_sent_milliseconds = info.tcpi_last_data_sent;
    *since_received_milliseconds = info.tcpi_last_data_recv;
    return 0;
}
