import BatonCore
import Testing

/// Drives a ``Supervisor`` the way the launcher does, with a fake clock and fake pids, and records actions.
struct Harness {
    var supervisor: Supervisor
    var now = ContinuousClock.now
    var nextPID: Int32 = 1000
    var log: [SupervisorAction] = []

    init(_ settings: SupervisorSettings) {
        supervisor = Supervisor(settings: settings)
    }

    /// Sends an event through ``EventOrder/run(_:handle:perform:)``, the launcher's event order; answers every `.spawn`
    /// with `.spawned` (a new pid), and in exec mode also with `.ready`, as the launcher does.
    @discardableResult
    mutating func send(_ event: SupervisorEvent) -> [SupervisorAction] {
        var pid = nextPID
        let readyAtExec = self.readyAtExec
        let now = self.now
        let all = EventOrder.run(
            event,
            handle: { supervisor.handle($0, now: now) },
            perform: { action in
                guard case .spawn(let id, _, _) = action else { return [] }
                pid += 1
                return readyAtExec ? [.spawned(id, pid: pid), .ready(id)] : [.spawned(id, pid: pid)]
            }
        )
        nextPID = pid
        log += all
        return all
    }

    /// Whether a spawned worker is ready at once (`--ready exec`).
    var readyAtExec = false

    mutating func advance(_ duration: Duration) { now += duration }

    func workers(generation: Int) -> [Supervisor.Worker] {
        supervisor.liveWorkers.filter { $0.generation == generation }
    }

    mutating func readyAll(generation: Int) {
        for worker in workers(generation: generation) where worker.state == .starting { send(.ready(worker.id)) }
    }

    /// ``readyAll(generation:)``, returning every action it caused.
    mutating func readyAllReturning(generation: Int) -> [SupervisorAction] {
        var all: [SupervisorAction] = []
        for worker in workers(generation: generation) where worker.state == .starting { all += send(.ready(worker.id)) }
        return all
    }

    /// The processes that were asked to stop gracefully.
    func stopped(in actions: [SupervisorAction]) -> [WorkerID] {
        actions.compactMap { if case .stop(let id, _) = $0 { id } else { nil } }
    }

    func killed(in actions: [SupervisorAction]) -> [WorkerID] {
        actions.compactMap { if case .kill(let id, _) = $0 { id } else { nil } }
    }

    func finished(in actions: [SupervisorAction]) -> [(ids: [RequesterID], ok: Bool, message: String)] {
        actions.compactMap {
            if case .reloadFinished(let ids, let ok, let message, _, _) = $0 { (ids, ok, message) } else { nil }
        }
    }

    func spawns(in actions: [SupervisorAction]) -> [(generation: Int, slot: Int)] {
        actions.compactMap { if case .spawn(_, let generation, let slot) = $0 { (generation, slot) } else { nil } }
    }

    func logged(_ kind: LifecycleEvent.Kind, in actions: [SupervisorAction]) -> Bool {
        actions.contains { if case .log(let event) = $0 { event.kind == kind } else { false } }
    }

    /// Exits every worker of `generation` that was asked to stop or kill.
    /// The answer to a failed reload, given once the failed generation's workers are gone: they exit here on a copy
    /// of the harness (this one is left as it was), and the answer is looked for in `actions` and in their exits.
    func failureAnswer(
        after actions: [SupervisorAction],
        generation: Int
    ) -> [(ids: [RequesterID], ok: Bool, message: String)] {
        var copy = self
        var all = actions
        for worker in copy.workers(generation: generation) where worker.state == .stopping {
            all += copy.send(.exited(worker.id, .signaled("TERM")))
        }
        return finished(in: all)
    }

    mutating func exitStopped(generation: Int) {
        for worker in workers(generation: generation) where worker.state == .stopping {
            send(.exited(worker.id, .signaled("TERM")))
        }
    }
}

@Suite("Supervisor lifecycle")
struct SupervisorTests {
    @Test func firstGenerationBecomesReadyWhenEveryWorkerIs() {
        var h = Harness(SupervisorSettings(workers: 3))
        let start = h.send(.start)
        #expect(h.spawns(in: start).map(\.slot) == [1, 2, 3])
        let workers = h.workers(generation: 1)
        h.send(.ready(workers[0].id))
        h.send(.ready(workers[1].id))
        #expect(h.supervisor.phase == .starting)
        let last = h.send(.ready(workers[2].id))
        #expect(h.supervisor.phase == .running)
        #expect(h.supervisor.serving == 1)
        #expect(last.contains(.notifyManager(.ready)))
    }

    @Test func reloadStartsTheNextGenerationBesideTheOldAndRetiresItWhenReady() {
        var h = Harness(SupervisorSettings(workers: 2))
        h.send(.start)
        h.readyAll(generation: 1)
        let requested = h.send(.reloadRequested(RequesterID(1)))
        #expect(requested.contains(.notifyManager(.reloading)))
        #expect(h.spawns(in: requested).map(\.generation) == [2, 2])
        #expect(h.stopped(in: requested).isEmpty, "the old generation keeps serving while the new one starts")

        let newWorkers = h.workers(generation: 2)
        h.send(.ready(newWorkers[0].id))
        let promoted = h.send(.ready(newWorkers[1].id))
        #expect(Set(h.stopped(in: promoted)) == Set(h.workers(generation: 1).map(\.id)))
        #expect(h.supervisor.serving == 2)
        // The reload finishes once the new generation serves and the old one was told to stop.
        #expect(h.finished(in: promoted).map(\.ok) == [true])
        #expect(h.finished(in: promoted).first?.ids == [RequesterID(1)])
        #expect(promoted.contains(.notifyManager(.ready)))
        #expect(h.logged(.reloadSucceeded, in: promoted))
        #expect(h.supervisor.lastReload?.ok == true)
        #expect(!h.logged(.generationRetired, in: promoted), "the old generation still drains")

        let oldWorkers = h.workers(generation: 1)
        h.send(.exited(oldWorkers[0].id, .exited(0)))
        let done = h.send(.exited(oldWorkers[1].id, .exited(0)))
        #expect(h.finished(in: done).isEmpty)
        #expect(h.logged(.generationRetired, in: done))
        #expect(h.logged(.drainFinished, in: done))
        #expect(!done.contains(.notifyManager(.ready)))
    }

    @Test func aStopTimeoutEscalatesToKillingTheProcessGroup() {
        var h = Harness(SupervisorSettings(workers: 1, stopTimeout: .seconds(5)))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reloadRequested(nil))
        h.readyAll(generation: 2)
        let old = h.workers(generation: 1)[0]
        #expect(h.log.contains(.schedule(.stopTimeout(old.id), after: .seconds(5))))
        let fired = h.send(.timer(.stopTimeout(old.id)))
        #expect(h.killed(in: fired) == [old.id])
    }

    @Test func aNewWorkerThatCrashesRollsBackAndLeavesTheOldGenerationUntouched() {
        var h = Harness(SupervisorSettings(workers: 2))
        h.send(.start)
        h.readyAll(generation: 1)
        let before = h.workers(generation: 1).map(\.id)
        h.send(.reloadRequested(RequesterID(7)))
        let newWorkers = h.workers(generation: 2)
        h.send(.ready(newWorkers[0].id))
        let crashed = h.send(.exited(newWorkers[1].id, .exited(3)))

        #expect(h.stopped(in: crashed) == [newWorkers[0].id], "the rest of the new generation is asked to stop")
        #expect(!h.killed(in: crashed).contains(newWorkers[0].id), "not SIGKILLed: it may be answering requests")
        #expect(!h.killed(in: crashed).contains { before.contains($0) }, "the old generation is not touched")
        let result = h.failureAnswer(after: crashed, generation: 2)
        #expect(result.map(\.ok) == [false])
        #expect(result.first?.message.contains("exit 3") == true)
        #expect(h.supervisor.serving == 1)
        #expect(h.workers(generation: 1).map(\.id) == before)
        #expect(h.workers(generation: 1).allSatisfy { $0.state == .ready })
        #expect(crashed.contains(.notifyManager(.ready)), "systemd hears READY=1 after a rollback too")
    }

    @Test func aMissedReadyTimeoutRollsBack() {
        var h = Harness(SupervisorSettings(workers: 1, readyTimeout: .seconds(2)))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reloadRequested(RequesterID(1)))
        let slow = h.workers(generation: 2)[0]
        let fired = h.send(.timer(.readyTimeout(slow.id)))
        #expect(h.stopped(in: fired) == [slow.id], "a worker slow to say it is ready may be accepting already")
        #expect(h.killed(in: fired).isEmpty)
        #expect(fired.contains(.schedule(.stopTimeout(slow.id), after: SupervisorSettings().stopTimeout)))
        #expect(
            h.failureAnswer(after: fired, generation: 2).first?.message.contains("did not become ready within 2s")
                == true
        )
        #expect(h.supervisor.serving == 1)
    }

    @Test func reloadsDuringAReloadCoalesceIntoOneFollowUp() {
        var h = Harness(SupervisorSettings(workers: 1))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reloadRequested(RequesterID(1)))
        var extra: [SupervisorAction] = []
        for id in 2...50 { extra += h.send(.reloadRequested(RequesterID(id))) }
        #expect(h.spawns(in: extra).isEmpty, "nothing piles up while a reload runs")

        let promoted = h.readyAllReturning(generation: 2)
        #expect(h.finished(in: promoted).map(\.ids) == [[RequesterID(1)]])
        #expect(h.spawns(in: promoted).isEmpty, "the follow-up waits for generation 1 to drain")
        let done = h.send(.exited(h.workers(generation: 1)[0].id, .exited(0)))
        #expect(h.spawns(in: done).map(\.generation) == [3], "exactly one follow-up reload starts")

        let followUp = h.readyAllReturning(generation: 3)
        #expect(h.finished(in: followUp).first?.ids == (2...50).map { RequesterID($0) })
        #expect(h.spawns(in: followUp).isEmpty)
        #expect(h.supervisor.reload == nil)
    }

    @Test func atMostOneOldGenerationDrains() {
        var h = Harness(SupervisorSettings(workers: 1))
        h.send(.start)
        h.readyAll(generation: 1)
        for _ in 1...5 {
            h.send(.reloadRequested(nil))
            if let starting = h.supervisor.orderedGenerations.last, starting.state == .starting {
                h.readyAll(generation: starting.id)
            }
            let draining = h.supervisor.orderedGenerations.filter { $0.state == .draining }
            #expect(draining.count <= 1)
        }
    }

    @Test func rollingReplacesOneWorkerAtATimeWithASurgeOfOne() {
        var h = Harness(SupervisorSettings(workers: 4, strategy: .rolling))
        h.send(.start)
        h.readyAll(generation: 1)
        let requested = h.send(.reloadRequested(RequesterID(1)))
        #expect(h.spawns(in: requested).map(\.slot) == [1])
        for slot in 1...4 {
            let new = h.workers(generation: 2).first { $0.slot == slot && $0.state == .starting }!
            let live = h.supervisor.liveWorkers.filter { $0.state != .stopping }.count
            #expect(live <= 5, "never more than N + 1 workers serve")
            let step = h.send(.ready(new.id))
            #expect(h.stopped(in: step).count == 1)
            #expect(h.workers(generation: 1).first { $0.id == h.stopped(in: step)[0] }?.slot == slot)
            if slot < 4 { #expect(h.spawns(in: step).map(\.slot) == [slot + 1]) }
        }
        #expect(h.supervisor.serving == 2)
        h.exitStopped(generation: 1)
        #expect(h.supervisor.lastReload?.ok == true)
    }

    @Test func aFailedRollingReloadRestoresTheRetiredSlots() {
        var h = Harness(SupervisorSettings(workers: 3, strategy: .rolling))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reloadRequested(RequesterID(1)))
        h.send(.ready(h.workers(generation: 2)[0].id))  // slot 1 replaced, old slot 1 retiring
        let second = h.workers(generation: 2).first { $0.slot == 2 }!
        let failed = h.send(.exited(second.id, .exited(1)))
        #expect(h.failureAnswer(after: failed, generation: 2).map(\.ok) == [false])
        #expect(h.spawns(in: failed).map { "\($0.generation).\($0.slot)" } == ["1.1"])
        #expect(h.supervisor.serving == 1)
    }

    @Test func aCrashedServingWorkerIsRespawnedWithExponentialBackoff() {
        let backoff = Backoff(initial: .milliseconds(100), maximum: .milliseconds(800), stablePeriod: .seconds(30))
        var h = Harness(SupervisorSettings(workers: 2, backoff: backoff, crashLoopThreshold: 3, giveUpThreshold: 100))
        h.send(.start)
        h.readyAll(generation: 1)
        var delays: [Duration] = []
        for _ in 1...6 {
            let worker = h.workers(generation: 1).first { $0.slot == 1 }!
            let crashed = h.send(.exited(worker.id, .signaled("SEGV")))
            for case .schedule(.respawn(1, 1), let delay) in crashed { delays.append(delay) }
            h.send(.timer(.respawn(generation: 1, slot: 1)))
            h.readyAll(generation: 1)
        }
        #expect(delays == [100, 200, 400, 800, 800, 800].map { Duration.milliseconds($0) })
        #expect(h.supervisor.generations[1]?.crashLooping == true)
        #expect(h.log.contains { if case .log(let e) = $0 { e.kind == .crashLoop } else { false } })

        // A worker that stayed up for the stable period resets the streak.
        h.advance(.seconds(31))
        let worker = h.workers(generation: 1).first { $0.slot == 1 }!
        let crashed = h.send(.exited(worker.id, .exited(1)))
        #expect(crashed.contains(.schedule(.respawn(generation: 1, slot: 1), after: .milliseconds(100))))
    }

    @Test func whenNoGenerationCanServeBatonExitsNonZero() {
        var h = Harness(SupervisorSettings(workers: 1, giveUpThreshold: 3))
        h.send(.start)
        h.readyAll(generation: 1)
        var last: [SupervisorAction] = []
        for _ in 1...3 {
            let worker = h.workers(generation: 1)[0]
            last = h.send(.exited(worker.id, .exited(1)))
            h.send(.timer(.respawn(generation: 1, slot: 1)))
        }
        #expect(last.contains(.exit(1)))
    }

    @Test func anExplanationGoesIntoTheFailureAtExitAndAtTheReadyTimeout() {
        let why = "the app bound 127.0.0.1:8000 itself (EADDRINUSE): use LISTEN_FDS, or see --no-adopt-bind"
        var h = Harness(SupervisorSettings(workers: 1, readyTimeout: .seconds(2)))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reloadRequested(RequesterID(1)))
        let exiting = h.workers(generation: 2)[0]
        h.send(.explained(exiting.id, why))
        let exited = h.send(.exited(exiting.id, .exited(1)))
        #expect(
            h.finished(in: exited).first?.message.contains("exited with exit 1: " + why) == true,
            "\(h.finished(in: exited))"
        )

        h.send(.reloadRequested(RequesterID(2)))
        let hanging = h.workers(generation: 3)[0]
        h.send(.explained(hanging.id, why))
        let fired = h.send(.timer(.readyTimeout(hanging.id)))
        #expect(
            h.failureAnswer(after: fired, generation: 3).first?.message.contains(
                "did not become ready within 2s: " + why
            ) == true
        )
        // Said once, not again when the killed worker's exit comes in.
        let gone = h.send(.exited(hanging.id, .signaled("KILL")))
        let lines = gone.compactMap { if case .log(let event) = $0 { event.message } else { nil } }
        #expect(lines.allSatisfy { $0.ranges(of: why).count <= 1 }, "\(lines)")
        #expect(h.supervisor.serving == 1)

        var first = Harness(SupervisorSettings(workers: 1))
        first.send(.start)
        let worker = first.workers(generation: 1)[0]
        first.send(.explained(worker.id, why))
        let failed = first.send(.exited(worker.id, .exited(1)))
        #expect(failed.contains(.exit(1)))
        #expect(
            failed.contains {
                if case .log(let event) = $0 {
                    event.kind == .generationFailed && event.message.contains(why)
                } else {
                    false
                }
            }
        )
    }

    @Test func aFirstGenerationThatCannotStartMakesBatonExitNonZero() {
        var h = Harness(SupervisorSettings(workers: 2))
        h.send(.start)
        let worker = h.workers(generation: 1)[0]
        let other = h.workers(generation: 1)[1]
        h.send(.ready(other.id))
        let actions = h.send(.exited(worker.id, .exited(127)))
        #expect(h.stopped(in: actions) == [other.id], "the ready worker of the failed generation drains first")
        #expect(!h.killed(in: actions).contains(other.id))
        #expect(!actions.contains(.exit(1)), "baton exits once its workers are gone")
        #expect(h.supervisor.phase == .stopping)
        let gone = h.send(.exited(other.id, .signaled("TERM")))
        #expect(gone.contains(.exit(1)))
    }

    @Test func aRollbackStopsTheNewWorkersGracefullyAndKillsOnlyAfterTheStopTimeout() {
        var h = Harness(SupervisorSettings(workers: 3, stopTimeout: .seconds(7)))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reloadRequested(RequesterID(1)))
        let new = h.workers(generation: 2)
        h.send(.ready(new[0].id))
        let crashed = h.send(.exited(new[2].id, .exited(1)))
        #expect(Set(h.stopped(in: crashed)) == [new[0].id, new[1].id], "ready or starting, each gets the stop signal")
        #expect(h.killed(in: crashed).isEmpty, "nothing is SIGKILLed at once")
        #expect(
            crashed.contains { if case .stopGroup(new[2].id, _) = $0 { true } else { false } },
            "what the crashed worker left in its group is asked to stop"
        )
        #expect(crashed.contains(.schedule(.stopTimeout(new[0].id), after: .seconds(7))))
        #expect(crashed.contains(.schedule(.stopTimeout(new[1].id), after: .seconds(7))))
        #expect(h.supervisor.lastReload?.ok == false, "the reload has failed at once")
        #expect(h.logged(.reloadFailed, in: crashed))
        #expect(crashed.contains(.notifyManager(.ready)))
        #expect(
            h.finished(in: crashed).isEmpty,
            "its requester hears it once generation 2 is gone: a worker told to stop may still accept a connection"
        )
        #expect(h.supervisor.statusLine.contains("generation 2 failed, stopping (2)"))
        // One drains and exits; the other ignores the signal and is killed when its stop timeout fires.
        #expect(h.finished(in: h.send(.exited(new[0].id, .exited(0)))).isEmpty)
        let fired = h.send(.timer(.stopTimeout(new[1].id)))
        #expect(h.killed(in: fired) == [new[1].id])
        let gone = h.send(.exited(new[1].id, .signaled("KILL")))
        #expect(h.finished(in: gone).map(\.ids) == [[RequesterID(1)]])
        #expect(h.finished(in: gone).first?.message.contains("generation 1 keeps serving") == true)
        #expect(h.supervisor.generations[2] == nil, "the failed generation is gone once its workers are")
        #expect(h.supervisor.serving == 1)
        #expect(h.workers(generation: 1).count == 3 && h.workers(generation: 1).allSatisfy { $0.state == .ready })
    }

    /// Generation 1 of 2 workers serves; a reload by `requester` fails when new worker 2 exits with 1 while new
    /// worker 1 (ready) is still stopping.
    private func failedWhileAWorkerStops(
        requester: RequesterID
    ) -> (h: Harness, new: [Supervisor.Worker], crashed: [SupervisorAction]) {
        var h = Harness(SupervisorSettings(workers: 2))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reloadRequested(requester))
        let new = h.workers(generation: 2)
        h.send(.ready(new[0].id))
        let crashed = h.send(.exited(new[1].id, .exited(1)))
        return (h, new, crashed)
    }

    @Test func aFailedReloadStillWaitingForItsGenerationIsAnsweredOnceWhenBatonStops() {
        var (h, new, crashed) = failedWhileAWorkerStops(requester: RequesterID(4))
        #expect(h.finished(in: crashed).isEmpty)
        let stop = h.send(.stop)
        let answer = h.finished(in: stop)
        #expect(answer.map(\.ids) == [[RequesterID(4)]])
        #expect(answer.map(\.ok) == [false])
        #expect(answer.first?.message.contains("worker 2 (pid \(new[1].pid!)) exited with exit 1") == true)
        var later: [SupervisorAction] = []
        for worker in h.supervisor.liveWorkers { later += h.send(.exited(worker.id, .signaled("TERM"))) }
        #expect(h.finished(in: later).isEmpty, "answered once")
        #expect(later.contains(.exit(0)))
    }

    @Test func aReloadRequestedWhileAFailedGenerationStopsStartsAtOnce() {
        var (h, new, _) = failedWhileAWorkerStops(requester: RequesterID(1))
        let again = h.send(.reloadRequested(RequesterID(2)))
        #expect(h.spawns(in: again).map(\.generation) == [3, 3])
        let promoted = h.readyAllReturning(generation: 3)
        #expect(h.finished(in: promoted).map(\.ids) == [[RequesterID(2)]])
        let gone = h.send(.exited(new[0].id, .signaled("TERM")))
        #expect(h.finished(in: gone).map(\.ids) == [[RequesterID(1)]])
        #expect(h.finished(in: gone).map(\.ok) == [false])
    }

    @Test func aFailedRollingReloadStopsTheNewReadyWorkerGracefully() {
        var h = Harness(SupervisorSettings(workers: 2, strategy: .rolling))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reloadRequested(nil))
        let first = h.workers(generation: 2)[0]
        h.send(.ready(first.id))
        let second = h.workers(generation: 2).first { $0.slot == 2 }!
        let crashed = h.send(.exited(second.id, .exited(1)))
        #expect(h.stopped(in: crashed) == [first.id])
        #expect(!h.killed(in: crashed).contains(first.id))
        #expect(h.spawns(in: crashed).map(\.generation) == [1], "the retired slot of generation 1 comes back")
    }

    @Test func aWorkerThatMissesItsReadyTimeoutAtStartGetsTheStopSignalFirst() {
        var h = Harness(SupervisorSettings(workers: 2, readyTimeout: .seconds(2)))
        h.send(.start)
        let slow = h.workers(generation: 1)[0]
        h.send(.ready(h.workers(generation: 1)[1].id))
        let fired = h.send(.timer(.readyTimeout(slow.id)))
        #expect(h.stopped(in: fired) == [slow.id])
        #expect(h.killed(in: fired).isEmpty)
    }

    @Test func stopRetiresEveryGenerationGracefullyThenExitsZero() {
        var h = Harness(SupervisorSettings(workers: 2))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reloadRequested(RequesterID(1)))
        let stop = h.send(.stop)
        #expect(stop.contains(.notifyManager(.stopping)))
        #expect(h.stopped(in: stop).count == 4)
        #expect(h.finished(in: stop).map(\.ok) == [false], "a waiting reload hears that baton is stopping")
        var exited: [SupervisorAction] = []
        for worker in h.supervisor.liveWorkers { exited = h.send(.exited(worker.id, .exited(0))) }
        #expect(exited.contains(.exit(0)))
        #expect(h.supervisor.phase == .exited)
    }

    @Test func anExecModeWorkerLeavesNoReadyTimerBehind() {
        var h = Harness(SupervisorSettings(workers: 2))
        h.readyAtExec = true
        let start = h.send(.start)
        // Each worker's ready timer is scheduled with its spawn and cancelled by its readiness, in that order.
        for worker in h.workers(generation: 1) {
            let schedule = start.firstIndex(of: .schedule(.readyTimeout(worker.id), after: .seconds(30)))
            let cancel = start.lastIndex(of: .cancel(.readyTimeout(worker.id)))
            #expect(schedule != nil && cancel != nil && schedule! < cancel!)
        }
        #expect(start.contains(.notifyManager(.ready)))
        #expect(h.supervisor.phase == .running)
    }

    @Test func aSecondStopKillsAtOnce() {
        var h = Harness(SupervisorSettings(workers: 2))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.stop)
        let force = h.send(.stop)
        #expect(h.killed(in: force).count == 2)
        #expect(force.contains(.exit(0)))
    }

    @Test func aWorkerThatStopsPingingItsWatchdogIsReplaced() {
        var h = Harness(SupervisorSettings(workers: 1))
        h.send(.start)
        h.readyAll(generation: 1)
        let worker = h.workers(generation: 1)[0]
        let ping = h.send(.watchdogPing(worker.id, interval: .seconds(2)))
        #expect(ping.contains(.schedule(.watchdog(worker.id), after: .seconds(2))))
        let missed = h.send(.timer(.watchdog(worker.id)))
        #expect(h.logged(.watchdogMissed, in: missed))
        #expect(h.killed(in: missed) == [worker.id])
        let gone = h.send(.exited(worker.id, .signaled("KILL")))
        #expect(gone.contains { if case .schedule(.respawn(1, 1), _) = $0 { true } else { false } })
    }

    @Test func statusLineNamesServingDrainingAndTheLastReload() {
        var h = Harness(SupervisorSettings(workers: 2))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reloadRequested(nil))
        h.advance(.milliseconds(840))
        h.readyAll(generation: 2)
        #expect(
            h.supervisor.statusLine
                == "serving generation 2 (2 workers) · generation 1 draining: 2 workers, 30s left · last reload ok in 840ms"
        )
        h.exitStopped(generation: 1)
        #expect(h.supervisor.statusLine == "serving generation 2 (2 workers) · last reload ok in 840ms")
    }

    @Test func reloadWhileStoppingFails() {
        var h = Harness(SupervisorSettings(workers: 1))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.stop)
        let actions = h.send(.reloadRequested(RequesterID(3)))
        #expect(h.finished(in: actions).map(\.ok) == [false])
    }
}

@Suite("leftovers of a worker")
struct LeftoversTests {
    @Test func aHelperInTheWorkersGroupIsAskedFirstAndKilledOnlyAfterTheStopTimeout() {
        var leftovers = Leftovers()
        let start = ContinuousClock.now
        func judge(_ now: ContinuousClock.Instant) -> Leftovers.Verdict {
            leftovers.judge(
                pid: 501,
                generation: 1,
                slot: 1,
                workerPID: 500,
                processGroup: 500,
                owner: nil,
                now: now,
                stopTimeout: .seconds(2)
            )
        }
        #expect(
            judge(start)
                == .stop("stopping pid 501, left in the process group of worker 1 of generation 1 after it exited")
        )
        #expect(leftovers.nextDeadline == start + .seconds(2))
        #expect(judge(start + .seconds(1)) == .keep)
        guard case .kill(let message) = judge(start + .seconds(2)) else {
            Issue.record("not killed after the stop timeout")
            return
        }
        #expect(message.contains("did not stop within 2s"))
        leftovers.retain([])
        #expect(leftovers.nextDeadline == nil)
    }

    @Test func aDaemonThatLeftTheGroupIsKilledAtOnceAndALiveWorkersHelperIsKept() {
        var leftovers = Leftovers()
        let now = ContinuousClock.now
        let daemon = leftovers.judge(
            pid: 601,
            generation: 2,
            slot: 1,
            workerPID: 600,
            processGroup: 601,
            owner: nil,
            now: now,
            stopTimeout: .seconds(2)
        )
        #expect(daemon == .kill("stopping pid 601, left behind by worker 1 of generation 2 outside its process group"))
        // A double fork's grandchild: its group is led by the first fork, reaped along with the worker.
        let grandchild = leftovers.judge(
            pid: 603,
            generation: 2,
            slot: 1,
            workerPID: 600,
            processGroup: 602,
            owner: nil,
            now: now,
            stopTimeout: .seconds(2)
        )
        #expect(
            grandchild == .kill("stopping pid 603, left behind by worker 1 of generation 2 outside its process group")
        )
        let kept = leftovers.judge(
            pid: 701,
            generation: 3,
            slot: 1,
            workerPID: 700,
            processGroup: 700,
            owner: 700,
            now: now,
            stopTimeout: .seconds(2)
        )
        #expect(kept == .keep)
    }
}
