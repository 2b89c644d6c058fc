import BatonCore
import BatonSystem
import Foundation
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `baton signal`, `baton ls`, the workers' figures in `baton status`, and an oversized request, with real launchers
/// and workers.
@Suite("operator commands, with real processes", .serialized, .timeLimit(.minutes(5)))
struct OperatorTests {
    /// The signals each worker recorded (REPORT_DIR/PID.signals), in order.
    func recorded(_ pid: Int32, in reports: String) -> [String] {
        let text = (try? String(contentsOfFile: "\(reports)/\(pid).signals", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map(String.init)
    }

    /// The launcher's answer to `baton signal ... --json`.
    func signalReply(_ result: CommandResult) throws -> ControlProtocol.Reply {
        try JSONDecoder().decode(ControlProtocol.Reply.self, from: Data(result.stdout.utf8))
    }

    @Test func aSignalReachesEveryWorkerOfTheServingGenerationAndTheReportedPidsAreTheirs() throws {
        let (scratch, reports, baton) = try launchWorker(
            ["--workers", "3"],
            environment: ["RECORD_SIGNALS": "HUP,USR1"]
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let workers = WorkerReport.all(in: reports)
        let bySlot = Dictionary(uniqueKeysWithValues: workers.map { (Int($0.env["BATON_WORKER"] ?? "") ?? 0, $0.pid) })
        #expect(bySlot.keys.sorted() == [1, 2, 3])

        let hup = baton.client(["signal", "HUP", "--json"])
        #expect(hup.status == 0, "\(hup.stderr)")
        let reply = try signalReply(hup)
        #expect(Set(try #require(reply.pids)) == Set(bySlot.values), "the pids that got it are the workers'")
        for pid in bySlot.values {
            #expect(baton.stdout.waitFor("worker pid \(pid) got SIGHUP") != nil)
            #expect(recorded(pid, in: reports) == ["SIGHUP"])
        }
        // The text form names each pid; the app reread its configuration and still serves.
        let text = baton.client(["signal", "SIGHUP"])
        #expect(text.status == 0)
        for (slot, pid) in bySlot { #expect(text.stdout.contains("pid \(pid) (worker \(slot))"), "\(text.stdout)") }
        #expect(text.stdout.hasPrefix("sent SIGHUP to generation 1: "))
        #expect(try HTTP.get(unix: scratch.file("s.sock")).status == 200)

        // --worker K: that worker only.
        let line = baton.stdout.all.count
        let one = baton.client(["signal", "USR1", "--worker", "2", "--generation", "1", "--json"])
        #expect(one.status == 0, "\(one.stderr)")
        #expect(try signalReply(one).pids == [bySlot[2]!])
        #expect(baton.stdout.waitFor("worker pid \(bySlot[2]!) got SIGUSR1", after: line) != nil)
        // A round to all after it: once each worker has handled that one, a stray USR1 would have been handled too.
        let after = baton.stdout.all.count
        #expect(baton.client(["signal", "10"]).status == 0, "10 is SIGUSR1 by number")
        for pid in bySlot.values { #expect(baton.stdout.waitFor("worker pid \(pid) got SIGUSR1", after: after) != nil) }
        #expect(recorded(bySlot[2]!, in: reports).filter { $0 == "SIGUSR1" }.count == 2)
        for slot in [1, 3] { #expect(recorded(bySlot[slot]!, in: reports).filter { $0 == "SIGUSR1" }.count == 1) }
        #expect(baton.stop() == 0)
    }

    @Test func aReloadsNewGenerationIsSignalledOnceItServesAndTheOldOneOnlyWhenAskedFor() throws {
        let (_, reports, baton) = try launchWorker(["--workers", "2"], environment: ["RECORD_SIGNALS": "HUP"])
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let old = Set(WorkerReport.all(in: reports).map(\.pid))
        #expect(baton.client(["reload"]).status == 0)
        let new = Set(WorkerReport.all(in: reports).map(\.pid)).subtracting(old)
        #expect(new.count == 2)
        let reply = try signalReply(baton.client(["signal", "HUP", "--json"]))
        #expect(Set(try #require(reply.pids)) == new, "only the serving generation's workers")
        // Generation 1 is gone: asking for it is an error that says which generations there are.
        let gone = baton.client(["signal", "HUP", "--generation", "1"])
        #expect(gone.status == 1)
        #expect(
            gone.stderr == "baton: no generation 1 (generations: 2 (serving)): give one of them, or see baton status"
        )
        #expect(baton.stop() == 0)
    }

    @Test(arguments: [
        ("KILL", "baton: SIGKILL is refused"), ("SIGKILL", "baton: SIGKILL is refused"),
        ("9", "baton: SIGKILL is refused"), ("stop", "baton: SIGSTOP is refused"), ("19", "baton: SIGSTOP is refused"),
        ("BOGUS", "baton: invalid signal 'BOGUS': give a name such as HUP"), ("0", "baton: invalid signal '0'"),
        ("65", "baton: invalid signal '65'"), ("RTMIN+99", "baton: invalid signal 'RTMIN+99'"),
    ])
    func killStopAndUnknownSignalsAreRefusedWithOneLineAndExitStatus64(signal: String, error: String) throws {
        let (_, reports, baton) = try launchWorker(environment: ["RECORD_SIGNALS": "HUP"])
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let worker = try #require(WorkerReport.all(in: reports).first).pid
        let result = baton.client(["signal", signal])
        #expect(result.status == 64)
        #expect(result.stderr.hasPrefix(error), "\(result.stderr)")
        #expect(!result.stderr.contains("\n"), "one line")
        #expect(result.stdout.isEmpty)
        #expect(isAlive(worker) && recorded(worker, in: reports).isEmpty)
        #expect(baton.stop() == 0)
    }

    @Test func theLauncherItselfRefusesSIGKILLAndSIGSTOPAndBadNumbers() throws {
        let (_, reports, baton) = try launchWorker()
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let worker = try #require(WorkerReport.all(in: reports).first).pid
        // A client other than baton's own, which checks nothing.
        for (signal, answer) in [
            ("9", "SIGKILL is refused"), ("19", "SIGSTOP is refused"),
            ("0", "invalid signal 0: give a number from 1 to"),
            ("-15", "invalid signal -15"), ("1000", "invalid signal 1000"),
        ] {
            let reply = exchange(baton.control, Array("{\"command\":\"signal\",\"signal\":\(signal)}\n".utf8))
            #expect(reply.contains("\"kind\":\"error\"") && reply.contains(answer), "\(reply)")
        }
        let noSlot = exchange(baton.control, Array("{\"command\":\"signal\",\"signal\":1,\"worker\":5}\n".utf8))
        #expect(noSlot.contains("no worker 5 in generation 1: its workers are 1 to 1"), "\(noSlot)")
        #expect(isAlive(worker), "no signal reached the worker")
        #expect(baton.stop() == 0)
    }

    @Test func lsShowsEveryInstanceAndNeitherAStaleSocketNorAPausedBatonStallsIt() throws {
        let runtime = Scratch()
        var instances: [String: (scratch: Scratch, reports: String, baton: BatonRun)] = [:]
        for name in ["shop", "api", "old", "hung"] {
            let own = Scratch()
            let reports = own.file("reports")
            try FileManager.default.createDirectory(atPath: reports, withIntermediateDirectories: true)
            let baton = try BatonRun(
                [
                    "--name", name, "--workers", name == "shop" ? "2" : "1", "--listen", "unix:\(own.file("s.sock"))",
                    "--",
                ]
                    + ["python3", Paths.worker],
                scratch: own,
                environment: ["RUNTIME_DIRECTORY": runtime.path, "REPORT_DIR": reports],
                defaultControl: runtime.file("\(name).sock")
            )
            #expect(baton.stderr.waitFor("generation 1 ready") != nil)
            instances[name] = (own, reports, baton)
        }
        // One killed outright, its socket file left behind; one paused.
        let old = try #require(instances["old"])
        old.baton.signal(SIGKILL)
        #expect(old.baton.wait() != nil)
        for worker in WorkerReport.all(in: old.reports) {
            kill(worker.pid, SIGKILL)
            #expect(waitForExit(worker.pid))
        }
        #expect(FileManager.default.fileExists(atPath: runtime.file("old.sock")))
        let hung = try #require(instances["hung"])
        hung.baton.signal(SIGSTOP)
        defer { hung.baton.signal(SIGCONT) }

        let environment = ProcessInfo.processInfo.environment.merging(["RUNTIME_DIRECTORY": runtime.path]) { $1 }
        let json = run(Paths.baton, ["ls", "--json"], environment: environment)
        #expect(json.status == 0, "\(json.stderr)")
        let listed = try JSONDecoder().decode([InstanceListing].self, from: Data(json.stdout.utf8))
            .filter { $0.control.hasPrefix(runtime.path + "/") }
        #expect(listed.map(\.name) == ["api", "hung", "old", "shop"], "\(listed)")
        let byName = Dictionary(uniqueKeysWithValues: listed.map { ($0.name, $0) })
        #expect(byName["old"]?.state == .stale)
        #expect(byName["hung"]?.state == .notAnswering)
        for name in ["shop", "api"] {
            let entry = try #require(byName[name])
            #expect(entry.state == .running)
            #expect(entry.status?.pid == instances[name]?.baton.pid)
            #expect(entry.status?.generations.first?.workers.count == (name == "shop" ? 2 : 1))
        }

        let table = run(Paths.baton, ["ls"], environment: environment)
        #expect(table.status == 0)
        let lines = table.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("NAME") == true && lines.first?.contains("LAST RELOAD") == true)
        let shop = try #require(lines.first { $0.hasPrefix("shop ") })
        let shopPID = try #require(instances["shop"]).baton.pid
        let shopColumns = shop.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        #expect(Array(shopColumns.prefix(5)) == ["shop", "\(shopPID)", "0.1.0", "1", "2/2"], "\(shop)")
        #expect(shop.contains("unix:\(try #require(instances["shop"]).scratch.file("s.sock"))"))
        #expect(shop.hasSuffix("none"), "no reload yet")
        #expect(lines.contains { $0.hasPrefix("api ") && $0.contains(" 1/1 ") })
        #expect(lines.contains { $0.hasPrefix("old ") && $0.contains("not running: stale control socket") })
        #expect(lines.contains { $0.hasPrefix("hung ") && $0.contains("not answering") })

        hung.baton.signal(SIGCONT)
        for name in ["shop", "api", "hung"] { #expect(instances[name]?.baton.stop() == 0) }
    }

    @Test func signalNamesAndNumbersRoundTripAndNothingOutOfRangeIsANumber() {
        let rtMin = __libc_current_sigrtmin()
        let rtMax = __libc_current_sigrtmax()
        #expect(Signals.largest == rtMax)
        for number in Array(1...31) + Array(rtMin...rtMax) {
            #expect(Signals.number(named: Signals.name(of: Int32(number))) == Int32(number), "\(number)")
            #expect(Signals.number(named: "SIG" + Signals.name(of: Int32(number)).lowercased()) == Int32(number))
        }
        #expect(Signals.number(named: "RTMAX-0") == rtMax && Signals.number(named: "RTMIN+2") == rtMin + 2)
        for bad in ["0", "-1", "\(rtMax + 1)", "RTMIN+99", "RTMAX-99", "RTMIN+-1", "HUPP", "", "SIG"] {
            #expect(Signals.number(named: bad) == nil, "\(bad)")
        }
    }

    @Test func lsLooksInTheRuntimeDirectoriesAndAsksNoOtherProgramsSocket() throws {
        let run = Scratch()
        let extra = Scratch()
        for directory in ["baton", "baton-api", "app", "containerd"] {
            try FileManager.default.createDirectory(atPath: run.file(directory), withIntermediateDirectories: true)
        }
        var held: [FileDescriptor] = []
        for (path, mode) in [
            ("baton/shop.sock", 0o600), ("baton-api/api.sock", 0o600), ("app/app.sock", 0o600),
            ("containerd/containerd.sock", 0o660), ("app/other.sock", 0o600), ("baton/web.sock", 0o666),
        ] {
            held.append(try Sockets.listenUnix(path: run.file(path), mode: UInt32(mode), backlog: 1).release())
        }
        held.append(try Sockets.listenUnix(path: extra.file("x.sock"), mode: 0o600, backlog: 1).release())
        defer { for fd in held { fd.closeOnce() } }
        extra.write("notes.txt", "not a socket")
        try FileManager.default.createSymbolicLink(
            atPath: extra.file("again.sock"),
            withDestinationPath: extra.file("x.sock")
        )
        let found = ControlSockets.discover(runtimeDirectories: [extra.path], run: run.path)
        #expect(
            found == [
                extra.file("again.sock"), run.file("baton/shop.sock"), run.file("baton-api/api.sock"),
                run.file("app/app.sock"),
            ],
            "\(found)"
        )
    }

    @Test func statusShowsEachWorkersCPUTimeAndResidentMemory() throws {
        let (_, reports, baton) = try launchWorker(["--workers", "2"])
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let result = baton.client(["status", "--json"])
        #expect(result.status == 0)
        let status = try JSONDecoder().decode(StatusReport.self, from: Data(result.stdout.utf8))
        let workers = try #require(status.generations.first).workers
        #expect(Set(workers.compactMap(\.pid)) == Set(WorkerReport.all(in: reports).map(\.pid)))
        for worker in workers {
            let pid = try #require(worker.pid)
            let rss = try #require(worker.rssBytes)
            let cpu = try #require(worker.cpuSeconds)
            // What the kernel says of the same process (VmRSS, in kB), near the same moment.
            let vmRSS = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
                .split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
                .flatMap { Int64($0.split(separator: " ", omittingEmptySubsequences: true)[1]) }
            let kernel = try #require(vmRSS) * 1024
            #expect(rss > 1 << 20 && rss < 1 << 30, "a Python worker: some MiB (\(rss))")
            #expect(rss > kernel / 2 && rss < kernel * 2, "\(rss) against VmRSS \(kernel)")
            #expect(cpu > 0, "starting Python costs CPU time")
            #expect(cpu <= worker.uptimeSeconds * Double(ProcessInfo.processInfo.activeProcessorCount) + 1)
        }
        // A worker that burns CPU time between two reports shows it, as time and as a percentage of the interval.
        let (_, _, busy) = try launchWorker()
        #expect(busy.stderr.waitFor("generation 1 ready") != nil)
        let before = try #require(try busyWorker(busy))
        #expect(try HTTP.get(unix: busy.scratch.file("s.sock"), "/?spin=300").status == 200)
        let after = try #require(try busyWorker(busy))
        let used = try #require(after.cpuSeconds) - (try #require(before.cpuSeconds))
        #expect(used >= 0.25, "the 300 ms it spun (\(used))")
        let percent = try #require(after.cpuPercent)
        #expect(percent > 0 && percent <= 100 * Double(ProcessInfo.processInfo.activeProcessorCount) + 10, "\(percent)")
        #expect(busy.stop() == 0)

        let text = baton.client(["status"]).stdout
        #expect(
            text.split(separator: "\n").filter {
                $0.contains("worker ") && $0.contains(" cpu ") && $0.contains(" rss ")
            }.count == 2,
            "\(text)"
        )
        #expect(baton.stop() == 0)
    }

    @Test func anOversizedRequestIsReportedWithItsRealSize() throws {
        let (scratch, _, baton) = try launchWorker()
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let withNewline = exchange(baton.control, [UInt8](repeating: 65, count: 100_000) + [10])
        #expect(
            withNewline.contains("request of 100000 bytes is too large (a request is one line of at most 4096 bytes)"),
            "\(withNewline)"
        )
        // Without its newline, it is counted until the request deadline.
        let cut = exchange(baton.control, [UInt8](repeating: 66, count: 10_000))
        #expect(cut.contains("request of 10000 bytes is too large"), "\(cut)")
        // Just at the limit, a line is read as a request.
        let padded = Array("{\"command\":\"status\"}".utf8) + [UInt8](repeating: 32, count: 4096 - 20) + [10]
        #expect(exchange(baton.control, padded).contains("\"kind\":\"status\""))
        let over = Array("{\"command\":\"status\"}".utf8) + [UInt8](repeating: 32, count: 4097 - 20) + [10]
        #expect(exchange(baton.control, over).contains("request of 4097 bytes is too large"))
        #expect(try HTTP.get(unix: scratch.file("s.sock")).status == 200, "the launcher is undisturbed")
        #expect(baton.stop() == 0)
    }

    /// The one worker of `baton`, as `baton status --json` reports it.
    func busyWorker(_ baton: BatonRun) throws -> StatusReport.Worker? {
        let result = baton.client(["status", "--json"])
        return try JSONDecoder().decode(StatusReport.self, from: Data(result.stdout.utf8)).generations.first?.workers
            .first
    }

    /// Sends `bytes` to the control socket at `path` and returns everything it answers until it closes.
    func exchange(_ path: String, _ bytes: [UInt8]) -> String {
        guard let fd = connectUnix(path) else { return "cannot connect" }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 15, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
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
}
