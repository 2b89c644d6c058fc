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
    /// The listeners, in order: the child has them at fds 3, 4, ...
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
        /// The `clone` in baton failed.
        case setup
        /// The child could not set itself up or exec the app; `errno` says why.
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

    /// Starts a worker, the way `posix_spawn` does: `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own (no copy of
    /// baton's page tables), and returns once the child has exec'd, or throws why it could not.
    ///
    /// The child lays the standard streams out at 0, 1, 2 and the listeners at 3, 4, ... (from its copy of baton's
    /// fd table), closes every other fd, resets its signal mask and dispositions, moves into a process group of its
    /// own, takes baton's starting nice value, scheduling policy and resource limits (``ProcessAttributes``) and
    /// fills in `LISTEN_PID` with its pid. A failure in the child comes back as its errno.
    ///
    /// The corresponding C functions are `clone` and `execve`.
    public static func spawn(_ request: SpawnRequest) throws(SpawnError) -> Int32 {
        guard request.listeners.count <= maximumListeners else {
            throw SpawnError(code: .tooManyListeners, executable: request.executable, underlying: nil)
        }
        let prepared = PreparedSpawn(request)
        _ = cbaton_spawn(prepared.request)
        return try prepared.outcome().get()
    }

    /// Starts a worker like ``spawn(_:)``, but from a thread of its own, and returns at once: several spawns started
    /// one after the other do not wait for each other's exec. ``PendingSpawn/wait()`` tells what came of it; until
    /// then the fds in `request` must stay open.
    ///
    /// The corresponding C functions are `pthread_create`, `clone` and `execve`.
    public static func start(_ request: SpawnRequest) -> PendingSpawn {
        guard request.listeners.count <= maximumListeners else {
            return PendingSpawn(
                failed: SpawnError(code: .tooManyListeners, executable: request.executable, underlying: nil)
            )
        }
        let prepared = PreparedSpawn(request)
        cbaton_spawn_start(prepared.request)
        return PendingSpawn(prepared)
    }
}

/// A spawn ``Spawner/start(_:)`` started.
public final class PendingSpawn {
    private var prepared: PreparedSpawn?
    private var result: Result<Int32, SpawnError>?

    fileprivate init(_ prepared: PreparedSpawn) { self.prepared = prepared }
    fileprivate init(failed: SpawnError) { result = .failure(failed) }

    /// Waits until the child has exec'd or failed: its pid, or why it did not start.
    ///
    /// The corresponding C function is `pthread_join`.
    public func wait() -> Result<Int32, SpawnError> {
        if let result { return result }
        let spawned = prepared!
        _ = cbaton_spawn_finish(spawned.request)
        let outcome = spawned.outcome()
        prepared = nil
        result = outcome
        return outcome
    }

    deinit { _ = wait() }
}

/// Everything the child side of one spawn reads, allocated before the clone and kept until it has exec'd.
private final class PreparedSpawn {
    let executable: String
    let argv: CStringArray
    let envp: CStringArray
    let path: CStringArray
    let listeners: UnsafeMutableBufferPointer<Int32>
    let groups: UnsafeMutableBufferPointer<gid_t>
    let attributes: UnsafeMutablePointer<cbaton_process_attributes>
    let scratch: UnsafeMutableBufferPointer<Int32>
    let request: UnsafeMutablePointer<cbaton_spawn_request>

    init(_ spawn: SpawnRequest) {
        executable = spawn.executable
        let environment =
            spawn.setListenPID
            ? spawn.environment + ["LISTEN_PID=" + String(repeating: "0", count: 20)] : spawn.environment
        argv = CStringArray(spawn.arguments)
        envp = CStringArray(environment)
        path = CStringArray([spawn.executable])
        listeners = .allocate(capacity: spawn.listeners.count + 1)
        _ = listeners.initialize(from: spawn.listeners.map(\.rawValue) + [-1])
        groups = .allocate(capacity: spawn.groups.count + 1)
        _ = groups.initialize(from: spawn.groups.map { gid_t($0) } + [0])
        attributes = .allocate(capacity: 1)
        attributes.initialize(to: ProcessAttributes.starting)
        scratch = .allocate(capacity: spawn.listeners.count + 4)
        scratch.initialize(repeating: -1)
        request = .allocate(capacity: 1)
        request.initialize(to: cbaton_spawn_request())
        request.pointee.path = UnsafePointer(path.pointer(0))
        request.pointee.argv = UnsafePointer(argv.base)
        request.pointee.envp = UnsafePointer(envp.base)
        request.pointee.listen_pid_slot = spawn.setListenPID ? envp.pointer(environment.count - 1) : nil
        request.pointee.listeners = UnsafePointer(listeners.baseAddress)
        request.pointee.listener_count = Int32(spawn.listeners.count)
        request.pointee.extra_fd = spawn.extra?.rawValue ?? -1
        request.pointee.stdin_fd = spawn.standardInput.rawValue
        request.pointee.stdout_fd = spawn.standardOutput.rawValue
        request.pointee.stderr_fd = spawn.standardError.rawValue
        request.pointee.uid = spawn.userID.map { Int64($0) } ?? -1
        request.pointee.gid = spawn.groupID.map { Int64($0) } ?? -1
        request.pointee.groups = UnsafePointer(groups.baseAddress)
        request.pointee.group_count = Int32(spawn.groups.count)
        request.pointee.attributes = UnsafePointer(attributes)
        request.pointee.scratch = scratch.baseAddress
    }

    deinit {
        listeners.deallocate()
        groups.deallocate()
        attributes.deallocate()
        scratch.deallocate()
        request.deallocate()
    }

    /// What came of the spawn, once it has returned.
    func outcome() -> Result<Int32, SpawnError> {
        let done = request.pointee
        if done.pid > 0 && done.error == 0 { return .success(done.pid) }
        if done.failed_in_child != 0 {
            // The child has exited (127) and is reaped as usual.
            return .failure(
                SpawnError(
                    code: .exec,
                    executable: executable,
                    underlying: SystemError("execve", Errno(rawValue: done.error))
                )
            )
        }
        return .failure(
            SpawnError(
                code: .setup,
                executable: executable,
                underlying: SystemError("clone", Errno(rawValue: done.error))
            )
        )
    }
}

/// A NULL-terminated array of C strings that lives as long as the value.
final class CStringArray {
    private var storage: [UnsafeMutablePointer<CChar>?]
    /// The array itself, allocated once: its address stays valid as long as the value.
    let base: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>

    init(_ strings: [String]) {
        storage = strings.map { strdup($0) } + [nil]
        base = .allocate(capacity: storage.count)
        base.initialize(from: storage, count: storage.count)
    }

    deinit {
        for pointer in storage { free(pointer) }
        base.deallocate()
    }

    /// The `index`th string.
    func pointer(_ index: Int) -> UnsafeMutablePointer<CChar>? { storage[index] }

    func withPointers<T>(_ body: (UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> T) -> T {
        body(base)
    }
}
