// What taking over a worker's connections needs that Glibc's module does not name: pidfd_getfd (no wrapper
// before glibc 2.36 in every header set), splice (needs _GNU_SOURCE), FIONREAD and TCP_INFO's layout.
#define _GNU_SOURCE
#include "CBatonSystem.h"

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
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

int cbaton_socket_fds(int pid, int *fds, uint64_t *inodes, int capacity) {
    char path[32];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    int directory = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (directory < 0) return -1;
    DIR *entries = fdopendir(directory);
    if (entries == NULL) {
        close(directory);
        return -1;
    }
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(entries)) != NULL) {
        char *end = NULL;
        long fd = strtol(entry->d_name, &end, 10);
        if (end == entry->d_name || *end != 0 || fd < 0) continue;
        struct stat info;
        // The link names the socket itself: its inode, and S_IFSOCK.
        if (fstatat(directory, entry->d_name, &info, 0) != 0 || !S_ISSOCK(info.st_mode)) continue;
        if (count < capacity) {
            fds[count] = (int)fd;
            inodes[count] = (uint64_t)info.st_ino;
        }
        count++;
    }
    closedir(entries);
    return count;
}

uint64_t cbaton_socket_inode(int pid, int fd) {
    char path[48];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, fd);
    struct stat info;
    if (stat(path, &info) != 0 || !S_ISSOCK(info.st_mode)) return 0;
    return (uint64_t)info.st_ino;
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
