import BatonCore
import BatonSystem

/// Drain progress: the client connections stopping workers still hold, counted from the kernel
/// (``Connections``) only while something stops, once a second and whenever someone asks (`baton status`, a reload,
/// a stop timeout about to kill).
extension Launcher {
    /// The workers that were told to stop and are still alive.
    var stoppingWorkers: [Supervisor.Worker] {
        supervisor.liveWorkers.filter { $0.state == .stopping && $0.pid != nil }
    }

    /// Counts the connections of the stopping workers (only `worker`, if given) and hands them to the Supervisor.
    func countDrainingConnections(only worker: WorkerID? = nil) {
        let stopping = stoppingWorkers.filter { worker == nil || $0.id == worker }
        guard !stopping.isEmpty else { return }
        let counts = connectionCounts(stopping)
        guard !counts.isEmpty else { return }
        EventOrder.run(
            .connections(counts),
            handle: { supervisor.handle($0, now: .now) },
            perform: { performDrainAction($0) }
        )
    }

    /// What still drains now, counted afresh: what `baton reload` prints once it finished.
    func drainingNow() -> [DrainProgress] {
        let counts = connectionCounts(stoppingWorkers)
        var updated = supervisor
        _ = updated.handle(.connections(counts), now: .now)
        return updated.draining(now: .now)
    }

    /// Starts counting once a second while a worker stops; stops when none does.
    func watchDrains() {
        let draining = supervisor.workers.values.contains { $0.state == .stopping }
        if draining, drainWatch == nil {
            // A first count at once: `STATUS=` and `baton status` show connections from the start of the drain.
            countDrainingConnections()
            let sink = self.sink
            drainWatch = loop.schedule(after: .seconds(1), repeating: .seconds(1)) { sink.yield(.drainTick) }
        } else if !draining, let watch = drainWatch {
            loop.cancel(watch)
            drainWatch = nil
        }
    }

    /// The open connections of every live generation, counted now (for a metrics scrape).
    func connectionsByGeneration() -> [Int: Int] {
        let live = supervisor.liveWorkers.filter { $0.pid != nil }
        let counts = connectionCounts(live)
        var result: [Int: Int] = [:]
        for worker in live { result[worker.generation, default: 0] += counts[worker.id] ?? 0 }
        return result
    }

    private func connectionCounts(_ workers: [Supervisor.Worker]) -> [WorkerID: Int] {
        let pids = workers.compactMap(\.pid)
        let bound = listeners.compactMap { $0.boundAddress() }
        let counts = Connections.count(
            pids: pids,
            ports: Set(bound.compactMap(\.port)),
            paths: Set(bound.compactMap(\.path)),
            excluding: starter.listenerInodes
        )
        var result: [WorkerID: Int] = [:]
        for worker in workers { if let pid = worker.pid, let count = counts[pid] { result[worker.id] = count } }
        return result
    }

    /// A `.connections` event changes nothing but the counts and `STATUS=`.
    private func performDrainAction(_ action: SupervisorAction) -> [SupervisorEvent] {
        if case .notifyManager(let notification) = action { notifyManager(notification) }
        return []
    }
}
