// The child side of a spawn, and small wrappers around the CMSG_* macros.
//
// A worker is created the way glibc's posix_spawn creates one: clone(CLONE_VM | CLONE_VFORK) on a stack of its own,
// so that the cost does not grow with baton's page tables (fork copies them). The child shares baton's memory
// until it execs, and the thread that spawned it waits until then. So the child side only reads what the parent
// prepared, writes nothing but its own stack, its request's scratch and error slot, the LISTEN_PID digits and errno
// (the spawning thread's, which is suspended meanwhile and reads the error slot instead), and makes raw system
// calls: no malloc, no locks, no stdio, no Swift, no glibc wrapper that does more than the call (glibc's setresuid
// would signal baton's threads to change their credentials too; sanitizers intercept dup2 and close). Signals are
// blocked around the clone, so that none of baton's handlers runs in the child.
#define _GNU_SOURCE
#include "CBatonSystem.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

_Static_assert(sizeof(int) == 4, "fds travel as 32-bit ints");
_Static_assert(CBATON_O_PATH == O_PATH, "O_PATH as the kernel defines it");

/// What the kernel's rt_sigprocmask and rt_sigaction take as a signal set: 64 bits.
#define KERNEL_SIGSET_SIZE (sizeof(unsigned long))

/// The child side: neither sanitizer instrumentation (it would update baton's shadow state from the child) nor
/// inlining into the parent's code.
#define CHILD_SIDE __attribute__((no_sanitize("address", "thread", "undefined"), noinline))

CHILD_SIDE static _Noreturn void child_fail(cbaton_spawn_request *r, int error) {
    // The parent reads this after the child has exited: with CLONE_VFORK it resumes only then.
    r->error = error != 0 ? error : EIO;
    r->failed_in_child = 1;
    syscall(SYS_exit_group, 127);
    __builtin_unreachable();
}

/// `syscall`, with a failure reported to the parent and the child ended.
CHILD_SIDE static long checked(cbaton_spawn_request *r, long result) {
    if (result < 0) child_fail(r, errno);
    return result;
}

CHILD_SIDE static void child_write_pid(char *slot) {
    // Writes the decimal pid after "LISTEN_PID=" in place.
    char digits[24];
    int n = 0;
    long pid = syscall(SYS_getpid);
    do {
        digits[n++] = (char)('0' + pid % 10);
        pid /= 10;
    } while (pid > 0 && n < (int)sizeof digits);
    char *out = slot + 11;  // strlen("LISTEN_PID=")
    while (n > 0) *out++ = digits[--n];
    *out = '\0';
}

/// The nice value, scheduling policy and resource limits baton started with (cbaton_apply_attributes, in raw
/// calls). Failures are not fatal, as there.
CHILD_SIDE static void child_apply_attributes(const cbaton_process_attributes *a) {
    if (a->policy >= 0) {
        struct sched_param param = {.sched_priority = a->priority};
        syscall(SYS_sched_setscheduler, 0, a->policy, &param);
    }
    syscall(SYS_setpriority, PRIO_PROCESS, 0, a->nice);
    for (int i = 0; i < a->limit_count && i < CBATON_RLIMITS; i++) {
        if (!a->limit_valid[i]) continue;
        struct rlimit limit = {.rlim_cur = a->soft[i], .rlim_max = a->hard[i]};
        if (syscall(SYS_prlimit64, 0, i, &limit, NULL) == 0) continue;
        // A hard limit lowered since start comes back only with CAP_SYS_RESOURCE: then the soft limit, within it.
        struct rlimit now;
        if (errno == EPERM && syscall(SYS_prlimit64, 0, i, NULL, &now) == 0) {
            limit.rlim_max = now.rlim_max;
            if (limit.rlim_cur > now.rlim_max) limit.rlim_cur = now.rlim_max;
            syscall(SYS_prlimit64, 0, i, &limit, NULL);
        }
    }
}

CHILD_SIDE static int child_main(void *argument) {
    cbaton_spawn_request *r = argument;

    // 1. Every disposition back to SIG_DFL (the child has its own copy of the table: no CLONE_SIGHAND), with the raw
    //    call: glibc's sigaction() refuses the signals it reserves for itself (32 and 33), yet they can arrive ignored
    //    from whoever started baton, and exec keeps them ignored. Every signal is still blocked (the parent blocked
    //    them all before the clone); the mask is cleared just before exec.
    struct {
        void *handler;
        unsigned long flags;
#if defined(__x86_64__)
        void *restorer;
#endif
        unsigned long mask;
    } dfl = {0};  // handler NULL is SIG_DFL
    for (int sig = 1; sig <= 64; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        syscall(SYS_rt_sigaction, sig, &dfl, NULL, KERNEL_SIGSET_SIZE);
    }

    // 2. A process group of its own, so that a kill reaches the app's own children.
    checked(r, syscall(SYS_setpgid, 0, 0));

    // 3. The fds: stdin, stdout and stderr at 0, 1, 2, the listeners at 3, 4, ..., then the extra fd. The child has
    //    a copy of baton's fd table, so they are all there already. Every source below the end of the layout is first
    //    moved above it, so that no dup3 overwrites a source before it is used and none is its own target (dup3
    //    clears close-on-exec on the copy; a fd that is its own target would keep it).
    int count = r->listener_count;
    int layout = 3 + count + (r->extra_fd >= 0 ? 1 : 0);
    int *sources = r->scratch;  // count + 4 slots, prepared by the parent
    sources[0] = r->stdin_fd;
    sources[1] = r->stdout_fd;
    sources[2] = r->stderr_fd;
    for (int i = 0; i < count; i++) sources[3 + i] = r->listeners[i];
    sources[3 + count] = r->extra_fd;
    int slots = 3 + count + 1;
    for (int i = 0; i < slots; i++) {
        if (sources[i] >= 0 && sources[i] < layout) {
            sources[i] = (int)checked(r, syscall(SYS_fcntl, sources[i], F_DUPFD_CLOEXEC, layout));
        }
    }
    for (int i = 0; i < slots; i++) {
        // A standard stream given as -1 stays as it is; the extra fd, when absent, has no slot in the layout.
        if (sources[i] < 0) continue;
        checked(r, syscall(SYS_dup3, sources[i], i, 0));
    }

    // 4. Close everything above the layout, the moved copies included.
    checked(r, syscall(SYS_close_range, (unsigned)layout, ~0U, 0));

    // 5. The nice value, scheduling policy and resource limits baton started with, not those of the thread that
    //    spawned (libdispatch raises its threads' priority; nice is per thread), while still privileged enough to.
    if (r->attributes != NULL) child_apply_attributes(r->attributes);

    // 6. Drop privileges if asked, groups first. Raw calls: glibc's wrappers would change baton's threads too.
    if (r->gid >= 0) {
        gid_t gid = (gid_t)r->gid;
        if (r->group_count > 0) {
            checked(r, syscall(SYS_setgroups, (size_t)r->group_count, r->groups));
        } else {
            checked(r, syscall(SYS_setgroups, 1, &gid));
        }
        checked(r, syscall(SYS_setresgid, gid, gid, gid));
    }
    if (r->uid >= 0) checked(r, syscall(SYS_setresuid, (uid_t)r->uid, (uid_t)r->uid, (uid_t)r->uid));

    // 7. LISTEN_PID is this very process.
    if (r->listen_pid_slot != NULL) child_write_pid(r->listen_pid_slot);

    // 8. An empty signal mask (Swift's threads block almost every signal, and the spawn blocked the rest), and exec.
    unsigned long none = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, KERNEL_SIGSET_SIZE);
    syscall(SYS_execve, r->path, r->argv, r->envp);
    child_fail(r, errno);
}

/// The child's stack: 64 KiB above one guard page.
#define CHILD_STACK_SIZE (64 * 1024)
#define GUARD_SIZE 4096

static void *map_child_stack(void) {
    void *base = mmap(NULL, CHILD_STACK_SIZE + GUARD_SIZE, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return NULL;
    (void)mprotect(base, GUARD_SIZE, PROT_NONE);
    return base;
}

static void unmap_child_stack(void *base) {
    if (base != NULL) munmap(base, CHILD_STACK_SIZE + GUARD_SIZE);
}

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CBATON_TSAN 1
#endif
#endif

typedef int (*clone_function)(int (*)(void *), void *, int, void *, ...);

/// glibc's clone. ThreadSanitizer intercepts `clone` and treats it as a fork, resetting its own state in the child,
/// which with CLONE_VM is baton's state: under it, the next `clone` after the interceptor's is called instead.
static clone_function real_clone(void) {
#ifdef CBATON_TSAN
    static _Atomic(clone_function) found;
    clone_function function = atomic_load(&found);
    if (function == NULL) {
        function = (clone_function)dlsym(RTLD_NEXT, "clone");
        if (function == NULL) function = clone;
        atomic_store(&found, function);
    }
    return function;
#else
    return clone;
#endif
}

/// One spawn on the calling thread, which waits until the child has exec'd or exited.
static void spawn_one(cbaton_spawn_request *r, void *stack) {
    r->pid = -1;
    r->error = 0;
    r->failed_in_child = 0;
    if (r->listener_count < 0 || r->listener_count > CBATON_MAX_LISTENERS) {
        r->error = EINVAL;
        return;
    }
    if (r->scratch == NULL) {
        r->error = EINVAL;
        return;
    }
    // Every signal blocked, glibc's own (SIGCANCEL, SIGSETXID) included, which pthread_sigmask would leave: a handler
    // of baton's must never run in the child, on baton's memory.
    unsigned long all = ~0UL;
    unsigned long old = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, KERNEL_SIGSET_SIZE);
    // Exit signal SIGCHLD: the child is reaped like any other. (A pidfd, CLONE_PIDFD, would add nothing to
    // pidfd_open here: a child's pid cannot be reused before baton reaps it.)
    clone_function spawn_clone = real_clone();
    pid_t pid = spawn_clone(child_main, (char *)stack + GUARD_SIZE + CHILD_STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD, r);
    int error = errno;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, KERNEL_SIGSET_SIZE);
    if (pid < 0) {
        r->error = error;
        return;
    }
    r->pid = pid;
    // r->error and r->failed_in_child were set by the child if it failed.
}

int cbaton_spawn(cbaton_spawn_request *request) {
    void *stack = map_child_stack();
    if (stack == NULL) {
        request->pid = -1;
        request->error = errno;
        request->failed_in_child = 0;
        return -1;
    }
    spawn_one(request, stack);
    unmap_child_stack(stack);
    return request->pid;
}

/// How many spawns run on threads of their own right now: up to CBATON_SPAWN_THREADS; past that a spawn runs on the
/// thread that starts it (which then has nothing better to do than wait for an exec).
static atomic_int threads_in_use;

static void *spawn_thread(void *argument) {
    cbaton_spawn_request *r = argument;
    (void)cbaton_spawn(r);
    atomic_fetch_sub(&threads_in_use, 1);
    return NULL;
}

/// A spawn thread's stack, mapped here and unmapped after the join: glibc would keep a stack of its own making in its
/// cache, and its touched pages in baton's RSS.
#define THREAD_STACK_SIZE (256 * 1024)

void cbaton_spawn_start(cbaton_spawn_request *request) {
    request->pid = -1;
    request->error = 0;
    request->threaded = 0;
    request->thread_stack = NULL;
    if (atomic_fetch_add(&threads_in_use, 1) >= CBATON_SPAWN_THREADS) {
        atomic_fetch_sub(&threads_in_use, 1);
        (void)cbaton_spawn(request);
        return;
    }
    // The thread only calls clone and waits: a small stack will do (sanitizers need more than the call itself).
    void *stack = mmap(NULL, THREAD_STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    pthread_attr_t attributes;
    pthread_t thread;
    int started = stack != MAP_FAILED && pthread_attr_init(&attributes) == 0;
    if (started) {
        started = pthread_attr_setstack(&attributes, stack, THREAD_STACK_SIZE) == 0 &&
                  pthread_create(&thread, &attributes, spawn_thread, request) == 0;
        pthread_attr_destroy(&attributes);
    }
    if (started) {
        request->thread = thread;
        request->thread_stack = stack;
        request->threaded = 1;
        return;
    }
    if (stack != MAP_FAILED) munmap(stack, THREAD_STACK_SIZE);
    atomic_fetch_sub(&threads_in_use, 1);
    (void)cbaton_spawn(request);  // no thread to spare: here, at once
}

int cbaton_spawn_finish(cbaton_spawn_request *request) {
    if (request->threaded) {
        pthread_join(request->thread, NULL);
        munmap(request->thread_stack, THREAD_STACK_SIZE);
        request->thread_stack = NULL;
        request->threaded = 0;
    }
    return request->pid;
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
int cbaton_tgkill(int pid, int tid, int signal) { return (int)syscall(SYS_tgkill, pid, tid, signal); }

ssize_t cbaton_process_vm_read(pid_t pid, void *local, size_t count, uint64_t remote) {
    struct iovec local_range = {.iov_base = local, .iov_len = count};
    struct iovec remote_range = {.iov_base = (void *)(uintptr_t)remote, .iov_len = count};
    return process_vm_readv(pid, &local_range, 1, &remote_range, 1, 0);
}
