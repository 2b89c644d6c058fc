internal import CBatonSystem
internal import Glibc
public import SystemPackage

extension Signals {
    /// The signal `libbaton-adopt.so` drains on: SIGRTMIN+5.
    public static var adoptDrain: Int32 { __libc_current_sigrtmin() + 5 }
    /// The signal that tells `libbaton-adopt.so` baton holds the process's connections: SIGRTMIN+6.
    public static var rescueHeld: Int32 { __libc_current_sigrtmin() + 6 }
}

extension OS {
    /// Sends `signal` to the process `pidfd` refers to; false when it could not (the process has ended).
    ///
    /// The corresponding C function is `pidfd_send_signal`.
    public static func signal(_ signal: Int32, through pidfd: FileDescriptor) -> Bool {
        cbaton_pidfd_send_signal(pidfd.rawValue, signal) == 0
    }

    /// Sends `signal` to process `pid` after `delay`, through a pidfd (close-on-exec) opened now: if the process has
    /// ended by then, nothing is sent, even when its pid has been reused. Where pidfds are unavailable (an old kernel,
    /// a seccomp filter), by pid. The wait is a timer of `loop`.
    ///
    /// `before` runs on the loop's thread just before the signal goes.
    ///
    /// The corresponding C functions are `pidfd_open`, `pidfd_send_signal` and `kill`.
    public static func signal(
        _ pid: Int32,
        _ signal: Int32,
        after delay: Duration,
        on loop: EventLoop,
        before: (@Sendable () -> Void)? = nil
    ) {
        let fd = cbaton_pidfd_open(pid)
        if fd < 0 && Glibc.errno == ESRCH { return }
        loop.schedule(after: delay) {
            before?()
            if fd >= 0 {
                let sent = cbaton_pidfd_send_signal(fd, signal) == 0 || Glibc.errno == ESRCH
                _ = close(fd)
                if sent { return }
            }
            _ = Glibc.kill(pid, signal)
        }
    }
}

extension ProcInspector {
    /// Whether process `pid` has a handler installed for `signal` (`SigCgt:` in `/proc/PID/status`).
    public static func catches(_ pid: Int32, signal: Int32) -> Bool {
        guard signal > 0 && signal <= 64 else { return false }
        // On the bytes, not on Characters: this runs for every retiring worker, and splitting the 55 lines of the
        // status file into Characters cost more than reading it.
        let field = Array("SigCgt:".utf8)
        for line in readFile("/proc/\(pid)/status").utf8.split(separator: UInt8(ascii: "\n"))
        where line.starts(with: field) {
            let digits = line.dropFirst(field.count).filter { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "\t") }
            guard let mask = UInt64(String(decoding: digits, as: UTF8.self), radix: 16) else { return false }
            return mask & (1 << UInt64(signal - 1)) != 0
        }
        return false
    }

    /// Whether process `pid` runs a Go program (``ProgramKind/isGo(read:)``, on `/proc/PID/exe`).
    public static func isGoProgram(_ pid: Int32) -> Bool {
        let fd = open("/proc/\(pid)/exe", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return ProgramKind.isGo { offset, count in
            var bytes = [UInt8](repeating: 0, count: count)
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
            return n > 0 ? Array(bytes[0..<n]) : []
        }
    }

    /// Whether process `pid` has a file of that name mapped (`/proc/PID/maps`), such as a preloaded library.
    public static func hasMapped(_ pid: Int32, fileNamed name: String) -> Bool {
        let suffix = Array(("/" + name).utf8)
        return readFile("/proc/\(pid)/maps").utf8.split(separator: UInt8(ascii: "\n")).contains { line in
            line.count >= suffix.count && line.suffix(suffix.count).elementsEqual(suffix)
        }
    }
}
