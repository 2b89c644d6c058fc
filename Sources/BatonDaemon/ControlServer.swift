import BatonCore
import BatonSystem
import Synchronization
import SystemPackage

/// One connected `baton reload` or `baton status` client.
final class ControlClient: Sendable {
    let id: Int
    private let state: Locked<(fd: FileDescriptor?, splitter: LineSplitter, answered: Bool)>
    private let loop: EventLoop

    init(id: Int, fd: FileDescriptor, loop: EventLoop) {
        self.id = id
        self.loop = loop
        state = Locked((fd, LineSplitter(maximumLineLength: ControlProtocol.maximumRequestSize + 1), false))
    }

    /// Sends one reply line; false if the client is gone or not reading.
    @discardableResult
    func send(_ reply: ControlProtocol.Reply) -> Bool {
        let bytes = ControlProtocol.encode(reply)
        return state.withLock { state in
            guard let fd = state.fd else { return false }
            return Sockets.sendNow(fd, bytes)
        }
    }

    func close() {
        state.withLock { state in
            guard let fd = state.fd else { return }
            loop.unregister(fd)
            fd.closeOnce()
            state.fd = nil
        }
    }

    /// Reads the request line. Returns the request, an error message, or nil while incomplete; closes on EOF.
    func read() -> Result<ControlProtocol.Request, BatonError>? {
        state.withLock { state -> Result<ControlProtocol.Request, BatonError>? in
            guard let fd = state.fd, !state.answered else {
                // Anything after the request is ignored; EOF closes.
                if let fd = state.fd, (try? fd.readAvailable(upTo: 4096))??.isEmpty == true {
                    loop.unregister(fd)
                    fd.closeOnce()
                    state.fd = nil
                }
                return nil
            }
            while true {
                let chunk: [UInt8]?
                do { chunk = try fd.readAvailable(upTo: 4096) } catch { chunk = [] }
                guard let chunk else { return nil }
                if chunk.isEmpty {
                    loop.unregister(fd)
                    fd.closeOnce()
                    state.fd = nil
                    return nil
                }
                if let line = state.splitter.feed(chunk).first {
                    state.answered = true
                    do throws(BatonError) {
                        return .success(try ControlProtocol.decodeRequest(line))
                    } catch {
                        return .failure(error)
                    }
                }
            }
        }
    }
}
