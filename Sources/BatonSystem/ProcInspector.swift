internal import Glibc

/// Reads `/proc`: a worker's process tree, identity and state, and (in `ProcWaits.swift`) what it waits in, for the
/// zero-configuration readiness mode.
public enum ProcInspector {
    static func children(of pid: Int32) -> [Int32] {
        var result: [Int32] = []
        guard let directory = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(directory) }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard Int(name) != nil else { continue }
            result += readFile("/proc/\(pid)/task/\(name)/children").split(separator: " ").compactMap { Int32($0) }
        }
        return result
    }

    /// The direct children of this process (`/proc/self/task/*/children`).
    public static func ownChildren() -> [Int32] {
        children(of: getpid())
    }

    /// `BATON_GENERATION`, `BATON_WORKER` and `LISTEN_PID` from a process's environment (`/proc/PID/environ`): every
    /// process a worker starts inherits them, even one that daemonised itself into a session of its own, and
    /// `LISTEN_PID` (the worker's own pid, when the app has left it) tells which worker of the slot it was.
    public static func batonWorkerIdentity(of pid: Int32) -> (generation: Int, slot: Int, workerPID: Int32?)? {
        var generation: Int?
        var slot: Int?
        var workerPID: Int32?
        for entry in readFile("/proc/\(pid)/environ").split(separator: "\0") {
            if entry.hasPrefix("BATON_GENERATION=") { generation = Int(entry.dropFirst("BATON_GENERATION=".count)) }
            if entry.hasPrefix("BATON_WORKER=") { slot = Int(entry.dropFirst("BATON_WORKER=".count)) }
            if entry.hasPrefix("LISTEN_PID=") { workerPID = Int32(entry.dropFirst("LISTEN_PID=".count)) }
        }
        guard let generation, let slot else { return nil }
        return (generation, slot, workerPID)
    }

    /// The process group of `pid`, from `/proc/PID/stat`, or nil if it is gone.
    public static func processGroup(of pid: Int32) -> Int32? {
        let stat = readFile("/proc/\(pid)/stat")
        // The command name may hold spaces and parentheses: the fields start after the last ')'.
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // state ppid pgrp ...
        guard fields.count > 2 else { return nil }
        return Int32(fields[2])
    }

    /// When `pid` started, in clock ticks since boot (`/proc/PID/stat` field 22), comparable with
    /// ``OS/ticksSinceBoot()``.
    public static func startTime(of pid: Int32) -> UInt64? {
        let stat = readFile("/proc/\(pid)/stat")
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // Field 3 (state) is fields[0], so field 22 (starttime) is fields[19].
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    /// The parent of `pid`, from `/proc/PID/stat`.
    public static func parent(of pid: Int32) -> Int32? {
        let stat = readFile("/proc/\(pid)/stat")
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 1 else { return nil }
        return Int32(fields[1])
    }

    /// How many fds this process has open.
    public static func openDescriptorCount(of pid: Int32? = nil) -> Int {
        let pid = pid ?? getpid()
        guard let directory = opendir("/proc/\(pid)/fd") else { return 0 }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            if entry.pointee.d_name.0 != UInt8(ascii: ".") { count += 1 }
        }
        return count
    }

    /// A whole small file, such as one under `/proc`; empty if it cannot be read.
    public static func readFile(_ path: String) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, 4096) }
            if n <= 0 { break }
            result += buffer[0..<n]
        }
        return String(decoding: result, as: UTF8.self)
    }

    static func readLink(_ path: String) -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        let n = readlink(path, &buffer, 255)
        guard n > 0 else { return "" }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
