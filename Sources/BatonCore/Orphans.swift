/// A slot of a generation, as a worker's environment names it (`BATON_GENERATION`, `BATON_WORKER`).
public struct WorkerSlot: Hashable, Sendable {
    public var generation: Int
    public var slot: Int

    public init(generation: Int, slot: Int) {
        self.generation = generation
        self.slot = slot
    }
}

/// Who started a process that baton found among its own children without being one of its workers.
public struct OrphanIdentity: Sendable, Equatable {
    /// The slot of the worker that started it.
    public var slot: WorkerSlot
    /// The `LISTEN_PID` it inherited, the pid of the worker that started it (nil if the app removed it).
    public var workerPID: Int32?

    public init(slot: WorkerSlot, workerPID: Int32?) {
        self.slot = slot
        self.workerPID = workerPID
    }

    /// Whether the worker that started it is gone, given the live workers' pids by slot: a process whose slot has no
    /// live worker, or whose slot is now served by a replacement (another pid) is orphaned.
    public func isOrphaned(liveWorkers: [WorkerSlot: Int32]) -> Bool {
        guard let owner = liveWorkers[slot] else { return true }
        if let workerPID { return workerPID != owner }
        return false
    }
}

/// The generation that most likely started a process that carries no identity of its own (a daemon that wiped its
/// environment): the newest generation that had started by the process's start time, given each generation's start
/// (in the same clock). Nil when none had.
public func likelyGeneration(startedAt processStart: UInt64, generationStarts: [Int: UInt64]) -> Int? {
    generationStarts.filter { $0.value <= processStart }.max { ($0.value, $0.key) < ($1.value, $1.key) }?.key
}
