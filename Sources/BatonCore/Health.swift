/// What `--health` checks on each worker, through the worker's own probe socket (the listener named
/// ``healthListenerName``, last in `LISTEN_FDS`).
public enum HealthProbe: Sendable, Equatable, CustomStringConvertible {
    /// `http:PATH`: a GET of PATH; a 2xx or 3xx answer is healthy.
    case http(path: String)
    /// `tcp`: a connect succeeds and the worker accepts it.
    case tcp
    /// `exec:COMMAND`: `/bin/sh -c COMMAND` exits 0, with `BATON_WORKER_PID`, `BATON_GENERATION` and
    /// `BATON_HEALTH_ADDRESS` in its environment.
    case exec(command: String)

    /// How the probe was written on the command line, for messages (`http:/healthz`).
    public var description: String {
        switch self {
        case .http(let path): "http:\(path)"
        case .tcp: "tcp"
        case .exec(let command): "exec:\(command)"
        }
    }

    /// The probe for log lines and results: a long exec command is cut short (`exec:curl -fs http://$BATON_HEAL...`).
    public var shortDescription: String {
        guard case .exec(let command) = self, command.count > 48 else { return description }
        return "exec:" + command.prefix(45) + "..."
    }

    /// Parses `http:PATH`, `tcp` or `exec:COMMAND`.
    public init(parsing text: String) throws(BatonError) {
        func bad(_ why: String) -> BatonError {
            BatonError(.badArgument, "invalid --health \(BatonError.quoted(text)): \(why)")
        }
        let kind = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init)
        let rest = text.contains(":") ? String(text[text.index(after: text.firstIndex(of: ":")!)...]) : nil
        switch kind {
        case "http":
            guard let path = rest, path.hasPrefix("/") else {
                throw bad("the path must start with '/', such as http:/healthz")
            }
            guard path.utf8.count <= 1024 else { throw bad("the path must be at most 1024 bytes") }
            guard path.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f }) else {
                throw bad("the path must be printable ASCII without spaces (percent-encode the rest)")
            }
            self = .http(path: path)
        case "tcp":
            guard rest == nil || rest == "" else { throw bad("tcp takes no argument: the probe socket is baton's") }
            self = .tcp
        case "exec":
            guard let command = rest, !command.allSatisfy(\.isWhitespace) else {
                throw bad("give a command, such as exec:'curl -fs http://$BATON_HEALTH_ADDRESS/healthz'")
            }
            guard command.utf8.count <= 4096 else { throw bad("the command must be at most 4096 bytes") }
            guard !command.contains("\0") else { throw bad("the command contains a NUL byte") }
            self = .exec(command: command)
        default:
            let shown = (kind ?? "").count <= 20 ? (kind ?? "") : String((kind ?? "").prefix(20)) + "..."
            throw BatonError(
                .badArgument,
                "invalid --health \(BatonError.quoted(text)): unknown probe kind \(BatonError.quoted(shown)): use http:PATH, tcp or exec:COMMAND"
            )
        }
    }

    /// The name of the per-worker probe socket in `LISTEN_FDNAMES`.
    public static let healthListenerName = "health"
}

/// The probe settings the lifecycle depends on (`--health`, `--health-interval`, `--health-timeout`,
/// `--health-failures`).
public struct HealthSettings: Sendable, Equatable {
    public var probe: HealthProbe
    /// Between the end of one probe and the start of the next, once the worker is ready.
    public var interval: Duration
    /// How long one probe may take; the launcher reports a probe that takes longer as failed.
    public var timeout: Duration
    /// Consecutive failed probes after which a ready worker is replaced.
    public var failures: Int

    public init(
        probe: HealthProbe,
        interval: Duration = .seconds(2),
        timeout: Duration = .seconds(1),
        failures: Int = 3
    ) {
        self.probe = probe
        self.interval = interval
        self.timeout = timeout
        self.failures = failures
    }

    /// While a worker starts it is probed this often (faster than `interval`), until a probe passes and its
    /// `--ready` mode says it is ready, or its ready timeout ends it.
    public var startingInterval: Duration { min(interval, .milliseconds(200)) }

    /// The ranges `--health-interval`, `--health-timeout` and `--health-failures` accept.
    public static let intervalRange: ClosedRange<Duration> = .milliseconds(10)...(.seconds(3600))
    public static let timeoutRange: ClosedRange<Duration> = .milliseconds(10)...(.seconds(600))
    public static let failuresRange: ClosedRange<Int> = 1...100
}

/// A worker's probes as the ``Supervisor`` keeps track of them.
public struct ProbeState: Sendable, Equatable {
    /// The latest probe passed (while starting: the worker may become ready).
    public var passed = false
    /// Its `--ready` mode said it is ready; it becomes so once a probe passes too.
    public var readySignalled = false
    /// A probe is running (at most one per worker).
    public var inFlight = false
    /// Failed probes in a row since the last one that passed.
    public var failures = 0
    /// What the latest probe found, such as `probe http:/healthz got 503`.
    public var last: String?
    /// Why it is being replaced (it failed too many probes in a row); it serves until its replacement is ready.
    public var replacing: String?

    public init() {}
}
