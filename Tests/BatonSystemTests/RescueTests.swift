import BatonSystem
import Foundation
import Testing

/// Connection rescue: baton takes over the connections a retiring worker leaves open, so that a server's own close of
/// an idle keep-alive connection (uvicorn, Node's `server.close()`, express) loses no request, unmodified.
@Suite("connection rescue", .serialized, .timeLimit(.minutes(10)))
struct RescueTests {
    struct LoadSummary: Decodable {
        var requests: Int
        var ok: Int
        var failed: Int
        var final_generations: [String: Int]
        var reset: Int
        var eof_idle: Int
        var eof_new: Int
        var eof_mid: Int
        var timeout: Int

        var kinds: String {
            "reset \(reset), eof_idle \(eof_idle), eof_new \(eof_new), eof_mid \(eof_mid), timeout \(timeout)"
        }
    }

    /// Runs `app` under baton with load from 16 clients (`mode`: keep-alive, or mixed: half of them keep-alive, half a
    /// new connection per request; with `slow`, every 20th request of a client takes 1.5 s), `reloads` reloads, each
    /// once the new generation has answered requests of the test's own; returns the load's summary and baton's stderr.
    func load(
        _ app: [String],
        name: String,
        extra: [String] = [],
        environment: [String: String] = [:],
        reloads: Int = 8,
        mode: String = "keepalive",
        slow: Bool = false
    ) throws -> (LoadSummary, String) {
        let scratch = Scratch()
        let port = try #require(AdoptBindTests.freePort())
        var env = environment
        env["PORT"] = "\(port)"
        let baton = try BatonRun(
            ["--listen", "127.0.0.1:\(port)", "--stop-timeout", "10s"] + extra + ["--"] + app,
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
        load.arguments =
            [
                Paths.loadgen, "--url", "http://127.0.0.1:\(port)/", "--clients", "16", "--mode", mode,
                "--until-file", stopFile, "--duration", "400", "--json", summaryFile,
            ] + (slow ? ["--slow-every", "20", "--slow-ms", "1500"] : [])
        let loadErr = Pipe()
        load.standardError = loadErr
        try load.run()
        let loadLines = LineCollector(loadErr.fileHandleForReading)
        func serves(_ generation: Int) {
            let deadline = Date().addingTimeInterval(20)
            var answered = 0
            while answered < 30 && Date() < deadline {
                if (try? HTTP.get(host: "127.0.0.1", port: port))?.body.contains("generation \(generation) ") == true {
                    answered += 1
                }
            }
            #expect(answered == 30, "\(name): generation \(generation) serves")
        }
        serves(1)
        for index in 1...reloads {
            let reload = baton.client(["reload", "--quiet"])
            #expect(reload.status == 0, "\(name): reload \(index): \(reload.stderr)\n\(baton.diagnosis())")
            serves(index + 1)
        }
        _ = FileManager.default.createFile(atPath: stopFile, contents: Data("\(reloads + 1)".utf8))
        load.waitUntilExit()
        _ = loadLines.waitClosed()
        let summary = try JSONDecoder().decode(
            LoadSummary.self,
            from: try #require(FileManager.default.contents(atPath: summaryFile))
        )
        #expect(summary.requests > 200, "\(name): the load really ran: \(summary.requests) requests")
        return (summary, baton.stderr.text)
    }

    /// The servers of issue 13 that this machine has (the test command installs them all: scripts/deps.sh), in two
    /// tests of about two minutes each, which scripts/test.sh runs in two test processes at once: each case blocks a
    /// thread of its process's pool (two on this machine) for a minute, so that one suite of all of them beside
    /// the rest was the test command's longest wait.
    static var pythonServers: [String] { ["uvicorn", "hypercorn", "gunicorn -k gthread", "examples/python"] }
    static var nodeAndGoServers: [String] {
        var names = ["node http + server.close()"]
        if FileManager.default.fileExists(atPath: "/usr/share/nodejs/express") { names.append("express") }
        if Paths.which("go") != nil && FileManager.default.fileExists(atPath: goSystemd) { names.append("go net/http") }
        return names
    }

    static let goSystemd = "/usr/share/gocode/src/github.com/coreos/go-systemd/activation"

    /// The Go fixture, built once (Debian's golang-go and golang-github-coreos-go-systemd-dev, no module download).
    static let goApp: String? = {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("baton-goapp-\(getpid())").path
        let build = run(
            Paths.which("go") ?? "/usr/bin/go",
            ["build", "-o", output, Paths.fixtures + "/rescue/goapp.go"],
            environment: ProcessInfo.processInfo.environment.merging([
                "GO111MODULE": "off", "GOPATH": "/usr/share/gocode",
                "GOCACHE": FileManager.default.temporaryDirectory.appendingPathComponent("baton-gocache").path,
            ]) { $1 }
        )
        return build.status == 0 ? output : nil
    }()

    /// How the test runs `server`: its command, its environment, and the baton options the README recommends for it.
    static func command(_ server: String) throws -> (app: [String], environment: [String: String], options: [String]) {
        let fixtures = Paths.fixtures + "/rescue"
        switch server {
        case "uvicorn":
            return (
                ["python3", "-m", "uvicorn", "--fd", "3", "--app-dir", fixtures, "asgi:app", "--log-level", "warning"],
                [:], []
            )
        case "hypercorn":
            return (["python3", "-m", "hypercorn", "--bind", "fd://3", "asgi:app"], ["PYTHONPATH": fixtures], [])
        case "gunicorn -k gthread":
            // gunicorn serves the sockets in LISTEN_FDS itself; its master says READY=1, a probe proves its workers.
            let control = FileManager.default.temporaryDirectory.appendingPathComponent("gunicorn-\(UUID()).ctl")
            return (
                [
                    "python3", "-m", "gunicorn", "--worker-class", "gthread", "--threads", "4", "--chdir", fixtures,
                    "--control-socket", control.path, "wsgi:app",
                ], [:], ["--ready", "notify", "--health", "http:/"]
            )
        case "examples/python": return (["python3", Paths.pythonApp], [:], [])
        case "express": return (["node", fixtures + "/express-app.js"], ["NODE_PATH": "/usr/share/nodejs"], [])
        case "go net/http":
            let app = try #require(goApp, "go build of Tests/Fixtures/rescue/goapp.go failed")
            return ([app], [:], [])
        default: return (["node", fixtures + "/node-close.js"], [:], [])
        }
    }

    /// Each server closes (or half-closes) its idle keep-alive connections on SIGTERM; without baton's rescue, a
    /// client whose next request is on the wire gets EOF or RST (one per open connection per reload with uvicorn).
    /// With it: none, over 20 reloads of 4 workers, with keep-alive and new-connection clients and slow requests.
    @Test(
        "keep-alive and new-connection clients of an unmodified Python server lose nothing across 20 reloads of 4 workers",
        arguments: RescueTests.pythonServers
    )
    func clientsOfAnUnmodifiedPythonServerLoseNothing(server: String) throws {
        try clientsOfAnUnmodifiedServerLoseNothing(server: server)
    }

    @Test(
        "keep-alive and new-connection clients of an unmodified Node or Go server lose nothing across 20 reloads of 4 workers",
        arguments: RescueTests.nodeAndGoServers
    )
    func clientsOfAnUnmodifiedNodeOrGoServerLoseNothing(server: String) throws {
        try clientsOfAnUnmodifiedServerLoseNothing(server: server)
    }

    func clientsOfAnUnmodifiedServerLoseNothing(server: String) throws {
        let (app, environment, options) = try Self.command(server)
        // Under a sanitizer (the test command's TSan and ASan stages) baton is several times slower: fewer reloads.
        let reloads = Sanitizers.active ? 6 : 20
        let (summary, stderr) = try load(
            app,
            name: server,
            extra: ["--workers", "4"] + options,
            environment: environment,
            reloads: reloads,
            mode: "mixed",
            slow: true
        )
        // What baton did with each retiring worker's connections (relayed, closed idle, reset): what a failure needs.
        let rescued = stderr.split(separator: "\n").filter { $0.contains("took over") }.joined(separator: "\n")
        #expect(summary.failed == 0, "\(server): \(summary.failed) failed (\(summary.kinds)) \(summary)\n\(rescued)")
        #expect(summary.final_generations.keys.sorted() == ["\(reloads + 1)"], "\(server): only the newest answers")
        print(
            "rescue \(server): \(summary.requests) requests, \(summary.failed) failed (\(summary.kinds)), \(reloads) reloads"
        )
    }

    /// The same load against uvicorn with `--no-rescue` does lose requests: what the test above shows is baton's.
    @Test func withoutTheRescueUvicornLosesRequests() throws {
        let (app, environment, _) = try Self.command("uvicorn")
        let (summary, stderr) = try load(
            app,
            name: "uvicorn --no-rescue",
            extra: ["--no-rescue"],
            environment: environment,
            reloads: 4
        )
        #expect(summary.failed > 0, "uvicorn without the rescue: \(summary)")
        #expect(!stderr.contains("took over"))
        print("no rescue, uvicorn: \(summary.requests) requests, \(summary.failed) failed, 4 reloads")
    }

    /// baton with `lazyclose.py`: on SIGTERM the worker stops reading for a second, then closes every connection.
    func lazyServer(_ scratch: Scratch, extra: [String] = []) throws -> (BatonRun, Int) {
        let port = try #require(AdoptBindTests.freePort())
        let baton = try BatonRun(
            ["--listen", "127.0.0.1:\(port)", "--stop-timeout", "10s"] + extra + [
                "--", "python3", Paths.fixtures + "/rescue/lazyclose.py",
            ],
            scratch: scratch
        )
        try #require(baton.stderr.waitFor("generation 1 ready", timeout: 30) != nil, "\(baton.diagnosis())")
        return (baton, port)
    }

    /// A raw keep-alive connection (to 127.0.0.1, or to `host` "::1") that has had one answer from generation 1.
    func connection(_ port: Int, host: String = "127.0.0.1") throws -> Int32 {
        let v6 = host.contains(":")
        let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let connected: Int32
        if v6 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = in_port_t(UInt16(port).bigEndian)
            try #require(inet_pton(AF_INET6, host, &address.sin6_addr) == 1)
            connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Foundation.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        } else {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr(host)
            connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Foundation.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        try #require(connected == 0)
        var timeout = timeval(tv_sec: 15, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let answer = try exchange(fd, Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        try #require(answer.text.contains("generation 1 "), "\(answer)")
        return fd
    }

    struct Answer: CustomStringConvertible {
        var text: String
        /// recv's errno when it failed (ECONNRESET), 0 when it ended with EOF or an answer.
        var error: Int32
        var description: String { error == 0 ? text : "errno \(error) after '\(text)'" }
    }

    /// Sends `bytes` (if any) and reads until an answer's body line ends, EOF, or an error.
    func exchange(_ fd: Int32, _ bytes: [UInt8]) throws -> Answer {
        if !bytes.isEmpty { _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 4096, 0) }
            if n < 0 { return Answer(text: String(decoding: received, as: UTF8.self), error: errno) }
            if n == 0 { break }
            received += buffer[0..<n]
            let text = String(decoding: received, as: UTF8.self)
            if text.contains("\r\n\r\n"), text.hasSuffix("\n"), !text.hasSuffix("\r\n\r\n") { break }
        }
        return Answer(text: String(decoding: received, as: UTF8.self), error: 0)
    }

    /// A request already on the wire when the old worker closes the connection (here: sent while it does not read,
    /// before it closes) is answered by the new generation, on the same connection.
    @Test func aRequestOnTheWireIsHandedToTheNewGeneration() throws {
        let scratch = Scratch()
        let (baton, port) = try lazyServer(scratch)
        defer { _ = baton.stop() }
        let fd = try connection(port)
        defer { close(fd) }
        let reload = baton.client(["reload", "--quiet"])
        try #require(reload.status == 0, "\(reload.stderr)")
        try #require(baton.stdout.waitFor("closing 1 connection(s)", timeout: 10) != nil, "\(baton.diagnosis())")
        // Generation 1's worker stopped reading: this request waits in the socket until it closes the connection.
        let answer = try exchange(fd, Array("GET /next HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(answer.error == 0 && answer.text.contains("generation 2 "), "\(answer)")
        #expect(baton.stderr.waitFor("1 handed to the serving generation", timeout: 10) != nil, "\(baton.diagnosis())")
        // The same connection goes on serving, now through generation 2.
        let again = try exchange(fd, Array("GET /again HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(again.text.contains("generation 2 "), "\(again)")
    }

    /// With 16 listeners or more, baton first asks the kernel (sock_diag, only for the families of its listeners)
    /// whether any connection on them is not held yet before it reads a retiring worker's fds: a worker of 17
    /// IPv4 or 17 IPv6 listeners still has its connection taken over, and its request on the wire answered.
    @Test(arguments: ["127.0.0.1", "::1"])
    func aWorkerOfManyListenersHasItsConnectionTakenOver(host: String) throws {
        let scratch = Scratch()
        let first = TestPorts.consecutive(17)
        let listen = (first..<first + 17).flatMap {
            ["--listen", host.contains(":") ? "[\(host)]:\($0)" : "\(host):\($0)"]
        }
        let baton = try BatonRun(
            listen + ["--stop-timeout", "10s", "--", "python3", Paths.fixtures + "/rescue/lazyclose.py"],
            scratch: scratch
        )
        defer { _ = baton.stop() }
        try #require(baton.stderr.waitFor("generation 1 ready", timeout: 30) != nil, "\(baton.diagnosis())")
        // lazyclose.py serves the first listener (fd 3); the other 16 only make the worker one of many listeners.
        let fd = try connection(first, host: host)
        defer { close(fd) }
        let reload = baton.client(["reload", "--quiet"])
        try #require(reload.status == 0, "\(reload.stderr)")
        try #require(baton.stdout.waitFor("closing 1 connection(s)", timeout: 10) != nil, "\(baton.diagnosis())")
        let answer = try exchange(fd, Array("GET /next HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(answer.error == 0 && answer.text.contains("generation 2 "), "\(answer)")
        #expect(baton.stderr.waitFor("1 handed to the serving generation", timeout: 10) != nil, "\(baton.diagnosis())")
    }

    /// Closes the client's end of a relayed connection and expects the relay to end with it and give back its fds.
    func expectRelayEnds(_ baton: BatonRun, closing fd: Int32, fdsBefore: Int) {
        close(fd)
        #expect(baton.relaysEnd() == 0, "the relay ended with its client's close")
        #expect(ProcInspectorCount.openFDs(baton.pid) == fdsBefore, "and gave back its fds")
    }

    /// A relayed connection whose new upstream closes it between requests (a keep-alive timeout; here the fixture's
    /// GET /bye) gets its FIN once the window passes; when the client then closes its side too, the relay ends and
    /// gives back its fds (it waited for a CLOSE_WAIT that a socket closed from both sides never shows: the chaos
    /// suite's fd count found one such relay left after 60 reloads).
    @Test func aRelayWhoseUpstreamClosedBetweenRequestsEndsWhenItsClientCloses() throws {
        let scratch = Scratch()
        let (baton, port) = try lazyServer(scratch)
        defer { _ = baton.stop() }
        let fd = try connection(port)
        var open = true
        defer { if open { close(fd) } }
        let fdsBefore = ProcInspectorCount.openFDs(baton.pid)
        try #require(baton.client(["reload", "--quiet"]).status == 0)
        try #require(baton.stdout.waitFor("closing 1 connection(s)", timeout: 10) != nil, "\(baton.diagnosis())")
        let answer = try exchange(fd, Array("GET /bye HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(answer.error == 0 && answer.text.contains("generation 2 "), "\(answer)")
        let end = try exchange(fd, [])
        #expect(end.error == 0 && end.text.isEmpty, "the FIN generation 2 meant: \(end)")
        #expect(baton.relays() == 1, "the relay waits for the client's own close")
        open = false
        expectRelayEnds(baton, closing: fd, fdsBefore: fdsBefore)
    }

    /// A relay whose upstream's worker retires while its client is idle waits, with no upstream, for the client's
    /// next request; a client that closes instead ends it, and the relay gives back its fds.
    @Test func anIdleRelayWhoseUpstreamRetiredEndsWhenItsClientCloses() throws {
        let scratch = Scratch()
        let (baton, port) = try lazyServer(scratch)
        defer { _ = baton.stop() }
        let fd = try connection(port)
        var open = true
        defer { if open { close(fd) } }
        let fdsBefore = ProcInspectorCount.openFDs(baton.pid)
        try #require(baton.client(["reload", "--quiet"]).status == 0)
        try #require(baton.stdout.waitFor("closing 1 connection(s)", timeout: 10) != nil, "\(baton.diagnosis())")
        let answer = try exchange(fd, Array("GET /next HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(answer.error == 0 && answer.text.contains("generation 2 "), "\(answer)")
        // Generation 2 retires: it closes the relay's upstream, whose end baton takes over and lets go of.
        try #require(baton.client(["reload", "--quiet"]).status == 0)
        #expect(
            baton.stderr.waitFor("1 relay(s) it served moved on to the serving generation", timeout: 15) != nil,
            "\(baton.diagnosis())"
        )
        #expect(baton.relays() == 1, "the relay waits for the client's next request")
        open = false
        expectRelayEnds(baton, closing: fd, fdsBefore: fdsBefore)
    }

    /// Without the rescue the same request is lost: the worker's close with unread data resets the connection.
    @Test func withoutTheRescueTheRequestOnTheWireIsReset() throws {
        let scratch = Scratch()
        let (baton, port) = try lazyServer(scratch, extra: ["--no-rescue"])
        defer { _ = baton.stop() }
        let fd = try connection(port)
        defer { close(fd) }
        try #require(baton.client(["reload", "--quiet"]).status == 0)
        try #require(baton.stdout.waitFor("closing 1 connection(s)", timeout: 10) != nil, "\(baton.diagnosis())")
        let answer = try exchange(fd, Array("GET /next HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(!answer.text.contains("200 OK"), "\(answer)")
        #expect(answer.error == ECONNRESET, "\(answer)")
    }

    /// baton tells a Go program (whose cgo build loads the preload, which sees none of its system calls) by the note Go's
    /// linker writes, on the file and on a running process; a C program, a script's interpreter and a file that is not
    /// ELF are not Go.
    @Test func aGoProgramIsToldApartByItsBuildIDNote() throws {
        let app = try #require(Self.goApp, "go build of Tests/Fixtures/rescue/goapp.go failed")
        func isGo(_ path: String) -> Bool {
            guard let data = FileManager.default.contents(atPath: path) else { return false }
            let bytes = [UInt8](data)
            return ProgramKind.isGo { offset, count in
                offset < bytes.count ? Array(bytes[offset..<min(bytes.count, offset + count)]) : []
            }
        }
        #expect(isGo(app))
        #expect(!isGo("/bin/sh"))
        #expect(!isGo(Paths.fixtures + "/rescue/goapp.go"))
        #expect(!isGo(try #require(Paths.python3)))
        // The Go fixture running on a socket of its own in LISTEN_FDS (Python binds it, prints its port and execs the
        // fixture in the same process); once it has answered a request, it is the process's program.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(Paths.python3))
        process.arguments = [
            "-c",
            """
            import os, socket, sys
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
            if s.fileno() != 3: os.dup2(s.fileno(), 3)
            os.set_inheritable(3, True)
            print(s.getsockname()[1], flush=True)
            os.execve(sys.argv[1], [sys.argv[1]], {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid()), "BATON_GENERATION": "1"})
            """,
            app,
        ]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer {
            process.terminate()
            process.waitUntilExit()
        }
        let line = String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
        let port = try #require(Int(line.trimmingCharacters(in: .whitespacesAndNewlines)), "no port: \(line)")
        let fd = try connection(port)  // answered by it
        defer { close(fd) }
        #expect(ProcInspector.isGoProgram(process.processIdentifier))
        #expect(!ProcInspector.isGoProgram(getpid()))
    }

    /// An idle connection the old worker closes is closed cleanly by baton (FIN, not a reset), as the server meant.
    @Test func anIdleConnectionIsClosedCleanly() throws {
        let scratch = Scratch()
        let (baton, port) = try lazyServer(scratch)
        defer { _ = baton.stop() }
        let fd = try connection(port)
        defer { close(fd) }
        try #require(baton.client(["reload", "--quiet"]).status == 0)
        let end = try exchange(fd, [])
        #expect(end.error == 0 && end.text.isEmpty, "expected a clean EOF: \(end)")
        #expect(baton.stderr.waitFor("1 closed idle", timeout: 10) != nil, "\(baton.diagnosis())")
    }

    /// Bytes that do not begin an HTTP/1 request (here a TLS ClientHello's first bytes) are never relayed: the
    /// connection is reset as the server's close with unread data would have done without baton.
    @Test func bytesThatAreNotAnHTTPRequestAreNotRelayed() throws {
        let scratch = Scratch()
        let (baton, port) = try lazyServer(scratch)
        defer { _ = baton.stop() }
        let fd = try connection(port)
        defer { close(fd) }
        try #require(baton.client(["reload", "--quiet"]).status == 0)
        try #require(baton.stdout.waitFor("closing 1 connection(s)", timeout: 10) != nil, "\(baton.diagnosis())")
        let answer = try exchange(fd, [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03])
        #expect(answer.text.isEmpty && answer.error == ECONNRESET, "\(answer)")
        #expect(baton.stderr.waitFor("1 reset", timeout: 10) != nil, "\(baton.diagnosis())")
    }
}
