internal import Glibc

/// Counts the client connections a process (and its descendants) holds, from the kernel: the sockets in
/// `/proc/PID/fd` (`socket:[INODE]`) matched against the TCP connections the kernel lists, for draining workers.
///
/// The kernel's list comes from sock_diag netlink (`NETLINK_INET_DIAG`, one dump per address family, with each
/// socket's inode in the reply), or where that is unavailable (a seccomp filter, a kernel without `inet_diag`) from
/// `/proc/net/tcp` and `/proc/net/tcp6`. A connection counts while it is `ESTABLISHED` or `CLOSE_WAIT` (the client
/// has closed, the app still holds it) and its local port is one of baton's TCP listeners: the app's own outgoing
/// connections (to a database) are not its clients'. Listening sockets are never counted. Unix stream connections
/// count the same way, by the path of the listener they were accepted from (sock_diag `AF_UNIX` with the socket's
/// name, or `/proc/net/unix`).
public enum Connections {
    /// One TCP connection the kernel knows: its socket inode and local port.
    public struct Entry: Sendable, Hashable {
        public var inode: UInt64
        public var localPort: UInt16

        public init(inode: UInt64, localPort: UInt16) {
            self.inode = inode
            self.localPort = localPort
        }
    }

    /// Where the kernel's list came from.
    public enum Source: String, Sendable {
        case sockDiag = "sock_diag"
        case procNet = "/proc/net/tcp"
    }

    /// The client connections each of `pids` holds, with its descendants: only sockets whose local port is in
    /// `ports` (baton's TCP listeners), never those in `excluding` (the listeners themselves). One look at the kernel's
    /// list serves every pid.
    public static func count(
        pids: [Int32],
        ports: Set<UInt16>,
        paths: Set<String> = [],
        excluding: Set<UInt64>
    ) -> [Int32: Int] {
        guard !pids.isEmpty else { return [:] }
        let held = pids.map { ($0, socketInodes(ofTree: $0).subtracting(excluding)) }
        guard held.contains(where: { !$0.1.isEmpty }) else {
            return Dictionary(uniqueKeysWithValues: pids.map { ($0, 0) })
        }
        var connected = Set<UInt64>()
        if !ports.isEmpty {
            connected = Set(established().entries.filter { ports.contains($0.localPort) }.map(\.inode))
        }
        if !paths.isEmpty { connected.formUnion(unixConnections(paths: paths)) }
        var result: [Int32: Int] = [:]
        for (pid, inodes) in held { result[pid] = inodes.intersection(connected).count }
        return result
    }

    /// The TCP connections the kernel lists as established (or closed by the peer only), and where it listed them.
    public static func established() -> (entries: [Entry], source: Source) {
        if let entries = sockDiag() { return (entries, .sockDiag) }
        return (procNet(), .procNet)
    }

    /// The inodes of the sockets `pid` and its descendants hold (at most 256 processes are looked at).
    public static func socketInodes(ofTree pid: Int32) -> Set<UInt64> {
        var result = Set<UInt64>()
        var pending = [pid]
        var seen = Set<Int32>()
        while let next = pending.popLast() {
            guard seen.insert(next).inserted, seen.count <= 256 else { continue }
            result.formUnion(socketInodes(of: next))
            pending.append(contentsOf: ProcInspector.children(of: next))
        }
        return result
    }

    /// The inodes of the sockets in `/proc/PID/fd`.
    static func socketInodes(of pid: Int32) -> Set<UInt64> {
        Set(Handover.sockets(of: pid).map(\.inode))
    }

    // MARK: - sock_diag

    /// `TCP_ESTABLISHED` and `TCP_CLOSE_WAIT` (include/net/tcp_states.h).
    static let states: UInt32 = (1 << 1) | (1 << 8)

    /// The connections of `families` (`AF_INET`, `AF_INET6`; nil: both) from sock_diag, or nil when it cannot be asked. A
    /// connection has the family of the listener that accepted it, so listeners of one family need one dump: each
    /// dump walks the kernel's whole table of TCP connections, shared by both families (262 144 buckets here), empty
    /// or not.
    ///
    /// The corresponding C calls are `socket(AF_NETLINK, SOCK_DGRAM, NETLINK_SOCK_DIAG)`, `send` and `recv`.
    public static func sockDiag(families: Set<Int32>? = nil) -> [Entry]? {
        let fd = socket(AF_NETLINK, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 4)  // NETLINK_SOCK_DIAG
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        // A kernel that does not answer within a second is not waited for: /proc/net/tcp is read instead.
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var result: [Entry] = []
        for (sequence, family) in [(1, UInt8(AF_INET)), (2, UInt8(AF_INET6))]
        where families?.contains(Int32(family)) ?? true {
            guard let entries = dump(fd, family: family, sequence: UInt32(sequence)) else { return nil }
            result += entries
        }
        return result
    }

    /// One `SOCK_DIAG_BY_FAMILY` dump of TCP sockets of `family` in ``states``.
    static func dump(_ fd: Int32, family: UInt8, sequence: UInt32) -> [Entry]? {
        // struct nlmsghdr (16 bytes: len, type, flags, seq, pid) + struct inet_diag_req_v2 (56 bytes: family,
        // protocol, ext, pad, states, struct inet_diag_sockid of 48 zero bytes).
        var request = [UInt8](repeating: 0, count: 72)
        func put32(_ value: UInt32, at offset: Int) {
            withUnsafeBytes(of: value) { request.replaceSubrange(offset..<offset + 4, with: $0) }
        }
        func put16(_ value: UInt16, at offset: Int) {
            withUnsafeBytes(of: value) { request.replaceSubrange(offset..<offset + 2, with: $0) }
        }
        put32(72, at: 0)
        put16(20, at: 4)  // SOCK_DIAG_BY_FAMILY
        put16(0x1 | 0x300, at: 6)  // NLM_F_REQUEST | NLM_F_DUMP
        put32(sequence, at: 8)
        request[16] = family
        request[17] = UInt8(IPPROTO_TCP)
        put32(states, at: 20)
        let sent = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == request.count else { return nil }

        var entries: [Entry] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { return nil }
            var offset = 0
            while offset + 16 <= n {
                let length = Int(load32(buffer, offset))
                let type = load16(buffer, offset + 4)
                guard length >= 16, offset + length <= n else { return nil }
                switch type {
                case 3: return entries  // NLMSG_DONE
                case 2: return nil  // NLMSG_ERROR: inet_diag (or this family) is not available
                default:
                    // struct inet_diag_msg: family, state, timer, retrans, then struct inet_diag_sockid (sport and
                    // dport in network order at 4 and 6 ... cookie), expires, rqueue, wqueue, uid, and the inode at 68.
                    let payload = offset + 16
                    if length >= 16 + 72 {
                        let port = UInt16(buffer[payload + 4]) << 8 | UInt16(buffer[payload + 5])
                        entries.append(Entry(inode: UInt64(load32(buffer, payload + 68)), localPort: port))
                    }
                }
                offset += (length + 3) & ~3  // NLMSG_ALIGN
            }
        }
    }

    static func load32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }
    }

    static func load16(_ bytes: [UInt8], _ offset: Int) -> UInt16 {
        bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt16.self) }
    }

    // MARK: - Unix stream connections

    /// The inodes of connected unix stream sockets named `paths` (an accepted socket carries its listener's name).
    public static func unixConnections(paths: Set<String>) -> Set<UInt64> {
        unixDiag(paths: paths) ?? procNetUnix(paths: paths)
    }

    /// From sock_diag, or nil when it cannot be asked.
    ///
    /// The corresponding C calls are `socket(AF_NETLINK, SOCK_DGRAM, NETLINK_SOCK_DIAG)`, `send` and `recv`.
    public static func unixDiag(paths: Set<String>) -> Set<UInt64>? {
        let fd = socket(AF_NETLINK, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 4)  // NETLINK_SOCK_DIAG
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        // struct nlmsghdr (16 bytes) + struct unix_diag_req (24 bytes: family, protocol, pad, states, ino, show,
        // cookie).
        var request = [UInt8](repeating: 0, count: 40)
        func put32(_ value: UInt32, at offset: Int) {
            withUnsafeBytes(of: value) { request.replaceSubrange(offset..<offset + 4, with: $0) }
        }
        put32(40, at: 0)
        withUnsafeBytes(of: UInt16(20)) { request.replaceSubrange(4..<6, with: $0) }  // SOCK_DIAG_BY_FAMILY
        withUnsafeBytes(of: UInt16(0x301)) { request.replaceSubrange(6..<8, with: $0) }  // NLM_F_REQUEST | NLM_F_DUMP
        put32(3, at: 8)
        request[16] = UInt8(AF_UNIX)
        put32(1 << 1, at: 20)  // TCP_ESTABLISHED: connected
        put32(1, at: 28)  // UDIAG_SHOW_NAME
        let sent = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == request.count else { return nil }
        var result = Set<UInt64>()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { return nil }
            var offset = 0
            while offset + 16 <= n {
                let length = Int(load32(buffer, offset))
                let type = load16(buffer, offset + 4)
                guard length >= 16, offset + length <= n else { return nil }
                switch type {
                case 3: return result
                case 2: return nil
                default:
                    // struct unix_diag_msg (16 bytes: family, type, state, pad, ino, cookie), then attributes
                    // (struct rtattr: len, type; UNIX_DIAG_NAME is 0 and holds sun_path).
                    let message = offset + 16
                    let end = offset + length
                    guard length >= 32, buffer[message + 1] == UInt8(SOCK_STREAM.rawValue) else { break }
                    let inode = UInt64(load32(buffer, message + 4))
                    var attribute = message + 16
                    while attribute + 4 <= end {
                        let size = Int(load16(buffer, attribute))
                        guard size >= 4, attribute + size <= end else { break }
                        if load16(buffer, attribute + 2) == 0 {
                            let name = buffer[(attribute + 4)..<(attribute + size)].prefix { $0 != 0 }
                            if paths.contains(String(decoding: name, as: UTF8.self)) { result.insert(inode) }
                        }
                        attribute += (size + 3) & ~3
                    }
                }
                offset += (length + 3) & ~3
            }
        }
    }

    /// `/proc/net/unix`: `Num RefCount Protocol Flags Type St Inode Path`, `St` 03 connected, `Type` 0001 stream.
    public static func procNetUnix(paths: Set<String>) -> Set<UInt64> {
        var result = Set<UInt64>()
        for line in ProcInspector.readFile("/proc/net/unix").split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ", maxSplits: 7, omittingEmptySubsequences: true)
            guard fields.count == 8, fields[4] == "0001", fields[5] == "03", let inode = UInt64(fields[6]),
                paths.contains(String(fields[7]))
            else { continue }
            result.insert(inode)
        }
        return result
    }

    // MARK: - /proc/net/tcp

    /// The kernel's list as ``established()`` reads it, but nil when neither sock_diag nor `/proc/net/tcp` could be
    /// read (a hardened unit without `AF_NETLINK` reads the file; an empty list then means no connection).
    public static func listed(families: Set<Int32>? = nil) -> [Entry]? {
        sockDiag(families: families) ?? readProcNet()
    }

    /// Both families' connections from `/proc/net/tcp` and `/proc/net/tcp6`.
    public static func procNet() -> [Entry] {
        readProcNet() ?? []
    }

    /// nil when `/proc/net/tcp` cannot be read (`/proc/net/tcp6` is missing without IPv6).
    static func readProcNet() -> [Entry]? {
        let text = ProcInspector.readFile("/proc/net/tcp")
        guard text.contains("local_address") else { return nil }
        return text.split(separator: "\n").dropFirst().compactMap(parseProcNetLine)
            + ProcInspector.readFile("/proc/net/tcp6").split(separator: "\n").dropFirst().compactMap(parseProcNetLine)
    }

    static func parseProcNetLine(_ line: Substring) -> Entry? {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count > 9, let state = UInt32(fields[3], radix: 16), state < 32, states & (1 << state) != 0,
            let colon = fields[1].lastIndex(of: ":"),
            let port = UInt16(fields[1][fields[1].index(after: colon)...], radix: 16),
            let inode = UInt64(fields[9]), inode != 0
        else { return nil }
        return Entry(inode: inode, localPort: port)
    }
}
