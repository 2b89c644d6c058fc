import BatonSystem
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A reload returns when the new generation serves while the old one drains a slow request; drain progress from the
/// kernel; `--wait-drained`, `--cut-drain`; the reload history; `baton reload --json` (issue 15, points 2 to 4).
@Suite("Drains, with real processes", .serialized)
struct DrainSystemTests {
    /// A request that the worker holds until `release()` (it reads a FIFO whose one writer is this object), sent on a
    /// thread of its own; `wait()` returns its response. It stays in flight however long a reload takes on a busy
    /// machine.
    final class SlowRequest: @unchecked Sendable {
        private let done = DispatchSemaphore(value: 0)
        private var result: Result<HTTP.Response, any Error> = .failure(POSIXError(.ETIMEDOUT))
        private let writer = Locked<Int32>(-1)
        let fifo: String
        /// What the worker prints when it has the request.
        var handling: String { "handling /?hold=\(fifo)" }

        init(port: Int?, unix path: String, scratch: Scratch) {
            fifo = scratch.file("hold-\(UUID().uuidString.prefix(8))")
            precondition(mkfifo(fifo, 0o600) == 0, "mkfifo \(fifo)")
            // O_RDWR opens a FIFO at once; close-on-exec, so that no process the test starts holds the write end too.
            let fd = open(fifo, O_RDWR | O_CLOEXEC)
            precondition(fd >= 0, "open \(fifo)")
            writer.withLock { $0 = fd }
            Thread { [self] in
                do {
                    let target = "/?hold=\(fifo)"
                    result = .success(
                        try port.map { try HTTP.get(host: "127.0.0.1", port: $0, target) }
                            ?? HTTP.get(unix: path, target)
                    )
                } catch {
                    result = .failure(error)
                }
                done.signal()
            }.start()
        }

        deinit { release() }

        /// Lets the worker answer: the FIFO's only writer closes, and the worker's read of it ends.
        func release() {
            writer.withLock {
                if $0 >= 0 { close($0) }
                $0 = -1
            }
        }

        func wait(timeout: TimeInterval = 30) -> Result<HTTP.Response, any Error>? {
            guard done.wait(timeout: .now() + timeout) == .success else { return nil }
            return result
        }
    }

    /// baton on `s.sock` and, for `tcp`, on 127.0.0.1 at a free port too.
    func launch(
        tcp: Bool,
        _ options: [String] = [],
        behaviour: String? = nil
    ) throws -> (
        scratch: Scratch, baton: BatonRun, port: Int?
    ) {
        var port: Int?
        if tcp {
            let free: Int = try #require(AdoptBindTests.freePort(), "a free port")
            port = free
        }
        let (scratch, _, baton) = try launchWorker(
            (port.map { ["--listen", "127.0.0.1:\($0)"] } ?? []) + options,
            behaviour: behaviour
        )
        try #require(baton.stderr.waitFor("generation 1 ready") != nil, "\(baton.diagnosis())")
        return (scratch, baton, port)
    }

    func status(_ baton: BatonRun) throws -> [String: Any] {
        let result = baton.client(["status", "--json"])
        return try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
    }

    func generation(_ id: Int, in report: [String: Any]) -> [String: Any]? {
        (report["generations"] as? [[String: Any]])?.first { $0["id"] as? Int == id }
    }

    func pids(_ generation: [String: Any]?) -> [Int32] {
        (generation?["workers"] as? [[String: Any]] ?? []).compactMap { ($0["pid"] as? Int).map(Int32.init) }
    }

    @Test(arguments: ["tcp", "unix"])
    func aReloadReturnsWhileASlowRequestDrainsAndStatusShowsItsConnection(listener: String) throws {
        let (scratch, baton, port) = try launch(tcp: listener == "tcp", ["--stop-timeout", "20s"])
        let old = pids(generation(1, in: try status(baton)))
        #expect(old.count == 1)
        let slow = SlowRequest(port: port, unix: scratch.file("s.sock"), scratch: scratch)
        #expect(baton.stdout.waitFor(slow.handling) != nil, "the slow request reached the worker")

        let reload = baton.client(["reload"])
        #expect(reload.status == 0, "\(reload.stderr)")
        #expect(reload.stdout.contains("generation 2 serving; reload took"))
        #expect(reload.stdout.contains("generation 1 draining: 1 connection, "), "\(reload.stdout)")

        // The reload has returned; generation 1 still drains the slow request.
        let report = try status(baton)
        let draining = try #require(generation(1, in: report), "generation 1 still drains: \(report)")
        #expect(draining["state"] as? String == "draining")
        #expect(draining["connections"] as? Int == 1, "the one slow request, not the listener: \(draining)")
        let left = try #require(draining["drainSecondsLeft"] as? Int)
        #expect(left > 0 && left <= 20, "time left before SIGKILL, within the stop timeout")
        #expect(isAlive(old[0]))
        #expect(generation(2, in: report)?["state"] as? String == "serving")
        #expect(generation(2, in: report)?["connections"] == nil)
        let table = baton.client(["status"]).stdout
        #expect(table.contains("generation 1  draining  1 connection, "), "\(table)")

        // The old generation answers its request, then exits by itself: one journal event for the drain.
        slow.release()
        let response = try #require(slow.wait(), "the slow request finished")
        #expect(try response.get().status == 200)
        #expect(try response.get().body.hasPrefix("generation 1"))
        #expect(baton.stderr.waitFor("generation 1 drained in") != nil)
        #expect(
            baton.stderr.text.contains(
                "its workers closed their connections and exited (0 killed; 1 open when told to stop)"
            )
        )
        #expect(waitForExit(old[0]))
        #expect(baton.stop() == 0)
    }

    @Test func waitDrainedReturnsOnlyOnceTheOldGenerationIsGone() throws {
        let (scratch, baton, _) = try launch(tcp: false)
        let old = pids(generation(1, in: try status(baton)))
        let slow = SlowRequest(port: nil, unix: scratch.file("s.sock"), scratch: scratch)
        #expect(baton.stdout.waitFor(slow.handling) != nil)
        // The request is let go once generation 2 serves: the reload cannot have returned before it is answered.
        Thread {
            _ = baton.stderr.waitFor("reload to generation 2 succeeded", timeout: 60)
            slow.release()
        }.start()
        let reload = baton.client(["reload", "--wait-drained"])
        #expect(reload.status == 0, "\(reload.stderr)")
        #expect(reload.stdout.contains("generation 2 serving; generation 1 drained in"), "\(reload.stdout)")
        // By the time it returns, the old generation is gone and its request was answered.
        #expect(!isAlive(old[0]))
        #expect(generation(1, in: try status(baton)) == nil)
        #expect(try slow.wait()?.get().status == 200)
        #expect(baton.stop() == 0)
    }

    @Test func aSecondReloadWaitsForTheDrainAndCutDrainProceeds() throws {
        let (scratch, baton, _) = try launch(tcp: false)
        let slow = SlowRequest(port: nil, unix: scratch.file("s.sock"), scratch: scratch)
        #expect(baton.stdout.waitFor(slow.handling) != nil)
        #expect(baton.client(["reload"]).status == 0)
        let first = try #require(baton.stderr.waitFor("reload requested"))

        // A second reload while generation 1 drains waits for it, and says so.
        let waiting = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var second = CommandResult(status: -1, stdout: "", stderr: "")
        Thread {
            second = baton.client(["reload"])
            waiting.signal()
        }.start()
        #expect(baton.stderr.waitFor("reload requested", after: first + 1) != nil, "the second reload arrived")
        let report = try status(baton)
        #expect(generation(3, in: report) == nil, "no third generation while generation 1 drains: \(report)")
        #expect(generation(1, in: report)?["state"] as? String == "draining")
        #expect(waiting.wait(timeout: .now() + 0.5) == .timedOut, "the second reload is still waiting")

        // --cut-drain: generation 1 is killed and both reloads go on as one.
        let cut = baton.client(["reload", "--cut-drain"])
        #expect(cut.status == 0, "\(cut.stderr)")
        #expect(cut.stdout.contains("cutting the drain of generation 1 short: killing 1 connection"), "\(cut.stdout)")
        #expect(cut.stdout.contains("generation 3 serving"))
        #expect(waiting.wait(timeout: .now() + 30) == .success)
        #expect(second.status == 0)
        #expect(
            second.stdout.contains("waiting for generation 1 to finish draining (1 connection, "),
            "\(second.stdout)"
        )
        #expect(second.stdout.contains("generation 3 serving"))
        #expect(baton.stderr.waitFor("generation 1 drained in") != nil)
        #expect(baton.stderr.text.contains("1 worker(s) killed by --cut-drain with 1 connection(s) still open"))
        // The slow request was cut with its worker.
        if case .success(let response)? = slow.wait() { #expect(response.status != 200) }
        #expect(baton.stop() == 0)
    }

    @Test func theHistoryKeepsTheLastTwentyReloads() throws {
        let (_, baton, _) = try launch(tcp: false, ["--ready", "exec"])
        for round in 1...21 {
            let reload = baton.client(["reload", "--wait-drained", "--quiet"])
            try #require(reload.status == 0, "reload \(round): \(reload.stderr)")
        }
        let report = try status(baton)
        let reloads = try #require(report["reloads"] as? [[String: Any]])
        #expect(reloads.count == 20)
        #expect(reloads.compactMap { $0["generation"] as? Int } == Array((3...22).reversed()), "newest first")
        for reload in reloads {
            #expect(reload["ok"] as? Bool == true)
            let started = try #require(reload["startedAt"] as? Double)
            let finished = try #require(reload["finishedAt"] as? Double)
            #expect(started <= finished)
        }
        #expect(baton.client(["status"]).stdout.contains("recent reloads (newest first, 20 kept):"))
        #expect(baton.stop() == 0)
    }

    struct Outcome: Decodable {
        var ok: Bool
        var result: String
        var generation: Int?
        var durationMilliseconds: Int?
        var message: String
        var reason: String?
        var stderr: [String]
        var draining: [Draining]

        struct Draining: Decodable {
            var generation: Int
            var connections: Int?
            var secondsLeft: Int
        }
    }

    @Test func reloadJSONIsOneObjectWithAnExitStatusPerResult() throws {
        let (scratch, baton, _) = try launch(tcp: false, ["--stop-timeout", "15s"], behaviour: "ok")
        let slow = SlowRequest(port: nil, unix: scratch.file("s.sock"), scratch: scratch)
        #expect(baton.stdout.waitFor(slow.handling) != nil)
        let ok = baton.client(["reload", "--json"])
        #expect(ok.status == 0)
        #expect(ok.stdout.split(separator: "\n").count == 1, "one line, no progress: \(ok.stdout)")
        let good = try JSONDecoder().decode(Outcome.self, from: Data(ok.stdout.utf8))
        #expect(good.ok && good.result == "ok" && good.generation == 2)
        #expect(good.durationMilliseconds != nil && good.reason == nil && good.stderr.isEmpty)
        #expect(good.draining.count == 1)
        #expect(good.draining.first?.generation == 1)
        #expect(good.draining.first?.connections == 1)
        #expect((good.draining.first?.secondsLeft ?? 0) <= 15)
        slow.release()
        _ = slow.wait()

        scratch.write("behaviour", "crash")
        let failed = baton.client(["reload", "--json"])
        #expect(failed.status == 1)
        let bad = try JSONDecoder().decode(Outcome.self, from: Data(failed.stdout.utf8))
        #expect(!bad.ok && bad.result == "failed" && bad.generation == 3)
        #expect(bad.reason?.contains("exited with exit 3") == true)
        #expect(bad.stderr.contains { $0.contains("fatal: cannot load configuration (test crash)") })

        // Refused: baton is stopping (a worker that ignores SIGTERM keeps it stopping until the stop timeout).
        scratch.write("behaviour", "ignore-term")
        #expect(baton.client(["reload", "--quiet", "--wait-drained"]).status == 0)
        baton.signal(SIGTERM)
        #expect(baton.stderr.waitFor("stopping: retiring") != nil)
        let refused = baton.client(["reload", "--json"])
        #expect(refused.status == 75, "\(refused.stdout) \(refused.stderr)")
        let late = try JSONDecoder().decode(Outcome.self, from: Data(refused.stdout.utf8))
        #expect(late.result == "refused" && late.message == "baton is stopping")
        baton.signal(SIGTERM)  // the second one kills at once
        #expect(baton.wait() != nil)
    }

    @Test func bothKernelSourcesSeeTheSameConnection() throws {
        // A listener and one connection to it, in this process.
        let port = try #require(AdoptBindTests.freePort())
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        try #require(bound && listen(listener, 8) == 0)
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(client) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(client, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        try #require(connected)
        let accepted = accept(listener, nil, nil)
        defer { close(accepted) }
        try #require(accepted >= 0)
        let inode = try #require(
            UInt64(
                try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(accepted)")
                    .dropFirst("socket:[".count).dropLast()
            )
        )
        let listenerInode = try #require(
            UInt64(
                try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(listener)")
                    .dropFirst("socket:[".count).dropLast()
            )
        )
        let fromProc = Connections.procNet()
        #expect(fromProc.contains(Connections.Entry(inode: inode, localPort: UInt16(port))))
        #expect(!fromProc.contains { $0.inode == listenerInode }, "a listening socket is not a connection")
        let fromDiag = try #require(Connections.sockDiag(), "sock_diag answers on this kernel")
        #expect(fromDiag.contains(Connections.Entry(inode: inode, localPort: UInt16(port))))
        #expect(!fromDiag.contains { $0.inode == listenerInode })
        let counts = Connections.count(pids: [getpid()], ports: [UInt16(port)], excluding: [listenerInode])
        #expect(
            counts[getpid()] == 1,
            "the accepted socket; not the client's end (another local port), not the listener"
        )
    }
}
