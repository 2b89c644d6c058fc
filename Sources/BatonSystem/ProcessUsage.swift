internal import Glibc

/// What a process uses now, from `/proc`: its CPU time so far and its resident memory.
public struct ProcessUsage: Sendable, Equatable {
    /// User and system CPU time of the process itself (not of its children), in seconds.
    public var cpuSeconds: Double
    /// Resident set size, in bytes.
    public var residentBytes: Int64

    public init(cpuSeconds: Double, residentBytes: Int64) {
        self.cpuSeconds = cpuSeconds
        self.residentBytes = residentBytes
    }
}

extension ProcInspector {
    /// The CPU time (`utime` + `stime` of `/proc/PID/stat`) and resident memory (`/proc/PID/statm`) of `pid`, or nil
    /// if it is gone. Two small reads; nothing is sampled in the background.
    ///
    /// The corresponding C function is `sysconf` (for the clock tick and page size).
    public static func usage(of pid: Int32) -> ProcessUsage? {
        let stat = readFile("/proc/\(pid)/stat")
        // The command name may hold spaces and parentheses: the fields start after the last ')'.
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // Field 3 (state) is fields[0], so fields 14 and 15 (utime, stime) are fields[11] and fields[12].
        guard fields.count > 12, let user = UInt64(fields[11]), let system = UInt64(fields[12]) else { return nil }
        // statm: size resident shared text lib data dt, in pages.
        let statm = readFile("/proc/\(pid)/statm").split(separator: " ")
        guard statm.count > 1, let resident = Int64(statm[1]) else { return nil }
        let hz = Double(max(1, sysconf(Int32(_SC_CLK_TCK))))
        let page = Int64(max(1, sysconf(Int32(_SC_PAGESIZE))))
        return ProcessUsage(cpuSeconds: Double(user + system) / hz, residentBytes: resident * page)
    }
}
