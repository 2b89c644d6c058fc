import BatonCore
import Testing

/// `baton signal`'s choice of workers, `baton ls`'s table, the figures in `baton status`, and the request line.
@Suite("operator commands, without processes")
struct OperatorCommandTests {
    @Test func aSignalGoesToTheRunningWorkersOfTheServingGenerationOrOfTheOneAskedFor() throws {
        var h = Harness(SupervisorSettings(workers: 3))
        h.send(.start)
        h.readyAll(generation: 1)
        let first = h.workers(generation: 1)
        let chosen = try SignalTargets.choose(in: h.supervisor, generation: nil, worker: nil)
        #expect(chosen.generation == 1)
        #expect(chosen.targets.map(\.pid) == first.compactMap(\.pid))
        #expect(chosen.targets.map(\.slot) == [1, 2, 3])
        let one = try SignalTargets.choose(in: h.supervisor, generation: nil, worker: 2)
        #expect(one.targets == [SignalTargets.Target(slot: 2, pid: try #require(first[1].pid))])

        // During a reload: the serving generation by default, the new one when asked for.
        h.send(.reloadRequested(RequesterID(1)))
        #expect(try SignalTargets.choose(in: h.supervisor, generation: nil, worker: nil).generation == 1)
        let next = try SignalTargets.choose(in: h.supervisor, generation: 2, worker: nil)
        #expect(next.targets.map(\.pid) == h.workers(generation: 2).compactMap(\.pid))
        #expect(Set(next.targets.map(\.pid)).isDisjoint(with: first.compactMap(\.pid)))
    }

    @Test func aGenerationOrWorkerThatDoesNotExistIsAOneLineErrorNamingTheFix() throws {
        var h = Harness(SupervisorSettings(workers: 2))
        #expect(throws: BatonError.self) { try SignalTargets.choose(in: h.supervisor, generation: nil, worker: nil) }
        h.send(.start)
        let starting = try message { try SignalTargets.choose(in: h.supervisor, generation: nil, worker: nil) }
        #expect(
            starting
                == "no generation serves yet (generations: 1 (starting)): give --generation N, or wait until one does"
        )
        h.readyAll(generation: 1)
        let missing = try message { try SignalTargets.choose(in: h.supervisor, generation: 7, worker: nil) }
        #expect(missing == "no generation 7 (generations: 1 (serving)): give one of them, or see baton status")
        for slot in [0, 3, -1] {
            let noSlot = try message { try SignalTargets.choose(in: h.supervisor, generation: nil, worker: slot) }
            #expect(noSlot == "no worker \(slot) in generation 1: its workers are 1 to 2")
        }
        // A slot whose worker crashed and waits for its respawn has no process to signal.
        let crashed = h.workers(generation: 1)[1]
        h.send(.exited(crashed.id, .exited(1)))
        let restarting = try message { try SignalTargets.choose(in: h.supervisor, generation: nil, worker: 2) }
        #expect(restarting.hasPrefix("worker 2 of generation 1 has no running process"))
        #expect(try SignalTargets.choose(in: h.supervisor, generation: nil, worker: nil).targets.map(\.slot) == [1])
    }

    func message(_ body: () throws -> Any) throws -> String {
        do {
            _ = try body()
        } catch let error as BatonError {
            #expect(!error.message.contains("\n"))
            return error.message
        }
        Issue.record("no error")
        return ""
    }

    @Test func aRequestLineIsKeptUpToTheLimitAndAnOversizedOneIsCountedToItsNewline() {
        var small = RequestLine(limit: 8)
        small.feed(Array("{\"a\"".utf8))
        #expect(small.outcome == nil)
        small.feed(Array(":1}\nrest ignored".utf8))
        #expect(small.outcome == .line(Array("{\"a\":1}".utf8)))
        small.feed(Array("more\n".utf8))
        #expect(small.outcome == .line(Array("{\"a\":1}".utf8)))

        var exact = RequestLine(limit: 8)
        exact.feed(Array("12345678\n".utf8))
        #expect(exact.outcome == .line(Array("12345678".utf8)))

        var large = RequestLine(limit: 8)
        for _ in 0..<1000 { large.feed([UInt8](repeating: 65, count: 100)) }
        #expect(large.outcome == nil && large.isOversized && large.length == 100_000)
        large.feed(Array("AB\n{}".utf8))
        #expect(large.outcome == .oversized(100_002))

        var unfinished = RequestLine(limit: 8)
        #expect(unfinished.unfinished == nil)
        unfinished.feed([UInt8](repeating: 66, count: 9))
        #expect(unfinished.unfinished == .oversized(9))
        #expect(
            ControlProtocol.tooLarge(9).message
                == "request of 9 bytes is too large (a request is one line of at most 4096 bytes)"
        )
        // The protocol's own check says the same of a line that reaches it.
        #expect(throws: BatonError.self) { try ControlProtocol.decodeRequest([UInt8](repeating: 65, count: 5000)) }
    }

    @Test func aSignalRequestRoundTripsAndAnOldRequestStillDecodes() throws {
        let request = ControlProtocol.Request(command: .signal, signal: 1, generation: 3, worker: 2)
        let line = ControlProtocol.encode(request).dropLast()
        #expect(try ControlProtocol.decodeRequest(Array(line)) == request)
        #expect(try ControlProtocol.decodeRequest(Array("{\"command\":\"status\"}".utf8)).signal == nil)
    }

    func report(name: String, workers: [(String, Int32?)], lastReload: StatusReport.Reload? = nil) -> StatusReport {
        StatusReport(
            name: name,
            pid: 4711,
            version: "1.2.3",
            listeners: [
                .init(name: "web", address: "127.0.0.1:8000", fd: 3), .init(name: "b", address: "unix:/s", fd: 4),
            ],
            generations: [
                .init(id: 6, state: "draining", startedAt: 0, crashLooping: false, workers: []),
                .init(
                    id: 7,
                    state: "serving",
                    startedAt: 0,
                    crashLooping: false,
                    workers: workers.enumerated().map {
                        .init(slot: $0 + 1, pid: $1.1, state: $1.0, uptimeSeconds: 1, restarts: 0, status: nil)
                    }
                ),
            ],
            lastReload: lastReload,
            reloading: false
        )
    }

    @Test func theListShowsEachInstanceInAlignedColumnsAndWhyOneSaysNothing() {
        let shop = report(
            name: "shop",
            workers: [("ready", 10), ("ready", 11), ("starting", 12)],
            lastReload: .init(ok: true, generation: 7, durationMilliseconds: 900, reason: nil, finishedAt: 1000 - 125)
        )
        let text = InstanceList.text(
            [
                InstanceListing(name: "shop", control: "/run/baton/shop.sock", state: .running, status: shop),
                InstanceListing(name: "old", control: "/run/baton/old.sock", state: .stale),
                InstanceListing(name: "hung", control: "/run/baton/hung.sock", state: .notAnswering),
            ],
            now: 1000
        )
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.count == 4)
        #expect(lines[0].hasPrefix("NAME  PID   VERSION  SERVING  WORKERS  LISTENERS"))
        #expect(lines[1] == "shop  4711  1.2.3    7        2/3      127.0.0.1:8000,unix:/s  ok (generation 7) 2m5s ago")
        #expect(lines[2].hasPrefix("old   -     -        -        -        -  "))
        #expect(lines[2].hasSuffix("not running: stale control socket /run/baton/old.sock (remove it)"))
        #expect(lines[3].hasSuffix("not answering at /run/baton/hung.sock (paused or hung?)"))
        #expect(InstanceListing.name(forControl: "/run/baton-api/api.sock") == "api")
    }

    @Test func workersCPUAndMemoryAreAddedByPidAndShown() {
        let plain = report(name: "shop", workers: [("ready", 10), ("ready", 11)])
        let figures = plain.adding([10: WorkerUsage(cpuSeconds: 1.5, rssBytes: 25 << 20)])
        let workers = figures.generations[1].workers
        #expect(workers[0].cpuSeconds == 1.5 && workers[0].rssBytes == 25 << 20)
        #expect(workers[1].cpuSeconds == nil && workers[1].rssBytes == nil)
        let text = StatusFormatter.text(figures, now: 0)
        #expect(text.contains("worker 1  pid 10  ready  up 1s  restarts 0  cpu 1.50s  rss 25.0MiB\n"))
        #expect(text.contains("worker 2  pid 11  ready  up 1s  restarts 0\n"))
        #expect(WorkerUsage.cpuText(0.04) == "0.04s")
        #expect(WorkerUsage.cpuText(125) == Duration.seconds(125).shortDescription)
        #expect(WorkerUsage.bytesText(812 * 1024) == "812.0KiB")
        #expect(WorkerUsage.bytesText(1536 << 20) == "1.5GiB")
        #expect(WorkerUsage.bytesText(100) == "100B")
        #expect(WorkerUsage.percentText(12.345) == "12.3%")
        let busy = plain.adding([11: WorkerUsage(cpuSeconds: 2, rssBytes: 1 << 20, cpuPercent: 50)])
        #expect(
            StatusFormatter.text(busy, now: 0).contains(
                "worker 2  pid 11  ready  up 1s  restarts 0  cpu 2.00s (50.0%)  rss 1.0MiB\n"
            )
        )
    }

    @Test func aCPUPercentageIsOverTheIntervalSinceThePreviousReport() {
        var samples = CPUSamples()
        let start = ContinuousClock.now
        let first = samples.record(
            [10: WorkerUsage(cpuSeconds: 1, rssBytes: 1), 11: WorkerUsage(cpuSeconds: 5, rssBytes: 1)],
            now: start
        )
        #expect(first[10]?.cpuPercent == nil && first[11]?.cpuPercent == nil, "nothing to compare with yet")
        // Two seconds later: 10 used half a second (25%), 11 nothing; 12 is new.
        let second = samples.record(
            [
                10: WorkerUsage(cpuSeconds: 1.5, rssBytes: 1), 11: WorkerUsage(cpuSeconds: 5, rssBytes: 1),
                12: WorkerUsage(cpuSeconds: 0.1, rssBytes: 1),
            ],
            now: start + .seconds(2)
        )
        #expect(second[10]?.cpuPercent == 25)
        #expect(second[11]?.cpuPercent == 0)
        #expect(second[12]?.cpuPercent == nil)
        // Too soon after: no percentage, and the previous reading stays the base.
        let soon = samples.record([10: WorkerUsage(cpuSeconds: 1.6, rssBytes: 1)], now: start + .milliseconds(2050))
        #expect(soon[10]?.cpuPercent == nil)
        let later = samples.record([10: WorkerUsage(cpuSeconds: 3.5, rssBytes: 1)], now: start + .seconds(3))
        #expect(later[10]?.cpuPercent == 200, "two cores' worth, over the second since the reading at 2 s")
        // A worker gone and back under the same pid (reused) would start over: 11 was dropped from the samples.
        let back = samples.record([11: WorkerUsage(cpuSeconds: 0.2, rssBytes: 1)], now: start + .seconds(4))
        #expect(back[11]?.cpuPercent == nil)
    }
}
