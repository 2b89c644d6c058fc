import BatonCore
import Testing

@Suite("status report and orphan rule")
struct StatusReportTests {
    @Test func theReportShowsTheServingGenerationItsWorkersAndTheLastReload() {
        var h = Harness(SupervisorSettings(workers: 2))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.status(h.workers(generation: 1)[0].id, "warm"))
        h.advance(.seconds(2))
        h.send(.reloadRequested(RequesterID(1)))
        h.readyAll(generation: 2)
        h.exitStopped(generation: 1)
        h.advance(.milliseconds(1500))
        let report = StatusReport(
            name: "shop",
            pid: 42,
            version: "9.9",
            listeners: [.init(name: "web", address: ":8080", fd: 3)],
            supervisor: h.supervisor,
            now: h.now,
            wallClock: 1_000_000
        )
        #expect(report.generations.map(\.id) == [2])
        #expect(report.generations[0].state == "serving")
        #expect(report.generations[0].workers.map(\.state) == ["ready", "ready"])
        #expect(report.generations[0].workers.allSatisfy { $0.uptimeSeconds == 1.5 })
        #expect(report.generations[0].startedAt == 1_000_000 - 1.5)
        #expect(report.lastReload?.ok == true && report.lastReload?.generation == 2)
        #expect(report.lastReload?.finishedAt == 1_000_000 - 1.5)
        #expect(!report.reloading)
        #expect(StatusFormatter.text(report, now: 1_000_000).contains("generation 2  serving"))
        #expect(StatusFormatter.text(report, now: 1_000_000).hasPrefix("baton shop (pid 42, version 9.9)\n"))
        var unnamed = report
        unnamed.name = LaunchConfiguration.defaultName
        #expect(StatusFormatter.text(unnamed, now: 1_000_000).hasPrefix("baton (pid 42, version 9.9)\n"))
    }

    @Test func aReportDuringAReloadSaysSo() {
        var h = Harness(SupervisorSettings(workers: 1))
        h.send(.start)
        h.readyAll(generation: 1)
        h.send(.reloadRequested(nil))
        let report = StatusReport(
            name: "shop",
            pid: 42,
            version: "9.9",
            listeners: [],
            supervisor: h.supervisor,
            now: h.now,
            wallClock: 0
        )
        #expect(report.reloading)
        #expect(report.generations.map(\.state) == ["serving", "starting"])
    }

    @Test func aProcessWithoutIdentityBelongsToTheNewestGenerationThatHadStartedBeforeIt() {
        let starts = [3: UInt64(100), 4: 250, 5: 400]
        #expect(likelyGeneration(startedAt: 260, generationStarts: starts) == 4)
        #expect(likelyGeneration(startedAt: 250, generationStarts: starts) == 4)
        #expect(likelyGeneration(startedAt: 1_000, generationStarts: starts) == 5)
        #expect(likelyGeneration(startedAt: 99, generationStarts: starts) == nil, "older than every generation known")
        #expect(likelyGeneration(startedAt: 5, generationStarts: [:]) == nil)
    }
}
