/// A worker process's CPU time and resident memory, as the launcher read them for a status report.
public struct WorkerUsage: Sendable, Equatable {
    public var cpuSeconds: Double
    public var rssBytes: Int64
    /// The CPU time it used since the previous reading, as a percentage of that interval (100: one core).
    public var cpuPercent: Double?

    public init(cpuSeconds: Double, rssBytes: Int64, cpuPercent: Double? = nil) {
        self.cpuSeconds = cpuSeconds
        self.rssBytes = rssBytes
        self.cpuPercent = cpuPercent
    }
}

/// Each worker's CPU time at the previous status report, for a percentage over the interval since (as `top` shows
/// one since its last refresh). One entry per live worker; nothing is sampled between reports.
public struct CPUSamples: Sendable {
    private var last: [Int32: (cpuSeconds: Double, at: ContinuousClock.Instant)] = [:]

    /// The shortest interval a percentage is given over: below it, a clock tick (10 ms) would be too much of it.
    public static let shortestInterval = Duration.milliseconds(100)

    public init() {}

    /// Returns `usage`, read at `now`, with each worker's percentage since the previous reading, and keeps the new
    /// readings (those of pids no longer in `usage` are dropped). A reading less than ``shortestInterval`` after the
    /// previous one gets no percentage and keeps the previous one.
    public mutating func record(_ usage: [Int32: WorkerUsage], now: ContinuousClock.Instant) -> [Int32: WorkerUsage] {
        var result = usage
        var next: [Int32: (cpuSeconds: Double, at: ContinuousClock.Instant)] = [:]
        for (pid, figures) in usage {
            guard let previous = last[pid] else {
                next[pid] = (figures.cpuSeconds, now)
                continue
            }
            let interval = now - previous.at
            guard interval >= Self.shortestInterval else {
                next[pid] = previous
                continue
            }
            let seconds = Double(interval.milliseconds) / 1000
            result[pid]?.cpuPercent = max(0, figures.cpuSeconds - previous.cpuSeconds) / seconds * 100
            next[pid] = (figures.cpuSeconds, now)
        }
        last = next
        return result
    }
}

extension StatusReport {
    /// The report with each worker's figures from `usage`, by pid (a worker whose pid is not there keeps none).
    public func adding(_ usage: [Int32: WorkerUsage]) -> StatusReport {
        var report = self
        for g in report.generations.indices {
            for w in report.generations[g].workers.indices {
                guard let pid = report.generations[g].workers[w].pid, let figures = usage[pid] else { continue }
                report.generations[g].workers[w].cpuSeconds = figures.cpuSeconds
                report.generations[g].workers[w].rssBytes = figures.rssBytes
                report.generations[g].workers[w].cpuPercent = figures.cpuPercent
            }
        }
        return report
    }

    /// The pids of the report's workers.
    public var workerPIDs: [Int32] { generations.flatMap { $0.workers.compactMap(\.pid) } }
}

extension WorkerUsage {
    /// CPU seconds for people: `0.42s`, `12.3s`, `2m5s`.
    public static func cpuText(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "-" }
        if seconds >= 60 { return Duration.seconds(Int64(min(seconds, 1e12))).shortDescription }
        let hundredths = Int((seconds * 100).rounded())
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)s"
    }

    /// A CPU percentage for people: `0.0%`, `12.5%`, `180.2%` (two cores).
    public static func percentText(_ percent: Double) -> String {
        guard percent.isFinite, percent >= 0 else { return "-" }
        let tenths = Int((min(percent, 1e9) * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)%"
    }

    /// Bytes for people, in binary units with one decimal: `812.0KiB`, `23.4MiB`, `1.2GiB`.
    public static func bytesText(_ bytes: Int64) -> String {
        guard bytes >= 0 else { return "-" }
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(bytes)B" }
        let tenths = Int((value * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)\(units[unit])"
    }
}
