internal import CBatonSystem
internal import Glibc
public import SystemPackage

/// A listening socket baton holds for its whole life and hands to every worker.
public struct ListeningSocket: Sendable, Hashable {
    /// The descriptor, close-on-exec in baton.
    public var fd: FileDescriptor
    /// The name exported in `LISTEN_FDNAMES`.
    public var name: String
    /// A readable form of the address, such as `127.0.0.1:8080` or `unix:/run/app.sock`.
    public var address: String
    /// The service manager passed it (a `.socket` unit, the fd store): its backlog is the unit's, not baton's.
    public var passed: Bool

    public init(fd: FileDescriptor, name: String, address: String, passed: Bool = false) {
        self.fd = fd
        self.name = name
        self.address = address
        self.passed = passed
    }

    /// The socket's inode, which names it in `/proc/PID/fd` as `socket:[INODE]`.
    ///
    /// The corresponding C function is `fstat`.
    public func inode() throws(SystemError) -> UInt64 {
        var info = stat()
        try syscall("fstat") { fstat(fd.rawValue, &info) }
        return UInt64(info.st_ino)
    }
}

/// What the kernel says of a listening socket that every worker shares.
public struct ListenerCondition: Sendable, Equatable {
    /// `SO_ACCEPTCONN`: it is listening (a worker's `shutdown()` of a TCP listener clears it).
    public var accepting: Bool
    /// Whether it was shut down (`EPOLLHUP`): connections are refused even where `accepting` still says 1 (unix).
    public var shutDown: Bool
    /// The accept backlog of a TCP listener (`TCP_INFO` `tcpi_sacked`); nil for other sockets.
    public var backlog: Int?
    /// Connections waiting to be accepted (`tcpi_unacked`); nil for other sockets.
    public var queued: Int?
    /// A socket filter is attached (`SO_ATTACH_FILTER`): it may drop every connection.
    public var filtered = false
}

extension ListeningSocket {
    /// Asks the kernel how the listener is: listening, shut down, its backlog and its queue.
    ///
    /// The corresponding C functions are `getsockopt(SO_ACCEPTCONN)`, `getsockopt(TCP_INFO)` and `poll`.
    public func condition() -> ListenerCondition {
        // A TCP listener says it all in one call: its state (LISTEN, or CLOSE once shut down), backlog and queue.
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        if getsockopt(fd.rawValue, Int32(IPPROTO_TCP), TCP_INFO, &info, &length) == 0 {
            let listening = Int(info.tcpi_state) == Int(TCP_LISTEN)
            return ListenerCondition(
                accepting: listening,
                shutDown: !listening,
                backlog: Int(info.tcpi_sacked),
                queued: Int(info.tcpi_unacked),
                filtered: hasFilter()
            )
        }
        var accepting: Int32 = 0
        length = socklen_t(MemoryLayout<Int32>.size)
        _ = getsockopt(fd.rawValue, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length)
        var entry = pollfd(fd: fd.rawValue, events: 0, revents: 0)
        _ = poll(&entry, 1, 0)
        return ListenerCondition(
            accepting: accepting != 0,
            shutDown: entry.revents & Int16(POLLHUP) != 0,
            backlog: nil,
            queued: nil,
            filtered: hasFilter()
        )
    }

    /// Whether a classic socket filter is attached: `getsockopt(SO_GET_FILTER)` with no buffer says how long it is.
    private func hasFilter() -> Bool {
        var length: socklen_t = 0
        return getsockopt(fd.rawValue, SOL_SOCKET, SO_GET_FILTER, nil, &length) == 0 && length > 0
    }

    /// Removes a socket filter a worker attached; fails (EPERM) when the worker locked it.
    ///
    /// The corresponding C function is `setsockopt(SO_DETACH_FILTER)`.
    public func detachFilter() throws(SystemError) {
        var zero: Int32 = 0
        try syscall("setsockopt(SO_DETACH_FILTER)") {
            setsockopt(fd.rawValue, SOL_SOCKET, SO_DETACH_FILTER, &zero, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    /// Makes it listen again with `backlog`: undoes a worker's `shutdown()` of a TCP listener, or its `listen(fd, 1)`.
    ///
    /// The corresponding C function is `listen`.
    public func listenAgain(backlog: Int32) throws(SystemError) {
        try syscall("listen") { listen(fd.rawValue, backlog) }
    }
}

/// A file's device and inode: what tells one file at a path from another put there later.
public struct FileIdentity: Sendable, Equatable {
    public var device: UInt64
    public var inode: UInt64

    public init(device: UInt64, inode: UInt64) {
        self.device = device
        self.inode = inode
    }
}

/// Why a socket could not be bound, in words a user can act on.
public struct BindError: Error, CustomStringConvertible, Sendable {
    public enum Reason: Sendable {
        /// A system call failed.
        case system(SystemError)
        /// A file that is not a socket is in the way of a unix socket.
        case notASocket
        /// The unix socket path does not fit in `sockaddr_un`.
        case pathTooLong
        /// The host name or address could not be resolved; the resolver's own words.
        case unresolvable(String)
        /// The socket file was replaced by another file right after `bind` (someone else can write its directory).
        case replaced
    }

    public var address: String
    public var reason: Reason

    public init(address: String, _ reason: Reason) {
        self.address = address
        self.reason = reason
    }

    public var description: String {
        switch reason {
        case .notASocket:
            return "cannot listen on \(address): the path exists and is not a socket; remove it or choose another path"
        case .pathTooLong:
            return "cannot listen on \(address): the path is too long for a unix socket (at most 107 bytes)"
        case .unresolvable(let why):
            return "cannot listen on \(address): \(why); give a numeric IP address"
        case .replaced:
            return "cannot listen on \(address): the socket file was replaced by another file right after bind "
                + "(another user can write its directory): use a directory only baton's user can write"
        case .system(let error):
            switch error.errno {
            case .addressInUse:
                return "address \(address) is already in use: stop whatever listens there or choose another --listen"
            case .permissionDenied where address.hasPrefix("unix:"):
                return
                    "permission denied creating \(address): baton's user needs write and search permission on its directory"
            case .permissionDenied:
                return "permission denied binding \(address): ports below 1024 need root or CAP_NET_BIND_SERVICE"
            case .addressNotAvailable:
                return "address \(address) is not available on this host: check the IP in --listen"
            default:
                return "cannot listen on \(address): \(error)"
            }
        }
    }
}

public enum Sockets {
    /// Binds and listens on a TCP address. `host` nil means every address (IPv6 dual-stack, or IPv4 where
    /// IPv6 is unavailable).
    ///
    /// The corresponding C functions are `getaddrinfo`, `socket`, `bind` and `listen`.
    public static func listenTCP(
        host: String?,
        port: UInt16,
        backlog: Int32,
        display: String
    ) throws(BindError)
        -> OwnedDescriptor
    {
        if let host {
            return try listenResolved(host: host, port: port, backlog: backlog, display: display)
        }
        do {
            return try listenResolved(host: "::", port: port, backlog: backlog, dualStack: true, display: display)
        } catch let error {
            guard case .system(let cause) = error.reason,
                cause.errno == .addressFamilyNotSupported || cause.errno == .addressNotAvailable
            else { throw error }
            return try listenResolved(host: "0.0.0.0", port: port, backlog: backlog, display: display)
        }
    }

    private static func listenResolved(
        host: String,
        port: UInt16,
        backlog: Int32,
        dualStack: Bool = false,
        display: String
    ) throws(BindError) -> OwnedDescriptor {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &result)
        guard status == 0, let info = result else {
            throw BindError(address: display, .unresolvable(String(cString: gai_strerror(status))))
        }
        defer { freeaddrinfo(result) }
        do throws(SystemError) {
            let fd = OwnedDescriptor(
                raw: try syscall("socket") {
                    socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                }
            )
            let raw = fd.descriptor.rawValue
            var one: Int32 = 1
            try syscall("setsockopt(SO_REUSEADDR)") {
                setsockopt(raw, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            }
            if info.pointee.ai_family == AF_INET6 {
                var v6only: Int32 = dualStack ? 0 : 1
                try syscall("setsockopt(IPV6_V6ONLY)") {
                    setsockopt(raw, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &v6only, socklen_t(MemoryLayout<Int32>.size))
                }
            }
            try syscall("bind") { bind(raw, info.pointee.ai_addr, info.pointee.ai_addrlen) }
            try syscall("listen") { listen(raw, backlog) }
            return fd
        } catch {
            throw BindError(address: display, .system(error))
        }
    }

    /// Binds and listens on a unix stream socket at `path`, with file mode `mode`.
    ///
    /// A socket file left by a process that is gone (connecting is refused) is removed first; a live one is
    /// reported as in use, and a file that is not a socket is never touched.
    ///
    /// No step can be redirected by whoever else can write the directory: the stale file is checked and removed in
    /// the directory opened once (`fstatat`, `unlinkat`); the mode is set on the socket before `bind` (the file is
    /// created with it, less the umask, so it is never more open than asked, not even for an instant); and what the
    /// umask took away is put back on the file that `bind` made, opened without following a symlink
    /// (`CBATON_O_PATH | O_NOFOLLOW`) and checked to be a socket owned by baton, through `/proc/self/fd`. A file swapped
    /// in after `bind` is refused, never changed.
    ///
    /// The corresponding C functions are `socket`, `fchmod`, `bind`, `openat`, `chmod` and `listen`.
    public static func listenUnix(path: String, mode: UInt32?, backlog: Int32) throws(BindError) -> OwnedDescriptor {
        let display = "unix:" + path
        guard path.utf8.count < unixPathCapacity else { throw BindError(address: display, .pathTooLong) }
        let (directoryPath, name) = splitPath(path)
        let opened = open(directoryPath, CBATON_O_PATH | O_DIRECTORY | O_CLOEXEC)
        guard opened >= 0 else {
            throw BindError(
                address: display,
                .system(SystemError("open(\(directoryPath))", Errno(rawValue: Glibc.errno)))
            )
        }
        let directory = OwnedDescriptor(raw: opened)
        var info = stat()
        if fstatat(directory.descriptor.rawValue, name, &info, AT_SYMLINK_NOFOLLOW) == 0 {
            guard info.st_mode & S_IFMT == S_IFSOCK else { throw BindError(address: display, .notASocket) }
            var live = false
            do throws(SystemError) {
                try connectUnix(path: path).close()
                live = true
            } catch  where error.errno == .connectionRefused {
                // Stale: nobody listens on it. Removed only if it is still the very file checked.
                var again = stat()
                if fstatat(directory.descriptor.rawValue, name, &again, AT_SYMLINK_NOFOLLOW) == 0,
                    again.st_dev == info.st_dev, again.st_ino == info.st_ino
                {
                    unlinkat(directory.descriptor.rawValue, name, 0)
                }
            } catch {
                throw BindError(address: display, .system(error))
            }
            if live { throw BindError(address: display, .system(SystemError("connect", .addressInUse))) }
        }
        do throws(SystemError) {
            let fd = try unixSocket(type: SOCK_STREAM)
            if let mode {
                try syscall("fchmod") { fchmod(fd.descriptor.rawValue, mode_t(mode)) }
            }
            try withUnixAddress(path) { address, length throws(SystemError) in
                try syscall("bind") { bind(fd.descriptor.rawValue, address, length) }
            }
            if let mode {
                guard
                    try setSocketFileMode(directory: directory.descriptor.rawValue, name: name, path: path, mode: mode)
                else { throw SystemError("bind", .fileExists) }
            }
            try syscall("listen") { listen(fd.descriptor.rawValue, backlog) }
            return fd
        } catch  where error.errno == .fileExists && error.call == "bind" && mode != nil {
            throw BindError(address: display, .replaced)
        } catch {
            throw BindError(address: display, .system(error))
        }
    }

    /// Gives the socket file `name` in `directory`, just made by `bind`, exactly `mode`, without following a
    /// symlink and only if it is still a socket owned by this process's user.
    /// Returns false when the file is no longer the socket baton bound.
    private static func setSocketFileMode(
        directory: Int32,
        name: String,
        path: String,
        mode: UInt32
    ) throws(SystemError) -> Bool {
        let file = openat(directory, name, CBATON_O_PATH | O_NOFOLLOW | O_CLOEXEC)
        guard file >= 0 else { throw SystemError("open(\(path)) after bind", Errno(rawValue: Glibc.errno)) }
        defer { _ = close(file) }
        var info = stat()
        try syscall("fstat") { fstat(file, &info) }
        guard info.st_mode & S_IFMT == S_IFSOCK, info.st_uid == geteuid() else { return false }
        guard info.st_mode & 0o7777 != mode_t(mode) else { return true }
        // chmod of the magic link reaches the inode the O_PATH fd holds, whatever is at `path` by now.
        if chmod("/proc/self/fd/\(file)", mode_t(mode)) != 0 {
            let code = Glibc.errno
            throw SystemError(
                code == ENOENT ? "chmod(\(path)) (needs /proc mounted to set the mode safely)" : "chmod(\(path))",
                Errno(rawValue: code)
            )
        }
        return true
    }

    /// Removes the unix socket file at `path` if it is a socket owned by this process's user, in the directory it
    /// is in, without following a symlink; anything else there is left alone.
    ///
    /// The corresponding C functions are `fstatat` and `unlinkat`.
    public static func removeSocketFile(_ path: String, identity: FileIdentity? = nil) {
        let (directoryPath, name) = splitPath(path)
        let directory = open(directoryPath, CBATON_O_PATH | O_DIRECTORY | O_CLOEXEC)
        guard directory >= 0 else { return }
        defer { _ = close(directory) }
        var info = stat()
        guard fstatat(directory, name, &info, AT_SYMLINK_NOFOLLOW) == 0, info.st_mode & S_IFMT == S_IFSOCK,
            info.st_uid == geteuid()
        else { return }
        // Another launcher may have bound the path since (after someone removed this one's file): its socket stays.
        if let identity, identity != FileIdentity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino)) { return }
        unlinkat(directory, name, 0)
    }

    /// The device and inode of the file at `path` (not following a symlink), such as the socket file `bind` made.
    ///
    /// The corresponding C function is `lstat`.
    public static func fileIdentity(_ path: String) -> FileIdentity? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return FileIdentity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }

    /// Sets how long a blocking read on `socket` waits before it fails with EAGAIN.
    ///
    /// The corresponding C function is `setsockopt(SO_RCVTIMEO)`.
    public static func setReceiveTimeout(_ socket: FileDescriptor, seconds: Int) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        _ = setsockopt(socket.rawValue, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// A path's directory and last component: `/run/a.sock` is `/run` and `a.sock`, `a.sock` is `.` and `a.sock`.
    static func splitPath(_ path: String) -> (directory: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let directory = slash == path.startIndex ? "/" : String(path[..<slash])
        return (directory, String(path[path.index(after: slash)...]))
    }

    /// Connects a blocking, close-on-exec unix stream socket to `path`.
    ///
    /// The corresponding C function is `connect`.
    public static func connectUnix(path: String) throws(SystemError) -> OwnedDescriptor {
        let fd = try unixSocket(type: SOCK_STREAM)
        try withUnixAddress(path) { address, length throws(SystemError) in
            try syscall("connect") { connect(fd.descriptor.rawValue, address, length) }
        }
        return fd
    }

    static func unixSocket(type: __socket_type) throws(SystemError) -> OwnedDescriptor {
        OwnedDescriptor(
            raw: try syscall("socket(AF_UNIX)") {
                socket(AF_UNIX, Int32(type.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            }
        )
    }

    /// The room for a path in `sockaddr_un`, its terminating NUL included.
    static let unixPathCapacity = MemoryLayout.size(ofValue: sockaddr_un().sun_path)

    /// Calls `body` with a `sockaddr_un` for `path`; a leading `@` names an abstract socket. A path that does not fit
    /// fails as the kernel would fail it, with ENAMETOOLONG.
    @discardableResult
    static func withUnixAddress<T>(
        _ path: String,
        _ body: (UnsafePointer<sockaddr>, socklen_t) throws(SystemError) -> T
    ) throws(SystemError) -> T {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        guard bytes.count < unixPathCapacity else { throw SystemError("bind/connect", .fileNameTooLong) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
        return try withUnsafePointer(to: &address) { pointer throws(SystemError) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address throws(SystemError) in
                try body(address, length)
            }
        }
    }

    /// Accepts a connection, close-on-exec and non-blocking; `nil` when none is pending.
    ///
    /// The corresponding C function is `accept4`.
    public static func accept(_ listener: FileDescriptor) throws(SystemError) -> OwnedDescriptor? {
        let result = try syscall(blocking: "accept4", alsoWouldBlock: [ECONNABORTED]) {
            cbaton_accept(listener.rawValue)
        }
        return result.value.map { OwnedDescriptor(raw: $0) }
    }

    /// The credentials of a unix socket's peer.
    ///
    /// The corresponding C function is `getsockopt(SO_PEERCRED)`.
    public static func peerCredentials(_ socket: FileDescriptor) throws(SystemError) -> (pid: Int32, uid: UInt32) {
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
        try syscall("getsockopt(SO_PEERCRED)") { cbaton_peer_credentials(socket.rawValue, &pid, &uid, &gid) }
        return (pid, uid)
    }

    /// Sends as many bytes as the socket takes now, without blocking and without SIGPIPE; returns how many it took
    /// (0 when its buffer is full).
    ///
    /// The corresponding C function is `send`.
    public static func sendAvailable(_ socket: FileDescriptor, _ bytes: ArraySlice<UInt8>) throws(SystemError) -> Int {
        var offset = 0
        while offset < bytes.count {
            let result = try syscall(blocking: "send") {
                bytes.withUnsafeBytes {
                    send(
                        socket.rawValue,
                        $0.baseAddress! + offset,
                        bytes.count - offset,
                        Int32(MSG_DONTWAIT | MSG_NOSIGNAL)
                    )
                }
            }
            guard let n = result.value else { break }
            offset += n
        }
        return offset
    }

    /// Sends all bytes without blocking and without SIGPIPE; returns false when the peer cannot take them all now.
    ///
    /// The corresponding C function is `send`.
    @discardableResult
    public static func sendNow(_ socket: FileDescriptor, _ bytes: [UInt8]) -> Bool {
        (try? sendAvailable(socket, bytes[...])) == bytes.count
    }

    /// A datagram socket that receives sd_notify-style messages with their sender's credentials.
    ///
    /// `path` is a filesystem path or, with a leading `@`, an abstract name.
    ///
    /// The corresponding C functions are `socket`, `setsockopt(SO_PASSCRED)` and `bind`.
    public static func notifySocket(path: String) throws(SystemError) -> OwnedDescriptor {
        let fd = try unixSocket(type: SOCK_DGRAM)
        var one: Int32 = 1
        try syscall("setsockopt(SO_PASSCRED)") {
            setsockopt(fd.descriptor.rawValue, SOL_SOCKET, SO_PASSCRED, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        try fd.descriptor.setNonBlocking()
        try withUnixAddress(path) { address, length throws(SystemError) in
            try syscall("bind") { bind(fd.descriptor.rawValue, address, length) }
        }
        return fd
    }

    /// One datagram received from a notify socket.
    public struct Datagram: Sendable {
        public var bytes: [UInt8]
        /// The sender's pid from SCM_CREDENTIALS, or nil when none was attached.
        public var pid: Int32?
        public var uid: UInt32?
        /// The datagram was larger than baton accepts and was cut.
        public var truncated: Bool
        /// How many fds came with it (they have been closed).
        public var closedDescriptors: Int
    }

    /// Receives one datagram without blocking, or nil when none is queued.
    ///
    /// The corresponding C function is `recvmsg`.
    public static func receiveDatagram(_ socket: FileDescriptor, maximum: Int) throws(SystemError) -> Datagram? {
        var buffer = [UInt8](repeating: 0, count: maximum)
        var pid: pid_t = -1
        var uid: uid_t = 0
        var truncated: Int32 = 0
        var closed: Int32 = 0
        let result = try syscall(blocking: "recvmsg") {
            buffer.withUnsafeMutableBytes {
                cbaton_recv_with_credentials(socket.rawValue, $0.baseAddress, maximum, &pid, &uid, &truncated, &closed)
            }
        }
        guard let n = result.value else { return nil }
        buffer.removeSubrange(min(n, maximum)...)
        return Datagram(
            bytes: buffer,
            pid: pid >= 0 ? pid : nil,
            uid: pid >= 0 ? uid : nil,
            truncated: truncated != 0,
            closedDescriptors: Int(closed)
        )
    }
}
