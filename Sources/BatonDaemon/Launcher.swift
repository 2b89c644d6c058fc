public import BatonCore
public import BatonSystem
public import Logging
import SystemPackage
import Synchronization

/// Everything that happens to the launcher, in one ordered stream.
enum DaemonEvent: Sendable {
    case signal(Int32)
    case childExited(ChildExit)
    case notifyDatagram(Sockets.Datagram)
    case workerMessage(WorkerID, NotifyMessage)
    case detectedReady(WorkerID)
    case controlRequest(ControlClient, Result<ControlProtocol.Request, BatonError>)
    case timer(TimerID, token: Int)
    case watchdogTick
}

/// The one actor that owns the generations: it feeds events to the ``Supervisor`` state machine and performs
/// the actions it returns with the system layer.
public actor Launcher {
    public let configuration: LaunchConfiguration
    private let logger: Logger
    private var supervisor: Supervisor
    private let loop: EventLoop
    private let events: AsyncStream<DaemonEvent>
    private let sink: AsyncStream<DaemonEvent>.Continuation

    private let listeners: [ListeningSocket]
    private var listenerInodes: Set<UInt64> = []
    private let executable: String
    private let baseEnvironment: [String]
    private var notifySocket: FileDescriptor?
    private var notifyAddress: String?
    private var controlSocket: FileDescriptor?
    private let devNull: FileDescriptor
    /// Worker output goes to the journal as structured entries instead of baton's stdout and stderr.
    private let journal: Bool

    private struct WorkerIO {
        var stdout: OutputPipe
        var stderr: OutputPipe
        var notify: NotifyPipe?
        var readiness: Task<Void, Never>?
    }

    private var io: [WorkerID: WorkerIO] = [:]
    /// Exited workers' stderr tails, kept briefly for a reload's failure report.
    private var lastStderr: [WorkerID: [String]] = [:]
    private var timers: [TimerID: (token: Int, task: Task<Void, Never>)] = [:]
    private var timerToken = 0
    private var requesters: [RequesterID: ControlClient] = [:]
    private var nextRequester = 1
    private var nextClient = 1
    private var lastStatusLine = ""
    private var exitCode: Int32?
    /// The state this launcher resumes from after re-executing itself, if it did.
    private let resume: ResumeState?
    /// The binary to re-execute on SIGUSR2 (the path, so that an upgraded file is picked up).
    private let executablePath: String
    private var reexecRequested = false

    /// Prepares a launcher over sockets that are already bound. Nothing runs until ``run()``.
    public init(
        configuration: LaunchConfiguration, listeners: [ListeningSocket], executable: String, environment: [String],
        logger: Logger, journal: Bool = false, resume: ResumeState? = nil
    ) throws(SystemError) {
        self.journal = journal
        self.resume = resume
        self.executablePath = Process.currentExecutable() ?? "/usr/bin/baton"
        self.configuration = configuration
        self.listeners = listeners
        self.executable = executable
        self.baseEnvironment = LaunchConfiguration.workerBaseEnvironment(environment)
        self.logger = logger
        self.supervisor =
            resume.map { Supervisor(settings: configuration.supervisor, resuming: $0.supervisor, now: .now) }
            ?? Supervisor(settings: configuration.supervisor)
        self.loop = try EventLoop()
        self.devNull = try FileDescriptor.devNull()
        (events, sink) = AsyncStream.makeStream(of: DaemonEvent.self)
    }

    /// Runs until every generation has been retired; returns the process exit code.
    public func run() async throws -> Int32 {
        for listener in listeners { listenerInodes.insert(try listener.inode()) }
        try Process.becomeSubreaper()
        try setUpSignals()
        try setUpNotifySocket(existing: resume?.notify.map { FileDescriptor(rawValue: $0) }, address: resume?.notifyAddress)
        try setUpControlSocket(existing: resume.map { FileDescriptor(rawValue: $0.control) })
        try setUpWatchdog()
        if let resume { try adoptWorkers(resume) }
        loop.start()
        if let resume {
            logger.lifecycle(
                LifecycleEvent(
                    .reexecuted,
                    "re-executed \(executablePath) in place: \(resume.previousVersion) -> \(BatonVersion.current), still serving generation \(resume.supervisor.serving)",
                    generation: resume.supervisor.serving),
                name: configuration.name)
            notifyManager(.status(supervisor.statusLine))
        } else {
            perform(supervisor.handle(.start, now: .now))
        }

        for await event in events {
            handle(event)
            if reexecRequested && supervisor.isQuiet && exitCode == nil { reexecute() }
            if let exitCode {
                cleanUp()
                return exitCode
            }
        }
        cleanUp()
        return exitCode ?? 1
    }

    // MARK: - Setup

    private func setUpSignals() throws(SystemError) {
        let fd = try Signals.descriptor(for: Signals.handledByRun)
        let sink = self.sink
        // Children are reaped by the actor, not here: a child reaped but not yet handled would be lost if baton
        // re-executed itself in between.
        try loop.register(fd) {
            for signal in Signals.drain(fd) { sink.yield(.signal(signal)) }
        }
        // Children that ended before the signalfd existed (or before a re-exec).
        sink.yield(.signal(Signals.child))
    }

    /// Pings systemd's watchdog at half its interval from a timerfd of the event loop, through the actor: a stuck
    /// loop or a stuck actor stops the pings, and systemd restarts baton.
    private func setUpWatchdog() throws(SystemError) {
        guard let usec = Systemd.watchdogMicroseconds(), usec > 0 else { return }
        let fd = try PeriodicTimer.descriptor(every: .microseconds(Int64(usec / 2)))
        let sink = self.sink
        try loop.register(fd) {
            if PeriodicTimer.acknowledge(fd) > 0 { sink.yield(.watchdogTick) }
        }
        logger.info("pinging the service manager's watchdog every \(Duration.microseconds(Int64(usec / 2)).shortDescription)")
    }

    private func setUpNotifySocket(existing: FileDescriptor?, address existingAddress: String?) throws(SystemError) {
        guard configuration.readyMode == .notify else { return }
        let address = existingAddress ?? "@baton/\(Process.id)/\(configuration.name)/notify"
        let fd: FileDescriptor
        if let existing {
            fd = existing
            try fd.setCloseOnExec()
        } else {
            fd = try Sockets.notifySocket(path: address)
        }
        let sink = self.sink
        try loop.register(fd) {
            while let datagram = try? Sockets.receiveDatagram(fd, maximum: NotifyMessage.maximumSize + 1) {
                sink.yield(.notifyDatagram(datagram))
            }
        }
        notifySocket = fd
        notifyAddress = address
    }

    private func setUpControlSocket(existing: FileDescriptor?) throws(SystemError) {
        let path = configuration.controlPath
        let fd: FileDescriptor
        if let existing {
            fd = existing
            try fd.setCloseOnExec()
        } else {
            if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
                try Process.makeDirectory(String(path[..<slash]))
            }
            do {
                fd = try Sockets.listenUnix(path: path, mode: 0o600, backlog: 64)
            } catch {
                throw SystemError("control socket \(path): \(error.description)", error.underlying.errno)
            }
        }
        try fd.setNonBlocking()
        controlSocket = fd
        let sink = self.sink
        let loop = self.loop
        let counter = Counter()
        // A spare fd for when baton runs out of them: the pending connection is accepted with it, told why and
        // closed, instead of staying queued and waking the loop forever while its client hangs.
        let spare = Locked<FileDescriptor?>(try? FileDescriptor.devNull())
        try loop.register(fd) {
            while true {
                let client: FileDescriptor
                do throws(SystemError) {
                    guard let accepted = try Sockets.accept(fd) else { break }
                    client = accepted
                } catch let error where error.errno == .tooManyOpenFiles || error.errno == .tooManyOpenFilesInSystem {
                    spare.withLock { spare in
                        spare?.closeOnce()
                        if let refused = try? Sockets.accept(fd) {
                            let connection = ControlClient(id: counter.next(), fd: refused, loop: loop)
                            connection.send(.error("baton is out of file descriptors (\(error.errno)); raise its limit (LimitNOFILE=)"))
                            refused.closeOnce()
                        }
                        spare = try? FileDescriptor.devNull()
                    }
                    break
                } catch {
                    break
                }
                let connection = ControlClient(id: counter.next(), fd: client, loop: loop)
                // Only root and baton's own user may drive it.
                guard let peer = try? Sockets.peerCredentials(client), peer.uid == 0 || peer.uid == Process.userID else {
                    connection.send(.error("permission denied: only root or the user running baton may use its control socket"))
                    connection.close()
                    continue
                }
                do {
                    try loop.register(client) {
                        if let request = connection.read() { sink.yield(.controlRequest(connection, request)) }
                    }
                } catch {
                    connection.close()
                }
            }
        }
    }

    // MARK: - Events

    private func handle(_ event: DaemonEvent) {
        let now = ContinuousClock.now
        switch event {
        case .signal(let signal):
            switch signal {
            case Signals.child:
                let exits = Children.reapAll()
                // Orphans first, so that what a worker left behind is gone before anyone hears it exited.
                if !exits.isEmpty { stopOrphans(alsoGone: Set(exits.map(\.pid))) }
                for exit in exits { handle(.childExited(exit)) }
            case Signals.upgrade:
                logger.notice("re-execution of \(executablePath) requested")
                reexecRequested = true
            case Signals.hangup:
                perform(supervisor.handle(.reloadRequested(nil), now: now))
            case Signals.terminate, Signals.interrupt:
                if supervisor.phase == .stopping {
                    logger.notice("second stop signal: killing every worker now")
                    perform(supervisor.handle(.forceStop, now: now))
                } else {
                    perform(supervisor.handle(.stop, now: now))
                }
            default:
                break
            }
        case .childExited(let exit):
            guard let worker = supervisor.worker(pid: exit.pid) else { return }
            let reason: ExitReason =
                switch exit.reason {
                case .exited(let code): .exited(code)
                case .signaled(let signal, _): .signaled(Signals.name(of: signal))
                }
            if let workerIO = io.removeValue(forKey: worker.id) {
                workerIO.readiness?.cancel()
                workerIO.stdout.drain()
                lastStderr[worker.id] = workerIO.stderr.tail()
            }
            if let text = BindAdoption.diagnosis(stderr: lastStderr[worker.id] ?? [], listeners: listeners) {
                perform(supervisor.handle(.explained(worker.id, text), now: now))
            }
            perform(supervisor.handle(.exited(worker.id, reason), now: now))
            lastStderr[worker.id] = nil
        case .notifyDatagram(let datagram):
            guard let pid = datagram.pid, let worker = owner(of: pid) else {
                logger.warning(
                    "ignored a notify message from pid \(datagram.pid.map(String.init) ?? "unknown"), which is not one of baton's workers")
                return
            }
            guard !datagram.truncated, datagram.closedDescriptors == 0, let message = NotifyMessage(parsing: datagram.bytes) else {
                logger.warning("dropped a malformed, oversized or fd-carrying notify message from pid \(pid)")
                return
            }
            deliver(message, from: worker)
        case .workerMessage(let worker, let message):
            deliver(message, from: worker)
        case .detectedReady(let worker):
            perform(supervisor.handle(.ready(worker), now: now))
        case .controlRequest(let client, let result):
            switch result {
            case .failure(let error):
                client.send(.error(error.message))
                client.close()
            case .success(let request):
                switch request.command {
                case .status:
                    client.send(ControlProtocol.Reply(kind: .status, ok: true, status: statusReport()))
                    client.close()
                case .reload:
                    let requester = RequesterID(nextRequester)
                    nextRequester += 1
                    requesters[requester] = client
                    perform(supervisor.handle(.reloadRequested(requester), now: now))
                }
            }
        case .watchdogTick:
            Systemd.notify("WATCHDOG=1")
        case .timer(let id, let token):
            guard let timer = timers[id], timer.token == token else { return }
            timers[id] = nil
            if case .readyTimeout(let worker) = id,
                let text = BindAdoption.diagnosis(
                    stderr: io[worker]?.stderr.tail() ?? [], listeners: listeners, pid: supervisor.worker(worker)?.pid,
                    listenerInodes: listenerInodes)
            {
                perform(supervisor.handle(.explained(worker, text), now: now))
            }
            perform(supervisor.handle(.timer(id), now: now))
        }
    }

    /// The worker a notify message's sender belongs to: the worker itself, a process in its process group,
    /// or a descendant.
    private func owner(of pid: Int32) -> WorkerID? {
        if let worker = supervisor.worker(pid: pid) { return worker.id }
        if let group = ProcInspector.processGroup(of: pid), let worker = supervisor.worker(pid: group) { return worker.id }
        var current = pid
        for _ in 0..<32 {
            guard let parent = ProcInspector.parent(of: current), parent > 1 else { return nil }
            if let worker = supervisor.worker(pid: parent) { return worker.id }
            current = parent
        }
        return nil
    }

    private func deliver(_ message: NotifyMessage, from worker: WorkerID) {
        let now = ContinuousClock.now
        if let status = message.status { perform(supervisor.handle(.status(worker, status), now: now)) }
        if message.watchdog || message.watchdogMicroseconds != nil {
            let interval = message.watchdogMicroseconds.map { Duration.microseconds(Int64($0)) }
            perform(supervisor.handle(.watchdogPing(worker, interval: interval), now: now))
        }
        if message.ready { perform(supervisor.handle(.ready(worker), now: now)) }
        if message.stopping, let pid = supervisor.worker(worker)?.pid {
            logger.info("worker pid \(pid) reports it is stopping")
        }
    }

    // MARK: - Actions

    private func perform(_ actions: [SupervisorAction]) {
        for action in actions {
            switch action {
            case .spawn(let id, let generation, let slot):
                spawn(id, generation: generation, slot: slot)
            case .stop(_, let pid):
                BindAdoption.stop(pid, signal: configuration.stopSignal)
            case .kill(_, let pid):
                Process.kill(-pid, Signals.kill)
                Process.kill(pid, Signals.kill)
            case .schedule(let id, let delay):
                schedule(id, after: delay)
            case .cancel(let id):
                timers.removeValue(forKey: id)?.task.cancel()
            case .progress(let ids, let message):
                for id in ids { requesters[id]?.send(.progress(message)) }
            case .reloadFinished(let ids, let ok, let message, let duration, let failedWorker):
                let stderr = failedWorker.flatMap { lastStderr[$0] ?? io[$0]?.stderr.tail() }
                for id in ids {
                    guard let client = requesters.removeValue(forKey: id) else { continue }
                    client.send(ControlProtocol.Reply(
                        kind: .result, message: message, ok: ok, durationMilliseconds: duration.milliseconds,
                        stderr: ok ? nil : stderr ?? []))
                    client.close()
                }
            case .log(let event):
                logger.lifecycle(event, name: configuration.name)
            case .notifyManager(let notification):
                notifyManager(notification)
            case .exit(let code):
                exitCode = code
            }
        }
    }

    private func notifyManager(_ notification: ManagerNotification) {
        switch notification {
        case .ready:
            Systemd.notify("READY=1\nSTATUS=\(supervisor.statusLine)")
        case .reloading:
            Systemd.notify("RELOADING=1\nMONOTONIC_USEC=\(Process.monotonicMicroseconds())")
        case .stopping:
            Systemd.notify("STOPPING=1")
        case .status(let line):
            guard line != lastStatusLine else { return }
            lastStatusLine = line
            Systemd.notify("STATUS=\(line)")
        case .extendTimeout(let duration):
            Systemd.notify("EXTEND_TIMEOUT_USEC=\(duration.microseconds)")
        }
    }

    private func schedule(_ id: TimerID, after delay: Duration) {
        timers.removeValue(forKey: id)?.task.cancel()
        timerToken += 1
        let token = timerToken
        let sink = self.sink
        let deadline = ContinuousClock.now + delay
        let task = Task {
            do {
                try await Task.sleep(until: deadline, clock: .continuous)
                sink.yield(.timer(id, token: token))
            } catch {}
        }
        timers[id] = (token, task)
    }

    private func spawn(_ id: WorkerID, generation: Int, slot: Int) {
        let now = ContinuousClock.now
        var environment = baseEnvironment
        environment.append("LISTEN_FDS=\(listeners.count)")
        environment.append("LISTEN_FDNAMES=\(listeners.map(\.name).joined(separator: ":"))")
        environment.append("BATON_GENERATION=\(generation)")
        environment.append("BATON_WORKER=\(slot)")
        environment = BindAdoption.workerEnvironment(environment, configuration: configuration)
        if let watchdog = configuration.supervisor.workerWatchdog {
            environment.append("WATCHDOG_USEC=\(watchdog.microseconds)")
        }
        var notifyPipe: (read: FileDescriptor, write: FileDescriptor)?
        switch configuration.readyMode {
        case .notify:
            if let notifyAddress { environment.append("NOTIFY_SOCKET=\(notifyAddress)") }
        case .fd:
            environment.append("BATON_NOTIFY_FD=\(3 + listeners.count)")
        case .listen, .exec:
            break
        }
        let prefix = "\(configuration.name)[g\(generation).w\(slot)]: "
        let fields = [
            "SYSLOG_IDENTIFIER=\(configuration.name)", "BATON_INSTANCE=\(configuration.name)",
            "BATON_GENERATION=\(generation)", "BATON_WORKER=\(slot)",
        ]
        do {
            if configuration.readyMode == .fd { notifyPipe = try FileDescriptor.closeOnExecPipe(nonBlockingRead: true) }
            let out = try FileDescriptor.closeOnExecPipe(nonBlockingRead: true)
            let err = try FileDescriptor.closeOnExecPipe(nonBlockingRead: true)
            defer {
                out.write.closeOnce()
                err.write.closeOnce()
                notifyPipe?.write.closeOnce()
            }
            let stdoutPipe = OutputPipe(
                fd: out.read, destination: journal ? .journal(fields + ["BATON_STREAM=stdout"]) : .stdout(prefix), keep: 0, loop: loop)
            let stderrPipe = OutputPipe(
                fd: err.read, destination: journal ? .journal(fields + ["BATON_STREAM=stderr"]) : .stderr(prefix), keep: 20, loop: loop)
            let request = SpawnRequest(
                executable: executable, arguments: configuration.command, environment: environment,
                listeners: listeners.map(\.fd), extra: notifyPipe?.write, standardInput: devNull,
                standardOutput: out.write, standardError: err.write, userID: configuration.workerUser?.uid,
                groupID: configuration.workerUser?.gid)
            var spawnRequest = request
            spawnRequest.groups = configuration.workerUser?.groups ?? []
            let pid: Int32
            do {
                pid = try Spawner.spawn(spawnRequest)
            } catch {
                out.read.closeOnce()
                err.read.closeOnce()
                notifyPipe?.read.closeOnce()
                perform(supervisor.handle(.spawnFailed(id, reason: error.description), now: now))
                return
            }
            stdoutPipe.workerPID = pid
            stderrPipe.workerPID = pid
            try stdoutPipe.register()
            try stderrPipe.register()
            var workerIO = WorkerIO(stdout: stdoutPipe, stderr: stderrPipe)
            if let notifyPipe {
                let sink = self.sink
                let reader = NotifyPipe(fd: notifyPipe.read, loop: loop) { sink.yield(.workerMessage(id, $0)) }
                try reader.register()
                workerIO.notify = reader
            }
            switch configuration.readyMode {
            case .listen:
                workerIO.readiness = watchListening(id, pid: pid)
            case .exec, .notify, .fd:
                break
            }
            io[id] = workerIO
            perform(supervisor.handle(.spawned(id, pid: pid), now: now))
            if configuration.readyMode == .exec { perform(supervisor.handle(.ready(id), now: now)) }
        } catch {
            perform(supervisor.handle(.spawnFailed(id, reason: "cannot set up the worker: \(error)"), now: now))
        }
    }

    /// Zero-configuration readiness: looks in `/proc` until the worker accepts on a listener, more rarely as
    /// time passes (5 ms, doubling up to 100 ms). The ready timeout bounds it.
    private func watchListening(_ id: WorkerID, pid: Int32) -> Task<Void, Never> {
        let inodes = listenerInodes
        let sink = self.sink
        return Task.detached {
            var delay = Duration.milliseconds(5)
            while !Task.isCancelled {
                if ProcInspector.isAccepting(pid: pid, listenerInodes: inodes) {
                    sink.yield(.detectedReady(id))
                    return
                }
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .milliseconds(100))
            }
        }
    }

    /// Stops processes a worker left behind: daemonised descendants that escaped its process group were
    /// re-parented to baton (a subreaper); each still carries the `BATON_GENERATION`, `BATON_WORKER` and (unless
    /// the app removed it) `LISTEN_PID` of the worker that started it, and goes once that worker is gone, even
    /// when a replacement now serves the same slot.
    private func stopOrphans(alsoGone gone: Set<Int32>) {
        var live: [String: Int32] = [:]
        for worker in supervisor.liveWorkers {
            guard let pid = worker.pid, !gone.contains(pid) else { continue }
            live["\(worker.generation).\(worker.slot)"] = pid
        }
        for pid in ProcInspector.ownChildren() where supervisor.worker(pid: pid) == nil {
            guard let identity = ProcInspector.batonWorkerIdentity(of: pid) else { continue }
            let owner = live["\(identity.generation).\(identity.slot)"]
            if let owner, identity.workerPID == nil || identity.workerPID == owner { continue }
            logger.warning(
                "stopping pid \(pid), left behind by worker \(identity.slot) of generation \(identity.generation) outside its process group",
                metadata: ["baton.generation": "\(identity.generation)", "baton.orphan.pid": "\(pid)"])
            Process.kill(-pid, Signals.kill)
            Process.kill(pid, Signals.kill)
        }
    }

    // MARK: - Re-execution in place

    /// Takes over the output and readiness pipes of the workers the previous binary started.
    private func adoptWorkers(_ resume: ResumeState) throws(SystemError) {
        for saved in resume.workers {
            let id = WorkerID(saved.worker)
            guard let worker = supervisor.worker(id) else { continue }
            let prefix = "\(configuration.name)[g\(worker.generation).w\(worker.slot)]: "
            let fields = [
                "SYSLOG_IDENTIFIER=\(configuration.name)", "BATON_INSTANCE=\(configuration.name)",
                "BATON_GENERATION=\(worker.generation)", "BATON_WORKER=\(worker.slot)",
            ]
            func pipe(_ fd: Int32?, stream: String, keep: Int) throws(SystemError) -> OutputPipe {
                let descriptor = FileDescriptor(rawValue: fd ?? -1)
                let destination: OutputPipe.Destination =
                    journal ? .journal(fields + ["BATON_STREAM=\(stream)"]) : stream == "stdout" ? .stdout(prefix) : .stderr(prefix)
                let output = OutputPipe(fd: descriptor, destination: destination, keep: keep, loop: loop)
                output.workerPID = worker.pid ?? 0
                if fd != nil {
                    try descriptor.setCloseOnExec()
                    try output.register()
                }
                return output
            }
            var workerIO = WorkerIO(stdout: try pipe(saved.stdout, stream: "stdout", keep: 0), stderr: try pipe(saved.stderr, stream: "stderr", keep: 20))
            if let fd = saved.notify {
                let descriptor = FileDescriptor(rawValue: fd)
                try descriptor.setCloseOnExec()
                let sink = self.sink
                let reader = NotifyPipe(fd: descriptor, loop: loop) { sink.yield(.workerMessage(id, $0)) }
                try reader.register()
                workerIO.notify = reader
            }
            io[id] = workerIO
        }
    }

    /// Replaces this process's program with the (upgraded) binary at ``executablePath``, keeping the pid, the
    /// listeners, the control socket and the running generation. If the new binary cannot be run, logs why and
    /// keeps running.
    private func reexecute() {
        reexecRequested = false
        let now = ContinuousClock.now
        guard let snapshot = supervisor.snapshot(now: now) else { return }
        let fail = { (why: String) in
            self.logger.error("cannot re-execute \(self.executablePath): \(why); the running baton carries on")
        }
        // The new binary must at least run.
        guard let version = probeVersion(executablePath) else {
            return fail("it does not run ('\(executablePath) --version' failed)")
        }
        let state = ResumeState(
            previousVersion: BatonVersion.current, supervisor: snapshot,
            listeners: listeners.map { .init(fd: $0.fd.rawValue, name: $0.name, address: $0.address) },
            control: controlSocket?.rawValue ?? -1, notify: notifySocket?.rawValue, notifyAddress: notifyAddress,
            workers: snapshot.workers.map { saved in
                let workerIO = io[WorkerID(saved.id)]
                return .init(
                    worker: saved.id, stdout: workerIO?.stdout.descriptor?.rawValue, stderr: workerIO?.stderr.descriptor?.rawValue,
                    notify: workerIO?.notify?.descriptor?.rawValue)
            })
        guard let encoded = state.encoded() else { return fail("cannot encode its state") }
        logger.notice("re-executing \(executablePath) (\(version)) in place, serving generation \(snapshot.serving)")
        let descriptors = state.descriptors
        for fd in descriptors { try? fd.setCloseOnExec(false) }
        let environment = Process.environment().filter { !$0.hasPrefix(ResumeState.variable + "=") } + [ResumeState.variable + "=" + encoded]
        let error = Process.execute(executablePath, arguments: CommandLine.arguments, environment: environment)
        for fd in descriptors { try? fd.setCloseOnExec() }
        fail("\(error)")
    }

    /// Runs `path --version` and returns what it printed, or nil if it did not run.
    private func probeVersion(_ path: String) -> String? {
        guard let pipe = try? FileDescriptor.closeOnExecPipe() else { return nil }
        defer { pipe.read.closeOnce() }
        let request = SpawnRequest(
            executable: path, arguments: [path, "--version"], environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            listeners: [], setListenPID: false, standardInput: devNull, standardOutput: pipe.write, standardError: devNull)
        let spawned = try? Spawner.spawn(request)
        pipe.write.closeOnce()
        guard spawned != nil else { return nil }
        let output = String(decoding: pipe.read.readToEnd(timeout: .seconds(5)), as: UTF8.self)
        let firstLine = output.split(separator: "\n").first.map(String.init) ?? ""
        return firstLine.isEmpty ? nil : firstLine
    }

    // MARK: - Status and teardown

    /// What `baton status` reports.
    public func statusReport() -> StatusReport {
        let now = ContinuousClock.now
        let wall = Process.wallClockSeconds()
        func wallTime(_ instant: ContinuousClock.Instant) -> Double {
            wall - Double((now - instant).milliseconds) / 1000
        }
        let generations = supervisor.orderedGenerations.map { generation in
            StatusReport.Generation(
                id: generation.id, state: generation.id == supervisor.serving ? "serving" : generation.state.rawValue,
                startedAt: wallTime(generation.startedAt), crashLooping: generation.crashLooping,
                workers: generation.workers.compactMap { supervisor.worker($0) }.map { worker in
                    StatusReport.Worker(
                        slot: worker.slot, pid: worker.pid, state: worker.state.rawValue,
                        uptimeSeconds: Double((now - worker.startedAt).milliseconds) / 1000, restarts: worker.restarts,
                        status: worker.status)
                })
        }
        let last = supervisor.lastReload.map {
            StatusReport.Reload(
                ok: $0.ok, generation: $0.generation, durationMilliseconds: $0.duration.milliseconds, reason: $0.reason,
                finishedAt: wallTime($0.finishedAt))
        }
        return StatusReport(
            name: configuration.name, pid: Process.id, version: BatonVersion.current,
            listeners: listeners.map { .init(name: $0.name, address: $0.address, fd: $0.fd.rawValue) },
            generations: generations, lastReload: last, reloading: supervisor.reload != nil)
    }

    private func cleanUp() {
        for pid in ProcInspector.ownChildren() where ProcInspector.batonWorkerIdentity(of: pid) != nil {
            Process.kill(-pid, Signals.kill)
            Process.kill(pid, Signals.kill)
        }
        for worker in supervisor.liveWorkers {
            if let pid = worker.pid {
                Process.kill(-pid, Signals.kill)
                Process.kill(pid, Signals.kill)
            }
        }
        for (_, timer) in timers { timer.task.cancel() }
        timers = [:]
        for (_, client) in requesters { client.send(.error("baton is exiting")); client.close() }
        requesters = [:]
        if controlSocket != nil { Process.removeFile(configuration.controlPath) }
        Systemd.notify("STATUS=stopped")
        sink.finish()
    }
}

/// A thread-safe counter.
final class Counter: Sendable {
    private let value = Locked(0)
    func next() -> Int { value.withLock { $0 += 1; return $0 } }
}
