import BatonCore
import BatonSystem
import Logging

/// Which processes are the workers', and stopping what they leave behind.
extension Launcher {
    /// The worker a notify message's sender belongs to: the worker itself, a process in its process group,
    /// or a descendant.
    func owner(of pid: Int32) -> WorkerID? {
        if let known = owners[pid] { return known }
        if owners.count >= 4096 { owners = [:] }
        let owner = lookUpOwner(of: pid)
        owners[pid] = owner
        return owner
    }

    private func lookUpOwner(of pid: Int32) -> WorkerID? {
        var byPID: [Int32: WorkerID] = [:]
        for worker in supervisor.liveWorkers { if let workerPID = worker.pid { byPID[workerPID] = worker.id } }
        if let worker = byPID[pid] { return worker }
        if let group = ProcInspector.processGroup(of: pid), let worker = byPID[group] { return worker }
        var current = pid
        for _ in 0..<32 {
            guard let parent = ProcInspector.parent(of: current), parent > 1 else { return nil }
            if let worker = byPID[parent] { return worker }
            current = parent
        }
        return nil
    }

    /// Stops processes a worker left behind: daemonised descendants that escaped its process group were
    /// re-parented to baton (a subreaper); each still carries the `BATON_GENERATION`, `BATON_WORKER` and (unless
    /// the app removed it) `LISTEN_PID` of the worker that started it, and goes once that worker is gone, even
    /// when a replacement now serves the same slot.
    func stopOrphans(alsoGone gone: Set<Int32>) {
        var live: [String: Int32] = [:]
        var liveGenerations: Set<Int> = []
        for worker in supervisor.liveWorkers {
            guard let pid = worker.pid, !gone.contains(pid) else { continue }
            live["\(worker.generation).\(worker.slot)"] = pid
            liveGenerations.insert(worker.generation)
        }
        // Generations older than every live one need no start time of their own: what started before the oldest live
        // generation belongs to none that lives.
        if let oldest = supervisor.liveWorkers.map(\.generation).min() {
            generationStarts = generationStarts.filter { $0.key >= oldest }
        }
        let children = ProcInspector.ownChildren()
        leftovers.retain(Set(children))
        let now = ContinuousClock.now
        for pid in children where supervisor.worker(pid: pid) == nil && !gone.contains(pid) && health?.owns(pid) != true
        {
            // Without an identity (it wiped its environment), or with one that lies (it started before the
            // generation it names), a process belongs to the newest generation that had started when it did.
            let identity = ProcInspector.batonWorkerIdentity(of: pid)
            let start = ProcInspector.startTime(of: pid)
            let claimed = identity.flatMap { generationStarts[$0.generation] }
            if let start, identity == nil || claimed.map({ start < $0 }) == true {
                let generation = likelyGeneration(startedAt: start, generationStarts: generationStarts)
                if let generation, liveGenerations.contains(generation) { continue }
                let why =
                    identity.map { "it claims generation \($0.generation), which started after it" }
                    ?? "it wiped its environment"
                logger.warning(
                    "stopping pid \(pid), left behind by a worker of generation \(generation.map(String.init) ?? "?") (\(why))",
                    metadata: ["baton.generation": "\(generation ?? 0)", "baton.orphan.pid": "\(pid)"]
                )
                OS.kill(-pid, Signals.kill)
                OS.kill(pid, Signals.kill)
                continue
            }
            guard let identity else { continue }
            let verdict = leftovers.judge(
                pid: pid,
                generation: identity.generation,
                slot: identity.slot,
                workerPID: identity.workerPID,
                processGroup: ProcInspector.processGroup(of: pid),
                owner: live["\(identity.generation).\(identity.slot)"],
                now: now,
                stopTimeout: configuration.supervisor.stopTimeout
            )
            let metadata: Logger.Metadata = [
                "baton.generation": "\(identity.generation)", "baton.orphan.pid": "\(pid)",
            ]
            switch verdict {
            case .keep:
                continue
            case .stop(let message):
                logger.warning("\(message)", metadata: metadata)
                OS.kill(pid, configuration.stopSignal)
            case .kill(let message):
                logger.warning("\(message)", metadata: metadata)
                OS.kill(-pid, Signals.kill)
                OS.kill(pid, Signals.kill)
            }
        }
        // Look again when the first stop timeout ends (as if a child had exited: that is when this runs).
        leftoverCheck.map(loop.cancel)
        leftoverCheck = leftovers.nextDeadline.map { deadline in
            let sink = self.sink
            return loop.schedule(at: deadline) { sink.yield(.signal(Signals.child)) }
        }
    }

    /// SIGKILLs every worker's process group and everything a worker left behind (at exit): every child of baton's
    /// is one of those.
    func killEveryWorker() {
        for pid in ProcInspector.ownChildren() {
            OS.kill(-pid, Signals.kill)
            OS.kill(pid, Signals.kill)
        }
        for worker in supervisor.liveWorkers {
            if let pid = worker.pid {
                OS.kill(-pid, Signals.kill)
                OS.kill(pid, Signals.kill)
            }
        }
    }
}
