// The C side of baton's system layer: what Swift cannot do safely (the child side of a spawn) and
// what it cannot name (the CMSG_* macros). Every symbol is prefixed with `cbaton_`.
#pragma once

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>

/// The most listeners one worker can receive.
#define CBATON_MAX_LISTENERS 1024

/// `O_PATH` (which Glibc's module does not export without _GNU_SOURCE): an fd that names a file without opening it.
static const int CBATON_O_PATH = 010000000;

/// `SIGRTMIN` and `SIGRTMAX` as glibc gives them to programs (it keeps the first real-time signals for itself).
int cbaton_sigrtmin(void);
int cbaton_sigrtmax(void);

/// Takes the pages of the code baton has run out of its resident set: MADV_DONTNEED on the text segment of each
/// loaded object (baton, libc, libsystemd, ...; not the vDSO, not an object with text relocations). They stay in the
/// page cache and come back when run. Returns how many segments the kernel refused (0: all released), or -1 with
/// errno ENOENT if none was released.
int cbaton_release_code_pages(void);

/// The size of the version record in the `.baton_version` section (see version.c).
#define CBATON_VERSION_RECORD 64

/// baton's version ("0.1.0"), read from its record.
const char *cbaton_version(void);

/// How many resource limits baton saves and restores (RLIMIT_CPU .. RLIMIT_RTTIME).
#define CBATON_RLIMITS 16

/// A process's scheduling and resource limits, read with `cbaton_read_attributes`.
typedef struct cbaton_process_attributes {
    int nice;
    /// `sched_getscheduler` (SCHED_RESET_ON_FORK included) and the policy's static priority.
    int policy;
    int priority;
    /// Soft and hard limits of resources 0 ..< limit_count; `limit_valid[i]` is 0 where getrlimit failed.
    int limit_count;
    uint64_t soft[CBATON_RLIMITS];
    uint64_t hard[CBATON_RLIMITS];
    int limit_valid[CBATON_RLIMITS];
} cbaton_process_attributes;

/// Reads the calling thread's nice value and scheduling policy, and the process's resource limits.
void cbaton_read_attributes(cbaton_process_attributes *out);

/// Applies `attributes` to the calling thread (nice, policy) and the process (limits), as far as permitted;
/// async-signal-safe. Returns 0, or the errno of the first call that failed (the others are still made).
int cbaton_apply_attributes(const cbaton_process_attributes *attributes);

/// What the child side of a spawn needs, and what came of it. Everything the child reads is prepared by the parent
/// before the clone, because the child may only make raw system calls (it shares baton's memory until it execs).
typedef struct {
    const char *path;
    char *const *argv;
    char *const *envp;
    /// A buffer inside `envp` that begins with `LISTEN_PID=` and has room for 20 more digits, or NULL.
    char *listen_pid_slot;
    /// The listeners (fds of baton's), placed at fds 3 ..< 3 + listener_count in the child.
    const int *listeners;
    int listener_count;
    /// An fd placed right after the listeners (at 3 + listener_count), or -1.
    int extra_fd;
    /// The child's standard streams; -1 leaves that one as it is in baton.
    int stdin_fd, stdout_fd, stderr_fd;
    /// Whether to drop privileges to uid/gid before exec; -1 keeps them.
    int64_t uid, gid;
    /// Supplementary groups set when dropping privileges (computed by the parent: getgrouplist is not
    /// async-signal-safe).
    const gid_t *groups;
    int group_count;
    /// The process-level attributes baton started with, which the child takes instead of those of the thread that
    /// spawned it (nice and the scheduling policy are per thread on Linux): used when `attributes` is not NULL.
    const cbaton_process_attributes *attributes;

    /// Set by the spawn: the child's pid, or -1 if no child was created.
    pid_t pid;
    /// 0, or the errno of the call that failed: in the child (set-up or execve: the child exits with 127 and is left
    /// to be reaped) when `failed_in_child` is 1, in baton (the clone) otherwise.
    int error;
    int failed_in_child;
    /// Room for listener_count + 4 fds, the child's scratch space (prepared by the caller, so that a spawn thread
    /// does not malloc: glibc would give each one an arena of its own, which baton's RSS keeps).
    int *scratch;
    /// The thread `cbaton_spawn_start` spawns from, and its stack, when `threaded` is 1.
    pthread_t thread;
    void *thread_stack;
    int threaded;
} cbaton_spawn_request;

/// Starts a worker with clone(CLONE_VM | CLONE_VFORK) on a stack of its own, and returns once it has exec'd or
/// failed: its pid (see `request->error` for a child that failed), or -1 (see `request->error`).
int cbaton_spawn(cbaton_spawn_request *request);

/// The most spawns `cbaton_spawn_start` runs on threads of their own at a time.
#define CBATON_SPAWN_THREADS 16

/// Starts `cbaton_spawn(request)` on a thread of its own and returns at once, so that several spawns do not wait
/// for each other's exec (at once on this thread if CBATON_SPAWN_THREADS are busy or no thread can be created). `request` and everything it points
/// to must stay valid until `cbaton_spawn_finish`.
void cbaton_spawn_start(cbaton_spawn_request *request);

/// Waits for a spawn `cbaton_spawn_start` started; returns what `cbaton_spawn` would have.
int cbaton_spawn_finish(cbaton_spawn_request *request);

/// Receives one datagram with its sender's credentials (SCM_CREDENTIALS).
/// Any fds that arrive with it are closed at once. `*truncated` is set when the datagram was larger
/// than the buffer; `*pid` is -1 when no credentials arrived.
ssize_t cbaton_recv_with_credentials(int socket, void *buffer, size_t length, pid_t *pid, uid_t *uid,
                                     int *truncated, int *closed_fds);

/// The uid and pid of the peer of a connected unix socket (SO_PEERCRED). Returns 0 or -1.
int cbaton_peer_credentials(int socket, pid_t *pid, uid_t *uid, gid_t *gid);

/// Wraps `waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT)`: the pid of an exited child, left unreaped, 0 if
/// none, or -1.
pid_t cbaton_peek_exit(void);
/// Wraps `waitid(P_PID, pid, &info, WEXITED | WNOHANG)`. Returns the reaped pid, 0 if it has not exited, or -1.
/// `*code` is CLD_EXITED / CLD_KILLED / CLD_DUMPED and `*status` the exit status or signal.
pid_t cbaton_reap_pid(pid_t pid, int *code, int *status);

/// `pipe2(fds, O_CLOEXEC | flags)`.
int cbaton_pipe_cloexec(int fds[2]);

/// `accept4(socket, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)`.
int cbaton_accept(int socket);

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`.
int cbaton_set_child_subreaper(void);

/// `pidfd_open(pid, 0)`: an fd that becomes readable when process `pid` (any process) ends. -1 with errno.
int cbaton_pidfd_open(pid_t pid);

/// `pidfd_send_signal(pidfd, signal, NULL, 0)`: signals the process the pidfd names, never a later one with its pid.
int cbaton_pidfd_send_signal(int pidfd, int signal);
/// Sends `signal` to thread `tid` of process `pid`.
int cbaton_tgkill(int pid, int tid, int signal);

/// `process_vm_readv` of one range: `count` bytes at `remote` in process `pid` into `local` (the C library's
/// declaration needs _GNU_SOURCE). The bytes read, or -1 with errno.
ssize_t cbaton_process_vm_read(pid_t pid, void *local, size_t count, uint64_t remote);

/// `pidfd_getfd(pidfd, fd, 0)`: a new fd of this process (close-on-exec) for the open file that fd `fd` of the
/// process `pidfd` names. -1 with errno.
int cbaton_pidfd_getfd(int pidfd, int fd);
/// The fds of process `pid` that are sockets, and their inodes (`/proc/PID/fd`, one fstatat each): how many there
/// are (more than `capacity` if the arrays were too short; only `capacity` of them filled), or -1.
int cbaton_socket_fds(int pid, int *fds, uint64_t *inodes, int capacity);
/// The inode of the socket that fd `fd` of process `pid` is, or 0 if it is not open or not a socket.
uint64_t cbaton_socket_inode(int pid, int fd);

/// `splice(from, NULL, to, NULL, length, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)`. What `splice` returns.
ssize_t cbaton_splice(int from, int to, size_t length);

/// `ioctl(socket, FIONREAD)`: how many bytes wait to be read on `socket`, or -1 with errno.
int cbaton_unread_bytes(int socket);

/// A TCP socket's state (`tcpi_state`: 1 ESTABLISHED, 8 CLOSE_WAIT, ...) and smoothed round-trip time in
/// microseconds, from TCP_INFO. Returns 0, or -1 with errno.
int cbaton_tcp_state(int socket, uint8_t *state, uint32_t *rtt_microseconds, uint32_t *since_sent_milliseconds,
                     uint32_t *since_received_milliseconds);
