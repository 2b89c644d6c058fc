// baton's command-line options and the parser that turns them into a checked configuration. Under the
// baton@.service template these come from /etc/baton/APP.conf (BATON_OPTIONS, split by systemd), so this is
// baton's configuration parser. Plain Swift: what it needs from the system arrives as `SystemFacts`, so the
// fuzzer (Fuzz/Targets) and the tests drive it without syscalls.
public import ArgumentParser
public import BatonCore

/// What parsing the options needs to know about the machine: users, groups, signal names, who runs baton.
public struct SystemFacts: Sendable {
    public var userID: UInt32
    public var runtimeDirectory: String?
    public var user: @Sendable (String) -> LaunchConfiguration.WorkerUser?
    public var group: @Sendable (String) -> UInt32?
    public var signal: @Sendable (String) -> Int32?
    /// SIGKILL's and SIGSTOP's numbers: a stop signal must be one a worker can catch.
    public var uncatchableSignals: Set<Int32>

    public init(
        userID: UInt32,
        runtimeDirectory: String?,
        user: @escaping @Sendable (String) -> LaunchConfiguration.WorkerUser?,
        group: @escaping @Sendable (String) -> UInt32?,
        signal: @escaping @Sendable (String) -> Int32?,
        uncatchableSignals: Set<Int32>
    ) {
        self.userID = userID
        self.runtimeDirectory = runtimeDirectory
        self.user = user
        self.group = group
        self.signal = signal
        self.uncatchableSignals = uncatchableSignals
    }
}

/// Options shared by the commands that talk to a running launcher.
public struct ControlOptions: ParsableArguments {
    @Option(help: "The control socket (default: NAME.sock under $RUNTIME_DIRECTORY or /run/baton).")
    public var control: String?

    @Option(help: "The instance name, which picks the default control socket.")
    public var name: String = LaunchConfiguration.defaultName

    public init() {}

    /// The launcher's control socket: `--control`, or the default for `--name`.
    public func controlPath(runtimeDirectory: String?) -> String {
        control ?? LaunchConfiguration.defaultControlPath(name: name, runtimeDirectory: runtimeDirectory)
    }

    /// Where a client looks for the launcher: `--control`, or the places a launcher named `--name` puts it
    /// (see ``LaunchConfiguration/controlPathCandidates(name:runtimeDirectory:)``), first choice first.
    public func clientCandidates(runtimeDirectory: String?) -> [String] {
        if let control { return [control] }
        return LaunchConfiguration.controlPathCandidates(name: name, runtimeDirectory: runtimeDirectory)
    }
}

/// The options of `baton run`.
public struct RunOptions: ParsableArguments {
    @Option(
        name: .customLong("listen"),
        help: ArgumentHelp(
            "Listen on an address: HOST:PORT, [IPV6]:PORT, :PORT or unix:PATH, with an optional NAME= in front (exported in LISTEN_FDNAMES). Repeatable. Not needed when sockets are passed by systemd.",
            valueName: "[NAME=]ADDRESS"
        )
    )
    public var listen: [String] = []

    // Unconditional: `--workers -1` is a value to range-check, not a missing one.
    @Option(parsing: .unconditional, help: "How many worker processes a generation has.")
    public var workers: Int = 1

    @Option(
        help: ArgumentHelp(
            "How a worker reports it is ready: notify (NOTIFY_SOCKET), fd (BATON_NOTIFY_FD), listen (detected when it accepts on a listener; needs nothing from the app) or exec (as soon as it runs).",
            valueName: "mode"
        )
    )
    public var ready: String = "listen"

    @Option(help: ArgumentHelp("How long a worker may take to become ready (30s, 500ms, 2m).", valueName: "duration"))
    public var readyTimeout: String = "30s"

    @Option(help: ArgumentHelp("The signal that asks a worker to stop gracefully.", valueName: "signal"))
    public var stopSignal: String = "TERM"

    @Option(
        help: ArgumentHelp("How long a worker may drain before its process group is killed.", valueName: "duration")
    )
    public var stopTimeout: String = "30s"

    @Option(
        help: ArgumentHelp(
            "How a reload replaces workers: all-at-once or rolling (one at a time, surge of one).",
            valueName: "strategy"
        )
    )
    public var strategy: String = "all-at-once"

    @Option(
        help: ArgumentHelp(
            "A watchdog for workers: exported as WATCHDOG_USEC; a worker that has sent WATCHDOG=1 once and then stays silent this long is replaced.",
            valueName: "duration"
        )
    )
    public var watchdog: String?

    @Option(
        help: ArgumentHelp(
            "A soak window: a reload's new generation must stay ready this long (and a rolling step's new worker, before its predecessor retires) or the reload rolls back; 0 for none.",
            valueName: "duration"
        )
    )
    public var minReady: String = "0s"

    // Unconditional: `--canary -1s` is a value to check, not a missing one.
    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "A canary for every reload: one new worker serves beside the old generation this long, and the rest start only if it stays up; otherwise the reload rolls back. 0 for none; baton reload --canary overrides it.",
            valueName: "duration"
        )
    )
    public var canary: String = "0"

    @Option(
        help: ArgumentHelp(
            "Probe each worker through a socket of its own (the listener named health, last in LISTEN_FDS; its address in BATON_HEALTH_ADDRESS): http:PATH (a GET; 2xx or 3xx passes), tcp (a connect the worker accepts) or exec:COMMAND (exit 0). A worker is ready once a probe passes too; a ready one that fails --health-failures probes in a row is replaced.",
            valueName: "probe"
        )
    )
    public var health: String?

    @Option(help: ArgumentHelp("Time between health probes of a ready worker (default 2s).", valueName: "duration"))
    public var healthInterval: String?

    @Option(help: ArgumentHelp("How long one health probe may take (default 1s).", valueName: "duration"))
    public var healthTimeout: String?

    // Unconditional: `--health-failures -1` is a value to range-check, not a missing one.
    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("Failed probes in a row after which a worker is replaced (default 3).", valueName: "count")
    )
    public var healthFailures: Int?

    @Option(
        help: ArgumentHelp(
            "Run the workers as this user (baton keeps the listeners, even on ports below 1024).",
            valueName: "user"
        )
    )
    public var user: String?

    @Option(
        help: ArgumentHelp("Run the workers with this group (default: the user's primary group).", valueName: "group")
    )
    public var group: String?

    @Option(help: "The listen backlog of sockets baton binds.")
    public var backlog: Int32 = 4096

    @Option(help: ArgumentHelp("The file mode of unix sockets baton binds, in octal (e.g. 660).", valueName: "mode"))
    public var socketMode: String?

    @Flag(
        name: .customLong("no-adopt-bind"),
        help:
            "Do not preload libbaton-adopt.so into the workers. With it (the default), an app that binds an address baton serves, such as listen(8000), gets baton's listening socket instead; without it, the app must use the sockets in LISTEN_FDS."
    )
    public var noAdoptBind = false

    @Option(
        help: ArgumentHelp(
            "Serve GET /metrics (the Prometheus text format) on HOST:PORT, [IPV6]:PORT, :PORT or unix:PATH. Off by default.",
            valueName: "address"
        )
    )
    public var metrics: String?

    @Flag(
        name: .customLong("no-rescue"),
        help:
            "Do not take over the connections a retiring worker leaves open (by default baton holds them, so that a server's close of an idle keep-alive connection loses no request: one that has arrived is handed to the serving generation; it also stops a retiring worker's half-closes and accepts through libbaton-adopt.so, and makes Node's server.close() drain through NODE_OPTIONS)."
    )
    public var noRescue = false

    @OptionGroup public var control: ControlOptions

    @Argument(
        parsing: .captureForPassthrough,
        help: ArgumentHelp("The app's command and arguments, after --.", valueName: "command")
    )
    public var command: [String] = []

    public init() {}

    /// `baton run --help` arrives as the app's command, since that is captured verbatim.
    public var asksForHelp: Bool { command == ["--help"] || command == ["-h"] }

    /// The checked configuration, or a one-line error that names the option and the fix.
    public func configuration(_ system: SystemFacts) throws(BatonError) -> LaunchConfiguration {
        let appCommand = command.first == "--" ? Array(command.dropFirst()) : command
        // Everything from the first word swift-argument-parser does not know is captured as the command, so a
        // mistyped option would otherwise be run as the app.
        if command.first != "--", let first = command.first, first.hasPrefix("-") {
            throw BatonError(
                .badArgument,
                "unknown option \(BatonError.quoted(first)): see baton run --help; the app's command goes after --"
            )
        }
        guard appCommand.first?.isEmpty == false else {
            throw BatonError(
                .badArgument,
                "no app to run: give its command after --, e.g. baton run --listen :8080 -- node app.js"
            )
        }
        guard LaunchConfiguration.isValidName(control.name) else {
            throw BatonError(
                .badArgument,
                "invalid --name \(BatonError.quoted(control.name)): use letters, digits, '-', '_', '.' or '@'"
            )
        }
        let controlPath = control.controlPath(runtimeDirectory: system.runtimeDirectory)
        guard !controlPath.isEmpty, controlPath.utf8.count < 108, !controlPath.contains("\0") else {
            throw BatonError(
                .badArgument,
                "invalid --control \(BatonError.quoted(controlPath)): give a socket path shorter than 108 bytes"
            )
        }
        guard workers >= 1 else {
            throw BatonError(.badArgument, "invalid --workers \(workers): must be at least 1")
        }
        guard workers <= 1024 else {
            throw BatonError(.badArgument, "invalid --workers \(workers): must be at most 1024")
        }
        guard let readyMode = ReadyMode(rawValue: ready) else {
            throw BatonError(
                .badArgument,
                "invalid --ready \(BatonError.quoted(ready)): use notify, fd, listen or exec"
            )
        }
        guard let strategyValue = Strategy(rawValue: strategy) else {
            throw BatonError(
                .badArgument,
                "invalid --strategy \(BatonError.quoted(strategy)): use all-at-once or rolling"
            )
        }
        func duration(_ text: String, _ option: String) throws(BatonError) -> Duration {
            if text == "0" || DurationText(text)?.duration == .zero {
                throw BatonError(.badArgument, "invalid \(option) \(BatonError.quoted(text)): must be more than 0")
            }
            // A bare number: the unit is missing.
            if !text.isEmpty, text.utf8.count <= 20, text.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) {
                throw BatonError(
                    .badArgument,
                    "invalid \(option) \(BatonError.quoted(text)): give a unit, such as \(text)s or \(text)ms"
                )
            }
            guard let value = DurationText(text) else {
                throw BatonError(
                    .badArgument,
                    "invalid \(option) \(BatonError.quoted(text)): \(DurationText.form), such as 30s, 500ms or 2m"
                )
            }
            return value.duration
        }
        let readyTimeout = try duration(self.readyTimeout, "--ready-timeout")
        let stopTimeout = try duration(self.stopTimeout, "--stop-timeout")
        let workerWatchdog = try watchdog.map { text throws(BatonError) in try duration(text, "--watchdog") }
        guard let minReady = DurationText(self.minReady)?.duration else {
            throw BatonError(
                .badArgument,
                "invalid --min-ready \(BatonError.quoted(self.minReady)): \(DurationText.form), such as 5s, or 0 for no soak window"
            )
        }
        let healthSettings = try healthConfiguration(duration: duration)
        guard let stopSignal = system.signal(self.stopSignal), !system.uncatchableSignals.contains(stopSignal) else {
            throw BatonError(
                .badArgument,
                "invalid --stop-signal \(BatonError.quoted(self.stopSignal)): use a signal name such as TERM, INT, QUIT or USR2"
            )
        }
        guard backlog > 0 else {
            throw BatonError(.badArgument, "invalid --backlog \(backlog): give a positive number")
        }
        var mode: UInt32?
        if let socketMode {
            guard let value = UInt32(socketMode, radix: 8), value <= 0o777 else {
                throw BatonError(
                    .badArgument,
                    "invalid --socket-mode \(BatonError.quoted(socketMode)): give an octal mode such as 660"
                )
            }
            mode = value
        }
        var specs: [ListenSpec] = []
        for (index, text) in listen.enumerated() {
            let spec = try ListenSpec(parsing: text, defaultName: "listen\(index)")
            guard !specs.contains(where: { $0.name == spec.name }) else {
                throw BatonError(
                    .badArgument,
                    "invalid --listen \(BatonError.quoted(text)): the name '\(spec.name)' is used twice"
                )
            }
            specs.append(spec)
            if healthSettings != nil && spec.name == HealthProbe.healthListenerName {
                throw BatonError(
                    .badArgument,
                    "invalid --listen \(BatonError.quoted(text)): the name 'health' is the probe socket's with --health; name it otherwise"
                )
            }
        }
        var workerUser: LaunchConfiguration.WorkerUser?
        if let user {
            guard let entry = system.user(user) else {
                throw BatonError(
                    .badArgument,
                    "invalid --user \(BatonError.quoted(user)): no such user (check getent passwd)"
                )
            }
            workerUser = entry
        }
        if let group {
            guard let gid = system.group(group) else {
                throw BatonError(
                    .badArgument,
                    "invalid --group \(BatonError.quoted(group)): no such group (check getent group)"
                )
            }
            workerUser = .init(uid: workerUser?.uid ?? system.userID, gid: gid, groups: [gid])
        }
        if workerUser != nil && system.userID != 0 {
            throw BatonError(.badArgument, "--user and --group need baton to run as root")
        }
        var configuration = LaunchConfiguration(
            name: control.name,
            command: appCommand,
            listeners: specs,
            backlog: backlog,
            unixMode: mode,
            readyMode: readyMode,
            stopSignal: stopSignal,
            controlPath: controlPath,
            supervisor: SupervisorSettings(
                workers: workers,
                strategy: strategyValue,
                readyTimeout: readyTimeout,
                stopTimeout: stopTimeout,
                workerWatchdog: workerWatchdog,
                minReady: minReady,
                health: healthSettings
            )
        )
        configuration.supervisor.canary = try CanaryOption.parse(canary)
        configuration.workerUser = workerUser
        configuration.adoptBind = !noAdoptBind
        configuration.metrics = try metrics.map { text throws(BatonError) in try ListenAddress(metricsOption: text) }
        configuration.rescueConnections = !noRescue
        return configuration
    }
}

extension RunOptions {
    /// `--health` and its settings, checked; nil without `--health` (its settings alone are an error).
    func healthConfiguration(
        duration: (String, String) throws(BatonError) -> Duration
    ) throws(BatonError) -> HealthSettings? {
        guard let health else {
            let given = [
                healthInterval.map { _ in "--health-interval" }, healthTimeout.map { _ in "--health-timeout" },
                healthFailures.map { _ in "--health-failures" },
            ].compactMap { $0 }
            if let first = given.first {
                throw BatonError(.badArgument, "\(first) needs --health: add --health http:PATH, tcp or exec:COMMAND")
            }
            return nil
        }
        var settings = HealthSettings(probe: try HealthProbe(parsing: health))
        func ranged(_ text: String?, _ option: String, _ range: ClosedRange<Duration>) throws(BatonError) -> Duration? {
            guard let text else { return nil }
            let value = try duration(text, option)
            guard range.contains(value) else {
                throw BatonError(
                    .badArgument,
                    "invalid \(option) \(BatonError.quoted(text)): must be from \(range.lowerBound.shortDescription) to \(range.upperBound.shortDescription)"
                )
            }
            return value
        }
        if let interval = try ranged(healthInterval, "--health-interval", HealthSettings.intervalRange) {
            settings.interval = interval
        }
        if let timeout = try ranged(healthTimeout, "--health-timeout", HealthSettings.timeoutRange) {
            settings.timeout = timeout
        }
        if let failures = healthFailures {
            let range = HealthSettings.failuresRange
            guard range.contains(failures) else {
                throw BatonError(
                    .badArgument,
                    "invalid --health-failures \(failures): must be from \(range.lowerBound) to \(range.upperBound)"
                )
            }
            settings.failures = failures
        }
        return settings
    }
}
