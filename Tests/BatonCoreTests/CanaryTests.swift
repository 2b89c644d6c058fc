import ArgumentParser
import BatonCommandLine
import BatonCore
import Testing

@Suite("Supervisor canary reloads (--canary)")
struct CanaryTests {
    func progress(in actions: [SupervisorAction]) -> [String] {
        actions.compactMap { if case .progress(_, let text) = $0 { text } else { nil } }
    }

    func logs(_ kind: LifecycleEvent.Kind, in actions: [SupervisorAction]) -> [LifecycleEvent] {
        actions.compactMap { if case .log(let event) = $0, event.kind == kind { event } else { nil } }
    }

    /// A supervisor serving generation 1, then reloading to generation 2 with a 5 s canary.
    func reloading(
        workers: Int = 3,
        strategy: Strategy = .allAtOnce,
        minReady: Duration = .zero,
        options: ReloadOptions = ReloadOptions(canary: .seconds(5))
    ) -> (Harness, [SupervisorAction]) {
        var h = Harness(SupervisorSettings(workers: workers, strategy: strategy, minReady: minReady))
        h.send(.start)
        h.readyAll(generation: 1)
        if minReady > .zero { h.send(.timer(.soak(generation: 1))) }
        let requested = h.send(.reloadRequested(RequesterID(1), options))
        return (h, requested)
    }

    @Test func aCanaryThatStaysUpLetsTheRestStartAndTheReloadSucceed() {
        var (h, requested) = reloading()
        #expect(h.spawns(in: requested).map { [$0.generation, $0.slot] } == [[2, 1]], "one canary starts alone")
        #expect(progress(in: requested).contains("starting generation 2 (3 worker(s), all-at-once); canary 5s first"))
        let canary = h.workers(generation: 2)[0]
        #expect(h.supervisor.trialState(2) == "canary")
        #expect(h.supervisor.statusLine.contains("generation 2 canary (starting, --canary 5s)"))

        let ready = h.send(.ready(canary.id))
        #expect(ready.contains(.schedule(.canary(generation: 2), after: .seconds(5))))
        #expect(
            progress(in: ready).contains(
                "generation 2: canary worker 1 (pid \(canary.pid!)) ready; serving beside generation 1 for 5s"
            )
        )
        #expect(logs(.canaryStarted, in: ready).count == 1)
        #expect(h.spawns(in: ready).isEmpty && h.stopped(in: h.log).isEmpty, "the old generation serves on")
        #expect(h.supervisor.serving == 1)
        #expect(h.supervisor.statusLine.contains("generation 2 canary (serving, --canary 5s)"))
        let report = StatusReport(
            name: "shop",
            pid: 1,
            version: "9",
            listeners: [],
            supervisor: h.supervisor,
            now: h.now,
            wallClock: 1_000_000
        )
        #expect(report.generations.map(\.state) == ["serving", "canary"])

        h.advance(.seconds(5))
        let passed = h.send(.timer(.canary(generation: 2)))
        #expect(logs(.canaryPassed, in: passed).count == 1)
        #expect(h.spawns(in: passed).map(\.slot) == [2, 3])
        #expect(h.stopped(in: passed).isEmpty)
        #expect(h.supervisor.trialState(2) == nil)
        h.readyAll(generation: 2)
        #expect(h.supervisor.serving == 2)
        #expect(Set(h.stopped(in: h.log)) == Set(h.workers(generation: 1).map(\.id)))
        h.exitStopped(generation: 1)
        #expect(h.finished(in: h.log).map(\.ok) == [true])
        #expect(h.workers(generation: 2).count == 3)
    }

    @Test func aCanaryThatExitsWithinItsWindowRollsBackAndTheOldGenerationIsUntouched() {
        var (h, _) = reloading()
        let old = h.workers(generation: 1).map(\.id)
        let canary = h.workers(generation: 2)[0]
        h.send(.ready(canary.id))
        h.advance(.milliseconds(800))
        let crashed = h.send(.exited(canary.id, .exited(1)))
        let finished = h.finished(in: crashed)
        #expect(finished.map(\.ok) == [false])
        #expect(
            finished.first?.message
                == "reload to generation 2 failed: canary worker 1 (pid \(canary.pid!)) exited with exit 1 after 800ms of its 5s canary window; generation 1 keeps serving"
        )
        #expect(crashed.contains(.cancel(.canary(generation: 2))))
        #expect(logs(.canaryFailed, in: crashed).count == 1)
        #expect(h.supervisor.serving == 1 && h.workers(generation: 1).map(\.id) == old)
        #expect(h.stopped(in: h.log).isEmpty && h.killed(in: h.log).isEmpty)
        #expect(h.supervisor.trialState(2) == nil)

        let late = h.send(.timer(.canary(generation: 2)))
        #expect(h.spawns(in: late).isEmpty && h.supervisor.serving == 1, "a canary timer that fires late does nothing")
    }

    @Test func aCanaryThatFailsBeforeItIsReadyRollsBack() {
        var (h, _) = reloading()
        let canary = h.workers(generation: 2)[0]
        let crashed = h.send(.exited(canary.id, .exited(2)))
        #expect(
            h.finished(in: crashed).first?.message.contains(
                "canary worker 1 (pid \(canary.pid!)) exited with exit 2 before it was ready"
            ) == true
        )
        #expect(logs(.canaryFailed, in: crashed).count == 1)
        #expect(!crashed.contains(.schedule(.canary(generation: 2), after: .seconds(5))))
    }

    @Test func aCanaryThatMissesItsWatchdogRollsBack() {
        var (h, _) = reloading(workers: 2)
        let canary = h.workers(generation: 2)[0]
        h.send(.ready(canary.id))
        h.send(.watchdogPing(canary.id, interval: .seconds(1)))
        h.advance(.seconds(1))
        let missed = h.send(.timer(.watchdog(canary.id)))
        #expect(h.killed(in: missed) == [canary.id])
        let exit = h.send(.exited(canary.id, .signaled("KILL")))
        let message = h.finished(in: exit).first?.message ?? ""
        #expect(
            message.contains(
                "canary worker 1 (pid \(canary.pid!)) stopped sending WATCHDOG=1 (interval 1s) after 1s of its 5s canary window"
            ),
            "\(message)"
        )
        #expect(h.supervisor.serving == 1)
    }

    @Test func aProcessOfTheCanaryThatFailsRollsBack() {
        var (h, _) = reloading(workers: 2)
        let canary = h.workers(generation: 2)[0]
        h.send(.ready(canary.id))
        #expect(h.finished(in: h.send(.descendantExited(canary.id, pid: 78, .exited(0)))).isEmpty)
        h.advance(.seconds(2))
        let failed = h.send(.descendantExited(canary.id, pid: 79, .signaled("SEGV")))
        #expect(
            h.failureAnswer(after: failed, generation: 2).first?.message.contains(
                "process 79 of canary worker 1 (pid \(canary.pid!)) exited with signal SEGV after 2s of its 5s canary window"
            ) == true
        )
        #expect(h.stopped(in: failed) == [canary.id], "the canary is stopped gracefully")
    }

    @Test func rollingTheCanaryCountsAsSlotOne() {
        var (h, requested) = reloading(workers: 2, strategy: .rolling)
        #expect(h.spawns(in: requested).map(\.slot) == [1])
        let old = h.workers(generation: 1)
        let canary = h.workers(generation: 2)[0]
        let ready = h.send(.ready(canary.id))
        #expect(h.stopped(in: ready).isEmpty && h.spawns(in: ready).isEmpty, "the canary's window comes first")
        let passed = h.send(.timer(.canary(generation: 2)))
        #expect(h.stopped(in: passed) == [old[0].id], "slot 1's predecessor retires")
        #expect(h.spawns(in: passed).map(\.slot) == [2])
        h.send(.ready(h.workers(generation: 2)[1].id))
        #expect(h.supervisor.serving == 2)
        #expect(Set(h.stopped(in: h.log)) == Set(old.map(\.id)))
    }

    @Test func oneWorkerWithASoakWindowSoaksAfterItsCanary() {
        var (h, _) = reloading(workers: 1, minReady: .seconds(3))
        h.readyAll(generation: 2)
        let passed = h.send(.timer(.canary(generation: 2)))
        #expect(passed.contains(.schedule(.soak(generation: 2), after: .seconds(3))))
        h.send(.timer(.soak(generation: 2)))
        #expect(h.supervisor.serving == 2)
    }

    @Test func theLaunchersCanaryIsEveryReloadsDefaultAndZeroTurnsItOff() {
        var settings = SupervisorSettings(workers: 2)
        settings.canary = .seconds(10)
        var h = Harness(settings)
        h.send(.start)
        h.readyAll(generation: 1)
        #expect(h.supervisor.trialState(1) == nil, "the first generation has no canary: nothing serves beside it")
        let plain = h.send(.reloadRequested(nil))
        #expect(h.spawns(in: plain).count == 1)
        h.readyAll(generation: 2)
        #expect(h.log.contains(.schedule(.canary(generation: 2), after: .seconds(10))))
        h.send(.timer(.canary(generation: 2)))
        h.readyAll(generation: 2)
        h.exitStopped(generation: 1)
        let off = h.send(.reloadRequested(RequesterID(2), ReloadOptions(canary: .zero)))
        #expect(h.spawns(in: off).count == 2, "--canary 0 for this reload: no canary")
    }

    @Test func aReloadWithOptionsDoesNotQueueBehindAnother() {
        var (h, _) = reloading()
        let second = h.send(.reloadRequested(RequesterID(2), ReloadOptions(hold: true)))
        #expect(h.finished(in: second).map(\.ok) == [false])
        #expect(h.finished(in: second).first?.message.contains("does not queue behind it") == true)
        let plain = h.send(.reloadRequested(RequesterID(3)))
        #expect(progress(in: plain).contains("a reload is in progress; yours follows it"))
    }
}

@Suite("Supervisor held reloads (--hold, promote, rollback)")
struct HoldTests {
    func holding(workers: Int = 2, strategy: Strategy = .allAtOnce) -> (Harness, [SupervisorAction]) {
        var h = Harness(SupervisorSettings(workers: workers, strategy: strategy))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reloadRequested(RequesterID(1), ReloadOptions(hold: true)))
        let ready = h.readyAllReturningLast(generation: 2)
        return (h, ready)
    }

    @Test func aHeldGenerationServesBesideTheOldOneAndTheReloadReturns() {
        let (h, ready) = holding()
        let finished = h.finished(in: ready)
        #expect(finished.map(\.ok) == [true] && finished.first?.ids == [RequesterID(1)])
        #expect(
            finished.first?.message
                == "generation 2 serving beside generation 1; run 'baton promote' or 'baton rollback'"
        )
        #expect(h.stopped(in: h.log).isEmpty, "the old generation serves on")
        #expect(ready.contains(.notifyManager(.ready)))
        #expect(h.logged(.generationHeld, in: ready))
        #expect(h.supervisor.serving == 1)
        #expect(
            h.supervisor.statusLine.contains("serving generation 1 (2 workers) · generation 2 held beside generation 1")
        )
        let report = StatusReport(
            name: "shop",
            pid: 1,
            version: "9",
            listeners: [],
            supervisor: h.supervisor,
            now: h.now,
            wallClock: 1_000_000
        )
        #expect(report.generations.map(\.state) == ["serving", "held"])
        #expect(!report.reloading)
        #expect(StatusFormatter.text(report, now: 1_000_000).contains("generation 2  held beside generation 1"))
        #expect(!h.supervisor.isQuiet, "no re-execution while a generation is held")
    }

    @Test func anotherReloadIsRefusedWhileHeld() {
        var (h, _) = holding()
        for requester in [RequesterID(2), nil] {
            let refused = h.send(.reloadRequested(requester))
            #expect(h.spawns(in: refused).isEmpty)
            if requester != nil {
                #expect(
                    h.finished(in: refused).first?.message
                        == "generation 2 is held: promote or roll back first ('baton promote' or 'baton rollback')"
                )
            }
        }
        #expect(h.supervisor.trialState(2) == "held")
    }

    @Test func promoteRetiresTheOldGenerationAndFinishesTheReload() {
        var (h, _) = holding()
        let old = h.workers(generation: 1).map(\.id)
        let promoted = h.send(.promoteRequested(RequesterID(7)))
        #expect(Set(h.stopped(in: promoted)) == Set(old))
        #expect(promoted.contains(.notifyManager(.reloading)))
        #expect(h.supervisor.serving == 2)
        // Like any reload, the promotion finishes once the new generation serves and the old one was told to stop.
        let finished = h.finished(in: promoted)
        #expect(finished.map(\.ok) == [true] && finished.first?.ids == [RequesterID(7)])
        #expect(finished.first?.message.hasPrefix("generation 2 serving; reload took") == true)
        #expect(h.supervisor.reload == nil && h.supervisor.lastReload?.ok == true)
        h.exitStopped(generation: 1)
        #expect(h.supervisor.generations[1] == nil, "the old generation drained and is gone")
        #expect(h.finished(in: h.send(.promoteRequested(RequesterID(8)))).map(\.ok) == [false], "nothing held now")
    }

    @Test func rollbackRetiresTheHeldGenerationAndAnswersOnceItIsGone() {
        var (h, _) = holding()
        let old = h.workers(generation: 1).map(\.id)
        let new = h.workers(generation: 2).map(\.id)
        let rolled = h.send(.rollbackRequested(RequesterID(7)))
        #expect(Set(h.stopped(in: rolled)) == Set(new), "the held workers get the stop signal, not SIGKILL")
        #expect(h.killed(in: rolled).isEmpty)
        #expect(h.finished(in: rolled).allSatisfy { $0.ids.isEmpty }, "the requester waits for the held workers")
        h.exitStopped(generation: 2)
        let answer = h.finished(in: h.log).filter { $0.ids == [RequesterID(7)] }
        #expect(answer.map(\.ok) == [true])
        #expect(answer.first?.message == "generation 2 rolled back; generation 1 keeps serving")
        #expect(h.supervisor.serving == 1 && h.workers(generation: 1).map(\.id) == old)
        #expect(h.supervisor.generations[2] == nil && h.supervisor.reload == nil)
        #expect(h.supervisor.lastReload?.ok == false)
        let next = h.send(.reloadRequested(RequesterID(8)))
        #expect(h.spawns(in: next).count == 2, "reloads work again")
    }

    @Test func promoteOrRollbackWithNothingHeldIsAnError() {
        var h = Harness(SupervisorSettings(workers: 1))
        h.send(.start)
        h.readyAll(generation: 1)
        for event in [SupervisorEvent.promoteRequested(RequesterID(1)), .rollbackRequested(RequesterID(2))] {
            let answer = h.finished(in: h.send(event))
            #expect(answer.map(\.ok) == [false])
            #expect(
                answer.first?.message
                    == "no generation is held: 'baton promote' and 'baton rollback' follow 'baton reload --hold'"
            )
        }
        h.send(.reloadRequested(RequesterID(3), ReloadOptions(hold: true)))
        let early = h.finished(in: h.send(.promoteRequested(RequesterID(4))))
        #expect(early.first?.message.contains("the reload to generation 2 is in progress") == true)
        #expect(h.stopped(in: h.log).isEmpty)
    }

    @Test func aSecondPromoteWhileTheOldGenerationDrainsSaysSo() {
        var (h, _) = holding()
        h.send(.promoteRequested(RequesterID(7)))
        let second = h.finished(in: h.send(.promoteRequested(RequesterID(8))))
        #expect(second.map(\.ok) == [false])
        #expect(second.first?.message.contains("no generation is held") == true, "the promotion is done")
        let rollback = h.finished(in: h.send(.rollbackRequested(RequesterID(9))))
        #expect(rollback.map(\.ok) == [false] && h.supervisor.serving == 2, "too late to roll back")
    }

    /// Decided: a held generation is still on trial, like a canary or a soak: a worker of it that exits rolls it back
    /// (no respawn, no crash loop that could end in giving up on both generations).
    @Test func aHeldWorkerThatCrashesRollsTheHeldGenerationBack() {
        var (h, _) = holding()
        let old = h.workers(generation: 1).map(\.id)
        let crashed = h.workers(generation: 2)[1]
        let exit = h.send(.exited(crashed.id, .exited(1)))
        #expect(h.spawns(in: exit).isEmpty, "no respawn")
        #expect(h.stopped(in: exit) == [h.workers(generation: 2)[0].id])
        #expect(
            h.supervisor.lastReload?.reason
                == "worker 2 (pid \(crashed.pid!)) exited with exit 1 while generation 2 was held beside generation 1"
        )
        #expect(h.supervisor.serving == 1 && h.workers(generation: 1).map(\.id) == old)
        #expect(h.finished(in: h.send(.promoteRequested(RequesterID(5)))).map(\.ok) == [false])
    }

    @Test func rollingWithHoldStartsTheWholeGenerationAndRetiresNothing() {
        var h = Harness(SupervisorSettings(workers: 3, strategy: .rolling))
        h.send(.start)
        h.readyAll(generation: 1)
        let requested = h.send(.reloadRequested(RequesterID(1), ReloadOptions(hold: true)))
        #expect(h.spawns(in: requested).count == 3)
        h.readyAll(generation: 2)
        #expect(h.stopped(in: h.log).isEmpty && h.supervisor.trialState(2) == "held")
    }

    @Test func aCanaryThenHold() {
        var h = Harness(SupervisorSettings(workers: 2, strategy: .rolling))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reloadRequested(RequesterID(1), ReloadOptions(canary: .seconds(2), hold: true)))
        h.readyAll(generation: 2)
        let passed = h.send(.timer(.canary(generation: 2)))
        #expect(h.spawns(in: passed).map(\.slot) == [2] && h.stopped(in: passed).isEmpty)
        h.readyAll(generation: 2)
        #expect(h.supervisor.trialState(2) == "held" && h.stopped(in: h.log).isEmpty)
    }

    @Test func aStopWhileHeldStopsBothGenerations() {
        var (h, _) = holding()
        let stop = h.send(.stop)
        #expect(h.stopped(in: stop).count == 4)
        for worker in h.supervisor.liveWorkers { h.send(.exited(worker.id, .signaled("TERM"))) }
        #expect(h.log.contains(.exit(0)))
    }
}

@Suite("canary and hold options")
struct CanaryOptionTests {
    @Test func runsCanaryIsEveryReloadsDefault() throws {
        let parse = { (arguments: [String]) throws in
            try RunOptions.parse(arguments + ["--", "app"]).configuration(ConfigurationTests.facts)
        }
        #expect(try parse([]).supervisor.canary == .zero)
        #expect(try parse(["--canary", "5s"]).supervisor.canary == .seconds(5))
        #expect(try parse(["--canary=0"]).supervisor.canary == .zero)
        #expect(throws: BatonError.self) { try parse(["--canary", "5"]) }
    }

    @Test(
        arguments: [
            ("5", "invalid --canary '5': give a unit, such as 5s or 5ms"),
            (
                "-1s",
                "invalid --canary '-1s': a number with a unit (ms, s, m or h), at most 365 days, such as 5s, or 0 for no canary"
            ),
            (
                "9000h",
                "invalid --canary '9000h': a number with a unit (ms, s, m or h), at most 365 days, such as 5s, or 0 for no canary"
            ),
            (
                "",
                "invalid --canary '': a number with a unit (ms, s, m or h), at most 365 days, such as 5s, or 0 for no canary"
            ),
        ]
    )
    func badCanaryValuesAreOneLineErrors(text: String, message: String) {
        #expect(throws: BatonError.self) { try CanaryOption.parse(text) }
        do {
            _ = try CanaryOption.parse(text)
        } catch {
            #expect(error.message == message)
        }
    }

    @Test func reloadsOptionsBecomeTheRequest() throws {
        #expect(try ReloadCommandOptions.parse([]).request() == ControlProtocol.Request(command: .reload))
        #expect(
            try ReloadCommandOptions.parse(["--canary", "1.5s", "--hold"]).request()
                == ControlProtocol.Request(command: .reload, canaryMilliseconds: 1500, hold: true)
        )
        #expect(
            try ControlProtocol.Request(command: .reload, canaryMilliseconds: 0).reloadOptions()
                == ReloadOptions(canary: .zero)
        )
    }

    @Test func theLauncherRangeChecksWhatAClientSends() throws {
        let line = Array(#"{"command":"reload","canaryMilliseconds":-1,"hold":true}"#.utf8)
        let request = try ControlProtocol.decodeRequest(line)
        #expect(request.hold == true)
        do {
            _ = try request.reloadOptions()
            Issue.record("a negative canary was accepted")
        } catch {
            #expect(error.message.hasPrefix("invalid canaryMilliseconds -1: give 0 (no canary) to"))
        }
        #expect(try ControlProtocol.decodeRequest(Array(#"{"command":"promote"}"#.utf8)).command == .promote)
        #expect(try ControlProtocol.decodeRequest(Array(#"{"command":"rollback"}"#.utf8)).command == .rollback)
    }
}

@Suite("Supervisor canary reloads with health probes")
struct CanaryProbeTests {
    static let health = HealthSettings(probe: .http(path: "/healthz"), interval: .seconds(2), failures: 3)

    /// Generation 1 serving (its workers' probes passed), then a reload to generation 2 with a 5 s canary.
    func reloading() -> (Harness, Supervisor.Worker) {
        var h = Harness(SupervisorSettings(workers: 2, readyTimeout: .seconds(10), health: Self.health))
        h.send(.start)
        for worker in h.workers(generation: 1) {
            h.send(.ready(worker.id))
            h.probe(worker.id, ok: true)
        }
        #expect(h.supervisor.serving == 1)
        h.send(.reloadRequested(RequesterID(1), ReloadOptions(canary: .seconds(5))))
        let canary = h.workers(generation: 2)[0]
        h.send(.ready(canary.id))
        h.probe(canary.id, ok: true)
        #expect(h.supervisor.trialState(2) == "canary")
        return (h, canary)
    }

    @Test func aCanaryWhoseProbeFailsInItsWindowRollsTheReloadBack() {
        var (h, canary) = reloading()
        let failed = h.probe(canary.id, ok: false, "probe http:/healthz got 503")
        let finished = h.failureAnswer(after: failed, generation: 2).filter { !$0.ok }.map(\.message)
        #expect(
            finished.first?.contains(
                "worker 1 (pid \(canary.pid!)) failed its probe in its canary window: probe http:/healthz got 503"
            )
                == true,
            "\(finished)"
        )
        #expect(h.stopped(in: failed).contains(canary.id), "the canary is stopped")
        #expect(h.supervisor.serving == 1, "generation 1 serves on")
        #expect(h.workers(generation: 2).count == 1, "the rest of generation 2 never started")
    }

    @Test func aCanaryWhoseProbesPassLetsTheReloadGoOn() {
        var (h, canary) = reloading()
        h.probe(canary.id, ok: true)
        let passed = h.send(.timer(.canary(generation: 2)))
        #expect(h.spawns(in: passed).map { [$0.generation, $0.slot] } == [[2, 2]], "the rest of generation 2 starts")
        let rest = h.workers(generation: 2)[1]
        h.send(.ready(rest.id))
        let done = h.probe(rest.id, ok: true)
        #expect(done.contains { if case .reloadFinished(_, true, _, _, _) = $0 { true } else { false } }, "\(done)")
        #expect(h.supervisor.serving == 2)
    }
}
