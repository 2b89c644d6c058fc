internal import FoundationEssentials

/// The control protocol between `baton reload`/`baton status` and the running launcher: one JSON object per
/// line over a unix stream socket. A client sends one request; the launcher answers with zero or more
/// `progress` lines and one final line (`result`, `status` or `error`).
public enum ControlProtocol {
    /// The longest request line the launcher reads.
    public static let maximumRequestSize = 4096

    public struct Request: Codable, Sendable, Equatable {
        public enum Command: String, Codable, Sendable {
            case reload
            case status
            /// Retire the generation a `--hold` reload left serving beside the new one.
            case promote
            /// Retire the held new generation; the old one serves on.
            case rollback
        }

        public var command: Command
        /// `reload`: the canary window in milliseconds (0: none); absent: the launcher's `--canary`.
        public var canaryMilliseconds: Int64?
        /// `reload`: leave the new generation serving beside the old one until promote or rollback.
        public var hold: Bool?

        public init(command: Command, canaryMilliseconds: Int64? = nil, hold: Bool? = nil) {
            self.command = command
            self.canaryMilliseconds = canaryMilliseconds
            self.hold = hold
        }

        /// The reload's options, range-checked: a message fit for the error reply if they are out of range.
        public func reloadOptions() throws(BatonError) -> ReloadOptions {
            var options = ReloadOptions(hold: hold ?? false)
            if let canaryMilliseconds {
                guard canaryMilliseconds >= 0, canaryMilliseconds <= 365 * 86_400_000 else {
                    throw BatonError(
                        .control,
                        "invalid canaryMilliseconds \(canaryMilliseconds): give 0 (no canary) to 31536000000 (365 days)"
                    )
                }
                options.canary = .milliseconds(canaryMilliseconds)
            }
            return options
        }
    }

    /// One line the launcher sends back.
    public struct Reply: Codable, Sendable, Equatable {
        public enum Kind: String, Codable, Sendable {
            case progress
            case result
            case status
            case error
        }

        public var kind: Kind
        public var message: String?
        public var ok: Bool?
        public var durationMilliseconds: Int64?
        /// The last lines the failing worker wrote to stderr.
        public var stderr: [String]?
        public var status: StatusReport?

        public init(
            kind: Kind,
            message: String? = nil,
            ok: Bool? = nil,
            durationMilliseconds: Int64? = nil,
            stderr: [String]? = nil,
            status: StatusReport? = nil
        ) {
            self.kind = kind
            self.message = message
            self.ok = ok
            self.durationMilliseconds = durationMilliseconds
            self.stderr = stderr
            self.status = status
        }

        public static func progress(_ message: String) -> Reply { Reply(kind: .progress, message: message) }
        public static func error(_ message: String) -> Reply { Reply(kind: .error, message: message, ok: false) }
    }

    /// Decodes a request line; throws a message fit for the error reply.
    public static func decodeRequest(_ line: [UInt8]) throws(BatonError) -> Request {
        guard line.count <= maximumRequestSize else {
            // The reader cuts a line here, so its real length is not known: only that it exceeds the limit.
            throw BatonError(
                .control,
                "request too large: over \(maximumRequestSize) bytes without a newline (a request is one line of at most \(maximumRequestSize) bytes)"
            )
        }
        do {
            return try JSONDecoder().decode(Request.self, from: Data(line))
        } catch {
            throw BatonError(
                .control,
                "malformed request: expected {\"command\":C} with C one of reload, status, promote, rollback"
            )
        }
    }

    public static func encode(_ value: some Encodable) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(value) else { return Array("{\"kind\":\"error\"}\n".utf8) }
        return Array(data) + [UInt8(ascii: "\n")]
    }

    public static func decodeReply(_ line: [UInt8]) -> Reply? {
        try? JSONDecoder().decode(Reply.self, from: Data(line))
    }
}
