import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Faults under continuous load against the example Node app. Short form by default; BATON_CHAOS_LONG=1 for the
/// long form. Every scenario prints its request counts.
/// The long form: BATON_CHAOS_LONG=1.
private let chaosLong = ProcessInfo.processInfo.environment["BATON_CHAOS_LONG"] == "1"

@Suite("chaos under load", .serialized, .timeLimit(chaosLong ? .minutes(60) : .minutes(10)))
struct ChaosTests {
    static let long = chaosLong

    /// Starts the load client `load` and waits for its first response: what a test does next happens under load.
    /// Returns the client's stderr.
    static func startLoad(_ load: Process) throws -> LineCollector {
        let pipe = Pipe()
        load.standardError = pipe
        try load.run()
        let log = LineCollector(pipe.fileHandleForReading)
        #expect(log.waitFor("loadgen: first response", timeout: 30) != nil, "the load client got a response")
        return log
    }

    /// baton running the Node app on a TCP port, with the load client running against it.
    final class Rig {
        let scratch = Scratch()
        let baton: BatonRun
        let port: Int
        let load = Process()
        let loadLog: LineCollector

        /// `readyTimeout`: 10 s by default, which a Node worker meets on a loaded machine (3 s did not in CI).
        init(workers: Int, extra: [String] = [], clients: Int = 16, readyTimeout: String = "10s") throws {
            let node = try #require(Paths.which("node") ?? Paths.which("nodejs"))
            port = Rig.nextPort()
            scratch.write("behaviour", "ok")
            baton = try BatonRun(
                [
                    "--listen", "127.0.0.1:\(port)", "--workers", "\(workers)", "--ready", "fd", "--ready-timeout",
                    readyTimeout,
                ]
                    + extra
                    + ["--", node, Paths.packageRoot.appendingPathComponent("Tests/Fixtures/chaos-app.js").path],
                scratch: scratch,
                environment: ["BEHAVIOUR_FILE": scratch.file("behaviour")]
            )
            #expect(baton.stderr.waitFor("generation 1 ready") != nil)
            load.executableURL = URL(fileURLWithPath: try #require(Paths.python3))
            load.arguments = [
                Paths.loadgen, "--url", "http://127.0.0.1:\(port)/", "--clients", "\(clients)", "--mode", "mixed",
                "--slow-every", "10", "--slow-ms", "200", "--until-file", scratch.file("stop"), "--duration", "600",
                "--json", scratch.file("load.json"),
            ]
            loadLog = try ChaosTests.startLoad(load)
        }

        func behave(_ behaviour: String) { scratch.write("behaviour", behaviour) }

        /// A port of its own for each rig (below the kernel's ephemeral range, where the load client's sockets live),
        /// so that one scenario's leftovers cannot disturb the next.
        static func nextPort() -> Int { TestPorts.next() }

        /// Stops the load and returns its summary.
        func finish() throws -> [String: Any] {
            scratch.write("stop", "")
            load.waitUntilExit()
            _ = loadLog.waitClosed()
            let data = try #require(FileManager.default.contents(atPath: scratch.file("load.json")))
            return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        }

        /// Processes still carrying this rig's environment: after baton has stopped, any is an orphan.
        func survivors() -> [Int32] {
            let marker = Array("BEHAVIOUR_FILE=\(scratch.file("behaviour"))".utf8) + [0]
            let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
            return pids.filter { pid in
                guard isAlive(pid), let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else {
                    return false
                }
                return [UInt8](environ).split(separator: 0).contains { Array($0) + [0] == marker }
            }
        }

        /// Stops baton, which exits 0, and checks that nothing of its workers is left.
        func stop() {
            #expect(baton.stop() == 0)
            #expect(survivors().isEmpty, "no orphan survives baton")
        }

        func workerPIDs() throws -> [Int32] {
            let status = baton.client(["status", "--json"]).stdout
            let report = try #require(try JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])
            let generations = report["generations"] as? [[String: Any]] ?? []
            return generations.filter { $0["state"] as? String == "serving" }
                .flatMap {
                    ($0["workers"] as? [[String: Any]] ?? []).compactMap { ($0["pid"] as? Int).map(Int32.init) }
                }
        }

        /// Connections a worker holds open (sockets other than the listener at fd 3).
        func connections(of pid: Int32) -> Int {
            let directory = "/proc/\(pid)/fd"
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
            return fds.filter { $0 != "3" }.filter {
                (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\($0)"))?.hasPrefix("socket:")
                    == true
            }.count
        }
    }

    static func count(_ summary: [String: Any], _ key: String) -> Int { summary[key] as? Int ?? 0 }

    func report(_ name: String, _ summary: [String: Any], _ extra: String = "") {
        let kinds = ["refused", "reset", "eof_idle", "eof_new", "eof_mid", "timeout", "non2xx"]
            .map { "\($0) \(Self.count(summary, $0))" }.joined(separator: ", ")
        print(
            "chaos \(name): \(Self.count(summary, "requests")) requests, \(Self.count(summary, "failed")) failed (\(kinds))\(extra)"
        )
    }

    @Test func sigkillOfRandomServingWorkersCostsOnlyTheirOwnRequestsInFlight() throws {
        let rig = try Rig(workers: 4)
        var inFlight = 0
        let kills = Self.long ? 60 : 8
        for round in 1...kills {
            let pids = try rig.workerPIDs()
            let victim = try #require(pids.randomElement())
            // Stopped first, so that it accepts no connection between the count and the kill.
            kill(victim, SIGSTOP)
            let stopBy = Date().addingTimeInterval(2)
            while statField(victim, 3) != "T" && Date() < stopBy { usleep(1000) }
            inFlight += rig.connections(of: victim)
            kill(victim, SIGKILL)
            // The replacement is ready again before the next kill (the event: baton logs it).
            #expect(rig.baton.stderr.waitFor("is back", after: 0) != nil)
            _ = rig.baton.stderr.waitFor("(pid \(victim)) exited with signal KILL")
            let backs = rig.baton.stderr.all.filter { $0.contains("is back") }.count
            if backs < round { _ = rig.baton.stderr.waitFor("is back", after: rig.baton.stderr.all.count - 1) }
        }
        let summary = try rig.finish()
        report("sigkill", summary, ", \(kills) workers killed holding \(inFlight) connections")
        #expect(Self.count(summary, "refused") == 0, "the shared accept queue never refuses")
        #expect(Self.count(summary, "non2xx") == 0 && Self.count(summary, "timeout") == 0)
        #expect(Self.count(summary, "failed") <= inFlight, "only requests in flight on a killed worker fail")
        #expect(Set(rig.survivors()).isSuperset(of: try rig.workerPIDs()), "the orphan check sees live workers")
        rig.stop()
    }

    @Test(arguments: ["crash", "hang"])
    func reloadsToBrokenReleasesUnderLoadLoseNothing(behaviour: String) throws {
        let rig = try Rig(workers: 2)
        for _ in 1...(Self.long ? 10 : 2) {
            rig.behave(behaviour)
            #expect(rig.baton.client(["reload", "--quiet"]).status == 1)
            rig.behave("ok")
            #expect(rig.baton.client(["reload", "--quiet"]).status == 0)
        }
        let summary = try rig.finish()
        report("reload to \(behaviour)", summary)
        #expect(Self.count(summary, "failed") == 0)
        rig.stop()
    }

    @Test func aRollbackWhileANewWorkerServesLetsItFinishItsRequests() throws {
        // Worker 1 of each broken release becomes ready and accepts; worker 2 fails while worker 1 has a slow
        // request in flight. The rollback must stop worker 1 with the stop signal (it drains), not SIGKILL it.
        let rig = try Rig(workers: 2)
        let rounds = Self.long ? 10 : 3
        for _ in 1...rounds {
            rig.behave("fail-once-sibling-serves")
            let reload = rig.baton.client(["reload", "--quiet"])
            #expect(reload.status == 1)
            #expect(reload.stderr.contains("failing while worker 1 serves"), "\(reload.stderr)")
        }
        rig.behave("ok")
        #expect(rig.baton.client(["reload", "--quiet"]).status == 0)
        let summary = try rig.finish()
        let killed = rig.baton.stderr.all.filter { $0.contains("worker 1 of generation") && $0.contains("signal KILL") }
        report("rollback while a new worker serves", summary, ", \(rounds) rollbacks")
        #expect(killed.isEmpty, "no rolled-back worker was SIGKILLed: \(killed)")
        #expect(Self.count(summary, "failed") == 0)
        rig.stop()
    }

    @Test func aReleaseThatHangsAfterBecomingReadyIsCaughtByTheWatchdog() throws {
        let rig = try Rig(workers: 2, extra: ["--watchdog", "1s"])
        rig.behave("hang-after-ready")
        #expect(rig.baton.client(["reload", "--quiet"]).status == 0)
        #expect(rig.baton.stdout.waitFor("freezing now") != nil)
        let hung = try #require(Int32(try String(contentsOfFile: rig.scratch.file("behaviour.hung"), encoding: .utf8)))
        // A frozen worker accepts nothing more: what it held when it froze bounds what can fail.
        let held = rig.connections(of: hung)
        #expect(rig.baton.stderr.waitFor("stopped sending WATCHDOG=1") != nil)
        #expect(rig.baton.stderr.waitFor("is back") != nil, "the hung worker was replaced")
        let summary = try rig.finish()
        report("hang after ready", summary, ", the hung worker held \(held) connections")
        #expect(Self.count(summary, "refused") == 0 && Self.count(summary, "non2xx") == 0)
        #expect(Self.count(summary, "failed") <= held, "only requests on the hung worker fail")
        rig.stop()
    }

    /// Each worker of the broken release becomes ready and serves; 1 s later it fails (it drains, then exits 3), or
    /// the helper it started, re-parented to baton, exits 5: without --min-ready the reload would have succeeded and
    /// retired generation 1.
    @Test(arguments: [("fail-after-ready", "exited with exit 3"), ("helper-fails", "exited with exit 5")])
    func aReleaseThatFailsWithinTheSoakWindowIsRolledBackUnderLoad(behaviour: String, failure: String) throws {
        let rig = try Rig(workers: 2, extra: ["--min-ready", "4s"])
        rig.behave(behaviour)
        let failed = rig.baton.client(["reload"])
        #expect(failed.status == 1)
        #expect(failed.stdout.contains("soaking 4s before retiring generation 1"), "\(failed.stdout)")
        #expect(failed.stderr.contains("\(failure) within --min-ready 4s"), "\(failed.stderr)")
        #expect(failed.stderr.contains("generation 1 keeps serving"), "\(failed.stderr)")
        let status = rig.baton.client(["status", "--json"]).stdout
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])
        let serving = (parsed["generations"] as? [[String: Any]] ?? []).filter { $0["state"] as? String == "serving" }
        #expect(serving.compactMap { $0["id"] as? Int } == [1], "generation 1 still serves: \(status)")
        rig.behave("ok")
        let fixed = rig.baton.client(["reload"])
        #expect(fixed.status == 0, "\(fixed.stderr)")
        #expect(fixed.stdout.contains("generation 3 serving"), "\(fixed.stdout)")
        let summary = try rig.finish()
        report("release failing within --min-ready (\(behaviour))", summary)
        #expect(Self.count(summary, "failed") == 0)
        rig.stop()
    }

    /// Issue 12's case: gunicorn (sync workers, no --preload) says READY=1 before its workers import the app, so a
    /// release that raises at import looks ready; with --min-ready its master's exit rolls the reload back.
    @Test func aGunicornReleaseThatFailsAtImportIsRolledBackUnderLoad() throws {
        let python = try #require(Paths.python3)
        let gunicorn = Process()
        gunicorn.executableURL = URL(fileURLWithPath: python)
        gunicorn.arguments = ["-c", "import gunicorn"]
        try gunicorn.run()
        gunicorn.waitUntilExit()
        try #require(gunicorn.terminationStatus == 0, "gunicorn is installed (pip install gunicorn)")
        let fixtures = Paths.packageRoot.appendingPathComponent("Tests/Fixtures/gunicorn").path
        let scratch = Scratch()
        let release = { (name: String) in
            scratch.write("app.py", try! String(contentsOfFile: "\(fixtures)/\(name).py", encoding: .utf8))
        }
        release("good")
        let port = Rig.nextPort()
        let baton = try BatonRun(
            [
                "--listen", "127.0.0.1:\(port)", "--ready", "notify", "--min-ready", "3s", "--", python, "-m",
                "gunicorn", "--chdir", scratch.path, "--workers", "2", "--worker-class", "sync", "--control-socket",
                scratch.file("gunicorn.ctl"), "app:app",
            ],
            scratch: scratch
        )
        #expect(baton.stderr.waitFor("generation 1 ready (1 worker(s))") != nil)
        let load = Process()
        load.executableURL = URL(fileURLWithPath: python)
        load.arguments = [
            Paths.loadgen, "--url", "http://127.0.0.1:\(port)/", "--clients", "4", "--mode", "mixed",
            "--until-file", scratch.file("stop"), "--duration", "600", "--json", scratch.file("load.json"),
        ]
        let loadLog = try Self.startLoad(load)

        release("broken")
        let failed = baton.client(["reload"])
        #expect(failed.status == 1)
        #expect(failed.stdout.contains("soaking 3s before retiring generation 1"), "\(failed.stdout)")
        #expect(failed.stderr.contains("within --min-ready 3s; generation 1 keeps serving"), "\(failed.stderr)")
        #expect(failed.stderr.contains("Worker failed to boot"), "the last lines of its stderr come with it")
        release("good")
        let fixed = baton.client(["reload"])
        #expect(fixed.status == 0, "\(fixed.stderr)")

        scratch.write("stop", "")
        load.waitUntilExit()
        _ = loadLog.waitClosed()
        let data = try #require(FileManager.default.contents(atPath: scratch.file("load.json")))
        let summary = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        report("gunicorn release failing at import", summary)
        #expect(Self.count(summary, "failed") == 0)
        #expect(baton.stop() == 0)
    }

    @Test func fiftyReloadsAtOnceAndReloadsDuringARollbackLoseNothing() throws {
        let rig = try Rig(workers: 2)
        let clients = try (0..<50).map { _ in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: Paths.baton)
            process.arguments = ["reload", "--quiet", "--control", rig.baton.control]
            process.standardOutput = FileHandle.nullDevice
            let errors = Pipe()
            process.standardError = errors
            try process.run()
            return (process, LineCollector(errors.fileHandleForReading))
        }
        for (client, _) in clients { client.waitUntilExit() }
        for (client, errors) in clients where client.terminationStatus != 0 {
            _ = errors.waitClosed(timeout: 5)
            Issue.record("a reload exited \(client.terminationStatus): \(errors.text)\n\(rig.baton.diagnosis())")
        }
        // A broken release, and more reloads while its rollback runs (the ready timeout is 10 s).
        rig.behave("hang")
        let failing = Process()
        failing.executableURL = URL(fileURLWithPath: Paths.baton)
        failing.arguments = ["reload", "--quiet", "--control", rig.baton.control]
        failing.standardError = FileHandle.nullDevice
        try failing.run()
        #expect(
            rig.baton.stderr.waitFor("generation 4 starting") != nil
                || rig.baton.stderr.waitFor("starting with 2 worker") != nil
        )
        rig.behave("ok")
        let during = (0..<5).map { _ in rig.baton.client(["reload", "--quiet"]).status }
        failing.waitUntilExit()
        #expect(during.allSatisfy { $0 == 0 }, "reloads asked for during the rollback follow it and succeed")
        let summary = try rig.finish()
        report("50 reloads at once, reloads during a rollback", summary)
        #expect(Self.count(summary, "failed") == 0)
        rig.stop()
    }

    @Test func runningOutOfFdsMidSpawnFailsTheReloadAndKeepsServing() throws {
        let rig = try Rig(workers: 2)
        // Lower baton's soft fd limit below what a new generation needs (pipes per worker), while it runs; the
        // hard limit stays, so that it can be raised again.
        let before = ProcInspectorCount.openFDs(rig.baton.pid)
        let prlimit = try #require(Paths.which("prlimit"))
        let original = run(
            prlimit,
            ["--pid", "\(rig.baton.pid)", "--nofile", "--raw", "--noheadings", "--output=SOFT"]
        ).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(run(prlimit, ["--pid", "\(rig.baton.pid)", "--nofile=\(before + 3):"]).status == 0)
        let reload = rig.baton.client(["reload"])
        #expect(reload.status == 1)
        #expect(reload.stderr.contains("Too many open files"), "the reason is named: \(reload.stderr)")
        // Every fd made on the way to the failed spawns is closed again (the reload's own connection closes just
        // after its answer).
        let settled = Date().addingTimeInterval(5)
        while ProcInspectorCount.openFDs(rig.baton.pid) != before && Date() < settled { usleep(10_000) }
        #expect(ProcInspectorCount.openFDs(rig.baton.pid) == before, "no fd is left over from the failed spawns")
        for _ in 0..<3 { #expect(rig.baton.client(["reload", "--quiet"]).status == 1) }
        while ProcInspectorCount.openFDs(rig.baton.pid) != before && Date() < settled.addingTimeInterval(5) {
            usleep(10_000)
        }
        #expect(ProcInspectorCount.openFDs(rig.baton.pid) == before, "nor after three more")
        // With (nearly) no fd left, a client is answered, or told why not, and never left hanging. (The limit bounds
        // fd numbers, so a hole in baton's fd table may still let the status through.)
        let highest = ProcInspectorCount.highestFD(rig.baton.pid)
        #expect(run(prlimit, ["--pid", "\(rig.baton.pid)", "--nofile=\(highest + 1):"]).status == 0)
        let answered = rig.baton.client(["status"])
        #expect(answered.status == 0 || answered.stderr.contains("out of file descriptors"), "\(answered.stderr)")
        print(
            "chaos fd exhaustion: a status request with fds \(highest + 1) at most: \(answered.status == 0 ? "answered" : answered.stderr)"
        )
        #expect(run(prlimit, ["--pid", "\(rig.baton.pid)", "--nofile=\(original):"]).status == 0)
        #expect(rig.baton.client(["reload", "--quiet"]).status == 0, "once fds are back, reloads work again")
        let summary = try rig.finish()
        report("fd exhaustion", summary)
        #expect(Self.count(summary, "failed") == 0)
        rig.stop()
    }

    @Test func noFdOrMemoryGrowthAcrossManyReloads() throws {
        let rig = try Rig(workers: 1, clients: 4)
        // Measured with nothing draining (--wait-drained; the reloads between return as soon as they serve) and, the
        // second time, with the load stopped and every relay of a rescued connection ended (they live as long as
        // their client's connection).
        // fds are counted before the first reload (no connection has been rescued yet).
        let fdsBefore = ProcInspectorCount.openFDs(rig.baton.pid)
        _ = rig.baton.client(["reload", "--quiet", "--wait-drained"])
        let rssBefore = ProcInspectorCount.rssKiB(rig.baton.pid)
        let reloads = Self.long ? 1000 : 60
        for index in 1...reloads {
            let last = index == reloads ? ["--wait-drained"] : []
            #expect(rig.baton.client(["reload", "--quiet"] + last).status == 0)
        }
        let summary = try rig.finish()
        #expect(rig.baton.relaysEnd() == 0, "the relays end with their clients' connections")
        let fdsAfter = ProcInspectorCount.openFDs(rig.baton.pid)
        let rssAfter = ProcInspectorCount.rssKiB(rig.baton.pid)
        report("\(reloads) reloads", summary, ", fds \(fdsBefore) -> \(fdsAfter), RSS \(rssBefore) -> \(rssAfter) KiB")
        #expect(fdsAfter == fdsBefore)
        #expect(rssAfter < rssBefore + 4096, "no memory growth beyond noise")
        #expect(Self.count(summary, "failed") == 0)
        rig.stop()
    }

    @Test func aReadOnlyRuntimeDirectoryGetsAClearErrorAtStart() throws {
        let scratch = Scratch()
        let directory = scratch.file("ro")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // A read-only mount, as ProtectSystem= or a full disk would leave it.
        let mount = try #require(Paths.which("mount"))
        guard run(mount, ["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", directory]).status == 0 else {
            Issue.record("cannot mount a read-only tmpfs here")
            return
        }
        defer { _ = run(try! #require(Paths.which("umount")), [directory]) }
        let result = run(
            Paths.baton,
            ["run", "--control", "\(directory)/c.sock", "--listen", "unix:\(scratch.file("s.sock"))", "--", "true"]
        )
        #expect(result.status != 0)
        #expect(result.stderr.contains("\(directory)/c.sock"), "the message names the path: \(result.stderr)")
        #expect(result.stderr.contains("Read-only file system"))
    }
}

/// Counts read from /proc for the chaos suite.
enum ProcInspectorCount {
    static func openFDs(_ pid: Int32) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).count
    }

    static func highestFD(_ pid: Int32) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).compactMap { Int($0) }.max()
            ?? 0
    }

    static func rssKiB(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
}
