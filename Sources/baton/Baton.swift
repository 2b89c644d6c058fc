import ArgumentParser
import BatonCommandLine
import BatonCore
import BatonDaemon
import BatonSystem
import Dispatch
import Logging
import SystemPackage

@main
struct Baton: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "baton",
        abstract: "Zero-downtime restarts for any network service under systemd.",
        discussion: """
            baton holds the listening sockets, runs the app as a generation of workers that share them, and on \
            reload starts the next generation beside the old one, waits until it is ready, then retires the old one. \
            No connection is refused: the listening sockets are never closed. \
            EXIT STATUS: 0 when the command succeeded (for baton run: every generation was retired after SIGTERM or \
            SIGINT); 1 when it failed (the app cannot be executed, a listener cannot be bound, the first generation \
            never became ready, no launcher answers, a reload failed, baton signal did not reach every worker it \
            chose or found no such generation or worker); 64 (EX_USAGE) for a usage error: an unknown option, a \
            missing or bad value, an app command missing after --, a signal baton signal refuses (KILL, STOP, an \
            unknown name or number). baton reload (with or without --json): 0 ok, the new generation serves (result \
            "ok"); 1 the new generation failed and was rolled back, the old one keeps serving (result "failed"), or no \
            launcher answers; 75 (EX_TEMPFAIL) nothing was tried because baton is stopping or has not started, a \
            generation is held, or a --canary or --hold reload met one in progress (result "refused"): retry later. baton ls exits 0, also when it finds no baton.
            """,
        version: BatonVersion.current,
        subcommands: [Run.self, Reload.self, Status.self, SendSignal.self, List.self, Promote.self, Rollback.self]
    )
}

extension Baton {
    /// Runs the command. Usage errors from swift-argument-parser are printed in baton's own one-line style
    /// (`baton: MESSAGE`), with the same exit status as baton's own checks (`BatonError.Code.badArgument`).
    static func main() {
        let command: any ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            // Help and --version exit cleanly and print what they print.
            guard exitCode(for: error) != .success else { exit(withError: error) }
            var text = message(for: error)
            if text.hasPrefix("Error: ") { text.removeFirst("Error: ".count) }
            let line = text.split(separator: "\n").first.map(String.init) ?? "bad arguments"
            let subcommand = CommandLine.arguments.dropFirst().first {
                ["run", "reload", "status", "signal", "ls", "promote", "rollback"].contains($0)
            }
            let help = subcommand.map { "baton \($0) --help" } ?? "baton --help"
            exit(withError: fail("\(line.prefix(1).lowercased() + line.dropFirst()) (see \(help))", .badArgument))
        }
        do {
            var command = command
            try command.run()
        } catch {
            exit(withError: error)
        }
        exit()
    }
}

extension ControlOptions {
    /// The launcher's control socket: `--control`, or the default for `--name`.
    var controlPath: String { controlPath(runtimeDirectory: OS.environment("RUNTIME_DIRECTORY")) }

    /// The socket a client connects to: `--control`, or the first socket that exists among the places a launcher
    /// named `--name` puts it.
    var clientPath: String {
        let candidates = clientCandidates(runtimeDirectory: OS.environment("RUNTIME_DIRECTORY"))
        return candidates.first { OS.isSocket($0) } ?? candidates[0]
    }
}

extension SystemFacts {
    /// This machine's users, groups and signals.
    static var current: SystemFacts {
        SystemFacts(
            userID: OS.userID,
            runtimeDirectory: OS.environment("RUNTIME_DIRECTORY"),
            user: { name in OS.user(named: name).map { .init(uid: $0.uid, gid: $0.gid, groups: $0.groups) } },
            group: { OS.group(named: $0) },
            signal: { Signals.number(named: $0) },
            uncatchableSignals: Signals.uncatchable
        )
    }
}

extension BatonError {
    /// The exit status for each kind of error: the one place that maps them (the root command's EXIT STATUS
    /// documents them). A usage error (a bad option or value) exits 64, EX_USAGE, as swift-argument-parser's own
    /// do; everything else 1.
    var exitStatus: Int32 {
        switch code {
        case .badArgument: 64
        case .cannotExecute, .listen, .control, .notRunning, .permissionDenied, .reloadFailed, .internalError: 1
        }
    }
}

/// Prints `baton: MESSAGE` on stderr and exits with the error's status.
func fail(_ error: BatonError) -> ExitCode {
    // What the daemon logged comes first.
    OutputWriter.shared.flush(timeout: .seconds(1))
    StandardStreams.writeError("baton: \(error)\n")
    return ExitCode(error.exitStatus)
}

/// Prints `baton: MESSAGE` on stderr and exits with the status of an error of `code`.
func fail(_ message: String, _ code: BatonError.Code = .internalError) -> ExitCode {
    fail(BatonError(code, message))
}

extension Baton {
    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run an app under baton, in the foreground, and supervise it.",
            discussion: """
                Each worker gets the listeners at fds 3, 4, ... with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set \
                (its own pid), plus BATON_GENERATION and BATON_WORKER. SIGHUP reloads; SIGTERM or SIGINT retires every \
                generation gracefully and exits 0; a second SIGTERM kills at once.
                """
        )

        @OptionGroup var options: RunOptions

        func run() throws {
            if options.asksForHelp { throw CleanExit.helpRequest(self) }
            // Workers get the scheduling and limits baton starts with, read here, on the main thread.
            ProcessAttributes.capture()
            // Signals arrive through a signalfd: block them before any other thread exists, so every thread
            // inherits the mask.
            Signals.block(Signals.handledByRun)
            Signals.ignoreMeaningless()

            let configuration: LaunchConfiguration
            do {
                configuration = try options.configuration(.current)
            } catch {
                throw fail(error)
            }
            guard let executable = OS.resolveExecutable(configuration.command[0], path: OS.environment("PATH")) else {
                let name = configuration.command[0]
                throw fail(
                    name.contains("/")
                        ? "cannot execute '\(name)': no such executable file (check the path and its x bit)"
                        : "cannot execute '\(name)': not found in PATH (give its full path)",
                    .cannotExecute
                )
            }

            let journal = StandardStreams.stderrIsJournal()
            LoggingSystem.bootstrap { label in
                journal
                    ? MultiplexLogHandler([JournalLogHandler(identifier: "baton")])
                    : MultiplexLogHandler([StderrLogHandler(label: LaunchConfiguration.displayName(configuration.name))]
                    )
            }
            var logger = Logger(label: "baton")
            logger.logLevel = OS.environment("BATON_DEBUG") == nil ? .info : .trace

            let resume: ResumeState?
            do {
                resume = try ResumeState.take()
            } catch {
                throw fail(error)
            }
            // After a re-execution in place, the listeners are the ones this process already holds.
            var listeners = resume?.listeningSockets ?? []
            if resume == nil {
                // A launcher of the same name that answers: say so, before its addresses are found in use.
                if let running = runningLauncher(at: configuration.controlPath) {
                    throw fail(
                        running.pid.map {
                            "baton \(BatonError.quoted(configuration.name)) is already running as pid \($0)"
                                + ": stop it first, or give this one another --name (or --control)"
                        }
                            ?? "something listens at \(configuration.controlPath) and did not answer as baton within 2s "
                            + "(a paused or hung baton, or another program): stop it, or give this one another --name "
                            + "(or --control)",
                        .control
                    )
                }
                do {
                    listeners = try openListeners(configuration, logger: logger)
                } catch {
                    throw fail(error)
                }
            }
            if listeners.isEmpty {
                throw fail(
                    "nothing to listen on: pass --listen ADDRESS, or start baton from a systemd .socket unit",
                    .listen
                )
            }
            if let why = BindAdoption.unavailable(configuration) { logger.warning("\(why)") }

            let launcher: Launcher
            do {
                launcher = try Launcher(
                    configuration: configuration,
                    listeners: listeners,
                    executable: executable,
                    environment: OS.environment(),
                    logger: logger,
                    journal: journal,
                    resume: resume
                )
            } catch {
                throw fail(error)
            }
            // On the launcher's own event loop: no thread of Swift concurrency's pool ever starts.
            let result = blockingAwait(on: launcher.executor) { () async throws(BatonError) -> Int32 in
                try await launcher.run()
            }
            OutputWriter.shared.flush(timeout: .seconds(2))
            switch result {
            case .success(let code):
                if code != 0 { throw ExitCode(code) }
            case .failure(let error):
                throw fail(error)
            }
        }

        /// Sockets passed by systemd (a `.socket` unit or the fd store) come first; every `--listen` whose name
        /// is not among them is bound.
        func openListeners(_ configuration: LaunchConfiguration, logger: Logger) throws(BatonError) -> [ListeningSocket]
        {
            var result: [ListeningSocket] = []
            do {
                for (fd, name) in try Systemd.listenFDs() {
                    guard Systemd.isListeningStreamSocket(fd) else {
                        logger.warning(
                            "ignoring passed fd \(fd.rawValue) named '\(name)': not a listening stream socket"
                        )
                        continue
                    }
                    // Shown by its real address; an address the kernel cannot name (an abstract socket) by its fd.
                    var listener = ListeningSocket(
                        fd: fd,
                        name: name,
                        address: "passed fd \(fd.rawValue)",
                        passed: true
                    )
                    if let bound = listener.boundAddress() { listener.address = bound.description }
                    result.append(listener)
                    logger.info(
                        "using listener '\(name)' (\(listener.address)) passed by the service manager",
                        metadata: ["baton.fd": "\(fd.rawValue)"]
                    )
                }
            } catch {
                throw BatonError(.listen, "cannot read the sockets passed by systemd: \(error)")
            }
            for spec in configuration.listeners where !result.contains(where: { $0.name == spec.name }) {
                do throws(BindError) {
                    let owned: OwnedDescriptor
                    switch spec.address {
                    case .tcp(let host, let port):
                        owned = try Sockets.listenTCP(
                            host: host,
                            port: port,
                            backlog: configuration.backlog,
                            display: spec.address.description
                        )
                    case .unix(let path):
                        owned = try Sockets.listenUnix(
                            path: path,
                            mode: configuration.unixMode,
                            backlog: configuration.backlog
                        )
                    }
                    // Held for baton's whole life from here on.
                    let fd = owned.release()
                    result.append(ListeningSocket(fd: fd, name: spec.name, address: spec.address.description))
                    logger.lifecycle(
                        LifecycleEvent(.listenerBound, "listening on \(spec.address) as '\(spec.name)'"),
                        name: configuration.name
                    )
                    // Into systemd's fd store, when there is one: a crash or restart of baton then keeps the socket.
                    if OS.environment("NOTIFY_SOCKET") != nil,
                        Systemd.notify("FDSTORE=1\nFDNAME=\(spec.name)", fds: [fd])
                    {
                        logger.lifecycle(
                            LifecycleEvent(
                                .listenerStored,
                                "listener '\(spec.name)' (\(spec.address)) kept in the service manager's fd store"
                            ),
                            name: configuration.name
                        )
                    }
                } catch {
                    throw BatonError(.listen, error.description)
                }
            }
            return result
        }
    }

    struct Reload: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Reload a running launcher: start the next generation, then retire the old one.",
            discussion: "Returns once the new generation serves and the old one has been told to stop, and prints what "
                + "still drains (generation 6 draining: 12 connections, 24s left); --wait-drained returns only once the "
                + "old generation is gone. One generation drains at a time: a reload asked for while one drains waits "
                + "for it, or with --cut-drain kills what is left of it. Exits 0 on success; on failure prints the "
                + "reason and the failing worker's last stderr lines, and exits 1; exits 75 when nothing was tried (baton "
                + "is stopping or has not started, or a generation is held). With --canary, one new worker serves beside the old generation for that long "
                + "first, and the reload rolls back if it exits (or a process of it fails, or it misses its watchdog). "
                + "With --hold, it returns once the new generation serves beside the old one; 'baton promote' or "
                + "'baton rollback' ends that, and until then another reload is refused. systemctl reload is always a "
                + "plain reload."
        )

        @OptionGroup var control: ControlOptions

        @OptionGroup var options: ReloadCommandOptions

        @Flag(name: .shortAndLong, help: "Print only the outcome, not the progress.")
        var quiet = false

        @Flag(
            help:
                "Print the outcome as one JSON object (no progress): ok, result, generation, durationMilliseconds, message, reason, stderr, draining."
        )
        var json = false

        @Flag(help: "Return only once the old generation has drained and exited.")
        var waitDrained = false

        @Flag(
            help:
                "If a generation still drains, SIGKILL what is left of it (it had the stop signal) instead of waiting."
        )
        var cutDrain = false

        /// The outcome `--json` prints.
        struct Outcome: Encodable {
            var ok: Bool
            /// ok, failed, refused or error.
            var result: String
            var generation: Int?
            var durationMilliseconds: Int64?
            var message: String
            var reason: String?
            var stderr: [String]
            var draining: [DrainProgress]
        }

        func run() throws {
            Signals.ignoreBrokenPipe()
            Signals.ignore(Signals.upgrade)
            let request: ControlProtocol.Request
            do {
                request = try options.request()
            } catch {
                throw fail(error)
            }
            var client = try connect(control.clientPath)
            defer { client.fd.closeOnce() }
            var sent = request
            sent.waitDrained = waitDrained ? true : nil
            sent.cutDrain = cutDrain ? true : nil
            client.send(sent)
            while let line = client.readLine() {
                guard let reply = ControlProtocol.decodeReply(line) else { continue }
                // What the launcher relays (a failure's reason, a worker's stderr) is shown with control characters
                // escaped: a worker must not be able to drive the terminal of whoever runs `baton reload`.
                let message = reply.message.map(TerminalText.sanitized)
                let result =
                    switch reply.kind {
                    case .progress: ""
                    case .result where reply.ok == true: "ok"
                    case .result where reply.generation == nil: "refused"
                    case .result: "failed"
                    case .error, .status: "error"
                    }
                if reply.kind == .progress {
                    if !quiet && !json { StandardStreams.writeOutput("\(message ?? "")\n") }
                    continue
                }
                let status: Int32 = result == "ok" ? 0 : result == "refused" ? 75 : 1
                if json {
                    let outcome = Outcome(
                        ok: result == "ok",
                        result: result,
                        generation: reply.generation,
                        durationMilliseconds: reply.durationMilliseconds,
                        message: reply.message ?? "",
                        reason: reply.reason,
                        stderr: reply.stderr ?? [],
                        draining: reply.draining ?? []
                    )
                    StandardStreams.writeOutput(String(decoding: ControlProtocol.encode(outcome), as: UTF8.self))
                    if status != 0 { throw ExitCode(status) }
                    return
                }
                switch result {
                case "ok":
                    var text = "\(message ?? "reload succeeded")\n"
                    for drain in reply.draining ?? [] { text += "\(drain)\n" }
                    StandardStreams.writeOutput(text)
                    return
                case "error":
                    throw fail(message ?? "the launcher refused the request", .control)
                default:
                    var text = "baton: reload failed: \(message ?? "unknown reason")\n"
                    if let stderr = reply.stderr, !stderr.isEmpty {
                        text += "last lines the failing worker wrote to stderr:\n"
                        for line in stderr { text += "  | \(TerminalText.sanitized(line))\n" }
                    }
                    StandardStreams.writeError(text)
                    throw ExitCode(status)
                }
            }
            throw fail("the launcher closed the connection before the reload finished", .control)
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the listeners, the generations and their workers, and the last reload."
        )

        @OptionGroup var control: ControlOptions

        @Flag(help: "Print JSON.")
        var json = false

        func run() throws {
            Signals.ignoreBrokenPipe()
            Signals.ignore(Signals.upgrade)
            var client = try connect(control.clientPath)
            defer { client.fd.closeOnce() }
            client.send(ControlProtocol.Request(command: .status))
            // A launcher answers at once; one that is paused or hung must not hang whoever asks.
            Sockets.setReceiveTimeout(client.fd, seconds: 10)
            let asked = ContinuousClock.now
            guard let line = client.readLine(), let reply = ControlProtocol.decodeReply(line) else {
                if ContinuousClock.now - asked >= .seconds(9) {
                    throw fail(
                        "the launcher at \(control.clientPath) did not answer within 10s: is it paused or hung?",
                        .control
                    )
                }
                throw fail("the launcher closed the connection without answering", .control)
            }
            guard reply.kind == .status, let status = reply.status else {
                throw fail(reply.message.map(TerminalText.sanitized) ?? "unexpected answer", .control)
            }
            if json {
                StandardStreams.writeOutput(String(decoding: ControlProtocol.encode(status), as: UTF8.self))
            } else {
                StandardStreams.writeOutput(StatusFormatter.text(status, now: OS.wallClockSeconds()))
            }
        }
    }
}

/// A blocking connection to a launcher's control socket.
struct ControlConnection {
    let fd: FileDescriptor
    var buffer: [UInt8] = []

    /// Sends the request. A launcher that refuses it answers and closes at once, so a failed write is not the
    /// end: the reply, if any, is still read.
    func send(_ request: ControlProtocol.Request) {
        _ = try? fd.writeAll(ControlProtocol.encode(request))
    }

    /// The next line, or nil at end of stream.
    mutating func readLine() -> [UInt8]? {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                return line
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n: Int
            do {
                n = try chunk.withUnsafeMutableBytes { try fd.read(into: $0, retryOnInterrupt: true) }
            } catch {
                return nil
            }
            if n == 0 { return nil }
            buffer += chunk[0..<n]
        }
    }
}

/// A launcher that answers on a control socket; its pid when it answered a status request.
struct RunningLauncher {
    var pid: Int32?
}

/// The launcher that answers at `path`, if one does.
func runningLauncher(at path: String) -> RunningLauncher? {
    guard let fd = try? Sockets.connectUnix(path: path).release() else { return nil }
    let client = ControlConnection(fd: fd)
    defer { client.fd.closeOnce() }
    client.send(ControlProtocol.Request(command: .status))
    // A launcher answers a status request and closes; one that is stopped (SIGSTOP) or hung does not, and still
    // counts as running.
    let answer = client.fd.readToEnd(timeout: .seconds(2))
    let line = Array(answer.prefix { $0 != UInt8(ascii: "\n") })
    return RunningLauncher(pid: ControlProtocol.decodeReply(line)?.status?.pid)
}

func connect(_ path: String) throws(ExitCode) -> ControlConnection {
    do throws(SystemError) {
        return ControlConnection(fd: try Sockets.connectUnix(path: path).release())
    } catch {
        switch error.errno {
        case .noSuchFileOrDirectory, .connectionRefused:
            throw fail(
                "no launcher is running at \(path): start one with 'baton run', or pass --control or --name",
                .notRunning
            )
        case .permissionDenied:
            throw fail("permission denied on \(path): run as root or as the user running baton", .permissionDenied)
        default:
            throw fail(BatonError(.control, "cannot connect to \(path)", underlying: error))
        }
    }
}

/// Runs async work from synchronous code and waits for it on the calling thread; on `executor` if given.
func blockingAwait<T: Sendable, E: Error>(
    on executor: (any TaskExecutor)? = nil,
    _ body: @escaping @Sendable () async throws(E) -> T
) -> Result<T, E> {
    let box = ResultBox<T, E>()
    let done = DispatchSemaphore(value: 0)
    Task(executorPreference: executor) {
        do throws(E) {
            box.result = .success(try await body())
        } catch {
            box.result = .failure(error)
        }
        done.signal()
    }
    done.wait()
    return box.result!
}

/// Carries a result from the task to the waiting thread; the semaphore orders the accesses.
final class ResultBox<T, E: Error>: @unchecked Sendable {
    var result: Result<T, E>?
}
