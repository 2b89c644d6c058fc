import BatonCore
import BatonSystem
import SystemPackage

/// Reads a non-blocking fd on the event loop and splits what it reads into lines: the one read, split, unregister
/// and close loop that worker output, readiness pipes and control clients share.
///
/// Each wake-up reads at most ``budget`` bytes, so that one busy source cannot starve the others: the loop is
/// level-triggered and comes back for the rest. At end of file the fd is unregistered and closed, on the loop's
/// thread; after ``close()`` nothing reads it again.
final class LineReader: Sendable {
    /// What one read produced.
    struct Chunk: Sendable {
        var lines: [[UInt8]]
        /// End of file: the fd is closed (a partial last line is in `lines`).
        var ended: Bool
    }

    private struct State {
        var fd: FileDescriptor?
        var splitter: LineSplitter
    }

    /// The most bytes read per wake-up.
    let budget: Int
    private let state: Locked<State>
    private let loop: EventLoop

    /// Takes ownership of `fd`, which must be non-blocking; a negative fd (a pipe already closed before a re-exec)
    /// makes a reader that is at its end.
    init(_ fd: consuming OwnedDescriptor, maximumLineLength: Int, budget: Int = 64 * 1024, loop: EventLoop) {
        self.budget = budget
        self.loop = loop
        let descriptor = fd.release()
        state = Locked(
            State(
                fd: descriptor.rawValue >= 0 ? descriptor : nil,
                splitter: LineSplitter(maximumLineLength: maximumLineLength)
            )
        )
    }

    deinit {
        // Reached only once unregistered: the loop holds the handler, and the handler holds the reader.
        state.withLock { $0.fd?.closeOnce() }
    }

    /// The fd, while open.
    var descriptor: FileDescriptor? { state.withLock { $0.fd } }

    /// Runs `body` with the fd while it is open (nil once closed), holding it open meanwhile.
    func withDescriptor<T>(_ body: (FileDescriptor?) -> T) -> T {
        state.withLock { body($0.fd) }
    }

    /// Watches the fd on the loop; `handler` gets what each wake-up read, on the loop's thread.
    func start(_ handler: @escaping @Sendable (Chunk) -> Void) throws(SystemError) {
        guard let fd = descriptor else { return }
        try loop.register(fd) { [self] in
            let chunk = read()
            if !chunk.lines.isEmpty || chunk.ended { handler(chunk) }
        }
    }

    /// Reads what is there now, up to `limit` bytes (the budget by default).
    func read(limit: Int? = nil) -> Chunk {
        state.withLock { state in
            var chunk = Chunk(lines: [], ended: false)
            guard let fd = state.fd else {
                chunk.ended = true
                return chunk
            }
            var left = limit ?? budget
            while left > 0 {
                let bytes: [UInt8]
                do throws(SystemError) {
                    guard let read = try fd.readAvailable(upTo: min(left, 65536)).value else { break }
                    bytes = read
                } catch {
                    bytes = []
                }
                if bytes.isEmpty {
                    if let rest = state.splitter.finish() { chunk.lines.append(rest) }
                    loop.unregister(fd)
                    fd.closeOnce()
                    state.fd = nil
                    chunk.ended = true
                    break
                }
                left -= bytes.count
                chunk.lines += state.splitter.feed(bytes)
            }
            return chunk
        }
    }

    /// Reads what is there now, up to the budget, as bytes, past the line splitter (for a reader that finds its own
    /// line, such as a control client's ``RequestLine``). At end of file the fd is closed, as by ``read(limit:)``.
    func readBytes() -> (bytes: [UInt8], ended: Bool) {
        state.withLock { state in
            guard let fd = state.fd else { return ([], true) }
            var result: [UInt8] = []
            while result.count < budget {
                let bytes: [UInt8]
                do throws(SystemError) {
                    guard let read = try fd.readAvailable(upTo: min(budget - result.count, 65536)).value else { break }
                    bytes = read
                } catch {
                    bytes = []
                }
                if bytes.isEmpty {
                    loop.unregister(fd)
                    fd.closeOnce()
                    state.fd = nil
                    return (result, true)
                }
                result += bytes
            }
            return (result, false)
        }
    }

    /// Stops watching and closes the fd.
    func close() {
        state.withLock { state in
            guard let fd = state.fd else { return }
            loop.unregister(fd)
            fd.closeOnce()
            state.fd = nil
        }
    }
}
