import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `baton run --metrics`: real scrapes of a real launcher, parsed by the Prometheus client library's own parser
/// (`prometheus_client.parser`), checked against what the test made happen.
@Suite("metrics, scraped from a real baton", .serialized, .timeLimit(.minutes(3)))
struct MetricsTests {
    /// One sample as `prometheus_client` parsed it.
    struct Sample: Decodable {
        var family: String
        var type: String
        /// The family's `# HELP` text.
        var help: String
        var name: String
        var labels: [String: String]
        var value: Double
    }

    struct Page {
        var samples: [Sample]

        func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
            samples.first { $0.name == name && $0.labels == labels }?.value
        }

        func type(ofFamily family: String) -> String? { samples.first { $0.family == family }?.type }

        func series(_ name: String) -> [Sample] { samples.filter { $0.name == name } }

        var names: Set<String> { Set(samples.map(\.name)) }
    }

    /// Parses a metrics page with `prometheus_client.parser.text_string_to_metric_families`: a page it cannot parse
    /// fails the test.
    static func parse(_ body: String, in scratch: Scratch) throws -> Page {
        scratch.write("page.txt", body)
        let script = """
            import json, sys
            from prometheus_client.parser import text_string_to_metric_families
            samples = []
            for family in text_string_to_metric_families(open(sys.argv[1]).read()):
                for s in family.samples:
                    samples.append({"family": family.name, "type": family.type, "help": family.documentation, "name": s.name,
                                    "labels": s.labels, "value": s.value})
            print(json.dumps(samples))
            """
        let result = run(try #require(Paths.python3), ["-c", script, scratch.file("page.txt")])
        try #require(result.status == 0, "prometheus_client parses the page:\n\(result.stderr)\n\(body)")
        return Page(samples: try JSONDecoder().decode([Sample].self, from: Data(result.stdout.utf8)))
    }

    /// A TCP connection to 127.0.0.1:`port`, with a receive timeout so that a test fails rather than hangs.
    static func connect(_ port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else {
            close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        var timeout = timeval(tv_sec: 15, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    static func send(_ fd: Int32, _ text: String) {
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Everything the peer sends until it closes (or the receive timeout).
    static func readAll(_ fd: Int32) -> String {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            data += buffer[0..<n]
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// One raw request and the whole raw response.
    static func exchange(_ port: Int, _ request: String) throws -> String {
        let fd = try connect(port)
        defer { close(fd) }
        send(fd, request)
        return readAll(fd)
    }

    static func scrape(_ port: Int, in scratch: Scratch) throws -> Page {
        let response = try HTTP.get(host: "127.0.0.1", port: port, "/metrics")
        try #require(response.status == 200)
        return try parse(response.body, in: scratch)
    }

    @Test func reloadsWorkersAndTheProcessAreCountedAsTheyHappened() throws {
        let port = try #require(AdoptBindTests.freePort(), "a free port")
        let started = Date().timeIntervalSince1970
        let (scratch, _, baton) = try launchWorker(
            ["--workers", "2", "--ready", "fd", "--ready-timeout", "3s", "--metrics", "127.0.0.1:\(port)"],
            behaviour: "ok",
            environment: ["READY_MODE": "fd"]
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        let first = try Self.scrape(port, in: scratch)
        #expect(first.value("baton_serving_generation") == 1)
        #expect(first.value("baton_workers", ["generation": "1", "state": "ready"]) == 2)
        #expect(first.value("baton_reloads_total", ["result": "ok"]) == 0, "every result is there from the start")
        #expect(first.value("baton_reloads_total", ["result": "failed"]) == 0)
        #expect(first.value("baton_last_reload_success") == nil, "no reload yet")
        #expect(first.value("baton_worker_starts_total") == 2)

        // One reload that works, one whose release crashes at start.
        #expect(baton.client(["reload"]).status == 0)
        scratch.write("behaviour", "crash")
        #expect(baton.client(["reload"]).status == 1)
        let page = try Self.scrape(port, in: scratch)
        let now = Date().timeIntervalSince1970

        #expect(page.type(ofFamily: "baton_reloads") == "counter")
        let undocumented = Set(page.samples.filter { $0.help.isEmpty }.map(\.family))
        #expect(undocumented.isEmpty, "every family has a # HELP line: \(undocumented.sorted())")
        #expect(page.value("baton_reloads_total", ["result": "ok"]) == 1)
        #expect(page.value("baton_reloads_total", ["result": "failed"]) == 1)
        #expect(page.type(ofFamily: "baton_reload_duration_seconds") == "histogram")
        #expect(page.value("baton_reload_duration_seconds_count") == 2)
        #expect((page.value("baton_reload_duration_seconds_sum") ?? 0) > 0)
        #expect(page.value("baton_reload_duration_seconds_bucket", ["le": "+Inf"]) == 2)
        #expect(page.value("baton_rollbacks_total", ["reason": "worker_exited"]) == 1)
        let otherRollbacks = page.series("baton_rollbacks_total").filter { $0.labels["reason"] != "worker_exited" }
        #expect(otherRollbacks.count == 4 && otherRollbacks.allSatisfy { $0.value == 0 })

        // Generation 2 serves; 1 is retired and gone from the page; 3 failed.
        #expect(page.value("baton_serving_generation") == 2)
        #expect(page.value("baton_workers", ["generation": "2", "state": "ready"]) == 2)
        #expect(page.value("baton_workers", ["generation": "2", "state": "starting"]) == 0)
        #expect(page.series("baton_workers").allSatisfy { $0.labels["generation"] != "1" })
        #expect(page.value("baton_generations", ["state": "serving"]) == 1)
        #expect(page.value("baton_generations", ["state": "draining"]) == 0)
        #expect(page.value("baton_last_reload_success") == 0)
        let timestamp = try #require(page.value("baton_last_reload_timestamp_seconds"))
        #expect(timestamp >= started - 1 && timestamp <= now + 1)

        // Workers: 2 per generation started; generation 1's two stopped; at least one of 3's exited by itself.
        #expect(page.value("baton_worker_starts_total") == 6)
        #expect((page.value("baton_worker_exits_total", ["reason": "stopped"]) ?? 0) >= 2)
        #expect((page.value("baton_worker_exits_total", ["reason": "exited"]) ?? 0) >= 1)
        #expect(page.series("baton_worker_exits_total").reduce(0) { $0 + $1.value } <= 4)
        #expect(page.series("baton_worker_restarts_total").allSatisfy { $0.value == 0 })
        #expect(page.series("baton_build_info").first?.value == 1)

        // baton's own process, from /proc at scrape time.
        let rss = try #require(page.value("process_resident_memory_bytes"))
        #expect(rss > 1_048_576 && rss < 1_073_741_824)
        #expect((page.value("process_virtual_memory_bytes") ?? 0) >= rss)
        let fds = try #require(page.value("process_open_fds"))
        let maxFDs = try #require(page.value("process_max_fds"))
        #expect(fds >= 3 && fds < maxFDs)
        let startTime = try #require(page.value("process_start_time_seconds"))
        #expect(startTime >= started - 2 && startTime <= now + 1)
        let cpu = try #require(page.value("process_cpu_seconds_total"))
        #expect(cpu >= 0 && cpu <= 2 * (now - started) + 1)
        #expect(page.type(ofFamily: "process_cpu_seconds") == "counter")
        #expect(baton.stop() == 0)
    }

    @Test func aUnixPathIsServedAndRemovedAtExitAndTheExamplesUseOnlyWhatBatonExports() throws {
        let scratch = Scratch()
        let metrics = scratch.file("metrics.sock")
        let baton = try BatonRun(
            [
                "--listen", "unix:\(scratch.file("s.sock"))", "--metrics", "unix:\(metrics)", "--", "python3",
                Paths.worker,
            ],
            scratch: scratch
        )
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        #expect(baton.client(["reload"]).status == 0)
        let response = try HTTP.get(unix: metrics, "/metrics")
        #expect(response.status == 200)
        let page = try Self.parse(response.body, in: scratch)
        #expect(page.value("baton_serving_generation") == 2)
        #expect(page.value("baton_workers", ["generation": "2", "state": "ready"]) == 1)
        #expect(page.value("baton_last_reload_success") == 1)
        #expect(try HTTP.get(unix: metrics, "/").status == 404)

        // A worker killed by a signal is an exit and, once respawned, a restart, both under `signaled`.
        let body = try HTTP.get(unix: scratch.file("s.sock")).body
        let pid = try #require(Int32(body.split(separator: " ").last!.trimmingCharacters(in: .whitespacesAndNewlines)))
        kill(pid, SIGKILL)
        #expect(baton.stderr.waitFor("is back") != nil)
        let after = try Self.parse(try HTTP.get(unix: metrics, "/metrics").body, in: scratch)
        #expect(after.value("baton_worker_exits_total", ["reason": "signaled"]) == 1)
        #expect(after.value("baton_worker_restarts_total", ["reason": "signaled"]) == 1)
        #expect(after.value("baton_worker_starts_total") == 3)
        #expect(after.value("baton_workers", ["generation": "2", "state": "ready"]) == 1)

        // Every metric the example dashboard and alert rules name is on the page (connection counts appear once
        // something counts connections: see README, Metrics).
        let names = try Self.exampleMetricNames(in: scratch)
        #expect(names.contains("baton_reloads_total") && names.contains("baton_worker_restarts_total"))
        let exported = page.names.union(["baton_generation_connections"])
        #expect(names.subtracting(exported).isEmpty, "not exported: \(names.subtracting(exported).sorted())")

        #expect(baton.stop() == 0)
        #expect(!FileManager.default.fileExists(atPath: metrics), "the metrics socket is removed at exit")
    }

    /// The metric names the expressions of examples/grafana/baton-dashboard.json and
    /// examples/prometheus/baton-alerts.yml use; both files must parse (JSON, YAML), and the rules file must have the
    /// alerts it promises.
    static func exampleMetricNames(in scratch: Scratch) throws -> Set<String> {
        let dashboard = Paths.packageRoot.appendingPathComponent("examples/grafana/baton-dashboard.json").path
        let alerts = Paths.packageRoot.appendingPathComponent("examples/prometheus/baton-alerts.yml").path
        let json = try JSONSerialization.jsonObject(with: try #require(FileManager.default.contents(atPath: dashboard)))
        let panels = try #require((json as? [String: Any])?["panels"] as? [[String: Any]])
        #expect(panels.count >= 6)
        let script = """
            import json, re, sys, yaml
            exprs = []
            def walk(node):
                if isinstance(node, dict):
                    for key, value in node.items():
                        if key == "expr" and isinstance(value, str):
                            exprs.append(value)
                        else:
                            walk(value)
                elif isinstance(node, list):
                    for value in node:
                        walk(value)
            walk(json.load(open(sys.argv[1])))
            rules = yaml.safe_load(open(sys.argv[2]))
            alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
            walk(rules)
            names = sorted({name for expr in exprs for name in re.findall(r"\\b(?:baton|process)_[a-z_]+", expr)})
            print(json.dumps({"alerts": alerts, "names": names}))
            """
        let result = run(try #require(Paths.python3), ["-c", script, dashboard, alerts])
        try #require(result.status == 0, "the examples parse:\n\(result.stderr)")
        struct Found: Decodable {
            var alerts: [String]
            var names: [String]
        }
        let found = try JSONDecoder().decode(Found.self, from: Data(result.stdout.utf8))
        #expect(Set(["BatonReloadFailed", "BatonCrashLooping", "BatonNoServingGeneration"]).isSubset(of: found.alerts))
        return Set(found.names)
    }

    @Test func otherRequestsGetTheirStatusAndASlowClientDoesNotStallBaton() throws {
        let port = try #require(AdoptBindTests.freePort(), "a free port")
        let (scratch, _, baton) = try launchWorker(["--metrics", "127.0.0.1:\(port)"])
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)

        #expect(
            try Self.exchange(port, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").hasPrefix("HTTP/1.1 404 Not Found\r\n")
        )
        let post = try Self.exchange(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        #expect(post.hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n") && post.contains("\r\nAllow: GET, HEAD\r\n"))
        #expect(try Self.exchange(port, "GARBAGE\r\n\r\n").hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        let head = try Self.exchange(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(head.hasPrefix("HTTP/1.1 200 OK\r\n") && head.hasSuffix("\r\n\r\n"), "headers only")
        // Asked for OpenMetrics, baton answers in the text format, which is all swift-prometheus renders.
        let open = try Self.exchange(
            port,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"
        )
        #expect(open.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(open.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"))
        // A request head over 8 KiB.
        let big = try Self.connect(port)
        defer { close(big) }
        Self.send(big, "GET /metrics HTTP/1.1\r\nX-Filler: " + String(repeating: "a", count: 9000))
        #expect(Self.readAll(big).hasPrefix("HTTP/1.1 431 Request Header Fields Too Large\r\n"))

        // A client holds half a request: a reload and other scrapes go on meanwhile.
        let slow = try Self.connect(port)
        defer { close(slow) }
        Self.send(slow, "GET /metr")
        #expect(baton.client(["reload"]).status == 0)
        #expect(try Self.scrape(port, in: scratch).value("baton_serving_generation") == 2)
        #expect(baton.client(["status"]).status == 0)
        // Past the request deadline (5 s) it is told so and closed.
        #expect(Self.readAll(slow).hasPrefix("HTTP/1.1 408 Request Timeout\r\n"))

        // At the cap (16 clients), the oldest that sent nothing whole makes room for a scrape.
        var idle: [Int32] = []
        defer { for fd in idle { close(fd) } }
        for _ in 0..<16 {
            let fd = try Self.connect(port)
            Self.send(fd, "G")
            idle.append(fd)
        }
        #expect(try Self.scrape(port, in: scratch).value("baton_reloads_total", ["result": "ok"]) == 1)
        #expect(Self.readAll(idle[0]) == "", "the oldest idle client was closed")
        #expect(baton.stop() == 0)
    }

    @Test func afterAReexecutionInPlaceTheSameProcessServesMetricsAgain() throws {
        let port = try #require(AdoptBindTests.freePort(), "a free port")
        let (scratch, _, baton) = try launchWorker(["--metrics", "127.0.0.1:\(port)"])
        #expect(baton.stderr.waitFor("generation 1 ready") != nil)
        #expect(baton.client(["reload"]).status == 0)
        let before = try Self.scrape(port, in: scratch)
        #expect(before.value("baton_reloads_total", ["result": "ok"]) == 1)
        baton.signal(SIGUSR2)
        #expect(baton.stderr.waitFor("re-executed") != nil)
        let after = try Self.scrape(port, in: scratch)
        #expect(after.value("baton_serving_generation") == 2)
        #expect(after.value("baton_last_reload_success") == 1, "the last reload is carried across")
        #expect(after.value("baton_reloads_total", ["result": "ok"]) == 0, "counters start again")
        #expect(after.value("process_start_time_seconds") == before.value("process_start_time_seconds"))
        #expect(baton.stop() == 0)
    }

    @Test func aMetricsAddressInUseIsAOneLineErrorAtStart() throws {
        let port = try #require(AdoptBindTests.freePort(), "a free port")
        // Something else listens there.
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(holder) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(holder, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 && listen(holder, 1) == 0
            }
        }
        try #require(bound)
        let (_, _, baton) = try launchWorker(["--metrics", "127.0.0.1:\(port)"])
        let status = baton.wait(timeout: 30)
        #expect(status != nil && status != 0)
        let line =
            "baton: --metrics address 127.0.0.1:\(port) is already in use: stop whatever listens there or choose another --metrics address"
        // The process has ended; its last line may still be on its way through the pipe.
        _ = baton.stderr.waitClosed(timeout: 10)
        #expect(baton.stderr.all.contains(line), "\(baton.stderr.text)")
    }
}
