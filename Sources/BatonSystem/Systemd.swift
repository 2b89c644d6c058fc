internal import CBatonSystem
internal import CSystemd
internal import Glibc
public import SystemPackage

/// The calls baton makes into libsystemd.
public enum Systemd {
    /// The sockets passed to this process by its service manager (`LISTEN_FDS`, `LISTEN_PID`,
    /// `LISTEN_FDNAMES`), with their names. The variables are removed from the environment, and the fds are
    /// set close-on-exec.
    ///
    /// The corresponding C function is `sd_listen_fds_with_names`.
    public static func listenFDs() throws(SystemError) -> [(fd: FileDescriptor, name: String)] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(1, &names)
        if count < 0 { throw SystemError("sd_listen_fds_with_names", Errno(rawValue: -count)) }
        defer {
            if let names {
                var index = 0
                while let name = names[index] {
                    free(name)
                    index += 1
                }
                free(names)
            }
        }
        var result: [(fd: FileDescriptor, name: String)] = []
        for index in 0..<Int(count) {
            let fd = FileDescriptor(rawValue: SD_LISTEN_FDS_START + Int32(index))
            let name = names.flatMap { $0[index] }.map { String(cString: $0) } ?? "unknown"
            result.append((fd, name))
        }
        return result
    }

    /// Whether `fd` is a listening stream socket (as opposed to a datagram socket or a stored connection).
    ///
    /// The corresponding C function is `sd_is_socket`.
    public static func isListeningStreamSocket(_ fd: FileDescriptor) -> Bool {
        sd_is_socket(fd.rawValue, AF_UNSPEC, Int32(SOCK_STREAM.rawValue), 1) > 0
    }

    /// Whether a service manager listens for state changes (`NOTIFY_SOCKET` is set; baton leaves it set).
    public static var managerListens: Bool { getenv("NOTIFY_SOCKET") != nil }

    /// Sends a state change to the service manager when `NOTIFY_SOCKET` is set; returns whether it was sent.
    ///
    /// The corresponding C function is `sd_notify`.
    @discardableResult
    public static func notify(_ state: String) -> Bool {
        sd_notify(0, state) > 0
    }

    /// Sends a state change with fds attached, for the fd store (`FDSTORE=1`).
    ///
    /// The corresponding C function is `sd_pid_notify_with_fds`.
    @discardableResult
    public static func notify(_ state: String, fds: [FileDescriptor]) -> Bool {
        var raw = fds.map(\.rawValue)
        return sd_pid_notify_with_fds(0, 0, state, &raw, UInt32(raw.count)) > 0
    }

    /// The watchdog interval the manager set for this process, if any.
    ///
    /// The corresponding C function is `sd_watchdog_enabled`.
    public static func watchdogMicroseconds() -> UInt64? {
        var usec: UInt64 = 0
        return sd_watchdog_enabled(0, &usec) > 0 ? usec : nil
    }

    /// Sends one structured entry to the journal. Each field is `NAME=value`.
    ///
    /// The corresponding C function is `sd_journal_sendv`.
    @discardableResult
    public static func journalSend(_ fields: [String]) -> Bool {
        var storage = fields.map { Array($0.utf8) }
        var iovecs: [iovec] = []
        iovecs.reserveCapacity(storage.count)
        return storage.withUnsafeMutableBufferPointer { buffers in
            for index in buffers.indices {
                buffers[index].withUnsafeMutableBytes { raw in
                    iovecs.append(iovec(iov_base: raw.baseAddress, iov_len: raw.count))
                }
            }
            return iovecs.withUnsafeBufferPointer { sd_journal_sendv($0.baseAddress, Int32($0.count)) } == 0
        }
    }
}
