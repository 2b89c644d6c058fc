import ArgumentParser
import BatonCommandLine
import BatonCore
import Testing

/// `--metrics`, the label values the metrics use, and the HTTP answers of `GET /metrics`, without processes.
@Suite("metrics: option, labels, HTTP")
struct MetricsLabelTests {
    func failure(_ value: String) -> String? {
        do {
            _ = try RunOptions.parse(["--metrics", value, "--", "app"]).configuration(ConfigurationTests.facts)
            return nil
        } catch let error as BatonError {
            return error.message
        } catch {
            return RunOptions.message(for: error)
        }
    }

    @Test func theOptionTakesAnAddressLikeListen() throws {
        let off = try RunOptions.parse(["--", "app"]).configuration(ConfigurationTests.facts)
        #expect(off.metrics == nil, "off by default")
        for (text, address) in [
            ("127.0.0.1:9464", ListenAddress.tcp(host: "127.0.0.1", port: 9464)),
            (":9464", .tcp(host: nil, port: 9464)),
            ("[::1]:9464", .tcp(host: "::1", port: 9464)),
            ("unix:/run/baton-shop/metrics.sock", .unix(path: "/run/baton-shop/metrics.sock")),
        ] {
            let configuration = try RunOptions.parse(["--metrics", text, "--", "app"])
                .configuration(ConfigurationTests.facts)
            #expect(configuration.metrics == address)
        }
    }

    @Test func aBadValueIsOneLineNamingTheOptionAndTheFix() {
        let long = "unix:/" + String(repeating: "x", count: 120)
        let cases: [(String, String)] = [
            ("9464", "invalid --metrics '9464': expected HOST:PORT, [IPV6]:PORT, :PORT or unix:PATH"),
            (":0", "invalid --metrics ':0': the port '0' must be a number from 1 to 65535"),
            (":65536", "invalid --metrics ':65536': the port '65536' must be a number from 1 to 65535"),
            ("bad host:80", "invalid --metrics 'bad host:80': 'bad host' is not a host name or IPv4 address"),
            ("::1:80", "invalid --metrics '::1:80': an IPv6 address goes in brackets: [::1]:80"),
            ("m=:9464", "invalid --metrics 'm=:9464': give HOST:PORT or unix:PATH, without a NAME="),
            ("unix:", "invalid --metrics 'unix:': expected unix:PATH"),
        ]
        for (value, message) in cases {
            #expect(failure(value) == message)
        }
        let tooLong = failure(long)
        #expect(tooLong?.hasSuffix(": a unix socket path must be shorter than 108 bytes") == true)
        #expect(tooLong?.hasPrefix("invalid --metrics 'unix:/xxx") == true)
    }

    /// The reasons the Supervisor writes for a failed reload map to the fixed rollback labels.
    @Test func rollbackReasonsComeFromTheSupervisorsOwnWords() {
        func failedReload(
            minReady: Duration = .zero,
            _ fail: (inout Harness, Supervisor.Worker) -> Void
        ) -> LifecycleEvent? {
            var h = Harness(SupervisorSettings(workers: 1, readyTimeout: .seconds(3), minReady: minReady))
            h.send(.start)
            h.readyAll(generation: 1)
            // With a soak window the first generation soaks too before it serves.
            if minReady > .zero { h.send(.timer(.soak(generation: 1))) }
            h.send(.reloadRequested(RequesterID(1)))
            let new = h.workers(generation: 2)[0]
            let before = h.log.count
            fail(&h, new)
            return h.log[before...].compactMap {
                if case .log(let event) = $0, event.kind == .reloadFailed { event } else { nil }
            }.first
        }
        let crashed = failedReload { h, worker in h.send(.exited(worker.id, .exited(3))) }
        #expect(crashed.flatMap(MetricLabels.rollbackReason) == .workerExited)
        let signaled = failedReload { h, worker in h.send(.exited(worker.id, .signaled("SEGV"))) }
        #expect(signaled.flatMap(MetricLabels.rollbackReason) == .workerExited)
        let hung = failedReload { h, worker in h.send(.timer(.readyTimeout(worker.id))) }
        #expect(hung.flatMap(MetricLabels.rollbackReason) == .readyTimeout)
        let unstarted = failedReload { h, worker in h.send(.spawnFailed(worker.id, reason: "cannot set up the worker"))
        }
        #expect(unstarted.flatMap(MetricLabels.rollbackReason) == .spawnFailed)
        let silent = failedReload { h, worker in
            h.send(.watchdogPing(worker.id, interval: .seconds(1)))
            h.send(.timer(.watchdog(worker.id)))
            h.send(.exited(worker.id, .signaled("KILL")))
        }
        #expect(silent.flatMap(MetricLabels.rollbackReason) == .watchdog)
        let soaked = failedReload(minReady: .seconds(5)) { h, worker in
            h.send(.ready(worker.id))
            h.send(.exited(worker.id, .exited(3)))
        }
        #expect(soaked.flatMap(MetricLabels.rollbackReason) == .soakFailed)
    }

    @Test func exitReasonsAreAFixedSet() {
        let stopped = LifecycleEvent(.workerExited, "", status: "signal TERM")
        #expect(MetricLabels.exitReason(stopped) == .stopped)
        #expect(MetricLabels.exitReason(LifecycleEvent(.workerCrashed, "", status: "exit 3")) == .exited)
        #expect(MetricLabels.exitReason(LifecycleEvent(.workerCrashed, "", status: "signal KILL")) == .signaled)
        let hung = LifecycleEvent(.workerCrashed, "", status: "signal TERM", reason: "did not become ready within 3s")
        #expect(MetricLabels.exitReason(hung) == .readyTimeout)
        let silent = LifecycleEvent(
            .workerCrashed,
            "",
            status: "signal KILL",
            reason: "stopped sending WATCHDOG=1 (interval 1s)"
        )
        #expect(MetricLabels.exitReason(silent) == .watchdog)
        #expect(MetricLabels.exitReason(LifecycleEvent(.workerCrashed, "", reason: "cannot exec")) == .spawnFailed)
        #expect(MetricLabels.exitReason(LifecycleEvent(.generationReady, "")) == nil)
    }

    func head(_ text: String) -> MetricsHTTP.RequestHead {
        var head = MetricsHTTP.RequestHead()
        // By bytes (as a String, "\r\n" is one character); what follows the last newline is not a line yet.
        for line in text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).dropLast() {
            _ = head.add(Array(line))
        }
        return head
    }

    @Test func getMetricsIsServedAndEverythingElseGetsItsStatus() {
        #expect(MetricsHTTP.route(head("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")) == .metrics(head: false))
        #expect(MetricsHTTP.route(head("GET /metrics?x=1 HTTP/1.0\r\n\r\n")) == .metrics(head: false))
        #expect(MetricsHTTP.route(head("HEAD /metrics HTTP/1.1\r\n\r\n")) == .metrics(head: true))
        func status(_ text: String) -> Int? {
            if case .error(let response) = MetricsHTTP.route(head(text)) { response.status } else { nil }
        }
        #expect(status("GET / HTTP/1.1\r\n\r\n") == 404)
        #expect(status("GET /metricsx HTTP/1.1\r\n\r\n") == 404)
        #expect(status("POST /metrics HTTP/1.1\r\n\r\n") == 405)
        #expect(status("DELETE /metrics HTTP/1.1\r\n\r\n") == 405)
        #expect(status("GET /metrics\r\n\r\n") == 400, "HTTP/0.9")
        #expect(status("GET /metrics HTTP/2.0\r\n\r\n") == 400)
        #expect(status("GET  /metrics HTTP/1.1\r\n\r\n") == 400)
        #expect(status("GET /metrics HTTP/1.1\r\nno colon\r\n\r\n") == 400)
        #expect(status("GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n") == 400)
        #expect(head("GET /metrics HTTP/1.1\r\n").complete == false, "the head ends with an empty line")
        #expect(head("\r\nGET /metrics HTTP/1.1\r\n\r\n").complete, "a leading empty line is skipped")
    }

    @Test func aRequestHeadHasABoundedSize() {
        var head = MetricsHTTP.RequestHead()
        let added = head.add(Array("GET /metrics HTTP/1.1".utf8))
        #expect(added)
        let header = Array(("X-Filler: " + String(repeating: "a", count: 1000)).utf8)
        var accepted = 0
        while true {
            guard head.add(header) else { break }
            accepted += 1
        }
        #expect(accepted == 8, "8 KiB in all")
        #expect(head.size > MetricsHTTP.maximumRequestSize)
    }

    @Test func aResponseClosesTheConnectionAndHEADHasNoBody() {
        let response = MetricsHTTP.Response.metrics(Array("a 1\n".utf8), headOnly: false)
        #expect(
            String(decoding: response.encoded(), as: UTF8.self)
                == "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: 4\r\nConnection: close\r\n\r\na 1\n"
        )
        let head = MetricsHTTP.Response.metrics(Array("a 1\n".utf8), headOnly: true)
        #expect(
            String(decoding: head.encoded(), as: UTF8.self).hasSuffix("Content-Length: 4\r\nConnection: close\r\n\r\n")
        )
        let notAllowed = MetricsHTTP.Response.error(405, "Method Not Allowed", "no", headers: [("Allow", "GET, HEAD")])
        #expect(String(decoding: notAllowed.encoded(), as: UTF8.self).contains("\r\nAllow: GET, HEAD\r\n"))
    }
}
