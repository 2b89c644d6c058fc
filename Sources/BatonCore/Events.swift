/// A restart event baton logs, each kind with a stable journal `MESSAGE_ID`.
public struct LifecycleEvent: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        case generationStarted = "generation-started"
        case generationReady = "generation-ready"
        case generationSoaking = "generation-soaking"
        case generationRetired = "generation-retired"
        case generationFailed = "generation-failed"
        /// A retired generation's drain ended: how long it took, how many connections its killed workers still held.
        case drainFinished = "drain-finished"
        case reloadRequested = "reload-requested"
        case reloadSucceeded = "reload-succeeded"
        case reloadFailed = "reload-failed"
        case workerExited = "worker-exited"
        case workerCrashed = "worker-crashed"
        case workerRespawned = "worker-respawned"
        case workerKilled = "worker-killed"
        case crashLoop = "crash-loop"
        case watchdogMissed = "watchdog-missed"
        case probeFailed = "probe-failed"
        case listenerBound = "listener-bound"
        case listenerStored = "listener-stored"
        case listenerRepaired = "listener-repaired"
        case listenerBroken = "listener-broken"
        case stopping = "stopping"
        case reexecuted = "reexecuted"
        case canaryStarted = "canary-started"
        case canaryPassed = "canary-passed"
        case canaryFailed = "canary-failed"
        case generationHeld = "generation-held"
        case promoteRequested = "promote-requested"
        case rollbackRequested = "rollback-requested"

        /// The journal `MESSAGE_ID` of this kind of event: 32 lowercase hex digits, never changed once shipped.
        public var messageID: String {
            switch self {
            case .generationStarted: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e601"
            case .generationReady: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e602"
            case .generationSoaking: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e605"
            case .generationRetired: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e603"
            case .generationFailed: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e604"
            case .drainFinished: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e606"
            case .reloadRequested: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e611"
            case .reloadSucceeded: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e612"
            case .reloadFailed: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e613"
            case .workerExited: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e621"
            case .workerCrashed: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e622"
            case .workerRespawned: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e623"
            case .workerKilled: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e624"
            case .crashLoop: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e625"
            case .watchdogMissed: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e631"
            case .probeFailed: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e632"
            case .listenerBound: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e641"
            case .listenerStored: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e642"
            case .listenerRepaired: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e643"
            case .listenerBroken: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e644"
            case .stopping: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e651"
            case .reexecuted: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e652"
            case .canaryStarted: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e671"
            case .canaryPassed: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e672"
            case .canaryFailed: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e673"
            case .generationHeld: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e674"
            case .promoteRequested: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e675"
            case .rollbackRequested: "8f3c2b1e6a4d4b0f9e51c7a2d3b4e676"
            }
        }
    }

    public var kind: Kind
    public var message: String
    public var generation: Int?
    public var workerPID: Int32?
    public var slot: Int?
    public var duration: Duration?
    /// An exit status or signal name, such as `exit 1` or `signal KILL`.
    public var status: String?
    public var reason: String?
    /// A number of connections (``Kind/drainFinished``: those still open when the workers were killed).
    public var connections: Int?

    public init(
        _ kind: Kind,
        _ message: String,
        generation: Int? = nil,
        workerPID: Int32? = nil,
        slot: Int? = nil,
        duration: Duration? = nil,
        status: String? = nil,
        reason: String? = nil,
        connections: Int? = nil
    ) {
        self.connections = connections
        self.kind = kind
        self.message = message
        self.generation = generation
        self.workerPID = workerPID
        self.slot = slot
        self.duration = duration
        self.status = status
        self.reason = reason
    }
}

/// How a worker process ended.
public enum ExitReason: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(String)

    public var description: String {
        switch self {
        case .exited(let code): "exit \(code)"
        case .signaled(let name): "signal \(name)"
        }
    }

    public var isClean: Bool { self == .exited(0) }
}
