import BatonCore
import Testing

@Suite("Supervisor soak window (--min-ready)")
struct SoakTests {
    func progress(in actions: [SupervisorAction]) -> [String] {
        actions.compactMap { if case .progress(_, let text) = $0 { text } else { nil } }
    }

    /// A supervisor with `workers` serving generation 1 (soaked at start too), then reloading to generation 2.
    func reloading(workers: Int = 2, strategy: Strategy = .allAtOnce) -> Harness {
        var h = Harness(SupervisorSettings(workers: workers, strategy: strategy, minReady: .seconds(5)))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.timer(.soak(generation: 1)))
        h.send(.reloadRequested(RequesterID(1)))
        return h
    }

    @Test func theFirstGenerationIsReadyToSystemdOnlyAfterItsSoak() {
        var h = Harness(SupervisorSettings(workers: 2, minReady: .seconds(5)))
        h.send(.start)
        let workers = h.workers(generation: 1)
        h.send(.ready(workers[0].id))
        let ready = h.send(.ready(workers[1].id))
        #expect(ready.contains(.schedule(.soak(generation: 1), after: .seconds(5))))
        #expect(!ready.contains(.notifyManager(.ready)))
        #expect(h.supervisor.phase == .starting)
        #expect(h.supervisor.statusLine.contains("starting generation 1 (2/2 ready, soaking)"))
        let soaked = h.send(.timer(.soak(generation: 1)))
        #expect(soaked.contains(.notifyManager(.ready)))
        #expect(h.supervisor.phase == .running && h.supervisor.serving == 1)
    }

    @Test func aFirstGenerationThatCrashesWithinItsSoakMakesBatonGiveUp() {
        var h = Harness(SupervisorSettings(workers: 1, minReady: .seconds(5)))
        h.send(.start)
        h.readyAll(generation: 1)
        let crashed = h.send(.exited(h.workers(generation: 1)[0].id, .exited(3)))
        #expect(crashed.contains(.cancel(.soak(generation: 1))))
        #expect(crashed.contains(.exit(1)))
        #expect(!h.log.contains(.notifyManager(.ready)))
    }

    @Test func aNewGenerationSoaksBeforeTheOldOneIsRetired() {
        var h = reloading()
        let ready = h.readyAllReturningLast(generation: 2)
        #expect(ready.contains(.schedule(.soak(generation: 2), after: .seconds(5))))
        #expect(progress(in: ready).contains("generation 2 ready; soaking 5s before retiring generation 1"))
        #expect(h.logged(.generationSoaking, in: ready))
        #expect(h.stopped(in: h.log).isEmpty, "the old generation serves throughout the soak")
        #expect(h.supervisor.serving == 1)
        #expect(h.supervisor.statusLine.contains("generation 2 soaking (2/2, --min-ready 5s)"))
        let report = StatusReport(
            name: "shop",
            pid: 42,
            version: "9.9",
            listeners: [],
            supervisor: h.supervisor,
            now: h.now,
            wallClock: 1_000_000
        )
        #expect(report.generations.map(\.state) == ["serving", "soaking"])

        h.advance(.seconds(5))
        let soaked = h.send(.timer(.soak(generation: 2)))
        #expect(h.supervisor.serving == 2)
        #expect(Set(h.stopped(in: soaked)) == Set(h.workers(generation: 1).map(\.id)))
        h.exitStopped(generation: 1)
        #expect(h.finished(in: h.log).map(\.ok) == [true])
    }

    @Test func aNewWorkerThatExitsWithinTheSoakRollsTheReloadBack() {
        var h = reloading()
        h.readyAll(generation: 2)
        let old = h.workers(generation: 1).map(\.id)
        let crashed = h.workers(generation: 2)[1]
        let exit = h.send(.exited(crashed.id, .exited(3)))
        let finished = h.failureAnswer(after: exit, generation: 2)
        #expect(finished.map(\.ok) == [false])
        #expect(
            finished.first?.message.contains(
                "worker 2 (pid \(crashed.pid!)) exited with exit 3 within --min-ready 5s"
            ) == true
        )
        #expect(exit.contains(.cancel(.soak(generation: 2))))
        #expect(h.supervisor.serving == 1)
        #expect(h.workers(generation: 1).map(\.id) == old)
        #expect(h.stopped(in: h.log).allSatisfy { !old.contains($0) })
        #expect(h.supervisor.lastReload?.ok == false)

        let late = h.send(.timer(.soak(generation: 2)))
        #expect(
            h.stopped(in: late).isEmpty && h.supervisor.serving == 1,
            "a soak timer that fires late changes nothing"
        )
    }

    @Test func aCleanExitWithinTheSoakRollsBackToo() {
        var h = reloading(workers: 1)
        h.readyAll(generation: 2)
        let exit = h.send(.exited(h.workers(generation: 2)[0].id, .exited(0)))
        #expect(h.finished(in: exit).map(\.ok) == [false])
        #expect(h.supervisor.serving == 1)
    }

    @Test func aMissedWatchdogWithinTheSoakRollsBack() {
        var h = reloading(workers: 1)
        h.readyAll(generation: 2)
        let worker = h.workers(generation: 2)[0]
        h.send(.watchdogPing(worker.id, interval: .seconds(1)))
        let missed = h.send(.timer(.watchdog(worker.id)))
        #expect(h.killed(in: missed) == [worker.id])
        let exit = h.send(.exited(worker.id, .signaled("KILL")))
        let message = h.finished(in: exit).first?.message ?? ""
        #expect(h.finished(in: exit).map(\.ok) == [false])
        #expect(message.contains("stopped sending WATCHDOG=1 (interval 1s) within --min-ready 5s"))
        #expect(h.supervisor.serving == 1)
    }

    @Test func aReloadRequestedDuringTheSoakFollowsIt() {
        var h = reloading(workers: 1)
        h.readyAll(generation: 2)
        let second = h.send(.reloadRequested(RequesterID(2)))
        #expect(progress(in: second).contains("a reload is in progress; yours follows it"))
        #expect(h.spawns(in: second).isEmpty)
        h.send(.timer(.soak(generation: 2)))
        h.exitStopped(generation: 1)
        #expect(h.finished(in: h.log).map(\.ids) == [[RequesterID(1)]])
        #expect(h.workers(generation: 3).count == 1, "the follow-up reload started")
    }

    @Test func rollingSoaksEachStepBeforeRetiringThatSlotsPredecessor() {
        var h = reloading(workers: 2, strategy: .rolling)
        let old = h.workers(generation: 1)
        let first = h.workers(generation: 2)[0]
        let ready = h.send(.ready(first.id))
        #expect(
            progress(in: ready).contains("generation 2: worker 1 ready; soaking 5s before retiring its predecessor")
        )
        #expect(h.stopped(in: ready).isEmpty && h.spawns(in: ready).isEmpty)
        let step = h.send(.timer(.soak(generation: 2)))
        #expect(h.stopped(in: step) == [old[0].id])
        #expect(h.spawns(in: step).map(\.slot) == [2])

        // Slot 2's new worker soaks; slot 1's new worker crashes: slot 1 of generation 1 comes back.
        h.send(.ready(h.workers(generation: 2)[1].id))
        let crash = h.send(.exited(first.id, .exited(1)))
        #expect(h.failureAnswer(after: crash, generation: 2).first?.message.contains("within --min-ready 5s") == true)
        #expect(h.spawns(in: crash).map { [$0.generation, $0.slot] } == [[1, 1]])
        #expect(!h.stopped(in: h.log).contains(old[1].id))
        #expect(h.supervisor.serving == 1)
    }

    @Test func aStopDuringTheSoakEndsTheReloadAndTheSoakTimerChangesNothing() {
        var h = reloading(workers: 1)
        h.readyAll(generation: 2)
        let stop = h.send(.stop)
        #expect(h.finished(in: stop).map(\.ok) == [false])
        h.send(.timer(.soak(generation: 2)))
        #expect(h.supervisor.serving == 1, "nothing is promoted while baton stops")
    }

    @Test func withoutMinReadyNoSoakIsScheduled() {
        var h = Harness(SupervisorSettings(workers: 1))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reloadRequested(nil))
        h.readyAll(generation: 2)
        #expect(!h.log.contains { if case .schedule(.soak, _) = $0 { true } else { false } })
        #expect(h.supervisor.serving == 2)
    }
}

extension Harness {
    /// Makes every starting worker of `generation` ready; returns the actions of the last one.
    mutating func readyAllReturningLast(generation: Int) -> [SupervisorAction] {
        var last: [SupervisorAction] = []
        for worker in workers(generation: generation) where worker.state == .starting { last = send(.ready(worker.id)) }
        return last
    }
}

@Suite("Supervisor soak window: descendants")
struct SoakDescendantTests {
    @Test func aDescendantThatExitsAbnormallyWithinTheSoakRollsBack() {
        var h = Harness(SupervisorSettings(workers: 1, minReady: .seconds(5)))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.timer(.soak(generation: 1)))
        h.send(.descendantExited(h.workers(generation: 1)[0].id, pid: 77, .exited(5)))
        #expect(
            h.supervisor.serving == 1 && h.supervisor.phase == .running,
            "after the soak it is the worker's business"
        )

        h.send(.reloadRequested(RequesterID(1)))
        h.readyAll(generation: 2)
        let worker = h.workers(generation: 2)[0]
        let clean = h.send(.descendantExited(worker.id, pid: 78, .exited(0)))
        #expect(h.finished(in: clean).isEmpty, "a clean exit of a helper is no failure")
        let failed = h.send(.descendantExited(worker.id, pid: 79, .signaled("SEGV")))
        #expect(h.failureAnswer(after: failed, generation: 2).map(\.ok) == [false])
        #expect(
            h.failureAnswer(after: failed, generation: 2).first?.message.contains(
                "process 79 of worker 1 (pid \(worker.pid!)) exited with signal SEGV within --min-ready 5s"
            ) == true
        )
        #expect(h.stopped(in: failed) == [worker.id])
        #expect(h.supervisor.serving == 1)
    }
}
