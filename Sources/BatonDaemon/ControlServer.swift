import BatonCore
import BatonSystem
import SystemPackage

/// The control socket: accepts `baton reload` and `baton status` clients on the event loop, checks who they are,
/// reads each one's request line and hands it to the launcher.
final class ControlServer: Sendable {
    /// The listening socket (close-on-exec, non-blocking).
    let descriptor: FileDescriptor
    private let loop: EventLoop
    private let counter = Counter()
    /// A spare fd for when baton runs out of them: the pending connection is accepted with it, told why and closed,
    /// instead of staying queued and waking the loop forever while its client hangs.
    private let spare: Locked<OwnedDescriptor?>

    /// Takes ownership of the listening socket.
    init(_ fd: consuming OwnedDescriptor, loop: EventLoop) throws(SystemError) {
        try fd.descriptor.setNonBlocking()
        try fd.descriptor.setCloseOnExec()
        self.loop = loop
        spare = Locked(try? FileDescriptor.devNull())
        descriptor = fd.release()
    }

    /// Accepts clients from now on; `deliver` gets each client with its request (or why it could not be read).
    func start(_ deliver: @escaping @Sendable (ControlClient, Result<ControlProtocol.Request, BatonError>) -> Void)
        throws(SystemError)
    {
        try loop.register(descriptor) { [self] in acceptAll(deliver) }
    }

    private func acceptAll(_ deliver: @escaping @Sendable (ControlClient, Result<ControlProtocol.Request, BatonError>) -> Void) {
        while true {
            let accepted: OwnedDescriptor
            do throws(SystemError) {
                guard let client = try Sockets.accept(descriptor) else { return }
                accepted = client
            } catch where error.errno == .tooManyOpenFiles || error.errno == .tooManyOpenFilesInSystem {
                refuseForLackOfDescriptors(error)
                return
            } catch {
                return
            }
            // Only root and baton's own user may drive it.
            let peer = try? Sockets.peerCredentials(accepted.descriptor)
            let client = ControlClient(id: counter.next(), accepted, loop: loop)
            guard let peer, peer.uid == 0 || peer.uid == OS.userID else {
                client.send(.error("permission denied: only root or the user running baton may use its control socket"))
                client.close()
                continue
            }
            do {
                try client.start(deliver)
            } catch {
                client.close()
            }
        }
    }

    private func refuseForLackOfDescriptors(_ error: SystemError) {
        spare.withLock { spare in
            spare = nil  // closed, to make room
            if let refused = try? Sockets.accept(descriptor) {
                _ = Sockets.sendNow(
                    refused.descriptor,
                    ControlProtocol.encode(ControlProtocol.Reply.error("baton is out of file descriptors (\(error.errno)); raise its limit (LimitNOFILE=)")))
            }
            spare = try? FileDescriptor.devNull()
        }
    }
}

/// One connected `baton reload` or `baton status` client.
final class ControlClient: Sendable {
    let id: Int
    private let reader: LineReader
    private let answered = Locked(false)

    init(id: Int, _ fd: consuming OwnedDescriptor, loop: EventLoop) {
        self.id = id
        reader = LineReader(fd, maximumLineLength: ControlProtocol.maximumRequestSize + 1, budget: 16 * 1024, loop: loop)
    }

    /// Reads the request line on the loop; anything after it is ignored, and end of file closes.
    func start(_ deliver: @escaping @Sendable (ControlClient, Result<ControlProtocol.Request, BatonError>) -> Void)
        throws(SystemError)
    {
        try reader.start { [self] chunk in
            guard let line = chunk.lines.first, !answered.withLock({ $0 }) else { return }
            answered.withLock { $0 = true }
            do throws(BatonError) {
                deliver(self, .success(try ControlProtocol.decodeRequest(line)))
            } catch {
                deliver(self, .failure(error))
            }
        }
    }

    /// Sends one reply line; false if the client is gone or not reading.
    @discardableResult
    func send(_ reply: ControlProtocol.Reply) -> Bool {
        let bytes = ControlProtocol.encode(reply)
        return reader.withDescriptor { fd in fd.map { Sockets.sendNow($0, bytes) } ?? false }
    }

    func close() { reader.close() }
}

/// A thread-safe counter.
final class Counter: Sendable {
    private let value = Locked(0)
    func next() -> Int { value.withLock { $0 += 1; return $0 } }
}
