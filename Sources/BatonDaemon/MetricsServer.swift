import BatonCore
import BatonSystem
import SystemPackage

/// The `--metrics` socket: a GET-only HTTP/1.1 responder on the event loop, built like the ``ControlServer``.
///
/// Scrapers cannot starve supervision: at most ``maximumClients`` are connected at once (at the cap the oldest one
/// that has not sent a whole request is closed to make room, else the new one gets a 503), a request head is at most
/// ``MetricsHTTP/maximumRequestSize`` bytes and must arrive within ``requestDeadline``, and a reply that did not fit in
/// the socket's buffer must be read within ``replyDeadline``. Every answer closes the connection. Nothing runs while
/// nobody scrapes: the sweeper's timer is armed only while a client is connected.
final class MetricsServer: Sendable {
    static let maximumClients = 16
    static let requestDeadline = Duration.seconds(5)
    static let replyDeadline = Duration.seconds(10)

    /// The listening socket (close-on-exec, non-blocking).
    let descriptor: FileDescriptor
    private let loop: EventLoop
    private let counter = Counter()
    /// A spare fd for when baton runs out of them (see ``ControlServer``).
    private let spare: Locked<OwnedDescriptor?>
    private let clients = Locked<[Int: MetricsClient]>([:])
    /// Armed while some client is connected: once a second it closes those past their deadline.
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

    /// Accepts scrapers from now on; `deliver` gets each client whose request is `GET /metrics` (or `HEAD`), to be
    /// answered with ``MetricsClient/respond(_:)``. Every other request is answered here.
    func start(_ deliver: @escaping @Sendable (MetricsClient, _ headOnly: Bool) -> Void) throws(SystemError) {
        let sweeper = self.sweeper
        try loop.register(sweeper) { [self] in
            if PeriodicTimer.acknowledge(sweeper) > 0 { sweep() }
        }
        try loop.register(descriptor) { [self] in acceptAll(deliver) }
    }

    /// How many clients are connected.
    var clientCount: Int { clients.withLock { $0.count } }

    private func acceptAll(_ deliver: @escaping @Sendable (MetricsClient, Bool) -> Void) {
        while true {
            let accepted: OwnedDescriptor
            do throws(SystemError) {
                guard let client = try Sockets.accept(descriptor) else { return }
                accepted = client
            } catch  where error.errno == .tooManyOpenFiles || error.errno == .tooManyOpenFilesInSystem {
                refuseForLackOfDescriptors()
                return
            } catch {
                return
            }
            guard makeRoom() else {
                refuse(accepted, .error(503, "Service Unavailable", "too many metrics clients; try again"))
                continue
            }
            let client = MetricsClient(id: counter.next(), accepted, loop: loop) { [self] id in
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
                client.close(force: true)
            }
        }
    }

    private func refuse(_ fd: consuming OwnedDescriptor, _ response: MetricsHTTP.Response) {
        _ = Sockets.sendNow(fd.descriptor, response.encoded())
        fd.close()
    }

    private func refuseForLackOfDescriptors() {
        spare.withLock { spare in
            spare = nil  // closed, to make room
            if let refused = try? Sockets.accept(descriptor) {
                refuse(refused, .error(503, "Service Unavailable", "baton is out of file descriptors"))
            }
            spare = try? FileDescriptor.devNull()
        }
    }

    /// Whether there is room for one more client: at the cap, the oldest client that has not sent a whole request is
    /// closed to make room.
    private func makeRoom() -> Bool {
        let oldestIdle = clients.withLock { clients -> MetricsClient? in
            guard clients.count >= Self.maximumClients else { return nil }
            return clients.values.filter { !$0.hasRequest }.min { $0.id < $1.id }
        }
        guard clientCount >= Self.maximumClients else { return true }
        guard let oldestIdle else { return false }
        oldestIdle.close(force: true)
        return true
    }

    /// Closes the clients past their deadline (one still sending its request gets a 408); disarms itself when no
    /// client is left.
    private func sweep() {
        let now = ContinuousClock.now
        let all = clients.withLock { Array($0.values) }
        for client in all where client.isPastDeadline(now) {
            if !client.hasRequest {
                client.sendNow(
                    .error(
                        408,
                        "Request Timeout",
                        "no complete request within \(Self.requestDeadline.shortDescription)"
                    )
                )
            }
            client.close(force: true)
        }
        if clientCount == 0 { PeriodicTimer.set(sweeper, every: nil) }
    }
}

/// One connected scraper: its request head is read on the loop, line by line, then answered once and closed.
final class MetricsClient: Sendable {
    private struct State {
        var head = MetricsHTTP.RequestHead()
        var answered = false
        /// Response bytes the socket has not taken yet.
        var pending: [UInt8] = []
        var closed = false
        var deadline: ContinuousClock.Instant?
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
        state = Locked(State(deadline: .now + MetricsServer.requestDeadline))
        // A line longer than a whole request head is cut, and its pieces add up past the limit.
        reader = LineReader(fd, maximumLineLength: MetricsHTTP.maximumRequestSize, budget: 16 * 1024, loop: loop)
    }

    /// Reads the request head on the loop and routes it once complete. What follows the head is read and dropped (the
    /// loop is level-triggered: unread bytes would wake it forever); end of file closes.
    func start(_ deliver: @escaping @Sendable (MetricsClient, Bool) -> Void) throws(SystemError) {
        guard let fd = reader.descriptor else { return }
        try loop.register(fd) { [self] in
            let chunk = reader.read()
            if chunk.ended {
                close(force: true)
                return
            }
            let route = state.withLock { state -> MetricsHTTP.Route? in
                guard !state.answered else { return nil }
                for line in chunk.lines {
                    if !state.head.add(line) {
                        state.answered = true
                        return .error(MetricsHTTP.tooLarge)
                    }
                    if state.head.complete {
                        state.answered = true
                        return MetricsHTTP.route(state.head)
                    }
                }
                return nil
            }
            guard let route else {
                flush()
                return
            }
            state.withLock { $0.deadline = .now + MetricsServer.replyDeadline }
            switch route {
            case .metrics(let headOnly): deliver(self, headOnly)
            case .error(let response): respond(response)
            }
        }
    }

    /// Queues the response, sends what the socket takes now and the rest as the client reads, then closes.
    func respond(_ response: MetricsHTTP.Response) {
        let queued = state.withLock { state -> Bool in
            guard !state.closed, state.pending.isEmpty else { return false }
            state.pending = response.encoded()
            return true
        }
        guard queued else { return }
        flush()
    }

    /// Sends what the socket takes of `response` now, without queueing the rest (a client being closed).
    fileprivate func sendNow(_ response: MetricsHTTP.Response) {
        reader.withDescriptor { fd in
            if let fd { _ = Sockets.sendNow(fd, response.encoded()) }
        }
    }

    func close(force: Bool) {
        let now = state.withLock { state -> Bool in
            guard !state.closed else { return false }
            guard force || state.pending.isEmpty else { return false }
            state.closed = true
            return true
        }
        guard now else { return }
        reader.close()
        onClose(id)
    }

    /// Whether the client has sent a whole request head (or one too large).
    var hasRequest: Bool { state.withLock { $0.answered } }

    func isPastDeadline(_ now: ContinuousClock.Instant) -> Bool {
        state.withLock { state in state.deadline.map { now >= $0 } ?? false }
    }

    /// Sends what the socket takes of the queued response; true when nothing is left queued. Once a response is
    /// sent whole, the client is closed.
    @discardableResult
    private func flush() -> Bool {
        let (done, closeNow) = reader.withDescriptor { fd -> (Bool, Bool) in
            state.withLock { state in
                guard let fd, !state.pending.isEmpty else { return (true, false) }
                let sent = (try? Sockets.sendAvailable(fd, state.pending[...])) ?? state.pending.count
                state.pending.removeFirst(sent)
                let empty = state.pending.isEmpty
                loop.watchWritable(fd, !empty)
                if !empty { state.deadline = .now + MetricsServer.replyDeadline }
                return (empty, empty)
            }
        }
        if closeNow { close(force: true) }
        return done
    }
}
