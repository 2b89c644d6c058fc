/// What becomes of the processes a worker left behind once it is gone, as baton finds them among its own children
/// (it is a subreaper, so they are re-parented to it), each still carrying its worker's `BATON_GENERATION`,
/// `BATON_WORKER` and (unless the app removed it) `LISTEN_PID`.
///
/// One that stayed in its worker's process group is a helper of the app (Python's multiprocessing
/// `resource_tracker`, say, which exits by itself once its worker is gone): it gets the stop signal, and SIGKILL
/// only if it is still there after the stop timeout. One that left the group (`setsid`, a double fork) is a daemon
/// that escaped on purpose: it is killed at once.
public struct Leftovers: Sendable {
    /// What to do with one leftover process now.
    public enum Verdict: Sendable, Equatable {
        /// Nothing: its worker is alive, or it was told to stop and its stop timeout has not passed.
        case keep
        /// Send it the stop signal; the message says why.
        case stop(String)
        /// SIGKILL it, and its process group; the message says why.
        case kill(String)
    }

    /// When each process told to stop is killed if it is still there.
    private var deadlines: [Int32: ContinuousClock.Instant] = [:]

    public init() {}

    /// The earliest stop timeout still running: look again then.
    public var nextDeadline: ContinuousClock.Instant? { deadlines.values.min() }

    /// Forgets processes that are no longer baton's children.
    public mutating func retain(_ present: Set<Int32>) {
        deadlines = deadlines.filter { present.contains($0.key) }
    }

    /// Decides about process `pid`, whose environment names worker `slot` of `generation` (pid `workerPID`, when
    /// `LISTEN_PID` was kept: without it, nothing tells its worker's group, and it is taken for a daemon), in process
    /// group `processGroup`. `owner` is the live worker of that slot, if any.
    public mutating func judge(
        pid: Int32,
        generation: Int,
        slot: Int,
        workerPID: Int32?,
        processGroup: Int32?,
        owner: Int32?,
        now: ContinuousClock.Instant,
        stopTimeout: Duration
    ) -> Verdict {
        if let owner, workerPID == nil || workerPID == owner { return .keep }
        let worker = "worker \(slot) of generation \(generation)"
        // In the group its worker led (the worker's pid, from `LISTEN_PID`). A group led by some other process that
        // is gone too (a daemon's first fork, reaped with the worker) is a group of its own: that one escaped.
        let inGroup = workerPID != nil && processGroup == workerPID && pid != workerPID
        guard inGroup else {
            return .kill("stopping pid \(pid), left behind by \(worker) outside its process group")
        }
        if let deadline = deadlines[pid] {
            guard now >= deadline else { return .keep }
            deadlines[pid] = nil
            return .kill(
                "killing pid \(pid), left in the process group of \(worker): it did not stop within \(stopTimeout.shortDescription)"
            )
        }
        deadlines[pid] = now + stopTimeout
        return .stop("stopping pid \(pid), left in the process group of \(worker) after it exited")
    }
}
