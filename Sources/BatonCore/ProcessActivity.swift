/// What `/proc/PID/status` says of whether a process has run: its state, its thread count and its main thread's
/// context switches. A single-threaded process that is not running and whose switch count has not moved since an
/// earlier look has not run since then: its fds, epoll sets and system call are what that look saw (zero-config
/// readiness skips looking at them again).
public struct ProcessActivity: Sendable, Equatable {
    public var state: Character
    public var threads: Int
    public var switches: UInt64

    public init(state: Character, threads: Int, switches: UInt64) {
        self.state = state
        self.threads = threads
        self.switches = switches
    }

    /// From the text of `/proc/PID/status`; nil if a field is missing (a process that is gone reads empty).
    public init?(status text: String) {
        var state: Character?
        var threads: Int?
        var voluntary: UInt64?
        var involuntary: UInt64?
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let value = line[line.index(after: colon)...].drop { $0 == " " || $0 == "\t" }
            switch line[..<colon] {
            case "State": state = value.first
            case "Threads": threads = Int(value)
            case "voluntary_ctxt_switches": voluntary = UInt64(value)
            case "nonvoluntary_ctxt_switches": involuntary = UInt64(value)
            default: continue
            }
        }
        guard let state, let threads, let voluntary, let involuntary else { return nil }
        self.init(state: state, threads: threads, switches: voluntary &+ involuntary)
    }

    /// Whether a later look that reads the same proves the process has not run in between: one thread, and not
    /// running now (a running thread may change anything without being switched out yet).
    public var provesIdle: Bool { threads == 1 && state != "R" }
}
