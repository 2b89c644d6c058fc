import BatonCore
import BatonSystem
import CoreMetrics
import Logging
import Prometheus
import SystemPackage

/// baton's metrics: recorded through swift-metrics' API from the lifecycle events and actions the launcher already
/// performs, and rendered in the Prometheus text format by swift-prometheus.
///
/// Counters and the reload histogram are updated as events happen (an atomic add each); everything that describes
/// the present (the serving generation, workers by generation and state, the last reload, `process_*`) is read when
/// a scrape asks, so nothing is computed while nobody scrapes. Label values come from small fixed sets
/// (``MetricLabels``) or are generation numbers of generations that are alive now: a series whose generation is gone
/// is removed from the page.
struct BatonMetrics {
    let registry = PrometheusCollectorRegistry()
    private let make: Maker

    private let reloads: [MetricLabels.ReloadResult: CoreMetrics.Counter]
    private let reloadDuration: CoreMetrics.Timer
    private let rollbacks: [MetricLabels.RollbackReason: CoreMetrics.Counter]
    private let workerStarts: CoreMetrics.Counter
    private let workerExits: [MetricLabels.ExitReason: CoreMetrics.Counter]
    private let workerRestarts: [MetricLabels.ExitReason: CoreMetrics.Counter]
    private let crashLoops: CoreMetrics.Counter

    private let servingGeneration: CoreMetrics.Meter
    private let generationCounts: [Supervisor.GenerationState: CoreMetrics.Meter]
    private let crashLooping: CoreMetrics.Meter
    /// Made at the first scrape after a reload: before any, there is no last reload to report.
    private var lastReload: (timestamp: CoreMetrics.Meter, success: CoreMetrics.Meter)?
    private var workerSeries: [SeriesKey: CoreMetrics.Meter] = [:]
    private var connectionSeries: [Int: CoreMetrics.Meter] = [:]
    /// The connection rescue: outcomes so far (as counted by the rescue), and relays now.
    private var rescued: [String: CoreMetrics.Counter] = [:]
    private var rescuedReported = RescueCounts()
    private var relays: CoreMetrics.Meter?

    private let cpuSeconds: CoreMetrics.FloatingPointCounter
    private var cpuSecondsReported = 0.0
    private let residentMemory: CoreMetrics.Meter
    private let virtualMemory: CoreMetrics.Meter
    private let startTime: CoreMetrics.Meter
    private let openFileDescriptors: CoreMetrics.Meter
    private let maximumFileDescriptors: CoreMetrics.Meter

    /// Why the last worker of each generation and slot ended: a restart of that slot counts under it.
    private var lastExit: [SlotKey: MetricLabels.ExitReason] = [:]
    /// Workers that did not stop within the stop timeout and were killed: their exit counts as `killed`, apart from
    /// clean stops.
    private var killed: Set<Int32> = []

    private struct SeriesKey: Hashable {
        var generation: Int
        var state: Supervisor.WorkerState
    }

    private struct SlotKey: Hashable {
        var generation: Int
        var slot: Int
    }

    /// The bucket bounds of `baton_reload_duration_seconds`: a reload takes from well under a second (an app that
    /// starts fast, no soak window) to minutes (a slow start, a long `--min-ready`, a long drain).
    static let reloadBuckets: [Duration] = [
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5),
        .seconds(10), .seconds(30), .seconds(60), .seconds(120), .seconds(300),
    ]

    init() {
        let make = Maker(registry: registry, factory: PrometheusMetricsFactory(registry: registry))
        self.make = make
        func counter(_ name: String, _ labels: [(String, String)] = []) -> CoreMetrics.Counter {
            make.counter(name, labels)
        }
        func gauge(_ name: String, _ labels: [(String, String)] = []) -> CoreMetrics.Meter { make.gauge(name, labels) }
        // Every series of a fixed label set exists from the start, at 0, so that rate() and alerts see the first one.
        reloads = Dictionary(
            uniqueKeysWithValues: MetricLabels.ReloadResult.allCases.map {
                ($0, counter("baton_reloads_total", [("result", $0.rawValue)]))
            }
        )
        reloadDuration = make.timer("baton_reload_duration_seconds", buckets: Self.reloadBuckets)
        rollbacks = Dictionary(
            uniqueKeysWithValues: MetricLabels.RollbackReason.allCases.map {
                ($0, counter("baton_rollbacks_total", [("reason", $0.rawValue)]))
            }
        )
        workerStarts = counter("baton_worker_starts_total")
        workerExits = Dictionary(
            uniqueKeysWithValues: MetricLabels.ExitReason.allCases.map {
                ($0, counter("baton_worker_exits_total", [("reason", $0.rawValue)]))
            }
        )
        workerRestarts = Dictionary(
            uniqueKeysWithValues: MetricLabels.ExitReason.allCases.filter { $0 != .stopped && $0 != .killed }.map {
                ($0, counter("baton_worker_restarts_total", [("reason", $0.rawValue)]))
            }
        )
        crashLoops = counter("baton_crash_loops_total")

        servingGeneration = gauge("baton_serving_generation")
        generationCounts = Dictionary(
            uniqueKeysWithValues: MetricLabels.generationStates.map {
                ($0, gauge("baton_generations", [("state", $0.rawValue)]))
            }
        )
        crashLooping = gauge("baton_crash_looping")
        make.gauge("baton_build_info", [("version", BatonVersion.current)]).set(1)

        cpuSeconds = make.floatingPointCounter("process_cpu_seconds_total")
        residentMemory = gauge("process_resident_memory_bytes")
        virtualMemory = gauge("process_virtual_memory_bytes")
        startTime = gauge("process_start_time_seconds")
        openFileDescriptors = gauge("process_open_fds")
        maximumFileDescriptors = gauge("process_max_fds")
    }

    // MARK: - Recording, as things happen

    /// Counts what a lifecycle event reports: reloads and their duration, rollbacks, worker exits, crash loops.
    mutating func record(_ event: LifecycleEvent) {
        switch event.kind {
        case .reloadSucceeded:
            reloads[.ok]?.increment()
            if let duration = event.duration { reloadDuration.recordNanoseconds(duration.nanoseconds) }
        case .reloadFailed:
            reloads[.failed]?.increment()
            if let duration = event.duration { reloadDuration.recordNanoseconds(duration.nanoseconds) }
            if let reason = MetricLabels.rollbackReason(event) { rollbacks[reason]?.increment() }
        case .workerKilled:
            if let pid = event.workerPID { killed.insert(pid) }
        case .workerExited, .workerCrashed:
            guard var reason = MetricLabels.exitReason(event) else { return }
            if let pid = event.workerPID, killed.remove(pid) != nil { reason = .killed }
            workerExits[reason]?.increment()
            if let generation = event.generation, let slot = event.slot {
                lastExit[SlotKey(generation: generation, slot: slot)] = reason
            }
        case .crashLoop:
            crashLoops.increment()
        case .generationRetired, .generationFailed:
            if let generation = event.generation { lastExit = lastExit.filter { $0.key.generation != generation } }
        default:
            break
        }
    }

    /// Counts a worker start; one that replaces a crashed worker of its slot (`restarts` > 0) is also a restart,
    /// counted under the reason that worker ended.
    mutating func workerStarted(generation: Int, slot: Int, restarts: Int) {
        workerStarts.increment()
        guard restarts > 0 else { return }
        let reason = lastExit[SlotKey(generation: generation, slot: slot)] ?? .exited
        workerRestarts[reason]?.increment()
    }

    /// The hook for connection counting: the open connections of each generation (draining ones included), as
    /// counted now. Generations missing from `counts` lose their series. Until something counts connections, nothing
    /// calls this and `baton_generation_connections` is absent.
    mutating func connections(_ counts: [Int: Int]) {
        for (generation, gauge) in connectionSeries where counts[generation] == nil {
            gauge.destroy()
            connectionSeries[generation] = nil
        }
        for (generation, count) in counts {
            let gauge =
                connectionSeries[generation]
                ?? make.gauge("baton_generation_connections", [("generation", String(generation))])
            connectionSeries[generation] = gauge
            gauge.set(count)
        }
    }

    /// The connection rescue's totals since baton started (taken over, and what became of them) and its relays now.
    mutating func rescue(_ counts: RescueCounts, relays running: Int) {
        let outcomes: [(String, Int, Int)] = [
            ("held", counts.held, rescuedReported.held),
            ("relayed", counts.relayed, rescuedReported.relayed),
            ("closed", counts.closed, rescuedReported.closed),
            ("reset", counts.reset, rescuedReported.reset),
            ("left", counts.left, rescuedReported.left),
            ("moved", counts.moved, rescuedReported.moved),
        ]
        for (outcome, now, before) in outcomes {
            let counter = rescued[outcome] ?? make.counter("baton_rescued_connections_total", [("outcome", outcome)])
            rescued[outcome] = counter
            if now > before { counter.increment(by: now - before) }
        }
        rescuedReported = counts
        let gauge = relays ?? make.gauge("baton_rescue_relays")
        relays = gauge
        gauge.set(running)
    }

    // MARK: - Rendering, when scraped

    /// The metrics page: the present read from `supervisor` and `/proc`, then everything rendered.
    mutating func render(_ supervisor: Supervisor, now: ContinuousClock.Instant, wallClock: Double) -> [UInt8] {
        servingGeneration.set(supervisor.serving ?? 0)
        var generations: [Supervisor.GenerationState: Int] = [:]
        var looping = 0
        for generation in supervisor.generations.values {
            generations[generation.state, default: 0] += 1
            if generation.crashLooping { looping += 1 }
        }
        for (state, gauge) in generationCounts { gauge.set(generations[state] ?? 0) }
        crashLooping.set(looping)

        var workers: [SeriesKey: Int] = [:]
        for generation in supervisor.generations.keys {
            for state in MetricLabels.workerStates { workers[SeriesKey(generation: generation, state: state)] = 0 }
        }
        for worker in supervisor.workers.values where worker.state != .exited {
            workers[SeriesKey(generation: worker.generation, state: worker.state), default: 0] += 1
        }
        for (key, gauge) in workerSeries where workers[key] == nil {
            gauge.destroy()
            workerSeries[key] = nil
        }
        for (key, count) in workers {
            let gauge =
                workerSeries[key]
                ?? make.gauge(
                    "baton_workers",
                    [("generation", String(key.generation)), ("state", key.state.rawValue)]
                )
            workerSeries[key] = gauge
            gauge.set(count)
        }

        if let last = supervisor.lastReload {
            let gauges =
                lastReload
                ?? (make.gauge("baton_last_reload_timestamp_seconds"), make.gauge("baton_last_reload_success"))
            lastReload = gauges
            gauges.timestamp.set(wallClock - Double((now - last.finishedAt).milliseconds) / 1000)
            gauges.success.set(last.ok ? 1 : 0)
        }

        if let stats = ProcessStats.current() {
            if stats.cpuSeconds > cpuSecondsReported {
                cpuSeconds.increment(by: stats.cpuSeconds - cpuSecondsReported)
                cpuSecondsReported = stats.cpuSeconds
            }
            residentMemory.set(stats.residentMemoryBytes)
            virtualMemory.set(stats.virtualMemoryBytes)
            startTime.set(stats.startTimeSeconds)
            openFileDescriptors.set(stats.openFileDescriptors)
            // No limit (RLIM_INFINITY): the series stays at 0 rather than rendering "inf".
            if let maximum = stats.maximumFileDescriptors { maximumFileDescriptors.set(maximum) }
        }
        return registry.emitToBuffer()
    }
}

/// Makes each series: registered with swift-prometheus under its family's help text, and recorded through
/// swift-metrics' API (a `CoreMetrics` object over the Prometheus one; `destroy()` unregisters it).
private struct Maker {
    let registry: PrometheusCollectorRegistry
    let factory: PrometheusMetricsFactory

    /// What each family means: its `# HELP` line.
    static let help: [String: String] = [
        "baton_reloads_total": "Reloads that finished, by result (ok, failed).",
        "baton_reload_duration_seconds": "How long each finished reload took.",
        "baton_rollbacks_total": "Reloads whose new generation was rolled back, by reason.",
        "baton_worker_starts_total": "Worker processes started.",
        "baton_worker_exits_total": "Worker processes that ended, by reason.",
        "baton_worker_restarts_total": "Crashed workers of a serving generation started again, by why they ended.",
        "baton_crash_loops_total": "Times a generation started crash-looping.",
        "baton_crash_looping": "Generations crash-looping now.",
        "baton_serving_generation": "The serving generation's number (0: none serves).",
        "baton_generations": "Generations by state.",
        "baton_workers": "Workers of each live generation, by state.",
        "baton_generation_connections": "Open connections of each live generation, draining ones included.",
        "baton_rescued_connections_total":
            "Connections baton took over from retiring workers (held), and what became of them once the worker let go: relayed to the serving generation, closed idle, reset, or left to the app that shut them down; moved: relays re-pointed when the worker they led to retired (not in held).",
        "baton_rescue_relays": "Relays of rescued connections to the serving generation running now.",
        "baton_last_reload_timestamp_seconds": "When the last reload finished, in seconds since the epoch.",
        "baton_last_reload_success": "Whether the last reload succeeded (1) or failed (0).",
        "baton_build_info": "baton's version; always 1.",
        "process_cpu_seconds_total": "User and system CPU time baton has used, in seconds.",
        "process_resident_memory_bytes": "baton's resident memory size, in bytes.",
        "process_virtual_memory_bytes": "baton's virtual memory size, in bytes.",
        "process_start_time_seconds": "When baton started, in seconds since the epoch.",
        "process_open_fds": "File descriptors baton has open.",
        "process_max_fds": "The most file descriptors baton may open (its soft RLIMIT_NOFILE).",
    ]

    private func descriptor(_ name: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: Self.help[name] ?? "")
    }

    func counter(_ name: String, _ labels: [(String, String)] = []) -> CoreMetrics.Counter {
        let handler = registry.makeCounter(descriptor: descriptor(name), labels: labels)
        return CoreMetrics.Counter(label: name, dimensions: labels, handler: handler, factory: factory)
    }

    func floatingPointCounter(_ name: String) -> CoreMetrics.FloatingPointCounter {
        let handler = registry.makeCounter(descriptor: descriptor(name), labels: [])
        return CoreMetrics.FloatingPointCounter(label: name, dimensions: [], handler: handler, factory: factory)
    }

    func gauge(_ name: String, _ labels: [(String, String)] = []) -> CoreMetrics.Meter {
        let handler = registry.makeGauge(descriptor: descriptor(name), labels: labels)
        return CoreMetrics.Meter(label: name, dimensions: labels, handler: handler, factory: factory)
    }

    func timer(_ name: String, buckets: [Duration]) -> CoreMetrics.Timer {
        let handler = registry.makeDurationHistogram(descriptor: descriptor(name), labels: [], buckets: buckets)
        return CoreMetrics.Timer(label: name, dimensions: [], handler: handler, factory: factory)
    }
}

extension Duration {
    /// Whole nanoseconds, saturated.
    fileprivate var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (total, carry) = whole.addingReportingOverflow(attoseconds / 1_000_000_000)
        guard !overflow && !carry else { return seconds < 0 ? .min : .max }
        return total
    }
}

extension Launcher {
    /// Binds `--metrics` and serves it from the event loop. A failure stops a new launcher with a one-line error;
    /// after a re-execution in place (the workers serve meanwhile) it is logged and baton carries on without metrics.
    func setUpMetrics() throws(BatonError) {
        guard let address = configuration.metrics else { return }
        do throws(BatonError) {
            let socket: OwnedDescriptor
            do throws(BindError) {
                switch address {
                case .tcp(let host, let port):
                    socket = try Sockets.listenTCP(host: host, port: port, backlog: 64, display: address.description)
                case .unix(let path):
                    socket = try Sockets.listenUnix(path: path, mode: 0o660, backlog: 64)
                }
            } catch {
                throw BatonError(.listen, Self.metricsBindMessage(error))
            }
            if case .unix(let path) = address { metricsFile = Sockets.fileIdentity(path) }
            do throws(SystemError) {
                let server = try MetricsServer(socket, loop: loop)
                let sink = self.sink
                try server.start { client, headOnly in sink.yield(.metricsRequest(client, headOnly: headOnly)) }
                metricsServer = server
            } catch {
                throw BatonError(.listen, "cannot serve --metrics \(address)", underlying: error)
            }
        } catch {
            guard resume != nil else { throw error }
            logger.error("\(error.description); carrying on without metrics")
            return
        }
        metrics = BatonMetrics()
        logger.info("serving metrics on \(address) (GET /metrics)")
    }

    /// `--metrics` could not be bound, in one line that names the option and the fix.
    static func metricsBindMessage(_ error: BindError) -> String {
        if case .system(let cause) = error.reason, cause.errno == .addressInUse {
            return
                "--metrics address \(error.address) is already in use: stop whatever listens there or choose another --metrics address"
        }
        return "--metrics: \(error.description)"
    }

    /// Renders the metrics page for a scraper.
    func answerMetrics(_ client: MetricsClient, headOnly: Bool) {
        guard metrics != nil else {
            client.respond(.error(503, "Service Unavailable", "metrics are off"))
            return
        }
        reportConnections(connectionsByGeneration())
        let (rescued, running) = rescue.counts()
        self.metrics?.rescue(rescued, relays: running)
        guard var metrics else { return }
        let body = metrics.render(supervisor, now: .now, wallClock: OS.wallClockSeconds())
        self.metrics = metrics
        client.respond(.metrics(body, headOnly: headOnly))
    }

    /// The hook for connection counting (issue 15, point 2): the open connections of each live generation, draining
    /// ones included, as `baton_generation_connections{generation}`. Nothing counts connections yet, so nothing calls
    /// it and the series are absent.
    func reportConnections(_ counts: [Int: Int]) {
        metrics?.connections(counts)
    }
}
