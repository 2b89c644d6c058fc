import BatonCore
import BatonSystem
import SystemPackage

/// Health probes (`--health`): each worker's own probe socket, and the probes run through it.
///
/// Every worker gets a TCP listener on 127.0.0.1 at a port of its own, passed as the last fd of `LISTEN_FDS` and named
/// `health` in `LISTEN_FDNAMES`, its address in `BATON_HEALTH_ADDRESS`. A server that serves every socket it is passed
/// (gunicorn, Go's `activation.Listeners()`, the Node example) answers probes there with no change, and a probe reaches
/// that worker, never a sibling the kernel picked on the shared listener. baton holds the socket close-on-exec and
/// closes it when the worker is gone.
///
/// The Supervisor decides when a probe runs and what its result means; this runs it without blocking anyone: `http`
/// and `tcp` probes are non-blocking sockets driven by the event loop, with a timerfd for the timeout; `exec` probes
/// are spawned like workers and killed at the timeout. One probe at most per worker is in flight (the Supervisor's
/// rule); each ends with one ``DaemonEvent/probed(_:ok:detail:)``.
final class HealthChecks: Sendable {
    let settings: HealthSettings
    let loop: EventLoop
    let sink: AsyncStream<DaemonEvent>.Continuation
    /// The environment exec probes start from (the workers' base environment).
    let baseEnvironment: [String]
    let standardInput: FileDescriptor
    let user: LaunchConfiguration.WorkerUser?

    struct ProbeSocket: Sendable {
        var fd: FileDescriptor
        var address: String
        var port: UInt16
        var generation: Int
    }

    struct ExecProbe: Sendable {
        var worker: WorkerID
        var output: FileDescriptor
        var deadline: EventLoop.Timer
        var timedOut: Bool
    }

    private struct State: Sendable {
        var sockets: [WorkerID: ProbeSocket] = [:]
        var execs: [Int32: ExecProbe] = [:]
    }

    private let state = Locked(State())

    init(
        settings: HealthSettings,
        loop: EventLoop,
        sink: AsyncStream<DaemonEvent>.Continuation,
        baseEnvironment: [String],
        standardInput: FileDescriptor,
        user: LaunchConfiguration.WorkerUser?
    ) {
        self.settings = settings
        self.loop = loop
        self.sink = sink
        self.baseEnvironment = baseEnvironment
        self.standardInput = standardInput
        self.user = user
    }

    // MARK: - Probe sockets

    /// Opens worker `id`'s probe socket: the fd to pass it and its address.
    func openSocket(for id: WorkerID, generation: Int) throws(SystemError) -> (fd: FileDescriptor, address: String) {
        let opened: (fd: FileDescriptor, address: String, port: UInt16)
        do {
            opened = try ProbeSockets.listen()
        } catch {
            if case .system(let cause) = error.reason { throw cause }
            throw SystemError("bind(127.0.0.1:0)", .addressNotAvailable)
        }
        let entry = ProbeSocket(fd: opened.fd, address: opened.address, port: opened.port, generation: generation)
        state.withLock { $0.sockets[id] = entry }
        return (opened.fd, opened.address)
    }

    /// Worker `id`'s probe socket, while it has one.
    func socket(of id: WorkerID) -> ProbeSocket? { state.withLock { $0.sockets[id] } }

    /// Takes over the probe socket of a worker the previous binary started (after a re-execution in place).
    func adopt(_ id: WorkerID, fd raw: Int32, address: String, generation: Int) throws(SystemError) {
        let fd = FileDescriptor(rawValue: raw)
        try fd.setCloseOnExec()
        let port = UInt16(address.split(separator: ":").last ?? "") ?? 0
        state.withLock { $0.sockets[id] = ProbeSocket(fd: fd, address: address, port: port, generation: generation) }
    }

    /// Worker `id` is gone (or never started): its probe socket closes. A probe in flight ends by itself (refused, or
    /// at its timeout) and the Supervisor ignores what it says.
    func workerGone(_ id: WorkerID) {
        state.withLock { $0.sockets.removeValue(forKey: id) }?.fd.closeOnce()
    }

    /// Reports a probe's result to the launcher.
    func report(_ id: WorkerID, ok: Bool, _ detail: String) {
        sink.yield(.probed(id, ok: ok, detail: detail))
    }

    /// The inodes of the probe sockets: a worker listening there listens on baton's socket, not one of its own.
    func socketInodes() -> Set<UInt64> {
        state.withLock { state in
            Set(
                state.sockets.values.compactMap { try? ListeningSocket(fd: $0.fd, name: "health", address: "").inode() }
            )
        }
    }

    /// Whether `pid` is an exec probe's process (not a worker's leftover).
    func owns(_ pid: Int32) -> Bool { state.withLock { $0.execs[pid] != nil } }

    /// Connections waiting to be accepted on `id`'s probe socket (nil: gone).
    func queued(_ id: WorkerID) -> Int? {
        state.withLock { state in
            state.sockets[id].flatMap {
                ListeningSocket(fd: $0.fd, name: "health", address: $0.address).condition().queued
            }
        }
    }

    // MARK: - Probes

    /// Starts one probe of worker `id` (process `pid`); its result comes back as ``DaemonEvent/probed(_:ok:detail:)``.
    func probe(_ id: WorkerID, pid: Int32) {
        let name = "probe \(settings.probe.shortDescription)"
        guard let socket = state.withLock({ $0.sockets[id] }) else {
            return report(id, ok: false, "\(name): the worker has no health socket")
        }
        switch settings.probe {
        case .http, .tcp:
            ProbeConnection.start(id, socket: socket, checks: self)
        case .exec(let command):
            startExec(id, pid: pid, socket: socket, command: command)
        }
    }

    private func startExec(_ id: WorkerID, pid: Int32, socket: ProbeSocket, command: String) {
        let name = "probe \(settings.probe.shortDescription)"
        do throws(SystemError) {
            let output = try OwnedPipe(nonBlockingRead: true)
            var environment = baseEnvironment
            environment.append("BATON_WORKER_PID=\(pid)")
            environment.append("BATON_GENERATION=\(socket.generation)")
            environment.append("BATON_HEALTH_ADDRESS=\(socket.address)")
            var request = SpawnRequest(
                executable: "/bin/sh",
                arguments: ["sh", "-c", command],
                environment: environment,
                listeners: [],
                setListenPID: false,
                standardInput: standardInput,
                standardOutput: output.write.descriptor,
                standardError: output.write.descriptor,
                userID: user?.uid,
                groupID: user?.gid
            )
            request.groups = user?.groups ?? []
            let child: Int32
            do {
                child = try Spawner.spawn(request)
            } catch {
                return report(id, ok: false, "\(name): \(error)")
            }
            let timeout = settings.timeout
            let deadline = loop.schedule(after: timeout) { [weak self] in
                self?.state.withLock { $0.execs[child]?.timedOut = true }
                _ = OS.kill(-child, Signals.kill)
                _ = OS.kill(child, Signals.kill)
            }
            let read = output.read.release()
            state.withLock {
                $0.execs[child] = ExecProbe(worker: id, output: read, deadline: deadline, timedOut: false)
            }
        } catch {
            sink.yield(.probed(id, ok: false, detail: "\(name): cannot start it: \(error)"))
        }
    }

    /// An exec probe's process ended (`pid`, reaped by the launcher): its result. Returns false for any other pid.
    func execExited(_ pid: Int32, reason: ExitReason) -> Bool {
        guard let probe = state.withLock({ $0.execs.removeValue(forKey: pid) }) else { return false }
        loop.cancel(probe.deadline)
        // What it left in its process group goes with it.
        _ = OS.kill(-pid, Signals.kill)
        var bytes: [UInt8] = []
        while bytes.count < 65536, case .processed(let chunk)? = try? probe.output.readAvailable(), !chunk.isEmpty {
            bytes += chunk
        }
        probe.output.closeOnce()
        let name = "probe \(settings.probe.shortDescription)"
        let said = String(decoding: bytes, as: UTF8.self).split(whereSeparator: \.isNewline).last.map {
            ": " + TerminalText.sanitized(String($0.prefix(200)))
        }
        if probe.timedOut {
            sink.yield(
                .probed(
                    probe.worker,
                    ok: false,
                    detail: "\(name) did not finish within \(settings.timeout.shortDescription) (killed)"
                )
            )
        } else if reason.isClean {
            sink.yield(.probed(probe.worker, ok: true, detail: "\(name) passed"))
        } else {
            sink.yield(.probed(probe.worker, ok: false, detail: "\(name) failed with \(reason)\(said ?? "")"))
        }
        return true
    }
}

/// One `http` or `tcp` probe: a non-blocking connect to a worker's probe socket, driven by the event loop, with a
/// timerfd for the timeout. Its handlers run on the loop's thread, one at a time; it closes its fds there.
final class ProbeConnection: Sendable {
    private enum Phase: Sendable {
        case connecting
        /// http: the request is sent; the answer arrives.
        case receiving([UInt8])
        /// tcp: connected; waiting for the worker to accept the connection.
        case waitingForAccept
        case done
    }

    let id: WorkerID
    let socket: FileDescriptor
    let timer: FileDescriptor
    let address: String
    let deadline: ContinuousClock.Instant
    let checks: HealthChecks
    private let phase = Locked(Phase.connecting)
    /// Until ``start(_:socket:checks:)`` has set everything up, a result that is already known waits here, and the fds
    /// stay open: the actor's thread is still arming the timer and watching the socket.
    private let setUp = Locked<(complete: Bool, result: (ok: Bool, detail: String)?)>((false, nil))

    private init(
        id: WorkerID,
        socket: FileDescriptor,
        timer: FileDescriptor,
        address: String,
        deadline: ContinuousClock.Instant,
        checks: HealthChecks
    ) {
        self.id = id
        self.socket = socket
        self.timer = timer
        self.address = address
        self.deadline = deadline
        self.checks = checks
    }

    private var name: String { "probe \(checks.settings.probe.shortDescription)" }

    static func start(_ id: WorkerID, socket target: HealthChecks.ProbeSocket, checks: HealthChecks) {
        let name = "probe \(checks.settings.probe.shortDescription)"
        let connection: (fd: FileDescriptor, connected: Bool)
        let timer: FileDescriptor
        do throws(SystemError) {
            connection = try ProbeSockets.connect(port: target.port)
            do {
                timer = try PeriodicTimer.disarmed().release()
            } catch {
                connection.fd.closeOnce()
                throw error
            }
        } catch {
            let what = error.errno == .connectionRefused ? "connection refused" : "\(error)"
            return checks.report(id, ok: false, "\(name): \(what) on health socket \(target.address)")
        }
        let probe = ProbeConnection(
            id: id,
            socket: connection.fd,
            timer: timer,
            address: target.address,
            deadline: .now + checks.settings.timeout,
            checks: checks
        )
        do throws(SystemError) {
            try checks.loop.register(probe.timer) { probe.timerFired() }
            do {
                try checks.loop.register(probe.socket) { probe.socketReady() }
            } catch {
                checks.loop.unregister(probe.timer)
                throw error
            }
        } catch {
            probe.socket.closeOnce()
            probe.timer.closeOnce()
            return checks.report(id, ok: false, "\(name): cannot watch its socket: \(error)")
        }
        ProbeSockets.arm(probe.timer, after: checks.settings.timeout)
        // Connected at once or not, the loop says when it can go on: writable once connected (or failed).
        checks.loop.watchWritable(probe.socket, true)
        let early = probe.setUp.withLock { state in
            state.complete = true
            return state.result
        }
        if let early { probe.close(early.ok, early.detail) }
    }

    /// The socket is writable (connected, or the connect failed), readable, or hung up.
    private func socketReady() {
        switch phase.withLock({ $0 }) {
        case .connecting:
            if let error = ProbeSockets.connectResult(socket) {
                let what = error == .connectionRefused ? "connection refused" : error.description
                return finish(false, "\(name): \(what) on health socket \(address)")
            }
            checks.loop.watchWritable(socket, false)
            switch checks.settings.probe {
            case .http(let path):
                let request = Array(
                    "GET \(path) HTTP/1.1\r\nHost: \(address)\r\nUser-Agent: baton-health\r\nConnection: close\r\n\r\n"
                        .utf8
                )
                // A request this small fits in a fresh socket's buffer at once.
                guard (try? ProbeSockets.send(socket, request[...])) == request.count else {
                    return finish(false, "\(name): cannot send the request on health socket \(address)")
                }
                phase.withLock { $0 = .receiving([]) }
            case .tcp:
                phase.withLock { $0 = .waitingForAccept }
                ProbeSockets.arm(timer, after: .milliseconds(5), every: .milliseconds(5))
            case .exec:
                finish(false, "\(name): not a socket probe")
            }
        case .receiving(let received):
            var bytes = received
            switch try? socket.readAvailable(upTo: 4096) {
            case .wouldBlock?: return
            case .processed(let chunk)? where !chunk.isEmpty:
                bytes += chunk
            case .processed?:
                return finish(
                    false,
                    answer(bytes)
                        ?? "\(name): the worker closed the connection without an answer on health socket \(address)"
                )
            case nil:
                return finish(false, answer(bytes) ?? "\(name): connection reset on health socket \(address)")
            }
            if let verdict = verdict(bytes) { return finish(verdict.ok, verdict.detail) }
            guard bytes.count < 8192 else {
                return finish(false, "\(name): not an HTTP answer on health socket \(address)")
            }
            phase.withLock { $0 = .receiving(bytes) }
        case .waitingForAccept:
            // tcp: the worker may close what it accepted; the timer looks at the queue.
            _ = try? socket.readAvailable(upTo: 4096)
        case .done:
            // Its fds may be closed already (a handler the loop looked up before they were unregistered).
            return
        }
    }

    /// The status line's verdict, once it has arrived.
    private func verdict(_ bytes: [UInt8]) -> (ok: Bool, detail: String)? {
        guard let newline = bytes.firstIndex(of: 0x0a) else { return nil }
        let line = String(decoding: bytes[..<newline], as: UTF8.self)
        let parts = line.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let code = Int(parts[1]), (100...999).contains(code) else {
            return (false, "\(name): not an HTTP answer on health socket \(address)")
        }
        return ((200...399).contains(code), "\(name) got \(code)")
    }

    private func answer(_ bytes: [UInt8]) -> String? {
        verdict(bytes).map(\.detail)
    }

    private func timerFired() {
        let current = phase.withLock { $0 }
        if case .done = current { return }
        _ = PeriodicTimer.acknowledge(timer)
        if case .waitingForAccept = current, let queued = checks.queued(id), queued == 0 {
            return finish(true, "\(name) passed: the worker accepted a connection on health socket \(address)")
        }
        guard ContinuousClock.now >= deadline else { return }
        let limit = checks.settings.timeout.shortDescription
        switch current {
        case .connecting:
            finish(false, "\(name): timed out after \(limit) connecting to health socket \(address)")
        case .receiving:
            finish(
                false,
                "\(name): no answer within \(limit) on health socket \(address) (does the app serve the listener named health?)"
            )
        case .waitingForAccept:
            finish(false, "\(name): the worker did not accept a connection on health socket \(address) within \(limit)")
        case .done:
            break
        }
    }

    /// Ends the probe, once: its result is reported and its fds closed, now or (while ``start(_:socket:checks:)`` is
    /// still setting it up) as soon as that is done.
    private func finish(_ ok: Bool, _ detail: String) {
        let first = phase.withLock { phase in
            if case .done = phase { return false }
            phase = .done
            return true
        }
        guard first else { return }
        let now = setUp.withLock { state in
            if !state.complete { state.result = (ok, detail) }
            return state.complete
        }
        if now { close(ok, detail) }
    }

    /// Unregisters and closes the fds, and reports the result. A handler the loop looked up just before sees `.done`
    /// and touches nothing.
    private func close(_ ok: Bool, _ detail: String) {
        checks.loop.unregister(socket)
        checks.loop.unregister(timer)
        socket.closeOnce()
        timer.closeOnce()
        checks.sink.yield(.probed(id, ok: ok, detail: detail))
    }
}

extension HealthChecks {
    /// The launcher's probes, with `--health`; nil without.
    convenience init?(
        _ configuration: LaunchConfiguration,
        loop: EventLoop,
        sink: AsyncStream<DaemonEvent>.Continuation,
        environment: [String],
        devNull: borrowing OwnedDescriptor
    ) {
        guard let settings = configuration.supervisor.health else { return nil }
        self.init(
            settings: settings,
            loop: loop,
            sink: sink,
            baseEnvironment: LaunchConfiguration.workerBaseEnvironment(environment),
            standardInput: devNull.descriptor,
            user: configuration.workerUser
        )
    }
}
