import BatonCore
import BatonSystem

/// The `--ready listen` checks of starting workers, on a thread of their own (an ``EventLoop`` whose one timer paces
/// them), so that reading `/proc` never holds up the launcher's loop.
///
/// Each starting worker is looked at 5 ms after it started, then more rarely (the delay doubles, up to 100 ms for
/// its first 2 seconds, then up to 2.5 ms times the number of workers watched, between 100 and 500 ms: at most
/// about 400 looks a second up to 200 starting workers), until it accepts or stops being watched (it became ready
/// another way, exited, or missed its ready timeout). One sweep looks at every worker due within a quarter of its delay, so that
/// many starting workers share a wakeup; a look at a worker whose processes have not run since the previous one
/// reads one file per process (``ListenReadiness/isAccepting(pid:listenerInodes:previous:)``). The cost is that of
/// the workers that start, and nothing runs while none does.
final class ReadinessWatch: Sendable {
    private struct Watch: Sendable {
        var pid: Int32
        var started: ContinuousClock.Instant
        var delay: Duration
        var due: ContinuousClock.Instant
        var previous: [Int32: ProcessActivity] = [:]
    }

    private struct State: Sendable {
        var watches: [WorkerID: Watch] = [:]
        var timer: EventLoop.Timer?
        var armedFor: ContinuousClock.Instant?
    }

    private let loop: EventLoop
    private let state = Locked(State())
    private let listenerInodes: Set<UInt64>
    private let sink: AsyncStream<DaemonEvent>.Continuation

    static let firstDelay = Duration.milliseconds(5)
    /// The longest delay between two looks while a worker is young, and after (``oldDelay(watching:)``).
    static let youngDelay = Duration.milliseconds(100)
    static let youth = Duration.seconds(2)

    /// The longest delay between two looks at a worker past its youth, while `count` workers are watched.
    static func oldDelay(watching count: Int) -> Duration {
        min(max(.microseconds(2500) * count, youngDelay), .milliseconds(500))
    }

    init(listenerInodes: Set<UInt64>, sink: AsyncStream<DaemonEvent>.Continuation) throws(SystemError) {
        loop = try EventLoop()
        self.listenerInodes = listenerInodes
        self.sink = sink
    }

    /// How many workers are watched now.
    var count: Int { state.withLock { $0.watches.count } }

    /// Starts watching worker `id` (process `pid`): `.detectedReady(id)` once it accepts on a listener.
    func watch(_ id: WorkerID, pid: Int32) {
        loop.start()
        let now = ContinuousClock.now
        state.withLock { state in
            state.watches[id] = Watch(pid: pid, started: now, delay: Self.firstDelay, due: now + Self.firstDelay)
            arm(&state)
        }
    }

    /// Stops watching worker `id`; with none left, the timer too.
    func stop(_ id: WorkerID) {
        state.withLock { state in
            guard state.watches.removeValue(forKey: id) != nil else { return }
            arm(&state)
        }
    }

    /// Sets the one timer for the earliest look due (none: no timer).
    private func arm(_ state: inout State) {
        let earliest = state.watches.values.lazy.map(\.due).min()
        guard earliest != state.armedFor else { return }
        state.timer.map(loop.cancel)
        state.armedFor = earliest
        // Held strongly until it fires or is cancelled (no watch left): a weak reference's side table outlived the
        // watch at exit under LeakSanitizer when a timer was still set.
        state.timer = earliest.map { loop.schedule(at: $0) { self.sweep() } }
    }

    private func sweep() {
        let now = ContinuousClock.now
        let (due, watched) = state.withLock { state in
            state.timer = nil
            state.armedFor = nil
            return (state.watches.filter { $0.value.due <= now + $0.value.delay / 4 }, state.watches.count)
        }
        var ready: [WorkerID] = []
        var looked: [WorkerID: Watch] = [:]
        for (id, var watch) in due {
            if ListenReadiness.isAccepting(pid: watch.pid, listenerInodes: listenerInodes, previous: &watch.previous) {
                ready.append(id)
                continue
            }
            let ceiling = now - watch.started < Self.youth ? Self.youngDelay : Self.oldDelay(watching: watched)
            watch.delay = min(watch.delay * 2, ceiling)
            watch.due = now + watch.delay
            looked[id] = watch
        }
        let detected = state.withLock { state in
            // A worker stopped meanwhile is not looked at again, nor reported.
            let detected = ready.filter { state.watches.removeValue(forKey: $0) != nil }
            for (id, watch) in looked where state.watches[id] != nil { state.watches[id] = watch }
            arm(&state)
            return detected
        }
        for id in detected.sorted() { sink.yield(.detectedReady(id)) }
    }
}
