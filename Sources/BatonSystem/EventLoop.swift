internal import CBatonSystem
internal import Glibc
public import SystemPackage

/// One thread that waits in `epoll_wait` and runs a handler when a registered fd becomes readable, a timer when it
/// is due (``schedule(at:repeating:_:)``, all on one timerfd), and the Swift jobs enqueued on it as an executor
/// (`LoopExecutor.swift`): the launcher actor runs here, so that nothing wakes baton while nothing happens.
///
/// Handlers run on the loop's thread, one at a time. They read without blocking and hand what they read to
/// the daemon through an `AsyncStream`. An fd is closed only by its own handler (or after it is
/// unregistered from that thread), so a handler never reads an fd number that has been reused.
public final class EventLoop: Sendable {
    public typealias Handler = @Sendable () -> Void

    private let epoll: Int32
    let wake: Int32
    let timer: Int32
    private let handlers = Locked<[Int32: Handler]>([:])
    let timers = Locked(LoopTimers())
    let jobs = Locked<[UnownedJob]>([])
    /// The loop's thread, once started.
    let thread = Locked<pthread_t?>(nil)

    public init() throws(SystemError) {
        epoll = try syscall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        wake = try syscall("eventfd") { eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) }
        timer = try syscall("timerfd_create") { timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK)) }
        try add(wake)
        try add(timer)
    }

    deinit {
        _ = close(epoll)
        _ = close(wake)
        _ = close(timer)
    }

    /// Starts the loop's thread, once (later calls do nothing; enqueueing a job starts it too).
    ///
    /// The corresponding C function is `pthread_create`.
    public func start() {
        let first = thread.withLock { current in
            guard current == nil else { return false }
            current = pthread_t()
            return true
        }
        guard first else { return }
        Threads.detach {
            self.thread.withLock { $0 = pthread_self() }
            self.run()
        }
    }

    /// Calls `handler` on the loop's thread whenever `fd` is readable or hung up.
    ///
    /// The corresponding C function is `epoll_ctl(EPOLL_CTL_ADD)`.
    public func register(_ fd: FileDescriptor, _ handler: @escaping Handler) throws(SystemError) {
        try register(fd, events: EPOLLIN.rawValue | EPOLLRDHUP.rawValue, handler)
    }

    /// Calls `handler` on the loop's thread once `fd` hangs up (a listener a worker shut down), once: call
    /// ``watchHangUp(_:)`` to watch again.
    ///
    /// The corresponding C function is `epoll_ctl(EPOLL_CTL_ADD)`.
    public func registerHangUp(_ fd: FileDescriptor, _ handler: @escaping Handler) throws(SystemError) {
        try register(fd, events: EPOLLONESHOT.rawValue, handler)
    }

    /// Calls `handler` on the loop's thread each time `fd` gets something new to read, hangs up, or (with `writable`)
    /// gets room to write: edge-triggered, so a handler must read or write until the call would block.
    ///
    /// The corresponding C function is `epoll_ctl(EPOLL_CTL_ADD)` with `EPOLLET`.
    public func registerEdges(_ fd: FileDescriptor, writable: Bool, _ handler: @escaping Handler) throws(SystemError) {
        let events = EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue | (writable ? EPOLLOUT.rawValue : 0)
        try register(fd, events: events, handler)
    }

    /// Watches a fd registered with ``registerHangUp(_:_:)`` again.
    ///
    /// The corresponding C function is `epoll_ctl(EPOLL_CTL_MOD)`.
    public func watchHangUp(_ fd: FileDescriptor) {
        var event = epoll_event()
        event.events = EPOLLONESHOT.rawValue
        event.data.fd = fd.rawValue
        _ = epoll_ctl(epoll, EPOLL_CTL_MOD, fd.rawValue, &event)
    }

    private func register(_ fd: FileDescriptor, events: UInt32, _ handler: @escaping Handler) throws(SystemError) {
        handlers.withLock { $0[fd.rawValue] = handler }
        do {
            try add(fd.rawValue, events: events)
        } catch {
            _ = handlers.withLock { $0.removeValue(forKey: fd.rawValue) }
            throw error
        }
    }

    /// Stops watching `fd`. Call it from a handler on the loop's thread before closing the fd.
    ///
    /// The corresponding C function is `epoll_ctl(EPOLL_CTL_DEL)`.
    public func unregister(_ fd: FileDescriptor) {
        _ = epoll_ctl(epoll, EPOLL_CTL_DEL, fd.rawValue, nil)
        _ = handlers.withLock { $0.removeValue(forKey: fd.rawValue) }
    }

    /// Also calls `fd`'s handler whenever it is writable (or stops doing so): for a reply that did not fit in the
    /// socket's buffer at once.
    ///
    /// The corresponding C function is `epoll_ctl(EPOLL_CTL_MOD)`.
    public func watchWritable(_ fd: FileDescriptor, _ on: Bool) {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLRDHUP.rawValue | (on ? EPOLLOUT.rawValue : 0)
        event.data.fd = fd.rawValue
        _ = epoll_ctl(epoll, EPOLL_CTL_MOD, fd.rawValue, &event)
    }

    private func add(_ fd: Int32, events: UInt32 = EPOLLIN.rawValue | EPOLLRDHUP.rawValue) throws(SystemError) {
        var event = epoll_event()
        event.events = events
        event.data.fd = fd
        try syscall("epoll_ctl(EPOLL_CTL_ADD)") { epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) }
    }

    private func run() {
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while true {
            runJobs()
            let n = events.withUnsafeMutableBufferPointer { epoll_wait(epoll, $0.baseAddress, 64, -1) }
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                fatalError("epoll_wait: \(Errno(rawValue: Glibc.errno))")
            }
            for index in 0..<Int(n) {
                let fd = events[index].data.fd
                if fd == wake {
                    var value: UInt64 = 0
                    _ = Glibc.read(wake, &value, 8)
                    continue
                }
                if fd == timer {
                    fireTimers()
                    continue
                }
                // Look the handler up for every event: an earlier handler in this batch may have removed it.
                guard let handler = handlers.withLock({ $0[fd] }) else { continue }
                handler()
            }
        }
    }
}

/// Periodic timers as fds, so that a tick is an event of the loop like any other.
public enum PeriodicTimer {
    /// A non-blocking, close-on-exec timerfd on CLOCK_MONOTONIC that expires every `interval`.
    ///
    /// The corresponding C functions are `timerfd_create` and `timerfd_settime`.
    public static func descriptor(every interval: Duration) throws(SystemError) -> OwnedDescriptor {
        let fd = OwnedDescriptor(
            raw: try syscall("timerfd_create") { timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK)) }
        )
        let (seconds, attoseconds) = interval.components
        let period = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        var spec = itimerspec(it_interval: period, it_value: period)
        try syscall("timerfd_settime") { timerfd_settime(fd.descriptor.rawValue, 0, &spec, nil) }
        return fd
    }

    /// A non-blocking, close-on-exec timerfd on CLOCK_MONOTONIC that is not armed yet (see ``set(_:every:)``).
    ///
    /// The corresponding C function is `timerfd_create`.
    public static func disarmed() throws(SystemError) -> OwnedDescriptor {
        OwnedDescriptor(
            raw: try syscall("timerfd_create") { timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK)) }
        )
    }

    /// Arms the timer to expire every `interval`, or disarms it (nil).
    ///
    /// The corresponding C function is `timerfd_settime`.
    public static func set(_ fd: FileDescriptor, every interval: Duration?) {
        let (seconds, attoseconds) = (interval ?? .zero).components
        let period = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        var spec = itimerspec(it_interval: period, it_value: period)
        _ = timerfd_settime(fd.rawValue, 0, &spec, nil)
    }

    /// Reads how many times the timer expired since the last read (0 if it has not).
    ///
    /// The corresponding C function is `read`.
    public static func acknowledge(_ fd: FileDescriptor) -> UInt64 {
        var count: UInt64 = 0
        return Glibc.read(fd.rawValue, &count, 8) == 8 ? count : 0
    }
}

/// Signals delivered through a `signalfd` instead of handlers, so they arrive as ordinary events.
public enum Signals {
    /// Blocks exactly `signals` in the calling thread (the mask is set, not added to); threads created afterwards
    /// inherit it. Call it first thing on the main thread, before any other thread exists.
    ///
    /// The corresponding C function is `pthread_sigmask`.
    public static func block(_ signals: [Int32]) {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        pthread_sigmask(SIG_SETMASK, &set, nil)
    }

    /// Ignores `signal` (for the short-lived client commands, which must not die of a launcher's SIGUSR2).
    ///
    /// The corresponding C function is `signal`.
    public static func ignore(_ number: Int32) {
        _ = signal(number, SIG_IGN)
    }

    /// What `baton run` does with a signal it receives through its signalfd.
    public enum Meaning: Sendable, Equatable {
        /// SIGCHLD: reap children.
        case reap
        /// SIGHUP: reload.
        case reload
        /// SIGUSR2: re-execute the (upgraded) binary in place.
        case reexecute
        /// Retire every generation gracefully and exit, like SIGTERM.
        case stop
        /// Log it and carry on.
        case ignore
    }

    /// Signals that stop baton gracefully, as SIGTERM does: INT, QUIT (as nginx and gunicorn read it), PWR (init's
    /// power-failure shutdown) and XCPU (the soft CPU limit: the workers are stopped before the hard limit's
    /// SIGKILL could leave them behind).
    public static let stopping: [Int32] = [SIGTERM, SIGINT, SIGQUIT, SIGPWR, SIGXCPU]

    /// Signals whose default would kill baton but that mean nothing to it: ignored (`SIG_IGN`, see
    /// ``ignoreMeaningless()``). USR1, the timer signals (ALRM, VTALRM, PROF), IO/POLL, STKFLT, XFSZ (a write past
    /// the file size limit fails with EFBIG instead) and every real-time signal glibc leaves to programs. They are
    /// ignored rather than read from the signalfd because libdispatch's threads leave some of them (PROF)
    /// unblocked, and a signal one thread does not block would be delivered there and kill baton.
    public static let ignored: [Int32] =
        [SIGUSR1, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGSTKFLT, SIGXFSZ] + Array(cbaton_sigrtmin()...cbaton_sigrtmax())

    /// The signals `baton run` receives through its signalfd. With ``ignored`` and PIPE ignored, that is every
    /// signal that would otherwise end it, except the ones that report a crash (SEGV, BUS, FPE, ILL, ABRT, TRAP,
    /// SYS: baton dies of those at once, for a core dump and for systemd's watchdog, whose SIGABRT must end a hung
    /// baton). The job control signals (TSTP, TTIN, TTOU, and STOP, which no process can catch) pause baton as they
    /// would any program, and the workers keep serving meanwhile.
    public static let handledByRun: [Int32] = [SIGCHLD, SIGHUP, SIGUSR2] + stopping

    /// Ignores SIGPIPE and every signal in ``ignored``. Workers do not inherit this: a spawn resets every
    /// disposition.
    ///
    /// The corresponding C function is `signal`.
    public static func ignoreMeaningless() {
        for number in [SIGPIPE] + ignored { _ = signal(number, SIG_IGN) }
    }

    /// What `baton run` does with `signal`.
    public static func meaning(of signal: Int32) -> Meaning {
        switch signal {
        case SIGCHLD: .reap
        case SIGHUP: .reload
        case SIGUSR2: .reexecute
        case _ where stopping.contains(signal): .stop
        default: .ignore
        }
    }

    /// Ignores SIGPIPE, so that a write to a closed socket fails with EPIPE instead of killing baton.
    ///
    /// The corresponding C function is `signal`.
    public static func ignoreBrokenPipe() {
        _ = signal(SIGPIPE, SIG_IGN)
    }

    /// A non-blocking, close-on-exec `signalfd` for `signals`, which must be blocked already.
    ///
    /// The corresponding C function is `signalfd`.
    public static func descriptor(for signals: [Int32]) throws(SystemError) -> OwnedDescriptor {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        return OwnedDescriptor(raw: try syscall("signalfd") { signalfd(-1, &set, Int32(SFD_CLOEXEC | SFD_NONBLOCK)) })
    }

    /// Reads every pending signal number from a `signalfd`.
    ///
    /// The corresponding C function is `read`.
    public static func drain(_ fd: FileDescriptor) -> [Int32] {
        var result: [Int32] = []
        var info = signalfd_siginfo()
        while Glibc.read(fd.rawValue, &info, MemoryLayout<signalfd_siginfo>.size) == MemoryLayout<signalfd_siginfo>.size
        {
            result.append(Int32(info.ssi_signo))
        }
        return result
    }

    public static let hangup = SIGHUP
    public static let terminate = SIGTERM
    public static let interrupt = SIGINT
    public static let child = SIGCHLD
    public static let kill = SIGKILL
    /// The signals a process can neither catch nor ignore.
    public static let uncatchable: Set<Int32> = [SIGKILL, SIGSTOP]
    /// SIGUSR2 asks a launcher to re-execute its (upgraded) binary in place.
    public static let upgrade = SIGUSR2

    /// A signal's number from a name such as `TERM`, `SIGTERM`, `RTMIN+2` or `15` (1 to ``largest``).
    public static func number(named name: String) -> Int32? {
        if let number = Int32(name) { return number > 0 && number <= largest ? number : nil }
        let bare = name.uppercased().hasPrefix("SIG") ? String(name.uppercased().dropFirst(3)) : name.uppercased()
        let table: [String: Int32] = [
            "HUP": SIGHUP, "INT": SIGINT, "QUIT": SIGQUIT, "KILL": SIGKILL, "USR1": SIGUSR1, "USR2": SIGUSR2,
            "TERM": SIGTERM, "CONT": SIGCONT, "STOP": SIGSTOP, "WINCH": SIGWINCH, "ALRM": SIGALRM,
            "ILL": SIGILL, "TRAP": SIGTRAP, "ABRT": SIGABRT, "BUS": SIGBUS, "FPE": SIGFPE, "SEGV": SIGSEGV,
            "PIPE": SIGPIPE, "STKFLT": SIGSTKFLT, "CHLD": SIGCHLD, "TSTP": SIGTSTP, "TTIN": SIGTTIN, "TTOU": SIGTTOU,
            "URG": SIGURG, "XCPU": SIGXCPU, "XFSZ": SIGXFSZ, "VTALRM": SIGVTALRM, "PROF": SIGPROF, "IO": SIGIO,
            "PWR": SIGPWR, "SYS": SIGSYS, "RTMIN": cbaton_sigrtmin(), "RTMAX": largest,
        ]
        if let number = table[bare] { return number }
        // RTMIN+N and RTMAX-N, within the real-time range.
        for (base, sign) in [("RTMIN+", Int32(1)), ("RTMAX-", Int32(-1))] where bare.hasPrefix(base) {
            guard let offset = Int32(bare.dropFirst(base.count)), offset >= 0, offset <= largest else { return nil }
            let number = (sign > 0 ? cbaton_sigrtmin() : largest) + sign * offset
            return number >= cbaton_sigrtmin() && number <= largest ? number : nil
        }
        return nil
    }

    /// The largest signal number (SIGRTMAX).
    public static var largest: Int32 { cbaton_sigrtmax() }

    /// A signal's short name, such as `TERM`.
    public static func name(of signal: Int32) -> String {
        guard let text = strsignal(signal) else { return String(signal) }
        let table: [Int32: String] = [
            SIGHUP: "HUP", SIGINT: "INT", SIGQUIT: "QUIT", SIGKILL: "KILL", SIGUSR1: "USR1", SIGUSR2: "USR2",
            SIGTERM: "TERM", SIGSEGV: "SEGV", SIGABRT: "ABRT", SIGBUS: "BUS", SIGFPE: "FPE", SIGILL: "ILL",
            SIGPIPE: "PIPE", SIGALRM: "ALRM", SIGCONT: "CONT", SIGSTOP: "STOP", SIGVTALRM: "VTALRM", SIGPROF: "PROF",
            SIGIO: "IO", SIGPWR: "PWR", SIGSTKFLT: "STKFLT", SIGXCPU: "XCPU", SIGXFSZ: "XFSZ", SIGTRAP: "TRAP",
            SIGSYS: "SYS", SIGCHLD: "CHLD", SIGWINCH: "WINCH", SIGURG: "URG", SIGTSTP: "TSTP", SIGTTIN: "TTIN",
            SIGTTOU: "TTOU",
        ]
        if let name = table[signal] { return name }
        let first = cbaton_sigrtmin()
        let last = cbaton_sigrtmax()
        if signal >= first && signal <= last { return signal == first ? "RTMIN" : "RTMIN+\(signal - first)" }
        return String(cString: text)
    }
}

/// A child that has ended.
public struct ChildExit: Sendable, Equatable {
    public enum Reason: Sendable, Equatable {
        case exited(Int32)
        case signaled(Int32, coreDumped: Bool)
    }

    public var pid: Int32
    public var reason: Reason
    /// Its process group, read while it was a zombie (nil if that failed): what tells a worker's descendant that
    /// was re-parented to baton.
    public var processGroup: Int32?
}

public enum Children {
    /// Reaps every child that has ended. Signals merge, so call this until it returns nothing on each SIGCHLD.
    ///
    /// Each exit is seen first with `waitid(P_ALL, WEXITED | WNOHANG | WNOWAIT)`, its process group read, then reaped
    /// with `waitid(P_PID, ...)`.
    public static func reapAll() -> [ChildExit] {
        var result: [ChildExit] = []
        while true {
            let peeked = cbaton_peek_exit()
            if peeked <= 0 { break }
            // A zombie keeps its /proc/PID/stat: its process group is read before it is reaped.
            let group = ProcInspector.processGroup(of: peeked)
            var code: Int32 = 0
            var status: Int32 = 0
            let pid = cbaton_reap_pid(peeked, &code, &status)
            if pid <= 0 { break }
            switch code {
            case Int32(CLD_EXITED): result.append(ChildExit(pid: pid, reason: .exited(status), processGroup: group))
            case Int32(CLD_KILLED):
                result.append(ChildExit(pid: pid, reason: .signaled(status, coreDumped: false), processGroup: group))
            case Int32(CLD_DUMPED):
                result.append(ChildExit(pid: pid, reason: .signaled(status, coreDumped: true), processGroup: group))
            default: continue
            }
        }
        return result
    }
}
