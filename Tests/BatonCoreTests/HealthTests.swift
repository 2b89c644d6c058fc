import ArgumentParser
import BatonCommandLine
import BatonCore
import Testing

extension Harness {
    /// Runs one probe of `id` as the launcher does: the probe timer fires, the Supervisor asks for the probe, and it
    /// ends with `ok`. Returns what the result caused.
    @discardableResult
    mutating func probe(
        _ id: WorkerID,
        ok: Bool,
        _ detail: String = "probe http:/healthz got 200"
    )
        -> [SupervisorAction]
    {
        let due = send(.timer(.probe(id)))
        #expect(due.contains { if case .probe(id, _) = $0 { true } else { false } }, "a probe of \(id) runs")
        return send(.probed(id, ok: ok, detail: detail))
    }

    func probes(in actions: [SupervisorAction]) -> [WorkerID] {
        actions.compactMap { if case .probe(let id, _) = $0 { id } else { nil } }
    }

    func logMessages(_ kind: LifecycleEvent.Kind, in actions: [SupervisorAction]) -> [String] {
        actions.compactMap { if case .log(let event) = $0, event.kind == kind { event.message } else { nil } }
    }
}

@Suite("Supervisor health probes (--health)")
struct HealthTests {
    static let health = HealthSettings(probe: .http(path: "/healthz"), interval: .seconds(2), failures: 3)

    func settings(workers: Int = 1, minReady: Duration = .zero) -> SupervisorSettings {
        SupervisorSettings(workers: workers, readyTimeout: .seconds(10), minReady: minReady, health: Self.health)
    }

    /// Generation 1 serving: each worker said ready and passed a probe.
    func serving(workers: Int = 1, minReady: Duration = .zero) -> Harness {
        var h = Harness(settings(workers: workers, minReady: minReady))
        h.send(.start)
        for worker in h.workers(generation: 1) {
            h.send(.ready(worker.id))
            h.probe(worker.id, ok: true)
        }
        if minReady > .zero { h.send(.timer(.soak(generation: 1))) }
        #expect(h.supervisor.serving == 1)
        return h
    }

    @Test func aWorkerIsReadyOnlyWhenItsReadyModeSaysSoAndAProbePasses() {
        var h = Harness(settings())
        let start = h.send(.start)
        let worker = h.workers(generation: 1)[0]
        #expect(start.contains(.schedule(.probe(worker.id), after: .milliseconds(200))), "probed while starting")
        let said = h.send(.ready(worker.id))
        #expect(!said.contains(.notifyManager(.ready)))
        #expect(h.supervisor.worker(worker.id)?.state == .starting, "its word alone is not enough")
        let failed = h.probe(worker.id, ok: false, "probe http:/healthz got 503")
        #expect(failed.contains(.schedule(.probe(worker.id), after: .milliseconds(200))), "probed again soon")
        #expect(h.supervisor.worker(worker.id)?.state == .starting)
        let passed = h.probe(worker.id, ok: true)
        #expect(passed.contains(.notifyManager(.ready)))
        #expect(h.supervisor.worker(worker.id)?.state == .ready && h.supervisor.serving == 1)
    }

    @Test func aProbeThatPassesBeforeTheReadyModeSpeaksWaitsForIt() {
        var h = Harness(settings())
        h.send(.start)
        let worker = h.workers(generation: 1)[0]
        h.probe(worker.id, ok: true)
        #expect(h.supervisor.worker(worker.id)?.state == .starting)
        let ready = h.send(.ready(worker.id))
        #expect(ready.contains(.notifyManager(.ready)))
    }

    @Test func oneProbeAtATimePerWorker() {
        var h = Harness(settings())
        h.send(.start)
        let worker = h.workers(generation: 1)[0]
        let first = h.send(.timer(.probe(worker.id)))
        let again = h.send(.timer(.probe(worker.id)))
        #expect(h.probes(in: first) == [worker.id])
        #expect(h.probes(in: again).isEmpty, "the first one is still in flight")
        h.send(.probed(worker.id, ok: false, detail: "probe tcp: connection refused on health socket 127.0.0.1:1"))
        #expect(h.probes(in: h.send(.timer(.probe(worker.id)))) == [worker.id])
    }

    @Test func theReadyTimeoutSaysWhatTheLastProbeFound() {
        var h = Harness(settings())
        h.send(.start)
        let worker = h.workers(generation: 1)[0]
        h.send(.ready(worker.id))
        h.probe(worker.id, ok: false, "probe http:/healthz got 503")
        h.send(.timer(.readyTimeout(worker.id)))
        let exit = h.send(.exited(worker.id, .signaled("TERM")))
        let messages = h.logMessages(.generationFailed, in: exit)
        #expect(
            messages.contains {
                $0.contains("did not become ready within 10s: it reported ready, but probe http:/healthz got 503")
            },
            "\(messages)"
        )
    }

    @Test func aReleaseWhoseProbeFailsNeverServesAndTheReloadSaysWhy() {
        var h = serving()
        h.send(.reloadRequested(RequesterID(1)))
        let new = h.workers(generation: 2)[0]
        h.send(.ready(new.id))
        h.probe(new.id, ok: false, "connection refused on health socket 127.0.0.1:40123")
        let timeout = h.send(.timer(.readyTimeout(new.id)))
        let finished = h.failureAnswer(after: timeout, generation: 2)
        #expect(finished.map(\.ok) == [false])
        #expect(finished.first?.message.contains("connection refused on health socket 127.0.0.1:40123") == true)
        #expect(h.supervisor.serving == 1)
        #expect(h.stopped(in: h.log).allSatisfy { h.supervisor.worker($0)?.generation != 1 })
    }

    @Test func aReadyNewWorkerThatFailsAProbeBeforeItsGenerationServesRollsBack() {
        var h = serving(workers: 2)
        h.send(.reloadRequested(RequesterID(1)))
        let new = h.workers(generation: 2)
        h.send(.ready(new[0].id))
        h.probe(new[0].id, ok: true)
        let failed = h.probe(new[0].id, ok: false, "probe http:/healthz got 500")
        let finished = h.failureAnswer(after: failed, generation: 2)
        #expect(finished.map(\.ok) == [false])
        #expect(
            finished.first?.message.contains(
                "worker 1 (pid \(new[0].pid!)) failed its probe before the generation was ready: probe http:/healthz got 500"
            ) == true,
            "\(finished)"
        )
        #expect(h.supervisor.serving == 1)
    }

    @Test func aProbeThatFailsWithinTheSoakRollsTheReloadBack() {
        var h = serving(workers: 2, minReady: .seconds(5))
        h.send(.reloadRequested(RequesterID(1)))
        for worker in h.workers(generation: 2) {
            h.send(.ready(worker.id))
            h.probe(worker.id, ok: true)
        }
        #expect(h.supervisor.generations[2]?.soak != nil)
        let worker = h.workers(generation: 2)[1]
        let failed = h.probe(worker.id, ok: false, "probe http:/healthz got 503")
        #expect(failed.contains(.cancel(.soak(generation: 2))))
        let finished = h.failureAnswer(after: failed, generation: 2)
        #expect(finished.map(\.ok) == [false])
        #expect(
            finished.first?.message.contains("failed its probe within --min-ready 5s: probe http:/healthz got 503")
                == true
        )
        #expect(h.supervisor.serving == 1)
        #expect(Set(h.stopped(in: failed)) == Set(h.workers(generation: 2).map(\.id)))
    }

    @Test func aServingWorkerThatFailsItsProbesIsReplacedFirstThenRetired() throws {
        var h = serving(workers: 2)
        let sick = h.workers(generation: 1)[1]
        let passed = h.probe(sick.id, ok: true)
        #expect(passed.contains(.schedule(.probe(sick.id), after: .seconds(2))), "probed every --health-interval")
        h.probe(sick.id, ok: false, "probe http:/healthz got 503")
        h.probe(sick.id, ok: true)
        h.probe(sick.id, ok: false, "probe http:/healthz got 503")
        h.probe(sick.id, ok: false, "probe http:/healthz got 503")
        #expect(h.supervisor.worker(sick.id)?.probe.failures == 2, "a pass in between starts the count again")
        let third = h.probe(sick.id, ok: false, "probe http:/healthz got 503")
        let messages = h.logMessages(.probeFailed, in: third)
        #expect(
            messages == [
                "replacing worker 2 of generation 1 (pid \(sick.pid!)): 3 probes failed in a row: probe http:/healthz got 503"
            ]
        )
        #expect(h.stopped(in: third).isEmpty && h.killed(in: third).isEmpty, "it serves until its replacement is ready")
        #expect(third.contains(.schedule(.respawn(generation: 1, slot: 2), after: .milliseconds(100))), "backoff")
        #expect(h.supervisor.generations[1]?.streak[2] == 1, "counted by the crash-loop guard")
        let report = StatusReport(
            name: "shop",
            pid: 1,
            version: "9",
            listeners: [],
            supervisor: h.supervisor,
            now: h.now,
            wallClock: 0
        )
        let shown = report.generations[0].workers.first { $0.pid == sick.pid }
        #expect(shown?.probeFailures == 3)
        #expect(shown?.health == "replacing worker 2: 3 probes failed in a row: probe http:/healthz got 503")
        #expect(h.probes(in: h.send(.timer(.probe(sick.id)))).isEmpty, "no more probes of a worker being replaced")

        let respawn = h.send(.timer(.respawn(generation: 1, slot: 2)))
        #expect(h.spawns(in: respawn).map(\.slot) == [2])
        let replacement = try #require(h.workers(generation: 1).first { $0.slot == 2 && $0.id != sick.id })
        h.send(.ready(replacement.id))
        #expect(h.stopped(in: h.log).isEmpty, "not before the replacement passed a probe too")
        let ready = h.probe(replacement.id, ok: true)
        #expect(h.stopped(in: ready) == [sick.id], "retired gracefully: the stop signal, not SIGKILL")
        #expect(ready.contains(.schedule(.stopTimeout(sick.id), after: .seconds(30))))
        let exit = h.send(.exited(sick.id, .exited(0)))
        #expect(!h.logged(.workerCrashed, in: exit))
        #expect(
            h.spawns(in: exit).isEmpty && !exit.contains { if case .schedule(.respawn, _) = $0 { true } else { false } }
        )
        #expect(h.workers(generation: 1).map(\.state) == [.ready, .ready])
    }

    @Test func workersReplacedAgainAndAgainAreReportedAsCrashLooping() throws {
        var h = serving()
        for round in 1...5 {
            let worker = try #require(h.workers(generation: 1).last)
            for _ in 1...3 { h.probe(worker.id, ok: false, "probe tcp: connection refused on health socket x") }
            h.send(.timer(.respawn(generation: 1, slot: 1)))
            let replacement = try #require(h.workers(generation: 1).last)
            #expect(replacement.restarts == round)
            h.send(.ready(replacement.id))
            h.probe(replacement.id, ok: true)
            h.send(.exited(worker.id, .exited(0)))
        }
        #expect(h.supervisor.generations[1]?.crashLooping == true)
        #expect(h.supervisor.statusLine.contains("crash-looping"))
    }

    @Test func withoutHealthNothingIsProbed() {
        var h = Harness(SupervisorSettings(workers: 1))
        let start = h.send(.start)
        #expect(!start.contains { if case .schedule(.probe, _) = $0 { true } else { false } })
        h.readyAll(generation: 1)
        #expect(h.supervisor.serving == 1)
    }
}

@Suite("--health options")
struct HealthOptionTests {
    func parse(_ arguments: [String]) throws -> LaunchConfiguration {
        try RunOptions.parse(arguments + ["--", "app"]).configuration(ConfigurationTests.facts)
    }

    func failure(_ arguments: [String]) -> String? {
        do {
            _ = try parse(arguments)
            return nil
        } catch let error as BatonError {
            return error.message
        } catch {
            return RunOptions.message(for: error)
        }
    }

    @Test func probesAndTheirSettings() throws {
        let http = try parse(["--health", "http:/healthz?full=1"]).supervisor.health
        #expect(http == HealthSettings(probe: .http(path: "/healthz?full=1")))
        #expect(http?.interval == .seconds(2) && http?.timeout == .seconds(1) && http?.failures == 3)
        #expect(try parse(["--health", "tcp"]).supervisor.health?.probe == .tcp)
        let exec = try parse([
            "--health", "exec:curl -fs http://$BATON_HEALTH_ADDRESS/", "--health-interval", "500ms",
            "--health-timeout", "250ms", "--health-failures", "1",
        ]).supervisor.health
        #expect(
            exec
                == HealthSettings(
                    probe: .exec(command: "curl -fs http://$BATON_HEALTH_ADDRESS/"),
                    interval: .milliseconds(500),
                    timeout: .milliseconds(250),
                    failures: 1
                )
        )
        #expect(try parse([]).supervisor.health == nil)
    }

    @Test(arguments: [
        (
            ["--health", "htp:/"],
            "invalid --health 'htp:/': unknown probe kind 'htp': use http:PATH, tcp or exec:COMMAND"
        ),
        (["--health", ""], "invalid --health '': unknown probe kind '': use http:PATH, tcp or exec:COMMAND"),
        (
            ["--health", "http:healthz"],
            "invalid --health 'http:healthz': the path must start with '/', such as http:/healthz"
        ),
        (["--health", "http"], "invalid --health 'http': the path must start with '/', such as http:/healthz"),
        (
            ["--health", "http:/a b"],
            "invalid --health 'http:/a b': the path must be printable ASCII without spaces (percent-encode the rest)"
        ),
        (["--health", "tcp:80"], "invalid --health 'tcp:80': tcp takes no argument: the probe socket is baton's"),
        (
            ["--health", "exec:"],
            "invalid --health 'exec:': give a command, such as exec:'curl -fs http://$BATON_HEALTH_ADDRESS/healthz'"
        ),
        (
            ["--health", "tcp", "--health-interval", "2"],
            "invalid --health-interval '2': give a unit, such as 2s or 2ms"
        ),
        (
            ["--health", "tcp", "--health-interval", "1ms"],
            "invalid --health-interval '1ms': must be from 10ms to 60m"
        ),
        (
            ["--health", "tcp", "--health-timeout", "0"],
            "invalid --health-timeout '0': must be more than 0"
        ),
        (
            ["--health", "tcp", "--health-timeout", "11m"],
            "invalid --health-timeout '11m': must be from 10ms to 10m"
        ),
        (["--health", "tcp", "--health-failures", "0"], "invalid --health-failures 0: must be from 1 to 100"),
        (["--health", "tcp", "--health-failures", "-1"], "invalid --health-failures -1: must be from 1 to 100"),
        (["--health", "tcp", "--health-failures", "101"], "invalid --health-failures 101: must be from 1 to 100"),
        (["--health-interval", "1s"], "--health-interval needs --health: add --health http:PATH, tcp or exec:COMMAND"),
        (["--health-failures", "2"], "--health-failures needs --health: add --health http:PATH, tcp or exec:COMMAND"),
        (
            ["--health", "tcp", "--listen", "health=:8080"],
            "invalid --listen 'health=:8080': the name 'health' is the probe socket's with --health; name it otherwise"
        ),
    ])
    func badValuesGetOneLineErrors(arguments: [String], message: String) {
        let error = failure(arguments)
        #expect(error == message)
        #expect(error?.contains("\n") == false)
    }
}
