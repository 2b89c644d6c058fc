internal import CBatonSystem
internal import Glibc
internal import SystemPackage

/// What `/proc` and the worker's memory show of what a worker waits in, for zero-configuration readiness; BatonCore's
/// `ListenWait` makes sense of it.
///
/// Reading `/proc/PID/task/TID/syscall` and another process's memory takes the right to ptrace it
/// (`PTRACE_MODE_ATTACH`): the same uid and a dumpable process, or `CAP_SYS_PTRACE`; under Yama's
/// `kernel.yama.ptrace_scope` 1 also being its ancestor (baton is: it started the worker and is the subreaper of
/// what the worker forks), under 2 `CAP_SYS_PTRACE`, under 3 never.
extension ProcInspector {
    /// Whether `body` holds for `pid` or one of its descendants (at most 256 processes), looked at in that order and
    /// no further than the first for which it holds.
    public static func anyInTree(of pid: Int32, _ body: (Int32) -> Bool) -> Bool {
        var pending = [pid]
        var seen = Set<Int32>()
        while let next = pending.popLast() {
            guard seen.insert(next).inserted, seen.count < 256 else { continue }
            if body(next) { return true }
            pending.append(contentsOf: children(of: next).reversed())
        }
        return false
    }

    /// `pid` and its descendants (at most 256 processes).
    public static func processTree(of pid: Int32) -> [Int32] {
        var tree: [Int32] = []
        _ = anyInTree(of: pid) {
            tree.append($0)
            return false
        }
        return tree
    }

    /// The fds of process `pid` that refer to a socket whose inode is in `inodes` (wherever the app dup'ed or moved
    /// them), and the fds of its epoll instances; from `/proc/PID/fd`, or the error that kept baton from reading it
    /// (EACCES without the right to ptrace the process).
    public static func listenerDescriptors(
        of pid: Int32,
        inodes: Set<UInt64>
    ) -> Result<(listeners: [Int], epolls: [Int]), SystemError> {
        var listeners: [Int] = []
        var epolls: [Int] = []
        guard let directory = opendir("/proc/\(pid)/fd") else {
            return .failure(SystemError("open /proc/\(pid)/fd", Errno(rawValue: Glibc.errno)))
        }
        defer { closedir(directory) }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard let fd = Int(name) else { continue }
            let target = readLink("/proc/\(pid)/fd/\(fd)")
            if target.hasPrefix("socket:["), let inode = UInt64(target.dropFirst(8).dropLast()), inodes.contains(inode)
            {
                listeners.append(fd)
            } else if target == "anon_inode:[eventpoll]" {
                epolls.append(fd)
            }
        }
        return .success((listeners.sorted(), epolls))
    }

    /// The fds epoll instance `epoll` of process `pid` watches: the `tfd:` lines of `/proc/PID/fdinfo/FD`.
    public static func epollTargets(of pid: Int32, epoll: Int) -> [Int] {
        readFile("/proc/\(pid)/fdinfo/\(epoll)").split(separator: "\n").compactMap { line in
            guard line.hasPrefix("tfd:") else { return nil }
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            return fields.count >= 2 ? Int(fields[1]) : nil
        }
    }

    /// The threads of process `pid`, the main thread first, each with its `/proc/PID/task/TID/syscall` line or the
    /// error that kept baton from reading it (EPERM or EACCES without the right to ptrace the worker).
    public static func threadSyscalls(of pid: Int32) -> [(tid: Int32, syscall: Result<String, SystemError>)] {
        threads(of: pid).map { ($0, readFileOrError("/proc/\(pid)/task/\($0)/syscall")) }
    }

    /// The thread ids of process `pid` (`/proc/PID/task`), its main thread first.
    public static func threads(of pid: Int32) -> [Int32] {
        var tids: [Int32] = []
        guard let directory = opendir("/proc/\(pid)/task") else { return [] }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if let tid = Int32(name) { tids.append(tid) }
        }
        closedir(directory)
        tids.sort { ($0 == pid ? 0 : 1, $0) < ($1 == pid ? 0 : 1, $1) }
        return tids
    }

    /// Whether a thread of process `pid` waits in a read of one of `fds` (`read`, `readv`, `recvfrom`, `recvmsg`): a
    /// server that reads its connections with blocking calls, one thread each, rather than through epoll or poll.
    public static func blockedReading(_ pid: Int32, anyOf fds: Set<Int32>) -> Bool {
        #if arch(x86_64)
        let reads: Set<Int> = [0, 19, 45, 47]
        #elseif arch(arm64)
        let reads: Set<Int> = [63, 65, 207, 212]
        #else
        let reads: Set<Int> = []
        #endif
        return threadSyscalls(of: pid).contains { thread in
            guard case .success(let line) = thread.syscall else { return false }
            let fields = line.split(separator: " ")
            guard fields.count >= 2, let number = Int(fields[0]), reads.contains(number),
                let fd = Int32(fields[1].dropFirst(2), radix: 16)
            else { return false }
            return fds.contains(fd)
        }
    }

    /// `count` bytes (at most 1 MiB) at `address` in process `pid`'s memory; fewer if the range ends in unmapped
    /// memory. The corresponding C function is `process_vm_readv`.
    public static func readMemory(of pid: Int32, at address: UInt64, count: Int) -> Result<[UInt8], SystemError> {
        let count = min(max(count, 0), 1 << 20)
        guard count > 0 else { return .success([]) }
        var bytes = [UInt8](repeating: 0, count: count)
        let read = bytes.withUnsafeMutableBytes { cbaton_process_vm_read(pid, $0.baseAddress, count, address) }
        guard read >= 0 else { return .failure(SystemError("process_vm_readv", Errno(rawValue: Glibc.errno))) }
        return .success(Array(bytes.prefix(read)))
    }

    /// What fd `fd` of process `pid` is (`pipe:[123]`, `socket:[456]`, `/dev/null`), from `/proc/PID/fd/FD`; nil if
    /// it is not open.
    public static func descriptorTarget(of pid: Int32, fd: Int) -> String? {
        let target = readLink("/proc/\(pid)/fd/\(fd)")
        return target.isEmpty ? nil : target
    }

    /// Yama's `kernel.yama.ptrace_scope` (0 to 3), or nil where Yama is not in the kernel.
    public static func ptraceScope() -> Int? {
        Int(readFile("/proc/sys/kernel/yama/ptrace_scope").prefix { $0 != "\n" })
    }

    /// A whole small file, or the error of the call that failed (named with the path).
    static func readFileOrError(_ path: String) -> Result<String, SystemError> {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return .failure(SystemError("open \(path)", Errno(rawValue: Glibc.errno))) }
        defer { close(fd) }
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, 4096) }
            if n < 0 && Glibc.errno == EINTR { continue }
            if n < 0 { return .failure(SystemError("read \(path)", Errno(rawValue: Glibc.errno))) }
            if n == 0 { break }
            result += buffer[0..<n]
        }
        return .success(String(decoding: result, as: UTF8.self))
    }
}
