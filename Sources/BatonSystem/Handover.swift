internal import CBatonSystem
internal import Glibc
public import SystemPackage

/// An fd that one owner shares by reference: closed once, by ``close()`` or when the last reference goes.
///
/// For fds kept in collections (a noncopyable ``OwnedDescriptor`` cannot be a dictionary's value).
public final class SharedDescriptor: Sendable {
    public let descriptor: FileDescriptor
    private let closed = Locked(false)

    public init(_ owned: consuming OwnedDescriptor) {
        descriptor = owned.release()
    }

    /// Closes the fd now (once; later calls do nothing).
    public func close() {
        let first = closed.withLock { closed in
            defer { closed = true }
            return !closed
        }
        if first { _ = Glibc.close(descriptor.rawValue) }
    }

    deinit { close() }
}

/// A socket address as the kernel gives it (`getsockname`, `getpeername`).
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    let bytes: [UInt8]

    init(bytes: [UInt8]) { self.bytes = bytes }

    public var family: Int32 {
        bytes.count >= 2 ? Int32(UInt16(bytes[0]) | UInt16(bytes[1]) << 8) : -1
    }

    /// The TCP port of an IPv4 or IPv6 address.
    public var port: UInt16? {
        guard family == AF_INET || family == AF_INET6, bytes.count >= 4 else { return nil }
        return UInt16(bytes[2]) << 8 | UInt16(bytes[3])
    }

    private var host: ArraySlice<UInt8> {
        switch family {
        case AF_INET where bytes.count >= 8: bytes[4..<8]
        case AF_INET6 where bytes.count >= 24: bytes[8..<24]
        default: []
        }
    }

    public var isWildcard: Bool { !host.isEmpty && host.allSatisfy { $0 == 0 } }

    public var isLoopback: Bool {
        switch family {
        case AF_INET: host.first == 127
        case AF_INET6: Array(host) == [UInt8](repeating: 0, count: 15) + [1]
        default: false
        }
    }

    /// This address with a wildcard host (`0.0.0.0`, `::`) replaced by loopback: where baton connects to reach a
    /// listener of its own.
    public func reachable() -> SocketAddress {
        guard isWildcard else { return self }
        var copy = bytes
        switch family {
        case AF_INET:
            copy[4] = 127
            copy[7] = 1
        case AF_INET6: copy[23] = 1
        default: break
        }
        return SocketAddress(bytes: copy)
    }

    /// Whether a connection whose local address is `self` came in through a listener bound to `listener`.
    public func arrived(through listener: SocketAddress) -> Bool {
        guard family == listener.family else { return false }
        if family == AF_UNIX { return bytes == listener.bytes }
        return port == listener.port && (listener.isWildcard || host == listener.host)
    }

    public var description: String {
        switch family {
        case AF_INET: return host.map(String.init).joined(separator: ".") + ":\(port ?? 0)"
        case AF_INET6:
            let groups = stride(from: 0, to: 16, by: 2).map {
                String(UInt16(host[host.startIndex + $0]) << 8 | UInt16(host[host.startIndex + $0 + 1]), radix: 16)
            }
            return "[\(groups.joined(separator: ":"))]:\(port ?? 0)"
        case AF_UNIX:
            let path = bytes.dropFirst(2).prefix { $0 != 0 }
            return String(decoding: path, as: UTF8.self)
        default: return "family \(family)"
        }
    }
}

/// Taking over a worker's connections (`pidfd_getfd`), and the socket calls a relay needs.
public enum Handover {
    /// What `splice` did.
    public enum Moved: Sendable, Equatable {
        case bytes(Int)
        case end
        case wouldBlock
        case failed(Errno)
    }

    /// The fds of `pid` that are sockets, with their inodes (`/proc/PID/fd`; a worker of 256 listeners has as many
    /// to look at, each time baton looks for the connections it accepted).
    ///
    /// The corresponding C function is `fstatat`.
    public static func sockets(of pid: Int32) -> [(fd: Int32, inode: UInt64)] {
        var capacity = 512
        while true {
            var fds = [Int32](repeating: 0, count: capacity)
            var inodes = [UInt64](repeating: 0, count: capacity)
            let count = cbaton_socket_fds(pid, &fds, &inodes, Int32(capacity))
            guard count >= 0 else { return [] }
            if Int(count) <= capacity { return (0..<Int(count)).map { (fds[$0], inodes[$0]) } }
            capacity = Int(count) + 64
        }
    }

    /// The descendants of `pid` (children first), at most 255.
    public static func descendants(of pid: Int32) -> [Int32] {
        var result: [Int32] = []
        var pending = ProcInspector.children(of: pid)
        while let next = pending.first, result.count < 255 {
            pending.removeFirst()
            guard !result.contains(next), next != pid else { continue }
            result.append(next)
            pending += ProcInspector.children(of: next)
        }
        return result
    }

    /// Whether the process a pidfd names has ended (reaped or not).
    ///
    /// The corresponding C function is `poll`.
    public static func hasEnded(_ process: FileDescriptor) -> Bool {
        var entry = pollfd(fd: process.rawValue, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) == 1
    }

    /// Whether fd `fd` of `pid` is still the socket `inode`.
    public static func holds(pid: Int32, fd: Int32, inode: UInt64) -> Bool {
        cbaton_socket_inode(pid, fd) == inode
    }

    /// A pidfd for `pid`, close-on-exec.
    ///
    /// The corresponding C function is `pidfd_open`.
    public static func openProcess(_ pid: Int32) throws(SystemError) -> OwnedDescriptor {
        OwnedDescriptor(FileDescriptor(rawValue: try syscall("pidfd_open") { cbaton_pidfd_open(pid) }))
    }

    /// This process's own fd for the open file behind fd `fd` of the process `process` (close-on-exec).
    ///
    /// The corresponding C function is `pidfd_getfd`.
    /// EBADF is no bug here: the process may have closed `fd` since baton listed it.
    public static func take(_ fd: Int32, from process: FileDescriptor) throws(SystemError) -> OwnedDescriptor {
        while true {
            let copy = cbaton_pidfd_getfd(process.rawValue, fd)
            if copy >= 0 { return OwnedDescriptor(FileDescriptor(rawValue: copy)) }
            if Glibc.errno == EINTR { continue }
            throw SystemError("pidfd_getfd", Errno(rawValue: Glibc.errno))
        }
    }

    /// Whether this process may take fds from its children: nil if so, else the error that says why not (an old
    /// kernel, a seccomp filter).
    public static func check() -> SystemError? {
        do {
            let own = try openProcess(getpid())
            let copy = try take(0, from: own.descriptor)
            _ = copy
            return nil
        } catch {
            return error
        }
    }

    public static func localAddress(_ fd: FileDescriptor) -> SocketAddress? { address(fd, peer: false) }
    public static func peerAddress(_ fd: FileDescriptor) -> SocketAddress? { address(fd, peer: true) }

    private static func address(_ fd: FileDescriptor, peer: Bool) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                peer ? getpeername(fd.rawValue, $0, &length) : getsockname(fd.rawValue, $0, &length)
            }
        }
        guard result == 0 else { return nil }
        let bytes = withUnsafeBytes(of: storage) { Array($0.prefix(Int(length))) }
        return SocketAddress(bytes: bytes)
    }

    /// TCP_INFO's state (1 ESTABLISHED, 8 CLOSE_WAIT, ...), round-trip time, and how long ago data was last sent and
    /// last received (the kernel counts those in jiffies: 4 ms steps at HZ=250), or nil for a socket that is not TCP.
    public static func tcpState(
        _ fd: FileDescriptor
    ) -> (state: UInt8, rtt: Duration, sinceSent: Duration, sinceReceived: Duration)? {
        var state: UInt8 = 0
        var rtt: UInt32 = 0
        var sent: UInt32 = 0
        var received: UInt32 = 0
        guard cbaton_tcp_state(fd.rawValue, &state, &rtt, &sent, &received) == 0 else { return nil }
        return (state, .microseconds(Int64(rtt)), .milliseconds(Int64(sent)), .milliseconds(Int64(received)))
    }

    public static let established: UInt8 = 1
    public static let closeWait: UInt8 = 8

    /// How many bytes wait to be read.
    public static func unreadBytes(_ fd: FileDescriptor) -> Int {
        max(0, Int(cbaton_unread_bytes(fd.rawValue)))
    }

    /// Up to `count` bytes that wait to be read, left there.
    public static func peek(_ fd: FileDescriptor, count: Int) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        let n = buffer.withUnsafeMutableBytes {
            recv(fd.rawValue, $0.baseAddress, count, Int32(MSG_PEEK | MSG_DONTWAIT))
        }
        return n > 0 ? Array(buffer[0..<n]) : []
    }

    /// Whether the peer has closed its side (or reset the connection) and nothing waits to be read before that: a
    /// peek of one byte sees the end.
    public static func peerClosed(_ fd: FileDescriptor) -> Bool {
        var byte: UInt8 = 0
        let n = recv(fd.rawValue, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        return n == 0 || (n < 0 && Glibc.errno != EAGAIN && Glibc.errno != EINTR)
    }

    /// Receives what is there without waiting, and whether the peer has closed its side.
    public static func receive(_ fd: FileDescriptor, count: Int) -> (bytes: [UInt8], ended: Bool) {
        var buffer = [UInt8](repeating: 0, count: count)
        let n = buffer.withUnsafeMutableBytes { recv(fd.rawValue, $0.baseAddress, count, Int32(MSG_DONTWAIT)) }
        if n > 0 { return (Array(buffer[0..<n]), false) }
        if n == 0 { return ([], true) }
        return ([], Glibc.errno != EAGAIN && Glibc.errno != EINTR)
    }

    /// Reads up to `count` bytes from a non-blocking pipe.
    public static func read(_ fd: FileDescriptor, count: Int) -> [UInt8] {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: min(count, 65536))
        while result.count < count {
            let n = buffer.withUnsafeMutableBytes {
                Glibc.read(fd.rawValue, $0.baseAddress, min(count - result.count, $0.count))
            }
            if n <= 0 { break }
            result += buffer[0..<n]
        }
        return result
    }

    /// Sends what fits now; returns how many bytes went, or nil on an error.
    public static func send(_ fd: FileDescriptor, _ bytes: ArraySlice<UInt8>) -> Int? {
        let n = bytes.withUnsafeBytes {
            Glibc.send(fd.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
        }
        if n >= 0 { return n }
        return Glibc.errno == EAGAIN ? 0 : nil
    }

    /// A non-blocking, close-on-exec stream socket connecting to `address` (the connection completes when it turns
    /// writable; ``connectionError(_:)`` tells how).
    ///
    /// The corresponding C functions are `socket` and `connect`.
    public static func connect(to address: SocketAddress) throws(SystemError) -> OwnedDescriptor {
        let fd = OwnedDescriptor(
            FileDescriptor(
                rawValue: try syscall("socket") {
                    socket(
                        address.family,
                        Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue),
                        0
                    )
                }
            )
        )
        let result = address.bytes.withUnsafeBytes {
            Glibc.connect(
                fd.descriptor.rawValue,
                $0.baseAddress!.assumingMemoryBound(to: sockaddr.self),
                socklen_t($0.count)
            )
        }
        if result != 0 && Glibc.errno != EINPROGRESS {
            throw SystemError("connect", Errno(rawValue: Glibc.errno))
        }
        return fd
    }

    /// SO_ERROR: 0 once a connection has completed.
    public static func connectionError(_ fd: FileDescriptor) -> Int32 {
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = getsockopt(fd.rawValue, SOL_SOCKET, SO_ERROR, &error, &length)
        return error
    }

    public static func shutdownWrite(_ fd: FileDescriptor) {
        _ = shutdown(fd.rawValue, Int32(SHUT_WR))
    }

    /// Makes the next close send a reset, as a server's close with unread data would.
    public static func resetOnClose(_ fd: FileDescriptor) {
        var value = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd.rawValue, SOL_SOCKET, SO_LINGER, &value, socklen_t(MemoryLayout<linger>.size))
    }

    /// Sets how many bytes must be queued before the socket reads as readable to poll and epoll (`SO_RCVLOWAT`; the
    /// kernel caps it at half the largest receive buffer). A large value keeps a process that waits for readability
    /// from reading what arrives; a non-blocking read still gets what is queued.
    public static func setReceiveLowWater(_ fd: FileDescriptor, _ bytes: Int32) {
        var value = bytes
        _ = setsockopt(fd.rawValue, SOL_SOCKET, SO_RCVLOWAT, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Whether the open file description `fd` refers to is in non-blocking mode (which the process that shares it
    /// set: a blocking read of it would wait for `SO_RCVLOWAT` bytes).
    public static func isNonBlocking(_ fd: FileDescriptor) -> Bool {
        let flags = fcntl(fd.rawValue, F_GETFL)
        return flags >= 0 && flags & O_NONBLOCK != 0
    }

    /// Sends `signal` to every thread of process `pid` but its main thread (`tgkill`), so that each one's blocking
    /// call is interrupted (and restarted, for a handler installed with `SA_RESTART`). Never the main thread: while a
    /// signal is pending there, the kernel hands a stop signal that arrives meanwhile to another thread, and a
    /// runtime that handles it on the main thread only (Python) would not see it while the main thread's blocking
    /// accept() restarts.
    public static func signalThreads(of pid: Int32, _ signal: Int32) {
        for tid in ProcInspector.threads(of: pid) where tid != pid {
            _ = cbaton_tgkill(pid, tid, signal)
        }
    }

    /// Sends `signal` to one thread of process `pid` other than its main thread, or to the process when it has no
    /// other (see ``signalThreads(of:_:)``); `pidfd` refers to the process.
    public static func signalOneThread(of pid: Int32, through pidfd: FileDescriptor, _ signal: Int32) {
        if let other = ProcInspector.threads(of: pid).last(where: { $0 != pid }), cbaton_tgkill(pid, other, signal) == 0
        {
            return
        }
        _ = OS.signal(signal, through: pidfd)
    }

    public static func setNonBlocking(_ fd: FileDescriptor) {
        let flags = fcntl(fd.rawValue, F_GETFL)
        if flags >= 0 { _ = fcntl(fd.rawValue, F_SETFL, flags | O_NONBLOCK) }
    }

    /// Moves up to `count` bytes from `from` to `to` (one of them a pipe) without waiting.
    ///
    /// The corresponding C function is `splice`.
    public static func splice(from: FileDescriptor, to: FileDescriptor, count: Int) -> Moved {
        while true {
            let n = cbaton_splice(from.rawValue, to.rawValue, count)
            if n > 0 { return .bytes(n) }
            if n == 0 { return .end }
            switch Glibc.errno {
            case EINTR: continue
            case EAGAIN: return .wouldBlock
            case let code: return .failed(Errno(rawValue: code))
            }
        }
    }

    /// A non-blocking, close-on-exec pipe for ``splice(from:to:count:)``.
    public static func pipe() throws(SystemError) -> (read: SharedDescriptor, write: SharedDescriptor) {
        var fds: [Int32] = [-1, -1]
        try syscall("pipe2") { fds.withUnsafeMutableBufferPointer { cbaton_pipe_cloexec($0.baseAddress) } }
        for fd in fds { setNonBlocking(FileDescriptor(rawValue: fd)) }
        return (
            SharedDescriptor(OwnedDescriptor(FileDescriptor(rawValue: fds[0]))),
            SharedDescriptor(OwnedDescriptor(FileDescriptor(rawValue: fds[1])))
        )
    }
}
