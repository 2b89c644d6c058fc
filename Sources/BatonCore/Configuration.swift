/// Everything `baton run` needs, parsed and checked.
public struct LaunchConfiguration: Sendable {
    public var name: String
    /// The app's command: the executable (resolved to a path before spawning) and its arguments.
    public var command: [String]
    public var listeners: [ListenSpec]
    public var backlog: Int32
    /// File mode of unix listeners, such as 0o660.
    public var unixMode: UInt32?
    public var readyMode: ReadyMode
    /// The stop signal's number.
    public var stopSignal: Int32
    public var controlPath: String
    public var supervisor: SupervisorSettings
    /// Run workers as this user and group (baton keeps its own privileges and the listeners).
    public var workerUser: WorkerUser?
    /// Preload `libbaton-adopt.so` into the workers, so that an app binding an address baton serves gets baton's
    /// listener (`--no-adopt-bind` turns it off).
    public var adoptBind = true
    /// Where `GET /metrics` is served (`--metrics`); nil: nowhere.
    public var metrics: ListenAddress?
    /// Take over the connections a retiring worker leaves open (`--no-rescue` turns it off).
    public var rescueConnections = true

    public struct WorkerUser: Sendable, Equatable {
        public var uid: UInt32
        public var gid: UInt32
        public var groups: [UInt32]

        public init(uid: UInt32, gid: UInt32, groups: [UInt32]) {
            self.uid = uid
            self.gid = gid
            self.groups = groups
        }
    }

    public init(
        name: String,
        command: [String],
        listeners: [ListenSpec],
        backlog: Int32 = 4096,
        unixMode: UInt32? = nil,
        readyMode: ReadyMode = .listen,
        stopSignal: Int32 = 15,
        controlPath: String,
        supervisor: SupervisorSettings = SupervisorSettings()
    ) {
        self.name = name
        self.command = command
        self.listeners = listeners
        self.backlog = backlog
        self.unixMode = unixMode
        self.readyMode = readyMode
        self.stopSignal = stopSignal
        self.controlPath = controlPath
        self.supervisor = supervisor
    }

    /// The instance name when `--name` is not given.
    public static let defaultName = "baton"

    /// How baton calls itself in its log lines: `baton` for the default name (not `baton[baton]`), `baton[shop]`
    /// for another. (`baton status` says `baton` or `baton shop`.)
    public static func displayName(_ name: String) -> String {
        name == defaultName ? "baton" : "baton[\(name)]"
    }

    /// The control socket's path when `--control` is not given: `NAME.sock` under `$RUNTIME_DIRECTORY` (its
    /// first entry) or `/run/baton`.
    public static func defaultControlPath(name: String, runtimeDirectory: String?) -> String {
        let directory = runtimeDirectory?.split(separator: ":").first.map(String.init) ?? "/run/baton"
        return directory + "/" + name + ".sock"
    }

    /// Where a client looks for the control socket of instance `name` when no `--control` is given, in order:
    /// the launcher's own default, then the runtime directories the shipped units use (`/run/baton-NAME` for
    /// `baton@NAME.service`, `/run/NAME` for an app's own unit with `RuntimeDirectory=NAME`).
    public static func controlPathCandidates(name: String, runtimeDirectory: String?) -> [String] {
        var candidates = [defaultControlPath(name: name, runtimeDirectory: runtimeDirectory)]
        for directory in ["/run/baton", "/run/baton-\(name)", "/run/\(name)"] {
            let path = directory + "/" + name + ".sock"
            if !candidates.contains(path) { candidates.append(path) }
        }
        return candidates
    }

    /// Whether `name` is usable as an instance name (it becomes a file name).
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 64 && name != "." && name != ".."
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.@".contains($0)) }
    }

    /// The environment a worker starts with: baton's own, without what its manager meant for baton itself.
    public static func workerBaseEnvironment(_ environment: [String]) -> [String] {
        let dropped: Set<String> = [
            "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
            "JOURNAL_STREAM", "BATON_GENERATION", "BATON_WORKER", "BATON_NOTIFY_FD", "MAINPID",
        ]
        return environment.filter { entry in
            guard let equals = entry.firstIndex(of: "=") else { return false }
            return !dropped.contains(String(entry[..<equals]))
        }
    }
}
