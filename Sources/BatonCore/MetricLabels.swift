/// The small, fixed sets of label values baton's metrics use, and how a lifecycle event maps to them.
///
/// A label value is never free text: a reason such as "worker 2 (pid 4711) exited with exit 3 before the generation
/// was ready" becomes `worker_exited`, so that each metric has a bounded number of series.
public enum MetricLabels {
    /// Why a reload rolled back (`baton_rollbacks_total{reason}`).
    public enum RollbackReason: String, Sendable, CaseIterable {
        /// A worker of the new generation exited before the generation was ready.
        case workerExited = "worker_exited"
        /// A worker of the new generation did not become ready within `--ready-timeout`.
        case readyTimeout = "ready_timeout"
        /// A worker of the new generation stopped sending `WATCHDOG=1`.
        case watchdog
        /// A worker or one of its processes failed within the soak window (`--min-ready`).
        case soakFailed = "soak_failed"
        /// A worker of the new generation could not be started at all.
        case spawnFailed = "spawn_failed"
    }

    /// How a worker's process ended (`baton_worker_exits_total{reason}`, and the cause of a restart in
    /// `baton_worker_restarts_total{reason}`).
    public enum ExitReason: String, Sendable, CaseIterable {
        /// It was told to stop (a retired generation, a stop) and exited.
        case stopped
        /// It was told to stop, did not within `--stop-timeout`, and was killed.
        case killed
        /// It exited by itself with a status.
        case exited
        /// A signal that baton did not send on purpose ended it.
        case signaled
        /// baton stopped it: it did not become ready within `--ready-timeout`.
        case readyTimeout = "ready_timeout"
        /// baton killed it: it stopped sending `WATCHDOG=1`.
        case watchdog
        /// It could not be started at all.
        case spawnFailed = "spawn_failed"
    }

    /// The result of a reload (`baton_reloads_total{result}`).
    public enum ReloadResult: String, Sendable, CaseIterable {
        case ok
        case failed
    }

    /// Why a reload rolled back, from its `reload-failed` event's reason (nil for an event of another kind).
    public static func rollbackReason(_ event: LifecycleEvent) -> RollbackReason? {
        guard event.kind == .reloadFailed else { return nil }
        let reason = event.reason ?? ""
        if reason.contains("stopped sending WATCHDOG=1") { return .watchdog }
        if reason.contains("did not become ready within") { return .readyTimeout }
        if reason.contains("within --min-ready") { return .soakFailed }
        if reason.contains(" exited") { return .workerExited }
        return .spawnFailed
    }

    /// How a worker ended, from its `worker-exited` or `worker-crashed` event (nil for an event of another kind).
    public static func exitReason(_ event: LifecycleEvent) -> ExitReason? {
        switch event.kind {
        case .workerExited: return .stopped
        case .workerCrashed: break
        default: return nil
        }
        if let failure = event.reason {
            if failure.contains("WATCHDOG=1") { return .watchdog }
            if failure.contains("did not become ready within") { return .readyTimeout }
        }
        guard let status = event.status else { return .spawnFailed }
        return status.hasPrefix("signal ") ? .signaled : .exited
    }

    /// The worker states `baton_workers{state}` counts (an exited worker is no longer in the table).
    public static let workerStates: [Supervisor.WorkerState] = [.starting, .ready, .stopping]

    /// The generation states `baton_generations{state}` counts (a retired generation is no longer in the table).
    public static let generationStates: [Supervisor.GenerationState] = [.starting, .serving, .draining, .failed]
}

extension ListenAddress {
    /// Parses a `--metrics` value: `HOST:PORT`, `[IPV6]:PORT`, `:PORT` or `unix:PATH` (no `NAME=`).
    public init(metricsOption text: String) throws(BatonError) {
        if !text.hasPrefix("unix:"), let equals = text.firstIndex(of: "="),
            !text[..<equals].contains(":"), !text[..<equals].contains("[")
        {
            throw BatonError(
                .badArgument,
                "invalid --metrics \(BatonError.quoted(text)): give HOST:PORT or unix:PATH, without a NAME="
            )
        }
        self = try ListenSpec(parsing: text, defaultName: "metrics", option: "--metrics").address
    }
}
