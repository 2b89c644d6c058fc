/// Bind adoption: an app that binds an address baton serves gets baton's listening socket instead
/// (`libbaton-adopt.so`, preloaded into the workers). The plain-Swift parts: the library's name and where baton
/// looks for it, the workers' `LD_PRELOAD`, and the one-line diagnosis when the app bound the address itself.
public enum AdoptBind {
    /// The preload library's file name.
    public static let libraryName = "libbaton-adopt.so"

    /// Where baton looks for the library, first choice first: beside its own executable (a development build),
    /// then `../lib/baton/` from it (`/usr/bin/baton` finds `/usr/lib/baton/`, as the Debian package installs it).
    public static func libraryCandidates(executable: String) -> [String] {
        guard let slash = executable.lastIndex(of: "/") else { return [] }
        let directory = String(executable[..<slash])
        var candidates = [directory + "/" + libraryName]
        if let parent = directory.lastIndex(of: "/") {
            candidates.append(String(directory[..<parent]) + "/lib/baton/" + libraryName)
        }
        return candidates
    }

    /// Whether `path` can stand in `LD_PRELOAD`: absolute, and free of the separators (space, colon) and control
    /// characters the dynamic loader would split or stumble on.
    public static func isPreloadable(_ path: String) -> Bool {
        path.hasPrefix("/") && !path.utf8.contains { $0 == 0x20 || $0 == 0x3a || $0 < 0x20 || $0 == 0x7f }
    }

    /// The worker environment with `library` added to `LD_PRELOAD`, after whatever the app already preloads (so that
    /// a sanitizer runtime stays first and the app's own interposers see the calls first); unchanged if it is already
    /// there.
    public static func environment(_ environment: [String], preloading library: String) -> [String] {
        var result = environment
        let prefix = "LD_PRELOAD="
        guard let index = result.firstIndex(where: { $0.hasPrefix(prefix) }) else {
            result.append(prefix + library)
            return result
        }
        let existing = result[index].dropFirst(prefix.count)
        let entries = existing.split(whereSeparator: { $0 == " " || $0 == ":" })
        if entries.contains(where: { $0 == library }) { return result }
        result[index] = entries.isEmpty ? prefix + library : prefix + existing + ":" + library
        return result
    }

    /// Node's drain for the connection rescue (`preload/baton-node.js`), found where the library is.
    public static let nodeDrainName = "baton-node.js"

    /// The worker environment with `--require=script` added to `NODE_OPTIONS`, after whatever the app already has
    /// there; unchanged if it is already there. `script` must be preloadable (no space: Node splits on it).
    public static func environment(_ environment: [String], nodeRequiring script: String) -> [String] {
        var result = environment
        let prefix = "NODE_OPTIONS="
        let option = "--require=" + script
        guard let index = result.firstIndex(where: { $0.hasPrefix(prefix) }) else {
            result.append(prefix + option)
            return result
        }
        let existing = result[index].dropFirst(prefix.count)
        if existing.split(separator: " ").contains(where: { $0 == option }) { return result }
        result[index] = existing.isEmpty ? prefix + option : prefix + existing + " " + option
        return result
    }

    /// A listener as the diagnosis names it.
    public struct Listener: Sendable, Equatable {
        public var address: String
        /// The TCP port; nil for a unix socket.
        public var port: UInt16?
        /// The socket path, for a unix socket.
        public var path: String?

        public init(address: String, port: UInt16?, path: String? = nil) {
            self.address = address
            self.port = port
            self.path = path
        }
    }

    /// The last line that reports `EADDRINUSE` (Node's `listen EADDRINUSE`, Python's `[Errno 98] Address already in
    /// use`, Go's `bind: address already in use`, Java's `BindException`), if any.
    public static func addressInUseLine(in lines: [String]) -> String? {
        lines.last { $0.contains("EADDRINUSE") || $0.lowercased().contains("address already in use") }
    }

    /// The one-line diagnosis for a worker that bound one of baton's addresses itself and failed with
    /// `EADDRINUSE` (seen in its last stderr lines), naming the listener it collided with; nil if nothing says so.
    public static func diagnosis(stderr: [String], listeners: [Listener]) -> String? {
        guard !listeners.isEmpty, let line = addressInUseLine(in: stderr) else { return nil }
        let numbers = Set(line.split(whereSeparator: { !$0.isNumber }).compactMap { UInt16($0) })
        // Ports the line names as part of an address (":8000"): if there are some and none is baton's, the app
        // collided with something else.
        let addressPorts = line.split(separator: ":").dropFirst().compactMap { UInt16($0.prefix { $0.isNumber }) }
        if let listener = listeners.first(where: { $0.path.map { line.contains($0) } ?? false })
            ?? listeners.first(where: { $0.port.map { numbers.contains($0) } ?? false })
        {
            return "the app bound \(listener.address) itself (EADDRINUSE): use LISTEN_FDS, or see --no-adopt-bind"
        }
        guard addressPorts.isEmpty else { return nil }
        let listener = listeners[0]
        return "the app bound \(listener.address) itself (EADDRINUSE): use LISTEN_FDS, or see --no-adopt-bind"
    }

    /// The one-line diagnosis for a worker that did not become ready while listening on sockets of its own
    /// (`ownListeners`, such as `[::]:8000`) instead of on baton's.
    public static func diagnosis(ownListeners: [String], listeners: [Listener]) -> String? {
        guard let own = ownListeners.first, !listeners.isEmpty else { return nil }
        let ours = listeners.map(\.address).joined(separator: ", ")
        return
            "the app listens on \(own) itself, not on baton's \(ours): bind the address baton serves, use LISTEN_FDS, or change --listen"
    }
}
