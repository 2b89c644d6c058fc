import BatonCore
import BatonSystem
import SystemPackage

/// The control socket: accepts `baton reload` and `baton status` clients on the event loop, checks who they are,
/// reads each one's request line and hands it to the launcher.
///
/// Clients cannot starve supervision: at most ``maximumClients`` are connected at once (the next are told so and
/// closed), a client has ``requestDeadline`` to send its request and ``replyDeadline`` to read a reply that did not
/// fit in its socket's buffer, and a reply of any size is sent whole, as the client reads it.
final class ControlServer: Sendable {
    static let maximumClients = 128
    static let requestDeadline = Duration.seconds(5)
    static let replyDeadline = Duration.seconds(10)
    /// The most reply bytes queued for one client.
    static let maximumPendingReply = 16 << 20

    /// The listening socket (close-on-exec, non-blocking).
    let descriptor: FileDescriptor
    private let loop: EventLoop
    private let counter = Counter()
    /// A spare fd for when baton runs out of them: the pending connection is accepted with it, told why and closed,
    /// instead of staying queued and waking the loop forever while its client hangs.
    private let spare: Locked<OwnedDescriptor?>
    /// The connected clients, by id.
    private let clients = Locked<[Int: ControlClient]>([:])
    /// Armed while some client has a deadline: once a second it closes those past theirs.
    private let sweeper: FileDescriptor

    /// Takes ownership of the listening socket.
    init(_ fd: consuming OwnedDescriptor, loop: EventLoop) throws(SystemError) {
        try fd.descriptor.setNonBlocking()
        try fd.descriptor.setCloseOnExec()
        let sweeper = try PeriodicTimer.disarmed()
        self.loop = loop
        spare = Locked(try? FileDescriptor.devNull())
        self.sweeper = sweeper.release()
        descriptor = fd.release()
    }

    /// Accepts clients from now on; `deliver` gets each client with its request (or why it could not be read).
    func start(
        _ deliver: @escaping @Sendable (ControlClient, Result<ControlProtocol.Request, BatonError>) -> Void
    )
        throws(SystemError)
    {
        let sweeper = self.sweeper
        try loop.register(sweeper) { [self] in
            if PeriodicTimer.acknowledge(sweeper) > 0 { sweep() }
        }
        try loop.register(descriptor) { [self] in acceptAll(deliver) }
    }

    /// How many clients are connected.
    var clientCount: Int { clients.withLock { $0.count } }

    private func acceptAll(
        _ deliver: @escaping @Sendable (ControlClient, Result<ControlProtocol.Request, BatonError>) -> Void
    ) {
        while true {
            let accepted: OwnedDescriptor
            do throws(SystemError) {
                guard let client = try Sockets.accept(descriptor) else { return }
                accepted = client
            } catch  where error.errno == .tooManyOpenFiles || error.errno == .tooManyOpenFilesInSystem {
                refuseForLackOfDescriptors(error)
                return
            } catch {
                return
            }
            // Only root and baton's own user may drive it.
            let peer = try? Sockets.peerCredentials(accepted.descriptor)
            guard let peer, peer.uid == 0 || peer.uid == OS.userID else {
                refuse(accepted, "permission denied: only root or the user running baton may use its control socket")
                continue
            }
            guard makeRoom() else {
                refuse(
                    accepted,
                    "too many control connections (\(Self.maximumClients)); try again once some have finished"
                )
                continue
            }
            let client = ControlClient(id: counter.next(), accepted, loop: loop) { [self] id in
                _ = clients.withLock { $0.removeValue(forKey: id) }
            }
            let first = clients.withLock { clients in
                clients[client.id] = client
                return clients.count == 1
            }
            if first { PeriodicTimer.set(sweeper, every: .seconds(1)) }
            do {
                try client.start(deliver)
            } catch {
                client.close()
            }
        }
    }

    private func refuse(_ fd: consuming OwnedDescriptor, _ message: String) {
        _ = Sockets.sendNow(fd.descriptor, ControlProtocol.encode(ControlProtocol.Reply.error(message)))
        fd.close()
    }

    private func refuseForLackOfDescriptors(_ error: SystemError) {
        spare.withLock { spare in
            spare = nil  // closed, to make room
            if let refused = try? Sockets.accept(descriptor) {
                refuse(refused, "baton is out of file descriptors (\(error.errno)); raise its limit (LimitNOFILE=)")
            }
            spare = try? FileDescriptor.devNull()
        }
    }

    /// Whether there is room for one more client: at the cap, the oldest client that has not sent its request yet
    /// is closed to make room (one waiting for a reload's outcome never is).
    private func makeRoom() -> Bool {
        let oldestIdle = clients.withLock { clients -> ControlClient? in
            guard clients.count >= Self.maximumClients else { return nil }
            return clients.values.filter { !$0.hasRequest }.min { $0.id < $1.id }
        }
        guard clientCount >= Self.maximumClients else { return true }
        guard let oldestIdle else { return false }
        oldestIdle.send(
            .error("closed: too many control connections (\(Self.maximumClients)), and this one sent nothing")
        )
        oldestIdle.close(force: true)
        return true
    }

    /// Closes the clients that are past their deadline; disarms itself when no client is left.
    private func sweep() {
        let now = ContinuousClock.now
        let all = clients.withLock { Array($0.values) }
        for client in all where client.isPastDeadline(now) {
            if !client.hasRequest {
                client.send(
                    .error(
                        client.oversizedRequest.map { ControlProtocol.tooLarge($0).message }
                            ?? "no complete request within \(Self.requestDeadline.shortDescription): closed"
                    )
                )
            }
            client.close(force: true)
        }
        if clientCount == 0 { PeriodicTimer.set(sweeper, every: nil) }
    }
}

/// One connected `baton reload` or `baton status` client.
final class ControlClient: Sendable {
    private struct State {
        var answered = false
        /// Reply bytes the socket has not taken yet.
        var pending: [UInt8] = []
        var closeWhenSent = false
        var closed = false
        var deadline: ContinuousClock.Instant?
        /// The request line as it arrives: at most its first ``ControlProtocol/maximumRequestSize`` bytes are kept.
        var request = RequestLine(limit: ControlProtocol.maximumRequestSize)
    }

    let id: Int
    private let reader: LineReader
    private let loop: EventLoop
    private let state: Locked<State>
    private let onClose: @Sendable (Int) -> Void

    init(id: Int, _ fd: consuming OwnedDescriptor, loop: EventLoop, onClose: @escaping @Sendable (Int) -> Void) {
        self.id = id
        self.loop = loop
        self.onClose = onClose
        state = Locked(State(deadline: .now + ControlServer.requestDeadline))
        reader = LineReader(
            fd,
            maximumLineLength: ControlProtocol.maximumRequestSize + 1,
            budget: 16 * 1024,
            loop: loop
        )
    }

    /// Reads the request line on the loop; anything after it is ignored, and end of file closes.
    func start(
        _ deliver: @escaping @Sendable (ControlClient, Result<ControlProtocol.Request, BatonError>) -> Void
    )
        throws(SystemError)
    {
        guard let fd = reader.descriptor else { return }
        try loop.register(fd) { [self] in
            // A reply still being sent comes first; the request is read (and end of file seen) only after it.
            guard flush() else { return }
            let (bytes, ended) = reader.readBytes()
            if ended {
                close(force: true)
                return
            }
            // The request line, once complete; an oversized one is counted to its newline (or the deadline), not kept.
            let outcome = state.withLock { state -> RequestLine.Outcome? in
                guard !state.answered else { return nil }
                state.request.feed(bytes)
                guard let outcome = state.request.outcome else { return nil }
                state.answered = true
                state.deadline = nil
                return outcome
            }
            switch outcome {
            case nil: return
            case .oversized(let size): deliver(self, .failure(ControlProtocol.tooLarge(size)))
            case .line(let line):
                do throws(BatonError) {
                    deliver(self, .success(try ControlProtocol.decodeRequest(line)))
                } catch {
                    deliver(self, .failure(error))
                }
            }
        }
    }

    /// Queues one reply line and sends what the socket takes now; the rest goes as the client reads. False if the
    /// client is gone, or has left so much unread that it is dropped.
    @discardableResult
    func send(_ reply: ControlProtocol.Reply) -> Bool {
        let bytes = ControlProtocol.encode(reply)
        let accepted = state.withLock { state in
            guard !state.closed, state.pending.count + bytes.count <= ControlServer.maximumPendingReply else {
                return false
            }
            state.pending += bytes
            return true
        }
        guard accepted else {
            close(force: true)
            return false
        }
        return flush()
    }

    /// Closes once every queued reply has been sent (or its deadline has passed).
    func close() { close(force: false) }

    func close(force: Bool) {
        let now = state.withLock { state -> Bool in
            guard !state.closed else { return false }
            state.closeWhenSent = true
            guard force || state.pending.isEmpty else { return false }
            state.closed = true
            return true
        }
        guard now else { return }
        reader.close()
        onClose(id)
    }

    /// Whether the client has sent its request.
    var hasRequest: Bool { state.withLock { $0.answered } }

    /// The bytes of a request line that has grown past the limit without its newline, if it has.
    var oversizedRequest: Int? {
        state.withLock { $0.request.isOversized ? $0.request.length : nil }
    }

    func isPastDeadline(_ now: ContinuousClock.Instant) -> Bool {
        state.withLock { state in state.deadline.map { now >= $0 } ?? false }
    }

    /// Sends what the socket takes of the queued reply; true when nothing is left queued.
    @discardableResult
    private func flush() -> Bool {
        let (done, closeNow) = reader.withDescriptor { fd -> (Bool, Bool) in
            state.withLock { state in
                guard let fd, !state.pending.isEmpty else { return (true, state.closeWhenSent && !state.closed) }
                let sent = (try? Sockets.sendAvailable(fd, state.pending[...])) ?? state.pending.count
                state.pending.removeFirst(sent)
                let empty = state.pending.isEmpty
                loop.watchWritable(fd, !empty)
                state.deadline = empty ? (state.answered ? nil : state.deadline) : .now + ControlServer.replyDeadline
                return (empty, empty && state.closeWhenSent)
            }
        }
        if closeNow { close(force: true) }
        return done
    }
}

/// A thread-safe counter.
final class Counter: Sendable {
    private let value = Locked(0)
    func next() -> Int {
        value.withLock {
            $0 += 1
            return $0
        }
    }
}
