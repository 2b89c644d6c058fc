// libbaton-adopt.so: lets an app that binds its own port serve on baton's listening socket, unchanged.
//
// baton puts this library into its workers' LD_PRELOAD (after whatever the app already preloads). In the worker
// process that LISTEN_PID names, a bind() to an address one of the inherited listeners (fds 3 .. 3+LISTEN_FDS-1)
// serves does not create a socket of its own: baton's listener is dup3()ed onto the app's fd number, with the app's
// FD_CLOEXEC, and the app's listen() on it is a no-op, so baton's backlog stays. Binding anything else, port 0, or
// in any other process (LISTEN_PID not ours) goes to the C library untouched.
//
// O_NONBLOCK belongs to the socket's open file description, which every generation shares. So the description is
// made non-blocking once adopted, and each process keeps the mode it asked for (SOCK_NONBLOCK at socket(),
// fcntl(F_SETFL), ioctl(FIONBIO)): fcntl(F_GETFL) reports that mode, and accept() on a socket the app wants blocking
// waits in poll() and retries when another process took the connection first.
//
// Draining: before baton sends an old worker its stop signal, it sends SIGRTMIN+5 (only to a worker that catches
// it, which /proc tells baton: the handler is installed once the worker has adopted a socket) and waits a moment. The library's handler then takes the adopted sockets out of the
// app's epoll sets and accept() on them says EAGAIN, so the app takes no new connection from the shared queue and
// has read the ones it took by the time its own shutdown starts: servers that close idle connections at once on
// SIGTERM (uvicorn, Node's server.close()) then close none a client has just sent a request on. An app that installs
// its own handler for that signal replaces the library's; baton then stops it as any other.
//
// Rescue: in every process under baton (BATON_GENERATION set: the worker and the processes it starts), accept()
// remembers the connections it returns, and SIGRTMIN+6 (which baton sends once it holds references to a retiring
// process's connections) makes shutdown(SHUT_WR) of such a connection a no-op, so that a server that half-closes
// idle connections as it stops (hypercorn) leaves baton to close them, or to hand a request on the wire on.
//
// What it intercepts, and nothing else is exported: bind, listen, accept, accept4, recv, recvfrom, recvmsg, read,
// poll, ppoll (a held-back half-close reads as ended), shutdown (an app's shutdown() of
// a listener must not stop it for everyone), getsockname, fcntl, fcntl64, ioctl, epoll_ctl, unlink, unlinkat (nor
// may it unlink the path of a unix listener baton serves). It reads
// only the environment and the inherited fds; it opens no file and resolves no path.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define MAX_LISTENERS 64
#define MAX_ADOPTED 256
#define MAX_REGISTRATIONS 256
/// The drain signal, as an offset from SIGRTMIN (baton sends the same).
#define DRAIN_SIGNAL_OFFSET 5
/// The rescue signal, as an offset from SIGRTMIN: baton now holds this process's connections (its connection rescue).
#define RESCUE_SIGNAL_OFFSET 6
/// Accepted connections are remembered for fds below this (one inode each: 256 KiB of zero pages, touched sparsely).
#define MAX_TRACKED 32768

struct listener {
    int fd;
    int family;
    int v6only;
    dev_t dev;
    ino_t ino;
    struct sockaddr_storage address;
    socklen_t length;
};

/// An fd of the app that now refers to one of baton's listeners.
struct adopted {
    _Atomic int fd;  // -1: a free entry
    dev_t dev;
    ino_t ino;
    _Atomic int nonblocking;  // what the app asked for
    _Atomic int shut;  // the app called shutdown() on it
    int family;  // the family of the socket the app made
};

static struct listener listeners[MAX_LISTENERS];
static int listener_count;
/// The pid LISTEN_PID named when the library was loaded; 0 when it named another process (or nothing).
static pid_t owner;
static struct adopted adopted[MAX_ADOPTED];
/// Entries in use so far (a high-water mark): lookups scan only these.
static _Atomic int adopted_used;
static pthread_mutex_t adopted_lock = PTHREAD_MUTEX_INITIALIZER;

/// An adopted fd in one of the app's epoll sets.
struct registration {
    _Atomic int epoll;  // -1: a free entry
    _Atomic int fd;
};
static struct registration registrations[MAX_REGISTRATIONS];
static _Atomic int registrations_used;
/// Set by the drain signal: adopted sockets accept nothing more.
static _Atomic int draining;
/// Set by the rescue signal: a shutdown(SHUT_WR) of a connection this process accepted sends no FIN.
static _Atomic int rescued;
/// The inode of the connection accept() gave this process at each fd (0: none), in every process under baton.
static _Atomic ino_t accepted[MAX_TRACKED];
/// Whether this process runs under baton (BATON_GENERATION is set): accepted connections are remembered.
static bool under_baton;
/// The inode of an accepted connection whose half-close this process asked for after the rescue signal (0: none):
/// it reads as ended to the process, as if the client had answered the FIN.
static _Atomic ino_t half_closed[MAX_TRACKED];
static _Atomic int any_half_closed;

// ---- The next definitions (the C library's, or another preload's) ----

#define REAL(name, type)                                                      \
    static type real_##name(void) {                                           \
        static _Atomic(type) cached;                                          \
        type function = atomic_load_explicit(&cached, memory_order_acquire);  \
        if (!function) {                                                      \
            function = (type)dlsym(RTLD_NEXT, #name);                         \
            atomic_store_explicit(&cached, function, memory_order_release);   \
        }                                                                     \
        return function;                                                      \
    }

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*listen_fn)(int, int);
typedef int (*accept_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);
typedef int (*shutdown_fn)(int, int);
typedef int (*getsockname_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*fcntl_fn)(int, int, ...);
typedef int (*ioctl_fn)(int, unsigned long, ...);
typedef int (*epoll_ctl_fn)(int, int, int, struct epoll_event *);
typedef int (*unlink_fn)(const char *);
typedef int (*unlinkat_fn)(int, const char *, int);
typedef ssize_t (*recv_fn)(int, void *, size_t, int);
typedef ssize_t (*recvfrom_fn)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
typedef ssize_t (*recvmsg_fn)(int, struct msghdr *, int);
typedef ssize_t (*read_fn)(int, void *, size_t);
typedef int (*poll_fn)(struct pollfd *, nfds_t, int);
typedef int (*ppoll_fn)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);
REAL(bind, bind_fn)
REAL(listen, listen_fn)
REAL(accept, accept_fn)
REAL(accept4, accept4_fn)
REAL(shutdown, shutdown_fn)
REAL(getsockname, getsockname_fn)
REAL(fcntl, fcntl_fn)
REAL(fcntl64, fcntl_fn)
REAL(ioctl, ioctl_fn)
REAL(epoll_ctl, epoll_ctl_fn)
REAL(unlink, unlink_fn)
REAL(unlinkat, unlinkat_fn)
REAL(recv, recv_fn)
REAL(recvfrom, recvfrom_fn)
REAL(recvmsg, recvmsg_fn)
REAL(read, read_fn)
REAL(poll, poll_fn)
REAL(ppoll, ppoll_fn)

/// The function or, if dlsym found none, a stand-in that fails with ENOSYS.
#define CALL_OR_ENOSYS(function, ...) ((function) ? (function)(__VA_ARGS__) : (errno = ENOSYS, -1))

// ---- Loading ----

/// A decimal number from 1 to `maximum`, or 0.
static long parse_number(const char *text, long maximum) {
    if (!text || !*text || strlen(text) > 10) return 0;
    long value = 0;
    for (const char *c = text; *c; c++) {
        if (*c < '0' || *c > '9') return 0;
        value = value * 10 + (*c - '0');
    }
    return value <= maximum ? value : 0;
}

static void record_listener(int fd) {
    int type = 0, accepting = 0;
    socklen_t size = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &size) != 0 || type != SOCK_STREAM) return;
    size = sizeof accepting;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &size) != 0 || !accepting) return;
    struct listener *l = &listeners[listener_count];
    memset(l, 0, sizeof *l);
    l->length = sizeof l->address;
    if (getsockname(fd, (struct sockaddr *)&l->address, &l->length) != 0) return;
    if (l->length > sizeof l->address) return;
    l->family = l->address.ss_family;
    if (l->family != AF_INET && l->family != AF_INET6 && l->family != AF_UNIX) return;
    if (l->family == AF_INET6) {
        size = sizeof l->v6only;
        if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &l->v6only, &size) != 0) return;
    }
    struct stat info;
    if (fstat(fd, &info) != 0) return;
    l->dev = info.st_dev;
    l->ino = info.st_ino;
    l->fd = fd;
    listener_count++;
}

/// The drain signal's handler (async-signal-safe: atomics and epoll_ctl).
static void drain(int signal) {
    (void)signal;
    int saved = errno;
    atomic_store(&draining, 1);
    epoll_ctl_fn next = real_epoll_ctl();
    int used = atomic_load(&registrations_used);
    for (int i = 0; i < used && next; i++) {
        int epoll = atomic_load(&registrations[i].epoll);
        if (epoll >= 0) next(epoll, EPOLL_CTL_DEL, atomic_load(&registrations[i].fd), NULL);
    }
    errno = saved;
}

static void drain(int signal);

/// The rescue signal's handler (async-signal-safe: atomics and epoll_ctl): from here on this process half-closes no
/// connection it accepted, and, as the drain does, takes no new connection (a connection it accepted between two of
/// baton's looks, and closed as idle on its stop signal, would be lost).
static void rescue(int signal) {
    atomic_store(&rescued, 1);
    drain(signal);
}

/// Installs the rescue signal's handler in every process of a worker (a server's own workers too: hypercorn's, a
/// multiprocessing pool's), unless the process inherited it ignored or caught.
static void install_rescue(void) {
    struct sigaction action;
    if (sigaction(SIGRTMIN + RESCUE_SIGNAL_OFFSET, NULL, &action) != 0 || action.sa_handler != SIG_DFL) return;
    memset(&action, 0, sizeof action);
    action.sa_handler = rescue;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigaction(SIGRTMIN + RESCUE_SIGNAL_OFFSET, &action, NULL);
}

__attribute__((constructor)) static void load(void) {
    for (int i = 0; i < MAX_ADOPTED; i++) atomic_init(&adopted[i].fd, -1);
    if (getenv("BATON_GENERATION")) {
        under_baton = true;
        install_rescue();
    }
    long pid = parse_number(getenv("LISTEN_PID"), 0x7fffffff);
    long count = parse_number(getenv("LISTEN_FDS"), 4096);
    if (pid == 0 || count == 0 || pid != (long)getpid()) return;
    for (long i = 0; i < count && listener_count < MAX_LISTENERS; i++) record_listener(3 + (int)i);
    if (listener_count == 0) return;
    owner = (pid_t)pid;
    for (int i = 0; i < MAX_REGISTRATIONS; i++) atomic_init(&registrations[i].epoll, -1);
    // Resolved now: the signal handler must not call dlsym.
    (void)real_epoll_ctl();
}

/// Remembers that `connection` came from accept(), by its inode (the fd number may be reused for something else).
static int note_accepted(int connection) {
    if (connection >= 0 && connection < MAX_TRACKED && under_baton) {
        int saved = errno;
        struct stat info;
        atomic_store(&accepted[connection], fstat(connection, &info) == 0 ? info.st_ino : 0);
        errno = saved;
    }
    return connection;
}

/// Whether `fd` is a listening socket.
static bool is_listening(int fd) {
    int saved = errno, accepting = 0;
    socklen_t size = sizeof accepting;
    bool listening = getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &size) == 0 && accepting;
    errno = saved;
    return listening;
}

/// Whether `fd` is a TCP connection this process accepted.
static bool accepted_here(int fd) {
    if (fd < 0 || fd >= MAX_TRACKED) return false;
    ino_t inode = atomic_load(&accepted[fd]);
    struct stat info;
    return inode != 0 && fstat(fd, &info) == 0 && S_ISSOCK(info.st_mode) && info.st_ino == inode;
}

/// Installs the drain signal's handler, once, when the first socket is adopted: an app that adopts nothing (one
/// that uses LISTEN_FDS itself) does not catch the signal, so baton stops it at once, as it would without the library.
static void install_drain(void) {
    static _Atomic int installed;
    if (atomic_exchange(&installed, 1)) return;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = drain;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigaction(SIGRTMIN + DRAIN_SIGNAL_OFFSET, &action, NULL);
}

// ---- Matching an address to a listener ----

static bool is_v4_mapped(const struct in6_addr *a) { return IN6_IS_ADDR_V4MAPPED(a); }

/// An IPv4 address and port out of a sockaddr_in or a v4-mapped sockaddr_in6.
static bool ipv4_of(const struct sockaddr *a, in_addr_t *address, in_port_t *port) {
    if (a->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)a;
        *address = in->sin_addr.s_addr;
        *port = in->sin_port;
        return true;
    }
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)a;
    if (a->sa_family == AF_INET6 && is_v4_mapped(&in6->sin6_addr)) {
        memcpy(address, &in6->sin6_addr.s6_addr[12], 4);
        *port = in6->sin6_port;
        return true;
    }
    return false;
}

/// How well the listener serves an app's bind to `a` (length checked): 3 the same address, 2 a wildcard of baton's
/// covers it, 1 the app's wildcard covers baton's address, 0 not at all.
static int match(const struct sockaddr *a, socklen_t length, int app_v6only, const struct listener *l) {
    const struct sockaddr *b = (const struct sockaddr *)&l->address;
    if (a->sa_family == AF_UNIX || l->family == AF_UNIX) {
        if (a->sa_family != l->family) return 0;
        size_t path = offsetof(struct sockaddr_un, sun_path);
        const char *app = ((const struct sockaddr_un *)a)->sun_path;
        const char *ours = ((const struct sockaddr_un *)b)->sun_path;
        size_t app_length = length > path ? length - path : 0;
        size_t our_length = l->length > path ? l->length - path : 0;
        if (app_length == 0 || our_length == 0) return 0;  // unnamed
        if (app[0] == '\0' || ours[0] == '\0')  // abstract: every byte counts
            return app_length == our_length && memcmp(app, ours, app_length) == 0 ? 3 : 0;
        return strnlen(app, app_length) == strnlen(ours, our_length) && strncmp(app, ours, app_length) == 0 ? 3 : 0;
    }
    in_port_t app_port = a->sa_family == AF_INET ? ((const struct sockaddr_in *)a)->sin_port
                                                 : ((const struct sockaddr_in6 *)a)->sin6_port;
    in_port_t our_port = l->family == AF_INET ? ((const struct sockaddr_in *)b)->sin_port
                                              : ((const struct sockaddr_in6 *)b)->sin6_port;
    if (app_port != our_port) return 0;
    // Each side as what it covers: an IPv6 socket that is not v6-only also covers every IPv4 address.
    bool app_any6 = a->sa_family == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)a)->sin6_addr);
    bool our_any6 = l->family == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)b)->sin6_addr);
    in_addr_t app4 = 0, our4 = 0;
    in_port_t unused;
    bool app_is4 = ipv4_of(a, &app4, &unused), our_is4 = ipv4_of(b, &our4, &unused);
    bool app_any4 = app_is4 && app4 == htonl(INADDR_ANY), our_any4 = our_is4 && our4 == htonl(INADDR_ANY);
    if (app_is4 && our_is4) return app4 == our4 ? 3 : our_any4 ? 2 : app_any4 ? 1 : 0;
    if (!app_is4 && !our_is4) {  // both IPv6 proper
        const struct in6_addr *x = &((const struct sockaddr_in6 *)a)->sin6_addr;
        const struct in6_addr *y = &((const struct sockaddr_in6 *)b)->sin6_addr;
        return memcmp(x, y, sizeof *x) == 0 ? 3 : our_any6 ? 2 : app_any6 ? 1 : 0;
    }
    if (app_is4)  // the app binds IPv4, baton's listener is IPv6: only a dual-stack wildcard serves it
        return our_any6 && !l->v6only ? 2 : 0;
    // The app binds IPv6, baton's listener is IPv4: only a dual-stack wildcard of the app's covers it.
    return app_any6 && !app_v6only ? 1 : 0;
}

// ---- The table of adopted fds ----

static bool same_file(int fd, dev_t dev, ino_t ino) {
    struct stat info;
    return fstat(fd, &info) == 0 && info.st_dev == dev && info.st_ino == ino;
}

/// The entry for `fd`, or NULL. With `check`, an entry whose fd now refers to another file (the app closed it and
/// the number was reused) is dropped instead.
static struct adopted *find(int fd, bool check) {
    if (fd < 0) return NULL;
    int used = atomic_load_explicit(&adopted_used, memory_order_acquire);
    for (int i = 0; i < used; i++) {
        if (atomic_load_explicit(&adopted[i].fd, memory_order_acquire) != fd) continue;
        struct adopted *entry = &adopted[i];
        if (check && !same_file(fd, entry->dev, entry->ino)) {
            atomic_compare_exchange_strong(&entry->fd, &fd, -1);
            return NULL;
        }
        return entry;
    }
    return NULL;
}

static bool remember(int fd, dev_t dev, ino_t ino, bool nonblocking, int family) {
    pthread_mutex_lock(&adopted_lock);
    int used = atomic_load_explicit(&adopted_used, memory_order_relaxed);
    struct adopted *slot = NULL;
    for (int i = 0; i < used && !slot; i++) {
        int current = atomic_load_explicit(&adopted[i].fd, memory_order_relaxed);
        if (current == fd || current == -1) slot = &adopted[i];
    }
    if (!slot && used < MAX_ADOPTED) slot = &adopted[used++];
    if (slot) {
        atomic_store_explicit(&slot->fd, -1, memory_order_relaxed);
        slot->dev = dev;
        slot->ino = ino;
        atomic_store_explicit(&slot->nonblocking, nonblocking, memory_order_relaxed);
        atomic_store_explicit(&slot->shut, 0, memory_order_relaxed);
        slot->family = family;
        atomic_store_explicit(&slot->fd, fd, memory_order_release);
        atomic_store_explicit(&adopted_used, used, memory_order_release);
    }
    pthread_mutex_unlock(&adopted_lock);
    return slot != NULL;
}

// ---- Adoption ----

enum { NOT_ADOPTED = 1 };

/// Puts baton's listener for `a` on the app's `fd`: 0 on success, -1 with errno, or NOT_ADOPTED.
static int adopt(int fd, const struct sockaddr *a, socklen_t length) {
    if (!a || length < sizeof(sa_family_t)) return NOT_ADOPTED;
    int family = a->sa_family;
    if (family == AF_INET && length < sizeof(struct sockaddr_in)) return NOT_ADOPTED;
    if (family == AF_INET6 && length < sizeof(struct sockaddr_in6)) return NOT_ADOPTED;
    if (family == AF_UNIX && (length <= offsetof(struct sockaddr_un, sun_path) || length > sizeof(struct sockaddr_un)))
        return NOT_ADOPTED;
    if (family != AF_INET && family != AF_INET6 && family != AF_UNIX) return NOT_ADOPTED;
    if (family == AF_INET && ((const struct sockaddr_in *)a)->sin_port == 0) return NOT_ADOPTED;  // any port
    if (family == AF_INET6 && ((const struct sockaddr_in6 *)a)->sin6_port == 0) return NOT_ADOPTED;

    int type = 0, domain = 0, v6only = 0;
    socklen_t size = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &size) != 0 || type != SOCK_STREAM) return NOT_ADOPTED;
    size = sizeof domain;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &size) != 0 || domain != family) return NOT_ADOPTED;
    if (family == AF_INET6) {
        size = sizeof v6only;
        if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &size) != 0) v6only = 0;
    }
    const struct listener *best = NULL;
    int best_score = 0;
    for (int i = 0; i < listener_count; i++) {
        int score = match(a, length, v6only, &listeners[i]);
        if (score > best_score && same_file(listeners[i].fd, listeners[i].dev, listeners[i].ino)) {
            best = &listeners[i];
            best_score = score;
        }
    }
    if (!best || best->fd == fd) return NOT_ADOPTED;

    fcntl_fn fcntl_next = real_fcntl();
    int descriptor_flags = CALL_OR_ENOSYS(fcntl_next, fd, F_GETFD);
    int status_flags = CALL_OR_ENOSYS(fcntl_next, fd, F_GETFL);
    if (descriptor_flags < 0 || status_flags < 0) return -1;
    int shared = CALL_OR_ENOSYS(fcntl_next, best->fd, F_GETFL);
    if (shared < 0) return -1;
    if (!(shared & O_NONBLOCK) && CALL_OR_ENOSYS(fcntl_next, best->fd, F_SETFL, shared | O_NONBLOCK) != 0) return -1;
    if (dup3(best->fd, fd, (descriptor_flags & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0) return -1;
    if (!remember(fd, best->dev, best->ino, (status_flags & O_NONBLOCK) != 0, family)) {
        // No room to remember the app's blocking mode: the fd stays adopted, non-blocking.
    }
    install_drain();
    return 0;
}

EXPORT int bind(int fd, const struct sockaddr *address, socklen_t length) {
    if (owner != 0 && owner == getpid()) {
        int result = adopt(fd, address, length);
        if (result != NOT_ADOPTED) return result;
    }
    bind_fn next = real_bind();
    return CALL_OR_ENOSYS(next, fd, address, length);
}

EXPORT int listen(int fd, int backlog) {
    // baton's listener already listens, with baton's backlog.
    if (find(fd, true)) return 0;
    listen_fn next = real_listen();
    return CALL_OR_ENOSYS(next, fd, backlog);
}

EXPORT int shutdown(int fd, int how) {
    // shutdown() of a listening socket stops it listening for every process that shares it (WEBrick does it when
    // it stops): for an adopted one, only this fd stops accepting.
    struct adopted *entry = find(fd, true);
    if (entry) {
        atomic_store(&entry->shut, 1);
        return 0;
    }
    // Once baton holds this process's connections (the rescue signal came), a half-close of one it accepted would
    // still send the client a FIN (hypercorn does it to every idle connection when it stops): baton closes the
    // connection itself once no process holds it, with a FIN if the client is idle, or hands it on if a request came.
    // A server that lingers after its half-close, reading until the client closes (gunicorn's RFC 9112 close), reads
    // EOF at once instead: it closes without waiting, and without reading (and dropping) the client's next request.
    if (how == SHUT_WR && atomic_load(&rescued) && accepted_here(fd)) {
        struct stat info;
        if (fd < MAX_TRACKED && fstat(fd, &info) == 0) {
            atomic_store(&half_closed[fd], info.st_ino);
            atomic_store(&any_half_closed, 1);
        }
        return 0;
    }
    shutdown_fn next = real_shutdown();
    return CALL_OR_ENOSYS(next, fd, how);
}

/// Whether `fd` is a connection whose half-close was held back (it reads as ended).
static bool half_closed_here(int fd) {
    if (!atomic_load_explicit(&any_half_closed, memory_order_relaxed) || fd < 0 || fd >= MAX_TRACKED) return false;
    ino_t inode = atomic_load(&half_closed[fd]);
    if (inode == 0) return false;
    int saved = errno;
    struct stat info;
    bool same = fstat(fd, &info) == 0 && info.st_ino == inode;
    errno = saved;
    return same;
}

EXPORT ssize_t recv(int fd, void *buffer, size_t length, int flags) {
    if (half_closed_here(fd)) return 0;
    recv_fn next = real_recv();
    return CALL_OR_ENOSYS(next, fd, buffer, length, flags);
}

EXPORT ssize_t recvfrom(int fd, void *buffer, size_t length, int flags, struct sockaddr *address,
                        socklen_t *address_length) {
    if (half_closed_here(fd)) return 0;
    recvfrom_fn next = real_recvfrom();
    return CALL_OR_ENOSYS(next, fd, buffer, length, flags, address, address_length);
}

EXPORT ssize_t recvmsg(int fd, struct msghdr *message, int flags) {
    if (half_closed_here(fd)) return 0;
    recvmsg_fn next = real_recvmsg();
    return CALL_OR_ENOSYS(next, fd, message, flags);
}

EXPORT ssize_t read(int fd, void *buffer, size_t length) {
    if (half_closed_here(fd)) return 0;
    read_fn next = real_read();
    return CALL_OR_ENOSYS(next, fd, buffer, length);
}

/// poll() and ppoll() report such a connection readable at once (and the others as they are, without waiting).
static int poll_half_closed(struct pollfd *fds, nfds_t count) {
    int marked = 0;
    for (nfds_t i = 0; i < count; i++)
        if (half_closed_here(fds[i].fd)) marked++;
    if (marked == 0) return -1;
    poll_fn next = real_poll();
    int ready = CALL_OR_ENOSYS(next, fds, count, 0);
    if (ready < 0) return ready;
    ready = 0;
    for (nfds_t i = 0; i < count; i++) {
        if (half_closed_here(fds[i].fd)) fds[i].revents |= (short)(fds[i].events & (POLLIN | POLLRDNORM | POLLRDHUP));
        if (fds[i].revents) ready++;
    }
    return ready;
}

EXPORT int poll(struct pollfd *fds, nfds_t count, int timeout) {
    if (atomic_load_explicit(&any_half_closed, memory_order_relaxed) && fds) {
        int ready = poll_half_closed(fds, count);
        if (ready >= 0) return ready;
    }
    poll_fn next = real_poll();
    return CALL_OR_ENOSYS(next, fds, count, timeout);
}

EXPORT int ppoll(struct pollfd *fds, nfds_t count, const struct timespec *timeout, const sigset_t *mask) {
    if (atomic_load_explicit(&any_half_closed, memory_order_relaxed) && fds) {
        int ready = poll_half_closed(fds, count);
        if (ready >= 0) return ready;
    }
    ppoll_fn next = real_ppoll();
    return CALL_OR_ENOSYS(next, fds, count, timeout, mask);
}

// ---- Addresses in the family the app's socket has ----

/// Copies `source` into the app's buffer as the app's family would have it (v4-mapped IPv6 for an IPv6 socket on
/// an IPv4 listener, plain IPv4 for an IPv4 socket on a dual-stack one), truncating like the kernel.
static void deliver_address(int family, const struct sockaddr_storage *source, socklen_t source_length,
                            struct sockaddr *destination, socklen_t *destination_length) {
    struct sockaddr_storage converted;
    socklen_t converted_length = source_length;
    const void *from = source;
    in_addr_t address;
    in_port_t port;
    if (family == AF_INET && source->ss_family == AF_INET6) {
        struct sockaddr_in *in = (struct sockaddr_in *)&converted;
        memset(&converted, 0, sizeof converted);
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)source;
        in->sin_family = AF_INET;
        if (ipv4_of((const struct sockaddr *)source, &address, &port)) {
            in->sin_addr.s_addr = address;
            in->sin_port = port;
            from = in;
            converted_length = sizeof *in;
        } else if (IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr)) {
            in->sin_addr.s_addr = htonl(INADDR_ANY);
            in->sin_port = in6->sin6_port;
            from = in;
            converted_length = sizeof *in;
        }
    } else if (family == AF_INET6 && source->ss_family == AF_INET) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&converted;
        memset(&converted, 0, sizeof converted);
        ipv4_of((const struct sockaddr *)source, &address, &port);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = port;
        in6->sin6_addr.s6_addr[10] = 0xff;
        in6->sin6_addr.s6_addr[11] = 0xff;
        memcpy(&in6->sin6_addr.s6_addr[12], &address, 4);
        from = in6;
        converted_length = sizeof *in6;
    }
    socklen_t room = *destination_length;
    memcpy(destination, from, room < converted_length ? room : converted_length);
    *destination_length = converted_length;
}

EXPORT int getsockname(int fd, struct sockaddr *address, socklen_t *length) {
    getsockname_fn next = real_getsockname();
    struct adopted *entry = address && length ? find(fd, true) : NULL;
    if (!entry) return CALL_OR_ENOSYS(next, fd, address, length);
    struct sockaddr_storage ours;
    socklen_t our_length = sizeof ours;
    if (CALL_OR_ENOSYS(next, fd, (struct sockaddr *)&ours, &our_length) != 0) return -1;
    deliver_address(entry->family, &ours, our_length, address, length);
    return 0;
}

// ---- Accepting in the mode the app asked for ----

static int accept_adopted(struct adopted *entry, int fd, struct sockaddr *address, socklen_t *length, int flags) {
    accept4_fn next = real_accept4();
    struct sockaddr_storage peer;
    socklen_t peer_length = sizeof peer;
    bool translate = address && length;
    if (atomic_load(&entry->shut)) {
        errno = EINVAL;  // what accept() says on a listener that was shut down
        return -1;
    }
    while (true) {
        if (atomic_load(&draining)) {
            // Nothing more for this process. An app whose loop polls the socket itself (socketserver, WEBrick)
            // would spin on it: a short nap each time keeps it from taking the CPU the next generation needs.
            struct timespec nap = {.tv_sec = 0, .tv_nsec = 20 * 1000 * 1000};
            nanosleep(&nap, NULL);
            errno = EAGAIN;
            return -1;
        }
        int connection = CALL_OR_ENOSYS(next, fd, translate ? (struct sockaddr *)&peer : NULL,
                                        translate ? &peer_length : NULL, flags);
        if (connection >= 0) {
            if (translate) deliver_address(entry->family, &peer, peer_length, address, length);
            return connection;
        }
        if ((errno != EAGAIN && errno != EWOULDBLOCK) || atomic_load(&entry->nonblocking)) return -1;
        // A blocking accept: another process took the connection this one was woken for, or none is queued yet.
        struct pollfd wait = {.fd = fd, .events = POLLIN};
        if (poll(&wait, 1, -1) < 0) return -1;
    }
}

/// After the rescue signal, a non-blocking listener of the app's own or inherited gives nothing more (the connection
/// stays queued for the serving generation); a blocking one goes on as before. A short nap: an app whose loop polls
/// the socket itself would spin on it.
static bool held_back(int fd) {
    if (!atomic_load(&rescued) || !is_listening(fd)) return false;
    fcntl_fn get = real_fcntl();
    int flags = get ? get(fd, F_GETFL) : 0;
    if (flags < 0 || !(flags & O_NONBLOCK)) return false;
    struct timespec nap = {.tv_sec = 0, .tv_nsec = 20 * 1000 * 1000};
    nanosleep(&nap, NULL);
    errno = EAGAIN;
    return true;
}

EXPORT int accept4(int fd, struct sockaddr *address, socklen_t *length, int flags) {
    struct adopted *entry = find(fd, false);
    if (entry && (atomic_load(&entry->nonblocking) || same_file(fd, entry->dev, entry->ino)))
        return note_accepted(accept_adopted(entry, fd, address, length, flags));
    if (held_back(fd)) return -1;
    accept4_fn next = real_accept4();
    return note_accepted(CALL_OR_ENOSYS(next, fd, address, length, flags));
}

EXPORT int accept(int fd, struct sockaddr *address, socklen_t *length) {
    struct adopted *entry = find(fd, false);
    if (entry && (atomic_load(&entry->nonblocking) || same_file(fd, entry->dev, entry->ino)))
        return note_accepted(accept_adopted(entry, fd, address, length, 0));
    if (held_back(fd)) return -1;
    accept_fn next = real_accept();
    return note_accepted(CALL_OR_ENOSYS(next, fd, address, length));
}

// ---- The blocking mode as the app sees it ----

static int fcntl_common(fcntl_fn next, int fd, int command, void *argument) {
    if (command == F_GETFL || command == F_SETFL || command == F_DUPFD || command == F_DUPFD_CLOEXEC) {
        struct adopted *entry = find(fd, true);
        if (entry) {
            switch (command) {
            case F_GETFL: {
                int flags = CALL_OR_ENOSYS(next, fd, F_GETFL);
                if (flags < 0) return flags;
                return (flags & ~O_NONBLOCK) | (atomic_load(&entry->nonblocking) ? O_NONBLOCK : 0);
            }
            case F_SETFL: {
                int flags = (int)(long)argument;
                atomic_store(&entry->nonblocking, (flags & O_NONBLOCK) != 0);
                return CALL_OR_ENOSYS(next, fd, F_SETFL, flags | O_NONBLOCK);
            }
            default: {
                int copy = CALL_OR_ENOSYS(next, fd, command, argument);
                if (copy >= 0) remember(copy, entry->dev, entry->ino, atomic_load(&entry->nonblocking), entry->family);
                return copy;
            }
            }
        }
    }
    return CALL_OR_ENOSYS(next, fd, command, argument);
}

EXPORT int fcntl(int fd, int command, ...) {
    va_list arguments;
    va_start(arguments, command);
    void *argument = va_arg(arguments, void *);
    va_end(arguments);
    return fcntl_common(real_fcntl(), fd, command, argument);
}

EXPORT int fcntl64(int fd, int command, ...) {
    va_list arguments;
    va_start(arguments, command);
    void *argument = va_arg(arguments, void *);
    va_end(arguments);
    fcntl_fn next = real_fcntl64();
    return fcntl_common(next ? next : real_fcntl(), fd, command, argument);
}

EXPORT int ioctl(int fd, unsigned long request, ...) {
    va_list arguments;
    va_start(arguments, request);
    void *argument = va_arg(arguments, void *);
    va_end(arguments);
    ioctl_fn next = real_ioctl();
    if (request == FIONBIO && argument) {
        struct adopted *entry = find(fd, true);
        if (entry) {
            // The kernel reads the app's int first: a bad pointer fails with EFAULT, as without the library, rather
            // than crashing here. Then the shared description goes back to non-blocking, and the app's wish is kept.
            int result = CALL_OR_ENOSYS(next, fd, FIONBIO, argument);
            if (result != 0) return result;
            atomic_store(&entry->nonblocking, *(const int *)argument != 0);
            int one = 1;
            return CALL_OR_ENOSYS(next, fd, FIONBIO, &one);
        }
    }
    return CALL_OR_ENOSYS(next, fd, request, argument);
}

// ---- The app's epoll sets, so that a drain can take the adopted sockets out ----

static struct registration *registration_of(int epoll, int fd) {
    int used = atomic_load(&registrations_used);
    for (int i = 0; i < used; i++)
        if (atomic_load(&registrations[i].epoll) == epoll && atomic_load(&registrations[i].fd) == fd)
            return &registrations[i];
    return NULL;
}

EXPORT int epoll_ctl(int epoll, int operation, int fd, struct epoll_event *event) {
    epoll_ctl_fn next = real_epoll_ctl();
    // Only a socket that still is an adopted one (the number may have been reused since), or, in a process under
    // baton, a listening socket: the rescue signal takes it out.
    // A getsockopt() only when a socket is added (MOD and DEL find the registration first).
    bool adopted_socket = atomic_load_explicit(&adopted_used, memory_order_acquire) > 0 && find(fd, true);
    if (!adopted_socket) {
        struct registration *earlier = under_baton ? registration_of(epoll, fd) : NULL;
        bool listening = under_baton && (operation == EPOLL_CTL_ADD || earlier) && is_listening(fd);
        // A registration of a listener that was closed since, and whose number is now something else's, ends.
        if (earlier && !listening) atomic_store(&earlier->epoll, -1);
        if (!listening) return CALL_OR_ENOSYS(next, epoll, operation, fd, event);
    }
    pthread_mutex_lock(&adopted_lock);
    struct registration *known = registration_of(epoll, fd);
    int result = 0;
    if (atomic_load(&draining)) {
        // The drain took the socket out: adding or changing it succeeds and does nothing; so does removing it.
        if (operation == EPOLL_CTL_DEL) {
            if (known) atomic_store(&known->epoll, -1);
            else result = CALL_OR_ENOSYS(next, epoll, operation, fd, event);
        }
    } else {
        result = CALL_OR_ENOSYS(next, epoll, operation, fd, event);
        if (result == 0 && operation == EPOLL_CTL_ADD && !known) {
            int used = atomic_load(&registrations_used);
            struct registration *slot = NULL;
            for (int i = 0; i < used && !slot; i++)
                if (atomic_load(&registrations[i].epoll) == -1) slot = &registrations[i];
            if (!slot && used < MAX_REGISTRATIONS) {
                slot = &registrations[used];
                atomic_store(&registrations_used, used + 1);
            }
            if (slot) {
                atomic_store(&slot->fd, fd);
                atomic_store(&slot->epoll, epoll);
            }
        } else if (result == 0 && operation == EPOLL_CTL_DEL && known) {
            atomic_store(&known->epoll, -1);
        }
    }
    pthread_mutex_unlock(&adopted_lock);
    return result;
}

// ---- The path of a unix listener stays ----

/// Whether `path` is, byte for byte, the path of a unix listener baton serves.
static bool served_path(const char *path) {
    if (!path) return false;
    for (int i = 0; i < listener_count; i++) {
        if (listeners[i].family != AF_UNIX) continue;
        const struct sockaddr_un *un = (const struct sockaddr_un *)&listeners[i].address;
        size_t path_offset = offsetof(struct sockaddr_un, sun_path);
        size_t room = listeners[i].length > path_offset ? listeners[i].length - path_offset : 0;
        if (room == 0 || un->sun_path[0] == '\0') continue;
        size_t size = strnlen(un->sun_path, room);
        if (strlen(path) == size && memcmp(path, un->sun_path, size) == 0) return true;
    }
    return false;
}

EXPORT int unlink(const char *path) {
    // An app removes a stale socket file before it binds, or its own when it closes (libuv does): baton's stays.
    if (listener_count > 0 && served_path(path)) return 0;
    unlink_fn next = real_unlink();
    return CALL_OR_ENOSYS(next, path);
}

EXPORT int unlinkat(int directory, const char *path, int flags) {
    if (listener_count > 0 && !(flags & AT_REMOVEDIR) && path && (directory == AT_FDCWD || path[0] == '/') &&
        served_path(path))
        return 0;
    unlinkat_fn next = real_unlinkat();
    return CALL_OR_ENOSYS(next, directory, path, flags);
}
