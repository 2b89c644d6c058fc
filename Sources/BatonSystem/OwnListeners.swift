internal import Glibc

extension ProcInspector {
    /// The TCP listening sockets that process `pid` or one of its descendants holds and that are not among
    /// `excluded` (baton's own listeners' inodes), as readable addresses (`127.0.0.1:8000`, `[::]:8000`): what an app
    /// listens on by itself. Read from `/proc/PID/fd` and the process's `/proc/PID/net/tcp` and `tcp6`.
    public static func ownListeners(of pid: Int32, excluding excluded: Set<UInt64>) -> [String] {
        var inodes = Set<UInt64>()
        var pending = [pid]
        var seen = Set<Int32>()
        while let next = pending.popLast() {
            guard seen.insert(next).inserted, seen.count < 256 else { continue }
            guard let directory = opendir("/proc/\(next)/fd") else { continue }
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) {
                    String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
                }
                guard Int(name) != nil else { continue }
                let target = readLink("/proc/\(next)/fd/\(name)")
                if target.hasPrefix("socket:["), let inode = UInt64(target.dropFirst(8).dropLast()),
                    !excluded.contains(inode)
                {
                    inodes.insert(inode)
                }
            }
            closedir(directory)
            pending.append(contentsOf: children(of: next))
        }
        guard !inodes.isEmpty else { return [] }
        var result: [String] = []
        for table in ["tcp", "tcp6"] {
            for line in readFile("/proc/\(pid)/net/\(table)").split(separator: "\n").dropFirst() {
                let fields = line.split(separator: " ")
                // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                guard fields.count > 9, fields[3] == "0A", let inode = UInt64(fields[9]), inodes.contains(inode),
                    let address = procAddress(fields[1])
                else { continue }
                if !result.contains(address) { result.append(address) }
            }
        }
        return result
    }

    /// `0100007F:1F40` (IPv4) or 32 hex digits and a port (IPv6), as `/proc/net/tcp*` writes them, readable.
    static func procAddress(_ text: Substring) -> String? {
        let parts = text.split(separator: ":")
        guard parts.count == 2, let port = UInt16(parts[1], radix: 16) else { return nil }
        let hex = Array(parts[0].utf8)
        guard hex.count == 8 || hex.count == 32 else { return nil }
        // Each 32-bit word is printed as a host-order (little-endian) number.
        var bytes: [UInt8] = []
        for word in stride(from: 0, to: hex.count, by: 8) {
            guard let value = UInt32(String(decoding: hex[word..<word + 8], as: UTF8.self), radix: 16) else {
                return nil
            }
            withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
        }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let family = bytes.count == 4 ? AF_INET : AF_INET6
        guard bytes.withUnsafeBytes({ inet_ntop(family, $0.baseAddress, &text, socklen_t(text.count)) }) != nil else {
            return nil
        }
        let host = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return family == AF_INET ? "\(host):\(port)" : "[\(host)]:\(port)"
    }
}
