/// A reload as a client asks for it (`baton reload [--wait-drained] [--cut-drain]`); SIGHUP reloads have no requester
/// and the default options.
public struct ReloadRequest: Sendable, Equatable {
    public var requester: RequesterID?
    /// Answer only once the old generation is gone, not as soon as the new one serves.
    public var waitDrained: Bool
    /// If a generation still drains, kill what is left of it (the stop signal was already sent) instead of waiting.
    public var cutDrain: Bool
    /// `--canary`, `--hold`.
    public var options: ReloadOptions

    public init(
        _ requester: RequesterID?,
        waitDrained: Bool = false,
        cutDrain: Bool = false,
        options: ReloadOptions = ReloadOptions()
    ) {
        self.requester = requester
        self.options = options
        self.waitDrained = waitDrained
        self.cutDrain = cutDrain
    }
}

/// What a draining generation still holds: `generation 6 draining: 12 connections, 24s left`.
public struct DrainProgress: Codable, Sendable, Equatable, CustomStringConvertible {
    public var generation: Int
    /// Its workers still alive.
    public var workers: Int
    /// The client connections they hold, as last counted from the kernel; nil before the first count.
    public var connections: Int?
    /// Seconds until the last of them is SIGKILLed (the stop timeout), rounded up.
    public var secondsLeft: Int

    public init(generation: Int, workers: Int, connections: Int?, secondsLeft: Int) {
        self.generation = generation
        self.workers = workers
        self.connections = connections
        self.secondsLeft = secondsLeft
    }

    /// `12 connections, 24s left` (`2 workers, 24s left` before connections were counted).
    public var summary: String {
        let held =
            connections.map { "\($0) connection\($0 == 1 ? "" : "s")" }
            ?? "\(workers) worker\(workers == 1 ? "" : "s")"
        return "\(held), \(secondsLeft)s left"
    }

    public var description: String { "generation \(generation) draining: \(summary)" }
}

/// The reloads `baton status` remembers, newest first.
public enum ReloadHistory {
    public static let limit = 20
}

extension Duration {
    /// Whole seconds, rounded up; zero for a negative span.
    var secondsRoundedUp: Int {
        guard self > .zero else { return 0 }
        let (seconds, attoseconds) = components
        return Int(seconds) + (attoseconds > 0 ? 1 : 0)
    }
}
