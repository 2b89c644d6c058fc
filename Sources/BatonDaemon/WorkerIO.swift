import BatonCore
import BatonSystem
import SystemPackage

/// A worker whose spawn has started (``WorkerStarter/begin(_:generation:slot:events:)``): its I/O, and the write ends
/// the child takes, which stay open in baton until the spawn is over.
final class StartingWorker {
    let id: WorkerID
    let io: WorkerIO
    let spawn: PendingSpawn
    let sink: AsyncStream<DaemonEvent>.Continuation
    private var standardOutput: OwnedDescriptor?
    private var standardError: OwnedDescriptor?
    private var notifyWrite: OwnedDescriptor?

    init(
        id: WorkerID,
        io: WorkerIO,
        spawn: PendingSpawn,
        sink: AsyncStream<DaemonEvent>.Continuation,
        standardOutput: consuming OwnedDescriptor,
        standardError: consuming OwnedDescriptor,
        notifyWrite: consuming OwnedDescriptor?
    ) {
        self.id = id
        self.io = io
        self.spawn = spawn
        self.sink = sink
        self.standardOutput = .some(standardOutput)
        self.standardError = .some(standardError)
        self.notifyWrite = notifyWrite
    }

    /// Closes baton's copies of the worker's output and notify pipes' write ends, once the child has its own.
    func closeWriteEnds() {
        standardOutput.take()?.close()
        standardError.take()?.close()
        notifyWrite.take()?.close()
    }
}

/// How a worker's output is labelled: the prefix of its lines on baton's own streams and its journal fields, built
/// once per worker.
struct WorkerLabel: Sendable {
    /// `NAME[gGEN.wSLOT]: `
    let prefix: String
    /// `SYSLOG_IDENTIFIER=`, `BATON_INSTANCE=`, `BATON_GENERATION=`, `BATON_WORKER=`.
    let fields: [String]

    init(name: String, generation: Int, slot: Int) {
        prefix = "\(name)[g\(generation).w\(slot)]: "
        fields = [
            "SYSLOG_IDENTIFIER=\(name)", "BATON_INSTANCE=\(name)", "BATON_GENERATION=\(generation)",
            "BATON_WORKER=\(slot)",
        ]
    }

    func destination(stderr: Bool, journal: Bool) -> OutputPipe.Destination {
        if journal { return .journal(fields + ["BATON_STREAM=\(stderr ? "stderr" : "stdout")"]) }
        return stderr ? .stderr(prefix) : .stdout(prefix)
    }
}

/// One of a worker's output pipes (stdout or stderr): forwarded line by line, and the last lines kept for error
/// reports.
final class OutputPipe: Sendable {
    /// Where the lines go.
    enum Destination: Sendable {
        /// To baton's stdout or stderr, with the prefix (`NAME[gGEN.wSLOT]: `) in front.
        case stdout(String)
        case stderr(String)
        /// To the journal, one entry per line with these fields (`BATON_GENERATION=` and the like).
        case journal([String])
    }

    /// How many of the last lines a stderr pipe keeps for a failure report.
    static let tailLines = 20

    let destination: Destination
    let keep: Int
    private let reader: LineReader
    private let state = Locked<(tail: [String], pid: Int32)>(([], 0))

    /// Takes ownership of the pipe's read end.
    init(_ fd: consuming OwnedDescriptor, destination: Destination, keep: Int, loop: EventLoop) {
        self.destination = destination
        self.keep = keep
        reader = LineReader(fd, maximumLineLength: 8192, loop: loop)
    }

    /// The read end, while open.
    var descriptor: FileDescriptor? { reader.descriptor }

    /// The worker's pid, for the journal's `BATON_WORKER_PID=`.
    var workerPID: Int32 {
        get { state.withLock { $0.pid } }
        set { state.withLock { $0.pid = newValue } }
    }

    func start() throws(SystemError) {
        try reader.start { [self] chunk in forward(chunk.lines) }
    }

    func close() { reader.close() }

    /// The last lines, after reading what is left in the pipe (at most 1 MiB more: a descendant may still be
    /// writing to it).
    func tail() -> [String] {
        forward(reader.read(limit: 1 << 20).lines)
        return state.withLock { $0.tail }
    }

    private func forward(_ lines: [[UInt8]]) {
        guard !lines.isEmpty else { return }
        let pid = state.withLock { state in
            for line in lines.suffix(keep) {
                state.tail.append(String(decoding: line, as: UTF8.self))
            }
            if state.tail.count > keep { state.tail.removeFirst(state.tail.count - keep) }
            return state.pid
        }
        switch destination {
        case .stdout(let prefix), .stderr(let prefix):
            // On a terminal, a worker's control characters are shown escaped: its output must not drive the
            // terminal (retitle it, clear it, forge baton's own lines). To a pipe or file the lines go as written.
            let terminal =
                if case .stderr = destination { StandardStreams.stderrIsTerminal() } else {
                    StandardStreams.stdoutIsTerminal()
                }
            var text = ""
            for line in lines {
                let decoded = String(decoding: line, as: UTF8.self)
                text += prefix + (terminal ? TerminalText.sanitized(decoded) : decoded) + "\n"
            }
            OutputWriter.shared.write(
                text,
                to: { if case .stderr = destination { 2 } else { 1 } }(),
                lines: lines.count
            )
        case .journal(let fields):
            for line in lines {
                OutputWriter.shared.journal(
                    ["MESSAGE=" + String(decoding: line, as: UTF8.self), "PRIORITY=6", "BATON_WORKER_PID=\(pid)"]
                        + fields
                )
            }
        }
    }
}

/// The read end of a worker's `BATON_NOTIFY_FD` pipe: `KEY=VALUE` lines become notify messages.
final class NotifyPipe: Sendable {
    private let reader: LineReader

    /// Takes ownership of the pipe's read end.
    init(_ fd: consuming OwnedDescriptor, loop: EventLoop) {
        reader = LineReader(fd, maximumLineLength: NotifyMessage.maximumSize, budget: 16 * 1024, loop: loop)
    }

    /// The read end, while open.
    var descriptor: FileDescriptor? { reader.descriptor }

    func start(_ deliver: @escaping @Sendable (NotifyMessage) -> Void) throws(SystemError) {
        try reader.start { chunk in
            for line in chunk.lines {
                if let message = NotifyMessage(parsing: line) { deliver(message) }
            }
        }
    }

    func close() { reader.close() }
}

/// A running worker's pipes and readiness watch.
struct WorkerIO: Sendable {
    var stdout: OutputPipe
    var stderr: OutputPipe
    var notify: NotifyPipe?
    /// The `--ready listen` watch, and the worker it watches.
    var readiness: (watch: ReadinessWatch, worker: WorkerID)?

    /// Stops watching, after forwarding what is left; returns the stderr tail.
    func finish() -> [String] {
        readiness.map { $0.watch.stop($0.worker) }
        _ = stdout.tail()
        let tail = stderr.tail()
        stdout.close()
        stderr.close()
        notify?.close()
        return tail
    }
}

/// Starts workers: builds each one's environment and pipes, spawns it, and wires its output and readiness to the
/// event loop. What happened comes back as the events the Supervisor is to hear, in order.
struct WorkerStarter: Sendable {
    let configuration: LaunchConfiguration
    let listeners: [ListeningSocket]
    let listenerInodes: Set<UInt64>
    let executable: String
    let baseEnvironment: [String]
    let notifyAddress: String?
    let standardInput: FileDescriptor
    /// Worker output goes to the journal as structured entries instead of baton's stdout and stderr.
    let journal: Bool
    let inbox: NotifyInbox
    let loop: EventLoop
    /// Probe sockets (`--health`): each worker gets one more listener, its own, named `health`.
    var health: HealthChecks? = nil
    /// The `--ready listen` checks (nil in another mode).
    var readiness: ReadinessWatch? = nil

    /// The environment of worker `slot` of `generation` (`LISTEN_PID` is filled in by the child), with the address of
    /// its probe socket, if it has one (the last listener).
    func environment(generation: Int, slot: Int, healthAddress: String? = nil) -> [String] {
        var environment = baseEnvironment
        let names = listeners.map(\.name) + (healthAddress == nil ? [] : [HealthProbe.healthListenerName])
        environment.append("LISTEN_FDS=\(names.count)")
        environment.append("LISTEN_FDNAMES=\(names.joined(separator: ":"))")
        if let healthAddress { environment.append("BATON_HEALTH_ADDRESS=\(healthAddress)") }
        environment.append("BATON_GENERATION=\(generation)")
        environment.append("BATON_WORKER=\(slot)")
        environment = BindAdoption.workerEnvironment(environment, configuration: configuration)
        if let watchdog = configuration.supervisor.workerWatchdog {
            environment.append("WATCHDOG_USEC=\(watchdog.microseconds)")
        }
        switch configuration.readyMode {
        case .notify:
            if let notifyAddress { environment.append("NOTIFY_SOCKET=\(notifyAddress)") }
        case .fd:
            environment.append("BATON_NOTIFY_FD=\(3 + names.count)")
        case .listen, .exec:
            break
        }
        return environment
    }

    /// What ``begin(_:generation:slot:events:)`` did: failed at once, or started a spawn to ``finish(_:)``.
    enum Begun {
        case done(WorkerID, io: WorkerIO?, events: [SupervisorEvent])
        case starting(StartingWorker)

        var id: WorkerID {
            switch self {
            case .done(let id, _, _): id
            case .starting(let starting): starting.id
            }
        }
    }

    /// Sets worker `id` up and starts its spawn on a thread of its own (``Spawner/start(_:)``), so that the spawns of
    /// a generation do not wait for each other's exec; ``finish(_:)`` waits for it. Every fd made on the way is owned,
    /// so each failure path closes them all.
    func begin(
        _ id: WorkerID,
        generation: Int,
        slot: Int,
        events sink: AsyncStream<DaemonEvent>.Continuation
    ) -> Begun {
        do throws(SystemError) {
            return try beginWithPipes(id, generation: generation, slot: slot, events: sink)
        } catch {
            health?.workerGone(id)
            return .done(id, io: nil, events: [.spawnFailed(id, reason: "cannot set up the worker: \(error)")])
        }
    }

    private func beginWithPipes(
        _ id: WorkerID,
        generation: Int,
        slot: Int,
        events sink: AsyncStream<DaemonEvent>.Continuation
    ) throws(SystemError) -> Begun {
        let label = WorkerLabel(name: configuration.name, generation: generation, slot: slot)
        let output = try OwnedPipe(nonBlockingRead: true)
        let errors = try OwnedPipe(nonBlockingRead: true)
        var notifyRead: OwnedDescriptor?
        var notifyWrite: OwnedDescriptor?
        if configuration.readyMode == .fd {
            let pipe = try OwnedPipe(nonBlockingRead: true)
            notifyRead = .some(pipe.read)
            notifyWrite = .some(pipe.write)
        }
        let standardOutput = output.write
        let standardError = errors.write
        let stdoutPipe = OutputPipe(
            output.read,
            destination: label.destination(stderr: false, journal: journal),
            keep: 0,
            loop: loop
        )
        let stderrPipe = OutputPipe(
            errors.read,
            destination: label.destination(stderr: true, journal: journal),
            keep: OutputPipe.tailLines,
            loop: loop
        )
        var notifyPipe: NotifyPipe?
        if let read = notifyRead.take() { notifyPipe = NotifyPipe(read, loop: loop) }
        let io = WorkerIO(stdout: stdoutPipe, stderr: stderrPipe, notify: notifyPipe)
        do throws(SystemError) {
            try stdoutPipe.start()
            try stderrPipe.start()
            try notifyPipe?.start { [inbox] in if inbox.admit($0) { sink.yield(.workerMessage(id, $0)) } }
        } catch {
            _ = io.finish()
            throw error
        }

        let probeSocket: (fd: FileDescriptor, address: String)?
        do throws(SystemError) {
            probeSocket = try health?.openSocket(for: id, generation: generation)
        } catch {
            _ = io.finish()
            throw error
        }
        var request = SpawnRequest(
            executable: executable,
            arguments: configuration.command,
            environment: environment(generation: generation, slot: slot, healthAddress: probeSocket?.address),
            listeners: listeners.map(\.fd) + (probeSocket.map { [$0.fd] } ?? []),
            extra: notifyWrite?.descriptor,
            standardInput: standardInput,
            standardOutput: standardOutput.descriptor,
            standardError: standardError.descriptor,
            userID: configuration.workerUser?.uid,
            groupID: configuration.workerUser?.gid
        )
        request.groups = configuration.workerUser?.groups ?? []
        return .starting(
            StartingWorker(
                id: id,
                io: io,
                spawn: Spawner.start(request),
                sink: sink,
                standardOutput: standardOutput,
                standardError: standardError,
                notifyWrite: notifyWrite.take()
            )
        )
    }

    /// Waits for a spawn ``begin(_:generation:slot:events:)`` started; returns the worker's I/O and what happened.
    func finish(_ begun: Begun) -> (io: WorkerIO?, events: [SupervisorEvent]) {
        let starting: StartingWorker
        switch begun {
        case .done(_, let io, let events): return (io, events)
        case .starting(let started): starting = started
        }
        let id = starting.id
        let outcome = starting.spawn.wait()
        // The write ends (standardOutput, standardError, notifyWrite) close now: only the worker keeps them.
        starting.closeWriteEnds()
        let pid: Int32
        switch outcome {
        case .success(let spawned): pid = spawned
        case .failure(let error):
            _ = starting.io.finish()
            health?.workerGone(id)
            return (nil, [.spawnFailed(id, reason: error.description)])
        }
        starting.io.stdout.workerPID = pid
        starting.io.stderr.workerPID = pid
        var started = starting.io
        switch configuration.readyMode {
        case .listen:
            if let readiness {
                readiness.watch(id, pid: pid)
                started.readiness = (readiness, id)
            }
            return (started, [.spawned(id, pid: pid)])
        case .exec:
            return (started, [.spawned(id, pid: pid), .ready(id)])
        case .notify, .fd:
            return (started, [.spawned(id, pid: pid)])
        }
    }

    /// Takes over the pipes of a worker that the previous binary started (after a re-execution in place).
    func adopt(
        _ id: WorkerID,
        generation: Int,
        slot: Int,
        pid: Int32?,
        stdout: Int32?,
        stderr: Int32?,
        notify: Int32?,
        events sink: AsyncStream<DaemonEvent>.Continuation
    ) throws(SystemError) -> WorkerIO {
        let label = WorkerLabel(name: configuration.name, generation: generation, slot: slot)
        func pipe(_ fd: Int32?, stderr: Bool) throws(SystemError) -> OutputPipe {
            let descriptor = OwnedDescriptor(FileDescriptor(rawValue: fd ?? -1))
            if fd != nil { try descriptor.descriptor.setCloseOnExec() }
            let output = OutputPipe(
                descriptor,
                destination: label.destination(stderr: stderr, journal: journal),
                keep: stderr ? OutputPipe.tailLines : 0,
                loop: loop
            )
            output.workerPID = pid ?? 0
            if fd != nil { try output.start() }
            return output
        }
        var io = WorkerIO(stdout: try pipe(stdout, stderr: false), stderr: try pipe(stderr, stderr: true))
        if let notify {
            let descriptor = OwnedDescriptor(FileDescriptor(rawValue: notify))
            try descriptor.descriptor.setCloseOnExec()
            let reader = NotifyPipe(descriptor, loop: loop)
            try reader.start { [inbox] in if inbox.admit($0) { sink.yield(.workerMessage(id, $0)) } }
            io.notify = reader
        }
        return io
    }
}
