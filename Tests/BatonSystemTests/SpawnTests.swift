import BatonSystem
import Foundation
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `Spawner` itself, with real children: what a child gets (its fds, its own pid in `LISTEN_PID`), what a failed
/// exec reports, and spawns started side by side.
@Suite("spawning workers", .timeLimit(.minutes(5)))
struct SpawnTests {
    /// What `/bin/sh` reports about itself: its pid and `LISTEN_PID`, then its fds (`ls -l /proc/$$/fd` lists the
    /// shell's, not those of `ls`, which is not its last command, so runs in a child; no pipeline or substitution,
    /// which would give the shell fds of its own).
    static let reporter = ["/bin/sh", "-c", "echo \"pid=$$ listen_pid=$LISTEN_PID\"; ls -l /proc/$$/fd; :"]

    /// `N TARGET` for each `... N -> TARGET` line of `ls -l`.
    static func fds(_ lines: [String]) -> [String] {
        lines.compactMap { line in
            let parts = line.components(separatedBy: " -> ")
            guard parts.count == 2, let number = parts[0].split(separator: " ").last else { return nil }
            return "\(number) \(parts[1])"
        }
    }

    /// Runs `request` with ``Spawner/spawn(_:)``, its stdout on a new pipe; reads what the child printed, reaps it.
    static func output(of request: SpawnRequest) throws -> (Int32, [String]) {
        let pipe = try OwnedPipe()
        var request = request
        request.standardOutput = pipe.write.descriptor
        let pid = try Spawner.spawn(request)
        pipe.write.close()
        let text = String(decoding: pipe.read.descriptor.readToEnd(timeout: .seconds(20)), as: UTF8.self)
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
        return (pid, text.split(separator: "\n").map(String.init))
    }

    static func request(
        _ arguments: [String],
        listeners: [FileDescriptor],
        extra: FileDescriptor? = nil
    ) throws
        -> SpawnRequest
    {
        SpawnRequest(
            executable: arguments[0],
            arguments: arguments,
            environment: ["PATH=/usr/bin:/bin"],
            listeners: listeners,
            extra: extra,
            standardInput: FileDescriptor(rawValue: 0),
            standardOutput: FileDescriptor(rawValue: 1),
            standardError: FileDescriptor(rawValue: 2)
        )
    }

    /// Close-on-exec sockets of the test's, as many as asked, to hand over as listeners.
    static func sockets(_ count: Int) throws -> [FileDescriptor] {
        try (0..<count).map { _ in
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            try #require(fd >= 0)
            return FileDescriptor(rawValue: fd)
        }
    }

    static func inode(_ fd: FileDescriptor) -> String {
        var stat = stat()
        fstat(fd.rawValue, &stat)
        return "socket:[\(stat.st_ino)]"
    }

    /// Each child has exactly 0, 1, 2, its listeners at 3.. in order (the same sockets) and the extra fd after them,
    /// and `LISTEN_PID` is its own pid: for 2 listeners and for 300 (more than one SCM_RIGHTS message used to carry),
    /// started one at a time and 8 side by side.
    @Test(arguments: [2, 300])
    func aChildGetsExactlyItsFdsAndItsOwnPid(listenerCount: Int) throws {
        let listeners = try Self.sockets(listenerCount)
        defer { for fd in listeners { fd.closeOnce() } }
        let extra = try OwnedPipe()
        let request = try Self.request(Self.reporter, listeners: listeners, extra: extra.write.descriptor)
        var expected: [String] = []
        for (index, fd) in listeners.enumerated() { expected.append("\(3 + index) \(Self.inode(fd))") }

        func check(_ pid: Int32, _ lines: [String]) {
            #expect(lines.first == "pid=\(pid) listen_pid=\(pid)")
            let fds = Self.fds(lines)
            let numbers = fds.compactMap { Int($0.split(separator: " ")[0]) }.sorted()
            #expect(numbers == Array(0...(3 + listenerCount)), "exactly 0, 1, 2, the listeners and the extra fd")
            for line in expected { #expect(fds.contains(line), "\(line)") }
            #expect(fds.contains { $0.hasPrefix("\(3 + listenerCount) pipe:") }, "the extra fd after the listeners")
        }

        let (pid, lines) = try Self.output(of: request)
        check(pid, lines)

        // Side by side: the write ends stay open until the spawn is over (the child may not exist before).
        let pipes = try (0..<8).map { _ in SharedPipe(try OwnedPipe()) }
        let started = pipes.map { pipe in
            var each = request
            each.standardOutput = pipe.write
            return Spawner.start(each)
        }
        for (pending, pipe) in zip(started, pipes) {
            let pid = try pending.wait().get()
            pipe.write.closeOnce()
            let text = String(decoding: pipe.read.readToEnd(timeout: .seconds(20)), as: UTF8.self)
            pipe.read.closeOnce()
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
            check(pid, text.split(separator: "\n").map(String.init))
        }
    }

    /// A failed exec comes back as the one-line error with its errno: a missing file, a file without the x bit, an
    /// executable that is no program, and a script whose interpreter is missing; started alone or beside others.
    @Test func aFailedExecReportsItsErrno() throws {
        let scratch = Scratch()
        scratch.write("plain", "echo hi\n")
        scratch.write("garbage", "\u{7f}XYZ not a program\n")
        chmod(scratch.file("garbage"), 0o755)
        scratch.write("script", "#!/nonexistent/interpreter\n")
        chmod(scratch.file("script"), 0o755)
        let cases: [(String, String)] = [
            (scratch.file("missing"), "No such file or directory"),
            (scratch.file("plain"), "Permission denied"),
            (scratch.file("garbage"), "Exec format error"),
            (scratch.file("script"), "No such file or directory"),
        ]
        for (path, reason) in cases {
            let request = try Self.request([path], listeners: [])
            #expect(throws: SpawnError.self) { try Spawner.spawn(request) }
            do {
                _ = try Spawner.spawn(request)
            } catch {
                #expect(error.code == .exec)
                #expect(error.description == "cannot execute \(path): \(reason)")
                #expect(!error.description.contains("\n"))
            }
            // Beside a spawn that works: each gets its own outcome.
            let good = Spawner.start(try Self.request(["/bin/true"], listeners: []))
            let bad = Spawner.start(request)
            let goodPID = try good.wait().get()
            var status: Int32 = 0
            _ = waitpid(goodPID, &status, 0)
            #expect(status == 0)
            switch bad.wait() {
            case .success(let pid): Issue.record("\(path) started as pid \(pid)")
            case .failure(let error): #expect(error.description == "cannot execute \(path): \(reason)")
            }
        }
        // The failed children exited with 127 and are left to be reaped (baton reaps every child on SIGCHLD).
    }
}

/// A pipe's two fds, closed by hand (an array of ``OwnedPipe`` cannot be: it is not copyable).
struct SharedPipe {
    let read: FileDescriptor
    let write: FileDescriptor

    init(_ pipe: consuming OwnedPipe) {
        read = pipe.read.release()
        write = pipe.write.release()
    }
}
