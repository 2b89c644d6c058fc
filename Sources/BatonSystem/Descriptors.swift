internal import CBatonSystem
internal import Glibc
public import SystemPackage

/// A file descriptor that baton owns: closed exactly once, by ``close()`` or at the end of its life, unless ownership is
/// handed on with ``release()``. Short-lived fds (spawn pipes, socketpairs, timerfds, listeners before they are handed
/// over) are held in one, so that every error path closes them by construction.
public struct OwnedDescriptor: ~Copyable, Sendable {
    /// The descriptor, for calls that borrow it.
    public let descriptor: FileDescriptor

    /// Takes ownership of `descriptor`.
    public init(_ descriptor: FileDescriptor) {
        self.descriptor = descriptor
    }

    /// Takes ownership of a raw fd that a system call just returned.
    init(raw: Int32) {
        descriptor = FileDescriptor(rawValue: raw)
    }

    /// Hands ownership on: the caller closes the descriptor from now on.
    public consuming func release() -> FileDescriptor {
        let descriptor = self.descriptor
        discard self
        return descriptor
    }

    /// Closes the descriptor now.
    ///
    /// The corresponding C function is `close`.
    public consuming func close() {
        descriptor.closeOnce()
        discard self
    }

    deinit {
        descriptor.closeOnce()
    }
}

/// Both ends of a pipe, each owned.
@frozen
public struct OwnedPipe: ~Copyable, Sendable {
    public var read: OwnedDescriptor
    public var write: OwnedDescriptor

    /// Opens a pipe whose ends are both close-on-exec; the read end is non-blocking if asked.
    ///
    /// The corresponding C function is `pipe2`.
    public init(nonBlockingRead: Bool = false) throws(SystemError) {
        var fds: [Int32] = [-1, -1]
        try syscall("pipe2") { fds.withUnsafeMutableBufferPointer { cbaton_pipe_cloexec($0.baseAddress!) } }
        let read = OwnedDescriptor(raw: fds[0])
        let write = OwnedDescriptor(raw: fds[1])
        if nonBlockingRead { try read.descriptor.setNonBlocking() }
        self.read = read
        self.write = write
    }
}

extension FileDescriptor {
    /// Closes the descriptor once, never retrying (a retried close may close an fd another thread just opened).
    ///
    /// The corresponding C function is `close`.
    public func closeOnce() {
        _ = Glibc.close(rawValue)
    }

    /// Turns on `O_NONBLOCK`.
    ///
    /// The corresponding C function is `fcntl`.
    public func setNonBlocking() throws(SystemError) {
        let flags = try syscall("fcntl(F_GETFL)") { fcntl(rawValue, F_GETFL) }
        try syscall("fcntl(F_SETFL)") { fcntl(rawValue, F_SETFL, flags | O_NONBLOCK) }
    }

    /// Sets or clears close-on-exec.
    ///
    /// The corresponding C function is `fcntl`.
    public func setCloseOnExec(_ on: Bool = true) throws(SystemError) {
        let flags = try syscall("fcntl(F_GETFD)") { fcntl(rawValue, F_GETFD) }
        try syscall("fcntl(F_SETFD)") { fcntl(rawValue, F_SETFD, on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC) }
    }

    /// Reads until end of file or until `timeout` passes; whatever arrived by then.
    ///
    /// The corresponding C functions are `poll` and `read`.
    public func readToEnd(timeout: Duration) -> [UInt8] {
        var result: [UInt8] = []
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            var entry = pollfd(fd: rawValue, events: Int16(POLLIN), revents: 0)
            let remaining = max(1, Int32((deadline - ContinuousClock.now).components.seconds * 1000 + 1))
            if poll(&entry, 1, remaining) <= 0 { continue }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = buffer.withUnsafeMutableBytes { Glibc.read(rawValue, $0.baseAddress, 4096) }
            if n == 0 || (n < 0 && Glibc.errno != EINTR && Glibc.errno != EAGAIN) { break }
            if n > 0 { result += buffer[0..<n] }
        }
        return result
    }

    /// Reads what is available without blocking: ``IOResult/wouldBlock`` when nothing is, an empty array at end of
    /// file.
    ///
    /// The corresponding C function is `read`.
    public func readAvailable(upTo count: Int = 65536) throws(SystemError) -> IOResult<[UInt8]> {
        var buffer = [UInt8](repeating: 0, count: count)
        let result = try syscall(blocking: "read") {
            buffer.withUnsafeMutableBytes { Glibc.read(rawValue, $0.baseAddress, count) }
        }
        guard let n = result.value else { return .wouldBlock }
        buffer.removeSubrange(n...)
        return .processed(buffer)
    }

    /// Writes all of `bytes`, retrying short writes; blocking.
    ///
    /// The corresponding C function is `write`.
    public func writeAll(_ bytes: [UInt8]) throws(SystemError) {
        var offset = 0
        while offset < bytes.count {
            let n = try syscall("write") {
                bytes.withUnsafeBytes { Glibc.write(rawValue, $0.baseAddress! + offset, bytes.count - offset) }
            }
            offset += n
        }
    }

    /// Opens `/dev/null` close-on-exec, for a child's standard input.
    ///
    /// The corresponding C function is `open`.
    public static func devNull() throws(SystemError) -> OwnedDescriptor {
        OwnedDescriptor(raw: try syscall("open(/dev/null)") { Glibc.open("/dev/null", O_RDWR | O_CLOEXEC) })
    }
}
