import BatonCore
import BatonSystem
import Synchronization
import SystemPackage

/// One of a worker's output pipes (stdout or stderr): read on the event loop and forwarded line by line, and the
/// last lines kept for error reports.
final class OutputPipe: Sendable {
    /// Where the lines go.
    enum Destination: Sendable {
        /// To baton's stdout or stderr, with the prefix (`NAME[gGEN.wSLOT]: `) in front.
        case stdout(String)
        case stderr(String)
        /// To the journal, one entry per line with these fields (`BATON_GENERATION=` and the like).
        case journal([String])
    }

    struct State {
        var fd: FileDescriptor?
        var splitter = LineSplitter()
        var tail: [String] = []
        var pid: Int32 = 0
    }

    let destination: Destination
    let keep: Int
    private let state: Locked<State>
    private let loop: EventLoop

    init(fd: FileDescriptor, destination: Destination, keep: Int, loop: EventLoop) {
        self.destination = destination
        self.keep = keep
        self.loop = loop
        state = Locked(State(fd: fd))
    }

    /// The read end, while open.
    var descriptor: FileDescriptor? { state.withLock { $0.fd } }

    /// The worker's pid, for the journal's `BATON_WORKER_PID=`.
    var workerPID: Int32 {
        get { state.withLock { $0.pid } }
        set { state.withLock { $0.pid = newValue } }
    }

    func register() throws(SystemError) {
        guard let fd = state.withLock({ $0.fd }) else { return }
        try loop.register(fd) { [self] in drain() }
    }

    /// Reads whatever the pipe holds; at end of file, unregisters and closes it.
    func drain() {
        let lines: [[UInt8]] = state.withLock { state in
            guard let fd = state.fd else { return [] }
            var lines: [[UInt8]] = []
            while true {
                let chunk: [UInt8]?
                do { chunk = try fd.readAvailable() } catch { chunk = [] }
                guard let chunk else { break }
                if chunk.isEmpty {
                    if let rest = state.splitter.finish() { lines.append(rest) }
                    loop.unregister(fd)
                    fd.closeOnce()
                    state.fd = nil
                    break
                }
                lines += state.splitter.feed(chunk)
            }
            for line in lines where keep > 0 {
                state.tail.append(String(decoding: line, as: UTF8.self))
                if state.tail.count > keep { state.tail.removeFirst(state.tail.count - keep) }
            }
            return lines
        }
        guard !lines.isEmpty else { return }
        switch destination {
        case .stdout(let prefix), .stderr(let prefix):
            // On a terminal, a worker's control characters are shown escaped: its output must not drive the
            // terminal (retitle it, clear it, forge baton's own lines). To a pipe or file the lines go as written.
            let terminal = if case .stderr = destination { StandardStreams.stderrIsTerminal() } else { StandardStreams.stdoutIsTerminal() }
            var text = ""
            for line in lines {
                let decoded = String(decoding: line, as: UTF8.self)
                text += prefix + (terminal ? TerminalText.sanitized(decoded) : decoded) + "\n"
            }
            if case .stderr = destination { StandardStreams.writeError(text) } else { StandardStreams.writeOutput(text) }
        case .journal(let fields):
            let pid = workerPID
            for line in lines {
                Systemd.journalSend(
                    ["MESSAGE=" + String(decoding: line, as: UTF8.self), "PRIORITY=6", "BATON_WORKER_PID=\(pid)"] + fields)
            }
        }
    }

    /// The last lines read, after reading what is left in the pipe.
    func tail() -> [String] {
        drain()
        return state.withLock { $0.tail }
    }
}

/// The read end of a worker's `BATON_NOTIFY_FD` pipe: `KEY=VALUE` lines become notify messages.
final class NotifyPipe: Sendable {
    private let state: Locked<(fd: FileDescriptor?, splitter: LineSplitter)>
    private let loop: EventLoop
    private let deliver: @Sendable (NotifyMessage) -> Void

    init(fd: FileDescriptor, loop: EventLoop, deliver: @escaping @Sendable (NotifyMessage) -> Void) {
        state = Locked((fd, LineSplitter(maximumLineLength: NotifyMessage.maximumSize)))
        self.loop = loop
        self.deliver = deliver
    }

    func register() throws(SystemError) {
        guard let fd = state.withLock({ $0.fd }) else { return }
        try loop.register(fd) { [self] in drain() }
    }

    /// The read end, while open.
    var descriptor: FileDescriptor? { state.withLock { $0.fd } }

    private func drain() {
        let lines: [[UInt8]] = state.withLock { state in
            guard let fd = state.fd else { return [] }
            var lines: [[UInt8]] = []
            while true {
                let chunk: [UInt8]?
                do { chunk = try fd.readAvailable(upTo: 4096) } catch { chunk = [] }
                guard let chunk else { break }
                if chunk.isEmpty {
                    loop.unregister(fd)
                    fd.closeOnce()
                    state.fd = nil
                    break
                }
                lines += state.splitter.feed(chunk)
            }
            return lines
        }
        for line in lines {
            if let message = NotifyMessage(parsing: line) { deliver(message) }
        }
    }
}
