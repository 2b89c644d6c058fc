import BatonCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Zero-configuration readiness (`--ready listen`) with real workers: servers that wait in `poll`/`select` on baton's
/// listener are ready (as those in epoll and accept were), and a worker that misses its ready timeout is told what
/// baton waited for and what it saw instead.
@Suite("--ready listen: poll, select and the ready-timeout message", .timeLimit(.minutes(10)))
struct ListenReadinessTests {
    static let fixture = Paths.packageRoot.appendingPathComponent("Tests/Fixtures/waits.py").path

    var python: String { get throws { try #require(Paths.python3) } }

    /// baton on a unix socket with `--ready listen` and one `waits.py` worker in `mode` (or the mode in the file
    /// `@PATH` names, read at each start).
    func launch(
        _ mode: String,
        options: [String] = [],
        wrapper: [String] = [],
        scratch: Scratch = Scratch(),
        python: String? = nil
    ) throws -> BatonRun {
        try BatonRun(
            ["--listen", "unix:\(scratch.file("s.sock"))", "--ready", "listen"] + options + [
                "--", try python ?? self.python, Self.fixture, mode,
            ],
            scratch: scratch,
            wrapper: wrapper
        )
    }

    /// The pid the worker printed (`worker pid N waits: MODE`), the `after`-th such line.
    func workerPID(_ baton: BatonRun, after: Int = 0) throws -> Int32 {
        let index = try #require(baton.stdout.waitFor(" waits: ", after: after), "\(baton.diagnosis())")
        let line = baton.stdout.all[index]
        let pid = line.components(separatedBy: "worker pid ").last?.split(separator: " ").first
        return try #require(pid.flatMap { Int32($0) })
    }

    /// The system call the main thread of `pid` is blocked in, once it is blocked in one.
    func blockedCall(_ pid: Int32) -> SyscallTable.Call? {
        for _ in 0..<200 {
            let text = (try? String(contentsOfFile: "/proc/\(pid)/syscall", encoding: .utf8)) ?? ""
            if case .blocked(let number, _) = SyscallLine(text) {
                let call = SyscallTable.current?.call(number)
                // A lock between two waits (Python's GIL, taken back after serving; seen under ASan): look again.
                if call != .futex { return call }
            }
            usleep(10_000)  // it is running between two waits: look again
        }
        return nil
    }

    @Test(arguments: [
        ("select", [SyscallTable.Call.select, .pselect6]), ("poll", [.poll, .ppoll]),
        ("socketserver", [.poll, .ppoll]), ("moved", [.select, .pselect6]),
        ("selectors", [.epollWait, .epollPwait, .epollPwait2]),
    ])
    func aWorkerThatWaitsOnTheListenerIsReady(mode: String, calls: [SyscallTable.Call]) throws {
        let scratch = Scratch()
        let baton = try launch(mode, options: ["--ready-timeout", "30s"], scratch: scratch)
        let pid = try workerPID(baton)
        #expect(baton.stderr.waitFor("generation 1 ready (1 worker(s))") != nil, "\(baton.diagnosis())")
        let response = try HTTP.get(unix: scratch.file("s.sock"))
        #expect(response.body == "generation 1 worker 1 pid \(pid)\n")
        // What the worker waits in is what this case is about (the stdlib could change how it waits).
        let call = blockedCall(pid)
        #expect(call.map { calls.contains($0) } == true, "\(mode) waits in \(String(describing: call))")
        if mode == "moved" {
            let target = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/9")
            #expect(target.hasPrefix("socket:["), "the listener is at fd 9")
            #expect(!FileManager.default.fileExists(atPath: "/proc/\(pid)/fd/3"), "and no longer at fd 3")
        }
        #expect(baton.stop() == 0)
    }

    /// Reloads under load, each new generation found ready in `select`/`poll`: not one request fails.
    @Test(arguments: ["select", "poll"])
    func reloadsOfAWorkerThatWaitsInSelectUnderLoadLoseNothing(mode: String) throws {
        let scratch = Scratch()
        let port = try #require(AdoptBindTests.freePort(), "a free port")
        let baton = try BatonRun(
            [
                "--listen", "127.0.0.1:\(port)", "--workers", "2", "--ready", "listen", "--ready-timeout", "30s",
                "--", try python, Self.fixture, mode,
            ],
            scratch: scratch
        )
        #expect(baton.stderr.waitFor("generation 1 ready (2 worker(s))") != nil, "\(baton.diagnosis())")
        let load = Process()
        load.executableURL = URL(fileURLWithPath: try python)
        load.arguments = [
            Paths.loadgen, "--url", "http://127.0.0.1:\(port)/", "--clients", "16", "--mode", "mixed", "--slow-every",
            "10", "--slow-ms", "200", "--until-file", scratch.file("stop"), "--duration", "600", "--json",
            scratch.file("load.json"),
        ]
        load.standardError = FileHandle.nullDevice
        try load.run()
        for generation in 2...4 {
            // Each generation serves a while before the next reload.
            let served = try (0..<20).map { _ in try HTTP.get(host: "127.0.0.1", port: port).body }
            #expect(served.allSatisfy { $0.hasPrefix("generation \(generation - 1) ") }, "\(served)")
            let reload = baton.client(["reload"])
            #expect(reload.status == 0, "\(reload.stderr)")
            #expect(reload.stdout.contains("generation \(generation) serving"), "\(reload.stdout)")
        }
        scratch.write("stop", "4")
        load.waitUntilExit()
        let data = try #require(FileManager.default.contents(atPath: scratch.file("load.json")))
        let summary = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let failed = summary["failed"] as? Int ?? -1
        let ok = summary["ok"] as? Int ?? 0
        print("--ready listen, \(mode): 3 reloads under load, \(summary["requests"] ?? 0) requests, \(failed) failed")
        #expect(failed == 0, "\(summary)")
        #expect(ok > 100)
        #expect(baton.stop() == 0)
    }

    /// gunicorn's sync workers (forked by its master, which reads LISTEN_FDS) wait in select() on the listener.
    @Test func gunicornSyncWorkersAreReady() throws {
        let python = try python
        try #require(
            run(python, ["-c", "import gunicorn"]).status == 0,
            "gunicorn is installed (pip install gunicorn)"
        )
        let scratch = Scratch()
        let fixtures = Paths.packageRoot.appendingPathComponent("Tests/Fixtures/gunicorn").path
        try FileManager.default.copyItem(atPath: "\(fixtures)/good.py", toPath: scratch.file("app.py"))
        let baton = try BatonRun(
            [
                "--listen", "unix:\(scratch.file("s.sock"))", "--ready", "listen", "--ready-timeout", "30s", "--",
                python, "-m", "gunicorn", "--chdir", scratch.path, "--workers", "2", "--worker-class", "sync",
                "--control-socket", scratch.file("gunicorn.ctl"), "app:app",
            ],
            scratch: scratch
        )
        #expect(baton.stderr.waitFor("generation 1 ready (1 worker(s))") != nil, "\(baton.diagnosis())")
        #expect(try HTTP.get(unix: scratch.file("s.sock")).body == "ok\n")
        let reload = baton.client(["reload"])
        #expect(reload.status == 0, "\(reload.stderr)")
        #expect(reload.stdout.contains("generation 2 serving"), "\(reload.stdout)")
        #expect(try HTTP.get(unix: scratch.file("s.sock")).body == "ok\n")
        // The master's children are what was seen: sync workers in select.
        let status = baton.client(["status", "--json"]).stdout
        let report = try #require(try JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])
        let serving = (report["generations"] as? [[String: Any]] ?? []).filter { $0["state"] as? String == "serving" }
        let workers = serving.flatMap { $0["workers"] as? [[String: Any]] ?? [] }
        let master = try #require(workers.first?["pid"] as? Int, "\(status)")
        let pid = Int32(master)
        let children = try String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)
            .split(separator: " ").compactMap { Int32($0) }
        #expect(children.count == 2, "two sync workers")
        let calls = children.map { blockedCall($0) }
        #expect(calls.contains { $0 == .select || $0 == .pselect6 }, "\(calls)")
        #expect(baton.stop() == 0)
    }

    static let waited =
        "did not become ready within 3s: --ready listen waited for it to accept on baton's listener (fd 3), but"

    /// A worker that never accepts on the listener is told at the ready timeout what it did instead.
    @Test(arguments: [
        ("sleep", "fd 3 is open and unused (in no epoll set, no thread waits on it) and its main thread sleeps in "),
        ("closed", "it closed fd 3 and its main thread sleeps in "),
        (
            "stdin",
            "fd 3 is open and unused (in no epoll set, no thread waits on it) and its main thread waits in read() on fd 0 (pipe:["
        ),
        (
            "select-other",
            "fd 3 is open and unused (in no epoll set, no thread waits on it) and its main thread waits in "
        ),
    ])
    func aWorkerThatNeverAcceptsIsToldWhatItDidInstead(mode: String, seen: String) throws {
        let baton = try launch(mode, options: ["--ready-timeout", "3s"])
        #expect(baton.wait() == 1, "the first generation never served")
        let line = try #require(baton.stderr.all.first { $0.contains("did not become ready") }, "\(baton.diagnosis())")
        #expect(line.contains(Self.waited + " " + seen), "\(line)")
        switch mode {
        case "sleep", "closed":
            #expect(line.contains("nanosleep(): "), "\(line)")
        case "select-other":
            #expect(line.contains("select() on fd 6 (pipe:[") || line.contains("pselect6() on fd 6 (pipe:["), "\(line)")
        default:
            break
        }
        let advice =
            mode == "closed"
            ? ": keep the fds in LISTEN_FDS open and accept on them, or use --ready notify, fd or exec"
            : ": accept on fd 3 (LISTEN_FDS), or use --ready notify, fd or exec"
        #expect(line.hasSuffix(advice), "\(line)")
    }

    @Test func aWorkerOnASocketOfItsOwnIsToldSo() throws {
        let port = try #require(AdoptBindTests.freePort(), "a free port")
        let scratch = Scratch()
        let baton = try BatonRun(
            [
                "--listen", "unix:\(scratch.file("s.sock"))", "--ready", "listen", "--ready-timeout", "3s", "--",
                try python, Self.fixture, "own-port",
            ],
            scratch: scratch,
            environment: ["PORT": "\(port)"]
        )
        #expect(baton.wait() == 1)
        #expect(
            baton.stderr.text.contains(
                "did not become ready within 3s: the app listens on 127.0.0.1:\(port) itself, not on baton's unix:\(scratch.file("s.sock")): bind the address baton serves, use LISTEN_FDS, or change --listen"
            ),
            "\(baton.stderr.text)"
        )
    }

    /// A reload whose new worker never accepts fails with the explanation, and the serving generation carries on.
    @Test func aReloadToAReleaseThatNeverAcceptsFailsWithWhatWasSeen() throws {
        let scratch = Scratch()
        scratch.write("mode", "select")
        let baton = try launch("@\(scratch.file("mode"))", options: ["--ready-timeout", "3s"], scratch: scratch)
        #expect(baton.stderr.waitFor("generation 1 ready") != nil, "\(baton.diagnosis())")
        scratch.write("mode", "stdin")
        let reload = baton.client(["reload"])
        #expect(reload.status == 1)
        #expect(
            reload.stderr.contains(
                Self.waited
                    + " fd 3 is open and unused (in no epoll set, no thread waits on it) and its main thread waits in read() on fd 0 (pipe:["
            ),
            "\(reload.stderr)"
        )
        #expect(try HTTP.get(unix: scratch.file("s.sock")).body.hasPrefix("generation 1 "))
        #expect(baton.stop() == 0)
    }

    /// With `--user`, baton (root) looks into a worker of another uid: its select() is seen.
    @Test func aWorkerRunAsAnotherUserIsSeenInSelect() throws {
        try #require(getuid() == 0, "run as root: the worker runs as nobody")
        let python = "/usr/bin/python3"
        try #require(access(python, X_OK) == 0, "\(python) is installed")
        let scratch = Scratch()
        let baton = try launch(
            "select",
            options: ["--user", "nobody", "--group", "nogroup", "--ready-timeout", "30s"],
            scratch: scratch,
            python: python
        )
        let pid = try workerPID(baton)
        #expect(baton.stderr.waitFor("generation 1 ready (1 worker(s))") != nil, "\(baton.diagnosis())")
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        #expect(status.contains("\nUid:\t65534\t"), "the worker runs as nobody")
        #expect(try HTTP.get(unix: scratch.file("s.sock")).body == "generation 1 worker 1 pid \(pid)\n")
        #expect(baton.stop() == 0)
    }

    /// A baton without the right to look into its worker (another uid's view: a non-dumpable worker, baton not root)
    /// says so at the ready timeout and names the way out, instead of guessing.
    @Test func whatBatonMayNotSeeIsSaid() throws {
        try #require(getuid() == 0, "run as root: baton is started as nobody")
        let setpriv = try #require(Paths.which("setpriv"))
        // An interpreter nobody can run (not one under /root).
        let python = "/usr/bin/python3"
        try #require(access(python, X_OK) == 0, "\(python) is installed")
        let scratch = Scratch()
        #expect(chmod(scratch.path, 0o777) == 0)
        let baton = try launch(
            "unseen",
            options: ["--ready-timeout", "3s"],
            wrapper: [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"],
            scratch: scratch,
            python: python
        )
        let pid = try workerPID(baton)
        #expect(baton.wait() == 1)
        #expect(
            baton.stderr.text.contains(
                Self.waited
                    + " baton may not look into it (open /proc/\(pid)/fd: Permission denied): use --ready notify or --ready fd; looking into a worker takes its uid and a dumpable worker, or CAP_SYS_PTRACE"
            ),
            "\(baton.stderr.text)"
        )
    }

    @Test(arguments: ["", "Listen", "listen,notify", " listen"])
    func badReadyValuesGetAOneLineError(value: String) {
        let scratch = Scratch()
        let result = run(
            Paths.baton,
            ["run", "--control", scratch.file("c.sock"), "--listen", "127.0.0.1:8080", "--ready", value, "--", "true"]
        )
        #expect(result.status == 64)
        #expect(result.stderr == "baton: invalid --ready '\(value)': use notify, fd, listen or exec")
    }
}
