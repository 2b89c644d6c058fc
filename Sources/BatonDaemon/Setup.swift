import BatonCore
import BatonSystem
import Logging
import SystemPackage

/// The launcher's sources of events: signals, the notify socket, systemd's watchdog and the control socket, each an
/// fd of the event loop whose handler yields into the launcher's stream.
extension Launcher {
    func setUpSignals() throws(SystemError) {
        let fd = try Signals.descriptor(for: Signals.handledByRun)
        let sink = self.sink
        // Children are reaped by the actor, not here: a child reaped but not yet handled would be lost if baton
        // re-executed itself in between.
        let descriptor = fd.descriptor
        try loop.register(descriptor) {
            for signal in Signals.drain(descriptor) { sink.yield(.signal(signal)) }
        }
        _ = fd.release()  // watched for baton's whole life
        // Children that ended before the signalfd existed (or before a re-exec).
        sink.yield(.signal(Signals.child))
    }

    /// Pings systemd's watchdog at half its interval from a timerfd of the event loop, through the actor: a stuck
    /// loop or a stuck actor stops the pings, and systemd restarts baton.
    func setUpWatchdog() throws(SystemError) {
        guard let usec = Systemd.watchdogMicroseconds(), usec > 0 else { return }
        let interval = Duration.microseconds(Int64(clamping: usec / 2))
        let fd = try PeriodicTimer.descriptor(every: interval)
        let sink = self.sink
        let descriptor = fd.descriptor
        try loop.register(descriptor) {
            if PeriodicTimer.acknowledge(descriptor) > 0 { sink.yield(.watchdogTick) }
        }
        _ = fd.release()
        logger.info("pinging the service manager's watchdog every \(interval.shortDescription)")
    }

    /// The notify socket for `--ready notify`: a new one, or the one a re-executed launcher kept.
    static func notifySocket(
        _ configuration: LaunchConfiguration,
        resume: ResumeState?
    ) throws(SystemError) -> (fd: FileDescriptor, address: String)? {
        guard configuration.readyMode == .notify else { return nil }
        if let fd = resume?.notify, let address = resume?.notifyAddress {
            let descriptor = FileDescriptor(rawValue: fd)
            try descriptor.setCloseOnExec()
            return (descriptor, address)
        }
        let address = "@baton/\(OS.id)/\(configuration.name)/notify"
        return (try Sockets.notifySocket(path: address).release(), address)
    }

    func setUpNotifications() throws(SystemError) {
        guard let fd = notify?.fd else { return }
        let sink = self.sink
        var uids: Set<UInt32> = [OS.userID]
        if let user = configuration.workerUser { uids.insert(user.uid) }
        let receiver = NotifyReceiver(fd: fd, inbox: inbox, workerUIDs: uids, logger: logger)
        try receiver.start(on: loop) { pid, message in sink.yield(.notifyMessage(pid: pid, message)) }
    }

    func setUpControlSocket() throws(BatonError) {
        let path = configuration.controlPath
        let socket: OwnedDescriptor
        if let resume {
            socket = OwnedDescriptor(FileDescriptor(rawValue: resume.control))
        } else {
            do throws(SystemError) {
                if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
                    try OS.makeDirectory(String(path[..<slash]))
                }
            } catch {
                throw BatonError(.control, "control socket \(path)", underlying: error)
            }
            do throws(BindError) {
                socket = try Sockets.listenUnix(path: path, mode: 0o600, backlog: 64)
            } catch {
                throw BatonError(.control, "control socket \(path)", underlying: error)
            }
        }
        // The file this launcher serves: at exit it removes that file, and no other put at the path since.
        controlFile = Sockets.fileIdentity(path)
        do throws(SystemError) {
            let server = try ControlServer(socket, loop: loop)
            control = server
            let sink = self.sink
            try server.start { client, request in sink.yield(.controlRequest(client, request)) }
        } catch {
            throw BatonError(.control, "control socket \(path)", underlying: error)
        }
    }
}
