internal import Glibc
import SystemPackage

extension ListeningSocket {
    /// The address the socket is bound to, as the kernel has it: a readable form (`127.0.0.1:8000`,
    /// `[::]:8000`, `unix:/run/app.sock`), the TCP port, and the path of a unix socket. Nil if it cannot be read.
    ///
    /// The corresponding C functions are `getsockname` and `inet_ntop`.
    public func boundAddress() -> (description: String, port: UInt16?, path: String?)? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd.rawValue, $0, &length) }
        }
        guard result == 0 else { return nil }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address in
                    var raw = address.pointee.sin_addr
                    guard inet_ntop(AF_INET, &raw, &text, socklen_t(text.count)) != nil else { return nil }
                    let port = UInt16(bigEndian: address.pointee.sin_port)
                    return (
                        String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                            + ":\(port)", port, nil
                    )
                }
            }
        case AF_INET6:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address in
                    var raw = address.pointee.sin6_addr
                    guard inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count)) != nil else { return nil }
                    let port = UInt16(bigEndian: address.pointee.sin6_port)
                    return (
                        "[" + String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                            + "]:\(port)", port, nil
                    )
                }
            }
        case AF_UNIX:
            let pathOffset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path) ?? 2
            guard Int(length) > pathOffset else { return nil }
            let bytes = withUnsafeBytes(of: &storage) { Array($0[pathOffset..<Int(length)]) }
            guard bytes.first != 0 else { return nil }  // abstract
            let path = String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            return ("unix:" + path, nil, path)
        default:
            return nil
        }
    }
}
