public import BatonCore
import BatonSystem
public import Logging

/// A swift-log handler that writes readable lines to stderr: `baton[myapp]: message`, or `baton: message` for the
/// default name. The metadata (`baton.event`, `baton.generation`, ...) is for the journal (``JournalLogHandler``):
/// the message already says what it holds, so the human line leaves it out.
public struct StderrLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let label: String

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let line =
            "\(label): \(event.level == .notice || event.level == .info ? "" : "\(event.level): ")\(event.message)"
        OutputWriter.shared.write(line + "\n", to: 2)
    }
}

/// A swift-log handler that sends native journal entries (`sd_journal_sendv`): `MESSAGE`, `PRIORITY`,
/// `SYSLOG_IDENTIFIER`, `CODE_*`, and each metadata key as a field (`generation.id` becomes `GENERATION_ID`;
/// `worker.pid` becomes `BATON_WORKER_PID`, see ``journalFieldName(_:)``).
public struct JournalLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let identifier: String

    public init(identifier: String) { self.identifier = identifier }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields = [
            "MESSAGE=\(event.message)",
            "PRIORITY=\(JournalLogHandler.priority(event.level))",
            "SYSLOG_IDENTIFIER=\(identifier)",
            "CODE_FILE=\(event.file)",
            "CODE_LINE=\(event.line)",
            "CODE_FUNC=\(event.function)",
        ]
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        for (key, value) in merged {
            guard let name = JournalLogHandler.journalFieldName(key) else { continue }
            fields.append("\(name)=\(value)")
        }
        OutputWriter.shared.journal(fields)
    }

    /// syslog priorities: notice is 5, info 6, and so on.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// Maps a metadata key to a journal field name: uppercase letters, digits and underscores, not starting with
    /// an underscore or a digit. Keys under `baton.` keep the prefix `BATON_`; `message.id` is `MESSAGE_ID`.
    public static func journalFieldName(_ key: String) -> String? {
        var name = ""
        for scalar in key.unicodeScalars {
            switch scalar {
            case "a"..."z": name.unicodeScalars.append(Unicode.Scalar(scalar.value - 32)!)
            case "A"..."Z", "0"..."9": name.unicodeScalars.append(scalar)
            default: name += "_"
            }
        }
        while name.hasPrefix("_") { name.removeFirst() }
        guard let first = name.first, !first.isNumber, name.count <= 64 else { return nil }
        return name
    }
}

extension Logger {
    /// Logs a lifecycle event at notice level with its journal fields.
    public func lifecycle(_ event: LifecycleEvent, name: String) {
        var metadata: Logger.Metadata = [
            "message.id": .string(event.kind.messageID),
            "baton.event": .string(event.kind.rawValue),
            "baton.instance": .string(name),
        ]
        if let generation = event.generation { metadata["baton.generation"] = .stringConvertible(generation) }
        if let pid = event.workerPID { metadata["baton.worker.pid"] = .stringConvertible(pid) }
        if let slot = event.slot { metadata["baton.worker"] = .stringConvertible(slot) }
        if let duration = event.duration { metadata["baton.duration.ms"] = .stringConvertible(duration.milliseconds) }
        if let status = event.status { metadata["baton.status"] = .string(status) }
        if let reason = event.reason { metadata["baton.reason"] = .string(reason) }
        if let connections = event.connections { metadata["baton.connections"] = .stringConvertible(connections) }
        let level: Logger.Level =
            switch event.kind {
            case .reloadFailed, .generationFailed, .crashLoop, .watchdogMissed: .error
            case .workerCrashed, .workerKilled, .canaryFailed: .warning
            default: .notice
            }
        log(level: level, "\(event.message)", metadata: metadata)
    }
}
