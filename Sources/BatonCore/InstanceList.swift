/// What `baton ls` shows: every baton found on the host, and what each said (or why it said nothing).
public struct InstanceListing: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        /// It answered with its status.
        case running
        /// Nothing listens on its control socket: a file a killed baton left behind.
        case stale
        /// It did not answer within the deadline: paused (SIGSTOP) or hung.
        case notAnswering = "not-answering"
        /// Its control socket is not ours to use.
        case permissionDenied = "permission-denied"
        /// Something answered, but not as baton does.
        case unknown
    }

    /// The instance name: the one it reported, or its socket file's name.
    public var name: String
    /// Its control socket.
    public var control: String
    public var state: State
    /// Its status, when it answered.
    public var status: StatusReport?
    /// What it said instead of its status (``State/unknown``).
    public var message: String?

    public init(name: String, control: String, state: State, status: StatusReport? = nil, message: String? = nil) {
        self.name = name
        self.control = control
        self.state = state
        self.status = status
        self.message = message
    }

    /// The name a control socket's file suggests: `shop` for `/run/baton/shop.sock`.
    public static func name(forControl path: String) -> String {
        let file = path.split(separator: "/").last.map(String.init) ?? path
        return file.hasSuffix(".sock") ? String(file.dropLast(5)) : file
    }
}

/// Renders `baton ls`'s table: one row per instance, its columns aligned. Text from the launchers is shown with its
/// control characters escaped.
public enum InstanceList {
    public static let header = ["NAME", "PID", "VERSION", "SERVING", "WORKERS", "LISTENERS", "LAST RELOAD"]

    public static func text(_ instances: [InstanceListing], now: Double) -> String {
        let rows = [header] + instances.map { row($0, now: now) }
        var widths = [Int](repeating: 0, count: header.count)
        for row in rows {
            for (column, cell) in row.enumerated() where column < widths.count {
                widths[column] = max(widths[column], cell.count)
            }
        }
        var out = ""
        for row in rows {
            var line = ""
            for (column, cell) in row.enumerated() {
                let last = column == row.count - 1
                line += last ? cell : cell + String(repeating: " ", count: widths[column] - cell.count + 2)
            }
            out += line + "\n"
        }
        return out
    }

    /// One instance's cells, in the order of ``header``.
    static func row(_ instance: InstanceListing, now: Double) -> [String] {
        let clean = TerminalText.sanitized
        guard instance.state == .running, let status = instance.status else {
            let why =
                switch instance.state {
                case .stale: "not running: stale control socket \(clean(instance.control)) (remove it)"
                case .notAnswering: "not answering at \(clean(instance.control)) (paused or hung?)"
                case .permissionDenied: "permission denied on \(clean(instance.control)) (run as root or its user)"
                case .unknown, .running:
                    instance.message.map { "answered without its status: \(clean($0))" }
                        ?? "answered, but not as baton, at \(clean(instance.control))"
                }
            return [clean(instance.name), "-", "-", "-", "-", "-", why]
        }
        let serving = status.generations.first { $0.state == "serving" || $0.state.hasPrefix("not serving") }
        let workers = serving.map { generation in
            "\(generation.workers.filter { $0.state == "ready" }.count)/\(generation.workers.count)"
        }
        let listeners = status.listeners.map { clean($0.address) }.joined(separator: ",")
        var reload = "none"
        if let last = status.lastReload {
            let ago = StatusFormatter.age(now - last.finishedAt).shortDescription
            reload = "\(last.ok ? "ok" : "failed") (generation \(last.generation)) \(ago) ago"
        }
        if status.reloading { reload = "reloading; last: \(reload)" }
        return [
            clean(status.name), "\(status.pid)", clean(status.version), serving.map { "\($0.id)" } ?? "none",
            workers ?? "-", listeners.isEmpty ? "-" : listeners, reload,
        ]
    }
}
