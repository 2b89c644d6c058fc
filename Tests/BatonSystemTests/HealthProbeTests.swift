import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Health probes (`--health`, issue 12 point 2) with real processes: each worker's own probe socket, http, tcp and
/// exec probes passing and failing, releases whose probes fail, and a worker replaced for failing its probes after
/// promotion. The reload cases run under load (the Node example app with the chaos fixture's behaviours) and assert 0
/// failed requests.
@Suite("health probes", .serialized, .timeLimit(.minutes(10)))
struct HealthProbeTests {
    typealias Rig = ChaosTests.Rig

    func report(_ name: String, _ summary: [String: Any]) {
        let count = { (key: String) in summary[key] as? Int ?? 0 }
        print("health \(name): \(count("requests")) requests, \(count("failed")) failed (non2xx \(count("non2xx")))")
    }

    func status(_ baton: BatonRun) throws -> [String: Any] {
        let text = baton.client(["status", "--json"]).stdout
        return try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    func servingWorkers(_ report: [String: Any]) -> [[String: Any]] {
        (report["generations"] as? [[String: Any]] ?? []).filter { $0["state"] as? String == "serving" }
            .flatMap { $0["workers"] as? [[String: Any]] ?? [] }
    }

    func servingGeneration(_ report: [String: Any]) -> [Int] {
        (report["generations"] as? [[String: Any]] ?? []).filter { $0["state"] as? String == "serving" }
            .compactMap { $0["id"] as? Int }
    }

    /// Each worker gets a socket of its own, after the shared ones: named health, its address in BATON_HEALTH_ADDRESS,
    /// and BATON_NOTIFY_FD after it.
    @Test func eachWorkerHasAProbeSocketOfItsOwn() throws {
        let (_, reports, baton) = try launchWorker(
            ["--workers", "2", "--ready", "fd", "--health", "tcp"],
            environment: ["READY_MODE": "fd"]
        )
        #expect(baton.stderr.waitFor("generation 1 ready (2 worker(s))") != nil, "\(baton.diagnosis())")
        let workers = WorkerReport.all(in: reports)
        try #require(workers.count == 2)
        var addresses: Set<String> = []
        for worker in workers {
            #expect(worker.env["LISTEN_FDS"] == "2")
            #expect(worker.env["LISTEN_FDNAMES"] == "listen0:health")
            #expect(worker.env["BATON_NOTIFY_FD"] == "5")
            #expect(Set(worker.fds.keys) == ["0", "1", "2", "3", "4", "5"], "no other fd of baton's: \(worker.fds)")
            #expect(worker.fds["4"]?.hasPrefix("socket:") == true && worker.fds["4"] != worker.fds["3"])
            #expect(worker.fds["5"]?.hasPrefix("pipe:") == true)
            let address = try #require(worker.env["BATON_HEALTH_ADDRESS"])
            #expect(address.hasPrefix("127.0.0.1:"))
            addresses.insert(address)
            // The probe socket answers there, and it is that worker's: its answer names its pid.
            let port = try #require(Int(address.split(separator: ":").last ?? ""))
            let answer = try HTTP.get(host: "127.0.0.1", port: port, "/healthz")
            #expect(answer.status == 200 && answer.body.contains("pid \(worker.pid)"), "\(answer.body)")
        }
        #expect(addresses.count == 2, "one socket per worker")
        #expect(baton.stop() == 0)
    }

    /// Probes every 10 ms leave nothing behind: baton holds as many fds after 200 probes as after 20 (give or take
    /// the probes in flight).
    @Test func probesLeaveNoDescriptorBehind() throws {
        let (_, _, baton) = try launchWorker([
            "--workers", "2", "--health", "http:/healthz?sleep=0", "--health-interval", "10ms",
        ])
        // worker.py prints each request with sleep= in it: one line per probe.
        func probes(_ count: Int, after start: Int) -> Int? {
            var line = start
            for _ in 0..<count {
                guard let found = baton.stdout.waitFor("handling /healthz?sleep=0", after: line) else { return nil }
                line = found + 1
            }
            return line
        }
        let early = try #require(probes(20, after: 0), "\(baton.diagnosis())")
        let before = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(baton.pid)/fd").count
        _ = try #require(probes(180, after: early), "\(baton.diagnosis())")
        let after = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(baton.pid)/fd").count
        // At most one probe per worker is in flight, each with a socket and a timerfd: 4 fds come and go.
        #expect(abs(after - before) <= 4, "fds of baton after 20 probes: \(before), after 200: \(after)")
        #expect(baton.stop() == 0)
    }

    /// After a re-execution in place (SIGUSR2) the adopted workers are still probed, through the probe sockets the
    /// previous binary handed over: one that starts failing is replaced.
    @Test func probesGoOnAcrossAReexecution() throws {
        let (scratch, _, baton) = try launchWorker(
            ["--workers", "2", "--health", "http:/healthz", "--health-interval", "200ms"],
            behaviour: "health-trigger"
        )
        #expect(baton.stderr.waitFor("generation 1 ready (2 worker(s))") != nil, "\(baton.diagnosis())")
        baton.signal(SIGUSR2)
        #expect(baton.stderr.waitFor("still serving generation 1") != nil, "\(baton.diagnosis())")
        let text = baton.client(["status", "--json"]).stdout
        let report = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let sick = try #require(servingWorkers(report).first { $0["slot"] as? Int == 2 }?["pid"] as? Int)
        scratch.write("behaviour.unhealthy", "\(sick)")
        #expect(
            baton.stderr.waitFor("replacing worker 2 of generation 1 (pid \(sick)): 3 probes failed in a row") != nil,
            "\(baton.diagnosis())"
        )
        #expect(baton.stderr.waitFor("worker 2 of generation 1 (pid \(sick)) replaced by pid") != nil)
        #expect(waitForExit(Int32(sick)))
        #expect(baton.stop() == 0)
    }

    /// A release whose probe socket answers 503: its workers say they are ready, the probe says otherwise, the reload
    /// fails with the probe's result at the ready timeout and generation 1 serves throughout.
    @Test func aReleaseWhoseProbeFailsIsNeverPromotedUnderLoad() throws {
        let rig = try Rig(workers: 2, extra: ["--health", "http:/healthz"], readyTimeout: "3s")
        rig.behave("health-503")
        let failed = rig.baton.client(["reload"])
        #expect(failed.status == 1)
        #expect(
            failed.stderr.contains(
                "did not become ready within 3s: it reported ready, but probe http:/healthz got 503"
            ),
            "\(failed.stderr)"
        )
        #expect(failed.stderr.contains("generation 1 keeps serving"), "\(failed.stderr)")
        #expect(servingGeneration(try status(rig.baton)) == [1])
        rig.behave("ok")
        let fixed = rig.baton.client(["reload"])
        #expect(fixed.status == 0, "\(fixed.stderr)")
        let summary = try rig.finish()
        report("release whose probe answers 503", summary)
        #expect(ChaosTests.count(summary, "failed") == 0)
        rig.stop()
    }

    /// Within the soak window (--min-ready), one failed probe rolls the reload back: the release passed its first
    /// probes and became ready, then its probe socket answers 503.
    @Test func aProbeThatFailsWithinTheSoakWindowRollsTheReloadBackUnderLoad() throws {
        let rig = try Rig(
            workers: 2,
            extra: ["--health", "http:/healthz", "--health-interval", "300ms", "--min-ready", "4s"]
        )
        rig.behave("health-503-later")
        let failed = rig.baton.client(["reload"])
        #expect(failed.status == 1)
        #expect(failed.stdout.contains("soaking 4s before retiring generation 1"), "\(failed.stdout)")
        #expect(
            failed.stderr.contains("failed its probe within --min-ready 4s: probe http:/healthz got 503"),
            "\(failed.stderr)"
        )
        #expect(failed.stderr.contains("generation 1 keeps serving"), "\(failed.stderr)")
        #expect(servingGeneration(try status(rig.baton)) == [1])
        let summary = try rig.finish()
        report("probe failing within --min-ready", summary)
        #expect(ChaosTests.count(summary, "failed") == 0)
        rig.stop()
    }

    /// After promotion, one worker starts failing its probe: it is reported, replaced by a new worker first, then
    /// retired with the stop signal; the service answers every request meanwhile.
    @Test func aWorkerThatFailsItsProbesAfterPromotionIsReplacedUnderLoad() throws {
        let rig = try Rig(
            workers: 2,
            extra: ["--health", "http:/healthz", "--health-interval", "400ms", "--health-failures", "3"]
        )
        rig.behave("health-trigger")
        let reload = rig.baton.client(["reload"])
        #expect(reload.status == 0, "\(reload.stderr)")
        let before = servingWorkers(try status(rig.baton))
        let sick = try #require(before.first { $0["slot"] as? Int == 1 }?["pid"] as? Int)
        let lines = rig.baton.stderr.all.count
        rig.scratch.write("behaviour.unhealthy", "\(sick)")

        let first = rig.baton.stderr.waitFor(
            "worker 1 (pid \(sick)) of generation 2 failed a probe (1 of 3 in a row): probe http:/healthz got 503",
            after: lines
        )
        #expect(first != nil, "\(rig.baton.diagnosis())")
        let shown = rig.baton.client(["status"]).stdout
        #expect(
            shown.contains("probe(s) failed in a row: probe http:/healthz got 503")
                || shown.contains("replacing worker 1: 3 probes failed in a row"),
            "\(shown)"
        )
        #expect(
            rig.baton.stderr.waitFor(
                "replacing worker 1 of generation 2 (pid \(sick)): 3 probes failed in a row: probe http:/healthz got 503",
                after: lines
            ) != nil
        )
        let replaced = rig.baton.stderr.waitFor("worker 1 of generation 2 (pid \(sick)) replaced by pid", after: lines)
        #expect(replaced != nil, "\(rig.baton.diagnosis())")
        #expect(waitForExit(Int32(sick)), "the unhealthy worker retires")
        #expect(
            rig.baton.stderr.waitFor("worker 1 of generation 2 (pid \(sick)) exited with exit 0", after: lines) != nil
        )
        let after = servingWorkers(try status(rig.baton))
        let slot1 = try #require(after.first { $0["slot"] as? Int == 1 })
        #expect(slot1["pid"] as? Int != sick && slot1["restarts"] as? Int == 1, "\(after)")
        #expect(after.count == 2)
        let summary = try rig.finish()
        report("worker failing its probe after promotion", summary)
        #expect(ChaosTests.count(summary, "failed") == 0)
        rig.stop()
    }

    /// tcp: a worker that accepts on its probe socket passes; one whose app serves only the shared socket fails
    /// (connected, never accepted), and so does http there (no answer).
    @Test(arguments: [
        ("tcp", "probe tcp: the worker did not accept a connection on health socket 127.0.0.1:"),
        ("http:/", "no answer within 1s on health socket 127.0.0.1:"),
    ])
    func anAppThatDoesNotServeItsProbeSocketFailsItsProbeUnderLoad(probe: String, failure: String) throws {
        let rig = try Rig(workers: 2, extra: ["--health", probe])
        rig.behave("health-unserved")
        let failed = rig.baton.client(["reload"])
        #expect(failed.status == 1)
        #expect(failed.stderr.contains(failure), "\(failed.stderr)")
        #expect(failed.stderr.contains("generation 1 keeps serving"), "\(failed.stderr)")
        rig.behave("ok")
        #expect(rig.baton.client(["reload"]).status == 0)
        let summary = try rig.finish()
        report("app not serving its probe socket (\(probe))", summary)
        #expect(ChaosTests.count(summary, "failed") == 0)
        rig.stop()
    }

    /// exec: the command sees the worker's pid, its generation and its probe socket's address; exit 0 passes, any
    /// other status fails the release with the command's last line.
    @Test func execProbesSeeTheirWorkerAndFailAReleaseUnderLoad() throws {
        let scratch = Scratch()
        let log = scratch.file("probes.log")
        let command =
            "exec:echo \"$BATON_WORKER_PID $BATON_GENERATION $BATON_HEALTH_ADDRESS\" >> \(log); curl -fsS -o /dev/null http://$BATON_HEALTH_ADDRESS/ && { test $BATON_GENERATION = 1 || test ! -e $BEHAVIOUR_FILE.refuse; } || { echo 'the release says no (test)'; exit 7; }"
        let rig = try Rig(workers: 2, extra: ["--health", command, "--health-interval", "300ms"])
        let workers = servingWorkers(try status(rig.baton)).compactMap { $0["pid"] as? Int }
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        for pid in workers {
            let seen = lines.filter { $0.hasPrefix("\(pid) 1 127.0.0.1:") }
            #expect(!seen.isEmpty, "worker \(pid) probed with its pid, generation and address: \(lines)")
            let address = try #require(seen.first?.split(separator: " ").last)
            let environ = try #require(FileManager.default.contents(atPath: "/proc/\(pid)/environ"))
            #expect(
                [UInt8](environ).split(separator: 0).contains {
                    Array($0) == Array("BATON_HEALTH_ADDRESS=\(address)".utf8)
                },
                "the probe used the worker's own socket"
            )
        }
        rig.scratch.write("behaviour.refuse", "")
        let failed = rig.baton.client(["reload"])
        #expect(failed.status == 1)
        #expect(failed.stderr.contains("failed with exit 7: the release says no (test)"), "\(failed.stderr)")
        #expect(failed.stderr.contains("generation 1 keeps serving"), "\(failed.stderr)")
        let summary = try rig.finish()
        report("exec probe failing a release", summary)
        #expect(ChaosTests.count(summary, "failed") == 0)
        rig.stop()
    }

    /// An exec probe that outlives --health-timeout is killed, and counts as failed.
    @Test func anExecProbeIsKilledAtItsTimeout() throws {
        let scratch = Scratch()
        let pids = scratch.file("pids")
        let (_, _, baton) = try launchWorker([
            "--ready-timeout", "2s", "--health", "exec:echo $$ >> \(pids); exec sleep 30", "--health-timeout", "300ms",
        ])
        #expect(baton.wait(timeout: 30) == 1, "the first generation cannot start: baton gives up")
        _ = baton.stderr.waitClosed(timeout: 10)
        #expect(baton.stderr.text.contains("did not finish within 300ms (killed)"), "\(baton.stderr.text)")
        let started = try String(contentsOfFile: pids, encoding: .utf8).split(separator: "\n").compactMap { Int32($0) }
        #expect(!started.isEmpty)
        for pid in started { #expect(waitForExit(pid, timeout: 5), "probe \(pid) was killed") }
    }

    /// Issue 12's gunicorn case caught by a probe alone (no --min-ready): gunicorn's master says READY=1 before its
    /// workers import the app, but nobody answers the probe socket, so the reload fails and generation 1 serves on.
    @Test func aGunicornReleaseThatFailsAtImportIsCaughtByItsProbeUnderLoad() throws {
        let python = try #require(Paths.python3)
        let check = run(python, ["-c", "import gunicorn"])
        try #require(check.status == 0, "gunicorn is installed (pip install gunicorn)")
        let fixtures = Paths.packageRoot.appendingPathComponent("Tests/Fixtures/gunicorn").path
        let scratch = Scratch()
        let release = { (name: String) in
            scratch.write("app.py", try! String(contentsOfFile: "\(fixtures)/\(name).py", encoding: .utf8))
        }
        release("good")
        let port = Rig.nextPort()
        let baton = try BatonRun(
            [
                "--listen", "127.0.0.1:\(port)", "--ready", "notify", "--health", "http:/", "--", python, "-m",
                "gunicorn", "--chdir", scratch.path, "--workers", "2", "--worker-class", "sync", "--control-socket",
                scratch.file("gunicorn.ctl"), "app:app",
            ],
            scratch: scratch
        )
        #expect(baton.stderr.waitFor("generation 1 ready (1 worker(s))") != nil, "\(baton.diagnosis())")
        let load = Process()
        load.executableURL = URL(fileURLWithPath: python)
        load.arguments = [
            Paths.loadgen, "--url", "http://127.0.0.1:\(port)/", "--clients", "4", "--mode", "mixed",
            "--until-file", scratch.file("stop"), "--duration", "600", "--json", scratch.file("load.json"),
        ]
        let loadLog = try ChaosTests.startLoad(load)

        release("broken")
        let failed = baton.client(["reload"])
        #expect(failed.status == 1)
        #expect(
            failed.stderr.contains("before the generation was ready; generation 1 keeps serving"),
            "\(failed.stderr)"
        )
        #expect(!failed.stdout.contains("generation 2 serving"), "\(failed.stdout)")
        release("good")
        let fixed = baton.client(["reload"])
        #expect(fixed.status == 0, "\(fixed.stderr)")

        scratch.write("stop", "")
        load.waitUntilExit()
        _ = loadLog.waitClosed()
        let data = try #require(FileManager.default.contents(atPath: scratch.file("load.json")))
        let summary = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        report("gunicorn release failing at import (--health http:/)", summary)
        #expect(ChaosTests.count(summary, "failed") == 0)
        #expect(baton.stop() == 0)
    }

    @Test func aBadProbeIsAOneLineUsageError() {
        let result = run(Paths.baton, ["run", "--listen", ":1", "--health", "htp:/", "--", "true"])
        #expect(result.status == 64)
        #expect(
            result.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
                == "baton: invalid --health 'htp:/': unknown probe kind 'htp': use http:PATH, tcp or exec:COMMAND",
            "\(result.stderr)"
        )
    }
}
