import BatonSystem
import Foundation
import Testing

/// baton's version is one record in the binary (Sources/CBatonSystem/version.c): equal to the package's, and
/// rewritable in a built binary, which is how Tests/system/upgrade-tests.sh makes the next baton.
@Suite struct VersionTests {
    @Test func theVersionIsTheOneInTheDebianChangelog() throws {
        let changelog = try String(
            contentsOfFile: Paths.packageRoot.appendingPathComponent("packaging/debian/changelog").path,
            encoding: .utf8
        )
        let first = try #require(changelog.split(separator: "\n").first)
        let open = try #require(first.firstIndex(of: "("))
        let close = try #require(first.firstIndex(of: ")"))
        let version = String(first[first.index(after: open)..<close])
        #expect(BatonVersion.current == version)
        let shown = run(Paths.baton, ["--version"])
        #expect(shown.status == 0)
        #expect(shown.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == version)
    }

    @Test func rewritingTheRecordOfABuiltBinaryChangesTheVersionItShows() throws {
        let scratch = Scratch()
        let copy = scratch.file("baton")
        try FileManager.default.copyItem(atPath: Paths.baton, toPath: copy)
        let tool = Paths.packageRoot.appendingPathComponent("tools/set-version.py").path
        let rewritten = run("/usr/bin/python3", [tool, copy, BatonVersion.current, "0.1.99~test"])
        #expect(rewritten.status == 0, "\(rewritten.stderr)")
        #expect(run(copy, ["--version"]).stdout == "0.1.99~test")
        // The record names the version it holds: a second rewrite from the old version is refused, in one line.
        let again = run("/usr/bin/python3", [tool, copy, BatonVersion.current, "0.2"])
        #expect(again.status == 1)
        #expect(again.stderr.contains("does not hold exactly one record"))
        #expect(again.stderr.split(separator: "\n").count == 1)
        #expect(run(copy, ["--version"]).stdout == "0.1.99~test")
    }
}
