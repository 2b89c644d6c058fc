import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What another user or a misbehaving worker can do to baton: nothing.
@Suite("security", .serialized, .timeLimit(.minutes(5)))
struct SecurityTests {
    /// Debian's own interpreter, which every user can run (unlike one under /root).
    let python = FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") ? "/usr/bin/python3" : "python3"

    func reportDirectory(_ scratch: Scratch) throws -> String {
        let reports = scratch.file("reports")
        try FileManager.default.createDirectory(atPath: reports, withIntermediateDirectories: true)
        chmod(scratch.path, 0o755)
        chmod(reports, 0o777)
        return reports
    }

    @Test func anUnprivilegedWorkerServesAPortBelow1024ThatBatonHolds() throws {
        try #require(getuid() == 0, "needs root to bind a privileged port")
        let scratch = Scratch()
        let reports = try reportDirectory(scratch)
        let port = 900 + Int(getpid() % 100)
        let baton = try BatonRun(
            ["--listen", "127.0.0.1:\(port)", "--user", "nobody", "--group", "nogroup", "--", python, Paths.worker],
            scratch: scratch,
            environment: ["REPORT_DIR": reports]
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let report = try #require(WorkerReport.all(in: reports).first)
        #expect(report.uid == 65534 && report.gid == 65534)
        #expect(report.groups == [65534], "no supplementary group of root's is kept")
        #expect(try HTTP.get(host: "127.0.0.1", port: port).status == 200)
        #expect(baton.client(["reload"]).status == 0)
        #expect(baton.stop() == 0)
    }

    @Test func theControlSocketRefusesAnotherUser() throws {
        try #require(getuid() == 0, "needs root to act as a second user")
        let scratch = Scratch()
        let baton = try BatonRun(
            ["--listen", "unix:\(scratch.file("s.sock"))", "--", python, Paths.worker],
            scratch: scratch
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        // The socket is 0600; open the file up so that only SO_PEERCRED stands in the way.
        chmod(scratch.path, 0o755)
        chmod(baton.control, 0o666)
        let setpriv = try #require(Paths.which("setpriv"))
        for command in ["status", "reload"] {
            let result = run(
                setpriv,
                ["--reuid=65534", "--regid=65534", "--clear-groups", Paths.baton, command, "--control", baton.control]
            )
            #expect(result.status != 0)
            #expect(
                result.stderr.contains(
                    "permission denied: only root or the user running baton may use its control socket"
                )
            )
        }
        let status = baton.client(["status", "--json"])
        #expect(status.status == 0)
        #expect(status.stdout.contains("\"lastReload\"") == false, "nobody's reload was not performed")
        #expect(baton.stop() == 0)
    }

    @Test func oversizedAndFdCarryingNotifyMessagesAreDroppedAndTheFdsClosed() throws {
        let scratch = Scratch()
        let reports = try reportDirectory(scratch)
        scratch.write("behaviour", "junk-notify")
        let baton = try BatonRun(
            ["--listen", "unix:\(scratch.file("s.sock"))", "--ready", "notify", "--", python, Paths.worker],
            scratch: scratch,
            environment: ["READY_MODE": "notify", "REPORT_DIR": reports, "BEHAVIOUR_FILE": scratch.file("behaviour")]
        )
        #expect(baton.stdout.waitFor("junk sent") != nil)
        #expect(baton.stderr.waitFor("generation 1 ready") != nil, "the worker's proper READY=1 still counts")
        let dropped = baton.stderr.all.filter {
            $0.contains("dropped a malformed, oversized or fd-carrying notify message")
        }
        #expect(dropped.count == 2)
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(baton.pid)/fd")) ?? []
        let targets = fds.compactMap {
            try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(baton.pid)/fd/\($0)")
        }
        #expect(!targets.contains { $0.hasSuffix("leak-marker") }, "the fd that came with the message was closed")
        #expect(baton.stop() == 0)
    }
}
