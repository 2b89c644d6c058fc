/// Zero-configuration readiness (`--ready listen`), decoded: what a worker's threads wait in, read from
/// `/proc/PID/task/TID/syscall` and, for `poll`/`select`, from the fd sets in the worker's memory; whether that means it
/// accepts on baton's listeners; and, at the ready timeout, what to say it did instead. The system layer reads, this
/// decides.
public enum ListenWait {
    /// The most `pollfd` entries read from a worker (32 KiB); a larger array is judged by its first entries.
    public static let maxPollEntries = 4096
    /// The most fds of a `select` set read from a worker (8 KiB a set); higher fds are not looked at.
    public static let maxSelectFds = 65536
    /// The size of a `struct pollfd` (`int fd; short events; short revents;`).
    public static let pollEntrySize = 8
    /// `POLLIN | POLLPRI | POLLRDNORM`: the events of a `pollfd` that wait for something to read (or to accept).
    static let pollReadEvents: Int16 = 0x001 | 0x002 | 0x040

    /// The fds a `select` read set (`fd_set`, an array of native-endian 64-bit words) holds, below `count`.
    public static func selectSet(_ bytes: [UInt8], count: Int) -> [Int] {
        let words = min(bytes.count / 8, (max(count, 0) + 63) / 64)
        var fds: [Int] = []
        bytes.withUnsafeBytes { raw in
            for index in 0..<words {
                var word = raw.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self)
                while word != 0 {
                    let fd = index * 64 + word.trailingZeroBitCount
                    if fd < count { fds.append(fd) }
                    word &= word - 1
                }
            }
        }
        return fds
    }

    /// The fds of a `pollfd` array (native endianness) that wait to be read; negative fds are skipped, as the kernel
    /// skips them.
    public static func pollReadable(_ bytes: [UInt8]) -> [Int] {
        var fds: [Int] = []
        bytes.withUnsafeBytes { raw in
            for offset in stride(from: 0, to: raw.count - pollEntrySize + 1, by: pollEntrySize) {
                let fd = raw.loadUnaligned(fromByteOffset: offset, as: Int32.self)
                let events = raw.loadUnaligned(fromByteOffset: offset + 4, as: Int16.self)
                if fd >= 0, events & pollReadEvents != 0 { fds.append(Int(fd)) }
            }
        }
        return fds
    }

    /// What a thread waits in, given its syscall line; `memory(address, count)` reads the worker's memory, asked
    /// only for `poll`, `ppoll`, `select` and `pselect6`.
    public static func decode(
        _ line: SyscallLine,
        table: SyscallTable,
        memory: (UInt64, Int) -> Result<[UInt8], UnreadableMemory>
    ) -> ThreadWait {
        let arguments: [UInt64]
        let number: Int
        switch line {
        case .running: return .running
        case .outsideSyscall: return .outsideSyscall
        case .blocked(let call, let args):
            number = call
            arguments = args
        }
        guard arguments.count == 6 else { return .unknown(number: number) }
        guard let call = table.call(number) else { return .unknown(number: number) }
        // An fd is an `int` in a 64-bit register.
        let fd = Int(Int32(truncatingIfNeeded: arguments[0]))
        switch call {
        case .accept, .accept4:
            return .accept(call, fd: fd)
        case .poll, .ppoll:
            let count = Int(min(arguments[1], UInt64(maxPollEntries)))
            guard count > 0 else { return .readiness(call, readable: []) }
            switch memory(arguments[0], count * pollEntrySize) {
            case .success(let bytes): return .readiness(call, readable: pollReadable(bytes))
            case .failure(let error): return .readinessUnseen(call, error)
            }
        case .select, .pselect6:
            let count = Int(min(max(Int64(Int32(truncatingIfNeeded: arguments[0])), 0), Int64(maxSelectFds)))
            guard count > 0, arguments[1] != 0 else { return .readiness(call, readable: []) }
            switch memory(arguments[1], (count + 63) / 64 * 8) {
            case .success(let bytes): return .readiness(call, readable: selectSet(bytes, count: count))
            case .failure(let error): return .readinessUnseen(call, error)
            }
        case .epollWait, .epollPwait, .epollPwait2:
            return .epoll(call, fd: fd)
        case .read, .readv, .pread64, .recvfrom, .recvmsg, .write, .writev, .sendto, .sendmsg, .connect, .flock:
            return .onDescriptor(call, fd: fd)
        case .nanosleep, .clockNanosleep, .pause, .futex, .wait4, .waitid, .rtSigsuspend, .rtSigtimedwait,
            .ioUringEnter:
            return .other(call)
        }
    }

    /// Whether a thread that waits so accepts on one of `listeners` (the fds, in its process, of baton's listeners).
    public static func accepts(_ wait: ThreadWait, listeners: Set<Int>) -> Bool {
        switch wait {
        case .accept(_, let fd): listeners.contains(fd)
        case .readiness(_, let readable): readable.contains { listeners.contains($0) }
        default: false
        }
    }

    /// The ready-timeout explanation for a worker (`processes`: it and its descendants, as seen at the timeout)
    /// that never accepted on baton's listeners, which it was given at `expected` (3, 4, ...). `ptraceScope` is
    /// Yama's `kernel.yama.ptrace_scope` (nil without Yama), named when it is why baton could not look.
    public static func explanation(_ processes: [ProcessWaits], expected: [Int], ptraceScope: Int? = nil) -> String? {
        guard let worker = processes.first else { return nil }
        let held = Array(Set(processes.flatMap(\.listeners)).sorted())
        let waited = "--ready listen waited for it to accept on baton's \(listenerWord(expected)) (\(fdList(expected)))"
        var seen: [String] = []
        let unseen =
            processes.contains { $0.descriptorsUnseen != nil }
            || processes.flatMap(\.threads).contains { $0.wait.hidesWhatItWaitsOn }
        if let reason = worker.descriptorsUnseen {
            seen.append("baton may not look into it (\(reason))")
        } else if held.isEmpty {
            seen.append("it closed \(fdList(expected))")
        } else if unseen {
            seen.append("\(fdList(held)) \(held.count == 1 ? "is" : "are") open and in no epoll set")
        } else {
            seen.append(
                "\(fdList(held)) \(held.count == 1 ? "is" : "are") open and unused (in no epoll set, no thread waits on \(held.count == 1 ? "it" : "them"))"
            )
        }
        for process in processes.prefix(3) where process.descriptorsUnseen == nil {
            guard let thread = process.telling else { continue }
            let who =
                process.pid == worker.pid
                ? (thread.tid == process.pid ? "its main thread" : "its thread \(thread.tid)")
                : "its child \(process.pid)"
            seen.append("\(who) \(describe(thread.wait, targets: process.targets))")
        }
        let advice: String
        if unseen {
            let yama =
                switch ptraceScope {
                case 2: " (kernel.yama.ptrace_scope is 2: only CAP_SYS_PTRACE)"
                case 3: " (kernel.yama.ptrace_scope is 3: no process may)"
                default: ""
                }
            advice =
                "use --ready notify or --ready fd; looking into a worker takes its uid and a dumpable worker, or CAP_SYS_PTRACE\(yama)"
        } else if held.isEmpty {
            advice = "keep the fds in LISTEN_FDS open and accept on them, or use --ready notify, fd or exec"
        } else {
            advice = "accept on \(fdList(held)) (LISTEN_FDS), or use --ready notify, fd or exec"
        }
        return "\(waited), but \(joined(seen)): \(advice)"
    }

    /// A thread's wait in words: "waits in read() on fd 0 (pipe:[123])", "sleeps in nanosleep()".
    public static func describe(_ wait: ThreadWait, targets: [Int: String] = [:]) -> String {
        func on(_ fd: Int) -> String { targets[fd].map { "fd \(fd) (\($0))" } ?? "fd \(fd)" }
        switch wait {
        case .running:
            return "is running, not waiting in a system call (still starting?)"
        case .outsideSyscall:
            return "is stopped outside a system call"
        case .accept(let call, let fd):
            return "waits in \(call.rawValue)() on \(on(fd))"
        case .readiness(let call, let readable):
            guard !readable.isEmpty else { return "waits in \(call.rawValue)() on no fd to read" }
            let shown = readable.prefix(4).map { on($0) }.joined(separator: ", ")
            return
                "waits in \(call.rawValue)() on \(shown)\(readable.count > 4 ? " and \(readable.count - 4) more" : "")"
        case .readinessUnseen(let call, let error):
            return "waits in \(call.rawValue)(), whose fds baton cannot read (\(error.reason))"
        case .epoll(let call, let fd):
            return "waits in \(call.rawValue)() on \(on(fd)), an epoll set without baton's listener"
        case .onDescriptor(let call, let fd):
            return "waits in \(call.rawValue)() on \(on(fd))"
        case .other(let call):
            switch call {
            case .nanosleep, .clockNanosleep, .pause: return "sleeps in \(call.rawValue)()"
            case .wait4, .waitid: return "waits for a child in \(call.rawValue)()"
            case .futex: return "waits in futex() (a lock or a condition)"
            default: return "waits in \(call.rawValue)()"
            }
        case .unknown(let number):
            return "waits in system call \(number)"
        case .unseen(let reason):
            return "cannot be seen (\(reason))"
        }
    }

    static func listenerWord(_ fds: [Int]) -> String { fds.count == 1 ? "listener" : "listeners" }

    static func fdList(_ fds: [Int]) -> String {
        (fds.count == 1 ? "fd " : "fds ") + fds.map(String.init).joined(separator: ", ")
    }

    static func joined(_ parts: [String]) -> String {
        parts.count <= 1 ? parts.joined() : parts.dropLast().joined(separator: ", ") + " and " + parts.last!
    }
}

/// A worker's memory that could not be read (the reason names the call and the error).
public struct UnreadableMemory: Error, Sendable, Equatable {
    public var reason: String

    public init(_ reason: String) { self.reason = reason }
}

/// One line of `/proc/PID/task/TID/syscall`: `running`; `-1 SP PC` (stopped outside a system call); or the call's
/// number, its six arguments, SP and PC (`270 0x4 0x7ffd... 0x0 0x0 0x7ffd... 0x0 0x7ffd... 0x7f04...`).
public enum SyscallLine: Equatable, Sendable {
    case running
    case outsideSyscall
    case blocked(number: Int, arguments: [UInt64])

    /// Parses the line; nil if it has neither form.
    public init?(_ text: some StringProtocol) {
        let fields = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        if fields.count == 1, fields[0] == "running" {
            self = .running
            return
        }
        guard let number = Int(fields.first ?? "") else { return nil }
        if number < 0 {
            guard fields.count == 3 else { return nil }
            self = .outsideSyscall
            return
        }
        guard fields.count == 9 else { return nil }
        var arguments: [UInt64] = []
        for field in fields[1...6] {
            guard field.hasPrefix("0x"), let value = UInt64(field.dropFirst(2), radix: 16) else { return nil }
            arguments.append(value)
        }
        self = .blocked(number: number, arguments: arguments)
    }
}

/// What one thread waits in.
public enum ThreadWait: Equatable, Sendable {
    /// On a CPU (or runnable), not in a system call.
    case running
    /// Stopped outside a system call (a page fault, a ptrace stop).
    case outsideSyscall
    /// `accept`/`accept4` on `fd`.
    case accept(SyscallTable.Call, fd: Int)
    /// `poll`/`ppoll`/`select`/`pselect6`, waiting to read (or accept) on `readable`.
    case readiness(SyscallTable.Call, readable: [Int])
    /// `poll`/`ppoll`/`select`/`pselect6` whose fd array baton could not read.
    case readinessUnseen(SyscallTable.Call, UnreadableMemory)
    /// An `epoll_wait` family call on the epoll instance `fd`.
    case epoll(SyscallTable.Call, fd: Int)
    /// A call on one fd: `read`, `recvfrom`, `connect`...
    case onDescriptor(SyscallTable.Call, fd: Int)
    /// A call on no fd baton cares about: `nanosleep`, `futex`, `wait4`...
    case other(SyscallTable.Call)
    /// A system call baton has no name for.
    case unknown(number: Int)
    /// The syscall file could not be read (the reason names the file and the error).
    case unseen(String)

    /// Whether baton could not tell what this thread waits on.
    var hidesWhatItWaitsOn: Bool {
        switch self {
        case .readinessUnseen, .unseen: true
        default: false
        }
    }

    /// How much the wait tells about a server, to pick the thread an explanation names: fd waits first.
    var weight: Int {
        switch self {
        case .accept, .readiness, .readinessUnseen, .epoll: 3
        case .onDescriptor, .unseen: 2
        case .other(.futex): 0
        default: 1
        }
    }
}

/// What `/proc` shows of one process of a worker's tree, for the ready-timeout explanation.
public struct ProcessWaits: Equatable, Sendable {
    public struct Thread: Equatable, Sendable {
        public var tid: Int32
        public var wait: ThreadWait

        public init(tid: Int32, wait: ThreadWait) {
            self.tid = tid
            self.wait = wait
        }
    }

    public var pid: Int32
    /// Its fds that are baton's listeners (by inode), wherever the app moved them.
    public var listeners: [Int]
    /// Its threads, the main thread first.
    public var threads: [Thread]
    /// Why its fds could not be listed (`/proc/PID/fd`), if they could not.
    public var descriptorsUnseen: String?
    /// What its fds are (`/proc/PID/fd/N`: `pipe:[123]`, `socket:[456]`, a path), for the fds its threads wait on.
    public var targets: [Int: String]

    public init(pid: Int32, listeners: [Int], threads: [Thread], targets: [Int: String] = [:]) {
        self.pid = pid
        self.listeners = listeners
        self.threads = threads
        self.targets = targets
    }

    /// The thread whose wait tells the most (the main thread when none tells more).
    var telling: Thread? {
        threads.reduce(nil) { best, thread in
            guard let best else { return thread }
            return thread.wait.weight > best.wait.weight ? thread : best
        }
    }

    /// The fds its threads wait on, whose targets an explanation names.
    public var waitedDescriptors: Set<Int> {
        var fds = Set<Int>()
        for thread in threads {
            switch thread.wait {
            case .accept(_, let fd), .epoll(_, let fd), .onDescriptor(_, let fd): fds.insert(fd)
            case .readiness(_, let readable): fds.formUnion(readable.prefix(4))
            default: break
            }
        }
        return fds
    }
}

/// The system calls readiness tells apart, numbered for one architecture: x86_64 from the kernel's
/// `arch/x86/entry/syscalls/syscall_64.tbl` (`asm/unistd_64.h`), aarch64 from `include/uapi/asm-generic/unistd.h`
/// (which has no `poll`, `select`, `pause` or `epoll_wait`: its C library uses `ppoll`, `pselect6`, `epoll_pwait`).
public struct SyscallTable: Sendable {
    public enum Call: String, Sendable, CaseIterable {
        case read, readv, pread64, recvfrom, recvmsg, write, writev, sendto, sendmsg, connect, flock
        case accept, accept4, poll, ppoll, select, pselect6
        case epollWait = "epoll_wait"
        case epollPwait = "epoll_pwait"
        case epollPwait2 = "epoll_pwait2"
        case nanosleep
        case clockNanosleep = "clock_nanosleep"
        case pause, futex, wait4, waitid
        case rtSigsuspend = "rt_sigsuspend"
        case rtSigtimedwait = "rt_sigtimedwait"
        case ioUringEnter = "io_uring_enter"
    }

    let numbers: [Int: Call]

    /// The call numbered `number`, or nil if readiness has no name for it.
    public func call(_ number: Int) -> Call? { numbers[number] }

    /// The number of `call` on this architecture, or nil if it has none.
    public func number(of call: Call) -> Int? { numbers.first { $0.value == call }?.key }

    public static let x86_64 = SyscallTable(numbers: [
        0: .read, 1: .write, 7: .poll, 17: .pread64, 19: .readv, 20: .writev, 23: .select, 34: .pause,
        35: .nanosleep, 42: .connect, 43: .accept, 44: .sendto, 45: .recvfrom, 46: .sendmsg, 47: .recvmsg, 61: .wait4,
        73: .flock, 128: .rtSigtimedwait, 130: .rtSigsuspend, 202: .futex, 230: .clockNanosleep, 232: .epollWait,
        247: .waitid, 270: .pselect6, 271: .ppoll, 281: .epollPwait, 288: .accept4, 426: .ioUringEnter,
        441: .epollPwait2,
    ])

    public static let aarch64 = SyscallTable(numbers: [
        22: .epollPwait, 32: .flock, 63: .read, 64: .write, 65: .readv, 66: .writev, 67: .pread64, 72: .pselect6,
        73: .ppoll, 95: .waitid, 98: .futex, 101: .nanosleep, 115: .clockNanosleep, 133: .rtSigsuspend,
        137: .rtSigtimedwait, 202: .accept, 203: .connect, 206: .sendto, 207: .recvfrom, 211: .sendmsg,
        212: .recvmsg, 242: .accept4, 260: .wait4, 426: .ioUringEnter, 441: .epollPwait2,
    ])

    /// The table of the architecture baton runs on; nil on one it has none for.
    public static var current: SyscallTable? {
        #if arch(x86_64)
        .x86_64
        #elseif arch(arm64)
        .aarch64
        #else
        nil
        #endif
    }
}
