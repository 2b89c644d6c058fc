public import BatonCore
public import BatonSystem
public import Logging
import SystemPackage

/// Everything that reaches the launcher from the event loop and its timers, in one ordered stream.
enum DaemonEvent: Sendable {
    case signal(Int32)
    /// A notify message from `pid`, which runs as a worker's uid.
    case notifyMessage(pid: Int32, NotifyMessage)
    case workerMessage(WorkerID, NotifyMessage)
    case detectedReady(WorkerID)
    case controlRequest(ControlClient, Result<ControlProtocol.Request, BatonError>)
    case timer(TimerID, token: Int)
    case watchdogTick
    /// A listener hung up: a worker shut it down.
    case listenerHungUp
    /// Time to count the connections of what drains again (``Launcher/watchDrains()``).
    case drainTick
    /// A health probe of a worker ended (`--health`).
    case probed(WorkerID, ok: Bool, detail: String)
    /// A scraper asked for `GET /metrics` (`headOnly`: `HEAD`).
    case metricsRequest(MetricsClient, headOnly: Bool)
}

/// The one actor that owns the generations: it feeds events to the ``Supervisor`` state machine and performs
/// the actions it returns with the system layer.
///
/// Event order: each event from the stream becomes zero or more ``SupervisorEvent``s, each run through
/// ``EventOrder/run(_:handle:perform:)``: performing an action never re-enters the Supervisor; what an action causes (a
/// worker spawned, a spawn that failed, an exec-mode worker that is ready) is handled after the current action list,
/// in the order the Supervisor's tests use too.
public actor Launcher {
    public let configuration: LaunchConfiguration
    let logger: Logger
    var supervisor: Supervisor
    let loop: EventLoop
    let events: AsyncStream<DaemonEvent>
    let sink: AsyncStream<DaemonEvent>.Continuation

    let listeners: [ListeningSocket]
    var listenerGuard: ListenerGuard
    let starter: WorkerStarter
    /// Probe sockets and probes (`--health`).
    let health: HealthChecks?
    let devNull: OwnedDescriptor
    /// The notify socket (`--ready notify`) and its address.
    let notify: (fd: FileDescriptor, address: String)?
    var control: ControlServer?
    /// The control socket's file, as bound.
    var controlFile: FileIdentity?
    /// `--metrics`: what is recorded, the server, and the unix socket's file as bound (nil: TCP, or off).
    var metrics: BatonMetrics?
    var metricsServer: MetricsServer?
    var metricsFile: FileIdentity?
    var io: [WorkerID: WorkerIO] = [:]
    /// The spawns the current action list started, in order, until ``finishSpawns()``.
    var startingWorkers: [WorkerStarter.Begun] = []
    /// When each generation started, in clock ticks since boot, to tell which one a process that wiped its environment
    /// belongs to.
    var generationStarts: [Int: UInt64] = [:]
    /// Notify messages between the event loop and the actor, bounded.
    let inbox = NotifyInbox()
    private var ignoredNotifications = LogRateLimit()
    private var rejectedValues = LogRateLimit()
    var repairLog = LogRateLimit()
    /// The owners of recent notify senders (nil: not a worker's), so that a flood from one process costs one look in
    /// /proc, not one per datagram. Cleared whenever a worker starts or ends.
    var owners: [Int32: WorkerID?] = [:]
    /// What workers left behind, and when those told to stop are killed.
    var leftovers = Leftovers()
    var leftoverCheck: EventLoop.Timer?
    /// Counts the connections of stopping workers once a second while any stops (``watchDrains()``).
    var drainWatch: EventLoop.Timer?
    /// What each reload requester's answer is about (``SupervisorAction/reloadOutcome(_:generation:reason:)``).
    var outcomes: [RequesterID: (generation: Int, reason: String?, stderr: [String]?)] = [:]
    /// Each worker's CPU time at the previous status report (`baton status`'s percentages).
    var cpuSamples = CPUSamples()
    /// Takes over the connections retiring workers leave open.
    let rescue: ConnectionRescue

    private var timers: [TimerID: (token: Int, timer: EventLoop.Timer)] = [:]
    private var timerToken = 0
    private var requesters: [RequesterID: ControlClient] = [:]
    private var nextRequester = 1
    private var lastStatusLine = ""
    private var exitCode: Int32?

    /// The state this launcher resumes from after re-executing itself, if it did.
    let resume: ResumeState?
    /// The binary to re-execute on SIGUSR2 (the path, so that an upgraded file is picked up).
    let executablePath: String
    var reexecRequested = false

    /// The launcher runs on its event loop's thread (`LoopExecutor.swift`).
    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }

    /// The executor to start ``run()``'s task on (`Task(executorPreference:)`), so that nothing of it runs on Swift
    /// concurrency's global pool.
    public nonisolated var executor: any TaskExecutor { loop }

    /// Prepares a launcher over sockets that are already bound. Nothing runs until ``run()``.
    public init(
        configuration: LaunchConfiguration,
        listeners: [ListeningSocket],
        executable: String,
        environment: [String],
        logger: Logger,
        journal: Bool = false,
        resume: ResumeState? = nil
    ) throws(BatonError) {
        self.configuration = configuration
        self.listeners = listeners
        listenerGuard = ListenerGuard(listeners, backlog: configuration.backlog)
        self.logger = logger
        self.resume = resume
        executablePath = OS.currentExecutable() ?? "/usr/bin/baton"
        supervisor =
            resume.map { Supervisor(settings: configuration.supervisor, resuming: $0.supervisor, now: .now) }
            ?? Supervisor(settings: configuration.supervisor)
        (events, sink) = AsyncStream.makeStream(of: DaemonEvent.self)
        do throws(SystemError) {
            loop = try EventLoop()
            devNull = try FileDescriptor.devNull()
            var inodes: Set<UInt64> = []
            for listener in listeners { inodes.insert(try listener.inode()) }
            notify = try Self.notifySocket(configuration, resume: resume)
            health = HealthChecks(configuration, loop: loop, sink: sink, environment: environment, devNull: devNull)
            starter = WorkerStarter(
                configuration: configuration,
                listeners: listeners,
                listenerInodes: inodes,
                executable: executable,
                baseEnvironment: LaunchConfiguration.workerBaseEnvironment(environment),
                notifyAddress: notify?.address,
                standardInput: devNull.descriptor,
                journal: journal,
                inbox: inbox,
                loop: loop,
                health: health,
                readiness: configuration.readyMode == .listen
                    ? try ReadinessWatch(listenerInodes: inodes, sink: sink) : nil
            )
        } catch {
            throw BatonError(.internalError, "cannot start", underlying: error)
        }
        // The rescue's /proc scans and relays run on a loop (a thread) of their own, beside the launcher's.
        do throws(SystemError) {
            rescue = ConnectionRescue(
                loop: try EventLoop(),
                listeners: listeners,
                enabled: configuration.rescueConnections,
                logger: logger
            )
        } catch {
            throw BatonError(.internalError, "cannot start", underlying: error)
        }
    }

    /// Runs until every generation has been retired; returns the process exit code.
    public func run() async throws(BatonError) -> Int32 {
        do throws(SystemError) {
            try OS.becomeSubreaper()
            try setUpSignals()
            try setUpNotifications()
            try setUpWatchdog()
            try watchListeners()
            if let resume { try adoptWorkers(resume) }
        } catch {
            throw BatonError(.internalError, "cannot start", underlying: error)
        }
        // Metrics first: a --metrics address in use stops baton before its control socket exists.
        try setUpMetrics()
        try setUpControlSocket()
        loop.start()
        if configuration.rescueConnections, let why = rescue.unavailable {
            logger.warning("connection rescue is off: \(why)")
        }
        if let resume {
            // The resumed generation started before anything that runs now.
            generationStarts[resume.supervisor.serving] = 0
            logger.lifecycle(
                LifecycleEvent(
                    .reexecuted,
                    "re-executed \(executablePath) in place: \(resume.previousVersion) -> \(BatonVersion.current), still serving generation \(resume.supervisor.serving)",
                    generation: resume.supervisor.serving
                ),
                name: configuration.name
            )
            notifyManager(.status)
            // The adopted workers' probes go on, through the probe sockets the previous binary handed over.
            for worker in supervisor.liveWorkers where health?.socket(of: worker.id) != nil {
                process(.timer(.probe(worker.id)))
            }
        } else {
            process(.start)
        }

        for await event in events {
            handle(event)
            watchDrains()
            // Once everything the event caused is done (replies sent, lines logged), not in the middle of it.
            if releaseCodePages {
                releaseCodePages = false
                OS.releaseCodePages()
            }
            if reexecRequested && supervisor.isQuiet && exitCode == nil { reexecute() }
            if exitCode != nil { break }
        }
        cleanUp()
        return exitCode ?? 1
    }

    // MARK: - Events

    private func handle(_ event: DaemonEvent) {
        switch event {
        case .signal(let signal):
            switch Signals.meaning(of: signal) {
            case .reap: reapChildren()
            case .reexecute:
                logger.notice("re-execution of \(executablePath) requested")
                reexecRequested = true
            case .reload:
                countDrainingConnections()
                process(.reloadRequested(nil))
            case .stop:
                if signal != Signals.terminate && signal != Signals.interrupt {
                    logger.notice("SIG\(Signals.name(of: signal)) received: stopping as for SIGTERM")
                }
                process(.stop)
            case .ignore:
                logger.notice("ignored SIG\(Signals.name(of: signal)): HUP reloads, USR2 re-executes, TERM stops")
            }
        case .notifyMessage(let pid, let message):
            inbox.handled()
            guard let worker = owner(of: pid) else {
                let (log, suppressed) = ignoredNotifications.admit(now: .now)
                if log {
                    logger.warning(
                        "ignored a notify message from pid \(pid), which is not one of baton's workers\(suppressed > 0 ? " (\(suppressed) more suppressed)" : "")"
                    )
                }
                return
            }
            deliver(message, from: worker)
        case .workerMessage(let worker, let message):
            inbox.handled()
            deliver(message, from: worker)
        case .detectedReady(let worker):
            process(.ready(worker))
        case .controlRequest(let client, .failure(let error)):
            client.send(.error(error.message))
            client.close()
        case .controlRequest(let client, .success(let request)):
            switch request.command {
            case .status:
                checkListeners()
                countDrainingConnections()
                client.send(ControlProtocol.Reply(kind: .status, ok: true, status: statusReportWithUsage()))
                client.close()
                // An answer's code (the report, its JSON) need not stay resident either (not so for the metrics
                // endpoint, which a scraper asks every few seconds).
                releaseCodePages = true
            case .reload:
                let options: ReloadOptions
                do throws(BatonError) {
                    options = try request.reloadOptions()
                } catch {
                    client.send(.error(error.message))
                    client.close()
                    return
                }
                let requester = newRequester(client)
                countDrainingConnections()
                process(
                    .reload(
                        ReloadRequest(
                            requester,
                            waitDrained: request.waitDrained == true,
                            cutDrain: request.cutDrain == true,
                            options: options
                        )
                    )
                )
            case .signal:
                client.send(signalWorkers(request))
                client.close()
            case .promote:
                process(.promoteRequested(newRequester(client)))
            case .rollback:
                process(.rollbackRequested(newRequester(client)))
            }
        case .watchdogTick:
            Systemd.notify("WATCHDOG=1")
            // The service manager's watchdog is baton's one periodic event: a look at the listeners costs nothing else.
            checkListeners()
        case .listenerHungUp:
            checkListeners(afterHangUp: true)
        case .drainTick:
            countDrainingConnections()
        case .probed(let id, let ok, let detail):
            process(.probed(id, ok: ok, detail: detail))
        case .metricsRequest(let client, let headOnly):
            answerMetrics(client, headOnly: headOnly)
        case .timer(let id, let token):
            guard let timer = timers[id], timer.token == token else { return }
            timers[id] = nil
            if case .readyTimeout(let worker) = id,
                let text = BindAdoption.diagnosis(
                    stderr: io[worker]?.stderr.tail() ?? [],
                    listeners: listeners,
                    pid: supervisor.worker(worker)?.pid,
                    listenerInodes: starter.listenerInodes.union(health?.socketInodes() ?? [])
                )
                    ?? ListenReadiness.explanation(
                        configuration.readyMode,
                        pid: supervisor.worker(worker)?.pid,
                        listenerInodes: starter.listenerInodes,
                        listenerCount: listeners.count
                    )
            {
                process(.explained(worker, text))
            }
            // What a worker still holds when its stop timeout kills it goes into the drain's journal event.
            if case .stopTimeout(let worker) = id { countDrainingConnections(only: worker) }
            process(.timer(id))
        }
    }

    /// Set by what ends a start, a reload, a rollback or a `status` answer: baton then lets go of its code pages
    /// (``OS/releaseCodePages()``) once the event is handled.
    private var releaseCodePages = false

    /// Registers a client that waits for the outcome of a reload, promote or rollback.
    private func newRequester(_ client: ControlClient) -> RequesterID {
        let requester = RequesterID(nextRequester)
        nextRequester += 1
        requesters[requester] = client
        return requester
    }

    /// Hands `event` to the Supervisor and performs its actions, then those of the events they caused, in order.
    private func process(_ event: SupervisorEvent) {
        rescue.beginTurn()
        EventOrder.run(
            event,
            handle: { supervisor.handle($0, now: .now) },
            perform: { perform($0) },
            settle: { finishSpawns() }
        )
    }

    private func reapChildren() {
        let exits = Children.reapAll()
        if !exits.isEmpty { owners = [:] }
        // Orphans first, so that what a worker left behind is gone before anyone hears it exited.
        if !exits.isEmpty || leftovers.nextDeadline != nil { stopOrphans(alsoGone: Set(exits.map(\.pid))) }
        for exit in exits {
            if case .signaled(let signal, _) = exit.reason {
                rescue.exited(exit.pid, killed: signal == Signals.kill)
            } else {
                rescue.exited(exit.pid, killed: false)
            }
            let reason: ExitReason =
                switch exit.reason {
                case .exited(let code): .exited(code)
                case .signaled(let signal, _): .signaled(Signals.name(of: signal))
                }
            if health?.execExited(exit.pid, reason: reason) == true { continue }
            guard let worker = supervisor.worker(pid: exit.pid) else {
                // A descendant re-parented to baton: one still in a worker's process group is that worker's. (One that
                // left the group cannot be told by its zombie: its environment is gone.)
                if let group = exit.processGroup, let owner = supervisor.worker(pid: group) {
                    process(.descendantExited(owner.id, pid: exit.pid, reason))
                }
                continue
            }
            let stderr = io.removeValue(forKey: worker.id)?.finish() ?? []
            if let text = BindAdoption.diagnosis(stderr: stderr, listeners: listeners) {
                process(.explained(worker.id, text))
            }
            health?.workerGone(worker.id)
            process(.exited(worker.id, reason, stderr: stderr))
        }
    }

    /// Waits for the spawns the last action list started, and returns what they caused, in the order they started.
    private func finishSpawns() -> [SupervisorEvent] {
        var events: [SupervisorEvent] = []
        for begun in startingWorkers {
            let (workerIO, caused) = starter.finish(begun)
            if let workerIO { io[begun.id] = workerIO }
            events += caused
        }
        startingWorkers = []
        return events
    }

    private func deliver(_ message: NotifyMessage, from worker: WorkerID) {
        let dropped = inbox.takeDropped()
        if dropped > 0, ignoredNotifications.admit(now: .now).log {
            logger.warning("dropped \(dropped) notify message(s): workers sent them faster than baton handles them")
        }
        if let status = message.status { process(.status(worker, status)) }
        for rejected in message.rejected {
            let (log, suppressed) = rejectedValues.admit(now: .now)
            guard log else { continue }
            let more = suppressed > 0 ? " (\(suppressed) more rejected values not logged)" : ""
            logger.warning(
                "rejected \(rejected) in a notify message from worker pid \(supervisor.worker(worker)?.pid ?? 0)\(more)"
            )
        }
        if message.watchdog || message.watchdogInterval != nil {
            process(.watchdogPing(worker, interval: message.watchdogInterval))
        }
        if message.ready { process(.ready(worker)) }
        if message.stopping, let pid = supervisor.worker(worker)?.pid {
            logger.info("worker pid \(pid) reports it is stopping")
        }
    }

    // MARK: - Actions

    /// Performs one action; returns the events it caused.
    private func perform(_ action: SupervisorAction) -> [SupervisorEvent] {
        switch action {
        case .spawn(let id, let generation, let slot):
            owners = [:]
            metrics?.workerStarted(generation: generation, slot: slot, restarts: supervisor.worker(id)?.restarts ?? 0)
            // The spawns of one action list run side by side; finishSpawns() waits for them after the list.
            startingWorkers.append(starter.begin(id, generation: generation, slot: slot, events: sink))
        case .stop(let id, let pid):
            let generation = supervisor.worker(id)?.generation ?? 0
            let timing =
                supervisor.phase == .running
                ? rescue.retire(pid, generation: generation, signal: configuration.stopSignal) : .now
            let rescue = rescue
            let stopping: @Sendable () -> Void = { rescue.stopping(pid) }
            switch timing {
            case .now: BindAdoption.stop(pid, signal: configuration.stopSignal, loop: loop, before: stopping)
            case .after(let grace):
                BindAdoption.stop(pid, signal: configuration.stopSignal, loop: loop, delay: grace, before: stopping)
            case .whenSettled: break
            }
        case .stopGroup(_, let pid):
            OS.kill(-pid, configuration.stopSignal)
        case .kill(_, let pid):
            OS.kill(-pid, Signals.kill)
            OS.kill(pid, Signals.kill)
        case .schedule(let id, let delay):
            schedule(id, after: delay)
        case .cancel(let id):
            if let timer = timers.removeValue(forKey: id)?.timer { loop.cancel(timer) }
        case .progress(let ids, let message):
            for id in ids { requesters[id]?.send(.progress(message)) }
        case .reloadOutcome(let ids, let generation, let reason, let failed):
            // The failing worker's last stderr lines, read now: a failed reload is answered once its generation has
            // exited, and a worker's pipe goes with it.
            let stderr = failed.flatMap { $0.stderr ?? io[$0.id]?.stderr.tail() }
            for id in ids { outcomes[id] = (generation, reason, stderr) }
        case .reloadFinished(let ids, let ok, let message, let duration, let failed):
            let current = failed.flatMap { $0.stderr ?? io[$0.id]?.stderr.tail() } ?? []
            let draining = ok && !ids.isEmpty ? drainingNow() : []
            for id in ids {
                let outcome = outcomes.removeValue(forKey: id)
                guard let client = requesters.removeValue(forKey: id) else { continue }
                var reply = ControlProtocol.Reply(
                    kind: .result,
                    message: message,
                    ok: ok,
                    durationMilliseconds: duration.milliseconds,
                    stderr: ok ? nil : (outcome?.stderr ?? current)
                )
                reply.generation = outcome?.generation
                reply.reason = outcome?.reason ?? (ok ? nil : message)
                reply.draining = ok ? draining : nil
                client.send(reply)
                client.close()
            }
        case .log(let event):
            logger.lifecycle(event, name: configuration.name)
            metrics?.record(event)
            switch event.kind {
            case .generationStarted:
                if let id = event.generation { generationStarts[id] = OS.ticksSinceBoot() }
                checkListeners()
            case .generationReady: checkListeners()
            case .generationRetired, .generationFailed:
                checkListeners()
                // A reload or a rollback has run: its code need not stay resident.
                releaseCodePages = true
            default: break
            }
        case .notifyManager(let notification):
            notifyManager(notification)
        case .exit(let code):
            exitCode = code
        case .probe(let id, let pid):
            health?.probe(id, pid: pid)
        }
        return []
    }

    func notifyManager(_ notification: ManagerNotification) {
        switch notification {
        case .ready:
            Systemd.notify("READY=1\nSTATUS=\(statusLine)")
            // Started (or reloaded): the code that parsed, bound and spawned need not stay resident.
            releaseCodePages = true
        case .reloading:
            Systemd.notify("RELOADING=1\nMONOTONIC_USEC=\(OS.monotonicMicroseconds())")
        case .stopping:
            Systemd.notify("STOPPING=1")
        case .status:
            guard Systemd.managerListens else { return }
            let line = statusLine
            guard line != lastStatusLine else { return }
            lastStatusLine = line
            Systemd.notify("STATUS=\(line)")
        case .extendTimeout(let duration):
            Systemd.notify("EXTEND_TIMEOUT_USEC=\(duration.microseconds)")
        }
    }

    private func schedule(_ id: TimerID, after delay: Duration) {
        if let timer = timers.removeValue(forKey: id)?.timer { loop.cancel(timer) }
        timerToken += 1
        let token = timerToken
        let sink = self.sink
        timers[id] = (token, loop.schedule(after: delay) { sink.yield(.timer(id, token: token)) })
    }

    // MARK: - Status and teardown

    /// What `baton status` reports.
    public func statusReport() -> StatusReport {
        let refusing = listenerGuard.refusing
        return StatusReport(
            name: configuration.name,
            pid: OS.id,
            version: BatonVersion.current,
            listeners: listeners.map {
                .init(name: $0.name, address: $0.address, fd: $0.fd.rawValue, refusing: refusing.contains($0))
            },
            supervisor: supervisor,
            now: .now,
            wallClock: OS.wallClockSeconds()
        )
    }

    private func cleanUp() {
        killEveryWorker()
        for (_, timer) in timers { loop.cancel(timer.timer) }
        leftoverCheck.map(loop.cancel)
        drainWatch.map(loop.cancel)
        timers = [:]
        for (_, client) in requesters {
            client.send(.error("baton is exiting"))
            client.close()
        }
        requesters = [:]
        if control != nil, let controlFile {
            Sockets.removeSocketFile(configuration.controlPath, identity: controlFile)
        }
        if case .unix(let path) = configuration.metrics, let metricsFile {
            Sockets.removeSocketFile(path, identity: metricsFile)
        }
        Systemd.notify("STATUS=stopped")
        sink.finish()
    }
}
