internal import CBatonSystem
internal import Glibc
public import SystemPackage

/// The system calls behind health probes (`--health`): each worker's probe socket, and non-blocking connects to it.
public enum ProbeSockets {
    /// A worker's probe socket: a TCP listener on 127.0.0.1 at a port the kernel picks, close-on-exec in baton (it
    /// reaches only the worker it is handed to), and its address (`127.0.0.1:PORT`). The caller owns the fd.
    ///
    /// The corresponding C functions are `socket`, `bind`, `listen` and `getsockname`.
    public static func listen(
        backlog: Int32 = 64
    ) throws(BindError) -> (fd: FileDescriptor, address: String, port: UInt16) {
        let fd = try Sockets.listenTCP(host: "127.0.0.1", port: 0, backlog: backlog, display: "127.0.0.1:0")
        let bound = ListeningSocket(fd: fd.descriptor, name: "health", address: "").boundAddress()
        guard let bound, let port = bound.port else {
            throw BindError(address: "127.0.0.1:0", .system(SystemError("getsockname", Errno(rawValue: Glibc.errno))))
        }
        return (fd.release(), bound.description, port)
    }

    /// Starts a non-blocking, close-on-exec connect to `127.0.0.1:port`: the socket, and whether it is connected
    /// already (otherwise it becomes writable once the connect ends; ``connectResult(_:)`` says how). The caller owns
    /// the fd.
    ///
    /// The corresponding C functions are `socket` and `connect`.
    public static func connect(port: UInt16) throws(SystemError) -> (fd: FileDescriptor, connected: Bool) {
        let socket = OwnedDescriptor(
            raw: try syscall("socket") {
                Glibc.socket(
                    AF_INET,
                    Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue),
                    0
                )
            }
        )
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(socket.descriptor.rawValue, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if result == 0 { return (socket.release(), true) }
        let code = Glibc.errno
        guard code == EINPROGRESS || code == EINTR else { throw SystemError("connect", Errno(rawValue: code)) }
        return (socket.release(), false)
    }

    /// How a non-blocking connect ended: nil once connected, else its error (`SO_ERROR`).
    ///
    /// The corresponding C function is `getsockopt(SO_ERROR)`.
    public static func connectResult(_ socket: FileDescriptor) -> Errno? {
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(socket.rawValue, SOL_SOCKET, SO_ERROR, &error, &length) == 0 else {
            return Errno(rawValue: Glibc.errno)
        }
        return error == 0 ? nil : Errno(rawValue: error)
    }

    /// Sends what fits now, without blocking or SIGPIPE: how many bytes went.
    ///
    /// The corresponding C function is `send(MSG_NOSIGNAL | MSG_DONTWAIT)`.
    public static func send(_ socket: FileDescriptor, _ bytes: ArraySlice<UInt8>) throws(SystemError) -> Int {
        try Sockets.sendAvailable(socket, bytes)
    }

    /// Arms a timerfd (``PeriodicTimer/disarmed()``) to expire once, after `delay`, then every `period` if given.
    ///
    /// The corresponding C function is `timerfd_settime`.
    public static func arm(_ timer: FileDescriptor, after delay: Duration, every period: Duration? = nil) {
        func spec(_ duration: Duration) -> timespec {
            let (seconds, attoseconds) = duration.components
            return timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        }
        // A zero it_value disarms the timer: the shortest delay is a nanosecond.
        var value = spec(delay)
        if value.tv_sec == 0 && value.tv_nsec == 0 { value.tv_nsec = 1 }
        var setting = itimerspec(it_interval: spec(period ?? .zero), it_value: value)
        _ = timerfd_settime(timer.rawValue, 0, &setting, nil)
    }
}
