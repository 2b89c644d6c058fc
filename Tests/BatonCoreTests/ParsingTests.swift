import BatonCore
import Foundation
import Testing

@Suite("Parsers")
struct ParsingTests {
    @Test(arguments: [
        ("30s", Duration.seconds(30)), ("500ms", .milliseconds(500)), ("2m", .seconds(120)),
        ("1.5s", .milliseconds(1500)),
        ("1h", .seconds(3600)),
    ])
    func durations(text: String, expected: Duration) {
        #expect(DurationText(text)?.duration == expected)
    }

    @Test(arguments: ["", "s", "10", "1.5", "abc", "-1s", "1x", "1e3s", "nan", "1..2s", "9999999h"])
    func badDurations(text: String) {
        #expect(DurationText(text) == nil)
    }

    @Test func listenAddresses() throws {
        #expect(
            try ListenSpec(parsing: "127.0.0.1:8080", defaultName: "d").address == .tcp(host: "127.0.0.1", port: 8080)
        )
        #expect(try ListenSpec(parsing: ":80", defaultName: "d").address == .tcp(host: nil, port: 80))
        #expect(try ListenSpec(parsing: "[::1]:443", defaultName: "d").address == .tcp(host: "::1", port: 443))
        #expect(
            try ListenSpec(parsing: "localhost:3000", defaultName: "d").address == .tcp(host: "localhost", port: 3000)
        )
        let named = try ListenSpec(parsing: "web=unix:/run/app=1.sock", defaultName: "d")
        #expect(named.name == "web")
        #expect(named.address == .unix(path: "/run/app=1.sock"))
        #expect(try ListenSpec(parsing: "unix:/tmp/a.sock", defaultName: "listen0").name == "listen0")
        #expect(try ListenSpec(parsing: "api=[::]:9000", defaultName: "d").address.description == "[::]:9000")
        #expect(
            try ListenSpec(parsing: "[fe80::1%eth0]:80", defaultName: "d").address
                == .tcp(host: "fe80::1%eth0", port: 80)
        )
    }

    @Test(arguments: [
        "8080", "host:", "host:0", "host:65536", ":http", "::1:80", "[::1:80", "unix:", "a:b=:80", "bad name=:80",
        "ho st:80", "[]:80",
        // Found by the fuzzer: a bracketed name parsed as a TCP host and printed back as a unix socket.
        "[unix]:6", "[127.0.0.1]:80", "[localhost]:80",
    ])
    func badListenAddresses(text: String) {
        #expect(throws: BatonError.self) { try ListenSpec(parsing: text, defaultName: "d") }
    }

    @Test func badListenAddressErrorsNameTheArgumentAndTheFix() {
        do {
            _ = try ListenSpec(parsing: "::1:80", defaultName: "d")
            Issue.record("expected an error")
        } catch {
            #expect(error.message == "invalid --listen '::1:80': an IPv6 address goes in brackets: [::1]:80")
        }
    }

    @Test func notifyMessages() throws {
        let message = try #require(
            NotifyMessage(parsing: Array("READY=1\nSTATUS=warming up\nWATCHDOG_USEC=500000\nX_CUSTOM=1\n".utf8))
        )
        #expect(message.ready)
        #expect(message.status == "warming up")
        #expect(message.watchdogInterval == .milliseconds(500))
        #expect(message.rejected.isEmpty)
        #expect(message.other == ["X_CUSTOM"])
        #expect(NotifyMessage(parsing: Array("WATCHDOG=1".utf8))?.watchdog == true)
        #expect(NotifyMessage(parsing: Array("READY".utf8)) == nil)
        #expect(NotifyMessage(parsing: [0xff, 0xfe]) == nil)
        #expect(NotifyMessage(parsing: Array("READY=1\0".utf8)) == nil)
        #expect(NotifyMessage(parsing: [UInt8](repeating: 65, count: 5000)) == nil)
    }

    @Test(arguments: [
        "18446744073709551615", "18446744073709551616", "99999999999999999999999", "0", "-1", "999", "31536000000001",
        "1e6", " 5", "5s", "", "\u{1b}[2J",
        // Found by the notify fuzzer: escaping made a rejected value longer than a log line should be.
        "-001=T" + String(repeating: "\u{11}", count: 60),
        "888888" + String(repeating: "\t", count: 40) + "8888\u{01}\u{7f}",
    ])
    func notifyValuesOutOfRangeAreRejectedAndTheRestCounts(value: String) throws {
        let message = try #require(NotifyMessage(parsing: Array("READY=1\nWATCHDOG_USEC=\(value)\nWATCHDOG=1\n".utf8)))
        #expect(message.watchdogInterval == nil)
        #expect(message.ready && message.watchdog, "the other assignments of the message count")
        #expect(message.rejected.count == 1)
        let rejected = try #require(message.rejected.first)
        #expect(rejected.hasPrefix("WATCHDOG_USEC="))
        #expect(rejected.contains("from 1000 to 31536000000000"))
        #expect(
            !rejected.unicodeScalars.contains { ($0.value < 0x20 && $0 != "\t") || $0.value == 0x7f },
            "printable: \(rejected)"
        )
        #expect(rejected.count < 120)
    }

    @Test func notifyValuesAtTheBoundsAreAccepted() throws {
        #expect(NotifyMessage(parsing: Array("WATCHDOG_USEC=1000".utf8))?.watchdogInterval == .milliseconds(1))
        #expect(
            NotifyMessage(parsing: Array("WATCHDOG_USEC=31536000000000".utf8))?.watchdogInterval
                == .seconds(365 * 86400)
        )
    }

    @Test func durationsConvertWithoutTrapping() {
        #expect(Duration.seconds(Int64.max).milliseconds == Int64.max)
        #expect(Duration.seconds(Int64.min).microseconds == Int64.min)
        #expect(Duration.milliseconds(Int64.min).milliseconds == Int64.min)
        #expect(Duration.milliseconds(-1500).milliseconds == -1500)
        #expect(Duration.microseconds(Int64.max).shortDescription.hasSuffix("s"))
        #expect(Duration.milliseconds(1234).microseconds == 1_234_000)
    }

    @Test func theStatusTableSurvivesAbsurdTimes() {
        let worker = StatusReport.Worker(
            slot: 1,
            pid: 2,
            state: "ready",
            uptimeSeconds: .infinity,
            restarts: 0,
            status: nil
        )
        let status = StatusReport(
            name: "x",
            pid: 1,
            version: "v",
            listeners: [],
            generations: [.init(id: 1, state: "serving", startedAt: -1e308, crashLooping: false, workers: [worker])],
            lastReload: .init(ok: true, generation: 1, durationMilliseconds: .min, reason: nil, finishedAt: .nan),
            reloading: false
        )
        let text = StatusFormatter.text(status, now: 1e308)
        #expect(text.contains("generation 1  serving"))
    }

    @Test func lineSplitterCapsLongLines() {
        var splitter = LineSplitter(maximumLineLength: 4)
        #expect(splitter.feed(Array("ab\ncdefgh".utf8)).map { String(decoding: $0, as: UTF8.self) } == ["ab", "cdef"])
        #expect(splitter.feed(Array("\n".utf8)).map { String(decoding: $0, as: UTF8.self) } == ["gh"])
        #expect(splitter.finish() == nil)
    }

    @Test func controlRequests() throws {
        #expect(try ControlProtocol.decodeRequest(Array(#"{"command":"reload"}"#.utf8)).command == .reload)
        #expect(throws: BatonError.self) { try ControlProtocol.decodeRequest(Array(#"{"command":"explode"}"#.utf8)) }
        #expect(throws: BatonError.self) { try ControlProtocol.decodeRequest(Array("not json".utf8)) }
        #expect(throws: BatonError.self) { try ControlProtocol.decodeRequest([UInt8](repeating: 32, count: 5000)) }
        let reply = ControlProtocol.Reply(kind: .result, message: "done", ok: true, durationMilliseconds: 12)
        #expect(ControlProtocol.decodeReply(Array(ControlProtocol.encode(reply).dropLast())) == reply)
    }

    @Test func controlPathDefaultsUnderTheRuntimeDirectory() {
        #expect(LaunchConfiguration.defaultControlPath(name: "shop", runtimeDirectory: nil) == "/run/baton/shop.sock")
        #expect(
            LaunchConfiguration.defaultControlPath(name: "shop", runtimeDirectory: "/run/shop:/run/x")
                == "/run/shop/shop.sock"
        )
    }

    @Test func clientsLookWhereTheShippedUnitsPutTheControlSocket() {
        #expect(
            LaunchConfiguration.controlPathCandidates(name: "shop", runtimeDirectory: nil)
                == ["/run/baton/shop.sock", "/run/baton-shop/shop.sock", "/run/shop/shop.sock"]
        )
        #expect(
            LaunchConfiguration.controlPathCandidates(name: "shop", runtimeDirectory: "/run/baton-shop")
                == ["/run/baton-shop/shop.sock", "/run/baton/shop.sock", "/run/shop/shop.sock"]
        )
    }

    @Test func workersDoNotInheritWhatSystemdMeantForBaton() {
        let environment = LaunchConfiguration.workerBaseEnvironment([
            "PATH=/bin", "NOTIFY_SOCKET=/run/systemd/notify", "WATCHDOG_USEC=1", "WATCHDOG_PID=1", "LISTEN_FDS=1",
            "LISTEN_PID=1", "LISTEN_FDNAMES=x", "JOURNAL_STREAM=8:9", "DATABASE_URL=postgres://",
        ])
        #expect(environment == ["PATH=/bin", "DATABASE_URL=postgres://"])
    }

    @Test func backoffDoublesUpToItsCap() {
        let backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(1), stablePeriod: .seconds(10))
        #expect(
            (1...6).map { backoff.delay(afterCrash: $0) } == [100, 200, 400, 800, 1000, 1000].map { .milliseconds($0) }
        )
    }
}

@Suite("journal catalog")
struct CatalogTests {
    @Test func everyRestartEventHasAStableMessageIDAndACatalogEntry() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let catalog = try String(contentsOf: root.appendingPathComponent("systemd/baton.catalog"), encoding: .utf8)
        let ids = LifecycleEvent.Kind.allCases.map(\.messageID)
        #expect(Set(ids).count == ids.count, "message ids are unique")
        for id in ids {
            #expect(id.count == 32 && id.allSatisfy { $0.isHexDigit && !$0.isUppercase })
            #expect(catalog.contains("-- \(id)\n"), "catalog entry for \(id)")
        }
    }
}
