import BatonCore
import BatonSystem
import Logging

extension Launcher {
    /// Answers `baton signal`: sends the signal to the workers ``SignalTargets`` chooses, and says which pids got it.
    ///
    /// Only pids the supervisor tracks are signalled, and each is a child of baton that has not been reaped (children
    /// are reaped on this actor, which then forgets the pid at once): the number cannot name another process.
    func signalWorkers(_ request: ControlProtocol.Request) -> ControlProtocol.Reply {
        guard let signal = request.signal, (1...Signals.largest).contains(signal) else {
            return .error(
                "invalid signal \(request.signal.map(String.init) ?? "(none)"): give a number from 1 to \(Signals.largest)"
            )
        }
        let name = "SIG\(Signals.name(of: signal))"
        guard !Signals.uncatchable.contains(signal) else {
            return .error(SignalTargets.refusal(of: Signals.name(of: signal)))
        }
        let chosen: (generation: Int, targets: [SignalTargets.Target])
        do throws(BatonError) {
            chosen = try SignalTargets.choose(in: supervisor, generation: request.generation, worker: request.worker)
        } catch {
            return .error(error.message)
        }
        var delivered: [SignalTargets.Target] = []
        var missed: [SignalTargets.Target] = []
        for target in chosen.targets {
            if OS.kill(target.pid, signal) { delivered.append(target) } else { missed.append(target) }
        }
        func list(_ targets: [SignalTargets.Target]) -> String {
            targets.map { "pid \($0.pid) (worker \($0.slot))" }.joined(separator: ", ")
        }
        var message = "sent \(name) to generation \(chosen.generation): \(list(delivered))"
        if delivered.isEmpty { message = "could not send \(name) to generation \(chosen.generation)" }
        if !missed.isEmpty { message += "\(delivered.isEmpty ? ":" : ";") not to \(list(missed)) (gone meanwhile)" }
        logger.notice(
            "\(message), as baton signal asked",
            metadata: ["baton.generation": "\(chosen.generation)", "baton.signal": "\(name)"]
        )
        return ControlProtocol.Reply(
            kind: .result,
            message: message,
            ok: !delivered.isEmpty && missed.isEmpty,
            pids: delivered.map(\.pid)
        )
    }
}

extension Launcher {
    /// What `baton status` reports, with each worker's CPU time and resident memory read from `/proc` now, and its CPU
    /// use since the previous report.
    func statusReportWithUsage() -> StatusReport {
        let report = statusReport()
        var usage: [Int32: WorkerUsage] = [:]
        for pid in report.workerPIDs {
            if let figures = ProcInspector.usage(of: pid) {
                usage[pid] = WorkerUsage(cpuSeconds: figures.cpuSeconds, rssBytes: figures.residentBytes)
            }
        }
        var full = report.adding(cpuSamples.record(usage, now: .now))
        if rescue.unavailable == nil {
            (full.rescued, full.relays) = rescue.counts()
        }
        return full
    }
}
