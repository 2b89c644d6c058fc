import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The example apps under baton, under continuous load, across many reloads: not one request may fail.
@Suite("end to end: reloads under load lose no request", .serialized, .timeLimit(.minutes(5)))
struct EndToEndTests {
    struct LoadSummary: Decodable {
        var requests: Int
        var ok: Int
        var failed: Int
        var refused: Int
        var reset: Int
        var eof_idle: Int
        var eof_mid: Int
        var timeout: Int
        var non2xx: Int
        var other_samples: [String]
        var final_generations: [String: Int]
    }

    /// Runs `app` under baton on a TCP port with keep-alive and new-connection clients and slow requests in
    /// flight, performs `reloads` reloads with `baton reload`, and returns what the load client saw.
    func reloadUnderLoad(
        app: [String],
        ready: String,
        workers: Int,
        reloads: Int,
        strategy: String = "all-at-once"
    )
        throws -> (LoadSummary, String)
    {
        let scratch = Scratch()
        let port = TestPorts.next()
        let baton = try BatonRun(
            [
                "--listen", "127.0.0.1:\(port)", "--workers", "\(workers)", "--ready", ready, "--strategy", strategy,
                "--stop-timeout", "15s", "--",
            ] + app,
            scratch: scratch
        )
        defer { _ = baton.stop() }
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)

        let stopFile = scratch.file("stop")
        let summaryFile = scratch.file("load.json")
        let python = try #require(Paths.python3)
        let load = Process()
        load.executableURL = URL(fileURLWithPath: python)
        load.arguments = [
            Paths.loadgen, "--url", "http://127.0.0.1:\(port)/", "--clients", "16", "--mode", "mixed", "--slow-every",
            "8",
            "--slow-ms", "400", "--until-file", stopFile, "--duration", "240", "--json", summaryFile,
        ]
        let loadErr = Pipe()
        load.standardError = loadErr
        try load.run()
        let loadLines = LineCollector(loadErr.fileHandleForReading)

        for index in 1...reloads {
            // Each returns once its generation serves; the last waits for the drain too (--wait-drained): the old
            // app keeps serving with `Connection: close` for a second after SIGTERM, and the check below wants only
            // the newest generation to answer.
            let reload = baton.client(["reload", "--quiet"] + (index == reloads ? ["--wait-drained"] : []))
            #expect(reload.status == 0, "reload \(index): \(reload.stderr)")
        }
        let body = try HTTP.get(host: "127.0.0.1", port: port).body
        #expect(body.contains("generation \(reloads + 1) "))
        // The load stops once every client has had a response from the newest generation (or 10 s later, when the
        // check below fails): a client can still be reading a response the retired generation sent just before it
        // exited.
        _ = FileManager.default.createFile(atPath: stopFile, contents: Data("\(reloads + 1)".utf8))
        load.waitUntilExit()
        _ = loadLines.waitClosed()
        let data = try #require(FileManager.default.contents(atPath: summaryFile))
        return (try JSONDecoder().decode(LoadSummary.self, from: data), loadLines.text)
    }

    func check(_ summary: LoadSummary, reloads: Int, log: String) {
        #expect(summary.failed == 0, "failures: \(summary) \(log)")
        #expect(summary.refused == 0 && summary.reset == 0 && summary.eof_idle == 0 && summary.eof_mid == 0)
        #expect(summary.timeout == 0 && summary.non2xx == 0 && summary.other_samples.isEmpty)
        #expect(summary.ok == summary.requests)
        #expect(summary.requests > 200, "the load really ran: \(summary.requests) requests")
        #expect(
            summary.final_generations.keys.sorted() == ["\(reloads + 1)"],
            "afterwards only the newest generation answers"
        )
        print("end-to-end: \(summary.requests) requests, \(summary.failed) failed, \(reloads) reloads")
    }

    @Test func nodeAppAcrossTwentyReloads() throws {
        let node = try #require(
            Paths.which("node") ?? Paths.which("nodejs"),
            "Node.js is needed: apt-get install nodejs"
        )
        let (summary, log) = try reloadUnderLoad(app: [node, Paths.nodeApp], ready: "fd", workers: 2, reloads: 20)
        check(summary, reloads: 20, log: log)
    }

    @Test func nodeAppWithZeroConfigurationReadinessAndRollingWorkers() throws {
        let node = try #require(
            Paths.which("node") ?? Paths.which("nodejs"),
            "Node.js is needed: apt-get install nodejs"
        )
        let (summary, log) = try reloadUnderLoad(
            app: [node, Paths.nodeApp],
            ready: "listen",
            workers: 4,
            reloads: 5,
            strategy: "rolling"
        )
        check(summary, reloads: 5, log: log)
    }

    @Test func pythonAppAcrossTwentyReloads() throws {
        let python = try #require(Paths.python3)
        let (summary, log) = try reloadUnderLoad(
            app: [python, Paths.pythonApp],
            ready: "notify",
            workers: 2,
            reloads: 20
        )
        check(summary, reloads: 20, log: log)
    }
}
