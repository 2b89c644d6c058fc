import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `baton run` with real worker processes and real sockets.
@Suite("baton run, with real processes", .serialized, .timeLimit(.minutes(5)))
struct LauncherTests {
    func worker(_ extra: [String] = []) -> [String] { extra + ["--", "python3", Paths.worker] }

    /// baton running worker.py (see ``launchWorker(_:behaviour:environment:command:wrapper:)``); the behaviour file
    /// may be changed later by the test.
    func launch(
        _ options: [String] = [],
        behaviour: String? = nil,
        environment: [String: String] = [:]
    ) throws -> (scratch: Scratch, reports: String, baton: BatonRun) {
        try launchWorker(options, behaviour: behaviour, environment: environment)
    }

    /// The pid of the daemon a worker with behaviour `daemonize` started.
    func daemonPID(of worker: Int32, in reports: String) throws -> Int32 {
        try #require(Int32(try String(contentsOfFile: "\(reports)/\(worker).daemon", encoding: .utf8)))
    }

    /// The worker behind a shell whose first child records the signal mask and dispositions the worker was
    /// exec'd with, before Python changes its own (it ignores SIGPIPE and SIGXFSZ at start). `grep` reads its
    /// own status: it inherits the shell's mask and ignored signals, which are what baton handed over.
    func recordingWorker() -> [String] {
        [
            "--", "/bin/sh", "-c",
            "grep -E '^Sig(Blk|Ign)' /proc/self/status > \"$REPORT_DIR/$$.sig\"; exec python3 \(Paths.worker)",
        ]
    }

    @Test func aWorkerGetsExactlyTheListenersAndItsOwnPidInLISTEN_PID() throws {
        let scratch = Scratch()
        let reports = scratch.file("reports")
        try FileManager.default.createDirectory(atPath: reports, withIntermediateDirectories: true)
        let baton = try BatonRun(
            [
                "--listen", "web=unix:\(scratch.file("a.sock"))", "--listen", "admin=unix:\(scratch.file("b.sock"))",
                "--workers", "2",
            ]
                + recordingWorker(),
            scratch: scratch,
            environment: ["REPORT_DIR": reports, "SECRET_FOR_APP": "kept"]
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)

        let all = WorkerReport.all(in: reports)
        #expect(all.count == 2)
        for report in all {
            #expect(Set(report.fds.keys) == ["0", "1", "2", "3", "4"], "no other fd of baton's: \(report.fds)")
            #expect(report.fds["3"]?.hasPrefix("socket:") == true)
            #expect(report.fds["4"]?.hasPrefix("socket:") == true)
            #expect(report.fds["0"] == "/dev/null")
            #expect(report.env["LISTEN_FDS"] == "2")
            #expect(report.env["LISTEN_PID"] == String(report.pid))
            #expect(report.env["LISTEN_FDNAMES"] == "web:admin")
            #expect(report.env["BATON_GENERATION"] == "1")
            #expect(report.env["SECRET_FOR_APP"] == "kept")
            #expect(report.env["NOTIFY_SOCKET"] == nil)
            let signals = try String(contentsOfFile: "\(reports)/\(report.pid).sig", encoding: .utf8)
            #expect(
                signals == "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n",
                "mask and dispositions are reset"
            )
            #expect(report.pgid == report.pid, "each worker leads its own process group")
        }
        #expect(Set(all.compactMap { $0.env["BATON_WORKER"] }) == ["1", "2"])
        // The same sockets baton holds: both answer.
        #expect(try HTTP.get(unix: scratch.file("a.sock")).status == 200)
        #expect(try HTTP.get(unix: scratch.file("b.sock")).status == 200)
        #expect(baton.stop() == 0)
    }

    @Test(arguments: ["notify", "fd", "listen"])
    func eachReadinessModeMakesTheGenerationReady(mode: String) throws {
        let (scratch, reports, baton) = try launch(
            ["--ready", mode],
            environment: ["READY_MODE": mode == "listen" ? "none" : mode]
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let report = try #require(WorkerReport.all(in: reports).first)
        switch mode {
        case "notify":
            #expect(report.env["NOTIFY_SOCKET"]?.hasPrefix("@baton/") == true)
            let status = baton.client(["status"]).stdout
            #expect(status.contains("\"serving\""), "STATUS= from the worker shows in baton status")
        case "fd":
            #expect(report.env["BATON_NOTIFY_FD"] == "4")
            #expect(report.fds["4"]?.hasPrefix("pipe:") == true)
        default:
            #expect(report.env["BATON_NOTIFY_FD"] == nil)
        }
        #expect(try HTTP.get(unix: scratch.file("s.sock")).body.hasPrefix("generation 1"))
        #expect(baton.stop() == 0)
    }

    @Test func notifyMessagesFromStrangersAreIgnoredAndLogged() throws {
        let (_, reports, baton) = try launch(
            ["--ready", "notify", "--ready-timeout", "20s"],
            behaviour: "hang",
            environment: ["READY_MODE": "notify"]
        )
        #expect(baton.stdout.waitFor("behaviour hang") != nil)
        let report = try #require(WorkerReport.all(in: reports).first)
        let address = try #require(report.env["NOTIFY_SOCKET"])
        // The test process is not a worker: its READY=1 must not make the generation ready.
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var sockaddr = sockaddr_un()
        sockaddr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(address.utf8)
        bytes[0] = 0
        withUnsafeMutableBytes(of: &sockaddr.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let message = Array("READY=1".utf8)
        let sent = withUnsafePointer(to: &sockaddr) {
            $0.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) {
                sendto(fd, message, message.count, 0, $0, length)
            }
        }
        #expect(sent == message.count)
        #expect(baton.stderr.waitFor("not one of baton's workers") != nil)
        #expect(!baton.stderr.text.contains("generation 1 ready"))
        #expect(baton.stop() == 0)
    }

    @Test(arguments: ["notify", "fd", "listen"])
    func theReadyTimeoutAppliesInEveryModeAndAFirstGenerationThatNeverServesExitsNonZero(mode: String) throws {
        let (_, _, baton) = try launch(
            ["--ready", mode, "--ready-timeout", "700ms"],
            behaviour: "hang",
            environment: ["READY_MODE": mode]
        )
        let status = baton.wait()
        #expect(status == 1)
        #expect(baton.stderr.text.contains("did not become ready within 700ms"))
    }

    @Test func reloadReplacesTheGenerationAndReportsProgress() throws {
        let (scratch, _, baton) = try launch(["--workers", "2"])
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let before = try HTTP.get(unix: scratch.file("s.sock"))
        #expect(before.body.hasPrefix("generation 1"))
        // --wait-drained: the old generation is gone by the time reload returns (checked below).
        let reload = baton.client(["reload", "--wait-drained"])
        #expect(reload.status == 0, "\(reload.stderr)")
        #expect(reload.stdout.contains("starting generation 2"))
        #expect(reload.stdout.contains("generation 2 serving"))
        // Progress reaches every worker: the last line before "serving" is 2/2.
        let lines = reload.stdout.split(separator: "\n").map(String.init)
        let serving = try #require(lines.firstIndex { $0.contains("generation 2 serving") })
        #expect(serving > 0 && lines[serving - 1] == "generation 2: 2/2 workers ready", "\(reload.stdout)")
        #expect(try HTTP.get(unix: scratch.file("s.sock")).body.hasPrefix("generation 2"))
        // The old generation is gone by the time reload returns.
        let status = baton.client(["status", "--json"])
        let report = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
        let generations = report?["generations"] as? [[String: Any]]
        #expect(generations?.map { $0["id"] as? Int } == [2])
        #expect((report?["lastReload"] as? [String: Any])?["ok"] as? Bool == true)
        #expect(baton.stop() == 0)
    }

    @Test func concurrentReloadsCoalesceAndLeaveNoOrphan() throws {
        let (_, reports, baton) = try launch(["--workers", "2"], behaviour: "slow-start")
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        // Twelve clients at once; each new generation takes a second to start, so all of them arrive during
        // the first reload.
        let clients = try (0..<12).map { _ in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: Paths.baton)
            process.arguments = ["reload", "--quiet", "--control", baton.control]
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            return process
        }
        for client in clients { client.waitUntilExit() }
        let statuses = clients.map(\.terminationStatus)
        #expect(statuses == Array(repeating: 0, count: 12), "every requester hears of a successful reload")
        // A reload returns once its generation serves; generation 2 may still be draining (its workers exiting).
        #expect(baton.stderr.waitFor("generation 2 drained in") != nil, "\(baton.diagnosis())")
        let status = baton.client(["status", "--json"]).stdout
        let report = try #require(try JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])
        let generations = try #require(report["generations"] as? [[String: Any]])
        #expect(generations.count == 1)
        let id = try #require(generations.first?["id"] as? Int)
        #expect(id == 3, "one reload plus at most one coalesced follow-up, not twelve")
        // Every worker ever started, but the two serving, is gone.
        let alive = WorkerReport.all(in: reports).filter { isAlive($0.pid) }
        #expect(alive.count == 2)
        #expect(alive.allSatisfy { $0.env["BATON_GENERATION"] == "3" })
        #expect(baton.stop() == 0)
        #expect(WorkerReport.all(in: reports).allSatisfy { !isAlive($0.pid) })
    }

    @Test func sighupReloadsToo() throws {
        let (_, _, baton) = try launch()
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        baton.signal(SIGHUP)
        #expect(baton.stderr.waitFor("reload to generation 2 succeeded") != nil)
        #expect(baton.stop() == 0)
    }

    /// The pids of generation `id`'s workers, from `baton status --json`.
    func workerPIDs(_ baton: BatonRun, generation id: Int) throws -> Set<Int> {
        let status = baton.client(["status", "--json"])
        let report = try #require(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        let generations = try #require(report["generations"] as? [[String: Any]])
        let generation = try #require(generations.first { $0["id"] as? Int == id })
        return Set((generation["workers"] as? [[String: Any]] ?? []).compactMap { $0["pid"] as? Int })
    }

    @Test(arguments: ["crash", "hang"])
    func aFailingNewGenerationRollsBackAndTheOldKeepsServing(behaviour: String) throws {
        let (scratch, _, baton) = try launch(
            ["--workers", "2", "--ready", "fd", "--ready-timeout", "3s"],
            behaviour: "ok",
            environment: ["READY_MODE": "fd"]
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let before = try workerPIDs(baton, generation: 1)
        #expect(before.count == 2)
        scratch.write("behaviour", behaviour)
        let reload = baton.client(["reload"])
        #expect(reload.status == 1)
        #expect(reload.stderr.hasPrefix("baton: reload failed: reload to generation 2 failed: worker"))
        if behaviour == "crash" {
            #expect(reload.stderr.contains("exited with exit 3 before the generation was ready"))
            #expect(
                reload.stderr.contains("| fatal: cannot load configuration (test crash)"),
                "the worker's stderr is shown"
            )
        } else {
            #expect(reload.stderr.contains("did not become ready within 3s"))
            #expect(reload.stderr.contains("| hanging before ready"))
        }
        // Generation 1 keeps serving, with the very same processes.
        for _ in 0..<4 {
            let body = try HTTP.get(unix: scratch.file("s.sock")).body
            #expect(body.hasPrefix("generation 1"))
        }
        #expect(try workerPIDs(baton, generation: 1) == before)
        #expect(baton.client(["status"]).stdout.contains("last reload: failed"))
        // A fixed version reloads fine afterwards.
        scratch.write("behaviour", "ok")
        #expect(baton.client(["reload"]).status == 0)
        #expect(try HTTP.get(unix: scratch.file("s.sock")).body.hasPrefix("generation 3"))
        #expect(baton.stop() == 0)
    }

    @Test func aCrashedWorkerIsRespawned() throws {
        let (scratch, _, baton) = try launch(["--workers", "2"])
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let body = try HTTP.get(unix: scratch.file("s.sock")).body
        let pid = try #require(Int32(body.split(separator: " ").last!.trimmingCharacters(in: .whitespacesAndNewlines)))
        kill(pid, SIGKILL)
        #expect(baton.stderr.waitFor("exited with signal KILL") != nil)
        #expect(baton.stderr.waitFor("is back") != nil)
        let status = baton.client(["status"]).stdout
        #expect(status.contains("restarts 1"))
        #expect(!status.contains("pid \(pid) "))
        #expect(baton.stop() == 0)
    }

    @Test(arguments: ["notify", "fd"])
    func aWorkerThatStopsPingingItsWatchdogIsReplaced(mode: String) throws {
        let (_, _, baton) = try launch(
            ["--ready", mode, "--watchdog", "300ms"],
            behaviour: "watchdog-once",
            environment: ["READY_MODE": mode]
        )
        #expect(baton.stdout.waitFor("watchdog interval 300000") != nil, "WATCHDOG_USEC is passed to the worker")
        #expect(baton.stderr.waitFor("stopped sending WATCHDOG=1 (interval 300ms); replacing it") != nil)
        #expect(baton.stderr.waitFor("is back") != nil)
        #expect(baton.stop() == 0)
    }

    @Test func rollingReplacesFourWorkersOneAtATime() throws {
        let (_, _, baton) = try launch(["--workers", "4", "--strategy", "rolling"])
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        // Answered once generation 1 is gone (its last worker may still stop when generation 2 serves).
        let reload = baton.client(["reload", "--wait-drained"])
        #expect(reload.status == 0, "\(reload.stderr)")
        let steps = reload.stdout.split(separator: "\n").filter { $0.contains("retiring its predecessor") }
        #expect(
            steps.map {
                $0.contains("worker 1 ready, 1/4") || $0.contains("worker 2 ready, 2/4")
                    || $0.contains("worker 3 ready, 3/4") || $0.contains("worker 4 ready, 4/4")
            } == [true, true, true, true]
        )
        #expect(steps.first?.contains("worker 1 ready, 1/4") == true)
        #expect(steps.last?.contains("worker 4 ready, 4/4") == true)
        let status = baton.client(["status"]).stdout
        #expect(status.contains("generation 2  serving"))
        #expect(!status.contains("generation 1 "))
        #expect(baton.stop() == 0)
    }

    @Test func sigtermDrainsRequestsInFlightThenExitsZero() throws {
        let (scratch, _, baton) = try launch()
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let slow = Thread {
            let response = try? HTTP.get(unix: scratch.file("s.sock"), "/?sleep=800")
            scratch.write("slow-result", response.map { "\($0.status)" } ?? "failed")
        }
        slow.start()
        // The worker logs the request when it starts on it: from then on it is in flight.
        #expect(baton.stdout.waitFor("handling /?sleep=800") != nil)
        baton.signal(SIGTERM)
        #expect(baton.wait() == 0)
        #expect((try? String(contentsOfFile: scratch.file("slow-result"), encoding: .utf8)) == "200")
    }

    @Test func aWorkerThatIgnoresTheStopSignalIsKilledWithItsProcessGroup() throws {
        let (_, reports, baton) = try launch(["--stop-timeout", "500ms"], behaviour: "fork-child")
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let report = try #require(WorkerReport.all(in: reports).first)
        let child = try #require(Int32(try String(contentsOfFile: "\(reports)/\(report.pid).child", encoding: .utf8)))
        #expect(isAlive(child))
        #expect(baton.stop() == 0)
        #expect(waitForExit(report.pid))
        #expect(waitForExit(child), "the app's own child went with its process group")
    }

    @Test func aDaemonisedGrandchildIsStoppedWithItsGeneration() throws {
        let (_, reports, baton) = try launch(behaviour: "daemonize")
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let first = try #require(WorkerReport.all(in: reports).first)
        let daemon = try daemonPID(of: first.pid, in: reports)
        #expect(isAlive(daemon))
        #expect(
            (try? String(contentsOfFile: "/proc/\(daemon)/stat", encoding: .utf8))?.contains(" \(baton.pid) ") == true,
            "the orphan was re-parented to baton, not to PID 1"
        )
        // Generation 1 retires: its worker's daemon goes with it, and generation 2's stays.
        #expect(baton.client(["reload"]).status == 0)
        #expect(waitForExit(daemon), "the daemon of generation 1's worker was killed")
        #expect(baton.stderr.waitFor("left behind by worker 1 of generation 1") != nil)
        let second = try #require(WorkerReport.all(in: reports).first { $0.env["BATON_GENERATION"] == "2" })
        let secondDaemon = try daemonPID(of: second.pid, in: reports)
        #expect(isAlive(secondDaemon))
        #expect(baton.stop() == 0)
        #expect(waitForExit(secondDaemon), "no orphan survives baton")
    }

    @Test func aDaemonThatWipedItsEnvironmentIsStoppedWithItsGeneration() throws {
        let (scratch, reports, baton) = try launch(behaviour: "wiped-daemon")
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let first = try #require(WorkerReport.all(in: reports).first)
        let daemon = try daemonPID(of: first.pid, in: reports)
        #expect(isAlive(daemon))
        // Once `env -i` has exec'd `sleep`, nothing of baton's is left in its environment.
        let execed = Date().addingTimeInterval(10)
        while !((try? String(contentsOfFile: "/proc/\(daemon)/cmdline", encoding: .utf8)) ?? "").hasPrefix("sleep"),
            Date() < execed
        {
            usleep(1000)
        }
        #expect(
            !((try? String(contentsOfFile: "/proc/\(daemon)/environ", encoding: .utf8)) ?? "BATON").contains("BATON")
        )
        scratch.write("behaviour", "ok")
        #expect(baton.client(["reload"]).status == 0)
        #expect(waitForExit(daemon), "the daemon of generation 1's worker went with its generation")
        #expect(baton.stderr.waitFor("stopping pid \(daemon), left behind by a worker of generation 1") != nil)
        #expect(baton.stop() == 0)
    }

    @Test func aDaemonThatClaimsALaterGenerationIsStoppedWithItsOwn() throws {
        let (scratch, reports, baton) = try launch(behaviour: "forged-daemon")
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let first = try #require(WorkerReport.all(in: reports).first)
        let daemon = try daemonPID(of: first.pid, in: reports)
        #expect(isAlive(daemon))
        scratch.write("behaviour", "ok")
        // Generation 2, the one it claims, serves; generation 1, its own, retires: so does it.
        #expect(baton.client(["reload"]).status == 0)
        #expect(waitForExit(daemon), "the daemon went with generation 1, whatever its environment says")
        #expect(baton.stderr.waitFor("it claims generation 2, which started after it") != nil)
        #expect(baton.stop() == 0)
    }

    @Test func theDaemonOfACrashedWorkerGoesAlthoughAReplacementServesItsSlot() throws {
        let (_, reports, baton) = try launch(behaviour: "daemonize")
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let first = try #require(WorkerReport.all(in: reports).first)
        let daemon = try daemonPID(of: first.pid, in: reports)
        kill(first.pid, SIGKILL)
        #expect(baton.stderr.waitFor("is back") != nil, "worker 1 of generation 1 was replaced")
        #expect(waitForExit(daemon), "the crashed worker's daemon was killed")
        #expect(baton.stderr.waitFor("stopping pid \(daemon), left behind by worker 1 of generation 1") != nil)
        let replacement = try #require(WorkerReport.all(in: reports).first { $0.pid != first.pid })
        let replacementDaemon = try daemonPID(of: replacement.pid, in: reports)
        #expect(isAlive(replacementDaemon), "the replacement's own daemon stays")
        #expect(baton.stop() == 0)
        #expect(waitForExit(replacementDaemon), "no orphan survives baton")
    }

    @Test func aSecondSigtermKillsAtOnce() throws {
        let (_, reports, baton) = try launch(["--stop-timeout", "5m"], behaviour: "ignore-term")
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let report = try #require(WorkerReport.all(in: reports).first)
        baton.signal(SIGTERM)
        #expect(baton.stderr.waitFor("stopping") != nil)
        baton.signal(SIGTERM)
        #expect(baton.wait(timeout: 10) != nil)
        #expect(waitForExit(report.pid))
    }
}

/// The control socket and the errors users see.
@Suite("control socket and errors", .serialized, .timeLimit(.minutes(5)))
struct ControlAndErrorTests {
    @Test func theControlSocketIsPrivateAndSurvivesBadRequests() async throws {
        let scratch = Scratch()
        let baton = try BatonRun(
            ["--listen", "unix:\(scratch.file("s.sock"))", "--", "python3", Paths.worker],
            scratch: scratch
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let attributes = try FileManager.default.attributesOfItem(atPath: baton.control)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)

        func exchange(_ bytes: [UInt8]) -> String {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(baton.control.utf8)) }
            _ = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            var reply: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n <= 0 { break }
                reply += buffer[0..<n]
            }
            return String(decoding: reply, as: UTF8.self)
        }
        #expect(exchange(Array("hello\n".utf8)).contains("malformed request"))
        #expect(
            exchange([UInt8](repeating: 65, count: 100_000) + [10]).contains("request of 100000 bytes is too large")
        )
        #expect(exchange(Array("{\"command\":\"status\"}\n".utf8)).contains("\"kind\":\"status\""))

        // Several clients at once.
        let statuses = try await withThrowingTaskGroup(of: Int32.self) { group in
            for _ in 0..<8 { group.addTask { baton.client(["status"]).status } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(statuses == Array(repeating: 0, count: 8))
        #expect(try HTTP.get(unix: scratch.file("s.sock")).status == 200, "the launcher is undisturbed")
        // The default name is not repeated (`baton baton`), and stderr's lines are readable: the journal's
        // metadata (baton.event=..., baton.instance=...) stays out of them.
        #expect(baton.client(["status"]).stdout.hasPrefix("baton (pid \(baton.pid), version "))
        let log = baton.stderr.all.filter { $0.hasPrefix("baton") }
        #expect(log.contains("baton: generation 1 ready (1 worker(s))"), "\(log)")
        #expect(!log.contains { $0.hasPrefix("baton[baton]") || $0.contains("baton.event=") }, "\(log)")
        #expect(baton.stop() == 0)
    }

    @Test func tcpListenersOnIPv4AndIPv6() throws {
        let scratch = Scratch()
        let port = TestPorts.next()
        let baton = try BatonRun(
            ["--listen", "127.0.0.1:\(port)", "--listen", "v6=[::1]:\(port)", "--", "python3", Paths.worker],
            scratch: scratch
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        #expect(try HTTP.get(host: "127.0.0.1", port: port).status == 200)
        #expect(try HTTP.get(host: "::1", port: port).status == 200)

        // The same port again is refused with a message that names the address.
        let second = run(
            Paths.baton,
            ["run", "--control", scratch.file("c2.sock"), "--listen", "127.0.0.1:\(port)", "--", "true"]
        )
        #expect(second.status != 0)
        #expect(
            second.stderr
                == "baton: address 127.0.0.1:\(port) is already in use: stop whatever listens there or choose another --listen"
        )
        #expect(baton.stop() == 0)
    }

    /// A socket passed the way systemd passes one (fd 3, LISTEN_FDS, LISTEN_PID of the exec'd baton) is shown by
    /// the address the kernel has for it.
    @Test func aPassedSocketShowsItsRealAddress() throws {
        let scratch = Scratch()
        let path = scratch.file("passed.sock")
        let launcher = """
            import os, socket, sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(sys.argv[1])
            s.listen(16)
            if s.fileno() != 3:
                os.dup2(s.fileno(), 3)
            os.set_inheritable(3, True)
            os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="web")
            os.execv(sys.argv[2], sys.argv[2:])
            """
        let baton = try BatonRun(
            ["--", "python3", Paths.worker],
            scratch: scratch,
            wrapper: ["/usr/bin/env", "python3", "-c", launcher, path]
        )
        #expect(
            baton.stderr.waitFor("using listener 'web' (unix:\(path)) passed by the service manager") != nil,
            "\(baton.diagnosis())"
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        #expect(try HTTP.get(unix: path).status == 200)
        let status = baton.client(["status"])
        #expect(status.stdout.contains("  web  unix:\(path)  (fd "), "\(status.stdout)")
        #expect(!status.stdout.contains("passed fd") && !baton.stderr.text.contains("passed fd"))
        #expect(baton.stop() == 0)
    }

    /// At exit a launcher removes its own control socket file, and not one another launcher bound at the path since.
    @Test func atExitBatonLeavesAControlSocketAnotherLauncherBoundSince() throws {
        let scratch = Scratch()
        let first = try BatonRun(
            ["--listen", "unix:\(scratch.file("a.sock"))", "--", "python3", Paths.worker],
            scratch: scratch
        )
        #expect(first.stderr.waitFor("generation 1 ready") != nil)
        // Someone removes the first one's socket file; a second launcher binds the same control path.
        #expect(unlink(first.control) == 0)
        let second = try BatonRun(
            ["--listen", "unix:\(scratch.file("b.sock"))", "--", "python3", Paths.worker],
            scratch: scratch
        )
        #expect(second.stderr.waitFor("generation 1 ready") != nil)
        #expect(first.stop() == 0)
        #expect(FileManager.default.fileExists(atPath: second.control), "the second launcher's socket stays")
        #expect(second.client(["status"]).status == 0)
        #expect(second.stop() == 0)
    }

    /// A second `baton run` with the name of a running one says so, rather than that its address is in use.
    @Test func aSecondRunWithTheSameNameSaysItIsAlreadyRunning() throws {
        let scratch = Scratch()
        let path = scratch.file("s.sock")
        let baton = try BatonRun(
            ["--name", "shop", "--listen", "unix:\(path)", "--", "python3", Paths.worker],
            scratch: scratch
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let second = run(
            Paths.baton,
            ["run", "--name", "shop", "--control", baton.control, "--listen", "unix:\(path)", "--", "true"]
        )
        #expect(second.status == 1)
        #expect(
            second.stderr
                == "baton: baton 'shop' is already running as pid \(baton.pid): stop it first, or give this one another --name (or --control)"
        )
        // One that is paused does not answer; it is running all the same.
        baton.signal(SIGSTOP)
        let paused = run(
            Paths.baton,
            ["run", "--name", "shop", "--control", baton.control, "--listen", "unix:\(path)", "--", "true"]
        )
        // And `baton status` against it gives up after 10 s instead of hanging its caller.
        let status = baton.client(["status"])
        baton.signal(SIGCONT)
        #expect(
            paused.stderr
                == "baton: something listens at \(baton.control) and did not answer as baton within 2s (a paused or hung baton, or another program): stop it, or give this one another --name (or --control)"
        )
        #expect(status.status == 1 && status.stderr.contains("did not answer within 10s: is it paused or hung?"))
        #expect(try HTTP.get(unix: path).status == 200, "the running one is undisturbed")
        #expect(baton.stop() == 0)
    }

    @Test func aStaleUnixSocketIsReplacedAndALiveOneIsNot() throws {
        let scratch = Scratch()
        let path = scratch.file("s.sock")
        // A stale socket file: bound, then its owner went away.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        close(fd)
        let baton = try BatonRun(
            ["--listen", "unix:\(path)", "--socket-mode", "660", "--", "python3", Paths.worker],
            scratch: scratch
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? Int) == 0o660)
        let second = run(
            Paths.baton,
            ["run", "--control", scratch.file("c2.sock"), "--listen", "unix:\(path)", "--", "true"]
        )
        #expect(second.stderr.contains("address unix:\(path) is already in use"))
        #expect(baton.stop() == 0)
    }

    @Test func runHelpShowsHelpInsteadOfRunningIt() {
        let result = run(Paths.baton, ["run", "--help"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("OVERVIEW: Run an app under baton"))
    }

    @Test(
        arguments: [
            (
                ["run", "--listen", "nonsense", "--", "true"],
                "baton: invalid --listen 'nonsense': expected HOST:PORT, [IPV6]:PORT, :PORT or unix:PATH",
                64
            ),
            (
                ["run", "--listen", ":8080", "--", "/nonexistent/app"],
                "baton: cannot execute '/nonexistent/app': no such executable file (check the path and its x bit)",
                1
            ),
            (
                ["run", "--listen", ":8080", "--", "no-such-app-xyz"],
                "baton: cannot execute 'no-such-app-xyz': not found in PATH (give its full path)",
                1
            ),
            (
                ["run", "--listen", ":8080", "--ready-timeout", "soon", "--", "true"],
                "baton: invalid --ready-timeout 'soon': a number with a unit (ms, s, m or h), at most 365 days, such as 30s, 500ms or 2m",
                64
            ),
            (
                ["run", "--listen", ":8080", "--ready", "magic", "--", "true"],
                "baton: invalid --ready 'magic': use notify, fd, listen or exec",
                64
            ),
            (
                ["run", "--listen", ":8080", "--stop-signal", "NOPE", "--", "true"],
                "baton: invalid --stop-signal 'NOPE': use a signal name such as TERM, INT, QUIT or USR2",
                64
            ),
            (
                ["run", "--listen", ":8080"],
                "baton: no app to run: give its command after --, e.g. baton run --listen :8080 -- node app.js",
                64
            ),
            (
                ["run", "--", "true"],
                "baton: nothing to listen on: pass --listen ADDRESS, or start baton from a systemd .socket unit",
                1
            ),
            (
                ["reload", "--control", "/nonexistent/x.sock"],
                "baton: no launcher is running at /nonexistent/x.sock: start one with 'baton run', or pass --control or --name",
                1
            ),
            (
                ["status", "--control", "/nonexistent/x.sock"],
                "baton: no launcher is running at /nonexistent/x.sock: start one with 'baton run', or pass --control or --name",
                1
            ),
            (
                ["run", "--listen", ":8080", "--workers"],
                "baton: missing value for '--workers <workers>' (see baton run --help)",
                64
            ),
            (
                ["run", "--listen", ":8080", "--stop-timeout", "10", "--", "true"],
                "baton: invalid --stop-timeout '10': give a unit, such as 10s or 10ms",
                64
            ),
            (
                ["status", "--bogus"],
                "baton: unknown option '--bogus' (see baton status --help)",
                64
            ),
        ] as [([String], String, Int32)]
    )
    /// Every usage error, swift-argument-parser's and baton's own, is one line in one style and exits 64.
    func badInputGetsAOneLineErrorThatNamesTheThing(arguments: [String], expected: String, status: Int32) {
        let scratch = Scratch()
        var args = arguments
        if args[0] == "run" { args.insert(contentsOf: ["--control", scratch.file("c.sock")], at: 1) }
        var environment = ProcessInfo.processInfo.environment
        environment["LISTEN_FDS"] = nil
        let result = run(Paths.baton, args, environment: environment)
        #expect(result.status == status)
        #expect(result.stderr == expected)
    }
}
