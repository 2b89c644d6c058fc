/// The supervisor's state in a form that survives `execve`: baton re-executes itself in place (same pid, same
/// children) on its own upgrade, and the new binary resumes from this.
///
/// Instants do not cross processes, so times are ages in milliseconds at the moment of the snapshot.
public struct SupervisorSnapshot: Codable, Sendable, Equatable {
    public struct Worker: Codable, Sendable, Equatable {
        public var id: Int
        public var generation: Int
        public var slot: Int
        public var pid: Int32
        public var restarts: Int
        public var ageMilliseconds: Int64
        public var readyAgeMilliseconds: Int64?
        public var status: String?
    }

    public struct Generation: Codable, Sendable, Equatable {
        public var id: Int
        public var ageMilliseconds: Int64
        public var streak: [Int: Int]
        public var crashLooping: Bool
    }

    public struct Reload: Codable, Sendable, Equatable {
        public var ok: Bool
        public var generation: Int
        public var durationMilliseconds: Int64
        public var reason: String?
        public var ageMilliseconds: Int64
    }

    public var serving: Int
    public var nextWorker: Int
    public var nextGeneration: Int
    public var generation: Generation
    public var workers: [Worker]
    public var lastReload: Reload?
}

extension Supervisor {
    /// Whether nothing is in motion: running, one generation, every worker ready, no reload pending. Only then
    /// can the launcher hand itself over to a new binary.
    public var isQuiet: Bool {
        guard phase == .running, reload == nil, followUp == nil, let serving, generations.count == 1,
            let generation = generations[serving], generation.slots.count == settings.workers
        else { return false }
        return generation.workers.count == settings.workers
            && generation.workers.allSatisfy { workers[$0]?.state == .ready && workers[$0]?.pid != nil }
    }

    /// The state to resume from, or nil when the supervisor is not quiet.
    public func snapshot(now: ContinuousClock.Instant) -> SupervisorSnapshot? {
        guard isQuiet, let serving, let generation = generations[serving] else { return nil }
        let list = generation.workers.compactMap { workers[$0] }.map { worker in
            SupervisorSnapshot.Worker(
                id: worker.id.raw,
                generation: worker.generation,
                slot: worker.slot,
                pid: worker.pid ?? 0,
                restarts: worker.restarts,
                ageMilliseconds: (now - worker.startedAt).milliseconds,
                readyAgeMilliseconds: worker.readyAt.map { (now - $0).milliseconds },
                status: worker.status
            )
        }
        return SupervisorSnapshot(
            serving: serving,
            nextWorker: (workers.keys.map(\.raw).max() ?? 0) + 1,
            nextGeneration: serving + 1,
            generation: .init(
                id: serving,
                ageMilliseconds: (now - generation.startedAt).milliseconds,
                streak: generation.streak,
                crashLooping: generation.crashLooping
            ),
            workers: list,
            lastReload: lastReload.map {
                .init(
                    ok: $0.ok,
                    generation: $0.generation,
                    durationMilliseconds: $0.duration.milliseconds,
                    reason: $0.reason,
                    ageMilliseconds: (now - $0.finishedAt).milliseconds
                )
            }
        )
    }

    /// A supervisor that resumes from `snapshot`: running, serving its generation with the same workers.
    public init(settings: SupervisorSettings, resuming snapshot: SupervisorSnapshot, now: ContinuousClock.Instant) {
        self.init(settings: settings)
        restore(snapshot, now: now)
    }
}
