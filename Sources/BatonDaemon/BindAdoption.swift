public import BatonCore
internal import BatonSystem

/// Bind adoption on the launcher's side: where `libbaton-adopt.so` is, the workers' `LD_PRELOAD`, and the
/// one-line diagnosis when a worker bound baton's address itself.
public enum BindAdoption {
    /// The library's path: beside baton's executable, or `../lib/baton/` from it; nil if neither exists.
    public static let library: String? = {
        guard let executable = OS.currentExecutable() else { return nil }
        return AdoptBind.libraryCandidates(executable: executable).first {
            AdoptBind.isPreloadable($0) && OS.fileExists($0)
        }
    }()

    /// Node's drain script (`baton-node.js`) where the library is; nil if it is not there.
    public static let nodeDrain: String? = {
        guard let executable = OS.currentExecutable() else { return nil }
        return AdoptBind.libraryCandidates(executable: executable).lazy.map { library in
            String(library[..<library.lastIndex(of: "/")!]) + "/" + AdoptBind.nodeDrainName
        }.first { AdoptBind.isPreloadable($0) && OS.fileExists($0) }
    }()

    /// Why adoption cannot work in this configuration, or nil when it can (or is off).
    public static func unavailable(_ configuration: LaunchConfiguration) -> String? {
        guard configuration.adoptBind, library == nil else { return nil }
        let places = OS.currentExecutable().map { AdoptBind.libraryCandidates(executable: $0) } ?? []
        return
            "bind adoption is off: \(AdoptBind.libraryName) is not at \(places.joined(separator: " or ")) (a development build makes it with bash preload/build.sh); apps must use the sockets in LISTEN_FDS"
    }

    /// The worker's environment, with the library preloaded when adoption is on, and Node's drain required when the
    /// connection rescue is on.
    static func workerEnvironment(_ environment: [String], configuration: LaunchConfiguration) -> [String] {
        var result = environment
        if configuration.rescueConnections, let nodeDrain {
            result = AdoptBind.environment(result, nodeRequiring: nodeDrain)
        }
        guard configuration.adoptBind, let library else { return result }
        return AdoptBind.environment(result, preloading: library)
    }

    /// How long a draining worker has to answer the connections it took before its stop signal follows. 250 ms was
    /// not always enough on a loaded 2-core machine (WEBrick, 2 of 10 344 requests reset in a sanitizer stage).
    static let drainGrace = Duration.seconds(1)

    /// Whether `libbaton-adopt.so` serves process `pid`: it is loaded there, and the program calls the C library's
    /// socket functions. A Go program (which cgo links dynamically, so the preload loads) makes its own system calls:
    /// the library sees none of them, and Go's runtime catches every signal, so `SigCgt:` cannot tell.
    static func libraryServes(_ pid: Int32) -> Bool {
        ProcInspector.hasMapped(pid, fileNamed: AdoptBind.libraryName) && !ProcInspector.isGoProgram(pid)
    }

    /// Asks worker `pid` to stop: when `libbaton-adopt.so` is loaded in it (baton's preload, or the app's own) and its
    /// drain handler installed, first the drain signal (it takes no new connection from here on), then `signal`
    /// after ``drainGrace``; otherwise `signal` at once (``libraryServes(_:)``).
    /// `delay`, when given, is the least the stop signal waits (the connection rescue's); `before` runs just before a
    /// stop signal that waits goes.
    static func stop(
        _ pid: Int32,
        signal: Int32,
        loop: EventLoop,
        delay: Duration? = nil,
        before: (@Sendable () -> Void)? = nil
    ) {
        if ProcInspector.catches(pid, signal: Signals.adoptDrain), libraryServes(pid), OS.kill(pid, Signals.adoptDrain)
        {
            OS.signal(pid, signal, after: max(drainGrace, delay ?? .zero), on: loop, before: before)
        } else if let delay {
            OS.signal(pid, signal, after: delay, on: loop, before: before)
        } else {
            OS.kill(pid, signal)
        }
    }

    /// The diagnosis for a worker whose last stderr lines say it could not bind one of `listeners`; or, given the
    /// worker's pid (at the ready timeout, while it runs), one that listens on a socket of its own instead.
    static func diagnosis(
        stderr: [String],
        listeners: [ListeningSocket],
        pid: Int32? = nil,
        listenerInodes: Set<UInt64> = []
    ) -> String? {
        let inUse = AdoptBind.addressInUseLine(in: stderr) != nil
        let own = !inUse ? pid.map { ProcInspector.ownListeners(of: $0, excluding: listenerInodes) } ?? [] : []
        guard inUse || !own.isEmpty else { return nil }
        let described = listeners.map { listener in
            let bound = listener.boundAddress()
            // An address baton bound reads as the user wrote it; a passed socket as the kernel has it.
            let address =
                listener.passed ? bound?.description ?? listener.address : listener.address
            return AdoptBind.Listener(address: address, port: bound?.port, path: bound?.path)
        }
        return inUse
            ? AdoptBind.diagnosis(stderr: stderr, listeners: described)
            : AdoptBind.diagnosis(ownListeners: own, listeners: described)
    }
}
