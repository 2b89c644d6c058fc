/// Identifies one worker process for the whole life of the launcher (pids are reused; these are not).
public struct WorkerID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var raw: Int
    public init(_ raw: Int) { self.raw = raw }
    public static func < (a: WorkerID, b: WorkerID) -> Bool { a.raw < b.raw }
    public var description: String { "w\(raw)" }
}

/// Identifies a client waiting for a reload's outcome (`baton reload`); SIGHUP reloads have none.
public struct RequesterID: Hashable, Sendable, CustomStringConvertible {
    public var raw: Int
    public init(_ raw: Int) { self.raw = raw }
    public var description: String { "r\(raw)" }
}

/// The timers the state machine asks for.
public enum TimerID: Hashable, Sendable {
    case readyTimeout(WorkerID)
    case stopTimeout(WorkerID)
    case respawn(generation: Int, slot: Int)
    case watchdog(WorkerID)
    /// The end of a soak window (`--min-ready`): the generation (a rolling step: its newest worker) stayed ready.
    case soak(generation: Int)
    /// The next health probe of a worker is due (`--health`).
    case probe(WorkerID)
    /// The end of a canary window (`--canary`): the reload's one new worker stayed healthy.
    case canary(generation: Int)
}

/// Settings the lifecycle depends on.
public struct SupervisorSettings: Sendable, Equatable {
    public var workers: Int
    public var strategy: Strategy
    public var readyTimeout: Duration
    public var stopTimeout: Duration
    public var backoff: Backoff
    /// Consecutive crashes of a slot after which its generation is reported as crash-looping.
    public var crashLoopThreshold: Int
    /// Consecutive crashes of every slot after which baton gives up and exits non-zero.
    public var giveUpThreshold: Int
    /// The watchdog interval a worker opts in to by sending `WATCHDOG=1` (exported as `WATCHDOG_USEC`).
    public var workerWatchdog: Duration?
    /// The soak window (`--min-ready`): how long a new generation must stay ready before it is promoted, and, rolling,
    /// each new worker before its predecessor is retired. Zero: promoted as soon as it is ready.
    public var minReady: Duration
    /// Health probes (`--health`): nil for none.
    public var health: HealthSettings?
    /// The canary window every reload has unless it asks otherwise (`baton run --canary`); zero: none.
    public var canary: Duration = .zero

    public init(
        workers: Int = 1,
        strategy: Strategy = .allAtOnce,
        readyTimeout: Duration = .seconds(30),
        stopTimeout: Duration = .seconds(30),
        backoff: Backoff = Backoff(),
        crashLoopThreshold: Int = 5,
        giveUpThreshold: Int = 10,
        workerWatchdog: Duration? = nil,
        minReady: Duration = .zero,
        health: HealthSettings? = nil
    ) {
        self.health = health
        self.workerWatchdog = workerWatchdog
        self.minReady = minReady
        self.workers = workers
        self.strategy = strategy
        self.readyTimeout = readyTimeout
        self.stopTimeout = stopTimeout
        self.backoff = backoff
        self.crashLoopThreshold = crashLoopThreshold
        self.giveUpThreshold = giveUpThreshold
    }
}

/// Exponential backoff with a cap, reset once a worker has stayed up for `stablePeriod`.
public struct Backoff: Sendable, Equatable {
    public var initial: Duration
    public var maximum: Duration
    public var stablePeriod: Duration

    public init(
        initial: Duration = .milliseconds(100),
        maximum: Duration = .seconds(10),
        stablePeriod: Duration = .seconds(30)
    ) {
        self.initial = initial
        self.maximum = maximum
        self.stablePeriod = stablePeriod
    }

    /// The delay before the respawn that follows the `streak`-th consecutive crash (1-based).
    public func delay(afterCrash streak: Int) -> Duration {
        var delay = initial
        var step = 1
        while step < streak && delay < maximum {
            delay *= 2
            step += 1
        }
        return min(delay, maximum)
    }
}

/// What the state machine asks the launcher to do.
public enum SupervisorAction: Sendable, Equatable {
    /// Start a worker for `slot` of `generation`; answer with `.spawned` or `.spawnFailed`.
    case spawn(WorkerID, generation: Int, slot: Int)
    /// Send the configured stop signal to the worker's process.
    case stop(WorkerID, pid: Int32)
    /// SIGKILL the worker's whole process group.
    case kill(WorkerID, pid: Int32)
    /// Send the stop signal to what is left of the process group of an exited worker (`pid` was its leader):
    /// helpers it started there get to finish; those still there after the stop timeout are killed as leftovers.
    case stopGroup(WorkerID, pid: Int32)
    case schedule(TimerID, after: Duration)
    case cancel(TimerID)
    case progress([RequesterID], String)
    /// The final answer to reload requesters; `failedWorker` names the worker whose stderr explains it.
    case reloadFinished([RequesterID], ok: Bool, message: String, duration: Duration, failedWorker: FailedWorker?)
    /// Which generation the `.reloadFinished` that follows (for the same requesters) is about, and why it failed;
    /// `failedWorker` names the worker whose stderr explains it, read now (the answer may come once it has exited).
    case reloadOutcome([RequesterID], generation: Int, reason: String?, failedWorker: FailedWorker? = nil)
    case log(LifecycleEvent)
    case notifyManager(ManagerNotification)
    /// Exit the process with this code; every worker is gone.
    case exit(Int32)
    /// Run one health probe of the worker (`--health`); answer with `.probed` once it passed, failed or timed out.
    case probe(WorkerID, pid: Int32)
}

/// The worker whose failure ended a reload, and its last stderr lines: carried by its exit, or nil while it is
/// still alive (the launcher then reads them from its pipe).
public struct FailedWorker: Sendable, Equatable {
    public var id: WorkerID
    public var stderr: [String]?

    public init(_ id: WorkerID, stderr: [String]?) {
        self.id = id
        self.stderr = stderr
    }
}

/// What baton tells its own service manager.
public enum ManagerNotification: Sendable, Equatable {
    case ready
    case reloading
    case stopping
    /// The state ``Supervisor/statusLine`` describes may have changed: the launcher builds the line (its own, which
    /// adds the listeners') only when a manager listens for `STATUS=`, not for every event of every worker.
    case status
    /// `EXTEND_TIMEOUT_USEC=`: a start, reload or stop that is going well needs this much more time.
    case extendTimeout(Duration)
}

/// What one reload asks for beyond a plain reload (`baton reload --canary D --hold`).
public struct ReloadOptions: Sendable, Equatable {
    /// The canary window of this reload; nil: the launcher's own (``SupervisorSettings/canary``), zero: none.
    public var canary: Duration?
    /// Once ready, the new generation serves beside the old one until `baton promote` or `baton rollback`.
    public var hold: Bool

    public init(canary: Duration? = nil, hold: Bool = false) {
        self.canary = canary
        self.hold = hold
    }
}

/// What happens to the state machine.
public enum SupervisorEvent: Sendable, Equatable {
    case start
    /// A reload with options (`--wait-drained`, `--cut-drain`); `.reloadRequested(r)` is `.reload(ReloadRequest(r))`.
    case reload(ReloadRequest)
    /// The client connections stopping workers hold, as the launcher counted them (only while something drains).
    case connections([WorkerID: Int])
    case reloadRequested(RequesterID?, ReloadOptions = ReloadOptions())
    /// `baton promote`: retire the generation a `--hold` reload left serving beside the new one.
    case promoteRequested(RequesterID?)
    /// `baton rollback`: retire the held new generation and keep the old one.
    case rollbackRequested(RequesterID?)
    case spawned(WorkerID, pid: Int32)
    case spawnFailed(WorkerID, reason: String)
    case ready(WorkerID)
    case status(WorkerID, String)
    case watchdogPing(WorkerID, interval: Duration?)
    /// A worker's process ended; `stderr` holds the last lines it wrote there.
    case exited(WorkerID, ExitReason, stderr: [String] = [])
    /// A descendant of a worker that was re-parented to baton (it stayed in the worker's process group) ended abnormally.
    case descendantExited(WorkerID, pid: Int32, ExitReason)
    /// What the launcher found out about why a worker fails (such as the app binding baton's address itself); it
    /// goes into the failure's log line and reload result.
    case explained(WorkerID, String)
    case timer(TimerID)
    /// A health probe of the worker ended: passed (`ok`) or not; `detail` says what it found, such as
    /// `probe http:/healthz got 503`.
    case probed(WorkerID, ok: Bool, detail: String)
    /// Retire every generation gracefully and exit; a second one kills every worker at once.
    case stop
}

/// The one order in which the launcher and the tests feed events to a ``Supervisor`` and perform its actions.
public enum EventOrder {
    /// Handles `event`, then every event that performing its actions causes: an action list is performed whole, in
    /// order, and the events its actions caused (a worker spawned, a spawn that failed, an exec-mode worker that is
    /// ready) are handled after it, first caused first. Performing an action never re-enters the state machine.
    ///
    /// `settle` runs after each action list and returns the events the list's actions caused but left to it (the
    /// launcher waits there for the spawns the list started side by side).
    ///
    /// Returns every action performed.
    @discardableResult
    public static func run(
        _ event: SupervisorEvent,
        handle: (SupervisorEvent) -> [SupervisorAction],
        perform: (SupervisorAction) -> [SupervisorEvent],
        settle: () -> [SupervisorEvent] = { [] }
    ) -> [SupervisorAction] {
        var performed: [SupervisorAction] = []
        var queue = [event]
        var next = 0
        while next < queue.count {
            let actions = handle(queue[next])
            next += 1
            for action in actions { queue += perform(action) }
            queue += settle()
            performed += actions
        }
        return performed
    }
}
