internal import CBatonSystem
internal import Glibc
internal import SystemPackage

/// This process and the operating system around it: ids, environment, signals to other processes, files, users.
///
/// (Not `Process`, which would clash with Foundation's.)
public enum OS {
    /// This process's pid.
    public static var id: Int32 { getpid() }

    /// This process's real uid.
    public static var userID: UInt32 { getuid() }

    /// Sends `signal` to the process `pid`, or to the process group `-pid`. ESRCH (already gone) is not an error.
    ///
    /// The corresponding C function is `kill`.
    @discardableResult
    public static func kill(_ pid: Int32, _ signal: Int32) -> Bool {
        Glibc.kill(pid, signal) == 0
    }

    /// The value of an environment variable.
    public static func environment(_ name: String) -> String? {
        guard let value = getenv(name) else { return nil }
        return String(cString: value)
    }

    /// The whole environment as `KEY=VALUE` strings.
    public static func environment() -> [String] {
        var result: [String] = []
        var cursor = environ
        while let entry = cursor.pointee {
            result.append(String(cString: entry))
            cursor += 1
        }
        return result
    }

    /// Removes a variable from this process's environment.
    ///
    /// The corresponding C function is `unsetenv`.
    public static func unsetEnvironment(_ name: String) {
        unsetenv(name)
    }

    /// Monotonic time in microseconds (CLOCK_MONOTONIC), as systemd's `MONOTONIC_USEC=` wants it.
    ///
    /// The corresponding C function is `clock_gettime`.
    public static func monotonicMicroseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
    }

    /// Time since boot in clock ticks (CLOCK_BOOTTIME at `sysconf(_SC_CLK_TCK)`), the unit of a process's start time
    /// in `/proc`.
    ///
    /// The corresponding C functions are `clock_gettime` and `sysconf`.
    public static func ticksSinceBoot() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_BOOTTIME, &ts)
        let hz = UInt64(max(1, sysconf(Int32(_SC_CLK_TCK))))
        return UInt64(ts.tv_sec) * hz + UInt64(ts.tv_nsec) * hz / 1_000_000_000
    }

    /// Takes the pages of the code baton has run (its own, libc's, libsystemd's, ...) out of its resident set, once
    /// they have done their work (after start, a reload, a rollback, a status answer): the kernel maps up to 64 KiB
    /// around each page run, so that most of the code stays resident although an idle baton runs almost none of it.
    /// The pages stay in the page cache and come back at a minor fault. Returns false if the kernel refused any
    /// (nothing is lost either way).
    ///
    /// The corresponding C function is `madvise(MADV_DONTNEED)` on each loaded object's text segment.
    @discardableResult
    public static func releaseCodePages() -> Bool { cbaton_release_code_pages() == 0 }

    /// Wall-clock time in seconds since the epoch.
    ///
    /// The corresponding C function is `clock_gettime`.
    public static func wallClockSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Finds an executable the way `execvp` would: a name with a slash is taken as is, otherwise each
    /// directory of `PATH` is tried. Returns `nil` when nothing executable is found.
    ///
    /// The corresponding C function is `access`.
    public static func resolveExecutable(_ name: String, path: String?) -> String? {
        if name.contains("/") {
            return access(name, X_OK) == 0 ? name : nil
        }
        let directories = (path ?? "/usr/local/bin:/usr/bin:/bin").split(
            separator: ":",
            omittingEmptySubsequences: false
        )
        for directory in directories {
            let candidate = (directory.isEmpty ? "." : String(directory)) + "/" + name
            var info = stat()
            if stat(candidate, &info) == 0, info.st_mode & S_IFMT == S_IFREG, access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        return nil
    }

    /// Waits until process `pid` has ended (any process, not only a child); false on timeout. An ended process
    /// that is not yet reaped counts as ended.
    ///
    /// The corresponding C functions are `pidfd_open` and `poll`.
    public static func waitForExit(_ pid: Int32, timeout: Duration) -> Bool {
        let fd = cbaton_pidfd_open(pid)
        guard fd >= 0 else { return Glibc.errno == ESRCH }
        defer { _ = close(fd) }
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(
            clamping: timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000
        )
        while true {
            let n = poll(&entry, 1, milliseconds)
            if n < 0 && Glibc.errno == EINTR { continue }
            return n == 1
        }
    }

    /// Makes this process a child subreaper: orphans among its descendants (a worker's daemonised grandchild)
    /// are re-parented to it instead of to PID 1, so that baton can find and stop them.
    ///
    /// The corresponding C function is `prctl(PR_SET_CHILD_SUBREAPER)`.
    public static func becomeSubreaper() throws(SystemError) {
        try syscall("prctl(PR_SET_CHILD_SUBREAPER)") { cbaton_set_child_subreaper() }
    }

    /// Whether `path` is a unix socket.
    ///
    /// The corresponding C function is `stat`.
    public static func isSocket(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK
    }

    /// Whether `path` exists.
    public static func fileExists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    /// Creates a directory (and its parents) if missing.
    ///
    /// The corresponding C function is `mkdir`.
    public static func makeDirectory(_ path: String, mode: UInt32 = 0o755) throws(SystemError) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, mode) != 0 && Glibc.errno != EEXIST {
                throw SystemError("mkdir(\(prefix))", Errno(rawValue: Glibc.errno))
            }
        }
    }

    /// Removes a file; a missing file is not an error.
    ///
    /// The corresponding C function is `unlink`.
    public static func removeFile(_ path: String) {
        unlink(path)
    }

    /// A user's uid, primary gid and supplementary groups, by name or number.
    ///
    /// The corresponding C functions are `getpwnam_r` and `getgrouplist`.
    public static func user(named name: String) -> (uid: UInt32, gid: UInt32, groups: [UInt32])? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16384)
        if getpwnam_r(name, &entry, &buffer, buffer.count, &result) == 0, result != nil {
            var count: Int32 = 256
            var groups = [gid_t](repeating: 0, count: 256)
            if getgrouplist(entry.pw_name, entry.pw_gid, &groups, &count) < 0 { count = 0 }
            return (entry.pw_uid, entry.pw_gid, groups.prefix(Int(max(0, count))).map { UInt32($0) })
        }
        if let uid = UInt32(name) { return (uid, uid, []) }
        return nil
    }

    /// A group's gid, by name or number.
    ///
    /// The corresponding C function is `getgrnam_r`.
    public static func group(named name: String) -> UInt32? {
        var entry = Glibc.group()
        var result: UnsafeMutablePointer<Glibc.group>?
        var buffer = [CChar](repeating: 0, count: 16384)
        if getgrnam_r(name, &entry, &buffer, buffer.count, &result) == 0, result != nil { return entry.gr_gid }
        return UInt32(name)
    }

    /// The path this process was started from (`/proc/self/exe`), without the ` (deleted)` the kernel appends
    /// once a package upgrade has replaced the file.
    ///
    /// The corresponding C function is `readlink`.
    public static func currentExecutable() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, 4095)
        guard n > 0 else { return nil }
        var path = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if path.hasSuffix(" (deleted)") { path.removeLast(" (deleted)".count) }
        return path
    }

    /// Replaces this process's program, keeping its pid, children and every fd without close-on-exec. Returns
    /// only on failure. The calling thread first takes the nice value, scheduling policy and limits baton started
    /// with (``ProcessAttributes``), which the new program then starts with and hands to its workers.
    ///
    /// The corresponding C function is `execve`.
    public static func execute(_ path: String, arguments: [String], environment: [String]) -> SystemError {
        ProcessAttributes.restore()
        let argv = CStringArray(arguments)
        let envp = CStringArray(environment)
        _ = argv.withPointers { argvPointer in
            envp.withPointers { envpPointer in execve(path, argvPointer, envpPointer) }
        }
        return SystemError("execve(\(path))", Errno(rawValue: Glibc.errno))
    }
}

/// Unbuffered writes to the standard streams.
public enum StandardStreams {
    /// Writes to stderr, ignoring failure (nowhere left to report it).
    public static func writeError(_ text: String) {
        _ = try? FileDescriptor.standardError.writeAll(Array(text.utf8))
    }

    /// Writes to stdout, ignoring failure.
    public static func writeOutput(_ text: String) {
        _ = try? FileDescriptor.standardOutput.writeAll(Array(text.utf8))
    }

    /// Whether stderr is connected to the journal: `JOURNAL_STREAM` names its device and inode.
    ///
    /// The corresponding C function is `fstat`.
    public static func stderrIsJournal() -> Bool {
        guard let value = OS.environment("JOURNAL_STREAM") else { return false }
        let parts = value.split(separator: ":")
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var info = stat()
        guard fstat(2, &info) == 0 else { return false }
        return UInt64(info.st_dev) == device && UInt64(info.st_ino) == inode
    }

    /// Whether stderr is a terminal.
    ///
    /// The corresponding C function is `isatty`.
    public static func stderrIsTerminal() -> Bool { isatty(2) == 1 }

    /// Whether stdout is a terminal.
    ///
    /// The corresponding C function is `isatty`.
    public static func stdoutIsTerminal() -> Bool { isatty(1) == 1 }
}
