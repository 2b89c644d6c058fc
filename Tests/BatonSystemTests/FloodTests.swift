import BatonCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What floods, stuck clients and failed spawns cannot do to baton: grow it, block it, or make it drop supervision.
@Suite("floods and stuck clients", .serialized, .timeLimit(.minutes(3)))
struct FloodTests {
    let python = FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") ? "/usr/bin/python3" : "python3"
    let flood = Paths.packageRoot.appendingPathComponent("Tests/Fixtures/flood.py").path

    /// `baton status --json`, decoded, and how long it took.
    func status(_ baton: BatonRun) -> (report: StatusReport?, seconds: Double) {
        let start = Date()
        let result = baton.client(["status", "--json"])
        let seconds = Date().timeIntervalSince(start)
        guard result.status == 0 else { return (nil, seconds) }
        return (try? JSONDecoder().decode(StatusReport.self, from: Data(result.stdout.utf8)), seconds)
    }

    func servingPIDs(_ baton: BatonRun) -> [Int32] {
        status(baton).report?.generations.first { $0.state == "serving" }?.workers.compactMap(\.pid) ?? []
    }

    @Test func aStrangersNotifyFloodCostsNeitherMemoryNorAnswers() throws {
        try #require(getuid() == 0, "needs root to flood as a second user")
        let setpriv = try #require(Paths.which("setpriv"))
        let (scratch, _, baton) = try launchWorker(["--ready", "notify"], environment: ["READY_MODE": "notify"])
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let address = "@baton/\(baton.pid)/baton/notify"
        let rssBefore = ProcInspectorCount.rssKiB(baton.pid)
        // Three senders as nobody, for 4 seconds, while status is asked for again and again.
        let senders = (0..<3).map { _ in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: setpriv)
            process.arguments = [
                "--reuid=65534", "--regid=65534", "--clear-groups", python, flood, "notify", address, "4",
            ]
            process.standardOutput = FileHandle.nullDevice
            try? process.run()
            return process
        }
        var slowest = 0.0
        var answered = 0
        while senders.contains(where: \.isRunning) {
            let (report, seconds) = status(baton)
            if report != nil { answered += 1 }
            slowest = max(slowest, seconds)
        }
        for sender in senders { sender.waitUntilExit() }
        let after = status(baton)
        let rssAfter = ProcInspectorCount.rssKiB(baton.pid)
        let ignoredLines = baton.stderr.all.filter { $0.contains("cannot be one of baton's workers") }.count
        print(
            "notify flood by a stranger: \(answered) status answers during it, slowest \(Int(slowest * 1000)) ms, RSS \(rssBefore) -> \(rssAfter) KiB, \(ignoredLines) log lines"
        )
        #expect(answered > 0 && after.report != nil, "status answers during and after the flood")
        #expect(Sanitizers.active || rssAfter < 32 * 1024, "RSS stays under 32 MiB")
        #expect(ignoredLines <= 12, "strangers' datagrams are logged rate-limited, not each")
        #expect(try HTTP.get(unix: scratch.file("s.sock")).status == 200)
        #expect(baton.stop() == 0)
    }

    @Test func aWorkersStatusFloodIsBounded() throws {
        let scratch = Scratch()
        let baton = try BatonRun(
            ["--listen", "unix:\(scratch.file("web.sock"))", "--ready", "notify", "--", python, flood, "status", "4"],
            scratch: scratch
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        var answered = 0
        while baton.stdout.all.first(where: { $0.contains("sent ") }) == nil {
            if status(baton).report != nil { answered += 1 }
            if baton.stdout.waitFor("sent ", timeout: 0.05) != nil { break }
        }
        let sent = baton.stdout.all.first { $0.contains("sent ") } ?? "?"
        let rss = ProcInspectorCount.rssKiB(baton.pid)
        print("STATUS= flood by a worker: \(sent) messages, \(answered) status answers during it, RSS \(rss) KiB")
        #expect(answered > 0)
        #expect(Sanitizers.active || rss < 32 * 1024, "RSS stays under 32 MiB")
        #expect(status(baton).report?.generations.first?.workers.first?.status?.hasPrefix("busy") == true)
        #expect(baton.stop() == 0)
    }

    @Test func outputNobodyReadsNeitherBlocksNorStarvesSupervision() throws {
        let scratch = Scratch()
        let baton = try BatonRun(
            ["--listen", "unix:\(scratch.file("web.sock"))", "--ready", "fd", "--", python, flood, "output", "300000"],
            scratch: scratch,
            unreadOutput: true
        )
        // Readiness, a status answer, a crash and its respawn, a reload and a stop all still happen while the worker
        // writes without end to a stdout that nobody reads.
        var first: [Int32] = []
        let deadline = Date().addingTimeInterval(20)
        while first.isEmpty && Date() < deadline { first = servingPIDs(baton) }
        let victim = try #require(first.first)
        kill(victim, SIGKILL)
        var replaced: [Int32] = []
        while (replaced.isEmpty || replaced == first) && Date() < deadline { replaced = servingPIDs(baton) }
        #expect(!replaced.isEmpty && replaced != first, "the killed worker was respawned")
        let (_, seconds) = status(baton)
        print(
            "output flood with stdout unread: status in \(Int(seconds * 1000)) ms, respawned \(victim) -> \(replaced)"
        )
        #expect(baton.client(["reload", "--quiet"]).status == 0)
        #expect(baton.stop() == 0)
    }

    @Test func repliesOfAnySizeArriveWhole() throws {
        let scratch = Scratch()
        // 250 workers, each with a STATUS= of 512 bytes (the most baton keeps).
        let workers = 250
        let baton = try BatonRun(
            [
                "--listen", "unix:\(scratch.file("web.sock"))", "--workers", "\(workers)", "--ready", "notify", "--",
                python, "-S", flood, "bigstatus", "512",
            ],
            scratch: scratch
        )
        #expect(baton.stderr.waitFor("generation 1 ready", timeout: 120) != nil)
        let result = baton.client(["status", "--json"])
        let report = try JSONDecoder().decode(StatusReport.self, from: Data(result.stdout.utf8))
        print("status reply of \(result.stdout.utf8.count) bytes")
        #expect(result.stdout.utf8.count > 140 * 1024)
        #expect(report.generations.first?.workers.count == workers)
        #expect(report.generations.first?.workers.allSatisfy { $0.status?.utf8.count == 512 } == true)
        #expect(baton.client(["status"]).stdout.contains(String(repeating: "s", count: 512)))

        // A failing release whose worker wrote long lines to stderr: the reason and every line arrive.
        scratch.write("release", "")
        let failing = try BatonRun(
            [
                "--listen", "unix:\(scratch.file("web2.sock"))", "--ready", "fd", "--", "/bin/sh", "-c",
                "if [ -s \(scratch.file("release")) ]; then exec \(python) \(flood) stderr 20 8000; else exec \(python) \(Paths.worker); fi",
            ],
            scratch: Scratch(),
            environment: ["READY_MODE": "fd"]
        )
        #expect(failing.stderr.waitFor("generation 1 ready") != nil)
        scratch.write("release", "broken")
        let reload = failing.client(["reload"])
        #expect(reload.status == 1)
        #expect(reload.stderr.contains("exited with exit 1"))
        #expect(
            (0..<20).allSatisfy {
                reload.stderr.contains(String(format: "line %02d ", $0) + String(repeating: "e", count: 7000))
            }
        )
        #expect(failing.stop() == 0)
        #expect(baton.stop() == 0)
    }

    @Test func idleControlConnectionsNeitherStarveSupervisionNorStayForever() throws {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        let wanted = rlim_t(1400)
        if limit.rlim_cur < wanted && limit.rlim_max >= wanted {
            limit.rlim_cur = wanted
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        let (_, _, baton) = try launchWorker(["--ready", "fd"], environment: ["READY_MODE": "fd"])
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        // 1 100 idle connections, more than baton's 1 024 fds.
        var idle: [Int32] = []
        var refused = 0
        while idle.count < 1100 && refused < 20_000 {
            guard let fd = connectUnix(baton.control, nonBlocking: true) else {
                refused += 1  // the backlog is full for a moment: baton is accepting
                continue
            }
            idle.append(fd)
        }
        print("opened \(idle.count) idle control connections; baton holds \(ProcInspectorCount.openFDs(baton.pid)) fds")
        // And then a partial request, without its newline.
        let partial = try #require(connectUnix(baton.control))
        _ = send(partial, "{\"command\":", 11, 0)
        // Supervision goes on: a killed worker is respawned, status and reload are answered.
        let first = servingPIDs(baton)
        let victim = try #require(first.first)
        kill(victim, SIGKILL)
        var replaced: [Int32] = []
        let deadline = Date().addingTimeInterval(20)
        while (replaced.isEmpty || replaced == first) && Date() < deadline { replaced = servingPIDs(baton) }
        #expect(!replaced.isEmpty && replaced != first, "the killed worker was respawned")
        #expect(baton.client(["reload", "--quiet"]).status == 0)
        // The partial request is closed at its deadline, with a reason.
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(partial, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 4096)
        var received: [UInt8] = []
        while true {
            let n = recv(partial, &buffer, buffer.count, 0)
            if n <= 0 { break }
            received += buffer[0..<n]
        }
        #expect(String(decoding: received, as: UTF8.self).contains("no complete request"))
        for fd in idle + [partial] { close(fd) }
        #expect(baton.stop() == 0)
    }
}

/// A worker that breaks the listener every worker shares.
@Suite("listener integrity", .serialized, .timeLimit(.minutes(5)))
struct ListenerIntegrityTests {
    let python = FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") ? "/usr/bin/python3" : "python3"

    func launch(_ scratch: Scratch, port: Int, workers: Int = 2) throws -> BatonRun {
        scratch.write("behaviour", "ok")
        let baton = try BatonRun(
            [
                "--listen", "127.0.0.1:\(port)", "--workers", "\(workers)", "--ready", "fd", "--ready-timeout", "5s",
                "--",
                python, Paths.worker,
            ],
            scratch: scratch,
            environment: ["READY_MODE": "fd", "BEHAVIOUR_FILE": scratch.file("behaviour")]
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        return baton
    }

    /// The backlog `ss` shows for the listener on `port` (its Send-Q).
    func backlog(_ port: Int) -> Int? {
        let out = run(Paths.which("ss") ?? "/usr/bin/ss", ["-ltnH", "sport = :\(port)"]).stdout
        return out.split(separator: "\n").first.flatMap {
            Int($0.split(separator: " ", omittingEmptySubsequences: true)[2])
        }
    }

    @Test func aWorkerThatShutsTheListenerDownDoesNotStopTheService() throws {
        let scratch = Scratch()
        // A port the kernel just found free: fixed numbers collide with the suites that run beside this one.
        let port = try #require(AdoptBindTests.freePort())
        let baton = try launch(scratch, port: port)
        scratch.write("behaviour", "shutdown-listener")
        #expect(baton.client(["reload", "--quiet"]).status == 0)
        #expect(baton.stderr.waitFor("was shut down (shutdown()) by a worker of generation 2") != nil)
        #expect(baton.stderr.all.contains { $0.contains("it listens again") })
        #expect(baton.stdout.waitFor("shut the listener down") != nil)
        for _ in 0..<20 { #expect(try HTTP.get(host: "127.0.0.1", port: port).status == 200) }
        let status = baton.client(["status"]).stdout
        #expect(status.contains("serving") && !status.contains("REFUSES"))
        // A later reload to a healthy release serves too.
        scratch.write("behaviour", "ok")
        #expect(baton.client(["reload", "--quiet"]).status == 0)
        #expect(try HTTP.get(host: "127.0.0.1", port: port).status == 200)
        #expect(baton.stop() == 0)
    }

    @Test func aReleaseThatShutsTheListenerDownAndFailsIsRolledBackWithAListeningSocket() throws {
        let scratch = Scratch()
        // A port the kernel just found free: fixed numbers collide with the suites that run beside this one.
        let port = try #require(AdoptBindTests.freePort())
        // One worker: the new generation's only worker breaks the listener, then fails its start.
        let baton = try launch(scratch, port: port, workers: 1)
        scratch.write("behaviour", "shutdown-then-crash")
        #expect(baton.client(["reload", "--quiet"]).status == 1)
        #expect(baton.stderr.waitFor("it listens again") != nil)
        for _ in 0..<20 { #expect(try HTTP.get(host: "127.0.0.1", port: port).status == 200) }
        #expect(baton.stop() == 0)
    }

    @Test func aFullAcceptQueueIsReportedAsStalled() throws {
        let scratch = Scratch()
        // A port the kernel just found free: fixed numbers collide with the suites that run beside this one.
        let port = try #require(AdoptBindTests.freePort())
        scratch.write("behaviour", "no-accept")
        let baton = try BatonRun(
            ["--listen", "127.0.0.1:\(port)", "--backlog", "2", "--ready", "fd", "--", python, Paths.worker],
            scratch: scratch,
            environment: ["READY_MODE": "fd", "BEHAVIOUR_FILE": scratch.file("behaviour")]
        )
        #expect(baton.stdout.waitFor("accepting nothing") != nil)
        // Connections the kernel completes into the queue, until it is full.
        var clients: [Int32] = []
        for _ in 0..<4 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            _ = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            clients.append(fd)
        }
        // Each status request looks at the listeners (as does each tick of the service manager's watchdog).
        let deadline = Date().addingTimeInterval(10)
        while !baton.stderr.all.contains(where: { $0.contains("accepting looks stalled") }) && Date() < deadline {
            _ = baton.client(["status"])
        }
        #expect(baton.stderr.all.contains { $0.contains("accepting looks stalled: its queue is full") })
        for fd in clients { close(fd) }
        #expect(baton.stop() == 0)
    }

    @Test func aWorkerThatBreaksTheListenerAgainAndAgainDoesNotFloodTheJournal() throws {
        let scratch = Scratch()
        // A port the kernel just found free: fixed numbers collide with the suites that run beside this one.
        let port = try #require(AdoptBindTests.freePort())
        let baton = try launch(scratch, port: port)
        scratch.write("behaviour", "shutdown-loop")
        #expect(baton.client(["reload", "--quiet"]).status == 0)
        #expect(baton.stdout.waitFor("stopped breaking the listener") != nil)
        // Generation 1 gone first: a worker of it that accepts a connection as its stop signal lands closes it
        // unanswered (the fixture's stop interrupts it anywhere), which is not what this test is about.
        #expect(baton.stderr.waitFor("generation 1 drained") != nil)
        #expect(try HTTP.get(host: "127.0.0.1", port: port).status == 200, "it listens again afterwards")
        let repairs = baton.stderr.all.filter { $0.contains("it listens again") }
        print("a worker breaking the listener every 10 ms for 1 s: \(repairs.count) repair lines")
        #expect(repairs.count <= 6, "repairs are logged rate-limited: \(repairs.count)")
        #expect(baton.stop() == 0)
    }

    @Test(arguments: [false, true])
    func aSocketFilterAWorkerAttachesIsRemovedOrReported(locked: Bool) throws {
        try #require(getuid() == 0, "attaching a socket filter needs root")
        let scratch = Scratch()
        // A port the kernel just found free: fixed numbers collide with the suites that run beside this one.
        let port = try #require(AdoptBindTests.freePort())
        let baton = try launch(scratch, port: port, workers: 1)
        scratch.write("behaviour", locked ? "locked-filter" : "filter")
        #expect(baton.client(["reload", "--quiet"]).status == 0)
        #expect(baton.stdout.waitFor("filter attached") != nil)
        let deadline = Date().addingTimeInterval(10)
        var status = ""
        while !baton.stderr.all.contains(where: { $0.contains("socket filter") }) && Date() < deadline {
            status = baton.client(["status"]).stdout
        }
        status = baton.client(["status"]).stdout
        if locked {
            #expect(baton.stderr.all.contains { $0.contains("locked socket filter") })
            #expect(status.contains("REFUSES CONNECTIONS") && status.contains("not serving"), "\(status)")
        } else {
            #expect(baton.stderr.all.contains { $0.contains("now removed") })
            #expect(try HTTP.get(host: "127.0.0.1", port: port).status == 200)
            #expect(!status.contains("REFUSES"))
        }
        #expect(baton.stop() == 0)
    }

    @Test func aWorkersSmallBacklogIsUndone() throws {
        let scratch = Scratch()
        // A port the kernel just found free: fixed numbers collide with the suites that run beside this one.
        let port = try #require(AdoptBindTests.freePort())
        let baton = try launch(scratch, port: port)
        let before = try #require(backlog(port))
        scratch.write("behaviour", "small-backlog")
        #expect(baton.client(["reload", "--quiet"]).status == 0)
        #expect(baton.stdout.waitFor("listen(fd, 1)") != nil)
        // Each status request checks the listeners.
        _ = baton.client(["status"])
        #expect(backlog(port) == before, "the backlog is baton's again")
        #expect(baton.stderr.all.contains { $0.contains("given a backlog of 1 instead of \(before)") })
        #expect(baton.stop() == 0)
    }
}
