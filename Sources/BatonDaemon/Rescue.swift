internal import BatonCore
internal import BatonSystem
import Logging
import SystemPackage

/// Takes over the connections of a retiring worker so that its server's idle `close()` loses no request.
///
/// When baton tells a worker to stop, it first takes its own reference to each connection the worker has open on
/// baton's listeners (`pidfd_getfd`), and keeps doing so while the worker still holds a listener (a server may accept
/// a few more before it notices the signal). A server's `close()` then sends neither FIN nor RST. Once the worker
/// lets go of a connection (closes it or exits), ``HeldConnection/verdict(established:clientClosed:unread:firstBytes:idleFor:window:ownerKilled:)``
/// decides: a request that has arrived is relayed to the serving generation (baton connects to its own listener and
/// splices both ways until either side closes); an idle connection is closed cleanly after a short window.
///
/// A relayed connection's upstream is itself a connection of a later worker: when that one retires, baton takes its
/// end over the same way and, once it lets go, connects the relay to the generation serving then.
///
/// Everything here runs on the thread of the rescue's own event loop (not the launcher's), except ``retire(_:)`` and
/// ``exited(_:killed:)``, which the launcher calls; fds are closed only on the loop's thread, after they are
/// unregistered.
final class ConnectionRescue: Sendable {
    struct Listener: Sendable {
        var inode: UInt64
        var address: SocketAddress
    }

    /// The most connections held at once, and relays running at once. Past them, connections are left to the
    /// server's own close, as without baton.
    static let maximumHeld = 4096
    static let maximumRelays = 1024
    /// The most bytes a relay keeps to send again to another upstream until the first one answers.
    static let maximumUnanswered = 1 << 20
    /// With fewer listeners a worker has few fds: reading them costs less than the kernel's list of connections,
    /// whose cost grows with every socket of the host (1.6 ms with 14 000 in TIME_WAIT, ~10 ms right after the
    /// bench's 10 000 idle connections closed), so ``unheldConnections(_:inTurn:)`` is asked only from this many.
    static let askAboveListeners = 16
    /// `SO_RCVLOWAT` on a held connection of a process that waits for it through epoll or poll (the kernel caps it).
    static let heldLowWater: Int32 = 1 << 30
    /// How long (in 5 ms ticks) held connections stay unreadable to their process: long enough for a server that
    /// closes its idle connections on the stop signal to have done so; a server that goes on serving keep-alive
    /// connections while it stops (gunicorn's gthread worker) then reads them again, its clients 100 ms later.
    static let heldReadsTicks = 20

    let loop: EventLoop
    let logger: Logger
    let listeners: [Listener]
    /// Why taking over connections is not possible here, if it is not.
    let unavailable: String?
    private let timer: SharedDescriptor?
    private let state = Locked(State())

    struct Held: Sendable {
        var socket: SharedDescriptor
        var pid: Int32
        var workerFd: Int32
        var inode: UInt64
        var target: SocketAddress
        var rtt: Duration
        /// The tick baton took it at.
        var since: Int
        var releasedAt: ContinuousClock.Instant?
        /// The relay whose upstream this is the server's end of, and that upstream's port on baton's side.
        var relay: Int?
        var relayPort: UInt16?
    }

    struct Watch: Sendable {
        var process: SharedDescriptor
        /// Still holds one of baton's listeners, so it may accept more connections.
        var accepting = true
        var exited = false
        var killed = false
        var counts = RescueCounts()
        /// The worker this process belongs to (itself, or the worker it descends from), for the journal.
        var worker: Int32
        /// The worker's generation, for the journal.
        var generation: Int
        /// The tick this watch began at: new connections are looked for every tick at first, then less often.
        var since: Int
        /// The process waits for its connections through epoll or poll (no thread of it blocks reading one): the
        /// connections baton holds stop reading as readable to it, so that it closes them as idle with the next
        /// request unread rather than in the moment after it read one (Go's `Server.Shutdown`, hypercorn), and
        /// baton hands that request on.
        var holdsReads = false
        /// How many of its connections baton made unreadable to it.
        var lowered = 0
        /// `libbaton-adopt.so` does not serve it (not loaded, or a Go program, which makes its own system calls):
        /// the server ends of relays it serves are held unreadable too (what it never read goes to the next
        /// upstream), and baton sends its stop signal once its connections have settled.
        var withoutLibrary = false
        /// The stop signal baton sends itself once the process's connections have settled (``settled(_:_:)``), and
        /// the tick by which it goes anyway.
        var pendingStop: (signal: Int32, deadline: Int)?
        /// The tick its stop signal went, when baton sent it.
        var signalledAt: Int?
        /// Its fds that were baton's listeners when last looked at: what tells whether it still accepts once baton
        /// holds all the connections it can (``maximumHeld``) and looks at nothing else.
        var listenerFds: [Int32: UInt64] = [:]
    }

    struct Relay: Sendable {
        var client: SharedDescriptor
        /// The client connection's socket inode.
        var clientInode: UInt64
        var upstream: SharedDescriptor?
        var upstreamPort: UInt16?
        var connected = false
        /// The upstream's worker let go of its end: pass on what it sent, then connect again.
        var upstreamRetiring = false
        var upstreamEnded = false
        var clientEnded = false
        var shutUpstream = false
        var shutClient = false
        var toUpstream: (read: SharedDescriptor, write: SharedDescriptor)
        var toClient: (read: SharedDescriptor, write: SharedDescriptor)
        var inToUpstream = 0
        var inToClient = 0
        /// Bytes the upstream's worker received but never read: sent to the next upstream first.
        var pending: [UInt8] = []
        /// Sent to this upstream since it last answered: sent again to another one if this one resets or its worker
        /// retires without answering (a retiring worker that accepted the relay's connection and closed it unread).
        var unanswered: [UInt8] = []
        var answered = false
        var retryable = true
        var retries = 0
        var target: SocketAddress
        /// When the upstream closed the connection after answering everything, while the client was idle.
        var upstreamGoneAt: ContinuousClock.Instant?
    }

    struct State: Sendable {
        var held: [Int32: Held] = [:]
        var watches: [Int32: Watch] = [:]
        var relays: [Int: Relay] = [:]
        var upstreamPorts: [UInt16: Int] = [:]
        /// Relays whose upstream closed while the client was idle: the client's FIN waits for the window.
        var lingering: Set<Int> = []
        var nextRelay = 1
        var ticks = 0
        var armed = false
        var totals = RescueCounts()
        /// The last answer of ``unheldConnections(_:inTurn:)``, when and in which launcher turn it was asked.
        var unheldAnswer: (at: ContinuousClock.Instant, turn: Int, any: Bool)?
        /// Counts the launcher's events (``beginTurn()``): the workers one event stops are retired in one turn.
        var turn = 0
    }

    init(loop: EventLoop, listeners: [ListeningSocket], enabled: Bool, logger: Logger) {
        self.loop = loop
        self.logger = logger
        self.listeners = listeners.compactMap { listener in
            guard let inode = try? listener.inode(), let address = Handover.localAddress(listener.fd) else {
                return nil
            }
            return Listener(inode: inode, address: address)
        }
        if !enabled {
            unavailable = "turned off (--no-rescue)"
            timer = nil
            return
        }
        if let error = Handover.check() {
            unavailable =
                "not permitted here (\(error)): connections a retiring worker closes as idle may lose a request on the wire"
            timer = nil
            return
        }
        guard let timer = try? PeriodicTimer.disarmed() else {
            unavailable = "no timer fd"
            self.timer = nil
            return
        }
        let shared = SharedDescriptor(timer)
        self.timer = shared
        unavailable = nil
        do {
            try loop.register(shared.descriptor) { [weak self] in
                _ = PeriodicTimer.acknowledge(shared.descriptor)
                self?.tick()
            }
        } catch {
            logger.warning("connection rescue: \(error)")
        }
        // Its own thread, which sleeps until the rescue has something to do.
        loop.start()
    }

    var listenerInodes: Set<UInt64> { Set(listeners.map(\.inode)) }
    /// The ports of baton's listeners, when every one of them is TCP.
    var tcpPorts: Set<UInt16>? {
        let ports = listeners.compactMap(\.address.port)
        return ports.count == listeners.count ? Set(ports) : nil
    }

    /// What happened to the connections taken over since baton started, and how many relays run now.
    func counts() -> (RescueCounts, relays: Int) {
        state.withLock { ($0.totals, $0.relays.count) }
    }

    // MARK: - Called by the launcher

    /// How long the stop signal waits after a worker's connections stopped reading as readable to it
    /// (``Watch/holdsReads``): a request it read just before is answered first, not closed unanswered as idle.
    /// It also keeps the stop signal clear of ``Signals/rescueHeld``: a stop signal that arrives while another
    /// signal is still pending in the process can be handed to another thread than the main one, and Python then
    /// never leaves a blocking accept() on its main thread (seen: 5 of 20 such pairs hung).
    static let signalledGrace = Duration.milliseconds(50)
    /// Without the signal (a process without the library: Go), baton sends the stop signal itself once every
    /// connection it holds of the process has settled (``settled(_:_:)``), 10 ms at the earliest and
    /// ``settleTicks`` at the latest.
    static let settleTicks = 40
    /// A process the library is loaded in that does not catch ``Signals/rescueHeld``: its stop signal waits this long
    /// after its connections stopped reading as readable to it.
    static let heldReadsGrace = Duration.milliseconds(25)
    /// Settled: nothing sent for this long, and nothing received either unless it is still unread (the kernel counts
    /// both in jiffies, 4 ms at HZ=250).
    static let settledAfter = Duration.milliseconds(8)

    /// When the stop signal of a retiring worker goes.
    enum StopSignal: Equatable {
        case now
        case after(Duration)
        /// The rescue sends it (``settled(_:_:)``).
        case whenSettled
    }

    /// `pid` is about to get its stop signal, `signal`: take over the connections it and its descendants hold.
    /// Returns when the stop signal should go.
    @discardableResult
    func retire(_ pid: Int32, generation: Int, signal: Int32) -> StopSignal {
        guard unavailable == nil, !listeners.isEmpty else { return .now }
        let pids = [pid] + Handover.descendants(of: pid)
        logger.debug("connection rescue: retiring \(pids)")
        return state.withLock { state in
            var signalledWorker = false
            for process in pids where state.watches[process] == nil {
                guard let pidfd = try? Handover.openProcess(process) else { continue }
                state.watches[process] = Watch(
                    process: SharedDescriptor(pidfd),
                    worker: pid,
                    generation: generation,
                    since: state.ticks
                )
                grab(process, &state, inTurn: true)
                let workerFds = Set(state.held.values.lazy.filter { $0.pid == process }.map(\.workerFd))
                // Read only for a process baton holds connections of (the rest decides nothing then).
                let withLibrary = !workerFds.isEmpty && BindAdoption.libraryServes(process)
                state.watches[process]!.withoutLibrary = !withLibrary
                if !workerFds.isEmpty && !ProcInspector.blockedReading(process, anyOf: workerFds) {
                    state.watches[process]!.holdsReads = true
                    for held in state.held.values where held.pid == process && (held.relay == nil || !withLibrary) {
                        if Self.holdReads(held.socket.descriptor) { state.watches[process]!.lowered += 1 }
                    }
                }
                // libbaton-adopt.so in the process then turns its half-closes of accepted connections into no-ops.
                // Only to a process whose connections baton holds: the stop signal then waits for it.
                if !workerFds.isEmpty, withLibrary, ProcInspector.catches(process, signal: Signals.rescueHeld) {
                    Handover.signalOneThread(
                        of: process,
                        through: state.watches[process]!.process.descriptor,
                        Signals.rescueHeld
                    )
                    if process == pid { signalledWorker = true }
                }
            }
            arm(&state)
            let worker = state.watches[pid]
            if signalledWorker { return .after(Self.signalledGrace) }
            guard worker?.holdsReads == true && (worker?.lowered ?? 0) > 0 else { return .now }
            // The library is loaded but does not catch its signal (the app reset it): as before it had one.
            guard worker?.withoutLibrary == true else { return .after(Self.heldReadsGrace) }
            // Go's `Server.Shutdown` closes a connection it sees idle, and it is seen idle for a moment after it read
            // the next request: a stop signal in that moment loses the request. Once nothing moved for a while, no
            // connection is in that moment, and with reads held none enters it.
            state.watches[pid]!.pendingStop = (signal, state.ticks + Self.settleTicks)
            return .whenSettled
        }
    }

    /// `pid`'s stop signal goes now: take over what it accepted since the rescue's last look. From the rescue
    /// signal on, `libbaton-adopt.so` accepts nothing more in it, so what this look finds is all it will close on
    /// that signal; the rescue's own looks (every 5 ms) run on its thread, which a loaded machine may not run for
    /// longer than the stop signal's grace, and a connection accepted and closed between two of them is lost.
    func stopping(_ pid: Int32) {
        state.withLock { state in
            guard let watch = state.watches[pid], !watch.exited, watch.accepting else { return }
            grab(pid, &state)
            arm(&state)
        }
    }

    /// The launcher begins handling an event: what ``retire(_:generation:signal:)`` learnt of the kernel's
    /// connections in the previous one is not reused.
    func beginTurn() {
        state.withLock { $0.turn += 1 }
    }

    /// `pid` has exited (and was reaped): every connection it held is now baton's alone.
    func exited(_ pid: Int32, killed: Bool) {
        state.withLock { state in
            guard state.watches[pid] != nil else { return }
            state.watches[pid]!.exited = true
            state.watches[pid]!.killed = killed
            arm(&state)
        }
    }

    // MARK: - The loop's thread

    private func arm(_ state: inout State) {
        guard !state.armed, let timer else { return }
        state.armed = true
        PeriodicTimer.set(timer.descriptor, every: .milliseconds(5))
    }

    /// Takes over `pid`'s connections on baton's listeners that baton does not hold yet.
    private func grab(_ pid: Int32, _ state: inout State, inTurn: Bool = false) {
        guard let watch = state.watches[pid] else { return }
        if state.held.count >= Self.maximumHeld && !watch.listenerFds.isEmpty {
            // Nothing more can be taken: only whether it still holds a listener (its thousands of fds unread).
            let accepting = watch.listenerFds.contains { Handover.holds(pid: pid, fd: $0.key, inode: $0.value) }
            state.watches[pid]!.accepting = accepting
            logger.trace("connection rescue: pid \(pid): holds \(state.held.count) (the most), accepting \(accepting)")
            return
        }
        guard unheldConnections(&state, inTurn: inTurn) else { return }
        let inodes = listenerInodes
        // Every fd is looked at again, those of connections baton holds too: the process may have closed one and
        // accepted a new connection at its number since.
        let sockets = Handover.sockets(of: pid)
        let heldInodes = Set(state.held.values.lazy.filter { $0.pid == pid }.map(\.inode))
        var accepting = false
        var listenerFds: [Int32: UInt64] = [:]
        for (fd, inode) in sockets {
            if inodes.contains(inode) {
                accepting = true
                listenerFds[fd] = inode
                continue
            }
            guard !heldInodes.contains(inode), state.held.count < Self.maximumHeld else { continue }
            guard let copy = try? Handover.take(fd, from: watch.process.descriptor) else { continue }
            let socket = SharedDescriptor(copy)
            guard let tcp = Handover.tcpState(socket.descriptor), tcp.state == Handover.established,
                let local = Handover.localAddress(socket.descriptor),
                let listener = listeners.first(where: { local.arrived(through: $0.address) })
            else { continue }
            var relay: Int?
            var relayPort: UInt16?
            if let peer = Handover.peerAddress(socket.descriptor), peer.isLoopback, let port = peer.port {
                relay = state.upstreamPorts[port]
                relayPort = relay == nil ? nil : port
            }
            let key = socket.descriptor.rawValue
            logger.trace(
                "connection rescue: took fd \(fd) of pid \(pid) as \(key): peer \(Handover.peerAddress(socket.descriptor).map(String.init(describing:)) ?? "?"), relay \(relay.map(String.init) ?? "none")"
            )
            do {
                try loop.registerEdges(socket.descriptor, writable: false) { [weak self] in self?.heldEvent(key) }
            } catch {
                continue
            }
            state.held[key] = Held(
                socket: socket,
                pid: pid,
                workerFd: fd,
                inode: inode,
                target: listener.address.reachable(),
                rtt: tcp.rtt,
                since: state.ticks,
                relay: relay,
                relayPort: relayPort
            )
            if relay == nil { state.watches[pid]!.counts.held += 1 }
            if watch.holdsReads && (relay == nil || watch.withoutLibrary), Self.holdReads(socket.descriptor) {
                state.watches[pid]!.lowered += 1
            }
        }
        state.watches[pid]!.accepting = accepting
        state.watches[pid]!.listenerFds = listenerFds
        logger.trace(
            "connection rescue: pid \(pid): \(sockets.count) socket(s), holds \(state.held.count), accepting \(accepting)"
        )
    }

    /// Whether the kernel lists a connection on baton's TCP listeners that baton does not hold (nor relays): if it
    /// lists none, no process has one to take over, and its `/proc/PID/fd` (257 fds for a worker of 256 listeners,
    /// and the dentries the kernel makes for them) need not be read. One sock_diag dump (1.6 ms with 14 000 sockets in
    /// TIME_WAIT), kept for the rest of the launcher's turn when `inTurn` (the workers one event stops), else 2 ms
    /// (the rescue's ticks; `/proc/net/tcp` where sock_diag is not allowed, as in baton's unit); true when it
    /// cannot be known (a unix listener, neither list readable).
    private func unheldConnections(_ state: inout State, inTurn: Bool = false) -> Bool {
        guard listeners.count >= Self.askAboveListeners, let ports = tcpPorts else { return true }
        let now = ContinuousClock.now
        if let answer = state.unheldAnswer,
            inTurn
                ? answer.turn == state.turn && now - answer.at < .milliseconds(100) : now - answer.at < .milliseconds(2)
        {
            return answer.any
        }
        guard let entries = Connections.listed(families: Set(listeners.map(\.address.family))) else { return true }
        let known = Set(state.held.values.map(\.inode)).union(state.relays.values.map(\.clientInode))
        // An inode of 0 is a connection no process has accepted yet.
        let any = entries.contains { $0.inode != 0 && ports.contains($0.localPort) && !known.contains($0.inode) }
        state.unheldAnswer = (now, state.turn, any)
        return any
    }

    private func tick() {
        state.withLock { state in
            state.ticks += 1
            let now = ContinuousClock.now
            for (pid, watch) in state.watches where !watch.exited {
                // A descendant that baton does not reap (its parent does) ends without an exit event.
                if Handover.hasEnded(watch.process.descriptor) {
                    state.watches[pid]!.exited = true
                    continue
                }
                // Every 5 ms for the first 100 ms after the stop signal (when most servers stop accepting), then
                // every 50 ms.
                let age = state.ticks - watch.since
                if watch.accepting && (age < 20 || age % 10 == 0) { grab(pid, &state) }
                if let stop = watch.pendingStop, age >= 2, state.ticks >= stop.deadline || settled(pid, state) {
                    logger.trace("connection rescue: stop signal to pid \(pid) after \(age * 5) ms")
                    state.watches[pid]!.pendingStop = nil
                    state.watches[pid]!.signalledAt = state.ticks
                    _ = OS.signal(stop.signal, through: watch.process.descriptor)
                }
                let heldFor = state.ticks - (state.watches[pid]!.signalledAt ?? watch.since)
                if watch.holdsReads && state.watches[pid]!.pendingStop == nil && heldFor >= Self.heldReadsTicks {
                    releaseReads(pid, &state)
                }
            }
            let checkOwners = state.ticks % 4 == 0
            for key in Array(state.held.keys) {
                guard let held = state.held[key], let watch = state.watches[held.pid] else { continue }
                if held.releasedAt == nil {
                    guard
                        watch.exited
                            || (checkOwners && !Handover.holds(pid: held.pid, fd: held.workerFd, inode: held.inode))
                    else { continue }
                    state.held[key]!.releasedAt = now
                }
                decide(key, now: now, &state)
            }
            finishWatches(&state)
            endLingering(now: now, &state)
            if state.held.isEmpty && state.watches.isEmpty && state.lingering.isEmpty, let timer {
                state.armed = false
                PeriodicTimer.set(timer.descriptor, every: nil)
            }
        }
    }

    /// Something arrived on a held connection: if its worker let go of it, act now (a level-triggered epoll
    /// registration the worker left behind would otherwise wake it without end).
    private func heldEvent(_ key: Int32) {
        state.withLock { state in
            guard let held = state.held[key] else { return }
            if held.releasedAt == nil {
                let exited = state.watches[held.pid]?.exited ?? true
                guard exited || !Handover.holds(pid: held.pid, fd: held.workerFd, inode: held.inode) else { return }
                state.held[key]!.releasedAt = .now
            }
            decide(key, now: .now, &state)
        }
    }

    private func decide(_ key: Int32, now: ContinuousClock.Instant, _ state: inout State) {
        guard let held = state.held[key], let releasedAt = held.releasedAt else { return }
        let fd = held.socket.descriptor
        let tcp = Handover.tcpState(fd)
        let unread = Handover.unreadBytes(fd)
        let killed = state.watches[held.pid]?.killed ?? false
        let idleFor = now - releasedAt
        let verdict = HeldConnection.verdict(
            established: tcp?.state == Handover.established || tcp?.state == Handover.closeWait,
            clientClosed: tcp?.state == Handover.closeWait,
            unread: unread,
            firstBytes: unread > 0 ? Handover.peek(fd, count: 16) : [],
            idleFor: idleFor,
            quietBefore: tcp.map { min($0.sinceSent, $0.sinceReceived) - idleFor } ?? .zero,
            window: HeldConnection.window(rtt: held.rtt),
            ownerKilled: killed
        )
        logger.trace(
            "connection rescue: fd \(key) of pid \(held.pid): state \(tcp?.state ?? 0), unread \(unread), idle \(now - releasedAt), verdict \(verdict)"
        )
        if let relay = held.relay {
            // The server's end of a relay's upstream: whatever baton sent it that it never read goes to the next one.
            drop(key, &state)
            var bytes: [UInt8] = []
            while !killed {
                let chunk = Handover.receive(fd, count: 65536).bytes
                if chunk.isEmpty { break }
                bytes += chunk
            }
            held.socket.close()
            if let current = state.relays[relay], current.upstreamPort != held.relayPort {
                // The relay let go of this upstream meanwhile (and may have another now): nothing of it is left here.
                return
            }
            if killed || state.relays[relay] == nil {
                if state.relays[relay] != nil { state.watches[held.pid]?.counts.reset += 1 }
                finish(relay, reset: true, &state)
            } else {
                // What the worker read of the last request without answering it (Go's Shutdown can close a connection
                // whose request it has just read) goes again to the next upstream if the request is idempotent.
                let unanswered = state.relays[relay]!.unanswered
                let consumed = unanswered.count - bytes.count
                if consumed > 0 && !HeldConnection.isIdempotentRequest(unanswered) {
                    state.watches[held.pid]?.counts.reset += 1
                    finish(relay, reset: true, &state)
                    return
                }
                state.watches[held.pid]?.counts.moved += 1
                state.relays[relay]!.pending = (consumed > 0 ? unanswered : bytes) + state.relays[relay]!.pending
                state.relays[relay]!.unanswered = []
                state.relays[relay]!.retryable = true
                state.relays[relay]!.upstreamRetiring = true
                logger.trace("connection rescue: relay \(relay) upstream retired, \(bytes.count) bytes unread")
                pump(relay, &state)
            }
            return
        }
        switch verdict {
        case .wait:
            return
        case .relay:
            drop(key, &state)
            if state.relays.count < Self.maximumRelays, startRelay(held, &state) {
                state.watches[held.pid]?.counts.relayed += 1
            } else {
                Handover.resetOnClose(fd)
                held.socket.close()
                state.watches[held.pid]?.counts.reset += 1
            }
        case .close:
            drop(key, &state)
            held.socket.close()
            state.watches[held.pid]?.counts.closed += 1
        case .reset:
            drop(key, &state)
            Handover.resetOnClose(fd)
            held.socket.close()
            state.watches[held.pid]?.counts.reset += 1
        case .leave:
            drop(key, &state)
            held.socket.close()
            state.watches[held.pid]?.counts.left += 1
        }
    }

    private func drop(_ key: Int32, _ state: inout State) {
        guard let held = state.held.removeValue(forKey: key) else { return }
        loop.unregister(held.socket.descriptor)
    }

    private func finishWatches(_ state: inout State) {
        let busy = Set(state.held.values.map(\.pid))
        for (pid, watch) in state.watches where watch.exited && !busy.contains(pid) {
            state.watches[pid] = nil
            state.totals = state.totals + watch.counts
            let counts = watch.counts
            guard counts.held > 0 || counts.moved > 0 else { continue }
            let moved =
                counts.moved > 0 ? "; \(counts.moved) relay(s) it served moved on to the serving generation" : ""
            logger.info(
                "took over \(counts.held) connection(s) pid \(pid) of generation \(watch.generation) left open: \(counts.relayed) handed to the serving generation, \(counts.closed) closed idle, \(counts.reset) reset, \(counts.left) shut down by the app\(moved)",
                metadata: [
                    "baton.event": "connections-rescued",
                    "baton.pid": "\(pid)",
                    "baton.worker_pid": "\(watch.worker)",
                    "baton.generation": "\(watch.generation)",
                    "baton.rescued": "\(counts.held)",
                    "baton.relayed": "\(counts.relayed)",
                    "baton.closed_idle": "\(counts.closed)",
                    "baton.reset": "\(counts.reset)",
                    "baton.shut_down_by_app": "\(counts.left)",
                    "baton.relays_moved": "\(counts.moved)",
                ]
            )
        }
    }

    /// Whether no connection baton holds of `pid` can be in the moment between its server reading a request and
    /// calling it active: every one has sent nothing for ``settledAfter``, and received nothing either unless what it
    /// received is still unread (its server waits in epoll, which a held connection no longer wakes), and was taken
    /// over at least two ticks ago.
    private func settled(_ pid: Int32, _ state: State) -> Bool {
        for held in state.held.values where held.pid == pid && held.releasedAt == nil {
            guard let tcp = Handover.tcpState(held.socket.descriptor), tcp.state == Handover.established else {
                continue
            }
            if state.ticks - held.since < 2 || tcp.sinceSent < Self.settledAfter { return false }
            if tcp.sinceReceived < Self.settledAfter && Handover.unreadBytes(held.socket.descriptor) == 0 {
                return false
            }
        }
        return true
    }

    /// Makes a held connection unreadable to its process, if the process reads it without blocking: a blocking read
    /// (a thread per connection, or gunicorn's gthread workers, which make a connection blocking while a thread
    /// serves it) would wait for that many bytes.
    @discardableResult
    private static func holdReads(_ fd: FileDescriptor) -> Bool {
        guard Handover.isNonBlocking(fd) else { return false }
        Handover.setReceiveLowWater(fd, heldLowWater)
        return true
    }

    /// Held connections of `pid` read as readable to it again (``heldReadsTicks``).
    private func releaseReads(_ pid: Int32, _ state: inout State) {
        state.watches[pid]!.holdsReads = false
        let withoutLibrary = state.watches[pid]!.withoutLibrary
        for held in state.held.values
        where held.pid == pid && (held.relay == nil || withoutLibrary) && held.releasedAt == nil {
            Handover.setReceiveLowWater(held.socket.descriptor, 1)
        }
        // A thread that made one of them blocking meanwhile (gunicorn's gthread serves a connection so) and reads it
        // waits for as many bytes as the low-water mark said when it began: the rescue signal, which the library
        // catches with SA_RESTART, restarts that read with the mark as it is now.
        if state.watches[pid]!.lowered > 0, ProcInspector.catches(pid, signal: Signals.rescueHeld) {
            Handover.signalThreads(of: pid, Signals.rescueHeld)
        }
    }

    // MARK: - Relays

    private func startRelay(_ held: Held, _ state: inout State) -> Bool {
        guard let toUpstream = try? Handover.pipe(), let toClient = try? Handover.pipe() else { return false }
        let id = state.nextRelay
        state.nextRelay += 1
        Handover.setNonBlocking(held.socket.descriptor)
        Handover.setReceiveLowWater(held.socket.descriptor, 1)
        do {
            try loop.registerEdges(held.socket.descriptor, writable: true) { [weak self] in self?.relayEvent(id) }
        } catch {
            return false
        }
        var relay = Relay(
            client: held.socket,
            clientInode: held.inode,
            toUpstream: toUpstream,
            toClient: toClient,
            target: held.target
        )
        relay.pending = HeldConnection.missingStart(of: Handover.peek(held.socket.descriptor, count: 16)) ?? []
        state.relays[id] = relay
        pump(id, &state)
        return true
    }

    private func relayEvent(_ id: Int) {
        state.withLock { pump(id, &$0) }
    }

    /// Moves whatever can move now, both ways; connects an upstream when there is something to send.
    private func pump(_ id: Int, _ state: inout State) {
        guard var relay = state.relays[id] else { return }
        defer { if state.relays[id] != nil { state.relays[id] = relay } }
        let client = relay.client.descriptor
        if relay.upstream == nil && !relay.upstreamRetiring {
            let waiting = !relay.pending.isEmpty || relay.inToUpstream > 0 || Handover.unreadBytes(client) > 0
            if relay.clientEnded && !waiting {
                state.relays[id] = relay
                finish(id, reset: false, &state)
                return
            }
            if !waiting {
                // Between requests with no upstream (it closed the connection, or its worker retired): a client that
                // closes ends the relay, whether its FIN came first (CLOSE_WAIT) or after the one baton sent it once
                // the window passed (then the socket is closed, not in CLOSE_WAIT: asking for the state alone left
                // such relays, and their fds, forever; so did not asking at all after a retirement).
                if Handover.peerClosed(client) {
                    state.relays[id] = relay
                    finish(id, reset: false, &state)
                }
                return
            }
            // Something to send: connect an upstream.
            relay.upstreamGoneAt = nil
            guard let socket = try? Handover.connect(to: relay.target) else {
                state.relays[id] = relay
                finish(id, reset: true, &state)
                return
            }
            let upstream = SharedDescriptor(socket)
            do {
                try loop.registerEdges(upstream.descriptor, writable: true) { [weak self] in self?.relayEvent(id) }
            } catch {
                state.relays[id] = relay
                finish(id, reset: true, &state)
                return
            }
            logger.trace(
                "connection rescue: relay \(id) connects, \(relay.pending.count) pending, \(relay.inToUpstream) piped"
            )
            relay.upstream = upstream
            relay.retryable = true
            relay.connected = false
            relay.upstreamEnded = false
            relay.shutUpstream = false
            if let port = Handover.localAddress(upstream.descriptor)?.port {
                relay.upstreamPort = port
                state.upstreamPorts[port] = id
            }
        }
        guard let upstream = relay.upstream?.descriptor else { return }
        if !relay.connected {
            if Handover.connectionError(upstream) != 0 {
                state.relays[id] = relay
                finish(id, reset: true, &state)
                return
            }
            guard Handover.peerAddress(upstream) != nil else { return }
            relay.connected = true
        }
        var failed = false
        // Until the upstream answers, what goes to it is copied, to be sent again should it reset.
        if !relay.upstreamRetiring && relay.retryable {
            if relay.inToUpstream > 0 {
                relay.pending += Handover.read(relay.toUpstream.read.descriptor, count: relay.inToUpstream)
                relay.inToUpstream = 0
            }
            while !relay.clientEnded && relay.pending.count < Self.maximumUnanswered {
                let (bytes, ended) = Handover.receive(client, count: 65536)
                relay.pending += bytes
                if ended { relay.clientEnded = true }
                if bytes.isEmpty { break }
            }
            while !relay.pending.isEmpty {
                guard let sent = Handover.send(upstream, relay.pending[...]) else {
                    failed = true
                    break
                }
                if sent == 0 { break }
                relay.unanswered += relay.pending.prefix(sent)
                relay.answered = false
                relay.pending.removeFirst(sent)
            }
            if relay.unanswered.count >= Self.maximumUnanswered {
                relay.retryable = false
                relay.unanswered = []
            }
        }
        // Client to upstream, unless the upstream is being replaced.
        if !relay.upstreamRetiring && !relay.retryable {
            while !relay.pending.isEmpty {
                guard let sent = Handover.send(upstream, relay.pending[...]) else {
                    failed = true
                    break
                }
                if sent == 0 { break }
                relay.pending.removeFirst(sent)
            }
            if relay.pending.isEmpty {
                var moved = false
                failed =
                    failed
                    || !move(
                        from: client,
                        to: upstream,
                        through: relay.toUpstream,
                        count: &relay.inToUpstream,
                        ended: &relay.clientEnded,
                        moved: &moved
                    )
            }
            if relay.clientEnded && relay.inToUpstream == 0 && relay.pending.isEmpty && !relay.shutUpstream {
                Handover.shutdownWrite(upstream)
                relay.shutUpstream = true
            }
        }
        if !relay.upstreamRetiring && relay.clientEnded && relay.inToUpstream == 0 && relay.pending.isEmpty
            && !relay.shutUpstream
        {
            Handover.shutdownWrite(upstream)
            relay.shutUpstream = true
        }
        // Upstream to client.
        let before = relay.inToClient
        var answeredNow = false
        failed =
            failed
            || !move(
                from: upstream,
                to: client,
                through: relay.toClient,
                count: &relay.inToClient,
                ended: &relay.upstreamEnded,
                moved: &answeredNow
            )
        if answeredNow || relay.inToClient != before {
            relay.answered = true
            relay.unanswered = []
            relay.retries = 0
        }
        // Nothing came back, and the upstream reset or closed: a worker that was retiring as baton connected accepted
        // the relay's connection between two looks and closed it (before it read the request, or without answering
        // it). An idempotent request goes to the next upstream.
        let unansweredEnd = failed || (relay.upstreamEnded && relay.inToClient == 0)
        if unansweredEnd && !relay.answered && !relay.unanswered.isEmpty && relay.retries < 3
            && !relay.upstreamRetiring && HeldConnection.isIdempotentRequest(relay.unanswered)
        {
            logger.trace(
                "connection rescue: relay \(id) retries after its upstream ended, \(relay.unanswered.count) bytes"
            )
            dropUpstream(&relay, &state)
            relay.pending = relay.unanswered + relay.pending
            relay.unanswered = []
            relay.retries += 1
            relay.shutUpstream = false
            state.relays[id] = relay
            pump(id, &state)
            relay = state.relays[id] ?? relay
            return
        }
        if failed {
            state.relays[id] = relay
            finish(id, reset: true, &state)
            return
        }
        if relay.upstreamEnded && relay.inToClient == 0 {
            if relay.upstreamRetiring {
                // The retired worker's end has closed and everything it sent is on its way: connect to the generation
                // serving now when the client has something to send.
                dropUpstream(&relay, &state)
                relay.upstreamRetiring = false
                state.relays[id] = relay
                pump(id, &state)
                relay = state.relays[id] ?? relay
                return
            }
            if !relay.shutClient && !relay.clientEnded && relay.retryable && relay.unanswered.isEmpty {
                // The upstream closed the connection between requests (its worker retiring, or its idle timeout),
                // having answered everything it was sent. As with a connection a retiring worker lets go of: what
                // the client sent since goes to the generation serving now, or what it sends within the window;
                // otherwise the client gets the FIN the upstream meant.
                let waiting = !relay.pending.isEmpty || relay.inToUpstream > 0 || Handover.unreadBytes(client) > 0
                logger.trace(
                    "connection rescue: relay \(id): upstream closed between requests, client waiting \(waiting)"
                )
                dropUpstream(&relay, &state)
                relay.upstreamGoneAt = .now
                if waiting {
                    state.relays[id] = relay
                    pump(id, &state)
                    relay = state.relays[id] ?? relay
                } else {
                    state.lingering.insert(id)
                    arm(&state)
                }
                return
            }
            if !relay.shutClient {
                logger.trace("connection rescue: relay \(id): upstream closed, answered \(relay.answered)")
                Handover.shutdownWrite(client)
                relay.shutClient = true
            }
        }
        if relay.shutClient && relay.shutUpstream && relay.upstreamEnded && relay.clientEnded {
            state.relays[id] = relay
            finish(id, reset: false, &state)
        }
    }

    /// Closes a relay's upstream connection, to connect another when the client has something to send.
    private func dropUpstream(_ relay: inout Relay, _ state: inout State) {
        if let upstream = relay.upstream {
            loop.unregister(upstream.descriptor)
            upstream.close()
        }
        relay.upstream = nil
        if let port = relay.upstreamPort { state.upstreamPorts[port] = nil }
        relay.upstreamPort = nil
    }

    /// Relays whose upstream closed between requests and whose client sent nothing within the window: the client gets
    /// its FIN, and the relay ends when the client closes.
    private func endLingering(now: ContinuousClock.Instant, _ state: inout State) {
        for id in state.lingering {
            guard let relay = state.relays[id], let since = relay.upstreamGoneAt, relay.upstream == nil else {
                state.lingering.remove(id)
                continue
            }
            let rtt = Handover.tcpState(relay.client.descriptor)?.rtt ?? .zero
            guard now - since >= HeldConnection.window(rtt: rtt) else { continue }
            state.lingering.remove(id)
            if Handover.unreadBytes(relay.client.descriptor) > 0 {
                pump(id, &state)
                continue
            }
            Handover.shutdownWrite(relay.client.descriptor)
            state.relays[id]!.shutClient = true
            pump(id, &state)
        }
    }

    /// Splices `from` → pipe → `to` until a call would block. Returns false on an error.
    private func move(
        from: FileDescriptor,
        to: FileDescriptor,
        through pipe: (read: SharedDescriptor, write: SharedDescriptor),
        count: inout Int,
        ended: inout Bool,
        moved: inout Bool
    ) -> Bool {
        while true {
            if count > 0 {
                switch Handover.splice(from: pipe.read.descriptor, to: to, count: count) {
                case .bytes(let n):
                    count -= n
                    moved = true
                case .wouldBlock, .end: return true
                case .failed: return false
                }
                continue
            }
            if ended { return true }
            switch Handover.splice(from: from, to: pipe.write.descriptor, count: 65536) {
            case .bytes(let n): count += n
            case .end:
                ended = true
                return true
            case .wouldBlock: return true
            case .failed: return false
            }
        }
    }

    private func finish(_ id: Int, reset: Bool, _ state: inout State) {
        guard let relay = state.relays.removeValue(forKey: id) else { return }
        logger.trace("connection rescue: relay \(id) ends\(reset ? " with a reset" : "")")
        loop.unregister(relay.client.descriptor)
        if reset { Handover.resetOnClose(relay.client.descriptor) }
        relay.client.close()
        if let upstream = relay.upstream {
            loop.unregister(upstream.descriptor)
            upstream.close()
        }
        if let port = relay.upstreamPort { state.upstreamPorts[port] = nil }
        for end in [relay.toUpstream.read, relay.toUpstream.write, relay.toClient.read, relay.toClient.write] {
            end.close()
        }
    }
}
