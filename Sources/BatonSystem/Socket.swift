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

    public init(fd: FileDescriptor, name: String, address: String) {
        self.fd = fd
        self.name = name
        self.address = address
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

/// Why a socket could not be bound, in words a user can act on.
public struct BindError: Error, CustomStringConvertible, Sendable {
    public var address: String
    public var underlying: SystemError

    public var description: String {
        switch underlying.errno {
        case .addressInUse:
            return "address \(address) is already in use: stop whatever listens there or choose another --listen"
        case .permissionDenied where address.hasPrefix("unix:"):
            return "permission denied creating \(address): baton's user needs write and search permission on its directory"
        case .permissionDenied:
            return "permission denied binding \(address): ports below 1024 need root or CAP_NET_BIND_SERVICE"
        case .addressNotAvailable:
            return "address \(address) is not available on this host: check the IP in --listen"
        default:
            return "cannot listen on \(address): \(underlying)"
        }
    }
}

public enum Sockets {
    /// Binds and listens on a TCP address. `host` nil means every address (IPv6 dual-stack, or IPv4 where
    /// IPv6 is unavailable).
    ///
    /// The corresponding C functions are `getaddrinfo`, `socket`, `bind` and `listen`.
    public static func listenTCP(host: String?, port: UInt16, backlog: Int32, display: String) throws(BindError)
        -> FileDescriptor
    {
        do {
            if let host {
                return try listenResolved(host: host, port: port, backlog: backlog)
            }
            do {
                return try listenResolved(host: "::", port: port, backlog: backlog, dualStack: true)
            } catch let error where error.errno == .addressFamilyNotSupported || error.errno == .addressNotAvailable {
                return try listenResolved(host: "0.0.0.0", port: port, backlog: backlog)
            }
        } catch {
            throw BindError(address: display, underlying: error)
        }
    }

    private static func listenResolved(host: String, port: UInt16, backlog: Int32, dualStack: Bool = false)
        throws(SystemError) -> FileDescriptor
    {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &result)
        guard status == 0, let info = result else {
            throw SystemError("getaddrinfo(\(host))", .noSuchAddressOrDevice)
        }
        defer { freeaddrinfo(result) }
        let fd = try syscall("socket") {
            socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        do {
            var one: Int32 = 1
            try syscall("setsockopt(SO_REUSEADDR)") {
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            }
            if info.pointee.ai_family == AF_INET6 {
                var v6only: Int32 = dualStack ? 0 : 1
                try syscall("setsockopt(IPV6_V6ONLY)") {
                    setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &v6only, socklen_t(MemoryLayout<Int32>.size))
                }
            }
            try syscall("bind") { bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) }
            try syscall("listen") { listen(fd, backlog) }
        } catch {
            _ = close(fd)
            throw error
        }
        return FileDescriptor(rawValue: fd)
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
    /// (`CBATON_O_PATH | O_NOFOLLOW`) and checked to be a socket owned by baton, through `/proc/self/fd`. A file swapped in
    /// after `bind` is refused, never changed.
    ///
    /// The corresponding C functions are `socket`, `fchmod`, `bind`, `openat`, `chmod` and `listen`.
    public static func listenUnix(path: String, mode: UInt32?, backlog: Int32) throws(BindError) -> FileDescriptor {
        let display = "unix:" + path
        let (directoryPath, name) = splitPath(path)
        let directory = open(directoryPath, CBATON_O_PATH | O_DIRECTORY | O_CLOEXEC)
        guard directory >= 0 else {
            throw BindError(address: display, underlying: SystemError("open(\(directoryPath))", Errno(rawValue: Glibc.errno)))
        }
        defer { _ = close(directory) }
        var info = stat()
        if fstatat(directory, name, &info, AT_SYMLINK_NOFOLLOW) == 0 {
            guard info.st_mode & S_IFMT == S_IFSOCK else {
                throw BindError(address: display, underlying: SystemError("bind (\(path) exists and is not a socket)", .fileExists))
            }
            do {
                let probe = try connectUnix(path: path)
                probe.closeOnce()
                throw BindError(address: display, underlying: SystemError("bind", .addressInUse))
            } catch let error as SystemError where error.errno == .connectionRefused {
                // Stale: nobody listens on it. Removed only if it is still the very file checked.
                var again = stat()
                if fstatat(directory, name, &again, AT_SYMLINK_NOFOLLOW) == 0, again.st_dev == info.st_dev,
                    again.st_ino == info.st_ino
                {
                    unlinkat(directory, name, 0)
                }
            } catch let error as BindError {
                throw error
            } catch {
                throw BindError(address: display, underlying: error as! SystemError)
            }
        }
        do throws(SystemError) {
            let fd = try unixSocket(type: SOCK_STREAM)
            do throws(SystemError) {
                if let mode {
                    try syscall("fchmod") { fchmod(fd.rawValue, mode_t(mode)) }
                }
                _ = try withUnixAddress(path) { address, length throws(SystemError) in
                    try syscall("bind") { bind(fd.rawValue, address, length) }
                }
                if let mode {
                    try setSocketFileMode(directory: directory, name: name, path: path, mode: mode)
                }
                try syscall("listen") { listen(fd.rawValue, backlog) }
                return fd
            } catch {
                fd.closeOnce()
                throw error
            }
        } catch {
            throw BindError(address: display, underlying: error)
        }
    }

    /// Gives the socket file `name` in `directory`, just made by `bind`, exactly `mode`, without following a
    /// symlink and only if it is still a socket owned by this process's user.
    private static func setSocketFileMode(directory: Int32, name: String, path: String, mode: UInt32) throws(SystemError) {
        let file = openat(directory, name, CBATON_O_PATH | O_NOFOLLOW | O_CLOEXEC)
        guard file >= 0 else { throw SystemError("open(\(path)) after bind", Errno(rawValue: Glibc.errno)) }
        defer { _ = close(file) }
        var info = stat()
        try syscall("fstat") { fstat(file, &info) }
        guard info.st_mode & S_IFMT == S_IFSOCK, info.st_uid == geteuid() else {
            throw SystemError(
                "bind (\(path) was replaced by another file right after bind: another user can write its directory; "
                    + "use a directory only baton's user can write)", .fileExists)
        }
        guard info.st_mode & 0o7777 != mode_t(mode) else { return }
        // chmod of the magic link reaches the inode the O_PATH fd holds, whatever is at `path` by now.
        if chmod("/proc/self/fd/\(file)", mode_t(mode)) != 0 {
            let code = Glibc.errno
            throw SystemError(
                code == ENOENT ? "chmod(\(path)) (needs /proc mounted to set the mode safely)" : "chmod(\(path))",
                Errno(rawValue: code))
        }
    }

    /// Removes the unix socket file at `path` if it is a socket owned by this process's user, in the directory it
    /// is in, without following a symlink; anything else there is left alone.
    ///
    /// The corresponding C functions are `fstatat` and `unlinkat`.
    public static func removeSocketFile(_ path: String) {
        let (directoryPath, name) = splitPath(path)
        let directory = open(directoryPath, CBATON_O_PATH | O_DIRECTORY | O_CLOEXEC)
        guard directory >= 0 else { return }
        defer { _ = close(directory) }
        var info = stat()
        guard fstatat(directory, name, &info, AT_SYMLINK_NOFOLLOW) == 0, info.st_mode & S_IFMT == S_IFSOCK,
            info.st_uid == geteuid()
        else { return }
        unlinkat(directory, name, 0)
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
    public static func connectUnix(path: String) throws(SystemError) -> FileDescriptor {
        let fd = try unixSocket(type: SOCK_STREAM)
        do {
            _ = try withUnixAddress(path) { address, length throws(SystemError) in
                try syscall("connect") { connect(fd.rawValue, address, length) }
            }
        } catch {
            fd.closeOnce()
            throw error
        }
        return fd
    }

    static func unixSocket(type: __socket_type) throws(SystemError) -> FileDescriptor {
        FileDescriptor(
            rawValue: try syscall("socket(AF_UNIX)") { socket(AF_UNIX, Int32(type.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        )
    }

    /// Calls `body` with a `sockaddr_un` for `path`; a leading `@` names an abstract socket.
    static func withUnixAddress<T>(
        _ path: String,
        _ body: (UnsafePointer<sockaddr>, socklen_t) throws(SystemError) -> T
    ) throws(SystemError) -> T {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { throw SystemError("bind(\(path): path too long)", .fileNameTooLong) }
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
    public static func accept(_ listener: FileDescriptor) throws(SystemError) -> FileDescriptor? {
        while true {
            let fd = cbaton_accept(listener.rawValue)
            if fd >= 0 { return FileDescriptor(rawValue: fd) }
            switch Glibc.errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK, ECONNABORTED: return nil
            case let code: throw SystemError("accept4", Errno(rawValue: code))
            }
        }
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

    /// Sends bytes without blocking and without SIGPIPE; returns false when the peer cannot take them.
    ///
    /// The corresponding C function is `send`.
    @discardableResult
    public static func sendNow(_ socket: FileDescriptor, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes {
                send(socket.rawValue, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            }
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                return false
            }
            offset += n
        }
        return true
    }

    /// A datagram socket that receives sd_notify-style messages with their sender's credentials.
    ///
    /// `path` is a filesystem path or, with a leading `@`, an abstract name.
    ///
    /// The corresponding C functions are `socket`, `setsockopt(SO_PASSCRED)` and `bind`.
    public static func notifySocket(path: String) throws(SystemError) -> FileDescriptor {
        let fd = try unixSocket(type: SOCK_DGRAM)
        do {
            var one: Int32 = 1
            try syscall("setsockopt(SO_PASSCRED)") {
                setsockopt(fd.rawValue, SOL_SOCKET, SO_PASSCRED, &one, socklen_t(MemoryLayout<Int32>.size))
            }
            try fd.setNonBlocking()
            _ = try withUnixAddress(path) { address, length throws(SystemError) in
                try syscall("bind") { bind(fd.rawValue, address, length) }
            }
        } catch {
            fd.closeOnce()
            throw error
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
        while true {
            let n = buffer.withUnsafeMutableBytes {
                cbaton_recv_with_credentials(socket.rawValue, $0.baseAddress, maximum, &pid, &uid, &truncated, &closed)
            }
            if n < 0 {
                switch Glibc.errno {
                case EINTR: continue
                case EAGAIN, EWOULDBLOCK: return nil
                case let code: throw SystemError("recvmsg", Errno(rawValue: code))
                }
            }
            buffer.removeSubrange(min(n, maximum)...)
            return Datagram(
                bytes: buffer, pid: pid >= 0 ? pid : nil, uid: pid >= 0 ? uid : nil, truncated: truncated != 0,
                closedDescriptors: Int(closed))
        }
    }
}
