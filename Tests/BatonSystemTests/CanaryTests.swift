import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Canary and held (blue-green) reloads of the example Node app under continuous load (the chaos suite's rig and
/// load client): every reload asserts 0 failed requests, except where a canary is killed, whose own requests in
/// flight bound what may fail. Nested in the chaos suite, so that it runs serially with it (two load rigs at once on
/// two cores made the first generation miss the rig's ready timeout) and is skipped with it under the sanitizers.
extension ChaosTests {
    @Suite("canary and held reloads under load", .serialized, .timeLimit(.minutes(10)))
    struct CanaryReloadTests {
        typealias Rig = ChaosTests.Rig

        /// A `baton reload ...` running while the test looks on.
        final class Client {
            let process = Process()
            let stdout = Pipe()
            let stderr = Pipe()

            init(_ rig: Rig, _ arguments: [String]) throws {
                process.executableURL = URL(fileURLWithPath: Paths.baton)
                process.arguments = [arguments[0], "--control", rig.baton.control] + arguments.dropFirst()
                process.standardOutput = stdout
                process.standardError = stderr
                try process.run()
            }

            /// Waits for it to exit.
            func finish() -> CommandResult {
                let out = String(decoding: stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                let err = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                process.waitUntilExit()
                return CommandResult(status: process.terminationStatus, stdout: out, stderr: err)
            }
        }

        /// The generations `baton status --json` reports: id, state, worker pids.
        func generations(_ rig: Rig) throws -> [(id: Int, state: String, pids: [Int32])] {
            let status = rig.baton.client(["status", "--json"]).stdout
            let report = try #require(try JSONSerialization.jsonObject(with: Data(status.utf8)) as? [String: Any])
            return (report["generations"] as? [[String: Any]] ?? []).map { generation in
                (
                    generation["id"] as? Int ?? 0,
                    generation["state"] as? String ?? "",
                    (generation["workers"] as? [[String: Any]] ?? []).compactMap { ($0["pid"] as? Int).map(Int32.init) }
                )
            }
        }

        /// Responses the load client got from `generation`.
        func responses(_ summary: [String: Any], generation: Int) -> Int {
            (summary["generations"] as? [String: Any])?["\(generation)"] as? Int ?? 0
        }

        /// Waits (at most 30 s: a loaded machine serves the load slowly) until `pid` holds a connection of the load: it
        /// takes its share of the traffic.
        func waitForConnections(_ rig: Rig, of pid: Int32) -> Int {
            let deadline = Date().addingTimeInterval(30)
            while rig.connections(of: pid) == 0 && Date() < deadline { usleep(5_000) }
            return rig.connections(of: pid)
        }

        /// Sends one raw request line to the launcher and returns everything it answers.
        func exchange(_ rig: Rig, _ line: String) -> String {
            guard let fd = connectUnix(rig.baton.control) else { return "" }
            defer { close(fd) }
            _ = Array(line.utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            var reply: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n <= 0 { break }
                reply += buffer[0..<n]
            }
            return String(decoding: reply, as: UTF8.self)
        }

        /// Whether worker `pid` answers one of the new connections this makes to the shared socket (for at most 30 s):
        /// the kernel hands it its share of them, beside the serving generation's workers. Each answer names the pid
        /// that gave it, so this waits on answers, not on samples of the worker's fds.
        func answers(_ rig: Rig, pid: Int32) -> Bool {
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline {
                if let response = try? HTTP.get(host: "127.0.0.1", port: rig.port),
                    response.body.contains("pid \(pid) ")
                {
                    return true
                }
            }
            return false
        }

        @Test func aCanaryThatStaysUpLetsTheReloadGoOnWithNoFailedRequest() throws {
            let rig = try Rig(workers: 3)
            // --wait-drained: the reload answers once generation 1 is gone, so that what serves after it is checked.
            let reload = try Client(rig, ["reload", "--canary", "3s", "--wait-drained"])
            #expect(rig.baton.stderr.waitFor("ready; serving beside generation 1 for 3s (--canary)") != nil)
            let during = try generations(rig)
            #expect(during.map(\.state) == ["serving", "canary"], "\(during)")
            let canary = try #require(during.last?.pids.first)
            #expect(during.last?.pids.count == 1, "one canary worker, the rest wait")
            #expect(answers(rig, pid: canary), "the canary takes real traffic on the shared socket")
            let result = reload.finish()
            #expect(result.status == 0, "\(result.stderr)")
            #expect(
                result.stdout.contains(
                    "canary worker 1 (pid \(canary)) passed its 3s canary window; starting the other 2"
                )
            )
            #expect(result.stdout.contains("generation 2 serving; generation 1 drained in"), "\(result.stdout)")
            let after = try generations(rig)
            #expect(after.map(\.state) == ["serving"] && after.first?.id == 2)
            #expect(after.first?.pids.count == 3 && after.first?.pids.contains(canary) == true)
            #expect(rig.baton.stderr.all.contains { $0.contains("canary worker 1 (pid \(canary)) passed") })
            let summary = try rig.finish()
            ChaosTests().report("canary that passes", summary)
            #expect(ChaosTests.count(summary, "failed") == 0)
            #expect(responses(summary, generation: 2) > 0)
            rig.stop()
        }

        /// With `--health`: the canary passes its probes, becomes the canary, then fails one in its window (its probe
        /// socket answers 503 from then on): the reload rolls back with the probe's reason, the canary drains
        /// gracefully, and no request fails.
        @Test func aCanaryWhoseProbeFailsInItsWindowRollsBackWithNoFailedRequest() throws {
            let rig = try Rig(workers: 2, extra: ["--health", "http:/healthz", "--health-interval", "300ms"])
            rig.behave("health-trigger")
            let old = try rig.workerPIDs()
            let reload = try Client(rig, ["reload", "--canary", "20s"])
            #expect(rig.baton.stderr.waitFor("ready; serving beside generation 1 for 20s") != nil)
            let canary = try #require(try generations(rig).first { $0.state == "canary" }?.pids.first)
            #expect(answers(rig, pid: canary), "the canary serves real traffic")
            rig.scratch.write("behaviour.unhealthy", "\(canary)")
            let result = reload.finish()
            #expect(result.status == 1)
            #expect(
                result.stderr.contains(
                    "worker 1 (pid \(canary)) failed its probe in its canary window: probe http:/healthz got 503"
                ),
                "\(result.stderr)"
            )
            #expect(result.stderr.contains("generation 1 keeps serving"), "\(result.stderr)")
            #expect(waitForExit(canary, timeout: 30), "the canary drains and exits")
            #expect(try rig.workerPIDs() == old, "the old generation is untouched")
            rig.behave("ok")
            #expect(rig.baton.client(["reload", "--quiet"]).status == 0, "the next reload works")
            let summary = try rig.finish()
            ChaosTests().report("canary whose probe fails", summary)
            #expect(ChaosTests.count(summary, "failed") == 0)
            rig.stop()
        }

        @Test func aCanaryKilledInItsWindowRollsBackAndCostsOnlyItsOwnRequestsInFlight() throws {
            let rig = try Rig(workers: 2)
            let old = try rig.workerPIDs()
            let reload = try Client(rig, ["reload", "--canary", "20s"])
            #expect(rig.baton.stderr.waitFor("ready; serving beside generation 1 for 20s") != nil)
            let canary = try #require(try generations(rig).first { $0.state == "canary" }?.pids.first)
            #expect(answers(rig, pid: canary), "the canary serves real traffic before it dies")
            _ = waitForConnections(rig, of: canary)
            let inFlight = rig.connections(of: canary)
            kill(canary, SIGKILL)
            let result = reload.finish()
            #expect(result.status == 1)
            #expect(
                result.stderr.contains("canary worker 1 (pid \(canary)) exited with signal KILL after"),
                "\(result.stderr)"
            )
            #expect(result.stderr.contains("of its 20s canary window; generation 1 keeps serving"), "\(result.stderr)")
            #expect(try rig.workerPIDs() == old, "the old generation is untouched")
            #expect(rig.baton.stderr.all.contains { $0.contains("canary failed") })
            rig.behave("ok")
            #expect(rig.baton.client(["reload", "--quiet"]).status == 0, "the next reload works")
            let summary = try rig.finish()
            ChaosTests().report("canary killed", summary, ", the canary held \(inFlight) connections")
            #expect(ChaosTests.count(summary, "refused") == 0 && ChaosTests.count(summary, "non2xx") == 0)
            #expect(ChaosTests.count(summary, "failed") <= inFlight, "only requests in flight on the canary fail")
            rig.stop()
        }

        /// The release drains (for a second) and exits 3 one second after it is ready: the canary catches it, and its drain loses nothing.
        @Test func aCanaryThatExitsOnItsOwnRollsBackWithNoFailedRequest() throws {
            let rig = try Rig(workers: 2)
            rig.behave("fail-after-ready")
            let failed = rig.baton.client(["reload", "--canary", "5s"])
            #expect(failed.status == 1)
            #expect(failed.stdout.contains("serving beside generation 1 for 5s"), "\(failed.stdout)")
            #expect(
                failed.stderr.contains("exited with exit 3 after ")
                    && failed.stderr.contains("of its 5s canary window"),
                "\(failed.stderr)"
            )
            #expect(!failed.stdout.contains("starting the other"), "the other workers never started")
            #expect(failed.stderr.contains("broken after all"), "the canary's last stderr lines come with it")
            rig.behave("ok")
            let next = rig.baton.client(["reload", "--quiet", "--canary", "1s"])
            #expect(next.status == 0, "\(next.stderr)\n\(rig.baton.diagnosis())")
            let summary = try rig.finish()
            ChaosTests().report("canary exiting on its own", summary)
            #expect(ChaosTests.count(summary, "failed") == 0)
            rig.stop()
        }

        /// Health probes are another helper's work; until they land, a canary that stops answering is caught by the worker
        /// watchdog: slot 1 of the release (the canary) freezes 1.5 s after it starts.
        @Test func aCanaryThatHangsIsCaughtByTheWatchdog() throws {
            let rig = try Rig(workers: 2, extra: ["--watchdog", "1s"])
            rig.behave("hang-after-ready")
            let reload = try Client(rig, ["reload", "--canary", "10s"])
            #expect(rig.baton.stdout.waitFor("freezing now") != nil)
            let hung = try #require(
                Int32(try String(contentsOfFile: rig.scratch.file("behaviour.hung"), encoding: .utf8))
            )
            let held = rig.connections(of: hung)
            let result = reload.finish()
            #expect(result.status == 1)
            #expect(
                result.stderr.contains("canary worker 1 (pid \(hung)) stopped sending WATCHDOG=1 (interval 1s) after"),
                "\(result.stderr)"
            )
            rig.behave("ok")
            #expect(rig.baton.client(["reload", "--quiet"]).status == 0)
            let summary = try rig.finish()
            ChaosTests().report("canary that hangs", summary, ", the hung canary held \(held) connections")
            #expect(ChaosTests.count(summary, "failed") <= held, "only requests on the hung canary fail")
            rig.stop()
        }

        @Test func holdThenPromoteRetiresTheOldGenerationWithNoFailedRequest() throws {
            let rig = try Rig(workers: 2)
            let old = try rig.workerPIDs()
            let held = rig.baton.client(["reload", "--hold"])
            #expect(held.status == 0, "\(held.stderr)")
            #expect(
                held.stdout.hasSuffix(
                    "generation 2 serving beside generation 1; run 'baton promote' or 'baton rollback'"
                ),
                "\(held.stdout)"
            )
            let both = try generations(rig)
            #expect(both.map(\.state) == ["serving", "held"] && both.allSatisfy { $0.pids.count == 2 }, "\(both)")
            let new = both[1].pids
            #expect(old.allSatisfy(isAlive) && new.allSatisfy(isAlive))
            #expect(rig.baton.client(["status"]).stdout.contains("generation 2  held beside generation 1"))
            #expect(answers(rig, pid: new[0]), "the held generation takes real traffic")

            // Refused: nothing was tried (exit 75, retry later).
            let refused = rig.baton.client(["reload"])
            #expect(refused.status == 75)
            #expect(
                refused.stderr
                    == "baton: reload failed: generation 2 is held: promote or roll back first ('baton promote' or 'baton rollback')"
            )
            #expect(rig.baton.client(["reload", "--hold"]).status == 75)

            let promoted = rig.baton.client(["promote"])
            #expect(promoted.status == 0, "\(promoted.stderr)")
            #expect(promoted.stdout.hasPrefix("generation 2 serving; reload took"), "\(promoted.stdout)")
            // Like any reload, promote returns once the old generation was told to stop; it then drains.
            #expect(old.allSatisfy { waitForExit($0, timeout: 30) }, "the old generation drains and is gone")
            #expect(try generations(rig).map(\.id) == [2] && (try rig.workerPIDs()) == new)

            let again = rig.baton.client(["promote"])
            #expect(again.status == 1)
            #expect(
                again.stderr
                    == "baton: no generation is held: 'baton promote' and 'baton rollback' follow 'baton reload --hold'"
            )
            let summary = try rig.finish()
            ChaosTests().report("hold, then promote", summary)
            #expect(ChaosTests.count(summary, "failed") == 0)
            #expect(responses(summary, generation: 1) > 0 && responses(summary, generation: 2) > 0)
            rig.stop()
        }

        @Test func holdThenRollbackRetiresTheNewGenerationWithNoFailedRequest() throws {
            let rig = try Rig(workers: 2)
            let old = try rig.workerPIDs()
            #expect(rig.baton.client(["reload", "--hold", "--canary", "1s"]).status == 0)
            let new = try #require(try generations(rig).first { $0.state == "held" }?.pids)
            #expect(new.count == 2)
            #expect(answers(rig, pid: new[0]), "the held generation takes real traffic")
            #expect(answers(rig, pid: new[1]))

            let rolled = rig.baton.client(["rollback"])
            #expect(rolled.status == 0, "\(rolled.stderr)")
            #expect(rolled.stdout == "generation 2 rolled back; generation 1 keeps serving")
            #expect(new.allSatisfy { !isAlive($0) }, "rollback returns once the held generation is gone")
            #expect(try rig.workerPIDs() == old, "the old generation serves on, untouched")
            #expect(try generations(rig).map(\.id) == [1])
            #expect(rig.baton.client(["rollback"]).status == 1)
            #expect(rig.baton.client(["reload", "--quiet", "--wait-drained"]).status == 0, "reloads work again")
            // What a client sends is range-checked by the launcher too.
            for value in ["-1", "99999999999999"] {
                let reply = exchange(rig, #"{"command":"reload","canaryMilliseconds":"# + value + "}\n")
                #expect(reply.contains("invalid canaryMilliseconds \(value): give 0 (no canary) to"), "\(reply)")
            }
            #expect(try generations(rig).map(\.id) == [3], "no reload started for them")
            let summary = try rig.finish()
            ChaosTests().report("hold, then rollback", summary)
            #expect(ChaosTests.count(summary, "failed") == 0)
            rig.stop()
        }

        @Test(
            arguments: [
                (["reload", "--canary", "5"], "baton: invalid --canary '5': give a unit, such as 5s or 5ms"),
                (
                    ["reload", "--canary", "-1s"],
                    "baton: invalid --canary '-1s': a number with a unit (ms, s, m or h), at most 365 days, such as 5s, or 0 for no canary"
                ),
                (
                    ["run", "--canary", "soon", "--listen", "127.0.0.1:1", "--", "true"],
                    "baton: invalid --canary 'soon': a number with a unit (ms, s, m or h), at most 365 days, such as 5s, or 0 for no canary"
                ),
            ]
        )
        func badCanaryValuesAreOneLineUsageErrors(arguments: [String], message: String) {
            let scratch = Scratch()
            let result = run(
                Paths.baton,
                [arguments[0], "--control", scratch.file("none.sock")] + arguments.dropFirst()
            )
            #expect(result.status == 64)
            #expect(result.stderr == message)
        }

        @Test func promoteOrRollbackWithoutALauncherSaysSo() {
            let scratch = Scratch()
            for command in ["promote", "rollback"] {
                let result = run(Paths.baton, [command, "--control", scratch.file("none.sock")])
                #expect(result.status == 1)
                #expect(result.stderr.hasPrefix("baton: no launcher is running at"), "\(result.stderr)")
            }
        }
    }
}
