internal import Glibc
internal import SystemPackage

/// Finds the control sockets of the batons on this host and asks them all at once, each within a deadline, for
/// `baton ls`.
public enum ControlSockets {
    /// What a control socket said to one request.
    public enum Answer: Sendable, Equatable {
        /// The first line it sent back (without the newline).
        case reply([UInt8])
        /// Nothing listens on it (ECONNREFUSED): a socket file a killed baton left behind.
        case stale
        /// It accepted the connection (or kept it queued) but sent no line before the deadline: a paused or hung baton.
        case silent
        /// Connecting was not allowed (EACCES, EPERM).
        case denied
        /// It closed the connection without a line, or the socket failed otherwise.
        case failed(String)
    }

    /// The control sockets under the runtime directories a launcher puts them in: every `*.sock` socket in each
    /// entry of `runtimeDirectories` (`$RUNTIME_DIRECTORY`'s) and `/run/baton`, in each `/run/baton-*` (the
    /// `baton@NAME.service` template's `RuntimeDirectory=`), and `/run/NAME/NAME.sock` (an app's own unit with
    /// `RuntimeDirectory=NAME`). Only sockets that no one but their owner may use are listed, as baton makes its
    /// control socket: an app's listener beside it (`web.sock`, mode 666) or another program's socket
    /// (`/run/containerd/containerd.sock`, mode 660) is not asked. A file reached twice (through a symlink, or a
    /// directory named twice) is listed once.
    public static func discover(runtimeDirectories: [String], run: String = "/run") -> [String] {
        var directories = runtimeDirectories + ["\(run)/baton"]
        var named: [String] = []
        for entry in entries(of: run).sorted() where isDirectory("\(run)/\(entry)") {
            if entry.hasPrefix("baton-") {
                directories.append("\(run)/\(entry)")
            } else if entry != "baton" {
                named.append("\(run)/\(entry)/\(entry).sock")
            }
        }
        var seen = Set<String>()
        var result: [String] = []
        func add(_ path: String) {
            var info = stat()
            guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK, info.st_mode & 0o077 == 0,
                seen.insert("\(info.st_dev):\(info.st_ino)").inserted
            else { return }
            result.append(path)
        }
        for directory in directories {
            for entry in entries(of: directory).sorted() where entry.hasSuffix(".sock") { add("\(directory)/\(entry)") }
        }
        for path in named { add(path) }
        return result
    }

    /// Sends `request` to each socket in `paths` and waits, all of them at once, for each one's first line, at most
    /// `timeout` in all: a socket that does not answer in time is ``Answer/silent`` and costs no more than that.
    /// Of a reply, at most `maximumReply` bytes are read.
    ///
    /// The corresponding C functions are `connect`, `send` and `poll`.
    public static func ask(
        _ paths: [String],
        _ request: [UInt8],
        timeout: Duration,
        maximumReply: Int = 4 << 20
    ) -> [Answer] {
        var answers = [Answer?](repeating: nil, count: paths.count)
        var fds = [Int32](repeating: -1, count: paths.count)
        var received = [[UInt8]](repeating: [], count: paths.count)
        defer { for fd in fds where fd >= 0 { close(fd) } }
        for (index, path) in paths.enumerated() {
            do throws(SystemError) {
                let socket = try Sockets.unixSocket(type: SOCK_STREAM)
                let fd = socket.release().rawValue
                fds[index] = fd
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                // A unix stream connect completes at once, or fails with EAGAIN when the listener's queue is full.
                let connected = try Sockets.withUnixAddress(path) { address, length throws(SystemError) in
                    try syscall(blocking: "connect") { connect(fd, address, length) }
                }
                guard connected.value != nil else {
                    answers[index] = .silent
                    continue
                }
                _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            } catch {
                switch error.errno {
                case .connectionRefused, .noSuchFileOrDirectory: answers[index] = .stale
                case .permissionDenied, .notPermitted: answers[index] = .denied
                default: answers[index] = .failed(error.description)
                }
            }
        }
        let deadline = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let waiting = paths.indices.filter { answers[$0] == nil }
            let left = deadline - ContinuousClock.now
            guard !waiting.isEmpty, left > .zero else { break }
            var entries = waiting.map { pollfd(fd: fds[$0], events: Int16(POLLIN), revents: 0) }
            let milliseconds = Int32(
                clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1
            )
            if poll(&entries, nfds_t(entries.count), milliseconds) <= 0 { continue }
            for (slot, index) in waiting.enumerated() where entries[slot].revents != 0 {
                let n = buffer.withUnsafeMutableBytes {
                    recv(fds[index], $0.baseAddress, $0.count, Int32(MSG_DONTWAIT))
                }
                if n < 0 && (Glibc.errno == EAGAIN || Glibc.errno == EINTR) { continue }
                if n <= 0 {
                    answers[index] = .failed(
                        n == 0 ? "closed without answering" : String(cString: strerror(Glibc.errno))
                    )
                    continue
                }
                received[index] += buffer[0..<n]
                if let newline = received[index].firstIndex(of: UInt8(ascii: "\n")) {
                    answers[index] = .reply(Array(received[index][..<newline]))
                } else if received[index].count > maximumReply {
                    answers[index] = .failed("a reply of more than \(maximumReply) bytes")
                }
            }
        }
        return answers.map { $0 ?? .silent }
    }

    static func entries(of directory: String) -> [String] {
        guard let handle = opendir(directory) else { return [] }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
    }
}
