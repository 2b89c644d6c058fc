/// The lifecycle of baton's generations as a value type: each event returns the actions to perform.
///
/// It holds no fds, pids of its own making, or clocks: `now` comes with every event, so the whole
/// lifecycle (readiness, reload, rollback, respawn, coalescing, draining) is testable without processes.
public struct Supervisor: Sendable {
    public enum WorkerState: String, Sendable {
        case starting, ready, stopping, exited
    }

    public struct Worker: Sendable {
        public var id: WorkerID
        public var generation: Int
        public var slot: Int
        public var pid: Int32?
        public var state: WorkerState
        public var startedAt: ContinuousClock.Instant
        public var readyAt: ContinuousClock.Instant?
        public var restarts: Int
        public var status: String?
        /// Why baton killed it, when it did so on purpose for a failure (a missed ready timeout, a hung worker).
        public var failure: String?
        /// Why it failed, as the launcher found out (``SupervisorEvent/explained(_:_:)``).
        public var explanation: String?
        public var watchdogInterval: Duration?
        /// When its stop timeout SIGKILLs it (set once it was sent the stop signal).
        public var stopDeadline: ContinuousClock.Instant?
        /// The client connections it holds, as last counted while it stops (``SupervisorEvent/connections(_:)``).
        public var connections: Int?
        /// Its health probes (`--health`).
        public var probe = ProbeState()
    }

    public enum GenerationState: String, Sendable {
        case starting, serving, draining, failed, retired
    }

    public struct Generation: Sendable {
        public var id: Int
        public var state: GenerationState
        public var startedAt: ContinuousClock.Instant
        /// Every worker this generation has had that is still alive, in start order.
        public var workers: [WorkerID]
        /// The current worker of each slot.
        public var slots: [Int: WorkerID]
        /// Consecutive crashes per slot.
        public var streak: [Int: Int] = [:]
        public var crashLooping = false
        /// Set while the generation (rolling: its newest worker, `slot`) is in its soak window (`--min-ready`).
        public var soak: Soak?
        /// Set once it drains (a reload retired it): when it was told to stop.
        public var drainStartedAt: ContinuousClock.Instant?
        /// Connections its workers still held when they were killed (the stop timeout, or `--cut-drain`).
        public var killedConnections = 0
        /// Connections its stopping workers held when first counted (about when they were told to stop).
        public var connectionsWhenStopped = 0
        /// Its workers that were killed while draining.
        public var killedWorkers = 0
        /// A reload with `--cut-drain` killed what was left of it.
        public var cutShort = false
        /// Requesters of the reload that retired it who asked to be answered once it is gone (`--wait-drained`).
        public var drainWait: DrainWait?
        /// Requesters of the reload it failed, answered once its workers are gone: a worker told to stop may still
        /// accept a connection or two before it handles the signal, so "the old generation keeps serving" is only
        /// said once it is the only one that does.
        public var failWait: FailWait?
    }

    /// The answer to the requesters of a failed reload, given once the failed generation's workers have exited.
    public struct FailWait: Sendable {
        public var requesters: [RequesterID]
        public var message: String
        public var duration: Duration
        public var failedWorker: FailedWorker?
    }

    /// `baton reload --wait-drained` requesters, answered when the generation their reload retired is gone.
    public struct DrainWait: Sendable {
        public var requesters: [RequesterID]
        /// The reload's new generation, and when the reload started.
        public var target: Int
        public var startedAt: ContinuousClock.Instant
    }

    /// A soak window in progress: ready since `since`; rolling, the step of `slot` waits for it.
    public struct Soak: Sendable {
        public var since: ContinuousClock.Instant
        public var slot: Int?
    }

    public struct Reload: Sendable {
        public var target: Int
        public var previous: Int?
        public var requesters: [RequesterID]
        public var startedAt: ContinuousClock.Instant
        /// Rolling: slots of the previous generation that have been told to stop.
        public var retiredSlots: Set<Int> = []
        /// Set once the new generation serves; the reload ends when the previous one has drained.
        public var promotedAt: ContinuousClock.Instant?
        /// The canary window (`--canary`): one new worker serves beside the previous generation this long before the
        /// rest start. Zero: none.
        public var canary: Duration = .zero
        /// When the canary worker became ready: its window runs from here.
        public var canarySince: ContinuousClock.Instant?
        public var canaryPassed = false
        /// `--hold`: once ready, the new generation serves beside the previous one until promote or rollback.
        public var hold = false
        /// Set while the new generation is held.
        public var heldSince: ContinuousClock.Instant?
    }

    public struct Outcome: Sendable {
        public var ok: Bool
        public var generation: Int
        public var duration: Duration
        public var reason: String?
        public var finishedAt: ContinuousClock.Instant
    }

    public enum Phase: Sendable, Equatable {
        case idle, starting, running, stopping, exited
    }

    public private(set) var settings: SupervisorSettings
    public private(set) var phase: Phase = .idle
    public private(set) var workers: [WorkerID: Worker] = [:]
    public private(set) var generations: [Int: Generation] = [:]
    public private(set) var serving: Int?
    public private(set) var reload: Reload?
    /// Requesters of the one reload that follows the current one (nil: none pending).
    public private(set) var followUp: [RequesterID]?
    public private(set) var lastReload: Outcome?
    /// The last ``ReloadHistory/limit`` reloads, newest first.
    public private(set) var history: [Outcome] = []
    /// When the last event happened: what ``statusLine`` counts a drain's time left from.
    public private(set) var lastEventAt: ContinuousClock.Instant?
    /// Requesters who asked to be answered only once the old generation is gone (`--wait-drained`).
    private var waitsDrained: Set<RequesterID> = []
    /// A requester of the follow-up asked to cut a drain short rather than wait for it (`--cut-drain`).
    private var followUpCutsDrain = false
    /// The code baton exits with once every worker is gone: 0 after a stop, 1 once no generation can serve.
    public private(set) var exitStatus: Int32 = 0
    private var nextWorker = 1
    private var nextGeneration = 1
    /// A held generation that `baton rollback` retires: its requesters are answered once its workers are gone.
    private var heldRollback: (generation: Int, requesters: [RequesterID], startedAt: ContinuousClock.Instant)?

    public init(settings: SupervisorSettings) {
        precondition(settings.workers >= 1)
        self.settings = settings
    }

    mutating func restore(_ snapshot: SupervisorSnapshot, now: ContinuousClock.Instant) {
        phase = .running
        serving = snapshot.serving
        nextWorker = snapshot.nextWorker
        nextGeneration = snapshot.nextGeneration
        var generation = Generation(
            id: snapshot.generation.id,
            state: .serving,
            startedAt: now - .milliseconds(snapshot.generation.ageMilliseconds),
            workers: [],
            slots: [:],
            streak: snapshot.generation.streak,
            crashLooping: snapshot.generation.crashLooping
        )
        for saved in snapshot.workers {
            let id = WorkerID(saved.id)
            workers[id] = Worker(
                id: id,
                generation: saved.generation,
                slot: saved.slot,
                pid: saved.pid,
                state: .ready,
                startedAt: now - .milliseconds(saved.ageMilliseconds),
                readyAt: saved.readyAgeMilliseconds.map { now - .milliseconds($0) },
                restarts: saved.restarts,
                status: saved.status
            )
            generation.workers.append(id)
            generation.slots[saved.slot] = id
        }
        generations = [generation.id: generation]
        lastReload = snapshot.lastReload.map {
            Outcome(
                ok: $0.ok,
                generation: $0.generation,
                duration: .milliseconds($0.durationMilliseconds),
                reason: $0.reason,
                finishedAt: now - .milliseconds($0.ageMilliseconds)
            )
        }
        history = lastReload.map { [$0] } ?? []
    }

    // MARK: - Queries

    public func worker(_ id: WorkerID) -> Worker? { workers[id] }

    /// The worker whose process is `pid`.
    public func worker(pid: Int32) -> Worker? { workers.values.first { $0.pid == pid } }

    /// Generations in order, oldest first.
    public var orderedGenerations: [Generation] { generations.keys.sorted().compactMap { generations[$0] } }

    /// Live workers, oldest first.
    public var liveWorkers: [Worker] { workers.values.filter { $0.state != .exited }.sorted { $0.id < $1.id } }

    /// One line for systemd's `STATUS=`, e.g.
    /// `serving generation 7 (4 workers) · generation 6 draining (2) · last reload ok in 840ms`.
    public var statusLine: String {
        var parts: [String] = []
        switch phase {
        case .idle, .starting:
            if let generation = generations.values.first(where: { $0.state == .starting }) {
                parts.append(
                    "starting generation \(generation.id) (\(readyCount(generation))/\(settings.workers) ready\(generation.soak == nil ? "" : ", soaking"))"
                )
            }
        case .stopping, .exited:
            parts.append("stopping (\(liveWorkers.count) workers left)")
        case .running:
            break
        }
        if phase == .running, let serving, let generation = generations[serving] {
            let ready = readyCount(generation)
            var text = "serving generation \(serving) (\(ready) worker\(ready == 1 ? "" : "s"))"
            if generation.crashLooping { text += ", crash-looping" }
            parts.append(text)
        }
        for generation in orderedGenerations where generation.id != serving {
            if let text = trialStatus(generation.id) {
                parts.append(text)
                continue
            }
            let live = generation.workers.count
            switch generation.state {
            case .starting where phase == .running && generation.soak != nil:
                parts.append(
                    "generation \(generation.id) soaking (\(readyCount(generation))/\(settings.workers), --min-ready \(settings.minReady.shortDescription))"
                )
            case .starting where phase == .running:
                parts.append("generation \(generation.id) starting (\(readyCount(generation))/\(settings.workers))")
            case .draining:
                parts.append(drainProgress(generation, now: lastEventAt ?? generation.startedAt).description)
            case .failed where live > 0: parts.append("generation \(generation.id) failed, stopping (\(live))")
            default: break
            }
        }
        if let lastReload {
            parts.append(
                lastReload.ok
                    ? "last reload ok in \(lastReload.duration.shortDescription)"
                    : "last reload failed: \(lastReload.reason ?? "unknown")"
            )
        }
        return parts.joined(separator: " · ")
    }

    /// What each draining generation still holds, oldest first.
    public func draining(now: ContinuousClock.Instant) -> [DrainProgress] {
        orderedGenerations.filter { $0.state == .draining }.map { drainProgress($0, now: now) }
    }

    /// The connections its stopping workers hold (nil until counted), and the time left until the last is killed.
    public func drainProgress(_ generation: Generation, now: ContinuousClock.Instant) -> DrainProgress {
        let live = generation.workers.compactMap { workers[$0] }
        let counted = live.compactMap(\.connections)
        let deadline = live.compactMap(\.stopDeadline).max()
        return DrainProgress(
            generation: generation.id,
            workers: live.count,
            connections: counted.isEmpty ? nil : counted.reduce(0, +),
            secondsLeft: deadline.map { ($0 - now).secondsRoundedUp } ?? 0
        )
    }

    /// The generation that blocks the next reload: one that still drains (at most one drains at a time).
    private var drainingGeneration: Generation? {
        orderedGenerations.first { $0.state == .draining && !$0.cutShort }
    }

    private func readyCount(_ generation: Generation) -> Int {
        generation.workers.filter { workers[$0]?.state == .ready }.count
    }

    // MARK: - Events

    public mutating func handle(_ event: SupervisorEvent, now: ContinuousClock.Instant) -> [SupervisorAction] {
        var actions: [SupervisorAction] = []
        lastEventAt = now
        switch event {
        case .start:
            guard phase == .idle else { break }
            phase = .starting
            let id = newGeneration(now: now, actions: &actions)
            for slot in 1...settings.workers {
                spawnWorker(generation: id, slot: slot, restarts: 0, now: now, actions: &actions)
            }
        case .reloadRequested(let requester, let options):
            requestReload(ReloadRequest(requester, options: options), now: now, actions: &actions)
        case .reload(let request):
            requestReload(request, now: now, actions: &actions)
        case .connections(let counts):
            for (id, count) in counts {
                guard let worker = workers[id], worker.state == .stopping else { continue }
                if worker.connections == nil { generations[worker.generation]?.connectionsWhenStopped += count }
                workers[id]?.connections = count
            }
        case .promoteRequested(let requester):
            promoteHeld(requester, now: now, actions: &actions)
        case .rollbackRequested(let requester):
            rollBackHeld(requester, now: now, actions: &actions)
        case .spawned(let id, let pid):
            guard var worker = workers[id] else { break }
            worker.pid = pid
            workers[id] = worker
            if worker.state == .stopping {
                // Stopped before it was even started (a rollback or stop raced the spawn).
                actions.append(.kill(id, pid: pid))
            }
            if worker.state == .starting, let health = settings.health {
                actions.append(.schedule(.probe(id), after: health.startingInterval))
            }
        case .spawnFailed(let id, let reason):
            guard workers[id] != nil else { break }
            workers[id]?.failure = reason
            workerGone(id, reason: nil, failure: reason, stderr: [], now: now, actions: &actions)
        case .ready(let id):
            workerReady(id, now: now, actions: &actions)
        case .status(let id, let text):
            workers[id]?.status = text
        case .watchdogPing(let id, let interval):
            guard let worker = workers[id], worker.state == .ready || worker.state == .starting else { break }
            if let interval { workers[id]?.watchdogInterval = interval }
            if workers[id]?.watchdogInterval == nil { workers[id]?.watchdogInterval = settings.workerWatchdog }
            if let interval = workers[id]?.watchdogInterval {
                actions.append(.schedule(.watchdog(id), after: interval))
            }
        case .exited(let id, let reason, let stderr):
            workerGone(id, reason: reason, failure: nil, stderr: stderr, now: now, actions: &actions)
        case .descendantExited(let id, let pid, let reason):
            descendantExited(of: id, pid: pid, reason: reason, now: now, actions: &actions)
        case .explained(let id, let text):
            workers[id]?.explanation = text
        case .timer(let timer):
            fire(timer, now: now, actions: &actions)
        case .probed(let id, let ok, let detail):
            probed(id, ok: ok, detail: detail, now: now, actions: &actions)
        case .stop where phase == .stopping:
            actions.append(.log(LifecycleEvent(.stopping, "second stop signal: killing every worker now")))
            for worker in liveWorkers { if let pid = worker.pid { actions.append(.kill(worker.id, pid: pid)) } }
            phase = .exited
            actions.append(.exit(exitStatus))
        case .stop:
            beginStop(now: now, actions: &actions)
        }
        if phase != .exited { actions.append(.notifyManager(.status)) }
        return actions
    }

    // MARK: - Generations and workers

    private mutating func newGeneration(now: ContinuousClock.Instant, actions: inout [SupervisorAction]) -> Int {
        let id = nextGeneration
        nextGeneration += 1
        generations[id] = Generation(id: id, state: .starting, startedAt: now, workers: [], slots: [:])
        actions.append(
            .log(
                LifecycleEvent(
                    .generationStarted,
                    "generation \(id) starting with \(settings.workers) worker(s)",
                    generation: id
                )
            )
        )
        return id
    }

    private mutating func spawnWorker(
        generation: Int,
        slot: Int,
        restarts: Int,
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        let id = WorkerID(nextWorker)
        nextWorker += 1
        workers[id] = Worker(
            id: id,
            generation: generation,
            slot: slot,
            pid: nil,
            state: .starting,
            startedAt: now,
            readyAt: nil,
            restarts: restarts
        )
        generations[generation]?.workers.append(id)
        generations[generation]?.slots[slot] = id
        actions.append(.spawn(id, generation: generation, slot: slot))
        actions.append(.schedule(.readyTimeout(id), after: settings.readyTimeout))
        if phase == .starting || reload != nil {
            // Keep systemd's start or reload timer from killing a generation that is within its ready timeout.
            actions.append(.notifyManager(.extendTimeout(settings.readyTimeout + .seconds(5))))
        }
    }

    /// Sends the stop signal to a worker (or kills it, if `kill`), and arms its stop timeout.
    private mutating func stopWorker(_ id: WorkerID, kill: Bool, actions: inout [SupervisorAction]) {
        guard var worker = workers[id], worker.state != .exited else { return }
        if worker.state == .starting { actions.append(.cancel(.readyTimeout(id))) }
        actions.append(.cancel(.watchdog(id)))
        if settings.health != nil { actions.append(.cancel(.probe(id))) }
        let alreadyStopping = worker.state == .stopping
        worker.state = .stopping
        workers[id] = worker
        if let generation = generations[worker.generation], generation.slots[worker.slot] == id {
            generations[worker.generation]?.slots[worker.slot] = nil
        }
        guard let pid = worker.pid else { return }  // killed when `.spawned` arrives
        if kill {
            actions.append(.kill(id, pid: pid))
        } else if !alreadyStopping {
            actions.append(.stop(id, pid: pid))
            actions.append(.schedule(.stopTimeout(id), after: settings.stopTimeout))
            workers[id]?.stopDeadline = lastEventAt.map { $0 + settings.stopTimeout }
        }
    }

    private mutating func workerReady(_ id: WorkerID, now: ContinuousClock.Instant, actions: inout [SupervisorAction]) {
        guard var worker = workers[id], worker.state == .starting else { return }
        if settings.health != nil && !worker.probe.passed {
            // Ready by its --ready mode; ready to baton once a probe passes too (``probed(_:ok:detail:now:actions:)``).
            workers[id]?.probe.readySignalled = true
            return
        }
        worker.state = .ready
        worker.readyAt = now
        workers[id] = worker
        actions.append(.cancel(.readyTimeout(id)))
        guard var generation = generations[worker.generation] else { return }

        switch generation.state {
        case .serving:
            // A respawned worker of the serving generation.
            if worker.restarts > 0 {
                actions.append(
                    .log(
                        LifecycleEvent(
                            .workerRespawned,
                            "worker \(worker.slot) of generation \(generation.id) is back (pid \(worker.pid ?? 0))",
                            generation: generation.id,
                            workerPID: worker.pid,
                            slot: worker.slot
                        )
                    )
                )
            }
            retireSuperseded(by: worker, actions: &actions)
        case .starting:
            if let reload, reload.target == generation.id, reload.canary > .zero, reload.canarySince == nil {
                beginCanary(worker, now: now, actions: &actions)
                return
            }
            if settings.strategy == .rolling, let reload, reload.target == generation.id, !reload.hold,
                let previous = reload.previous
            {
                if settings.minReady > .zero {
                    beginSoak(generation.id, slot: worker.slot, now: now, actions: &actions)
                    return
                }
                rollingStep(
                    readySlot: worker.slot,
                    target: generation.id,
                    previous: previous,
                    now: now,
                    actions: &actions
                )
                return
            }
            // Every worker that becomes ready is reported, the last one too (`2/2 workers ready`).
            if let reload, reload.target == generation.id {
                actions.append(
                    .progress(
                        reload.requesters,
                        "generation \(generation.id): \(readyCount(generation))/\(settings.workers) workers ready"
                    )
                )
            }
            guard readyCount(generation) == settings.workers else { return }
            if settings.minReady > .zero {
                beginSoak(generation.id, slot: nil, now: now, actions: &actions)
                return
            }
            generation.state = .serving
            generations[generation.id] = generation
            promote(generation.id, now: now, actions: &actions)
        default:
            break
        }
    }

    /// `id` is ready (rolling: its new worker of `slot` is): it stays in the soak window before it is promoted (or
    /// that slot's predecessor retired). Any exit or missed watchdog of one of its workers meanwhile fails it.
    private mutating func beginSoak(
        _ id: Int,
        slot: Int?,
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        generations[id]?.soak = Soak(since: now, slot: slot)
        actions.append(.schedule(.soak(generation: id), after: settings.minReady))
        let window = settings.minReady.shortDescription
        if let reload, reload.target == id {
            // Keep systemd's reload timer from failing a reload that is soaking as it should.
            actions.append(.notifyManager(.extendTimeout(settings.minReady + .seconds(5))))
            let what =
                slot.map { "generation \(id): worker \($0) ready; soaking \(window) before retiring its predecessor" }
                ?? "generation \(id) ready; soaking \(window) before retiring generation \(reload.previous.map(String.init) ?? "-")"
            actions.append(.progress(reload.requesters, what))
        } else if phase == .starting {
            actions.append(.notifyManager(.extendTimeout(settings.minReady + .seconds(5))))
        }
        actions.append(
            .log(
                LifecycleEvent(
                    .generationSoaking,
                    "generation \(id)\(slot.map { " worker \($0)" } ?? "") ready; soaking \(window) (--min-ready)",
                    generation: id,
                    slot: slot
                )
            )
        )
    }

    /// The soak window of `id` ended with every worker still ready: promote it (rolling: take the step).
    ///
    /// Probes (issue 12, point 2) hook in here: a probe that fails within the window calls ``rollBack`` like an exit
    /// does, and a soak ends only when the last probe passed.
    private mutating func endSoak(_ id: Int, now: ContinuousClock.Instant, actions: inout [SupervisorAction]) {
        guard phase == .starting || (phase == .running && reload?.target == id),
            let generation = generations[id], generation.state == .starting, let soak = generation.soak,
            generation.workers.allSatisfy({ workers[$0]?.state == .ready })
        else { return }
        generations[id]?.soak = nil
        if let slot = soak.slot, let reload, reload.target == id, let previous = reload.previous {
            rollingStep(readySlot: slot, target: id, previous: previous, now: now, actions: &actions)
            return
        }
        generations[id]?.state = .serving
        promote(id, now: now, actions: &actions)
    }

    /// Rolling: the new worker of `readySlot` is ready; retire the old one of that slot and start the next.
    private mutating func rollingStep(
        readySlot: Int,
        target: Int,
        previous: Int,
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        guard var reload else { return }
        if let old = generations[previous]?.slots[readySlot] {
            stopWorker(old, kill: false, actions: &actions)
        }
        if generations[previous]?.drainStartedAt == nil { generations[previous]?.drainStartedAt = now }
        reload.retiredSlots.insert(readySlot)
        self.reload = reload
        let ready = readyCount(generations[target]!)
        actions.append(
            .progress(
                reload.requesters,
                "generation \(target): worker \(readySlot) ready, \(ready)/\(settings.workers); retiring its predecessor"
            )
        )
        if readySlot < settings.workers {
            spawnWorker(generation: target, slot: readySlot + 1, restarts: 0, now: now, actions: &actions)
        } else {
            generations[target]?.state = .serving
            promote(target, now: now, actions: &actions)
        }
    }

    /// `id` is fully ready: make it the serving generation and retire the previous one.
    private mutating func promote(_ id: Int, now: ContinuousClock.Instant, actions: inout [SupervisorAction]) {
        if let reload, reload.target == id, reload.hold, reload.heldSince == nil, phase == .running,
            let previous = reload.previous, generations[previous] != nil
        {
            hold(id, beside: previous, now: now, actions: &actions)
            return
        }
        let generation = generations[id]!
        actions.append(
            .log(
                LifecycleEvent(
                    .generationReady,
                    "generation \(id) ready (\(settings.workers) worker(s))",
                    generation: id,
                    duration: now - generation.startedAt
                )
            )
        )
        let previous = serving
        serving = id
        if phase == .starting {
            phase = .running
            actions.append(.notifyManager(.ready))
            if let followUp {
                self.followUp = nil
                startReload(requesters: followUp, now: now, actions: &actions)
            }
            return
        }
        guard var reload, reload.target == id else { return }
        reload.promotedAt = now
        self.reload = reload
        actions.append(
            .progress(reload.requesters, "generation \(id) serving after \((now - reload.startedAt).shortDescription)")
        )
        if let previous, var old = generations[previous] {
            // The reload finishes now, while the old generation drains; `--wait-drained` requesters hear it once gone.
            let parked = reload.requesters.filter { waitsDrained.contains($0) }
            old.state = .draining
            old.drainStartedAt = old.drainStartedAt ?? now
            if !parked.isEmpty {
                old.drainWait = DrainWait(requesters: parked, target: id, startedAt: reload.startedAt)
            }
            generations[previous] = old
            actions.append(
                .progress(reload.requesters, "retiring generation \(previous) (\(old.workers.count) worker(s))")
            )
            for worker in old.workers { stopWorker(worker, kill: false, actions: &actions) }
            if !parked.isEmpty {
                actions.append(.progress(parked, "--wait-drained: waiting for generation \(previous) to drain"))
            }
            finishReload(ok: true, reason: nil, failedWorker: nil, parked: parked, now: now, actions: &actions)
            retireIfDrained(previous, now: now, actions: &actions)
        } else {
            finishReload(ok: true, reason: nil, failedWorker: nil, now: now, actions: &actions)
        }
    }

    private mutating func retireIfDrained(_ id: Int, now: ContinuousClock.Instant, actions: inout [SupervisorAction]) {
        guard let generation = generations[id], generation.workers.isEmpty else { return }
        switch generation.state {
        case .draining:
            generations[id] = nil
            actions.append(
                .log(
                    LifecycleEvent(
                        .generationRetired,
                        "generation \(id) retired",
                        generation: id,
                        duration: now - generation.startedAt
                    )
                )
            )
            drainEnded(generation, now: now, actions: &actions)
        case .failed:
            generations[id] = nil
            if let wait = generation.failWait { answerFailWait(wait, actions: &actions) }
            if let heldRollback, heldRollback.generation == id {
                self.heldRollback = nil
                actions.append(
                    .reloadFinished(
                        heldRollback.requesters,
                        ok: true,
                        message:
                            "generation \(id) rolled back; generation \(serving.map(String.init) ?? "-") keeps serving",
                        duration: now - heldRollback.startedAt,
                        failedWorker: nil
                    )
                )
            }
        default:
            break
        }
    }

    private mutating func requestReload(
        _ request: ReloadRequest,
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        let requester = request.requester
        let options = request.options
        let requesters = requester.map { [$0] } ?? []
        switch phase {
        case .stopping, .exited:
            actions.append(
                .reloadFinished(requesters, ok: false, message: "baton is stopping", duration: .zero, failedWorker: nil)
            )
            return
        case .idle:
            actions.append(
                .reloadFinished(
                    requesters,
                    ok: false,
                    message: "baton has not started",
                    duration: .zero,
                    failedWorker: nil
                )
            )
            return
        case .starting, .running:
            break
        }
        actions.append(.log(LifecycleEvent(.reloadRequested, "reload requested\(requester == nil ? " (signal)" : "")")))
        if let refusal = reloadRefusal(options) {
            actions.append(.log(LifecycleEvent(.reloadFailed, "reload refused: \(refusal)", reason: refusal)))
            actions.append(
                .reloadFinished(requesters, ok: false, message: refusal, duration: .zero, failedWorker: nil)
            )
            return
        }
        if let requester, request.waitDrained { waitsDrained.insert(requester) }
        if phase == .starting || reload != nil {
            // Coalesce: at most one reload follows the current one, whoever asked.
            followUp = (followUp ?? []) + requesters
            if request.cutDrain { followUpCutsDrain = true }
            actions.append(.progress(requesters, "a reload is in progress; yours follows it"))
            return
        }
        if followUp != nil || drainingGeneration != nil {
            // One generation drains at a time: this reload waits for it (or, `--cut-drain`, cuts it short).
            followUp = (followUp ?? []) + requesters
            if request.cutDrain { followUpCutsDrain = true }
            startFollowUp(announcing: requesters, now: now, actions: &actions)
            return
        }
        startReload(requesters: requesters, options: options, now: now, actions: &actions)
    }

    /// Starts the pending follow-up reload, unless a generation still drains: then its requesters in `announcing`
    /// hear what it waits for, or, if one asked for `--cut-drain`, what is left of the drain is killed first.
    private mutating func startFollowUp(
        announcing: [RequesterID],
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        guard let followUp, reload == nil, phase == .running else { return }
        if let draining = drainingGeneration {
            guard followUpCutsDrain else {
                let progress = drainProgress(draining, now: now)
                actions.append(
                    .progress(
                        announcing,
                        "waiting for generation \(draining.id) to finish draining (\(progress.summary))"
                    )
                )
                return
            }
            cutDrain(draining, now: now, actions: &actions)
        }
        self.followUp = nil
        followUpCutsDrain = false
        startReload(requesters: followUp, now: now, actions: &actions)
    }

    /// `--cut-drain`: SIGKILLs what is left of a draining generation (its workers were sent the stop signal).
    private mutating func cutDrain(
        _ generation: Generation,
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        let progress = drainProgress(generation, now: now)
        generations[generation.id]?.cutShort = true
        generations[generation.id]?.killedConnections += progress.connections ?? 0
        generations[generation.id]?.killedWorkers += progress.workers
        actions.append(
            .log(
                LifecycleEvent(
                    .workerKilled,
                    "cutting the drain of generation \(generation.id) short (--cut-drain): killing \(progress.workers) worker(s) holding \(progress.connections.map(String.init) ?? "uncounted") connection(s)",
                    generation: generation.id
                )
            )
        )
        actions.append(
            .progress(
                followUp ?? [],
                "cutting the drain of generation \(generation.id) short: killing \(progress.summary)"
            )
        )
        for worker in generation.workers { stopWorker(worker, kill: true, actions: &actions) }
    }

    /// A draining generation is gone: one journal event for the whole drain, its `--wait-drained` requesters answered,
    /// and a reload that waited for it started.
    private mutating func drainEnded(
        _ generation: Generation,
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        let took = now - (generation.drainStartedAt ?? now)
        actions.append(
            .log(
                LifecycleEvent(
                    .drainFinished,
                    "generation \(generation.id) drained in \(took.shortDescription): "
                        + (generation.killedWorkers == 0
                            ? "its workers closed their connections and exited (0 killed; \(generation.connectionsWhenStopped) open when told to stop)"
                            : "\(generation.killedWorkers) worker(s) killed \(generation.cutShort ? "by --cut-drain" : "at the stop timeout") with \(generation.killedConnections) connection(s) still open (\(generation.connectionsWhenStopped) when told to stop)"),
                    generation: generation.id,
                    duration: took,
                    reason: generation.cutShort ? "cut short by a reload (--cut-drain)" : nil,
                    connections: generation.killedConnections
                )
            )
        )
        if let wait = generation.drainWait {
            waitsDrained.subtract(wait.requesters)
            let duration = now - wait.startedAt
            actions.append(.reloadOutcome(wait.requesters, generation: wait.target, reason: nil))
            actions.append(
                .reloadFinished(
                    wait.requesters,
                    ok: true,
                    message:
                        "generation \(wait.target) serving; generation \(generation.id) drained in \(took.shortDescription)"
                        + (generation.killedConnections > 0
                            ? " (\(generation.killedConnections) connection(s) killed)" : "")
                        + "; reload took \(duration.shortDescription)",
                    duration: duration,
                    failedWorker: nil
                )
            )
        }
        startFollowUp(announcing: [], now: now, actions: &actions)
    }

    private mutating func startReload(
        requesters: [RequesterID],
        options: ReloadOptions = ReloadOptions(),
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        actions.append(.notifyManager(.reloading))
        let id = newGeneration(now: now, actions: &actions)
        var reload = Reload(target: id, previous: serving, requesters: requesters, startedAt: now)
        if serving != nil {
            reload.canary = options.canary ?? settings.canary
            reload.hold = options.hold
        }
        self.reload = reload
        actions.append(
            .progress(
                requesters,
                "starting generation \(id) (\(settings.workers) worker(s), \(settings.strategy.rawValue))"
                    + canaryPlan(reload)
            )
        )
        // A canary starts alone, and so does a rolling reload's first worker (with --hold, the rest start at once).
        if reload.canary > .zero || (settings.strategy == .rolling && serving != nil && !reload.hold) {
            spawnWorker(generation: id, slot: 1, restarts: 0, now: now, actions: &actions)
        } else {
            for slot in 1...settings.workers {
                spawnWorker(generation: id, slot: slot, restarts: 0, now: now, actions: &actions)
            }
        }
    }

    private mutating func finishReload(
        ok: Bool,
        reason: String?,
        failedWorker: FailedWorker?,
        parked: [RequesterID] = [],
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        guard var reload else { return }
        self.reload = nil
        reload.requesters.removeAll { parked.contains($0) }
        waitsDrained.subtract(reload.requesters)
        let duration = now - reload.startedAt
        lastReload = Outcome(ok: ok, generation: reload.target, duration: duration, reason: reason, finishedAt: now)
        history.insert(lastReload!, at: 0)
        if history.count > ReloadHistory.limit { history.removeLast(history.count - ReloadHistory.limit) }
        actions.append(
            .reloadOutcome(
                reload.requesters,
                generation: reload.target,
                reason: reason,
                failedWorker: ok ? nil : failedWorker
            )
        )
        if ok {
            actions.append(
                .log(
                    LifecycleEvent(
                        .reloadSucceeded,
                        "reload to generation \(reload.target) succeeded in \(duration.shortDescription)",
                        generation: reload.target,
                        duration: duration
                    )
                )
            )
            actions.append(
                .reloadFinished(
                    reload.requesters,
                    ok: true,
                    message: "generation \(reload.target) serving; reload took \(duration.shortDescription)",
                    duration: duration,
                    failedWorker: nil
                )
            )
        } else {
            let text =
                "reload to generation \(reload.target) failed: \(reason ?? "unknown"); generation \(reload.previous.map(String.init) ?? "-") keeps serving"
            actions.append(
                .log(LifecycleEvent(.reloadFailed, text, generation: reload.target, duration: duration, reason: reason))
            )
            let wait = FailWait(
                requesters: reload.requesters,
                message: text,
                duration: duration,
                failedWorker: failedWorker
            )
            if let target = generations[reload.target], !target.workers.isEmpty {
                // Answered once the failed generation is gone (``retireIfDrained(_:now:actions:)``).
                actions.append(
                    .progress(
                        reload.requesters,
                        "reload failed: \(reason ?? "unknown"); waiting for the \(target.workers.count) worker(s) of generation \(reload.target) to stop"
                    )
                )
                generations[reload.target]?.failWait = wait
            } else {
                answerFailWait(wait, actions: &actions)
            }
        }
        actions.append(.notifyManager(.ready))
        startFollowUp(announcing: followUp ?? [], now: now, actions: &actions)
    }

    /// The reload's new generation cannot serve: stop it, restore what rolling retired, and fail the reload.
    ///
    /// Its workers get the stop signal and the stop timeout like any retiring worker, never SIGKILL first: one that
    /// became ready (or accepts before it says so) holds connections it has accepted, and those must be answered.
    private mutating func rollBack(
        reason: String,
        failedWorker: FailedWorker?,
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        guard let reload, var target = generations[reload.target] else { return }
        canaryFailed(reason: reason, actions: &actions)
        if target.soak != nil { actions.append(.cancel(.soak(generation: target.id))) }
        target.soak = nil
        target.state = .failed
        generations[reload.target] = target
        actions.append(
            .log(
                LifecycleEvent(
                    .generationFailed,
                    "generation \(reload.target) failed: \(reason)",
                    generation: reload.target,
                    reason: reason
                )
            )
        )
        for worker in target.workers { stopWorker(worker, kill: false, actions: &actions) }
        if let previous = reload.previous {
            for slot in reload.retiredSlots.sorted() where generations[previous]?.slots[slot] == nil {
                spawnWorker(generation: previous, slot: slot, restarts: 0, now: now, actions: &actions)
            }
        }
        finishReload(ok: false, reason: reason, failedWorker: failedWorker, now: now, actions: &actions)
        retireIfDrained(target.id, now: now, actions: &actions)
    }

    /// A worker's process is gone (`reason`), or never started (`failure`).
    private mutating func workerGone(
        _ id: WorkerID,
        reason: ExitReason?,
        failure: String?,
        stderr: [String],
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        guard var worker = workers[id], worker.state != .exited else { return }
        let previousState = worker.state
        worker.state = .exited
        workers[id] = nil
        actions.append(.cancel(.readyTimeout(id)))
        actions.append(.cancel(.stopTimeout(id)))
        actions.append(.cancel(.watchdog(id)))
        if settings.health != nil { actions.append(.cancel(.probe(id))) }
        if let pid = worker.pid {
            // Whatever the app left in its process group goes with it: asked first, like any worker.
            actions.append(.stopGroup(id, pid: pid))
        }
        guard var generation = generations[worker.generation] else { return }
        generation.workers.removeAll { $0 == id }
        if generation.slots[worker.slot] == id { generation.slots[worker.slot] = nil }
        generations[worker.generation] = generation
        let what =
            failure ?? worker.failure
            ?? (reason.map { "exited with \($0)" } ?? "exited") + (worker.explanation.map { ": " + $0 } ?? "")
        worker.failure = worker.failure ?? failure
        let expected = previousState == .stopping && worker.failure == nil

        actions.append(
            .log(
                LifecycleEvent(
                    expected ? .workerExited : .workerCrashed,
                    "worker \(worker.slot) of generation \(generation.id) (pid \(worker.pid.map(String.init) ?? "none")) \(what)",
                    generation: generation.id,
                    workerPID: worker.pid,
                    slot: worker.slot,
                    duration: now - worker.startedAt,
                    status: reason?.description,
                    reason: worker.failure
                )
            )
        )

        if phase == .stopping {
            if liveWorkers.isEmpty {
                phase = .exited
                actions.append(.exit(exitStatus))
            }
            return
        }

        if let reload, reload.target == generation.id, generation.state == .starting || reload.heldSince != nil,
            !expected
        {
            let when =
                trialWindow(of: worker, now: now)
                ?? (generation.soak == nil
                    ? "before the generation was ready" : "within --min-ready \(settings.minReady.shortDescription)")
            rollBack(
                reason:
                    "\(isCanary(worker) ? "canary " : "")worker \(worker.slot) (pid \(worker.pid.map(String.init) ?? "none")) \(what) \(when)",
                failedWorker: FailedWorker(id, stderr: stderr),
                now: now,
                actions: &actions
            )
            return
        }

        switch generation.state {
        case .starting where phase == .starting:
            // The first generation cannot serve: nothing can, so baton gives up and lets its manager decide.
            guard !expected else { break }
            if generation.soak != nil { actions.append(.cancel(.soak(generation: generation.id))) }
            generations[generation.id]?.soak = nil
            generations[generation.id]?.state = .failed
            actions.append(
                .log(
                    LifecycleEvent(
                        .generationFailed,
                        "generation \(generation.id) failed to start: worker \(worker.slot) \(what)",
                        generation: generation.id,
                        reason: what
                    )
                )
            )
            giveUp(
                reason:
                    "the first generation failed to start: worker \(worker.slot) \(what)"
                    + (generation.soak == nil ? "" : " within --min-ready \(settings.minReady.shortDescription)"),
                failedWorker: FailedWorker(id, stderr: stderr),
                actions: &actions
            )
        case .serving where !expected:
            respawnAfterCrash(worker, stderr: stderr, generation: generation.id, now: now, actions: &actions)
        case .draining, .failed:
            retireIfDrained(generation.id, now: now, actions: &actions)
        default:
            break
        }
    }

    /// A descendant of worker `id` ended abnormally: within a soak window that fails the generation; otherwise it is
    /// the worker's business.
    private mutating func descendantExited(
        of id: WorkerID,
        pid: Int32,
        reason: ExitReason,
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        guard !reason.isClean, let worker = workers[id], let generation = generations[worker.generation],
            (generation.soak != nil && generation.state == .starting) || trialWindow(of: worker, now: now) != nil
        else { return }
        let what =
            "process \(pid) of \(isCanary(worker) ? "canary " : "")worker \(worker.slot) (pid \(worker.pid.map(String.init) ?? "none")) exited with \(reason) \(trialWindow(of: worker, now: now) ?? "within --min-ready \(settings.minReady.shortDescription)")"
        if let reload, reload.target == generation.id {
            rollBack(reason: what, failedWorker: FailedWorker(id, stderr: nil), now: now, actions: &actions)
        } else if phase == .starting {
            actions.append(.cancel(.soak(generation: generation.id)))
            generations[generation.id]?.soak = nil
            generations[generation.id]?.state = .failed
            giveUp(
                reason: "the first generation failed to start: \(what)",
                failedWorker: FailedWorker(id, stderr: nil),
                actions: &actions
            )
        }
    }

    private mutating func respawnAfterCrash(
        _ worker: Worker,
        stderr: [String],
        generation id: Int,
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        guard var generation = generations[id] else { return }
        let stable = worker.readyAt.map { now - $0 >= settings.backoff.stablePeriod } ?? false
        let streak = (stable ? 0 : generation.streak[worker.slot, default: 0]) + 1
        generation.streak[worker.slot] = streak
        if streak >= settings.crashLoopThreshold && !generation.crashLooping {
            generation.crashLooping = true
            actions.append(
                .log(
                    LifecycleEvent(
                        .crashLoop,
                        "generation \(id) is crash-looping: worker \(worker.slot) crashed \(streak) times in a row",
                        generation: id,
                        slot: worker.slot
                    )
                )
            )
        }
        if stable && generation.crashLooping
            && generation.streak.values.allSatisfy({ $0 < settings.crashLoopThreshold })
        {
            generation.crashLooping = false
        }
        generations[id] = generation
        let everySlotGaveUp = (1...settings.workers).allSatisfy {
            generation.streak[$0, default: 0] >= settings.giveUpThreshold
        }
        if everySlotGaveUp && generation.workers.allSatisfy({ workers[$0]?.state != .ready }) {
            generations[id]?.state = .failed
            giveUp(
                reason: "every worker of generation \(id) crashed \(settings.giveUpThreshold) times in a row",
                failedWorker: FailedWorker(worker.id, stderr: stderr),
                actions: &actions
            )
            return
        }
        let delay = settings.backoff.delay(afterCrash: streak)
        actions.append(.schedule(.respawn(generation: id, slot: worker.slot), after: delay))
    }

    /// No generation can serve: stop every worker the way a stop does (the stop signal, then SIGKILL after the
    /// stop timeout: one that is up may be answering requests), and exit non-zero once they are gone.
    private mutating func giveUp(reason: String, failedWorker: FailedWorker?, actions: inout [SupervisorAction]) {
        actions.append(.log(LifecycleEvent(.generationFailed, "no generation can serve: \(reason)", reason: reason)))
        if let reload {
            actions.append(
                .reloadFinished(
                    reload.requesters,
                    ok: false,
                    message: reason,
                    duration: .zero,
                    failedWorker: failedWorker
                )
            )
            self.reload = nil
        }
        if let followUp {
            actions.append(
                .reloadFinished(followUp, ok: false, message: reason, duration: .zero, failedWorker: failedWorker)
            )
            self.followUp = nil
        }
        answerDrainWaiters(because: "baton gave up: \(reason)", actions: &actions)
        exitStatus = 1
        phase = .stopping
        actions.append(.notifyManager(.stopping))
        for worker in liveWorkers { stopWorker(worker.id, kill: false, actions: &actions) }
        if liveWorkers.isEmpty {
            phase = .exited
            actions.append(.exit(exitStatus))
        }
    }

    private mutating func fire(_ timer: TimerID, now: ContinuousClock.Instant, actions: inout [SupervisorAction]) {
        switch timer {
        case .readyTimeout(let id):
            guard let worker = workers[id], worker.state == .starting else { return }
            let reason =
                "did not become ready within \(settings.readyTimeout.shortDescription)"
                + probeExplanation(worker) + (worker.explanation.map { ": " + $0 } ?? "")
            workers[id]?.failure = reason
            if let reload, reload.target == worker.generation {
                rollBack(
                    reason: "worker \(worker.slot) (pid \(worker.pid.map(String.init) ?? "none")) \(reason)",
                    failedWorker: FailedWorker(id, stderr: nil),
                    now: now,
                    actions: &actions
                )
            } else {
                // The exit that follows is handled as a failure (respawn, or giving up at start). The stop signal
                // first: a worker that is slow to say it is ready may already be accepting.
                stopWorker(id, kill: false, actions: &actions)
                if worker.pid == nil {
                    workerGone(id, reason: nil, failure: reason, stderr: [], now: now, actions: &actions)
                }
            }
        case .stopTimeout(let id):
            guard let worker = workers[id], worker.state == .stopping, let pid = worker.pid else { return }
            actions.append(
                .log(
                    LifecycleEvent(
                        .workerKilled,
                        "worker \(worker.slot) of generation \(worker.generation) (pid \(pid)) did not stop within \(settings.stopTimeout.shortDescription); killing its process group",
                        generation: worker.generation,
                        workerPID: pid,
                        slot: worker.slot
                    )
                )
            )
            actions.append(.kill(id, pid: pid))
            // A retiring worker: of a draining generation, or (rolling) of the one the reload replaces.
            if generations[worker.generation]?.state == .draining || reload?.previous == worker.generation {
                generations[worker.generation]?.killedConnections += worker.connections ?? 0
                generations[worker.generation]?.killedWorkers += 1
            }
        case .respawn(let generation, let slot):
            guard phase == .running || phase == .starting, let current = generations[generation],
                current.state == .serving,
                current.slots[slot] == nil
            else { return }
            let restarts = current.streak[slot, default: 0]
            spawnWorker(generation: generation, slot: slot, restarts: restarts, now: now, actions: &actions)
        case .watchdog(let id):
            guard let worker = workers[id], worker.state == .ready || worker.state == .starting else { return }
            let reason = "stopped sending WATCHDOG=1 (interval \(worker.watchdogInterval?.shortDescription ?? "?"))"
            actions.append(
                .log(
                    LifecycleEvent(
                        .watchdogMissed,
                        "worker \(worker.slot) of generation \(worker.generation) (pid \(worker.pid.map(String.init) ?? "none")) \(reason); replacing it",
                        generation: worker.generation,
                        workerPID: worker.pid,
                        slot: worker.slot,
                        reason: reason
                    )
                )
            )
            workers[id]?.failure = reason
            stopWorker(id, kill: true, actions: &actions)
        case .soak(let generation):
            endSoak(generation, now: now, actions: &actions)
        case .probe(let id):
            probeDue(id, actions: &actions)
        case .canary(let generation):
            endCanary(generation, now: now, actions: &actions)
        }
    }

    private mutating func beginStop(now: ContinuousClock.Instant, actions: inout [SupervisorAction]) {
        guard phase != .stopping && phase != .exited else { return }
        phase = .stopping
        actions.append(.notifyManager(.stopping))
        actions.append(.notifyManager(.extendTimeout(settings.stopTimeout + .seconds(5))))
        actions.append(.log(LifecycleEvent(.stopping, "stopping: retiring \(liveWorkers.count) worker(s)")))
        if let reload {
            actions.append(
                .reloadFinished(
                    reload.requesters,
                    ok: false,
                    message: "baton is stopping",
                    duration: now - reload.startedAt,
                    failedWorker: nil
                )
            )
            self.reload = nil
        }
        if let followUp {
            actions.append(
                .reloadFinished(followUp, ok: false, message: "baton is stopping", duration: .zero, failedWorker: nil)
            )
            self.followUp = nil
        }
        answerDrainWaiters(because: "baton is stopping", actions: &actions)
        for worker in liveWorkers { stopWorker(worker.id, kill: false, actions: &actions) }
        if liveWorkers.isEmpty {
            phase = .exited
            actions.append(.exit(0))
        }
    }

    /// The answer to a failed reload's requesters (its `.reloadOutcome` went out when it failed).
    private func answerFailWait(_ wait: FailWait, actions: inout [SupervisorAction]) {
        actions.append(
            .reloadFinished(
                wait.requesters,
                ok: false,
                message: wait.message,
                duration: wait.duration,
                failedWorker: wait.failedWorker
            )
        )
    }

    /// `--wait-drained` requesters whose drain will not end as a drain (baton stops): their reload did succeed.
    /// Requesters of a failed reload still waiting for its generation to stop hear the failure now.
    private mutating func answerDrainWaiters(because why: String, actions: inout [SupervisorAction]) {
        for generation in orderedGenerations {
            if let wait = generation.failWait {
                generations[generation.id]?.failWait = nil
                answerFailWait(wait, actions: &actions)
            }
            guard let wait = generation.drainWait else { continue }
            generations[generation.id]?.drainWait = nil
            waitsDrained.subtract(wait.requesters)
            actions.append(.reloadOutcome(wait.requesters, generation: wait.target, reason: nil))
            actions.append(
                .reloadFinished(
                    wait.requesters,
                    ok: true,
                    message: "generation \(wait.target) served; \(why) before generation \(generation.id) drained",
                    duration: .zero,
                    failedWorker: nil
                )
            )
        }
    }
}

// MARK: - Health probes (`--health`)

extension Supervisor {
    /// A worker's probe is due: run it, unless one is still running or the worker is on its way out.
    fileprivate mutating func probeDue(_ id: WorkerID, actions: inout [SupervisorAction]) {
        guard settings.health != nil, let worker = workers[id], let pid = worker.pid,
            worker.state == .starting || worker.state == .ready, !worker.probe.inFlight,
            worker.probe.replacing == nil
        else { return }
        workers[id]?.probe.inFlight = true
        actions.append(.probe(id, pid: pid))
    }

    /// A probe of `id` ended. Starting, a pass lets the worker become ready (with its `--ready` mode's word); a new
    /// generation's ready worker that fails one fails the reload; a serving worker that fails `--health-failures` in a
    /// row is replaced.
    fileprivate mutating func probed(
        _ id: WorkerID,
        ok: Bool,
        detail: String,
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        guard let health = settings.health, var worker = workers[id],
            worker.state == .starting || worker.state == .ready
        else { return }
        worker.probe.inFlight = false
        worker.probe.passed = ok
        worker.probe.last = detail
        worker.probe.failures = ok ? 0 : worker.probe.failures + 1
        workers[id] = worker

        if worker.state == .starting {
            actions.append(.schedule(.probe(id), after: health.startingInterval))
            if ok && worker.probe.readySignalled { workerReady(id, now: now, actions: &actions) }
            return
        }
        guard !ok else {
            actions.append(.schedule(.probe(id), after: health.interval))
            return
        }
        guard let generation = generations[worker.generation] else { return }
        let who = "worker \(worker.slot) (pid \(worker.pid.map(String.init) ?? "none"))"
        switch generation.state {
        case .starting:
            // Not serving yet: the release is not proven, and one failed probe is enough to say so.
            let when =
                trialState(generation.id) == "canary"
                ? "in its canary window"
                : generation.soak == nil
                    ? "before the generation was ready" : "within --min-ready \(settings.minReady.shortDescription)"
            let reason = "\(who) failed its probe \(when): \(detail)"
            if let reload, reload.target == generation.id {
                workers[id]?.failure = reason
                rollBack(reason: reason, failedWorker: FailedWorker(id, stderr: nil), now: now, actions: &actions)
            } else if phase == .starting && (generation.soak != nil || worker.probe.failures >= health.failures) {
                if generation.soak != nil { actions.append(.cancel(.soak(generation: generation.id))) }
                generations[generation.id]?.soak = nil
                generations[generation.id]?.state = .failed
                workers[id]?.failure = reason
                giveUp(
                    reason: "the first generation failed to start: \(reason)",
                    failedWorker: FailedWorker(id, stderr: nil),
                    actions: &actions
                )
            } else {
                actions.append(.schedule(.probe(id), after: health.interval))
            }
        case .serving where worker.probe.failures >= health.failures:
            replaceUnhealthy(worker, now: now, actions: &actions)
        case .serving:
            actions.append(
                .log(
                    LifecycleEvent(
                        .probeFailed,
                        "\(who) of generation \(worker.generation) failed a probe (\(worker.probe.failures) of \(health.failures) in a row): \(detail)",
                        generation: worker.generation,
                        workerPID: worker.pid,
                        slot: worker.slot,
                        reason: detail
                    )
                )
            )
            actions.append(.schedule(.probe(id), after: health.interval))
        default:
            actions.append(.schedule(.probe(id), after: health.interval))
        }
    }

    /// Liveness: `worker` failed too many probes in a row. Its slot gets a new worker (after the crash-loop guard's
    /// backoff, counted as a crash); this one serves until the new one is ready, then retires gracefully.
    private mutating func replaceUnhealthy(
        _ worker: Worker,
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        let reason = "\(worker.probe.failures) probes failed in a row: \(worker.probe.last ?? "failed")"
        workers[worker.id]?.probe.replacing = reason
        actions.append(
            .log(
                LifecycleEvent(
                    .probeFailed,
                    "replacing worker \(worker.slot) of generation \(worker.generation) (pid \(worker.pid.map(String.init) ?? "none")): \(reason)",
                    generation: worker.generation,
                    workerPID: worker.pid,
                    slot: worker.slot,
                    reason: reason
                )
            )
        )
        // The slot is free for its replacement; the unhealthy worker stays in the generation, serving.
        if generations[worker.generation]?.slots[worker.slot] == worker.id {
            generations[worker.generation]?.slots[worker.slot] = nil
        }
        respawnAfterCrash(worker, stderr: [], generation: worker.generation, now: now, actions: &actions)
    }

    /// A worker of a serving generation is ready: any other worker of its slot (one being replaced for failing its
    /// probes) retires now, gracefully.
    fileprivate mutating func retireSuperseded(by worker: Worker, actions: inout [SupervisorAction]) {
        guard let generation = generations[worker.generation] else { return }
        for other in generation.workers where other != worker.id {
            guard let old = workers[other], old.slot == worker.slot, old.state == .ready else { continue }
            actions.append(
                .log(
                    LifecycleEvent(
                        .probeFailed,
                        "worker \(old.slot) of generation \(old.generation) (pid \(old.pid.map(String.init) ?? "none")) replaced by pid \(worker.pid.map(String.init) ?? "none"); retiring it",
                        generation: old.generation,
                        workerPID: old.pid,
                        slot: old.slot,
                        reason: old.probe.replacing
                    )
                )
            )
            stopWorker(other, kill: false, actions: &actions)
        }
    }

    /// What the probes said of a worker that missed its ready timeout, for the message (empty without probes, or when
    /// the latest one passed).
    fileprivate func probeExplanation(_ worker: Worker) -> String {
        guard settings.health != nil, !worker.probe.passed else { return "" }
        guard let last = worker.probe.last else { return ": no probe finished" }
        return worker.probe.readySignalled ? ": it reported ready, but \(last)" : ": \(last)"
    }
}

// MARK: - Canary and held reloads

extension Supervisor {
    /// Why a reload asked for now cannot start or queue, if it cannot: a held generation waits for promote or
    /// rollback, and a reload with options of its own does not coalesce into a follow-up.
    private func reloadRefusal(_ options: ReloadOptions) -> String? {
        if let reload, reload.heldSince != nil {
            return
                "generation \(reload.target) is held: promote or roll back first ('baton promote' or 'baton rollback')"
        }
        if phase == .starting || reload != nil, options != ReloadOptions() {
            return
                "a reload is in progress; one with --canary or --hold does not queue behind it: try again once it has finished"
        }
        return nil
    }

    /// What the start of a reload says about its canary and hold, e.g. `; canary 5s first`.
    private func canaryPlan(_ reload: Reload) -> String {
        var plan: [String] = []
        if reload.canary > .zero { plan.append("canary \(reload.canary.shortDescription) first") }
        if reload.hold { plan.append("held beside generation \(reload.previous.map(String.init) ?? "-") once ready") }
        return plan.isEmpty ? "" : "; " + plan.joined(separator: ", ")
    }

    /// Whether `worker` is the canary of the reload, in its window or before it.
    private func isCanary(_ worker: Worker) -> Bool {
        guard let reload, reload.target == worker.generation, reload.canary > .zero, !reload.canaryPassed else {
            return false
        }
        return worker.slot == 1
    }

    /// The trial a worker of the reload's new generation is on, for a failure's reason: `after 800ms of its 5s canary
    /// window`, `while held beside generation 2`; nil when it is on none of these (a soak has its own words).
    ///
    /// Probes (issue 12, point 2) hook in here as a soak's do: a probe of the canary that fails calls ``rollBack`` with
    /// this text, as an exit does.
    private func trialWindow(of worker: Worker, now: ContinuousClock.Instant) -> String? {
        guard let reload, reload.target == worker.generation else { return nil }
        if isCanary(worker) {
            guard let since = reload.canarySince else { return "before it was ready" }
            return "after \((now - since).shortDescription) of its \(reload.canary.shortDescription) canary window"
        }
        if reload.heldSince != nil {
            return
                "while generation \(reload.target) was held beside generation \(reload.previous.map(String.init) ?? "-")"
        }
        return nil
    }

    /// The state `baton status` shows for a generation on trial: `canary`, `held`; nil for any other.
    public func trialState(_ id: Int) -> String? {
        guard let reload, reload.target == id else { return nil }
        if reload.heldSince != nil { return "held" }
        if reload.canary > .zero && !reload.canaryPassed && generations[id]?.state == .starting { return "canary" }
        return nil
    }

    /// The status line's part for a generation on trial.
    private func trialStatus(_ id: Int) -> String? {
        guard let reload, let state = trialState(id) else { return nil }
        let previous = reload.previous.map(String.init) ?? "-"
        if state == "held" { return "generation \(id) held beside generation \(previous)" }
        return
            "generation \(id) canary (\(reload.canarySince == nil ? "starting" : "serving"), --canary \(reload.canary.shortDescription))"
    }

    /// The canary worker of the reload is ready: it serves beside the previous generation for the canary window.
    private mutating func beginCanary(_ worker: Worker, now: ContinuousClock.Instant, actions: inout [SupervisorAction])
    {
        guard var reload else { return }
        reload.canarySince = now
        self.reload = reload
        let window = reload.canary.shortDescription
        actions.append(.schedule(.canary(generation: worker.generation), after: reload.canary))
        // Keep systemd's reload timer from failing a reload whose canary serves as it should.
        actions.append(.notifyManager(.extendTimeout(reload.canary + .seconds(5))))
        let text =
            "generation \(worker.generation): canary worker \(worker.slot) (pid \(worker.pid.map(String.init) ?? "none")) ready; serving beside generation \(reload.previous.map(String.init) ?? "-") for \(window)"
        actions.append(.progress(reload.requesters, text))
        actions.append(
            .log(
                LifecycleEvent(
                    .canaryStarted,
                    text + " (--canary)",
                    generation: worker.generation,
                    workerPID: worker.pid,
                    slot: worker.slot,
                    duration: reload.canary
                )
            )
        )
    }

    /// The canary window of `id` ended with its canary still up: the reload goes on with the configured strategy
    /// (rolling: the canary is slot 1's new worker; otherwise, or with `--hold`, the rest start at once).
    private mutating func endCanary(_ id: Int, now: ContinuousClock.Instant, actions: inout [SupervisorAction]) {
        guard phase == .running, var reload, reload.target == id, reload.canarySince != nil, !reload.canaryPassed,
            let generation = generations[id], generation.state == .starting,
            let canary = generation.slots[1].flatMap({ workers[$0] }), canary.state == .ready
        else { return }
        reload.canaryPassed = true
        self.reload = reload
        let text =
            "generation \(id): canary worker 1 (pid \(canary.pid.map(String.init) ?? "none")) passed its \(reload.canary.shortDescription) canary window"
        actions.append(.log(LifecycleEvent(.canaryPassed, text, generation: id, workerPID: canary.pid, slot: 1)))
        if settings.strategy == .rolling && !reload.hold, let previous = reload.previous {
            actions.append(.progress(reload.requesters, text + "; rolling on"))
            rollingStep(readySlot: 1, target: id, previous: previous, now: now, actions: &actions)
            return
        }
        guard settings.workers == 1 else {
            actions.append(.progress(reload.requesters, text + "; starting the other \(settings.workers - 1)"))
            for slot in 2...settings.workers {
                spawnWorker(generation: id, slot: slot, restarts: 0, now: now, actions: &actions)
            }
            return
        }
        actions.append(.progress(reload.requesters, text))
        if settings.minReady > .zero {
            beginSoak(id, slot: nil, now: now, actions: &actions)
            return
        }
        generations[id]?.state = .serving
        promote(id, now: now, actions: &actions)
    }

    /// The reload's canary failed (it is being rolled back for `reason`): its timer goes, and the journal says so.
    private mutating func canaryFailed(reason: String, actions: inout [SupervisorAction]) {
        guard let reload, reload.canary > .zero, !reload.canaryPassed else { return }
        actions.append(.cancel(.canary(generation: reload.target)))
        let pid = generations[reload.target]?.slots[1].flatMap { workers[$0]?.pid }
        actions.append(
            .log(
                LifecycleEvent(
                    .canaryFailed,
                    "generation \(reload.target): canary failed: \(reason)",
                    generation: reload.target,
                    workerPID: pid,
                    slot: 1,
                    reason: reason
                )
            )
        )
    }

    /// `--hold`: generation `id` is ready (its canary and soak passed): it serves beside `previous`, and the reload
    /// waits for `baton promote` or `baton rollback`. Its requesters are answered now.
    private mutating func hold(
        _ id: Int,
        beside previous: Int,
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        guard var reload else { return }
        reload.heldSince = now
        let requesters = reload.requesters
        reload.requesters = []
        self.reload = reload
        let text = "generation \(id) serving beside generation \(previous); run 'baton promote' or 'baton rollback'"
        actions.append(
            .log(LifecycleEvent(.generationHeld, text, generation: id, duration: now - reload.startedAt))
        )
        actions.append(
            .reloadFinished(requesters, ok: true, message: text, duration: now - reload.startedAt, failedWorker: nil)
        )
        if let followUp {
            self.followUp = nil
            let refusal = reloadRefusal(ReloadOptions()) ?? "generation \(id) is held"
            actions.append(.reloadFinished(followUp, ok: false, message: refusal, duration: .zero, failedWorker: nil))
        }
        // The reload systemd was told of is over as far as it goes: both generations serve.
        actions.append(.notifyManager(.ready))
    }

    /// Why promote or rollback has nothing to act on.
    private var nothingHeld: String {
        let state =
            reload.map {
                $0.promotedAt == nil
                    ? "; the reload to generation \($0.target) is in progress"
                    : "; generation \($0.target) is already being promoted"
            } ?? ""
        return "no generation is held\(state): 'baton promote' and 'baton rollback' follow 'baton reload --hold'"
    }

    /// `baton promote`: the held generation becomes the serving one and the previous one is retired; the reload
    /// finishes as any does, and the requester hears of it then.
    private mutating func promoteHeld(
        _ requester: RequesterID?,
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        let requesters = requester.map { [$0] } ?? []
        guard phase == .running, var reload, reload.heldSince != nil else {
            actions.append(
                .reloadFinished(requesters, ok: false, message: nothingHeld, duration: .zero, failedWorker: nil)
            )
            return
        }
        actions.append(
            .log(
                LifecycleEvent(
                    .promoteRequested,
                    "promote requested: generation \(reload.target) replaces generation \(reload.previous.map(String.init) ?? "-")",
                    generation: reload.target
                )
            )
        )
        reload.hold = false
        reload.heldSince = nil
        reload.requesters += requesters
        self.reload = reload
        actions.append(.notifyManager(.reloading))
        promote(reload.target, now: now, actions: &actions)
    }

    /// `baton rollback`: the held generation is stopped gracefully and the previous one serves on; the requester
    /// hears once the held workers are gone.
    private mutating func rollBackHeld(
        _ requester: RequesterID?,
        now: ContinuousClock.Instant,
        actions: inout [SupervisorAction]
    ) {
        let requesters = requester.map { [$0] } ?? []
        guard phase == .running, var reload, reload.heldSince != nil else {
            actions.append(
                .reloadFinished(requesters, ok: false, message: nothingHeld, duration: .zero, failedWorker: nil)
            )
            return
        }
        let previous = reload.previous.map(String.init) ?? "-"
        actions.append(
            .log(
                LifecycleEvent(
                    .rollbackRequested,
                    "rollback requested: generation \(reload.target) retires, generation \(previous) serves on",
                    generation: reload.target
                )
            )
        )
        // The reload's own requesters were answered when it was held.
        reload.requesters = []
        self.reload = reload
        heldRollback = (reload.target, requesters, now)
        rollBack(
            reason: "rolled back by 'baton rollback' while held beside generation \(previous)",
            failedWorker: nil,
            now: now,
            actions: &actions
        )
    }
}
