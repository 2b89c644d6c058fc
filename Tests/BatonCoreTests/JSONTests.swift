import BatonCore
import FoundationEssentials
import Testing

/// baton's own JSON (BatonCore/JSON.swift) against FoundationEssentials' `JSONEncoder`/`JSONDecoder`, which the
/// control protocol used before and which clients may still use: the same bytes out, the same values back.
@Suite("JSON without Foundation")
struct JSONTests {
    /// A status report with every kind of field: escapes, non-ASCII, slashes, numbers that print oddly, nil.
    static let report: StatusReport = {
        var worker = StatusReport.Worker(
            slot: 1,
            pid: 4242,
            state: "ready",
            uptimeSeconds: 3.0,
            restarts: 0,
            status: "say \"hi\"\\ to /tmp/a\tb\nc\u{1}\u{7f} é ✓ 🚀",
            probeFailures: nil,
            health: "GET /healthz -> 503"
        )
        worker.cpuSeconds = 0.1
        worker.rssBytes = Int64.max
        worker.cpuPercent = 1e-7
        let generation = StatusReport.Generation(
            id: 2,
            state: "serving",
            startedAt: 1_795_330_762.123456,
            crashLooping: false,
            workers: [
                worker,
                StatusReport.Worker(
                    slot: 2,
                    pid: nil,
                    state: "starting",
                    uptimeSeconds: 1e21,
                    restarts: -3,
                    status: nil
                ),
            ],
            connections: 0
        )
        var report = StatusReport(
            name: "app/one",
            pid: Int32.min,
            version: "0.1.0",
            listeners: [StatusReport.Listener(name: "http", address: "127.0.0.1:8080", fd: 3, refusing: true)],
            generations: [generation],
            lastReload: StatusReport.Reload(
                ok: false,
                generation: 2,
                durationMilliseconds: 12,
                reason: "worker 1 exited",
                finishedAt: 2.5
            ),
            reloading: true
        )
        report.reloads = []
        return report
    }()

    func foundation(_ value: some Encodable) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try encoder.encode(value))
    }

    @Test func writesWhatFoundationWrites() throws {
        let reply = ControlProtocol.Reply(kind: .status, ok: true, status: Self.report, pids: [1, 2])
        let ours = try JSON.encode(reply)
        let theirs = try foundation(reply)
        #expect(String(decoding: ours, as: UTF8.self) == String(decoding: theirs, as: UTF8.self))
        let request = ControlProtocol.Request(command: .signal, canaryMilliseconds: -1, signal: 15, worker: 0)
        #expect(try JSON.encode(request) == foundation(request))
    }

    @Test func readsBackWhatEitherWrote() throws {
        let reply = ControlProtocol.Reply(kind: .status, ok: true, status: Self.report)
        #expect(try JSON.decode(ControlProtocol.Reply.self, from: JSON.encode(reply)) == reply)
        #expect(try JSON.decode(ControlProtocol.Reply.self, from: foundation(reply)) == reply)
        let decoded = try JSONDecoder().decode(ControlProtocol.Reply.self, from: Data(JSON.encode(reply)))
        #expect(decoded == reply)
    }

    @Test func readsRequestsAsClientsWriteThem() throws {
        let text =
            " {\"worker\" : 2, \"command\":\"signal\",\"signal\":1.0e1, \"extra\":[{\"x\":null}],\"generation\":null}\r\n"
        let request = try JSON.decode(ControlProtocol.Request.self, from: Array(text.utf8))
        #expect(request.command == .signal)
        #expect(request.signal == 10)
        #expect(request.worker == 2)
        #expect(request.generation == nil)
        let escaped = try JSON.decode([String].self, from: Array(#"["\u00e9\ud83d\ude80\/\b\f", ""]"#.utf8))
        #expect(escaped == ["é🚀/\u{8}\u{c}", ""])
    }

    @Test(arguments: [
        "", "{", "{\"command\":\"status\"", "{\"command\":\"status\"} x", "{\"command\":status}", "[1,]", "{,}",
        "{\"command\":\"nope\"}", "{\"signal\":15}", "{\"command\":\"signal\",\"signal\":1.5}",
        "{\"command\":\"signal\",\"signal\":4294967296}", "{\"command\":\"signal\",\"signal\":\"15\"}",
        "{\"command\":\"signal\",\"signal\":015}", "{\"command\":\"signal\",\"signal\":-}", "\"\\ud800\"",
        "\"\\x\"", "\"a\nb\"", "\"\\u12\"", String(repeating: "[", count: 100) + String(repeating: "]", count: 100),
    ])
    func refusesWhatIsNotAValidRequest(_ text: String) {
        #expect(throws: JSON.Failure.self) { try JSON.decode(ControlProtocol.Request.self, from: Array(text.utf8)) }
    }

    @Test func failuresNameThePlace() {
        let text = "{\"command\":\"reload\",\"canaryMilliseconds\":\"soon\"}"
        let failure = #expect(throws: JSON.Failure.self) {
            try JSON.decode(ControlProtocol.Request.self, from: Array(text.utf8))
        }
        #expect(failure?.description == "expected an integer at .canaryMilliseconds, found a string")
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        let tooDeep = #expect(throws: JSON.Failure.self) { try JSON.decode([String].self, from: Array(deep.utf8)) }
        #expect(tooDeep?.description == "invalid JSON at byte 64: nested deeper than 64")
        #expect(throws: JSON.Failure.self) { try JSON.encode([Double.nan]) }
        #expect(ControlProtocol.decodeReply(Array("{\"kind\":\"result\",\"ok\":true}".utf8))?.ok == true)
    }
}
