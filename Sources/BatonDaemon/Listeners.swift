import BatonCore
import BatonSystem
import Logging
import SystemPackage

/// Keeps the listening sockets that every worker shares listening: a worker's `shutdown()` of one makes the kernel
/// refuse every connection, and its `listen(fd, 1)` shrinks the backlog for everyone.
///
/// A shut-down listener hangs up, which the event loop reports at once; the backlog is checked at each generation's
/// start, readiness, retirement or rollback, and at each status request. TCP listeners are repaired by listening
/// again with baton's backlog; a shut-down unix socket cannot be, and is reported until baton is restarted.
struct ListenerGuard: Sendable {
    struct Finding: Sendable {
        var listener: ListeningSocket
        var what: String
        var repaired: Bool
        /// Not a worker's doing to undo: the workers do not accept fast enough, or not at all.
        var stalled = false
    }

    private struct Watched: Sendable {
        var socket: ListeningSocket
        /// The kernel's backlog for a TCP listener when baton started, to listen again with.
        var tcpBacklog: Int?
        /// A filter was there from the start (the service manager's or the admin's): left alone.
        var filteredAtStart = false
        var refusing = false
    }

    private var watched: [Watched]
    private let backlog: Int32
    private var stalls = LogRateLimit(burst: 1, interval: .seconds(60))

    init(_ listeners: [ListeningSocket], backlog: Int32) {
        self.backlog = backlog
        watched = listeners.map { listener in
            let condition = listener.condition()
            return Watched(socket: listener, tcpBacklog: condition.backlog, filteredAtStart: condition.filtered)
        }
    }

    /// The listeners that refuse connections now (shut down, not repairable).
    var refusing: [ListeningSocket] { watched.filter(\.refusing).map(\.socket) }

    /// Looks at every listener and repairs what it can; returns what it found.
    mutating func check() -> [Finding] {
        var findings: [Finding] = []
        for index in watched.indices where !watched[index].refusing {
            let socket = watched[index].socket
            let condition = socket.condition()
            // A socket filter a worker attached may drop every connection: removed, unless it was locked on.
            if condition.filtered && !watched[index].filteredAtStart {
                let removed = (try? socket.detachFilter()) != nil
                if !removed { watched[index].refusing = true }
                findings.append(
                    Finding(
                        listener: socket,
                        what: removed
                            ? "given a socket filter (SO_ATTACH_FILTER), now removed"
                            : "given a locked socket filter (SO_ATTACH_FILTER + SO_LOCK_FILTER) that may drop every connection",
                        repaired: removed
                    )
                )
                if !removed { continue }
            }
            if let tcpBacklog = watched[index].tcpBacklog {
                // Accepting looks stalled: the queue is full, so the kernel drops new connections (SYNs).
                if let queued = condition.queued, let now = condition.backlog, now > 0, queued >= now,
                    condition.accepting, stalls.admit(now: .now).log
                {
                    findings.append(
                        Finding(
                            listener: socket,
                            what: "accepting looks stalled: its queue is full (\(queued) connections)",
                            repaired: true,
                            stalled: true
                        )
                    )
                }
                var what: [String] = []
                if !condition.accepting || condition.shutDown { what.append("shut down (shutdown())") }
                if let now = condition.backlog, now != tcpBacklog, condition.accepting {
                    what.append("given a backlog of \(now) instead of \(tcpBacklog) (listen())")
                }
                guard !what.isEmpty else { continue }
                let repaired =
                    (try? socket.listenAgain(backlog: Int32(clamping: tcpBacklog))) != nil
                    && socket.condition().accepting
                if !repaired { watched[index].refusing = true }
                findings.append(Finding(listener: socket, what: what.joined(separator: " and "), repaired: repaired))
            } else if condition.shutDown {
                watched[index].refusing = true
                findings.append(Finding(listener: socket, what: "shut down (shutdown())", repaired: false))
            } else if !socket.passed {
                // A unix listener's backlog cannot be read: listen again with baton's, which undoes a listen(fd, 1).
                // (Not one the service manager passed: its backlog is the unit's `Backlog=`, unknown here.)
                try? socket.listenAgain(backlog: backlog)
            }
        }
        return findings
    }
}

extension Launcher {
    /// Watches every listener for a hang-up (a worker's `shutdown()`), on the event loop.
    func watchListeners() throws(SystemError) {
        for listener in listeners {
            let sink = self.sink
            try loop.registerHangUp(listener.fd) { sink.yield(.listenerHungUp) }
        }
    }

    /// Checks the listeners, repairs what it can, and logs what a worker did, naming the generation whose workers
    /// were the newest to start (the suspects).
    func checkListeners(afterHangUp: Bool = false) {
        let findings = listenerGuard.check()
        // A hang-up is reported once (EPOLLONESHOT): watch again for the next one, except on what stays broken.
        if afterHangUp || !findings.isEmpty {
            for listener in listeners where !listenerGuard.refusing.contains(listener) { loop.watchHangUp(listener.fd) }
        }
        guard !findings.isEmpty else { return }
        let suspects = supervisor.orderedGenerations.last { !$0.workers.isEmpty }
        let pids = suspects?.workers.compactMap { supervisor.worker($0)?.pid }.map(String.init) ?? []
        let who = suspects.map { "a worker of generation \($0.id) (pid \(pids.joined(separator: ", ")))" } ?? "a worker"
        for finding in findings where finding.stalled {
            logger.warning(
                "listener '\(finding.listener.name)' (\(finding.listener.address)): \(finding.what); the workers of generation \(suspects.map { String($0.id) } ?? "?") do not accept",
                metadata: ["baton.listener": "\(finding.listener.name)"]
            )
        }
        for finding in findings where !finding.stalled {
            // A worker that breaks the listener again and again is not allowed to flood the journal as well.
            let (log, suppressed) = repairLog.admit(now: .now)
            guard log else { continue }
            let more = suppressed > 0 ? " (\(suppressed) more repairs not logged)" : ""
            let what = "listener '\(finding.listener.name)' (\(finding.listener.address)) was \(finding.what) by \(who)"
            logger.lifecycle(
                finding.repaired
                    ? LifecycleEvent(
                        .listenerRepaired,
                        "\(what); it listens again\(more)",
                        generation: suspects?.id,
                        reason: finding.what
                    )
                    : LifecycleEvent(
                        .listenerBroken,
                        "\(what); it refuses connections until baton is restarted",
                        generation: suspects?.id,
                        reason: finding.what
                    ),
                name: configuration.name
            )
        }
        notifyManager(.status)
    }

    /// The `STATUS=` line: the Supervisor's, after any listener that refuses connections.
    var statusLine: String {
        let refusing = listenerGuard.refusing.map { "listener '\($0.name)' refuses connections" }
        return (refusing + [supervisor.statusLine]).joined(separator: " · ")
    }
}
