import BatonCore
import BatonSystem
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The preload library beside the `baton` under test (where baton looks for it), built once per test run.
enum AdoptLibrary {
    static let fixtures = Paths.packageRoot.appendingPathComponent("Tests/Fixtures/adopt").path

    /// Builds `libbaton-adopt.so` into `directory` with extra compiler flags; returns its path.
    static func build(into directory: String, flags: [String] = []) -> String? {
        let script = Paths.packageRoot.appendingPathComponent("preload/build.sh").path
        let result = run("/bin/bash", [script, directory] + flags)
        guard result.status == 0 else {
            Issue.record("preload/build.sh failed: \(result.stderr)")
            return nil
        }
        return directory + "/libbaton-adopt.so"
    }

    /// The library where baton finds it: beside its executable.
    static let besideBaton: String? = build(into: URL(fileURLWithPath: Paths.baton).deletingLastPathComponent().path)

    static func fixture(_ name: String) -> String { fixtures + "/" + name }
}

/// Apps that bind their own port (`listen(8000)`) run unchanged under baton: the preloaded library hands them
/// baton's listener. Real servers under new-connection load, across reloads: not one request may fail.
@Suite("bind adoption: apps that bind their own port", .serialized, .timeLimit(.minutes(5)))
struct AdoptBindTests {
    struct LoadSummary: Decodable {
        var requests: Int
        var ok: Int
        var failed: Int
        var final_generations: [String: Int]
    }

    /// basePort ... basePort + 4: theSemanticsOfTheSocketCalls binds basePort + 4 (its PORT + 1) as "another port".
    static let basePort = TestPorts.consecutive(5)

    /// Runs `app` under baton on `listen` with a new connection per request, performs `reloads` reloads, and
    /// checks that no request failed and that only the newest generation answers afterwards; returns baton's stderr.
    @discardableResult
    func serveUnderLoad(
        _ app: [String],
        listen: String = "127.0.0.1",
        port: Int = AdoptBindTests.basePort,
        ready: String = "listen",
        environment: [String: String] = [:],
        reloads: Int = 5,
        extra: [String] = [],
        name: String
    ) throws -> String {
        _ = try #require(AdoptLibrary.besideBaton)
        let scratch = Scratch()
        var env = environment
        env["PORT"] = "\(port)"
        let baton = try BatonRun(
            ["--listen", "\(listen):\(port)", "--ready", ready, "--stop-timeout", "15s"] + extra + ["--"] + app,
            scratch: scratch,
            environment: env
        )
        defer { _ = baton.stop() }
        try #require(
            baton.stderr.waitFor("generation 1 ready", timeout: 30) != nil,
            "\(name) did not start:\n\(baton.diagnosis())"
        )

        let stopFile = scratch.file("stop")
        let summaryFile = scratch.file("load.json")
        let load = Process()
        load.executableURL = URL(fileURLWithPath: try #require(Paths.python3))
        load.arguments = [
            Paths.loadgen, "--url", "http://127.0.0.1:\(port)/", "--clients", "16", "--mode", "newconn",
            "--until-file", stopFile, "--duration", "240", "--json", summaryFile,
        ]
        let loadErr = Pipe()
        load.standardError = loadErr
        try load.run()
        let loadLines = LineCollector(loadErr.fileHandleForReading)
        // Each generation serves a while under the load before the next reload (with --ready exec a reload ends
        // before the app even listens): until it has answered 50 requests of this test's own.
        func serves(_ generation: Int) {
            let deadline = Date().addingTimeInterval(20)
            var answered = 0
            while answered < 50 && Date() < deadline {
                if (try? HTTP.get(host: "127.0.0.1", port: port))?.body.contains("generation \(generation) ") == true {
                    answered += 1
                }
            }
            #expect(answered == 50, "\(name): generation \(generation) serves")
        }
        serves(1)
        for index in 1...reloads {
            let reload = baton.client(["reload", "--quiet"])
            #expect(reload.status == 0, "\(name): reload \(index): \(reload.stderr)\n\(baton.diagnosis())")
            serves(index + 1)
        }
        let body = try HTTP.get(host: "127.0.0.1", port: port).body
        #expect(body.contains("generation \(reloads + 1) "), "\(name) answers from the newest generation: \(body)")
        _ = FileManager.default.createFile(atPath: stopFile, contents: Data("\(reloads + 1)".utf8))
        load.waitUntilExit()
        _ = loadLines.waitClosed()
        let summary = try JSONDecoder().decode(
            LoadSummary.self,
            from: try #require(FileManager.default.contents(atPath: summaryFile))
        )
        #expect(
            summary.failed == 0 && summary.ok == summary.requests,
            "\(name): \(summary) \(loadLines.text) \(baton.stderr.all.filter { $0.contains("exited") }.joined(separator: "\n"))"
        )
        #expect(summary.requests > 200, "\(name): the load really ran: \(summary.requests) requests")
        #expect(
            summary.final_generations.keys.sorted() == ["\(reloads + 1)"],
            "\(name): afterwards only the newest generation answers"
        )
        print("adopt-bind \(name): \(summary.requests) requests, \(summary.failed) failed, \(reloads) reloads")
        return baton.stderr.text
    }

    /// A port nobody listens on right now (the kernel's choice for a port-0 bind).
    static func freePort() -> Int? {
        let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        return bound ? Int(UInt16(bigEndian: address.sin6_port)) : nil
    }

    var node: String { get throws { try #require(Paths.which("node") ?? Paths.which("nodejs"), "Node.js is needed") } }
    var python: String { get throws { try #require(Paths.python3) } }

    @Test func theSeedsNodeAppListeningOnPort8000() throws {
        // http.createServer(...).listen(PORT) binds [::]:PORT, dual-stack; baton serves 127.0.0.1:PORT.
        try serveUnderLoad([try node, AdoptLibrary.fixture("hello.js")], name: "node http.createServer().listen")
    }

    @Test func expressAppListen() throws {
        let express = "/usr/share/nodejs/express"
        try #require(
            FileManager.default.fileExists(atPath: express),
            "Debian's node-express is needed (scripts/deps.sh)"
        )
        try serveUnderLoad(
            [try node, AdoptLibrary.fixture("express-app.js")],
            port: Self.basePort + 1,
            environment: ["NODE_PATH": "/usr/share/nodejs"],
            name: "express app.listen"
        )
    }

    @Test func pythonHTTPServer() throws {
        // serve_forever() waits in poll(), which zero-configuration readiness does not see: --ready exec.
        try serveUnderLoad(
            [try python, AdoptLibrary.fixture("http-server.py")],
            port: Self.basePort + 2,
            ready: "exec",
            name: "python http.server"
        )
    }

    @Test func uvicornPort() throws {
        let check = run(try python, ["-c", "import uvicorn"])
        try #require(check.status == 0, "uvicorn is needed: pip install uvicorn (scripts/deps.sh)")
        try serveUnderLoad(
            [
                try python, "-m", "uvicorn", "--app-dir", AdoptLibrary.fixtures, "--port", "\(Self.basePort + 3)",
                "--log-level", "warning", "asgi:app",
            ],
            port: Self.basePort + 3,
            name: "uvicorn --port"
        )
    }

    @Test func gunicornBind() throws {
        let check = run(try python, ["-c", "import gunicorn"])
        try #require(check.status == 0, "gunicorn is needed: pip install gunicorn (scripts/deps.sh)")
        // The master binds (it is the process baton started) and forks sync workers, which wait in select():
        // --ready exec.
        try serveUnderLoad(
            [
                try python, "-m", "gunicorn", "--chdir", AdoptLibrary.fixtures, "-b", "127.0.0.1:\(Self.basePort)",
                "-w", "2",
                "--log-level", "warning", "wsgi:app",
            ],
            ready: "exec",
            name: "gunicorn -b"
        )
    }

    @Test func rubyWEBrick() throws {
        let ruby = try #require(
            Paths.which("ruby"),
            "Ruby is needed: apt-get install ruby ruby-webrick (scripts/deps.sh)"
        )
        try #require(run(ruby, ["-e", "require 'webrick'"]).status == 0, "ruby-webrick is needed (scripts/deps.sh)")
        // WEBrick waits in select(): --ready exec.
        try serveUnderLoad(
            [ruby, AdoptLibrary.fixture("webrick.rb")],
            port: Self.basePort + 1,
            ready: "exec",
            name: "ruby webrick"
        )
    }

    @Test func aNodeAppOnTheUnixPathBatonServesAcrossReloads() throws {
        // listen(PATH) adopts baton's unix listener; server.close() on SIGTERM has libuv unlink PATH, which must
        // leave baton's socket file in place for the next generation.
        _ = try #require(AdoptLibrary.besideBaton)
        let scratch = Scratch()
        let path = scratch.file("app.sock")
        let baton = try BatonRun(
            ["--listen", "unix:\(path)", "--", try node, AdoptLibrary.fixture("hello-unix.js")],
            scratch: scratch,
            environment: ["SOCKET_PATH": path]
        )
        defer { _ = baton.stop() }
        try #require(baton.stderr.waitFor("generation 1 ready") != nil, "\(baton.diagnosis())")
        let summaryFile = scratch.file("load.json")
        let stopFile = scratch.file("stop")
        let load = Process()
        load.executableURL = URL(fileURLWithPath: try python)
        load.arguments = [
            Paths.loadgen, "--url", "http://app/", "--unix", path, "--clients", "8", "--mode", "newconn",
            "--until-file", stopFile, "--duration", "240", "--json", summaryFile,
        ]
        load.standardError = FileHandle.nullDevice
        try load.run()
        for index in 1...5 {
            #expect(baton.client(["reload", "--quiet"]).status == 0, "reload \(index)")
            #expect(
                FileManager.default.fileExists(atPath: path),
                "the socket file is still there after reload \(index)"
            )
            #expect(try HTTP.get(unix: path).body.contains("generation \(index + 1) "))
        }
        _ = FileManager.default.createFile(atPath: stopFile, contents: Data("6".utf8))
        load.waitUntilExit()
        let summary = try JSONDecoder().decode(
            LoadSummary.self,
            from: try #require(FileManager.default.contents(atPath: summaryFile))
        )
        #expect(summary.failed == 0 && summary.requests > 200, "\(summary)")
        print("adopt-bind node listen(unix path): \(summary.requests) requests, \(summary.failed) failed, 5 reloads")
    }

    @Test func anIPv4AppOnBatonsDualStackWildcard() throws {
        // baton listens on :PORT ([::], dual-stack); the app binds 0.0.0.0:PORT, an IPv4 socket. It serves IPv4 and
        // IPv6 clients, and sees an IPv4 client's address as IPv4 (an IPv6 client's does not fit an IPv4 socket's
        // address: Python shows whatever the truncated address holds).
        _ = try #require(AdoptLibrary.besideBaton)
        let port = Self.basePort + 2
        let baton = try BatonRun(
            ["--listen", ":\(port)", "--ready", "exec", "--", try python, AdoptLibrary.fixture("http-server.py")],
            scratch: Scratch(),
            environment: ["PORT": "\(port)", "HOST": "0.0.0.0"]
        )
        defer { _ = baton.stop() }
        try #require(baton.stdout.waitFor("serving on") != nil, "\(baton.diagnosis())")
        let v4 = try HTTP.get(host: "127.0.0.1", port: port)
        #expect(v4.status == 200 && v4.body.contains("client 127.0.0.1\n"), "\(v4.body)")
        let v6 = try HTTP.get(host: "::1", port: port)
        #expect(v6.status == 200 && v6.body.contains("hello from generation 1 "), "\(v6.body)")
        #expect(baton.client(["reload", "--quiet"]).status == 0)
        #expect(try HTTP.get(host: "::1", port: port).body.contains("generation 2 "))
    }

    @Test func theSemanticsOfTheSocketCalls() throws {
        _ = try #require(AdoptLibrary.besideBaton)
        let scratch = Scratch()
        let port = Self.basePort + 3
        let report = scratch.file("report.json")
        let unix = scratch.file("app.sock")
        let baton = try BatonRun(
            [
                "--listen", "127.0.0.1:\(port)", "--listen", "unix:\(unix)", "--backlog", "321", "--ready", "exec",
                "--",
                try python, AdoptLibrary.fixture("probe.py"),
            ],
            scratch: scratch,
            environment: ["PORT": "\(port)", "UNIX_PATH": unix, "REPORT": report]
        )
        defer { _ = baton.stop() }
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: report) && Date() < deadline && isAlive(baton.pid) {
            // The probe writes its report once; there is no event to wait on from here but the file itself.
            usleep(20_000)
        }
        let data = try #require(FileManager.default.contents(atPath: report), "no report:\n\(baton.diagnosis())")
        let result = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        func flag(_ key: String) -> Bool { result[key] as? Bool ?? false }
        #expect(
            result["fionbio_bad_pointer"] as? String == "EFAULT",
            "a bad ioctl pointer fails as without the library"
        )
        #expect(flag("wildcard_adopted"), "the [::] bind got baton's 127.0.0.1 listener on the app's fd: \(result)")
        #expect(flag("wildcard_cloexec") && flag("wildcard_blocking"), "its FD_CLOEXEC and blocking mode: \(result)")
        #expect(
            (result["wildcard_name"] as? [Any])?.first as? String == "::ffff:127.0.0.1",
            "getsockname in the app's family: \(result)"
        )
        #expect(
            flag("twice_adopted") && flag("twice_nonblocking") && flag("twice_inheritable"),
            "the same port twice, its own flags: \(result)"
        )
        #expect(flag("first_still_blocking"), "one fd's O_NONBLOCK is not another's: \(result)")
        #expect(result["nonblocking_accept"] as? String == "EAGAIN", "\(result)")
        #expect(
            flag("port0_own") && flag("other_port_own") && result["other_port_error"] as? Int == 0,
            "port 0 and other ports untouched: \(result)"
        )
        #expect(flag("unix_adopted") && flag("unix_path_kept"), "the unix path: adopted, not unlinked: \(result)")
        #expect(
            result["symlink_error"] as? Int == Int(EADDRINUSE),
            "a symlink to baton's path is not followed: \(result)"
        )
        #expect(
            result["child_bind"] as? String == "EADDRINUSE",
            "a forked child (not LISTEN_PID) is left alone: \(result)"
        )
        #expect(
            result["shut_accept"] as? String == "EINVAL",
            "shutdown() stops the app's fd, not baton's listener: \(result)"
        )
        let waited = result["blocking_accept_waited_ms"] as? Int ?? -1
        #expect(waited >= 200, "a blocking accept waited for the connection: \(result)")
        #expect(result["blocking_accept_peer"] as? String == "::ffff:127.0.0.1", "\(result)")
        // The app's listen(5) and listen(7) left baton's backlog: ss shows a listener's backlog as Send-Q.
        if let ss = Paths.which("ss") {
            let listing = run(ss, ["-Hltn", "sport = :\(port)"]).stdout
            #expect(
                listing.split(separator: "\n").contains {
                    $0.split(separator: " ", omittingEmptySubsequences: true).dropFirst(2).first == "321"
                },
                "\(listing)"
            )
        }
    }

    @Test func withoutAdoptionTheAppFailsAndBatonSaysWhyInOneLine() throws {
        let port = Self.basePort
        let baton = try BatonRun(
            ["--listen", "127.0.0.1:\(port)", "--no-adopt-bind", "--", try node, AdoptLibrary.fixture("hello.js")],
            scratch: Scratch(),
            environment: ["PORT": "\(port)"]
        )
        #expect(baton.wait(timeout: 30) == 1)
        let line = "the app bound 127.0.0.1:\(port) itself (EADDRINUSE): use LISTEN_FDS, or see --no-adopt-bind"
        #expect(
            baton.stderr.all.contains {
                $0.contains("worker 1 of generation 1") && $0.contains("exited with exit 1: " + line)
            },
            "\(baton.stderr.text)"
        )
    }

    @Test func aWrapperThatForksDefeatsAdoptionAndBatonSaysSo() throws {
        // sh runs node as a child: LISTEN_PID names sh, so the library in node leaves bind() alone.
        _ = try #require(AdoptLibrary.besideBaton)
        let port = Self.basePort + 1
        let baton = try BatonRun(
            [
                "--listen", "127.0.0.1:\(port)", "--", "/bin/sh", "-c",
                "\(try node) \(AdoptLibrary.fixture("hello.js")) || exit 1",
            ],
            scratch: Scratch(),
            environment: ["PORT": "\(port)"]
        )
        #expect(baton.wait(timeout: 30) == 1)
        #expect(
            baton.stderr.text.contains(
                "the app bound 127.0.0.1:\(port) itself (EADDRINUSE): use LISTEN_FDS, or see --no-adopt-bind"
            ),
            "\(baton.stderr.text)"
        )
    }

    @Test func aStaticBinaryDefeatsAdoptionAndBatonSaysSo() throws {
        // A statically linked binary (as Go's and musl's are) ignores LD_PRELOAD: its bind() meets baton's listener.
        _ = try #require(AdoptLibrary.besideBaton)
        let scratch = Scratch()
        let binary = scratch.file("static-bind")
        let cc = try #require(Paths.which("cc"), "a C compiler is needed (scripts/deps.sh)")
        let built = run(cc, ["-static", "-O2", "-o", binary, AdoptLibrary.fixture("static-bind.c")])
        try #require(built.status == 0, "cc -static (libc6-dev): \(built.stderr)")
        let port = Self.basePort + 3
        let baton = try BatonRun(
            ["--listen", "127.0.0.1:\(port)", "--", binary],
            scratch: scratch,
            environment: ["PORT": "\(port)"]
        )
        #expect(baton.wait(timeout: 30) == 1)
        #expect(baton.stderr.text.contains("bind: Address already in use"), "the binary did meet baton's listener")
        #expect(
            baton.stderr.text.contains(
                "the app bound 127.0.0.1:\(port) itself (EADDRINUSE): use LISTEN_FDS, or see --no-adopt-bind"
            ),
            "\(baton.stderr.text)"
        )
    }

    @Test func aReleaseThatBindsItselfFailsItsReloadAtTheReadyTimeoutWithTheDiagnosis() throws {
        _ = try #require(AdoptLibrary.besideBaton)
        let scratch = Scratch()
        let port = Self.basePort + 2
        let broken = scratch.file("broken")
        // The broken release runs python from a shell that forks (adoption defeated); it stays up without serving.
        let script =
            "if [ -e \(broken) ]; then \(try python) \(AdoptLibrary.fixture("busy-port.py")); else exec \(try node) \(AdoptLibrary.fixture("hello.js")); fi"
        let baton = try BatonRun(
            ["--listen", "127.0.0.1:\(port)", "--ready-timeout", "3s", "--", "/bin/sh", "-c", script],
            scratch: scratch,
            environment: ["PORT": "\(port)"]
        )
        defer { _ = baton.stop() }
        try #require(baton.stderr.waitFor("generation 1 ready") != nil, "\(baton.diagnosis())")
        _ = FileManager.default.createFile(atPath: broken, contents: Data())
        let reload = baton.client(["reload"])
        #expect(reload.status == 1)
        let line =
            "did not become ready within 3s: the app bound 127.0.0.1:\(port) itself (EADDRINUSE): use LISTEN_FDS, or see --no-adopt-bind"
        #expect(reload.stderr.contains(line) || reload.stdout.contains(line), "\(reload.stdout)\n\(reload.stderr)")
        #expect(
            try HTTP.get(host: "127.0.0.1", port: port).body.contains("generation 1 "),
            "the serving generation carries on"
        )
    }

    @Test func anAppListeningOnAnotherPortIsToldAtTheReadyTimeout() throws {
        // The app binds a port baton does not serve: nothing to adopt, it listens by itself and is never ready.
        _ = try #require(AdoptLibrary.besideBaton)
        let port = Self.basePort
        let other = try #require(Self.freePort(), "a free port")
        let baton = try BatonRun(
            [
                "--listen", "127.0.0.1:\(port)", "--ready-timeout", "2s", "--", try node,
                AdoptLibrary.fixture("hello.js"),
            ],
            scratch: Scratch(),
            environment: ["PORT": "\(other)"]
        )
        #expect(baton.wait(timeout: 30) == 1)
        let line =
            "did not become ready within 2s: the app listens on [::]:\(other) itself, not on baton's 127.0.0.1:\(port): bind the address baton serves, use LISTEN_FDS, or change --listen"
        #expect(baton.stderr.text.contains(line), "\(baton.stderr.text)")
    }

    /// Whether process `pid` catches SIGRTMIN+5, the library's drain signal (`SigCgt:` in /proc).
    func catchesDrain(_ pid: Int32) -> Bool {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("SigCgt:") } ?? ""
        let mask = UInt64(line.dropFirst("SigCgt:".count).trimmingCharacters(in: .whitespaces), radix: 16) ?? 0
        let caught = mask & (1 << UInt64(__libc_current_sigrtmin() + 5 - 1)) != 0
        // baton's own reading of the mask (on the bytes) says the same.
        #expect(ProcInspector.catches(pid, signal: __libc_current_sigrtmin() + 5) == caught)
        return caught
    }

    @Test func onlyAWorkerThatAdoptedASocketIsDrainedBeforeItsStopSignal() throws {
        _ = try #require(AdoptLibrary.besideBaton)
        let port = Self.basePort + 3
        // An app that uses LISTEN_FDS itself adopts nothing: it does not catch the drain signal, so its stop signal
        // comes at once, as without the library.
        let scratch = Scratch()
        let plain = try BatonRun(
            ["--listen", "127.0.0.1:\(port)", "--ready", "fd", "--", "python3", Paths.worker],
            scratch: scratch,
            environment: ["READY_MODE": "fd", "REPORT_DIR": scratch.path]
        )
        #expect(plain.stderr.waitFor("generation 1 ready") != nil)
        let worker = try #require(WorkerReport.all(in: scratch.path).first)
        #expect(!catchesDrain(worker.pid))
        #expect(plain.stop() == 0)
        // One that bound its own port did adopt, and catches it.
        let adopted = try BatonRun(
            ["--listen", "127.0.0.1:\(port)", "--ready", "listen", "--", "node", AdoptLibrary.fixture("hello.js")],
            scratch: Scratch(),
            environment: ["PORT": "\(port)"]
        )
        #expect(adopted.stderr.waitFor("generation 1 ready", timeout: 30) != nil)
        let status = try JSONDecoder().decode(
            StatusReport.self,
            from: Data(adopted.client(["status", "--json"]).stdout.utf8)
        )
        let pid = try #require(status.generations.first?.workers.first?.pid)
        #expect(catchesDrain(pid))
        #expect(adopted.stop() == 0)
    }

    @Test func theLibraryExportsOnlyWhatItIntercepts() throws {
        let library = try #require(AdoptLibrary.besideBaton)
        let nm = try #require(Paths.which("nm"), "binutils is needed")
        let symbols = run(nm, ["-D", "--defined-only", library]).stdout.split(separator: "\n").compactMap { line in
            line.split(separator: " ").last.map(String.init)
        }
        #expect(
            symbols.sorted() == [
                "accept", "accept4", "bind", "epoll_ctl", "fcntl", "fcntl64", "getsockname", "ioctl", "listen", "poll",
                "ppoll", "read", "recv", "recvfrom", "recvmsg", "shutdown", "unlink", "unlinkat",
            ]
        )
    }

    @Test func theLibraryUnderAddressSanitizerServesAcrossReloads() throws {
        // The library built with -fsanitize=address, preloaded (after the ASan runtime) into Python's http.server
        // through env, which execs python (same pid, so LISTEN_PID names it); baton's own preload is off.
        let scratch = Scratch()
        let library = try #require(
            AdoptLibrary.build(into: scratch.file("asan"), flags: ["-fsanitize=address", "-fno-omit-frame-pointer"])
        )
        let runtime = run(try #require(Paths.which("cc")), ["-print-file-name=libasan.so"]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines
        )
        try #require(
            runtime.hasPrefix("/") && FileManager.default.fileExists(atPath: runtime),
            "the compiler's ASan runtime: \(runtime)"
        )
        let port = Self.basePort + 3
        let log = try serveUnderLoad(
            [
                "/usr/bin/env", "LD_PRELOAD=\(runtime):\(library)", "ASAN_OPTIONS=detect_leaks=0:abort_on_error=1",
                try python, AdoptLibrary.fixture("http-server.py"),
            ],
            port: port,
            ready: "exec",
            extra: ["--no-adopt-bind"],
            name: "python http.server, library under ASan"
        )
        #expect(!log.contains("AddressSanitizer"), "\(log)")
    }
}
