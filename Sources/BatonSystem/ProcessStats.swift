internal import Glibc

/// What the standard `process_*` metrics report about baton itself, read from `/proc` when asked.
public struct ProcessStats: Sendable, Equatable {
    /// User and system CPU time, in seconds.
    public var cpuSeconds: Double
    public var residentMemoryBytes: UInt64
    public var virtualMemoryBytes: UInt64
    /// When the process started, in seconds since the epoch.
    public var startTimeSeconds: Double
    public var openFileDescriptors: Int
    /// The soft limit on open fds (`RLIMIT_NOFILE`); nil when unlimited.
    public var maximumFileDescriptors: UInt64?

    /// This process's figures: `/proc/self/stat` (utime, stime, starttime, vsize, rss), `/proc/stat` (btime),
    /// `/proc/self/fd` and `getrlimit(RLIMIT_NOFILE)`. Nil when `/proc` cannot be read.
    ///
    /// The corresponding C functions are `sysconf` and `getrlimit`.
    public static func current() -> ProcessStats? {
        let stat = ProcInspector.readFile("/proc/self/stat")
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // Field 3 (state) is fields[0]: utime (14), stime (15), starttime (22), vsize (23), rss (24).
        guard fields.count > 21, let user = Double(fields[11]), let system = Double(fields[12]),
            let start = Double(fields[19]), let virtual = UInt64(fields[20]), let pages = UInt64(fields[21])
        else { return nil }
        let hz = Double(max(1, sysconf(Int32(_SC_CLK_TCK))))
        let pageSize = UInt64(max(1, sysconf(Int32(_SC_PAGESIZE))))
        var bootTime = 0.0
        for line in ProcInspector.readFile("/proc/stat").split(separator: "\n") where line.hasPrefix("btime ") {
            bootTime = Double(line.dropFirst("btime ".count)) ?? 0
        }
        var limit = rlimit()
        // RLIM_INFINITY is all ones.
        let maximum: UInt64? =
            getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 && limit.rlim_cur != rlim_t.max
            ? UInt64(limit.rlim_cur) : nil
        return ProcessStats(
            cpuSeconds: (user + system) / hz,
            residentMemoryBytes: pages * pageSize,
            virtualMemoryBytes: virtual,
            startTimeSeconds: bootTime + start / hz,
            openFileDescriptors: ProcInspector.openDescriptorCount(),
            maximumFileDescriptors: maximum
        )
    }
}
