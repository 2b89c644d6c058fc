internal import CBatonSystem
internal import Glibc

/// The event loop as a Swift executor, and its timers.
///
/// An actor whose `unownedExecutor` is the loop's (the launcher) runs on the loop's thread, between the handlers of
/// the fds it watches, and so does a task started with the loop as its executor preference: nothing of baton's
/// runs on Swift concurrency's global pool, whose libdispatch threads keep a timer that wakes the process every
/// second once they have run anything. An enqueued job wakes the loop through its eventfd (not when it is enqueued
/// on the loop's own thread, which runs every queued job before it waits again).
///
/// Timers share one timerfd, armed for the earliest deadline and disarmed when there is none: a timer costs no
/// wakeup before it is due, and nothing wakes the loop while no timer is set.
extension EventLoop: SerialExecutor, TaskExecutor {
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let first = jobs.withLock { queue in
            queue.append(job)
            return queue.count == 1
        }
        guard first, !isLoopThread else { return }
        start()
        var one: UInt64 = 1
        _ = Glibc.write(wake, &one, 8)
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    /// Whether the caller runs on the loop's thread.
    public var isLoopThread: Bool {
        thread.withLock { $0.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
    }

    /// Runs every queued job, and those they enqueue, until none is left.
    func runJobs() {
        while true {
            let batch = jobs.withLock { queue in
                let taken = queue
                queue.removeAll(keepingCapacity: true)
                return taken
            }
            if batch.isEmpty { return }
            for job in batch {
                job.runSynchronously(isolatedTo: asUnownedSerialExecutor(), taskExecutor: asUnownedTaskExecutor())
            }
        }
    }

    /// A scheduled timer, to cancel it.
    public struct Timer: Hashable, Sendable {
        let id: Int
    }

    /// Calls `handler` on the loop's thread at `deadline` (and then every `repeating`, if given), until cancelled.
    ///
    /// The corresponding C function is `timerfd_settime`.
    @discardableResult
    public func schedule(
        at deadline: ContinuousClock.Instant,
        repeating period: Duration? = nil,
        _ handler: @escaping Handler
    ) -> Timer {
        timers.withLock { timers in
            timers.next += 1
            timers.entries[timers.next] = LoopTimers.Entry(deadline: deadline, period: period, handler: handler)
            timers.deadlines[timers.next] = deadline
            rearm(&timers)
            return Timer(id: timers.next)
        }
    }

    /// Calls `handler` on the loop's thread after `delay` (and then every `repeating`, if given), until cancelled.
    @discardableResult
    public func schedule(
        after delay: Duration,
        repeating period: Duration? = nil,
        _ handler: @escaping Handler
    ) -> Timer {
        schedule(at: .now + delay, repeating: period, handler)
    }

    /// Cancels `timer`: its handler is not called from here on (also when it is due in the batch that runs now).
    public func cancel(_ timer: Timer) {
        timers.withLock { timers in
            guard timers.entries.removeValue(forKey: timer.id) != nil else { return }
            timers.deadlines[timer.id] = nil
            rearm(&timers)
        }
    }

    /// How many timers are set (for the tests: none while baton is idle).
    public var scheduledTimers: Int { timers.withLock { $0.entries.count } }

    /// Runs the handlers of the timers that are due, then arms the timerfd for the next one.
    func fireTimers() {
        var count: UInt64 = 0
        _ = Glibc.read(timer, &count, 8)
        let now = ContinuousClock.now
        let due = timers.withLock { timers in
            timers.armed = nil
            return timers.deadlines.filter { $0.value <= now }.sorted { $0.value < $1.value }.map(\.key)
        }
        for id in due {
            // Each looked up again: an earlier handler may have cancelled it.
            let handler = timers.withLock { timers -> Handler? in
                guard var entry = timers.entries[id] else { return nil }
                if let period = entry.period {
                    entry.deadline = max(entry.deadline + period, now)
                    timers.entries[id] = entry
                    timers.deadlines[id] = entry.deadline
                } else {
                    timers.entries[id] = nil
                    timers.deadlines[id] = nil
                }
                return entry.handler
            }
            handler?()
        }
        timers.withLock { rearm(&$0) }
    }

    /// Arms the timerfd for the earliest deadline, or disarms it; only when that changed.
    private func rearm(_ timers: inout LoopTimers) {
        let earliest = timers.deadlines.values.min()
        guard earliest != timers.armed else { return }
        timers.armed = earliest
        var spec = itimerspec()
        if let earliest {
            // Relative to now, at least a nanosecond (zero would disarm it).
            let (seconds, attoseconds) = max(earliest - .now, .nanoseconds(1)).components
            spec.it_value = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        }
        _ = timerfd_settime(timer, 0, &spec, nil)
    }
}

/// The timers of one event loop.
struct LoopTimers: Sendable {
    struct Entry: Sendable {
        var deadline: ContinuousClock.Instant
        var period: Duration?
        var handler: EventLoop.Handler
    }

    var entries: [Int: Entry] = [:]
    /// Each entry's deadline, apart: what the earliest is found from.
    var deadlines: [Int: ContinuousClock.Instant] = [:]
    var next = 0
    /// The deadline the timerfd is armed for (nil: disarmed).
    var armed: ContinuousClock.Instant?
}
