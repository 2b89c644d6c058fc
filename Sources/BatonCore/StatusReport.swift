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

        public init(slot: Int, pid: Int32?, state: String, uptimeSeconds: Double, restarts: Int, status: String?) {
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

        public init(id: Int, state: String, startedAt: Double, crashLooping: Bool, workers: [Worker]) {
            self.id = id
            self.state = state
            self.startedAt = startedAt
            self.crashLooping = crashLooping
            self.workers = workers
        }
    }

    public struct Reload: Codable, Sendable, Equatable {
        public var ok: Bool
        public var generation: Int
        public var durationMilliseconds: Int64
        public var reason: String?
        /// Seconds since the epoch.
        public var finishedAt: Double

        public init(ok: Bool, generation: Int, durationMilliseconds: Int64, reason: String?, finishedAt: Double) {
            self.ok = ok
            self.generation = generation
            self.durationMilliseconds = durationMilliseconds
            self.reason = reason
            self.finishedAt = finishedAt
        }
    }

    public var name: String
    public var pid: Int32
    public var version: String
    public var listeners: [Listener]
    public var generations: [Generation]
    public var lastReload: Reload?
    public var reloading: Bool

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
            Generation(
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
                        status: worker.status
                    )
                }
            )
        }
        let last = supervisor.lastReload.map {
            Reload(
                ok: $0.ok,
                generation: $0.generation,
                durationMilliseconds: $0.duration.milliseconds,
                reason: $0.reason,
                finishedAt: wallTime($0.finishedAt)
            )
        }
        self.init(
            name: name,
            pid: pid,
            version: version,
            listeners: listeners,
            generations: generations,
            lastReload: last,
            reloading: supervisor.reload != nil && supervisor.reload?.heldSince == nil
        )
    }
}
