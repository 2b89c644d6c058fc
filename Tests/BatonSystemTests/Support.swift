import BatonSystem
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Where things are: the package root, the built `baton`, the fixtures.
enum Paths {
    static let packageRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent()
        .deletingLastPathComponent()

    /// The `baton` binary built beside the test bundle, or `$BATON_BINARY`.
    static let baton: String = {
        if let path = ProcessInfo.processInfo.environment["BATON_BINARY"] { return path }
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var directory = bundle.deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = directory.appendingPathComponent("baton").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        return packageRoot.appendingPathComponent(".build/debug/baton").path
    }()

    static let worker = packageRoot.appendingPathComponent("Tests/Fixtures/worker.py").path
    static let nodeApp = packageRoot.appendingPathComponent("examples/node/app.js").path
    static let pythonApp = packageRoot.appendingPathComponent("examples/python/app.py").path
    static let fixtures = packageRoot.appendingPathComponent("Tests/Fixtures").path
    static let loadgen = packageRoot.appendingPathComponent("tools/loadgen.py").path

    /// The interpreter `python3` on PATH runs: a shim (pyenv's is a bash script that runs `pyenv exec`) costs three
    /// processes and ~0.1 s of CPU per start, seconds on a loaded machine, which a test's ready timeout would count.
    static let python3: String? = {
        guard let found = which("python3") else { return nil }
        let result = run(found, ["-c", "import sys; print(sys.executable)"])
        let resolved = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        return result.status == 0 && FileManager.default.isExecutableFile(atPath: resolved) ? resolved : found
    }()

    static func which(_ name: String) -> String? {
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let candidate = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }
}

/// A scratch directory removed at the end of the test.
final class Scratch: @unchecked Sendable {
    let path: String

    init() {
        let template = "/tmp/baton-test-XXXXXX"
        var bytes = Array(template.utf8CString)
        path = bytes.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func file(_ name: String) -> String { "\(path)/\(name)" }

    func write(_ name: String, _ text: String) {
        _ = FileManager.default.createFile(atPath: file(name), contents: Data(text.utf8))
    }
}

/// Lines read from a pipe on a background thread; tests wait for a line the way a person watches a log.
final class LineCollector: @unchecked Sendable {
    private let condition = NSCondition()
    private var lines: [String] = []
    private var closed = false

    init(_ handle: FileHandle, echo: Bool = false) {
        let thread = Thread { [self] in
            var partial = Data()
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                partial.append(data)
                while let newline = partial.firstIndex(of: 0x0a) {
                    let line = String(decoding: partial[partial.startIndex..<newline], as: UTF8.self)
                    partial.removeSubrange(partial.startIndex...newline)
                    if echo { FileHandle.standardError.write(Data("    | \(line)\n".utf8)) }
                    condition.lock()
                    lines.append(line)
                    condition.broadcast()
                    condition.unlock()
                }
            }
            condition.lock()
            closed = true
            condition.broadcast()
            condition.unlock()
        }
        thread.start()
    }

    var all: [String] {
        condition.lock()
        defer { condition.unlock() }
        return lines
    }

    var text: String { all.joined(separator: "\n") }

    /// Waits until a line contains `needle` (counting from line `after`); returns its index, or nil on timeout
    /// or end of stream.
    @discardableResult
    func waitFor(_ needle: String, after: Int = 0, timeout: TimeInterval = 20) -> Int? {
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        defer { condition.unlock() }
        while true {
            if lines.count > after, let index = lines[after...].firstIndex(where: { $0.contains(needle) }) {
                return index
            }
            if closed { return nil }
            if !condition.wait(until: deadline) { return nil }
        }
    }

    /// Waits for end of stream.
    func waitClosed(timeout: TimeInterval = 30) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        defer { condition.unlock() }
        while !closed {
            if !condition.wait(until: deadline) { return false }
        }
        return true
    }
}

/// A `baton run` under test.
final class BatonRun: @unchecked Sendable {
    let process = Process()
    let stderr: LineCollector
    let stdout: LineCollector
    let control: String
    let scratch: Scratch
    private let exited = DispatchSemaphore(value: 0)
    /// With `unreadOutput`, the pipes baton writes to, which nobody reads.
    private var unread: [Pipe] = []

    init(
        _ arguments: [String],
        scratch: Scratch,
        environment: [String: String] = [:],
        executable: String = Paths.baton,
        echo: Bool = false,
        unreadOutput: Bool = false,
        wrapper: [String] = [],
        defaultControl: String? = nil
    ) throws {
        self.scratch = scratch
        // With `defaultControl`, no --control is passed: the launcher picks its socket itself, at that path.
        control = defaultControl ?? scratch.file("control.sock")
        // A wrapper that execs baton (`nice -n 10`, `prlimit ...`) keeps the pid.
        process.executableURL = URL(fileURLWithPath: wrapper.first ?? executable)
        let controlArguments = defaultControl == nil ? ["--control", control] : []
        process.arguments =
            wrapper.dropFirst() + (wrapper.isEmpty ? [] : [executable]) + ["run"] + controlArguments + arguments
        var env = ProcessInfo.processInfo.environment
        for name in ["NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "JOURNAL_STREAM", "WATCHDOG_USEC"] {
            env[name] = nil
        }
        env.merge(environment) { $1 }
        process.environment = Sanitizers.childEnvironment(env)
        let errPipe = Pipe()
        let outPipe = Pipe()
        process.standardError = errPipe
        process.standardOutput = outPipe
        process.standardInput = FileHandle.nullDevice
        let exited = self.exited
        process.terminationHandler = { _ in exited.signal() }
        try process.run()
        if unreadOutput {
            // baton's stdout and stderr stay full: the collectors watch pipes that end at once.
            unread = [errPipe, outPipe]
            let none = Pipe()
            try none.fileHandleForWriting.close()
            stderr = LineCollector(none.fileHandleForReading)
            stdout = LineCollector(none.fileHandleForReading)
        } else {
            stderr = LineCollector(errPipe.fileHandleForReading, echo: echo)
            stdout = LineCollector(outPipe.fileHandleForReading, echo: echo)
        }
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    var pid: Int32 { process.processIdentifier }

    func signal(_ signal: Int32) { kill(process.processIdentifier, signal) }

    /// Waits for the launcher to exit and returns its status. The default outlasts baton's default stop timeout
    /// (30 s), after which a worker that missed its stop signal is killed and baton exits.
    func wait(timeout: TimeInterval = 60) -> Int32? {
        guard exited.wait(timeout: .now() + timeout) == .success else { return nil }
        exited.signal()  // later waits return at once
        return process.terminationStatus
    }

    func stop() -> Int32? {
        signal(SIGTERM)
        let status = wait()
        if status == nil { Issue.record("baton did not exit after SIGTERM:\n\(diagnosis())") }
        return status
    }

    /// What a stuck launcher was doing: its log and the whole process tree, with each process's state and wait channel.
    func diagnosis() -> String {
        let tree = run(
            Paths.which("ps") ?? "/usr/bin/ps",
            ["-o", "pid,ppid,pgid,stat,wchan:24,etime,args", "--forest", "-e"]
        ).stdout
        let log = (stderr.all.suffix(40) + stdout.all.suffix(20)).map { "  | \($0)" }.joined(separator: "\n")
        let state = isAlive(pid) ? "still running" : "gone (the harness missed its exit)"
        return "baton is pid \(pid), \(state); processes:\n\(tree)\nlast lines:\n\(log)"
    }

    /// Runs `baton SUBCOMMAND --control ...`.
    func client(_ arguments: [String]) -> CommandResult {
        run(Paths.baton, [arguments[0], "--control", control] + arguments.dropFirst())
    }
}

/// Under AddressSanitizer the test runner itself runs without leak detection (the harness's own threads and
/// processes are alive at exit); every baton it starts runs with the options in BATON_TEST_CHILD_ASAN_OPTIONS.
enum Sanitizers {
    /// Whether the tests run under a sanitizer (`BATON_TEST_SANITIZER`, set by the test command's sanitizer stages):
    /// its runtime inflates memory and changes some process limits, so bounds on those are checked without one.
    static var active: Bool { ProcessInfo.processInfo.environment["BATON_TEST_SANITIZER"] != nil }

    static func childEnvironment(_ environment: [String: String]) -> [String: String] {
        var result = environment
        if let options = environment["BATON_TEST_CHILD_ASAN_OPTIONS"] { result["ASAN_OPTIONS"] = options }
        return result
    }
}

struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a command to completion.
func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.environment = Sanitizers.childEnvironment(environment ?? ProcessInfo.processInfo.environment)
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    do { try process.run() } catch { return CommandResult(status: -1, stdout: "", stderr: "\(error)") }
    let outCollector = LineCollector(out.fileHandleForReading)
    let errCollector = LineCollector(err.fileHandleForReading)
    process.waitUntilExit()
    _ = outCollector.waitClosed()
    _ = errCollector.waitClosed()
    return CommandResult(status: process.terminationStatus, stdout: outCollector.text, stderr: errCollector.text)
}

/// One HTTP GET over a unix or TCP socket, raw, so that every failure is visible.
enum HTTP {
    struct Response {
        var status: Int
        var body: String
    }

    static func get(unix path: String, _ target: String = "/") throws -> Response {
        guard let fd = connectUnix(path) else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        defer { close(fd) }
        return try exchange(fd, target)
    }

    static func get(host: String, port: Int, _ target: String = "/") throws -> Response {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var info: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &info) == 0, let info else { throw POSIXError(.EINVAL) }
        defer { freeaddrinfo(info) }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        return try exchange(fd, target)
    }

    private static func exchange(_ fd: Int32, _ target: String) throws -> Response {
        // A test must fail, not hang, when nobody answers.
        var timeout = timeval(tv_sec: 15, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let request = Array("GET \(target) HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count
        else {
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n < 0 { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            if n == 0 { break }
            data += buffer[0..<n]
        }
        let text = String(decoding: data, as: UTF8.self)
        guard let head = text.range(of: "\r\n\r\n") else { throw POSIXError(.EBADMSG) }
        let statusLine = text[..<head.lowerBound].split(separator: "\r\n").first ?? ""
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else { throw POSIXError(.EBADMSG) }
        return Response(status: status, body: String(text[head.upperBound...]))
    }
}

/// Reads the JSON report a fixture worker wrote.
struct WorkerReport: Decodable {
    var pid: Int32
    var pgid: Int32
    var fds: [String: String]
    var env: [String: String]
    var sigblk: String
    var sigign: String
    var uid: Int
    var gid: Int
    var groups: [Int]

    static func all(in directory: String) -> [WorkerReport] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasSuffix(".json") }.compactMap { name in
            guard let data = FileManager.default.contents(atPath: "\(directory)/\(name)") else { return nil }
            return try? JSONDecoder().decode(WorkerReport.self, from: data)
        }
    }
}

/// Waits until process `pid` (any process, not only a child) has ended, using a pidfd: an event, not a poll.
/// Returns false on timeout.
func waitForExit(_ pid: Int32, timeout: TimeInterval = 10) -> Bool {
    OS.waitForExit(pid, timeout: .milliseconds(Int64(timeout * 1000)))
}

/// Whether a process exists (and is not a zombie).
func isAlive(_ pid: Int32) -> Bool {
    guard kill(pid, 0) == 0 else { return false }
    let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
    guard let close = stat.lastIndex(of: ")") else { return false }
    return !stat[stat.index(after: close)...].hasPrefix(" Z")
}

/// baton running worker.py on `s.sock` in a fresh scratch directory, with `options`, a reports directory
/// (REPORT_DIR) and, when given, the workers' behaviour (BEHAVIOUR_FILE).
func launchWorker(
    _ options: [String] = [],
    behaviour: String? = nil,
    environment: [String: String] = [:],
    command: [String] = ["python3", Paths.worker],
    wrapper: [String] = []
) throws -> (scratch: Scratch, reports: String, baton: BatonRun) {
    let scratch = Scratch()
    let reports = scratch.file("reports")
    try FileManager.default.createDirectory(atPath: reports, withIntermediateDirectories: true)
    var environment = environment
    environment["REPORT_DIR"] = reports
    if let behaviour {
        scratch.write("behaviour", behaviour)
        environment["BEHAVIOUR_FILE"] = scratch.file("behaviour")
    }
    let baton = try BatonRun(
        ["--listen", "unix:\(scratch.file("s.sock"))"] + options + ["--"] + command,
        scratch: scratch,
        environment: environment,
        wrapper: wrapper
    )
    return (scratch, reports, baton)
}

/// A unix stream socket connected to `path` (non-blocking: connecting), or nil.
func connectUnix(_ path: String, nonBlocking: Bool = false) -> Int32? {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0), 0)
    guard fd >= 0 else { return nil }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    guard result == 0 || errno == EINPROGRESS else {
        close(fd)
        return nil
    }
    return fd
}

/// Fields of /proc/PID/stat after the command name, 1-based as proc(5) numbers them.
func statField(_ pid: Int32, _ number: Int) -> String? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return nil }
    let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
    return number >= 3 && number - 3 < fields.count ? String(fields[number - 3]) : nil
}

extension BatonRun {
    /// How many relays of rescued connections the launcher runs now (`baton status --json`).
    func relays() -> Int {
        let text = client(["status", "--json"]).stdout
        let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        return object?["relays"] as? Int ?? 0
    }

    /// Asks until no relay runs (10 s at most: no event tells a client that baton closed its end of a relay) and
    /// returns how many still do.
    func relaysEnd() -> Int {
        let deadline = Date().addingTimeInterval(10)
        while relays() > 0 && Date() < deadline { usleep(20_000) }
        return relays()
    }
}

/// TCP ports for the tests' listeners, below the kernel's ephemeral range (where the load clients' sockets live).
/// Each test process hands out ports from a range of its own, `$BATON_TEST_PORTS` ("FIRST-LAST": scripts/test.sh
/// gives each of the processes it runs at once its own) or a range that depends on the pid, in turn, skipping a
/// port that something else holds, so that one scenario's leftovers cannot disturb the next.
enum TestPorts {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var last: Int = range.lowerBound - 1

    static let range: ClosedRange<Int> = {
        if let text = ProcessInfo.processInfo.environment["BATON_TEST_PORTS"] {
            let bounds = text.split(separator: "-").compactMap { Int($0) }
            precondition(
                bounds.count == 2 && 1024 < bounds[0] && bounds[0] + 16 <= bounds[1] && bounds[1] < 32768,
                "BATON_TEST_PORTS='\(text)': give FIRST-LAST, at least 16 ports between 1025 and 32767"
            )
            return bounds[0]...bounds[1]
        }
        let first = 20000 + Int(getpid() % 400) * 30
        return first...(first + 2999)
    }()

    /// The next free port.
    static func next() -> Int { consecutive(1) }

    /// The first of `count` consecutive free ports.
    static func consecutive(_ count: Int) -> Int {
        lock.lock()
        defer { lock.unlock() }
        for _ in 0..<range.count {
            var first = last + 1
            if first + count - 1 > range.upperBound { first = range.lowerBound }
            last = first + count - 1
            if (first...last).allSatisfy(isFree) { return first }
        }
        preconditionFailure("no \(count) free consecutive ports in \(range)")
    }

    /// Whether a listener could bind 127.0.0.1:port now.
    private static func isFree(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return true }
        defer { close(fd) }
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = in_addr_t(UInt32(0x7f00_0001).bigEndian)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }
}
