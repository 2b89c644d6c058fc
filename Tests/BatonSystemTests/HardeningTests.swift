import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What a hostile or careless worker, a local user or the host's limits can do to `baton run`: none of it takes
/// baton down, leaves workers behind or redirects what baton does to a file.
@Suite("hardening, with real processes", .serialized, .timeLimit(.minutes(3)))
struct HardeningTests {
    /// baton running worker.py on `s.sock` in a fresh scratch directory, with `options`, a reports directory
    /// (REPORT_DIR) and, when given, the workers' behaviour (BEHAVIOUR_FILE).
    func launch(
        _ options: [String] = [], behaviour: String? = nil, environment: [String: String] = [:],
        command: [String] = ["python3", Paths.worker], wrapper: [String] = []
    ) throws -> (scratch: Scratch, reports: String, baton: BatonRun) {
        let scratch = Scratch()
        let reports = scratch.file("reports")
        try FileManager.default.createDirectory(atPath: reports, withIntermediateDirectories: true)
        var environment = environment
        environment["REPORT_DIR"] = reports
        if let behaviour {
            scratch.write("behaviour", behaviour)
            environment["BEHAVIOUR_FILE"] = scratch.file("behaviour")
        }
        let baton = try BatonRun(
            ["--listen", "unix:\(scratch.file("s.sock"))"] + options + ["--"] + command, scratch: scratch,
            environment: environment, wrapper: wrapper)
        return (scratch, reports, baton)
    }

    // MARK: - Numbers from outside

    @Test(arguments: ["notify", "fd"])
    func aWatchdogIntervalPast64BitsIsRejectedAndBatonCarriesOn(mode: String) throws {
        let (scratch, _, baton) = try launch(
            ["--ready", mode],
            behaviour: "send-notify WATCHDOG_USEC=18446744073709551615|WATCHDOG=1|WATCHDOG_USEC=0\nWATCHDOG=1|STATUS=still here",
            environment: ["READY_MODE": mode])
        #expect(baton.stdout.waitFor("sent notify") != nil)
        #expect(baton.stderr.waitFor("rejected WATCHDOG_USEC=18446744073709551615 (not a number of microseconds from 1000 to") != nil)
        #expect(baton.stderr.waitFor("rejected WATCHDOG_USEC=0 (") != nil)
        // The message after the rejected ones was still delivered: baton is alive and acting on it.
        let status = baton.client(["status"])
        #expect(status.status == 0, "baton answers: \(status.stderr)")
        #expect(status.stdout.contains("\"still here\""))
        #expect(try HTTP.get(unix: scratch.file("s.sock")).status == 200)
        #expect(!baton.stderr.text.contains("stopped sending WATCHDOG=1"), "no watchdog was armed from a rejected value")
        #expect(baton.stop() == 0)
    }
}
