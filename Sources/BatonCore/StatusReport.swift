/// What `baton status` shows.
public struct StatusReport: Codable, Sendable, Equatable {
    public struct Listener: Codable, Sendable, Equatable {
        public var name: String
        public var address: String
        public var fd: Int32
        /// It refuses connections: a worker shut it down and baton could not repair it.
        public var refusing: Bool?

        public init(name: String, address: String, fd: Int32, refusing: Bool = false) {
            self.name = name
            self.address = address
            self.fd = fd
            self.refusing = refusing ? true : nil
        }
    }

    public struct Worker: Codable, Sendable, Equatable {
        public var slot: Int
        public var pid: Int32?
        public var state: String
        public var uptimeSeconds: Double
        public var restarts: Int
        public var status: String?
        /// With `--health`: failed probes in a row, and what the latest one found when it failed (or why the worker
        /// is being replaced).
        public var probeFailures: Int?
        public var health: String?
        /// CPU time of the worker process so far, in seconds, as `/proc` said when the report was made.
        public var cpuSeconds: Double?
        /// The worker process's resident memory, in bytes.
        public var rssBytes: Int64?
        /// Its CPU use since the previous status report, in percent of one core (none in the first report).
        public var cpuPercent: Double?

        public init(
            slot: Int,
            pid: Int32?,
            state: String,
            uptimeSeconds: Double,
            restarts: Int,
            status: String?,
            probeFailures: Int? = nil,
            health: String? = nil
        ) {
            self.probeFailures = probeFailures
            self.health = health
            self.slot = slot
            self.pid = pid
            self.state = state
            self.uptimeSeconds = uptimeSeconds
            self.restarts = restarts
            self.status = status
        }
    }

    public struct Generation: Codable, Sendable, Equatable {
        public var id: Int
        public var state: String
        /// Seconds since the epoch.
        public var startedAt: Double
        public var crashLooping: Bool
        public var workers: [Worker]
        /// While it drains (or its workers stop): the client connections they hold, as last counted from the kernel.
        public var connections: Int?
        /// While it drains: seconds until its last worker is SIGKILLed.
        public var drainSecondsLeft: Int?

        public init(
            id: Int,
            state: String,
            startedAt: Double,
            crashLooping: Bool,
            workers: [Worker],
            connections: Int? = nil,
            drainSecondsLeft: Int? = nil
        ) {
            self.id = id
            self.state = state
            self.startedAt = startedAt
            self.crashLooping = crashLooping
            self.workers = workers
            self.connections = connections
            self.drainSecondsLeft = drainSecondsLeft
        }
    }

    public struct Reload: Codable, Sendable, Equatable {
        public var ok: Bool
        public var generation: Int
        public var durationMilliseconds: Int64
        public var reason: String?
        /// Seconds since the epoch.
        public var finishedAt: Double
        /// Seconds since the epoch.
        public var startedAt: Double?

        public init(
            ok: Bool,
            generation: Int,
            durationMilliseconds: Int64,
            reason: String?,
            finishedAt: Double,
            startedAt: Double? = nil
        ) {
            self.ok = ok
            self.generation = generation
            self.durationMilliseconds = durationMilliseconds
            self.reason = reason
            self.finishedAt = finishedAt
            self.startedAt = startedAt
        }
    }

    public var name: String
    public var pid: Int32
    public var version: String
    public var listeners: [Listener]
    public var generations: [Generation]
    public var lastReload: Reload?
    public var reloading: Bool
    /// The last ``ReloadHistory/limit`` reloads, newest first.
    public var reloads: [Reload]?
    /// The connections baton took over from retiring workers since it started (those of workers still stopping are
    /// not in it yet), and the relays running now; nil when the rescue is off.
    public var rescued: RescueCounts?
    public var relays: Int?

    public init(
        name: String,
        pid: Int32,
        version: String,
        listeners: [Listener],
        generations: [Generation],
        lastReload: Reload?,
        reloading: Bool
    ) {
        self.name = name
        self.pid = pid
        self.version = version
        self.listeners = listeners
        self.generations = generations
        self.lastReload = lastReload
        self.reloading = reloading
    }
}

extension StatusReport {
    /// The report of a supervisor's state at `now`, with wall-clock times from `wallClock` (seconds since the epoch,
    /// read at `now`).
    public init(
        name: String,
        pid: Int32,
        version: String,
        listeners: [Listener],
        supervisor: Supervisor,
        now: ContinuousClock.Instant,
        wallClock: Double
    ) {
        func wallTime(_ instant: ContinuousClock.Instant) -> Double {
            wallClock - Double((now - instant).milliseconds) / 1000
        }
        // A generation does not serve while a listener refuses connections, whatever its workers say.
        let serving =
            listeners.contains { $0.refusing == true } ? "not serving (a listener refuses connections)" : "serving"
        let generations = supervisor.orderedGenerations.map { generation in
            let drain = supervisor.drainProgress(generation, now: now)
            let stopping = generation.workers.contains { supervisor.worker($0)?.state == .stopping }
            return Generation(
                id: generation.id,
                state: generation.id == supervisor.serving
                    ? serving
                    : supervisor.trialState(generation.id)
                        ?? (generation.soak != nil ? "soaking" : generation.state.rawValue),
                startedAt: wallTime(generation.startedAt),
                crashLooping: generation.crashLooping,
                workers: generation.workers.compactMap { supervisor.worker($0) }.map { worker in
                    Worker(
                        slot: worker.slot,
                        pid: worker.pid,
                        state: worker.state.rawValue,
                        uptimeSeconds: Double((now - worker.startedAt).milliseconds) / 1000,
                        restarts: worker.restarts,
                        status: worker.status,
                        probeFailures: supervisor.settings.health == nil ? nil : worker.probe.failures,
                        health: Self.health(of: worker, probing: supervisor.settings.health != nil)
                    )
                },
                connections: stopping ? drain.connections : nil,
                drainSecondsLeft: generation.state == .draining ? drain.secondsLeft : nil
            )
        }
        func reload(_ outcome: Supervisor.Outcome) -> Reload {
            Reload(
                ok: outcome.ok,
                generation: outcome.generation,
                durationMilliseconds: outcome.duration.milliseconds,
                reason: outcome.reason,
                finishedAt: wallTime(outcome.finishedAt),
                startedAt: wallTime(outcome.finishedAt - outcome.duration)
            )
        }
        let last = supervisor.lastReload.map(reload)
        self.init(
            name: name,
            pid: pid,
            version: version,
            listeners: listeners,
            generations: generations,
            lastReload: last,
            reloading: supervisor.reload != nil && supervisor.reload?.heldSince == nil
        )
        reloads = supervisor.history.map(reload)
    }

    /// The client connections each generation's stopping workers hold (draining ones included), by generation id:
    /// what a connections gauge reads.
    public var connectionsByGeneration: [Int: Int] {
        var result: [Int: Int] = [:]
        for generation in generations { if let count = generation.connections { result[generation.id] = count } }
        return result
    }

    /// What still drains, as `baton reload` and `STATUS=` put it.
    public var draining: [DrainProgress] {
        generations.compactMap { generation in
            generation.drainSecondsLeft.map {
                DrainProgress(
                    generation: generation.id,
                    workers: generation.workers.count,
                    connections: generation.connections,
                    secondsLeft: $0
                )
            }
        }
    }
}

extension StatusReport {
    /// What `status` says of a worker's probes: nil while they pass (or without `--health`).
    static func health(of worker: Supervisor.Worker, probing: Bool) -> String? {
        guard probing else { return nil }
        if let replacing = worker.probe.replacing { return "replacing worker \(worker.slot): \(replacing)" }
        guard !worker.probe.passed, let last = worker.probe.last else { return nil }
        return worker.state == .starting ? last : "\(worker.probe.failures) probe(s) failed in a row: \(last)"
    }
}
