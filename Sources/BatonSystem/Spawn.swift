internal import CBatonSystem
internal import Glibc
public import SystemPackage

/// What a worker is started with.
public struct SpawnRequest: Sendable {
    /// The resolved path of the executable.
    public var executable: String
    /// The arguments, `argv[0]` included.
    public var arguments: [String]
    /// The environment, without `LISTEN_PID` (the child fills that in with its own pid).
    public var environment: [String]
    /// The listeners, in order: they arrive at fds 3, 4, ... over an SCM_RIGHTS channel.
    public var listeners: [FileDescriptor]
    /// Whether to export `LISTEN_PID=<the child's pid>`.
    public var setListenPID: Bool
    /// An fd placed right after the listeners, such as the write end of a readiness pipe.
    public var extra: FileDescriptor?
    public var standardInput: FileDescriptor
    public var standardOutput: FileDescriptor
    public var standardError: FileDescriptor
    /// Drop to this uid and gid in the child, if set.
    public var userID: UInt32?
    public var groupID: UInt32?
    /// Supplementary groups when dropping privileges (empty: just `groupID`).
    public var groups: [UInt32] = []

    public init(
        executable: String,
        arguments: [String],
        environment: [String],
        listeners: [FileDescriptor],
        setListenPID: Bool = true,
        extra: FileDescriptor? = nil,
        standardInput: FileDescriptor,
        standardOutput: FileDescriptor,
        standardError: FileDescriptor,
        userID: UInt32? = nil,
        groupID: UInt32? = nil
    ) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.listeners = listeners
        self.setListenPID = setListenPID
        self.extra = extra
        self.standardInput = standardInput
        self.standardOutput = standardOutput
        self.standardError = standardError
        self.userID = userID
        self.groupID = groupID
    }
}

/// Why a spawn failed.
public struct SpawnError: Error, CustomStringConvertible, Sendable {
    public enum Code: Sendable, Equatable {
        /// `fork` or a setup call in baton failed.
        case setup
        /// The child could not exec the app; `errno` says why.
        case exec
        /// More listeners than a worker can receive (``Spawner/maximumListeners``).
        case tooManyListeners
    }

    public var code: Code
    public var executable: String
    /// The failed call; nil for ``Code/tooManyListeners``.
    public var underlying: SystemError?

    public init(code: Code, executable: String, underlying: SystemError?) {
        self.code = code
        self.executable = executable
        self.underlying = underlying
    }

    public var description: String {
        if let underlying, underlying.errno == .tooManyOpenFiles || underlying.errno == .tooManyOpenFilesInSystem {
            // Whether the fork's setup or the child ran out, it is baton's limit (or the system's), not the app.
            let whose =
                underlying.errno == .tooManyOpenFiles
                ? "raise baton's limit (LimitNOFILE=)" : "the system's file table is full"
            return "cannot start \(executable): out of file descriptors (\(underlying.errno.description)); \(whose)"
        }
        switch code {
        case .exec:
            return "cannot execute \(executable): \(underlying.map { $0.errno.description } ?? "unknown error")"
        case .setup:
            return "cannot start \(executable): \(underlying.map(\.description) ?? "unknown error")"
        case .tooManyListeners:
            return "cannot start \(executable): a worker can receive at most \(Spawner.maximumListeners) listeners"
        }
    }
}

/// The nice value, scheduling policy and resource limits baton started with, which every worker gets.
///
/// On Linux nice and the scheduling policy belong to a thread, and a worker inherits those of the thread that
/// forks it: a runtime thread whose priority libdispatch raised, say. So they are read once, from the main thread
/// at start (``capture()``), and the child side of a spawn sets them again before it drops privileges. The limits
/// are the ones baton started with, whatever baton or `prlimit` changed since.
public enum ProcessAttributes {
    /// Read on first use; ``capture()`` makes that the start.
    static let starting: cbaton_process_attributes = {
        var attributes = cbaton_process_attributes()
        cbaton_read_attributes(&attributes)
        return attributes
    }()

    /// Reads them now. Call it first thing on the main thread, before any other thread exists.
    ///
    /// The corresponding C functions are `getpriority`, `sched_getscheduler` and `getrlimit`.
    public static func capture() { _ = starting }

    /// Gives the calling thread and the process the attributes baton started with, as far as it may (before a
    /// re-execution, so that the new program starts as this one did).
    ///
    /// The corresponding C functions are `sched_setscheduler`, `setpriority` and `setrlimit`.
    public static func restore() {
        var attributes = starting
        _ = cbaton_apply_attributes(&attributes)
    }
}

public enum Spawner {
    /// The most listeners one worker can receive.
    public static let maximumListeners = Int(CBATON_MAX_LISTENERS)

    /// Starts a worker: forks, sends the listeners to the child over a SEQPACKET channel with SCM_RIGHTS,
    /// and waits until the child has exec'd (the channel closes) or reports why it could not.
    ///
    /// The child lays the listeners out at 3, 4, ..., closes every other fd, resets its signal mask and
    /// dispositions, moves into a process group of its own, takes baton's starting nice value, scheduling policy
    /// and resource limits (``ProcessAttributes``) and fills in `LISTEN_PID` with its pid.
    ///
    /// The corresponding C functions are `socketpair`, `fork`, `sendmsg` and `execve`.
    public static func spawn(_ request: SpawnRequest) throws(SpawnError) -> Int32 {
        func setupError(_ error: SystemError) -> SpawnError {
            SpawnError(code: .setup, executable: request.executable, underlying: error)
        }
        guard request.listeners.count <= maximumListeners else {
            throw SpawnError(code: .tooManyListeners, executable: request.executable, underlying: nil)
        }
        var pair: [Int32] = [-1, -1]
        do {
            try syscall("socketpair") {
                pair.withUnsafeMutableBufferPointer {
                    socketpair(
                        AF_UNIX,
                        Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
                        0,
                        $0.baseAddress!
                    )
                }
            }
        } catch {
            throw setupError(error)
        }
        let parentEnd = OwnedDescriptor(raw: pair[0])
        let childEnd = OwnedDescriptor(raw: pair[1])

        // Everything the child touches is allocated here, before fork.
        let listenPIDSlot = "LISTEN_PID=" + String(repeating: "0", count: 20)
        let environment = request.setListenPID ? request.environment + [listenPIDSlot] : request.environment
        let argv = CStringArray(request.arguments)
        let envp = CStringArray(environment)
        let path = CStringArray([request.executable])
        let groups = request.groups.map { gid_t($0) }
        var attributes = ProcessAttributes.starting

        let pid: Int32 = argv.withPointers { argvPointer in
            envp.withPointers { envpPointer in
                path.withPointers { pathPointer in
                    groups.withUnsafeBufferPointer { groupPointer in
                        withUnsafePointer(to: &attributes) { attributesPointer in
                            var spawnRequest = cbaton_spawn_request()
                            spawnRequest.attributes = attributesPointer
                            spawnRequest.groups = groupPointer.baseAddress
                            spawnRequest.group_count = Int32(groups.count)
                            spawnRequest.path = UnsafePointer(pathPointer[0])
                            spawnRequest.argv = UnsafePointer(argvPointer)
                            spawnRequest.envp = UnsafePointer(envpPointer)
                            spawnRequest.listen_pid_slot =
                                request.setListenPID ? envpPointer[environment.count - 1] : nil
                            spawnRequest.channel_fd = pair[1]
                            spawnRequest.listener_count = Int32(request.listeners.count)
                            spawnRequest.extra_fd = request.extra?.rawValue ?? -1
                            spawnRequest.stdin_fd = request.standardInput.rawValue
                            spawnRequest.stdout_fd = request.standardOutput.rawValue
                            spawnRequest.stderr_fd = request.standardError.rawValue
                            spawnRequest.uid = request.userID.map { Int64($0) } ?? -1
                            spawnRequest.gid = request.groupID.map { Int64($0) } ?? -1
                            return cbaton_spawn(&spawnRequest)
                        }
                    }
                }
            }
        }
        let forkErrno = Glibc.errno
        childEnd.close()  // only the child keeps its end
        guard pid > 0 else { throw setupError(SystemError("fork", Errno(rawValue: forkErrno))) }

        // Hand over the listeners in batches the kernel accepts.
        var offset = 0
        let raw = request.listeners.map(\.rawValue)
        repeat {
            let batch = Array(raw[offset..<min(raw.count, offset + Int(CBATON_FDS_PER_MESSAGE))])
            let sent = batch.withUnsafeBufferPointer {
                cbaton_send_fds(parentEnd.descriptor.rawValue, $0.baseAddress, Int32(batch.count))
            }
            if sent < 0 {
                let code = Glibc.errno
                // The child died before taking them; its exit is reaped as usual.
                if code != EPIPE && code != ECONNRESET {
                    Glibc.kill(pid, SIGKILL)
                    throw setupError(SystemError("sendmsg(SCM_RIGHTS)", Errno(rawValue: code)))
                }
                break
            }
            offset += batch.count
        } while offset < raw.count

        // The channel closes at exec (EOF); before that, a failing child writes its errno.
        var reported: Int32 = 0
        let n = try? syscall("read") { read(parentEnd.descriptor.rawValue, &reported, MemoryLayout<Int32>.size) }
        if let n, n == MemoryLayout<Int32>.size {
            throw SpawnError(
                code: .exec,
                executable: request.executable,
                underlying: SystemError("execve", Errno(rawValue: reported))
            )
        }
        return pid
    }
}

/// A NULL-terminated array of C strings that lives as long as the value.
final class CStringArray {
    private var storage: [UnsafeMutablePointer<CChar>?]

    init(_ strings: [String]) {
        storage = strings.map { strdup($0) } + [nil]
    }

    deinit {
        for pointer in storage { free(pointer) }
    }

    func withPointers<T>(_ body: (UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> T) -> T {
        storage.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
    }
}
