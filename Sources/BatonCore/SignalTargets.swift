/// Which workers `baton signal` reaches: the running workers of the serving generation (or of the one asked for),
/// or the one worker of a slot. Only processes the supervisor tracks are ever chosen.
public enum SignalTargets {
    /// One worker to signal.
    public struct Target: Sendable, Equatable {
        public var slot: Int
        public var pid: Int32

        public init(slot: Int, pid: Int32) {
            self.slot = slot
            self.pid = pid
        }
    }

    /// Why `baton signal` refuses a signal no process can catch (named as `KILL`, `STOP`), in one line with the fix.
    public static func refusal(of name: String) -> String {
        switch name {
        case "KILL":
            "SIGKILL is refused: a worker cannot catch it and loses its requests in flight; send TERM to stop the "
                + "workers gracefully, or use baton reload to replace them"
        case "STOP":
            "SIGSTOP is refused: a stopped worker leaves its connections unanswered; send a signal the app handles, "
                + "such as HUP or USR1"
        default:
            "SIG\(name) is refused: a worker can neither catch nor ignore it; send a signal the app handles"
        }
    }

    /// The generation and its workers that get the signal, or a one-line error naming what does not exist.
    public static func choose(
        in supervisor: Supervisor,
        generation: Int?,
        worker slot: Int?
    ) throws(BatonError) -> (generation: Int, targets: [Target]) {
        let known = supervisor.orderedGenerations.map { "\($0.id) (\($0.state.rawValue))" }.joined(separator: ", ")
        guard let id = generation ?? supervisor.serving else {
            throw BatonError(
                .control,
                "no generation serves yet\(known.isEmpty ? "" : " (generations: \(known))"): give --generation N, or wait until one does"
            )
        }
        guard let chosen = supervisor.generations[id] else {
            throw BatonError(
                .control,
                "no generation \(id)\(known.isEmpty ? "" : " (generations: \(known))"): give one of them, or see baton status"
            )
        }
        let live = chosen.workers.compactMap { supervisor.worker($0) }.filter { $0.state != .exited }
        var targets = live.compactMap { worker in worker.pid.map { Target(slot: worker.slot, pid: $0) } }
        if let slot {
            guard (1...supervisor.settings.workers).contains(slot) else {
                throw BatonError(
                    .control,
                    "no worker \(slot) in generation \(id): its workers are 1 to \(supervisor.settings.workers)"
                )
            }
            targets = targets.filter { $0.slot == slot }
            guard !targets.isEmpty else {
                throw BatonError(
                    .control,
                    "worker \(slot) of generation \(id) has no running process (it is restarting or has exited): see baton status"
                )
            }
        }
        guard !targets.isEmpty else {
            throw BatonError(.control, "generation \(id) has no running worker: see baton status")
        }
        return (id, targets.sorted { ($0.slot, $0.pid) < ($1.slot, $1.pid) })
    }
}
