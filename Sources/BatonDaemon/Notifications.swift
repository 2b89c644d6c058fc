import BatonCore
import BatonSystem
import Logging
import SystemPackage

/// Notify messages on their way from the event loop to the launcher, bounded: a worker (or anyone who may write to
/// the notify socket) flooding it costs a counter, not memory.
///
/// At most ``limit`` messages are queued at once; past ``statusLimit``, messages that carry nothing but `STATUS=` are
/// dropped first, since only the last status counts.
final class NotifyInbox: Sendable {
    static let limit = 1024
    static let statusLimit = 128
    /// Datagrams read per wake-up of the loop, so that a flood cannot starve the loop's other fds.
    static let datagramsPerWakeUp = 64

    private let state = Locked<(queued: Int, dropped: Int)>((0, 0))

    /// Whether `message` may be queued now; counts it if so, and counts it as dropped if not.
    func admit(_ message: NotifyMessage) -> Bool {
        state.withLock { state in
            let statusOnly = !message.ready && !message.watchdog && message.watchdogInterval == nil && !message.stopping
            let limit = statusOnly ? Self.statusLimit : Self.limit
            guard state.queued < limit else {
                state.dropped += 1
                return false
            }
            state.queued += 1
            return true
        }
    }

    /// A queued message has been handled.
    func handled() {
        state.withLock { $0.queued = max(0, $0.queued - 1) }
    }

    /// How many messages were dropped since the last call.
    func takeDropped() -> Int {
        state.withLock { state in
            defer { state.dropped = 0 }
            return state.dropped
        }
    }
}

/// Reads the notify socket on the event loop: datagrams from users that cannot be a worker's are dropped there, as
/// cheaply as possible and with rate-limited log lines; the rest go to the launcher through the bounded inbox.
final class NotifyReceiver: Sendable {
    private let fd: FileDescriptor
    private let inbox: NotifyInbox
    /// The uids a worker (or a descendant) runs as: baton's, or `--user`'s.
    private let workerUIDs: Set<UInt32>
    private let logger: Logger
    private let strangers = Locked(LogRateLimit())

    init(fd: FileDescriptor, inbox: NotifyInbox, workerUIDs: Set<UInt32>, logger: Logger) {
        self.fd = fd
        self.inbox = inbox
        self.workerUIDs = workerUIDs
        self.logger = logger
    }

    func start(on loop: EventLoop, _ deliver: @escaping @Sendable (Int32, NotifyMessage) -> Void) throws(SystemError) {
        try loop.register(fd) { [self] in
            for _ in 0..<NotifyInbox.datagramsPerWakeUp {
                guard let datagram = try? Sockets.receiveDatagram(fd, maximum: NotifyMessage.maximumSize + 1) else {
                    return
                }
                receive(datagram, deliver)
            }
        }
    }

    private func receive(_ datagram: Sockets.Datagram, _ deliver: @Sendable (Int32, NotifyMessage) -> Void) {
        guard let pid = datagram.pid, let uid = datagram.uid, workerUIDs.contains(uid) else {
            ignore(
                "ignored notify messages from pid \(datagram.pid.map(String.init) ?? "unknown") (uid \(datagram.uid.map(String.init) ?? "unknown")), which cannot be one of baton's workers"
            )
            return
        }
        guard !datagram.truncated, datagram.closedDescriptors == 0, let message = NotifyMessage(parsing: datagram.bytes)
        else {
            ignore("dropped a malformed, oversized or fd-carrying notify message from pid \(pid)")
            return
        }
        if inbox.admit(message) { deliver(pid, message) }
    }

    private func ignore(_ text: String) {
        let (log, suppressed) = strangers.withLock { $0.admit(now: .now) }
        guard log else { return }
        logger.warning("\(text)\(suppressed > 0 ? " (\(suppressed) similar message(s) suppressed)" : "")")
    }
}
