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
            No connection is refused: the listening sockets are never closed.
            """,
        version: BatonVersion.current,
        subcommands: [Run.self, Reload.self, Status.self]
    )
}

extension ControlOptions {
    /// The launcher's control socket: `--control`, or the default for `--name`.
    var controlPath: String { controlPath(runtimeDirectory: Process.environment("RUNTIME_DIRECTORY")) }

    /// The socket a client connects to: `--control`, or the first socket that exists among the places a launcher
    /// named `--name` puts it.
    var clientPath: String {
        let candidates = clientCandidates(runtimeDirectory: Process.environment("RUNTIME_DIRECTORY"))
        return candidates.first { Process.isSocket($0) } ?? candidates[0]
    }
}

extension SystemFacts {
    /// This machine's users, groups and signals.
    static var current: SystemFacts {
        SystemFacts(
            userID: Process.userID, runtimeDirectory: Process.environment("RUNTIME_DIRECTORY"),
            user: { name in Process.user(named: name).map { .init(uid: $0.uid, gid: $0.gid, groups: $0.groups) } },
            group: { Process.group(named: $0) }, signal: { Signals.number(named: $0) }, uncatchableSignals: Signals.uncatchable)
    }
}

/// Prints `baton: MESSAGE` on stderr and exits with `code`.
func fail(_ message: String, code: Int32 = 1) -> ExitCode {
    StandardStreams.writeError("baton: \(message)\n")
    return ExitCode(code)
}

extension Baton {
    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run an app under baton, in the foreground, and supervise it.",
            discussion: """
                Each worker gets the listeners at fds 3, 4, ... with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set \
                (its own pid), plus BATON_GENERATION and BATON_WORKER. SIGHUP reloads; SIGTERM or SIGINT retires every \
                generation gracefully and exits 0; a second SIGTERM kills at once.
                """)

        @OptionGroup var options: RunOptions

        func run() throws {
            if options.asksForHelp { throw CleanExit.helpRequest(self) }
            // Signals arrive through a signalfd: block them before any other thread exists, so every thread
            // inherits the mask.
            Signals.block(Signals.handledByRun)
            Signals.ignoreBrokenPipe()

            let configuration: LaunchConfiguration
            do {
                configuration = try options.configuration(.current)
            } catch {
                throw fail(error.message, code: 2)
            }
            guard let executable = Process.resolveExecutable(configuration.command[0], path: Process.environment("PATH")) else {
                let name = configuration.command[0]
                throw fail(
                    name.contains("/")
                        ? "cannot execute '\(name)': no such executable file (check the path and its x bit)"
                        : "cannot execute '\(name)': not found in PATH (give its full path)")
            }

            let journal = StandardStreams.stderrIsJournal()
            LoggingSystem.bootstrap { label in
                journal
                    ? MultiplexLogHandler([JournalLogHandler(identifier: "baton")])
                    : MultiplexLogHandler([StderrLogHandler(label: "baton[\(configuration.name)]")])
            }
            var logger = Logger(label: "baton")
            logger.logLevel = .info

            let resume: ResumeState?
            do {
                resume = try ResumeState.take()
            } catch {
                throw fail(error.message)
            }
            // After a re-execution in place, the listeners are the ones this process already holds.
            var listeners = resume?.listeningSockets ?? []
            if resume == nil {
                do {
                    listeners = try openListeners(configuration, logger: logger)
                } catch {
                    throw fail(error.message)
                }
            }
            if listeners.isEmpty {
                throw fail("nothing to listen on: pass --listen ADDRESS, or start baton from a systemd .socket unit")
            }
            if let why = BindAdoption.unavailable(configuration) { logger.warning("\(why)") }

            let launcher: Launcher
            do {
                launcher = try Launcher(
                    configuration: configuration, listeners: listeners, executable: executable,
                    environment: Process.environment(), logger: logger, journal: journal, resume: resume)
            } catch {
                throw fail("cannot start: \(error)")
            }
            let result = blockingAwait { try await launcher.run() }
            switch result {
            case .success(let code):
                if code != 0 { throw ExitCode(code) }
            case .failure(let error):
                throw fail("\(error)")
            }
        }

        /// Sockets passed by systemd (a `.socket` unit or the fd store) come first; every `--listen` whose name
        /// is not among them is bound.
        func openListeners(_ configuration: LaunchConfiguration, logger: Logger) throws(BatonError) -> [ListeningSocket] {
            var result: [ListeningSocket] = []
            do {
                for (fd, name) in try Systemd.listenFDs() {
                    guard Systemd.isListeningStreamSocket(fd) else {
                        logger.warning("ignoring passed fd \(fd.rawValue) named '\(name)': not a listening stream socket")
                        continue
                    }
                    result.append(ListeningSocket(fd: fd, name: name, address: "passed fd \(fd.rawValue)"))
                    logger.info("using listener '\(name)' passed by the service manager", metadata: ["baton.fd": "\(fd.rawValue)"])
                }
            } catch {
                throw BatonError(.listen, "cannot read the sockets passed by systemd: \(error)")
            }
            for spec in configuration.listeners where !result.contains(where: { $0.name == spec.name }) {
                do {
                    let fd: FileDescriptor
                    switch spec.address {
                    case .tcp(let host, let port):
                        fd = try Sockets.listenTCP(host: host, port: port, backlog: configuration.backlog, display: spec.address.description)
                    case .unix(let path):
                        fd = try Sockets.listenUnix(path: path, mode: configuration.unixMode, backlog: configuration.backlog)
                    }
                    result.append(ListeningSocket(fd: fd, name: spec.name, address: spec.address.description))
                    logger.lifecycle(LifecycleEvent(.listenerBound, "listening on \(spec.address) as '\(spec.name)'"), name: configuration.name)
                    // Into systemd's fd store, when there is one: a crash or restart of baton then keeps the socket.
                    if Process.environment("NOTIFY_SOCKET") != nil, Systemd.notify("FDSTORE=1\nFDNAME=\(spec.name)", fds: [fd]) {
                        logger.lifecycle(
                            LifecycleEvent(.listenerStored, "listener '\(spec.name)' (\(spec.address)) kept in the service manager's fd store"),
                            name: configuration.name)
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
            discussion: "Blocks until the new generation serves and the old one is retired. Exits 0 on success; "
                + "on failure prints the reason and the failing worker's last stderr lines, and exits 1.")

        @OptionGroup var control: ControlOptions

        @Flag(name: .shortAndLong, help: "Print only the outcome, not the progress.")
        var quiet = false

        func run() throws {
            Signals.ignoreBrokenPipe()
            Signals.ignore(Signals.upgrade)
            var client = try connect(control.clientPath)
            defer { client.fd.closeOnce() }
            client.send(ControlProtocol.Request(command: .reload))
            while let line = client.readLine() {
                guard let reply = ControlProtocol.decodeReply(line) else { continue }
                switch reply.kind {
                case .progress:
                    if !quiet { StandardStreams.writeOutput("\(reply.message ?? "")\n") }
                case .result where reply.ok == true:
                    StandardStreams.writeOutput("\(reply.message ?? "reload succeeded")\n")
                    return
                case .error:
                    throw fail(reply.message ?? "the launcher refused the request")
                case .result, .status:
                    var text = "baton: reload failed: \(reply.message ?? "unknown reason")\n"
                    if let stderr = reply.stderr, !stderr.isEmpty {
                        text += "last lines the failing worker wrote to stderr:\n"
                        for line in stderr { text += "  | \(line)\n" }
                    }
                    StandardStreams.writeError(text)
                    throw ExitCode(1)
                }
            }
            throw fail("the launcher closed the connection before the reload finished")
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the listeners, the generations and their workers, and the last reload.")

        @OptionGroup var control: ControlOptions

        @Flag(help: "Print JSON.")
        var json = false

        func run() throws {
            Signals.ignoreBrokenPipe()
            Signals.ignore(Signals.upgrade)
            var client = try connect(control.clientPath)
            defer { client.fd.closeOnce() }
            client.send(ControlProtocol.Request(command: .status))
            guard let line = client.readLine(), let reply = ControlProtocol.decodeReply(line) else {
                throw fail("the launcher closed the connection without answering")
            }
            guard reply.kind == .status, let status = reply.status else {
                throw fail(reply.message ?? "unexpected answer")
            }
            if json {
                StandardStreams.writeOutput(String(decoding: ControlProtocol.encode(status), as: UTF8.self))
            } else {
                StandardStreams.writeOutput(StatusFormatter.text(status, now: Process.wallClockSeconds()))
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

func connect(_ path: String) throws(ExitCode) -> ControlConnection {
    do {
        return ControlConnection(fd: try Sockets.connectUnix(path: path))
    } catch {
        switch error.errno {
        case .noSuchFileOrDirectory, .connectionRefused:
            throw fail("no launcher is running at \(path): start one with 'baton run', or pass --control or --name")
        case .permissionDenied:
            throw fail("permission denied on \(path): run as root or as the user running baton")
        default:
            throw fail("cannot connect to \(path): \(error)")
        }
    }
}

/// Runs async work from synchronous code and waits for it on the calling thread.
func blockingAwait<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) -> Result<T, any Error> {
    let box = ResultBox<T>()
    let done = DispatchSemaphore(value: 0)
    Task {
        do {
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
final class ResultBox<T>: @unchecked Sendable {
    var result: Result<T, any Error>?
}
