import BatonCore
import Testing

/// A reload that returns when the new generation serves, drain progress, one draining generation at a time, and the
/// reload history (issue 15, points 2 to 4).
@Suite("Supervisor drains")
struct DrainTests {
    /// Generation 1 ready, then a reload to generation 2 with `request`, promoted: generation 1 drains.
    static func draining(
        workers: Int = 2,
        stopTimeout: Duration = .seconds(30),
        _ request: ReloadRequest = ReloadRequest(RequesterID(1))
    ) -> (Harness, promoted: [SupervisorAction]) {
        var h = Harness(SupervisorSettings(workers: workers, stopTimeout: stopTimeout))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reload(request))
        let promoted = h.readyAllReturning(generation: 2)
        return (h, promoted)
    }

    func events(_ kind: LifecycleEvent.Kind, in actions: [SupervisorAction]) -> [LifecycleEvent] {
        actions.compactMap { if case .log(let event) = $0, event.kind == kind { event } else { nil } }
    }

    func progress(in actions: [SupervisorAction]) -> [String] {
        actions.compactMap { if case .progress(_, let text) = $0 { text } else { nil } }
    }

    @Test func theReloadFinishesOnceTheNewGenerationServesAndTheOldOneWasToldToStop() {
        let (h, promoted) = Self.draining()
        let old = h.workers(generation: 1)
        #expect(Set(h.stopped(in: promoted)) == Set(old.map(\.id)))
        #expect(h.finished(in: promoted).map(\.ok) == [true])
        #expect(promoted.contains(.reloadOutcome([RequesterID(1)], generation: 2, reason: nil)))
        // In that order: told to stop, then the answer, then READY=1.
        let stop = promoted.firstIndex { if case .stop = $0 { true } else { false } }!
        let answer = promoted.firstIndex { if case .reloadFinished = $0 { true } else { false } }!
        let ready = promoted.firstIndex(of: .notifyManager(.ready))!
        #expect(stop < answer && answer < ready)
        #expect(h.supervisor.reload == nil)
        #expect(
            h.supervisor.draining(now: h.now) == [
                DrainProgress(generation: 1, workers: 2, connections: nil, secondsLeft: 30)
            ]
        )
    }

    @Test func drainProgressCountsConnectionsAndTheTimeLeft() {
        var (h, _) = Self.draining()
        let old = h.workers(generation: 1)
        h.advance(.seconds(6))
        h.send(.connections([old[0].id: 7, old[1].id: 5]))
        #expect(h.supervisor.statusLine.contains("generation 1 draining: 12 connections, 24s left"))
        let report = StatusReport(
            name: "shop",
            pid: 1,
            version: "0",
            listeners: [],
            supervisor: h.supervisor,
            now: h.now,
            wallClock: 1000
        )
        #expect(report.generations.first?.connections == 12)
        #expect(report.generations.first?.drainSecondsLeft == 24)
        #expect(report.connectionsByGeneration == [1: 12])
        #expect(report.draining.map(\.description) == ["generation 1 draining: 12 connections, 24s left"])
        #expect(report.generations.last?.connections == nil, "the serving generation does not drain")
    }

    @Test func aDrainThatEndsByItselfIsOneJournalEventWithZeroKilled() {
        var (h, _) = Self.draining()
        let old = h.workers(generation: 1)
        h.send(.connections([old[0].id: 3, old[1].id: 0]))
        h.advance(.seconds(2))
        h.send(.exited(old[0].id, .exited(0)))
        let done = h.send(.exited(old[1].id, .exited(0)))
        let drained = events(.drainFinished, in: done)
        #expect(drained.count == 1)
        #expect(drained.first?.connections == 0)
        #expect(drained.first?.duration == .seconds(2))
        #expect(drained.first?.generation == 1)
        #expect(drained.first?.message.hasSuffix("(0 killed; 3 open when told to stop)") == true)
        #expect(events(.drainFinished, in: h.log).count == 1, "one event per drain")
    }

    @Test func theStopTimeoutKillsWithTheConnectionsLastCounted() {
        var (h, _) = Self.draining(workers: 1, stopTimeout: .seconds(5))
        let old = h.workers(generation: 1)[0]
        h.send(.connections([old.id: 4]))
        h.advance(.seconds(5))
        let fired = h.send(.timer(.stopTimeout(old.id)))
        #expect(h.killed(in: fired) == [old.id])
        let done = h.send(.exited(old.id, .signaled("KILL")))
        let drained = events(.drainFinished, in: done)
        #expect(drained.first?.connections == 4)
        #expect(
            drained.first?.message.contains("1 worker(s) killed at the stop timeout with 4 connection(s) still open")
                == true
        )
    }

    @Test func waitDrainedAnswersOnlyOnceTheOldGenerationIsGone() {
        var (h, promoted) = Self.draining(workers: 2, ReloadRequest(RequesterID(1), waitDrained: true))
        #expect(
            h.finished(in: promoted).flatMap(\.ids).isEmpty,
            "--wait-drained: not answered while generation 1 drains"
        )
        #expect(h.logged(.reloadSucceeded, in: promoted), "the reload itself finished")
        #expect(promoted.contains(.notifyManager(.ready)))
        let old = h.workers(generation: 1)
        let first = h.send(.exited(old[0].id, .exited(0)))
        #expect(h.finished(in: first).isEmpty)
        let done = h.send(.exited(old[1].id, .exited(0)))
        #expect(h.finished(in: done).map(\.ids) == [[RequesterID(1)]])
        #expect(h.finished(in: done).first?.ok == true)
        #expect(h.finished(in: done).first?.message.contains("generation 1 drained in") == true)
        #expect(done.contains(.reloadOutcome([RequesterID(1)], generation: 2, reason: nil)))
    }

    @Test func coalescedRequestersAreAnsweredEachTheirWay() {
        var h = Harness(SupervisorSettings(workers: 1))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reload(ReloadRequest(RequesterID(1))))
        h.send(.reload(ReloadRequest(RequesterID(2), waitDrained: true)))
        h.send(.reload(ReloadRequest(RequesterID(3))))
        // 2 and 3 follow; 1's reload promotes generation 2.
        h.readyAll(generation: 2)
        h.send(.exited(h.workers(generation: 1)[0].id, .exited(0)))
        let promoted = h.readyAllReturning(generation: 3)
        #expect(h.finished(in: promoted).map(\.ids) == [[RequesterID(3)]])
        let done = h.send(.exited(h.workers(generation: 2)[0].id, .exited(0)))
        #expect(h.finished(in: done).map(\.ids) == [[RequesterID(2)]])
    }

    @Test func aReloadWhileAGenerationDrainsWaitsForItAndSaysSo() {
        var (h, _) = Self.draining()
        let old = h.workers(generation: 1)
        h.send(.connections([old[0].id: 10, old[1].id: 2]))
        h.advance(.seconds(6))
        let asked = h.send(.reload(ReloadRequest(RequesterID(2))))
        #expect(h.spawns(in: asked).isEmpty, "at most one generation drains")
        #expect(progress(in: asked) == ["waiting for generation 1 to finish draining (12 connections, 24s left)"])
        #expect(!asked.contains(.notifyManager(.reloading)))
        #expect(h.supervisor.followUp == [RequesterID(2)])
        h.send(.exited(old[0].id, .exited(0)))
        let done = h.send(.exited(old[1].id, .exited(0)))
        #expect(h.spawns(in: done).map(\.generation) == [3, 3])
        #expect(done.contains(.notifyManager(.reloading)))
        let promoted = h.readyAllReturning(generation: 3)
        #expect(h.finished(in: promoted).map(\.ids) == [[RequesterID(2)]])
    }

    @Test func cutDrainKillsWhatIsLeftAndTheReloadProceeds() {
        var (h, _) = Self.draining()
        let old = h.workers(generation: 1)
        h.send(.connections([old[0].id: 3, old[1].id: 1]))
        let waiting = h.send(.reload(ReloadRequest(RequesterID(2))))
        #expect(h.spawns(in: waiting).isEmpty)
        let cut = h.send(.reload(ReloadRequest(RequesterID(3), cutDrain: true)))
        #expect(Set(h.killed(in: cut)) == Set(old.map(\.id)), "SIGKILL: the stop signal was sent at promotion")
        #expect(h.spawns(in: cut).map(\.generation) == [3, 3], "the waiting and the cutting reload start as one")
        for worker in old { h.send(.exited(worker.id, .signaled("KILL"))) }
        let drained = events(.drainFinished, in: h.log)
        #expect(drained.count == 1)
        #expect(drained.first?.connections == 4)
        #expect(drained.first?.reason?.contains("--cut-drain") == true)
        let promoted = h.readyAllReturning(generation: 3)
        #expect(h.finished(in: promoted).map(\.ids) == [[RequesterID(2), RequesterID(3)]])
    }

    @Test func aStopAnswersThoseWaitingForTheDrain() {
        var (h, _) = Self.draining(workers: 1, ReloadRequest(RequesterID(1), waitDrained: true))
        let stop = h.send(.stop)
        #expect(h.finished(in: stop).map(\.ok) == [true], "the reload itself succeeded")
        #expect(h.finished(in: stop).first?.ids == [RequesterID(1)])
    }

    @Test func theHistoryKeepsTheLastTwentyReloadsNewestFirst() {
        var h = Harness(SupervisorSettings(workers: 1))
        h.send(.start)
        h.readyAll(generation: 1)
        for round in 1...21 {
            h.send(.reloadRequested(nil))
            h.advance(.milliseconds(round))
            h.readyAll(generation: round + 1)
            h.exitStopped(generation: round)
        }
        // A failed one on top.
        h.send(.reloadRequested(nil))
        h.send(.exited(h.workers(generation: 23)[0].id, .exited(3)))
        #expect(h.supervisor.history.count == ReloadHistory.limit)
        #expect(h.supervisor.history.map(\.generation) == Array((4...23).reversed()))
        #expect(h.supervisor.history.first?.ok == false)
        #expect(h.supervisor.history.first?.reason?.contains("exited with exit 3") == true)
        #expect(h.supervisor.history[1].duration == .milliseconds(21))
        let report = StatusReport(
            name: "shop",
            pid: 1,
            version: "0",
            listeners: [],
            supervisor: h.supervisor,
            now: h.now,
            wallClock: 1000
        )
        #expect(report.reloads?.count == 20)
        #expect(report.reloads?.first == report.lastReload)
        let second = report.reloads![1]
        #expect(abs(second.finishedAt - second.startedAt! - 0.021) < 0.0001)
        let text = StatusFormatter.text(report, now: 1000)
        #expect(text.contains("recent reloads (newest first, 20 kept):"))
        #expect(text.contains("  generation 22  ok  21ms"))
    }
}
