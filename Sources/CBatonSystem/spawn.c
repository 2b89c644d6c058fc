// The child side of a spawn, and small wrappers around the CMSG_* macros.
//
// After fork() in a multi-threaded process the child may only call async-signal-safe functions:
// no malloc, no locks, no setenv, no Swift. Everything below the fork is plain syscalls.
#define _GNU_SOURCE
#include "CBatonSystem.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

_Static_assert(sizeof(int) == 4, "fds travel as 32-bit ints");
_Static_assert(CBATON_O_PATH == O_PATH, "O_PATH as the kernel defines it");
_Static_assert(CBATON_FDS_PER_MESSAGE <= 253, "SCM_MAX_FD is 253");

static void child_fail(int channel, int error) {
    // Report the errno to the parent, then die without running atexit handlers.
    ssize_t ignored = write(channel, &error, sizeof error);
    (void)ignored;
    _exit(127);
}

/// Sets a signal to SIG_DFL with the raw system call: glibc's sigaction() refuses the signals it reserves for
/// itself (32 and 33), yet they can arrive ignored from whoever started baton, and exec keeps them ignored.
static void reset_signal_raw(int sig) {
    struct {
        void *handler;
        unsigned long flags;
#if defined(__x86_64__)
        void *restorer;
#endif
        unsigned long mask;
    } action;
    memset(&action, 0, sizeof action);  // handler NULL is SIG_DFL
    syscall(SYS_rt_sigaction, sig, &action, NULL, sizeof(unsigned long));
}

static int close_range_compat(unsigned first, unsigned last) {
    if (first > last) return 0;
    return (int)syscall(SYS_close_range, first, last, 0);
}

static void child_write_pid(char *slot) {
    // Writes the decimal pid after "LISTEN_PID=" in place: no allocation, no stdio.
    char digits[24];
    int n = 0;
    pid_t pid = getpid();
    do {
        digits[n++] = (char)('0' + pid % 10);
        pid /= 10;
    } while (pid > 0 && n < (int)sizeof digits);
    char *out = slot + strlen("LISTEN_PID=");
    while (n > 0) *out++ = digits[--n];
    *out = '\0';
}

static _Noreturn void child_main(const cbaton_spawn_request *r) {
    int channel = r->channel_fd;

    // 1. Reset the signal mask (Swift's threads block almost every signal) and every disposition.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        if (sigaction(sig, &dfl, NULL) != 0) reset_signal_raw(sig);
    }

    // 2. A process group of its own, so that a kill reaches the app's own children.
    if (setpgid(0, 0) != 0) child_fail(channel, errno);

    // 3. Receive the listeners over baton's channel (SCM_RIGHTS).
    int received[CBATON_MAX_LISTENERS];
    int count = 0;
    while (count < r->listener_count) {
        char byte;
        struct iovec iov = {.iov_base = &byte, .iov_len = 1};
        union {
            char buffer[CMSG_SPACE(sizeof(int) * CBATON_FDS_PER_MESSAGE)];
            struct cmsghdr align;
        } control;
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer,
                             .msg_controllen = sizeof control.buffer};
        ssize_t n = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) child_fail(channel, n < 0 ? errno : EPIPE);
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            const int *fds = (const int *)CMSG_DATA(c);
            for (int i = 0; i < k && count < CBATON_MAX_LISTENERS; i++) received[count++] = fds[i];
        }
    }

    // 4. Standard streams.
    const int stdio[3] = {r->stdin_fd, r->stdout_fd, r->stderr_fd};
    for (int target = 0; target < 3; target++) {
        if (stdio[target] < 0) continue;
        if (stdio[target] == target) {
            fcntl(target, F_SETFD, 0);
        } else if (dup2(stdio[target], target) < 0) {
            child_fail(channel, errno);
        }
    }

    // 5. Lay the fds out at 3, 4, ...: first move every source above the layout, then dup2 it down
    //    (dup2 clears close-on-exec on the copy), so that no source is overwritten before it is used.
    int layout = 3 + count + (r->extra_fd >= 0 ? 1 : 0);
    int high_channel = fcntl(channel, F_DUPFD_CLOEXEC, layout + 1);
    if (high_channel < 0) child_fail(channel, errno);
    channel = high_channel;
    for (int i = 0; i < count; i++) {
        received[i] = fcntl(received[i], F_DUPFD_CLOEXEC, layout + 1);
        if (received[i] < 0) child_fail(channel, errno);
    }
    int extra = -1;
    if (r->extra_fd >= 0) {
        extra = fcntl(r->extra_fd, F_DUPFD_CLOEXEC, layout + 1);
        if (extra < 0) child_fail(channel, errno);
    }
    for (int i = 0; i < count; i++) {
        if (dup2(received[i], 3 + i) < 0) child_fail(channel, errno);
    }
    if (extra >= 0 && dup2(extra, 3 + count) < 0) child_fail(channel, errno);

    // 6. Close everything above the layout but the channel, which closes itself at exec.
    if (close_range_compat((unsigned)layout, (unsigned)channel - 1) != 0) child_fail(channel, errno);
    if (close_range_compat((unsigned)channel + 1, ~0U) != 0) child_fail(channel, errno);

    // 7. The nice value, scheduling policy and resource limits baton started with, not those of the thread that
    //    forked (libdispatch raises its threads' priority; nice is per thread), while still privileged enough to.
    if (r->attributes != NULL) (void)cbaton_apply_attributes(r->attributes);

    // 8. Drop privileges if asked, groups first.
    if (r->gid >= 0) {
        gid_t gid = (gid_t)r->gid;
        int ok = r->group_count > 0 ? setgroups((size_t)r->group_count, r->groups) : setgroups(1, &gid);
        if (ok != 0 || setresgid(gid, gid, gid) != 0) child_fail(channel, errno);
    }
    if (r->uid >= 0 && setresuid((uid_t)r->uid, (uid_t)r->uid, (uid_t)r->uid) != 0) child_fail(channel, errno);

    // 9. LISTEN_PID is this very process.
    if (r->listen_pid_slot != NULL) child_write_pid(r->listen_pid_slot);

    execve(r->path, r->argv, r->envp);
    child_fail(channel, errno);
    _exit(127);
}

pid_t cbaton_spawn(const cbaton_spawn_request *request) {
    pid_t pid = fork();
    if (pid == 0) child_main(request);
    return pid;
}

ssize_t cbaton_send_fds(int socket, const int *fds, int count) {
    char byte = 'F';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buffer[CMSG_SPACE(sizeof(int) * CBATON_FDS_PER_MESSAGE)];
        struct cmsghdr align;
    } control;
    if (count < 0 || count > CBATON_FDS_PER_MESSAGE) {
        errno = EINVAL;
        return -1;
    }
    memset(&control, 0, sizeof control);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (count > 0) {
        msg.msg_control = control.buffer;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)count);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)count);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)count);
    }
    return sendmsg(socket, &msg, MSG_NOSIGNAL);
}

ssize_t cbaton_recv_with_credentials(int socket, void *buffer, size_t length, pid_t *pid, uid_t *uid,
                                     int *truncated, int *closed_fds) {
    struct iovec iov = {.iov_base = buffer, .iov_len = length};
    union {
        char buffer[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * 253)];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer,
                         .msg_controllen = sizeof control.buffer};
    *pid = -1;
    *uid = (uid_t)-1;
    *truncated = 0;
    *closed_fds = 0;
    ssize_t n = recvmsg(socket, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0) return n;
    if ((size_t)n > length || (msg.msg_flags & MSG_TRUNC)) *truncated = 1;
    if (msg.msg_flags & MSG_CTRUNC) *truncated = 1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET) continue;
        if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len >= CMSG_LEN(sizeof(struct ucred))) {
            struct ucred cred;
            memcpy(&cred, CMSG_DATA(c), sizeof cred);
            *pid = cred.pid;
            *uid = cred.uid;
        } else if (c->cmsg_type == SCM_RIGHTS) {
            int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + sizeof(int) * (size_t)i, sizeof fd);
                close(fd);
                (*closed_fds)++;
            }
        }
    }
    return n;
}

int cbaton_peer_credentials(int socket, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

pid_t cbaton_peek_exit(void) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0) return -1;
    return info.si_pid;
}

pid_t cbaton_reap_pid(pid_t pid, int *code, int *status) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG) != 0) return -1;
    *code = info.si_code;
    *status = info.si_status;
    return info.si_pid;
}

int cbaton_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int cbaton_accept(int socket) { return accept4(socket, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK); }

int cbaton_set_child_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); }

int cbaton_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int cbaton_sigrtmin(void) { return SIGRTMIN; }

int cbaton_sigrtmax(void) { return SIGRTMAX; }

_Static_assert(RLIMIT_NLIMITS <= CBATON_RLIMITS, "every resource limit fits");

void cbaton_read_attributes(cbaton_process_attributes *out) {
    memset(out, 0, sizeof *out);
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, 0);  // this thread's, on Linux
    out->nice = (nice == -1 && errno != 0) ? 0 : nice;
    out->policy = sched_getscheduler(0);
    struct sched_param param;
    out->priority = sched_getparam(0, &param) == 0 ? param.sched_priority : 0;
    out->limit_count = RLIMIT_NLIMITS;
    for (int i = 0; i < RLIMIT_NLIMITS; i++) {
        struct rlimit limit;
        if (getrlimit((__rlimit_resource_t)i, &limit) != 0) continue;
        out->soft[i] = limit.rlim_cur;
        out->hard[i] = limit.rlim_max;
        out->limit_valid[i] = 1;
    }
}

int cbaton_apply_attributes(const cbaton_process_attributes *a) {
    int first = 0;
#define CBATON_NOTE(call) do { if ((call) != 0 && first == 0) first = errno; } while (0)
    if (a->policy >= 0) {
        struct sched_param param = {.sched_priority = a->priority};
        CBATON_NOTE(sched_setscheduler(0, a->policy, &param));
    }
    // After the policy: for SCHED_OTHER and SCHED_BATCH the nice value is what orders threads.
    CBATON_NOTE(setpriority(PRIO_PROCESS, 0, a->nice));
    for (int i = 0; i < a->limit_count && i < CBATON_RLIMITS; i++) {
        if (!a->limit_valid[i]) continue;
        struct rlimit limit = {.rlim_cur = a->soft[i], .rlim_max = a->hard[i]};
        if (setrlimit((__rlimit_resource_t)i, &limit) == 0) continue;
        // A hard limit lowered since start comes back only with CAP_SYS_RESOURCE: then the soft limit, within it.
        struct rlimit now;
        if (errno == EPERM && getrlimit((__rlimit_resource_t)i, &now) == 0) {
            limit.rlim_max = now.rlim_max;
            if (limit.rlim_cur > now.rlim_max) limit.rlim_cur = now.rlim_max;
            CBATON_NOTE(setrlimit((__rlimit_resource_t)i, &limit));
        } else if (first == 0) {
            first = errno;
        }
    }
#undef CBATON_NOTE
    return first;
}

int cbaton_pidfd_send_signal(int pidfd, int signal) { return (int)syscall(SYS_pidfd_send_signal, pidfd, signal, NULL, 0); }

ssize_t cbaton_process_vm_read(pid_t pid, void *local, size_t count, uint64_t remote) {
    struct iovec local_range = {.iov_base = local, .iov_len = count};
    struct iovec remote_range = {.iov_base = (void *)(uintptr_t)remote, .iov_len = count};
    return process_vm_readv(pid, &local_range, 1, &remote_range, 1, 0);
}
