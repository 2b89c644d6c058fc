/// Limits how often a kind of log line is written: at most `burst` in each `interval`; the rest are counted, and the
/// count is reported with the first line of the next interval.
public struct LogRateLimit: Sendable {
    public let burst: Int
    public let interval: Duration
    private var windowStart: ContinuousClock.Instant?
    private var admitted = 0
    private var suppressed = 0

    public init(burst: Int = 5, interval: Duration = .seconds(10)) {
        self.burst = max(1, burst)
        self.interval = interval
    }

    /// Whether to write the line for an occurrence at `now`, and how many lines were suppressed before it (to be said
    /// in that line).
    public mutating func admit(now: ContinuousClock.Instant) -> (log: Bool, suppressed: Int) {
        if let start = windowStart, now - start < interval {
            guard admitted < burst else {
                suppressed += 1
                return (false, 0)
            }
            admitted += 1
            return (true, 0)
        }
        windowStart = now
        admitted = 1
        defer { suppressed = 0 }
        return (true, suppressed)
    }
}
