/// A worker process's CPU time and resident memory, as the launcher read them for a status report.
public struct WorkerUsage: Sendable, Equatable {
    public var cpuSeconds: Double
    public var rssBytes: Int64

    public init(cpuSeconds: Double, rssBytes: Int64) {
        self.cpuSeconds = cpuSeconds
        self.rssBytes = rssBytes
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
