import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// baton re-executes an upgraded binary in place: same pid, same listeners, same running generation.
@Suite("re-execution in place", .serialized, .timeLimit(.minutes(5)))
struct ReexecTests {
    /// Installs a copy of baton the way dpkg does: a new file renamed over the old one.
    func install(_ source: String, at path: String) throws {
        let temporary = path + ".dpkg-new"
        try? FileManager.default.removeItem(atPath: temporary)
        try FileManager.default.copyItem(atPath: source, toPath: temporary)
        #expect(rename(temporary, path) == 0)
    }

    func status(_ baton: BatonRun) throws -> [String: Any] {
        let result = baton.client(["status", "--json"])
        return try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
    }

    func workerPIDs(_ status: [String: Any]) -> [Int] {
        let generations = status["generations"] as? [[String: Any]] ?? []
        return generations.flatMap { ($0["workers"] as? [[String: Any]] ?? []).compactMap { $0["pid"] as? Int } }
            .sorted()
    }

    @Test func anUpgradedBinaryTakesOverWithoutDroppingAnything() throws {
        let scratch = Scratch()
        let binary = scratch.file("baton")
        try install(Paths.baton, at: binary)
        let baton = try BatonRun(
            [
                "--listen", "unix:\(scratch.file("s.sock"))", "--workers", "2", "--ready", "fd", "--", "python3",
                Paths.worker,
            ],
            scratch: scratch,
            environment: ["READY_MODE": "fd"],
            executable: binary
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let before = try status(baton)

        // Requests keep flowing while the launcher replaces itself.
        let stop = scratch.file("stop-requests")
        let failures = scratch.file("failures")
        let finished = DispatchSemaphore(value: 0)
        let requester = Thread {
            defer { finished.signal() }
            var failed = 0
            var served = 0
            while !FileManager.default.fileExists(atPath: stop) {
                if (try? HTTP.get(unix: scratch.file("s.sock")))?.status == 200 { served += 1 } else { failed += 1 }
            }
            scratch.write("failures", "\(failed) \(served)")
        }
        requester.start()

        try install(Paths.baton, at: binary)
        baton.signal(SIGUSR2)
        #expect(baton.stderr.waitFor("re-executed \(binary) in place") != nil)
        let after = try status(baton)
        scratch.write("stop-requests", "")
        #expect(finished.wait(timeout: .now() + 20) == .success)

        #expect(baton.process.isRunning)
        #expect(after["pid"] as? Int == before["pid"] as? Int, "the same process, so systemd's MAINPID holds")
        #expect(workerPIDs(after) == workerPIDs(before), "the running generation was not touched")
        #expect((after["generations"] as? [[String: Any]])?.first?["id"] as? Int == 1)
        let counts = try String(contentsOfFile: failures, encoding: .utf8).split(separator: " ").compactMap { Int($0) }
        #expect(counts.first == 0, "no request failed across the re-execution: \(counts)")
        #expect((counts.last ?? 0) > 0)
        // The resumed launcher still does its job.
        #expect(baton.client(["reload"]).status == 0)
        #expect(try HTTP.get(unix: scratch.file("s.sock")).body.hasPrefix("generation 2"))
        #expect(baton.stop() == 0)
    }

    @Test func aWorkerThatClosedItsOutputBeforeTheReexecutionIsStillRetiredCleanly() throws {
        let scratch = Scratch()
        let binary = scratch.file("baton")
        try install(Paths.baton, at: binary)
        // The worker's stdout and stderr pipes end before the re-execution: the new binary has none to take over.
        let baton = try BatonRun(
            [
                "--listen", "unix:\(scratch.file("s.sock"))", "--ready", "fd", "--", "/bin/sh", "-c",
                "exec >/dev/null 2>&1; exec python3 \(Paths.worker)",
            ],
            scratch: scratch,
            environment: ["READY_MODE": "fd"],
            executable: binary
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        baton.signal(SIGUSR2)
        #expect(baton.stderr.waitFor("re-executed \(binary) in place") != nil)
        // Its exit, at the reload, reads what is left of pipes that are gone.
        #expect(baton.client(["reload"]).status == 0)
        #expect(baton.process.isRunning)
        #expect(try HTTP.get(unix: scratch.file("s.sock")).body.hasPrefix("generation 2"))
        #expect(baton.stop() == 0)
    }

    @Test func aBinaryThatDoesNotRunIsNotExecutedAndTheLauncherCarriesOn() throws {
        let scratch = Scratch()
        let binary = scratch.file("baton")
        try install(Paths.baton, at: binary)
        let baton = try BatonRun(
            ["--listen", "unix:\(scratch.file("s.sock"))", "--", "python3", Paths.worker],
            scratch: scratch,
            executable: binary
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let before = try status(baton)
        // A broken upgrade: the file is not a program.
        scratch.write("broken", "this is not a program\n")
        chmod(scratch.file("broken"), 0o755)
        #expect(rename(scratch.file("broken"), binary) == 0)
        baton.signal(SIGUSR2)
        #expect(baton.stderr.waitFor("cannot re-execute \(binary)") != nil)
        #expect(baton.stderr.text.contains("the running baton carries on"))
        let after = try status(baton)
        #expect(workerPIDs(after) == workerPIDs(before))
        #expect(try HTTP.get(unix: scratch.file("s.sock")).status == 200)
        #expect(baton.stop() == 0)
    }
}
