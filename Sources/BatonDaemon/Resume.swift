public import BatonCore
public import BatonSystem
import SystemPackage

/// What a launcher hands to the binary it re-executes in place: the supervisor's state and the fds it keeps.
/// It travels in the `BATON_RESUME` environment variable, as JSON.
public struct ResumeState: Codable, Sendable {
    public struct Listener: Codable, Sendable {
        public var fd: Int32
        public var name: String
        public var address: String
        /// Passed by the service manager (nil from a baton that did not say).
        public var passed: Bool?
    }

    struct WorkerFDs: Codable, Sendable {
        var worker: Int
        var stdout: Int32?
        var stderr: Int32?
        var notify: Int32?
        /// Its probe socket (`--health`) and that socket's address.
        var health: Int32?
        var healthAddress: String?
    }

    public var previousVersion: String
    public var supervisor: SupervisorSnapshot
    public var listeners: [Listener]
    var control: Int32
    var notify: Int32?
    var notifyAddress: String?
    var workers: [WorkerFDs]

    /// The environment variable that carries the state.
    public static let variable = "BATON_RESUME"

    /// Reads the state this process was re-executed with, if any, and removes it from the environment.
    public static func take() throws(BatonError) -> ResumeState? {
        guard let text = OS.environment(variable) else { return nil }
        OS.unsetEnvironment(variable)
        do {
            return try JSON.decode(ResumeState.self, from: text.utf8)
        } catch {
            throw BatonError(.internalError, "cannot resume after re-execution: \(error)")
        }
    }

    /// The listeners as the launcher holds them.
    public var listeningSockets: [ListeningSocket] {
        listeners.map {
            ListeningSocket(
                fd: FileDescriptor(rawValue: $0.fd),
                name: $0.name,
                address: $0.address,
                passed: $0.passed ?? false
            )
        }
    }

    func encoded() -> String? {
        guard let data = try? JSON.encode(self) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// Every fd that must survive the exec.
    var descriptors: [FileDescriptor] {
        (listeners.map(\.fd) + [control] + [notify].compactMap { $0 }
            + workers.flatMap { [$0.stdout, $0.stderr, $0.notify, $0.health].compactMap { $0 } }).map {
                FileDescriptor(rawValue: $0)
            }
    }
}
