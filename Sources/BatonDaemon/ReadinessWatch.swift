import BatonCore
import BatonSystem

/// The `--ready listen` checks of starting workers, on a thread of their own (an ``EventLoop`` whose timers pace
/// them), so that reading `/proc` never holds up the launcher's loop.
///
/// Each starting worker is looked at 5 ms after it started, then more rarely (the delay doubles, up to 100 ms for
/// its first 2 seconds, then up to 500 ms), until it accepts or stops being watched (it became ready another way,
/// exited, or missed its ready timeout); a look at a worker whose processes have not run since the previous one
/// reads one file per process (``ListenReadiness/isAccepting(pid:listenerInodes:previous:)``). The cost is that of
/// the workers that start, and nothing runs while none does.
final class ReadinessWatch: Sendable {
    private struct Watch: Sendable {
        var pid: Int32
        var started: ContinuousClock.Instant
        var delay: Duration
        var timer: EventLoop.Timer?
        var previous: [Int32: ProcessActivity]
    }

    private let loop: EventLoop
    private let watches = Locked<[WorkerID: Watch]>([:])
    private let listenerInodes: Set<UInt64>
    private let sink: AsyncStream<DaemonEvent>.Continuation

    static let firstDelay = Duration.milliseconds(5)
    /// The longest delay between two looks while a worker is young, and after.
    static let youngDelay = Duration.milliseconds(100)
    static let youth = Duration.seconds(2)
    static let oldDelay = Duration.milliseconds(500)

    init(listenerInodes: Set<UInt64>, sink: AsyncStream<DaemonEvent>.Continuation) throws(SystemError) {
        loop = try EventLoop()
        self.listenerInodes = listenerInodes
        self.sink = sink
    }

    /// How many workers are watched now.
    var count: Int { watches.withLock { $0.count } }

    /// Starts watching worker `id` (process `pid`): `.detectedReady(id)` once it accepts on a listener.
    func watch(_ id: WorkerID, pid: Int32) {
        loop.start()
        watches.withLock { watches in
            let timer = loop.schedule(after: Self.firstDelay) { [weak self] in self?.look(id) }
            watches[id] = Watch(pid: pid, started: .now, delay: Self.firstDelay, timer: timer, previous: [:])
        }
    }

    /// Stops watching worker `id`.
    func stop(_ id: WorkerID) {
        guard let watch = watches.withLock({ $0.removeValue(forKey: id) }) else { return }
        watch.timer.map(loop.cancel)
    }

    private func look(_ id: WorkerID) {
        guard var watch = watches.withLock({ $0[id] }) else { return }
        if ListenReadiness.isAccepting(pid: watch.pid, listenerInodes: listenerInodes, previous: &watch.previous) {
            guard watches.withLock({ $0.removeValue(forKey: id) }) != nil else { return }
            sink.yield(.detectedReady(id))
            return
        }
        let ceiling = ContinuousClock.now - watch.started < Self.youth ? Self.youngDelay : Self.oldDelay
        watch.delay = min(watch.delay * 2, ceiling)
        watches.withLock { watches in
            // Stopped meanwhile: not looked at again.
            guard watches[id] != nil else { return }
            watch.timer = loop.schedule(after: watch.delay) { [weak self] in self?.look(id) }
            watches[id] = watch
        }
    }
}
